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
  between the claims about the result (see :func:`reasoning_claims`) of the prediction and those of the
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
  reasoning's claims (:func:`reasoning_claims`) that hold in the picture's objects; 0 when the reasoning states no
  checkable claim. Ground-truth (reasoning, target) pairs score 1.

Open-ended tasks (`answer["alternatives"]`: every valid reasoning, target and kept cells) score text alignment,
image alignment and image consistency against the alternative that suits each output best, so a text and a picture
that are each valid but choose differently lose output alignment only.

Run ``python -m pararl.toy.evaluate --model_name_or_path DIR`` to score a saved policy on the held-out split.
"""

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from .palette import TOY_COLOURS, TOY_GRID, TOY_PALETTE
from .scenes import ROW_WORDS, SHAPES, SLOT_NAMES, ToyObject, parse_scene, scene_codes
from .tasks import CATEGORIES
from .texts import (
    DIRECTIONS,
    KNOWLEDGE,
    MAX_REASONING_WORDS,
    NUMBER_WORDS,
    RELATIONS,
    SHAPE_PLURALS,
    TEXTS,
    world_vocabulary,
)


__all__ = [
    "AXES",
    "AXIS_HEADERS",
    "Claim",
    "EvaluateArguments",
    "claim_holds",
    "evaluate",
    "evaluate_sample",
    "format_scores",
    "generate_predictions",
    "main",
    "output_alignment",
    "reasoning_claims",
    "split_words",
    "text_quality_checks",
]

# ParaBench's column order (Table 2 of the paper).
AXES: tuple[str, ...] = (
    "text_quality",
    "text_alignment",
    "image_consistency",
    "image_alignment",
    "image_quality",
    "output_alignment",
)
AXIS_HEADERS = {
    "text_quality": "TextQ",
    "text_alignment": "TextA",
    "image_consistency": "ImgCons",
    "image_alignment": "ImgA",
    "image_quality": "ImgQ",
    "output_alignment": "OutA",
}


# ------------------------------------------------------------------------------------------------------ words
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words with punctuation split off, exactly as the toy tokenizer pre-tokenizes."""
    return _WORD_RE.findall(text.lower())


def _alternatives(words) -> str:
    # Longest first so that a regex alternative never stops at a prefix of a longer word.
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w))) + ")"


_SLOT_RE = _alternatives(SLOT_NAMES)
# Placeholder kinds of the world's texts (a trailing digit in a fragment's name is only there to keep names apart).
_KINDS: dict[str, str] = {
    "colour": _alternatives(TOY_COLOURS),
    "shape": _alternatives(SHAPES),
    "shapes": _alternatives(SHAPE_PLURALS.values()),
    "slot": _SLOT_RE,
    "slots": f"{_SLOT_RE}(?: , {_SLOT_RE})*(?: and {_SLOT_RE})?",
    "source": _alternatives(KNOWLEDGE),
    "relation": _alternatives(phrase for phrase, _, _ in RELATIONS.values()),
    "direction": _alternatives(DIRECTIONS),
    "count": _alternatives(NUMBER_WORDS[1:]),
    "seconds": _alternatives(("second", "seconds")),
    "steps": _alternatives(("step", "steps")),
    "row": _alternatives(ROW_WORDS),
}
_ALIASES = {
    "answer": "colour",
    "paint": "colour",
    "ref_colour": "colour",
    "ref_shape": "shape",
    "new_shape": "shape",
    "ref_slot": "slot",
}
_PLACEHOLDER = re.compile(r"\{([a-z_]+?)(\d*)\}")


def _compile(template: str) -> tuple[re.Pattern, list[str]]:
    """A regex for a world text with typed placeholders; group `p{i}` holds the i-th placeholder's words."""
    parts, names, last = [], [], 0
    for i, match in enumerate(_PLACEHOLDER.finditer(template)):
        parts.append(re.escape(template[last : match.start()]))
        name = match.group(1) + match.group(2)
        kind = _ALIASES.get(match.group(1), match.group(1))
        if kind not in _KINDS:
            raise ValueError(f"world text {template!r} has a placeholder {{{name}}} of unknown kind.")
        parts.append(f"(?P<p{i}>{_KINDS[kind]})")
        names.append(name)
        last = match.end()
    parts.append(re.escape(template[last:]))
    # Word boundaries: a match starts and ends at a word edge of the space-joined text.
    return re.compile(r"(?<!\S)" + "".join(parts) + r"(?!\S)"), names


