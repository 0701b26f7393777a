"""A procedural world of thinking-aware editing and generation tasks, small enough to learn on a CPU.

**Scenes.** A 32x32 image is an 8x8 grid of 4-pixel cells. Objects sit in a 3x3 grid of *slots* (each slot is a
2x2 block of cells at rows/cols 0, 3, 6, separated by one-cell background lanes), so every position has a name
(``"top left"``, ``"middle centre"``, ``"bottom right"``, ...) and images parse back into objects exactly. Shapes,
anchored at the slot's top-left cell: ``dot`` (1x1), ``bar`` (1x2, lying), ``pole`` (2x1, standing), ``square``
(2x2). Colours: the eight of :data:`~pararl.toy.palette.TOY_COLOURS`. In an input scene no two objects share a
slot or a (colour, shape) pair, so ``"the red square"`` always names one object.

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

**Held-out rule.** Each sample has a combination key ``(category, shape, colour)``: the shape of the object the
instruction acts on (as named in the instruction) and the colour that object has in the target image (for
removals, its input colour). A key is held out (test only) iff
``(category_index + shape_index + colour_index) % 4 == 0``: per category and colour exactly one of the four shapes
is held out, and per category and shape two of the eight colours, so every shape and every colour still occurs in
training within every category, and every template (even those with a fixed colour or shape, like "melt" or
"grow") has train and test keys. Train and test never share a key, so the test split measures compositional
generalisation ("a green square" via "grass" when only grass-green dots, bars and poles were trained). Samples are
deterministic in (split, seed, index).

**Budgets.** Prompts have at most :data:`MAX_PROMPT_WORDS` words and reasoning at most :data:`MAX_REASONING_WORDS`
(punctuation counts as a word; texts are lower case, space separated, so words == tokenizer tokens).
"""

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .palette import COLOUR_CODES, TOY_CELL_SIZE, TOY_COLOURS, TOY_GRID, TOY_PALETTE


__all__ = [
    "CATEGORIES",
    "KNOWLEDGE",
    "MAX_PROMPT_WORDS",
    "MAX_REASONING_WORDS",
    "ORIGINAL_CATEGORIES",
    "SHAPES",
    "SLOT_NAMES",
    "ToyObject",
    "ToySample",
    "build_toy_dataset",
    "combination_key",
    "describe_scene",
    "generate_samples",
    "is_held_out",
    "parse_scene",
    "render_scene",
    "scene_codes",
    "world_vocabulary",
]

MAX_PROMPT_WORDS = 20
MAX_REASONING_WORDS = 24

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
SHAPES: tuple[str, ...] = ("dot", "bar", "pole", "square")
SHAPE_PLURALS: dict[str, str] = {"dot": "dots", "bar": "bars", "pole": "poles", "square": "squares"}
# Cells of each shape relative to its slot's top-left cell.
SHAPE_CELLS: dict[str, tuple[tuple[int, int], ...]] = {
    "dot": ((0, 0),),
    "bar": ((0, 0), (0, 1)),
    "pole": ((0, 0), (1, 0)),
    "square": ((0, 0), (0, 1), (1, 0), (1, 1)),
}
_CELLS_TO_SHAPE = {frozenset(cells): shape for shape, cells in SHAPE_CELLS.items()}

ROW_WORDS: tuple[str, ...] = ("top", "middle", "bottom")
COL_WORDS: tuple[str, ...] = ("left", "centre", "right")
SLOT_NAMES: tuple[str, ...] = tuple(f"{row} {col}" for row in ROW_WORDS for col in COL_WORDS)
SLOT_STRIDE = 3  # slot k's top-left cell is (3 * (k // 3), 3 * (k % 3)); rows/cols 2 and 5 stay background
CORNERS: tuple[int, ...] = (0, 2, 6, 8)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

