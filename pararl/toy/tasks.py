"""A procedural world of thinking-aware editing and generation tasks, small enough to learn on a CPU.

**Tasks.** Every instruction needs one reasoning step, and the ground-truth reasoning states its result. The
categories mirror ParaBench's editing categories, plus generation (no input image):

- ``knowledge``: indirect colours through a fixed world-knowledge table (``grass`` -> green, ``coal`` -> black).
- ``spatial``: relations between objects (move / add next to, swap, "the object above the ...").
- ``temporal``: before/after (it falls, the ice melts, it moves n steps, the dot grows).
- ``causal``: cause -> effect (paint mixing, burning, freezing, pushing until it stops).
- ``general``: add / remove / replace with a count or a lookup (remove every red object, fill empty corners).
- ``generation``: draw a scene from scratch with an indirect colour, a relation or a count.
- ``open_edit`` / ``open_generation``: the prompt leaves a decision open, as ParaBench's open-ended prompts do:
  "add a red square ." (at any free slot) and "draw a red square and a blue dot ." (anywhere). Every free choice
  is a valid answer (the rows' `answer` lists them all as `alternatives`) and the training data use each with equal
  probability, so a policy that decides its text and its picture independently often makes them disagree; the
  reasoning states the choice, and output alignment checks that the picture honours it.

In an input scene (:mod:`pararl.toy.scenes`) no two objects share a slot or a (colour, shape) pair, so ``"the red
square"`` always names one object.

**Held-out rule.** Each sample has a combination key ``(category, shape, colour)``: the shape of the object the
instruction acts on (as named in the instruction) and the colour that object has in the target image (for
removals, its input colour). A key is held out (test only) iff
``(category_index + shape_index + colour_index) % 4 == 0``: per category and colour exactly one of the four shapes
is held out, and per category and shape two of the eight colours, so every shape and every colour still occurs in
training within every category, and every template (even those with a fixed colour or shape, like "melt" or
"grow") has train and test keys. Train and test never share a key, so the test split measures compositional
generalisation ("a green square" via "grass" when only grass-green dots, bars and poles were trained). Samples are
deterministic in (split, seed, index).
"""

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .palette import TOY_COLOURS
from .scenes import CORNERS, ROW_WORDS, SHAPES, SLOT_NAMES, ToyObject, render_scene, scene_codes
from .texts import DIRECTIONS, KNOWLEDGE, MIXES, NUMBER_WORDS, RELATIONS, SHAPE_PLURALS, TEXTS


__all__ = [
    "BUILDERS",
    "CATEGORIES",
    "ORIGINAL_CATEGORIES",
    "ToySample",
    "build_toy_dataset",
    "combination_key",
    "generate_samples",
    "is_held_out",
]

CATEGORIES: tuple[str, ...] = (
    "spatial",
    "temporal",
    "causal",
    "knowledge",
    "general",
    "generation",
    "open_edit",
    "open_generation",
)
# The six categories of the first toy world, before the open-ended ones: `world=ORIGINAL_CATEGORIES` draws its exact
# streams (the shipped tiny CLIP and the policy's SFT stages 1-4 were trained on them; rebuilds stay identical).
ORIGINAL_CATEGORIES: tuple[str, ...] = CATEGORIES[:6]
# Task families outside the default world (drawn only when named in `categories` or `world`): `open_colour` leaves
# the colour of a dot at a named place to the model ("add a dot at the top left ."), the one open decision that
# needs no layout in the picture. Appended to the held-out rule's category order, so the default streams are unchanged.
EXTRA_CATEGORIES: tuple[str, ...] = ("open_colour",)
ALL_CATEGORIES: tuple[str, ...] = CATEGORIES + EXTRA_CATEGORIES


