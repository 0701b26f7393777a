"""Rebuilds the toy world's shipped assets, deterministically.

    python -m pararl.toy.build_assets                  # everything, into pararl/toy/assets/
    python -m pararl.toy.build_assets --only clip      # the tiny CLIP only (cost: benchmarks/RESULTS.md#toy-policy)
    python -m pararl.toy.build_assets --quick          # seconds, into a temporary folder: checks the script runs

Each asset goes to its own sub-folder of `--output_dir` (`clip/`, `policy/`) with a `metrics.json` recording what
it scores on held-out data. A rebuild with the same seed and the same number of threads (`--threads`, default 1,
since float reductions change with the thread count) gives the same weights.
"""

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch


__all__ = ["ASSETS_DIR", "build_clip", "build_policy", "main"]

ASSETS_DIR = Path(__file__).parent / "assets"


def build_clip(output_dir: str | Path, quick: bool = False, seed: int = 0, log_every: int = 0) -> dict:
    """Trains the tiny CLIP, saves it to `output_dir` and records its held-out retrieval in `metrics.json`.

    The metrics are measured on the saved (fp16) weights as :func:`~pararl.toy.clip.load_toy_clip` loads them, so
    a test can reproduce them exactly from the shipped files.
    """
    from .clip import TOY_CLIP_NAME, WEIGHTS_FILE, load_toy_clip, save_toy_clip
    from .clip_training import ToyClipTrainingConfig, heldout_metrics, train_toy_clip

    output_dir = Path(output_dir)
    config = ToyClipTrainingConfig.quick(seed=seed) if quick else ToyClipTrainingConfig(seed=seed)
    model, info = train_toy_clip(config, log_every=log_every)
    save_toy_clip(model, output_dir)
    loaded, tokenizer = load_toy_clip(directory=output_dir)
    eval_size = 64 if quick else 512
    metrics = {
        "model": TOY_CLIP_NAME,
        "num_parameters": sum(p.numel() for p in loaded.parameters()),
        "weights_bytes": (output_dir / WEIGHTS_FILE).stat().st_size,
        "training": {
            **info,
            "quick": quick,
            "threads": torch.get_num_threads(),
            "torch_version": torch.__version__,
        },
        "heldout": heldout_metrics(loaded, tokenizer, split="test", num_samples=eval_size),
        "train": heldout_metrics(loaded, tokenizer, split="train", num_samples=eval_size),
    }
    save_toy_clip(loaded, output_dir, metrics)
    return metrics


def stage_dataset(stage: dict):
    """The training data of one SFT stage of `pararl.toy.policy.SFT_STAGES`; pops its data keys from `stage`.

    `toy_train_samples` samples drawn with `toy_seed` from the whole world (`toy_world: "original"`: the six-category
    world's streams), or from `toy_categories` only; then each `toy_extra` entry (one dict or a list of them:
    `samples`, `seed`, `categories`) appended in order."""
    import datasets

    from .tasks import CATEGORIES, ORIGINAL_CATEGORIES, build_toy_dataset

    world = ORIGINAL_CATEGORIES if stage.pop("toy_world", "full") == "original" else CATEGORIES
    categories = stage.pop("toy_categories", None)
    train = build_toy_dataset(
        "train", stage.pop("toy_train_samples"), seed=stage.pop("toy_seed"), categories=categories, world=world
    )
    extras = stage.pop("toy_extra", [])
    for extra in [extras] if isinstance(extras, dict) else extras:
        more = build_toy_dataset("train", extra["samples"], seed=extra["seed"], categories=extra["categories"])
        train = datasets.concatenate_datasets([train, more])
    return train