# World knowledge: source word -> colour. Two or three sources per colour.
KNOWLEDGE: dict[str, str] = {
    "fire": "red",
    "tomato": "red",
    "cherry": "red",
    "carrot": "orange",
    "pumpkin": "orange",
    "banana": "yellow",
    "lemon": "yellow",
    "sun": "yellow",
    "grass": "green",
    "leaf": "green",
    "frog": "green",
    "sky": "blue",
    "sea": "blue",
    "grape": "purple",
    "plum": "purple",
    "snow": "white",
    "milk": "white",
    "cloud": "white",
    "coal": "black",
    "night": "black",
    "crow": "black",
}
# Paint mixing (causal): unordered pair -> result.
MIXES: dict[frozenset, str] = {
    frozenset(("red", "yellow")): "orange",
    frozenset(("yellow", "blue")): "green",
    frozenset(("red", "blue")): "purple",
}
# Relation word -> (phrase, slot-row delta, slot-col delta).
RELATIONS: dict[str, tuple[str, int, int]] = {
    "left": ("to the left of", 0, -1),
    "right": ("to the right of", 0, 1),
    "above": ("above", -1, 0),
    "below": ("below", 1, 0),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}

# Every fixed text of the world, so the tokenizer's vocabulary is derived from them, never listed by hand.
# Placeholders in braces are filled with words from the value tables above.
TEXTS: dict[str, str] = {
    # knowledge
    "recolour_prompt": "paint the {colour} {shape} the colour of {source} .",
    "recolour_reasoning": "{source} is {answer} so the {colour} {shape} becomes {answer} .",
    "add_known_prompt": "add a {shape} the colour of {source} at the {slot} .",
    "add_known_reasoning": "{source} is {answer} so a {answer} {shape} goes at the {slot} .",
    "remove_known_prompt": "remove the {shape} that has the colour of {source} .",
    "remove_known_reasoning": "{source} is {answer} so the {answer} {shape} is removed .",
    # spatial
    "move_next_prompt": "move the {colour} {shape} {relation} the {ref_colour} {ref_shape} .",
    "move_next_reasoning": "the {ref_colour} {ref_shape} is at the {ref_slot} so the {colour} {shape} moves to the {slot} .",
    "add_next_prompt": "add a {colour} {shape} {relation} the {ref_colour} {ref_shape} .",
    "add_next_reasoning": "the {ref_colour} {ref_shape} is at the {ref_slot} so the {colour} {shape} goes at the {slot} .",
    "swap_prompt": "swap the places of the {colour} {shape} and the {ref_colour} {ref_shape} .",
    "swap_reasoning": "the {colour} {shape} goes to the {slot} and the {ref_colour} {ref_shape} goes to the {ref_slot} .",
    "paint_relative_prompt": "paint the object {relation} the {ref_colour} {ref_shape} {answer} .",
    "paint_relative_reasoning": "the object {relation} the {ref_colour} {ref_shape} is the {colour} {shape} so it becomes {answer} .",
    # temporal
    "fall_prompt": "show the {colour} {shape} after it falls .",
    "fall_reasoning": "things fall down so the {colour} {shape} lands at the {slot} .",
    "melt_prompt": "the white {shape} is ice . show it after it melts .",
    "melt_reasoning": "ice melts into water so the white {shape} becomes a blue dot .",
    "steps_prompt": "the {colour} {shape} moves one step {direction} every second . show it after {count} {seconds} .",
    "steps_reasoning": "{count} {seconds} means {count} {steps} {direction} so the {colour} {shape} ends at the {slot} .",
    "grow_prompt": "show the {colour} dot after it grows .",
    "grow_reasoning": "growing makes it bigger so the {colour} dot becomes a {colour} square .",
    # causal
    "mix_prompt": "pour {paint} paint on the {colour} {shape} .",
    "mix_reasoning": "{paint} and {colour} make {answer} so the {colour} {shape} becomes {answer} .",
    "burn_prompt": "set the {colour} {shape} on fire .",
    "burn_reasoning": "fire burns it to black ash so the {colour} {shape} becomes black .",
    "freeze_prompt": "the blue {shape} is water and it gets very cold .",
    "freeze_reasoning": "cold water freezes into ice so the blue {shape} becomes white .",
    "push_prompt": "push the {colour} {shape} {direction} until it stops .",
    "push_reasoning": "the {colour} {shape} slides {direction} until it stops at the {slot} .",
    # general
    "remove_colour_prompt": "remove every {colour} object .",
    "remove_colour_reasoning_one": "there is one {colour} object so it is removed .",
    "remove_colour_reasoning_many": "there are {count} {colour} objects so they are removed .",
    "replace_prompt": "replace the {colour} {shape} with a {new_shape} of the same colour .",
    "replace_reasoning": "the {shape} is {colour} so a {colour} {new_shape} takes its place at the {slot} .",
    "corners_prompt": "add a {colour} dot to every empty corner .",
    "corners_reasoning_one": "the only empty corner is the {slots} so one {colour} dot is added .",
    "corners_reasoning_many": "the empty corners are {slots} so {count} {colour} dots are added .",
    # generation
    "draw_known_prompt": "draw a {shape} the colour of {source} at the {slot} .",
    "draw_known_reasoning": "{source} is {answer} so a {answer} {shape} is drawn at the {slot} .",
    "draw_relative_prompt": "draw a {ref_colour} {ref_shape} at the {ref_slot} and a {colour} {shape} {relation} it .",
    "draw_relative_reasoning": "{relation} the {ref_slot} is the {slot} so the {colour} {shape} goes there .",
    "draw_count_prompt": "draw {count} {colour} {shapes} in the {row} row from the left .",
    "draw_count_reasoning": "{count} {colour} {shapes} go at {slots} .",
    # open-ended (the slot is the policy's choice)
    "add_open_prompt": "add a {colour} {shape} .",
    "add_open_reasoning": "a {colour} {shape} goes at the {slot} .",
    "draw_open_prompt": "draw a {colour} {shape} .",
    "draw_open_reasoning": "a {colour} {shape} is drawn at the {slot} .",
    "draw_open_two_prompt": "draw a {colour} {shape} and a {colour2} {shape2} .",
    "draw_open_two_reasoning": "a {colour} {shape} is drawn at the {slot} and a {colour2} {shape2} at the {slot2} .",
    # captions (for the tiny CLIP's (image, caption) pairs)
    "caption_empty": "an empty picture .",
    "caption_object": "a {colour} {shape} at the {slot}",
    "caption_join": ", and",
}
# Words that only enter through the joining of lists.
_EXTRA_WORDS = (",", "and", ".")