@dataclass
class ToySample:
    """One task: instruction, input scene (None for generation), reasoning and target scene."""

    category: str
    template: str
    prompt: str
    reasoning: str
    input_objects: tuple[ToyObject, ...] | None
    output_objects: tuple[ToyObject, ...]
    focus: tuple[str, str]  # (shape named in the instruction, its colour in the target) -> combination key
    facts: dict = field(default_factory=dict)
    keywords: tuple[str, ...] = ()
    # Open-ended tasks: every valid (reasoning, output objects, keywords), this sample's own among them.
    alternatives: tuple[tuple[str, tuple[ToyObject, ...], tuple[str, ...]], ...] = ()

    @property
    def task(self) -> str:
        return "generate" if self.input_objects is None else "edit"

    @property
    def combination(self) -> tuple[str, str, str]:
        return (self.category, *self.focus)

    def _unchanged_cells(self, output_objects: Sequence[ToyObject]) -> list[int]:
        if self.input_objects is None:
            return []
        source, target = scene_codes(self.input_objects), scene_codes(output_objects)
        return torch.nonzero((source == target).flatten()).flatten().tolist()

    def answer(self) -> dict:
        """The structured truth for an exact evaluator (open-ended tasks add every valid `alternatives` entry)."""
        answer = {
            "category": self.category,
            "task": self.task,
            "template": self.template,
            "combination": list(self.combination),
            "input_objects": None if self.input_objects is None else [o.to_dict() for o in self.input_objects],
            "objects": [o.to_dict() for o in self.output_objects],
            "facts": self.facts,
            "keywords": list(self.keywords),
            "unchanged_cells": self._unchanged_cells(self.output_objects),
        }
        if self.alternatives:
            answer["alternatives"] = [
                {
                    "reasoning": reasoning,
                    "objects": [o.to_dict() for o in objects],
                    "keywords": list(keywords),
                    "unchanged_cells": self._unchanged_cells(objects),
                }
                for reasoning, objects, keywords in self.alternatives
            ]
        return answer

    def to_row(self) -> dict:
        return {
            "prompt": self.prompt,
            "image": None if self.input_objects is None else render_scene(self.input_objects),
            "task": self.task,
            "category": self.category,
            "reasoning": self.reasoning,
            "output_image": render_scene(self.output_objects),
            "answer": json.dumps(self.answer(), sort_keys=True),
        }


def is_held_out(category: str, shape: str, colour: str) -> bool:
    """Whether the combination `(category, shape, colour)` belongs to the test split only."""
    return (ALL_CATEGORIES.index(category) + SHAPES.index(shape) + TOY_COLOURS.index(colour)) % 4 == 0


def combination_key(sample: "ToySample | dict | str") -> tuple[str, str, str]:
    """The held-out key of a sample, a dataset row or an `answer` JSON string."""
    if isinstance(sample, ToySample):
        return sample.combination
    answer = sample["answer"] if isinstance(sample, dict) else sample
    return tuple(json.loads(answer)["combination"])


# -------------------------------------------------------------------------------------------- sample builders
def _slot_shift(slot: int, d_row: int, d_col: int, n: int = 1) -> int | None:
    row, col = slot // 3 + n * d_row, slot % 3 + n * d_col
    return row * 3 + col if 0 <= row < 3 and 0 <= col < 3 else None


def _random_scene(
    rng: random.Random,
    count: int,
    taken_slots: Sequence[int] = (),
    taken_pairs: Sequence[tuple[str, str]] = (),
    colours: Sequence[str] = TOY_COLOURS,
) -> list[ToyObject]:
    """`count` objects in free slots, with (shape, colour) pairs unused so far (the scene's naming invariant)."""
    free_slots = [s for s in range(9) if s not in taken_slots]
    pairs = [(s, c) for s in SHAPES for c in colours if (s, c) not in taken_pairs]
    if count > len(free_slots) or count > len(pairs):
        return []
    slots = rng.sample(free_slots, count)
    return [ToyObject(shape, colour, slot) for (shape, colour), slot in zip(rng.sample(pairs, count), slots)]


def _scene_with(rng: random.Random, fixed: Sequence[ToyObject], max_extra: int, avoid_slots=()) -> list[ToyObject]:
    """`fixed` plus 0..max_extra distractors that avoid `avoid_slots`, shuffled into slot order."""
    taken = [o.slot for o in fixed] + list(avoid_slots)
    extra = _random_scene(rng, rng.randint(0, max_extra), taken, [(o.shape, o.colour) for o in fixed])
    return sorted([*fixed, *extra], key=lambda o: o.slot)


def _replace(objects: Sequence[ToyObject], old: ToyObject, new: ToyObject | None) -> tuple[ToyObject, ...]:
    out = [new if o == old else o for o in objects]
    return tuple(sorted((o for o in out if o is not None), key=lambda o: o.slot))


