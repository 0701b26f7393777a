# /// script
# dependencies = [
#     "pararl",
# ]
# ///

"""ParaRL: GRPO with CLIP alignment rewards at intermediate denoising steps of a parallel multimodal diffusion model.

With no arguments the script post-trains the shipped tiny toy-world policy with a LoRA adapter on CPU in a few
minutes, scoring the partial reasoning against the partial image with the shipped tiny CLIP, and runs the same job at
learning rate 0 as its paired control. It evaluates the policy on held-out toy tasks before and after (ParaBench's six
axes, computed exactly by rule) and measures the coordination of its two outputs, saves the adapter, the reward plot
and trajectory pictures in the output folder and prints the summary tables.

The toy world's defaults (`TOY_DEFAULTS` below, from `pararl.toy.recipe`; overridable): `open_colour` training prompts,
LoRA r=16 on the attention projections, 30 steps of 2 prompts x 8 rollouts, 16 denoising steps with the reasoning in
two blocks of 13, lr 1e-3, beta 0, `--reward_step_selection stratified` (one reward step drawn per third of the
trajectory), the paired no-update control, no checkpoints. They apply only when neither `--model_name_or_path` nor
`--dataset_name` is given; a real run gets TRL's defaults for every flag it does not give (the script prints which
applied). Flags must be written in full: an abbreviation or a typo is refused with the closest flag named.

# Toy world (CPU, no download)
```bash
accelerate launch examples/pararl.py
```

# MMaDA-Parallel-M, one GPU, LoRA
```bash
accelerate launch examples/pararl.py \
    --model_name_or_path /local/MMaDA-Parallel-M \
    --processor pararl.released:mmada_parallel_m_processor \
    --dataset_name /local/my-edit-dataset \
    --clip_model ViT-L-14 --clip_pretrained /local/clip/open_clip_pytorch_model.bin \
    --use_peft --lora_r 64 --lora_alpha 128 \
    --dtype bfloat16 --bf16 \
    --diffusion_steps 64 --num_generations 8 --per_device_train_batch_size 8 --gradient_accumulation_steps 4 \
    --learning_rate 2e-5 --output_dir outputs/pararl-m
```

# 8 GPUs, full fine-tuning, DeepSpeed ZeRO-3
```bash
accelerate launch --config_file ds_configs/zero3.yaml examples/pararl.py \
    --model_name_or_path /local/MMaDA-Parallel-M \
    --processor pararl.released:mmada_parallel_m_processor \
    --dataset_name /local/my-edit-dataset \
    --clip_model ViT-L-14 --clip_pretrained /local/clip/open_clip_pytorch_model.bin \
    --dtype bfloat16 --bf16 --beta 1e-4 \
    --diffusion_steps 64 --num_generations 8 --per_device_train_batch_size 8 \
    --learning_rate 2e-5 --output_dir outputs/pararl-m-full
```
"""

import sys
from pathlib import Path


# `examples/pararl.py` shares the package's name: keep this folder off the import path so `import pararl` is the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import copy
import json
import os
import time
from dataclasses import dataclass, field

import torch
from trl import ModelConfig, ScriptArguments, TrlParser

from pararl.cli import (
    announce_defaults,
    apply_toy_defaults,
    check_flags,
    diffusion_peft_config,
    load_script_datasets,
    parse_command_line,
    usage_error,
)
from pararl.grpo.config import DiffusionGRPOConfig
from pararl.toy.recipe import (
    TOY_COORDINATION_PROMPTS,
    TOY_EVAL_SAMPLES,
    TOY_GRPO_DEFAULTS,
    TOY_LORA,
    TOY_REWARDS,
    TOY_TRAIN_CATEGORIES,
    TOY_TRAIN_SAMPLES,
)


# The toy world's defaults live with the rest of its recipe (pararl.toy.recipe): applied only when neither
# --model_name_or_path nor --dataset_name is given (the no-argument run on the shipped toy policy); the command line
# and --config override each of them. A real run gets TRL's defaults (DiffusionGRPOConfig / ModelConfig) for every
# flag it does not give.
TOY_DEFAULTS = {
    **TOY_GRPO_DEFAULTS,
    **TOY_LORA,
    "toy_train_categories": list(TOY_TRAIN_CATEGORIES),
    "paired_control": True,
}