# ------------------------------------------------------------------------------------------------------ scenes
@dataclass(frozen=True)
class ToyObject:
    """One object: a shape of one colour in one of the 9 slots (0 = top left, row-major, 8 = bottom right)."""

    shape: str
    colour: str
    slot: int

    def __post_init__(self):
        if self.shape not in SHAPE_CELLS:
            raise ValueError(f"shape {self.shape!r} is not one of {SHAPES}.")
        if self.colour not in COLOUR_CODES:
            raise ValueError(f"colour {self.colour!r} is not one of {TOY_COLOURS}.")
        if not 0 <= self.slot < len(SLOT_NAMES):
            raise ValueError(f"slot {self.slot} must be in [0, {len(SLOT_NAMES)}).")

    @property
    def slot_name(self) -> str:
        return SLOT_NAMES[self.slot]

    @property
    def cells(self) -> tuple[tuple[int, int], ...]:
        """Image cells `(row, col)` on the 8x8 grid that the object paints."""
        top, left = SLOT_STRIDE * (self.slot // 3), SLOT_STRIDE * (self.slot % 3)
        return tuple((top + dr, left + dc) for dr, dc in SHAPE_CELLS[self.shape])

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "slot": self.slot_name}

    @classmethod
    def from_dict(cls, data: dict) -> "ToyObject":
        slot = data["slot"]
        return cls(data["shape"], data["colour"], SLOT_NAMES.index(slot) if isinstance(slot, str) else int(slot))


def scene_codes(objects: Sequence[ToyObject]) -> torch.Tensor:
    """The 8x8 code grid (`LongTensor`) of a scene; later objects paint over earlier ones."""
    codes = torch.zeros(TOY_GRID, dtype=torch.long)
    for obj in objects:
        for row, col in obj.cells:
            codes[row, col] = COLOUR_CODES[obj.colour]
    return codes


_PALETTE_U8 = np.asarray(TOY_PALETTE, dtype=np.uint8)


def render_scene(objects: Sequence[ToyObject]) -> Image.Image:
    """Draws a scene as a 32x32 RGB image (identical to `toy_image_tokenizer().decode(scene_codes(objects))`)."""
    pixels = _PALETTE_U8[scene_codes(objects).numpy()]
    pixels = pixels.repeat(TOY_CELL_SIZE, axis=0).repeat(TOY_CELL_SIZE, axis=1)
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")


