"""Training on the fast sampler: confidence thresholds (rows end at different steps) and the input cache (off-policy,
corrected by TRL's importance sampling). Offline, CPU, a tiny random policy with peaked logits."""

import pytest
import torch
from conftest import policy_logps

from pararl.rewards import Reward, RewardNormalizer, RewardStates
from pararl.rollout import ParallelDecoder


G = 4  # rollouts per prompt: the tiny job's num_generations (conftest.TINY_GRPO)
FAST = {"text_threshold": 0.1, "image_threshold": 0.3}  # low enough that the peaked tiny policy ends rows early

# Peaked random logits: some drawn values pass a threshold.
PEAKED = dict(initializer_range=0.5)


# The tiny job (conftest's make_grpo_config) with 2 prompts x G rollouts per step, 2 steps and no trajectory pictures.
JOB = dict(per_device_train_batch_size=2 * G, max_steps=2, log_trajectory_pictures=False)


class StepReward(Reward):
    """Varies across rollouts and steps; keeps the states it scored."""

    def __init__(self):
        self.batches: list[RewardStates] = []

    def score(self, states: RewardStates) -> list[float]:
        self.batches.append(states)
        return [len(t.split()) / 10 + float(img.mean()) for t, img in zip(states.texts, states.image_tensors)]


@pytest.fixture
def trainer_and_rollouts(make_trainer, make_grpo_config, tiny_model, tmp_path):
    """Factory of trainers on a peaked tiny policy that record their rollouts: `trainer_and_rollouts(**config)` ->
    `(trainer, reward, trajectories)`."""

    def build(**kwargs):
        reward = StepReward()
        trainer = make_trainer(make_grpo_config(tmp_path, **{**JOB, **kwargs}), [reward], model=tiny_model(**PEAKED))
        trainer.model.train()
        trajectories = []
        rollout = trainer._rollout

        def recording_rollout(*args, **kw):
            trajectories.append(rollout(*args, **kw))
            return trajectories[-1]

        trainer._rollout = recording_rollout
        return trainer, reward, trajectories

    return build


def batch(dataset, num_prompts: int = 2) -> list[dict]:
    return [dataset[i] for i in range(num_prompts) for _ in range(G)]


