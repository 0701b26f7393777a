"""Image tokenizers: images <-> grids of discrete codes, behind one protocol (`ImageTokenizer`).

A leaf package: it imports nothing of pararl but the weight-file helpers (`pararl.weight_files`).
`PaletteImageTokenizer` is the toy world's exact tokenizer, `MAGVIT2ImageTokenizer` MMaDA-Parallel-M's VQ model and
`AmusedVQImageTokenizer` MMaDA-Parallel-A's (through the optional `diffusers`, imported only when one is built).
"""

from .amused import AmusedVQImageTokenizer
from .base import ImageTokenizer, check_codes, fit_images, images_to_tensor, tensor_to_images
from .magvit2 import MAGVIT2Config, MAGVIT2ImageTokenizer
from .palette import PaletteImageTokenizer


__all__ = [
    "AmusedVQImageTokenizer",
    "ImageTokenizer",
    "MAGVIT2Config",
    "MAGVIT2ImageTokenizer",
    "PaletteImageTokenizer",
    "check_codes",
    "fit_images",
    "images_to_tensor",
    "tensor_to_images",
]