@dataclass
class ParaRLScriptArguments(ScriptArguments):
    """Data, processor, reward model and evaluation of the ParaRL script.

    `--dataset_name` (TRL's `ScriptArguments`, like its split and config flags) is a dataset saved with `save_to_disk`
    or a Hub id, with `prompt`, optional `image` and `task` columns; without it the script trains on the bundled toy
    world.
    """

    processor: str = field(
        default="pararl.toy:toy_processor",
        metadata={"help": "`module:function` returning the ParallelProcessor of the model's vocabulary."},
    )
    clip_model: str | None = field(
        default=None,
        metadata={"help": "open_clip model name for the alignment reward. Default: the shipped tiny toy CLIP."},
    )
    clip_pretrained: str | None = field(default=None, metadata={"help": "Local open_clip weights file."})
    clip_long_text: str = field(
        default="truncate",
        metadata={
            "help": "Reasoning longer than CLIP's context: 'truncate' or 'chunks'.",
            "choices": ["truncate", "chunks"],
        },
    )
    toy_train_samples: int = field(
        default=TOY_TRAIN_SAMPLES, metadata={"help": "Toy world: number of training prompts."}
    )
    toy_eval_samples: int = field(
        default=TOY_EVAL_SAMPLES, metadata={"help": "Toy world: held-out prompts evaluated before/after."}
    )
    toy_seed: int = field(default=0, metadata={"help": "Toy world: generation seed."})
    toy_train_categories: list[str] | None = field(
        default=None,
        metadata={
            "help": "Toy world: the task families the training prompts are drawn from (the toy job's default: "
            "`open_colour`; with --model_name_or_path, all of `pararl.toy.CATEGORIES`). The held-out evaluation "
            "always covers every default family, plus any family outside the default world named here."
        },
    )
    toy_reward: str = field(
        default="clip",
        metadata={
            "help": "Toy world: 'clip' (ParaRL: the shipped tiny CLIP's alignment), or a control: 'exact' (the "
            "evaluator's output alignment computed by rule on each state, a perfect judge) or 'random' (uniform "
            "noise seeded by --seed: whatever it changes is optimiser drift, not learning).",
            "choices": list(TOY_REWARDS),
        },
    )
    evaluate: bool = field(default=True, metadata={"help": "Toy world: evaluate on held-out tasks before and after."})
    coordination_prompts: int = field(
        default=TOY_COORDINATION_PROMPTS,
        metadata={
            "help": "Toy world: held-out open_colour prompts (x num_generations rollouts) on which coordination, "
            "sharpening and coupling are measured before and after (with --evaluate; 0 = off)."
        },
    )
    paired_control: bool = field(
        default=False,
        metadata={
            "help": "Also run the same job at learning rate 0 (same prompts and rollout noise, no update) and report "
            "the reward's paired difference to it per logged step (summary.json, and the toy job's reward plot): a "
            "reward curve means learning only beyond that control. Doubles the rollouts; the toy job turns it on."
        },
    )


