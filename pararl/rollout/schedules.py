"""Reveal schedules and their placement on the shared step axis.

A *schedule* says how many tokens of one modality are revealed at each of its active steps: a list of ints summing to
the span length. Schedules know nothing of the other modality; :func:`build_reveal_plan` places both on the shared axis
of `num_steps` steps (decode order, image start offset, text blocks) and returns a :class:`RevealPlan` of plain host
ints, so the decoder's step loop never has to ask the device how many tokens to reveal.

Built-in schedules:

- [`LinearSchedule`]: equal numbers per step, the remainder on the first steps (LLaDA's `get_num_transfer_tokens`).
- [`CosineSchedule`]: MaskGIT; after active step `i` of `S` a fraction `cos(pi/2 * (i + 1) / S)` of the span is still
  masked (rounded down, so every count is exact and the last step reveals everything).
- [`CallableSchedule`]: wraps a user function `f(step, num_steps)` giving the fraction (a `float`) or the count (an
  `int`) revealed by the *end* of active step `step` (0-based, `num_steps` = the modality's active steps).

Text blocks (semi-autoregressive decoding, LLaDA style): the text's active steps are split equally among
`text_span / block_length` blocks, the text schedule runs inside each block on its share of the steps, and the decoder
only reveals text slots of the current block.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass


__all__ = [
    "RevealSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "CallableSchedule",
    "get_schedule",
    "RevealPlan",
    "build_reveal_plan",
    "DECODE_ORDERS",
    "SCHEDULES",
]

DECODE_ORDERS = ("parallel", "text_then_image", "image_then_text")
# The schedules `get_schedule` knows by name.
SCHEDULES = ("linear", "cosine")


class RevealSchedule(ABC):
    """How many tokens of one span are revealed at each active step.

    Subclasses implement :meth:`counts`; its result must be `num_steps` non-negative ints summing to `num_tokens`.
    """

    name: str = "custom"

    @abstractmethod
    def counts(self, num_tokens: int, num_steps: int) -> list[int]:
        """Tokens revealed at each of `num_steps` consecutive steps (sums to `num_tokens`)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LinearSchedule(RevealSchedule):
    """Equal reveals per step; the `num_tokens % num_steps` leftover tokens go to the first steps.

    More steps than tokens is allowed: the surplus steps reveal nothing.
    """

    name = "linear"

    def counts(self, num_tokens: int, num_steps: int) -> list[int]:
        _check_sizes(self, num_tokens, num_steps)
        base, extra = divmod(num_tokens, num_steps)
        return [base + (1 if step < extra else 0) for step in range(num_steps)]


class CosineSchedule(RevealSchedule):
    """MaskGIT's cosine schedule: the masked fraction after active step `i` is `cos(pi/2 * (i + 1) / num_steps)`.

    The number still masked is rounded down, so early steps reveal few tokens, late steps many, and the last step
    leaves nothing masked.
    """

    name = "cosine"

    def counts(self, num_tokens: int, num_steps: int) -> list[int]:
        _check_sizes(self, num_tokens, num_steps)
        revealed = [
            num_tokens - math.floor(num_tokens * math.cos(math.pi / 2 * (step + 1) / num_steps))
            for step in range(num_steps)
        ]
        revealed[-1] = num_tokens  # cos(pi/2) is 6e-17 in floating point, not 0
        return _differences(revealed)


