r"""LLaDA-architecture masked-diffusion transformer (the LLaDA-8B / MMaDA / MMaDA-Parallel backbone).

One bidirectional transformer reads a token sequence in which some positions hold the mask token and predicts the
tokens behind them. Blocks are pre-norm: RMSNorm, multi-head attention (optionally grouped key/value heads) with
rotary position embeddings and **no causal mask**, RMSNorm, SwiGLU MLP. A final RMSNorm feeds the LM head.

Parameter names follow the LLaDA / MMaDA checkpoints exactly, so their safetensors load as they are:

```
model.transformer.wte.weight                       token embedding, (embedding_size, d_model)
model.transformer.blocks.{i}.attn_norm.weight
model.transformer.blocks.{i}.q_proj.weight         (d_model, d_model)
model.transformer.blocks.{i}.k_proj.weight         (n_kv_heads * head_dim, d_model)
model.transformer.blocks.{i}.v_proj.weight         (n_kv_heads * head_dim, d_model)
model.transformer.blocks.{i}.attn_out.weight       (d_model, d_model)
model.transformer.blocks.{i}.ff_norm.weight
model.transformer.blocks.{i}.ff_proj.weight        SwiGLU gate (SiLU), (mlp_hidden_size, d_model)
model.transformer.blocks.{i}.up_proj.weight        SwiGLU up, (mlp_hidden_size, d_model)
model.transformer.blocks.{i}.ff_out.weight         SwiGLU down, (d_model, mlp_hidden_size)
model.transformer.ln_f.weight
model.transformer.ff_out.weight                    LM head, (embedding_size, d_model); absent with `weight_tying`
```

LoRA targets. The MLP down projection of every block and the LM head are both called `ff_out`, so
`target_modules=["ff_out"]` (PEFT matches name suffixes) would also wrap the head, whose sliced
(`vocab_range`) forward a LoRA wrapper does not support. Target the attention only with
`target_modules=ATTENTION_LORA_TARGETS` (`["q_proj", "k_proj", "v_proj", "attn_out"]`), or attention plus MLP with
the regex `target_modules=r".*blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"`.

Padding is a real key mask: `attention_mask` (B, L) with 1 = real token, 0 = padding becomes a boolean
scaled-dot-product-attention mask, and default positions are `cumsum(attention_mask) - 1`, so padding anywhere
(also between the input part and the output part of a sequence) changes nothing at the real positions. Pass no
`attention_mask` at all when a batch has no padding: the unmasked attention kernels are faster.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, GenerationConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from ..weight_files import MODEL_WEIGHT_NAMES, check_weight_shapes, find_weight_files, read_weight_shapes
from .configuration import MaskedDiffusionConfig
from .conversion import config_from_released, is_released_checkpoint, read_json


# The attention projections of every block: the LoRA targets that never wrap the sliced LM head (see above).
ATTENTION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "attn_out"]


VocabRange = tuple[int, int]


@dataclass
class MaskedDiffusionLMOutput(ModelOutput):
    """
    Output of [`MaskedDiffusionLM`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*):
            Mean cross-entropy over the label positions that are not `-100`; returned when `labels` are given.
        logits (`torch.FloatTensor` of shape `(batch_size, num_positions, num_columns)`):
            Scores at every position (or at `logits_positions`), over the whole embedding (or over `vocab_range`).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


def _check_vocab_range(vocab_range: VocabRange | None, size: int) -> tuple[int, int]:
    if vocab_range is None:
        return 0, size
    start, end = (int(v) for v in vocab_range)
    if not 0 <= start < end <= size:
        raise ValueError(f"`vocab_range` must be (start, end) with 0 <= start < end <= {size}, got {vocab_range}.")
    return start, end


class MaskedDiffusionRMSNorm(nn.Module):
    """RMSNorm with a weight and no bias; normalises in float32 and returns the input dtype (as LLaDA / OLMo)."""

    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight.to(dtype) * x.to(dtype)


class MaskedDiffusionEmbedding(nn.Embedding):
    """Token embedding that can also act as the tied LM head.

    With `weight_tying` the logits are `hidden @ wte.weight[start:end].T`. The product is taken inside this module's
    `forward` (called through `__call__`) because under DeepSpeed ZeRO-3 a parameter is only gathered by its module's
    forward hooks: reading `wte.weight` from outside would see an empty shard.
    """

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        hidden_states: torch.Tensor | None = None,
        vocab_range: VocabRange | None = None,
    ) -> torch.Tensor:
        if hidden_states is None:
            return super().forward(input_ids)
        start, end = _check_vocab_range(vocab_range, self.num_embeddings)
        return F.linear(hidden_states, self.weight[start:end])


