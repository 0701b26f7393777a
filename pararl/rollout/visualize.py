"""One picture of a trajectory: the prompt on top, then the input image (edits), the intermediate images left to
right (as the rewards scored them) and the final output, with the partial reasoning under each."""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from PIL import Image, ImageDraw, ImageFont

from pararl.image_tokenizers import images_to_tensor, tensor_to_images

from .trajectory import Trajectory


__all__ = ["draw_trajectory"]

PADDING = 8
MIN_IMAGE_WIDTH = 128
MAX_TEXT_LINES = 14
MAX_PROMPT_LINES = 4
FONT_SIZE = 12


def draw_trajectory(
    trajectory: Trajectory,
    processor,
    index: int = 0,
    steps: Sequence[int] | None = None,
    grey_unknown: bool = False,
    scale: int | None = None,
    prompt: str | None = None,
    input_image: Image.Image | torch.Tensor | None = None,
    rewards: Sequence[float | None] | Mapping[int, float | None] | None = None,
) -> Image.Image:
    """Draws sample `index` of a trajectory as one image.

    On top the prompt; then, for an edit, a panel with the input image; one panel per step in `steps`; and a last
    panel with the final output. The panel of a recorded step `k` shows the image the rewards score at `k`: the x0
    estimate (the model's full prediction at `k`), with the cells not yet revealed by the end of `k` painted grey
    when `grey_unknown` (the trainer's `grey_unrevealed`). A step that was not recorded has no x0 estimate: its
    panel shows the tokens revealed by the end of `k`, unrevealed cells grey, and says so in its label. Under each
    image the reasoning written by the end of `k` (masks dropped), wrapped; under the label the step's reward when
    `rewards` gives one. Images are upscaled by `scale` with nearest-neighbour resampling.

    Args:
        trajectory ([`Trajectory`]): The rollouts.
        processor ([`~pararl.processing.ParallelProcessor`]): Decodes text and images.
        index (`int`, defaults to `0`): Which sample to draw.
        steps (`Sequence[int]`, *optional*): Steps to show; defaults to the recorded steps, or six evenly spaced
            steps when none were recorded.
        grey_unknown (`bool`, defaults to `False`): Grey out cells of the x0 estimates not yet revealed (as the
            rewards do with `grey_unrevealed=True`); off by default, as the rewards' default.
        scale (`int`, *optional*): Upscaling factor; defaults to the smallest one making images at least 128 px wide.
        prompt (`str`, *optional*): The instruction; defaults to the text of the trajectory's input part.
        input_image (PIL image or `(3, H, W)` tensor in [0, 1], *optional*): The edit's input image; defaults to the
            image codes of the trajectory's input part (none for a generation).
        rewards (*optional*): The reward of each shown step, aligned with `steps` or as `{step: reward}`; `None`
            entries are left out.

    Returns:
        `PIL.Image.Image` (RGB) with the panels side by side, each `scale * image_width + 2 * 8` wide.
    """
    if not 0 <= index < trajectory.batch_size:
        raise ValueError(f"index {index} is out of range for a trajectory of {trajectory.batch_size} samples.")
    sample = trajectory.index_select([index]).to("cpu")
    steps = _shown_steps(sample, steps)
    step_rewards = _rewards_by_step(rewards, steps)
    if prompt is None:
        prompt = _input_text(sample, processor)
    pixels_in = _input_pixels(sample, processor) if input_image is None else _as_pixels(input_image)
    panels = _panels(sample, processor, steps, step_rewards, pixels_in, grey_unknown)
    return _paint(panels, prompt, scale)


class _Panel(NamedTuple):
    """One image of the picture, left to right: its label, reward label, pixels `(3, H, W)` and the text under it."""

    label: str
    reward_label: str | None
    pixels: torch.Tensor
    text: str


def _shown_steps(sample: Trajectory, steps: Sequence[int] | None) -> list[int]:
    """The steps to show: `steps` checked, or the recorded steps, or six evenly spaced steps when none were recorded."""
    num_steps = sample.num_steps
    if steps is None:
        recorded = set(sample.recorded_steps.tolist())
        steps = sorted(recorded) if recorded else sorted({round(i * (num_steps - 1) / 5) for i in range(6)})
    steps = [int(step) for step in steps]
    for step in steps:
        if not 0 <= step < num_steps:
            raise ValueError(f"steps must lie in [0, {num_steps - 1}], got {step}.")
    return steps


def _panels(sample, processor, steps, step_rewards, pixels_in, grey_unknown) -> list[_Panel]:
    """The input image (edits), one panel per shown step (its x0 estimate, or what is revealed) and the output."""
    recorded = set(sample.recorded_steps.tolist())
    panels = [] if pixels_in is None else [_Panel("input", None, pixels_in, "")]
    for step in steps:
        reward = step_rewards.get(step)
        reward_label = None if reward is None else f"reward {reward:.3f}"
        if step in recorded:
            pixels = sample.image_at(step, processor, grey_unknown=grey_unknown)
            label = f"step {step} · x0"
        else:
            pixels = processor.decode_images(processor.image_codes(sample.state_at(step + 1)), grey_unknown=True)
            label = f"step {step} · revealed"
        panels.append(_Panel(label, reward_label, pixels[0], sample.text_at(step, processor)[0]))
    final = sample.output_ids
    final_pixels = processor.decode_images(processor.image_codes(final))[0]
    panels.append(_Panel("final", None, final_pixels, processor.decode_text(final)[0]))
    return panels


