"""Does a reward judge what GRPO needs? Within-group correlation of a toy reward, step by step, with the final scores.

GRPO learns only from differences *within* a prompt group, so a reward helps only if, among the G rollouts of one
prompt, it ranks the better rollouts higher. This script draws G rollouts for each of P train prompts from a policy,
scores every intermediate state with the reward (the shipped tiny CLIP's raw alignment, or the exact toy judge), and
reports:

- when the content is decided: the share of the reasoning's colour words and of the pictures' object cells revealed
  at each step (beside all other words and cells);
- for every step k, the correlation, within groups, between the reward at step k and the rollout's *final* output
  alignment, image quality and image alignment (exact evaluator), and how many groups have zero reward spread at
  step k (identical rewards: no signal at all).

A judge worth training against shows clearly positive correlations at the steps it rewards. It also prints, per
step, the share of the final reasoning's claims already readable in the partial text and in the revealed cells. The
measurements on the toy policies are in `benchmarks/RESULTS.md` (the premises entries) and
`benchmarks/results/premises_*.json`.

    python benchmarks/reward_diagnostics.py                       # shipped policy and tiny CLIP
    python benchmarks/reward_diagnostics.py --reward exact --grey_unrevealed
    python benchmarks/reward_diagnostics.py --reward exact --remasking random
    python benchmarks/reward_diagnostics.py --reward exact --categories open_edit open_generation --prompts 16
"""

import argparse
import json

import numpy as np
import torch

from pararl.rewards import CLIPAlignmentReward, RewardStates
from pararl.rollout import ParallelDecoder, RolloutConfig
from pararl.toy import build_toy_dataset, parse_scene, toy_processor
from pararl.toy.claims import claim_holds, reasoning_claims
from pararl.toy.clip import load_toy_clip
from pararl.toy.palette import TOY_COLOURS
from pararl.toy.policy import load_toy_policy
from pararl.toy.recipe import TOY_GRPO_DEFAULTS
from pararl.toy.reward import ToyOutputAlignment
from pararl.toy.scoring import evaluate_sample
from pararl.toy.tasks import ALL_CATEGORIES


FINAL_AXES = ("output_alignment", "image_quality", "image_alignment")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Policy (default: the shipped toy policy).")
    parser.add_argument("--clip_dir", default=None, help="Tiny CLIP folder (default: the shipped one).")
    parser.add_argument("--reward", choices=["clip", "exact"], default="clip")
    parser.add_argument("--prompts", type=int, default=32, help="Train prompts P.")
    parser.add_argument(
        "--generations", type=int, default=TOY_GRPO_DEFAULTS["num_generations"], help="Rollouts per prompt G."
    )
    parser.add_argument("--diffusion_steps", type=int, default=TOY_GRPO_DEFAULTS["diffusion_steps"])
    parser.add_argument("--grey_unrevealed", action="store_true", help="Reward images of committed cells only.")
    parser.add_argument(
        "--remasking", choices=["low_confidence", "random"], default="low_confidence", help="Decoder remasking."
    )
    parser.add_argument(
        "--categories",
        nargs="+",
        default=None,
        help="Only prompts of these toy categories (default: all; e.g. open_edit open_generation).",
    )
    parser.add_argument("--block_length", type=int, default=None, help="Semi-autoregressive text blocks.")
    parser.add_argument("--image_start", type=float, default=0.0, help="Fraction of the axis before the image starts.")
    parser.add_argument("--seed", type=int, default=0, help="Dataset and rollout seed.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="Also write the numbers as JSON here.")
    return parser.parse_args()


def within_group_correlation(reward: np.ndarray, target: np.ndarray) -> float | None:
    """Pearson correlation of `(P, G)` arrays after removing each group's mean (None without spread)."""
    reward, target = reward - reward.mean(1, keepdims=True), target - target.mean(1, keepdims=True)
    if reward.std() == 0 or target.std() == 0:
        return None
    return float(np.corrcoef(reward.ravel(), target.ravel())[0, 1])


def reveal_steps(trajectory, processor, codes: torch.Tensor, num_steps: int) -> dict[str, list[float]]:
    """Share of the claim-bearing tokens revealed at each step: the reasoning's colour words and the pictures'
    object (non-background) cells, beside all other tokens of each modality."""
    step_map = trajectory.step_map.cpu()
    text_steps = step_map[:, processor.text_positions]
    image_steps = step_map[:, processor.image_positions]
    colour_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(TOY_COLOURS)))
    is_colour = torch.isin(trajectory.output_ids.cpu()[:, processor.text_positions], colour_ids)
    is_object = codes.flatten(1).cpu() > 0
    groups = {
        "colour words": text_steps[is_colour],
        "other words": text_steps[~is_colour & (text_steps >= 0)],
        "object cells": image_steps[is_object],
        "background cells": image_steps[~is_object],
    }
    return {
        name: (torch.bincount(steps, minlength=num_steps).float() / max(len(steps), 1)).tolist()
        for name, steps in groups.items()
    }


