"""The paper's ParaRL ablations in miniature, on the toy world (a benchmark, not a test).

From one SFT checkpoint and one compute budget (the same `max_steps`, rollouts per step, group size, diffusion steps,
learning rate and LoRA adapter for every trained variant), this script compares:

- `no_rl`: the SFT checkpoint itself, decoded in parallel;
- `output_level`: output-level RL (`reward_step_selection="final"`, the paper's baseline): each rollout is rewarded
  once on its final output and that reward trains 3 stratified steps (one per third of the trajectory), as many
  loss rows as ParaRL with s = 3;
- `pararl_s1`, `pararl_s2`, `pararl_s3`, `pararl_s4`: ParaRL with s = 1, 2, 3, 4 rewarded steps per rollout (stratified as in the
  main job: one step drawn per s-th of the trajectory, shared by a prompt group). Every rewarded step is one loss
  row, so s also sets the loss rows per step (rollouts x s), exactly as in the paper's Table 5; the JSON output
  records the rows of every variant;
- `output_level_all` and `pararl_s3_all`: the same two with every revealed token in the loss (`loss_steps="all"`,
  steps grouped by 4): output-level gives every token the final advantage, ParaRL each token its reward to go, so
  the trajectory-vs-output comparison is not tilted by how much of the output each credits;
- `no_rl_sequential` and `pararl_s3_sequential`: the same two points decoded text first, then image
  (`decode_order="text_then_image"`); each model is trained and evaluated with its own decoding order, so
  `pararl_s3` vs `pararl_s3_sequential` is the paper's parallel vs sequential comparison (Table 10);
- two controls, trained exactly as `pararl_s3` but with another reward: `random_reward` (uniform noise, seeded per
  run: whatever it changes is drift of the optimiser, not learning, so a variant's change means something only
  beyond it) and `exact_judge` (the evaluator's own output alignment of each state,
  [`~pararl.toy.reward.ToyOutputAlignment`]: a perfect judge, so what it fails to move the optimiser cannot move
  in this budget whatever the judge), and `exact_judge_output_all` (the exact judge at the output, every token
  credited: the strongest signal this budget can give).

Every model's coordination (`pararl.toy.coordination`: colour word vs the dot's colour on held-out `open_colour`
prompts, minus independent draws) is measured beside the six axes, and reported as a paired per-seed change.

Apart from the controls, the reward is the shipped tiny CLIP's alignment between the partial reasoning and the
partial image, normalised with a fresh `RewardNormalizer()` that each trainer calibrates on its own rollouts. Every
model is scored on the same held-out toy split by the exact evaluator (ParaBench's six axes and their mean, 0-100);
a run's seed sets both the training (LoRA init, data order, rollout noise) and the evaluation's sampling noise, so
the spread of `no_rl` is the evaluation noise floor. The script prints a markdown table of mean ± std (sample std)
over seeds and writes every per-seed number, the settings, the wall time and the machine to `--output`.

The paper's numbers (MMaDA-Parallel on ParaBench) for comparison: output alignment 51.5 before RL, 53.6 after
output-level RL and 59.8 after ParaRL (s = 3); s = 2 / 3 / 4 give 53.6 / 59.8 / 58.7; after RL, sequential
text-then-image decoding reaches 54.1 against 59.8 for parallel decoding.

Examples:

    python benchmarks/ablations.py --quick                      # tiny settings: checks that everything runs
    python benchmarks/ablations.py                              # the full table (see --merge to split it)
    python benchmarks/ablations.py --variants no_rl output_level pararl_s3 --seeds 5 --output ablations.json
    python benchmarks/ablations.py --merge part1.json part2.json --output ablations.json   # runs split over processes
"""

import argparse
import gc
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field

import torch
import transformers
from transformers import PrinterCallback

from pararl import DiffusionGRPOConfig, DiffusionGRPOTrainer
from pararl.axes import AXES, AXIS_HEADERS
from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionLM
from pararl.toy import toy_processor
from pararl.toy.clip import load_toy_clip
from pararl.toy.recipe import (
    TOY_EVAL_SAMPLES,
    TOY_GRPO_DEFAULTS,
    TOY_LORA,
    TOY_TRAIN_SAMPLES,
    toy_coordination,
    toy_datasets,
    toy_evaluation,
    toy_grpo_config,
    toy_lora_config,
    toy_reward,
)