def build_policy(
    output_dir: str | Path, quick: bool = False, seed: int = 0, log_every: int = 0, start_stage: int = 1
) -> dict:
    """Trains the tiny policy with `pararl.sft` (the stages of `pararl.toy.policy.SFT_STAGES`) and records its
    held-out six-axis scores in `metrics.json`. `quick` trains a 2-layer model for a few steps instead.

    `start_stage` > 1 continues from the policy already in `output_dir` (the result of the stages before it), so a
    rebuild can run in parts that each keep their result."""
    from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
    from pararl.sft import ParallelSFTConfig, ParallelSFTTrainer

    from .policy import SFT_STAGES, record_policy_metrics
    from .processing import toy_processor

    output_dir = Path(output_dir)
    processor = toy_processor()
    preset = processor.preset
    d_model, n_layers, mlp = (32, 2, 64) if quick else (128, 4, 384)
    torch.manual_seed(seed)
    if start_stage > 1:
        if quick:
            raise ValueError("--start_stage continues a full rebuild; it cannot be combined with --quick.")
        if not 1 < start_stage <= len(SFT_STAGES):
            raise ValueError(f"--start_stage must be in [1, {len(SFT_STAGES)}], got {start_stage}.")
        if not (output_dir / "model.safetensors").exists():
            raise FileNotFoundError(
                f"--start_stage {start_stage} continues the policy in {output_dir}, but it has none."
            )
        model = MaskedDiffusionLM.from_pretrained(str(output_dir))
    else:
        model = MaskedDiffusionLM(
            MaskedDiffusionConfig(
                d_model=d_model,
                n_layers=n_layers,
                n_heads=4,
                mlp_hidden_size=mlp,
                max_sequence_length=1024,
                rope_theta=10000.0,
                **preset.model_config_kwargs(),
            )
        )
    stages = ({"toy_train_samples": 64, "toy_seed": 0, "max_steps": 4, "per_device_train_batch_size": 8,
               "learning_rate": 2e-3, "seed": 0},) if quick else SFT_STAGES[start_stage - 1 :]  # fmt: skip
    for stage in stages:
        stage = dict(stage)
        stage.pop("model_size", None)
        train = stage_dataset(stage)
        stage["seed"] = stage.get("seed", 0) + seed
        args = ParallelSFTConfig(
            **{
                "output_dir": str(output_dir / "sft-work"),
                "use_cpu": not torch.cuda.is_available(),
                "lr_scheduler_type": "cosine",
                "weight_decay": 0.01,
                "logging_steps": log_every or 50,
                "save_strategy": "no",
                "report_to": "none",
                **stage,  # a stage may change the defaults above (the last stage runs at a constant rate)
            }
        )
        trainer = ParallelSFTTrainer(model=model, args=args, train_dataset=train, processing_class=processor)
        trainer.train()
        model = trainer.model
    model.save_pretrained(output_dir)
    return record_policy_metrics(output_dir)


BUILDERS = {"clip": build_clip, "policy": build_policy}


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pararl.toy.build_assets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(BUILDERS), help="Rebuild one asset only (default: all).")
    parser.add_argument("--quick", action="store_true", help="Tiny settings, seconds (into a temporary folder).")
    parser.add_argument(
        "--output_dir",
        default=None,
        help="Where to write (default: the package's assets folder, or a temporary folder with --quick).",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start_stage",
        type=int,
        default=1,
        help="Policy only: continue from the policy in the output folder at this SFT stage (a rebuild in parts).",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (results depend on it).")
    parser.add_argument("--log_every", type=int, default=100, help="Print the training loss every N steps (0 = off).")
    args = parser.parse_args(argv)

    if args.output_dir is not None:
        output_dir = Path(args.output_dir)
    elif args.quick:  # never overwrite the shipped assets with quick ones
        output_dir = Path(tempfile.mkdtemp(prefix="pararl-toy-assets-"))
    else:
        output_dir = ASSETS_DIR
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    results = {}
    try:
        for name in [args.only] if args.only else list(BUILDERS):
            start = time.perf_counter()
            extra = {"start_stage": args.start_stage} if name == "policy" else {}
            metrics = BUILDERS[name](
                output_dir / name, quick=args.quick, seed=args.seed, log_every=args.log_every, **extra
            )
            results[name] = metrics
            print(f"built {name} into {output_dir / name} in {time.perf_counter() - start:.1f}s")
            for split in ("heldout", "train"):
                if isinstance(metrics.get(split), dict):
                    print(f"  {split}: {metrics[split]}")
    finally:
        torch.set_num_threads(previous_threads)
    return results


if __name__ == "__main__":
    main()