def _pairs(objects: Sequence[ToyObject]) -> set[tuple[str, str]]:
    return {(o.shape, o.colour) for o in objects}


def _source_for(rng: random.Random, colour: str) -> str:
    return rng.choice([source for source, c in KNOWLEDGE.items() if c == colour])


def _one_obj(rng: random.Random, colours: Sequence[str] = TOY_COLOURS, shapes: Sequence[str] = SHAPES) -> ToyObject:
    return ToyObject(rng.choice(shapes), rng.choice(colours), rng.randrange(9))


def _list_slots(slots: Sequence[int]) -> str:
    """ "top left , top right and bottom left" """
    names = [SLOT_NAMES[s] for s in slots]
    return names[0] if len(names) == 1 else " , ".join(names[:-1]) + " and " + names[-1]


Draft = ToySample | None
Builder = Callable[[random.Random], Draft]


def _sample(
    *,
    category: str,
    template: str,
    input_objects: Sequence[ToyObject] | None,
    output_objects: Sequence[ToyObject],
    focus: tuple[str, str],
    facts: dict,
    keywords: Sequence[str],
    words: dict[str, str],
    reasoning_key: str | None = None,
) -> ToySample:
    """A task whose prompt and reasoning are `template`'s texts filled with `words` (`reasoning_key` names another
    reasoning text of the template, e.g. its plural form)."""
    return ToySample(
        category=category,
        template=template,
        prompt=TEXTS[f"{template}_prompt"].format(**words),
        reasoning=TEXTS[reasoning_key or f"{template}_reasoning"].format(**words),
        input_objects=None if input_objects is None else tuple(sorted(input_objects, key=lambda o: o.slot)),
        output_objects=tuple(sorted(output_objects, key=lambda o: o.slot)),
        focus=focus,
        facts=facts,
        keywords=tuple(keywords),
    )


# knowledge ---------------------------------------------------------------------------------------------------
def _recolour(rng):
    target = _one_obj(rng)
    scene = _scene_with(rng, [target], 3)
    answer = rng.choice([c for c in TOY_COLOURS if c != target.colour])
    if (target.shape, answer) in _pairs(scene):
        return None
    new = ToyObject(target.shape, answer, target.slot)
    return _sample(
        category="knowledge",
        template="recolour",
        input_objects=scene,
        output_objects=_replace(scene, target, new),
        focus=(target.shape, answer),
        facts={"colour": answer},
        keywords=[answer],
        words=dict(colour=target.colour, shape=target.shape, source=_source_for(rng, answer), answer=answer),
    )


def _add_known(rng):
    new = _one_obj(rng)
    scene = _random_scene(rng, rng.randint(0, 3), [new.slot], [(new.shape, new.colour)])
    return _sample(
        category="knowledge",
        template="add_known",
        input_objects=scene,
        output_objects=[*scene, new],
        focus=(new.shape, new.colour),
        facts={"colour": new.colour, "slot": new.slot_name},
        keywords=[new.colour, new.slot_name],
        words=dict(shape=new.shape, source=_source_for(rng, new.colour), answer=new.colour, slot=new.slot_name),
    )


def _remove_known(rng):
    shape = rng.choice(SHAPES)
    colours = rng.sample(TOY_COLOURS, rng.randint(2, 3))
    slots = rng.sample(range(9), len(colours))
    same_shape = [ToyObject(shape, c, s) for c, s in zip(colours, slots)]
    target = same_shape[0]
    scene = _scene_with(rng, same_shape, 1)
    return _sample(
        category="knowledge",
        template="remove_known",
        input_objects=scene,
        output_objects=_replace(scene, target, None),
        focus=(shape, target.colour),
        facts={"colour": target.colour, "removed": target.to_dict()},
        keywords=[target.colour],
        words=dict(shape=shape, source=_source_for(rng, target.colour), answer=target.colour),
    )