@dataclass(frozen=True)
class Variant:
    """One row of the table: whether it trains, and the `DiffusionGRPOConfig` fields it changes."""

    label: str
    train: bool = True
    overrides: dict = field(default_factory=dict)
    reward: str = "clip"  # "clip" (ParaRL's), or a control: "random" (noise) or "exact" (the evaluator's judge)
    baseline: str | None = None  # the untrained variant (same decoding order) its per-seed changes are measured from


VARIANTS: dict[str, Variant] = {
    "no_rl": Variant("no RL (SFT)", train=False),
    "output_level": Variant(
        "output-level RL", overrides={"reward_step_selection": "final", "num_reward_steps": 3}, baseline="no_rl"
    ),
    "output_level_all": Variant(
        "output-level RL, every token credited",
        overrides={"reward_step_selection": "final", "num_reward_steps": 3, "loss_steps": "all", "loss_step_group": 4},
        baseline="no_rl",
    ),
    "pararl_s1": Variant("ParaRL s=1", overrides={"num_reward_steps": 1}, baseline="no_rl"),
    "pararl_s2": Variant("ParaRL s=2", overrides={"num_reward_steps": 2}, baseline="no_rl"),
    "pararl_s3": Variant("ParaRL s=3", overrides={"num_reward_steps": 3}, baseline="no_rl"),
    "pararl_s4": Variant("ParaRL s=4", overrides={"num_reward_steps": 4}, baseline="no_rl"),
    "pararl_s3_all": Variant(
        "ParaRL s=3, every token credited (reward to go)",
        overrides={"num_reward_steps": 3, "loss_steps": "all", "loss_step_group": 4},
        baseline="no_rl",
    ),
    "no_rl_sequential": Variant(
        "no RL, sequential (text then image)", train=False, overrides={"decode_order": "text_then_image"}
    ),
    "pararl_s3_sequential": Variant(
        "ParaRL s=3, sequential (text then image)",
        overrides={"num_reward_steps": 3, "decode_order": "text_then_image"},
        baseline="no_rl_sequential",
    ),
    "random_reward": Variant(
        "control: ParaRL s=3, random reward", overrides={"num_reward_steps": 3}, reward="random", baseline="no_rl"
    ),
    "exact_judge": Variant(
        "control: ParaRL s=3, exact judge", overrides={"num_reward_steps": 3}, reward="exact", baseline="no_rl"
    ),
    "exact_judge_output_all": Variant(
        "control: output-level exact judge, every token credited",
        overrides={"reward_step_selection": "final", "num_reward_steps": 3, "loss_steps": "all", "loss_step_group": 4},
        reward="exact",
        baseline="no_rl",
    ),
}