def _paint(panels: list[_Panel], prompt: str, scale: int | None) -> Image.Image:
    """Lays the panels out side by side under the prompt: label (and reward), upscaled image, wrapped text."""
    height, width = panels[-1].pixels.shape[-2:]
    scale = scale if scale is not None else max(1, math.ceil(MIN_IMAGE_WIDTH / width))
    image_width, image_height = width * scale, height * scale
    panel_width = image_width + 2 * PADDING
    canvas_width = len(panels) * panel_width
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _line_height(measure, font)
    prompt_lines = _wrap(f"prompt: {prompt}", measure, font, canvas_width - 2 * PADDING, MAX_PROMPT_LINES)
    wrapped = [_wrap(panel.text, measure, font, image_width) for panel in panels]
    text_lines = max(len(lines) for lines in wrapped)
    label_lines = 2 if any(panel.reward_label is not None for panel in panels) else 1
    top_of_panels = PADDING + len(prompt_lines) * line_height + PADDING
    canvas_height = (
        top_of_panels
        + label_lines * line_height
        + PADDING
        + image_height
        + PADDING
        + text_lines * line_height
        + PADDING
    )
    canvas = Image.new("RGB", (canvas_width, canvas_height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, words in enumerate(prompt_lines):
        _draw_words(draw, (PADDING, PADDING + j * line_height), words, font)
    for i, (panel, lines) in enumerate(zip(panels, wrapped)):
        left = i * panel_width + PADDING
        _draw_words(draw, (left, top_of_panels), panel.label.split(" "), font)
        if panel.reward_label is not None:
            _draw_words(draw, (left, top_of_panels + line_height), panel.reward_label.split(" "), font, fill="#1a5fb4")
        top = top_of_panels + label_lines * line_height + PADDING
        picture = tensor_to_images(panel.pixels.unsqueeze(0).float().cpu())[0]
        if picture.size != (width, height):  # an input image of another size: fit it to the panel
            picture = picture.resize((width, height), Image.Resampling.BICUBIC)
        canvas.paste(picture.resize((image_width, image_height), Image.Resampling.NEAREST), (left, top))
        top += image_height + PADDING
        for j, words in enumerate(lines):
            _draw_words(draw, (left, top + j * line_height), words, font)
    return canvas


def _rewards_by_step(rewards, steps: list[int]) -> dict[int, float]:
    if rewards is None:
        return {}
    if isinstance(rewards, Mapping):
        by_step = {int(step): value for step, value in rewards.items()}
    else:
        rewards = list(rewards)
        if len(rewards) != len(steps):
            raise ValueError(f"rewards has {len(rewards)} entries for {len(steps)} steps {steps}; align them.")
        by_step = dict(zip(steps, rewards))
    return {step: float(value) for step, value in by_step.items() if value is not None}


def _input_row(sample: Trajectory) -> torch.Tensor:
    return sample.input_ids[0][sample.attention_mask[0].bool()]


def _input_text(sample: Trajectory, processor) -> str:
    """The instruction as the input part holds it: its text tokens, special tokens (task, <bos>, ...) skipped."""
    row = _input_row(sample)
    low, high = processor.preset.text_vocab_range
    ids = row[(row >= low) & (row < high)].tolist()
    return processor.tokenizer.decode(ids, skip_special_tokens=True).strip()


def _input_pixels(sample: Trajectory, processor) -> torch.Tensor | None:
    """The input image of an edit, decoded from the image tokens of the input part (None when it has none)."""
    row = _input_row(sample)
    low, high = processor.preset.image_vocab_range
    codes = row[(row >= low) & (row < high)] - low
    if codes.numel() != processor.preset.num_image_tokens:
        return None
    return processor.decode_images(codes.view(1, *processor.preset.image_grid))[0]


def _as_pixels(image: Image.Image | torch.Tensor) -> torch.Tensor:
    if isinstance(image, Image.Image):
        return images_to_tensor([image])[0]
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError("input_image must be a PIL image or a (3, H, W) tensor in [0, 1].")
    return image


def _font():
    # Pillow's default font at 10 px draws a space 2 px wide, so words ran together ("soa green dot"); a larger size
    # and an explicit gap between words (see _draw_words) keep them apart.
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _word_gap(draw: ImageDraw.ImageDraw, font) -> float:
    """Pixels between two words: at least the width of an "n", whatever width the font gives a space."""
    return max(draw.textlength(" ", font=font), draw.textlength("n", font=font))


def _draw_words(draw: ImageDraw.ImageDraw, xy: tuple[float, float], words: Sequence[str], font, fill="black") -> None:
    """Draws `words` on one line, each separated by :func:`_word_gap`."""
    x, y = xy
    gap = _word_gap(draw, font)
    for word in words:
        draw.text((x, y), word, fill=fill, font=font)
        x += draw.textlength(word, font=font) + gap


def _line_height(draw: ImageDraw.ImageDraw, font) -> int:
    left, top, right, bottom = draw.textbbox((0, 0), "Ag|", font=font)
    return bottom - top + 3


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int, max_lines: int = MAX_TEXT_LINES) -> list[list[str]]:
    """Greedy word wrap to `width` pixels (over-long words are cut), at most `max_lines` lines of words."""
    gap = _word_gap(draw, font)
    lines: list[list[str]] = []
    current: list[str] = []
    current_width = 0.0
    for word in text.split():
        word_width = draw.textlength(word, font=font)
        if current and current_width + gap + word_width <= width:
            current.append(word)
            current_width += gap + word_width
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append([word[:cut]])
            word = word[cut:]
        current, current_width = [word], draw.textlength(word, font=font)
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [["..."]]
    return lines or [[]]