def main(script_args: ParaRLScriptArguments, training_args: DiffusionGRPOConfig, model_args: ModelConfig):
    ################
    # Processor, model, data
    ################
    # Imported after the command line is checked: a typo fails before these load.
    from pararl import DiffusionGRPOTrainer
    from pararl.processing import load_processor
    from pararl.rewards import CLIPAlignmentReward, RewardNormalizer

    processor = load_processor(script_args.processor)
    toy = script_args.dataset_name is None
    model = model_args.model_name_or_path
    if model is None:
        if not toy:
            raise ValueError("--model_name_or_path is required with your own --dataset_name.")
        from pararl.toy import toy_policy_path

        model = toy_policy_path()
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype or "float32",
        **(training_args.model_init_kwargs or {}),
    }
    peft_config = diffusion_peft_config(model_args)

    if toy:
        from pararl.toy.recipe import toy_datasets

        train_dataset, toy_eval_dataset = toy_datasets(
            script_args.toy_train_samples,
            script_args.toy_eval_samples,
            seed=script_args.toy_seed,
            train_categories=script_args.toy_train_categories,
        )
        eval_dataset = None
    else:
        train_dataset, eval_dataset = load_datasets(script_args, training_args)

    ################
    # Reward: normalised, clipped CLIP alignment of the partial reasoning and the partial image
    ################
    if not toy and script_args.toy_reward != "clip":
        raise ValueError(
            f"--toy_reward {script_args.toy_reward} scores toy-world states; it needs the toy world (no --dataset_name)."
        )

    def make_reward():
        """A fresh reward (its own noise and normaliser), so that the no-update control is scored alike."""
        if toy and script_args.clip_model is None:
            from pararl.toy.recipe import toy_reward

            return toy_reward(script_args.toy_reward, seed=training_args.seed, long_text=script_args.clip_long_text)
        return CLIPAlignmentReward(
            script_args.clip_model,
            pretrained=script_args.clip_pretrained,
            normalizer=RewardNormalizer(),
            long_text=script_args.clip_long_text,
        )

    ################
    # Training, and its no-update control
    ################
    def make_trainer(args, eval_dataset=None):
        return DiffusionGRPOTrainer(
            model=model,
            reward_funcs=[make_reward()],
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processor,
            peft_config=peft_config,
        )

    trainer = make_trainer(training_args, eval_dataset)
    evaluate_toy = toy and script_args.evaluate and trainer.accelerator.is_main_process
    coordination_prompts = script_args.coordination_prompts if evaluate_toy else 0

    def measure():
        """Held-out scores and coordination of the current policy (None for what this run does not measure)."""
        if not evaluate_toy:
            return None, None
        from pararl.toy.recipe import toy_coordination, toy_evaluation

        scores = toy_evaluation(trainer.model, processor, toy_eval_dataset, training_args)
        if not coordination_prompts:
            return scores, None
        return scores, toy_coordination(trainer.model, processor, training_args, coordination_prompts)

    before, coordination_before = measure()
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    trainer.save_model(training_args.output_dir)
    after, coordination_after = measure()
    control_history = None
    if script_args.paired_control:
        # The same resolved config (a copy: rebuilding it would re-derive its batch sizes), without the update.
        control_args = copy.deepcopy(training_args)
        control_args.learning_rate = 0.0
        control_args.output_dir = os.path.join(training_args.output_dir, "no_update_control")
        control_args.log_trajectory_pictures = False
        control = make_trainer(control_args)
        control.train()
        control_history = control.state.log_history

    if trainer.accelerator.is_main_process:
        summary = {"train_seconds": round(train_seconds, 1), "steps": trainer.state.global_step}
        if toy:
            summary["train_categories"] = sorted(set(train_dataset["category"]))
        rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
        if rewards:
            fifth = max(1, len(rewards) // 5)
            summary["reward_first"], summary["reward_last"] = rewards[0], rewards[-1]
            summary["reward_first_fifth"] = sum(rewards[:fifth]) / fifth
            summary["reward_last_fifth"] = sum(rewards[-fifth:]) / fifth
            summary["rewards"] = rewards
            print("Training reward per logged step: " + " ".join(f"{r:.3f}" for r in rewards))
        if rewards and control_history is not None:
            from pararl.toy.recipe import paired_reward_summary

            summary.update(paired_reward_summary(trainer.state.log_history, control_history))
            print("No-update control (lr 0):        " + " ".join(f"{r:.3f}" for r in summary["control_rewards"]))
            print("Paired difference per logged step: " + " ".join(f"{d:+.3f}" for d in summary["paired_difference"]))
            print(f"Paired difference over the last half of the run: {summary['paired_difference_last_half']:+.3f}")
        if toy and rewards:
            from pararl.toy.recipe import save_reward_curve

            curve = os.path.join(training_args.output_dir, "trajectories", "reward_curve.png")
            os.makedirs(os.path.dirname(curve), exist_ok=True)
            save_reward_curve(
                trainer.state.log_history,
                curve,
                title=f"ParaRL on the toy world ({script_args.toy_reward} reward)",
                control_log_history=control_history,
            )
            print(f"Reward curve saved to {curve}")
        if before is not None:
            from pararl.toy.policy import scores_of
            from pararl.toy.recipe import format_category_changes
            from pararl.toy.scoring import format_scores

            summary["before"], summary["after"] = scores_of(before), scores_of(after)
            summary["categories_before"], summary["categories_after"] = before["categories"], after["categories"]
            print(f"Held-out toy tasks before ParaRL ({before['num_samples']} samples):\n{format_scores(before)}\n")
            print(f"Held-out toy tasks after ParaRL:\n{format_scores(after)}\n")
            print(f"Per category, before -> after:\n{format_category_changes(before, after)}\n")
            print(format_comparison(summary["before"], summary["after"]))
        if coordination_before is not None:
            from pararl.toy.recipe import format_coordination_changes

            summary["coordination_before"], summary["coordination_after"] = coordination_before, coordination_after
            print(
                f"Coordination on {coordination_prompts} held-out open_colour prompts x {training_args.num_generations}"
                " rollouts (colour word vs the dot's colour, %; decoding = the training rollouts, text_first / "
                f"image_first = coupling), before -> after:\n"
                f"{format_coordination_changes(coordination_before, coordination_after)}\n"
            )
        with open(os.path.join(training_args.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(
            json.dumps(
                {
                    k: v
                    for k, v in summary.items()
                    if k not in ("before", "after", "coordination_before", "coordination_after")
                },
                indent=2,
            )
        )
        print(f"Adapter/model, trajectory pictures and summary.json saved in {training_args.output_dir}")


def load_datasets(script_args: ParaRLScriptArguments, training_args: DiffusionGRPOConfig):
    """`(train, eval)` of `--dataset_name` as TRL's scripts load it (with `--dataset_config` and
    `--dataset_streaming`); the eval split only when `--eval_strategy` is not "no"."""
    train, test = load_script_datasets(script_args)
    return train, test if training_args.eval_strategy != "no" else None


def format_comparison(before: dict, after: dict) -> str:
    """One line per axis: score before, after, and the change."""
    lines = [f"{'axis':<20}{'before':>8}{'after':>8}{'change':>8}"]
    for axis, value in before.items():
        if value is not None and after.get(axis) is not None:
            lines.append(f"{axis:<20}{value:>8.1f}{after[axis]:>8.1f}{after[axis] - value:>+8.1f}")
    return "\n".join(lines)


def check_paired_control(parser, script_args, training_args, toy_defaults: dict) -> None:
    """The no-update control is a second trainer in the same process, which DeepSpeed does not allow (one engine per
    process): the toy default gives way with a note; an explicit `--paired_control` is a usage error."""
    uses_deepspeed = training_args.deepspeed is not None or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
    if not (script_args.paired_control and uses_deepspeed):
        return
    if "paired_control" not in toy_defaults:
        usage_error(
            parser,
            "--paired_control runs a second trainer in this process, which DeepSpeed does not allow; run the same "
            "command with --learning_rate 0 as the control instead.",
        )
    toy_defaults.pop("paired_control")
    script_args.paired_control = False
    if int(os.environ.get("RANK", "0")) == 0:
        print("Under DeepSpeed the no-update control is off (one engine per process): run it with --learning_rate 0.")


def make_parser(argv: list[str]) -> tuple[TrlParser, dict]:
    """The parser, with the toy defaults set when `argv` names neither a model nor a dataset; returns the toy defaults
    that apply (those that `argv` and its --config do not override)."""
    parser = TrlParser((ParaRLScriptArguments, DiffusionGRPOConfig, ModelConfig), allow_abbrev=False)
    on_cpu = not torch.cuda.is_available()
    parser.set_defaults(use_cpu=on_cpu, bf16=not on_cpu)  # every run: the device decides
    return parser, apply_toy_defaults(parser, argv, TOY_DEFAULTS)


if __name__ == "__main__":
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # Toy-sized models on a CPU: thread hand-offs cost more than they save (benchmarks/RESULTS.md#thread-count).
        torch.set_num_threads(1)
    argv = sys.argv[1:]
    parser, toy_defaults = make_parser(argv)
    check_flags(parser, argv)
    script_args, training_args, model_args = parse_command_line(parser, argv)  # a usage error: one line, exit 2
    check_paired_control(parser, script_args, training_args, toy_defaults)
    announce_defaults(toy_defaults)
    main(script_args, training_args, model_args)
