"""The toy world's exact judge as a pararl reward: the evaluator's output alignment of an intermediate state."""

import torch

from ..rewards import Reward, RewardStates
from .evaluate import output_alignment
from .palette import TOY_CELL_SIZE, TOY_PALETTE
from .world import parse_scene


__all__ = ["ToyOutputAlignment", "read_cells"]


def read_cells(image_tensors: torch.Tensor) -> torch.Tensor:
    """Palette codes `(N, 8, 8)` of toy images `(N, 3, 32, 32)` in [0, 1]; -1 for a cell of no palette colour (the
    grey of a still-masked cell)."""
    if image_tensors.dim() != 4 or image_tensors.shape[1] != 3:
        raise ValueError(f"image_tensors must have shape (N, 3, H, W), got {tuple(image_tensors.shape)}.")
    cells = (image_tensors[:, :, ::TOY_CELL_SIZE, ::TOY_CELL_SIZE] * 255).round()  # one pixel per cell
    palette = torch.tensor(TOY_PALETTE, dtype=cells.dtype, device=cells.device)  # (K, 3)
    matches = (cells[:, None] == palette[None, :, :, None, None]).all(dim=2)  # (N, K, rows, cols)
    return torch.where(matches.any(dim=1), matches.float().argmax(dim=1), -1)


class ToyOutputAlignment(Reward):
    """Share of the partial reasoning's claims that the partial picture satisfies, computed by rule.

    The evaluator's output-alignment axis applied to a reward state: where the tiny CLIP *estimates* how well the
    partial reasoning and the partial image agree, this is exact. Training against it shows how far the optimisation
    goes with a perfect judge, which separates the judge's errors from the optimiser's (a research control for the
    toy world, not ParaRL's reward). A text with no complete claim yet scores 0, as in the evaluator; grey
    (unrevealed) cells are unknown, so a slot holding one is not read.
    """

    def score(self, states: RewardStates) -> list[float | None]:
        codes = read_cells(states.image_tensors.cpu())
        return [output_alignment(text, parse_scene(grid, strict=False)) for text, grid in zip(states.texts, codes)]