# The full run uses the main job's toy defaults (pararl.toy.recipe); --quick only checks that everything runs.
FULL = {
    "max_steps": TOY_GRPO_DEFAULTS["max_steps"],
    "seeds": 3,
    "train_samples": TOY_TRAIN_SAMPLES,
    "eval_samples": TOY_EVAL_SAMPLES,
    "diffusion_steps": TOY_GRPO_DEFAULTS["diffusion_steps"],
    "batch_size": TOY_GRPO_DEFAULTS["per_device_train_batch_size"],
    "num_generations": TOY_GRPO_DEFAULTS["num_generations"],
    "coordination_prompts": 64,
}
QUICK = {
    "max_steps": 2,
    "seeds": 2,
    "train_samples": 64,
    "eval_samples": 12,
    "diffusion_steps": 8,
    "batch_size": 4,
    "num_generations": 4,
    "coordination_prompts": 2,
}
# The trainer settings recorded in the JSON output for every variant.
RECORDED_FIELDS = (
    "max_steps",
    "per_device_train_batch_size",
    "num_generations",
    "diffusion_steps",
    "decode_order",
    "reward_step_selection",
    "num_reward_steps",
    "advantage_mode",
    "likelihood",
    "learning_rate",
    "beta",
    "epsilon",
    "loss_type",
    "num_iterations",
    "text_temperature",
    "image_temperature",
    "image_start",
    "block_length",
    "loss_steps",
    "loss_step_group",
    "grey_unrevealed",
    "reward_calibration_fraction",
    "reward_clip",
    "bf16",
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="SFT checkpoint (default: the shipped toy policy).")
    parser.add_argument(
        "--clip_dir", default=None, help="Folder of a tiny CLIP saved by save_toy_clip (default: the shipped one)."
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", type=int, default=None, help=f"Number of seeds (default {FULL['seeds']}).")
    parser.add_argument("--first_seed", type=int, default=0, help="Seeds are first_seed, first_seed + 1, ...")
    parser.add_argument("--max_steps", type=int, default=None, help=f"RL steps (default {FULL['max_steps']}).")
    parser.add_argument(
        "--train_samples", type=int, default=None, help=f"Training prompts (default {FULL['train_samples']})."
    )
    parser.add_argument(
        "--eval_samples", type=int, default=None, help=f"Held-out prompts scored (default {FULL['eval_samples']})."
    )
    parser.add_argument(
        "--diffusion_steps", type=int, default=None, help=f"Denoising steps (default {FULL['diffusion_steps']})."
    )
    parser.add_argument(
        "--batch_size", type=int, default=None, help=f"Rollouts per step (default {FULL['batch_size']})."
    )
    parser.add_argument(
        "--num_generations",
        type=int,
        default=None,
        help=f"Rollouts per prompt, G (default {FULL['num_generations']}).",
    )
    parser.add_argument("--learning_rate", type=float, default=TOY_GRPO_DEFAULTS["learning_rate"])
    parser.add_argument(
        "--use_peft",
        action=argparse.BooleanOptionalAction,
        default=TOY_LORA["use_peft"],
        help="Train the toy LoRA adapter instead of every weight (default: as the main job).",
    )
    parser.add_argument("--lora_r", type=int, default=TOY_LORA["lora_r"])
    parser.add_argument("--lora_alpha", type=int, default=TOY_LORA["lora_alpha"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the toy model gains little from more, and oversubscribed threads spin).",
    )
    parser.add_argument(
        "--coordination_prompts",
        type=int,
        default=None,
        help="Held-out open_colour prompts on which each model's coordination is measured (0 = off; default "
        f"{FULL['coordination_prompts']}).",
    )
    parser.add_argument("--quick", action="store_true", help="Tiny settings, to check the script.")
    parser.add_argument("--work_dir", default=None, help="Trainer output folders (default: a temporary folder).")
    parser.add_argument("--output", default="ablations.json", help="Where to write every number as JSON.")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="Instead of running: join the variants of earlier --output files (e.g. variants split over two "
        "processes), check that their settings agree, and write and print one table.",
    )
    args = parser.parse_args()
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.model_name_or_path is None:
        from pararl.toy import toy_policy_path

        args.model_name_or_path = toy_policy_path()
    return args


def training_config(args: argparse.Namespace, variant: Variant, seed: int, output_dir: str) -> DiffusionGRPOConfig:
    """The main job's toy settings (`toy_grpo_config`) with this benchmark's budget and the variant's changes."""
    settings = {
        "output_dir": output_dir,
        "seed": seed,
        "learning_rate": args.learning_rate,
        "max_steps": args.max_steps,
        "per_device_train_batch_size": args.batch_size,
        "num_generations": args.num_generations,
        "diffusion_steps": args.diffusion_steps,
        "logging_steps": 1,
        "log_trajectory_pictures": False,  # drawing pictures is not part of the budget being compared
        "disable_tqdm": True,
    }
    return toy_grpo_config(**{**settings, **variant.overrides})


