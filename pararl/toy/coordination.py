"""Coordination: do a policy's two outputs agree more often than independent draws from the same policy would?

Any GRPO run, a random reward's too, narrows a policy's choices, and two narrow outputs agree more often by chance
alone. So agreement (the *matched* rate) is read against the rate at which the text of one rollout and the picture of
*another* rollout of the same prompt agree: two independent draws from the group's own choices. Their difference is
**coordination**; the number of distinct choices per group (**sharpening**) is reported beside it.

A decision is one open choice of a task (the open_colour family: the colour of the dot). For every rollout it is read
twice: from the reasoning (the colour word) and from the picture (the colour of the dot's cell), together with the
step at which each was revealed. **Coupling** asks whether either output listens to the other: decode with one
modality written first (`order="text_then_image"` / `"image_then_text"`) and measure coordination there.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from .evaluate import generate_predictions
from .palette import COLOUR_CODES, TOY_COLOURS
from .scenes import SLOT_NAMES, ToyObject


__all__ = [
    "COUPLING_ORDERS",
    "Decisions",
    "agreement_statistics",
    "coordination_report",
    "format_coordination",
    "measure_coordination",
    "read_colour_decisions",
]

# The decodings `coordination_report` measures: the rollout config as given, then each modality written first.
COUPLING_ORDERS = {"text_first": "text_then_image", "image_first": "image_then_text"}

_COLOUR_OF_CODE = {code: colour for colour, code in COLOUR_CODES.items()}


@dataclass
class Decisions:
    """One open decision of each of N rollouts, as read from each output (`None`: the output does not state one)."""

    text: list[str | None]
    image: list[str | None]
    text_step: list[int | None]
    image_step: list[int | None]


def _open_dot_cell(answer: dict) -> tuple[int, int]:
    """The cell of the dot an open_colour task adds: the one target object at a slot no input object holds."""
    taken = {obj["slot"] for obj in answer.get("input_objects") or []}
    (dot,) = [obj for obj in answer["objects"] if obj["slot"] not in taken]
    return ToyObject("dot", dot["colour"], SLOT_NAMES.index(dot["slot"])).cells[0]


def read_colour_decisions(answers: Sequence[dict], output_ids: torch.Tensor, step_map: torch.Tensor, processor):
    """The dot's colour in each rollout of open_colour tasks: the first colour word of the reasoning and the colour of
    the dot's cell in the picture, with the steps that revealed them.

    Args:
        answers: Each rollout's task answer (the toy dataset's `answer` column, parsed).
        output_ids, step_map (`LongTensor (N, L_out)`): The rollouts' final output parts and step maps.
        processor: The toy processor.
    """
    if any(answer.get("facts", {}).get("open") != "colour" for answer in answers):
        raise ValueError("read_colour_decisions reads open_colour tasks only (facts.open == 'colour').")
    output_ids, step_map = output_ids.cpu(), step_map.cpu()
    text_ids = output_ids[:, processor.text_positions]
    colour_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(TOY_COLOURS)))
    is_colour = torch.isin(text_ids, colour_ids)
    first_word = is_colour.long().argmax(dim=1)
    codes = processor.image_codes(output_ids)
    image_steps = step_map[:, processor.image_positions].view_as(codes)
    decisions = Decisions([], [], [], [])
    for i, answer in enumerate(answers):
        if is_colour[i].any():
            position = int(first_word[i])
            decisions.text.append(processor.tokenizer.convert_ids_to_tokens(int(text_ids[i, position])))
            decisions.text_step.append(int(step_map[i, processor.text_positions[position]]))
        else:
            decisions.text.append(None)
            decisions.text_step.append(None)
        row, col = _open_dot_cell(answer)
        decisions.image.append(_COLOUR_OF_CODE.get(int(codes[i, row, col])))
        decisions.image_step.append(int(image_steps[i, row, col]))
    return decisions


def agreement_statistics(text: Sequence, image: Sequence, group_size: int) -> dict[str, float]:
    """Matched rate, independent-draw rate and coordination (points, 0-100) of rollouts in consecutive groups.

    `text[i]` and `image[i]` are rollout i's two readings of one decision (`None` never matches). The independent-draw
    rate of a group is the share of ordered pairs of *different* rollouts (i, j) whose text of i matches the picture
    of j: an unbiased estimate of the chance agreement of two independent draws from the group's choices (pairing a
    rollout with itself would count its own agreement). Distinct choices per group (`None` excluded) measure
    sharpening.
    """
    if len(text) != len(image) or len(text) % group_size or group_size < 2:
        raise ValueError(
            f"need two equally long readings in groups of >= 2 rollouts, got {len(text)} and {len(image)} "
            f"readings in groups of {group_size}."
        )
    matched = independent = 0.0
    distinct_text = distinct_image = 0
    groups = len(text) // group_size
    for start in range(0, len(text), group_size):
        words, colours = text[start : start + group_size], image[start : start + group_size]
        matched += sum(w is not None and w == c for w, c in zip(words, colours))
        pairs = sum(w is not None and w == c for i, w in enumerate(words) for j, c in enumerate(colours) if i != j)
        independent += pairs / (group_size - 1)
        distinct_text += len({w for w in words if w is not None})
        distinct_image += len({c for c in colours if c is not None})
    matched, independent = 100 * matched / len(text), 100 * independent / len(text)
    return {
        "matched": matched,
        "independent": independent,
        "coordination": matched - independent,
        "distinct_text_choices": distinct_text / groups,
        "distinct_image_choices": distinct_image / groups,
        "text_stated": 100 * sum(w is not None for w in text) / len(text),
        "image_stated": 100 * sum(c is not None for c in image) / len(image),
    }


def _reveal_statistics(decisions: Decisions) -> dict[str, float | None]:
    """Which output reveals the decision first (shares, %), and the mean step of each."""
    pairs = [(t, i) for t, i in zip(decisions.text_step, decisions.image_step) if t is not None and i is not None]
    if not pairs:
        return {"text_first": None, "image_first": None, "same_step": None, "text_step": None, "image_step": None}
    n = len(pairs)
    return {
        "text_first": 100 * sum(t < i for t, i in pairs) / n,
        "image_first": 100 * sum(i < t for t, i in pairs) / n,
        "same_step": 100 * sum(t == i for t, i in pairs) / n,
        "text_step": sum(t for t, _ in pairs) / n,
        "image_step": sum(i for _, i in pairs) / n,
    }


def measure_coordination(
    model, processor, dataset, rollout_config, generations: int = 8, seed: int = 0, batch_size: int = 64
) -> dict:
    """Decodes every task of an open_colour `dataset` `generations` times and measures its coordination
    (:func:`agreement_statistics`) and when each output reveals the decision.

    Row noise comes from (`seed`, rollout index), so the result does not depend on `batch_size`."""
    rollouts = dataset.select([i for i in range(len(dataset)) for _ in range(generations)])
    predictions = generate_predictions(
        model, processor, rollouts, rollout_config, batch_size=batch_size, seed=seed, keep_step_maps=True
    )
    answers = [json.loads(answer) for answer in rollouts["answer"]]
    decisions = read_colour_decisions(answers, predictions["output_ids"], predictions["step_map"], processor)
    return {
        **agreement_statistics(decisions.text, decisions.image, generations),
        "reveal": _reveal_statistics(decisions),
    }


def coordination_report(
    model, processor, dataset, rollout_config, generations: int = 8, seed: int = 0, batch_size: int = 64
) -> dict[str, dict]:
    """Coordination under `rollout_config` (`"decoding"`), and coupling: the same measure with the text written first
    (`"text_first"`: does the picture follow it?) and with the picture drawn first (`"image_first"`)."""
    report = {
        "decoding": measure_coordination(model, processor, dataset, rollout_config, generations, seed, batch_size)
    }
    for name, order in COUPLING_ORDERS.items():
        config = replace(rollout_config, order=order, image_start=0.0)
        report[name] = measure_coordination(model, processor, dataset, config, generations, seed, batch_size)
    return report


def format_coordination(report: dict[str, dict]) -> str:
    """A small table of a :func:`coordination_report`: one line per decoding."""
    lines = [
        f"{'decoding':<12} {'matched':>8} {'indep.':>8} {'coord.':>8} {'words/grp':>10} {'cells/grp':>10}"
        f" {'text 1st':>9} {'image 1st':>10}"
    ]
    for name, stats in report.items():
        reveal = stats["reveal"]
        lines.append(
            f"{name:<12} {stats['matched']:8.1f} {stats['independent']:8.1f} {stats['coordination']:+8.1f}"
            f" {stats['distinct_text_choices']:10.2f} {stats['distinct_image_choices']:10.2f}"
            f" {_share(reveal['text_first']):>9} {_share(reveal['image_first']):>10}"
        )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "       -" if value is None else f"{value:8.1f}"
