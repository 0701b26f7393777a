"""A tiny ParaRL run for the distributed tests (launched by tests/test_distributed.py with `accelerate launch`).

Trains a random 2-layer MaskedDiffusionLM on toy-world prompts for a few steps on CPU and writes one JSON summary
per process to `--summary_dir` (`rank<i>.json`): world size, distributed type, ZeRO stage, whether the parameters
are really sharded, the logged losses, rewards and KL, and whether the trainable weights moved.
"""

import argparse
import json
import os

import torch
from peft import LoraConfig

from pararl.grpo import DiffusionGRPOConfig
from pararl.grpo.trainer import DiffusionGRPOTrainer
from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.rewards import Reward, RewardNormalizer, RewardStates
from pararl.toy import build_toy_dataset, toy_processor


def word_count(completions, **kwargs):
    return [len(text.split()) / 10 for text in completions]


class ImageBrightness(Reward):
    def score(self, states: RewardStates) -> list[float]:
        return states.image_tensors.mean(dim=(1, 2, 3)).tolist()


class NormalizedBrightness(Reward):
    """A reward with an unfitted normaliser (calibrated before the first step); counts the raw scores it computed."""

    def __init__(self):
        self.normalizer = RewardNormalizer()
        self.num_raw_before_fit = 0

    def raw_scores(self, states: RewardStates) -> list[float]:
        if not self.normalizer.is_fitted:
            self.num_raw_before_fit += len(states)
        return states.image_tensors.mean(dim=(1, 2, 3)).tolist()

    def score(self, states: RewardStates) -> list[float]:
        return self.normalizer(self.raw_scores(states))


def full_parameters(model: torch.nn.Module, trainable_only: bool = True) -> dict[str, torch.Tensor]:
    """Full (gathered under ZeRO-3) copies of the parameters."""
    import deepspeed

    params = {name: p for name, p in model.named_parameters() if p.requires_grad or not trainable_only}
    sharded = [p for p in params.values() if hasattr(p, "ds_id")]
    with deepspeed.zero.GatheredParameters(sharded, enabled=bool(sharded)):
        return {name: p.detach().clone().float().cpu() for name, p in params.items()}


def train(variant: str, args: argparse.Namespace) -> dict:
    """One run: `full` (full fine-tuning, reference model when beta > 0), `lora` (adapters only), `calibrate` (full
    fine-tuning with a normalised reward calibrated on a single prompt, so that rank 1 has no calibration prompt) or
    `all_steps` (full fine-tuning with `loss_steps="all"` in groups of 2 steps, importance-sampling corrected)."""
    processor = toy_processor()
    preset = processor.preset
    config = MaskedDiffusionConfig(
        vocab_size=preset.image_vocab_range[1],
        d_model=32,
        n_layers=2,
        n_heads=4,
        mlp_hidden_size=64,
        mask_token_id=preset.mask_token_id,
        pad_token_id=preset.pad_token_id,
        bos_token_id=preset.bos_token_id,
        eos_token_id=preset.eos_token_id,
    )
    torch.manual_seed(0)  # the same initial weights on every rank
    model = MaskedDiffusionLM(config)
    training_args = DiffusionGRPOConfig(
        output_dir=os.path.join(args.output_dir, variant),
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        # 2 rollouts per rank, G = 4: one prompt group spans both processes.
        per_device_train_batch_size=2,
        num_generations=4,
        diffusion_steps=4,
        num_reward_steps=2,
        max_steps=args.max_steps,
        logging_steps=1,
        learning_rate=0.05,
        beta=args.beta,
        seed=0,
        reward_calibration_fraction=1 / 16,
        **(dict(loss_steps="all", loss_step_group=2) if variant == "all_steps" else {}),
    )
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=list(ATTENTION_LORA_TARGETS))
    trainer = DiffusionGRPOTrainer(
        model=model,
        reward_funcs=[word_count, NormalizedBrightness() if variant == "calibrate" else ImageBrightness()],
        args=training_args,
        train_dataset=build_toy_dataset("train", num_samples=16, seed=0),
        processing_class=processor,
        peft_config=peft_config if variant == "lora" else None,
    )
    before = full_parameters(trainer.model)
    trainer.train()
    after = full_parameters(trainer.model)

    state = trainer.accelerator.state
    engine_params = list(trainer.model_wrapped.parameters())
    ref_params = list(trainer.ref_model.parameters()) if trainer.ref_model is not None else []
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    summary = {
        "variant": variant,
        "process_index": trainer.accelerator.process_index,
        "num_processes": trainer.accelerator.num_processes,
        "distributed_type": str(state.distributed_type),
        "zero_stage": state.deepspeed_plugin.zero_stage if state.deepspeed_plugin is not None else None,
        # ZeRO-3 with persistence threshold 0: every parameter lives as a shard; the local tensor is empty.
        "sharded": bool(engine_params) and all(hasattr(p, "ds_numel") and p.numel() == 0 for p in engine_params),
        "steps": trainer.state.global_step,
        "losses": [entry["loss"] for entry in logs],
        "rewards": [entry["reward"] for entry in logs],
        "reward_means": {
            name: [entry[f"rewards/{name}/mean"] for entry in logs] for name in trainer.reward_func_names
        },
        "kl": [entry.get("kl") for entry in logs],
        "has_ref_model": trainer.ref_model is not None,
        "ref_sharded": bool(ref_params) and all(hasattr(p, "ds_numel") and p.numel() == 0 for p in ref_params),
        "num_trainable": len(before),
        "num_changed": sum(not torch.equal(before[name], after[name]) for name in before),
        "importance_sampling": [entry.get("sampling/importance_sampling_ratio/mean") for entry in logs],
        "num_tokens": trainer.state.num_input_tokens_seen,
    }
    if variant == "calibrate":
        reward = trainer.rewards[1]
        summary["calibration"] = {
            "num_raw_before_fit": reward.num_raw_before_fit,
            "normalizer": reward.normalizer.state_dict(),
        }
    trainer.accelerator.free_memory()
    return summary


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--summary_dir", required=True)
    parser.add_argument("--variants", nargs="+", default=["full"], choices=["full", "lora", "calibrate", "all_steps"])
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--beta", type=float, default=0.0)
    args = parser.parse_args()
    # Several variants in one launch: process start-up and imports dominate a run this small.
    for variant in args.variants:
        summary = train(variant, args)
        os.makedirs(args.summary_dir, exist_ok=True)
        with open(os.path.join(args.summary_dir, f"{variant}_rank{summary['process_index']}.json"), "w") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    main()
