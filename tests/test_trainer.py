"""DiffusionGRPOTrainer (ParaRL): training, LoRA, reference model, exact likelihood and advantages, resume, bad input,
reward calibration and LoRA export. Offline, CPU, a tiny random policy on toy-world prompts."""

import importlib.util
import json
import math
import os
import random
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from conftest import policy_logps
from peft import LoraConfig, PeftModel

from pararl.grpo.callbacks import TrajectoryPictureCallback
from pararl.grpo.trainer import DiffusionGRPOTrainer
from pararl.image_tokenizers import tensor_to_images
from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionLM
from pararl.rewards import Reward, RewardNormalizer, RewardStates
from pararl.toy import build_toy_dataset


REPO_ROOT = Path(__file__).resolve().parents[1]
LORA_TARGETS = list(ATTENTION_LORA_TARGETS)
G = 4  # rollouts per prompt: the tiny job's num_generations (conftest.TINY_GRPO)


# ------------------------------------------------------------------------------------------------------ rewards
def word_count(completions, **kwargs):
    """A plain TRL reward callable: words in the partial reasoning."""
    return [len(text.split()) / 10 for text in completions]


class ImageBrightness(Reward):
    """A `Reward` subclass: mean pixel value of the partial image."""

    def score(self, states: RewardStates) -> list[float]:
        return states.image_tensors.mean(dim=(1, 2, 3)).tolist()


def state_value(text: str, image: torch.Tensor, step: int) -> float:
    """A deterministic score of one state that varies across rollouts and steps."""
    return len(text.split()) / 10 + float(image.mean()) + 0.01 * step


class RecordingReward(Reward):
    """Scores with `state_value` and keeps every batch it scored, in the order the trainer passed it."""

    def __init__(self):
        self.batches: list[tuple[RewardStates, list[float]]] = []

    def score(self, states: RewardStates) -> list[float]:
        values = [state_value(t, img, int(k)) for t, img, k in zip(states.texts, states.image_tensors, states.steps)]
        self.batches.append((states, values))
        return values


class NormalizedLength(Reward):
    """A reward with a `RewardNormalizer`, like the CLIP rewards: `raw_scores` raw, `score` normalised."""

    def __init__(self, normalizer: RewardNormalizer):
        self.normalizer = normalizer
        self.raw_calls: list[tuple[list[float], bool]] = []  # (raw scores, normaliser fitted when called)

    def raw_scores(self, states: RewardStates) -> list[float]:
        raw = [len(text.split()) + float(image.mean()) for text, image in zip(states.texts, states.image_tensors)]
        self.raw_calls.append((raw, self.normalizer.is_fitted))
        return raw

    def score(self, states: RewardStates) -> list[float]:
        return self.normalizer(self.raw_scores(states))

    def state_dict(self):
        return {"normalizer": self.normalizer.state_dict()}

    def load_state_dict(self, state_dict):
        self.normalizer.load_state_dict(state_dict["normalizer"])


# ------------------------------------------------------------------------------------------------------ helpers
def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.detach().clone() for name, param in model.named_parameters()}


def generation_batch(dataset, num_prompts: int) -> list[dict]:
    """What TRL's sampler gives `_prepare_inputs`: each prompt repeated G times, consecutively."""
    return [dataset[i] for i in range(num_prompts) for _ in range(G)]


def hand_logps(model, processor, prompt_ids, prompt_mask, state, targets, scored, text_temperature, image_temperature):
    """Log-probs of `targets` at the `scored` output positions given the output `state`, from one full forward:
    text slots over the text vocabulary without the mask column, image slots over the codebook, logits divided by
    the modality's temperature. 0 elsewhere."""
    preset = processor.preset
    with torch.no_grad():
        logits = (
            model(
                input_ids=torch.cat([prompt_ids, state], dim=1),
                attention_mask=torch.cat([prompt_mask, torch.ones_like(state)], dim=1),
            )
            .logits[:, prompt_ids.shape[1] :]
            .float()
        )
    offset, end = preset.image_vocab_range
    text_logits = logits[..., :offset].clone()
    text_logits[..., preset.mask_token_id] = float("-inf")
    text_logps = F.log_softmax(text_logits / text_temperature, dim=-1)
    image_logps = F.log_softmax(logits[..., offset:end] / image_temperature, dim=-1)
    image_positions = set(processor.image_positions.tolist())
    out = torch.zeros(state.shape)
    for row, position in scored.nonzero().tolist():
        token = int(targets[row, position])
        if position in image_positions:
            out[row, position] = image_logps[row, position, token - offset]
        else:
            out[row, position] = text_logps[row, position, token]
    return out


