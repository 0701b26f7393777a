"""`loss_steps="all"`: every revealed token scored once, on the state before its own step (or its step group's first),
credited with the reward to go; output-level RL crediting the whole output; TRL's machinery on these rows.
Offline, CPU, a tiny random policy on toy-world prompts; log-probs checked against one full forward by hand."""

import pytest
import torch
import torch.nn.functional as F
from conftest import policy_logps

from pararl.grpo.trainer import DiffusionGRPOTrainer
from pararl.rewards import Reward, RewardStates


G = 4  # rollouts per prompt: the tiny job's num_generations (conftest.TINY_GRPO)
NUM_STEPS = 8
TEXT_T, IMAGE_T = 0.7, 1.3
BLOCKS = dict(block_length=13, image_start=0.25)  # 2 text blocks; the image starts at step 2
THRESHOLDS = dict(text_threshold=0.1, image_threshold=0.3)  # rows of the peaked tiny policy end early


# The tiny job (conftest's make_grpo_config) with loss_steps="all", 2 prompts x G rollouts per step, 2 steps, the
# temperatures above and no trajectory pictures.
JOB = dict(
    per_device_train_batch_size=2 * G,
    diffusion_steps=NUM_STEPS,
    max_steps=2,
    log_trajectory_pictures=False,
    loss_steps="all",
    text_temperature=TEXT_T,
    image_temperature=IMAGE_T,
)


class StepReward(Reward):
    """Varies across rollouts and steps; keeps its last scores."""

    def score(self, states: RewardStates) -> list[float]:
        self.last = [len(t.split()) / 10 + float(img.mean()) for t, img in zip(states.texts, states.image_tensors)]
        return self.last


@pytest.fixture
def generate(make_trainer, make_grpo_config, tiny_model, toy_train_dataset, tmp_path):
    """One generation batch of 2 prompts x G rollouts on a peaked tiny policy: `generate(**config)` -> the trainer, its
    output rows and the trajectory."""

    def run(**kwargs):
        args = make_grpo_config(tmp_path, **{**JOB, **kwargs})
        trainer = make_trainer(args, [StepReward()], model=tiny_model(initializer_range=0.5))
        trainer.model.train()
        trajectories = []
        rollout = trainer._rollout
        trainer._rollout = lambda *a, **kw: trajectories.append(rollout(*a, **kw)) or trajectories[-1]
        out = trainer._generate_and_score_completions([toy_train_dataset[i] for i in range(2) for _ in range(G)])
        (trajectory,) = trajectories
        return trainer, out, trajectory

    return run


def hand_logps(model, processor, trajectory, i, state, scored) -> torch.Tensor:
    """Log-probs of rollout i's final tokens at `scored` output slots given the output `state`, from one full forward
    over the whole vocabulary, cut by hand: text over the text columns without the mask, image over the codebook,
    each divided by its temperature."""
    preset = processor.preset
    prompt = trajectory.input_ids[i : i + 1]
    with torch.no_grad():
        logits = model(
            input_ids=torch.cat([prompt, state[None]], dim=1),
            attention_mask=torch.cat([trajectory.attention_mask[i : i + 1], torch.ones_like(state[None])], dim=1),
        ).logits[0, prompt.shape[1] :]
    offset, end = preset.image_vocab_range
    text = logits[:, :offset].clone()
    text[:, preset.mask_token_id] = float("-inf")
    text_logps, image_logps = F.log_softmax(text / TEXT_T, -1), F.log_softmax(logits[:, offset:end] / IMAGE_T, -1)
    image_slots = set(processor.image_positions.tolist())
    out = torch.zeros(state.shape)
    for position in scored.nonzero()[:, 0].tolist():
        token = int(trajectory.output_ids[i, position])
        if position in image_slots:
            out[position] = image_logps[position, token - offset]
        else:
            out[position] = text_logps[position, token]
    return out