class MaskedDiffusionLMHead(nn.Linear):
    """LM head whose forward computes only the vocabulary columns `[start, end)`.

    The weight is sliced inside `forward` so that DeepSpeed ZeRO-3 (which gathers parameters in module forward hooks)
    sees a normal module call; never index `head.weight` from outside.
    """

    def forward(self, x: torch.Tensor, vocab_range: VocabRange | None = None) -> torch.Tensor:
        if vocab_range is None:
            return super().forward(x)
        start, end = _check_vocab_range(vocab_range, self.out_features)
        bias = self.bias[start:end] if self.bias is not None else None
        return F.linear(x, self.weight[start:end], bias)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine tables of shape (B, 1, L, head_dim) in float32 for NeoX-style (rotate-half) rotary embeddings.

    Computed from `position_ids` on the fly (no buffer): it is a handful of element-wise ops, and it keeps the model
    free of non-persistent buffers that meta-device loading and ZeRO-3 would have to special-case.
    """
    device = device if device is not None else position_ids.device
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float) / head_dim))
    freqs = position_ids.to(device=device, dtype=torch.float).unsqueeze(-1) * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` (B, H, L, head_dim) in float32 and return it in its own dtype."""
    x_ = x.float()
    return (x_ * cos + _rotate_half(x_) * sin).to(x.dtype)


class MaskedDiffusionBlock(GradientCheckpointingLayer):
    """One pre-norm transformer block: bidirectional attention and a SwiGLU MLP, LLaDA's parameter names."""

    def __init__(self, config: MaskedDiffusionConfig):
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads
        self.head_dim = config.d_model // config.n_heads
        bias = config.include_bias
        kv_size = self.n_kv_heads * self.head_dim
        self.attn_norm = MaskedDiffusionRMSNorm(config.d_model, config.rms_norm_eps)
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=bias)
        self.k_proj = nn.Linear(config.d_model, kv_size, bias=bias)
        self.v_proj = nn.Linear(config.d_model, kv_size, bias=bias)
        self.attn_out = nn.Linear(config.d_model, config.d_model, bias=bias)
        self.ff_norm = MaskedDiffusionRMSNorm(config.d_model, config.rms_norm_eps)
        self.ff_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=bias)
        self.up_proj = nn.Linear(config.d_model, config.mlp_hidden_size, bias=bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, config.d_model, bias=bias)

    def attention(
        self,
        x: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Attention output and this call's own (rotated, ungrouped) keys and values, `(B, n_kv_heads, L, head_dim)`.

        `past_key_value` holds the keys and values of positions before `x` (a cached prefix): the queries of `x` also
        attend to them.
        """
        batch, length, _ = x.shape
        q = self.q_proj(x).view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.n_kv_heads, self.head_dim).transpose(1, 2)
        # Rotary in float32, then one dtype for q, k and v: under autocast the projections may come out in a
        # different dtype than the float32 rotation, and SDPA needs them equal.
        q = apply_rotary(q, cos, sin).to(v.dtype)
        k = apply_rotary(k, cos, sin).to(v.dtype)
        key_value = (k, v)
        if past_key_value is not None:
            k = torch.cat([past_key_value[0].to(v.dtype), k], dim=2)
            v = torch.cat([past_key_value[1].to(v.dtype), v], dim=2)
        if self.n_kv_heads != self.n_heads:
            # Query head h reads key/value head h // group (LLaDA's repeat_interleave layout).
            group = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=False)
        return self.attn_out(out.transpose(1, 2).reshape(batch, length, -1)), key_value

    def forward(
        self,
        hidden_states: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_key_value: tuple[torch.Tensor, torch.Tensor] | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """The block's output; with `use_cache`, also its own keys and values (see :meth:`attention`)."""
        attended, key_value = self.attention(self.attn_norm(hidden_states), attn_mask, cos, sin, past_key_value)
        hidden_states = hidden_states + attended
        x = self.ff_norm(hidden_states)
        x = self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))
        return (hidden_states + x, key_value) if use_cache else hidden_states + x


