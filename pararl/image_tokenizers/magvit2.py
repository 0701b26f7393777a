r"""MAGVIT-v2 image tokenizer (lookup-free quantisation), the image tokenizer of MMaDA and MMaDA-Parallel-M.

A convolutional encoder maps an image in [-1, 1] to a `(z_channels, H / 16, W / 16)` latent; lookup-free quantisation
(LFQ) turns every latent vector into `z_channels` bits (the sign of each channel), and the code is the integer those
bits spell, channel 0 being the most significant bit. With 13 channels that is 2**13 = 8192 codes, and a 512x512
image becomes a 32x32 grid. Decoding turns every code back into a vector of +-1 and runs the convolutional decoder.

Module tree and parameter names follow the released `showlab/magvitv2` checkpoint (the `MAGVITv2` class of the
MMaDA / Show-o code, a taming-transformers style VQGAN), so its `pytorch_model.safetensors` loads as it is:

```
encoder.conv_in                                    Conv2d(3, ch, 3)
encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2[,nin_shortcut]}
encoder.down.{i}.attn.{j}.{norm,q,k,v,proj_out}    only at levels whose resolution is in attn_resolutions
encoder.down.{i}.downsample.conv                   every level but the last; stride 2 after a (0, 1, 0, 1) zero pad
encoder.mid.{block_1,attn_1,block_2}
encoder.norm_out, encoder.conv_out, encoder.quant_conv
decoder.post_quant_conv, decoder.conv_in
decoder.mid.{block_1,attn_1,block_2}
decoder.up.{i}.block.{j}, decoder.up.{i}.attn.{j}, decoder.up.{i}.upsample.conv   (every level but level 0)
decoder.norm_out, decoder.conv_out
quantize.embedding, quantize.power_vals            buffers of the released LFQ (optional here, checked if present)
```

Norms are GroupNorm(32 groups, eps 1e-6), activations SiLU, residual blocks have no time embedding. The decoder runs
its levels from the last (lowest resolution) to level 0. The released weights' `config.json` holds no architecture
fields (only the class name), so the defaults of [`MAGVIT2Config`] are the released architecture.
"""

import json
import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..weight_files import check_weight_shapes, find_weight_files, read_state_dict, read_weight_shapes
from .base import check_codes, fit_images


__all__ = ["MAGVIT2Config", "MAGVIT2ImageTokenizer", "MAGVIT2_WEIGHT_NAMES"]

# Weight files `from_pretrained` looks for, in order: the released name first, then common alternatives.
MAGVIT2_WEIGHT_NAMES = (
    "pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
)
# Class names a `config.json` may carry (`_class_name` is what the released diffusers-style mixin writes).
_KNOWN_CLASS_NAMES = ("MAGVITv2", "MAGVIT2ImageTokenizer")
# Buffers the released quantizer stores: they are a fixed function of the bit count, so they are optional here
# and, when present, verified (a different bit order would silently scramble every code).
_LFQ_BUFFER_KEYS = ("quantize.embedding", "quantize.power_vals")


