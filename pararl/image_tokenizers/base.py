"""The image-tokenizer protocol and the pixel helpers every tokenizer shares.

A parallel multimodal model only ever sees image *codes* (token ids ``image_token_offset + code``); the image
tokenizer is the VQ model that maps pixels to a ``(h, w)`` grid of codes and back. Real checkpoints use a learned
VQ (MAGVIT-v2 for MMaDA-Parallel-M, aMUSEd's VQ-GAN for -A); the toy world uses the exact
:class:`~pararl.image_tokenizers.PaletteImageTokenizer`.
"""

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image


__all__ = ["ImageTokenizer", "check_codes", "fit_images", "images_to_tensor", "tensor_to_images"]

ImagesInput = Sequence[Image.Image] | Image.Image | torch.Tensor


@runtime_checkable
class ImageTokenizer(Protocol):
    """What pararl needs from an image (VQ) tokenizer.

    Attributes:
        codebook_size (`int`): Number of distinct codes; codes are `0 .. codebook_size - 1`.
        grid_shape (`tuple[int, int]`): Code grid `(h, w)` of one image.
        image_size (`tuple[int, int]`): Pixel size `(H, W)` of one image.
    """

    codebook_size: int
    grid_shape: tuple[int, int]
    image_size: tuple[int, int]

    def encode(self, images: ImagesInput) -> torch.Tensor:
        """PIL images or a float tensor `(B, 3, H, W)` in [0, 1] -> `LongTensor (B, h, w)` of codes."""
        ...

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`LongTensor (B, h, w)` of codes -> `FloatTensor (B, 3, H, W)` in [0, 1]."""
        ...


def images_to_tensor(images: Sequence[Image.Image] | Image.Image) -> torch.Tensor:
    """Stacks PIL images (converted to RGB) into a `FloatTensor (B, 3, H, W)` in [0, 1]."""
    if isinstance(images, Image.Image):
        images = [images]
    if len(images) == 0:
        raise ValueError("images is empty; pass at least one PIL image.")
    arrays = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL image, got {type(image).__name__}.")
        arrays.append(np.asarray(image.convert("RGB"), dtype=np.uint8))
    sizes = {array.shape[:2] for array in arrays}
    if len(sizes) > 1:
        raise ValueError(f"images have different sizes (H, W): {sorted(sizes)}; resize them to one size first.")
    pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return pixels.float().div_(255.0)


def fit_images(
    images: Sequence[Image.Image] | Image.Image | torch.Tensor,
    image_size: tuple[int, int],
    fit: Callable[[Image.Image, int, int], Image.Image],
    fit_description: str = "resized",
) -> torch.Tensor:
    """Input of a learned VQ encoder -> `FloatTensor (B, 3, H, W)` in [0, 1].

    Tensors must already have the encoder's size (uint8 or float in [0, 1]); PIL images are converted to RGB and
    brought to `image_size = (H, W)` by `fit(image, width, height)`.
    """
    height, width = image_size
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensor must have shape (B, 3, H, W), got {tuple(images.shape)}.")
        if tuple(images.shape[-2:]) != (height, width):
            raise ValueError(
                f"images must be {height}x{width} pixels (H x W), got {images.shape[-2]}x{images.shape[-1]}; "
                f"pass PIL images to have them {fit_description}."
            )
        if images.dtype == torch.uint8:
            return images.float() / 255.0
        if not images.dtype.is_floating_point:
            raise ValueError(f"image tensor must be float in [0, 1] or uint8, got dtype {images.dtype}.")
        return images
    if isinstance(images, Image.Image):
        images = [images]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty list of PIL images or a (B, 3, H, W) tensor.")
    fitted = []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"images[{i}] must be a PIL image, got {type(image).__name__}.")
        fitted.append(fit(image.convert("RGB"), width, height))
    return images_to_tensor(fitted)


def check_codes(codes: torch.Tensor, grid_shape: tuple[int, int], codebook_size: int) -> torch.Tensor:
    """Validates a batch of code grids for `decode`: shape `(B, h, w)`, integer dtype, values in `[0, K)`.

    Raises a ValueError naming the first bad value and where it is.
    """
    codes = torch.as_tensor(codes)
    if codes.dim() != 3 or tuple(codes.shape[1:]) != tuple(grid_shape):
        raise ValueError(f"codes must have shape (B, {grid_shape[0]}, {grid_shape[1]}), got {tuple(codes.shape)}.")
    if codes.dtype.is_floating_point or codes.dtype == torch.bool:
        raise ValueError(f"codes must be an integer tensor, got dtype {codes.dtype}.")
    if codes.numel() > 0:
        low, high = int(codes.min()), int(codes.max())
        if low < 0 or high >= codebook_size:
            bad = torch.nonzero((codes < 0) | (codes >= codebook_size))[0].tolist()
            raise ValueError(
                f"codes must lie in [0, {codebook_size}) (the codebook size); got {int(codes[tuple(bad)])} "
                f"at (image {bad[0]}, row {bad[1]}, col {bad[2]})."
            )
    return codes


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """Turns a float tensor `(B, 3, H, W)` (or `(3, H, W)`) in [0, 1] into a list of RGB PIL images."""
    if pixels.dim() == 3:
        pixels = pixels.unsqueeze(0)
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise ValueError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}.")
    array = (pixels.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    array = array.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(item), mode="RGB") for item in array]
