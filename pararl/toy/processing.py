"""The toy world's `SequencePreset` and `ParallelProcessor`: its word tokenizer, its exact image tokenizer and the
sequence layout that ties them together."""

from .palette import TOY_PALETTE, toy_image_tokenizer
from .texts import MAX_PROMPT_WORDS, MAX_REASONING_WORDS, world_vocabulary
from .tokenizer import SPECIAL_TOKENS, load_toy_tokenizer


__all__ = ["TOY_MAX_PROMPT_TOKENS", "TOY_MAX_REASONING_TOKENS", "toy_preset", "toy_processor"]

# Text budgets of the toy preset: room for user prompts a little longer than the world's own, and for the
# reasoning's <eos> plus one spare slot.
TOY_MAX_PROMPT_TOKENS = MAX_PROMPT_WORDS + 4
TOY_MAX_REASONING_TOKENS = MAX_REASONING_WORDS + 2


def toy_preset():
    """The toy world's `SequencePreset`: image codes right after the text vocabulary, `<eos>` fills the text span."""
    from pararl.processing import SequencePreset

    text_vocab_size = len(SPECIAL_TOKENS) + len(world_vocabulary())
    return SequencePreset(
        name="toy",
        mask_token_id=4,
        image_token_offset=text_vocab_size,
        codebook_size=len(TOY_PALETTE),
        image_grid=(8, 8),
        soi_token_id=5,
        eoi_token_id=6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        text_fill_token_id=2,
        task_token_ids={"edit": 7, "generate": 8},
        max_prompt_tokens=TOY_MAX_PROMPT_TOKENS,
        max_reasoning_tokens=TOY_MAX_REASONING_TOKENS,
        image_row_end_token_id=None,
    )


def toy_processor(tokenizer=None, **kwargs):
    """A `ParallelProcessor` for the toy world (the committed tokenizer unless one is given)."""
    from pararl.processing import ParallelProcessor

    return ParallelProcessor(
        tokenizer if tokenizer is not None else load_toy_tokenizer(), toy_image_tokenizer(), toy_preset(), **kwargs
    )