def parse_scene(scene: torch.Tensor | np.ndarray | Image.Image, strict: bool = True) -> list[ToyObject]:
    """Reads the objects back from a code grid `(8, 8)` or a 32x32 image.

    Args:
        scene: Code grid or an image of the toy palette. Codes `< 0` mean unknown (a still-masked cell); a slot
            with an unknown cell is not read (strict mode raises).
        strict (`bool`, defaults to `True`): Raise on anything that is not a valid scene (paint in the lanes
            between slots, a slot whose cells form no shape or mix colours). With `False`, such slots are skipped
            and lanes ignored, which is what an evaluator of model outputs wants.

    Returns:
        The objects, ordered by slot.
    """
    if isinstance(scene, Image.Image):
        from .palette import toy_image_tokenizer

        codes = toy_image_tokenizer().encode([scene])[0]
    else:
        codes = torch.as_tensor(scene)
        if codes.dim() == 3 and codes.shape[0] == 1:
            codes = codes[0]
    if tuple(codes.shape) != TOY_GRID:
        raise ValueError(f"scene codes must have shape {TOY_GRID}, got {tuple(codes.shape)}.")
    grid = codes.long().tolist()
    if strict:
        for i in range(TOY_GRID[0]):
            for j in range(TOY_GRID[1]):
                in_lane = i % SLOT_STRIDE == 2 or j % SLOT_STRIDE == 2
                if in_lane and grid[i][j] != 0:
                    raise ValueError(f"cell (row {i}, col {j}) lies between slots but is not background.")
    objects = []
    for slot in range(len(SLOT_NAMES)):
        top, left = SLOT_STRIDE * (slot // 3), SLOT_STRIDE * (slot % 3)
        painted = {(dr, dc): grid[top + dr][left + dc] for dr in range(2) for dc in range(2)}
        painted = {cell: code for cell, code in painted.items() if code != 0}
        if not painted:
            continue
        colours = set(painted.values())
        shape = _CELLS_TO_SHAPE.get(frozenset(painted))
        if len(colours) != 1 or shape is None or min(colours) < 1 or max(colours) > len(TOY_COLOURS):
            if strict:
                raise ValueError(f"slot {SLOT_NAMES[slot]!r} holds no valid object (cells {painted}).")
            continue
        objects.append(ToyObject(shape, TOY_COLOURS[colours.pop() - 1], slot))
    return objects


def describe_scene(objects: Sequence[ToyObject]) -> str:
    """A plain caption, e.g. "a red square at the top left , and a blue dot at the middle centre ." (CLIP data)."""
    if not objects:
        return TEXTS["caption_empty"]
    parts = [
        TEXTS["caption_object"].format(colour=o.colour, shape=o.shape, slot=o.slot_name)
        for o in sorted(objects, key=lambda o: o.slot)
    ]
    return f" {TEXTS['caption_join']} ".join(parts) + " ."


# ----------------------------------------------------------------------------------------------------- samples
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
    return (CATEGORIES.index(category) + SHAPES.index(shape) + TOY_COLOURS.index(colour)) % 4 == 0


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


def _sample(category, template, input_objects, output_objects, focus, facts, keywords, **words) -> ToySample:
    prompt = TEXTS[f"{template}_prompt"].format(**words)
    reasoning = TEXTS[words.pop("_reasoning_key", f"{template}_reasoning")].format(**words)
    return ToySample(
        category=category,
        template=template,
        prompt=prompt,
        reasoning=reasoning,
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
        "knowledge", "recolour", scene, _replace(scene, target, new), (target.shape, answer),
        {"colour": answer}, [answer],
        colour=target.colour, shape=target.shape, source=_source_for(rng, answer), answer=answer,
    )  # fmt: skip


def _add_known(rng):
    new = _one_obj(rng)
    scene = _random_scene(rng, rng.randint(0, 3), [new.slot], [(new.shape, new.colour)])
    return _sample(
        "knowledge", "add_known", scene, [*scene, new], (new.shape, new.colour),
        {"colour": new.colour, "slot": new.slot_name}, [new.colour, new.slot_name],
        shape=new.shape, source=_source_for(rng, new.colour), answer=new.colour, slot=new.slot_name,
    )  # fmt: skip


def _remove_known(rng):
    shape = rng.choice(SHAPES)
    colours = rng.sample(TOY_COLOURS, rng.randint(2, 3))
    slots = rng.sample(range(9), len(colours))
    same_shape = [ToyObject(shape, c, s) for c, s in zip(colours, slots)]
    target = same_shape[0]
    scene = _scene_with(rng, same_shape, 1)
    return _sample(
        "knowledge", "remove_known", scene, _replace(scene, target, None), (shape, target.colour),
        {"colour": target.colour, "removed": target.to_dict()}, [target.colour],
        shape=shape, source=_source_for(rng, target.colour), answer=target.colour,
    )  # fmt: skip


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
        "spatial", "move_next", scene, _replace(scene, mover, moved), (mover.shape, mover.colour),
        {"slot": moved.slot_name}, [moved.slot_name],
        colour=mover.colour, shape=mover.shape, relation=phrase, ref_colour=ref.colour, ref_shape=ref.shape,
        ref_slot=ref.slot_name, slot=moved.slot_name,
    )  # fmt: skip


