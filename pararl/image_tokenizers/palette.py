"""`PaletteImageTokenizer`: the toy world's exact, lossless image tokenizer.

An image is a grid of uniform cells, each painted one colour of a fixed palette, and a cell's code is its colour's
index in that palette.
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .base import ImagesInput, check_codes


__all__ = ["PaletteImageTokenizer"]


class PaletteImageTokenizer:
    """Exact image tokenizer for images made of uniform cells of palette colours.

    An image of `grid_shape = (h, w)` cells, each `cell_size` pixels, is `(h * ch, w * cw)` pixels; the code of a
    cell is the index of its colour in `palette`. `decode(encode(x)) == x` and `encode(decode(c)) == c` exactly.

    Args:
        palette (`Sequence[tuple[int, int, int]]`): Distinct RGB colours (0-255); code `i` is `palette[i]`.
        grid_shape (`tuple[int, int]`): Cells per image `(rows, cols)`.
        cell_size (`int` or `tuple[int, int]`): Pixels per cell, `(height, width)` or one int for square cells.
    """

    def __init__(
        self,
        palette: Sequence[tuple[int, int, int]],
        grid_shape: tuple[int, int] = (8, 8),
        cell_size: int | tuple[int, int] = 4,
    ):
        palette = [tuple(colour) for colour in palette]
        if len(palette) == 0:
            raise ValueError("palette is empty; give at least one RGB colour.")
        for i, colour in enumerate(palette):
            if len(colour) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in colour):
                raise ValueError(f"palette[{i}] = {colour} is not an RGB triple of ints in [0, 255].")
        if len(set(palette)) != len(palette):
            raise ValueError(
                "palette has repeated colours; every code needs its own colour for a lossless round trip."
            )
        cell = (cell_size, cell_size) if isinstance(cell_size, int) else tuple(cell_size)
        grid = tuple(grid_shape)
        if len(grid) != 2 or min(grid) < 1 or len(cell) != 2 or min(cell) < 1:
            raise ValueError(f"grid_shape {grid_shape} and cell_size {cell_size} must be positive (rows, cols) pairs.")

        self.palette: tuple[tuple[int, int, int], ...] = tuple(palette)
        self.codebook_size = len(palette)
        self.grid_shape: tuple[int, int] = (int(grid[0]), int(grid[1]))
        self.cell_size: tuple[int, int] = (int(cell[0]), int(cell[1]))
        self.image_size: tuple[int, int] = (
            self.grid_shape[0] * self.cell_size[0],
            self.grid_shape[1] * self.cell_size[1],
        )
        palette_u8 = torch.tensor(palette, dtype=torch.uint8)
        self._palette_float = palette_u8.float() / 255.0
        # One int per colour (0xRRGGBB), so "which palette entry is this pixel" is one comparison, not three.
        self._palette_keys = _pack_rgb(palette_u8.long())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(codebook_size={self.codebook_size}, grid_shape={self.grid_shape}, "
            f"cell_size={self.cell_size})"
        )

    # ---------------------------------------------------------------------------------------------------- encode
    def _to_uint8(self, images: ImagesInput) -> torch.Tensor:
        """Any accepted input -> `uint8 (B, H, W, 3)`, after checking the pixel size."""
        height, width = self.image_size
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or images.shape[1] != 3:
                raise ValueError(f"image tensor must have shape (B, 3, H, W), got {tuple(images.shape)}.")
            if tuple(images.shape[-2:]) != (height, width):
                raise ValueError(
                    f"images must be {height}x{width} pixels (H x W), got {images.shape[-2]}x{images.shape[-1]}."
                )
            if images.dtype == torch.uint8:
                return images.permute(0, 2, 3, 1)
            if not images.dtype.is_floating_point:
                raise ValueError(f"image tensor must be float in [0, 1] or uint8, got dtype {images.dtype}.")
            low, high = images.min().item(), images.max().item()
            if low < -1e-6 or high > 1 + 1e-6:
                raise ValueError(f"float images must lie in [0, 1], got values in [{low:.4f}, {high:.4f}].")
            pixels = (images.detach().float() * 255.0).round().clamp(0, 255).to(torch.uint8)
            return pixels.permute(0, 2, 3, 1)
        if isinstance(images, Image.Image):
            images = [images]
        if len(images) == 0:
            raise ValueError("images is empty; pass at least one image.")
        for i, image in enumerate(images):
            if not isinstance(image, Image.Image):
                raise ValueError(
                    f"images[{i}] must be a PIL image (or pass one float tensor), got {type(image).__name__}."
                )
            if image.size != (width, height):
                raise ValueError(
                    f"images[{i}] must be {height}x{width} pixels (H x W), got {image.size[1]}x{image.size[0]}."
                )
        return torch.from_numpy(np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images]))

    def encode(self, images: ImagesInput, unknown_code: int | None = None) -> torch.Tensor:
        """Reads the colour of every cell.

        Args:
            images: PIL images (any mode; converted to RGB), or a float tensor `(B, 3, H, W)` in [0, 1]
                (a uint8 tensor in [0, 255] also works).
            unknown_code: The code of a uniform cell whose colour is outside the palette (e.g. -1 for the grey of a
                still-masked cell in a decoded partial image). `None` (default): such a cell is an error.

        Returns:
            `LongTensor (B, h, w)` of codes (on the input tensor's device, CPU for PIL images).

        Raises:
            ValueError: wrong pixel size, a cell that is not one uniform colour, or (without `unknown_code`) a
                colour outside the palette.
        """
        pixels = self._to_uint8(images)
        batch = pixels.shape[0]
        (rows, cols), (cell_h, cell_w) = self.grid_shape, self.cell_size
        # (B, H, W, 3) -> (B, rows, cols, cell_h * cell_w, 3): one row of pixels per cell.
        cells = pixels.reshape(batch, rows, cell_h, cols, cell_w, 3).permute(0, 1, 3, 2, 4, 5)
        cells = _pack_rgb(cells.reshape(batch, rows, cols, cell_h * cell_w, 3).long())
        colour = cells[..., 0]
        uniform = (cells == colour.unsqueeze(-1)).all(dim=-1)
        if not bool(uniform.all()):
            b, r, c = (int(v) for v in torch.nonzero(~uniform)[0])
            raise ValueError(
                f"image {b}, cell (row {r}, col {c}) is not one uniform colour; palette images need every "
                f"{cell_h}x{cell_w} cell painted in a single palette colour."
            )
        matches = colour.unsqueeze(-1) == self._palette_keys.to(colour.device)
        known = matches.any(dim=-1)
        codes = matches.to(torch.uint8).argmax(dim=-1).long()
        if unknown_code is not None:
            return codes.masked_fill(~known, unknown_code)
        if not bool(known.all()):
            b, r, c = (int(v) for v in torch.nonzero(~known)[0])
            rgb = _unpack_rgb(int(colour[b, r, c]))
            raise ValueError(f"image {b}, cell (row {r}, col {c}) has colour {rgb}, which is not in the palette.")
        return codes

    # ---------------------------------------------------------------------------------------------------- decode
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Paints every cell its palette colour.

        Args:
            codes: `LongTensor (B, h, w)` of codes in `[0, codebook_size)`.

        Returns:
            `FloatTensor (B, 3, H, W)` in [0, 1] on the codes' device.
        """
        codes = check_codes(codes, self.grid_shape, self.codebook_size)
        cell_h, cell_w = self.cell_size
        colours = self._palette_float.to(codes.device)[codes.long()]  # (B, h, w, 3)
        pixels = colours.permute(0, 3, 1, 2)
        return pixels.repeat_interleave(cell_h, dim=2).repeat_interleave(cell_w, dim=3).contiguous()


def _pack_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """`(..., 3)` integer RGB -> `(...)` ints 0xRRGGBB."""
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def _unpack_rgb(key: int) -> tuple[int, int, int]:
    return ((key >> 16) & 255, (key >> 8) & 255, key & 255)
