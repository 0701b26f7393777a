"""Shared test setup: offline Hugging Face hub, tiny configurations, and the factories of the tiny GRPO job
(`make_grpo_config`, `make_trainer`) that the trainer tests vary one setting at a time."""

import os


# Tests never reach the network: no checkpoint download, no hub lookups.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402


# The test models are tiny: thread start-up costs more than it saves (docs/performance.md, "Threads on a CPU").
# Subprocess tests set OMP_NUM_THREADS themselves.
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


# The tiny GRPO job of the trainer tests (`make_grpo_config`'s defaults).
TINY_GRPO = dict(
    use_cpu=True, bf16=False, seed=0,
    per_device_train_batch_size=4, num_generations=4,  # 1 prompt x 4 rollouts per step
    diffusion_steps=8, num_reward_steps=3, max_steps=3, learning_rate=0.05, beta=0.0,  # no KL term: no reference
    report_to="none", save_strategy="no", disable_tqdm=True, logging_steps=1,  # quiet, no checkpoints, every step logged
)  # fmt: skip


@pytest.fixture(scope="session")
def make_grpo_config():
    """Factory of the tiny job's `DiffusionGRPOConfig`: `make_grpo_config(output_dir, **overrides)`, `TINY_GRPO`
    with any field overridden. Session-scoped, so module-scoped fixtures can use it too."""
    from pararl.grpo import DiffusionGRPOConfig

    def build(output_dir, **overrides) -> DiffusionGRPOConfig:
        return DiffusionGRPOConfig(**{**TINY_GRPO, "output_dir": str(output_dir), **overrides})

    return build


@pytest.fixture(scope="session")
def toy_train_dataset():
    """16 toy-world training rows (seed 0): the tiny job's prompts."""
    from pararl.toy import build_toy_dataset

    return build_toy_dataset("train", num_samples=16, seed=0)


@pytest.fixture(scope="session")
def make_trainer(processor, tiny_model, toy_train_dataset):
    """Factory of `DiffusionGRPOTrainer`s on the toy processor: `make_trainer(args, reward_funcs, model=None,
    train_dataset=None, **kwargs)` trains a fresh `tiny_model()` unless `model` is given, on `toy_train_dataset`
    unless `train_dataset` is given; `kwargs` (`peft_config`, `eval_dataset`, `callbacks`, ...) go to the trainer."""
    from pararl.grpo.trainer import DiffusionGRPOTrainer

    def build(args, reward_funcs, model=None, train_dataset=None, **kwargs) -> DiffusionGRPOTrainer:
        return DiffusionGRPOTrainer(
            model=tiny_model() if model is None else model,
            reward_funcs=reward_funcs,
            args=args,
            train_dataset=toy_train_dataset if train_dataset is None else train_dataset,
            processing_class=processor,
            **kwargs,
        )

    return build


def policy_logps(trainer, out: dict) -> torch.Tensor:
    """The trainer's per-token log-probs of a generation output `out`, recomputed with the current policy (test
    modules import it: `from conftest import policy_logps`)."""
    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1),
        torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1),
        out["completion_ids"].shape[1],
    )
    return logps.detach()
