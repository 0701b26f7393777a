"""Reward normalisation (ParaRL, paper Eq. 4) and its calibration pass.

A raw CLIP score lives on a model-specific scale (a cosine around 0.2-0.35 for a real CLIP). ParaRL turns it into
a reward in [0, 1]: ``z = (x - mean) / std``, clipped to ``[-c, c]`` (``c = 1``), then mapped linearly by
``(z + c) / (2c)``. ``mean`` and ``std`` are estimated once, before training, on rollouts of the current policy for a
random 1% of the training prompts (:func:`calibrate_normalizer`), or given.
"""

import math
from collections.abc import Sequence
from typing import Any

import torch

from .base import Reward, RewardStates
from .steps import StepSelector, UniformSteps


__all__ = ["RewardNormalizer", "calibrate_normalizer"]


class RewardNormalizer:
    r"""Z-score, clip and map a raw score to [0, 1].

    $$ R = \frac{\mathrm{clip}\left(\frac{x - \mu}{\sigma}, -c, c\right) + c}{2c} $$

    Args:
        mean (`float` or `None`, defaults to `None`): Centre μ. `None` until given or fitted.
        std (`float` or `None`, defaults to `None`): Scale σ >= 0. `std = 0` is the limit σ -> 0: 0.5 at `x == mean`,
            0 below and 1 above (a step function), so a degenerate calibration still gives a defined reward.
        clip (`float` or `None`, defaults to `None`): Clip constant `c > 0`, in units of σ. `None` leaves it to the
            trainer (its `reward_clip`) and is 1.0 until then; a value given here is kept by the trainer.

    `None` and NaN values pass through unchanged ("not applicable" stays "not applicable").

    Example:

    ```python
    >>> normalizer = RewardNormalizer(mean=1.0, std=2.0)
    >>> normalizer([1.0, 2.0, 5.0, -3.0, None])
    [0.5, 0.75, 1.0, 0.0, None]
    ```
    """

    def __init__(self, mean: float | None = None, std: float | None = None, clip: float | None = None):
        self.clip_given = clip is not None
        self.clip = 1.0 if clip is None else float(clip)
        if not self.clip > 0 or math.isinf(self.clip):
            raise ValueError(f"clip must be a finite number > 0, got {clip}.")
        self.mean: float | None = None
        self.std: float | None = None
        self._set(mean, std)

    def _set(self, mean: float | None, std: float | None) -> None:
        if (mean is None) != (std is None):
            raise ValueError(f"give both mean and std or neither (got mean={mean}, std={std}).")
        if mean is not None:
            mean, std = float(mean), float(std)
            if not math.isfinite(mean):
                raise ValueError(f"mean must be finite, got {mean}.")
            if not (math.isfinite(std) and std >= 0):
                raise ValueError(f"std must be finite and >= 0, got {std}.")
        self.mean, self.std = mean, std

    @property
    def is_fitted(self) -> bool:
        return self.mean is not None

    def fit(self, values: Sequence[float | None] | torch.Tensor) -> "RewardNormalizer":
        """Sets mean and std (population std, ddof = 0) from raw scores; `None`/NaN values are ignored."""
        x = _to_tensor(values).double()
        x = x[~torch.isnan(x)]
        if x.numel() == 0:
            raise ValueError("fit() needs at least one raw score that is not None/NaN.")
        self._set(x.mean().item(), x.std(correction=0).item())
        return self

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises a float tensor of raw scores (any shape); NaN stays NaN."""
        if not self.is_fitted:
            raise RuntimeError(
                "RewardNormalizer has no mean/std yet: pass mean= and std=, call fit(), or run calibrate_normalizer()."
            )
        x = x.double() if x.dtype != torch.float64 else x
        if self.std == 0:
            out = torch.where(x > self.mean, 1.0, torch.where(x < self.mean, 0.0, 0.5)).to(x.dtype)
            return torch.where(torch.isnan(x), x, out)
        c = self.clip
        z = ((x - self.mean) / self.std).clamp(-c, c)
        return (z + c) / (2 * c)

    def __call__(self, values: Sequence[float | None] | torch.Tensor) -> list[float | None] | torch.Tensor:
        """Normalises a tensor (returns a float64 tensor) or a list with `None`s (returns a list)."""
        if isinstance(values, torch.Tensor):
            return self.normalize(values)
        out = self.normalize(_to_tensor(values)).tolist()
        return [None if v is None else o for v, o in zip(values, out)]

    def state_dict(self) -> dict[str, Any]:
        """`{"mean", "std", "clip"}`: plain floats (or `None`), safe for JSON and `torch.save`."""
        return {"mean": self.mean, "std": self.std, "clip": self.clip}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        missing = {"mean", "std", "clip"} - set(state_dict)
        if missing:
            raise ValueError(f"RewardNormalizer state_dict is missing {sorted(missing)}.")
        clip = float(state_dict["clip"])
        if not clip > 0 or math.isinf(clip):
            raise ValueError(f"state_dict clip must be a finite number > 0, got {clip}.")
        self._set(state_dict["mean"], state_dict["std"])
        self.clip, self.clip_given = clip, True

    def __repr__(self) -> str:
        return f"RewardNormalizer(mean={self.mean}, std={self.std}, clip={self.clip})"


def _to_tensor(values: Sequence[float | None] | torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().flatten()
    return torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)


@torch.no_grad()
def calibrate_normalizer(
    reward: Reward,
    decoder,
    dataset,
    processor=None,
    fraction: float = 0.01,
    step_selector: StepSelector | None = None,
    seed: int = 0,
    batch_size: int = 8,
    min_prompts: int = 8,
    grey_unrevealed: bool = False,
) -> RewardNormalizer:
    """Estimates a reward's normaliser from rollouts of the current policy (ParaRL's calibration pass).

    Draws `max(min_prompts, ceil(fraction * len(dataset)))` random prompts (all of them for small datasets), rolls
    each out once with `decoder.generate` (recording the x0 estimate at the selected steps), scores the states at
    those steps *un-normalised* and fits mean and std on all the scores. The result is stored in
    `reward.normalizer` (created if the reward has none) and returned.

    Args:
        reward ([`Reward`]): Uses `reward.raw_scores(states)` when it has one (CLIP rewards), else `reward.score`.
        decoder ([`~pararl.rollout.ParallelDecoder`]): Holds the current policy and the rollout settings.
        dataset: The training set (a `datasets.Dataset` or a list of dicts) with a `prompt` column; `image` (input
            image, `None` for generation) and `task` are used when present; every column except `prompt` reaches
            the reward as `states.columns`.
        processor ([`~pararl.processing.ParallelProcessor`], *optional*): Defaults to `decoder.processor`.
        fraction (`float`, defaults to `0.01`): Share of the prompts to roll out (the paper's 1%).
        step_selector ([`StepSelector`], *optional*): The training run's selector; defaults to `UniformSteps(3)`.
        seed (`int`, defaults to `0`): Seeds the prompt draw, the steps and the rollout noise.
        batch_size (`int`, defaults to `8`): Prompts per rollout batch.
        min_prompts (`int`, defaults to `8`): Lower bound on the number of prompts (1% of a small set is too few).
        grey_unrevealed (`bool`, defaults to `False`): As in [`RewardStates.from_trajectory`]; use the training
            run's setting.
    """
    processor = processor if processor is not None else decoder.processor
    step_selector = step_selector if step_selector is not None else UniformSteps(3)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}.")
    if batch_size < 1 or min_prompts < 1:
        raise ValueError(f"batch_size and min_prompts must be >= 1, got {batch_size} and {min_prompts}.")
    size = len(dataset)
    if size == 0:
        raise ValueError("the calibration dataset is empty.")
    count = min(size, max(min_prompts, math.ceil(fraction * size)))
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(size, generator=generator)[:count].tolist()
    num_steps = decoder.config.num_steps
    score = getattr(reward, "raw_scores", reward.score)

    scores: list[float | None] = []
    for start in range(0, count, batch_size):
        rows = [dataset[i] for i in chosen[start : start + batch_size]]
        if "prompt" not in rows[0]:
            raise ValueError(f"the calibration dataset needs a 'prompt' column, got columns {sorted(rows[0])}.")
        prompts = [row["prompt"] for row in rows]
        images = [row.get("image") for row in rows]
        tasks = [row.get("task") for row in rows]
        steps = step_selector.select(len(rows), num_steps, generator)
        seeds = torch.randint(0, 1 << 62, (len(rows),), generator=generator)
        trajectory = decoder.generate(prompts, images=images, tasks=tasks, record_steps=steps.unique(), seeds=seeds)
        columns = {name: [row[name] for row in rows] for name in rows[0] if name != "prompt"}
        states = RewardStates.from_trajectory(
            trajectory,
            processor,
            steps,
            prompts,
            input_images=images,
            columns=columns,
            grey_unrevealed=grey_unrevealed,
        )
        scores.extend(score(states))

    normalizer = getattr(reward, "normalizer", None)
    if normalizer is None:
        normalizer = RewardNormalizer()
    normalizer.fit(scores)
    if hasattr(reward, "normalizer"):
        reward.normalizer = normalizer
    return normalizer
