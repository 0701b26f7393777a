r"""Loading released checkpoints from local folders: LLaDA-8B, MMaDA-8B and MMaDA-Parallel-M / -A, and their tokenizer.

The released models ship their own modelling code (`trust_remote_code`) and a `config.json` in LLaDA's field names
(`model_type` `"llada"` or `"mmada"`, `d_model`, `n_layers`, `n_heads`, `n_kv_heads`, `mlp_hidden_size`,
`mlp_ratio`, `embedding_size`, `vocab_size`, `rope_theta`, `max_sequence_length`, `mask_token_id`, `weight_tying`,
`include_bias`, plus switches such as `block_type` and `layer_norm_type`). Their weights use the parameter names of
[`~pararl.models.MaskedDiffusionLM`] (`model.transformer.wte.weight`, `model.transformer.blocks.{i}.q_proj.weight`,
...), so no key is renamed: [`config_from_released`] maps the config onto [`~pararl.models.MaskedDiffusionConfig`],
refusing every architecture switch pararl does not implement, and [`load_released_checkpoint`] checks every key
and shape of the (sharded) safetensors against the model *before* loading. A missing, unexpected or mis-shaped
key is a `ValueError` that lists them; nothing is ever initialised at random.

`MaskedDiffusionLM.from_pretrained(folder)` sends released folders here, so the usual entry point works for both
released and pararl-saved checkpoints, without `trust_remote_code`.

[`load_released_processor`] builds the matching [`~pararl.processing.ParallelProcessor`] (text tokenizer, preset,
MAGVIT-v2 or aMUSEd VQ) from the same local folders; [`mmada_parallel_m_processor`] and
[`mmada_parallel_a_processor`] are its argument-free forms for the example scripts' `--processor module:function`
option, reading the folders from `PARARL_MODEL_PATH` and `PARARL_IMAGE_TOKENIZER_PATH`.

The weight-file helpers ([`find_weight_files`], [`read_weight_shapes`], [`read_state_dict`],
[`check_weight_shapes`]) are shared with the image tokenizers' loaders.
"""

import json
import os
from collections.abc import Iterable, Mapping

import torch

from .configuration import MaskedDiffusionConfig


__all__ = [
    "RELEASED_MODEL_TYPES",
    "check_pararl_checkpoint",
    "check_resume_checkpoint",
    "check_weight_shapes",
    "config_from_released",
    "expected_weight_shapes",
    "find_weight_files",
    "is_released_checkpoint",
    "load_released_checkpoint",
    "load_released_processor",
    "load_text_tokenizer",
    "mmada_parallel_a_processor",
    "mmada_parallel_m_processor",
    "read_state_dict",
    "read_weight_shapes",
]

RELEASED_MODEL_TYPES = ("llada", "mmada")
# Weight files of a transformer checkpoint, in order of preference; each may also come sharded with an index
# (`model.safetensors.index.json`).
MODEL_WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin")
# How many keys an error message lists per category before it says "and N more".
_MAX_LISTED = 20

# The released `ModelConfig` defaults (LLaDA / OLMo code) for the fields pararl reads: a field missing from a
# `config.json` means what the released code would have built, not what LLaDA-8B happens to use.
_RELEASED_DEFAULTS = {
    "block_type": "sequential",
    "activation_type": "swiglu",
    "layer_norm_type": "default",
    "layer_norm_with_affine": True,
    "bias_for_layer_norm": None,
    "attention_layer_norm": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "rope": False,
    "alibi": False,
    "scale_logits": False,
    "input_emb_norm": False,
    "block_group_size": 1,
    "multi_query_attention": None,
    "n_kv_heads": None,
    "mlp_ratio": 4,
    "mlp_hidden_size": None,
    "max_sequence_length": 1024,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-5,
    "weight_tying": True,
    "vocab_size": None,
    "embedding_size": 50304,
    "mask_token_id": 50256,
    "pad_token_id": 50256,
    "eos_token_id": 50256,
    "init_std": 0.02,
}
# Switches pararl's model implements in exactly one setting (LLaDA-8B's): `field -> (accepted values, meaning)`.
_SUPPORTED_SWITCHES = {
    "block_type": (("llama",), "separate q/k/v projections and a SwiGLU MLP with up_proj (LLaDA's llama block)"),
    "activation_type": (("silu",), "SiLU gate of the llama block's SwiGLU MLP"),
    "layer_norm_type": (("rms",), "RMSNorm"),
    "layer_norm_with_affine": ((True,), "norms with a weight"),
    "attention_layer_norm": ((False,), "no q/k norms"),
    "rope": ((True,), "rotary position embeddings"),
    "alibi": ((False,), "no ALiBi"),
    "scale_logits": ((False,), "unscaled logits"),
    "input_emb_norm": ((False,), "no embedding norm"),
    "block_group_size": ((1,), "blocks stored as model.transformer.blocks.N"),
}


