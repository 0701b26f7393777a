"""The record of a rollout: final tokens, the step map, and everything needed to rebuild any intermediate state."""

from dataclasses import dataclass, fields

import torch


__all__ = ["Trajectory"]


@dataclass
class Trajectory:
    """A batch of parallel-decoding rollouts (dim 0 = sample everywhere).

    Any intermediate state is rebuilt exactly from the step map: at the start of step `k`, positions revealed before
    `k` hold their final token and the other maskable positions hold the mask token. Conventions used by rewards and
    losses: the reward of (sample `i`, step `k`) is computed on the text of `state_at(k + 1)` (what step `k` has
    written) and the image of `x0_at(k)` (the model's full prediction at step `k`); the loss for (`i`, `k`) scores the
    tokens with `step_map == k` given `state_at(k)` (see :meth:`sequences_at`).

    Attributes:
        input_ids (`LongTensor (B, L_in)`): Conditional input parts (right-padded).
        attention_mask (`LongTensor (B, L_in)`): 1 for real input tokens, 0 for padding.
        output_ids (`LongTensor (B, L_out)`): Final output parts.
        step_map (`LongTensor (B, L_out)`): Step (0-based) at which each maskable position was revealed; -1 at
            sentinel positions (never masked).
        num_steps (`int`): Length of the step axis.
        token_logprobs (`FloatTensor (B, L_out)`): Log-probability of each revealed token under the sampling
            distribution of its step (after guidance, temperature and top-k); 0 at sentinels.
        recorded_steps (`LongTensor (S,)`): Steps whose x0 estimate was kept, ascending.
        x0 (`LongTensor (B, S, L_out)`): At each recorded step, the tokens revealed so far plus the value drawn for
            every still-masked slot by that step's forward.
        mask_token_id (`int`): The mask token.
        seeds (`LongTensor (B,)` or `None`): Row seeds the rollout's noise was derived from (replays it exactly).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    output_ids: torch.Tensor
    step_map: torch.Tensor
    num_steps: int
    token_logprobs: torch.Tensor
    recorded_steps: torch.Tensor
    x0: torch.Tensor
    mask_token_id: int
    seeds: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.output_ids.shape[0]

    def __len__(self) -> int:
        return self.batch_size

    @property
    def row_num_steps(self) -> torch.Tensor:
        """`LongTensor (B,)`: the steps each row ran (its last reveal + 1); `num_steps` for scheduled rollouts.

        Under fast decoding rows end at different steps. Steps stay on the one shared axis (every row starts at step
        0, so a row's own step k is axis step k); from `row_num_steps[i]` on, row i's state and x0 are its final
        output and no token of it is revealed. A trainer that picks reward steps over each row's own steps picks
        them in `[0, row_num_steps[i])`.
        """
        return self.step_map.max(dim=1).values.clamp(min=-1) + 1

    # ---------------------------------------------------------------------------------------------------- states
    def _checked_step(self, step: int | torch.Tensor, upper: int) -> int | torch.Tensor:
        """Validates a step (int, or `LongTensor (B,)` one per sample) and shapes it to broadcast over positions."""
        if isinstance(step, torch.Tensor):
            if step.shape != (self.batch_size,):
                raise ValueError(
                    f"step must be an int or a LongTensor of shape ({self.batch_size},), got {tuple(step.shape)}."
                )
            if step.numel() and (int(step.min()) < 0 or int(step.max()) > upper):
                raise ValueError(f"steps must lie in [0, {upper}], got {step.tolist()}.")
            return step.to(self.step_map.device).unsqueeze(-1)
        if not 0 <= int(step) <= upper:
            raise ValueError(f"step must lie in [0, {upper}], got {step}.")
        return int(step)

    def state_at(self, step: int | torch.Tensor) -> torch.Tensor:
        """Output part at the START of `step` (`0 <= step <= num_steps`; `num_steps` gives the final output).

        Positions with `step_map < step` hold their final token (sentinels always do), the others the mask token.
        `step` may be a `LongTensor (B,)` giving one step per sample.
        """
        bound = self._checked_step(step, self.num_steps)
        return torch.where(self.step_map < bound, self.output_ids, self.mask_token_id)

    def revealed_at(self, step: int | torch.Tensor) -> torch.Tensor:
        """`BoolTensor (B, L_out)`: the positions revealed by `step` (the tokens its loss term scores)."""
        return self.step_map == self._checked_step(step, self.num_steps - 1)

    def x0_at(self, step: int | torch.Tensor) -> torch.Tensor:
        """The x0 estimate `(B, L_out)` made at a recorded `step` (or one recorded step per sample)."""
        recorded = self.recorded_steps.to(self.x0.device)
        if isinstance(step, torch.Tensor):
            if step.shape != (self.batch_size,):
                raise ValueError(
                    f"step must be an int or a LongTensor of shape ({self.batch_size},), got {tuple(step.shape)}."
                )
            match = recorded.unsqueeze(0) == step.to(self.x0.device).unsqueeze(-1)
            if not bool(match.any(-1).all()):
                raise ValueError(
                    f"steps {step.tolist()} are not all recorded (recorded: {recorded.tolist()}); pass them in "
                    "record_steps when decoding."
                )
            index = match.int().argmax(-1)
            return self.x0[torch.arange(self.batch_size, device=self.x0.device), index]
        hits = (recorded == int(step)).nonzero()
        if hits.numel() == 0:
            raise ValueError(
                f"step {step} was not recorded (recorded: {recorded.tolist()}); pass it in record_steps when decoding."
            )
        return self.x0[:, int(hits[0, 0])]

    def sequences_at(self, step: int | torch.Tensor) -> dict[str, torch.Tensor]:
        """Full sequences `input part + state_at(step)` and their attention mask (output part always attended).

        This is the model input under which the tokens revealed at `step` were drawn (without guidance rows).
        """
        state = self.state_at(step)
        input_ids = torch.cat([self.input_ids.to(state.device), state], dim=1)
        ones = torch.ones_like(state)
        attention_mask = torch.cat([self.attention_mask.to(state.device), ones], dim=1)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    # ---------------------------------------------------------------------------------------------- decoded views
    def text_at(self, step: int | torch.Tensor, processor) -> list[str]:
        """Reasoning written by the end of `step` (text of `state_at(step + 1)`, masks dropped): the reward text."""
        return processor.decode_text(self.state_at(self._after(step)))

    def image_codes_at(self, step: int | torch.Tensor, processor, grey_unknown: bool = False) -> torch.Tensor:
        """Code grids `(B, rows, cols)` of `x0_at(step)`; with `grey_unknown`, -1 where not revealed by its end."""
        codes = processor.image_codes(self.x0_at(step))
        if grey_unknown:
            known = processor.image_codes(self.state_at(self._after(step))) >= 0
            codes = torch.where(known, codes, -1)
        return codes

    def image_at(self, step: int | torch.Tensor, processor, grey_unknown: bool = False) -> torch.Tensor:
        """Image `(B, 3, H, W)` in [0, 1] of `x0_at(step)` (the reward image); `grey_unknown` greys cells not yet
        revealed by the end of `step`."""
        return processor.decode_images(self.image_codes_at(step, processor, grey_unknown), grey_unknown=True)

    def _after(self, step: int | torch.Tensor) -> int | torch.Tensor:
        self._checked_step(step, self.num_steps - 1)
        return step + 1

    # -------------------------------------------------------------------------------------------------- batching
    def index_select(self, rows: torch.Tensor | list[int]) -> "Trajectory":
        """The trajectories of `rows` (a new object; tensors indexed along dim 0)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "recorded_steps" and isinstance(value, torch.Tensor):
                value = value.index_select(0, rows.to(value.device))
            values[f.name] = value
        return Trajectory(**values)

    def to(self, device: torch.device | str) -> "Trajectory":
        """A copy with every tensor on `device`."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Trajectory(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in values.items()})
