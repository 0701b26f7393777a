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