def hand_advantages(rewards_per_func, weights, num_generations, num_steps, mode):
    """GRPO group z-scores written out with loops: per (group, step), or of each rollout's mean over its steps."""
    rows = [sum(w * v for w, v in zip(weights, row) if not math.isnan(v)) for row in rewards_per_func.tolist()]
    rollouts = [rows[i : i + num_steps] for i in range(0, len(rows), num_steps)]
    if mode == "trajectory_mean":
        rollouts = [[sum(r) / len(r)] for r in rollouts]
    out = []
    for g in range(0, len(rollouts), num_generations):
        group = rollouts[g : g + num_generations]
        columns = []
        for j in range(len(group[0])):
            values = [rollout[j] for rollout in group]
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
            columns.append([(v - mean) / (std + 1e-4) for v in values])
        for i in range(num_generations):
            row = [columns[j][i] for j in range(len(group[0]))]
            out.extend(row * (num_steps // len(row)))
    return torch.tensor(out)


def record_trajectories(trainer) -> list:
    """Patches `trainer._rollout` to keep every trajectory it returns."""
    trajectories = []
    rollout = trainer._rollout

    def recording_rollout(*args, **kwargs):
        trajectory = rollout(*args, **kwargs)
        trajectories.append(trajectory)
        return trajectory

    trainer._rollout = recording_rollout
    return trajectories


def logged_steps(trainer) -> dict[int, dict]:
    return {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}


# ---------------------------------------------------------------------------------------------- full fine-tune
@pytest.fixture(scope="module")
def full_run(make_grpo_config, make_trainer, tiny_model, tmp_path_factory):
    """Three ParaRL steps, full fine-tuning with a KL term, a plain callable and a `Reward` subclass, weighted."""
    output_dir = tmp_path_factory.mktemp("full")
    model = tiny_model()
    before = snapshot(model)
    args = make_grpo_config(output_dir, beta=0.1, reward_weights=[0.5, 2.0])
    trainer = make_trainer(args, [word_count, ImageBrightness()], model=model)
    trainer.train()
    return trainer, before


def test_training_updates_every_parameter(full_run):
    trainer, before = full_run
    assert trainer.state.global_step == 3
    assert trainer.state.log_history[-1]["train_loss"] is not None
    for name, param in trainer.model.named_parameters():
        assert param.requires_grad, name
        assert not torch.equal(param.detach(), before[name]), f"{name} did not change"


def test_training_logs_trl_and_pararl_metrics(full_run):
    trainer, _ = full_run
    steps = logged_steps(trainer)
    assert sorted(steps) == [1, 2, 3]
    expected = [
        "loss",
        "reward",
        "reward_std",
        "rewards/word_count/mean",
        "rewards/word_count/std",
        "rewards/image_brightness/mean",
        "rewards/image_brightness/std",
        "frac_reward_zero_std",
        "entropy",
        "kl",
        "clip_ratio/low_mean",
        "clip_ratio/high_mean",
        "clip_ratio/region_mean",
        "reward_by_step/slot_0",
        "reward_by_step/slot_1",
        "reward_by_step/slot_2",
        "reward_by_step/mean_step_fraction",
    ]
    for entry in steps.values():
        missing = [key for key in expected if key not in entry]
        assert not missing, f"step {entry['step']} lacks {missing}"
        assert all(math.isfinite(entry[key]) for key in expected)
        assert entry["kl"] >= 0
        assert 0.0 <= entry["reward_by_step/mean_step_fraction"] < 1.0
    pictures = sorted(os.listdir(os.path.join(trainer.args.output_dir, "trajectories")))
    assert pictures and all(name.endswith(".png") for name in pictures)


def test_trajectory_pictures_come_from_a_callback_the_trainer_adds(make_grpo_config, make_trainer, tmp_path):
    def pictures_callbacks(**kwargs):
        trainer = make_trainer(make_grpo_config(tmp_path, max_steps=1, **kwargs), [word_count])
        callbacks = [c for c in trainer.callback_handler.callbacks if isinstance(c, TrajectoryPictureCallback)]
        return trainer, callbacks

    trainer, (callback,) = pictures_callbacks()
    assert callback.trainer is trainer
    trainer.train()  # one rollout, one logging step: one picture, and the rollout is drawn once
    assert os.listdir(tmp_path / "trajectories") == ["step_00001.png"] and trainer._last_trajectory is None
    assert pictures_callbacks(log_trajectory_pictures=False)[1] == []


def test_mixed_rewards_are_logged_by_name_and_weighted(full_run):
    trainer, _ = full_run
    assert trainer.reward_func_names == ["word_count", "image_brightness"]
    for entry in logged_steps(trainer).values():
        # No reward returns None, so the mean weighted sum is the weighted sum of the means.
        weighted = 0.5 * entry["rewards/word_count/mean"] + 2.0 * entry["rewards/image_brightness/mean"]
        assert entry["reward"] == pytest.approx(weighted, rel=1e-5)
        assert entry["rewards/image_brightness/mean"] > 0


def test_full_fine_tune_with_kl_has_a_frozen_reference(full_run):
    trainer, before = full_run
    ref = trainer.ref_model
    assert ref is not None and ref is not trainer.model
    ref_params = dict(ref.named_parameters())
    policy_pointers = {param.data_ptr() for param in trainer.model.parameters()}
    for name, initial in before.items():
        assert not ref_params[name].requires_grad
        assert ref_params[name].data_ptr() not in policy_pointers
        assert torch.equal(ref_params[name], initial), f"reference {name} moved"
    assert any(entry["kl"] > 0 for entry in logged_steps(trainer).values())


# ------------------------------------------------------------------------------------------------------- LoRA
@pytest.fixture(scope="module")
def lora_run(make_grpo_config, make_trainer, tiny_model, tmp_path_factory):
    """Two LoRA steps with a KL term; the base model is saved first, for the export test."""
    root = tmp_path_factory.mktemp("lora")
    model = tiny_model()
    model.save_pretrained(root / "base")
    args = make_grpo_config(root / "out", beta=0.1, max_steps=2)
    trainer = make_trainer(
        args,
        [word_count, ImageBrightness()],
        model=model,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS),
    )
    before = snapshot(trainer.model)
    trainer.train()
    return trainer, before, root


def test_lora_trains_only_adapters_without_a_second_model(lora_run):
    trainer, before, _ = lora_run
    assert trainer.ref_model is None
    assert isinstance(trainer.model, PeftModel)
    lora_names = [name for name in before if "lora_" in name]
    assert lora_names
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param.detach(), before[name])
        if "lora_" in name:
            assert changed, f"adapter weight {name} did not change"
        else:
            assert not changed and not param.requires_grad, f"base weight {name} changed"
    assert "kl" in logged_steps(trainer)[2]


def test_lora_reference_logps_are_the_adapter_disabled_model(lora_run, processor, toy_train_dataset):
    trainer, _, _ = lora_run
    trainer.model.train()
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 1))
    args = trainer.args
    # A row's model input is its completion with the scored tokens masked again (the state before its step).
    scored = out["completion_mask"].bool()
    state = out["completion_ids"].masked_fill(scored, processor.preset.mask_token_id)
    rows = (out["prompt_ids"], out["prompt_mask"], state, out["completion_ids"], scored)
    with trainer.model.disable_adapter():
        reference = hand_logps(trainer.model, processor, *rows, args.text_temperature, args.image_temperature)
    policy = hand_logps(trainer.model, processor, *rows, args.text_temperature, args.image_temperature)
    torch.testing.assert_close(out["ref_per_token_logps"], reference, atol=1e-5, rtol=0)
    # The adapter has learned something, so the reference really is a different distribution.
    assert (policy - reference).abs().max() > 1e-4


def test_export_lora_merges_into_a_standalone_model(lora_run, processor, toy_train_dataset):
    trainer, _, root = lora_run
    trainer.save_model()
    adapter_dir = Path(trainer.args.output_dir)
    assert (adapter_dir / "adapter_config.json").is_file()
    assert (adapter_dir / "adapter_model.safetensors").is_file()

    spec = importlib.util.spec_from_file_location("export_lora", REPO_ROOT / "examples" / "export_lora.py")
    export_lora = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_lora)
    merged_dir = root / "merged"
    export_lora.main(
        ["--base_model", str(root / "base"), "--adapter", str(adapter_dir), "--output_dir", str(merged_dir)]
    )
    assert (merged_dir / "model.safetensors").is_file()
    assert not (merged_dir / "adapter_config.json").exists()
    assert (merged_dir / "tokenizer_config.json").is_file()

    rows = toy_train_dataset.select(range(2))
    encoded = processor.encode_prompts(rows["prompt"], rows["image"], rows["task"])
    inputs = processor.concat(encoded, processor.masked_outputs(2))
    base = MaskedDiffusionLM.from_pretrained(root / "base")
    with torch.no_grad():
        base_logits = base(**inputs).logits
        adapted = PeftModel.from_pretrained(base, adapter_dir).eval()
        adapted_logits = adapted(**inputs).logits
        merged_logits = MaskedDiffusionLM.from_pretrained(merged_dir)(**inputs).logits
    torch.testing.assert_close(merged_logits, adapted_logits, atol=1e-5, rtol=0)
    assert (adapted_logits - base_logits).abs().max() > 1e-4


