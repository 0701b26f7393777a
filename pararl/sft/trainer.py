"""`ParallelSFTTrainer`: parallel-synthesis SFT of a multimodal masked-diffusion model."""

import copy
from collections import defaultdict
from typing import Any

import datasets
import torch
from accelerate.logging import get_logger
from torch import nn
from transformers import Trainer, TrainerCallback
from transformers.utils import is_peft_available

from ..data_validation import check_datasets
from ..models import MaskedDiffusionLM
from ..processing import ParallelProcessor
from ..weight_files import check_resume_checkpoint
from .config import ParallelSFTConfig
from .data import DataCollatorForParallelSFT, pretokenize_dataset
from .objective import parallel_sft_loss, sample_mask_ratio, sample_output_mask


if is_peft_available():
    from peft import PeftConfig, PeftModel, get_peft_model


logger = get_logger(__name__)


class ParallelSFTTrainer(Trainer):
    r"""
    Trainer for the parallel-synthesis SFT stage of MMaDA-Parallel
    ([paper](https://huggingface.co/papers/2511.09611)): the model learns to write a reasoning text and an output
    image at the same time, from one masked-diffusion objective over the output part of the sequence.

    Every training step draws one mask ratio `t ~ U(min_mask_ratio, 1)` per sample, masks each output slot (image
    and text) with probability `t` (at least one per modality), leaves the input part untouched, and minimises the
    cross-entropy at the masked slots with weight `1/t` on text tokens and `1` on image tokens by default (see
    [`~pararl.sft.objective`] for the exact loss and its normalisation). `loss/text` and `loss/image` are logged
    next to `loss`. Training rows have their instruction and input image dropped at random
    (`prompt_dropout`, `image_dropout`) so that classifier-free guidance works at sampling time.

    Why [`~transformers.Trainer`] and not [`~trl.SFTTrainer`]: `SFTTrainer` is built around causal language
    modelling. It tokenises text with a chat template, packs or pads sequences, and computes a shifted next-token
    loss (optionally completion-only) inside the model or its fused LM head. None of that applies here: sequences
    are a fixed input/output layout of text *and* image tokens, the loss needs a fresh random mask per step and
    per-modality weights, and packing would break the fixed output layout. Overriding all of it would leave nothing
    of `SFTTrainer` but its constructor, so this class subclasses `Trainer` directly and keeps TRL's conventions:
    the constructor signature, a config dataclass, PEFT through `peft_config`, a metrics buffer flushed by `log`.

    The model is called once per step through the (possibly DeepSpeed-wrapped) model's `forward`, with logits only
    at the masked output slots, so DeepSpeed ZeRO-3 gathers the parameters as usual.

    Args:
        model (`str` or [`~pararl.models.MaskedDiffusionLM`] or `PeftModel`):
            Model to train: a path or Hub id loaded with `MaskedDiffusionLM.from_pretrained(model,
            **args.model_init_kwargs)`, or a model instance.
        args ([`ParallelSFTConfig`], *optional*):
            Training configuration. Defaults to `ParallelSFTConfig("<model name>-ParallelSFT")`.
        data_collator (`Callable`, *optional*):
            Turns a list of rows into `input_ids`, `attention_mask` (input part) and `labels` (clean output part).
            Defaults to [`DataCollatorForParallelSFT`] with the config's dropout probabilities (no dropout at
            evaluation).
        train_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Rows in the pararl schema (see [`ParallelSFTConfig`]). Unless `dataset_kwargs={"skip_prepare_dataset":
            True}`, every row is validated and its images are pre-tokenised once ([`pretokenize_dataset`]).
        eval_dataset ([`~datasets.Dataset`] or `dict[str, Dataset]`, *optional*):
            Same format as `train_dataset`.
        processing_class ([`~pararl.processing.ParallelProcessor`]):
            Builds the sequences. Its text tokenizer is what `save_model` writes next to the weights.
        callbacks (`list` of [`~transformers.TrainerCallback`], *optional*):
            Callbacks added to the default ones.
        optimizers (`tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None]`, *optional*):
            Optimizer and scheduler; default AdamW with the config's schedule.
        optimizer_cls_and_kwargs (`tuple[type[torch.optim.Optimizer], dict[str, Any]]`, *optional*):
            Optimizer class and keyword arguments, instead of an instance.
        peft_config ([`~peft.PeftConfig`], *optional*):
            Wraps the model with `peft.get_peft_model`; only the adapters are trained and saved. On
            [`~pararl.models.MaskedDiffusionLM`], target the attention projections (`["q_proj", "k_proj", "v_proj",
            "attn_out"]`): the name `ff_out` also matches the LM head.

    Example:

    ```python
    >>> from pararl.sft import ParallelSFTConfig, ParallelSFTTrainer
    >>> from pararl.toy import build_toy_dataset, toy_processor

    >>> trainer = ParallelSFTTrainer(
    ...     model="path/to/masked-diffusion-model",
    ...     args=ParallelSFTConfig(output_dir="toy-sft"),
    ...     train_dataset=build_toy_dataset("train", num_samples=1000),
    ...     processing_class=toy_processor(),
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["pararl", "sft", "masked-diffusion", "mmada-parallel"]
    _name = "Parallel SFT"

    # compute_loss returns a per-micro-batch mean (its normaliser is proportional to the micro-batch size), so
    # Trainer must divide it by the number of gradient accumulation steps. Without this, Trainer would infer from
    # the model's `**kwargs` that the loss is already scaled by `num_items_in_batch`.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: "str | MaskedDiffusionLM | PeftModel",
        args: ParallelSFTConfig | None = None,
        data_collator: Any = None,
        train_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
        eval_dataset: datasets.Dataset | dict[str, datasets.Dataset] | None = None,
        processing_class: ParallelProcessor | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        peft_config: "PeftConfig | None" = None,
    ):
        # Args
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            model_name = (model_name or "model").rstrip("/").split("/")[-1]
            args = ParallelSFTConfig(f"{model_name}-ParallelSFT")
        elif not isinstance(args, ParallelSFTConfig):
            raise ValueError(f"args must be a ParallelSFTConfig, got {type(args).__name__}.")

        # Processing class
        if not isinstance(processing_class, ParallelProcessor):
            raise ValueError(
                "processing_class must be a pararl ParallelProcessor (text tokenizer + image tokenizer + sequence "
                f"preset), got {type(processing_class).__name__}; e.g. `pararl.toy.toy_processor()` for the toy world."
            )
        # A shallow copy carries the config's truncation options without changing the caller's processor.
        processor = copy.copy(processing_class)
        processor.truncate_prompt = args.truncate_prompt
        processor.truncate_reasoning = args.truncate_reasoning
        self.processor = processor
        check_datasets(processor, "sft", train_dataset, eval_dataset, args.dataset_num_proc)  # before the model loads

        # Model
        if isinstance(model, str):
            model = MaskedDiffusionLM.from_pretrained(model, **self._model_init_kwargs(args))
        elif args.model_init_kwargs:
            logger.warning("model_init_kwargs is ignored because the model is already instantiated.")
        self._check_model_matches_preset(model, processor)

        # PEFT
        if peft_config is not None:
            if not is_peft_available():
                raise ImportError("peft_config needs the `peft` package: pip install peft.")
            model = get_peft_model(model, peft_config)
        if is_peft_available() and isinstance(model, PeftModel) and args.activation_checkpointing:
            # Checkpointed blocks need an input that requires grad, which frozen embeddings do not provide.
            model.enable_input_require_grads()

        # Data collator: dropout while training only; evaluation builds the conditional inputs.
        if data_collator is None:
            data_collator = DataCollatorForParallelSFT(
                processor,
                prompt_dropout=args.prompt_dropout,
                image_dropout=args.image_dropout,
                # Distinct from the masking generator's seed, so dropout and mask ratios are not correlated.
                seed=args.seed + 7919 * (args.process_index + 1),
            )
            self._eval_data_collator = DataCollatorForParallelSFT(processor)
        else:
            self._eval_data_collator = data_collator

        # Datasets
        skip_prepare = bool((args.dataset_kwargs or {}).get("skip_prepare_dataset", False))
        if not skip_prepare:
            train_dataset = self._prepare_dataset(train_dataset, processor, args, "train")
            if isinstance(eval_dataset, dict):
                eval_dataset = {
                    key: self._prepare_dataset(dataset, processor, args, f"eval ({key})")
                    for key, dataset in eval_dataset.items()
                }
            else:
                eval_dataset = self._prepare_dataset(eval_dataset, processor, args, "eval")

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            # The text tokenizer, so that `save_model` writes it next to the weights.
            processing_class=processor.tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        )

        # Masking RNG: generators owned by the trainer, never the global RNG mid-training. One stream per process
        # for training; evaluation restarts a fixed stream at every `evaluate` so eval losses are comparable.
        device = self.accelerator.device
        self._mask_generator = torch.Generator(device=device).manual_seed(args.seed + args.process_index)
        self._eval_mask_generator = torch.Generator(device=device)
        # The processor's slot masks, on the device once.
        self._image_slots = processor.image_slot_mask.to(device)
        self._text_slots = processor.text_slot_mask.to(device)

        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

    # ------------------------------------------------------------------------------------------------------ setup
    @staticmethod
    def _model_init_kwargs(args: ParallelSFTConfig) -> dict[str, Any]:
        kwargs = dict(args.model_init_kwargs or {})
        dtype = kwargs.get("dtype")
        if isinstance(dtype, str) and dtype != "auto":
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(
                    f"model_init_kwargs dtype={dtype!r} is not a torch dtype (e.g. 'bfloat16', 'float32')."
                )
            kwargs["dtype"] = getattr(torch, dtype)
        return kwargs

    @staticmethod
    def _check_model_matches_preset(model: nn.Module, processor: ParallelProcessor) -> None:
        config, preset = model.config, processor.preset
        if getattr(config, "mask_token_id", preset.mask_token_id) != preset.mask_token_id:
            raise ValueError(
                f"model.config.mask_token_id is {config.mask_token_id} but preset {preset.name!r} uses "
                f"{preset.mask_token_id}; the model and the processor must share one vocabulary."
            )
        rows = getattr(config, "embedding_size", None) or config.vocab_size
        if rows < preset.image_vocab_range[1]:
            raise ValueError(
                f"the model has {rows} vocabulary rows but preset {preset.name!r} needs ids up to "
                f"{preset.image_vocab_range[1] - 1} (image codes end at {preset.image_vocab_range[1]})."
            )

    @staticmethod
    def _prepare_dataset(dataset, processor: ParallelProcessor, args: ParallelSFTConfig, name: str):
        if not isinstance(dataset, datasets.Dataset | datasets.IterableDataset):
            return dataset
        # The main process writes the `datasets` cache first; the others then load it instead of recomputing.
        with args.main_process_first(desc=f"pre-tokenising the {name} dataset"):
            return pretokenize_dataset(
                dataset, processor, num_proc=args.dataset_num_proc, desc=f"Pre-tokenising the {name} dataset"
            )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Trainer resumes non-strictly (a PEFT adapter's missing keys would be dropped silently): check first.
        check_resume_checkpoint(model if model is not None else self.model, resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    # ------------------------------------------------------------------------------------------------------- data
    def get_eval_dataloader(self, eval_dataset=None):
        # Evaluation measures the conditional loss: swap in the collator without conditioning dropout.
        train_collator, self.data_collator = self.data_collator, self._eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    # ------------------------------------------------------------------------------------------------------- loss
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ):
        mode = "train" if self.model.training else "eval"
        generator = self._mask_generator if mode == "train" else self._eval_mask_generator
        args, preset = self.args, self.processor.preset
        labels = inputs["labels"]
        batch_size, device = labels.shape[0], labels.device
        image_slots, text_slots = self._image_slots.to(device), self._text_slots.to(device)

        # Noise the output part only: one t per sample, shared by both modalities.
        t = sample_mask_ratio(batch_size, args.min_mask_ratio, generator=generator, device=device)
        masked = sample_output_mask(t, image_slots, text_slots, generator=generator)
        noisy = labels.masked_fill(masked, preset.mask_token_id)
        sequence = self.processor.concat(inputs, noisy)

        # Logits only at masked slots: a stable sort puts each row's masked slots first (in order), and the batch is
        # cut at the largest count; the tail of shorter rows is excluded by `loss_mask`. One full-vocabulary forward
        # through the wrapped model (ZeRO-3 gathers parameters in its forward hooks); the modality columns are
        # sliced from that tensor, which costs little next to the backbone.
        num_masked = masked.sum(dim=1)
        width = int(num_masked.max())
        slots = torch.sort(masked.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :width]
        loss_mask = torch.arange(width, device=device)[None, :] < num_masked[:, None]
        input_length = inputs["input_ids"].shape[1]
        outputs = model(
            input_ids=sequence["input_ids"],
            attention_mask=sequence["attention_mask"],
            logits_positions=slots + input_length,
        )
        result = parallel_sft_loss(
            outputs.logits,
            labels.gather(1, slots),
            loss_mask,
            image_slots[slots],
            t,
            num_text_tokens=batch_size * int(text_slots.sum()),
            num_image_tokens=batch_size * int(image_slots.sum()),
            text_vocab_range=preset.text_vocab_range,
            image_vocab_range=preset.image_vocab_range,
            mask_token_id=preset.mask_token_id,
            text_loss_weight=args.text_loss_weight,
            image_loss_weight=args.image_loss_weight,
        )

        # Per-rank values are means over the same number of slots per sample, so the mean over ranks is exact.
        for name, value in (("loss/text", result.text_loss), ("loss/image", result.image_loss), ("mask_ratio", t)):
            gathered = self.accelerator.gather(value.detach().float().mean().reshape(1))
            self._metrics[mode][name].append(gathered.mean().item())

        return (result.loss, outputs) if return_outputs else result.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        # The same masks at every evaluation, so that eval losses are comparable across training.
        self._eval_mask_generator.manual_seed(self.args.seed)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    # ---------------------------------------------------------------------------------------------------- logging
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {key: sum(values) / len(values) for key, values in self._metrics[mode].items() if values}
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        super().log({**logs, **metrics}, start_time)
        self._metrics[mode].clear()