# spatial -----------------------------------------------------------------------------------------------------
def _move_next(rng):
    ref, mover = _random_scene(rng, 2)
    relation = rng.choice(list(RELATIONS))
    phrase, d_row, d_col = RELATIONS[relation]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None or slot == mover.slot:
        return None
    scene = _scene_with(rng, [ref, mover], 2, avoid_slots=[slot])
    moved = ToyObject(mover.shape, mover.colour, slot)
    return _sample(
        category="spatial",
        template="move_next",
        input_objects=scene,
        output_objects=_replace(scene, mover, moved),
        focus=(mover.shape, mover.colour),
        facts={"slot": moved.slot_name},
        keywords=[moved.slot_name],
        words=dict(
            colour=mover.colour,
            shape=mover.shape,
            relation=phrase,
            ref_colour=ref.colour,
            ref_shape=ref.shape,
            ref_slot=ref.slot_name,
            slot=moved.slot_name,
        ),
    )


def _add_next(rng):
    ref, new = _random_scene(rng, 2)
    phrase, d_row, d_col = RELATIONS[rng.choice(list(RELATIONS))]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None:
        return None
    new = ToyObject(new.shape, new.colour, slot)
    scene = [o for o in _scene_with(rng, [ref, new], 2) if o != new]
    return _sample(
        category="spatial",
        template="add_next",
        input_objects=scene,
        output_objects=[*scene, new],
        focus=(new.shape, new.colour),
        facts={"slot": new.slot_name},
        keywords=[new.slot_name],
        words=dict(
            colour=new.colour,
            shape=new.shape,
            relation=phrase,
            ref_colour=ref.colour,
            ref_shape=ref.shape,
            ref_slot=ref.slot_name,
            slot=new.slot_name,
        ),
    )


def _swap(rng):
    first, second = _random_scene(rng, 2)
    scene = _scene_with(rng, [first, second], 2)
    a, b = ToyObject(first.shape, first.colour, second.slot), ToyObject(second.shape, second.colour, first.slot)
    output = [a if o == first else b if o == second else o for o in scene]
    return _sample(
        category="spatial",
        template="swap",
        input_objects=scene,
        output_objects=output,
        focus=(first.shape, first.colour),
        facts={"slot": a.slot_name, "other_slot": b.slot_name},
        keywords=[a.slot_name, b.slot_name],
        words=dict(
            colour=first.colour,
            shape=first.shape,
            ref_colour=second.colour,
            ref_shape=second.shape,
            slot=a.slot_name,
            ref_slot=b.slot_name,
        ),
    )


def _paint_relative(rng):
    ref, target = _random_scene(rng, 2)
    relation = rng.choice(list(RELATIONS))
    phrase, d_row, d_col = RELATIONS[relation]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None:
        return None
    target = ToyObject(target.shape, target.colour, slot)
    answer = rng.choice([c for c in TOY_COLOURS if c != target.colour])
    scene = _scene_with(rng, [ref, target], 2)
    if (target.shape, answer) in _pairs(scene):
        return None
    new = ToyObject(target.shape, answer, slot)
    return _sample(
        category="spatial",
        template="paint_relative",
        input_objects=scene,
        output_objects=_replace(scene, target, new),
        focus=(target.shape, answer),
        facts={"colour": answer, "object": target.to_dict()},
        keywords=[target.colour, target.shape, answer],
        words=dict(
            relation=phrase,
            ref_colour=ref.colour,
            ref_shape=ref.shape,
            colour=target.colour,
            shape=target.shape,
            answer=answer,
        ),
    )


# temporal ----------------------------------------------------------------------------------------------------
def _fall(rng):
    obj = _one_obj(rng)
    below = [s for s in range(obj.slot + 3, 9, 3)]
    if not below:
        return None
    scene = _scene_with(rng, [obj], 3, avoid_slots=below)
    landed = ToyObject(obj.shape, obj.colour, below[-1])
    return _sample(
        category="temporal",
        template="fall",
        input_objects=scene,
        output_objects=_replace(scene, obj, landed),
        focus=(obj.shape, obj.colour),
        facts={"slot": landed.slot_name},
        keywords=[landed.slot_name],
        words=dict(colour=obj.colour, shape=obj.shape, slot=landed.slot_name),
    )


def _melt(rng):
    ice = _one_obj(rng, colours=["white"])
    scene = _scene_with(rng, [ice], 3)
    water = ToyObject("dot", "blue", ice.slot)
    if ("dot", "blue") in _pairs(scene):
        return None
    return _sample(
        category="temporal",
        template="melt",
        input_objects=scene,
        output_objects=_replace(scene, ice, water),
        focus=(ice.shape, "blue"),
        facts={"colour": "blue", "shape": "dot"},
        keywords=["blue", "dot"],
        words=dict(shape=ice.shape),
    )


