"""`DiffusionGRPOConfig` documents itself: each field's `help` is its docstring entry, and `--help` shows it."""

import dataclasses
import re

import pytest
from transformers import HfArgumentParser

from pararl import DiffusionGRPOConfig
from pararl.rewards.steps import STEP_SELECTIONS
from pararl.rollout.decoder import GUIDANCE_DROP, REMASKING, THRESHOLD_FLOORS
from pararl.rollout.schedules import DECODE_ORDERS, SCHEDULES


def _words(text: str) -> str:
    return " ".join(text.split())


def docstring_parameters(cls) -> dict[str, str]:
    """`{field: description}` of the `Parameters:` section of `cls`'s docstring (HF/TRL layout: a field line
    `name (type, ...):` at one indent, its description one indent deeper, `> group` lines between)."""
    lines = cls.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "Parameters:")
    entries: dict[str, list[str]] = {}
    name, field_indent = None, None
    for line in lines[start + 1 :]:
        if not line.strip() or line.strip().startswith(">"):
            continue
        indent = len(line) - len(line.lstrip())
        match = re.match(r"(\w+) \(.*\):$", line.strip())
        if match and (field_indent is None or indent == field_indent):
            name, field_indent = match.group(1), indent
            entries[name] = []
        elif name is not None and indent > field_indent:
            entries[name].append(line.strip())
    return {key: _words(" ".join(value)) for key, value in entries.items()}


def test_every_field_of_the_config_has_its_docstring_entry_as_help():
    own = [f for f in dataclasses.fields(DiffusionGRPOConfig) if f.name in DiffusionGRPOConfig.__annotations__]
    documented = docstring_parameters(DiffusionGRPOConfig)
    assert len(own) == 31 and set(documented) == {f.name for f in own}
    for f in own:
        assert _words(f.metadata["help"]) == documented[f.name], f.name


def test_the_parser_finds_a_field_whose_help_lost_its_docstring_text():
    class Shortened(DiffusionGRPOConfig):
        """Parameters:
        block_length (`int`):
            Semi-autoregressive text blocks. It must divide the text span.
        """

    assert docstring_parameters(Shortened) == {
        "block_length": "Semi-autoregressive text blocks. It must divide the text span."
    }
    help_text = next(f for f in dataclasses.fields(Shortened) if f.name == "block_length").metadata["help"]
    assert _words(help_text) != docstring_parameters(Shortened)["block_length"]


def test_help_shows_the_divisibility_rules_of_block_length():
    text = _words(HfArgumentParser(DiffusionGRPOConfig).format_help())
    assert "`block_length` must divide the text span" in text
    assert "the number of blocks must divide the text's steps" in text


def test_the_allowed_values_are_the_rollout_and_step_selector_modules_own():
    choices = {f.name: f.metadata.get("choices") for f in dataclasses.fields(DiffusionGRPOConfig)}
    assert choices["text_schedule"] == choices["image_schedule"] == list(SCHEDULES)
    assert choices["remasking"] == list(REMASKING) and choices["guidance_drop"] == list(GUIDANCE_DROP)
    assert choices["decode_order"] == list(DECODE_ORDERS) and choices["threshold_floor"] == list(THRESHOLD_FLOORS)
    assert choices["reward_step_selection"] == list(STEP_SELECTIONS)


@pytest.mark.parametrize("config_class", ["grpo", "sft"])
def test_nonsense_training_settings_are_refused_with_the_range(config_class, tmp_path):
    from pararl.sft import ParallelSFTConfig

    cls = DiffusionGRPOConfig if config_class == "grpo" else ParallelSFTConfig
    base = {"output_dir": str(tmp_path), "use_cpu": True, "bf16": False, "report_to": "none"}
    cases = {
        "max_steps": (-5, "max_steps=-5 must be >= -1 (-1: train for num_train_epochs)"),
        "learning_rate": (-1.0, "learning_rate=-1.0 must be >= 0 (0: no update, e.g. a control run)"),
        "per_device_train_batch_size": (0, "per_device_train_batch_size=0 must be >= 1"),
        "adam_beta2": (1.0, "adam_beta2=1.0 must be in [0, 1)"),
        "seed": (-1, "seed=-1 must be in [0, 2**32)"),
    }
    if config_class == "grpo":
        cases["beta"] = (-0.1, "beta=-0.1 must be >= 0 (0: no KL term)")
        cases["num_iterations"] = (0, "num_iterations=0 must be >= 1")
    for name, (value, message) in cases.items():
        with pytest.raises(ValueError) as error:
            cls(**base, **{name: value})
        assert str(error.value) == f"{cls.__name__}: {message}."
    # Every bad field at once; and the edges of the ranges are accepted (learning rate 0 is the no-update control).
    with pytest.raises(ValueError, match=r"max_steps=-2 .*; learning_rate=-0.1 "):
        cls(**base, max_steps=-2, learning_rate=-0.1)
    with pytest.raises(ValueError, match="num_train_epochs=0 with max_steps=-1 trains nothing"):
        cls(**base, num_train_epochs=0)
    cls(**base, max_steps=-1, learning_rate=0.0, max_grad_norm=0.0, seed=0)
