# /// script
# dependencies = [
#     "pararl",
# ]
# ///

"""Parallel SFT (MMaDA-Parallel "parallel synthesis"): teach a masked-diffusion model to write its reasoning and draw
its output image at the same time.

With no arguments the script trains a tiny `MaskedDiffusionLM` from scratch on the bundled toy world, on CPU, in a
couple of minutes. Its learning-rate and schedule defaults (`TOY_DEFAULTS` below) are set for that case and apply only
when neither `--model_name_or_path` nor `--dataset_name` is given; a real run gets `ParallelSFTConfig`'s (TRL's)
defaults for every flag it does not give (the script prints which applied). Flags must be written in full: an
abbreviation or a typo is refused with the closest flag named.

# Toy world, from scratch (CPU)
```bash
python examples/sft.py --output_dir outputs/toy-sft
python examples/sft.py --model_size small --num_train_epochs 8 --output_dir outputs/toy-sft-small
```

# Fine-tune a checkpoint (full parameters, DeepSpeed ZeRO-3)
```bash
accelerate launch --config_file ds_configs/zero3.yaml examples/sft.py \
    --model_name_or_path /path/to/checkpoint \
    --processor my_package.processing:make_processor \
    --dataset_name /path/to/dataset \
    --learning_rate 2e-5 \
    --lr_scheduler_type cosine \
    --warmup_steps 500 \
    --per_device_train_batch_size 4 \
    --gradient_accumulation_steps 6 \
    --activation_checkpointing \
    --output_dir outputs/sft
```

# LoRA
```bash
python examples/sft.py \
    --model_name_or_path outputs/toy-sft \
    --use_peft \
    --lora_r 16 \
    --lora_alpha 32 \
    --learning_rate 1e-3 \
    --output_dir outputs/toy-sft-lora
```
"""

import sys
from pathlib import Path


# `examples/pararl.py` shares the package's name: keep this folder off the import path so `import pararl` is the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

from dataclasses import dataclass, field

from trl import ModelConfig, ScriptArguments, TrlParser

from pararl.cli import (
    announce_defaults,
    apply_toy_defaults,
    check_flags,
    diffusion_peft_config,
    load_script_datasets,
    parse_command_line,
)
from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.processing import ParallelProcessor, load_processor
from pararl.sft import ParallelSFTConfig, ParallelSFTTrainer
from pararl.toy import build_toy_dataset


# The toy world's defaults, in one place: applied only when neither --model_name_or_path nor --dataset_name is given
# (a tiny model trained from scratch on the toy world); the command line and --config override each of them. A real
# run gets ParallelSFTConfig's (TRL's) defaults for every flag it does not give.
TOY_DEFAULTS = {
    "output_dir": "outputs/toy-sft",
    "learning_rate": 1e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 20,
    "weight_decay": 0.01,
    "num_train_epochs": 2,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "report_to": "none",
}


# Sizes of the from-scratch toy model: (d_model, n_layers, n_heads, mlp_hidden_size).
MODEL_SIZES = {
    "tiny": (64, 2, 4, 128),
    "small": (128, 4, 4, 384),
    "base": (256, 6, 8, 768),
}


@dataclass
class SFTScriptArguments(ScriptArguments):
    """Arguments of the dataset, the processor and the from-scratch model.

    `--dataset_name` (TRL's `ScriptArguments`, like its split and config flags) is a directory saved with
    `save_to_disk` or a Hub dataset id, in the pararl schema (prompt, image, task, reasoning, output_image); without it
    the script trains on the bundled toy world.
    """

    processor: str = field(
        default="pararl.toy:toy_processor",
        metadata={"help": "`module:function` that returns the ParallelProcessor of the model's vocabulary."},
    )
    toy_train_samples: int = field(default=2000, metadata={"help": "Toy world: number of training samples."})
    toy_eval_samples: int = field(default=200, metadata={"help": "Toy world: number of evaluation samples."})
    toy_seed: int = field(default=0, metadata={"help": "Toy world: generation seed."})
    model_size: str = field(
        default="tiny",
        metadata={
            "help": "Size of the model trained from scratch when no --model_name_or_path is given.",
            "choices": list(MODEL_SIZES),
        },
    )


def scratch_model(processor: ParallelProcessor, size: str) -> MaskedDiffusionLM:
    preset = processor.preset
    d_model, n_layers, n_heads, mlp_hidden_size = MODEL_SIZES[size]
    config = MaskedDiffusionConfig(
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        mlp_hidden_size=mlp_hidden_size,
        max_sequence_length=1024,
        rope_theta=10000.0,
        **preset.model_config_kwargs(),
    )
    return MaskedDiffusionLM(config)


def load_datasets(script_args: SFTScriptArguments):
    if script_args.dataset_name is None:
        train = build_toy_dataset("train", script_args.toy_train_samples, seed=script_args.toy_seed)
        test = build_toy_dataset("test", script_args.toy_eval_samples, seed=script_args.toy_seed)
        return train, test
    return load_script_datasets(script_args)


def main(script_args: SFTScriptArguments, training_args: ParallelSFTConfig, model_args: ModelConfig):
    ################
    # Processor
    ################
    processor = load_processor(script_args.processor)

    ################
    # Model
    ################
    if model_args.model_name_or_path is not None:
        model = model_args.model_name_or_path
        training_args.model_init_kwargs = {
            "revision": model_args.model_revision,
            "dtype": model_args.dtype,
            **(training_args.model_init_kwargs or {}),
        }
    else:
        model = scratch_model(processor, script_args.model_size)

    peft_config = diffusion_peft_config(model_args)

    ################
    # Dataset
    ################
    train_dataset, eval_dataset = load_datasets(script_args)

    ################
    # Training
    ################
    trainer = ParallelSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=processor,
        peft_config=peft_config,
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


def make_parser(argv: list[str]) -> tuple[TrlParser, dict]:
    """The parser, with the toy defaults set when `argv` names neither a model nor a dataset; returns the toy defaults
    that apply (those that `argv` and its --config do not override)."""
    parser = TrlParser((SFTScriptArguments, ParallelSFTConfig, ModelConfig), allow_abbrev=False)
    return parser, apply_toy_defaults(parser, argv, TOY_DEFAULTS)


if __name__ == "__main__":
    argv = sys.argv[1:]
    parser, toy_defaults = make_parser(argv)
    check_flags(parser, argv)
    script_args, training_args, model_args = parse_command_line(parser, argv)  # a usage error: one line, exit 2
    announce_defaults(toy_defaults)
    main(script_args, training_args, model_args)
