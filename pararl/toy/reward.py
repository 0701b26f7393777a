"""The toy world's control rewards: its exact judge (the evaluator's output alignment of an intermediate state) and
seeded noise."""

import torch

from ..rewards import Reward, RewardStates
from .claims import output_alignment
from .palette import toy_image_tokenizer
from .scenes import parse_scene


__all__ = ["RandomReward", "ToyOutputAlignment"]


class ToyOutputAlignment(Reward):
    """Share of the partial reasoning's claims that the partial picture satisfies, computed by rule.

    The evaluator's output-alignment axis applied to a reward state: where the tiny CLIP *estimates* how well the
    partial reasoning and the partial image agree, this is exact. Training against it shows how far the optimisation
    goes with a perfect judge, which separates the judge's errors from the optimiser's (a research control for the
    toy world, not ParaRL's reward). A text with no complete claim yet scores 0, as in the evaluator; grey
    (unrevealed) cells are unknown, so a slot holding one is not read.
    """

    def __init__(self):
        self.image_tokenizer = toy_image_tokenizer()

    def score(self, states: RewardStates) -> list[float | None]:
        # The picture the reward sees, read back cell by cell; grey (still-masked) cells are unknown (-1).
        codes = self.image_tokenizer.encode(states.image_tensors.cpu(), unknown_code=-1)
        return [output_alignment(text, parse_scene(grid, strict=False)) for text, grid in zip(states.texts, codes)]


class RandomReward(Reward):
    """Uniform noise in [0, 1], seeded: the null control (no information about the state at all). Whatever training
    against it changes is drift of the optimiser, so a real reward's change means something only beyond it."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, states: RewardStates) -> list[float | None]:
        return torch.rand(len(states.texts), generator=self.generator).tolist()
