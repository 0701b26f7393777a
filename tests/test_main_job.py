"""The main job, `examples/pararl.py`, in a reduced form: single process and two CPU processes under ZeRO-3."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO = Path(__file__).resolve().parents[1]
REDUCED = [
    "--max_steps", "2",
    "--logging_steps", "1",
    "--toy_train_samples", "32",
    "--toy_eval_samples", "6",
    "--per_device_train_batch_size", "4",
    "--num_generations", "4",
    "--diffusion_steps", "8",
    "--reward_calibration_fraction", "0.25",
    "--coordination_prompts", "3",
]  # fmt: skip


def run(command: list[str], tmp_path: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.slow
def test_main_job_single_process(tmp_path):
    output_dir = tmp_path / "out"
    result = run([sys.executable, "examples/pararl.py", *REDUCED, "--output_dir", str(output_dir)], tmp_path)
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    assert set(summary["before"]) == set(summary["after"]) >= {"text_quality", "output_alignment", "overall"}
    assert (output_dir / "adapter_model.safetensors").exists()
    assert any((output_dir / "trajectories").glob("step_*.png"))
    assert "output_alignment" in result.stdout.lower() or "OutA" in result.stdout
    # The toy job runs its no-update control: the first step is scored on the same prompts and noise before any update.
    assert len(summary["control_rewards"]) == 2 and summary["paired_difference"][0] == pytest.approx(0.0, abs=1e-6)
    assert set(summary["coordination_after"]) == {"decoding", "text_first", "image_first"}
    assert "Coordination on 3 held-out open_colour prompts" in result.stdout


@pytest.mark.slow
def test_main_job_two_processes_zero3(tmp_path):
    config = tmp_path / "zero3.yaml"
    text = (REPO / "ds_configs" / "zero3_cpu_test.yaml").read_text()
    config.write_text(
        text.replace("ds_configs/ds_zero3_cpu_test.json", str(REPO / "ds_configs" / "ds_zero3_cpu_test.json"))
    )
    output_dir = tmp_path / "out"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    run([*accelerate, "examples/pararl.py", *REDUCED, "--no_evaluate", "--output_dir", str(output_dir)], tmp_path)
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] == 2
    assert (output_dir / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_main_job_with_the_exact_toy_reward_on_chosen_categories(tmp_path):
    output_dir = tmp_path / "out"
    command = [sys.executable, "examples/pararl.py", *REDUCED, "--toy_reward", "exact", "--no_evaluate"]
    command += ["--toy_train_categories", "open_edit", "generation"]
    result = run([*command, "--max_steps", "1", "--output_dir", str(output_dir)], tmp_path)
    assert "rewards/toy_output_alignment/mean" in result.stdout
    assert "clip_alignment_reward" not in result.stdout
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["steps"] == 1
    assert summary["train_categories"] == ["generation", "open_edit"]


def test_an_explicit_paired_control_under_deepspeed_is_a_usage_error(tmp_path):
    # One DeepSpeed engine per process: the control's second trainer cannot run there, so asking for it fails at once.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_DEEPSPEED": "true"}
    command = [sys.executable, "examples/pararl.py", "--paired_control", "true", "--output_dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "--paired_control runs a second trainer" in result.stderr and "--learning_rate 0" in result.stderr
