"""`DiffusionGRPOConfig`: TRL's `GRPOConfig` plus what ParaRL needs."""

from dataclasses import dataclass, field

from trl import GRPOConfig

from ..config_ranges import GRPO_RANGES, TRAINING_RANGES, check_ranges
from ..rewards.steps import STEP_SELECTIONS
from ..rollout import RolloutConfig
from ..rollout.decoder import GUIDANCE_DROP, REMASKING, THRESHOLD_FLOORS
from ..rollout.schedules import DECODE_ORDERS, SCHEDULES


# The options this trainer implements itself; the rollout's and the step selectors' come from their modules.
ADVANTAGE_MODES = ("per_step", "trajectory_mean")
LIKELIHOODS = ("trajectory", "random_mask")
LOSS_STEPS = ("rewarded", "all")
LOSS_MODALITIES = ("both", "text", "image")


@dataclass
class DiffusionGRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`DiffusionGRPOTrainer`]: ParaRL, GRPO with rewards at intermediate denoising steps of a
    parallel multimodal masked-diffusion model.

    Every [`~trl.GRPOConfig`] field keeps its meaning and default, with these ParaRL readings:

    - `num_generations` (G) counts rollouts per prompt; `per_device_train_batch_size` counts *rollouts* per device and
      micro-step. Each rollout becomes R loss rows, so a micro-step's loss sees `per_device_train_batch_size * R` rows:
      R = `num_reward_steps` (one per selected step) with `loss_steps="rewarded"`; with `loss_steps="all"`, R is the
      number of groups of `loss_step_group` consecutive steps in which the reveal schedule reveals a token (16 for the
      toy default's 16 steps at group size 1, 4 at group size 4), or, with confidence thresholds, the groups up to the
      longest row of the generation batch. TRL's divisibility rules are unchanged: the global
      generation batch (`per_device_train_batch_size * num_processes * steps_per_generation`) must be a multiple of
      `num_generations`.
    - `temperature` is the default of both modality temperatures; `top_k` (0 = off) filters both modalities, and the
      likelihood applies the same filter, so top-k rollouts stay on-policy.
    - `max_completion_length` is ignored: the output length is fixed by the model's sequence preset. `dr_grpo`'s
      constant normaliser (TRL's `max_completion_length`) is the most tokens one loss row scores.
    - `vllm_importance_sampling_correction`, `vllm_importance_sampling_mode`, `vllm_importance_sampling_clip_min`
      and `vllm_importance_sampling_clip_max` keep TRL's meaning but apply to pararl's own sampler: when the rollout
      is off-policy (`RolloutConfig.off_policy`: classifier-free guidance, or `input_cache_refresh` > 1), the
      decoder's recorded log-probs are the behaviour policy and each row's loss is weighted by TRL's ratio
      `exp(old - sampling)` (per token or per row, truncated or masked). Logged as
      `sampling/importance_sampling_ratio/*` and `sampling/sampling_logp_difference/*`.
    - `top_entropy_quantile` takes its quantile per modality (text and image entropies have different scales).
    - `mask_truncated_completions` must stay `False`: outputs have a fixed length and are never truncated.
    - `beta`, `epsilon`, `loss_type`, `num_iterations`, `scale_rewards`, `reward_weights` and
      `multi_objective_aggregation` act on (rollout, step) rows exactly as TRL's act on completions.

    Parameters:
        > Parameters that control the rollout

        diffusion_steps (`int`, *optional*, defaults to `64`):
            Number of denoising steps of the shared step axis (one model forward each).
        block_length (`int` or `None`, *optional*, defaults to `None`):
            Semi-autoregressive text blocks (LLaDA style; the paper uses 64): the text's steps are split equally among
            `text_span / block_length` blocks and a step only reveals text slots of its block. `None` decodes the text
            span as one block, like the released samplers. `block_length` must divide the text span (the preset's
            `max_reasoning_tokens`), and the number of blocks must divide the text's steps: `diffusion_steps` with
            `decode_order="parallel"`, the text's half of them (`diffusion_steps // 2` or the rest) with a sequential
            order; there must be at least one step per block.
        text_schedule (`str`, *optional*, defaults to `"linear"`):
            Text reveal schedule: `"linear"` or `"cosine"`.
        image_schedule (`str`, *optional*, defaults to `"cosine"`):
            Image reveal schedule: `"cosine"` (MaskGIT) or `"linear"`.
        image_start (`float`, *optional*, defaults to `0.0`):
            Fraction of the step axis before the image schedule starts (the released samplers use `0.25`).
        text_temperature (`float` or `None`, *optional*, defaults to `None`):
            Text sampling temperature; `None` uses `temperature`. Must be > 0 for training rollouts.
        image_temperature (`float` or `None`, *optional*, defaults to `None`):
            Image sampling temperature; `None` uses `temperature`. Must be > 0 for training rollouts.
        remasking (`str`, *optional*, defaults to `"low_confidence"`):
            Which masked positions a step reveals: the most confident (`"low_confidence"`) or random ones (`"random"`).
            Only `"random"` makes the trained trajectory likelihood exact including the choice of slots (see
            `likelihood`).
        text_guidance_scale (`float`, *optional*, defaults to `0.0`):
            Classifier-free guidance on text logits (0 = off). Guidance makes the behaviour policy differ from the
            model's own distribution, so training rollouts keep it off by default; when on, the loss is corrected by
            TRL's importance sampling (`vllm_importance_sampling_*`) with the sampler's log-probs as behaviour policy.
        image_guidance_scale (`float`, *optional*, defaults to `0.0`):
            Classifier-free guidance on image logits (0 = off).
        guidance_drop (`str`, *optional*, defaults to `"both"`):
            What the unconditional rows drop: `"prompt"`, `"image"` or `"both"`.
        decode_order (`str`, *optional*, defaults to `"parallel"`):
            `"parallel"` or the sequential baselines `"text_then_image"` / `"image_then_text"`.
        text_threshold (`float` or `None`, *optional*, defaults to `None`):
            Fast decoding (Fast-dLLM style confidence threshold) of the text: each step reveals every masked slot of
            the row's current block whose drawn value has probability >= the threshold, within `threshold_floor` and
            `threshold_cap`; rows end when fully revealed (`diffusion_steps` is the budget). `None` follows the
            schedule. Stays on-policy (the values are still drawn from the full forward the likelihood replays); reward
            and loss steps are then drawn after the rollout within each group's shortest row (see
            `reward_step_selection`).
        image_threshold (`float` or `None`, *optional*, defaults to `None`):
            The same for the image span.
        threshold_floor (`str`, *optional*, defaults to `"one"`):
            The fewest slots a thresholded modality reveals per step: `"one"` (at least one, and never behind its
            schedule, so every row ends within `diffusion_steps`) or `"schedule"` (at least the schedule's count).
        threshold_cap (`int` or `None`, *optional*, defaults to `None`):
            The most slots a thresholded modality reveals per step (`None` = no cap); at least the schedules' largest
            count.
        input_cache_refresh (`int` or `None`, *optional*, defaults to `None`):
            Approximate cache of the input part's keys and values, refreshed by a full forward every
            `input_cache_refresh` forwards (1 = every forward, exact; `None` = no cache). Above 1 the sampler is
            off-policy and the loss is corrected by TRL's importance sampling (`vllm_importance_sampling_*`).

        > Parameters that control the ParaRL objective

        num_reward_steps (`int`, *optional*, defaults to `3`):
            Steps s per rollout at which rewards are computed (the paper's sparse steps; s = 3).
        reward_step_selection (`str`, *optional*, defaults to `"uniform"`):
            How the s steps are drawn, fresh per prompt group and shared by its rollouts: `"uniform"`, `"stratified"`
            (one per equal segment), `"final"` (output-level RL, the paper's baseline: every rollout is rewarded once,
            on its final output, and that reward is given to `num_reward_steps` stratified loss steps, one per equal
            segment, so both variants train on the same number of rows across the whole trajectory), `"fixed"`
            (`reward_steps`) or `"all"` (every step). With confidence thresholds (`text_threshold` / `image_threshold`)
            rows end at different steps: the steps are then drawn after the rollout, each group's within its shortest
            row's steps (`"fixed"` and `"all"` are refused there).
        reward_steps (`list[int]` or `None`, *optional*, defaults to `None`):
            The steps for `reward_step_selection="fixed"` (0-based).
        advantage_mode (`str`, *optional*, defaults to `"per_step"`):
            `"per_step"`: z-score over the group at the same step (paper Eq. 4). `"trajectory_mean"`: z-score of each
            rollout's mean reward over its selected steps (paper Fig. 4), shared by its steps.
        likelihood (`str`, *optional*, defaults to `"trajectory"`):
            `"trajectory"`: the exact conditional likelihood of the values revealed at step k given the state before
            step k (temperatures and `top_k` as the sampler applies them). Which slots a step reveals is not scored:
            with `remasking="random"` that choice does not depend on the policy, so the trajectory likelihood is exact
            up to a constant; with `"low_confidence"` it depends on the drawn values and is left out. `"random_mask"`:
            MMaDA UniGRPO's estimator (a random mask ratio per row, masked output tokens scored given the rest), for
            comparison.
        loss_steps (`str`, *optional*, defaults to `"rewarded"`):
            Which revealed tokens the loss scores. `"rewarded"`: the tokens revealed at the s rewarded steps, each row
            with its own step's advantage (the paper's literal objective; about s / `diffusion_steps` of the output).
            `"all"`: every revealed token, each scored on the state before its own step (TraceRL's step-aligned
            credit), credited with the advantage of the first rewarded step at or after its step (reward to go; a
            token revealed after the last rewarded step takes the last one's); with `advantage_mode="trajectory_mean"`
            every token takes its rollout's trajectory-mean advantage, and with `reward_step_selection="final"` every
            token takes the final output's advantage. Costs one forward per step group instead of s. Needs
            `likelihood="trajectory"`.
        loss_step_group (`int`, *optional*, defaults to `1`):
            With `loss_steps="all"`: g consecutive steps `[a, a + g)` (from step 0) are scored in one forward, on the
            state before step a (TraceRL's shrinkage), which divides the forwards by g. g = 1 is exact; g > 1 is an
            approximation: a token revealed at a later step of its group is scored without the tokens revealed
            before it in the group, so the scored distribution is not the sampled one; the rollout's own log-probs
            stay the behaviour policy and TRL's importance-sampling correction (`vllm_importance_sampling_*`)
            reweights the loss when `vllm_importance_sampling_correction` is on.
        loss_modalities (`str`, *optional*, defaults to `"both"`):
            Whose revealed tokens the loss scores: `"both"` modalities, only the `"image"`'s or only the `"text"`'s.
            The other modality's tokens still condition every scored token exactly as in the rollout (each row's
            state is unchanged); they only take no gradient, so RL cannot move their choices. Crediting only the
            image asks the picture to follow the text rather than the text to narrow its choices.
        reward_clip (`float`, *optional*, defaults to `1.0`):
            Clip constant c of the reward normalisation: z clipped to [-c, c], then mapped to [0, 1].
        reward_calibration_fraction (`float`, *optional*, defaults to `0.01`):
            Fraction of the training prompts rolled out once before training to estimate the normalisation mean and std
            of every reward that has an unfitted `normalizer`.
        reward_mean (`float` or `None`, *optional*, defaults to `None`):
            Known normalisation mean (skips calibration when `reward_std` is also given).
        reward_std (`float` or `None`, *optional*, defaults to `None`):
            Known normalisation std.
        grey_unrevealed (`bool`, *optional*, defaults to `False`):
            Paint image cells that are still masked at the reward step grey instead of showing the x0 estimate.
        log_trajectory_pictures (`bool`, *optional*, defaults to `True`):
            Every `logging_steps`, draw one rollout's trajectory to `<output_dir>/trajectories/` and to `report_to`.
    """

    _VALID_DICT_FIELDS = GRPOConfig._VALID_DICT_FIELDS

    # Parameters that control the rollout
    diffusion_steps: int = field(
        default=64,
        metadata={
            "help": "Number of denoising steps of the shared step axis (one model forward each).",
        },
    )
    block_length: int | None = field(
        default=None,
        metadata={
            "help": "Semi-autoregressive text blocks (LLaDA style; the paper uses 64): the text's steps are split "
            "equally among `text_span / block_length` blocks and a step only reveals text slots of its "
            "block. `None` decodes the text span as one block, like the released samplers. `block_length` "
            "must divide the text span (the preset's `max_reasoning_tokens`), and the number of blocks must "
            "divide the text's steps: `diffusion_steps` with `decode_order=\"parallel\"`, the text's half of "
            "them (`diffusion_steps // 2` or the rest) with a sequential order; there must be at least one "
            "step per block.",
        },
    )
    text_schedule: str = field(
        default="linear",
        metadata={
            "help": 'Text reveal schedule: `"linear"` or `"cosine"`.',
            "choices": list(SCHEDULES),
        },
    )
    image_schedule: str = field(
        default="cosine",
        metadata={
            "help": 'Image reveal schedule: `"cosine"` (MaskGIT) or `"linear"`.',
            "choices": list(SCHEDULES),
        },
    )
    image_start: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of the step axis before the image schedule starts (the released samplers use `0.25`).",
        },
    )
    text_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Text sampling temperature; `None` uses `temperature`. Must be > 0 for training rollouts.",
        },
    )
    image_temperature: float | None = field(
        default=None,
        metadata={
            "help": "Image sampling temperature; `None` uses `temperature`. Must be > 0 for training rollouts.",
        },
    )
    remasking: str = field(
        default="low_confidence",
        metadata={
            "help": 'Which masked positions a step reveals: the most confident (`"low_confidence"`) or random ones '
            '(`"random"`). Only `"random"` makes the trained trajectory likelihood exact including the '
            "choice of slots (see `likelihood`).",
            "choices": list(REMASKING),
        },
    )
    text_guidance_scale: float = field(
        default=0.0,
        metadata={
            "help": "Classifier-free guidance on text logits (0 = off). Guidance makes the behaviour policy differ "
            "from the model's own distribution, so training rollouts keep it off by default; when on, the "
            "loss is corrected by TRL's importance sampling (`vllm_importance_sampling_*`) with the "
            "sampler's log-probs as behaviour policy.",
        },
    )
    image_guidance_scale: float = field(
        default=0.0,
        metadata={
            "help": "Classifier-free guidance on image logits (0 = off).",
        },
    )
    guidance_drop: str = field(
        default="both",
        metadata={
            "help": 'What the unconditional rows drop: `"prompt"`, `"image"` or `"both"`.',
            "choices": list(GUIDANCE_DROP),
        },
    )
    decode_order: str = field(
        default="parallel",
        metadata={
            "help": '`"parallel"` or the sequential baselines `"text_then_image"` / `"image_then_text"`.',
            "choices": list(DECODE_ORDERS),
        },
    )
    text_threshold: float | None = field(
        default=None,
        metadata={
            "help": "Fast decoding (Fast-dLLM style confidence threshold) of the text: each step reveals every "
            "masked slot of the row's current block whose drawn value has probability >= the threshold, "
            "within `threshold_floor` and `threshold_cap`; rows end when fully revealed (`diffusion_steps` "
            "is the budget). `None` follows the schedule. Stays on-policy (the values are still drawn from "
            "the full forward the likelihood replays); reward and loss steps are then drawn after the "
            "rollout within each group's shortest row (see `reward_step_selection`).",
        },
    )
    image_threshold: float | None = field(
        default=None,
        metadata={
            "help": "The same for the image span.",
        },
    )
    threshold_floor: str = field(
        default="one",
        metadata={
            "help": 'The fewest slots a thresholded modality reveals per step: `"one"` (at least one, and never '
            'behind its schedule, so every row ends within `diffusion_steps`) or `"schedule"` (at least the '
            "schedule's count).",
            "choices": list(THRESHOLD_FLOORS),
        },
    )
    threshold_cap: int | None = field(
        default=None,
        metadata={
            "help": "The most slots a thresholded modality reveals per step (`None` = no cap); at least the "
            "schedules' largest count.",
        },
    )
    input_cache_refresh: int | None = field(
        default=None,
        metadata={
            "help": "Approximate cache of the input part's keys and values, refreshed by a full forward every "
            "`input_cache_refresh` forwards (1 = every forward, exact; `None` = no cache). Above 1 the "
            "sampler is off-policy and the loss is corrected by TRL's importance sampling "
            "(`vllm_importance_sampling_*`).",
        },
    )

    # Parameters that control the ParaRL objective
    num_reward_steps: int = field(
        default=3,
        metadata={
            "help": "Steps s per rollout at which rewards are computed (the paper's sparse steps; s = 3).",
        },
    )
    reward_step_selection: str = field(
        default="uniform",
        metadata={
            "help": 'How the s steps are drawn, fresh per prompt group and shared by its rollouts: `"uniform"`, '
            '`"stratified"` (one per equal segment), `"final"` (output-level RL, the paper\'s baseline: every '
            "rollout is rewarded once, on its final output, and that reward is given to `num_reward_steps` "
            "stratified loss steps, one per equal segment, so both variants train on the same number of rows "
            'across the whole trajectory), `"fixed"` (`reward_steps`) or `"all"` (every step). With '
            "confidence thresholds (`text_threshold` / `image_threshold`) rows end at different steps: the "
            "steps are then drawn after the rollout, each group's within its shortest row's steps (`\"fixed\"` "
            'and `"all"` are refused there).',
            "choices": list(STEP_SELECTIONS),
        },
    )
    reward_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": 'The steps for `reward_step_selection="fixed"` (0-based).',
        },
    )
    advantage_mode: str = field(
        default="per_step",
        metadata={
            "help": '`"per_step"`: z-score over the group at the same step (paper Eq. 4). `"trajectory_mean"`: '
            "z-score of each rollout's mean reward over its selected steps (paper Fig. 4), shared by its "
            "steps.",
            "choices": list(ADVANTAGE_MODES),
        },
    )
    likelihood: str = field(
        default="trajectory",
        metadata={
            "help": '`"trajectory"`: the exact conditional likelihood of the values revealed at step k given the '
            "state before step k (temperatures and `top_k` as the sampler applies them). Which slots a step "
            'reveals is not scored: with `remasking="random"` that choice does not depend on the policy, so '
            'the trajectory likelihood is exact up to a constant; with `"low_confidence"` it depends on the '
            'drawn values and is left out. `"random_mask"`: MMaDA UniGRPO\'s estimator (a random mask ratio '
            "per row, masked output tokens scored given the rest), for comparison.",
            "choices": list(LIKELIHOODS),
        },
    )
    loss_steps: str = field(
        default="rewarded",
        metadata={
            "help": 'Which revealed tokens the loss scores. `"rewarded"`: the tokens revealed at the s rewarded '
            "steps, each row with its own step's advantage (the paper's literal objective; about s / "
            '`diffusion_steps` of the output). `"all"`: every revealed token, each scored on the state before its '
            "own step (TraceRL's step-aligned credit), credited with the advantage of the first rewarded step at "
            "or after its step (reward to go; a token revealed after the last rewarded step takes the last one's); "
            'with `advantage_mode="trajectory_mean"` every token takes its rollout\'s trajectory-mean advantage, '
            'and with `reward_step_selection="final"` every token takes the final output\'s advantage. Costs one '
            'forward per step group instead of s. Needs `likelihood="trajectory"`.',
            "choices": list(LOSS_STEPS),
        },
    )
    loss_step_group: int = field(
        default=1,
        metadata={
            "help": 'With `loss_steps="all"`: g consecutive steps `[a, a + g)` (from step 0) are scored in one '
            "forward, on the state before step a (TraceRL's shrinkage), which divides the forwards by g. g = 1 is "
            "exact; g > 1 is an approximation: a token revealed at a later step of its group is scored without "
            "the tokens revealed before it in the group, so the scored distribution is not the sampled one; the "
            "rollout's own log-probs stay the behaviour policy and TRL's importance-sampling correction "
            "(`vllm_importance_sampling_*`) reweights the loss when `vllm_importance_sampling_correction` is on.",
        },
    )
    loss_modalities: str = field(
        default="both",
        metadata={
            "help": 'Whose revealed tokens the loss scores: `"both"` modalities, only the `"image"`\'s or only the '
            "`\"text\"`'s. The other modality's tokens still condition every scored token exactly as in the rollout "
            "(each row's state is unchanged); they only take no gradient, so RL cannot move their choices. "
            "Crediting only the image asks the picture to follow the text rather than the text to narrow its "
            "choices.",
            "choices": list(LOSS_MODALITIES),
        },
    )
    reward_clip: float = field(
        default=1.0,
        metadata={
            "help": "Clip constant c of the reward normalisation: z clipped to [-c, c], then mapped to [0, 1].",
        },
    )
    reward_calibration_fraction: float = field(
        default=0.01,
        metadata={
            "help": "Fraction of the training prompts rolled out once before training to estimate the normalisation "
            "mean and std of every reward that has an unfitted `normalizer`.",
        },
    )
    reward_mean: float | None = field(
        default=None,
        metadata={
            "help": "Known normalisation mean (skips calibration when `reward_std` is also given).",
        },
    )
    reward_std: float | None = field(
        default=None,
        metadata={
            "help": "Known normalisation std.",
        },
    )
    grey_unrevealed: bool = field(
        default=False,
        metadata={
            "help": "Paint image cells that are still masked at the reward step grey instead of showing the x0 "
            "estimate.",
        },
    )
    log_trajectory_pictures: bool = field(
        default=True,
        metadata={
            "help": "Every `logging_steps`, draw one rollout's trajectory to `<output_dir>/trajectories/` and to "
            "`report_to`.",
        },
    )

    def __post_init__(self):
        check_ranges(self, TRAINING_RANGES + GRPO_RANGES)  # before TRL's own __post_init__ divides by any of them
        if self.activation_checkpointing is None:  # TRL's field keeps the old name (default True): no FutureWarning
            self.activation_checkpointing = self.gradient_checkpointing
        super().__post_init__()
        choices = {
            "text_schedule": SCHEDULES,
            "image_schedule": SCHEDULES,
            "remasking": REMASKING,
            "guidance_drop": GUIDANCE_DROP,
            "decode_order": DECODE_ORDERS,
            "threshold_floor": THRESHOLD_FLOORS,
            "reward_step_selection": STEP_SELECTIONS,
            "advantage_mode": ADVANTAGE_MODES,
            "likelihood": LIKELIHOODS,
            "loss_steps": LOSS_STEPS,
            "loss_modalities": LOSS_MODALITIES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}.")
        if self.diffusion_steps < 1:
            raise ValueError(f"diffusion_steps must be >= 1, got {self.diffusion_steps}.")
        if self.block_length is not None and self.block_length < 1:
            raise ValueError(f"block_length must be a positive integer or None, got {self.block_length}.")
        if not 0.0 <= self.image_start < 1.0:
            raise ValueError(f"image_start must be in [0, 1), got {self.image_start}.")
        for name in ("temperature", "text_temperature", "image_temperature"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(
                    f"{name}={value}: ParaRL scores the rollout's own sampling distribution, which greedy decoding "
                    "(temperature 0) does not have; use a temperature > 0."
                )
        if self.reward_step_selection == "all":
            self.num_reward_steps = self.diffusion_steps
        elif self.reward_step_selection == "fixed":
            if not self.reward_steps:
                raise ValueError("reward_step_selection='fixed' needs reward_steps, e.g. reward_steps=[7, 15, 31].")
            if any(not 0 <= step < self.diffusion_steps for step in self.reward_steps):
                raise ValueError(
                    f"reward_steps {self.reward_steps} must lie in [0, diffusion_steps={self.diffusion_steps})."
                )
            self.num_reward_steps = len(set(self.reward_steps))
        if not 1 <= self.num_reward_steps <= self.diffusion_steps:
            raise ValueError(
                f"num_reward_steps={self.num_reward_steps} must be between 1 and diffusion_steps={self.diffusion_steps}."
            )
        self._check_loss_steps()
        if self.reward_clip <= 0:
            raise ValueError(f"reward_clip must be > 0, got {self.reward_clip}.")
        if not 0.0 <= self.reward_calibration_fraction <= 1.0:
            raise ValueError(f"reward_calibration_fraction must be in [0, 1], got {self.reward_calibration_fraction}.")
        if (self.reward_mean is None) != (self.reward_std is None):
            raise ValueError("Give both reward_mean and reward_std, or neither (then they are calibrated).")
        if self.reward_std is not None and self.reward_std < 0:
            raise ValueError(f"reward_std must be >= 0, got {self.reward_std}.")
        if self.mask_truncated_completions:
            raise ValueError(
                "mask_truncated_completions=True: a ParaRL output has the preset's fixed length and is never "
                "truncated, so there is nothing to mask; leave it False."
            )
        if self.text_temperature is None:
            self.text_temperature = self.temperature
        if self.image_temperature is None:
            self.image_temperature = self.temperature
        self._check_fast_decoding()

    def to_rollout_config(self) -> RolloutConfig:
        """The decoder settings of the training rollouts (also what evaluations should decode with)."""
        return RolloutConfig(
            num_steps=self.diffusion_steps,
            text_schedule=self.text_schedule,
            image_schedule=self.image_schedule,
            block_length=self.block_length,
            image_start=self.image_start,
            text_temperature=self.text_temperature,
            image_temperature=self.image_temperature,
            top_k=self.top_k or None,
            remasking=self.remasking,
            text_guidance_scale=self.text_guidance_scale,
            image_guidance_scale=self.image_guidance_scale,
            guidance_drop=self.guidance_drop,
            order=self.decode_order,
            text_threshold=self.text_threshold,
            image_threshold=self.image_threshold,
            threshold_floor=self.threshold_floor,
            threshold_cap=self.threshold_cap,
            input_cache_refresh=self.input_cache_refresh,
        )

    @property
    def thresholded(self) -> bool:
        """Whether some modality decodes by confidence threshold (rows then end at different steps)."""
        return self.text_threshold is not None or self.image_threshold is not None

    def _check_loss_steps(self) -> None:
        if self.loss_step_group < 1:
            raise ValueError(f"loss_step_group must be >= 1, got {self.loss_step_group}.")
        if self.loss_steps == "rewarded" and self.loss_step_group != 1:
            raise ValueError(
                f"loss_step_group={self.loss_step_group} groups the steps of loss_steps='all'; with "
                "loss_steps='rewarded' each row is one rewarded step: set loss_steps='all' or loss_step_group=1."
            )
        if self.loss_steps == "all" and self.likelihood != "trajectory":
            raise ValueError(
                f"loss_steps='all' scores every token on the state before its own step, which is the trajectory "
                f"likelihood; likelihood={self.likelihood!r} scores a random mask instead: use "
                "likelihood='trajectory' or loss_steps='rewarded'."
            )

    def _check_fast_decoding(self) -> None:
        self.to_rollout_config()  # the decoder's own checks of every rollout field (thresholds, cap, floor, cache)
        if not self.thresholded:
            if self.threshold_cap is not None or self.threshold_floor != "one":
                raise ValueError(
                    "threshold_cap / threshold_floor only act with a confidence threshold: set text_threshold and/or "
                    "image_threshold, or leave them at their defaults."
                )
            return
        if self.remasking != "low_confidence":
            raise ValueError(
                "confidence thresholds (text_threshold / image_threshold) rank slots by the probability of their "
                f"drawn value; they need remasking='low_confidence', got {self.remasking!r}."
            )
        if self.reward_step_selection in ("fixed", "all"):
            raise ValueError(
                f"reward_step_selection={self.reward_step_selection!r} names axis steps ahead of the rollout, but "
                "with confidence thresholds rows end at different steps, possibly before them; use 'uniform', "
                "'stratified' or 'final' (their steps are drawn within each group's shortest row)."
            )
