"""What a reasoning says about the resulting picture: its claims (an object is present, absent, or placed relative
to another), found by rule in any world text, and whether a scene satisfies them.

The evaluator's text alignment and output alignment (:mod:`pararl.toy.scoring`), the exact control reward
(:class:`~pararl.toy.reward.ToyOutputAlignment`) and the tiny CLIP's hard negatives all read texts through here.
"""

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

from .scenes import SLOT_NAMES, ToyObject
from .texts import PLACEHOLDER_KINDS, RELATIONS, SHAPE_PLURALS, split_words, template_pattern


__all__ = ["Claim", "claim_holds", "output_alignment", "reasoning_claims", "share_holding"]


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
    return re.findall(PLACEHOLDER_KINDS["slot"], text)


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
    return [(*template_pattern(fragment), claims) for fragment, claims in _FRAGMENTS]


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
    return share_holding(reasoning_claims(text), objects)


def share_holding(claims: Sequence[Claim], objects: Sequence[ToyObject]) -> float:
    """Share of `claims` true of `objects` (0 without claims): output alignment of an already parsed text."""
    return sum(claim_holds(c, objects) for c in claims) / len(claims) if claims else 0.0
