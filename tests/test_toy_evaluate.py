import json

import pytest
import torch

from pararl.toy import CATEGORIES, build_toy_dataset, generate_samples, scene_codes
from pararl.toy.claims import Claim, reasoning_claims
from pararl.toy.scenes import ToyObject
from pararl.toy.scoring import AXES, evaluate, evaluate_sample, format_scores, text_quality_checks
from pararl.toy.tasks import ALL_CATEGORIES, BUILDERS, ToySample
from pararl.toy.texts import TEXTS


# A hand-made edit: paint the blue square (top left) the colour of fire; a red dot (middle centre) stays.
BLUE_SQUARE, RED_DOT = ToyObject("square", "blue", 0), ToyObject("dot", "red", 4)
RED_SQUARE, GREEN_SQUARE = ToyObject("square", "red", 0), ToyObject("square", "green", 0)
GOOD_TEXT = "fire is red so the blue square becomes red ."
WRONG_TEXT = "fire is red so the blue square becomes green ."


def _recolour_row() -> dict:
    return ToySample(
        category="knowledge",
        template="recolour",
        prompt="paint the blue square the colour of fire .",
        reasoning=GOOD_TEXT,
        input_objects=(BLUE_SQUARE, RED_DOT),
        output_objects=(RED_SQUARE, RED_DOT),
        focus=("square", "red"),
        facts={"colour": "red"},
        keywords=("red",),
    ).to_row()


def _draw_row() -> dict:
    return ToySample(
        category="generation",
        template="draw_known",
        prompt="draw a pole the colour of grass at the bottom right .",
        reasoning="grass is green so a green pole is drawn at the bottom right .",
        input_objects=None,
        output_objects=(ToyObject("pole", "green", 8),),
        focus=("pole", "green"),
        facts={"colour": "green", "slot": "bottom right"},
        keywords=("green", "bottom right"),
    ).to_row()


def _scores(text, objects, row=None, edit=None):
    codes = scene_codes(objects)
    if edit is not None:
        edit(codes)
    return evaluate_sample(text, codes, row if row is not None else _recolour_row())


def test_ground_truth_scores_100_on_every_axis_for_every_template():
    seen = set()
    for split in ("train", "test"):
        for sample in generate_samples(split, 300, seed=7, world=ALL_CATEGORIES):
            seen.add(sample.template)
            scores = evaluate_sample(sample.reasoning, scene_codes(sample.output_objects), sample.to_row())
            expected_consistency = None if sample.task == "generate" else 1.0
            assert scores == {**dict.fromkeys(AXES, 1.0), "image_consistency": expected_consistency}, sample
            assert reasoning_claims(sample.reasoning), sample.reasoning
    # Every template of the world, its extra families included, was drawn, so every reasoning text has a grammar
    # rule and claim fragments (the open-colour templates reuse the open-ended reasonings).
    assert {key.split("_reasoning")[0] for key in TEXTS if "_reasoning" in key} <= seen
    assert len(seen) == sum(len(builders) for builders in BUILDERS.values())


def test_evaluate_dataset_ground_truth_tables():
    dataset = build_toy_dataset("test", 40, seed=1)
    predictions = {
        "texts": dataset["reasoning"],
        "codes": torch.stack(
            [scene_codes([ToyObject.from_dict(o) for o in json.loads(a)["objects"]]) for a in dataset["answer"]]
        ),
    }
    result = evaluate(predictions, dataset)
    assert result["overall"] == 100.0 and result["num_samples"] == 40
    assert result["axes"] == dict.fromkeys(AXES, 100.0)
    assert list(result["categories"]) == list(CATEGORIES)
    for category, table in result["categories"].items():
        assert table["num_samples"] == 5 and table["overall"] == 100.0
        assert table["image_consistency"] == (None if category.endswith("generation") else 100.0)
    # Pairs and dicts are accepted too.
    pairs = list(zip(predictions["texts"], predictions["codes"]))
    assert evaluate(pairs, dataset)["axes"] == result["axes"]
    assert evaluate([{"text": t, "codes": c} for t, c in pairs], list(dataset))["overall"] == 100.0
    table = format_scores(result)
    assert table.splitlines()[0].split() == [
        "category",
        "n",
        "TextQ",
        "TextA",
        "ImgCons",
        "ImgA",
        "ImgQ",
        "OutA",
        "Overall",
    ]
    assert table.splitlines()[-1].split() == ["all", "40"] + ["100.0"] * 7
    assert "generation" in table and " - " in table  # no image consistency for generation