# ------------------------------------------------------------------------------------------------- exactness
@pytest.fixture
def scoring_trainer(make_trainer, make_grpo_config, tmp_path):
    """Factory of trainers only used to generate and score (no `train()`), with a recording reward:
    `scoring_trainer(**config)` -> `(trainer, reward)`."""

    def build(**kwargs) -> tuple[DiffusionGRPOTrainer, RecordingReward]:
        reward = RecordingReward()
        trainer = make_trainer(
            make_grpo_config(tmp_path, per_device_train_batch_size=2 * G, **kwargs), [reward, word_count]
        )
        trainer.model.train()
        return trainer, reward

    return build


def test_row_logps_equal_the_rebuilt_state_and_the_rollout(scoring_trainer, processor, toy_train_dataset):
    steps = [0, 3, 7]
    trainer, _ = scoring_trainer(
        reward_step_selection="fixed",
        reward_steps=steps,
        text_temperature=0.7,
        image_temperature=1.3,
    )
    trajectories = record_trajectories(trainer)
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    (trajectory,) = trajectories
    s = len(steps)
    assert out["completion_ids"].shape[0] == trajectory.batch_size * s

    logps, _, _ = trainer._get_per_token_logps_and_entropies(
        trainer.model,
        torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1),
        torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1),
        out["completion_ids"].shape[1],
    )
    image_slots = torch.zeros(processor.output_length, dtype=torch.bool)
    image_slots[processor.image_positions] = True
    scored_images = scored_text = 0
    for row in range(out["completion_ids"].shape[0]):
        i, k = row // s, steps[row % s]
        one = slice(i, i + 1)
        # The row is (rollout i, step k): the state after step k, scoring the tokens revealed at step k.
        revealed = trajectory.revealed_at(k)[one]
        assert torch.equal(out["completion_ids"][row : row + 1], trajectory.state_at(k + 1)[one])
        assert torch.equal(out["completion_mask"][row : row + 1].bool(), revealed)
        # By hand: the state at the start of step k, one forward, the final tokens revealed at step k.
        expected = hand_logps(
            trainer.model,
            processor,
            trajectory.input_ids[one],
            trajectory.attention_mask[one],
            trajectory.state_at(k)[one],
            trajectory.output_ids[one],
            revealed,
            0.7,
            1.3,
        )
        torch.testing.assert_close(logps[row : row + 1], expected, atol=1e-5, rtol=0)
        # On-policy rollout (no guidance, no top-k): the same numbers as the sampler's own log-probs.
        torch.testing.assert_close(
            logps[row][revealed[0]], trajectory.token_logprobs[i][revealed[0]], atol=1e-5, rtol=0
        )
        scored_images += int(revealed[0][image_slots].sum())
        scored_text += int(revealed[0][~image_slots].sum())
    assert scored_images > 0 and scored_text > 0


@pytest.mark.parametrize("selection", ["fixed", "final"])
def test_trajectory_picture_panels_carry_the_rewards_of_their_step(scoring_trainer, toy_train_dataset, selection):
    steps = [0, 3, 7]
    trainer, reward = scoring_trainer(
        reward_step_selection=selection,
        reward_steps=steps if selection == "fixed" else None,
    )
    trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    ((states, values),) = reward.batches
    _, prompts, panel_rewards = trainer._last_trajectory
    # Rollout 0's reward states come first: its weighted reward (RecordingReward + word_count) at each rewarded step.
    first = range(len(steps) if selection == "fixed" else 1)
    expected = {int(states.steps[i]): values[i] + word_count([states.texts[i]])[0] for i in first}
    assert panel_rewards == pytest.approx(expected, abs=1e-6)
    assert list(panel_rewards) == (steps if selection == "fixed" else [trainer.args.diffusion_steps - 1])
    assert prompts == [generation_batch(toy_train_dataset, 2)[0]["prompt"]]


def test_advantages_on_a_crafted_reward_matrix(scoring_trainer):
    trainer, _ = scoring_trainer(reward_weights=[1.0, 0.5])
    s = 3
    generator = torch.Generator().manual_seed(0)
    rewards = torch.rand(2 * G * s, 2, generator=generator)
    rewards[0, 1] = math.nan  # one function not applicable to one state: nansum, as TRL
    rewards.view(2, G, s, 2)[1, :, 2] = 0.25  # group 1, step slot 2: all equal -> zero std, zero advantage
    for mode in ("per_step", "trajectory_mean"):
        trainer.args.advantage_mode = mode
        advantages, is_std_zero = trainer._advantages(rewards, G)
        expected = hand_advantages(rewards, [1.0, 0.5], G, s, mode)
        torch.testing.assert_close(advantages, expected, atol=1e-5, rtol=1e-5)
        if mode == "per_step":
            assert torch.equal(advantages.view(2, G, s)[1, :, 2], torch.zeros(G))
            # Flagged for each of the G rows of that (group, step) and nowhere else.
            assert bool(is_std_zero.reshape(2, G, s)[1, :, 2].all()) and int(is_std_zero.sum()) == G
        else:
            # One advantage per rollout, shared by its steps.
            assert torch.equal(advantages.view(-1, s), advantages.view(-1, s)[:, :1].expand(-1, s))
            assert not bool(is_std_zero.any())


@pytest.mark.parametrize("mode", ["per_step", "trajectory_mean"])
def test_advantages_end_to_end(scoring_trainer, toy_train_dataset, mode):
    trainer, reward = scoring_trainer(advantage_mode=mode, reward_weights=[1.0, 0.5])
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    ((states, values),) = reward.batches
    s = 3
    # Steps are shared by the G rollouts of a group and drawn afresh per group.
    steps = states.steps.view(2, G, s)
    assert torch.equal(steps, steps[:, :1].expand(-1, G, -1))
    rewards = torch.stack([torch.tensor(values), torch.tensor(word_count(states.texts))], dim=1)
    expected = hand_advantages(rewards, [1.0, 0.5], G, s, mode)
    torch.testing.assert_close(out["advantages"], expected, atol=1e-5, rtol=1e-5)


