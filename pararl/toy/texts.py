"""The toy world's language: the value tables its templates draw words from, the templates, captions and the
vocabulary derived from them, and how a text is read back: split into words, matched against the templates.

Prompts have at most :data:`MAX_PROMPT_WORDS` words and reasoning at most :data:`MAX_REASONING_WORDS` (punctuation
counts as a word; texts are lower case, space separated, so words == tokenizer tokens).
"""

import re
from collections.abc import Sequence
from functools import cache

from .palette import TOY_COLOURS
from .scenes import COL_WORDS, ROW_WORDS, SHAPES, SLOT_NAMES, ToyObject


__all__ = [
    "DIRECTIONS",
    "KNOWLEDGE",
    "MAX_PROMPT_WORDS",
    "MAX_REASONING_WORDS",
    "MIXES",
    "NUMBER_WORDS",
    "PLACEHOLDER_KINDS",
    "RELATIONS",
    "SHAPE_PLURALS",
    "TEXTS",
    "describe_scene",
    "reasoning_patterns",
    "split_words",
    "template_pattern",
    "world_vocabulary",
]

MAX_PROMPT_WORDS = 20
MAX_REASONING_WORDS = 24
SHAPE_PLURALS: dict[str, str] = {"dot": "dots", "bar": "bars", "pole": "poles", "square": "squares"}
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
    "add_dot_prompt": "add a dot at the {slot} .",
    "draw_dot_prompt": "draw a dot at the {slot} .",
    "draw_open_two_prompt": "draw a {colour} {shape} and a {colour2} {shape2} .",
    "draw_open_two_reasoning": "a {colour} {shape} is drawn at the {slot} and a {colour2} {shape2} at the {slot2} .",
    # captions (for the tiny CLIP's (image, caption) pairs)
    "caption_empty": "an empty picture .",
    "caption_object": "a {colour} {shape} at the {slot}",
    "caption_join": ", and",
}
# Words that only enter through the joining of lists.
_EXTRA_WORDS = (",", "and", ".")


def describe_scene(objects: Sequence[ToyObject]) -> str:
    """A plain caption, e.g. "a red square at the top left , and a blue dot at the middle centre ." (CLIP data)."""
    if not objects:
        return TEXTS["caption_empty"]
    parts = [
        TEXTS["caption_object"].format(colour=o.colour, shape=o.shape, slot=o.slot_name)
        for o in sorted(objects, key=lambda o: o.slot)
    ]
    return f" {TEXTS['caption_join']} ".join(parts) + " ."


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


# ------------------------------------------------------------------------------------------ reading texts
_WORD_RE = re.compile(r"\w+|[^\w\s]+")


def split_words(text: str) -> list[str]:
    """Lower-cased words with punctuation split off, exactly as the toy tokenizer pre-tokenizes."""
    return _WORD_RE.findall(text.lower())


def _alternatives(words) -> str:
    # Longest first so that a regex alternative never stops at a prefix of a longer word.
    return "(?:" + "|".join(re.escape(w) for w in sorted(set(words), key=lambda w: (-len(w), w))) + ")"


_SLOT_RE = _alternatives(SLOT_NAMES)
# Placeholder kinds of the world's texts (a trailing digit in a fragment's name is only there to keep names apart).
PLACEHOLDER_KINDS: dict[str, str] = {
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


def template_pattern(template: str) -> tuple[re.Pattern, list[str]]:
    """A regex for a world text with typed placeholders; group `p{i}` holds the i-th placeholder's words."""
    parts, names, last = [], [], 0
    for i, match in enumerate(_PLACEHOLDER.finditer(template)):
        parts.append(re.escape(template[last : match.start()]))
        name = match.group(1) + match.group(2)
        kind = _ALIASES.get(match.group(1), match.group(1))
        if kind not in PLACEHOLDER_KINDS:
            raise ValueError(f"world text {template!r} has a placeholder {{{name}}} of unknown kind.")
        parts.append(f"(?P<p{i}>{PLACEHOLDER_KINDS[kind]})")
        names.append(name)
        last = match.end()
    parts.append(re.escape(template[last:]))
    # Word boundaries: a match starts and ends at a word edge of the space-joined text.
    return re.compile(r"(?<!\S)" + "".join(parts) + r"(?!\S)"), names


@cache
def reasoning_patterns() -> dict[str, re.Pattern]:
    """The full-text pattern of every reasoning template (text quality's grammar check)."""
    return {key: template_pattern(text)[0] for key, text in TEXTS.items() if "_reasoning" in key}
