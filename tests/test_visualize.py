"""The trajectory picture: prompt, input image of edits, the images the rewards scored, reward labels, word spacing."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from pararl.rollout import ParallelDecoder, RolloutConfig, draw_trajectory
from pararl.rollout.visualize import PADDING, _draw_words, _font, _input_text, _wrap
from pararl.toy import ToyObject, render_scene


PROMPT = "paint the green dot red ."
SCENE = render_scene([ToyObject("dot", "green", 0), ToyObject("square", "blue", 8)])


@pytest.fixture(scope="module")
def trajectory(processor, tiny_model):
    decoder = ParallelDecoder(tiny_model(max_sequence_length=256).eval(), processor, RolloutConfig(num_steps=8))
    return decoder.generate(
        [PROMPT, "draw a red dot ."], images=[SCENE, None], record_steps=[1, 5], seeds=torch.tensor([3, 4])
    )


def _find(canvas: Image.Image, panel: torch.Tensor, left: int, scale: int) -> bool:
    """Whether `panel` (3, H, W) in [0, 1], upscaled by `scale`, is pasted in `canvas` at x = `left`."""
    from pararl.image_tokenizers import tensor_to_images

    picture = tensor_to_images(panel.unsqueeze(0))[0]
    target = np.asarray(picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST))
    array = np.asarray(canvas)
    height, width = target.shape[:2]
    return any(
        np.array_equal(array[top : top + height, left : left + width], target)
        for top in range(array.shape[0] - height + 1)
    )


def test_edit_picture_shows_the_input_and_the_scored_x0_images(trajectory, processor):
    scale, column = 4, 32 * 4 + 2 * PADDING
    picture = draw_trajectory(trajectory, processor, index=0, scale=scale)
    # input + two recorded steps + final
    assert picture.size[0] == 4 * column
    input_pixels = processor.decode_images(processor.image_tokenizer.encode([SCENE]))[0]
    assert _find(picture, input_pixels, PADDING, scale)
    sample = trajectory.index_select([0])
    for i, step in enumerate([1, 5], start=1):
        # What the rewards score at `step` (grey_unrevealed=False): the x0 estimate, no grey cells.
        scored = sample.image_at(step, processor, grey_unknown=False)[0]
        assert _find(picture, scored, i * column + PADDING, scale)
        revealed_only = sample.image_at(step, processor, grey_unknown=True)[0]
        assert not torch.equal(scored, revealed_only)  # early steps: the x0 estimate is not the revealed cells
        assert not _find(picture, revealed_only, i * column + PADDING, scale)
    greyed = draw_trajectory(trajectory, processor, index=0, scale=scale, grey_unknown=True)
    assert _find(greyed, sample.image_at(1, processor, grey_unknown=True)[0], column + PADDING, scale)
    # A generation has no input column.
    assert draw_trajectory(trajectory, processor, index=1, scale=scale).size[0] == 3 * column


def test_prompt_is_read_from_the_input_part(trajectory, processor):
    assert _input_text(trajectory.index_select([0]), processor) == PROMPT
    assert _input_text(trajectory.index_select([1]), processor) == "draw a red dot ."
    # An explicit prompt adds lines on top when it is longer.
    short = draw_trajectory(trajectory, processor, index=1, prompt="x")
    long = draw_trajectory(trajectory, processor, index=1, prompt=" ".join(["word"] * 80))
    assert long.size[1] > short.size[1]


def test_reward_labels(trajectory, processor):
    plain = draw_trajectory(trajectory, processor, index=0)
    labelled = draw_trajectory(trajectory, processor, index=0, rewards=[0.25, 0.75])
    assert labelled.size[0] == plain.size[0] and labelled.size[1] > plain.size[1]
    blue = (np.asarray(labelled) == np.array([0x1A, 0x5F, 0xB4])).all(-1)
    assert blue.any() and not (np.asarray(plain) == np.array([0x1A, 0x5F, 0xB4])).all(-1).any()
    assert draw_trajectory(trajectory, processor, index=0, rewards={5: 0.5}).size == labelled.size
    assert draw_trajectory(trajectory, processor, index=0, rewards=[None, None]).size == plain.size
    with pytest.raises(ValueError, match="rewards has 3 entries for 2 steps"):
        draw_trajectory(trajectory, processor, index=0, rewards=[0.1, 0.2, 0.3])


def _gaps(text: str) -> list[int]:
    """Widths of the blank column runs between inked columns of `text` drawn as the picture draws a line."""
    font = _font()
    canvas = Image.new("L", (400, 30), 255)
    draw = ImageDraw.Draw(canvas)
    (line,) = _wrap(text, draw, font, 400)
    _draw_words(draw, (0, 5), line, font)
    inked = (np.asarray(canvas) < 128).any(0)
    columns = np.flatnonzero(inked)
    return [int(b - a - 1) for a, b in zip(columns[:-1], columns[1:]) if b - a > 1]


def test_rendered_reasoning_keeps_its_spaces():
    # "so a green dot" was drawn as "soa green dot": the default font's 2 px space left words nearly touching.
    gaps = _gaps("so a green dot")
    letter_gaps = _gaps("soagreendot")
    word_gaps = sorted(gaps, reverse=True)[:3]
    assert min(word_gaps) >= 5
    assert min(word_gaps) > 2 * max(letter_gaps)  # a word break is clearly wider than any gap between letters
    assert len([g for g in gaps if g >= 5]) == 3
    assert _wrap("is at the top", ImageDraw.Draw(Image.new("L", (1, 1))), _font(), 1000) == [
        ["is", "at", "the", "top"]
    ]
