"""Old home of the image tokenizers, kept for `pararl.toy.palette`: import from `pararl.image_tokenizers`."""

from ..image_tokenizers import (  # noqa: F401
    ImageTokenizer,
    PaletteImageTokenizer,
    check_codes,
    fit_images,
    images_to_tensor,
    tensor_to_images,
)
