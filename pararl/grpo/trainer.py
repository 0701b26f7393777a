"""`DiffusionGRPOTrainer`: ParaRL, trajectory-level GRPO for parallel multimodal masked-diffusion models.

The trainer is TRL's `GRPOTrainer` with three seams replaced:

1. generation (`_generate_and_score_completions`): pararl's parallel decoder writes text and image together; for
   every prompt group `num_reward_steps` step indices are drawn (shared by the group's rollouts); the rewards score
   the intermediate state of every (rollout, step) pair and the advantages are normalised per group and step;
2. the per-token likelihood (`_get_per_token_logps_and_entropies`): the log-probability of the tokens revealed at
   step k, given the state before step k, under the modality's own sampling distribution;
3. checkpoint hooks that also save and restore the reward normalisers.

Words used below (`_RowIndex` has the index maps between them):

- *rollout*: one decoded output of one prompt; the G rollouts of a prompt form its *group*.
- *row*: one TRL completion row, what the loss scores: a (rollout, step) pair, or a (rollout, step group) pair.
- *step group*: `loss_step_group` consecutive denoising steps that one row scores together (loss_steps="all").
- *slots* index the output part, *positions* the whole sequence; a modality's *span* is its slots (`text_positions`).
- *columns* are a table's: the dataset's (passed on to the rewards) or the logged completions table's; the token ids a
  modality samples from are its *vocabulary range*.

Each (rollout, step) pair is one TRL *completion row*, encoded so that TRL's loss code needs no change:

- `prompt_ids` / `prompt_mask`: the input part (right-padded; padding masked);
- `completion_ids`: the output part as it stands *after* step k (tokens revealed later are `[MASK]`);
- `completion_mask`: 1 at the tokens revealed *at* step k, i.e. the tokens the loss scores.

With `loss_steps="all"` the rows are instead the rollout's step groups `[a, a + loss_step_group)` (every step at group
size 1): `completion_ids` is the output after the group, `completion_mask` the tokens revealed in it, and the
advantages are per token (TRL's `(B, T)` form), each token's from the first rewarded step at or after its own.

The likelihood rebuilds the model input by masking the scored tokens again, which gives exactly the state before
step k (before the group's first step). TRL's clipped ratio, loss types, `num_iterations`, β·KL to the reference,
gradient accumulation and metrics then act on these rows unchanged, and everything is per row, so TRL's shuffle and
split of the generation batch cannot break it.

What "exact" means. The likelihood of a row is the probability of the values revealed at step k given the state
before step k, under the distribution the sampler drew them from: the policy's forward, the modality's temperature
and `top_k` (replayed as the same filter), under the same autocast as the rollout. Which slots a step reveals is not
scored: under `remasking="random"` that choice is uniform among the masked slots, a constant of the policy, so the
likelihood of the whole trajectory is exact up to that constant; under `"low_confidence"` (the default) the choice
depends on the drawn values and so on the policy, and its probability is left out (the gradient of the slot choice
is not followed). What the likelihood cannot replay, classifier-free guidance (it needs the unconditional rows) or a
faster approximate sampler (`RolloutConfig.off_policy`), is corrected: the decoder's recorded log-probs are the
behaviour policy and TRL's vLLM importance-sampling correction applies with TRL's own fields and metrics.
Confidence-threshold decoding stays on-policy (every value is drawn from the full forward the likelihood replays),
but its rows end at different steps: the decoder then records x0 at every step and each group's steps are drawn
after the rollout within its shortest row, and the likelihood is sized by the decoder's own per-step bound.
"""

import copy
import json
import math
import os
import random
import warnings
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather, gather_object, is_peft_model
from datasets import Dataset, IterableDataset
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback
from trl import GRPOTrainer
from trl.extras.profiling import profiling_context, profiling_decorator
from trl.models import prepare_deepspeed, unwrap_model_for_generation
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import nanmax, nanmin, nanstd, use_adapter

from ..data_validation import check_datasets
from ..image_tokenizers import tensor_to_images
from ..models import MaskedDiffusionLM
from ..processing import ParallelProcessor, code_grid, text_problem
from ..rewards import Reward, RewardStates, as_reward, compute_rewards, get_step_selector
from ..rewards.steps import FinalStep, StepSelector, StratifiedSteps
from ..rollout import ParallelDecoder, RevealPlan, Trajectory, counter_uniform
from ..weight_files import check_resume_checkpoint
from .callbacks import TrajectoryPictureCallback
from .config import DiffusionGRPOConfig


_REWARD_STATE_FILE = "reward_state.json"
# Rollouts buffered for the rest of a generation window, one file per process (see `_save_checkpoint`).
_BUFFER_FILE = "rollout_buffer-rank{rank}.safetensors"
# Distinct odd constants that spread (seed, generation round, row) over independent integer seeds.
_SEED_MULTIPLIER = 0x9E3779B1
_ROUND_MULTIPLIER = 0x85EBCA77
_ROW_MULTIPLIER = 0xC2B2AE3D
# Noise streams of the random-mask likelihood (distinct from the rollout's own streams by their seeds).
_MASK_RATIO_STREAM, _MASK_SLOT_STREAM = 101, 102
# Consecutive generations a reward may be all None or spread-free in every group before a warning names it.
_IDLE_REWARD_ROUNDS = 3
# Generation rounds of evaluations start here, far from any training round (see `evaluate`).
_EVAL_ROUND_OFFSET = 2**40
# Logit elements one no-grad likelihood pass holds at a time (1 GiB in fp32).
_NO_GRAD_LOGITS_BUDGET = 2**28


# ======================================================================================================================
# TRL internals adapter
#
# What pararl relies on that TRL's `GRPOTrainer` (and transformers' `Trainer`) does not publish: the private methods it
# overrides or calls and the private state it reads or writes, written against TRL 1.16. The state and the called
# methods are touched only inside `_TRLAdapter`; the overridden methods are `DiffusionGRPOTrainer`'s seams.
# tests/test_trl_adapter.py checks every name against the installed TRL and fails naming any an upgrade renamed.
# ======================================================================================================================
TRL_INTERNALS: tuple[tuple[str, str], ...] = (
    # (name, how pararl uses it). "override": a method TRL calls and pararl replaces (a rename would bypass pararl's);
    # "call": a method pararl calls; "class": a class attribute TRL reads; "state": an attribute GRPOTrainer.__init__
    # sets and pararl reads or writes.
    ("_generate_and_score_completions", "override"),
    ("_get_per_token_logps_and_entropies", "override"),
    ("_compute_loss", "override"),
    ("_save_checkpoint", "override"),  # transformers.Trainer
    ("_load_from_checkpoint", "override"),  # transformers.Trainer
    ("_load_optimizer_and_scheduler", "override"),  # transformers.Trainer
    ("_log_completion_extra", "call"),
    ("_log_metric", "call"),
    ("_get_output_dir", "call"),  # transformers.Trainer
    ("_tag_names", "class"),
    ("_name", "class"),
    ("_step", "state"),  # micro-steps so far: the generation window's position
    ("_buffered_inputs", "state"),  # the generation window's rows, split per micro-step
    ("_metrics", "state"),  # {"train" | "eval": {metric: [values]}}
    ("_logs", "state"),  # the completions table: {column: deque}, "rewards" and "extra" {name: deque}
    ("_pending_extra_logs", "state"),  # what reward callables passed `log_extra` since the last flush
    ("_pending_metrics", "state"),  # what reward callables passed `log_metric` since the last flush
    ("use_vllm", "state"),  # `_compute_loss` applies `importance_sampling_ratio` only when set
)


