"""The toy world's word-level text tokenizer.

One token per word of the world (see :func:`pararl.toy.texts.world_vocabulary`), after nine special tokens with
fixed ids that the toy :class:`~pararl.processing.SequencePreset` relies on. Texts are lower-cased and split on
whitespace and punctuation; decoding joins tokens with single spaces, so a world text round-trips exactly.
The tokenizer adds no special tokens by itself: the processor places `<bos>`/`<eos>` and the sentinels.
"""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .texts import world_vocabulary


__all__ = ["SPECIAL_TOKENS", "TOKENIZER_DIR", "build_toy_tokenizer", "load_toy_tokenizer", "save_toy_tokenizer"]

# Order == id. The preset and the processor depend on these exact ids.
SPECIAL_TOKENS: tuple[str, ...] = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<mask>",
    "<soi>",
    "<eoi>",
    "<edit>",
    "<generate>",
)
TOKENIZER_DIR = Path(__file__).parent / "assets" / "tokenizer"


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the tokenizer from the world's vocabulary (deterministic: specials 0-8, then words sorted)."""
    tokens = list(SPECIAL_TOKENS) + world_vocabulary()
    if len(set(tokens)) != len(tokens):
        raise ValueError("the world vocabulary collides with a special token.")
    backend = Tokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    # WordPiece's decoder joins tokens with spaces; there are no "##" continuation pieces in this vocabulary.
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=list(SPECIAL_TOKENS[5:]),
        clean_up_tokenization_spaces=False,
        padding_side="right",
    )


def save_toy_tokenizer(directory: str | Path = TOKENIZER_DIR) -> Path:
    """Rebuilds the tokenizer and writes it to `directory` (by default the committed copy in the package)."""
    directory = Path(directory)
    build_toy_tokenizer().save_pretrained(directory)
    return directory


def load_toy_tokenizer(directory: str | Path = TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    """Loads the committed tokenizer (offline, no hub access)."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise ValueError(
            f"no toy tokenizer at {directory}; rebuild it with `pararl.toy.tokenizer.save_toy_tokenizer()`."
        )
    return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