def check_rows(trainer, processor, out, trajectory, group: int) -> list[int]:
    """Every row of rollout i is a group [a, a + group): it scores the tokens revealed in the group, each with the
    hand log-prob on the state before step a; every revealed token is scored in exactly one row of its rollout.
    Returns the first steps of the rows."""
    num_rollouts = trajectory.batch_size
    rows_per_rollout = out["completion_ids"].shape[0] // num_rollouts
    assert out["completion_ids"].shape[0] == num_rollouts * rows_per_rollout
    mask = out["completion_mask"].view(num_rollouts, rows_per_rollout, -1)
    maskable = processor.maskable_mask
    assert torch.equal(mask.sum(1), maskable.long().expand(num_rollouts, -1))  # each revealed token exactly once
    logps = policy_logps(trainer, out).view(num_rollouts, rows_per_rollout, -1)
    starts = [int(trajectory.step_map[mask[:, r].bool()].min()) // group * group for r in range(rows_per_rollout)]
    for i in range(num_rollouts):
        step_map = trajectory.step_map[i]
        for r, a in enumerate(starts):
            scored = (step_map >= a) & (step_map < a + group)
            assert torch.equal(mask[i, r].bool(), scored)
            state = trajectory.state_at(a)[i]
            assert torch.equal(
                out["completion_ids"][i * rows_per_rollout + r],
                trajectory.state_at(min(a + group, trajectory.num_steps))[i],
            )
            expected = hand_logps(trainer.model, processor, trajectory, i, state, scored)
            torch.testing.assert_close(logps[i, r], expected, atol=1e-5, rtol=0)
    return starts


@pytest.mark.parametrize("decoding", ["blocks", "thresholds"])
def test_all_steps_score_every_token_once_on_the_state_before_its_step(generate, processor, decoding):
    fast = decoding == "thresholds"
    trainer, out, trajectory = generate(
        **(THRESHOLDS if fast else BLOCKS),
        remasking="low_confidence",
    )
    starts = check_rows(trainer, processor, out, trajectory, group=1)
    image = processor.image_slot_mask
    scored = out["completion_mask"].bool()
    assert (scored & image).any() and (scored & ~image).any()  # both modalities
    if fast:  # one row per step up to the batch's longest row; shorter rollouts' later rows score nothing
        ends = trajectory.row_num_steps
        assert int(ends.min()) < int(ends.max()) and starts == list(range(int(ends.max())))
    else:  # one row per step of the schedule (every step reveals text here)
        assert starts == list(range(NUM_STEPS))
        assert trainer.max_completion_length == max(
            t + i for t, i in zip(trainer.reveal_plan.text_counts, trainer.reveal_plan.image_counts)
        )
    # g = 1 is on-policy: the rows' log-probs are the sampler's own, and nothing is corrected.
    sampling = trajectory.token_logprobs.repeat_interleave(len(starts), 0) * out["completion_mask"]
    torch.testing.assert_close(out["sampling_per_token_logps"], sampling)
    torch.testing.assert_close(policy_logps(trainer, out)[scored], sampling[scored], atol=1e-5, rtol=0)
    assert "importance_sampling_ratio" not in out


def test_grouped_steps_score_each_group_on_the_state_before_its_first_step(generate, processor):
    trainer, out, trajectory = generate(
        **BLOCKS,
        loss_step_group=3,
        vllm_importance_sampling_mode="token_truncate",
        vllm_importance_sampling_clip_max=2.0,
    )
    assert check_rows(trainer, processor, out, trajectory, group=3) == [0, 3, 6]
    # The likelihood is sized by the group's bound (the sum of its steps' reveals).
    plan = trainer.reveal_plan
    text_bound = max(sum(plan.text_counts[a : a + 3]) for a in (0, 3, 6))
    image_bound = max(sum(plan.image_counts[a : a + 3]) for a in (0, 3, 6))
    assert [span.num_scored for span in trainer._spans] == [text_bound, image_bound]
    # An approximation: the rollout's log-probs (each token at its own step) stay the behaviour policy and TRL's
    # importance-sampling correction applies (on by default); exact at each group's first step, not after it.
    rows = out["completion_mask"].bool()
    sampling = trajectory.token_logprobs.repeat_interleave(3, 0)
    torch.testing.assert_close(out["sampling_per_token_logps"], sampling * out["completion_mask"])
    diff = (out["old_per_token_logps"] - out["sampling_per_token_logps"]).abs()
    step_map = trajectory.step_map.repeat_interleave(3, 0)
    first = step_map == torch.tensor([0, 3, 6]).repeat(trajectory.batch_size).unsqueeze(1)
    assert diff[rows & first].max() < 1e-5 and diff[rows & ~first].max() > 1e-3
    expected = torch.exp(out["old_per_token_logps"] - out["sampling_per_token_logps"]).clamp(max=2.0)
    torch.testing.assert_close(out["importance_sampling_ratio"][rows], expected[rows])


def slot_advantages(trainer) -> torch.Tensor:
    """The (rollout, rewarded step) advantages of the generation, as logged (rollouts, s)."""
    return torch.tensor(list(trainer._logs["advantages"])).view(-1, 3)


def test_all_steps_credit_each_token_with_the_reward_to_go(generate, processor):
    trainer, out, trajectory = generate(
        reward_step_selection="fixed",
        reward_steps=[1, 4, 5],
    )
    advantages = slot_advantages(trainer)
    assert out["advantages"].shape == out["completion_mask"].shape
    assert advantages.abs().sum() > 0
    slot_of_step = [0, 0, 1, 1, 1, 2, 2, 2]  # first rewarded step at or after it; past the last: the last
    rows = out["advantages"].view(trajectory.batch_size, NUM_STEPS, -1)
    for i in range(trajectory.batch_size):
        for position in processor.maskable_mask.nonzero()[:, 0].tolist():
            k = int(trajectory.step_map[i, position])
            assert rows[i, k, position] == advantages[i, slot_of_step[k]]
            others = [r for r in range(NUM_STEPS) if r != k]
            assert (rows[i, others, position] == 0).all()


def test_output_level_all_steps_gives_every_token_the_final_advantage(generate, processor):
    trainer, out, trajectory = generate(reward_step_selection="final")
    # The rewards are of the final outputs only: by hand, the group z-score of each rollout's final reward.
    final = torch.tensor(trainer.rewards[0].last)
    assert len(final) == trajectory.batch_size  # one state per rollout: its final output
    grouped = final.view(-1, G)
    expected = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()
    rows = out["advantages"].view(trajectory.batch_size, NUM_STEPS, -1).sum(1)  # each token in one row
    maskable = processor.maskable_mask
    assert (out["completion_mask"].view(trajectory.batch_size, NUM_STEPS, -1).sum(1)[:, maskable] == 1).all()
    torch.testing.assert_close(rows[:, maskable], expected.unsqueeze(1).expand(-1, int(maskable.sum())))
    assert (rows[:, ~maskable] == 0).all()


def test_schedule_steps_that_reveal_nothing_make_no_row(generate, processor):
    # 32 steps, 2 text blocks of 13 tokens in 16 steps each, the image from step 16: steps 13-15 reveal nothing.
    trainer, out, trajectory = generate(
        diffusion_steps=32,
        image_start=0.5,
        block_length=13,
    )
    plan = trainer.reveal_plan
    busy = [k for k in range(32) if plan.text_counts[k] + plan.image_counts[k]]
    assert len(busy) == 29
    rows = out["completion_mask"].view(trajectory.batch_size, len(busy), -1)
    assert (rows.sum(-1) > 0).all()  # every built row scores a token
    assert torch.equal(rows.sum(1), processor.maskable_mask.long().expand(trajectory.batch_size, -1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(loss_steps="every"), "loss_steps='every' is not one of"),
        (dict(loss_step_group=0), "loss_step_group must be >= 1"),
        (dict(loss_steps="rewarded", loss_step_group=4), "set loss_steps='all' or loss_step_group=1"),
        (dict(likelihood="random_mask"), "use likelihood='trajectory' or loss_steps='rewarded'"),
    ],
)
def test_nonsense_loss_step_settings_are_refused(make_grpo_config, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grpo_config(tmp_path, **{**JOB, **kwargs})


@pytest.mark.parametrize("credited", ["image", "text"])
@pytest.mark.parametrize("loss_steps", ["all", "rewarded"])
def test_one_modality_credited_keeps_every_row_state_exact(generate, processor, credited, loss_steps):
    """`loss_modalities`: a row scores only the credited modality's tokens of its step, on the same state as with both
    credited (its log-probs are the sampler's own), and the other modality's tokens of the step stay masked."""
    settings = dict(**BLOCKS, loss_steps=loss_steps, remasking="low_confidence")
    _, both, _ = generate(**settings)
    trainer, out, trajectory = generate(**settings, loss_modalities=credited)
    own = getattr(processor, f"{credited}_slot_mask")
    scored, scored_both = out["completion_mask"].bool(), both["completion_mask"].bool()
    assert scored.any() and not (scored & ~own).any()
    assert torch.equal(scored, scored_both & own)  # the same rows, each cut to the credited modality
    uncredited = scored_both & ~own
    assert uncredited.any()
    mask_id = processor.preset.mask_token_id
    assert torch.equal(out["completion_ids"], both["completion_ids"].masked_fill(uncredited, mask_id))
    # The likelihood rebuilds the state the tokens were drawn from: the rows' log-probs are the sampler's.
    rows_per_rollout = out["completion_ids"].shape[0] // trajectory.batch_size
    sampling = trajectory.token_logprobs.repeat_interleave(rows_per_rollout, 0)
    torch.testing.assert_close(policy_logps(trainer, out)[scored], sampling[scored], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["sampling_per_token_logps"], sampling * out["completion_mask"])
    span = trainer._spans[0 if credited == "image" else 1]  # the other modality's span gets no logits
    assert span.num_scored == 0
    if loss_steps == "all":  # the credited tokens keep their reward-to-go advantages
        torch.testing.assert_close(out["advantages"], both["advantages"] * own)
    else:
        torch.testing.assert_close(out["advantages"], both["advantages"])


def test_one_modality_credited_trains(train, tmp_path):
    trainer = train(tmp_path, loss_modalities="image", loss_step_group=4, beta=0.1)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logged)


