"""The shipped tiny toy-world policy: how it is trained (pararl's parallel SFT) and how its scores are recorded."""

import json
from pathlib import Path

from .tasks import CATEGORIES, ORIGINAL_CATEGORIES


POLICY_DIR = Path(__file__).parent / "assets" / "policy"

# The held-out evaluation whose scores `metrics.json` records (and the tests reproduce).
POLICY_EVAL = {"split": "test", "num_samples": 24, "dataset_seed": 1, "diffusion_steps": 16, "rollout_seed": 0}

# The SFT recipe of the shipped policy, stage by stage: `ParallelSFTConfig` fields plus the data of each stage
# (`toy_train_samples` drawn with `toy_seed`; `toy_world: "original"` = the six-category world's streams;
# `toy_categories` = only those task families; `toy_extra` = more samples of some families, appended). A 4-layer,
# 128-wide model from scratch, then continued; what the stages score: benchmarks/RESULTS.md#toy-policy.
SFT_STAGES = (
    {"model_size": "small", "num_train_epochs": 6, "toy_train_samples": 4000, "toy_seed": 0, "toy_world": "original",
     "learning_rate": 2e-3, "per_device_train_batch_size": 32, "seed": 0},
    {"num_train_epochs": 5, "max_steps": 400, "toy_train_samples": 5000, "toy_seed": 1, "toy_world": "original",
     "learning_rate": 1.5e-3, "per_device_train_batch_size": 32, "warmup_steps": 20, "seed": 1},
    {"max_steps": 1000, "toy_train_samples": 16000, "toy_seed": 2, "toy_world": "original", "learning_rate": 1e-3,
     "lr_scheduler_type": "constant_with_warmup", "per_device_train_batch_size": 32, "warmup_steps": 50, "seed": 2},
    {"max_steps": 2000, "toy_train_samples": 32000, "toy_seed": 3, "toy_world": "original", "learning_rate": 1e-3,
     "per_device_train_batch_size": 32, "warmup_steps": 50, "seed": 3},
    {"max_steps": 800, "toy_train_samples": 16000, "toy_seed": 4, "learning_rate": 5e-4,
     "per_device_train_batch_size": 32, "warmup_steps": 50, "seed": 4},
    {"max_steps": 1600, "toy_train_samples": 16000, "toy_seed": 5, "learning_rate": 1e-3,
     "toy_extra": {"samples": 8000, "seed": 6, "categories": ["open_edit", "open_generation"]},
     "per_device_train_batch_size": 32, "warmup_steps": 50, "seed": 5},
    {"max_steps": 400, "toy_train_samples": 8000, "toy_seed": 11, "toy_categories": ["open_generation"],
     "learning_rate": 1e-3, "per_device_train_batch_size": 32, "warmup_steps": 20, "seed": 11},
    {"max_steps": 1200, "toy_train_samples": 12000, "toy_seed": 12, "toy_categories": ["open_generation"],
     "toy_extra": [{"samples": 4000, "seed": 12, "categories": ["open_edit"]},
                   {"samples": 4000, "seed": 12, "categories": list(ORIGINAL_CATEGORIES)}],
     "learning_rate": 1e-3, "per_device_train_batch_size": 32, "warmup_steps": 20, "seed": 12},
    {"max_steps": 1000, "toy_train_samples": 9600, "toy_seed": 13, "toy_categories": ["open_colour"],
     "toy_extra": {"samples": 6400, "seed": 13, "categories": list(CATEGORIES)},
     "learning_rate": 1e-3, "per_device_train_batch_size": 32, "warmup_steps": 20, "seed": 13},
    {"max_steps": 1200, "toy_train_samples": 11520, "toy_seed": 14, "toy_categories": ["open_colour"],
     "toy_extra": {"samples": 7680, "seed": 14, "categories": list(CATEGORIES)},
     "learning_rate": 1e-3, "per_device_train_batch_size": 32, "warmup_steps": 20, "seed": 14},
)  # fmt: skip


def toy_policy_path() -> str:
    """Folder of the shipped tiny policy: a `MaskedDiffusionLM` trained with pararl's parallel SFT on the toy world's
    train split (rebuilt by `python -m pararl.toy.build_assets --only policy`; its held-out scores are recorded in
    `metrics.json` beside the weights)."""
    if not (POLICY_DIR / "model.safetensors").exists():
        raise FileNotFoundError(
            f"the toy policy is missing from {POLICY_DIR}; rebuild it with "
            "`python -m pararl.toy.build_assets --only policy`."
        )
    return str(POLICY_DIR)


def load_toy_policy(path: str | Path | None = None):
    """The shipped policy (or the one in `path`), in eval mode."""
    from pararl.models import MaskedDiffusionLM

    return MaskedDiffusionLM.from_pretrained(str(path or POLICY_DIR)).eval()


def evaluate_toy_policy(model, num_samples: int | None = None) -> dict:
    """Scores `model` on the recorded held-out evaluation (`POLICY_EVAL`) with the exact six-axis evaluator."""
    from pararl.rollout import RolloutConfig

    from .evaluate import generate_predictions
    from .processing import toy_processor
    from .scoring import evaluate
    from .tasks import build_toy_dataset

    dataset = build_toy_dataset(
        POLICY_EVAL["split"], num_samples or POLICY_EVAL["num_samples"], seed=POLICY_EVAL["dataset_seed"]
    )
    config = RolloutConfig(num_steps=POLICY_EVAL["diffusion_steps"])
    predictions = generate_predictions(model, toy_processor(), dataset, config, seed=POLICY_EVAL["rollout_seed"])
    return evaluate(predictions, dataset)


def record_policy_metrics(path: str | Path | None = None) -> dict:
    """Evaluates the policy in `path` and writes the scores to `metrics.json` beside it."""
    path = Path(path or POLICY_DIR)
    result = evaluate_toy_policy(load_toy_policy(path))
    metrics = {"evaluation": POLICY_EVAL, "scores": scores_of(result), "sft_stages": SFT_STAGES}
    (path / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def scores_of(result: dict) -> dict[str, float | None]:
    """The six axes and the overall score of an :func:`~pararl.toy.scoring.evaluate` result."""
    return {**result["axes"], "overall": result["overall"]}