@cache
def _reasoning_templates() -> dict[str, re.Pattern]:
    return {key: _compile(text)[0] for key, text in TEXTS.items() if "_reasoning" in key}


@cache
def _vocabulary() -> frozenset[str]:
    return frozenset(world_vocabulary())


# ----------------------------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """One statement a reasoning makes about the resulting picture.

    `kind` is ``"present"`` (an object of `colour` and `shape` exists, at `slot` when given), ``"absent"`` (no
    object of `colour`, and of `shape` when given, exists) or ``"relative"`` (an object of `colour`/`shape` sits
    `relation` an object of `ref_colour`/`ref_shape`, both present).
    """

    kind: str
    colour: str
    shape: str | None = None
    slot: str | None = None
    relation: str | None = None
    ref_colour: str | None = None
    ref_shape: str | None = None


_SINGULAR = {plural: shape for shape, plural in SHAPE_PLURALS.items()}
_RELATION_SHIFT = {phrase: (d_row, d_col) for phrase, d_row, d_col in RELATIONS.values()}


def _slot_names(text: str) -> list[str]:
    return re.findall(_SLOT_RE, text)


def _present(colour: str, shape: str | None, slot: str | None = None) -> Claim:
    return Claim("present", colour, shape, slot)


def _becomes(v: dict) -> list[Claim]:
    """ "the {colour} {shape} becomes [a] {colour2} [{shape2}]": the new object exists and the old one is gone (unless
    the text names no change at all)."""
    old, new = (v["colour"], v["shape"]), (v["colour2"], v.get("shape2", v["shape"]))
    return [_present(*new)] + ([] if old == new else [Claim("absent", *old)])


def _painted_relative(v: dict) -> list[Claim]:
    """ "the object {relation} the {colour} {shape} is the {colour2} {shape2} so it becomes {colour3}" """
    where = Claim(
        "relative", v["colour3"], v["shape2"], relation=v["relation"], ref_colour=v["colour"], ref_shape=v["shape"]
    )
    return [where] + ([] if v["colour2"] == v["colour3"] else [Claim("absent", v["colour2"], v["shape2"])])


def _replaced(v: dict) -> list[Claim]:
    """ "the {shape} is {colour} so a {colour2} {shape2} takes its place at the {slot}" """
    old, new = (v["colour"], v["shape"]), (v["colour2"], v["shape2"])
    return [_present(*new, v["slot"])] + ([] if old == new else [Claim("absent", *old)])


def _object_at(v: dict) -> list[Claim]:
    return [_present(v["colour"], v["shape"], v.get("slot2", v.get("slot")))]


def _removed(v: dict) -> list[Claim]:
    return [Claim("absent", v["colour"], v.get("shape"))]


def _objects_at_slots(v: dict) -> list[Claim]:
    shape = _SINGULAR[v["shapes"]] if "shapes" in v else v.get("shape", "dot")
    slots = _slot_names(v["slots"]) if "slots" in v else [v["slot"]]
    return [_present(v["colour"], shape, slot) for slot in slots]


# Claim-bearing fragments of the world's reasoning templates (same placeholder syntax as the templates), each with
# the claims it makes. They are searched anywhere in a text, so a reasoning that is not quite grammatical still says
# something checkable, and a ground-truth reasoning yields exactly claims that its target picture satisfies.
_FRAGMENTS: tuple[tuple[str, Callable[[dict], list[Claim]]], ...] = (
    ("the {colour} {shape} becomes {colour2}", _becomes),  # recolour, mix, burn, freeze
    ("the {colour} {shape} becomes a {colour2} {shape2}", _becomes),  # melt, grow
    (
        "the object {relation} the {colour} {shape} is the {colour2} {shape2} so it becomes {colour3}",
        _painted_relative,
    ),
    ("a {colour} {shape} goes at the {slot}", _object_at),  # add_known
    ("a {colour} {shape} is drawn at the {slot}", _object_at),  # draw_known
    ("the {colour} {shape} is removed", _removed),  # remove_known
    ("the {colour} {shape} is at the {slot}", _object_at),  # move_next / add_next premise: the reference stays
    ("the {colour} {shape} moves to the {slot}", _object_at),  # move_next
    ("the {colour} {shape} goes at the {slot}", _object_at),  # add_next
    ("the {colour} {shape} goes to the {slot}", _object_at),  # swap (twice)
    ("the {colour} {shape} lands at the {slot}", _object_at),  # fall
    ("the {colour} {shape} ends at the {slot}", _object_at),  # steps
    ("the {colour} {shape} slides {direction} until it stops at the {slot}", _object_at),  # push
    ("there is one {colour} object so it is removed", _removed),  # remove_colour
    ("there are {count} {colour} objects so they are removed", _removed),
    ("the {shape} is {colour} so a {colour2} {shape2} takes its place at the {slot}", _replaced),  # replace
    ("the only empty corner is the {slot} so one {colour} dot is added", _objects_at_slots),  # corners
    ("the empty corners are {slots} so {count} {colour} dots are added", _objects_at_slots),
    ("{relation} the {slot} is the {slot2} so the {colour} {shape} goes there", _object_at),  # draw_relative
    ("{count} {colour} {shapes} go at {slots}", _objects_at_slots),  # draw_count
    ("a {colour} {shape} at the {slot}", _object_at),  # scene captions (the tiny CLIP's extra texts)
)


@cache
def _compiled_fragments():
    return [(*_compile(fragment), claims) for fragment, claims in _FRAGMENTS]


def reasoning_claims(text: str) -> list[Claim]:
    """The claims a reasoning (or caption) makes about the resulting picture, in order, without repeats.

    Found by searching the claim-bearing fragments of the world's reasoning templates, e.g.
    ``"fire is red so the blue square becomes red ."`` -> present(red square), absent(blue square).
    """
    joined = " ".join(split_words(text))
    found: dict[Claim, None] = {}
    for pattern, names, make_claims in _compiled_fragments():
        for match in pattern.finditer(joined):
            values = {name: match.group(f"p{i}") for i, name in enumerate(names)}
            for claim in make_claims(values):
                found.setdefault(claim, None)
    return list(found)


def claim_holds(claim: Claim, objects: Sequence[ToyObject]) -> bool:
    """Whether a claim is true of a scene's objects."""

    def matching(colour, shape=None, slot=None):
        return [
            o
            for o in objects
            if o.colour == colour and (shape is None or o.shape == shape) and (slot is None or o.slot_name == slot)
        ]

    if claim.kind == "present":
        return bool(matching(claim.colour, claim.shape, claim.slot))
    if claim.kind == "absent":
        return not matching(claim.colour, claim.shape)
    if claim.kind == "relative":
        d_row, d_col = _RELATION_SHIFT[claim.relation]
        for ref in matching(claim.ref_colour, claim.ref_shape):
            row, col = ref.slot // 3 + d_row, ref.slot % 3 + d_col
            if 0 <= row < 3 and 0 <= col < 3 and matching(claim.colour, claim.shape, SLOT_NAMES[3 * row + col]):
                return True
        return False
    raise ValueError(f"unknown claim kind {claim.kind!r}.")


