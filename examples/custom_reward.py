"""A custom ParaRL reward: subclass `pararl.rewards.Reward` and implement `score`.

The reward below checks that the colours the partial reasoning names are actually drawn in the partial image. It
runs on a real rollout of a tiny random policy in the toy world, at three denoising steps per rollout.

    python examples/custom_reward.py
"""

import sys
from pathlib import Path


# `examples/pararl.py` shares the package's name: keep this folder off the import path so `import pararl` is the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import math

import torch

from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.rewards import Reward, RewardStates, UniformSteps, compute_rewards
from pararl.rollout import ParallelDecoder, RolloutConfig
from pararl.toy import build_toy_dataset, toy_processor
from pararl.toy.palette import TOY_COLOUR_RGB


class NamedColoursDrawn(Reward):
    """Fraction of the colours named in the reasoning that appear in the image; `None` if it names none yet."""

    def score(self, states: RewardStates) -> list[float | None]:
        pixels = (states.image_tensors * 255).round()  # (N, 3, H, W)
        rgb = torch.tensor(list(TOY_COLOUR_RGB.values()), dtype=pixels.dtype, device=pixels.device)  # (C, 3)
        # drawn[i, c]: some pixel of image i has colour c (one batched comparison, no Python loop over pixels).
        drawn = (pixels[:, None] == rgb[None, :, :, None, None]).all(dim=2).flatten(2).any(dim=2)
        scores = []
        for i, text in enumerate(states.texts):
            named = [c for c, colour in enumerate(TOY_COLOUR_RGB) if colour in text.split()]
            scores.append(drawn[i, named].float().mean().item() if named else None)
        return scores


def main():
    processor = toy_processor()
    preset = processor.preset
    torch.manual_seed(0)
    config = MaskedDiffusionConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        mlp_hidden_size=64,
        **preset.model_config_kwargs(),
    )
    decoder = ParallelDecoder(MaskedDiffusionLM(config).eval(), processor, RolloutConfig(num_steps=8))
    data = build_toy_dataset("train", num_samples=4, seed=0)

    # Three reward steps per prompt, recorded during the rollout so their partial images can be drawn.
    steps = UniformSteps(3).select(len(data), num_steps=8, generator=torch.Generator().manual_seed(0))
    trajectory = decoder.generate(
        data["prompt"], images=data["image"], tasks=data["task"], record_steps=steps.unique()
    )
    states = RewardStates.from_trajectory(
        trajectory, processor, steps, data["prompt"], input_images=data["image"], columns={"task": data["task"]}
    )

    rewards, metrics = compute_rewards([NamedColoursDrawn()], states)
    for step, text, value in zip(states.steps.tolist(), states.texts, rewards[:, 0].tolist()):
        shown = "n/a " if math.isnan(value) else f"{value:.2f}"  # NaN = the reward returned None
        print(f"step {step}: {shown}  {text[:60]!r}")
    print(metrics)


if __name__ == "__main__":
    main()