def test_wrong_answer_in_the_reasoning():
    scores = _scores(WRONG_TEXT, (RED_SQUARE, RED_DOT))
    # "red" is still stated (premise), but the conclusion's claims share 1 of 3: {absent blue square}.
    assert scores["text_alignment"] == pytest.approx(1 / 3)
    assert scores["text_quality"] == 1.0  # well-formed, just wrong
    assert scores["output_alignment"] == 0.5  # the picture has no green square, and no blue square
    assert scores["image_alignment"] == scores["image_quality"] == scores["image_consistency"] == 1.0
    # A reasoning that never reaches the answer keyword.
    assert _scores("the blue square becomes green .", (RED_SQUARE, RED_DOT))["text_alignment"] == 0.0


def test_wrong_picture():
    scores = _scores(GOOD_TEXT, (GREEN_SQUARE, RED_DOT))
    assert scores["image_alignment"] == 0.5  # F1: the dot matches, the square is one miss and one false object
    assert scores["output_alignment"] == 0.5  # "becomes red" fails, "the blue square is gone" holds
    assert scores["image_consistency"] == 1.0  # the kept dot and background are intact
    assert scores["text_alignment"] == scores["text_quality"] == scores["image_quality"] == 1.0
    empty = _scores(GOOD_TEXT, ())
    assert empty["image_alignment"] == 0.0 and empty["image_quality"] == 1.0  # valid but empty picture


def test_output_alignment_is_text_picture_agreement_not_truth():
    # Text says green, picture shows red: they disagree.
    assert _scores(WRONG_TEXT, (RED_SQUARE, RED_DOT))["output_alignment"] == 0.5
    # Text says green and the picture shows green: both wrong, but they agree.
    scores = _scores(WRONG_TEXT, (GREEN_SQUARE, RED_DOT))
    assert scores["output_alignment"] == 1.0
    assert scores["image_alignment"] == 0.5 and scores["text_alignment"] == pytest.approx(1 / 3)
    # Generation: the text says a green pole at the bottom right; a red pole there, or a green pole elsewhere, fails.
    row = _draw_row()
    assert _scores(row["reasoning"], [ToyObject("pole", "green", 8)], row)["output_alignment"] == 1.0
    assert _scores(row["reasoning"], [ToyObject("pole", "red", 8)], row)["output_alignment"] == 0.0
    assert _scores(row["reasoning"], [ToyObject("pole", "green", 2)], row)["output_alignment"] == 0.0
    assert _scores(row["reasoning"], [ToyObject("pole", "green", 8)], row)["image_consistency"] is None


def test_edit_that_breaks_consistency():
    # The red dot should stay but is wiped: painted kept cells 0/1, background kept cells 59/59.
    scores = _scores(GOOD_TEXT, (RED_SQUARE,))
    assert scores["image_consistency"] == 0.5
    assert scores["image_alignment"] == pytest.approx(2 / 3)
    assert scores["output_alignment"] == 1.0  # the reasoning says nothing about the dot
    # A stray object painted on kept background: painted 1/1, background 58/59.
    scores = _scores(GOOD_TEXT, (RED_SQUARE, RED_DOT, ToyObject("dot", "black", 8)))
    assert scores["image_consistency"] == pytest.approx((1 + 58 / 59) / 2)


def test_invalid_pictures():
    def lane(codes):
        codes[2, 0] = 3  # paint between slots

    scores = _scores(GOOD_TEXT, (RED_SQUARE, RED_DOT), edit=lane)
    assert scores["image_quality"] == 0.0
    assert scores["image_alignment"] == 1.0  # the objects themselves are right
    assert scores["image_consistency"] == pytest.approx((1 + 58 / 59) / 2)

    def masked(codes):
        codes[0, 0] = -1  # a still-masked cell: the square cannot be read

    scores = _scores(GOOD_TEXT, (RED_SQUARE, RED_DOT), edit=masked)
    assert scores["image_quality"] == 0.0
    assert scores["image_alignment"] == pytest.approx(2 / 3)
    assert scores["output_alignment"] == 0.5

    def mixed(codes):
        codes[1, 1] = 5  # one cell of the red square blue: no valid object in that slot

    assert _scores(GOOD_TEXT, (RED_SQUARE, RED_DOT), edit=mixed)["image_quality"] == 0.0

    def outside(codes):
        codes[7, 7] = 42  # not a palette code

    assert _scores(GOOD_TEXT, (RED_SQUARE, RED_DOT), edit=outside)["image_quality"] == 0.0


