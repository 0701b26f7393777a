"""Draws the documentation's pictures with pararl itself, on the shipped toy policy and tiny CLIP (CPU, ~1 minute).

    python docs/make_pictures.py            # writes docs/assets/trajectory.png

`trajectory.png`: one rollout of the toy main job's decoding (16 steps, the reasoning in two blocks of 13) on a
held-out `open_colour` prompt, drawn by `pararl.rollout.draw_trajectory` with the reward the main job trains on at
each drawn step: the tiny CLIP's alignment of the partial reasoning and the partial image, normalised as ParaRL
does (mean and std fitted on the rollouts' own states here, as the trainer's calibration fits them on 1% of the
training prompts).
"""

from pathlib import Path

import torch

from pararl.models import MaskedDiffusionLM
from pararl.rewards import CLIPAlignmentReward, RewardNormalizer, RewardStates
from pararl.rollout import ParallelDecoder, RolloutConfig, draw_trajectory
from pararl.toy import build_toy_dataset, toy_policy_path, toy_processor
from pararl.toy.clip import load_toy_clip


ASSETS = Path(__file__).resolve().parent / "assets"
STEPS = [2, 5, 8, 11, 14]  # drawn and rewarded steps (0-based) of the 16-step axis
ROLLOUTS = 8  # rollouts of the prompt, as one GRPO group (the normaliser is fitted on their states)
SHOWN = 0  # which rollout the picture draws


def trajectory_picture(path: Path = ASSETS / "trajectory.png", seed: int = 4) -> Path:
    torch.manual_seed(0)
    processor = toy_processor()
    model = MaskedDiffusionLM.from_pretrained(toy_policy_path()).eval()
    row = build_toy_dataset("test", 1, seed=seed, categories=["open_colour"], world=["open_colour"])[0]
    decoder = ParallelDecoder(model, processor, RolloutConfig(num_steps=16, block_length=13))
    with torch.no_grad():
        trajectory = decoder.generate(
            [row["prompt"]] * ROLLOUTS,
            images=[row["image"]] * ROLLOUTS,
            tasks=[row["task"]] * ROLLOUTS,
            record_steps=STEPS,
            seeds=torch.arange(ROLLOUTS),
        )
    clip_model, clip_tokenizer = load_toy_clip()
    reward = CLIPAlignmentReward(model=clip_model, tokenizer=clip_tokenizer)
    steps = torch.tensor(STEPS).repeat(ROLLOUTS, 1)
    states = RewardStates.from_trajectory(
        trajectory, processor, steps, prompts=[row["prompt"]] * ROLLOUTS, input_images=[row["image"]] * ROLLOUTS
    )
    raw = torch.tensor(reward(states), dtype=torch.float32).view(ROLLOUTS, len(STEPS))
    normalised = RewardNormalizer().fit(raw.flatten())(raw[SHOWN])
    picture = draw_trajectory(
        trajectory, processor, index=SHOWN, steps=STEPS, prompt=row["prompt"], rewards=normalised.tolist()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


if __name__ == "__main__":
    print(trajectory_picture())