class MaskedDiffusionBackbone(nn.Module):
    """Holds `transformer = ModuleDict(wte, blocks, ln_f[, ff_out])`, the LLaDA module tree under `model.`."""

    def __init__(self, config: MaskedDiffusionConfig):
        super().__init__()
        self.config = config
        modules = {
            "wte": MaskedDiffusionEmbedding(config.embedding_size, config.d_model),
            "blocks": nn.ModuleList(MaskedDiffusionBlock(config) for _ in range(config.n_layers)),
            "ln_f": MaskedDiffusionRMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = MaskedDiffusionLMHead(config.d_model, config.embedding_size, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        batch, length = input_ids.shape
        # A cached prefix (`past_key_values`, one (keys, values) pair per layer) stands for the first `past` positions:
        # `input_ids` are the positions after it, and `attention_mask` covers both.
        past = past_key_values[0][0].shape[2] if past_key_values is not None else 0
        attn_mask = None
        if attention_mask is not None:
            if attention_mask.shape != (batch, past + length):
                raise ValueError(
                    f"`attention_mask` must have the shape of `input_ids` {tuple(input_ids.shape)}"
                    f"{f' plus the {past} cached positions' if past else ''}, got {tuple(attention_mask.shape)}."
                )
            keys = attention_mask.bool()
            # A row without any real token would give SDPA nothing to attend to (NaN); let it attend everywhere
            # instead. Done on device, without a host sync.
            keys = keys | ~keys.any(dim=-1, keepdim=True)
            attn_mask = keys[:, None, None, :]
        if position_ids is None:
            if attention_mask is not None:
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + length, device=input_ids.device).expand(batch, length)
        elif position_ids.shape != input_ids.shape:
            raise ValueError(
                f"`position_ids` must have the shape of `input_ids` {tuple(input_ids.shape)}, "
                f"got {tuple(position_ids.shape)}."
            )

        hidden_states = self.transformer.wte(input_ids)
        cos, sin = rotary_cos_sin(
            position_ids, self.config.d_model // self.config.n_heads, self.config.rope_theta, hidden_states.device
        )
        if past_key_values is None and not use_cache:
            for block in self.transformer.blocks:
                # Positional arguments: reentrant gradient checkpointing only tracks gradients of positional inputs.
                hidden_states = block(hidden_states, attn_mask, cos, sin)
            return self.transformer.ln_f(hidden_states)
        # Inference with a key/value cache (the rollout's approximate cache of the input part).
        key_values = []
        for i, block in enumerate(self.transformer.blocks):
            past_key_value = past_key_values[i] if past_key_values is not None else None
            hidden_states, key_value = block(hidden_states, attn_mask, cos, sin, past_key_value, True)
            key_values.append(key_value)
        hidden_states = self.transformer.ln_f(hidden_states)
        return (hidden_states, key_values) if use_cache else hidden_states


class MaskedDiffusionPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight initialisation and the `transformers` capability flags."""

    config_class = MaskedDiffusionConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    _no_split_modules = ["MaskedDiffusionBlock"]
    supports_gradient_checkpointing = True
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MaskedDiffusionRMSNorm):
            init.ones_(module.weight)


class MaskedDiffusionLM(MaskedDiffusionPreTrainedModel):
    """
    LLaDA-architecture masked-diffusion language model (see the module docstring for the layout).

    `forward` is `lm_logits(backbone(...))`: the backbone returns final-normed hidden states, and `lm_logits` scores
    only the requested positions and vocabulary columns, which is most of the saving at rollout time (an 8B model's
    full-vocabulary head on every position costs several times more than the per-modality slices).

    Example:

    ```python
    >>> config = MaskedDiffusionConfig(
    ...     vocab_size=64, d_model=32, n_layers=2, n_heads=4, mlp_hidden_size=64,
    ...     mask_token_id=4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    ... )
    >>> model = MaskedDiffusionLM(config)
    >>> input_ids = torch.tensor([[5, 6, 4, 4, 0]])
    >>> out = model(input_ids, attention_mask=torch.tensor([[1, 1, 1, 1, 0]]), logits_positions=torch.tensor([[2, 3]]))
    >>> out.logits.shape
    torch.Size([1, 2, 64])
    ```
    """

    def __init__(self, config: MaskedDiffusionConfig):
        super().__init__(config)
        self.model = MaskedDiffusionBackbone(config)
        # Written by TRL's GRPOTrainer (`model.generation_config.pad_token_id`); a plain PreTrainedModel has none.
        self.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
        )
        self.config.architectures = [type(self).__name__]
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """
        Loads a pararl-saved model, or a *released* LLaDA / MMaDA / MMaDA-Parallel checkpoint folder.

        A local folder whose `config.json` has `model_type` `"llada"` or `"mmada"` is loaded by
        [`load_released_checkpoint`]: its config is mapped onto [`MaskedDiffusionConfig`] and
        every weight key and shape is checked first (missing, unexpected or mis-shaped keys are a `ValueError` listing
        them), without `trust_remote_code`. Everything else goes to `PreTrainedModel.from_pretrained`, with the same
        rule: a local pararl folder is checked key by key and shape by shape before loading, and any key that
        `transformers` reports missing, unexpected or mismatched afterwards is a `ValueError` (never a log line over
        randomly initialised weights). An unreadable (e.g. truncated) weight file is a `ValueError` naming it.
        """
        if kwargs.get("config") is None and not model_args and is_released_checkpoint(pretrained_model_name_or_path):
            kwargs.pop("config", None)
            kwargs.pop("trust_remote_code", None)
            return load_released_checkpoint(pretrained_model_name_or_path, **kwargs)
        path = os.fspath(pretrained_model_name_or_path)
        path = os.path.join(path, kwargs["subfolder"]) if kwargs.get("subfolder") else path
        config = kwargs.get("config")
        if os.path.isdir(path) and not model_args and (config is None or isinstance(config, MaskedDiffusionConfig)):
            check_pararl_checkpoint(path, config)  # before anything is allocated, naming every bad key
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        # Whatever the path (Hub id, renamed keys, a config passed in): never a partly random model.
        leftovers = {key: sorted(value) for key, value in info.items() if key != "error_msgs" and value}
        if leftovers or info.get("error_msgs"):
            raise ValueError(
                f"loading {pretrained_model_name_or_path} left {leftovers or info.get('error_msgs')}; refusing a "
                "partly random model."
            )
        return (model, info) if want_info else model

    # TRL 1.16 still calls the `gradient_checkpointing*` names that transformers 5 deprecated, which would print a
    # FutureWarning on every run: they are answered with the `activation_checkpointing*` implementation, silently.
    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs):
        self._activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def gradient_checkpointing_disable(self):
        self._activation_checkpointing_disable()

    # Embedding accessors (LLaDA's tree does not match the default `embed_tokens` / `lm_head` lookups).
    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        if type(value) is nn.Embedding:
            # E.g. from `resize_token_embeddings`. The subclass only adds the tied-head forward and no state.
            value.__class__ = MaskedDiffusionEmbedding
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head, or `None` with `weight_tying` (the input embedding is then the head)."""
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        if self.config.weight_tying:
            raise ValueError("This model has `weight_tying=True`: it has no separate LM head to replace.")
        if type(new_embeddings) is nn.Linear:
            # E.g. from `resize_token_embeddings`. The subclass only adds the sliced forward and no state.
            new_embeddings.__class__ = MaskedDiffusionLMHead
        self.model.transformer.ff_out = new_embeddings

    def resize_token_embeddings(self, *args, **kwargs) -> nn.Embedding:
        """`PreTrainedModel.resize_token_embeddings`, keeping `config.embedding_size` equal to the new row count."""
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        # `num_embeddings` (a module attribute) is right even when ZeRO-3 has partitioned the weight.
        self.config.embedding_size = embeddings.num_embeddings
        return embeddings

    def backbone(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
        use_cache: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """
        Final-normed hidden states (B, L, d_model). See [`MaskedDiffusionLM.forward`] for the first arguments.

        The key/value seam of the rollout's input cache (inference only): with `use_cache`, also returns every layer's
        rotated keys and values `(B, n_kv_heads, L, head_dim)`; `past_key_values` (one `(keys, values)` pair per
        layer, of `P` earlier positions) makes `input_ids` the positions after those `P`, whose queries attend to the
        cached keys as well (`attention_mask`, when given, then covers all `P + L` keys; default positions continue
        after the prefix). Under bidirectional attention a cached prefix is exact only while the rest of the sequence
        is unchanged.
        """
        return self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache)

    def lm_logits(
        self,
        hidden_states: torch.Tensor,
        positions: torch.LongTensor | None = None,
        vocab_range: VocabRange | None = None,
    ) -> torch.Tensor:
        """
        Logits from hidden states, only where they are needed.

        Args:
            hidden_states (`torch.Tensor` of shape `(B, L, d_model)`):
                Output of [`~MaskedDiffusionLM.backbone`].
            positions (`torch.LongTensor` of shape `(B, K)` or `(K,)`, *optional*):
                Positions to score, per sample or shared by the batch. `None` scores all `L` positions.
            vocab_range (`tuple[int, int]`, *optional*):
                `(start, end)`: only vocabulary columns `[start, end)` are computed (column `j` of the result is token
                `start + j`). `None` computes all `embedding_size` columns.

        Returns:
            `torch.Tensor` of shape `(B, K or L, end - start)`.
        """
        if positions is not None:
            if positions.dim() == 1:
                hidden_states = hidden_states[:, positions]
            elif positions.dim() == 2 and positions.shape[0] == hidden_states.shape[0]:
                index = positions.unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
                hidden_states = hidden_states.gather(1, index)
            else:
                raise ValueError(
                    f"`logits_positions` must have shape (batch_size={hidden_states.shape[0]}, K) or (K,), "
                    f"got {tuple(positions.shape)}."
                )
        transformer = self.model.transformer
        if self.config.weight_tying:
            return transformer.wte(hidden_states=hidden_states, vocab_range=vocab_range)
        return transformer.ff_out(hidden_states, vocab_range=vocab_range)

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        logits_positions: torch.LongTensor | None = None,
        vocab_range: VocabRange | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> MaskedDiffusionLMOutput | tuple:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(B, L)`):
                Token ids; positions to predict hold `config.mask_token_id`.
            attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*):
                1 for real tokens, 0 for padding. Padding is masked out as attention keys wherever it sits. Leave it
                `None` when nothing is padded.
            position_ids (`torch.LongTensor` of shape `(B, L)`, *optional*):
                Rotary positions. Defaults to `attention_mask.cumsum(-1) - 1` (clamped at 0), i.e. padding does not
                shift the positions of the tokens after it; `0..L-1` without a mask.
            logits_positions (`torch.LongTensor` of shape `(B, K)` or `(K,)`, *optional*):
                Only compute logits at these positions.
            vocab_range (`tuple[int, int]`, *optional*):
                Only compute logits for vocabulary columns `[start, end)`. A *list* of ranges, with a list of as many
                `logits_positions`, computes each group of positions over its own columns in the same forward (e.g.
                text slots over the text vocabulary, image slots over the codebook); `logits` is then a tuple.
            labels (`torch.LongTensor` of shape `(B, K)` or `(B, L)`, *optional*):
                Target token ids (full-vocabulary ids, `-100` = ignored), aligned with the returned logits; with
                `logits_positions`, labels of shape `(B, L)` are gathered at those positions. The loss is the mean
                cross-entropy over the non-ignored targets.
            return_dict (`bool`, *optional*):
                Return a [`MaskedDiffusionLMOutput`] (default) or a tuple.
            kwargs:
                Ignored; accepted so that trainers can pass their usual extra arguments.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        hidden_states = self.backbone(input_ids, attention_mask=attention_mask, position_ids=position_ids)
        if isinstance(vocab_range, list):
            if labels is not None or not isinstance(logits_positions, list | tuple):
                raise ValueError("A list of `vocab_range`s needs a list of `logits_positions` and no `labels`.")
            logits = tuple(
                self.lm_logits(hidden_states, positions=positions, vocab_range=columns)
                for positions, columns in zip(logits_positions, vocab_range, strict=True)
            )
            return MaskedDiffusionLMOutput(logits=logits) if return_dict else (logits,)
        logits = self.lm_logits(hidden_states, positions=logits_positions, vocab_range=vocab_range)
        loss = self._loss(logits, labels, logits_positions, vocab_range) if labels is not None else None
        if not return_dict:
            return (loss, logits) if loss is not None else (logits,)
        return MaskedDiffusionLMOutput(loss=loss, logits=logits)

    def _loss(
        self,
        logits: torch.Tensor,
        labels: torch.LongTensor,
        logits_positions: torch.LongTensor | None = None,
        vocab_range: VocabRange | None = None,
    ) -> torch.Tensor:
        """Mean cross-entropy (float32) of `logits` (B, K, V') against full-vocabulary `labels` (-100 = ignored)."""
        if labels.dim() != 2 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"`labels` must have shape (B, K) or (B, L); got {tuple(labels.shape)}.")
        if labels.shape[1] != logits.shape[1]:
            if logits_positions is None:
                raise ValueError(
                    f"`labels` has {labels.shape[1]} positions but the logits have {logits.shape[1]}; labels must be "
                    "aligned with the logits."
                )
            labels = labels[:, logits_positions] if logits_positions.dim() == 1 else labels.gather(1, logits_positions)
        if vocab_range is not None:
            start, end = _check_vocab_range(vocab_range, self.config.embedding_size)
            ignored = labels == -100
            if ((labels < start) | (labels >= end))[~ignored].any():
                raise ValueError(f"Every label that is not -100 must lie inside `vocab_range` {vocab_range}.")
            labels = torch.where(ignored, labels, labels - start)
        return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


# ------------------------------------------------------------------------------------------ checking checkpoints
def expected_weight_shapes(config: MaskedDiffusionConfig) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` of a [`MaskedDiffusionLM`] built from `config` (built on the meta device: no memory)."""
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
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path!r} is not a local folder; download the checkpoint first.")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} has no config.json.")
    if "config" in kwargs:
        raise ValueError("load_released_checkpoint builds the config from the folder's config.json; do not pass one.")
    generation_path = os.path.join(path, "generation_config.json")
    generation = read_json(generation_path) if os.path.isfile(generation_path) else None
    config = config_from_released(read_json(config_path), generation)

    files = find_weight_files(path, MODEL_WEIGHT_NAMES)
    check_weight_shapes(read_weight_shapes(files), expected_weight_shapes(config), source=path)

    want_info = kwargs.pop("output_loading_info", False)
    model, info = MaskedDiffusionLM.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    # The pre-check makes this unreachable unless transformers renames keys; kept so a silent init can never pass.
    leftovers = {k: sorted(v) for k, v in info.items() if k != "error_msgs" and v}
    if leftovers or info.get("error_msgs"):
        raise ValueError(f"loading {path} left {leftovers or info.get('error_msgs')}; refusing a partly random model.")
    return (model, info) if want_info else model


def check_pararl_checkpoint(path: str | os.PathLike, config: MaskedDiffusionConfig | None = None) -> None:
    """Checks a pararl-saved folder (`save_pretrained` of a [`MaskedDiffusionLM`]) against the model its config builds,
    from the safetensors headers, before anything is loaded: `transformers` would initialise missing keys at random
    and only log them.

    Args:
        path: Local checkpoint folder.
        config: The config the model will be built with; default: the folder's `config.json`.

    Raises:
        FileNotFoundError: No config was given and the folder has no config.json.
        ValueError: Missing, unexpected or mis-shaped keys (all listed), or a weight file that cannot be read (named).
    """
    path = os.fspath(path)
    if config is None:
        if not os.path.isfile(os.path.join(path, "config.json")):
            # transformers would fall back to the default (8B-shaped) config and list every key as missing.
            raise FileNotFoundError(
                f"{path} has no config.json; a MaskedDiffusionLM folder holds the config.json that `save_pretrained` "
                "writes beside the weights (or pass config=...)."
            )
        config = MaskedDiffusionConfig.from_pretrained(path)
    files = find_weight_files(path, MODEL_WEIGHT_NAMES)
    check_weight_shapes(read_weight_shapes(files), expected_weight_shapes(config), source=path)


AutoConfig.register(MaskedDiffusionConfig.model_type, MaskedDiffusionConfig, exist_ok=True)
AutoModel.register(MaskedDiffusionConfig, MaskedDiffusionLM, exist_ok=True)
AutoModelForMaskedLM.register(MaskedDiffusionConfig, MaskedDiffusionLM, exist_ok=True)


__all__ = [
    "ATTENTION_LORA_TARGETS",
    "MaskedDiffusionBlock",
    "MaskedDiffusionConfig",
    "MaskedDiffusionLM",
    "MaskedDiffusionLMOutput",
    "MaskedDiffusionPreTrainedModel",
    "check_pararl_checkpoint",
    "expected_weight_shapes",
    "load_released_checkpoint",
]
