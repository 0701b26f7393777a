"""aMUSEd VQ-GAN image tokenizer (MMaDA-Parallel-A / Lumina-DiMOO), through `diffusers`' `VQModel`.

`diffusers` is an optional dependency (`pip install "pararl[amused]"`), imported only when this tokenizer is built.
The released MMaDA-Parallel-A checkpoint keeps its VQ model in the `vqvae/` subfolder (`config.json` +
`diffusion_pytorch_model.safetensors`), loaded exactly as the released inference code does:
`VQModel.from_pretrained(checkpoint, subfolder="vqvae")`. Pixels go in as [0, 1] (the released code uses
`VaeImageProcessor(do_normalize=False)`), codes are the nearest-codebook indices of the encoder latents, and decoding
looks the codes up in the codebook and clamps the output to [0, 1].
"""

import os

import torch
from PIL import Image

from ..weight_files import check_weight_shapes, find_weight_files, read_weight_shapes
from .base import check_codes, fit_images


__all__ = ["AmusedVQImageTokenizer", "import_diffusers"]

_VQ_WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def import_diffusers():
    """Imports `diffusers`, or says how to install it."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError(
            'The aMUSEd VQ image tokenizer needs diffusers: pip install "pararl[amused]" (or pip install diffusers).'
        ) from error
    return diffusers


class AmusedVQImageTokenizer:
    """aMUSEd VQ image tokenizer implementing pararl's `ImageTokenizer` protocol.

    Args:
        vq_model (`diffusers.VQModel`): The VQ model (its weights are used as they are).
        image_size (`int` or `tuple[int, int]`, defaults to `512`): Pixel size `(H, W)` of the images. The code grid
            is `image_size // 2 ** (len(block_out_channels) - 1)` (16x for aMUSEd: 512 px -> 32x32).
        max_batch_size (`int`, defaults to `16`): Images per VQ call; larger batches are processed in chunks.

    `encode` takes PIL images (centre-cropped to the target aspect ratio, then resized with bicubic filtering) or a
    float tensor `(B, 3, H, W)` in [0, 1] of exactly `image_size`; `decode` returns `(B, 3, H, W)` in [0, 1]. Both
    run without gradients on the VQ model's device and dtype and return on their input's device.
    """

    def __init__(self, vq_model, image_size: int | tuple[int, int] = 512, max_batch_size: int = 16):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        self.max_batch_size = max_batch_size
        config = vq_model.config
        self.vq_model = vq_model.eval().requires_grad_(False)
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if len(size) != 2 or size[0] % self.factor or size[1] % self.factor:
            raise ValueError(
                f"image_size {image_size} must be (H, W) multiples of the VQ downsampling factor {self.factor}."
            )
        self.image_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.grid_shape: tuple[int, int] = (self.image_size[0] // self.factor, self.image_size[1] // self.factor)
        self.codebook_size: int = int(config.num_vq_embeddings)
        self.embed_dim: int = int(config.vq_embed_dim or config.latent_channels)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(codebook_size={self.codebook_size}, grid_shape={self.grid_shape}, "
            f"image_size={self.image_size})"
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        subfolder: str | None = None,
        image_size: int | tuple[int, int] = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 16,
    ) -> "AmusedVQImageTokenizer":
        """Loads a local VQ model folder.

        Args:
            path: The MMaDA-Parallel-A checkpoint folder (its `vqvae/` subfolder is used) or a VQ model folder.
            subfolder: Subfolder holding the VQ model; by default `"vqvae"` when `path/vqvae/config.json` exists.
            image_size, device, dtype, max_batch_size: See the class.

        Raises:
            ImportError: diffusers is not installed.
            FileNotFoundError: No such folder or no VQ config / weights in it.
            ValueError: Weights that do not fit the config (every missing, unexpected and mis-shaped key listed).
        """
        diffusers = import_diffusers()
        path = os.fspath(path)
        if subfolder is None and os.path.isfile(os.path.join(path, "vqvae", "config.json")):
            subfolder = "vqvae"
        folder = os.path.join(path, subfolder) if subfolder else path
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(
                f"no VQ model config in {folder!r}; pass the MMaDA-Parallel-A folder (with vqvae/) or the VQ folder."
            )
        # diffusers fills missing weights with random values (with a warning) and ignores extra ones, so the keys are
        # checked here first, against the model its config describes.
        config = diffusers.VQModel.load_config(folder)
        with torch.device("meta"):
            skeleton = diffusers.VQModel.from_config(config)
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        files = find_weight_files(folder, _VQ_WEIGHT_NAMES)
        check_weight_shapes(read_weight_shapes(files), expected, source=folder)
        vq_model = diffusers.VQModel.from_pretrained(folder)
        if device is not None or dtype is not None:
            vq_model = vq_model.to(device=device, dtype=dtype)
        return cls(vq_model, image_size=image_size, max_batch_size=max_batch_size)

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vq_model.parameters())

    def _pixels(self, images) -> torch.Tensor:
        return fit_images(images, self.image_size, _crop_resize, "cropped and resized")

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images -> `LongTensor (B, h, w)` codes."""
        pixels = self._pixels(images)
        out_device = pixels.device
        codes = []
        for chunk in pixels.split(self.max_batch_size):
            latents = self.vq_model.encode(chunk.to(self._param.device, self._param.dtype)).latents
            batch, _, rows, cols = latents.shape
            # VQModel.quantize returns (quantised, loss, (perplexity, one-hot, indices)); indices: flat, row-major.
            indices = self.vq_model.quantize(latents)[2][2]
            codes.append(indices.reshape(batch, rows, cols).long().to(out_device))
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`LongTensor (B, h, w)` codes -> `FloatTensor (B, 3, H, W)` in [0, 1]."""
        codes = check_codes(codes, self.grid_shape, self.codebook_size)
        out_device = codes.device
        images = []
        for chunk in codes.split(self.max_batch_size):
            batch, rows, cols = chunk.shape
            flat = chunk.to(self._param.device).long().reshape(-1)
            shape = (batch, rows, cols, self.embed_dim)
            if self.vq_model.config.lookup_from_codebook:
                # The aMUSEd config: decode() looks the indices up itself (the released call).
                pixels = self.vq_model.decode(flat.view(batch, -1), force_not_quantize=True, shape=shape).sample
            else:
                latents = self.vq_model.quantize.get_codebook_entry(flat, shape)
                pixels = self.vq_model.decode(latents, force_not_quantize=True).sample
            images.append(pixels.float().clamp(0.0, 1.0).to(out_device))
        return torch.cat(images)


def _crop_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre crop to the target aspect ratio, then bicubic resize (a plain resize for same-aspect images)."""
    if image.size == (width, height):
        return image
    src_w, src_h = image.size
    scale = max(width / src_w, height / src_h)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    return image.crop((left, top, left + crop_w, top + crop_h)).resize((width, height), Image.BICUBIC)
