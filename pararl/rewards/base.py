"""The reward API: a batch of intermediate states, the `Reward` base class, the TRL-callable adapter and the one
entry point the trainer calls.

ParaRL scores *intermediate* denoising states. For rollout `i` and reward step `k` (0-based), the state is (the
rollout convention, see `pararl.rollout`):

- text: the text of `state_at(k + 1)`, i.e. every text token revealed up to and including step `k`, masks dropped;
- image: the VQ decode of `x0_at(k)`, the model's full prediction at step `k` (revealed cells plus the sampled
  candidates of still-masked cells), optionally with the unrevealed cells painted grey.

:class:`RewardStates` holds a batch of such states, decoded once and shared by every reward. A reward subclasses
:class:`Reward` and implements `score(states) -> list[float | None]`; a plain TRL reward callable is wrapped by
:func:`as_reward`. :func:`compute_rewards` runs a list of rewards with error handling and returns the per-function
reward matrix that TRL's `reward_weights` combine.
"""

import asyncio
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from ..image_tokenizers import tensor_to_images


__all__ = ["RewardStates", "Reward", "FunctionReward", "as_reward", "compute_rewards", "RewardFunc"]


@dataclass
class RewardStates:
    """A batch of `N` intermediate rollout states, decoded once and shared by all rewards.

    Attributes:
        prompts (`list[str]`): The instruction of each state's prompt.
        texts (`list[str]`): The partial reasoning text (masked tokens dropped, cut at `<eos>`).
        images (`list[PIL.Image.Image]`): The partial output image (decoded from the x0 estimate).
        image_tensors (`torch.FloatTensor` of shape `(N, 3, H, W)`): The same images as floats in [0, 1].
        input_images (`list[PIL.Image.Image | None]`): The input image of edits, `None` for generation.
        steps (`torch.LongTensor` of shape `(N,)`): The 0-based denoising step `k` of each state.
        num_steps (`int`): Number of denoising steps of the rollouts.
        text_revealed (`torch.FloatTensor` of shape `(N,)`): Fraction of text slots revealed after step `k`.
        image_revealed (`torch.FloatTensor` of shape `(N,)`): Fraction of image slots revealed after step `k`.
        token_ids (`torch.LongTensor` of shape `(N, L_out)`): The output part after step `k` (`state_at(k + 1)`,
            masks included).
        columns (`dict[str, list]`): The rows' other dataset columns (e.g. `task`, `category`, `answer`), each a
            list of length `N`.
        x0_ids (`torch.LongTensor` of shape `(N, L_out)`, *optional*): The x0 estimate the image was decoded from.
        trajectory_index (`torch.LongTensor` of shape `(N,)`, *optional*): The trajectory row of each state.
        extras (`dict[str, Any]`): Batch-level objects passed as keyword arguments to wrapped TRL callables (e.g.
            `trainer_state`, `log_metric`); not per-state.
    """

    prompts: list[str]
    texts: list[str]
    images: list[Image.Image]
    image_tensors: torch.Tensor
    input_images: list[Image.Image | None]
    steps: torch.Tensor
    num_steps: int
    text_revealed: torch.Tensor
    image_revealed: torch.Tensor
    token_ids: torch.Tensor
    columns: dict[str, list] = field(default_factory=dict)
    x0_ids: torch.Tensor | None = None
    trajectory_index: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.prompts)
        sized = {
            "texts": len(self.texts),
            "images": len(self.images),
            "image_tensors": self.image_tensors.shape[0],
            "input_images": len(self.input_images),
            "steps": self.steps.shape[0],
            "text_revealed": self.text_revealed.shape[0],
            "image_revealed": self.image_revealed.shape[0],
            "token_ids": self.token_ids.shape[0],
        }
        sized.update({f"columns[{name!r}]": len(values) for name, values in self.columns.items()})
        if self.x0_ids is not None:
            sized["x0_ids"] = self.x0_ids.shape[0]
        if self.trajectory_index is not None:
            sized["trajectory_index"] = self.trajectory_index.shape[0]
        wrong = {name: size for name, size in sized.items() if size != n}
        if wrong:
            raise ValueError(f"RewardStates has {n} prompts but these fields have other lengths: {wrong}.")
        if self.image_tensors.dim() != 4 or self.image_tensors.shape[1] != 3:
            raise ValueError(f"image_tensors must have shape (N, 3, H, W), got {tuple(self.image_tensors.shape)}.")

    def __len__(self) -> int:
        return len(self.prompts)

    @classmethod
    def from_trajectory(
        cls,
        trajectory,
        processor,
        steps: torch.Tensor | int,
        prompts: Sequence[str],
        input_images: Sequence[Image.Image | None] | None = None,
        columns: dict[str, Sequence] | None = None,
        grey_unrevealed: bool = False,
        rows: torch.Tensor | Sequence[int] | None = None,
        extras: dict[str, Any] | None = None,
    ) -> "RewardStates":
        """Builds the states of a recorded trajectory at the given steps (decoded once for all rewards).

        Two ways to say which states:

        - per rollout (`rows=None`): `steps` is `(B,)` (one state per rollout) or `(B, s)` (`B * s` states,
          rollout-major: state `i * s + j` is rollout `i` at step `steps[i, j]`); `prompts`, `input_images` and
          `columns` have one entry per rollout and are repeated;
        - per state (`rows` given): state `n` is trajectory row `rows[n]` at step `steps[n]`; `steps`, `prompts`,
          `input_images` and `columns` have one entry per state.

        Args:
            trajectory ([`~pararl.rollout.Trajectory`]): A batch of `B` rollouts whose x0 estimate was recorded at
                every requested step (`record_steps` of the decoder).
            processor ([`~pararl.processing.ParallelProcessor`]): Decodes text and images.
            steps (`torch.LongTensor` of shape `(B,)`, `(B, s)` or `(N,)`, or `int`): 0-based denoising steps.
            prompts (`Sequence[str]`): The instructions.
            input_images (`Sequence[PIL.Image.Image | None]`, *optional*): Input images (`None` for generation).
            columns (`dict[str, Sequence]`, *optional*): Other dataset columns.
            grey_unrevealed (`bool`, defaults to `False`): Paint image cells that are still masked after step `k`
                mid-grey instead of showing the x0 candidates.
            rows (`torch.LongTensor` of shape `(N,)`, *optional*): Trajectory row of each state (see above).
            extras (`dict[str, Any]`, *optional*): See [`RewardStates`].
        """
        batch = trajectory.output_ids.shape[0]
        num_steps = int(trajectory.num_steps)
        steps = torch.as_tensor(steps, dtype=torch.long).cpu()
        if rows is None:
            if steps.dim() == 0:
                steps = steps.expand(batch)
            if steps.dim() == 1:
                steps = steps[:, None]
            if steps.dim() != 2 or steps.shape[0] != batch:
                raise ValueError(
                    f"steps must have shape (B,) or (B, s) with B = {batch} rollouts, got {tuple(steps.shape)}."
                )
            per_rollout = steps.shape[1]
            rows = torch.arange(batch).repeat_interleave(per_rollout)
            steps = steps.flatten()
            expected, owner = batch, "rollouts"
        else:
            rows = torch.as_tensor(rows, dtype=torch.long).cpu()
            if steps.dim() == 0:
                steps = steps.expand(rows.shape[0])
            if rows.dim() != 1 or steps.shape != rows.shape:
                raise ValueError(
                    f"rows and steps must both have shape (N,), got rows {tuple(rows.shape)} and steps "
                    f"{tuple(steps.shape)}."
                )
            if rows.numel() and (rows.min() < 0 or rows.max() >= batch):
                raise ValueError(f"rows must index the trajectory's {batch} rollouts, got {rows.tolist()}.")
            per_rollout = 1
            expected, owner = rows.shape[0], "states (rows)"
        if steps.numel() and (steps.min() < 0 or steps.max() >= num_steps):
            raise ValueError(
                f"steps must lie in [0, {num_steps}) (num_steps of the trajectory), got {steps.unique().tolist()}."
            )
        _check_recorded(trajectory, steps)
        prompts = list(prompts)
        input_images = list(input_images) if input_images is not None else [None] * expected
        columns = {name: list(values) for name, values in (columns or {}).items()}
        for name, values in [("prompts", prompts), ("input_images", input_images)] + list(columns.items()):
            if len(values) != expected:
                raise ValueError(f"{name} has {len(values)} entries but there are {expected} {owner}.")

        def repeat(values: list) -> list:
            return [value for value in values for _ in range(per_rollout)]

        if not torch.equal(rows, torch.arange(batch)):
            trajectory = trajectory.index_select(rows)  # one trajectory row per state
        device = trajectory.output_ids.device
        step = steps.to(device)
        state_ids = trajectory.state_at(step + 1)
        x0_ids = trajectory.x0_at(step).to(device)

        revealed = state_ids != processor.preset.mask_token_id
        text_pos = processor.text_positions.to(device)
        image_pos = processor.image_positions.to(device)
        codes = processor.image_codes(x0_ids)
        if grey_unrevealed:
            codes = codes.masked_fill(~revealed[:, image_pos].view_as(codes), -1)
        image_tensors = processor.decode_images(codes, grey_unknown=True)

        return cls(
            prompts=repeat(prompts),
            texts=processor.decode_text(state_ids),
            images=tensor_to_images(image_tensors),
            image_tensors=image_tensors,
            input_images=repeat(input_images),
            steps=step,
            num_steps=num_steps,
            text_revealed=revealed[:, text_pos].float().mean(dim=1),
            image_revealed=revealed[:, image_pos].float().mean(dim=1),
            token_ids=state_ids,
            columns={name: repeat(values) for name, values in columns.items()},
            x0_ids=x0_ids,
            trajectory_index=rows.to(device),
            extras=dict(extras or {}),
        )