def run_one(args, name: str, seed: int, processor, train_dataset, eval_dataset, clip) -> dict:
    """Trains (unless the variant is the SFT model) and evaluates one (variant, seed)."""
    variant = VARIANTS[name]
    output_dir = os.path.join(args.work_dir, name, f"seed{seed}")
    config = training_config(args, variant, seed, output_dir)
    record = {"seed": seed}
    if variant.train:
        reward = toy_reward(variant.reward, seed=seed, clip=clip)
        trainer = DiffusionGRPOTrainer(
            model=args.model_name_or_path,
            reward_funcs=[reward],
            args=config,
            train_dataset=train_dataset,
            processing_class=processor,
            peft_config=toy_lora_config(args.lora_r, args.lora_alpha) if args.use_peft else None,
        )
        trainer.remove_callback(PrinterCallback)  # one line per run is printed below instead of every log
        start = time.perf_counter()
        trainer.train()
        record["train_seconds"] = round(time.perf_counter() - start, 1)
        # With loss_steps="all": one row per step group that reveals a token (every group, on the toy schedules).
        groups = -(-config.diffusion_steps // config.loss_step_group)
        rows_per_rollout = config.num_reward_steps if config.loss_steps == "rewarded" else groups
        record["loss_rows_per_step"] = config.per_device_train_batch_size * rows_per_rollout
        record["rewards"] = [log["reward"] for log in trainer.state.log_history if "reward" in log]
        if variant.reward == "clip":
            record["reward_normalizer"] = {"mean": reward.normalizer.mean, "std": reward.normalizer.std}
        model = trainer.model
    else:
        trainer = None
        device = "cpu" if config.use_cpu else "cuda"
        model = MaskedDiffusionLM.from_pretrained(args.model_name_or_path, dtype=torch.float32).to(device)
    start = time.perf_counter()
    result = toy_evaluation(model, processor, eval_dataset, config)
    record["eval_seconds"] = round(time.perf_counter() - start, 1)
    record.update(overall=result["overall"], axes=result["axes"], categories=result["categories"])
    if args.coordination_prompts:
        report = toy_coordination(model, processor, config, args.coordination_prompts)
        record["coordination"] = {decoding: stats["coordination"] for decoding, stats in report.items()}
        record["coordination_report"] = report
    del model, trainer
    gc.collect()
    return record


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(records: list[dict]) -> dict[str, dict[str, float] | None]:
    """Mean and sample std over seeds of every axis and of the overall score."""
    summary = {}
    for axis in (*AXES, "overall"):
        values = [r["overall"] if axis == "overall" else r["axes"][axis] for r in records]
        values = [v for v in values if v is not None]
        summary[axis] = dict(zip(("mean", "std"), mean_std(values))) if values else None
    return summary


def _value(record: dict, axis: str) -> float | None:
    """An axis of one (variant, seed) record; `"coordination"` is that of the variant's own decoding."""
    if axis == "coordination":
        return record.get("coordination", {}).get("decoding")
    return record["axes"][axis]


def paired_change(results: dict, name: str, axis: str = "output_alignment") -> str:
    """A trained variant's per-seed change of `axis` (or `"coordination"`) over its untrained baseline with the same
    seed (the same evaluation noise, so the change is not drowned by it): mean ± std and how many seeds went up."""
    baseline = VARIANTS[name].baseline
    if baseline not in results:
        return "-"
    before = {r["seed"]: _value(r, axis) for r in results[baseline]["per_seed"]}
    changes = [
        _value(r, axis) - before[r["seed"]]
        for r in results[name]["per_seed"]
        if before.get(r["seed"]) is not None and _value(r, axis) is not None
    ]
    if not changes:
        return "-"
    mean, std = mean_std(changes)
    return f"{mean:+.1f} ± {std:.1f} ({sum(c > 0 for c in changes)}/{len(changes)} up)"


def markdown_table(results: dict) -> str:
    columns = [*(AXIS_HEADERS[axis] for axis in AXES), "Overall", "OutA change (paired)", "Coord. change (paired)"]
    lines = ["| Variant | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, entry in results.items():
        cells = []
        for axis in (*AXES, "overall"):
            stats = entry["summary"][axis]
            cells.append("-" if stats is None else f"{stats['mean']:.1f} ± {stats['std']:.1f}")
        cells.append(paired_change(results, name))
        cells.append(paired_change(results, name, "coordination"))
        lines.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(args: argparse.Namespace, seeds: list[int], results: dict, wall_seconds: float) -> None:
    """Every number, the settings and the machine as JSON (rewritten after each variant, so a stopped run keeps
    what it finished)."""
    report = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k not in ("output", "work_dir")},
            "seed_list": seeds,
            "dataset_seed": 0,
            "lora_target_modules": list(ATTENTION_LORA_TARGETS) if args.use_peft else None,
        },
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "wall_seconds": round(wall_seconds, 1),
        "variants": results,
        "table": markdown_table(results),
    }
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)


