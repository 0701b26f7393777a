r"""Released LLaDA / MMaDA `config.json` files mapped onto [`MaskedDiffusionConfig`].

The released models ship their own modelling code (`trust_remote_code`) and a `config.json` in LLaDA's field names
(`model_type` `"llada"` or `"mmada"`, `d_model`, `n_layers`, `n_heads`, `n_kv_heads`, `mlp_hidden_size`,
`mlp_ratio`, `embedding_size`, `vocab_size`, `rope_theta`, `max_sequence_length`, `mask_token_id`, `weight_tying`,
`include_bias`, plus switches such as `block_type` and `layer_norm_type`). Their weights use the parameter names of
[`~pararl.models.MaskedDiffusionLM`], so no key is renamed: [`config_from_released`] maps the config, refusing
every architecture switch pararl does not implement; the model's `from_pretrained` does the loading.
"""

import json
import os
from collections.abc import Mapping

from .configuration import MaskedDiffusionConfig


__all__ = ["RELEASED_MODEL_TYPES", "config_from_released", "is_released_checkpoint", "read_json"]

RELEASED_MODEL_TYPES = ("llada", "mmada")

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


def read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def is_released_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a local folder whose `config.json` has a released `model_type` (`"llada"`, `"mmada"`)."""
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return False
    try:
        return read_json(config_path).get("model_type") in RELEASED_MODEL_TYPES
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
