"""The toy world's colours and image geometry.

Images are 8x8 grids of 4x4-pixel cells (32x32 RGB). Code 0 is the background; codes 1-8 are the eight object
colours, in the order of :data:`TOY_COLOURS`. The background is a sand tone so that it differs from every object
colour *and* from the mid-grey (0.5) that the processor paints over still-masked cells.
"""

from pararl.image_tokenizers import PaletteImageTokenizer


__all__ = [
    "BACKGROUND_RGB",
    "COLOUR_CODES",
    "TOY_CELL_SIZE",
    "TOY_COLOUR_RGB",
    "TOY_COLOURS",
    "TOY_GRID",
    "TOY_PALETTE",
    "toy_image_tokenizer",
]

TOY_GRID: tuple[int, int] = (8, 8)
TOY_CELL_SIZE: int = 4

BACKGROUND_RGB: tuple[int, int, int] = (214, 199, 164)
TOY_COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 135, 20),
    "yellow": (250, 215, 30),
    "green": (40, 165, 60),
    "blue": (35, 90, 225),
    "purple": (135, 55, 185),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
TOY_COLOURS: tuple[str, ...] = tuple(TOY_COLOUR_RGB)
# Background first: code 0 is "nothing here", so an all-zero code grid is an empty scene.
TOY_PALETTE: tuple[tuple[int, int, int], ...] = (BACKGROUND_RGB, *TOY_COLOUR_RGB.values())
COLOUR_CODES: dict[str, int] = {name: code for code, name in enumerate(TOY_COLOURS, start=1)}


def toy_image_tokenizer() -> PaletteImageTokenizer:
    """The exact image tokenizer of the toy world: 8x8 cells of 4 px, codebook = :data:`TOY_PALETTE` (9 codes)."""
    return PaletteImageTokenizer(TOY_PALETTE, grid_shape=TOY_GRID, cell_size=TOY_CELL_SIZE)
