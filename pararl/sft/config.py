"""`ParallelSFTConfig`: training arguments of the parallel-synthesis SFT stage."""

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import TrainingArguments

from ..config_ranges import check_ranges
from .objective import LOSS_WEIGHTS


@dataclass
class ParallelSFTConfig(TrainingArguments):
    r"""
    Configuration class for [`ParallelSFTTrainer`]: supervised fine-tuning of a parallel multimodal masked-diffusion
    model to write its reasoning text and its output image at the same time (MMaDA-Parallel, "parallel synthesis").

    This class holds only the parameters specific to parallel SFT; see [`~transformers.TrainingArguments`] for the
    rest. Defaults that differ from [`~transformers.TrainingArguments`] follow TRL: `logging_steps=10`,
    `learning_rate=2e-5` (the paper's SFT learning rate), `remove_unused_columns=False`, and `bf16` on by default
    where the hardware supports it (a CUDA GPU with bf16), off on CPU.

    Dataset rows use the same schema as the ParaRL trainer, so one dataset serves both stages:

    - `prompt` (`str`): the instruction (called "instruction" in the paper);
    - `image` (PIL image or `None`, optional): the input image, absent or `None` for text-to-image generation;
    - `task` (`str`, optional): `"edit"` or `"generate"`; defaults to `"edit"` when an input image is given;
    - `reasoning` (`str`): the reasoning text the model learns to write;
    - `output_image` (PIL image): the image the model learns to draw;
    - or, instead of the PIL images, their pre-tokenised code grids `image_codes` / `output_image_codes` (nested
      lists or tensors of shape `(rows, cols)`), as written by [`pretokenize_dataset`].

    Using [`~transformers.HfArgumentParser`] (or TRL's `TrlParser`) this class becomes command-line arguments.

    Parameters:
        > Parameters that control the model

        model_init_kwargs (`dict[str, Any]` or `str`, *optional*):
            Keyword arguments for [`~pararl.models.MaskedDiffusionLM.from_pretrained`], used when the `model` argument
            of the [`ParallelSFTTrainer`] is a path. A JSON string is accepted (command line). A string `dtype` such as
            `"bfloat16"` is converted to the torch dtype.

        > Parameters that control the data preprocessing

        dataset_num_proc (`int`, *optional*):
            Number of processes used to pre-tokenise the datasets (`datasets.Dataset.map`).
        dataset_kwargs (`dict[str, Any]` or `str`, *optional*):
            Options of the dataset preparation. The only supported key is `skip_prepare_dataset`: when `True` the
            trainer does not pre-tokenise nor validate the datasets up front, and the collator encodes PIL images on
            the fly.
        truncate_prompt (`bool`, *optional*, defaults to `False`):
            Truncate instructions over the preset's `max_prompt_tokens` with a warning, instead of raising an error
            that names the row.
        truncate_reasoning (`bool`, *optional*, defaults to `False`):
            Truncate reasoning texts over the preset's text span (`max_reasoning_tokens - 1`, one slot is kept for
            `<eos>`) with a warning, instead of raising an error that names the row.

        > Parameters that control the objective

        min_mask_ratio (`float`, *optional*, defaults to `1e-3`):
            Floor of the per-sample mask ratio `t ~ U(min_mask_ratio, 1)`. It bounds the `1/t` weight by
            `1 / min_mask_ratio`. Must be in `(0, 1]`.
        text_loss_weight (`str`, *optional*, defaults to `"inverse_t"`):
            Weight of a masked text token: `"inverse_t"` (`1/t`, the paper's choice) or `"constant"` (1).
        image_loss_weight (`str`, *optional*, defaults to `"constant"`):
            Weight of a masked image token: `"constant"` (1, the paper's choice) or `"inverse_t"` (`1/t`).
        prompt_dropout (`float`, *optional*, defaults to `0.1`):
            Probability, per training sample, of replacing the instruction by the empty one (`<bos> <eos>`), so that
            text classifier-free guidance works at sampling time. Evaluation never drops.
        image_dropout (`float`, *optional*, defaults to `0.1`):
            Probability, per training sample with an input image, of leaving the input image out, independently of
            `prompt_dropout`. The dropped inputs are built by the same processor call as the rollout's
            unconditional rows.
    """

    _VALID_DICT_FIELDS = TrainingArguments._VALID_DICT_FIELDS + ["model_init_kwargs", "dataset_kwargs"]

    # Parameters whose default values are overridden from TrainingArguments
    learning_rate: float = field(
        default=2e-5,
        metadata={"help": "The initial learning rate for AdamW."},
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X updates steps. Should be an integer or a float in range `[0,1)`. If smaller than 1, "
            "will be interpreted as ratio of total training steps."
        },
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Whether to use bf16 (mixed) precision instead of 32-bit. If not set, it defaults to `True` on a "
            "CUDA GPU that supports bf16 (and `fp16` is not set), `False` otherwise (e.g. on CPU)."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Must stay `False`: the collator needs the dataset columns (prompt, image, reasoning, ...), which "
            "are not arguments of the model's forward."
        },
    )

    # Parameters that control the model
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `MaskedDiffusionLM.from_pretrained`, used when the `model` argument of the "
            "`ParallelSFTTrainer` is a path."
        },
    )

    # Parameters that control the data preprocessing
    dataset_num_proc: int | None = field(
        default=None,
        metadata={"help": "Number of processes used to pre-tokenise the datasets."},
    )
    dataset_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={
            "help": "Options of the dataset preparation. The only supported key is `skip_prepare_dataset` (no "
            "pre-tokenisation nor up-front validation)."
        },
    )
    truncate_prompt: bool = field(
        default=False,
        metadata={"help": "Truncate instructions over the preset's budget with a warning instead of raising."},
    )
    truncate_reasoning: bool = field(
        default=False,
        metadata={"help": "Truncate reasoning texts over the preset's text span with a warning instead of raising."},
    )

    # Parameters that control the objective
    min_mask_ratio: float = field(
        default=1e-3,
        metadata={"help": "Floor of the per-sample mask ratio t ~ U(min_mask_ratio, 1); bounds the 1/t weight."},
    )
    text_loss_weight: str = field(
        default="inverse_t",
        metadata={
            "help": "Weight of a masked text token: `inverse_t` (1/t, the paper's choice) or `constant` (1).",
            "choices": list(LOSS_WEIGHTS),
        },
    )
    image_loss_weight: str = field(
        default="constant",
        metadata={
            "help": "Weight of a masked image token: `constant` (1, the paper's choice) or `inverse_t` (1/t).",
            "choices": list(LOSS_WEIGHTS),
        },
    )
    prompt_dropout: float = field(
        default=0.1,
        metadata={"help": "Probability of dropping the instruction of a training sample (for guidance)."},
    )
    image_dropout: float = field(
        default=0.1,
        metadata={"help": "Probability of dropping the input image of a training sample (for guidance)."},
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = (
                not self.fp16 and not self.use_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            )
        # The command line gives dict fields as JSON strings; TrainingArguments only parses its own dict fields.
        for name in ("model_init_kwargs", "dataset_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{name} must be a dict or a JSON object string, got {value!r}.") from error
        check_ranges(self)
        super().__post_init__()

        for name in ("text_loss_weight", "image_loss_weight"):
            if getattr(self, name) not in LOSS_WEIGHTS:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(LOSS_WEIGHTS)}.")
        if not 0.0 < self.min_mask_ratio <= 1.0:
            raise ValueError(
                f"min_mask_ratio must be in (0, 1], got {self.min_mask_ratio}; a positive floor keeps the 1/t weight "
                "finite (1e-3 is the usual choice)."
            )
        for name in ("prompt_dropout", "image_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {getattr(self, name)}.")
        if self.remove_unused_columns:
            raise ValueError(
                "remove_unused_columns=True would drop the dataset columns the collator needs (prompt, image, "
                "reasoning, output_image, ...); set remove_unused_columns=False."
            )
        if self.dataset_kwargs is not None:
            unknown = set(self.dataset_kwargs) - {"skip_prepare_dataset"}
            if unknown:
                raise ValueError(
                    f"dataset_kwargs has unknown keys {sorted(unknown)}; the only supported key is "
                    "'skip_prepare_dataset'."
                )
        if self.dataset_num_proc is not None and self.dataset_num_proc < 1:
            raise ValueError(f"dataset_num_proc must be a positive integer or None, got {self.dataset_num_proc}.")
