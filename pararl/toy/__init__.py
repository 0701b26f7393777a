"""The toy world: procedural thinking-aware tasks, its exact image tokenizer, word tokenizer and sequence preset."""

from .palette import TOY_COLOURS, TOY_PALETTE, toy_image_tokenizer
from .policy import toy_policy_path
from .processing import toy_preset, toy_processor
from .scenes import SHAPES, ToyObject, parse_scene, render_scene, scene_codes
from .tasks import CATEGORIES, ToySample, build_toy_dataset, combination_key, generate_samples, is_held_out
from .texts import MAX_PROMPT_WORDS, MAX_REASONING_WORDS, describe_scene, world_vocabulary
from .tokenizer import build_toy_tokenizer, load_toy_tokenizer


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