def test_final_step_selection_is_output_level_grpo(scoring_trainer, processor, toy_train_dataset):
    trainer, reward = scoring_trainer(reward_step_selection="final")
    s = trainer.args.num_reward_steps
    assert s == 3 and trainer.output_level
    trajectories = record_trajectories(trainer)
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    (trajectory,), ((states, values),) = trajectories, reward.batches
    last = trainer.args.diffusion_steps - 1
    # One reward state per rollout: its final output.
    assert states.steps.tolist() == [last] * trajectory.batch_size
    final_texts = processor.decode_text(trajectory.output_ids)
    final_images = processor.decode_images(processor.image_codes(trajectory.output_ids))
    expected = [state_value(t, img, last) for t, img in zip(final_texts, final_images)]
    assert values == pytest.approx(expected, abs=1e-6)
    # The loss still scores s steps per rollout, one per s-th of the trajectory, shared by the group.
    assert out["completion_ids"].shape[0] == trajectory.batch_size * s
    step_map = trajectory.step_map[torch.arange(trajectory.batch_size).repeat_interleave(s)]
    masks = out["completion_mask"].bool()
    loss_steps = torch.tensor([step_map[row][masks[row]].unique().item() for row in range(masks.shape[0])]).view(-1, s)
    edges = torch.arange(s + 1) * trajectory.num_steps // s
    assert ((loss_steps >= edges[:-1]) & (loss_steps < edges[1:])).all()
    assert (loss_steps.view(-1, G, s) == loss_steps.view(-1, G, s)[:, :1]).all()
    # Plain GRPO advantages over each group of G final outputs, given to every loss row of the rollout.
    rewards = torch.stack([torch.tensor(expected), torch.tensor(word_count(final_texts))], dim=1)
    per_rollout = hand_advantages(rewards, [1.0, 1.0], G, 1, "per_step")
    torch.testing.assert_close(out["advantages"], per_rollout.repeat_interleave(s), atol=1e-5, rtol=1e-5)


def test_num_iterations_stores_old_logps_and_moves_the_ratio(make_grpo_config, make_trainer, tmp_path):
    args = make_grpo_config(tmp_path, num_iterations=2, max_steps=2, learning_rate=0.1)
    trainer = make_trainer(args, [word_count, ImageBrightness()])
    passes = []
    compute_loss = trainer._compute_loss
    get_logps = trainer._get_per_token_logps_and_entropies

    def spying_compute_loss(model, inputs):
        passes.append({key: value.detach().clone() for key, value in inputs.items() if torch.is_tensor(value)})
        return compute_loss(model, inputs)

    def spying_get_logps(*args, compute_entropy=False, **kwargs):
        logps, entropies, aux = get_logps(*args, compute_entropy=compute_entropy, **kwargs)
        if compute_entropy:  # the loss forward
            passes[-1]["per_token_logps"] = logps.detach().clone()
        return logps, entropies, aux

    trainer._compute_loss = spying_compute_loss
    trainer._get_per_token_logps_and_entropies = spying_get_logps
    trainer.train()

    assert trainer._generation_round == 1  # one generation, used by both passes
    (buffered,) = trainer._buffered_inputs
    assert buffered["old_per_token_logps"].shape == buffered["completion_ids"].shape
    first, second = passes
    assert torch.equal(first["completion_ids"], second["completion_ids"])
    for inputs in passes:
        assert inputs["old_per_token_logps"].shape == inputs["completion_ids"].shape
    mask = first["completion_mask"].bool()
    first_delta = (first["per_token_logps"] - first["old_per_token_logps"])[mask]
    second_delta = (second["per_token_logps"] - second["old_per_token_logps"])[mask]
    assert first_delta.abs().max() < 1e-5  # ratio 1 before any update
    assert second_delta.abs().max() > 1e-3  # the first update moved the policy off the stored old log-probs


