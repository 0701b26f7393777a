"""The ranges of the numeric training settings that `transformers` and TRL take without checking.

`TrainingArguments(max_steps=-5)` builds and starts a run of `num_train_epochs` epochs; `learning_rate=-1.0` trains
uphill. [`check_ranges`] refuses such values in the configs' `__post_init__`, with the allowed range, before a run
starts. Each rule is `(field, test, allowed range)`; a field the config does not have is skipped.
"""

from collections.abc import Callable, Sequence
from typing import Any


__all__ = ["GRPO_RANGES", "TRAINING_RANGES", "check_ranges"]

Rule = tuple[str, Callable[[Any], bool], str]


def _optional(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or test(value)


# `TrainingArguments` fields (both stages).
TRAINING_RANGES: tuple[Rule, ...] = (
    ("max_steps", lambda v: v >= -1, ">= -1 (-1: train for num_train_epochs)"),
    ("num_train_epochs", lambda v: v >= 0, ">= 0"),
    ("learning_rate", lambda v: v >= 0, ">= 0 (0: no update, e.g. a control run)"),
    ("weight_decay", lambda v: v >= 0, ">= 0"),
    ("adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_beta2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("adam_epsilon", lambda v: v >= 0, ">= 0"),
    ("max_grad_norm", _optional(lambda v: v >= 0), ">= 0 (0 or None: no clipping)"),
    ("per_device_train_batch_size", lambda v: v >= 1, ">= 1"),
    ("per_device_eval_batch_size", lambda v: v >= 1, ">= 1"),
    ("gradient_accumulation_steps", lambda v: v >= 1, ">= 1"),
    ("logging_steps", lambda v: v > 0, "> 0 (below 1: a share of the training steps)"),
    ("save_steps", lambda v: v > 0, "> 0 (below 1: a share of the training steps)"),
    ("eval_steps", _optional(lambda v: v > 0), "> 0 or None (below 1: a share of the training steps)"),
    ("seed", lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    ("data_seed", _optional(lambda v: 0 <= v < 2**32), "in [0, 2**32) or None"),
    ("dataloader_num_workers", lambda v: v >= 0, ">= 0"),
)

# `trl.GRPOConfig` fields.
GRPO_RANGES: tuple[Rule, ...] = (
    ("beta", lambda v: v >= 0, ">= 0 (0: no KL term)"),
    ("epsilon", lambda v: v >= 0, ">= 0"),
    ("epsilon_high", _optional(lambda v: v >= 0), ">= 0 or None (None: epsilon)"),
    ("num_iterations", lambda v: v >= 1, ">= 1"),
    ("steps_per_generation", _optional(lambda v: v >= 1), ">= 1 or None"),
    ("generation_batch_size", _optional(lambda v: v >= 1), ">= 1 or None"),
    ("top_p", lambda v: 0 < v <= 1, "in (0, 1]"),
)


def check_ranges(config: Any, rules: Sequence[Rule] = TRAINING_RANGES) -> None:
    """Raises one `ValueError` naming every field of `config` outside its range, with the range; also a run with
    neither steps nor epochs."""
    bad = [
        f"{name}={getattr(config, name)!r} must be {allowed}"
        for name, test, allowed in rules
        if hasattr(config, name) and not test(getattr(config, name))
    ]
    if getattr(config, "max_steps", 1) in (-1, 0) and getattr(config, "num_train_epochs", 1) == 0:
        bad.append("num_train_epochs=0 with max_steps=-1 trains nothing; give max_steps or num_train_epochs > 0")
    if bad:
        raise ValueError(f"{type(config).__name__}: " + "; ".join(bad) + ".")
