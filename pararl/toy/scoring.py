"""The exact evaluator of the toy world: ParaBench's six axes, computed by rule instead of a judge model.

Every axis is a per-sample score in [0, 1]; an axis of a set of samples is the mean of its per-sample scores x100,
so the scale is ParaBench's 0-100. Image consistency only exists for edits (None for generation). Overall is the
mean of the six axes (of the five others where a set holds no edit). Definitions, per sample:

- **text quality** (the reasoning is well-formed): the mean of five checks on its words (lower-cased, punctuation
  split off, as the toy tokenizer splits): *vocabulary* (every word is a world word), *sentence* (one sentence: the
  last word is ``"."`` and no other word is), *length* (at most :data:`~pararl.toy.texts.MAX_REASONING_WORDS`
  words), *no stutter* (no span repeated back to back, e.g. ``"red red"`` or ``"the dot the dot"``) and *grammar*
  (the text is a sentence of one of the world's reasoning templates, any words of the right kind in its
  placeholders). An empty text scores 0.
- **text alignment** (the reasoning reaches the correct answer): *keyword recall* x *claim agreement*. Keyword
  recall is the share of the sample's `answer["keywords"]` (the facts the reasoning must state: the answer colour,
  the target slot, the count, ...) that occur in the text as whole phrases. Claim agreement is the Jaccard index
  between the claims about the result (see :func:`~pararl.toy.claims.reasoning_claims`) of the prediction and those of the
  ground-truth reasoning: a reasoning that states the right colour in its premise but concludes another one
  ("fire is red so the blue square becomes green") keeps its keyword but loses the claim.
- **image quality** (a valid picture): 1 if every cell holds a palette code and the grid parses as a scene with
  ``parse_scene(strict=True)`` (every slot empty or one shape of one colour, nothing painted between slots), else 0.
- **image alignment** (the picture matches the target): the F1 score between the objects read from the picture
  (``parse_scene(strict=False)``: invalid slots are dropped) and the target's objects, as exact
  `(shape, colour, slot)` triples; 1 when both are empty. A wrong colour counts as one miss and one false object.
- **image consistency** (edits keep what should not change): over the cells `answer["unchanged_cells"]` (equal in
  the input and the target), the share kept, computed separately on the painted cells (the objects the edit must
  not touch) and the background cells, then averaged (one group alone when the other is empty), so that wiping a
  distractor costs as much as it should and is not hidden by the many background cells.
- **output alignment** (the picture shows what the reasoning says, whatever the truth): the share of the
  reasoning's claims (:func:`~pararl.toy.claims.reasoning_claims`) that hold in the picture's objects; 0 when the reasoning states no
  checkable claim. Ground-truth (reasoning, target) pairs score 1.

Open-ended tasks (`answer["alternatives"]`: every valid reasoning, target and kept cells) score text alignment,
image alignment and image consistency against the alternative that suits each output best, so a text and a picture
that are each valid but choose differently lose output alignment only.
"""

import json
from collections.abc import Mapping, Sequence
from functools import cache

import torch

from ..axes import AXES, AXIS_HEADERS
from .claims import reasoning_claims, share_holding
from .palette import TOY_GRID, TOY_PALETTE
from .scenes import ToyObject, parse_scene, scene_codes
from .tasks import CATEGORIES
from .texts import MAX_REASONING_WORDS, reasoning_patterns, split_words, world_vocabulary


__all__ = ["AXES", "AXIS_HEADERS", "evaluate", "evaluate_sample", "format_scores", "text_quality_checks"]


@cache
def _vocabulary() -> frozenset[str]:
    return frozenset(world_vocabulary())


