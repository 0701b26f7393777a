"""The parallel decoder: writes reasoning text and image together by iterative unmasking on one shared step axis."""

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .sampling import (
    IMAGE_CONFIDENCE,
    IMAGE_VALUES,
    TEXT_CONFIDENCE,
    TEXT_VALUES,
    counter_uniform,
    default_seeds,
    draw,
    guide,
    sampling_logits,
    slot_counters,
)
from .schedules import DECODE_ORDERS, RevealPlan, RevealSchedule, build_reveal_plan, get_schedule
from .trajectory import Trajectory


__all__ = ["RolloutConfig", "ParallelDecoder"]

REMASKING = ("low_confidence", "random")
GUIDANCE_DROP = ("prompt", "image", "both")
THRESHOLD_FLOORS = ("one", "schedule")


@dataclass
class RolloutConfig:
    """How a rollout samples. Flat and plain so that a trainer config can build it from its own fields.

    Args:
        num_steps (`int`, defaults to `64`): Length T of the shared step axis (one model forward per step).
        text_schedule (`str`, [`RevealSchedule`] or callable, defaults to `"linear"`): Text reveal schedule:
            `"linear"`, `"cosine"`, a schedule object, or `f(step, num_steps)` returning the fraction (float) or count
            (int) of the span revealed by the end of `step`.
        image_schedule (same types, defaults to `"cosine"`): Image reveal schedule (MaskGIT cosine by default).
        block_length (`int` or `None`, defaults to `None`): Semi-autoregressive text blocks (LLaDA style): the text's
            steps are split equally among `text_span / block_length` blocks and a step only reveals text slots of its
            block. `None` = one global block, as the released MMaDA-Parallel samplers do (the paper uses 64).
        image_start (`float`, defaults to `0.0`): Fraction of the axis before the image schedule starts (`parallel`
            order only; the released samplers use 0.25).
        text_temperature / image_temperature (`float`, default `1.0`): Sampling temperatures; 0 = greedy (argmax;
            confidence and log-probabilities then use temperature 1). 1.0 keeps training rollouts on-policy.
        top_k (`int` or `None`, defaults to `None`): Keep only the k most likely values of each slot before drawing.
        remasking (`str`, defaults to `"low_confidence"`): How each step picks the slots to reveal among the masked
            ones: the most confident drawn values (`"low_confidence"`, confidence = probability of the drawn value
            under the sampling distribution) or uniformly at random (`"random"`).
        text_guidance_scale / image_guidance_scale (`float`, default `0.0`): Classifier-free guidance per modality,
            `cond + s * (cond - uncond)` on the logits before temperature; 0 = off. Guidance (like greedy decoding
            and top-k) makes the sampling policy differ from the model's conditional distribution: keep it off for
            on-policy RL rollouts.
        guidance_drop (`str`, defaults to `"both"`): What the unconditional rows drop from the input part:
            `"prompt"` (instruction replaced by the empty one, `<bos> <eos>`; input image kept), `"image"` (the
            input image's `<soi> codes <eoi>` tokens removed; instruction kept) or `"both"`. The task token is
            always kept, and so is the current output part. For generation tasks (no input image) `"image"` drops
            nothing, so image-only guidance is a no-op there.
        order (`str`, defaults to `"parallel"`): `"parallel"` decodes both modalities on the whole axis;
            `"text_then_image"` / `"image_then_text"` (the paper's sequential baselines) run the first modality's
            schedule on the first `num_steps // 2` steps and the other's on the rest.
        text_threshold / image_threshold (`float` or `None`, default `None`): Fast decoding (Fast-dLLM style
            confidence thresholds, per modality): at each step the modality reveals every masked slot of its current
            block (text; a row's current block is its first one with a masked slot) or span whose drawn value has
            probability >= the threshold, never fewer than `threshold_floor` and never more than `threshold_cap`.
            A row ends when all its slots are revealed and leaves the batch (the forward shrinks; one small host
            sync per step decides which rows run); `num_steps` is the step budget. `None` = the modality follows its
            schedule (today's engine). A threshold above 1 reveals only the floor: with `threshold_floor="schedule"`
            that is today's engine token for token.
        threshold_floor (`str`, defaults to `"one"`): The fewest slots a thresholded modality reveals per step:
            `"one"` = at least one while its span has masked slots (on the steps where the plan runs the modality),
            and never fewer than needed to stay level with its schedule, so that every row ends within
            `num_steps`; `"schedule"` = at least the schedule's count for the step.
        threshold_cap (`int` or `None`, defaults to `None`): The most slots a thresholded modality reveals per step
            (`None` = no cap). It must be at least the largest count of the thresholded schedules (the floor).
        input_cache_refresh (`int` or `None`, defaults to `None`): Approximate cache of the input part's keys and
            values: a full forward every `input_cache_refresh` forwards stores them, and the forwards in between
            run on the output part only, attending to the stored keys/values. The input part is never masked, but
            under bidirectional attention its states drift as the output fills in, so this approximates the full
            forward (1 = refresh at every forward, exactly the full forward; `None` = no cache).
    """

    num_steps: int = 64
    text_schedule: str | RevealSchedule | Callable[[int, int], float | int] = "linear"
    image_schedule: str | RevealSchedule | Callable[[int, int], float | int] = "cosine"
    block_length: int | None = None
    image_start: float = 0.0
    text_temperature: float = 1.0
    image_temperature: float = 1.0
    top_k: int | None = None
    remasking: str = "low_confidence"
    text_guidance_scale: float = 0.0
    image_guidance_scale: float = 0.0
    guidance_drop: str = "both"
    order: str = "parallel"
    text_threshold: float | None = None
    image_threshold: float | None = None
    threshold_floor: str = "one"
    threshold_cap: int | None = None
    input_cache_refresh: int | None = None

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {self.num_steps!r}.")
        get_schedule(self.text_schedule)
        get_schedule(self.image_schedule)
        if self.block_length is not None and (not isinstance(self.block_length, int) or self.block_length < 1):
            raise ValueError(
                f"block_length must be a positive int or None (one global block), got {self.block_length!r}."
            )
        if not 0.0 <= self.image_start < 1.0:
            raise ValueError(f"image_start must be a fraction of the axis in [0, 1), got {self.image_start!r}.")
        for name in ("text_temperature", "image_temperature", "text_guidance_scale", "image_guidance_scale"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise ValueError(
                    f"{name} must be a number >= 0 (0 = {'greedy' if 'temp' in name else 'off'}), got {value!r}."
                )
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1
        ):
            raise ValueError(f"top_k must be a positive int or None (off), got {self.top_k!r}.")
        if self.remasking not in REMASKING:
            raise ValueError(f"unknown remasking {self.remasking!r}; use one of {list(REMASKING)}.")
        if self.guidance_drop not in GUIDANCE_DROP:
            raise ValueError(f"unknown guidance_drop {self.guidance_drop!r}; use one of {list(GUIDANCE_DROP)}.")
        if self.order not in DECODE_ORDERS:
            raise ValueError(f"unknown order {self.order!r}; use one of {list(DECODE_ORDERS)}.")
        if self.order != "parallel" and self.num_steps < 2:
            raise ValueError(f"order {self.order!r} needs num_steps >= 2 (one half of the axis per modality).")
        for name in ("text_threshold", "image_threshold"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value <= 0):
                raise ValueError(
                    f"{name} must be a probability > 0 (above 1 = reveal only the floor) or None (follow the "
                    f"schedule), got {value!r}."
                )
        if self.threshold_floor not in THRESHOLD_FLOORS:
            raise ValueError(f"unknown threshold_floor {self.threshold_floor!r}; use one of {list(THRESHOLD_FLOORS)}.")
        if self.threshold_cap is not None and (
            isinstance(self.threshold_cap, bool) or not isinstance(self.threshold_cap, int) or self.threshold_cap < 1
        ):
            raise ValueError(
                f"threshold_cap must be a positive int (>= the floor of one reveal per step) or None (no cap), got "
                f"{self.threshold_cap!r}."
            )
        if self.thresholded and self.remasking != "low_confidence":
            raise ValueError(
                "confidence thresholds (text_threshold / image_threshold) rank slots by the probability of their drawn "
                f"value; they need remasking='low_confidence', got {self.remasking!r}."
            )
        if self.input_cache_refresh is not None and (
            isinstance(self.input_cache_refresh, bool)
            or not isinstance(self.input_cache_refresh, int)
            or self.input_cache_refresh < 1
        ):
            raise ValueError(
                f"input_cache_refresh must be a positive int (refresh every r forwards; 1 = exact) or None (no "
                f"cache), got {self.input_cache_refresh!r}."
            )

    @property
    def guided(self) -> bool:
        """Whether unconditional rows are needed (some guidance scale > 0)."""
        return self.text_guidance_scale > 0 or self.image_guidance_scale > 0

    @property
    def thresholded(self) -> bool:
        """Whether some modality reveals by confidence threshold instead of following its schedule."""
        return self.text_threshold is not None or self.image_threshold is not None

    @property
    def fast(self) -> bool:
        """Whether the fast decoding loop runs (thresholds or the input cache); otherwise the scheduled engine."""
        return self.thresholded or self.input_cache_refresh is not None

    @property
    def exact_forward(self) -> bool:
        """Whether every step's values are drawn from the policy's full forward on the step's state.

        True for the scheduled engine and for threshold decoding; False for an input cache refreshed less often than
        every forward (its forwards are approximations of the full one, so its values come from another distribution).
        """
        return self.input_cache_refresh is None or self.input_cache_refresh == 1

    @property
    def off_policy(self) -> bool:
        """Whether the sampler's value distribution differs from what the trainer's likelihood scores.

        The likelihood is the policy's full forward on `state_at(k)` with the sampling temperatures and `top_k` (a
        filter the likelihood applies too). A rollout differs from it when its forward is approximate (an input
        cache, see :attr:`exact_forward`), when it guides (the unconditional rows are not scored) or decodes greedily.
        When True, the recorded `token_logprobs` are the behaviour policy and the trainer applies the
        importance-sampling correction (TRL's `vllm_importance_sampling_*` fields).

        Threshold decoding alone is not off-policy in this sense: it changes *which* slots a step reveals and how
        many, a choice that depends on the drawn values exactly as low-confidence remasking's already does and that
        the likelihood does not score in either case; every value is still drawn from the full forward on the very
        state the likelihood rebuilds from the step map. Finished rows leaving the batch only change floating-point
        rounding.
        """
        greedy = self.text_temperature == 0 or self.image_temperature == 0
        return self.guided or greedy or not self.exact_forward