def _steps(rng):
    obj = _one_obj(rng)
    direction = rng.choice(list(DIRECTIONS))
    count = rng.randint(1, 2)
    path = [_slot_shift(obj.slot, *DIRECTIONS[direction], n) for n in range(1, count + 1)]
    if None in path:
        return None
    scene = _scene_with(rng, [obj], 3, avoid_slots=path)
    moved = ToyObject(obj.shape, obj.colour, path[-1])
    plural = count > 1
    return _sample(
        category="temporal",
        template="steps",
        input_objects=scene,
        output_objects=_replace(scene, obj, moved),
        focus=(obj.shape, obj.colour),
        facts={"slot": moved.slot_name},
        keywords=[moved.slot_name],
        words=dict(
            colour=obj.colour,
            shape=obj.shape,
            direction=direction,
            count=NUMBER_WORDS[count],
            seconds="seconds" if plural else "second",
            steps="steps" if plural else "step",
            slot=moved.slot_name,
        ),
    )


def _grow(rng):
    dot = _one_obj(rng, shapes=["dot"])
    scene = _scene_with(rng, [dot], 3)
    if ("square", dot.colour) in _pairs(scene):
        return None
    return _sample(
        category="temporal",
        template="grow",
        input_objects=scene,
        output_objects=_replace(scene, dot, ToyObject("square", dot.colour, dot.slot)),
        focus=("dot", dot.colour),
        facts={"shape": "square"},
        keywords=["square"],
        words=dict(colour=dot.colour),
    )


# causal ------------------------------------------------------------------------------------------------------
def _mix(rng):
    pair, answer = rng.choice(list(MIXES.items()))
    paint, colour = rng.sample(sorted(pair), 2)
    obj = _one_obj(rng, colours=[colour])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, answer) in _pairs(scene):
        return None
    return _sample(
        category="causal",
        template="mix",
        input_objects=scene,
        output_objects=_replace(scene, obj, ToyObject(obj.shape, answer, obj.slot)),
        focus=(obj.shape, answer),
        facts={"colour": answer},
        keywords=[answer],
        words=dict(paint=paint, colour=colour, shape=obj.shape, answer=answer),
    )


def _burn(rng):
    obj = _one_obj(rng, colours=[c for c in TOY_COLOURS if c != "black"])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, "black") in _pairs(scene):
        return None
    return _sample(
        category="causal",
        template="burn",
        input_objects=scene,
        output_objects=_replace(scene, obj, ToyObject(obj.shape, "black", obj.slot)),
        focus=(obj.shape, "black"),
        facts={"colour": "black"},
        keywords=["black"],
        words=dict(colour=obj.colour, shape=obj.shape),
    )


def _freeze(rng):
    obj = _one_obj(rng, colours=["blue"])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, "white") in _pairs(scene):
        return None
    return _sample(
        category="causal",
        template="freeze",
        input_objects=scene,
        output_objects=_replace(scene, obj, ToyObject(obj.shape, "white", obj.slot)),
        focus=(obj.shape, "white"),
        facts={"colour": "white"},
        keywords=["white"],
        words=dict(shape=obj.shape),
    )


def _push(rng):
    obj = _one_obj(rng)
    direction = rng.choice(list(DIRECTIONS))
    scene = _scene_with(rng, [obj], 3)
    occupied = {o.slot for o in scene}
    slot = obj.slot
    # It slides until the edge of the picture or the slot before another object.
    while (nxt := _slot_shift(slot, *DIRECTIONS[direction])) is not None and nxt not in occupied:
        slot = nxt
    if slot == obj.slot:
        return None
    moved = ToyObject(obj.shape, obj.colour, slot)
    return _sample(
        category="causal",
        template="push",
        input_objects=scene,
        output_objects=_replace(scene, obj, moved),
        focus=(obj.shape, obj.colour),
        facts={"slot": moved.slot_name},
        keywords=[moved.slot_name],
        words=dict(colour=obj.colour, shape=obj.shape, direction=direction, slot=moved.slot_name),
    )


