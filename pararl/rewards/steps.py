"""Which denoising steps of a rollout get a reward.

ParaRL scores a few (`s = 3` in the paper) intermediate steps per rollout instead of only the final output. The
steps of a prompt group are shared by its G rollouts, so that rewards at the same step can be compared (the
per-step group advantage); they are drawn fresh for each group. A selector returns one row of steps per group; the
trainer repeats each row for the group's rollouts.

Steps are 0-based indices on the rollout's shared step axis `0 .. num_steps - 1`. Randomness comes only from the
`generator` argument, so a seeded generator reproduces the selection.
"""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch


__all__ = [
    "StepSelector",
    "UniformSteps",
    "StratifiedSteps",
    "FinalStep",
    "FixedSteps",
    "AllSteps",
    "get_step_selector",
    "STEP_SELECTIONS",
]

# The selectors `get_step_selector` builds by name.
STEP_SELECTIONS = ("uniform", "stratified", "final", "fixed", "all")


@runtime_checkable
class StepSelector(Protocol):
    """Chooses the reward steps of each prompt group."""

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Returns `LongTensor (num_groups, s)`: per group, `s` sorted, distinct steps in `[0, num_steps)`."""
        ...


def _check(num_groups: int, num_steps: int, k: int | None = None) -> None:
    if num_groups < 0:
        raise ValueError(f"num_groups must be >= 0, got {num_groups}.")
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    if k is not None and k > num_steps:
        raise ValueError(
            f"cannot select {k} distinct reward steps from a rollout of {num_steps} steps; lower the number of reward "
            f"steps (num_reward_steps) to at most {num_steps} or raise the number of denoising steps."
        )


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k (the number of reward steps) must be an integer >= 1, got {k!r}.")
    return k


class UniformSteps:
    """`k` distinct steps drawn uniformly at random (without replacement), fresh for every group.

    This is the paper's choice ("uniformly sampled", s = 3).
    """

    def __init__(self, k: int = 3):
        self.k = _check_k(k)

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(num_groups, num_steps, self.k)
        # The first k entries of a random permutation per row: uniform over k-subsets, one vectorised call.
        keys = torch.rand(num_groups, num_steps, generator=generator)
        return keys.argsort(dim=1)[:, : self.k].sort(dim=1).values

    def __repr__(self) -> str:
        return f"UniformSteps(k={self.k})"


class StratifiedSteps:
    """One step drawn uniformly inside each of `k` equal segments of the step axis.

    Segment `j` is `[floor(j T / k), floor((j + 1) T / k))`, so early, middle and late steps are all covered; the
    result is sorted and distinct by construction.
    """

    def __init__(self, k: int = 3):
        self.k = _check_k(k)

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(num_groups, num_steps, self.k)
        edges = torch.arange(self.k + 1) * num_steps // self.k
        starts, widths = edges[:-1], edges[1:] - edges[:-1]
        offsets = (torch.rand(num_groups, self.k, generator=generator) * widths).long()
        # rand < 1 so offsets < width; the clamp only guards float rounding at the upper end.
        return starts + torch.minimum(offsets, widths - 1)

    def __repr__(self) -> str:
        return f"StratifiedSteps(k={self.k})"


class FinalStep:
    """The last step only: output-level RL (the paper's baseline)."""

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(num_groups, num_steps)
        return torch.full((num_groups, 1), num_steps - 1, dtype=torch.long)

    def __repr__(self) -> str:
        return "FinalStep()"


class FixedSteps:
    """The same given steps for every group. Negative steps count from the end (`-1` = the last step)."""

    def __init__(self, steps: Sequence[int]):
        steps = list(steps)
        if not steps or any(isinstance(s, bool) or not isinstance(s, int) for s in steps):
            raise ValueError(f"steps must be a non-empty list of integers, got {steps!r}.")
        self.steps = steps

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(num_groups, num_steps)
        resolved = sorted(s + num_steps if s < 0 else s for s in self.steps)
        if resolved[0] < 0 or resolved[-1] >= num_steps:
            raise ValueError(f"FixedSteps {self.steps} fall outside a rollout of {num_steps} steps [0, {num_steps}).")
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"FixedSteps {self.steps} name the same step twice for a rollout of {num_steps} steps.")
        return torch.tensor(resolved, dtype=torch.long).expand(num_groups, -1).clone()

    def __repr__(self) -> str:
        return f"FixedSteps({self.steps})"


class AllSteps:
    """Every step (dense trajectory reward; expensive at real sizes)."""

    def select(self, num_groups: int, num_steps: int, generator: torch.Generator | None = None) -> torch.Tensor:
        _check(num_groups, num_steps)
        return torch.arange(num_steps).expand(num_groups, -1).clone()

    def __repr__(self) -> str:
        return "AllSteps()"


def get_step_selector(name: str, num_reward_steps: int = 3, steps: Sequence[int] | None = None) -> StepSelector:
    """Builds a selector from config values.

    Args:
        name: `"uniform"`, `"stratified"`, `"final"`, `"fixed"` (needs `steps`) or `"all"`.
        num_reward_steps: `k` of the uniform and stratified selectors.
        steps: The steps of `"fixed"`.
    """
    if name == "uniform":
        return UniformSteps(num_reward_steps)
    if name == "stratified":
        return StratifiedSteps(num_reward_steps)
    if name == "final":
        return FinalStep()
    if name == "all":
        return AllSteps()
    if name == "fixed":
        if steps is None:
            raise ValueError('step selection "fixed" needs the list of steps.')
        return FixedSteps(steps)
    raise ValueError(f"unknown step selection {name!r}; choose from {', '.join(STEP_SELECTIONS)}.")