# ------------------------------------------------------------------------------------------------------- resume
def test_resume_from_checkpoint_matches_an_uninterrupted_run(make_grpo_config, make_trainer, tmp_path):
    def trainer_in(output_dir):
        args = make_grpo_config(
            output_dir, max_steps=4, save_strategy="steps", save_steps=2, reward_calibration_fraction=0.25
        )
        rewards = [word_count, NormalizedLength(RewardNormalizer())]
        return make_trainer(args, rewards)

    uninterrupted = trainer_in(tmp_path / "a")
    uninterrupted.train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    saved = json.loads((checkpoint / "reward_state.json").read_text())
    assert saved["rewards"]["normalized_length"]["normalizer"]["mean"] is not None

    resumed = trainer_in(tmp_path / "b")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # The normaliser comes back from the checkpoint instead of being re-fitted on the step-2 policy.
    normalizer = resumed.rewards[1].normalizer
    assert normalizer.state_dict() == saved["rewards"]["normalized_length"]["normalizer"]
    assert all(fitted for _, fitted in resumed.rewards[1].raw_calls)

    expected, actual = logged_steps(uninterrupted), logged_steps(resumed)
    assert sorted(actual) == [1, 2, 3, 4]  # steps 1-2 come back with the checkpoint's trainer state
    assert resumed._generation_round == uninterrupted._generation_round == 4
    for step in (3, 4):
        for key in ("loss", "reward", "reward_std", "rewards/normalized_length/mean", "entropy", "grad_norm"):
            assert actual[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (step, key)
    final = dict(resumed.model.named_parameters())
    for name, param in uninterrupted.model.named_parameters():
        torch.testing.assert_close(final[name], param, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(advantage_mode="per_group"), "advantage_mode='per_group' is not one of"),
        (dict(num_reward_steps=9), "num_reward_steps=9 must be between 1 and diffusion_steps=8"),
        (dict(temperature=0.0), "temperature=0.0: ParaRL scores the rollout's own sampling distribution"),
        (dict(image_temperature=0.0), "image_temperature=0.0"),
        (dict(reward_step_selection="fixed", reward_steps=[8]), r"reward_steps \[8\] must lie in"),
    ],
)
def test_inconsistent_config_is_rejected(make_grpo_config, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_grpo_config(tmp_path, **kwargs)


def test_non_string_prompt_is_rejected(make_grpo_config, make_trainer, tmp_path):
    chat = [[{"role": "user", "content": "draw a red circle"}]] * 8
    rows = datasets.Dataset.from_dict({"prompt": chat})
    # Refused at construction (every row is checked before training), naming the dataset row and the column.
    with pytest.raises(ValueError, match="row 0, column 'prompt': must be a string, got list"):
        make_trainer(make_grpo_config(tmp_path, max_steps=1), word_count, train_dataset=rows)


def test_reward_with_the_wrong_number_of_values_is_rejected(make_grpo_config, make_trainer, tmp_path):
    def one_value(completions, **kwargs):
        return [1.0]

    trainer = make_trainer(make_grpo_config(tmp_path, max_steps=1), [one_value])
    with pytest.raises(ValueError, match=r"reward 'one_value' returned 1 values for 12 states"):
        trainer.train()


# ------------------------------------------------------------------------------------------------- calibration
def test_unfitted_normalizer_is_calibrated_before_the_first_step(make_grpo_config, make_trainer, tmp_path):
    reward = NormalizedLength(RewardNormalizer())
    args = make_grpo_config(tmp_path, max_steps=1, reward_calibration_fraction=0.5, reward_clip=2.0)
    trainer = make_trainer(args, [reward])
    trainer.train()
    # 50% of 16 prompts, one rollout each, scored at num_reward_steps = 3 steps, decoded in batches of the per-device
    # generation batch (4 rollouts) like training, before any training step.
    (first, fitted_first), (second, fitted_second), *training = reward.raw_calls
    assert not fitted_first and not fitted_second and all(fitted for _, fitted in training)
    assert len(first) == len(second) == 4 * 3
    calibration = first + second
    values = torch.tensor(calibration, dtype=torch.float64)
    assert reward.normalizer.mean == pytest.approx(values.mean().item())
    assert reward.normalizer.std == pytest.approx(values.std(correction=0).item())
    assert reward.normalizer.clip == 2.0
    # The training rewards are the calibrated normaliser applied to the raw scores.
    step = logged_steps(trainer)[1]
    ((raw, _),) = training
    assert step["rewards/normalized_length/mean"] == pytest.approx(sum(reward.normalizer(raw)) / len(raw), rel=1e-5)


def test_given_reward_mean_and_std_skip_calibration(make_grpo_config, make_trainer, tmp_path):
    reward = NormalizedLength(RewardNormalizer())
    args = make_grpo_config(tmp_path, max_steps=1, reward_mean=3.0, reward_std=0.5)
    trainer = make_trainer(args, [reward])
    trainer.train()
    assert reward.normalizer.state_dict() == {"mean": 3.0, "std": 0.5, "clip": 1.0}
    assert len(reward.raw_calls) == 1 and reward.raw_calls[0][1]  # only the training step scored, already fitted


def test_to_rollout_config_carries_every_decoder_setting(make_grpo_config, tmp_path):
    args = make_grpo_config(
        tmp_path,
        diffusion_steps=6,
        text_schedule="cosine",
        image_schedule="linear",
        image_start=0.25,
        text_temperature=0.7,
        image_temperature=0.9,
        top_k=5,
        remasking="random",
        text_guidance_scale=1.5,
        image_guidance_scale=2.0,
        guidance_drop="prompt",
        decode_order="text_then_image",
    )
    config = args.to_rollout_config()
    assert (config.num_steps, config.text_schedule, config.image_schedule) == (6, "cosine", "linear")
    assert (config.image_start, config.text_temperature, config.image_temperature) == (0.25, 0.7, 0.9)
    assert (config.top_k, config.remasking, config.order) == (5, "random", "text_then_image")
    assert (config.text_guidance_scale, config.image_guidance_scale, config.guidance_drop) == (1.5, 2.0, "prompt")
    assert make_grpo_config(tmp_path).to_rollout_config().top_k is None  # TRL's top_k=0 means "off"


# ------------------------------------------------------------------------------------------- on-policy or corrected
def sampler_logps(trajectory, out, s: int = 3) -> torch.Tensor:
    """The decoder's recorded log-probs, spread to the (rollout, step) rows and kept at the scored tokens."""
    rows = out["completion_ids"].shape[0]
    return trajectory.token_logprobs[torch.arange(rows) // s] * out["completion_mask"]


def test_top_k_rollouts_are_scored_with_the_same_filter(scoring_trainer, toy_train_dataset):
    trainer, _ = scoring_trainer(top_k=3)
    trajectories = record_trajectories(trainer)
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    (trajectory,) = trajectories
    scored = out["completion_mask"].bool()
    # The likelihood replays the top-k filter: the same numbers as the sampler (no correction needed).
    torch.testing.assert_close(
        policy_logps(trainer, out)[scored], sampler_logps(trajectory, out)[scored], atol=1e-5, rtol=0
    )
    assert "importance_sampling_ratio" not in out


@pytest.mark.parametrize(
    "mode, clip_min, clip_max", [("sequence_mask", None, 3.0), ("token_truncate", 0.8, 1.1), ("token_mask", 0.9, 1.1)]
)
def test_guided_rollouts_are_corrected_with_trls_importance_sampling(
    scoring_trainer, toy_train_dataset, mode, clip_min, clip_max
):
    trainer, _ = scoring_trainer(
        text_guidance_scale=3.0,
        image_guidance_scale=3.0,
        loss_type="grpo",
        vllm_importance_sampling_mode=mode,
        vllm_importance_sampling_clip_min=clip_min,
        vllm_importance_sampling_clip_max=clip_max,
    )
    trajectories = record_trajectories(trainer)
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    (trajectory,) = trajectories
    mask = out["completion_mask"]
    sampling = sampler_logps(trajectory, out)
    torch.testing.assert_close(out["sampling_per_token_logps"], sampling)
    old = policy_logps(trainer, out)
    torch.testing.assert_close(out["old_per_token_logps"], old, atol=1e-6, rtol=0)
    diff = (old - sampling) * mask
    assert diff.abs().max() > 1e-2  # guidance really moved the sampler off the policy
    # TRL's semantics, written out.
    if mode == "sequence_mask":
        ratio = diff.sum(-1, keepdim=True).exp()
        expected = ratio.masked_fill(ratio > clip_max, 0.0)
    elif mode == "token_truncate":
        expected = diff.exp().clamp(clip_min, clip_max)
    else:
        ratio = diff.exp()
        expected = ratio.masked_fill((ratio < clip_min) | (ratio > clip_max), 0.0)
    torch.testing.assert_close(out["importance_sampling_ratio"], expected)
    metrics = trainer._metrics["train"]
    scored = mask.bool()
    assert metrics["sampling/sampling_logp_difference/max"][-1] == pytest.approx(diff.abs()[scored].max().item())
    assert metrics["sampling/sampling_logp_difference/mean"][-1] == pytest.approx(diff.abs()[scored].mean().item())
    flat = expected.flatten() if expected.size(1) == 1 else expected[scored]
    for stat in ("min", "mean", "max"):
        value = getattr(flat, stat)().item()
        assert metrics[f"sampling/importance_sampling_ratio/{stat}"][-1] == pytest.approx(value, rel=1e-5)

    # The loss is TRL's, each token weighted by the ratio: with old = current, per-token loss = -A * ratio.
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, out)
    per_token = -out["advantages"].unsqueeze(1) * expected.expand_as(mask) * mask
    expected_loss = (per_token.sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    uncorrected = ((-out["advantages"].unsqueeze(1) * mask).sum(-1) / mask.sum(-1).clamp(min=1)).mean()
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-4, abs=1e-7)
    assert abs(expected_loss.item() - uncorrected.item()) > 1e-4


def test_guidance_without_the_correction_warns(scoring_trainer):
    with pytest.warns(UserWarning, match="off-policy.*uncorrected"):
        scoring_trainer(
            text_guidance_scale=2.0,
            vllm_importance_sampling_correction=False,
        )


def test_rollouts_run_under_the_likelihoods_autocast(scoring_trainer, toy_train_dataset):
    trainer, _ = scoring_trainer(bf16=True)
    seen = []
    hook = trainer.model.model.register_forward_pre_hook(
        lambda module, args: seen.append(torch.is_autocast_enabled("cpu"))
    )
    rollouts = record_trajectories(trainer)
    try:
        trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    finally:
        hook.remove()
    assert rollouts and len(seen) > 1
    assert all(seen), "a backbone forward (rollout or likelihood) ran outside the bf16 autocast"


# -------------------------------------------------------------------------------------------- the right reference
def test_prewrapped_peft_adapter_is_its_own_reference(
    make_grpo_config, make_trainer, tiny_model, toy_train_dataset, tmp_path
):
    from peft import get_peft_model

    def sft_adapter():
        model = get_peft_model(tiny_model(), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS))
        with torch.no_grad():  # a trained adapter: not the identity
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0.0, 0.5)
        return model

    args = make_grpo_config(tmp_path, beta=0.1, per_device_train_batch_size=2 * G)
    trainer = make_trainer(args, [word_count], model=sft_adapter())
    assert args.beta == 0.1 and trainer.args is args and trainer.beta == 0.1
    assert "ref" in trainer.model.peft_config  # TRL's frozen copy of the SFT adapter
    trainer.model.train()
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    scored = out["completion_mask"].bool()
    # The reference is the SFT adapter, so KL is 0 at step 0 (the base model without it would not be).
    torch.testing.assert_close(
        out["ref_per_token_logps"][scored], policy_logps(trainer, out)[scored], atol=1e-6, rtol=0
    )
    with pytest.raises(NotImplementedError, match="sync_ref_model=True.*PEFT"):
        make_trainer(make_grpo_config(tmp_path, beta=0.1, sync_ref_model=True), [word_count], model=sft_adapter())