@dataclass
class MAGVIT2Config:
    """Architecture of a MAGVIT-v2 (LFQ) image tokenizer. Defaults: the released `showlab/magvitv2` weights.

    Args:
        image_size (`int`): Pixel size (square) that `encode` feeds the encoder and `decode` returns. 512 for
            MMaDA-Parallel-M (32x32 codes).
        ch (`int`): Base channel width.
        encoder_ch_mult / decoder_ch_mult (`tuple[int, ...]`): Width multiplier of every level; one level more than
            the number of 2x down/up-samplings, so 5 levels = 16x. Both must have the same number of levels.
        encoder_num_res_blocks / decoder_num_res_blocks (`tuple[int, ...]`): Residual blocks per level.
        attn_resolutions (`tuple[int, ...]`): Feature-map sizes, counted down from `resolution`, that get an
            attention block after every residual block (the released `(5,)` matches no level: attention only in
            the middle blocks).
        resolution (`int`): Nominal input size used only to place level attention (released: 256).
        z_channels (`int`): Latent channels = bits per code; the codebook has `2 ** z_channels` codes.
        in_channels / out_channels (`int`): Image channels.
        norm_num_groups (`int`): GroupNorm groups (32 in the release; tiny test models may use fewer).
    """

    image_size: int = 512
    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_num_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    attn_resolutions: tuple[int, ...] = (5,)
    resolution: int = 256
    z_channels: int = 13
    in_channels: int = 3
    out_channels: int = 3
    norm_num_groups: int = 32

    def __post_init__(self):
        for name in ("encoder_ch_mult", "encoder_num_res_blocks", "decoder_ch_mult", "decoder_num_res_blocks"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) == 0 or min(value) < 1:
                raise ValueError(f"MAGVIT2Config.{name} must be a non-empty list of positive ints, got {value}.")
            setattr(self, name, value)
        self.attn_resolutions = tuple(int(v) for v in self.attn_resolutions)
        if len(self.encoder_ch_mult) != len(self.encoder_num_res_blocks):
            raise ValueError("MAGVIT2Config.encoder_num_res_blocks needs one entry per encoder_ch_mult level.")
        if len(self.decoder_ch_mult) != len(self.decoder_num_res_blocks):
            raise ValueError("MAGVIT2Config.decoder_num_res_blocks needs one entry per decoder_ch_mult level.")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError(
                "MAGVIT2Config.encoder_ch_mult and decoder_ch_mult must have the same number of levels (the decoder "
                "upsamples as often as the encoder downsamples)."
            )
        if not 1 <= self.z_channels <= 30:
            raise ValueError(f"MAGVIT2Config.z_channels (bits per code) must be in [1, 30], got {self.z_channels}.")
        if self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"MAGVIT2Config.image_size {self.image_size} must be a multiple of the downsampling factor "
                f"{self.downsample_factor}."
            )
        widths = {self.ch * m for m in self.encoder_ch_mult + self.decoder_ch_mult}
        if any(width % self.norm_num_groups for width in widths):
            raise ValueError(
                f"every channel width {sorted(widths)} must be divisible by norm_num_groups={self.norm_num_groups}."
            )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @classmethod
    def from_dict(cls, values: dict) -> "MAGVIT2Config":
        """Builds a config from a `config.json` dict: `_`-prefixed bookkeeping keys are ignored, unknown keys are
        an error (a field this class does not understand would silently build another architecture)."""
        class_name = values.get("_class_name")
        if class_name is not None and class_name not in _KNOWN_CLASS_NAMES:
            raise ValueError(
                f"config.json describes a {class_name!r}, not a MAGVIT-v2 tokenizer ({' or '.join(_KNOWN_CLASS_NAMES)})."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(k for k in values if not k.startswith("_") and k not in known)
        if unknown:
            raise ValueError(f"unknown MAGVIT-v2 config fields {unknown}; known fields: {sorted(known)}.")
        return cls(**{k: v for k, v in values.items() if k in known})

    def to_dict(self) -> dict:
        values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return {"_class_name": "MAGVIT2ImageTokenizer", **values}


# --------------------------------------------------------------------------------------------------- building blocks
class _ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice plus a skip (1x1 `nin_shortcut` when the width changes)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=1e-6)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=1e-6)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class _AttnBlock(nn.Module):
    """Single-head self-attention over all pixels of a feature map (1x1 convolutions for q, k, v and output)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.norm(x)
        # (B, C, H, W) -> (B, 1, HW, C): one head of width C; SDPA's default scale is C ** -0.5, as released.
        q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
        return x + self.proj_out(out)


class _Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Asymmetric zero padding (right and bottom only), as the released VQGAN: a symmetric pad shifts every code.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: `block` (residual blocks), `attn` (attention after each block, or empty), and a
    resampler registered under `downsample` / `upsample` (the released names)."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def run_blocks(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn) > 0:
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = _ResnetBlock(channels, channels, groups)
        self.attn_1 = _AttnBlock(channels, groups)
        self.block_2 = _ResnetBlock(channels, channels, groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class MAGVIT2Encoder(nn.Module):
    """Image in [-1, 1] `(B, 3, H, W)` -> latent `(B, z_channels, H / f, W / f)` (before quantisation)."""

    def __init__(self, config: MAGVIT2Config):
        super().__init__()
        groups, ch = config.norm_num_groups, config.ch
        levels = len(config.encoder_ch_mult)
        self.conv_in = nn.Conv2d(config.in_channels, ch, 3, padding=1)
        in_mult = (1,) + tuple(config.encoder_ch_mult)
        resolution = config.resolution
        self.down = nn.ModuleList()
        for i in range(levels):
            width_in, width = ch * in_mult[i], ch * config.encoder_ch_mult[i]
            blocks, attns = [], []
            for _ in range(config.encoder_num_res_blocks[i]):
                blocks.append(_ResnetBlock(width_in, width, groups))
                width_in = width
                if resolution in config.attn_resolutions:
                    attns.append(_AttnBlock(width, groups))
            level = _Level(blocks, attns)
            if i != levels - 1:
                level.downsample = _Downsample(width)
                resolution //= 2
            self.down.append(level)
        self.mid = _Middle(width, groups)
        self.norm_out = nn.GroupNorm(groups, width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, config.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level.run_blocks(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        h = self.conv_out(F.silu(self.norm_out(h)))
        return self.quant_conv(h)


class MAGVIT2Decoder(nn.Module):
    """Quantised latent `(B, z_channels, h, w)` of +-1 -> image `(B, 3, h * f, w * f)`, roughly in [-1, 1]."""

    def __init__(self, config: MAGVIT2Config):
        super().__init__()
        groups, ch = config.norm_num_groups, config.ch
        levels = len(config.decoder_ch_mult)
        width = ch * config.decoder_ch_mult[-1]
        resolution = config.resolution // 2 ** (levels - 1)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.conv_in = nn.Conv2d(config.z_channels, width, 3, padding=1)
        self.mid = _Middle(width, groups)
        built: dict[int, _Level] = {}
        # Built from the lowest resolution up (the order the widths chain in); stored so that up[i] is level i.
        for i in reversed(range(levels)):
            width_out = ch * config.decoder_ch_mult[i]
            blocks, attns = [], []
            for _ in range(config.decoder_num_res_blocks[i]):
                blocks.append(_ResnetBlock(width, width_out, groups))
                width = width_out
                if resolution in config.attn_resolutions:
                    attns.append(_AttnBlock(width, groups))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = _Upsample(width)
                resolution *= 2
            built[i] = level
        self.up = nn.ModuleList(built[i] for i in range(levels))
        self.norm_out = nn.GroupNorm(groups, width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, config.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid(h)
        for level in reversed(self.up):
            h = level.run_blocks(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """Sign quantisation: channel c of a latent vector is bit `z_channels - 1 - c` of its code (MSB first)."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        # Not persistent: a fixed function of `bits`. The released checkpoint stores them; the loader checks them.
        self.register_buffer("power_vals", 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long), persistent=False)

    def codebook(self) -> torch.Tensor:
        """`(2 ** bits, bits)` float table of +-1: row i is the vector of code i (the released `embedding`)."""
        codes = torch.arange(2**self.bits, device=self.power_vals.device)
        return ((codes.unsqueeze(1) // self.power_vals) % 2).float() * 2 - 1

    def codes(self, latents: torch.Tensor) -> torch.Tensor:
        """`(B, bits, h, w)` latents -> `LongTensor (B, h, w)` codes."""
        bits = (latents > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1)

    def vectors(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """`LongTensor (B, h, w)` codes -> `(B, bits, h, w)` latents of +-1."""
        bits = (codes.unsqueeze(1) // self.power_vals.view(1, -1, 1, 1)) % 2
        return bits.to(dtype) * 2 - 1


# ------------------------------------------------------------------------------------------------------ tokenizer
class MAGVIT2ImageTokenizer(nn.Module):
    """MAGVIT-v2 image tokenizer implementing pararl's `ImageTokenizer` protocol.

    `encode` takes PIL images (resized to `image_size` squares with bicubic filtering and no crop, as the released
    `image_transform_squash`) or a float tensor `(B, 3, H, W)` in [0, 1] of exactly `image_size`, and returns
    `LongTensor (B, h, w)` codes in `[0, 2 ** z_channels)`. `decode` returns `FloatTensor (B, 3, H, W)` in [0, 1]
    (`(x + 1) / 2`, clamped). Both run without gradients, in the module's dtype, on the module's device, and return
    on the device of their input. It is an `nn.Module`: move it with `.to(device, dtype)`.

    Args:
        config ([`MAGVIT2Config`], *optional*): Architecture; defaults to the released one. Weights are random
            until loaded: use [`MAGVIT2ImageTokenizer.from_pretrained`] for real ones.
        max_batch_size (`int`, defaults to `16`): Images per encoder/decoder call; larger batches are processed in
            chunks (a 512 px image needs ~0.5 GB of activations at full resolution in float32).
    """

    def __init__(self, config: MAGVIT2Config | None = None, max_batch_size: int = 16):
        super().__init__()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        self.max_batch_size = max_batch_size
        self.config = config if config is not None else MAGVIT2Config()
        self.encoder = MAGVIT2Encoder(self.config)
        self.decoder = MAGVIT2Decoder(self.config)
        self.quantize = LookupFreeQuantizer(self.config.z_channels)
        self.codebook_size: int = self.config.codebook_size
        side = self.config.image_size // self.config.downsample_factor
        self.grid_shape: tuple[int, int] = (side, side)
        self.image_size: tuple[int, int] = (self.config.image_size, self.config.image_size)
        self.eval()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(codebook_size={self.codebook_size}, grid_shape={self.grid_shape}, "
            f"image_size={self.image_size})"
        )

    @property
    def _param(self) -> torch.Tensor:
        return self.encoder.conv_in.weight

    # ---------------------------------------------------------------------------------------------------- encode
    def _pixels(self, images) -> torch.Tensor:
        return fit_images(images, self.image_size, _squash_resize)

    @torch.no_grad()
    def encode(self, images) -> torch.Tensor:
        """Images -> `LongTensor (B, h, w)` codes (see the class docstring for the accepted inputs)."""
        pixels = self._pixels(images)
        out_device = pixels.device
        codes = []
        for chunk in pixels.split(self.max_batch_size):
            x = chunk.to(self._param.device, self._param.dtype) * 2 - 1
            codes.append(self.quantize.codes(self.encoder(x)).to(out_device))
        return torch.cat(codes)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """`LongTensor (B, h, w)` codes -> `FloatTensor (B, 3, H, W)` in [0, 1]."""
        codes = check_codes(codes, self.grid_shape, self.codebook_size)
        out_device = codes.device
        images = []
        for chunk in codes.split(self.max_batch_size):
            z = self.quantize.vectors(chunk.to(self._param.device).long(), self._param.dtype)
            images.append(((self.decoder(z).float() + 1) / 2).clamp_(0.0, 1.0).to(out_device))
        return torch.cat(images)

    # ------------------------------------------------------------------------------------------- save and load
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Writes `config.json` and `pytorch_model.safetensors` (the released file name)."""
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "config.json"), "w") as f:
            json.dump(self.config.to_dict(), f, indent=2)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, MAGVIT2_WEIGHT_NAMES[0]), metadata={"format": "pt"})

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        image_size: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        max_batch_size: int = 16,
    ) -> "MAGVIT2ImageTokenizer":
        """Loads a local MAGVIT-v2 folder (e.g. a download of `showlab/magvitv2`).

        Args:
            directory: Folder with `config.json` (released: class name only, so the default architecture) and one
                of `pytorch_model.safetensors` (released), `model.safetensors`, `diffusion_pytorch_model.safetensors`,
                `pytorch_model.bin`, `diffusion_pytorch_model.bin`.
            image_size: Pixel size to encode at / decode to; defaults to the config's (512). The weights are
                resolution-free; MMaDA-Parallel-M uses 512 (32x32 codes).
            device / dtype: Where and in which precision to run.
            max_batch_size: See the class.

        Raises:
            FileNotFoundError: No folder, config or weights file.
            ValueError: An unknown config field, or weights whose keys or shapes do not match the architecture
                (every missing, unexpected and mis-shaped key is listed); never a silent random init.
        """
        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(
                f"MAGVIT-v2 folder {directory!r} does not exist; download `showlab/magvitv2` to a local folder first."
            )
        config_path = os.path.join(directory, "config.json")
        values = {}
        if os.path.isfile(config_path):
            with open(config_path) as f:
                values = json.load(f)
        if image_size is not None:
            values = {**values, "image_size": image_size}
        config = MAGVIT2Config.from_dict(values)
        files = find_weight_files(directory, MAGVIT2_WEIGHT_NAMES)
        tokenizer = cls(config, max_batch_size=max_batch_size)
        expected = {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()}
        quantizer = tokenizer.quantize
        optional = {
            "quantize.embedding": (2**quantizer.bits, quantizer.bits),
            "quantize.power_vals": (quantizer.bits,),
        }
        check_weight_shapes(read_weight_shapes(files), expected, source=directory, optional=optional)
        state = read_state_dict(files)
        _check_lfq_buffers(state, quantizer, directory)
        for key in _LFQ_BUFFER_KEYS:
            state.pop(key, None)
        tokenizer.load_state_dict(state, strict=True)
        if device is not None or dtype is not None:
            tokenizer.to(device=device, dtype=dtype)
        return tokenizer.eval().requires_grad_(False)


def _check_lfq_buffers(state: dict[str, torch.Tensor], quantizer: LookupFreeQuantizer, source: str) -> None:
    """The released quantizer's stored code table must match pararl's bit order (MSB = channel 0)."""
    if "quantize.power_vals" in state:
        stored = state["quantize.power_vals"].long().cpu()
        if not torch.equal(stored, quantizer.power_vals.cpu()):
            raise ValueError(
                f"{source}: quantize.power_vals is {stored.tolist()}, expected {quantizer.power_vals.tolist()} "
                "(channel 0 = most significant bit); these weights use another code order."
            )
    if "quantize.embedding" in state:
        stored = state["quantize.embedding"].float().cpu()
        if not torch.equal(stored, quantizer.codebook().cpu()):
            raise ValueError(
                f"{source}: quantize.embedding is not the +-1 bit table of codes 0..{2**quantizer.bits - 1} with "
                "channel 0 as the most significant bit; these weights use another code order."
            )


def _squash_resize(image: Image.Image, width: int, height: int) -> Image.Image:
    """Resizes without cropping (the released code's `image_transform_squash`), bicubic."""
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)
