"""One picture of a trajectory: intermediate images left to right, the partial reasoning under each."""

import math
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont

from pararl.models.image_tokenizers import tensor_to_images

from .trajectory import Trajectory


__all__ = ["draw_trajectory"]

PADDING = 8
MIN_IMAGE_WIDTH = 128
MAX_TEXT_LINES = 14


def draw_trajectory(
    trajectory: Trajectory,
    processor,
    index: int = 0,
    steps: Sequence[int] | None = None,
    grey_unknown: bool = True,
    scale: int | None = None,
) -> Image.Image:
    """Draws sample `index` of a trajectory as one image.

    One column per step in `steps` plus a last column with the final output. The column of step `k` shows, under a
    "step k" label, the image of the x0 estimate at `k` when `k` was recorded (else the tokens revealed by the end of
    `k`), with cells not yet revealed by the end of `k` painted grey when `grey_unknown`; and under it the reasoning
    written by the end of `k` (masks dropped), wrapped. Images are upscaled by `scale` with nearest-neighbour
    resampling.

    Args:
        trajectory ([`Trajectory`]): The rollouts.
        processor ([`~pararl.processing.ParallelProcessor`]): Decodes text and images.
        index (`int`, defaults to `0`): Which sample to draw.
        steps (`Sequence[int]`, *optional*): Steps to show; defaults to the recorded steps, or six evenly spaced
            steps when none were recorded.
        grey_unknown (`bool`, defaults to `True`): Grey out cells not yet revealed.
        scale (`int`, *optional*): Upscaling factor; defaults to the smallest one making images at least 128 px wide.

    Returns:
        `PIL.Image.Image` (RGB) of width `(len(steps) + 1) * (scale * image_width + 2 * 8)`.
    """
    if not 0 <= index < trajectory.batch_size:
        raise ValueError(f"index {index} is out of range for a trajectory of {trajectory.batch_size} samples.")
    sample = trajectory.index_select([index]).to("cpu")
    num_steps = sample.num_steps
    recorded = set(sample.recorded_steps.tolist())
    if steps is None:
        steps = sorted(recorded) if recorded else sorted({round(i * (num_steps - 1) / 5) for i in range(6)})
    steps = [int(step) for step in steps]
    for step in steps:
        if not 0 <= step < num_steps:
            raise ValueError(f"steps must lie in [0, {num_steps - 1}], got {step}.")

    columns: list[tuple[str, torch.Tensor, str]] = []
    for step in steps:
        if step in recorded:
            pixels = sample.image_at(step, processor, grey_unknown=grey_unknown)
        else:
            pixels = processor.decode_images(processor.image_codes(sample.state_at(step + 1)), grey_unknown=True)
        columns.append((f"step {step}", pixels[0], sample.text_at(step, processor)[0]))
    final = sample.output_ids
    columns.append(
        ("final", processor.decode_images(processor.image_codes(final))[0], processor.decode_text(final)[0])
    )

    height, width = columns[0][1].shape[-2:]
    scale = scale if scale is not None else max(1, math.ceil(MIN_IMAGE_WIDTH / width))
    image_width, image_height = width * scale, height * scale
    column_width = image_width + 2 * PADDING
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = _line_height(measure, font)
    wrapped = [_wrap(text, measure, font, image_width) for _, _, text in columns]
    text_lines = max(len(lines) for lines in wrapped)
    canvas = Image.new(
        "RGB",
        (
            len(columns) * column_width,
            PADDING + line_height + PADDING + image_height + PADDING + text_lines * line_height + PADDING,
        ),
        "white",
    )
    draw = ImageDraw.Draw(canvas)
    for i, ((label, pixels, _), lines) in enumerate(zip(columns, wrapped)):
        left = i * column_width + PADDING
        draw.text((left, PADDING), label, fill="black", font=font)
        top = PADDING + line_height + PADDING
        picture = tensor_to_images(pixels.unsqueeze(0).float().cpu())[0]
        canvas.paste(picture.resize((image_width, image_height), Image.Resampling.NEAREST), (left, top))
        top += image_height + PADDING
        for j, line in enumerate(lines):
            draw.text((left, top + j * line_height), line, fill="black", font=font)
    return canvas


def _line_height(draw: ImageDraw.ImageDraw, font) -> int:
    left, top, right, bottom = draw.textbbox((0, 0), "Ag|", font=font)
    return bottom - top + 3


def _wrap(text: str, draw: ImageDraw.ImageDraw, font, width: int) -> list[str]:
    """Greedy word wrap to `width` pixels (over-long words are cut), at most MAX_TEXT_LINES lines."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if draw.textlength(candidate, font=font) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    if len(lines) > MAX_TEXT_LINES:
        lines = lines[: MAX_TEXT_LINES - 1] + ["..."]
    return lines or [""]