def test_unknown_loss_modalities_are_refused(make_grpo_config, tmp_path):
    with pytest.raises(ValueError, match="loss_modalities='pixels' is not one of"):
        make_grpo_config(tmp_path, loss_modalities="pixels")


def word_count(completions, **kwargs):
    return [len(text.split()) / 10 for text in completions]


@pytest.fixture
def train(make_trainer, make_grpo_config):
    """Factory of trainers of 2-rollout micro-batches, 2 accumulation steps and 2 iterations per generation, trained
    for 2 steps: `train(output_dir, peft_config=None, start=True, **config)` (`start=False`: not trained yet)."""

    def run(output_dir, peft_config=None, start=True, **kwargs) -> DiffusionGRPOTrainer:
        defaults = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_iterations=2, max_steps=2)
        args = make_grpo_config(output_dir, **{**JOB, **defaults, **kwargs})
        trainer = make_trainer(args, [word_count, StepReward()], peft_config=peft_config)
        if start:
            trainer.train()
        return trainer

    return run


@pytest.mark.parametrize("variant", ["full", "lora"])
def test_all_steps_train_with_trls_loss_iterations_kl_and_accumulation(train, processor, tmp_path, variant):
    peft_config = None
    if variant == "lora":
        from peft import LoraConfig

        from pararl.models import ATTENTION_LORA_TARGETS

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=list(ATTENTION_LORA_TARGETS))
    trainer = train(tmp_path, peft_config, loss_step_group=2, beta=0.1, loss_type="dr_grpo")
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2 and trainer._generation_round == 1  # one generation, two iterations over it
    assert all(torch.isfinite(torch.tensor(entry["loss"])) for entry in logs)
    assert logs[0]["kl"] == pytest.approx(0.0, abs=1e-6) and logs[1]["kl"] > 0
    assert "sampling/importance_sampling_ratio/mean" in logs[0]  # grouped steps are corrected
    # 2 rollouts per micro-batch x 4 groups of 2 steps; every output token of the 4 rollouts scored once.
    buffered = trainer._buffered_inputs
    assert [batch["completion_ids"].shape[0] for batch in buffered] == [2 * 4, 2 * 4]
    assert all(batch["advantages"].shape == batch["completion_ids"].shape for batch in buffered)
    assert all("old_per_token_logps" in batch for batch in buffered)
    tokens = int(processor.maskable_mask.sum())
    assert trainer.state.num_input_tokens_seen == 4 * tokens


def test_resume_mid_generation_window_is_exact_with_all_steps(train, tmp_path):
    kwargs = dict(
        gradient_accumulation_steps=1,
        num_iterations=1,
        steps_per_generation=2,
        max_steps=4,
        save_strategy="steps",
        save_steps=1,
        loss_step_group=2,
    )
    uninterrupted = train(tmp_path / "a", **kwargs)
    resumed = train(tmp_path / "b", start=False, **kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-1"))  # mid-window: buffered rows
    expected = {e["step"]: e for e in uninterrupted.state.log_history if "loss" in e}
    actual = {e["step"]: e for e in resumed.state.log_history if "loss" in e}
    for step in (2, 3, 4):
        for key in ("loss", "entropy", "grad_norm"):
            assert actual[step][key] == expected[step][key], (step, key)
    final = dict(resumed.model.named_parameters())
    for name, param in uninterrupted.model.named_parameters():
        assert torch.equal(final[name], param), name