# general -----------------------------------------------------------------------------------------------------
def _remove_colour(rng):
    colour = rng.choice(TOY_COLOURS)
    count = rng.randint(1, 3)
    removed = _random_scene(rng, count, colours=[colour])
    others = _random_scene(
        rng, rng.randint(0, 2), [o.slot for o in removed], colours=[c for c in TOY_COLOURS if c != colour]
    )
    scene = sorted([*removed, *others], key=lambda o: o.slot)
    first = min(removed, key=lambda o: o.slot)
    return _sample(
        category="general",
        template="remove_colour",
        input_objects=scene,
        output_objects=others,
        focus=(first.shape, colour),
        facts={"colour": colour, "count": count},
        keywords=[NUMBER_WORDS[count], colour],
        words=dict(colour=colour, count=NUMBER_WORDS[count]),
        reasoning_key="remove_colour_reasoning_one" if count == 1 else "remove_colour_reasoning_many",
    )


def _replace_shape(rng):
    obj = _one_obj(rng)
    new_shape = rng.choice([s for s in SHAPES if s != obj.shape])
    scene = _scene_with(rng, [obj], 3)
    if (new_shape, obj.colour) in _pairs(scene):
        return None
    new = ToyObject(new_shape, obj.colour, obj.slot)
    return _sample(
        category="general",
        template="replace",
        input_objects=scene,
        output_objects=_replace(scene, obj, new),
        focus=(new_shape, obj.colour),
        facts={"colour": obj.colour, "shape": new_shape, "slot": new.slot_name},
        keywords=[obj.colour, new_shape, new.slot_name],
        words=dict(colour=obj.colour, shape=obj.shape, new_shape=new_shape, slot=new.slot_name),
    )


def _corners(rng):
    colour = rng.choice(TOY_COLOURS)
    scene = _random_scene(rng, rng.randint(0, 4), colours=[c for c in TOY_COLOURS if c != colour])
    empty = [s for s in CORNERS if s not in {o.slot for o in scene}]
    if not empty:
        return None
    added = [ToyObject("dot", colour, s) for s in empty]
    return _sample(
        category="general",
        template="corners",
        input_objects=scene,
        output_objects=[*scene, *added],
        focus=("dot", colour),
        facts={"colour": colour, "count": len(empty), "slots": [SLOT_NAMES[s] for s in empty]},
        keywords=[NUMBER_WORDS[len(empty)], colour] + [SLOT_NAMES[s] for s in empty],
        words=dict(colour=colour, count=NUMBER_WORDS[len(empty)], slots=_list_slots(empty)),
        reasoning_key="corners_reasoning_one" if len(empty) == 1 else "corners_reasoning_many",
    )


# generation --------------------------------------------------------------------------------------------------
def _draw_known(rng):
    obj = _one_obj(rng)
    return _sample(
        category="generation",
        template="draw_known",
        input_objects=None,
        output_objects=[obj],
        focus=(obj.shape, obj.colour),
        facts={"colour": obj.colour, "slot": obj.slot_name},
        keywords=[obj.colour, obj.slot_name],
        words=dict(shape=obj.shape, source=_source_for(rng, obj.colour), answer=obj.colour, slot=obj.slot_name),
    )


def _draw_relative(rng):
    ref, obj = _random_scene(rng, 2)
    phrase, d_row, d_col = RELATIONS[rng.choice(list(RELATIONS))]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None:
        return None
    obj = ToyObject(obj.shape, obj.colour, slot)
    return _sample(
        category="generation",
        template="draw_relative",
        input_objects=None,
        output_objects=[ref, obj],
        focus=(obj.shape, obj.colour),
        facts={"slot": obj.slot_name},
        keywords=[obj.slot_name],
        words=dict(
            ref_colour=ref.colour,
            ref_shape=ref.shape,
            ref_slot=ref.slot_name,
            colour=obj.colour,
            shape=obj.shape,
            relation=phrase,
            slot=obj.slot_name,
        ),
    )