def _add_next(rng):
    ref, new = _random_scene(rng, 2)
    phrase, d_row, d_col = RELATIONS[rng.choice(list(RELATIONS))]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None:
        return None
    new = ToyObject(new.shape, new.colour, slot)
    scene = [o for o in _scene_with(rng, [ref, new], 2) if o != new]
    return _sample(
        "spatial", "add_next", scene, [*scene, new], (new.shape, new.colour),
        {"slot": new.slot_name}, [new.slot_name],
        colour=new.colour, shape=new.shape, relation=phrase, ref_colour=ref.colour, ref_shape=ref.shape,
        ref_slot=ref.slot_name, slot=new.slot_name,
    )  # fmt: skip


def _swap(rng):
    first, second = _random_scene(rng, 2)
    scene = _scene_with(rng, [first, second], 2)
    a, b = ToyObject(first.shape, first.colour, second.slot), ToyObject(second.shape, second.colour, first.slot)
    output = [a if o == first else b if o == second else o for o in scene]
    return _sample(
        "spatial", "swap", scene, output, (first.shape, first.colour),
        {"slot": a.slot_name, "other_slot": b.slot_name}, [a.slot_name, b.slot_name],
        colour=first.colour, shape=first.shape, ref_colour=second.colour, ref_shape=second.shape,
        slot=a.slot_name, ref_slot=b.slot_name,
    )  # fmt: skip


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
        "spatial", "paint_relative", scene, _replace(scene, target, new), (target.shape, answer),
        {"colour": answer, "object": target.to_dict()}, [target.colour, target.shape, answer],
        relation=phrase, ref_colour=ref.colour, ref_shape=ref.shape, colour=target.colour, shape=target.shape,
        answer=answer,
    )  # fmt: skip


# temporal ----------------------------------------------------------------------------------------------------
def _fall(rng):
    obj = _one_obj(rng)
    below = [s for s in range(obj.slot + 3, 9, 3)]
    if not below:
        return None
    scene = _scene_with(rng, [obj], 3, avoid_slots=below)
    landed = ToyObject(obj.shape, obj.colour, below[-1])
    return _sample(
        "temporal", "fall", scene, _replace(scene, obj, landed), (obj.shape, obj.colour),
        {"slot": landed.slot_name}, [landed.slot_name],
        colour=obj.colour, shape=obj.shape, slot=landed.slot_name,
    )  # fmt: skip


def _melt(rng):
    ice = _one_obj(rng, colours=["white"])
    scene = _scene_with(rng, [ice], 3)
    water = ToyObject("dot", "blue", ice.slot)
    if ("dot", "blue") in _pairs(scene):
        return None
    return _sample(
        "temporal", "melt", scene, _replace(scene, ice, water), (ice.shape, "blue"),
        {"colour": "blue", "shape": "dot"}, ["blue", "dot"],
        shape=ice.shape,
    )  # fmt: skip


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
        "temporal", "steps", scene, _replace(scene, obj, moved), (obj.shape, obj.colour),
        {"slot": moved.slot_name}, [moved.slot_name],
        colour=obj.colour, shape=obj.shape, direction=direction, count=NUMBER_WORDS[count],
        seconds="seconds" if plural else "second", steps="steps" if plural else "step", slot=moved.slot_name,
    )  # fmt: skip


def _grow(rng):
    dot = _one_obj(rng, shapes=["dot"])
    scene = _scene_with(rng, [dot], 3)
    if ("square", dot.colour) in _pairs(scene):
        return None
    return _sample(
        "temporal", "grow", scene, _replace(scene, dot, ToyObject("square", dot.colour, dot.slot)),
        ("dot", dot.colour), {"shape": "square"}, ["square"],
        colour=dot.colour,
    )  # fmt: skip


