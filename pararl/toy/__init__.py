"""The toy world: procedural thinking-aware tasks, its exact image tokenizer, word tokenizer and sequence preset."""

from pathlib import Path

from .palette import TOY_COLOURS, TOY_PALETTE, toy_image_tokenizer
from .tokenizer import build_toy_tokenizer, load_toy_tokenizer
from .world import (
    CATEGORIES,
    MAX_PROMPT_WORDS,
    MAX_REASONING_WORDS,
    SHAPES,
    ToyObject,
    ToySample,
    build_toy_dataset,
    combination_key,
    describe_scene,
    generate_samples,
    is_held_out,
    parse_scene,
    render_scene,
    scene_codes,
    world_vocabulary,
)


__all__ = [
    "CATEGORIES",
    "MAX_PROMPT_WORDS",
    "MAX_REASONING_WORDS",
    "SHAPES",
    "TOY_COLOURS",
    "TOY_PALETTE",
    "ToyObject",
    "ToySample",
    "build_toy_dataset",
    "build_toy_tokenizer",
    "combination_key",
    "describe_scene",
    "generate_samples",
    "is_held_out",
    "load_toy_tokenizer",
    "parse_scene",
    "render_scene",
    "scene_codes",
    "toy_image_tokenizer",
    "toy_preset",
    "toy_policy_path",
    "toy_processor",
    "world_vocabulary",
]

# Text budgets of the toy preset: room for user prompts a little longer than the world's own, and for the
# reasoning's <eos> plus one spare slot.
TOY_MAX_PROMPT_TOKENS = MAX_PROMPT_WORDS + 4
TOY_MAX_REASONING_TOKENS = MAX_REASONING_WORDS + 2


def toy_preset():
    """The toy world's `SequencePreset`: image codes right after the text vocabulary, `<eos>` fills the text span."""
    from pararl.processing import SequencePreset

    from .tokenizer import SPECIAL_TOKENS

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


def toy_policy_path() -> str:
    """Folder of the shipped tiny policy: a `MaskedDiffusionLM` trained with pararl's parallel SFT on the toy world's
    train split (rebuilt by `python -m pararl.toy.build_assets --only policy`; its held-out scores are recorded in
    `metrics.json` beside the weights)."""
    path = Path(__file__).parent / "assets" / "policy"
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the toy policy is missing from {path}; rebuild it with `python -m pararl.toy.build_assets --only policy`."
        )
    return str(path)