def _draw_count(rng):
    shape, colour = rng.choice(SHAPES), rng.choice(TOY_COLOURS)
    count, row = rng.randint(2, 3), rng.randrange(3)
    slots = [3 * row + col for col in range(count)]
    objects = [ToyObject(shape, colour, s) for s in slots]
    return _sample(
        category="generation",
        template="draw_count",
        input_objects=None,
        output_objects=objects,
        focus=(shape, colour),
        facts={"count": count, "slots": [SLOT_NAMES[s] for s in slots]},
        keywords=[NUMBER_WORDS[count]] + [SLOT_NAMES[s] for s in slots],
        words=dict(
            count=NUMBER_WORDS[count],
            colour=colour,
            shapes=SHAPE_PLURALS[shape],
            row=ROW_WORDS[row],
            slots=_list_slots(slots),
        ),
    )


# open-ended -------------------------------------------------------------------------------------------------
def _open_sample(category, template, scene, placed, others, fixed_words) -> ToySample:
    """An open-ended sample: `placed` are the objects at this sample's chosen slots, `others` every valid choice of
    slots (this one included); the reasoning names the chosen slots in `{slot}`, `{slot2}`."""

    def words_for(objects):
        return {**fixed_words, **{f"slot{'' if i == 0 else i + 1}": o.slot_name for i, o in enumerate(objects)}}

    def keywords_for(objects):
        return [word for o in objects for word in (f"{o.colour} {o.shape}", o.slot_name)]

    sample = _sample(
        category=category,
        template=template,
        input_objects=scene,
        output_objects=[*(scene or []), *placed],
        focus=(placed[0].shape, placed[0].colour),
        facts={"open": "slot"},
        keywords=keywords_for(placed),
        words=words_for(placed),
    )
    sample.alternatives = tuple(
        (
            TEXTS[f"{template}_reasoning"].format(**words_for(objects)),
            tuple(sorted([*(scene or []), *objects], key=lambda o: o.slot)),
            tuple(keywords_for(objects)),
        )
        for objects in others
    )
    return sample


def _at(obj: ToyObject, slot: int) -> ToyObject:
    return ToyObject(obj.shape, obj.colour, slot)


def _add_open(rng):
    new = _one_obj(rng)
    scene = _random_scene(rng, rng.randint(1, 3), [new.slot], [(new.shape, new.colour)])
    free = [s for s in range(9) if s not in {o.slot for o in scene}]
    words = {"colour": new.colour, "shape": new.shape}
    return _open_sample("open_edit", "add_open", scene, [new], [[_at(new, s)] for s in free], words)


def _draw_open(rng):
    obj = _one_obj(rng)
    words = {"colour": obj.colour, "shape": obj.shape}
    return _open_sample("open_generation", "draw_open", None, [obj], [[_at(obj, s)] for s in range(9)], words)


def _draw_open_two(rng):
    first, second = _random_scene(rng, 2)
    words = {"colour": first.colour, "shape": first.shape, "colour2": second.colour, "shape2": second.shape}
    choices = [[_at(first, a), _at(second, b)] for a in range(9) for b in range(9) if a != b]
    return _open_sample("open_generation", "draw_open_two", None, [first, second], choices, words)


def _colour_sample(template, reasoning_key, scene, slot, colour, free_colours) -> ToySample:
    """An open-colour sample: a dot of `colour` at `slot`, every colour of `free_colours` a valid answer."""

    def dot(c):
        return ToyObject("dot", c, slot)

    sample = _sample(
        category="open_colour",
        template=template,
        input_objects=scene,
        output_objects=[*(scene or []), dot(colour)],
        focus=("dot", colour),
        facts={"open": "colour"},
        keywords=[f"{colour} dot", SLOT_NAMES[slot]],
        words={"colour": colour, "shape": "dot", "slot": SLOT_NAMES[slot]},
        reasoning_key=reasoning_key,
    )
    sample.alternatives = tuple(
        (
            TEXTS[reasoning_key].format(colour=c, shape="dot", slot=SLOT_NAMES[slot]),
            tuple(sorted([*(scene or []), dot(c)], key=lambda o: o.slot)),
            (f"{c} dot", SLOT_NAMES[slot]),
        )
        for c in free_colours
    )
    return sample


def _add_any_colour(rng):
    scene = _random_scene(rng, rng.randint(1, 3))
    free = [s for s in range(9) if s not in {o.slot for o in scene}]
    slot = rng.choice(free)
    free_colours = [c for c in TOY_COLOURS if ("dot", c) not in {(o.shape, o.colour) for o in scene}]
    return _colour_sample("add_dot", "add_open_reasoning", scene, slot, rng.choice(free_colours), free_colours)


