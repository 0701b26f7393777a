"""The toy world's tiny CLIP: its open_clip custom config, the loader and writer of its weights, and its encoders.

Images enter the model exactly as [`~pararl.rewards.CLIPAlignmentReward`] feeds them: `(B, 3, 32, 32)` pixels in
[0, 1] (the toy processor's decoding, unknown cells grey), normalised with the model's mean/std, no resize. The
shipped weights (fp16 safetensors) live in `pararl/toy/assets/clip/` together with the config, an open_clip
`local-dir:` config and `metrics.json` (held-out retrieval accuracy); `python -m pararl.toy.build_assets --only clip`
rebuilds them deterministically (the training is in :mod:`pararl.toy.clip_training`).
"""

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from ..rewards.clip import quiet_open_clip
from .palette import TOY_CELL_SIZE, TOY_PALETTE


__all__ = [
    "TOY_CLIP_DIR",
    "TOY_CLIP_NAME",
    "clip_scores",
    "codes_to_pixels",
    "create_toy_clip",
    "encode_images",
    "encode_texts",
    "load_toy_clip",
    "register_toy_clip",
    "save_toy_clip",
]

TOY_CLIP_NAME = "pararl-toy-clip"
TOY_CLIP_DIR = Path(__file__).parent / "assets" / "clip"
CONFIG_FILE = f"{TOY_CLIP_NAME}.json"  # open_clip names a registered config after its file
WEIGHTS_FILE = "open_clip_model.safetensors"
LOCAL_DIR_CONFIG_FILE = "open_clip_config.json"
METRICS_FILE = "metrics.json"

_GREY = 0.5  # what the processor paints over unknown cells


# ------------------------------------------------------------------------------------------------ model plumbing
def register_toy_clip(config_path: str | Path | None = None) -> str:
    """Registers the tiny CLIP's open_clip config (idempotent) and returns its model name.

    After this, `open_clip.create_model(TOY_CLIP_NAME)` and `open_clip.get_tokenizer(TOY_CLIP_NAME)` work, and so
    does `CLIPAlignmentReward(model_name=TOY_CLIP_NAME, pretrained=TOY_CLIP_DIR / "open_clip_model.safetensors")`.
    """
    import open_clip

    path = Path(config_path) if config_path is not None else TOY_CLIP_DIR / CONFIG_FILE
    if path.stem != TOY_CLIP_NAME:
        raise ValueError(
            f"the config file must be named {CONFIG_FILE} (open_clip names models after files), got {path}."
        )
    if not path.is_file():
        raise ValueError(
            f"no tiny CLIP config at {path}; rebuild it with `python -m pararl.toy.build_assets --only clip`."
        )
    if open_clip.get_model_config(TOY_CLIP_NAME) != json.loads(path.read_text()):
        open_clip.add_model_config(path)
    return TOY_CLIP_NAME


def create_toy_clip(config_path: str | Path | None = None) -> torch.nn.Module:
    """A randomly initialised tiny CLIP (training starts here; use :func:`load_toy_clip` for the shipped one)."""
    import open_clip

    name = register_toy_clip(config_path)
    with quiet_open_clip():
        return open_clip.create_model(name, load_weights=False)


def load_toy_clip(device: torch.device | str | None = None, directory: str | Path | None = None):
    """Loads the shipped tiny CLIP offline: `(model, tokenizer)`, the model in eval mode, frozen, float32.

    Args:
        device: Where to put the model (default: CPU).
        directory: A folder written by :func:`save_toy_clip` (default: the package's `assets/clip`).
    """
    import open_clip
    from safetensors.torch import load_file

    directory = Path(directory) if directory is not None else TOY_CLIP_DIR
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise ValueError(
            f"no tiny CLIP weights at {weights}; rebuild them with `python -m pararl.toy.build_assets --only clip`."
        )
    model = create_toy_clip(directory / CONFIG_FILE)
    state = {key: value.float() for key, value in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    model = model.to(device if device is not None else "cpu").eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(TOY_CLIP_NAME)


def save_toy_clip(model: torch.nn.Module, directory: str | Path, metrics: dict | None = None) -> Path:
    """Writes the config, an open_clip `local-dir:` config, fp16 safetensors weights and (optionally) metrics."""
    import open_clip
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = open_clip.get_model_config(TOY_CLIP_NAME)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    local_dir = {"model_cfg": config, "preprocess_cfg": _preprocess_cfg(model)}
    (directory / LOCAL_DIR_CONFIG_FILE).write_text(json.dumps(local_dir, indent=2) + "\n")
    state = {key: value.detach().to("cpu", torch.float16).contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": "pt", "model": TOY_CLIP_NAME})
    if metrics is not None:
        (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    return directory


def _preprocess_cfg(model: torch.nn.Module) -> dict:
    import open_clip

    cfg = dict(open_clip.get_model_preprocess_cfg(model))
    cfg.setdefault("mean", list(open_clip.OPENAI_DATASET_MEAN))
    cfg.setdefault("std", list(open_clip.OPENAI_DATASET_STD))
    return {key: list(value) if isinstance(value, tuple) else value for key, value in cfg.items()}


# ------------------------------------------------------------------------------------------------------- encoding
_PALETTE_GREY = torch.tensor([*TOY_PALETTE, (0, 0, 0)], dtype=torch.float32) / 255.0
_PALETTE_GREY[-1] = _GREY


def codes_to_pixels(codes: torch.Tensor) -> torch.Tensor:
    """Code grids `(B, 8, 8)` (-1 = unknown) -> pixels `(B, 3, 32, 32)` in [0, 1], unknown cells mid-grey.

    Equal to `toy_processor().decode_images(codes)`, without building a processor.
    """
    codes = torch.as_tensor(codes).long()
    index = torch.where(codes < 0, len(TOY_PALETTE), codes).clamp(max=len(TOY_PALETTE))
    pixels = _PALETTE_GREY.to(codes.device)[index]  # (B, 8, 8, 3)
    pixels = pixels.repeat_interleave(TOY_CELL_SIZE, dim=1).repeat_interleave(TOY_CELL_SIZE, dim=2)
    return pixels.permute(0, 3, 1, 2).contiguous()


def encode_images(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Unit-norm image embeddings of pixels `(B, 3, 32, 32)` in [0, 1] (normalised as the CLIP reward does)."""
    cfg = _preprocess_cfg(model)
    device = next(model.parameters()).device
    mean = torch.tensor(cfg["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"], device=device).view(1, 3, 1, 1)
    return model.encode_image((pixels.to(device) - mean) / std, normalize=True)


def encode_texts(model: torch.nn.Module, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm text embeddings (texts over the context length are truncated, as CLIP does)."""
    device = next(model.parameters()).device
    return model.encode_text(tokenizer(list(texts)).to(device), normalize=True)


@torch.inference_mode()
def clip_scores(model, tokenizer, texts: Sequence[str], codes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each text with its code grid: `(B,)` (what the alignment reward computes, raw)."""
    return (encode_texts(model, tokenizer, texts) * encode_images(model, codes_to_pixels(codes))).sum(-1)
