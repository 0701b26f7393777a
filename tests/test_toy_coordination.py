"""Coordination of a policy's two outputs: the statistics, the reading of decisions, and the measurement loop."""

import json

import pytest
import torch

from pararl.rollout import RolloutConfig
from pararl.toy import build_toy_dataset
from pararl.toy.coordination import agreement_statistics, coordination_report, read_colour_decisions
from pararl.toy.scenes import SLOT_NAMES, ToyObject, render_scene


def test_coordinated_but_diverse_choices_score_full_coordination():
    stats = agreement_statistics(["red", "blue", "green", "black"], ["red", "blue", "green", "black"], 4)
    assert stats["matched"] == 100.0 and stats["independent"] == 0.0 and stats["coordination"] == 100.0
    assert stats["distinct_text_choices"] == 4 and stats["distinct_image_choices"] == 4


def test_one_shared_choice_agrees_fully_but_coordinates_nothing():
    stats = agreement_statistics(["red"] * 4, ["red"] * 4, 4)
    assert stats["matched"] == 100.0 and stats["independent"] == 100.0 and stats["coordination"] == 0.0
    assert stats["distinct_text_choices"] == 1 == stats["distinct_image_choices"]


def test_independent_draws_pair_different_rollouts_only():
    # Group 1: texts (red, blue), pictures (red, red): matched 1 of 2; ordered pairs of different rollouts: text 0 vs
    # picture 1 matches, text 1 vs picture 0 does not -> 1 of 2. Group 2: (green, None) vs (None, green): matched 0;
    # text 0 vs picture 1 matches -> 1 of 2; None never matches.
    stats = agreement_statistics(["red", "blue", "green", None], ["red", "red", None, "green"], 2)
    assert stats["matched"] == pytest.approx(25.0)
    assert stats["independent"] == pytest.approx(50.0)
    assert stats["coordination"] == pytest.approx(-25.0)
    assert stats["distinct_text_choices"] == 1.5 and stats["distinct_image_choices"] == 1.0
    assert stats["text_stated"] == 75.0 and stats["image_stated"] == 75.0


def test_agreement_statistics_refuses_ragged_groups():
    with pytest.raises(ValueError, match="groups of"):
        agreement_statistics(["red"] * 3, ["red"] * 3, 2)
    with pytest.raises(ValueError, match="groups of"):
        agreement_statistics(["red"] * 2, ["red"] * 2, 1)


def test_decisions_are_read_from_the_colour_word_and_the_dot_cell(processor):
    dataset = build_toy_dataset("train", 2, seed=0, categories=["open_colour"])
    answers = [json.loads(answer) for answer in dataset["answer"]]
    outputs, expected = [], []
    for answer, (word, cell) in zip(answers, [("purple", "purple"), ("white", "green")]):
        dot = next(o for o in answer["objects"] if o["slot"] not in {i["slot"] for i in answer["input_objects"] or []})
        slot = SLOT_NAMES.index(dot["slot"])
        others = [
            ToyObject(o["shape"], o["colour"], SLOT_NAMES.index(o["slot"])) for o in answer["input_objects"] or []
        ]
        picture = render_scene([*others, ToyObject("dot", cell, slot)])
        outputs.append(processor.encode_outputs([f"a {word} dot goes at the {dot['slot']} ."], [picture])[0])
        expected.append((word, cell, ToyObject("dot", cell, slot).cells[0]))
    output_ids = torch.stack(outputs)
    step_map = torch.zeros_like(output_ids)
    step_map[:, processor.text_positions[1]] = 5  # the colour word is the reasoning's second token
    for i, (_, _, (row, col)) in enumerate(expected):
        step_map[i, processor.image_positions[row * 8 + col]] = 11 + i
    decisions = read_colour_decisions(answers, output_ids, step_map, processor)
    assert decisions.text == ["purple", "white"] and decisions.image == ["purple", "green"]
    assert decisions.text_step == [5, 5] and decisions.image_step == [11, 12]


def test_read_colour_decisions_refuses_other_families(processor):
    dataset = build_toy_dataset("train", 1, seed=0, categories=["open_generation"])
    answers = [json.loads(dataset[0]["answer"])]
    ids = processor.masked_outputs(1)
    with pytest.raises(ValueError, match="open_colour"):
        read_colour_decisions(answers, ids, torch.zeros_like(ids), processor)


def test_coordination_report_writes_the_first_modality_first(processor, tiny_model):
    model = tiny_model(seed=0)
    dataset = build_toy_dataset("test", 3, seed=0, categories=["open_colour"])
    report = coordination_report(model, processor, dataset, RolloutConfig(num_steps=4), generations=2, seed=1)
    assert set(report) == {"decoding", "text_first", "image_first"}
    for stats in report.values():
        assert 0 <= stats["matched"] <= 100 and 0 <= stats["independent"] <= 100
        assert stats["coordination"] == pytest.approx(stats["matched"] - stats["independent"])
    # A sequential order reveals its first modality's decision on an earlier step, whenever both are stated.
    for order in ("text_first", "image_first"):
        reveal = report[order]["reveal"]
        assert reveal[order] is None or reveal[order] == 100.0
