"""Shared test setup: offline Hugging Face hub and tiny configurations."""

import os


# Tests never reach the network: no checkpoint download, no hub lookups.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


# The test models are tiny: thread start-up costs more than it saves (README, "Development"). Subprocess tests set
# OMP_NUM_THREADS themselves.
torch.set_num_threads(1)


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


@pytest.fixture(scope="session")
def processor():
    """The toy world's ParallelProcessor (stateless, shared by every test file that needs it)."""
    from pararl.toy import toy_processor

    return toy_processor()


@pytest.fixture(scope="session")
def tiny_model(processor):
    """Factory of tiny random policies over the toy processor's vocabulary: `tiny_model(seed=0, **config)` seeds torch
    with `seed` and builds a 2-layer `MaskedDiffusionLM` (d_model 32, 4 heads, MLP 2 * d_model), any
    `MaskedDiffusionConfig` field overridden by `config`."""
    from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM

    def build(seed: int = 0, **config):
        d_model = config.pop("d_model", 32)
        values = dict(d_model=d_model, n_layers=2, n_heads=4, mlp_hidden_size=2 * d_model)
        values.update(processor.preset.model_config_kwargs())
        values.update(config)
        torch.manual_seed(seed)
        return MaskedDiffusionLM(MaskedDiffusionConfig(**values))

    return build