class CallableSchedule(RevealSchedule):
    """Wraps `fn(step, num_steps) -> fraction (float) or count (int)` revealed by the end of active step `step`.

    Fractions are rounded to the nearest count. The cumulative counts must not decrease, must stay within
    `[0, num_tokens]` and must reach `num_tokens` at the last step.
    """

    def __init__(self, fn: Callable[[int, int], float | int], name: str | None = None):
        if not callable(fn):
            raise ValueError(f"CallableSchedule needs a callable fn(step, num_steps), got {type(fn).__name__}.")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "custom")

    def counts(self, num_tokens: int, num_steps: int) -> list[int]:
        _check_sizes(self, num_tokens, num_steps)
        revealed = []
        for step in range(num_steps):
            value = self.fn(step, num_steps)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"schedule {self.name!r} returned {value!r} for step {step}; return the fraction (float) or the "
                    "count (int) of tokens revealed by the end of that step."
                )
            count = value if isinstance(value, int) else math.floor(value * num_tokens + 0.5)
            revealed.append(count)
        if revealed[-1] != num_tokens or min(revealed) < 0 or max(revealed) > num_tokens:
            raise ValueError(
                f"schedule {self.name!r} must reveal between 0 and all {num_tokens} tokens, and all of them by its "
                f"last step (step {num_steps - 1} of {num_steps}); its cumulative counts are {revealed}."
            )
        if any(b < a for a, b in zip(revealed, revealed[1:])):
            raise ValueError(f"schedule {self.name!r} un-reveals tokens: its cumulative counts {revealed} decrease.")
        return _differences(revealed)

    def __repr__(self) -> str:
        return f"CallableSchedule({self.name!r})"


def get_schedule(schedule: "str | RevealSchedule | Callable[[int, int], float | int]") -> RevealSchedule:
    """Resolves `"linear"`, `"cosine"`, a [`RevealSchedule`] or a callable `f(step, num_steps)` to a schedule."""
    if isinstance(schedule, RevealSchedule):
        return schedule
    if isinstance(schedule, str):
        named = {"linear": LinearSchedule, "cosine": CosineSchedule}
        if schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {schedule!r}; use one of {sorted(SCHEDULES)}, a RevealSchedule or a callable."
            )
        return named[schedule]()
    if callable(schedule):
        return CallableSchedule(schedule)
    raise ValueError(
        f"a schedule must be 'linear', 'cosine', a RevealSchedule or a callable f(step, num_steps), got {schedule!r}."
    )


def _check_sizes(schedule: RevealSchedule, num_tokens: int, num_steps: int) -> None:
    if num_tokens < 1 or num_steps < 1:
        raise ValueError(
            f"schedule {schedule.name!r} needs at least one token and one step (got {num_tokens}, {num_steps})."
        )


def _differences(cumulative: list[int]) -> list[int]:
    return [b - a for a, b in zip([0, *cumulative[:-1]], cumulative)]


@dataclass(frozen=True)
class RevealPlan:
    """Host-side reveal counts of both modalities on the shared axis.

    Attributes:
        num_steps: Length of the shared axis.
        text_counts / image_counts: Tokens revealed at every step (0 where the modality is idle); they sum to the
            text span / number of image tokens.
        text_windows: Per step, the `[start, end)` slice of the text span the step may reveal from (the current
            block; the whole span without blocks).
        text_steps / image_steps: `[start, end)` steps of the axis where each modality's schedule runs.
    """

    num_steps: int
    text_counts: tuple[int, ...]
    image_counts: tuple[int, ...]
    text_windows: tuple[tuple[int, int], ...]
    text_steps: tuple[int, int]
    image_steps: tuple[int, int]