def test_sync_ref_model_with_full_fine_tuning(make_grpo_config, make_trainer, tmp_path):
    args = make_grpo_config(
        tmp_path, beta=0.1, sync_ref_model=True, ref_model_sync_steps=2, ref_model_mixup_alpha=1.0, max_steps=2
    )
    trainer = make_trainer(args, [word_count])
    assert args.beta == 0.1 and args.sync_ref_model
    before = args.to_dict()
    trainer.train()
    assert args.to_dict() == before  # the caller's config, not the copy TRL was given, is left as it was
    ref = dict(trainer.ref_model.named_parameters())
    for name, param in trainer.model.named_parameters():  # alpha = 1: the reference became the step-2 policy
        torch.testing.assert_close(ref[name], param.detach())
    assert logged_steps(trainer)[2]["kl"] > 0


def test_full_fine_tune_reference_is_loaded_from_the_policy_folder(
    make_grpo_config, make_trainer, tiny_model, tmp_path
):
    folder = tmp_path / "policy"
    tiny_model(seed=3).save_pretrained(folder)

    def make(model):
        return make_trainer(make_grpo_config(tmp_path / "out", beta=0.1), [word_count], model=model)

    # A policy whose parameters ZeRO-3 has partitioned (marked as DeepSpeed marks them): never copied from memory.
    policy = MaskedDiffusionLM.from_pretrained(folder)
    for param in policy.parameters():
        param.ds_id = 0
    trainer = make(policy)  # loaded from the folder instead
    saved = dict(MaskedDiffusionLM.from_pretrained(folder).named_parameters())
    for name, param in trainer.ref_model.named_parameters():
        torch.testing.assert_close(param, saved[name])
        assert not param.requires_grad
    in_memory = tiny_model()
    for param in in_memory.parameters():
        param.ds_id = 0
    with pytest.raises(ValueError, match=r"save it with `model.save_pretrained\(path\)`"):
        make(in_memory)


# --------------------------------------------------------------------------------------- resumable, eval apart
def test_resume_mid_generation_window_matches_an_uninterrupted_run(make_grpo_config, make_trainer, tmp_path):
    def trainer_in(output_dir):
        args = make_grpo_config(
            output_dir,
            per_device_train_batch_size=2,
            steps_per_generation=2,
            max_steps=4,
            save_strategy="steps",
            save_steps=1,
        )
        return make_trainer(args, [word_count, ImageBrightness()])

    uninterrupted = trainer_in(tmp_path / "a")
    uninterrupted.train()
    expected = logged_steps(uninterrupted)
    for start in (1, 3):  # mid-window checkpoints: the next step trains on rollouts of an earlier policy
        resumed = trainer_in(tmp_path / f"b{start}")
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / f"checkpoint-{start}"))
        actual = logged_steps(resumed)
        assert resumed._generation_round == uninterrupted._generation_round == 2
        for step in range(start + 1, 5):
            assert ("reward" in actual[step]) == ("reward" in expected[step]) == (step % 2 == 1)  # generation steps
            for key in ("loss", "entropy", "grad_norm") + (("reward",) if step % 2 else ()):
                assert actual[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-7), (start, step, key)
        final = dict(resumed.model.named_parameters())
        for name, param in uninterrupted.model.named_parameters():
            torch.testing.assert_close(final[name], param, atol=1e-6, rtol=1e-5)
    # Only mid-window checkpoints carry rollouts; each process saves its own. Without them, resuming is refused.
    assert (tmp_path / "a" / "checkpoint-1" / "rollout_buffer-rank0.safetensors").is_file()
    assert not (tmp_path / "a" / "checkpoint-2" / "rollout_buffer-rank0.safetensors").exists()
    (tmp_path / "a" / "checkpoint-3" / "rollout_buffer-rank0.safetensors").unlink()
    with pytest.raises(ValueError, match="save_steps a multiple of 2"):
        trainer_in(tmp_path / "c").train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3"))