def _check_recorded(trajectory, steps: torch.Tensor) -> None:
    recorded = getattr(trajectory, "recorded_steps", None)
    recorded = [] if recorded is None else torch.as_tensor(recorded).flatten().tolist()
    missing = sorted(set(steps.flatten().tolist()) - set(recorded))
    if missing:
        raise ValueError(
            f"the trajectory has no x0 estimate for step(s) {missing} (recorded: {recorded}); roll out with "
            "record_steps covering every reward step so the partial images can be decoded."
        )


def _snake_case(name: str) -> str:
    # "CLIPAlignmentReward" -> "clip_alignment_reward": split before a capital that starts a word.
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


class Reward:
    """Base class of pararl rewards.

    A subclass implements :meth:`score`, which receives a [`RewardStates`] batch and returns one value per state:
    a float, or `None` when the reward does not apply to that state (as in TRL; e.g. an edit-only reward on a
    generation prompt). Rewards are combined by the trainer with TRL's `reward_weights` and logged under
    `rewards/<name>/mean`; `name` defaults to the snake-case class name and can be overridden by a class attribute
    or by assigning `reward.name`.

    Example:

    ```python
    from pararl.rewards import Reward


    class LongerIsBetter(Reward):
        def score(self, states):
            return [min(len(text.split()) / 20, 1.0) for text in states.texts]
    ```
    """

    def score(self, states: RewardStates) -> list[float | None]:
        raise NotImplementedError(f"{type(self).__name__} must implement score(states) -> list[float | None].")

    def __call__(self, states: RewardStates) -> list[float | None]:
        return self.score(states)

    @property
    def name(self) -> str:
        return self.__dict__.get("_name") or _snake_case(type(self).__name__)

    @name.setter
    def name(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError(f"a reward name must be a non-empty string, got {value!r}.")
        self.__dict__["_name"] = value

    def to(self, device: torch.device | str) -> "Reward":
        """Moves the reward's models (if any) to `device`; the trainer calls it with the accelerator's device."""
        return self

    def state_dict(self) -> dict[str, Any]:
        """State saved in trainer checkpoints (e.g. a fitted normaliser); empty for stateless rewards."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict:
            raise ValueError(f"reward {self.name!r} has no state but got state_dict keys {sorted(state_dict)}.")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


RewardFunc = Reward | Callable[..., list[float | None]]

# Keyword arguments the adapter always passes; dataset columns of the same name are not passed.
_RESERVED_KWARGS = (
    "prompts",
    "completions",
    "completion_ids",
    "images",
    "image_tensors",
    "input_images",
    "step",
    "num_steps",
    "text_revealed",
    "image_revealed",
)


def _callable_name(func: Callable) -> str:
    # Same rule as TRL: the function's __name__, functools.partial unwrapped, instances by their class name.
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__name__", None) or type(func).__name__


class FunctionReward(Reward):
    """A plain TRL reward callable used as a [`Reward`] (made by :func:`as_reward`).

    The callable is called with keyword arguments only:

    - `prompts` (`list[str]`), `completions` (`list[str]`: the partial texts), `completion_ids` (`list[list[int]]`:
      the state token ids of the output part, masks included);
    - `images` (`list[PIL.Image.Image]`: the partial output images), `image_tensors` (`FloatTensor (N, 3, H, W)`),
      `input_images` (`list[PIL.Image.Image | None]`);
    - `step` (`list[int]`), `num_steps` (`int`), `text_revealed` and `image_revealed` (`list[float]`);
    - every dataset column (e.g. `task`, `category`, `answer`), each a list; a column named like one of the
      arguments above is not passed (a warning says so);
    - the batch's `extras`: in the trainer, what TRL passes its reward callables: `trainer_state` (the
      `TrainerState`), `log_metric(name, value)` (a scalar averaged into the logs) and `log_extra(column, values)`
      (a completions-table column, one value per state).

    So TRL-style `def reward(completions, **kwargs)` callables work unchanged; always accept `**kwargs`.
    """

    def __init__(self, func: Callable[..., list[float | None]], name: str | None = None):
        self.func = func
        self.name = name or _callable_name(func)
        self._warned_columns: set[str] = set()

    def score(self, states: RewardStates) -> list[float | None]:
        kwargs: dict[str, Any] = dict(states.extras)
        for column, values in states.columns.items():
            if column in _RESERVED_KWARGS:
                if column not in self._warned_columns:
                    self._warned_columns.add(column)
                    warnings.warn(
                        f"dataset column {column!r} is not passed to reward {self.name!r}: the name is reserved for "
                        f"the rollout states ({', '.join(_RESERVED_KWARGS)}); rename the column to receive it.",
                        stacklevel=2,
                    )
                continue
            kwargs[column] = values
        kwargs.update(
            prompts=states.prompts,
            completions=states.texts,
            completion_ids=states.token_ids.tolist(),
            images=states.images,
            image_tensors=states.image_tensors,
            input_images=states.input_images,
            step=states.steps.tolist(),
            num_steps=states.num_steps,
            text_revealed=states.text_revealed.tolist(),
            image_revealed=states.image_revealed.tolist(),
        )
        result = self.func(**kwargs)
        if inspect.isawaitable(result):
            # TRL accepts `async def` rewards; the trainer calls rewards outside any running event loop.
            result = asyncio.run(_await(result))
        return result

    def __repr__(self) -> str:
        return f"FunctionReward({_callable_name(self.func)}, name={self.name!r})"


async def _await(awaitable):
    return await awaitable


def as_reward(func: RewardFunc, name: str | None = None) -> Reward:
    """Returns `func` as a [`Reward`]: `Reward` objects unchanged, plain TRL callables wrapped in [`FunctionReward`].

    Args:
        func: A [`Reward`] or a TRL reward callable (`prompts`, `completions`, `completion_ids`, `**kwargs` ->
            `list[float | None]`).
        name: Metric name of a wrapped callable; defaults to the function's `__name__` (`functools.partial`
            unwrapped).
    """
    if isinstance(func, Reward):
        return func
    if isinstance(func, str) or isinstance(func, torch.nn.Module):
        raise ValueError(
            f"reward {func!r} is a model id or module; pararl rewards score rollout states, not token sequences. "
            "Wrap the model in a Reward subclass (see pararl.rewards.CLIPAlignmentReward for an example)."
        )
    if not callable(func):
        raise ValueError(f"a reward must be a pararl Reward or a callable, got {type(func).__name__}.")
    return FunctionReward(func, name=name)


def compute_rewards(rewards: Sequence[RewardFunc], states: RewardStates) -> tuple[torch.Tensor, dict[str, float]]:
    """Scores `states` with every reward: the trainer's single entry point.

    Args:
        rewards: [`Reward`] objects and/or TRL callables (wrapped with :func:`as_reward`); names must be unique.
        states: The batch of `N` states.

    Returns:
        `(rewards_per_func, metrics)`: `FloatTensor (N, len(rewards))` on the CPU with NaN where a reward returned
        `None`, and `{"rewards/<name>/nan_count": float}` (NaN values a reward returned, counted and treated as
        `None`; always present so every process logs the same keys). Weighting and summing is the trainer's job
        (TRL's `reward_weights`).

    Raises:
        RuntimeError: A reward raised; the message names the reward and the step(s) of the batch.
        ValueError: A reward returned the wrong number of values, a value that is not a number or `None`, or an
            infinite value; or two rewards share a name.
    """
    rewards = [as_reward(reward) for reward in rewards]
    names = [reward.name for reward in rewards]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"reward names must be unique (they key the metrics), got duplicates {duplicates}; set .name."
        )

    n = len(states)
    out = torch.full((n, len(rewards)), math.nan, dtype=torch.float32)
    metrics: dict[str, float] = {}
    for j, reward in enumerate(rewards):
        try:
            values = reward.score(states)
        except Exception as error:
            steps = sorted(set(states.steps.tolist()))
            raise RuntimeError(
                f"reward {reward.name!r} raised {type(error).__name__} while scoring {n} states at step(s) {steps} "
                f"of {states.num_steps}: {error}"
            ) from error
        column, returned_nan = _to_column(reward.name, values, n)
        nan_count = int(returned_nan.sum())
        if nan_count:
            steps = sorted(set(states.steps.cpu()[returned_nan].tolist()))
            warnings.warn(
                f"reward {reward.name!r} returned NaN for {nan_count} of {n} states (step(s) {steps}); treated as "
                "None (not applicable). Return None explicitly for states the reward does not apply to.",
                stacklevel=2,
            )
        out[:, j] = column
        metrics[f"rewards/{reward.name}/nan_count"] = float(nan_count)
    return out, metrics


def _to_column(name: str, values: Any, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validates one reward's output: `(FloatTensor (N,) with NaN for None, BoolTensor (N,) of returned NaNs)`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().flatten().tolist()
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"reward {name!r} must return a list of float | None, got {type(values).__name__}.")
    if len(values) != n:
        raise ValueError(
            f"reward {name!r} returned {len(values)} values for {n} states; return exactly one per state."
        )
    column, returned_nan = [], []
    for i, value in enumerate(values):
        if value is not None:
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"reward {name!r} returned {value!r} for state {i}; values must be numbers or None."
                ) from None
            if math.isinf(value):
                raise ValueError(f"reward {name!r} returned {value} for state {i}; reward values must be finite.")
        returned_nan.append(value is not None and math.isnan(value))
        column.append(math.nan if value is None else value)
    return torch.tensor(column, dtype=torch.float32), torch.tensor(returned_nan, dtype=torch.bool)