# ------------------------------------------------------------------------------------------------- weight files
def find_weight_files(directory: str | os.PathLike, names: Iterable[str] = MODEL_WEIGHT_NAMES) -> list[str]:
    """The weight files of a checkpoint folder: the first of `names` found, as a single file or as the shards its
    `<name>.index.json` lists (safetensors are preferred to pickles by the order of `names`).

    Raises:
        FileNotFoundError: None of the files exists, or an index names a shard that does not.
    """
    directory = os.fspath(directory)
    names = tuple(names)
    for name in names:
        index_path = os.path.join(directory, name + ".index.json")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index_path} has no 'weight_map' (key -> shard file); the index is broken.")
            shards = sorted(set(weight_map.values()))
            absent = [shard for shard in shards if not os.path.isfile(os.path.join(directory, shard))]
            if absent:
                raise FileNotFoundError(f"{index_path} lists shard files that are not in {directory!r}: {absent}.")
            return [os.path.join(directory, shard) for shard in shards]
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return [path]
    raise FileNotFoundError(
        f"no weights in {directory!r}: looked for {', '.join(names)} (or their sharded `.index.json` form)."
    )


def _index_map(files: list[str]) -> dict[str, str] | None:
    """The `weight_map` of the index next to sharded `files`, if there is one."""
    directory = os.path.dirname(files[0])
    for name in os.listdir(directory):
        if name.endswith(".index.json"):
            with open(os.path.join(directory, name)) as f:
                weight_map = json.load(f).get("weight_map") or {}
            if {os.path.join(directory, v) for v in weight_map.values()} == set(files):
                return weight_map
    return None


def _read_file(path: str, shapes_only: bool) -> dict:
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                if shapes_only:
                    return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
                return {key: f.get_tensor(key) for key in f.keys()}
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"cannot read the weight file {path} ({error}); it is probably truncated or corrupt (an interrupted "
                "download or save): copy or save it again."
            ) from error
    # Pickled state dicts: weights only (no code execution), memory-mapped so that reading shapes is cheap (old,
    # non-zip pickles cannot be memory-mapped and are read whole).
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(
            f"cannot read the weight file {path} ({error}); it is probably truncated or corrupt: copy or save it again."
        ) from error
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if shapes_only:
        return {key: tuple(value.shape) for key, value in state.items()}
    return dict(state)


def _read_all(files: list[str], shapes_only: bool) -> dict:
    found: dict = {}
    owner: dict[str, str] = {}
    for path in files:
        for key, value in _read_file(path, shapes_only).items():
            if key in found:
                raise ValueError(f"weight {key!r} appears in two files: {owner[key]} and {path}.")
            found[key], owner[key] = value, path
    if len(files) > 1:
        weight_map = _index_map(files)
        if weight_map is not None:
            directory = os.path.dirname(files[0])
            wrong = sorted(k for k, shard in weight_map.items() if owner.get(k) != os.path.join(directory, shard))
            if wrong:
                raise ValueError(
                    f"the index in {directory!r} maps {len(wrong)} key(s) to shards that do not hold them: "
                    f"{_listed(wrong)}."
                )
    return found