def _draw_any_colour(rng):
    slot = rng.randrange(9)
    return _colour_sample("draw_dot", "draw_open_reasoning", None, slot, rng.choice(TOY_COLOURS), TOY_COLOURS)


BUILDERS: dict[str, tuple[Builder, ...]] = {
    "spatial": (_move_next, _add_next, _swap, _paint_relative),
    "temporal": (_fall, _melt, _steps, _grow),
    "causal": (_mix, _burn, _freeze, _push),
    "knowledge": (_recolour, _add_known, _remove_known),
    "general": (_remove_colour, _replace_shape, _corners),
    "generation": (_draw_known, _draw_relative, _draw_count),
    "open_edit": (_add_open,),
    "open_generation": (_draw_open, _draw_open_two),
    "open_colour": (_add_any_colour, _draw_any_colour),
}


def _make_sample(split: str, seed: int, index: int, cycle: Sequence[str] = CATEGORIES) -> ToySample:
    # One RNG per sample (string seeds hash with SHA-512, not Python's salted hash): datasets of different sizes
    # share their prefix, and train/test never reuse a stream.
    rng = random.Random(f"pararl-toy:{seed}:{split}:{index}")
    category = cycle[index % len(cycle)]
    want_test = split == "test"
    for _ in range(100):
        # Pick the template first and retry within it, so the split's rejection does not skew the template mix.
        builder = rng.choice(BUILDERS[category])
        for _ in range(200):
            sample = builder(rng)
            if sample is not None and is_held_out(*sample.combination) == want_test:
                return sample
    raise RuntimeError(f"could not draw a {split} sample for category {category!r}; check the held-out rule.")


def generate_samples(
    split: str = "train",
    num_samples: int = 1000,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    world: Sequence[str] = CATEGORIES,
) -> list[ToySample]:
    """Draws `num_samples` tasks of one split; categories cycle in the order of `world`.

    `categories` keeps only those categories (the same samples as the full stream has at their indices). `world`
    is the cycle itself: all of :data:`CATEGORIES` by default, or :data:`ORIGINAL_CATEGORIES` to draw exactly the
    streams of the six-category world (what the shipped tiny CLIP and the policy's first SFT stages were trained on).
    When `categories` names a family outside `world` (one of :data:`EXTRA_CATEGORIES`), the cycle is `categories`
    itself, in the order given.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    world = tuple(world)
    for name, chosen in (("world", world), ("categories", categories)):
        if chosen is not None and (not chosen or set(chosen) - set(ALL_CATEGORIES)):
            raise ValueError(f"{name} must be a non-empty subset of {ALL_CATEGORIES}, got {list(chosen)}.")
    if categories is None:
        return [_make_sample(split, seed, i, world) for i in range(num_samples)]
    if set(categories) - set(world):  # a family outside the default world: cycle over the families asked for
        world = tuple(categories)
    kept = [i for i, category in enumerate(world) if category in categories]  # never empty: see the line above
    indices = [len(world) * (n // len(kept)) + kept[n % len(kept)] for n in range(num_samples)]
    return [_make_sample(split, seed, i, world) for i in indices]


def build_toy_dataset(
    split: str = "train",
    num_samples: int = 1000,
    seed: int = 0,
    categories: Sequence[str] | None = None,
    world: Sequence[str] = CATEGORIES,
):
    """The toy world as a `datasets.Dataset` (`categories`, `world`: as in :func:`generate_samples`).

    Columns: `prompt`, `image` (input PIL image, None for generation), `task` ("edit"/"generate"), `category`,
    `reasoning`, `output_image` (PIL), `answer` (JSON: target objects, facts and keywords the reasoning must
    state, cells an edit must keep, combination key).
    """
    import datasets

    rows = [sample.to_row() for sample in generate_samples(split, num_samples, seed, categories, world)]
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "image": datasets.Image(),
            "task": datasets.Value("string"),
            "category": datasets.Value("string"),
            "reasoning": datasets.Value("string"),
            "output_image": datasets.Image(),
            "answer": datasets.Value("string"),
        }
    )
    columns = {name: [row[name] for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features, split=datasets.Split(split))