# causal ------------------------------------------------------------------------------------------------------
def _mix(rng):
    pair, answer = rng.choice(list(MIXES.items()))
    paint, colour = rng.sample(sorted(pair), 2)
    obj = _one_obj(rng, colours=[colour])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, answer) in _pairs(scene):
        return None
    return _sample(
        "causal", "mix", scene, _replace(scene, obj, ToyObject(obj.shape, answer, obj.slot)), (obj.shape, answer),
        {"colour": answer}, [answer],
        paint=paint, colour=colour, shape=obj.shape, answer=answer,
    )  # fmt: skip


def _burn(rng):
    obj = _one_obj(rng, colours=[c for c in TOY_COLOURS if c != "black"])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, "black") in _pairs(scene):
        return None
    return _sample(
        "causal", "burn", scene, _replace(scene, obj, ToyObject(obj.shape, "black", obj.slot)), (obj.shape, "black"),
        {"colour": "black"}, ["black"],
        colour=obj.colour, shape=obj.shape,
    )  # fmt: skip


def _freeze(rng):
    obj = _one_obj(rng, colours=["blue"])
    scene = _scene_with(rng, [obj], 3)
    if (obj.shape, "white") in _pairs(scene):
        return None
    return _sample(
        "causal", "freeze", scene, _replace(scene, obj, ToyObject(obj.shape, "white", obj.slot)), (obj.shape, "white"),
        {"colour": "white"}, ["white"],
        shape=obj.shape,
    )  # fmt: skip


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
        "causal", "push", scene, _replace(scene, obj, moved), (obj.shape, obj.colour),
        {"slot": moved.slot_name}, [moved.slot_name],
        colour=obj.colour, shape=obj.shape, direction=direction, slot=moved.slot_name,
    )  # fmt: skip


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
        "general", "remove_colour", scene, others, (first.shape, colour),
        {"colour": colour, "count": count}, [NUMBER_WORDS[count], colour],
        colour=colour, count=NUMBER_WORDS[count],
        _reasoning_key="remove_colour_reasoning_one" if count == 1 else "remove_colour_reasoning_many",
    )  # fmt: skip


def _replace_shape(rng):
    obj = _one_obj(rng)
    new_shape = rng.choice([s for s in SHAPES if s != obj.shape])
    scene = _scene_with(rng, [obj], 3)
    if (new_shape, obj.colour) in _pairs(scene):
        return None
    new = ToyObject(new_shape, obj.colour, obj.slot)
    return _sample(
        "general", "replace", scene, _replace(scene, obj, new), (new_shape, obj.colour),
        {"colour": obj.colour, "shape": new_shape, "slot": new.slot_name}, [obj.colour, new_shape, new.slot_name],
        colour=obj.colour, shape=obj.shape, new_shape=new_shape, slot=new.slot_name,
    )  # fmt: skip


def _corners(rng):
    colour = rng.choice(TOY_COLOURS)
    scene = _random_scene(rng, rng.randint(0, 4), colours=[c for c in TOY_COLOURS if c != colour])
    empty = [s for s in CORNERS if s not in {o.slot for o in scene}]
    if not empty:
        return None
    added = [ToyObject("dot", colour, s) for s in empty]
    return _sample(
        "general", "corners", scene, [*scene, *added], ("dot", colour),
        {"colour": colour, "count": len(empty), "slots": [SLOT_NAMES[s] for s in empty]},
        [NUMBER_WORDS[len(empty)], colour] + [SLOT_NAMES[s] for s in empty],
        colour=colour, count=NUMBER_WORDS[len(empty)], slots=_list_slots(empty),
        _reasoning_key="corners_reasoning_one" if len(empty) == 1 else "corners_reasoning_many",
    )  # fmt: skip


# generation --------------------------------------------------------------------------------------------------
def _draw_known(rng):
    obj = _one_obj(rng)
    return _sample(
        "generation", "draw_known", None, [obj], (obj.shape, obj.colour),
        {"colour": obj.colour, "slot": obj.slot_name}, [obj.colour, obj.slot_name],
        shape=obj.shape, source=_source_for(rng, obj.colour), answer=obj.colour, slot=obj.slot_name,
    )  # fmt: skip