class _TRLAdapter(GRPOTrainer):
    """`GRPOTrainer` with accessors of the private state in `TRL_INTERNALS`: the one place pararl reads or writes it."""

    def _compute_loss(self, model, inputs):
        if "importance_sampling_ratio" not in inputs:
            return super()._compute_loss(model, inputs)
        # TRL multiplies the per-token loss by `inputs["importance_sampling_ratio"]` only when `use_vllm`, the one
        # place `_compute_loss` reads that flag: raise it for the call, so the correction is TRL's own code.
        self.use_vllm = True
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self.use_vllm = False

    @property
    def _micro_step(self) -> int:
        """TRL's micro-step counter (generation windows are counted in it)."""
        return self._step

    @_micro_step.setter
    def _micro_step(self, value: int) -> None:
        self._step = value

    @property
    def _buffered_rows(self) -> list[dict[str, torch.Tensor]] | None:
        """The rows of the current generation window, one batch per micro-step, that TRL trains on next."""
        return self._buffered_inputs

    @_buffered_rows.setter
    def _buffered_rows(self, value: list[dict[str, torch.Tensor]] | None) -> None:
        self._buffered_inputs = value

    def _checkpoint_folder(self, trial) -> str:
        """The folder transformers' `_save_checkpoint` writes this step's checkpoint to."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        return os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _metric_lists(self, mode: str) -> dict[str, list]:
        """TRL's metric lists of `mode` (`"train"` / `"eval"`), averaged at the next log."""
        return self._metrics[mode]

    def _reward_extras(self) -> dict[str, Any]:
        """What TRL 1.16 passes every reward callable besides the completions and the dataset columns."""
        return {
            "trainer_state": self.state,
            "log_extra": self._log_completion_extra,
            "log_metric": self._log_metric,
        }

    def _discard_reward_logs(self) -> None:
        """Drops what reward callables logged (`log_extra`, `log_metric`) since the last flush."""
        self._pending_extra_logs.clear()
        self._pending_metrics.clear()

    def _flush_reward_logs(self, mode, num_states, state_of_reward_row) -> None:
        """The completions-table columns (`log_extra`, one value per scored state, spread to the state's reward
        rows) and scalar metrics (`log_metric`) that reward callables logged, gathered as TRL does."""
        for column in sorted(set(gather_object(list(self._pending_extra_logs)))):
            values = self._pending_extra_logs.get(column, [None] * num_states)
            if len(values) != num_states:
                raise ValueError(
                    f"log_extra({column!r}, ...) got {len(values)} values for {num_states} scored states; log one "
                    "value per state."
                )
            self._logs["extra"][column].extend(gather_object([values[i] for i in state_of_reward_row.tolist()]))
        self._pending_extra_logs.clear()
        for name in sorted(set(gather_object(list(self._pending_metrics)))):
            values = self._pending_metrics.get(name, [])
            local = torch.tensor([sum(values), len(values)], dtype=torch.float32, device=self.accelerator.device)
            total, count = self.accelerator.gather(local).view(-1, 2).sum(dim=0).tolist()
            self._metrics[mode][name].append(total / max(count, 1))
        self._pending_metrics.clear()

    def _size_completions_table(self, num_rows: int) -> None:
        """Keeps the last `num_rows` rows of every completions-table column."""
        for key in ("images", "prompt", "completion", "advantages"):
            self._logs[key] = deque(maxlen=num_rows)
        self._logs["rewards"] = defaultdict(lambda: deque(maxlen=num_rows))
        self._logs["extra"] = defaultdict(lambda: deque(maxlen=num_rows))

    def _log_completions(self, rewards_per_func, advantages, states, state_of_reward_row) -> None:
        """The completions table: one row per reward row (a (rollout, step) pair), like the rewards and advantages."""
        state_of_row = state_of_reward_row.tolist()
        self._logs["prompt"].extend(gather_object([states.prompts[i] for i in state_of_row]))
        self._logs["completion"].extend(gather_object([states.texts[i] for i in state_of_row]))
        for i, name in enumerate(self.reward_func_names):
            self._logs["rewards"][name].extend(rewards_per_func[:, i].tolist())
        self._logs["advantages"].extend(advantages.tolist())
        self._logs["extra"]["step"].extend(gather_object(states.steps[state_of_reward_row].tolist()))
        if self.log_completions or self.log_multimodal:  # the table's image column: the partial output image
            self._logs["images"].extend(gather_object([[states.images[i]] for i in state_of_row]))