def output_alignment(text: str, objects: Sequence[ToyObject]) -> float:
    """Share of the claims of `text` that hold in a picture's `objects` (0 when the text makes none yet)."""
    return _share_holding(reasoning_claims(text), objects)


def _share_holding(claims: Sequence[Claim], objects: Sequence[ToyObject]) -> float:
    return sum(claim_holds(c, objects) for c in claims) / len(claims) if claims else 0.0


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
        "grammar": any(p.fullmatch(joined) for p in _reasoning_templates().values()),
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
        "output_alignment": _share_holding(claims, objects),  # output_alignment() without parsing the text again
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


# -------------------------------------------------------------------------------------------------- generation
def generate_predictions(
    model,
    processor,
    dataset,
    rollout_config=None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Runs the parallel decoder over a toy dataset.

    Each sample's noise comes from its own row seed (`seed`, index), so predictions do not depend on `batch_size`.
    The model is put in eval mode for the rollout and restored afterwards.

    Args:
        model: The policy ([`~pararl.models.MaskedDiffusionLM`] or a wrapper the decoder accepts).
        processor: The toy [`~pararl.processing.ParallelProcessor`] (`pararl.toy.toy_processor()`).
        dataset: Rows with `prompt`, `image` (PIL or None) and `task`.
        rollout_config ([`~pararl.rollout.RolloutConfig`], *optional*): Sampling settings (decoder defaults).
        batch_size: Prompts per rollout.
        seed: Base of the per-sample row seeds.
        progress: Show a progress bar over the batches.

    Returns:
        `{"texts": list[str], "codes": LongTensor (N, 8, 8)}` (-1 where a cell is not an image token).
    """
    from tqdm.auto import tqdm

    from pararl.rollout import ParallelDecoder

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    decoder = ParallelDecoder(model, processor, rollout_config)
    size = len(dataset)
    texts, codes = [], []
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for start in tqdm(range(0, size, batch_size), disable=not progress, desc="generating"):
            stop = min(start + batch_size, size)
            rows = [dataset[i] for i in range(start, stop)]
            # Row seeds from (seed, index): the same sample gets the same noise in any batch.
            seeds = torch.arange(start, stop, dtype=torch.long) + int(seed) * 1_000_003
            trajectory = decoder.generate(
                [row["prompt"] for row in rows],
                images=[row.get("image") for row in rows],
                tasks=[row.get("task") for row in rows],
                seeds=seeds,
            )
            output_ids = trajectory.output_ids.cpu()
            texts.extend(processor.decode_text(output_ids))
            codes.append(processor.image_codes(output_ids))
    finally:
        model.train(was_training)
    grids = torch.cat(codes) if codes else torch.empty(0, *TOY_GRID, dtype=torch.long)
    return {"texts": texts, "codes": grids}


# --------------------------------------------------------------------------------------------------------- CLI
@dataclass
class EvaluateArguments:
    """Arguments of `python -m pararl.toy.evaluate`."""

    model_name_or_path: str = field(metadata={"help": "Folder of a saved toy policy (MaskedDiffusionLM)."})
    split: str = field(default="test", metadata={"help": "Toy split to score: 'test' (held out) or 'train'."})
    num_samples: int = field(default=120, metadata={"help": "Number of samples (categories cycle)."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the toy dataset."})
    steps: int | None = field(default=None, metadata={"help": "Decoding steps (default: the decoder's)."})
    temperature: float | None = field(
        default=None, metadata={"help": "Text and image sampling temperature (default: the decoder's; 0 = greedy)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the rollout noise."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per rollout."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda when available, else cpu)."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the full result to this file."})


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: generates on a toy split with a saved model and prints the six axes."""
    from transformers import HfArgumentParser

    from pararl.models import MaskedDiffusionLM
    from pararl.rollout import RolloutConfig

    from . import build_toy_dataset, toy_processor

    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    if args.split not in ("train", "test"):
        raise ValueError(f"--split must be 'train' or 'test', got {args.split!r}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MaskedDiffusionLM.from_pretrained(args.model_name_or_path).to(device)
    overrides = {}
    if args.steps is not None:
        overrides["num_steps"] = args.steps
    if args.temperature is not None:
        overrides["text_temperature"] = overrides["image_temperature"] = args.temperature
    dataset = build_toy_dataset(args.split, args.num_samples, seed=args.dataset_seed)
    predictions = generate_predictions(
        model,
        toy_processor(),
        dataset,
        RolloutConfig(**overrides),
        batch_size=args.batch_size,
        seed=args.seed,
        progress=True,
    )
    result = evaluate(predictions, dataset)
    print(format_scores(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({**result, "predictions": predictions["texts"]}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