def build_reveal_plan(
    num_steps: int,
    num_text_tokens: int,
    num_image_tokens: int,
    text_schedule: "str | RevealSchedule | Callable" = "linear",
    image_schedule: "str | RevealSchedule | Callable" = "cosine",
    block_length: int | None = None,
    image_start: float = 0.0,
    order: str = "parallel",
) -> RevealPlan:
    """Places the text and image schedules on a shared axis of `num_steps` steps.

    - `parallel`: text runs on every step; the image runs from step `floor(image_start * num_steps)` to the end.
    - `text_then_image`: text on the first `num_steps // 2` steps, the image on the rest (`image_start` is ignored).
    - `image_then_text`: the image on the first `num_steps // 2` steps, text on the rest (`image_start` is ignored).

    With `block_length`, the text's active steps are split equally among `num_text_tokens / block_length` blocks.

    Raises:
        ValueError: unknown order; `image_start` outside `[0, 1)`; a block length that does not divide the text span;
            fewer active steps than a schedule needs (fewer text steps than blocks, or text steps not divisible by the
            number of blocks).
    """
    text_steps, image_steps = _modality_steps(num_steps, image_start, order)
    n_text_steps, n_image_steps = text_steps[1] - text_steps[0], image_steps[1] - image_steps[0]
    if block_length is None:
        block_length = num_text_tokens
    num_blocks = _num_blocks(num_text_tokens, block_length, n_text_steps, num_steps, order)

    text_sched, image_sched = get_schedule(text_schedule), get_schedule(image_schedule)
    steps_per_block = n_text_steps // num_blocks
    text_counts, text_windows = [0] * num_steps, [(0, num_text_tokens)] * num_steps
    for block in range(num_blocks):
        counts = _checked(text_sched, block_length, steps_per_block, "text")
        for i, count in enumerate(counts):
            step = text_steps[0] + block * steps_per_block + i
            text_counts[step] = count
            text_windows[step] = (block * block_length, (block + 1) * block_length)
    image_counts = [0] * num_steps
    for i, count in enumerate(_checked(image_sched, num_image_tokens, n_image_steps, "image")):
        image_counts[image_steps[0] + i] = count
    return RevealPlan(
        num_steps=num_steps,
        text_counts=tuple(text_counts),
        image_counts=tuple(image_counts),
        text_windows=tuple(text_windows),
        text_steps=text_steps,
        image_steps=image_steps,
    )


def _modality_steps(num_steps: int, image_start: float, order: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """The `[start, end)` steps of the axis where the text and the image schedules run, as `order` places them."""
    if order not in DECODE_ORDERS:
        raise ValueError(f"unknown order {order!r}; use one of {list(DECODE_ORDERS)}.")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
    if not 0.0 <= image_start < 1.0:
        raise ValueError(f"image_start must be a fraction of the axis in [0, 1), got {image_start!r}.")
    if order == "parallel":
        return (0, num_steps), (int(image_start * num_steps), num_steps)
    half = num_steps // 2
    if half < 1:
        raise ValueError(f"order {order!r} needs num_steps >= 2 (one half of the axis per modality), got {num_steps}.")
    first, second = (0, half), (half, num_steps)
    return (first, second) if order == "text_then_image" else (second, first)


def _num_blocks(num_text_tokens: int, block_length: int, n_text_steps: int, num_steps: int, order: str) -> int:
    """The number of text blocks, checked: `block_length` divides the text part, and its steps split equally."""
    if block_length < 1 or num_text_tokens % block_length != 0:
        raise ValueError(
            f"block_length={block_length} must divide the text span of {num_text_tokens} tokens; pick a divisor of "
            f"{num_text_tokens} or block_length=None (one global block)."
        )
    num_blocks = num_text_tokens // block_length
    if n_text_steps < num_blocks:
        raise ValueError(
            f"text has {num_blocks} blocks of {block_length} tokens but only {n_text_steps} steps (order {order!r}, "
            f"num_steps={num_steps}); it needs at least one step per block: raise num_steps or block_length."
        )
    if n_text_steps % num_blocks != 0:
        raise ValueError(
            f"the {n_text_steps} text steps (order {order!r}, num_steps={num_steps}) cannot be split equally among "
            f"{num_blocks} blocks of {block_length} tokens; make the text steps a multiple of {num_blocks}."
        )
    return num_blocks


def _checked(schedule: RevealSchedule, num_tokens: int, num_steps: int, modality: str) -> list[int]:
    counts = [int(c) for c in schedule.counts(num_tokens, num_steps)]
    if len(counts) != num_steps or sum(counts) != num_tokens or min(counts) < 0:
        raise ValueError(
            f"{modality} schedule {schedule!r} returned {counts} for {num_tokens} tokens over {num_steps} steps; it "
            f"must return {num_steps} non-negative counts summing to {num_tokens}."
        )
    return counts
