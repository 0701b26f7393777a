"""Configuration of the LLaDA-architecture masked-diffusion transformer (the MMaDA / MMaDA-Parallel backbone)."""

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@strict
class MaskedDiffusionConfig(PreTrainedConfig):
    r"""
    Configuration class for [`MaskedDiffusionLM`], a bidirectional (non-causal) transformer that predicts the tokens
    hidden behind a mask token. Field names follow the LLaDA / MMaDA checkpoints (`d_model`, `n_layers`, ...), so their
    `config.json` values carry over; the usual Hugging Face names (`hidden_size`, `num_hidden_layers`,
    `num_attention_heads`, `num_key_value_heads`, `intermediate_size`, `max_position_embeddings`) are aliases.

    The defaults describe LLaDA-8B.

    Parameters:
        > Parameters that define the vocabulary

        vocab_size (`int`, *optional*, defaults to `126464`):
            Number of token ids the model is meant to use (text tokens, special tokens and, for multimodal models,
            image codes).
        embedding_size (`int` or `None`, *optional*, defaults to `None`):
            Number of rows of the embedding matrix and of the LM head. It may be larger than `vocab_size` (padded to a
            multiple of a hardware-friendly number, as LLaDA does); the extra rows are never targets. `None` means
            `vocab_size`.
        mask_token_id (`int`, *optional*, defaults to `126336`):
            Id of the mask token that marks the positions the model has to predict.
        pad_token_id (`int` or `None`, *optional*, defaults to `126081`):
            Id of the padding token.
        bos_token_id (`int` or `None`, *optional*, defaults to `126080`):
            Id of the beginning-of-sequence token.
        eos_token_id (`int` or `None`, *optional*, defaults to `126081`):
            Id of the end-of-sequence token.

        > Parameters that define the transformer

        d_model (`int`, *optional*, defaults to `4096`):
            Width of the residual stream. Must be divisible by `n_heads`.
        n_layers (`int`, *optional*, defaults to `32`):
            Number of transformer blocks.
        n_heads (`int`, *optional*, defaults to `32`):
            Number of query heads.
        n_kv_heads (`int` or `None`, *optional*, defaults to `None`):
            Number of key/value heads (grouped-query attention). `n_heads` must be divisible by it. `None` means
            `n_heads` (plain multi-head attention).
        mlp_hidden_size (`int`, *optional*, defaults to `12288`):
            Width of the SwiGLU feed-forward layer.
        max_sequence_length (`int`, *optional*, defaults to `4096`):
            Longest sequence the model was trained on. Informational: rotary embeddings do not enforce it.
        rope_theta (`float`, *optional*, defaults to `500000.0`):
            Base of the rotary position embeddings.
        rms_norm_eps (`float`, *optional*, defaults to `1e-5`):
            Epsilon of the RMS normalisations.
        weight_tying (`bool`, *optional*, defaults to `False`):
            Whether the LM head reuses the token embedding matrix. When `True` there is no separate
            `model.transformer.ff_out` head.
        include_bias (`bool`, *optional*, defaults to `False`):
            Whether the linear layers (projections, MLP and LM head) have biases.
        initializer_range (`float`, *optional*, defaults to `0.02`):
            Standard deviation of the normal initialisation of linear and embedding weights.
    """

    model_type = "masked_diffusion"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "num_key_value_heads": "n_kv_heads",
        "intermediate_size": "mlp_hidden_size",
        "max_position_embeddings": "max_sequence_length",
        "tie_word_embeddings": "weight_tying",
    }

    # Vocabulary
    vocab_size: int = 126464
    embedding_size: int | None = None
    mask_token_id: int = 126336
    pad_token_id: int | None = 126081
    bos_token_id: int | None = 126080
    eos_token_id: int | None = 126081

    # Transformer
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None
    mlp_hidden_size: int = 12288
    max_sequence_length: int = 4096
    # `float | int`: strict dataclass validation would otherwise reject `rope_theta=10000`.
    rope_theta: float | int = 500000.0
    rms_norm_eps: float = 1e-5
    weight_tying: bool = False
    include_bias: bool = False
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        if self.embedding_size is None:
            self.embedding_size = self.vocab_size
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        for name in (
            "vocab_size",
            "embedding_size",
            "d_model",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "mlp_hidden_size",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {getattr(self, name)}.")
        if self.embedding_size < self.vocab_size:
            raise ValueError(
                f"`embedding_size` ({self.embedding_size}) must be at least `vocab_size` ({self.vocab_size}): "
                "every token id needs an embedding row."
            )
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"`d_model` ({self.d_model}) must be divisible by `n_heads` ({self.n_heads}) so that every head has "
                "the same width."
            )
        if (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(
                f"The head width `d_model // n_heads` ({self.d_model // self.n_heads}) must be even for rotary "
                "embeddings; change `d_model` or `n_heads`."
            )
        if self.n_heads % self.n_kv_heads != 0:
            raise ValueError(
                f"`n_heads` ({self.n_heads}) must be divisible by `n_kv_heads` ({self.n_kv_heads}) so that each "
                "key/value head serves the same number of query heads."
            )
        if not 0 <= self.mask_token_id < self.embedding_size:
            raise ValueError(
                f"`mask_token_id` ({self.mask_token_id}) must be an id inside the embedding "
                f"(0 <= id < embedding_size={self.embedding_size})."
            )
        if self.rope_theta <= 0:
            raise ValueError(f"`rope_theta` must be positive, got {self.rope_theta}.")
        if self.rms_norm_eps <= 0:
            raise ValueError(f"`rms_norm_eps` must be positive, got {self.rms_norm_eps}.")
        super().__post_init__(**kwargs)


__all__ = ["MaskedDiffusionConfig"]