# End of the TRL internals adapter. ====================================================================================
class DiffusionGRPOTrainer(_TRLAdapter):
    """Trainer for ParaRL (MMaDA-Parallel, https://huggingface.co/papers/2511.09611).

    Example:

    ```python
    from pararl import DiffusionGRPOConfig, DiffusionGRPOTrainer
    from pararl.rewards import CLIPAlignmentReward
    from pararl.toy import build_toy_dataset, toy_processor

    trainer = DiffusionGRPOTrainer(
        model="path/to/sft-model",
        reward_funcs=[CLIPAlignmentReward("pararl-toy-clip", pretrained="path/to/clip.pt")],
        args=DiffusionGRPOConfig(output_dir="out", diffusion_steps=16, use_cpu=True),
        train_dataset=build_toy_dataset("train", 256),
        processing_class=toy_processor(),
    )
    trainer.train()
    ```

    Args:
        model (`str` or [`~pararl.models.MaskedDiffusionLM`] or `PeftModel`): The policy, or a local path to one.
        reward_funcs (`Reward`, `Callable` or a list of them): pararl [`~pararl.rewards.Reward`] objects and plain TRL
            reward callables (`prompts`, `completions`, `**kwargs` -> list of float or None), mixed freely. A callable
            receives the partial text as `completions` and the partial image in `images` / `image_tensors`.
        args ([`DiffusionGRPOConfig`]): Training configuration.
        train_dataset / eval_dataset (`datasets.Dataset`): Rows with `prompt` (the instruction, a string), optional
            `image` (input PIL image, None for generation) or `image_codes` (a code grid), optional `task`
            (`"edit"` / `"generate"`); every other column reaches the rewards.
        processing_class ([`~pararl.processing.ParallelProcessor`]): Tokenizers and sequence preset of the model.
        callbacks, optimizers: As in [`~transformers.Trainer`].
        peft_config (`peft.PeftConfig`, *optional*): Train a LoRA adapter; the reference model is then the policy
            with adapters disabled. A pre-wrapped `PeftModel` (an SFT adapter) trains that adapter, and with
            beta > 0 its reference is TRL's frozen "ref" copy of it.
        step_selector ([`~pararl.rewards.StepSelector`], *optional*): Overrides `reward_step_selection`.
    """

    _tag_names = ["trl", "grpo", "pararl", "parallel-diffusion"]
    _name = "ParaRL"

    def __init__(
        self,
        model: "str | MaskedDiffusionLM",
        reward_funcs: "Reward | Callable | list[Reward | Callable]",
        args: DiffusionGRPOConfig,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset: Dataset | IterableDataset | None = None,
        processing_class: ParallelProcessor | None = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple = (None, None),
        peft_config: Any = None,
        step_selector: StepSelector | None = None,
    ):
        _check_arguments(args, processing_class)
        self.processor = processing_class
        check_datasets(processing_class, "pararl", train_dataset, eval_dataset)  # every row, before the model loads

        model, model_path = _load_policy(model, args)
        # Rewards: every reward becomes a `Reward`; TRL only sees named stubs so that its bookkeeping (names,
        # weights) stays intact while pararl scores intermediate states itself.
        self.rewards = _as_rewards(reward_funcs)
        # With LoRA (a `peft_config` or a pre-wrapped PeftModel) TRL handles the reference itself (adapters disabled,
        # or a frozen "ref" copy of a pre-trained adapter); for full fine-tuning with beta > 0 pararl builds it
        # (`_set_up_reference`).
        full_fine_tune_reference = args.beta != 0.0 and peft_config is None and not is_peft_model(model)
        super().__init__(
            model=model,
            reward_funcs=[_named_stub(reward.name) for reward in self.rewards],
            args=_args_for_trl(args, model_path, full_fine_tune_reference),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class.tokenizer,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )
        self._set_up_reference(args, model_path, full_fine_tune_reference)
        if args.log_trajectory_pictures:
            self.add_callback(TrajectoryPictureCallback(self))
        self.reward_func_names = [reward.name for reward in self.rewards]
        for reward in self.rewards:
            reward.to(self.accelerator.device)

        decoder = self._set_up_rollout(args, step_selector)
        self._size_likelihood(args, decoder)
        self._check_off_policy(args)
        # The completions table has one row per (rollout, step) loss row: s times TRL's generation batch.
        self._size_completions_table(args.generation_batch_size * self.num_reward_steps)

        self._generation_round = 0
        self._eval_round = 0
        self._idle_reward_rounds: dict[str, int] = {}
        self._warned_rewards: set[str] = set()
        self._normalizers_ready = False
        self._last_trajectory: tuple[Trajectory, list[str], dict[int, float]] | None = None

    def _set_up_reference(self, args: DiffusionGRPOConfig, model_path: str | None, full_fine_tune: bool) -> None:
        """Gives the caller's `model_init_kwargs`, `beta` and `sync_ref_model` back to `self.args` (TRL was given a
        copy without them, see `_args_for_trl`) and, for full fine-tuning with beta > 0, builds the reference."""
        self.args.model_init_kwargs = args.model_init_kwargs
        if not full_fine_tune:
            return
        self.args.beta, self.args.sync_ref_model = args.beta, args.sync_ref_model
        self.beta = args.beta
        self.ref_model = self._build_reference_model(model_path)
        if args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))

    def _set_up_rollout(self, args: DiffusionGRPOConfig, step_selector: StepSelector | None) -> ParallelDecoder:
        """The rollout settings, reveal plan and step selectors; returns a decoder of the policy (for its bounds)."""
        self.rollout_config = args.to_rollout_config()
        # Fails early, with the decoder's message, on schedules that do not fit the preset (e.g. block_length).
        decoder = ParallelDecoder(self.model, self.processor, self.rollout_config)
        self.reveal_plan = decoder.plan
        self.step_selector = step_selector or get_step_selector(
            args.reward_step_selection, args.num_reward_steps, args.reward_steps
        )
        # Output-level RL (the paper's baseline) rewards only the final output but trains on as many steps as ParaRL
        # does, so that both spend the same compute on the loss; stratified, so early, middle and late tokens all learn.
        self.output_level = isinstance(self.step_selector, FinalStep)
        self._loss_step_selector = StratifiedSteps(args.num_reward_steps) if self.output_level else self.step_selector
        self.num_reward_steps = args.num_reward_steps
        return decoder

    def _size_likelihood(self, args: DiffusionGRPOConfig, decoder: ParallelDecoder) -> None:
        """The likelihood's two spans (`_likelihood_spans`) and the most tokens one row scores, known ahead from the
        decoder's own bound per step (the schedules' counts, or a thresholded modality's block / image span and cap),
        so the likelihood needs no host sync. With loss_steps="all", a row scores a group of `loss_step_group` steps:
        its bound is the group's sum."""
        self.loss_all_steps = args.loss_steps == "all"
        group = args.loss_step_group
        text_bound, image_bound = (_grouped_bounds(bound, group) for bound in decoder.max_reveals_per_modality)
        # With one modality credited (`loss_modalities`) only its tokens are scored: the other's span gets no logits.
        self._credited_slots = None
        if args.loss_modalities != "both":
            self._credited_slots = getattr(self.processor, f"{args.loss_modalities}_slot_mask")
            text_bound, image_bound = (
                bound if name == args.loss_modalities else [0] * len(bound)
                for name, bound in (("text", text_bound), ("image", image_bound))
            )
        trajectory = args.likelihood == "trajectory"
        self._spans = _likelihood_spans(
            self.processor,
            (max(text_bound), max(image_bound)) if trajectory else None,
            (args.text_temperature, args.image_temperature),
        )
        if trajectory:
            per_row = max(t + i for t, i in zip(text_bound, image_bound))
            self._max_scored_tokens = min(per_row, self._spans[0].num_scored + self._spans[1].num_scored)
        else:
            self._max_scored_tokens = int(self.processor.maskable_mask.sum())
        # The first steps of the scheduled loss groups that reveal a token (rows that would score none are not built).
        self._loss_group_starts = _scheduled_group_starts(decoder.plan, group, args.diffusion_steps)
        # dr_grpo divides every row's summed loss by a constant, TRL's `max_completion_length` (= |o| of the paper):
        # for a (rollout, step) row that is the most tokens one row scores, not the whole output length (which would
        # make gradients diffusion_steps-times smaller than TRL users expect).
        self.max_completion_length = self._max_scored_tokens

    def _check_off_policy(self, args: DiffusionGRPOConfig) -> None:
        """Off-policy rollouts (guidance; a stale input cache) are corrected with the sampler's log-probs as behaviour
        policy, with TRL's vLLM importance-sampling settings. Grouped steps (loss_step_group > 1) score a token on an
        earlier state than it was drawn from: corrected too."""
        off_policy = self.rollout_config.off_policy or (self.loss_all_steps and args.loss_step_group > 1)
        self._corrects_off_policy = off_policy and args.vllm_importance_sampling_correction
        if self._corrects_off_policy and args.likelihood != "trajectory":
            raise ValueError(
                "The importance-sampling correction of an off-policy rollout (guidance, an input cache) needs "
                "likelihood='trajectory' (the sampler's log-probs are per revealed token at its step); use it, or set "
                "vllm_importance_sampling_correction=False."
            )
        if off_policy and not args.vllm_importance_sampling_correction:
            warnings.warn(
                "The rollout samples off-policy (classifier-free guidance or input_cache_refresh > 1) or the loss "
                "scores grouped steps (loss_step_group > 1), and vllm_importance_sampling_correction="
                "False: the loss treats the rollouts as the policy's own samples, uncorrected.",
                stacklevel=3,
            )

    def _build_reference_model(self, model_path: str | None):
        """The frozen reference of full fine-tuning, built as TRL builds it: loaded from the policy's folder with the
        policy's dtype and `model_init_kwargs`, so that under ZeRO-3 `from_pretrained` shards it at construction like
        the policy (never a whole copy per rank, never a `state_dict` of an already-sharded policy). A policy given in
        memory without a folder is copied (it is whole on every rank anyway); one whose parameters ZeRO-3 has
        already partitioned cannot be copied and is refused."""
        policy = self.accelerator.unwrap_model(self.model)
        if model_path is None:
            name = getattr(policy.config, "_name_or_path", "") or ""
            model_path = name if os.path.isfile(os.path.join(name, "config.json")) else None
        if model_path is not None:
            kwargs = dict(self.args.model_init_kwargs or {})
            kwargs.setdefault("dtype", policy.dtype)
            ref_model = MaskedDiffusionLM.from_pretrained(model_path, **kwargs)
        elif any(hasattr(param, "ds_id") for param in policy.parameters()):
            raise ValueError(
                "beta > 0 with full fine-tuning needs a reference model, but the policy was given in memory with "
                "parameters ZeRO-3 has already partitioned, which cannot be copied: save it with "
                "`model.save_pretrained(path)` and pass `model=path` (the reference is then loaded and sharded like "
                "the policy), or set beta=0.0."
            )
        else:
            # Not `copy.deepcopy`: wrappers may have patched the policy's `forward` with closures over the policy.
            ref_model = type(policy)(policy.config).to(device=policy.device, dtype=policy.dtype)
            ref_model.load_state_dict(policy.state_dict())
        ref_model.requires_grad_(False)
        ref_model.eval()
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref_model, self.accelerator)
        return self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    # ------------------------------------------------------------------------------------------------- likelihood
    @profiling_decorator
    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """Log-probs (and entropies) of the scored output tokens, each given the row's masked state.

        `input_ids` is `prompt_ids | completion_ids` and the completion half of `attention_mask` marks the scored
        tokens (see the module docstring). The distribution is the sampler's: the modality's temperature and, with
        `top_k`, its top-k filter (the scored value itself always stays in, so a value the sampler drew at the k-th
        boundary scores finitely when the recomputed logits reorder it). One forward per micro-batch; only the
        scored slots get logits, text slots over the text vocabulary and image slots over the codebook, as the
        decoder does. No attention mask is passed when nothing in the micro-batch is padded (faster attention).
        """
        prompt_length = input_ids.size(1) - logits_to_keep
        batch_size = batch_size or input_ids.size(0)
        if not torch.is_grad_enabled():
            # Passes without a graph (old and reference log-probs) hold one micro-batch of logits at a time: split
            # the rows further when those would exceed the budget (matters for likelihood="random_mask").
            row_logits = sum(span.num_scored * (span.vocab_range[1] - span.vocab_range[0]) for span in self._spans)
            batch_size = max(1, min(batch_size, _NO_GRAD_LOGITS_BUDGET // max(row_logits, 1)))
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            ids = input_ids[start : start + batch_size]
            mask = attention_mask[start : start + batch_size]
            completion = ids[:, prompt_length:]
            scored = mask[:, prompt_length:].bool()
            model_ids = torch.cat(
                [ids[:, :prompt_length], completion.masked_fill(scored, self.processor.preset.mask_token_id)], 1
            )
            prompt_mask = mask[:, :prompt_length]
            model_mask = None
            if not bool(prompt_mask.all()):
                model_mask = torch.cat([prompt_mask, torch.ones_like(completion)], dim=1)

            slots, slot_scored = _scored_slots(self._spans, scored)
            with self.accelerator.autocast():
                logits = model(
                    input_ids=model_ids,
                    attention_mask=model_mask,
                    logits_positions=[slot + prompt_length for slot in slots],
                    vocab_range=[span.vocab_range for span in self._spans],
                ).logits
            per_token = torch.zeros(completion.shape, dtype=torch.float32, device=completion.device)
            per_entropy = torch.zeros_like(per_token) if compute_entropy else None
            for span, span_logits, slot, ok in zip(self._spans, logits, slots, slot_scored, strict=True):
                targets = (completion.gather(1, slot) - span.vocab_range[0]).masked_fill(~ok, 0)
                token_logps, entropy = _span_logps(
                    span_logits, targets, span, self.rollout_config.top_k, compute_entropy
                )
                per_token = per_token.scatter(1, slot, token_logps.masked_fill(~ok, 0.0))
                if compute_entropy:
                    per_entropy = per_entropy.scatter(1, slot, entropy.masked_fill(~ok, 0.0))
            all_logps.append(per_token)
            if compute_entropy:
                all_entropies.append(per_entropy)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None

    def get_high_entropy_mask(self, entropies: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
        """TRL's top-entropy token mask, with the quantile taken per modality: text entropies (over ~10^5 token ids) and
        image entropies (over the codebook) are on different scales, so one shared quantile would keep mostly one
        modality."""
        image = self.processor.image_slot_mask.to(mask.device)
        text_mask = super().get_high_entropy_mask(entropies, mask * ~image, threshold)
        return text_mask | super().get_high_entropy_mask(entropies, mask * image, threshold)

    # ------------------------------------------------------------------------------------------------- generation
    def _row_seeds(self, global_ids: torch.Tensor, generation_round: int | None = None) -> torch.Tensor:
        """Deterministic seeds from (args.seed, generation round, global rollout or row id): resumable, rank-free."""
        generation_round = self._generation_round if generation_round is None else generation_round
        base = (self.args.seed * _SEED_MULTIPLIER + generation_round * _ROUND_MULTIPLIER) % (2**62)
        return (base + (global_ids + 1) * _ROW_MULTIPLIER) % (2**62)

    def evaluate(self, *args, **kwargs):
        # Every evaluation decodes with the same noise (its own rounds, apart from training's), so an evaluation
        # neither shifts the training noise nor differs from the previous one by its noise alone. The global RNGs are
        # given back too: the evaluation dataloader draws its base seed from torch's (as may a reward), and TRL
        # shuffles the next generation batch with it, so an evaluation would otherwise reorder training's rows.
        self._eval_round = 0
        device = self.accelerator.device
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[] if device.type == "cpu" else [device], device_type=device.type):
            try:
                return super().evaluate(*args, **kwargs)
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)

    def _rollout(self, prompts, images, tasks, record_steps, seeds) -> Trajectory:
        # ZeRO-3: gather the parameters once for the whole rollout, not once per denoising step.
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as unwrapped_model,
            torch.no_grad(),
            # The precision the likelihood scores in (bf16 / fp16 under mixed precision), so both see the same policy.
            self.accelerator.autocast(),
        ):
            decoder = ParallelDecoder(unwrapped_model, self.processor, self.rollout_config)
            return decoder.generate(prompts, images=images, tasks=tasks, record_steps=record_steps, seeds=seeds)

    def _reward_steps_of(self, steps: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        """The rewarded steps of the loss steps `steps (rollouts, s)`: the steps themselves, or each rollout's final
        step once (output-level RL); and the list of them to record."""
        if self.output_level:
            reward_steps = torch.full((steps.size(0),), self.args.diffusion_steps - 1)
        else:
            reward_steps = steps.flatten()
        return reward_steps, reward_steps.tolist()

    def _group_steps(self, group_num_steps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Loss steps `(groups, s)` of threshold-decoded rollouts, each group's within its shortest row.

        `group_num_steps[g]` is the fewest steps a row of group g ran (`Trajectory.row_num_steps`). A group whose
        shortest row ran as long as the schedule does draws over the whole axis, exactly as the scheduled engine
        (so thresholds above 1 with `threshold_floor="schedule"` give the same steps from the same generator); the
        others over `[0, max(shortest, s))`, so no step lies past the end of any of the group's rows, unless the
        row ran fewer than s steps (then its last steps score no token and reward its final output). Groups of the
        same length are drawn together, shortest first.
        """
        num_steps, s = self.args.diffusion_steps, self.num_reward_steps
        lengths = torch.where(group_num_steps >= self._schedule_num_steps, num_steps, group_num_steps.clamp(min=s))
        steps = torch.empty(len(lengths), s, dtype=torch.long)
        for length in sorted(set(lengths.tolist())):
            groups = (lengths == length).nonzero()[:, 0]
            steps[groups] = self._loss_step_selector.select(len(groups), length, generator)
        return steps

    @property
    def _schedule_num_steps(self) -> int:
        """The steps a scheduled rollout's rows run (the last step the reveal plan reveals at, + 1)."""
        plan = self.reveal_plan
        return max(k for k, counts in enumerate(zip(plan.text_counts, plan.image_counts)) if sum(counts)) + 1

    @profiling_decorator
    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor | Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        prompts, images, tasks, columns = _split_rows(inputs)
        images, input_images = self._input_images(images)
        if not self._normalizers_ready:
            self._prepare_reward_normalizers()
        generation_round = self._next_generation_round(mode)
        trajectory, index = self._decode_and_draw_steps(
            prompts, images, tasks, mode, num_generations, generation_round
        )
        prompt_ids, prompt_mask, completion_ids, completion_mask = self._build_rows(
            trajectory, index, generation_round
        )
        num_items_in_batch = self.accelerator.gather(completion_mask.sum()).sum()

        states, reward_rows, reward_metrics = self._score_states(trajectory, index, prompts, input_images, columns)
        rewards_per_func = gather(reward_rows.to(device))
        all_advantages, is_std_zero = self._advantages(rewards_per_func, num_generations)
        if mode == "train":
            self._watch_rewards(rewards_per_func, num_generations)
        advantages = self._row_advantages(all_advantages, trajectory, index, completion_mask)

        old_per_token_logps, sampling_per_token_logps, importance_sampling_ratio, ref_per_token_logps = (
            self._no_grad_logps(mode, (prompt_ids, prompt_mask, completion_ids, completion_mask), trajectory, index)
        )

        self._log_rewards(mode, rewards_per_func, is_std_zero, reward_metrics, index.steps)
        self._log_tokens(mode, completion_mask)
        if old_per_token_logps is not None and sampling_per_token_logps is not None:
            self._log_sampling(
                mode, completion_mask, old_per_token_logps, sampling_per_token_logps, importance_sampling_ratio
            )
        self._log_completions(rewards_per_func, all_advantages, states, index.state_of_reward_row)
        self._flush_reward_logs(mode, len(states), index.state_of_reward_row)
        if self.accelerator.is_main_process:  # drawn at the next logging step, each panel with its reward
            self._keep_pictured_trajectory(trajectory, prompts, index, reward_rows)
        output = {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "advantages": advantages,
            "num_items_in_batch": num_items_in_batch,
        }
        optional = {
            "old_per_token_logps": old_per_token_logps,
            "importance_sampling_ratio": importance_sampling_ratio,
            "sampling_per_token_logps": sampling_per_token_logps,
            "ref_per_token_logps": ref_per_token_logps,
        }
        output.update({key: value for key, value in optional.items() if value is not None})
        return output

    def _next_generation_round(self, mode: str) -> int:
        """The generation round of this batch (it seeds the batch's steps and noise), counted on."""
        if mode == "train":
            self._generation_round += 1
            return self._generation_round - 1
        # Evaluation rounds never move the training noise (see `evaluate`).
        self._eval_round += 1
        return _EVAL_ROUND_OFFSET + self._eval_round - 1

    def _decode_and_draw_steps(
        self, prompts, images, tasks, mode: str, num_generations: int, generation_round: int
    ) -> tuple[Trajectory, "_RowIndex"]:
        """Decodes this process's rollouts and draws each prompt group's steps; returns the trajectory and the index
        of the batch's states and rows.

        The steps are drawn from a generator seeded identically on every rank, so the G rollouts of a group share them
        even when the group is split across processes. With confidence thresholds rows end at different steps, known
        only after the rollout: x0 is then recorded at every step and the steps are drawn afterwards (same generator),
        each group's within its shortest row (see `_group_steps`).
        """
        local_size = len(prompts)
        global_rollouts = self.accelerator.process_index * local_size + torch.arange(local_size)
        group_of_rollout = global_rollouts // num_generations
        generator = torch.Generator().manual_seed(int(self._row_seeds(torch.tensor(-1), generation_round)))
        num_groups = local_size * self.accelerator.num_processes // num_generations
        late_steps = self.rollout_config.thresholded
        if late_steps:
            record_steps = [self.args.diffusion_steps - 1] if self.output_level else range(self.args.diffusion_steps)
        else:
            steps = self._loss_step_selector.select(num_groups, self.args.diffusion_steps, generator)
            steps = steps[group_of_rollout]  # (local_size, s)
            record_steps = self._reward_steps_of(steps)[1]
        row_num_steps = None  # with thresholds: the steps each row of the gathered batch ran
        with profiling_context(self, "rollout"):
            trajectory = self._rollout(
                prompts, images, tasks, sorted(set(record_steps)), self._row_seeds(global_rollouts, generation_round)
            )
        if late_steps:
            row_num_steps = self.accelerator.gather(trajectory.row_num_steps.to(self.accelerator.device)).cpu()
            self._metric_lists(mode)["rollout/steps_per_row"].append(row_num_steps.float().mean().item())
            group_steps = row_num_steps.view(num_groups, num_generations).min(dim=1).values
            steps = self._group_steps(group_steps, generator)[group_of_rollout]
        return trajectory, self._index_rows(global_rollouts, steps, row_num_steps)

    def _index_rows(
        self, global_rollouts: torch.Tensor, steps: torch.Tensor, row_num_steps: torch.Tensor | None
    ) -> "_RowIndex":
        """The `_RowIndex` of this process's rollouts with loss steps `steps (rollouts, s)`."""
        local_size, s = steps.size(0), self.num_reward_steps
        # ParaRL scores the state of every (rollout, step) row; output-level RL scores each rollout's final output
        # once and gives that reward to all of its rows.
        state_steps, _ = self._reward_steps_of(steps)
        if self.output_level:
            state_rollouts = torch.arange(local_size)
            state_of_reward_row = torch.arange(local_size).repeat_interleave(s)
        else:
            state_rollouts = torch.arange(local_size).repeat_interleave(s)
            state_of_reward_row = torch.arange(local_size * s)
        first_steps, steps_per_row = self._loss_row_steps(steps, row_num_steps)
        rows_per_rollout = first_steps.size(1)
        return _RowIndex(
            global_rollouts=global_rollouts,
            steps=steps,
            state_rollouts=state_rollouts,
            state_steps=state_steps,
            state_of_reward_row=state_of_reward_row,
            row_first_steps=first_steps,
            steps_per_row=steps_per_row,
            rollout_of_row=torch.arange(local_size, device=self.accelerator.device).repeat_interleave(
                rows_per_rollout
            ),
        )

    def _build_rows(
        self, trajectory: Trajectory, index: "_RowIndex", generation_round: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """`prompt_ids`, `prompt_mask`, `completion_ids` and `completion_mask` of the batch's loss rows (see the
        module docstring)."""
        device = self.accelerator.device
        rollout_of_row = index.rollout_of_row
        prompt_ids = trajectory.input_ids.to(device)[rollout_of_row]
        prompt_mask = trajectory.attention_mask.to(device)[rollout_of_row]
        if self.args.likelihood == "trajectory":
            first_steps = index.row_first_steps.flatten().to(device)
            completion_ids, completion_mask = self._trajectory_rows(
                trajectory, rollout_of_row, first_steps, index.steps_per_row
            )
        else:
            s, local_size = self.num_reward_steps, index.global_rollouts.size(0)
            completion_ids = trajectory.output_ids.to(device)[rollout_of_row]
            row_ids = index.global_rollouts.repeat_interleave(s) * s + torch.arange(s).repeat(local_size)
            row_seeds = self._row_seeds(row_ids, generation_round)
            completion_mask = self._random_masks(row_seeds.to(device))
        if self._credited_slots is not None:
            completion_ids, completion_mask = self._credit_only(completion_ids, completion_mask)
        return prompt_ids, prompt_mask, completion_ids, completion_mask

    def _credit_only(
        self, completion_ids: torch.Tensor, completion_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows that score only the credited modality's tokens (`loss_modalities`). The other modality's tokens of
        the row's step stay `[MASK]` in `completion_ids`: the likelihood re-masks only the scored tokens, so every
        row keeps exactly the state its tokens were drawn from."""
        credited = self._credited_slots.to(completion_mask.device)
        uncredited = completion_mask.bool() & ~credited
        completion_ids = completion_ids.masked_fill(uncredited, self.processor.preset.mask_token_id)
        return completion_ids, completion_mask * credited

    def _score_states(
        self, trajectory: Trajectory, index: "_RowIndex", prompts, input_images, columns
    ) -> tuple[RewardStates, torch.Tensor, dict]:
        """The scored states, the rewards of this process's reward rows `(rollouts * s, functions)` and the rewards'
        metrics."""
        with profiling_context(self, "rewards"):
            states = self._reward_states(
                trajectory,
                index.state_rollouts,
                index.state_steps,
                prompts,
                input_images,
                columns,
                extras=self._reward_extras(),
            )
            state_rewards, reward_metrics = compute_rewards(self.rewards, states)
            return states, state_rewards[index.state_of_reward_row], reward_metrics

    def _row_advantages(
        self, all_advantages: torch.Tensor, trajectory: Trajectory, index: "_RowIndex", completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """This process's share of the gathered reward rows' advantages (`(rows,)`); with loss_steps="all", the
        per-token advantages of its loss rows (`(rows, L_out)`, see `_token_advantages`)."""
        process_rows = index.global_rollouts.size(0) * self.num_reward_steps
        process_index = self.accelerator.process_index
        advantages = all_advantages[process_index * process_rows : (process_index + 1) * process_rows]
        if self.loss_all_steps:
            advantages = self._token_advantages(
                advantages, index.steps, trajectory, index.rollout_of_row, completion_mask
            )
        return advantages

    def _no_grad_logps(
        self, mode: str, rows: tuple[torch.Tensor, ...], trajectory: Trajectory, index: "_RowIndex"
    ) -> tuple[torch.Tensor | None, ...]:
        """Old-policy, sampler and reference log-probs and the importance-sampling ratio of the loss rows `rows`
        (`prompt_ids`, `prompt_mask`, `completion_ids`, `completion_mask`), as TRL computes them; None where not
        needed."""
        prompt_ids, prompt_mask, completion_ids, completion_mask = rows
        prompt_completion_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        likelihood_inputs = (
            prompt_completion_ids,
            attention_mask,
            completion_ids.size(1),
            batch_size * index.rows_per_rollout,
        )
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            old_per_token_logps, sampling_per_token_logps, importance_sampling_ratio = self._old_and_sampling_logps(
                likelihood_inputs, trajectory, index, completion_mask
            )
            ref_per_token_logps = self._reference_logps(*likelihood_inputs)
        return old_per_token_logps, sampling_per_token_logps, importance_sampling_ratio, ref_per_token_logps

    def _old_and_sampling_logps(
        self, likelihood_inputs: tuple, trajectory: Trajectory, index: "_RowIndex", completion_mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
        """The old policy's log-probs (when TRL needs them: several optimizer steps per generation, or the
        correction), the sampler's own log-probs of the scored tokens (the behaviour policy, trajectory rows only) and
        the importance-sampling ratio of the off-policy correction; each None where not computed."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        old_per_token_logps = importance_sampling_ratio = None
        if self.args.gradient_accumulation_steps % generate_every != 0 or self._corrects_off_policy:
            ids, attention_mask, logits_to_keep, batch_size = likelihood_inputs
            old_per_token_logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, attention_mask, logits_to_keep, batch_size=batch_size
            )
        sampling_per_token_logps = None
        if self.args.likelihood == "trajectory":
            sampling = trajectory.token_logprobs.to(self.accelerator.device)[index.rollout_of_row]
            sampling_per_token_logps = sampling * completion_mask
        if self._corrects_off_policy:
            importance_sampling_ratio = self._importance_sampling_ratio(
                old_per_token_logps, sampling_per_token_logps, completion_mask
            )
        return old_per_token_logps, sampling_per_token_logps, importance_sampling_ratio

    def _reference_logps(self, ids, attention_mask, logits_to_keep, batch_size) -> torch.Tensor | None:
        """The reference model's log-probs (None when beta = 0): pararl's or TRL's reference model, or the policy with
        its adapters disabled (or TRL's frozen "ref" adapter)."""
        if self.beta == 0.0:
            return None
        if self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(
                self.ref_model, ids, attention_mask, logits_to_keep, batch_size=batch_size
            )[0]
        model = self.accelerator.unwrap_model(self.model)
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return self._get_per_token_logps_and_entropies(
                self.model, ids, attention_mask, logits_to_keep, batch_size=batch_size
            )[0]

    def _keep_pictured_trajectory(
        self, trajectory: Trajectory, prompts: list[str], index: "_RowIndex", reward_rows: torch.Tensor
    ) -> None:
        """Keeps the first rollout and the weighted reward of each of its rewarded steps for the trajectory picture
        (`TrajectoryPictureCallback`, drawn at the next logging step)."""
        first = index.state_rollouts == 0
        weighted = (
            reward_rows[: self.num_reward_steps if not self.output_level else 1] * self.reward_weights.cpu()
        ).nansum(dim=1)
        panel_rewards = dict(zip(index.state_steps[first].tolist(), weighted.tolist()))
        pictured = trajectory.index_select(torch.tensor([0])).to("cpu")
        if self.rollout_config.thresholded and not self.output_level:  # x0 of every step: picture the rewarded ones
            keep = torch.tensor(sorted(set(index.state_steps.tolist())))
            pictured = replace(pictured, recorded_steps=keep, x0=pictured.x0[:, keep])
        self._last_trajectory = (pictured, prompts[:1], panel_rewards)

    def _loss_row_steps(self, steps: torch.Tensor, batch_num_steps: torch.Tensor | None) -> tuple[torch.Tensor, int]:
        """The first step of every loss row of each rollout, `(rollouts, R)`, and the steps each row covers.

        `loss_steps="rewarded"`: the rewarded (loss) steps, one step each. `"all"`: the groups of `loss_step_group`
        consecutive steps from step 0 in which the reveal schedule reveals a token; with confidence thresholds
        (`batch_num_steps`, the gathered steps each row ran) the groups up to the batch's longest row, the same on
        every rank (a fixed count per rollout keeps TRL's split and ZeRO-3's collective forwards aligned), so a
        rollout that ended earlier carries rows that score nothing.
        """
        if not self.loss_all_steps:
            return steps, 1
        group = self.args.loss_step_group
        if batch_num_steps is None:
            starts = torch.tensor(self._loss_group_starts)
        else:
            starts = torch.arange(0, int(batch_num_steps.max()), group)
        return starts.expand(steps.size(0), -1), group

    def _trajectory_rows(
        self, trajectory: Trajectory, rollout_of_row: torch.Tensor, first_steps: torch.Tensor, group: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`completion_ids` (the output after the row's last step) and `completion_mask` (the tokens revealed in
        steps `[first, first + group)`) of trajectory rows; the likelihood masks the scored tokens again, which gives
        the state before the row's first step."""
        device = first_steps.device
        step_map = trajectory.step_map.to(device)[rollout_of_row]
        final = trajectory.output_ids.to(device)[rollout_of_row]
        first = first_steps.unsqueeze(1)
        completion_ids = final.masked_fill(step_map >= first + group, self.processor.preset.mask_token_id)
        completion_mask = ((step_map >= first) & (step_map < first + group)).long()
        return completion_ids, completion_mask

    def _token_advantages(
        self,
        advantages: torch.Tensor,
        steps: torch.Tensor,
        trajectory: Trajectory,
        rollout_of_row: torch.Tensor,
        completion_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Per-token advantages `(rows, L_out)` of `loss_steps="all"`: each revealed token takes the advantage of its
        rollout's first rewarded step at or after its own step (the last rewarded step's past it); 0 where unscored.

        `advantages (rollouts * s,)` are this process's (rollout, rewarded step) advantages, `steps (rollouts, s)`
        their sorted steps. Output-level RL's s advantages of a rollout are all the final output's, and
        `advantage_mode="trajectory_mean"`'s all the trajectory mean's, so every token gets that one value."""
        device = completion_mask.device
        steps = steps.to(device).contiguous()
        s = steps.size(1)
        token_steps = trajectory.step_map.to(device).clamp(min=0).contiguous()
        slot = torch.searchsorted(steps, token_steps).clamp(max=s - 1)  # first rewarded step >= the token's
        per_token = advantages.to(device).view(-1, s).gather(1, slot)
        return per_token[rollout_of_row] * completion_mask

    def _importance_sampling_ratio(
        self, old_per_token_logps: torch.Tensor, sampling_per_token_logps: torch.Tensor, completion_mask: torch.Tensor
    ) -> torch.Tensor:
        """TRL's vLLM importance-sampling correction (same fields, same semantics), with the decoder's recorded
        log-probs as the behaviour policy: `exp(old - sampling)` per token (`token_*`) or per row (`sequence_*`,
        summed over the row's scored tokens), clamped (`*_truncate`) or zeroed outside [clip_min, clip_max]
        (`*_mask`)."""
        args = self.args
        diff = torch.nan_to_num((old_per_token_logps - sampling_per_token_logps) * completion_mask, nan=0.0)
        if args.vllm_importance_sampling_mode in ("sequence_mask", "sequence_truncate"):
            diff = diff.sum(dim=-1, keepdim=True)
        ratio = torch.exp(diff)
        if args.vllm_importance_sampling_mode.endswith("_truncate"):
            return torch.clamp(
                ratio, min=args.vllm_importance_sampling_clip_min, max=args.vllm_importance_sampling_clip_max
            )
        low = args.vllm_importance_sampling_clip_min
        high = args.vllm_importance_sampling_clip_max
        low = -math.inf if low is None else low
        high = math.inf if high is None else high
        return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)

    def _input_images(self, images: list) -> tuple[list, list]:
        """The batch's input images, each distinct one handled once (the G rollouts of a prompt carry copies): VQ code
        grids for the rollout (PIL images encoded once each) and PIL images for the rewards (code grids from an
        `image_codes` column decoded once each), the same object wherever an image repeats, so that rewards that
        encode input images (CLIP image consistency) encode each once."""
        keys: dict[tuple, int] = {}
        distinct, owner = [], []
        for image in images:
            if image is None:
                owner.append(None)
                continue
            if isinstance(image, Image.Image):
                key = ("pil", image.mode, image.size, image.tobytes())
            else:
                grid = torch.as_tensor(image)
                key = ("codes", tuple(grid.shape), str(grid.dtype), grid.cpu().numpy().tobytes())
            if key not in keys:
                keys[key] = len(distinct)
                distinct.append(image)
            owner.append(keys[key])
        grids, pictures = list(distinct), list(distinct)
        pil = [i for i, image in enumerate(distinct) if isinstance(image, Image.Image)]
        if pil:
            for i, grid in zip(pil, self.processor.image_tokenizer.encode([distinct[i] for i in pil])):
                grids[i] = grid
        checked = [
            None if isinstance(image, Image.Image) else code_grid(image, self.processor.preset) for image in distinct
        ]
        codes = [i for i, grid in enumerate(checked) if isinstance(grid, torch.Tensor)]
        if codes:  # a malformed grid stays as given: the rollout's encoder names it
            stacked = torch.stack([checked[i] for i in codes])
            for i, picture in zip(codes, tensor_to_images(self.processor.decode_images(stacked))):
                pictures[i] = picture
        rollout_images = [None if j is None else grids[j] for j in owner]
        return rollout_images, [None if j is None else pictures[j] for j in owner]

    def _reward_states(self, trajectory, rollouts, steps, prompts, images, columns, extras=None) -> RewardStates:
        """The state of trajectory row `rollouts[n]` at `steps[n]`, with that rollout's prompt, image and columns."""
        rows = rollouts.tolist()
        return RewardStates.from_trajectory(
            trajectory,
            self.processor,
            steps=steps,
            rows=rollouts,
            prompts=[prompts[i] for i in rows],
            input_images=[images[i] for i in rows],
            columns={key: [values[i] for i in rows] for key, values in columns.items()},
            grey_unrevealed=self.args.grey_unrevealed,
            extras=extras,
        )

    def _random_masks(self, seeds: torch.Tensor) -> torch.Tensor:
        """UniGRPO-style masks: per row a ratio p ~ U(0, 1) and each output slot masked with probability p (at least
        one), drawn from the row's own seed (counter-based noise) so that old, current and reference forwards see
        the same mask."""
        maskable = self.processor.maskable_mask.to(seeds.device)
        ratio = counter_uniform(seeds, step=0, stream=_MASK_RATIO_STREAM, shape=(1,)).squeeze(-1)
        noise = counter_uniform(seeds, step=0, stream=_MASK_SLOT_STREAM, shape=maskable.shape)
        noise = noise.masked_fill(~maskable, 2.0)
        mask = noise < ratio.unsqueeze(1)
        mask.scatter_(1, noise.argmin(dim=1, keepdim=True), True)  # at least one scored token per row
        return mask.long()

    def _advantages(self, rewards_per_func: torch.Tensor, num_generations: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Group-normalised advantages of (rollout, step) rows, per step or of each rollout's mean reward."""
        s = self.num_reward_steps
        unscorable = torch.isnan(rewards_per_func).all(dim=1)
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        rewards = rewards.view(-1, s)  # (rollouts, s)
        if self.args.advantage_mode == "trajectory_mean":
            rewards = torch.nanmean(rewards, dim=1, keepdim=True)
        grouped = rewards.view(-1, num_generations, rewards.size(1))  # (groups, G, s or 1)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        if self.scale_rewards == "batch":
            std = nanstd(rewards).expand_as(grouped)
        else:
            std = nanstd(grouped, dim=1, keepdim=True).expand_as(grouped) if num_generations > 1 else grouped * 0
        advantages = grouped - mean
        if self.scale_rewards != "none":
            advantages = advantages / (std + 1e-4)
        is_std_zero = torch.isclose(std, torch.zeros_like(std))
        advantages = torch.nan_to_num(advantages, nan=0.0).reshape(-1, advantages.size(-1)).expand(-1, s)
        return advantages.reshape(-1), is_std_zero

    # ------------------------------------------------------------------------------------------------- rewards
    def _watch_rewards(self, rewards_per_func: torch.Tensor, num_generations: int) -> None:
        """Warns (once per reward) about a reward that has taught nothing for `_IDLE_REWARD_ROUNDS` generations in a
        row: `None` for every state, or the same value for every rollout of every group at each step (a zero group
        spread gives zero advantages)."""
        grouped = rewards_per_func.view(-1, num_generations, self.num_reward_steps, rewards_per_func.size(1))
        valid = ~torch.isnan(grouped)
        high = grouped.masked_fill(~valid, -math.inf).amax(dim=1)
        low = grouped.masked_fill(~valid, math.inf).amin(dim=1)
        no_spread = ((high - low) <= 0) | (valid.sum(dim=1) < 2)  # (groups, s, functions)
        all_none = (~valid).flatten(0, 2).all(dim=0).tolist()
        flat = no_spread.flatten(0, 1).all(dim=0).tolist()
        for name, none, constant in zip(self.reward_func_names, all_none, flat, strict=True):
            rounds = self._idle_reward_rounds.get(name, 0) + 1 if (none or constant) else 0
            self._idle_reward_rounds[name] = rounds
            if rounds != _IDLE_REWARD_ROUNDS or name in self._warned_rewards:
                continue
            self._warned_rewards.add(name)
            if none:
                reason = (
                    "returned None for every state, so it never applies: check the dataset columns and tasks it "
                    "expects"
                )
            else:
                reason = (
                    "gave every rollout of a group the same value at each rewarded step, so its group-normalised "
                    "advantage is 0 and it teaches nothing. A reward of the revealed amount alone does this (e.g. the "
                    "word count of the partial text, or `text_revealed`): the reveal schedule fixes it per step"
                )
            warnings.warn(f"reward {name!r} {reason} (for the last {_IDLE_REWARD_ROUNDS} generations).", stacklevel=2)

    def _prepare_reward_normalizers(self) -> None:
        """Fits every unfitted reward normaliser: from `reward_mean`/`reward_std` if given, else by rolling out the
        policy on a random `reward_calibration_fraction` of the training prompts (paper: 1%)."""
        self._normalizers_ready = True
        normalizers = [reward.normalizer for reward in self.rewards if getattr(reward, "normalizer", None) is not None]
        pending = [normalizer for normalizer in normalizers if not normalizer.is_fitted]
        for normalizer in normalizers:
            if not normalizer.clip_given:  # a clip the user gave the normaliser is theirs
                normalizer.clip = self.args.reward_clip
        if not pending:
            return
        if self.args.reward_mean is not None:
            for normalizer in pending:
                normalizer.load_state_dict(
                    {"mean": self.args.reward_mean, "std": self.args.reward_std, "clip": normalizer.clip}
                )
            return
        if self.train_dataset is None or self.args.reward_calibration_fraction == 0:
            raise ValueError(
                "A reward normaliser has no mean/std: give reward_mean and reward_std, or a train_dataset and "
                "reward_calibration_fraction > 0 to estimate them."
            )
        self._calibrate(pending)

    def _calibrate(self, pending) -> None:
        """Rolls out a random `reward_calibration_fraction` of the training prompts (at least one) once and fits the
        pending normalisers on their raw scores, gathered from every rank.

        Every rank decodes the same number of batches of the per-device generation batch size, padding its last (or
        only) batches with a stand-in prompt whose scores are dropped: the rollout's ZeRO-3 parameter gather is a
        collective, so a rank with fewer (or no) calibration prompts must still enter it as often as the others.
        Prompts, steps and noise depend on the calibration row, not on the rank or the number of processes."""
        dataset = self.train_dataset
        num_prompts = max(1, round(len(dataset) * self.args.reward_calibration_fraction))
        generator = torch.Generator().manual_seed(self.args.seed)
        indices = torch.randperm(len(dataset), generator=generator)[:num_prompts].tolist()
        steps = self.step_selector.select(num_prompts, self.args.diffusion_steps, generator)  # (num_prompts, s)
        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        mine = list(range(rank, num_prompts, world))  # this rank's calibration rows
        share = -(-num_prompts // world)  # rows every rank decodes, padding included
        chunk = max(1, self.args.generation_batch_size // world)
        raw = {id(normalizer): [] for normalizer in pending}
        for start in range(0, share, chunk):
            real = mine[start : start + chunk]
            rows = real + [0] * (min(chunk, share - start) - len(real))  # stand-ins: calibration row 0
            prompts, images, tasks, columns = _split_rows([dataset[indices[row]] for row in rows])
            images, input_images = self._input_images(images)
            chunk_steps = steps[rows]
            thresholded = self.rollout_config.thresholded
            record = range(self.args.diffusion_steps) if thresholded else sorted(set(chunk_steps.flatten().tolist()))
            trajectory = self._rollout(prompts, images, tasks, record, 2**61 + torch.tensor(rows))
            if thresholded:  # rows end early: the drawn steps are read on each row's own steps (a normalised axis)
                ends = trajectory.row_num_steps.cpu().unsqueeze(1)
                chunk_steps = chunk_steps * ends // self.args.diffusion_steps
            if not real:
                continue
            s = chunk_steps.size(1)
            rollouts = torch.arange(len(real)).repeat_interleave(s)
            states = self._reward_states(
                trajectory,
                rollouts,
                chunk_steps[: len(real)].flatten(),
                prompts,
                input_images,
                columns,
                extras=self._reward_extras(),
            )
            for reward in self.rewards:
                normalizer = getattr(reward, "normalizer", None)
                if normalizer is not None and id(normalizer) in raw:
                    raw[id(normalizer)].extend(getattr(reward, "raw_scores", reward.score)(states))
        self._discard_reward_logs()  # calibration scores are not training rows
        for normalizer in pending:
            values = [v for v in gather_object(raw[id(normalizer)]) if v is not None]
            normalizer.fit(values)

    # ------------------------------------------------------------------------------------------------- logging
    def _log_rewards(self, mode, rewards_per_func, is_std_zero, reward_metrics, steps) -> None:
        """Reward means and spreads (per function, in total, per step slot) of the gathered batch."""
        metrics = self._metric_lists(mode)
        s = self.num_reward_steps
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        for key, value in reward_metrics.items():
            metrics[key].append(
                float(self.accelerator.gather(torch.tensor(float(value), device=self.accelerator.device)).sum())
            )
        rewards = (rewards_per_func * self.reward_weights.to(rewards_per_func.device)).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        metrics["reward"].append(torch.nanmean(rewards).item())
        metrics["reward_std"].append(nanstd(rewards).item())
        metrics["frac_reward_zero_std"].append(is_std_zero.float().mean().item())
        # Reward by position of the step on the axis: slot j is the j-th earliest selected step of a group.
        by_slot = rewards.view(-1, s)
        for j in range(s):
            metrics[f"reward_by_step/slot_{j}"].append(torch.nanmean(by_slot[:, j]).item())
        all_steps = gather(steps.to(self.accelerator.device).float())
        metrics["reward_by_step/mean_step_fraction"].append((all_steps.mean() / self.args.diffusion_steps).item())

    def _log_tokens(self, mode, completion_mask) -> None:
        """Tokens trained on so far (training only: evaluation tokens are not trained on)."""
        num_tokens = self.accelerator.gather(completion_mask.sum()).sum().item()
        if mode == "train":
            self.state.num_input_tokens_seen += num_tokens
        self._metric_lists(mode)["num_tokens"] = [self.state.num_input_tokens_seen]

    def _log_sampling(self, mode, completion_mask, old_per_token_logps, sampling_per_token_logps, ratio) -> None:
        """How far the likelihood's log-probs are from the sampler's, and the correction's ratios: TRL's metrics."""
        metrics, device = self._metric_lists(mode), old_per_token_logps.device
        scored = completion_mask.bool()
        delta = (old_per_token_logps - sampling_per_token_logps).abs()
        delta = delta[scored & ~torch.isnan(delta)]
        zero = torch.zeros((), device=device)
        mean_delta = delta.mean() if delta.numel() else zero
        max_delta = delta.max() if delta.numel() else zero
        metrics["sampling/sampling_logp_difference/mean"].append(self.accelerator.gather(mean_delta).mean().item())
        metrics["sampling/sampling_logp_difference/max"].append(self.accelerator.gather(max_delta).max().item())
        if ratio is None:
            return
        flat = ratio.flatten() if ratio.size(1) == 1 else ratio[scored]
        stats = [flat.min(), flat.mean(), flat.max()] if flat.numel() else [zero, zero, zero]
        metrics["sampling/importance_sampling_ratio/min"].append(nanmin(self.accelerator.gather(stats[0])).item())
        metrics["sampling/importance_sampling_ratio/mean"].append(self.accelerator.gather(stats[1]).nanmean().item())
        metrics["sampling/importance_sampling_ratio/max"].append(nanmax(self.accelerator.gather(stats[2])).item())

    # ------------------------------------------------------------------------------------------------- checkpoints
    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        folder = self._checkpoint_folder(trial)
        if self.args.should_save:
            state = {reward.name: reward.state_dict() for reward in self.rewards}
            with open(os.path.join(folder, _REWARD_STATE_FILE), "w") as f:
                json.dump(
                    {"rewards": state, "generation_round": self._generation_round, "micro_step": self._micro_step},
                    f,
                    indent=2,
                )
        if self._mid_generation_window() and self._buffered_rows is not None:
            # The next steps train on rollouts of an earlier policy: keep them (each rank its own) so that a resume
            # trains on the same rows instead of generating new ones from the current policy.
            os.makedirs(folder, exist_ok=True)
            tensors = {
                f"{i}.{key}": value.detach().cpu().clone()
                for i, batch in enumerate(self._buffered_rows)
                for key, value in batch.items()
                if torch.is_tensor(value)
            }
            save_file(tensors, os.path.join(folder, _BUFFER_FILE.format(rank=self.accelerator.process_index)))

    def _mid_generation_window(self) -> bool:
        return self._micro_step % (self.args.steps_per_generation * self.num_iterations) != 0

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Trainer resumes non-strictly (a PEFT adapter's missing keys would be dropped silently): check first.
        check_resume_checkpoint(model if model is not None else self.model, resume_from_checkpoint)
        super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, _REWARD_STATE_FILE)
        if not os.path.exists(path):
            return
        with open(path) as f:
            saved = json.load(f)
        for reward in self.rewards:
            if reward.name in saved["rewards"]:
                reward.load_state_dict(saved["rewards"][reward.name])
        self._generation_round = saved["generation_round"]
        self._normalizers_ready = True
        # TRL restarts its micro-step counter at 0 on resume, which re-aligns generation windows to the resumed
        # step; restore it, and the rollouts buffered mid-window, so the run continues exactly.
        self._micro_step = saved.get("micro_step", self._micro_step)
        if self._mid_generation_window():
            buffer_path = os.path.join(checkpoint, _BUFFER_FILE.format(rank=self.accelerator.process_index))
            if not os.path.exists(buffer_path):
                window = self.args.steps_per_generation * self.num_iterations // self.args.gradient_accumulation_steps
                raise ValueError(
                    f"{checkpoint} was saved in the middle of a generation window (steps_per_generation="
                    f"{self.args.steps_per_generation}, num_iterations={self.num_iterations}) and holds no buffered "
                    f"rollouts for process {self.accelerator.process_index} ({os.path.basename(buffer_path)}); resume "
                    f"with the number of processes it was saved with, or from a checkpoint saved with save_steps a "
                    f"multiple of {window}."
                )
            tensors = load_file(buffer_path, device=str(self.accelerator.device))
            buffer = [{} for _ in range(self.args.steps_per_generation)]
            for name, value in tensors.items():
                index, key = name.split(".", 1)
                buffer[int(index)][key] = value
            self._buffered_rows = buffer


def _check_arguments(args: DiffusionGRPOConfig, processing_class: ParallelProcessor | None) -> None:
    """Refuses a config or processor pararl cannot train with."""
    if not isinstance(args, DiffusionGRPOConfig):
        raise TypeError("args must be a DiffusionGRPOConfig (a GRPOConfig lacks the rollout and reward settings).")
    if not isinstance(processing_class, ParallelProcessor):
        raise TypeError(
            "processing_class must be a pararl ParallelProcessor (text tokenizer + image tokenizer + preset), "
            f"got {type(processing_class).__name__}."
        )
    if args.multi_objective_aggregation != "sum_then_normalize":
        raise ValueError("DiffusionGRPOTrainer supports multi_objective_aggregation='sum_then_normalize' only.")


def _load_policy(model: "str | Any", args: DiffusionGRPOConfig) -> tuple[Any, str | None]:
    """The policy and the local path it was loaded from (None for a model given in memory). TRL builds models from
    `config.architectures` through the transformers namespace, which does not know pararl's class: local paths are
    loaded here."""
    if not isinstance(model, str):
        return model, None
    model_init_kwargs = dict(args.model_init_kwargs or {})
    model_init_kwargs.setdefault("dtype", torch.float32)
    return MaskedDiffusionLM.from_pretrained(model, **model_init_kwargs), model


def _as_rewards(reward_funcs: "Reward | Callable | list[Reward | Callable]") -> list[Reward]:
    """Every reward as a pararl `Reward` (plain TRL callables wrapped)."""
    reward_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
    if not reward_funcs:
        raise ValueError("reward_funcs is empty: give at least one Reward or reward callable.")
    return [func if isinstance(func, Reward) else as_reward(func) for func in reward_funcs]


def _args_for_trl(
    args: DiffusionGRPOConfig, model_path: str | None, full_fine_tune_reference: bool
) -> DiffusionGRPOConfig:
    """The config `GRPOTrainer.__init__` is given; the caller's config is never changed.

    With LoRA (a `peft_config` or a pre-wrapped PeftModel) TRL handles the reference itself and refuses
    `sync_ref_model`. For full fine-tuning with beta > 0, TRL would build the reference through the transformers
    namespace, which does not know pararl's class: TRL then gets a copy of the config with beta = 0 and pararl builds
    the reference (`_set_up_reference`). The model was loaded with `model_init_kwargs` (`_load_policy`); TRL, given it
    loaded, would warn they "will be ignored": its copy has none.
    """
    trl_args = args
    loaded_here = model_path is not None and args.model_init_kwargs is not None
    if full_fine_tune_reference or loaded_here:
        trl_args = copy.copy(args)
        trl_args.model_init_kwargs = None if loaded_here else args.model_init_kwargs
    if full_fine_tune_reference:
        trl_args.beta, trl_args.sync_ref_model = 0.0, False
    return trl_args


def _named_stub(name: str) -> Callable:
    def stub(**kwargs):  # never called: pararl scores rewards itself
        raise RuntimeError("pararl reward stubs are not meant to be called.")

    stub.__name__ = name
    return stub


def _split_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list, list, dict[str, list]]:
    """Prompts, input images (PIL, code grids or None), tasks and the remaining columns of dataset rows."""
    prompts, images, tasks = [], [], []
    for i, row in enumerate(rows):
        prompt = row.get("prompt")
        problem = text_problem(prompt, instruction=True)
        if problem:  # rows past a stream's checked head get here unchecked
            raise ValueError(f"row {i} of the batch, column 'prompt': {problem}.")
        prompts.append(prompt)
        image = row.get("image")
        if image is None and row.get("image_codes") is not None:
            image = torch.as_tensor(row["image_codes"])
        images.append(image)
        tasks.append(row.get("task"))
    reserved = {"prompt"}
    columns = {key: [row.get(key) for row in rows] for key in rows[0] if key not in reserved} if rows else {}
    return prompts, images, tasks, columns


def _grouped_bounds(bounds: Sequence[int], group: int) -> list[int]:
    """Per group of `group` consecutive steps (from step 0), the sum of the steps' bounds."""
    return [sum(bounds[start : start + group]) for start in range(0, len(bounds), group)]


def _scheduled_group_starts(plan: RevealPlan, group: int, num_steps: int) -> list[int]:
    """The first steps of the groups of `group` consecutive steps (from step 0, over `num_steps`) in which `plan`
    reveals a token: the loss rows of a scheduled rollout under loss_steps="all"."""
    counts = [t + i for t, i in zip(plan.text_counts, plan.image_counts)]
    return [start for start in range(0, num_steps, group) if sum(counts[start : start + group])]


@dataclass(frozen=True)
class _RowIndex:
    """How one generation batch's rollouts, scored states, reward rows and rows index each other on this process.

    - rollout `r` (one of this process's) is row `global_rollouts[r]` of the generation batch gathered over processes,
      where the G rollouts of a prompt group are consecutive; `steps[r]` are its `s` drawn steps, sorted;
    - a *state* is what the rewards score: state `n` is rollout `state_rollouts[n]` at step `state_steps[n]`, one per
      (rollout, drawn step) pair, or under output-level RL one per rollout, its final output;
    - a *reward row* is a (rollout, drawn step) pair, numbered `rollout * s + j`: rewards and advantages are per
      reward row, and reward row `i` takes the reward of state `state_of_reward_row[i]`;
    - a *row* (TRL's completion row, what the loss scores) is a (rollout, loss step or step group) pair, numbered
      `rollout * R + j`: `rollout_of_row[i]` is its rollout (on the accelerator), `row_first_steps (rollouts, R)`
      the first steps and `steps_per_row` how many steps each covers. Under loss_steps="rewarded", rows are the
      reward rows.
    """

    global_rollouts: torch.Tensor
    steps: torch.Tensor
    state_rollouts: torch.Tensor
    state_steps: torch.Tensor
    state_of_reward_row: torch.Tensor
    row_first_steps: torch.Tensor
    steps_per_row: int
    rollout_of_row: torch.Tensor

    @property
    def rows_per_rollout(self) -> int:
        return self.row_first_steps.size(1)


def _likelihood_spans(
    processor: ParallelProcessor, max_scored: tuple[int, int] | None, temperatures: tuple[float, float]
) -> tuple["_LikelihoodSpan", "_LikelihoodSpan"]:
    """The text and image spans of `processor`'s output part as the likelihood scores them.

    `max_scored`: the most text and image tokens one row scores (each capped at the span's slots), or None when a row
    may score every slot (likelihood="random_mask"); `temperatures`: the text and image sampling temperatures.
    """
    preset = processor.preset
    modalities = (
        (processor.text_positions, preset.text_vocab_range, preset.text_mask_column),
        (processor.image_positions, preset.image_vocab_range, preset.image_mask_column),
    )
    bounds = max_scored or (None, None)
    return tuple(
        _LikelihoodSpan(
            slots=slots,
            vocab_range=vocab_range,
            exclude=exclude,
            temperature=temperature,
            num_scored=len(slots) if max_scored is None else min(bound, len(slots)),
        )
        for (slots, vocab_range, exclude), temperature, bound in zip(modalities, temperatures, bounds, strict=True)
    )


def _scored_slots(
    spans: Sequence["_LikelihoodSpan"], scored: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per span, the `num_scored` slots of each row that get logits, the scored ones first (topk on a 0/1 key; rows
    scoring fewer pad with unscored slots), and which of them are scored; `scored (B, L_out)` marks the scored
    slots."""
    slots, slot_scored = [], []
    for span in spans:
        span_slots = span.slots.to(scored.device)
        key = scored[:, span_slots]
        order = torch.topk(key.to(torch.float32), span.num_scored, dim=1).indices
        slots.append(span_slots[order])
        slot_scored.append(key.gather(1, order))
    return slots, slot_scored


@dataclass(frozen=True)
class _LikelihoodSpan:
    """One modality's span as the likelihood scores it: its output slots, its vocabulary range, the token id it
    never samples (`exclude`, the text mask token), its temperature and the most tokens one row scores there."""

    slots: torch.Tensor
    vocab_range: tuple[int, int]
    exclude: int | None
    temperature: float
    num_scored: int


def _span_logps(
    logits: torch.Tensor, targets: torch.Tensor, span: _LikelihoodSpan, top_k: int | None, compute_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of `targets (B, n)` under the sampling distribution of `logits (B, n, V)` (the decoder's
    `sampling_logits`: excluded token id, temperature, top-k), with one fp32 copy of the logits."""
    logits = logits.float() / span.temperature
    if span.exclude is not None:
        logits[..., span.exclude] = float("-inf")
    if top_k is not None and top_k < logits.size(-1):
        with torch.no_grad():
            drop = logits < logits.topk(top_k, dim=-1).values[..., -1:]
            drop.scatter_(-1, targets.unsqueeze(-1), False)
        logits = logits.masked_fill_(drop, float("-inf"))
    normaliser = torch.logsumexp(logits, dim=-1)
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            logps = logits - normaliser.unsqueeze(-1)
            entropy = -(logps.exp() * logps.nan_to_num(neginf=0.0)).sum(-1)
    return token_logps, entropy
