"""The toy world's scenes: objects in a 3x3 grid of named slots, drawn as 8x8 code grids or 32x32 images.

A 32x32 image is an 8x8 grid of 4-pixel cells. Objects sit in a 3x3 grid of *slots* (each slot is a 2x2 block of
cells at rows/cols 0, 3, 6, separated by one-cell background lanes), so every position has a name (``"top left"``,
``"middle centre"``, ``"bottom right"``, ...) and images parse back into objects exactly. Shapes, anchored at the
slot's top-left cell: ``dot`` (1x1), ``bar`` (1x2, lying), ``pole`` (2x1, standing), ``square`` (2x2). Colours: the
eight of :data:`~pararl.toy.palette.TOY_COLOURS`.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .palette import COLOUR_CODES, TOY_CELL_SIZE, TOY_COLOURS, TOY_GRID, TOY_PALETTE, toy_image_tokenizer


__all__ = [
    "COL_WORDS",
    "CORNERS",
    "ROW_WORDS",
    "SHAPE_CELLS",
    "SHAPES",
    "SLOT_NAMES",
    "SLOT_STRIDE",
    "ToyObject",
    "parse_scene",
    "render_scene",
    "scene_codes",
]

SHAPES: tuple[str, ...] = ("dot", "bar", "pole", "square")
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