def merge_reports(paths: list[str], output: str) -> dict:
    """Joins the variants of several reports written by this script; their settings must agree except for the
    variants run, so the table compares like with like."""
    reports = []
    for path in paths:
        with open(path) as f:
            reports.append(json.load(f))
    settings = [{k: v for k, v in r["settings"].items() if k not in ("variants", "merge")} for r in reports]
    for path, other in zip(paths[1:], settings[1:]):
        differing = sorted(k for k in other.keys() | settings[0].keys() if other.get(k) != settings[0].get(k))
        if differing:
            raise ValueError(f"{path} was run with other settings than {paths[0]}: {differing}.")
    variants = {}
    for path, report in zip(paths, reports):
        for name, entry in report["variants"].items():
            if name in variants:
                raise ValueError(f"variant {name!r} appears in more than one report ({path}).")
            variants[name] = entry
    variants = {name: variants[name] for name in VARIANTS if name in variants}  # the table's usual row order
    merged = {
        **reports[0],
        "settings": {**reports[0]["settings"], "variants": list(variants)},
        "wall_seconds": sum(r["wall_seconds"] for r in reports),
        "merged_from": list(paths),
        "variants": variants,
        "table": markdown_table(variants),
    }
    with open(output, "w") as f:
        json.dump(merged, f, indent=2)
    return merged


def main():
    start = time.perf_counter()
    args = parse_args()
    if args.merge:
        merged = merge_reports(args.merge, args.output)
        print(merged["table"])
        print(
            f"\nSummed wall time of the merged runs {merged['wall_seconds'] / 60:.1f} min; written to {args.output}."
        )
        return
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    processor = toy_processor()
    train_dataset, eval_dataset = toy_datasets(args.train_samples, args.eval_samples, seed=0)
    uses_clip = any(VARIANTS[n].train and VARIANTS[n].reward == "clip" for n in args.variants)
    clip = load_toy_clip(directory=args.clip_dir) if uses_clip else None

    temporary = None
    if args.work_dir is None:
        temporary = tempfile.TemporaryDirectory(prefix="pararl-ablations-")
        args.work_dir = temporary.name
    results = {}
    try:
        for name in args.variants:
            records = []
            for seed in seeds:
                record = run_one(args, name, seed, processor, train_dataset, eval_dataset, clip)
                records.append(record)
                line = f"{name} seed {seed}: overall {record['overall']:.1f}"
                if record.get("rewards"):
                    line += f", reward {record['rewards'][0]:.3f} -> {record['rewards'][-1]:.3f}"
                    line += f", train {record['train_seconds']}s"
                print(f"{line}, eval {record['eval_seconds']}s", flush=True)
            variant = VARIANTS[name]
            config = training_config(args, variant, seeds[0], args.work_dir)
            results[name] = {
                "label": variant.label,
                "train": variant.train,
                "overrides": variant.overrides,
                "reward": variant.reward,
                "config": {key: getattr(config, key) for key in RECORDED_FIELDS},
                "per_seed": records,
                "summary": summarise(records),
            }
            write_report(args, seeds, results, time.perf_counter() - start)
    finally:
        if temporary is not None:
            temporary.cleanup()
    wall_seconds = time.perf_counter() - start
    write_report(args, seeds, results, wall_seconds)

    budget = (
        f"RL steps {args.max_steps}, rollouts per step {args.batch_size} (G = {args.num_generations}), "
        f"diffusion steps {args.diffusion_steps}, loss rows per step = rollouts x s"
    )
    print(
        f"\nToy-world ablations: mean ± std over {len(seeds)} seeds, {args.eval_samples} held-out prompts; {budget}.\n"
    )
    print(markdown_table(results))
    print(f"\nWall time {wall_seconds / 60:.1f} min.")
    print(f"Every per-seed number is in {args.output}.")


if __name__ == "__main__":
    main()
