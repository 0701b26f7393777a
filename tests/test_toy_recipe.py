import pytest

from pararl.rewards import CLIPAlignmentReward
from pararl.toy.recipe import (
    format_category_changes,
    format_coordination_changes,
    paired_reward_summary,
    reward_curve,
    save_reward_curve,
    toy_reward,
)
from pararl.toy.reward import RandomReward, ToyOutputAlignment


class _States:
    def __init__(self, n):
        self.texts = [""] * n


def test_random_reward_is_seeded_uniform_noise():
    first, again, other = RandomReward(3), RandomReward(3), RandomReward(4)
    values = first.score(_States(1000))
    assert values == again.score(_States(1000)) and values != other.score(_States(1000))
    assert all(0.0 <= v < 1.0 for v in values) and abs(sum(values) / 1000 - 0.5) < 0.05


def test_toy_reward_names():
    assert isinstance(toy_reward("exact"), ToyOutputAlignment)
    assert isinstance(toy_reward("random", seed=1), RandomReward)
    clip = toy_reward("clip")
    assert isinstance(clip, CLIPAlignmentReward) and clip.normalizer is not None
    with pytest.raises(ValueError, match="clip"):
        toy_reward("judge")


def test_reward_curve_png_and_category_table(tmp_path):
    history = [{"reward": 0.1 * i, "step": i} for i in range(1, 11)] + [{"train_runtime": 3.0, "step": 10}]
    assert reward_curve(history) == [(i, 0.1 * i) for i in range(1, 11)]
    save_reward_curve(history, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="reward"):
        save_reward_curve([{"loss": 1.0}], tmp_path / "none.png")
    axes = {"text_quality": 90.0, "output_alignment": 20.0}
    before = {"axes": axes, "overall": 55.0, "categories": {"open_edit": {**axes, "overall": 55.0}}}
    after_axes = {"text_quality": 89.0, "output_alignment": 30.0}
    after = {"axes": after_axes, "overall": 59.5, "categories": {"open_edit": {**after_axes, "overall": 59.5}}}
    table = format_category_changes(before, after, axes=("output_alignment", "overall"))
    lines = table.splitlines()
    assert lines[0].split() == ["category", "OutA", "Overall"]
    assert "20.0 -> 30.0 (+10.0)" in lines[2] and lines[2].startswith("open_edit")
    assert lines[-1].startswith("all") and "55.0 -> 59.5 (+4.5)" in lines[-1]


def test_toy_datasets_narrow_the_training_prompts_but_judge_every_category():
    from pararl.toy import CATEGORIES, build_toy_dataset
    from pararl.toy.recipe import toy_datasets

    train, held_out = toy_datasets(6, len(CATEGORIES), seed=3, train_categories=["causal", "open_edit"])
    assert train["category"] == ["causal", "open_edit"] * 3 and train.split == "train"
    assert held_out["category"] == list(CATEGORIES) and held_out.split == "test"
    assert held_out["answer"] == build_toy_dataset("test", len(CATEGORIES), seed=3)["answer"]


def test_toy_datasets_also_judge_a_family_outside_the_default_world_when_training_on_it():
    from pararl.toy import CATEGORIES
    from pararl.toy.recipe import toy_datasets

    train, held_out = toy_datasets(4, 2 * (len(CATEGORIES) + 1), seed=0, train_categories=["open_colour"])
    assert train["category"] == ["open_colour"] * 4
    assert held_out["category"] == [*CATEGORIES, "open_colour"] * 2


def test_paired_reward_summary_subtracts_the_no_update_run_step_by_step(tmp_path):
    run = [{"reward": r, "step": s} for s, r in enumerate([0.5, 0.6, 0.7, 0.9], start=1)]
    control = [{"reward": r, "step": s} for s, r in enumerate([0.5, 0.5, 0.6, 0.6], start=1)]
    paired = paired_reward_summary(run, control)
    assert paired["control_rewards"] == [0.5, 0.5, 0.6, 0.6]
    assert paired["paired_difference"] == pytest.approx([0.0, 0.1, 0.1, 0.3])
    assert paired["paired_difference_mean"] == pytest.approx(0.125)
    assert paired["paired_difference_last_half"] == pytest.approx(0.2)
    save_reward_curve(run, tmp_path / "curve.png", control_log_history=control)
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no logged step"):
        paired_reward_summary(run, [{"reward": 0.1, "step": 9}])


def test_coordination_table_shows_each_decoding_before_and_after():
    def stats(matched, independent):
        return {"matched": matched, "independent": independent, "coordination": matched - independent,
                "distinct_text_choices": 3.0, "distinct_image_choices": 2.5}  # fmt: skip

    table = format_coordination_changes({"decoding": stats(20, 15)}, {"decoding": stats(40, 20)})
    assert "20.0 -> 40.0 (+20.0)" in table and "+5.0 -> +20.0 (+15.0)" in table
