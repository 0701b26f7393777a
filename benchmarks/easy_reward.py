"""Can the trainer climb an easy reward? The toy main job's recipe with a reward that asks for nothing subtle: the
share of the reasoning's words that are "red" (a benchmark, not a test).

A sanity check of the whole loop (rollout, reward, advantages, likelihood, update) that does not depend on a judge:
everything but the reward is the main job's (`pararl.toy.recipe.TOY_GRPO_DEFAULTS`: the same model, steps, batch,
learning rate and reward steps), so if this stays flat for a seed, the main job's budget cannot be expected to move
anything subtler. It prints the logged reward per step for each seed and whether it climbed above `--threshold`.
Results (numbers, machine) are in `benchmarks/RESULTS.md` and `benchmarks/results/easy_reward_*.json`.

    python benchmarks/easy_reward.py                      # seeds 0-4 at the main job's settings
    python benchmarks/easy_reward.py --seeds 0 --no-use_peft --learning_rate 3e-4   # every weight instead of LoRA
    python benchmarks/easy_reward.py --seeds 0 --loss_steps all --loss_step_group 4   # every token, 4 steps a row
"""

import argparse
import json
import platform
import tempfile
import time

import torch
import transformers

from pararl import DiffusionGRPOTrainer
from pararl.rewards import Reward, RewardStates
from pararl.toy import build_toy_dataset, toy_policy_path, toy_processor
from pararl.toy.recipe import (
    TOY_GRPO_DEFAULTS,
    TOY_LORA,
    TOY_TRAIN_SAMPLES,
    reward_curve,
    toy_grpo_config,
    toy_lora_config,
)


class ShareOfWord(Reward):
    """Share of the reasoning's words that are `word`."""

    def __init__(self, word: str):
        self.word = word

    def score(self, states: RewardStates) -> list[float | None]:
        return [sum(w == self.word for w in text.split()) / max(len(text.split()), 1) for text in states.texts]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--word", default="red")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--max_steps", type=int, default=TOY_GRPO_DEFAULTS["max_steps"])
    parser.add_argument("--learning_rate", type=float, default=TOY_GRPO_DEFAULTS["learning_rate"])
    parser.add_argument(
        "--use_peft",
        action=argparse.BooleanOptionalAction,
        default=TOY_LORA["use_peft"],
        help="Train the toy LoRA adapter (default: as the main job) or, with --no-use_peft, every weight.",
    )
    parser.add_argument(
        "--output_level",
        action="store_true",
        help="Reward the final output only (output-level GRPO) instead of the main job's intermediate steps.",
    )
    parser.add_argument(
        "--loss_steps",
        choices=["rewarded", "all"],
        default="rewarded",
        help="Which tokens the loss scores: those of the rewarded steps (the main job's) or every revealed one.",
    )
    parser.add_argument("--loss_step_group", type=int, default=1, help="Steps per loss row with --loss_steps all.")
    parser.add_argument("--threshold", type=float, default=0.5, help="The reward a seed must climb above.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="Also write the per-seed curves as JSON here.")
    return parser.parse_args()


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    settings = {"max_steps": args.max_steps, "learning_rate": args.learning_rate, "logging_steps": 1}
    settings.update(loss_steps=args.loss_steps, loss_step_group=args.loss_step_group)
    if args.output_level:
        settings.update(num_reward_steps=1, reward_step_selection="final")
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pararl-easy-reward-") as output_dir:
            config = toy_grpo_config(
                **settings, output_dir=output_dir, seed=seed, log_trajectory_pictures=False, disable_tqdm=True
            )
            trainer = DiffusionGRPOTrainer(
                model=toy_policy_path(),
                reward_funcs=[ShareOfWord(args.word)],
                args=config,
                train_dataset=build_toy_dataset("train", TOY_TRAIN_SAMPLES),
                processing_class=toy_processor(),
                peft_config=toy_lora_config() if args.use_peft else None,
            )
            trainer.remove_callback(transformers.PrinterCallback)
            trainer.train()
        rewards = [reward for _, reward in reward_curve(trainer.state.log_history)]
        climbed = next((i + 1 for i, r in enumerate(rewards) if r > args.threshold), None)
        results.append({"seed": seed, "rewards": rewards, "first_step_above": climbed,
                        "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
        above = f"above {args.threshold} at step {climbed}" if climbed else f"never above {args.threshold}"
        print(f"seed {seed}: share of {args.word!r} per step: " + " ".join(f"{r:.2f}" for r in rewards), flush=True)
        print(f"seed {seed}: {above}", flush=True)
    print(f"{sum(r['first_step_above'] is not None for r in results)} of {len(results)} seeds climbed above "
          f"{args.threshold} within {args.max_steps} steps.")  # fmt: skip
    if args.output:
        machine = {"platform": platform.platform(), "torch_threads": args.threads, "torch": torch.__version__}
        with open(args.output, "w") as f:
            settings = {**{k: v for k, v in TOY_GRPO_DEFAULTS.items() if k != "output_dir"}, **settings, **vars(args)}
            json.dump({"settings": settings, "machine": machine, "seeds": results}, f, indent=2)


if __name__ == "__main__":
    main()
