"""Shared test setup: offline Hugging Face hub and tiny configurations."""

import os


# Tests never reach the network: no checkpoint download, no hub lookups.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture
def tiny_config():
    """A 2-layer LLaDA-shaped config with grouped KV heads; vocabulary 64 with special ids below 10."""
    from pararl.models import MaskedDiffusionConfig

    return MaskedDiffusionConfig(
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden_size=64,
        max_sequence_length=128,
        rope_theta=10000.0,
        mask_token_id=4,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