def test_evaluation_does_not_move_the_training_noise(make_grpo_config, make_trainer, tmp_path):
    eval_dataset = build_toy_dataset("test", num_samples=2, seed=1)

    def run(output_dir, **kwargs):
        trainer = make_trainer(
            make_grpo_config(output_dir, max_steps=2, per_device_eval_batch_size=G, **kwargs),
            [word_count, ImageBrightness()],
            eval_dataset=eval_dataset,
        )
        trainer.train()
        return trainer

    plain = run(tmp_path / "a")
    evaluated = run(tmp_path / "b", eval_strategy="steps", eval_steps=1)
    assert any("eval_reward" in entry for entry in evaluated.state.log_history)
    assert evaluated._generation_round == plain._generation_round == 2
    assert evaluated.state.num_input_tokens_seen == plain.state.num_input_tokens_seen  # eval tokens are not trained
    # The batch after an evaluation is shuffled (TRL's `shuffle_sequence_dict`, the global torch RNG) as without it.
    for key in ("completion_ids", "completion_mask", "advantages"):
        assert torch.equal(evaluated._buffered_inputs[0][key], plain._buffered_inputs[0][key]), key
    for step, entry in logged_steps(plain).items():
        assert logged_steps(evaluated)[step]["loss"] == pytest.approx(entry["loss"], rel=1e-6, abs=1e-9)
    final = dict(evaluated.model.named_parameters())
    for name, param in plain.model.named_parameters():
        torch.testing.assert_close(final[name], param)
    # Every evaluation decodes with the same noise: the same policy gets the same evaluation.
    torch_state, python_state, numpy_state = torch.get_rng_state(), random.getstate(), np.random.get_state()
    first, second = evaluated.evaluate(), evaluated.evaluate()
    assert first["eval_reward"] == second["eval_reward"]
    # An evaluation draws nothing from the RNGs training reads (its dataloader's base seed is given back).
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(np.array_equal(now, then) for now, then in zip(np.random.get_state(), numpy_state))


# ------------------------------------------------------------------------------------------ rewards as TRL passes
def test_reward_callables_get_trls_trainer_state_log_metric_and_log_extra(make_grpo_config, make_trainer, tmp_path):
    seen_steps = []

    def staged(completions, trainer_state, log_metric, log_extra, **kwargs):
        seen_steps.append(trainer_state.global_step)
        log_metric("staged/words", float(sum(len(text.split()) for text in completions)))
        log_extra("num_words", [len(text.split()) for text in completions])
        return [len(text.split()) / 10 for text in completions]

    trainer = make_trainer(make_grpo_config(tmp_path, max_steps=2, log_completions=True), [staged])
    trainer.train()
    assert seen_steps == [0, 1]
    assert all("staged/words" in entry for entry in logged_steps(trainer).values())
    # The completions table keeps every (rollout, step) row of a generation, with the partial image.
    rows = G * 3
    assert len(trainer._logs["prompt"]) == len(trainer._logs["advantages"]) == rows
    assert len(trainer._logs["extra"]["num_words"]) == len(trainer._logs["images"]) == rows
    assert trainer._logs["extra"]["num_words"][0] == len(trainer._logs["completion"][0].split())


def test_a_reward_that_teaches_nothing_is_named_in_a_warning(make_grpo_config, make_trainer, tmp_path):
    def revealed_only(completions, text_revealed, **kwargs):  # the schedule fixes it per step
        return list(text_revealed)

    def never(completions, **kwargs):
        return [None] * len(completions)

    trainer = make_trainer(make_grpo_config(tmp_path, max_steps=3), [word_count, revealed_only, never])
    with pytest.warns(UserWarning) as record:
        trainer.train()
    messages = [str(warning.message) for warning in record]
    assert sum("'revealed_only'" in m and "same value" in m and "reveal schedule" in m for m in messages) == 1
    assert sum("'never'" in m and "None for every state" in m for m in messages) == 1
    assert not any("'word_count'" in m for m in messages)


# ------------------------------------------------------------------------------------------------------ smaller
def test_dr_grpo_divides_by_the_scored_tokens_of_a_row(scoring_trainer, processor, toy_train_dataset):
    trainer, _ = scoring_trainer(loss_type="dr_grpo")
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    mask = out["completion_mask"]
    plan = trainer.reveal_plan
    most = max(text + image for text, image in zip(plan.text_counts, plan.image_counts))
    assert trainer.max_completion_length == most < processor.output_length
    assert int(mask.sum(-1).max()) <= most
    trainer.current_gradient_accumulation_steps = 1
    loss = trainer._compute_loss(trainer.model, out)  # old = current: per-token loss -A
    expected = (-out["advantages"].unsqueeze(1) * mask).sum() / (mask.size(0) * trainer.max_completion_length)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-7)


def test_top_entropy_quantile_is_taken_per_modality(scoring_trainer, processor):
    trainer, _ = scoring_trainer()
    length = processor.output_length
    image = torch.zeros(length, dtype=torch.bool)
    image[processor.image_positions] = True
    text = torch.zeros(length, dtype=torch.bool)
    text[processor.text_positions] = True
    # Text entropies (a large vocabulary) all exceed image entropies (the codebook).
    entropies = torch.where(image, torch.rand(length), 10 + torch.rand(length)).unsqueeze(0)
    mask = (image | text).long().unsqueeze(0)
    kept = trainer.get_high_entropy_mask(entropies, mask, threshold=0.5)[0]
    for modality in (image, text):
        share = kept[modality].float().mean().item()
        assert 0.4 < share < 0.6, share  # the top half of each modality, not the text alone


def test_mask_truncated_completions_is_refused(make_grpo_config, tmp_path):
    with pytest.raises(ValueError, match="mask_truncated_completions=True"):
        make_grpo_config(tmp_path, mask_truncated_completions=True)


def test_a_user_given_normalizer_clip_is_kept(make_grpo_config, make_trainer, tmp_path):
    given, default = NormalizedLength(RewardNormalizer(clip=2.0)), NormalizedLength(RewardNormalizer())
    default.name = "default_clip"
    trainer = make_trainer(
        make_grpo_config(tmp_path, max_steps=1, reward_mean=3.0, reward_std=0.5, reward_clip=1.5), [given, default]
    )
    trainer.train()
    assert given.normalizer.clip == 2.0 and default.normalizer.clip == 1.5


class InputImages(Reward):
    """Keeps the input images every batch of states carried."""

    def __init__(self):
        self.batches = []

    def score(self, states):
        self.batches.append(list(states.input_images))
        return [0.0] * len(states)


def test_each_input_image_is_encoded_once_and_image_codes_reach_the_rewards(
    scoring_trainer, processor, toy_train_dataset, monkeypatch
):
    trainer, _ = scoring_trainer()
    recorder = InputImages()
    trainer.rewards.append(recorder)
    trainer.reward_func_names.append("input_images")
    trainer.reward_weights = torch.tensor([1.0, 1.0, 0.0])
    encoded = []
    encode = processor.image_tokenizer.encode
    monkeypatch.setattr(
        processor.image_tokenizer, "encode", lambda images: encoded.append(len(images)) or encode(images)
    )
    batch = generation_batch(toy_train_dataset, 2)  # 2 prompts x G rollouts, each row a fresh copy of its image
    with_images = sum(toy_train_dataset[i]["image"] is not None for i in range(2))
    trainer._generate_and_score_completions(batch)
    assert sum(encoded) == with_images  # once per distinct image, not once per rollout
    (images,) = recorder.batches
    for group in range(2):
        rows = images[group * G * 3 : (group + 1) * G * 3]
        assert len({id(image) for image in rows}) == 1  # one object for the group's rollouts and steps

    # An `image_codes` column: the rollout reads the codes, the rewards get the decoded picture.
    codes = [
        processor.image_tokenizer.encode([row["image"]])[0] if row["image"] is not None else None for row in batch
    ]
    coded = [{**{k: v for k, v in row.items() if k != "image"}, "image_codes": c} for row, c in zip(batch, codes)]
    recorder.batches.clear()
    trainer._generate_and_score_completions(coded)
    (pictures,) = recorder.batches
    for row, picture in zip(batch, pictures[::3]):
        if row["image"] is None:
            assert picture is None
        else:
            expected = processor.decode_images(processor.image_tokenizer.encode([row["image"]]))
            assert isinstance(picture, PIL.Image.Image)
            assert torch.equal(
                torch.as_tensor(np.array(picture)), torch.as_tensor(np.array(tensor_to_images(expected)[0]))
            )