@pytest.mark.parametrize(
    "text, failed",
    [
        ("fire is red so the blue square becomes red", {"sentence", "grammar"}),
        ("fire is red red so the blue square becomes red .", {"no_stutter", "grammar"}),
        ("fire is red so the blue square becomes red . .", {"sentence", "no_stutter", "grammar"}),
        ("the quick fox becomes red .", {"vocabulary", "grammar"}),
        (" ".join([GOOD_TEXT] * 3), {"sentence", "length", "no_stutter", "grammar"}),
        ("Fire is RED so the blue square becomes red.", set()),  # case and spacing do not matter
    ],
)
def test_malformed_reasoning(text, failed):
    checks = text_quality_checks(text)
    assert {name for name, ok in checks.items() if not ok} == failed
    scores = _scores(text, (RED_SQUARE, RED_DOT))
    assert scores["text_quality"] == pytest.approx(1 - len(failed) / 5)
    # Claims are found even in an ungrammatical text; "the quick fox" names no object of the world.
    assert scores["output_alignment"] == (0.0 if "fox" in text else 1.0)


def test_empty_reasoning():
    scores = _scores("", (RED_SQUARE, RED_DOT))
    assert scores["text_quality"] == scores["text_alignment"] == scores["output_alignment"] == 0.0
    assert scores["image_alignment"] == 1.0


def test_claims_of_the_templates():
    assert reasoning_claims(GOOD_TEXT) == [Claim("present", "red", "square"), Claim("absent", "blue", "square")]
    assert reasoning_claims("the object above the red dot is the blue bar so it becomes green .") == [
        Claim("relative", "green", "bar", relation="above", ref_colour="red", ref_shape="dot"),
        Claim("absent", "blue", "bar"),
    ]
    assert reasoning_claims("two yellow poles go at top left and top centre .") == [
        Claim("present", "yellow", "pole", "top left"),
        Claim("present", "yellow", "pole", "top centre"),
    ]
    assert reasoning_claims("there are two red objects so they are removed .") == [Claim("absent", "red")]
    assert reasoning_claims("a red square at the top left , and a blue dot at the middle centre .") == [
        Claim("present", "red", "square", "top left"),
        Claim("present", "blue", "dot", "middle centre"),
    ]
    assert reasoning_claims("the red square becomes red .") == [Claim("present", "red", "square")]  # no change
    assert reasoning_claims("nothing to see") == []


def test_bad_inputs():
    row = _recolour_row()
    with pytest.raises(ValueError, match="shape"):
        evaluate_sample(GOOD_TEXT, torch.zeros(64, dtype=torch.long), row)
    with pytest.raises(ValueError, match="integer"):
        evaluate_sample(GOOD_TEXT, torch.zeros(8, 8), row)
    with pytest.raises(ValueError, match="answer"):
        evaluate_sample(GOOD_TEXT, torch.zeros(8, 8, dtype=torch.long), {"reasoning": GOOD_TEXT})
    with pytest.raises(ValueError, match="string"):
        evaluate_sample(None, torch.zeros(8, 8, dtype=torch.long), row)
    with pytest.raises(ValueError, match="2 predictions"):
        evaluate([(GOOD_TEXT, torch.zeros(8, 8, dtype=torch.long))] * 2, [row])
    with pytest.raises(ValueError, match="texts"):
        evaluate({"texts": [GOOD_TEXT]}, [row])


@pytest.fixture(scope="module")
def tiny_policy(tiny_model, tmp_path_factory):
    model = tiny_model(n_layers=1, n_heads=2, max_sequence_length=256)
    path = tmp_path_factory.mktemp("policy")
    model.save_pretrained(path)
    return model, path