def read_weight_shapes(files: list[str]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of every tensor in `files`, read from the safetensors headers (no tensor is loaded)."""
    return _read_all(files, shapes_only=True)


def read_state_dict(files: list[str]) -> dict[str, torch.Tensor]:
    """All tensors of `files` in one state dict (safetensors, or pickles loaded with `weights_only=True`)."""
    return _read_all(files, shapes_only=False)


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return f"[{shown}]" + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")


def check_weight_shapes(
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    source: str,
    optional: Mapping[str, tuple[int, ...]] | None = None,
    hint: str = "Nothing was loaded; check that the folder holds the checkpoint its config.json describes.",
) -> None:
    """Compares a checkpoint's `{key: shape}` with the model's; raises one `ValueError` listing every missing key,
    unexpected key and wrong shape, then `hint`. Keys in `optional` may be absent but must have that shape when
    present."""
    optional = dict(optional or {})
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected and k not in optional)
    wanted = {**optional, **expected}
    wrong = sorted(
        f"{k}: checkpoint {tuple(found[k])} vs model {tuple(wanted[k])}"
        for k in found
        if k in wanted and tuple(found[k]) != tuple(wanted[k])
    )
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) {_listed(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) {_listed(unexpected)}")
    if wrong:
        parts.append(f"{len(wrong)} wrong shape(s) {_listed(wrong)}")
    raise ValueError(f"the weights in {source} do not fit the model: {'; '.join(parts)}. {hint}")


# ------------------------------------------------------------------------------------------- released LLaDA configs
def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def is_released_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder whose `config.json` has a released `model_type` (`"llada"`, `"mmada"`)."""
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return False
    try:
        return _read_json(config_path).get("model_type") in RELEASED_MODEL_TYPES
    except (OSError, ValueError):
        return False


def config_from_released(
    config: Mapping, generation_config: Mapping | None = None, **overrides
) -> MaskedDiffusionConfig:
    """Maps a released LLaDA / MMaDA `config.json` dict onto [`MaskedDiffusionConfig`].

    Field mapping: `d_model`, `n_layers`, `n_heads`, `max_sequence_length`, `rope_theta`, `rms_norm_eps`,
    `weight_tying`, `include_bias`, `mask_token_id`, `pad_token_id`, `eos_token_id`, `embedding_size` carry over;
    `n_kv_heads` is the effective count (`None` -> `n_heads`, or 1 with `multi_query_attention`);
    `mlp_hidden_size` defaults to `mlp_ratio * d_model`; `init_std` becomes `initializer_range`; `bos_token_id`
    comes from the config or else from `generation_config` (LLaDA keeps it only there). `vocab_size` is the number
    of usable ids (text plus image codes): the largest of `vocab_size`, MMaDA's `new_vocab_size` and Lumina-DiMOO's
    `text_vocab_size + codebook_size` that are present, at most `embedding_size` (and `embedding_size` when none is). Fields missing from the dict take the released code's `ModelConfig` defaults.
    Dropout fields are ignored (pararl's model has no dropout; the released models use 0).

    Args:
        config: The parsed `config.json`.
        generation_config: The parsed `generation_config.json`, if any.
        overrides: Final values for any [`MaskedDiffusionConfig`] field.

    Raises:
        ValueError: `model_type` is not a released one, a required size is missing, or an architecture switch has
            a value pararl does not implement (all such fields are listed).
    """
    model_type = config.get("model_type")
    if model_type not in RELEASED_MODEL_TYPES:
        raise ValueError(
            f"config model_type is {model_type!r}; released LLaDA-family checkpoints have one of "
            f"{list(RELEASED_MODEL_TYPES)}. A pararl-saved model loads with MaskedDiffusionLM.from_pretrained."
        )

    def get(name):
        return config[name] if name in config else _RELEASED_DEFAULTS.get(name)

    problems = []
    for name, (accepted, meaning) in _SUPPORTED_SWITCHES.items():
        value = get(name)
        if value not in accepted:
            where = "" if name in config else " (the released default for a missing field)"
            problems.append(f"{name}={value!r}{where}: pararl implements {accepted[0]!r} ({meaning})")
    include_bias = bool(get("include_bias"))
    bias_for_norm = get("bias_for_layer_norm")
    if include_bias if bias_for_norm is None else bias_for_norm:
        problems.append("bias_for_layer_norm / include_bias gives the norms a bias; pararl's RMSNorm has none")
    if get("include_qkv_bias") and not include_bias:
        problems.append("include_qkv_bias=True without include_bias: pararl has one bias switch for all linears")
    missing = [name for name in ("d_model", "n_layers", "n_heads") if name not in config]
    if missing:
        problems.append(f"required size field(s) {missing} are missing")
    if problems:
        raise ValueError(f"unsupported released {model_type!r} config: " + "; ".join(problems) + ".")

    d_model, n_heads = int(config["d_model"]), int(config["n_heads"])
    n_kv_heads = get("n_kv_heads")
    mqa = get("multi_query_attention")
    if n_kv_heads is None:
        n_kv_heads = 1 if mqa else n_heads
    elif mqa is not None and int(n_kv_heads) != (1 if mqa else n_heads):
        raise ValueError(
            f"config sets both n_kv_heads={n_kv_heads} and multi_query_attention={mqa}, which disagree (the released "
            "code refuses this too)."
        )
    mlp_hidden_size = get("mlp_hidden_size")
    if mlp_hidden_size is None:
        mlp_hidden_size = int(get("mlp_ratio")) * d_model
    embedding_size = get("embedding_size")
    # Multimodal configs know how many ids they use beyond the LLM's: MMaDA's `new_vocab_size`, Lumina-DiMOO's
    # `text_vocab_size + codebook_size` (image codes come after the text ids). The largest hint wins, within the
    # embedding.
    hints = [get("vocab_size"), config.get("new_vocab_size")]
    if config.get("text_vocab_size") is not None and config.get("codebook_size") is not None:
        hints.append(int(config["text_vocab_size"]) + int(config["codebook_size"]))
    hints = [int(hint) for hint in hints if hint is not None]
    vocab_size = max(hints) if hints else embedding_size
    if embedding_size is None:
        embedding_size = vocab_size
    vocab_size = min(vocab_size, int(embedding_size))
    bos_token_id = config.get("bos_token_id")
    if bos_token_id is None and generation_config is not None:
        bos_token_id = generation_config.get("bos_token_id")

    values = dict(
        vocab_size=int(vocab_size),
        embedding_size=int(embedding_size),
        d_model=d_model,
        n_layers=int(config["n_layers"]),
        n_heads=n_heads,
        n_kv_heads=int(n_kv_heads),
        mlp_hidden_size=int(mlp_hidden_size),
        max_sequence_length=int(get("max_sequence_length")),
        rope_theta=float(get("rope_theta")),
        rms_norm_eps=float(get("rms_norm_eps")),
        weight_tying=bool(get("weight_tying")),
        include_bias=include_bias,
        initializer_range=float(get("init_std")),
        mask_token_id=int(get("mask_token_id")),
        pad_token_id=get("pad_token_id"),
        bos_token_id=bos_token_id,
        eos_token_id=get("eos_token_id"),
    )
    values.update(overrides)
    return MaskedDiffusionConfig(**values)


def expected_weight_shapes(config: MaskedDiffusionConfig) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a [`MaskedDiffusionLM`] built from `config` (built on the meta device: no memory)."""
    from .modeling import MaskedDiffusionLM

    with torch.device("meta"):
        model = MaskedDiffusionLM(config)
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def load_released_checkpoint(path: str | os.PathLike, **kwargs):
    """Loads a released LLaDA / MMaDA / MMaDA-Parallel checkpoint folder as a [`MaskedDiffusionLM`].

    The config is mapped with [`config_from_released`]; the weights (`model.safetensors`, or shards listed by
    `model.safetensors.index.json`, or `pytorch_model.bin`) are checked key by key and shape by shape against the
    model before anything is loaded, then loaded by `transformers` (so `dtype`, `device_map`, DeepSpeed ZeRO-3 and
    the other `from_pretrained` options work as usual).

    Args:
        path: Local folder (download it first, e.g. `hf download tyfeld/MMaDA-Parallel-M --local-dir ...`).
        kwargs: `from_pretrained` options (`dtype=torch.bfloat16`, `device_map`, `output_loading_info`, ...).
            `config` overrides cannot be given: the folder's config.json is the model's definition.

    Raises:
        FileNotFoundError: `path` is not a folder, or it has no config.json or no weights.
        ValueError: Unsupported config, or weights that do not fit it (listing every missing, unexpected and
            mis-shaped key).
    """
    from .modeling import MaskedDiffusionLM

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a local folder; download the checkpoint first.")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} has no config.json.")
    if "config" in kwargs:
        raise ValueError("load_released_checkpoint builds the config from the folder's config.json; do not pass one.")
    generation_path = os.path.join(path, "generation_config.json")
    generation = _read_json(generation_path) if os.path.isfile(generation_path) else None
    config = config_from_released(_read_json(config_path), generation)

    files = find_weight_files(path, MODEL_WEIGHT_NAMES)
    check_weight_shapes(read_weight_shapes(files), expected_weight_shapes(config), source=path)

    want_info = kwargs.pop("output_loading_info", False)
    model, info = MaskedDiffusionLM.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    # The pre-check makes this unreachable unless transformers renames keys; kept so a silent init can never pass.
    leftovers = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if leftovers or info.get("error_msgs"):
        raise ValueError(f"loading {path} left {leftovers or info.get('error_msgs')}; refusing a partly random model.")
    return (model, info) if want_info else model


# ------------------------------------------------------------------------------------------ pararl-saved checkpoints
def check_pararl_checkpoint(path: str | os.PathLike, config: MaskedDiffusionConfig | None = None) -> None:
    """Checks a pararl-saved folder (`save_pretrained` of a [`MaskedDiffusionLM`]) against the model its config builds,
    from the safetensors headers, before anything is loaded: `transformers` would initialise missing keys at random
    and only log them.

    Args:
        path: Local checkpoint folder.
        config: The config the model will be built with; default: the folder's `config.json`.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (all listed), or a weight file that cannot be read (named).
    """
    path = os.fspath(path)
    if config is None:
        config = MaskedDiffusionConfig.from_pretrained(path)
    files = find_weight_files(path, MODEL_WEIGHT_NAMES)
    check_weight_shapes(read_weight_shapes(files), expected_weight_shapes(config), source=path)


def _shapes(state: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in state.items()}


def check_resume_checkpoint(model: torch.nn.Module, checkpoint: str | os.PathLike) -> None:
    """Checks a Trainer checkpoint folder against the model it is about to be loaded into, before it is.

    `Trainer` resumes with a non-strict load: a full model's missing keys are only logged, and a PEFT adapter's
    missing keys are dropped silently (PEFT reports them, `Trainer` ignores the report), so the resumed run would
    train from freshly initialised adapter weights. Here every key the model expects must be in the files with the
    model's shape, and no key may be left over.

    Args:
        model: The (unwrapped) model, a `PeftModel` or a [`MaskedDiffusionLM`].
        checkpoint: The `checkpoint-N` folder.

    Raises:
        ValueError: Missing, unexpected or mis-shaped keys (listed), or an unreadable weight file (named).
        FileNotFoundError: The folder holds no weights for the model.
    """
    from transformers.utils import is_peft_available

    checkpoint = os.fspath(checkpoint)
    hint = "Nothing was loaded; resume from a checkpoint of this model and adapter configuration."
    if is_peft_available():
        from peft import PeftModel, get_peft_model_state_dict
    if not is_peft_available() or not isinstance(model, PeftModel):
        files = find_weight_files(checkpoint, MODEL_WEIGHT_NAMES)
        check_weight_shapes(read_weight_shapes(files), _shapes(model.state_dict()), source=checkpoint, hint=hint)
        return
    names = ("adapter_model.safetensors", "adapter_model.bin")
    # As `Trainer._load_from_checkpoint` maps them: with adapter sub-folders the top-level files are "default".
    subfolders = [name for name in model.peft_config if os.path.isdir(os.path.join(checkpoint, name))]
    top = "default" if subfolders else model.active_adapter
    targets = {top: checkpoint, **{name: os.path.join(checkpoint, name) for name in subfolders if name != top}}
    for adapter, folder in targets.items():
        if adapter not in model.peft_config:
            continue
        try:
            files = find_weight_files(folder, names)
        except FileNotFoundError:
            if adapter == top and not subfolders:
                raise
            continue
        expected = _shapes(get_peft_model_state_dict(model, adapter_name=adapter))
        source = f"{folder} (adapter {adapter!r})"
        check_weight_shapes(read_weight_shapes(files), expected, source=source, hint=hint)


# ---------------------------------------------------------------------------------------------------- tokenizer
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
    # Imported here: `pararl.processing` builds on `pararl.models`, so the models package must not import it at load.
    from ..processing import MMADA_PARALLEL_A, MMADA_PARALLEL_M, ParallelProcessor

    model_path = os.fspath(model_path)
    if preset is None:
        config_path = os.path.join(model_path, "config.json")
        model_type = _read_json(config_path).get("model_type") if os.path.isfile(config_path) else None
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
        from .amused import AmusedVQImageTokenizer

        vq_path = os.fspath(image_tokenizer_path) if image_tokenizer_path is not None else model_path
        vq_folder = os.path.join(vq_path, "vqvae") if os.path.isdir(os.path.join(vq_path, "vqvae")) else vq_path
        factor = 2 ** (len(_read_json(os.path.join(vq_folder, "config.json"))["block_out_channels"]) - 1)
        image_tokenizer = AmusedVQImageTokenizer.from_pretrained(
            vq_folder, image_size=rows * factor, device=device, dtype=dtype
        )
    else:  # MMaDA family: MAGVIT-v2
        from .magvit2 import MAGVIT2Config, MAGVIT2ImageTokenizer

        if image_tokenizer_path is None:
            raise ValueError(
                f"preset {preset.name!r} needs the MAGVIT-v2 weights: download showlab/magvitv2 and pass "
                "image_tokenizer_path=/local/magvitv2 (or set PARARL_IMAGE_TOKENIZER_PATH)."
            )
        config_path = os.path.join(os.fspath(image_tokenizer_path), "config.json")
        values = _read_json(config_path) if os.path.isfile(config_path) else {}
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
    pararl.models.loading:mmada_parallel_m_processor`."""
    from ..processing import MMADA_PARALLEL_M

    return load_released_processor(
        _env_path("PARARL_MODEL_PATH", True),
        _env_path("PARARL_IMAGE_TOKENIZER_PATH", True),
        preset=MMADA_PARALLEL_M,
        device=_image_tokenizer_device(),
    )


def mmada_parallel_a_processor():
    """`load_released_processor` for MMaDA-Parallel-A with the checkpoint folder in `PARARL_MODEL_PATH` (its VQ model
    from `vqvae/`, or from `PARARL_IMAGE_TOKENIZER_PATH` when set), on this process's GPU: for `--processor
    pararl.models.loading:mmada_parallel_a_processor`."""
    from ..processing import MMADA_PARALLEL_A

    return load_released_processor(
        _env_path("PARARL_MODEL_PATH", True),
        _env_path("PARARL_IMAGE_TOKENIZER_PATH", False),
        preset=MMADA_PARALLEL_A,
        device=_image_tokenizer_device(),
    )