def test_config_carries_the_fast_fields_and_refuses_bad_ones(make_grpo_config, tmp_path):
    fast = dict(text_threshold=0.7, image_threshold=0.8, threshold_floor="schedule", threshold_cap=5)
    config = make_grpo_config(tmp_path, **JOB, **fast, input_cache_refresh=4).to_rollout_config()
    assert (config.text_threshold, config.image_threshold, config.threshold_floor) == (0.7, 0.8, "schedule")
    assert (config.threshold_cap, config.input_cache_refresh) == (5, 4)
    assert config.thresholded and not config.exact_forward and config.off_policy
    default = make_grpo_config(tmp_path, **JOB).to_rollout_config()
    assert not default.fast and not default.off_policy
    bad = [
        (dict(text_threshold=0.0), "text_threshold must be a probability > 0"),
        (dict(image_threshold=-1), "image_threshold must be a probability > 0"),
        (dict(text_threshold=0.7, threshold_cap=0), "threshold_cap must be a positive int"),
        (dict(input_cache_refresh=0), "input_cache_refresh must be a positive int"),
        (dict(text_threshold=0.7, threshold_floor="two"), "threshold_floor='two' is not one of"),
        (dict(threshold_cap=4), "only act with a confidence threshold"),
        (dict(text_threshold=0.7, remasking="random"), "need remasking='low_confidence'"),
        (dict(image_threshold=0.7, reward_step_selection="all"), "rows end at different steps"),
        (dict(image_threshold=0.7, reward_step_selection="fixed", reward_steps=[1, 5]), "rows end at different"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            make_grpo_config(tmp_path, **{**JOB, **kwargs})


def test_threshold_rows_score_their_revealed_tokens_within_each_rows_steps(
    trainer_and_rollouts, processor, toy_train_dataset
):
    trainer, reward, trajectories = trainer_and_rollouts(**FAST)
    out = trainer._generate_and_score_completions(batch(toy_train_dataset))
    (trajectory,) = trajectories
    s, num_steps = 3, 8
    ends = trajectory.row_num_steps
    assert int(ends.min()) < num_steps  # rows do end early (the case this is about)
    assert int(ends.min()) >= s  # ... and each group keeps s distinct steps inside every row (checked below)
    assert len(set(ends.tolist())) > 1  # ... at different steps
    (states,) = reward.batches
    steps = states.steps.view(-1, s)  # (rollouts, s): the rewarded steps are the loss steps
    for group in range(2):
        rows = slice(group * G, (group + 1) * G)
        assert (steps[rows] == steps[rows][0]).all()  # shared by the group
        assert int(steps[rows].max()) < int(ends[rows].min())  # never past the end of any of its rows
    # Every loss row: the state after its step, scoring exactly the tokens revealed at its step.
    rollout = torch.arange(2 * G).repeat_interleave(s)
    for row, (i, k) in enumerate(zip(rollout.tolist(), steps.flatten().tolist())):
        step = torch.full((1,), k)
        assert torch.equal(out["completion_mask"][row].bool(), trajectory.revealed_at(step.expand(2 * G))[i])
        assert torch.equal(out["completion_ids"][row], trajectory.state_at(k + 1)[i])
    # The likelihood is sized by the decoder's bound, not the schedule's: some rows score more tokens in one step
    # than the schedule ever reveals, and the trainer's log-probs are the sampler's own (on-policy thresholds).
    decoder = ParallelDecoder(trainer.model, processor, trainer.rollout_config)
    text_bound, image_bound = decoder.max_reveals_per_modality
    assert [span.num_scored for span in trainer._spans] == [max(text_bound), max(image_bound)]
    assert trainer._max_scored_tokens == decoder.max_reveals_per_step == trainer.max_completion_length
    plan = trainer.reveal_plan
    image_slot = processor.image_slot_mask
    text_scored = int((out["completion_mask"].bool() & ~image_slot).sum(1).max())
    image_scored = int((out["completion_mask"].bool() & image_slot).sum(1).max())
    assert text_scored > max(plan.text_counts) or image_scored > max(plan.image_counts)
    assert not trainer.rollout_config.off_policy and "importance_sampling_ratio" not in out
    scored = out["completion_mask"].bool()
    sampling = trajectory.token_logprobs[rollout] * out["completion_mask"]
    torch.testing.assert_close(out["sampling_per_token_logps"], sampling)
    torch.testing.assert_close(policy_logps(trainer, out)[scored], sampling[scored], atol=1e-5, rtol=0)
    metrics = trainer._metrics["train"]
    assert metrics["rollout/steps_per_row"][-1] == pytest.approx(ends.float().mean().item())


@pytest.mark.parametrize("selection", ["uniform", "final"])
def test_thresholds_above_one_with_schedule_floor_train_as_the_exact_engine(
    trainer_and_rollouts, toy_train_dataset, selection
):
    outputs, rewards, pictures = [], [], []
    fast = dict(text_threshold=1.5, image_threshold=1.5, threshold_floor="schedule")
    for kwargs in ({}, fast):
        trainer, reward, _ = trainer_and_rollouts(reward_step_selection=selection, **kwargs)
        outputs.append(trainer._generate_and_score_completions(batch(toy_train_dataset)))
        rewards.append(reward.batches[0])
        pictures.append(trainer._last_trajectory)
    exact, thresholded = outputs
    assert exact.keys() == thresholded.keys()
    for key, value in exact.items():
        assert torch.equal(value, thresholded[key]), key
    assert torch.equal(rewards[0].steps, rewards[1].steps) and rewards[0].texts == rewards[1].texts
    assert torch.equal(rewards[0].image_tensors, rewards[1].image_tensors)
    (exact_picture, *exact_rest), (picture, *rest) = pictures  # the trajectory picture shows the same panels
    assert torch.equal(exact_picture.recorded_steps, picture.recorded_steps) and exact_rest == rest
    assert torch.equal(exact_picture.x0, picture.x0)


def test_stale_input_cache_is_corrected_by_importance_sampling(trainer_and_rollouts, toy_train_dataset):
    trainer, _, trajectories = trainer_and_rollouts(input_cache_refresh=4)
    assert trainer._corrects_off_policy
    out = trainer._generate_and_score_completions(batch(toy_train_dataset))
    (trajectory,) = trajectories
    mask = out["completion_mask"]
    old = policy_logps(trainer, out)
    torch.testing.assert_close(out["old_per_token_logps"], old, atol=1e-6, rtol=0)
    diff = (old - out["sampling_per_token_logps"]) * mask
    assert diff.abs().max() > 1e-3  # the stale cache really moved the sampler off the full forward
    ratio = diff.sum(-1, keepdim=True).exp()  # TRL's default mode, sequence_mask, clip_max 3
    torch.testing.assert_close(out["importance_sampling_ratio"], ratio.masked_fill(ratio > 3.0, 0.0))
    metrics = trainer._metrics["train"]
    for name in ("sampling_logp_difference/mean", "sampling_logp_difference/max", "importance_sampling_ratio/mean"):
        assert len(metrics[f"sampling/{name}"]) == 1
    assert metrics["sampling/sampling_logp_difference/max"][-1] == pytest.approx(diff.abs()[mask.bool()].max().item())
    assert trajectory.row_num_steps.eq(trainer._schedule_num_steps).all()  # the cache alone keeps the schedule


def test_a_short_training_run_on_the_fast_sampler(trainer_and_rollouts):
    trainer, _, _ = trainer_and_rollouts(**FAST, threshold_cap=30, input_cache_refresh=2)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for key in ("rollout/steps_per_row", "sampling/importance_sampling_ratio/mean", "reward"):
        assert all(key in entry for entry in logs), key
    changed = [name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])]
    assert changed


class NormalizedStepReward(StepReward):
    """A reward with an unfitted normaliser, so the trainer calibrates it by rolling out first."""

    def __init__(self):
        super().__init__()
        self.normalizer = RewardNormalizer()

    def raw_scores(self, states: RewardStates) -> list[float]:
        return super().score(states)

    def score(self, states: RewardStates) -> list[float]:
        return self.normalizer(self.raw_scores(states))


def test_calibration_reads_its_steps_on_each_rows_own_steps(make_grpo_config, make_trainer, tiny_model, tmp_path):
    reward = NormalizedStepReward()
    trainer = make_trainer(
        make_grpo_config(tmp_path, **JOB, **FAST, reward_calibration_fraction=0.5),
        [reward],
        model=tiny_model(**PEAKED),
    )
    trajectories = []
    rollout = trainer._rollout
    trainer._rollout = lambda *args: trajectories.append(rollout(*args)) or trajectories[-1]
    trainer._prepare_reward_normalizers()
    assert reward.normalizer.is_fitted and len(trajectories) == len(reward.batches) == 1
    (trajectory,), (states,) = trajectories, reward.batches
    ends = trajectory.row_num_steps
    assert int(ends.min()) < 8  # rows ended early, so axis steps would often lie past them
    rows = torch.arange(trajectory.batch_size).repeat_interleave(3)
    assert (states.steps < ends[rows]).all()