def _draw_relative(rng):
    ref, obj = _random_scene(rng, 2)
    phrase, d_row, d_col = RELATIONS[rng.choice(list(RELATIONS))]
    slot = _slot_shift(ref.slot, d_row, d_col)
    if slot is None:
        return None
    obj = ToyObject(obj.shape, obj.colour, slot)
    return _sample(
        "generation", "draw_relative", None, [ref, obj], (obj.shape, obj.colour),
        {"slot": obj.slot_name}, [obj.slot_name],
        ref_colour=ref.colour, ref_shape=ref.shape, ref_slot=ref.slot_name, colour=obj.colour, shape=obj.shape,
        relation=phrase, slot=obj.slot_name,
    )  # fmt: skip


def _draw_count(rng):
    shape, colour = rng.choice(SHAPES), rng.choice(TOY_COLOURS)
    count, row = rng.randint(2, 3), rng.randrange(3)
    slots = [3 * row + col for col in range(count)]
    objects = [ToyObject(shape, colour, s) for s in slots]
    return _sample(
        "generation", "draw_count", None, objects, (shape, colour),
        {"count": count, "slots": [SLOT_NAMES[s] for s in slots]}, [NUMBER_WORDS[count]] + [SLOT_NAMES[s] for s in slots],
        count=NUMBER_WORDS[count], colour=colour, shapes=SHAPE_PLURALS[shape], row=ROW_WORDS[row], slots=_list_slots(slots),
    )  # fmt: skip


# open-ended -------------------------------------------------------------------------------------------------
def _open_sample(category, template, scene, placed, others, fixed_words) -> ToySample:
    """An open-ended sample: `placed` are the objects at this sample's chosen slots, `others` every valid choice of
    slots (this one included); the reasoning names the chosen slots in `{slot}`, `{slot2}`."""

    def words_for(objects):
        return {**fixed_words, **{f"slot{'' if i == 0 else i + 1}": o.slot_name for i, o in enumerate(objects)}}

    def keywords_for(objects):
        return [word for o in objects for word in (f"{o.colour} {o.shape}", o.slot_name)]

    sample = _sample(
        category, template, scene, [*(scene or []), *placed], (placed[0].shape, placed[0].colour),
        {"open": "slot"}, keywords_for(placed), **words_for(placed),
    )  # fmt: skip
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


BUILDERS: dict[str, tuple[Builder, ...]] = {
    "spatial": (_move_next, _add_next, _swap, _paint_relative),
    "temporal": (_fall, _melt, _steps, _grow),
    "causal": (_mix, _burn, _freeze, _push),
    "knowledge": (_recolour, _add_known, _remove_known),
    "general": (_remove_colour, _replace_shape, _corners),
    "generation": (_draw_known, _draw_relative, _draw_count),
    "open_edit": (_add_open,),
    "open_generation": (_draw_open, _draw_open_two),
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
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if num_samples < 0:
        raise ValueError(f"num_samples must be >= 0, got {num_samples}.")
    world = tuple(world)
    for name, chosen in (("world", world), ("categories", categories)):
        if chosen is not None and (not chosen or set(chosen) - set(CATEGORIES)):
            raise ValueError(f"{name} must be a non-empty subset of {CATEGORIES}, got {list(chosen)}.")
    if categories is None:
        return [_make_sample(split, seed, i, world) for i in range(num_samples)]
    kept = [i for i, category in enumerate(world) if category in categories]
    if not kept:
        raise ValueError(f"categories {list(categories)} are not in the world {list(world)}.")
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


# ---------------------------------------------------------------------------------------------------- vocabulary
def world_vocabulary() -> list[str]:
    """Every word an instruction, reasoning or caption of the world can contain, sorted."""
    words = set(_EXTRA_WORDS)
    for text in TEXTS.values():
        words.update(re.sub(r"\{[a-z_]+\d*\}", " ", text).split())
    words.update(TOY_COLOURS)
    words.update(SHAPES)
    words.update(SHAPE_PLURALS.values())
    words.update(KNOWLEDGE)
    words.update(ROW_WORDS)
    words.update(COL_WORDS)
    words.update(NUMBER_WORDS[1:])
    words.update(DIRECTIONS)
    for phrase, _, _ in RELATIONS.values():
        words.update(phrase.split())
    words.update(("second", "seconds", "step", "steps"))
    return sorted(words)