def test_generate_predictions_and_cli(tiny_policy, capsys):
    from pararl.rollout import RolloutConfig
    from pararl.toy import toy_processor
    from pararl.toy.evaluate import generate_predictions, main

    model, path = tiny_policy
    dataset = build_toy_dataset("test", 6, seed=0)
    model.train()
    config = RolloutConfig(num_steps=4)
    predictions = generate_predictions(model, toy_processor(), dataset, config, batch_size=4, seed=3)
    assert model.training  # restored
    assert len(predictions["texts"]) == 6 and all(isinstance(t, str) for t in predictions["texts"])
    assert predictions["codes"].shape == (6, 8, 8) and predictions["codes"].dtype == torch.long
    again = generate_predictions(model, toy_processor(), dataset, config, batch_size=6, seed=3, keep_step_maps=True)
    assert again["texts"] == predictions["texts"]  # per-sample seeds: batching does not matter
    assert "step_map" not in predictions and again["output_ids"].shape == again["step_map"].shape
    assert toy_processor().decode_text(again["output_ids"]) == predictions["texts"]
    assert int(again["step_map"].max()) == config.num_steps - 1  # every maskable slot revealed within the steps
    result = evaluate(predictions, dataset)
    assert 0.0 <= result["overall"] <= 100.0

    cli = main(["--model_name_or_path", str(path), "--num_samples", "6", "--steps", "4", "--seed", "3"])
    assert cli["axes"] == result["axes"]
    assert "Overall" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------- exact reward
def test_palette_encode_inverts_the_toy_decoding_and_marks_grey_cells_unknown():
    from pararl.toy import toy_image_tokenizer, toy_processor

    codes = torch.randint(-1, 9, (5, 8, 8), generator=torch.Generator().manual_seed(0))
    images = toy_processor().decode_images(codes)
    assert torch.equal(toy_image_tokenizer().encode(images, unknown_code=-1), codes)
    with pytest.raises(ValueError, match="not in the palette"):
        toy_image_tokenizer().encode(images)  # without unknown_code a grey cell is an error, as before
    with pytest.raises(ValueError, match="shape"):
        toy_image_tokenizer().encode(torch.zeros(2, 32, 32), unknown_code=-1)


def test_toy_output_alignment_reward_is_the_evaluators_axis_on_each_state():
    from test_rewards import make_states

    from pararl.toy import toy_processor
    from pararl.toy.reward import ToyOutputAlignment

    text = "fire burns it to black ash so the purple pole becomes black ."  # present(black pole), absent(purple pole)
    burnt = scene_codes([ToyObject("pole", "black", 4)])
    still_purple = scene_codes([ToyObject("pole", "black", 4), ToyObject("pole", "purple", 0)])
    half_revealed = burnt.clone()
    half_revealed[3, 3] = -1  # one cell of the black pole still masked: that slot cannot be read
    codes = torch.stack([burnt, still_purple, half_revealed, burnt, burnt])
    states = make_states([text, text, text, "fire burns it to black", ""], toy_processor().decode_images(codes))
    assert ToyOutputAlignment()(states) == [1.0, 0.5, 0.5, 0.0, 0.0]
    assert ToyOutputAlignment().name == "toy_output_alignment"


def test_open_ended_choices_are_each_valid_but_must_agree():
    sample = next(s for s in generate_samples("train", 64, seed=0) if s.template == "add_open")
    row = sample.to_row()
    free = [alt for alt in json.loads(row["answer"])["alternatives"]]
    assert len(free) == 9 - len(sample.input_objects) >= 2
    first, second = free[0], free[1]
    second_codes = scene_codes([ToyObject.from_dict(o) for o in second["objects"]])
    # The text chooses one free slot and the picture another: each is a valid answer, so only output alignment drops.
    disagree = evaluate_sample(first["reasoning"], second_codes, row)
    assert disagree["text_alignment"] == disagree["image_alignment"] == disagree["image_consistency"] == 1.0
    assert disagree["output_alignment"] == 0.0
    agree = evaluate_sample(second["reasoning"], second_codes, row)
    assert agree["output_alignment"] == 1.0 and agree["text_quality"] == 1.0


def test_an_open_colour_text_and_picture_must_name_the_same_colour():
    row = generate_samples("train", 4, seed=0, categories=["open_colour"])[0].to_row()
    first, second = json.loads(row["answer"])["alternatives"][:2]
    second_codes = scene_codes([ToyObject.from_dict(o) for o in second["objects"]])
    disagree = evaluate_sample(first["reasoning"], second_codes, row)
    assert disagree["text_alignment"] == disagree["image_alignment"] == 1.0
    assert disagree["output_alignment"] == 0.0
    assert evaluate_sample(second["reasoning"], second_codes, row)["output_alignment"] == 1.0