# ------------------------------------------------------------------------------------------------------- axes
def _has_stutter(words: Sequence[str]) -> bool:
    """A span repeated back to back ("red red", "the dot the dot")."""
    n_words = len(words)
    for span in range(1, n_words // 2 + 1):
        for start in range(n_words - 2 * span + 1):
            if words[start : start + span] == words[start + span : start + 2 * span]:
                return True
    return False


def text_quality_checks(text: str) -> dict[str, bool]:
    """The five checks behind text quality (see the module docstring)."""
    words = split_words(text)
    joined = " ".join(words)
    return {
        "vocabulary": bool(words) and all(w in _vocabulary() for w in words),
        "sentence": bool(words) and words[-1] == "." and "." not in words[:-1],
        "length": 0 < len(words) <= MAX_REASONING_WORDS,
        "no_stutter": bool(words) and not _has_stutter(words),
        "grammar": any(p.fullmatch(joined) for p in reasoning_patterns().values()),
    }


def _phrase_count(words: Sequence[str], phrase: Sequence[str]) -> int:
    size = len(phrase)
    return sum(1 for i in range(len(words) - size + 1) if list(words[i : i + size]) == list(phrase))


def _keyword_recall(words: Sequence[str], keywords: Sequence[str]) -> float:
    if not keywords:
        return 1.0
    needed: dict[str, int] = {}
    for keyword in keywords:
        needed[keyword] = needed.get(keyword, 0) + 1
    hits = sum(min(count, _phrase_count(words, split_words(keyword))) for keyword, count in needed.items())
    return hits / len(keywords)


def _jaccard(a: Sequence, b: Sequence) -> float:
    a, b = set(a), set(b)
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _parse_answer(sample_row: Mapping) -> dict:
    if "answer" not in sample_row:
        raise ValueError("sample_row has no 'answer' field; pass a row of pararl.toy.build_toy_dataset.")
    answer = sample_row["answer"]
    return json.loads(answer) if isinstance(answer, str) else dict(answer)


def _as_codes(codes) -> torch.Tensor:
    grid = torch.as_tensor(codes)
    if grid.dtype.is_floating_point:
        raise ValueError(f"prediction_codes must be integer codes, got {grid.dtype}.")
    if grid.dim() == 3 and grid.shape[0] == 1:
        grid = grid[0]
    if tuple(grid.shape) != TOY_GRID:
        raise ValueError(f"prediction_codes must have shape {TOY_GRID} (-1 = unknown cell), got {tuple(grid.shape)}.")
    return grid.long().cpu()


def evaluate_sample(prediction_text: str, prediction_codes, sample_row: Mapping) -> dict[str, float | None]:
    """Scores one prediction on the six axes, each in [0, 1] (`image_consistency` is None for generation).

    Args:
        prediction_text: The generated reasoning.
        prediction_codes: `LongTensor (8, 8)` of palette codes, -1 where a cell is unknown (still masked).
        sample_row: The dataset row (needs `answer`, and `reasoning` for text alignment).
    """
    if not isinstance(prediction_text, str):
        raise ValueError(f"prediction_text must be a string, got {type(prediction_text).__name__}.")
    answer = _parse_answer(sample_row)
    reference = sample_row.get("reasoning")
    if not isinstance(reference, str):
        raise ValueError("sample_row has no 'reasoning' string; text alignment compares against it.")
    codes = _as_codes(prediction_codes)
    words = split_words(prediction_text)

    checks = text_quality_checks(prediction_text)
    text_quality = sum(checks.values()) / len(checks) if words else 0.0

    claims = reasoning_claims(prediction_text)
    objects = parse_scene(codes, strict=False)
    # An open-ended task accepts any of its alternatives: text, picture and edit are each judged against the valid
    # answer that suits them best, so choosing differently in the two outputs costs output alignment only.
    references = answer.get("alternatives") or [{**answer, "reasoning": reference}]
    text_alignment = max(
        _keyword_recall(words, ref.get("keywords", [])) * _jaccard(claims, reasoning_claims(ref["reasoning"]))
        for ref in references
    )

    known = bool(((codes >= 0) & (codes < len(TOY_PALETTE))).all())
    try:
        image_quality = float(known and parse_scene(codes, strict=True) is not None)
    except ValueError:
        image_quality = 0.0

    targets = [[ToyObject.from_dict(o) for o in ref["objects"]] for ref in references]
    image_alignment = max(_object_f1(objects, target) for target in targets)

    image_consistency = None
    if answer.get("task") == "edit":
        image_consistency = max(
            _kept_share(codes, target, ref.get("unchanged_cells", [])) for target, ref in zip(targets, references)
        )

    return {
        "text_quality": text_quality,
        "text_alignment": text_alignment,
        "image_consistency": image_consistency,
        "image_alignment": image_alignment,
        "image_quality": image_quality,
        "output_alignment": share_holding(claims, objects),  # output_alignment() without parsing the text again
    }


def _object_f1(objects: Sequence[ToyObject], target: Sequence[ToyObject]) -> float:
    """F1 between two scenes' objects as exact `(shape, colour, slot)` triples (1 when both are empty)."""
    predicted_triples = {(o.shape, o.colour, o.slot) for o in objects}
    target_triples = {(o.shape, o.colour, o.slot) for o in target}
    if not predicted_triples and not target_triples:
        return 1.0
    return 2 * len(predicted_triples & target_triples) / (len(predicted_triples) + len(target_triples))


def _kept_share(codes: torch.Tensor, target: Sequence[ToyObject], unchanged_cells: Sequence[int]) -> float:
    """Share of the cells an edit must keep that are kept, painted and background cells weighed alike."""
    kept = torch.tensor(unchanged_cells, dtype=torch.long)
    target_flat = scene_codes(target).flatten()
    same = (codes.flatten()[kept] == target_flat[kept]).float()
    painted = target_flat[kept] != 0
    shares = [group.mean().item() for group in (same[painted], same[~painted]) if group.numel()]
    return sum(shares) / len(shares) if shares else 1.0


# ------------------------------------------------------------------------------------------------- aggregation
def _unpack_predictions(predictions, size: int) -> list[tuple[str, torch.Tensor]]:
    if isinstance(predictions, Mapping):
        if "texts" not in predictions or "codes" not in predictions:
            raise ValueError("predictions as a dict needs 'texts' (list of str) and 'codes' ((N, 8, 8) codes).")
        pairs = list(zip(predictions["texts"], predictions["codes"]))
        if len(predictions["texts"]) != len(predictions["codes"]):
            raise ValueError(
                f"predictions has {len(predictions['texts'])} texts but {len(predictions['codes'])} code grids."
            )
    else:
        pairs = []
        for item in predictions:
            if isinstance(item, Mapping):
                pairs.append((item["text"], item["codes"]))
            else:
                text, codes = item
                pairs.append((text, codes))
    if len(pairs) != size:
        raise ValueError(f"there are {len(pairs)} predictions for a dataset of {size} samples.")
    return pairs


def _mean_scores(rows: Sequence[dict]) -> dict[str, float | None]:
    scores = {}
    for axis in AXES:
        values = [row[axis] for row in rows if row[axis] is not None]
        scores[axis] = 100.0 * sum(values) / len(values) if values else None
    return scores


def _overall(scores: Mapping[str, float | None]) -> float | None:
    values = [scores[axis] for axis in AXES if scores[axis] is not None]
    return sum(values) / len(values) if values else None


def evaluate(predictions, dataset) -> dict:
    """Scores predictions against a toy dataset, per category and overall (0-100).

    Args:
        predictions: `{"texts": [...], "codes": (N, 8, 8)}` (what :func:`generate_predictions` returns), or a
            sequence of `(text, codes)` pairs or of `{"text", "codes"}` dicts, in dataset order.
        dataset: The `datasets.Dataset` (or list of rows) the predictions answer.

    Returns:
        `{"overall": float, "axes": {axis: float | None}, "categories": {category: {axis..., "overall",
        "num_samples"}}, "num_samples": int, "samples": [per-sample scores in [0, 1]]}`.
    """
    if hasattr(dataset, "select_columns"):  # a datasets.Dataset: skip decoding the images, they are not needed
        dataset = dataset.select_columns([c for c in ("answer", "reasoning", "category") if c in dataset.column_names])
    rows = [dict(row) for row in dataset]
    pairs = _unpack_predictions(predictions, len(rows))
    samples = []
    for (text, codes), row in zip(pairs, rows):
        scores = evaluate_sample(text, codes, row)
        scores["category"] = row.get("category") or _parse_answer(row).get("category")
        samples.append(scores)
    axes = _mean_scores(samples)
    categories = {}
    known = [c for c in CATEGORIES if any(s["category"] == c for s in samples)]
    others = sorted({s["category"] for s in samples} - set(CATEGORIES), key=str)
    for category in known + others:
        members = [s for s in samples if s["category"] == category]
        table = _mean_scores(members)
        categories[category] = {**table, "overall": _overall(table), "num_samples": len(members)}
    return {
        "overall": _overall(axes),
        "axes": axes,
        "categories": categories,
        "num_samples": len(samples),
        "samples": samples,
    }


def format_scores(result: Mapping) -> str:
    """A small aligned table of :func:`evaluate`'s result: one row per category plus `all`."""
    headers = ["category", "n", *(AXIS_HEADERS[a] for a in AXES), "Overall"]

    def cells(name, table, count):
        values = [table.get(axis) for axis in AXES] + [table.get("overall")]
        return [name, str(count), *("-" if v is None else f"{v:.1f}" for v in values)]

    lines = [cells(name, table, table["num_samples"]) for name, table in result["categories"].items()]
    lines.append(cells("all", {**result["axes"], "overall": result["overall"]}, result["num_samples"]))
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]

    def render(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    rule = "-" * len(render(headers))
    return "\n".join([render(headers), rule, *(render(r) for r in lines[:-1]), rule, render(lines[-1])])