# ------------------------------------------------------------------------------------------------ what is exact
def test_random_remasking_makes_the_trajectory_likelihood_exact(
    scoring_trainer, processor, tiny_model, toy_train_dataset
):
    from pararl.rollout import ParallelDecoder, RolloutConfig

    # Which slots a step reveals: under random remasking a function of the seed alone (so its probability,
    # prod_k 1 / C(masked_k, count_k) per modality, is a constant of the policy); under low_confidence it depends on
    # the drawn values and so on the policy, and the likelihood does not score it.
    rows = generation_batch(toy_train_dataset, 2)
    prompts, images = [row["prompt"] for row in rows], [row["image"] for row in rows]
    seeds = torch.arange(len(rows))
    for remasking, same in (("random", True), ("low_confidence", False)):
        config = RolloutConfig(num_steps=8, remasking=remasking)
        maps = [
            ParallelDecoder(tiny_model(seed), processor, config).generate(prompts, images, seeds=seeds).step_map
            for seed in (0, 1)
        ]
        assert torch.equal(*maps) == same, remasking

    # The values: every token is scored once, at its step, given the state before it, under the sampling
    # distribution, so the rows' log-probs sum to the trajectory's sampling log-prob of its values.
    trainer, _ = scoring_trainer(remasking="random", reward_step_selection="all")
    trajectories = record_trajectories(trainer)
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    (trajectory,) = trajectories
    s = trainer.num_reward_steps
    assert s == 8 and int(out["completion_mask"].view(-1, s, out["completion_mask"].size(1)).sum(1).max()) == 1
    per_rollout = policy_logps(trainer, out).view(-1, s, out["completion_ids"].size(1)).sum(dim=(1, 2))
    maskable = processor.maskable_mask
    torch.testing.assert_close(per_rollout, trajectory.token_logprobs[:, maskable].sum(-1), atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------ likelihood at scale
def test_likelihood_forward_columns_mask_and_chunks(scoring_trainer, processor, toy_train_dataset, monkeypatch):
    import pararl.grpo.trainer as trainer_module

    trainer, _ = scoring_trainer(likelihood="random_mask")
    out = trainer._generate_and_score_completions(generation_batch(toy_train_dataset, 2))
    calls = []
    hook = trainer.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs), with_kwargs=True)
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    mask = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    keep = out["completion_ids"].shape[1]
    try:
        with torch.no_grad():
            whole, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
            # Each modality's slots over its own columns, as the decoder does.
            preset = processor.preset
            assert calls[-1]["vocab_range"] == [preset.text_vocab_range, preset.image_vocab_range]
            # No attention mask when nothing is padded (faster attention kernels), the key mask otherwise.
            padded = bool((out["prompt_mask"] == 0).any())
            assert (calls[-1]["attention_mask"] is None) == (not padded)
            unpadded = mask.clone()
            unpadded[:, : out["prompt_ids"].shape[1]] = 1
            trainer._get_per_token_logps_and_entropies(trainer.model, ids, unpadded, keep)
            assert calls[-1]["attention_mask"] is None
            # Passes without a graph split their rows so that the logits stay within the budget.
            calls.clear()
            columns = sum(span.num_scored * (span.vocab_range[1] - span.vocab_range[0]) for span in trainer._spans)
            monkeypatch.setattr(trainer_module, "_NO_GRAD_LOGITS_BUDGET", 3 * columns)
            chunked, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, keep)
    finally:
        hook.remove()
    assert padded
    assert [call["input_ids"].shape[0] for call in calls] == [3] * (ids.shape[0] // 3) + [ids.shape[0] % 3] * bool(
        ids.shape[0] % 3
    )
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_random_mask_likelihood_refuses_the_importance_sampling_correction(scoring_trainer):
    with pytest.raises(ValueError, match="needs likelihood='trajectory'"):
        scoring_trainer(likelihood="random_mask", image_guidance_scale=2.0)


COLOUR_WORDS = {"red", "orange", "yellow", "green", "blue", "purple", "white", "black"}


def colour_share(completions, **kwargs):
    """A reward with spread even for a random policy: the share of the reasoning's words that are colours."""
    return [sum(word in COLOUR_WORDS for word in text.split()) / max(len(text.split()), 1) for text in completions]


@pytest.mark.parametrize("selection", ["final", "stratified"])
def test_the_loop_climbs_an_easy_reward(make_grpo_config, make_trainer, tmp_path, selection):
    args = make_grpo_config(
        tmp_path, per_device_train_batch_size=4 * G, max_steps=12, reward_step_selection=selection,
        learning_rate=0.02, log_trajectory_pictures=False,
    )  # fmt: skip
    trainer = make_trainer(args, [colour_share], train_dataset=build_toy_dataset("train", 64, seed=0))
    trainer.train()
    rewards = [log["reward"] for log in trainer.state.log_history if "reward" in log]
    # Seeded and single-threaded, so deterministic: about 0.04 -> 0.12 (output level) and 0.07 -> 0.9 (stratified).
    assert sum(rewards[-3:]) / 3 > 2 * sum(rewards[:3]) / 3, rewards


def test_a_run_from_a_folder_warns_of_nothing_deprecated_or_ignored(
    make_grpo_config, make_trainer, tiny_model, tmp_path, caplog
):
    import logging
    import warnings

    folder = tmp_path / "policy"
    tiny_model().save_pretrained(folder)
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error", FutureWarning)
        # TRL's defaults (activation checkpointing on), and model_init_kwargs that load the folder.
        args = make_grpo_config(tmp_path / "out", max_steps=1, model_init_kwargs={"dtype": "float32"})
        trainer = make_trainer(args, [word_count], model=str(folder))
        trainer.train()
    assert "will be ignored" not in caplog.text
    assert args.activation_checkpointing and trainer.model.is_activation_checkpointing
    assert trainer.args.model_init_kwargs == {"dtype": "float32"}  # kept for the reference model