class ParallelDecoder:
    """Parallel multimodal decoding (MMaDA-Parallel): text and image written together by iterative unmasking.

    Every step runs ONE forward of the backbone over the whole batch: the conditional rows, plus the unconditional
    rows stacked below them on steps where a guided modality reveals tokens. Logits are computed only at the slots
    still masked, over the text vocabulary for text slots and over the image codebook for image slots (the text
    mask column is excluded). A value is drawn for every masked slot (guidance, temperature, top-k, Gumbel-max), and
    each modality reveals the number of slots its schedule gives for that step: the most confident (or random)
    masked slots of the current text block / of the whole image. All counts are host ints known before the loop and
    every per-step operation has a fixed shape (the number of masked slots is the same in every row), so the loop
    has no host-device sync, no data-dependent shape and no per-sample Python loop.

    Noise is a hash of (row seed, step, slot, stream) (see :mod:`pararl.rollout.sampling`): a sample's result does
    not depend on the rest of the batch (padding included) nor on the device, up to floating-point differences of the
    model's forward itself.

    Fast decoding (`RolloutConfig`'s `text_threshold` / `image_threshold` / `input_cache_refresh`) runs another loop:
    rows reveal different numbers of slots, end at different steps and leave the batch, so each of its steps costs
    one small host sync (per-row masked counts), which on a CPU and for large forwards is far cheaper than the rows
    it removes. Steps stay on the one shared axis (`num_steps` is the budget; see `Trajectory.row_num_steps`);
    `record_steps` are axis steps, and a row that has ended keeps its final output as state and x0. The step
    callback is called at the start of each step the loop runs (it stops once every row has ended).

    Under DeepSpeed ZeRO-3 the caller gathers the parameters once around the whole rollout (TRL's
    `unwrap_model_for_generation`, as the trainer does); the decoder only calls plain module forwards
    (`model.backbone`, `model.lm_logits`), so it works on a bare, PEFT-wrapped or gathered model alike. It does not
    change the model's train/eval mode.

    Args:
        model ([`~pararl.models.MaskedDiffusionLM`]): The policy (or a wrapper exposing `backbone` / `lm_logits`).
        processor ([`~pararl.processing.ParallelProcessor`]): Layout of the sequences.
        config ([`RolloutConfig`], *optional*): Sampling settings; defaults to `RolloutConfig()`.
    """

    def __init__(self, model, processor, config: RolloutConfig | None = None):
        self.model = model
        self.processor = processor
        self.config = config if config is not None else RolloutConfig()
        preset = processor.preset
        self.preset = preset
        self.num_text_tokens = len(processor.text_positions)
        self.num_image_tokens = len(processor.image_positions)
        cfg = self.config
        self.plan: RevealPlan = build_reveal_plan(
            cfg.num_steps,
            self.num_text_tokens,
            self.num_image_tokens,
            text_schedule=cfg.text_schedule,
            image_schedule=cfg.image_schedule,
            block_length=cfg.block_length,
            image_start=cfg.image_start,
            order=cfg.order,
        )
        vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab_size is not None and vocab_size < preset.image_vocab_range[1]:
            raise ValueError(
                f"model vocab_size {vocab_size} does not cover preset {preset.name!r}'s image tokens "
                f"{preset.image_vocab_range}; use the model that belongs to the preset."
            )
        self.text_vocab_range, self.image_vocab_range = preset.text_vocab_range, preset.image_vocab_range
        self._text_exclude, self._image_exclude = preset.text_mask_column, preset.image_mask_column
        if cfg.threshold_cap is not None:
            floors = [
                (max(counts), name)
                for name, counts, threshold in (
                    ("text", self.plan.text_counts, cfg.text_threshold),
                    ("image", self.plan.image_counts, cfg.image_threshold),
                )
                if threshold is not None
            ]
            largest, name = max(floors)
            if cfg.threshold_cap < largest:
                raise ValueError(
                    f"threshold_cap={cfg.threshold_cap} is below the floor: the {name} schedule reveals up to {largest} "
                    f"slots in one step over num_steps={cfg.num_steps}, and a thresholded modality never falls behind "
                    "its schedule (so that rows end within num_steps); raise threshold_cap or num_steps."
                )

    # Logits alive at once while drawing values (per chunk of slots): the text vocabulary is large (126k columns at
    # 8B) and a draw needs several buffers of the logits' size, so slots are drawn in chunks of this many elements.
    max_draw_elements: int = 1 << 26

    @property
    def max_reveals_per_modality(self) -> tuple[list[int], list[int]]:
        """Per step, the most text and the most image slots one step of this decoder can reveal in a row.

        The schedule's counts for a modality that follows its schedule; for a thresholded one, its block (text) or
        span (image), capped by `threshold_cap`. A trainer sizes its per-modality likelihood with these.
        """
        cfg, plan = self.config, self.plan
        text, image = list(plan.text_counts), list(plan.image_counts)
        if cfg.text_threshold is not None:
            block = cfg.block_length or self.num_text_tokens
            text = [min(cfg.threshold_cap or block, block)] * plan.num_steps
        if cfg.image_threshold is not None:
            image = [min(cfg.threshold_cap or self.num_image_tokens, self.num_image_tokens)] * plan.num_steps
        return text, image

    @property
    def max_reveals_per_step(self) -> int:
        """The most output slots (both modalities) one step of this decoder can reveal in a row."""
        return max(t + i for t, i in zip(*self.max_reveals_per_modality))

    # -------------------------------------------------------------------------------------------------- inputs
    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence | None = None,
        tasks: Sequence[str | None] | None = None,
        record_steps: Sequence[int] | torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        progress: bool = False,
        step_callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> Trajectory:
        """Encodes prompts (and input images) with the processor and decodes them.

        The unconditional rows, built only when a guidance scale is > 0, are `processor.encode_prompts` of the same
        prompts with `drop_prompt` / `drop_image` set as `config.guidance_drop` says. Conditional and unconditional
        input parts are right-padded to a common length so the output parts line up.
        See :meth:`decode` for the other arguments.
        """
        device = _model_device(self.model)
        cond = self.processor.encode_prompts(prompts, images, tasks)
        uncond_ids = uncond_mask = None
        if self.config.guided:
            drop = self.config.guidance_drop
            batch = len(prompts)
            uncond = self.processor.encode_prompts(
                prompts,
                images,
                tasks,
                drop_prompt=[drop in ("prompt", "both")] * batch,
                drop_image=[drop in ("image", "both")] * batch,
            )
            length = max(cond["input_ids"].shape[1], uncond["input_ids"].shape[1])
            cond, uncond = (
                _pad_to(cond, length, self.preset.pad_token_id),
                _pad_to(uncond, length, self.preset.pad_token_id),
            )
            uncond_ids, uncond_mask = uncond["input_ids"].to(device), uncond["attention_mask"].to(device)
        return self.decode(
            cond["input_ids"].to(device),
            cond["attention_mask"].to(device),
            uncond_input_ids=uncond_ids,
            uncond_attention_mask=uncond_mask,
            record_steps=record_steps,
            seeds=seeds,
            progress=progress,
            step_callback=step_callback,
        )

    def _check_inputs(self, input_ids, attention_mask, uncond_input_ids, uncond_attention_mask, seeds, record_steps):
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(
                f"input_ids must be a LongTensor (B, L_in), got {input_ids.dtype} {tuple(input_ids.shape)}."
            )
        batch = input_ids.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}."
            )
        if self.config.guided:
            if uncond_input_ids is None:
                raise ValueError(
                    "a guidance scale is > 0 but no uncond_input_ids were given; build them with "
                    "processor.encode_prompts(..., drop_prompt=..., drop_image=...) or call generate()."
                )
            if uncond_input_ids.shape != input_ids.shape:
                raise ValueError(
                    f"uncond_input_ids has shape {tuple(uncond_input_ids.shape)} but input_ids "
                    f"{tuple(input_ids.shape)}; "
                    "right-pad both to the same length so the output parts line up."
                )
            if uncond_attention_mask is None:
                uncond_attention_mask = torch.ones_like(uncond_input_ids)
            if uncond_attention_mask.shape != input_ids.shape:
                raise ValueError(f"uncond_attention_mask must have shape {tuple(input_ids.shape)}.")
        if seeds is None:
            seeds = default_seeds(batch)
        seeds = torch.as_tensor(seeds)
        if seeds.shape != (batch,) or seeds.dtype.is_floating_point:
            raise ValueError(
                f"seeds must be an integer tensor of shape ({batch},), got {seeds.dtype} {tuple(seeds.shape)}."
            )
        seeds = seeds.to(device=input_ids.device, dtype=torch.long)
        if record_steps is None:
            record = []
        else:
            record = sorted({int(s) for s in torch.as_tensor(record_steps).reshape(-1).tolist()})
        if record and (record[0] < 0 or record[-1] >= self.plan.num_steps):
            raise ValueError(f"record_steps must lie in [0, {self.plan.num_steps - 1}], got {record}.")
        return attention_mask, uncond_attention_mask, seeds, record

    # -------------------------------------------------------------------------------------------------- decoding
    @torch.inference_mode()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        uncond_input_ids: torch.Tensor | None = None,
        uncond_attention_mask: torch.Tensor | None = None,
        record_steps: Sequence[int] | torch.Tensor | None = None,
        seeds: torch.Tensor | None = None,
        progress: bool = False,
        step_callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> Trajectory:
        """Decodes the output parts of a batch of input parts.

        Args:
            input_ids / attention_mask (`LongTensor (B, L_in)`): Conditional input parts, right-padded.
            uncond_input_ids / uncond_attention_mask (`LongTensor (B, L_in)`, *optional*): Unconditional input parts
                (same length as the conditional ones); required when a guidance scale is > 0, ignored otherwise.
            record_steps (ints or `LongTensor`, *optional*): Steps whose x0 estimate to keep (e.g. the union of the
                reward steps of all groups). Recording does not change the sampled tokens.
            seeds (`LongTensor (B,)`, *optional*): Row seeds of the noise; drawn from torch's RNG when omitted (and
                stored in the trajectory). The same seed and input give the same rollout in any batch.
            progress (`bool`, defaults to `False`): Show a tqdm progress bar over the steps.
            step_callback (`Callable[[int, Tensor], None]`, *optional*): Called at the start of every step with the
                step index and the current output state `(B, L_out)` (a view: read or copy it, do not modify it).

        Returns:
            [`Trajectory`]
        """
        attention_mask, uncond_attention_mask, seeds, record = self._check_inputs(
            input_ids, attention_mask, uncond_input_ids, uncond_attention_mask, seeds, record_steps
        )
        if self.config.guided:  # the unconditional rows stacked below the conditional ones
            device = input_ids.device
            rows_ids = torch.cat([input_ids, uncond_input_ids.to(device)])
            rows_mask = torch.cat([attention_mask, uncond_attention_mask.to(device)])
        else:
            rows_ids, rows_mask = input_ids, attention_mask
        run = self._start(rows_ids, rows_mask, input_ids.shape[0], seeds, record, step_callback, progress)
        if self.config.fast:
            self._fast_loop(run)
        else:
            self._scheduled_loop(run)
        run.bar.close()
        return self._trajectory(run, input_ids, attention_mask)

    def _start(self, rows_ids, rows_mask, batch, seeds, record, step_callback, progress) -> "_DecodeRun":
        """The sequences of a decode (input rows `rows_ids (B * groups, L_in)`, then a fully masked output part) and
        the per-modality state; `record` are the sorted steps whose x0 estimate to keep."""
        device = rows_ids.device
        input_length = rows_ids.shape[1]
        outputs = self.processor.masked_outputs(batch, device)
        output_length = outputs.shape[1]
        sequence = torch.cat([rows_ids, outputs.repeat(rows_ids.shape[0] // batch, 1)], dim=1)
        full_mask = torch.cat(
            [rows_mask.long(), torch.ones(len(rows_ids), output_length, dtype=torch.long, device=device)], 1
        )
        return _DecodeRun(
            spans=self._new_spans(outputs, input_length),
            sequence=sequence,
            full_mask=full_mask,
            state=sequence[:batch, input_length:],  # a view: the output part of the conditional rows
            seeds=seeds,
            groups=rows_ids.shape[0] // batch,
            record_index={step: i for i, step in enumerate(record)},
            x0=torch.empty(batch, len(record), output_length, dtype=torch.long, device=device),
            step_callback=step_callback,
            bar=tqdm(total=self.plan.num_steps, desc="decoding", disable=not progress, leave=False),
        )

    def _new_spans(self, outputs: torch.Tensor, input_length: int) -> tuple["_Span", "_Span"]:
        """The text and image spans of a decode, each with its slots of the masked `outputs (B, L_out)`."""
        cfg, plan, proc = self.config, self.plan, self.processor
        device = outputs.device
        windows = torch.zeros(plan.num_steps, self.num_text_tokens, dtype=torch.bool)
        for step, (start, end) in enumerate(plan.text_windows):
            windows[step, start:end] = True
        blocked = any(w != plan.text_windows[0] for w in plan.text_windows)
        own = {  # what only one modality has: text blocks; and each modality's noise streams
            "text": dict(
                windows=windows.to(device) if blocked else None,
                blocks=1 if cfg.block_length is None else self.num_text_tokens // cfg.block_length,
                value_stream=TEXT_VALUES,
                confidence_stream=TEXT_CONFIDENCE,
            ),
            "image": dict(windows=None, blocks=1, value_stream=IMAGE_VALUES, confidence_stream=IMAGE_CONFIDENCE),
        }
        text, image = (
            _Span.start(
                outputs=outputs,
                input_length=input_length,
                name=name,
                slots=getattr(proc, f"{name}_positions").to(device),
                vocab_range=getattr(self, f"{name}_vocab_range"),
                exclude=getattr(self, f"_{name}_exclude"),
                temperature=getattr(cfg, f"{name}_temperature"),
                guidance_scale=getattr(cfg, f"{name}_guidance_scale"),
                threshold=getattr(cfg, f"{name}_threshold"),
                counts=getattr(plan, f"{name}_counts"),
                active_steps=getattr(plan, f"{name}_steps"),
                **own[name],
            )
            for name in ("text", "image")
        )
        return text, image

    def _trajectory(self, run: "_DecodeRun", input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Trajectory:
        """The finished decode as a [`Trajectory`]: final output, step map and log-probs gathered from the spans."""
        output_ids = run.state.clone()
        step_map = torch.full_like(output_ids, -1)
        token_logprobs = torch.zeros(output_ids.shape, dtype=torch.float32, device=output_ids.device)
        for span in run.spans:
            step_map.index_copy_(1, span.slots, span.steps)
            token_logprobs.index_copy_(1, span.slots, span.logprobs)
        return Trajectory(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_ids=output_ids,
            step_map=step_map,
            num_steps=self.plan.num_steps,
            token_logprobs=token_logprobs,
            recorded_steps=torch.tensor(list(run.record_index), dtype=torch.long, device=output_ids.device),
            x0=run.x0,
            mask_token_id=self.preset.mask_token_id,
            seeds=run.seeds,
        )

    def _reveal(self, run, span, step, slots, values, logprobs, keep=None, index=None) -> None:
        """Records a step's reveal in `span` and in the sequence rows: the slots `slots (R, n)` of the rows `index`
        (`None` = every row) take the drawn `values`, the reveal step `step` and the drawn `logprobs`; with
        `keep (R, n)`, only where it is True (the other slots keep what they hold)."""
        for store, new in ((span.tokens, values), (span.steps, step), (span.logprobs, logprobs)):
            part = store if index is None else store.index_select(0, index)
            if keep is not None:
                new = torch.where(keep, new, part.gather(1, slots))
            if index is None:
                store.scatter_(1, slots, new)
            else:
                store.index_copy_(0, index, part.scatter(1, slots, new))
        run.sequence.index_copy_(1, span.positions, span.tokens.repeat(run.groups, 1))

    def _record_x0(self, run, step, estimates, index=None) -> None:
        """Keeps the x0 estimate of the recorded `step`: the current state, with each `(span, tokens)` of `estimates`
        (the span's drawn values at its masked slots, revealed tokens elsewhere) on the rows `index` (`None` = all)."""
        estimate = run.state.clone()
        for span, tokens in estimates:
            if index is None:
                estimate.index_copy_(1, span.slots, tokens)
            else:
                estimate[index.unsqueeze(1), span.slots] = tokens
        run.x0[:, run.record_index[step]] = estimate

    # ----------------------------------------------------------------------------------------- scheduled decoding
    def _scheduled_loop(self, run: "_DecodeRun") -> None:
        """The step loop of the scheduled engine: every row reveals its schedule's counts, with no host sync."""
        batch, all_rows = run.state.shape[0], run.sequence.shape[0]
        # Host syncs before the loop only: without padding no mask is passed, which keeps attention on the fast
        # kernels. Steps where no guided modality is active run the conditional rows alone (keys: row counts).
        forward_masks = {
            rows: None if bool(run.full_mask[:rows].all()) else run.full_mask[:rows] for rows in {batch, all_rows}
        }
        for step in range(self.plan.num_steps):
            if run.step_callback is not None:
                run.step_callback(step, run.state)
            recorded = step in run.record_index
            if not recorded and all(span.counts[step] == 0 for span in run.spans):
                run.bar.update(1)
                continue  # nothing changes at this step: skip its forward
            active = [span for span in run.spans if span.counts[step] > 0 or recorded]
            rows = all_rows if any(span.guidance_scale > 0 for span in active) else batch
            hidden = self.model.backbone(run.sequence[:rows], attention_mask=forward_masks[rows])
            estimates = [(span, self._span_step(run, span, hidden, step)) for span in active]
            if recorded:
                self._record_x0(run, step, estimates)
            run.bar.update(1)

    def _span_step(self, run: "_DecodeRun", span: "_Span", hidden: torch.Tensor, step: int) -> torch.Tensor:
        """One step of one modality: draw values for its masked slots, reveal `span.counts[step]` of them.

        Only the slots still masked get logits and noise. Their number is the same in every row (identical layouts
        and counts) and known on the host, so a stable sort lists them with a fixed shape, in ascending slot order.
        Returns the modality's x0 estimate `(B, K)` (revealed tokens + the values drawn for masked slots).
        """
        batch, num_slots = span.tokens.shape
        masked_count = span.masked_before[step]
        if masked_count == 0:
            return span.tokens
        if masked_count == num_slots:
            candidates = span.all_slots
        else:
            still_masked = span.tokens == self.preset.mask_token_id
            candidates = torch.sort((~still_masked).to(torch.uint8), dim=1, stable=True).indices[:, :masked_count]
        rows = batch * run.groups if span.guidance_scale > 0 else batch
        drawn, drawn_logprobs = self._draw(span, hidden[:rows], span.positions, candidates, run.seeds, step)

        count = span.counts[step]
        if count > 0:
            if self.config.remasking == "random":
                confidence = counter_uniform(
                    run.seeds, step, span.confidence_stream, counters=slot_counters(candidates)
                )
            else:
                confidence = drawn_logprobs  # log is monotone: same order as the probability of the drawn value
            if span.windows is not None:
                confidence = confidence.masked_fill(~span.windows[step][candidates], float("-inf"))
            # Stable sort, not topk: ties go to the lowest slot on every device.
            chosen = torch.sort(confidence, dim=1, descending=True, stable=True).indices[:, :count]
            slots = candidates.gather(1, chosen)
            self._reveal(run, span, step, slots, drawn.gather(1, chosen), drawn_logprobs.gather(1, chosen))
        return span.tokens.scatter(1, candidates, drawn)

    def _draw(
        self,
        span: "_Span",
        hidden: torch.Tensor,
        positions: torch.Tensor,
        candidates: torch.Tensor,
        seeds: torch.Tensor,
        step: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws values (token ids) and their log-probs for the slots `candidates (B, n)` of `span`.

        `hidden` holds the B conditional rows, then the unconditional ones when the span is guided; `positions` maps
        a slot to its position in `hidden`. The slots are drawn in chunks of at most `max_draw_elements` logits;
        noise is keyed by (slot, vocabulary column), so chunking changes no value.
        """
        batch, num_candidates = candidates.shape
        groups = hidden.shape[0] // batch
        width = span.vocab_range[1] - span.vocab_range[0]
        chunk = max(1, self.max_draw_elements // (hidden.shape[0] * width))
        drawn, logprobs = [], []
        for start in range(0, num_candidates, chunk):
            part = candidates[:, start : start + chunk]
            part_positions = positions[part]
            if groups > 1:
                part_positions = part_positions.repeat(groups, 1)
            logits = self.model.lm_logits(hidden, positions=part_positions, vocab_range=span.vocab_range)
            logits = guide(logits, batch, span.guidance_scale)
            logits = sampling_logits(logits, span.temperature, self.config.top_k, span.exclude)
            counters = slot_counters(part, width) if span.temperature > 0 else None
            values, values_logprobs = draw(logits, span.temperature, seeds, step, span.value_stream, counters)
            del logits, counters
            drawn.append(values)
            logprobs.append(values_logprobs)
        drawn, logprobs = (torch.cat(x, 1) if len(x) > 1 else x[0] for x in (drawn, logprobs))
        return drawn + span.vocab_range[0], logprobs

    # ---------------------------------------------------------------------------------------------- fast decoding
    def _fast_loop(self, run: "_DecodeRun") -> None:
        """The step loop of fast decoding (thresholds, input cache); writes the spans' state, the sequence and x0.

        Rows differ in how many slots are still masked, so each step starts with ONE small host sync: the per-row
        masked counts, from which the rows that run this step's forward (finished and idle rows leave the batch) and
        the number of candidate slots (the most masked in a running row; shorter rows are padded) follow. With
        thresholds above 1, the floor `"schedule"` and no cache every row runs every forward with the same counts,
        so the computation is the scheduled engine's.
        """
        mask_id, spans, batch, device = self.preset.mask_token_id, run.spans, run.state.shape[0], run.state.device
        # The forward passes no attention mask where its rows have no padding (fast attention kernels).
        padded = {False: not bool(run.full_mask[:batch].all()), True: not bool(run.full_mask.all())}
        refresh = self.config.input_cache_refresh
        cache = None if refresh is None else _InputCache(refresh_every=refresh)
        finished_at = self.plan.num_steps
        for step in range(self.plan.num_steps):
            recorded = step in run.record_index
            reveals = [self._reveals(span, step) for span in spans]
            # The one host sync of the step: masked slots per row and modality.
            masked_counts = torch.stack([(span.tokens == mask_id).sum(1) for span in spans], 1).cpu()
            if not bool(masked_counts.any()):
                finished_at = step
                break
            if run.step_callback is not None:
                run.step_callback(step, run.state)
            used = torch.tensor([r or recorded for r in reveals])
            rows = ((masked_counts > 0) & used).any(1).nonzero()[:, 0]
            if rows.numel() == 0:
                run.bar.update(1)
                continue  # nothing changes at this step: skip its forward
            widths = masked_counts[rows].max(0).values.tolist()
            guided = any(span.guidance_scale > 0 and u for span, u in zip(spans, used.tolist()))
            forward_rows = torch.cat([rows + g * batch for g in range(run.groups)]) if guided else rows
            mask = run.full_mask.index_select(0, forward_rows.to(device)) if padded[guided] else None
            hidden, output_only = self._fast_forward(run, cache, forward_rows, mask)
            index = rows.to(device)
            row_seeds = run.seeds.index_select(0, index)
            estimates = []
            for span, reveal, width in zip(spans, reveals, widths):
                if not (reveal or recorded) or width == 0:
                    continue
                positions = span.slots if output_only else span.positions
                args = (hidden, positions, index, row_seeds, step, width, reveal)
                estimates.append((span, self._fast_span_step(run, span, *args)))
            if recorded:
                self._record_x0(run, step, estimates, index)
            run.bar.update(1)
        for step, i in run.record_index.items():
            if step >= finished_at:  # rows had all ended: x0 is the final output
                run.x0[:, i] = run.state

    def _fast_forward(self, run, cache, forward_rows, mask) -> tuple[torch.Tensor, bool]:
        """The backbone forward of a fast step on the sequence rows `forward_rows` (a host `LongTensor`).

        Without an input cache (`cache` None) the full forward. With one, a full forward every `refresh_every`
        forwards (or when the cache lacks one of the rows) stores the input part's keys/values, and the forwards in
        between run on the output part only, attending to them. Returns `(hidden, output_only)`: `output_only` says
        that `hidden` holds the output part's positions only.
        """
        device = run.sequence.device
        input_length = run.sequence.shape[1] - run.state.shape[1]
        ids = run.sequence.index_select(0, forward_rows.to(device))
        if cache is None:
            return self.model.backbone(ids, attention_mask=mask), False
        where = None
        if cache.key_values is not None and cache.since_refresh < cache.refresh_every:
            lookup = torch.full((run.sequence.shape[0],), -1, dtype=torch.long)
            lookup[cache.rows] = torch.arange(len(cache.rows))
            where = lookup[forward_rows]
        if where is None or bool((where < 0).any()):  # refresh (or a row the cache does not hold)
            hidden, key_values = self.model.backbone(ids, attention_mask=mask, use_cache=True)
            cache.key_values = [
                (k[:, :, :input_length].contiguous(), v[:, :, :input_length].contiguous()) for k, v in key_values
            ]
            cache.rows, cache.since_refresh = forward_rows, 1
            return hidden, False
        if not torch.equal(where, torch.arange(len(cache.rows))):
            where = where.to(device)
            cache.key_values = [(k.index_select(0, where), v.index_select(0, where)) for k, v in cache.key_values]
            cache.rows = forward_rows
        cache.since_refresh += 1
        hidden = self.model.backbone(ids[:, input_length:], attention_mask=mask, past_key_values=cache.key_values)
        return hidden, True

    def _reveals(self, span: "_Span", step: int) -> bool:
        """Whether `span` may reveal slots at `step` (a host bool): its schedule's count, or its plan's steps."""
        start, end = span.active_steps
        if span.threshold is None or (self.config.threshold_floor == "schedule" and span.threshold > 1):
            return span.counts[step] > 0
        return start <= step < end

    def _fast_span_step(self, run, span, hidden, positions, index, seeds, step, width, reveal) -> torch.Tensor:
        """One fast step of one modality on the running rows `index`; returns the x0 tokens of those rows.

        Candidates are each row's masked slots in ascending order, padded to `width` (the most masked in a row).
        """
        tokens = span.tokens.index_select(0, index)
        masked = tokens == self.preset.mask_token_id
        candidates = torch.sort((~masked).to(torch.uint8), dim=1, stable=True).indices[:, :width]
        valid = masked.gather(1, candidates)
        drawn, drawn_logprobs = self._draw(
            span, hidden if span.guidance_scale > 0 else hidden[: index.shape[0]], positions, candidates, seeds, step
        )
        current = tokens.gather(1, candidates)
        if reveal:
            chosen = self._fast_choice(span, step, masked, candidates, valid, drawn_logprobs)
            current = torch.where(chosen, drawn, current)
            self._reveal(run, span, step, candidates, drawn, drawn_logprobs, keep=chosen, index=index)
            tokens = span.tokens.index_select(0, index)
        return tokens.scatter(1, candidates, torch.where(valid, drawn, current))

    def _fast_choice(self, span, step, masked, candidates, valid, drawn_logprobs) -> torch.Tensor:
        """Which `candidates (R, n)` a fast step reveals (`BoolTensor (R, n)`): the most confident selectable ones,
        as many as the floor, the threshold and the cap allow. `masked (R, K)` marks the rows' masked slots and
        `valid` the candidates that are masked (the others pad the rows)."""
        cfg = self.config
        rows, width = candidates.shape
        selectable = valid
        if span.blocks > 1:  # text blocks: a row's current block is its first one with a masked slot
            block_length = masked.shape[1] // span.blocks
            current_block = masked.view(rows, span.blocks, block_length).any(-1).int().argmax(1, keepdim=True)
            selectable = selectable & (candidates // block_length == current_block)
        confidence = drawn_logprobs.masked_fill(~selectable, float("-inf"))
        # The floor: the schedule's count, or (floor "one") at least one and never behind the schedule, which
        # keeps every row within the step budget.
        count = torch.full((rows,), span.counts[step], dtype=torch.long, device=candidates.device)
        if span.threshold is not None:
            if cfg.threshold_floor == "one":
                revealed = masked.shape[1] - masked.sum(1)
                count = (span.cumulative[step] - revealed).clamp(min=1)
            if span.threshold <= 1:
                above = selectable & (drawn_logprobs >= math.log(span.threshold))
                count = torch.maximum(count, above.sum(1))
            if cfg.threshold_cap is not None:
                count = count.clamp(max=cfg.threshold_cap)
        # Stable sort, not topk: ties go to the lowest slot on every device.
        order = torch.sort(confidence, dim=1, descending=True, stable=True).indices
        chosen = torch.arange(width, device=candidates.device) < torch.minimum(count, selectable.sum(1)).unsqueeze(1)
        return torch.zeros_like(chosen).scatter(1, order, chosen)


@dataclass(frozen=True, eq=False)
class _Span:
    """One modality's part of the output: its slots, sampling settings and reveal plan, and its decoding state.

    Built by :meth:`start`. The fields never change during a decode; the state tensors `tokens`, `steps` and
    `logprobs` `(B, K)` are updated in place.
    """

    name: str
    slots: torch.Tensor  # (K,) the modality's positions in the output part
    positions: torch.Tensor  # (K,) the same slots' positions in the whole sequence (input part + output part)
    vocab_range: tuple[int, int]  # the vocabulary columns its values are drawn from
    exclude: int | None  # a vocabulary column never drawn (the mask token's), relative to vocab_range
    temperature: float
    guidance_scale: float
    threshold: float | None  # confidence threshold of fast decoding (None = follow the schedule)
    counts: tuple[int, ...]  # the schedule's reveals per step
    cumulative: list[int]  # revealed by the end of each step
    masked_before: list[int]  # masked slots at the start of each step (host ints, the same in every row)
    windows: torch.Tensor | None  # (T, K) bool: the slots each step may reveal (text blocks), None = all
    active_steps: tuple[int, int]  # [start, end) steps of the axis where the plan runs the modality
    blocks: int  # semi-autoregressive blocks (text), 1 = one block
    value_stream: int  # noise streams of the drawn values and of random remasking
    confidence_stream: int
    all_slots: torch.Tensor  # (B, K) 0..K-1 in every row
    tokens: torch.Tensor  # (B, K) current tokens (mask where not revealed)
    steps: torch.Tensor  # (B, K) reveal step of each slot, len(counts) = "not revealed"
    logprobs: torch.Tensor  # (B, K) float32 log-prob of each revealed token

    @classmethod
    def start(cls, *, outputs: torch.Tensor, input_length: int, slots: torch.Tensor, counts, **settings) -> "_Span":
        """The span of the slots `slots` of `outputs (B, L_out)` (the output part, all masked), before any step."""
        tokens = outputs[:, slots]
        batch, num_slots = tokens.shape
        masked_before, remaining = [], num_slots
        for count in counts:
            masked_before.append(remaining)
            remaining -= count
        return cls(
            slots=slots,
            positions=input_length + slots,
            counts=counts,
            cumulative=list(itertools.accumulate(counts)),
            masked_before=masked_before,
            all_slots=torch.arange(num_slots, device=slots.device).expand(batch, -1),
            tokens=tokens,
            steps=torch.full_like(tokens, len(counts)),  # len(counts) = "not revealed"
            logprobs=torch.zeros(tokens.shape, dtype=torch.float32, device=slots.device),
            **settings,
        )


@dataclass
class _DecodeRun:
    """What one decode call works on: the spans, the rows' sequences and masks, and where results are kept."""

    spans: tuple[_Span, _Span]  # text, image
    sequence: torch.Tensor  # (B * groups, L_in + L_out): conditional rows, then the unconditional ones if guided
    full_mask: torch.Tensor  # (B * groups, L_in + L_out) attention mask of `sequence`
    state: torch.Tensor  # (B, L_out) view of the conditional rows' output part
    seeds: torch.Tensor  # (B,) row seeds of the noise
    groups: int  # 2 when unconditional rows are stacked below the conditional ones, else 1
    record_index: dict[int, int]  # recorded step -> its index in x0
    x0: torch.Tensor  # (B, len(record_index), L_out) x0 estimates of the recorded steps
    step_callback: Callable[[int, torch.Tensor], None] | None
    bar: tqdm


@dataclass
class _InputCache:
    """Fast decoding's cache of the input part's keys/values (`input_cache_refresh`): the stored keys/values, the
    sequence rows they belong to, and the forwards since the last refresh."""

    refresh_every: int
    key_values: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    rows: torch.Tensor | None = None
    since_refresh: int = 0


def _pad_to(inputs: dict[str, torch.Tensor], length: int, pad_token_id: int) -> dict[str, torch.Tensor]:
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    extra = length - ids.shape[1]
    if extra == 0:
        return inputs
    return {
        "input_ids": torch.nn.functional.pad(ids, (0, extra), value=pad_token_id),
        "attention_mask": torch.nn.functional.pad(mask, (0, extra), value=0),
    }


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(model.parameters()).device
