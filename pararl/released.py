r"""The released MMaDA-Parallel checkpoints' processors and text tokenizer, from local folders.

[`load_released_processor`] builds the matching [`~pararl.processing.ParallelProcessor`] (text tokenizer, preset,
MAGVIT-v2 or aMUSEd VQ); [`mmada_parallel_m_processor`] and [`mmada_parallel_a_processor`] are its argument-free
forms for the example scripts' `--processor module:function` option, reading the folders from `PARARL_MODEL_PATH`
and `PARARL_IMAGE_TOKENIZER_PATH`. The model itself loads with `MaskedDiffusionLM.from_pretrained(folder)`
([`load_released_checkpoint`], re-exported here). This module sits above both `pararl.models` and
`pararl.processing`; neither imports it.
"""

import os

import torch

from .image_tokenizers import AmusedVQImageTokenizer, MAGVIT2Config, MAGVIT2ImageTokenizer
from .models import load_released_checkpoint
from .models.conversion import read_json
from .processing import MMADA_PARALLEL_A, MMADA_PARALLEL_M, ParallelProcessor


__all__ = [
    "load_released_checkpoint",
    "load_released_processor",
    "load_text_tokenizer",
    "mmada_parallel_a_processor",
    "mmada_parallel_m_processor",
]


def load_text_tokenizer(path: str | os.PathLike, preset=None, **kwargs):
    """Loads the LLaDA-family text tokenizer of a released checkpoint folder with `AutoTokenizer`, without remote code.

    Args:
        path: Local checkpoint (or tokenizer) folder with `tokenizer.json` / `tokenizer_config.json`.
        preset ([`~pararl.processing.SequencePreset`], *optional*): When given, the vocabulary must hold the
            preset's special ids, and a tokenizer without a mask token gets the token at `preset.mask_token_id`
            as its `mask_token` (LLaDA's `<|mdm_mask|>`).
        kwargs: Passed to `AutoTokenizer.from_pretrained` (`trust_remote_code` is always `False`).

    Raises:
        FileNotFoundError: `path` is not a local folder.
        ValueError: The tokenizer needs remote code, or it does not cover the preset's special ids.
    """
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{path!r} is not a local folder; download the checkpoint (its tokenizer files) first."
        )
    kwargs.pop("trust_remote_code", None)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False, **kwargs)
    except ValueError as error:
        if "trust_remote_code" in str(error):
            raise ValueError(
                f"the tokenizer in {path!r} needs custom code; pararl loads tokenizers without trust_remote_code. "
                "Use the checkpoint's tokenizer.json (a fast tokenizer) instead."
            ) from error
        raise
    if preset is not None:
        size = len(tokenizer)
        needed = max(preset.sentinel_token_ids.values())
        if needed >= size:
            raise ValueError(
                f"tokenizer in {path!r} has {size} tokens but preset {preset.name!r} uses special ids up to {needed}; "
                "use the tokenizer of the checkpoint the preset describes."
            )
        if tokenizer.mask_token_id is None:
            tokenizer.mask_token = tokenizer.convert_ids_to_tokens(preset.mask_token_id)
    return tokenizer


