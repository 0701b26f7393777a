"""Two CPU processes under DeepSpeed ZeRO-3 (really sharded parameters), launched with `accelerate launch`: ParaRL
steps with full fine-tuning plus a sharded reference model, and with LoRA. The launched script is
tests/scripts/train_tiny.py; it writes one JSON summary per process and variant."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("full", "lora", "all_steps")


def launch(tmp: Path, launch_args: list[str], variants: list[str], timeout: int = 600) -> dict:
    """Runs train_tiny.py on 2 processes (2 steps, beta > 0) and returns `{variant: [rank-0 summary, rank-1]}`."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *launch_args,
        "tests/scripts/train_tiny.py",
        "--output_dir",
        str(tmp / "out"),
        "--summary_dir",
        str(tmp / "summaries"),
        "--max_steps",
        "2",
        "--beta",
        "0.1",
        "--variants",
        *variants,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    output = f"{result.stdout[-3000:]}\n{result.stderr[-8000:]}"
    assert result.returncode == 0, f"accelerate launch failed ({result.returncode}):\n{output}"
    summaries = {}
    for variant in variants:
        paths = [tmp / "summaries" / f"{variant}_rank{rank}.json" for rank in range(2)]
        assert all(path.is_file() for path in paths), f"missing summaries for {variant}:\n{output}"
        summaries[variant] = [json.loads(path.read_text()) for path in paths]
    return summaries


@pytest.fixture(scope="module")
def zero3_summaries(tmp_path_factory):
    """The ZeRO-3 variants in one launch (process start-up and imports dominate a run this small)."""
    tmp = tmp_path_factory.mktemp("zero3")
    # The accelerate config names the DeepSpeed JSON relative to the repo root; make it absolute. Do not set
    # ACCELERATE_USE_CPU here: with it, accelerate silently drops DeepSpeed and runs plain DDP (MULTI_CPU).
    config = (REPO_ROOT / "ds_configs" / "zero3_cpu_test.yaml").read_text()
    json_path = REPO_ROOT / "ds_configs" / "ds_zero3_cpu_test.json"
    (tmp / "zero3.yaml").write_text(config.replace("ds_configs/ds_zero3_cpu_test.json", str(json_path)))
    return launch(tmp, ["--config_file", str(tmp / "zero3.yaml")], list(VARIANTS))


def check_common(ranks: list[dict]) -> None:
    assert [summary["process_index"] for summary in ranks] == [0, 1]
    for summary in ranks:
        assert summary["num_processes"] == 2
        assert summary["distributed_type"] == "DistributedType.DEEPSPEED"
        assert summary["zero_stage"] == 3
        assert summary["sharded"], "ZeRO-3 kept whole parameters on a rank"
        assert summary["steps"] == 2
        assert len(summary["losses"]) == 2 and all(math.isfinite(loss) for loss in summary["losses"])
        assert all(len(values) == 2 for values in summary["reward_means"].values())
        assert set(summary["reward_means"]) <= {"word_count", "image_brightness", "normalized_brightness"}
        assert len(summary["rewards"]) == 2 and all(reward > 0 for reward in summary["rewards"])
        # KL is 0 at the first step (policy == reference) and positive once the policy has moved.
        assert summary["kl"][0] == pytest.approx(0.0, abs=1e-6) and summary["kl"][1] > 0
        assert summary["num_changed"] == summary["num_trainable"] > 0
    # Rewards are gathered across processes before the group statistics, so both ranks log the same numbers.
    assert ranks[0]["rewards"] == ranks[1]["rewards"]


@pytest.mark.slow
def test_zero3_full_fine_tune_with_reference_model(zero3_summaries):
    ranks = zero3_summaries["full"]
    check_common(ranks)
    # The reference model is a second model, sharded by ZeRO-3 like the policy.
    assert all(summary["has_ref_model"] and summary["ref_sharded"] for summary in ranks)


@pytest.mark.slow
def test_zero3_lora(zero3_summaries):
    ranks = zero3_summaries["lora"]
    check_common(ranks)
    assert not any(summary["has_ref_model"] for summary in ranks)
    assert ranks[0]["num_trainable"] == 2 * 4 * 2  # lora_A and lora_B of 4 projections in 2 layers


@pytest.mark.slow
def test_zero3_all_steps_in_groups(zero3_summaries):
    ranks = zero3_summaries["all_steps"]
    check_common(ranks)
    # Grouped steps are importance-sampling corrected; every output token of the 4 rollouts per step is scored once.
    assert all(all(value is not None for value in summary["importance_sampling"]) for summary in ranks)
    assert all(summary["num_tokens"] == 2 * 4 * 90 for summary in ranks)


def zero3_config(tmp: Path) -> Path:
    # The accelerate config names the DeepSpeed JSON relative to the repo root; make it absolute.
    config = (REPO_ROOT / "ds_configs" / "zero3_cpu_test.yaml").read_text()
    json_path = REPO_ROOT / "ds_configs" / "ds_zero3_cpu_test.json"
    (tmp / "zero3.yaml").write_text(config.replace("ds_configs/ds_zero3_cpu_test.json", str(json_path)))
    return tmp / "zero3.yaml"


@pytest.mark.slow
def test_zero3_calibration_with_a_rank_without_calibration_prompts(tmp_path):
    # 1/16 of 16 prompts: one calibration prompt, on rank 0. Rank 1 must still enter the rollout's parameter gather
    # (a collective under ZeRO-3), or rank 0 waits forever; the timeout turns such a hang into a failure.
    ranks = launch(tmp_path, ["--config_file", str(zero3_config(tmp_path))], ["calibrate"], timeout=300)["calibrate"]
    check_common(ranks)
    calibration = [summary["calibration"] for summary in ranks]
    assert [c["num_raw_before_fit"] for c in calibration] == [2, 0]  # one prompt x num_reward_steps = 2 states
    # Both ranks fit the same statistics, from the gathered raw scores.
    assert calibration[0]["normalizer"] == calibration[1]["normalizer"]
    assert calibration[0]["normalizer"]["mean"] is not None