def claims_revealed(final_claims, states, trajectory, processor, step: int) -> dict[str, float]:
    """Share of the final reasoning's claims already readable at the end of `step`: in the partial text (the claim
    parses from it) and in the partial picture (a *present* claim holding among the objects whose cells are all
    revealed; "absent" claims are not counted there, since a mostly masked picture would satisfy them trivially, so
    the image share is a lower bound and its denominator is every claim)."""
    revealed_codes = processor.image_codes(trajectory.state_at(step + 1))  # -1 where still masked
    in_text = in_image = total = 0
    for claims, text, grid in zip(final_claims, states.texts, revealed_codes):
        present = set(reasoning_claims(text))
        objects = parse_scene(grid, strict=False)
        total += len(claims)
        in_text += sum(claim in present for claim in claims)
        in_image += sum(claim.kind == "present" and claim_holds(claim, objects) for claim in claims)
    return {"claims_in_text": in_text / max(total, 1), "claims_in_image": in_image / max(total, 1)}


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    P, G, T = args.prompts, args.generations, args.diffusion_steps
    processor = toy_processor()
    policy = load_toy_policy(args.model_name_or_path)
    unknown = sorted(set(args.categories or ()) - set(ALL_CATEGORIES))
    if unknown:
        raise SystemExit(f"--categories: unknown {unknown}; the toy categories are {list(ALL_CATEGORIES)}.")
    dataset = build_toy_dataset("train", P, seed=args.seed, categories=args.categories)
    rows = [dataset[i] for i in range(P) for _ in range(G)]
    prompts = [row["prompt"] for row in rows]
    rollout_config = RolloutConfig(
        num_steps=T, remasking=args.remasking, block_length=args.block_length, image_start=args.image_start
    )
    decoder = ParallelDecoder(policy, processor, rollout_config)
    with torch.no_grad():
        trajectory = decoder.generate(
            prompts,
            images=[row["image"] for row in rows],
            tasks=[row["task"] for row in rows],
            record_steps=list(range(T)),
            seeds=torch.arange(P * G) + args.seed * P * G,
        )
    if args.reward == "clip":
        model, tokenizer = load_toy_clip(directory=args.clip_dir)
        reward = CLIPAlignmentReward(model=model, tokenizer=tokenizer)  # no normaliser: the raw cosine
    else:
        reward = ToyOutputAlignment()

    codes, texts = processor.image_codes(trajectory.output_ids), processor.decode_text(trajectory.output_ids)
    reveal = reveal_steps(trajectory, processor, codes, T)
    final = [evaluate_sample(text, grid, row) for text, grid, row in zip(texts, codes, rows)]
    targets = {axis: np.array([scores[axis] for scores in final]).reshape(P, G) for axis in FINAL_AXES}

    per_step = []
    final_claims = [reasoning_claims(text) for text in texts]
    for k in range(T):
        states = RewardStates.from_trajectory(trajectory, processor, k, prompts, grey_unrevealed=args.grey_unrevealed)
        values = np.array(reward(states), dtype=float).reshape(P, G)
        per_step.append(
            {
                "step": k,
                "zero_spread_groups": int((values.std(1) == 0).sum()),
                "mean_reward": float(values.mean()),
                **claims_revealed(final_claims, states, trajectory, processor, k),
                **{axis: within_group_correlation(values, target) for axis, target in targets.items()},
            }
        )

    print(f"When the content is decided: share revealed at each of the {T} steps (%)")
    for name, shares in reveal.items():
        print(f"  {name:<16}" + " ".join(f"{100 * share:3.0f}" for share in shares))
    print()

    def cell(value):
        return "     -" if value is None else f"{value:+6.2f}"

    print(f"{args.reward} reward, {P} prompts x {G} rollouts, {T} steps; within-group correlation with the final:")
    print(f"{'step':>4}  {'OutA':>6}  {'ImgQ':>6}  {'ImgA':>6}  zero-spread (of {P})  reward  claims in text / image")
    for entry in per_step:
        cells = "  ".join(cell(entry[axis]) for axis in FINAL_AXES)
        claims = f"{100 * entry['claims_in_text']:5.0f}% / {100 * entry['claims_in_image']:3.0f}%"
        print(f"{entry['step']:>4}  {cells}  {entry['zero_spread_groups']:>18}  {entry['mean_reward']:6.3f}  {claims}")
    final_outa = targets["output_alignment"]
    print(
        f"final output alignment {100 * final_outa.mean():.1f}; groups with spread in it: "
        f"{int((final_outa.std(1) > 0).sum())} of {P}"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"settings": vars(args), "reveal_steps": reveal, "per_step": per_step}, f, indent=2)


if __name__ == "__main__":
    main()