# ---------------------------------------------------------------------------------------------------- processors
def load_released_processor(
    model_path: str | os.PathLike,
    image_tokenizer_path: str | os.PathLike | None = None,
    preset=None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    **processor_kwargs,
):
    """The [`~pararl.processing.ParallelProcessor`] of a released MMaDA-Parallel checkpoint, from local folders only.

    - MMaDA-Parallel-M (`config.json` `model_type` `"mmada"`): `MMADA_PARALLEL_M`, the checkpoint's text tokenizer
      and MAGVIT-v2 from `image_tokenizer_path` (a local copy of `showlab/magvitv2`; required).
    - MMaDA-Parallel-A (a folder with a `vqvae/` subfolder): `MMADA_PARALLEL_A`, the checkpoint's text tokenizer and
      its aMUSEd VQ model (`image_tokenizer_path`, else `model_path/vqvae`; needs `pip install "pararl[amused]"`).

    The image size is the preset's grid times the VQ model's downsampling (512 px for both releases).

    Args:
        model_path: The checkpoint folder (tokenizer files and config.json).
        image_tokenizer_path: The VQ model folder, see above.
        preset ([`~pararl.processing.SequencePreset`], *optional*): Force a preset instead of detecting it.
        device / dtype: Where the image tokenizer runs (encoding input images, decoding intermediate images).
        processor_kwargs: Passed to `ParallelProcessor` (`truncate_prompt`, ...).

    Raises:
        ValueError: The variant cannot be told, or M is asked for without `image_tokenizer_path`.
    """
    model_path = os.fspath(model_path)
    if preset is None:
        config_path = os.path.join(model_path, "config.json")
        model_type = read_json(config_path).get("model_type") if os.path.isfile(config_path) else None
        if os.path.isfile(os.path.join(model_path, "vqvae", "config.json")):
            preset = MMADA_PARALLEL_A
        elif model_type == "mmada":
            preset = MMADA_PARALLEL_M
        else:
            raise ValueError(
                f"cannot tell which released model {model_path!r} is (config model_type {model_type!r}, no vqvae/ "
                "folder); pass preset=MMADA_PARALLEL_M or preset=MMADA_PARALLEL_A."
            )
    rows = preset.image_grid[0]
    if preset.image_row_end_token_id is not None:  # Lumina-DiMOO family: aMUSEd VQ
        vq_path = os.fspath(image_tokenizer_path) if image_tokenizer_path is not None else model_path
        vq_folder = os.path.join(vq_path, "vqvae") if os.path.isdir(os.path.join(vq_path, "vqvae")) else vq_path
        factor = 2 ** (len(read_json(os.path.join(vq_folder, "config.json"))["block_out_channels"]) - 1)
        image_tokenizer = AmusedVQImageTokenizer.from_pretrained(
            vq_folder, image_size=rows * factor, device=device, dtype=dtype
        )
    else:  # MMaDA family: MAGVIT-v2
        if image_tokenizer_path is None:
            raise ValueError(
                f"preset {preset.name!r} needs the MAGVIT-v2 weights: download showlab/magvitv2 and pass "
                "image_tokenizer_path=/local/magvitv2 (or set PARARL_IMAGE_TOKENIZER_PATH)."
            )
        config_path = os.path.join(os.fspath(image_tokenizer_path), "config.json")
        values = read_json(config_path) if os.path.isfile(config_path) else {}
        factor = MAGVIT2Config.from_dict(values).downsample_factor
        image_tokenizer = MAGVIT2ImageTokenizer.from_pretrained(
            image_tokenizer_path, image_size=rows * factor, device=device, dtype=dtype
        )
    tokenizer = load_text_tokenizer(model_path, preset=preset)
    return ParallelProcessor(tokenizer, image_tokenizer, preset, **processor_kwargs)


def _env_path(name: str, required: bool) -> str | None:
    value = os.environ.get(name)
    if required and not value:
        raise ValueError(f"set {name} to the local folder (or call load_released_processor with explicit paths).")
    return value or None


def _image_tokenizer_device() -> str:
    # The example scripts run one process per GPU; each process's image tokenizer goes to its own GPU.
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"


def mmada_parallel_m_processor():
    """`load_released_processor` for MMaDA-Parallel-M with the folders in `PARARL_MODEL_PATH` (checkpoint) and
    `PARARL_IMAGE_TOKENIZER_PATH` (showlab/magvitv2), on this process's GPU: for `--processor
    pararl.released:mmada_parallel_m_processor`."""
    return load_released_processor(
        _env_path("PARARL_MODEL_PATH", True),
        _env_path("PARARL_IMAGE_TOKENIZER_PATH", True),
        preset=MMADA_PARALLEL_M,
        device=_image_tokenizer_device(),
    )


def mmada_parallel_a_processor():
    """`load_released_processor` for MMaDA-Parallel-A with the checkpoint folder in `PARARL_MODEL_PATH` (its VQ model
    from `vqvae/`, or from `PARARL_IMAGE_TOKENIZER_PATH` when set), on this process's GPU: for `--processor
    pararl.released:mmada_parallel_a_processor`."""
    return load_released_processor(
        _env_path("PARARL_MODEL_PATH", True),
        _env_path("PARARL_IMAGE_TOKENIZER_PATH", False),
        preset=MMADA_PARALLEL_A,
        device=_image_tokenizer_device(),
    )
