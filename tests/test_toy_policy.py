"""The shipped toy policy loads offline and reproduces its recorded held-out scores."""

import json

import pytest

from pararl.toy import toy_policy_path
from pararl.toy.policy import POLICY_DIR, evaluate_toy_policy, load_toy_policy, scores_of


def test_policy_asset_reproduces_its_recorded_scores():
    assert toy_policy_path() == str(POLICY_DIR)
    recorded = json.loads((POLICY_DIR / "metrics.json").read_text())
    scores = scores_of(evaluate_toy_policy(load_toy_policy()))
    assert scores == pytest.approx(recorded["scores"], abs=1e-9)
    # Decent but clearly imperfect: room left for RL.
    assert 20.0 < scores["overall"] < 80.0
    assert (POLICY_DIR / "model.safetensors").stat().st_size < 8_000_000


def test_quick_policy_rebuild_runs(tmp_path):
    from pararl.toy.build_assets import main

    results = main(["--quick", "--only", "policy", "--output_dir", str(tmp_path), "--log_every", "0"])
    recorded = json.loads((tmp_path / "policy" / "metrics.json").read_text())
    assert recorded["scores"] == pytest.approx(results["policy"]["scores"])
    assert set(recorded["scores"]) >= {"text_quality", "output_alignment", "overall"}
    assert load_toy_policy(tmp_path / "policy").config.n_layers == 2


def test_stage_dataset_draws_the_named_families_then_appends_each_extra_in_order():
    from pararl.toy import build_toy_dataset
    from pararl.toy.build_assets import stage_dataset

    stage = {
        "toy_train_samples": 6,
        "toy_seed": 3,
        "toy_categories": ["open_generation"],
        "toy_extra": [
            {"samples": 4, "seed": 4, "categories": ["open_edit"]},
            {"samples": 5, "seed": 5, "categories": ["spatial", "general"]},
        ],
        "max_steps": 10,
    }
    train = stage_dataset(stage)
    assert stage == {"max_steps": 10}  # the data keys are consumed, the trainer's are left
    assert train["category"] == ["open_generation"] * 6 + ["open_edit"] * 4 + ["spatial", "general"] * 2 + ["spatial"]
    expected = build_toy_dataset("train", 4, seed=4, categories=["open_edit"])
    assert train["prompt"][6:10] == expected["prompt"]
    # One extra may be given as a dict (the older stages' spelling); the whole world is the default.
    single = stage_dataset(
        {"toy_train_samples": 8, "toy_seed": 0, "toy_extra": {"samples": 2, "seed": 1, "categories": ["open_edit"]}}
    )
    assert len(single) == 10 and set(single["category"][:8]) > {"spatial", "open_edit"}
