import copy
import functools
import json
import math
import runpy
from pathlib import Path

import open_clip
import pytest
import torch

from pararl.image_tokenizers import images_to_tensor, tensor_to_images
from pararl.rewards import (
    AllSteps,
    CLIPAlignmentReward,
    CLIPImageConsistencyReward,
    FinalStep,
    FixedSteps,
    ReasoningFormatReward,
    Reward,
    RewardNormalizer,
    RewardStates,
    StepSelector,
    StratifiedSteps,
    UniformSteps,
    as_reward,
    calibrate_normalizer,
    compute_rewards,
    get_step_selector,
)
from pararl.rollout import ParallelDecoder, RolloutConfig
from pararl.toy import build_toy_dataset, parse_scene


NUM_STEPS = 8
REPO = Path(__file__).resolve().parents[1]


def make_states(texts, image_tensors=None, steps=None, num_steps=4, input_images=None, columns=None):
    """A hand-made batch of states (no rollout needed)."""
    n = len(texts)
    if image_tensors is None:
        image_tensors = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    return RewardStates(
        prompts=[f"prompt {i}" for i in range(n)],
        texts=list(texts),
        images=tensor_to_images(image_tensors),
        image_tensors=image_tensors,
        input_images=list(input_images) if input_images is not None else [None] * n,
        steps=torch.as_tensor(steps if steps is not None else [0] * n),
        num_steps=num_steps,
        text_revealed=torch.ones(n),
        image_revealed=torch.ones(n),
        token_ids=torch.zeros(n, 3, dtype=torch.long),
        columns=columns or {},
    )


# ------------------------------------------------------------------------------------------------- normaliser
def test_normalizer_exact_values():
    norm = RewardNormalizer(mean=1.0, std=2.0)  # clip = 1
    x = torch.tensor([1.0, 2.0, 0.0, 3.0, -1.0, 5.0, -10.0])
    # inside (z = 0, 0.5, -0.5), at the clip edges (z = +-1), beyond them (z = 2, -5.5)
    assert norm(x).tolist() == [0.5, 0.75, 0.25, 1.0, 0.0, 1.0, 0.0]
    wide = RewardNormalizer(mean=1.0, std=2.0, clip=2.0)
    assert wide(torch.tensor([1.0, 3.0, -1.0, 5.0, -3.0, 9.0])).tolist() == [0.5, 0.75, 0.25, 1.0, 0.0, 1.0]
    out = norm(torch.linspace(-20, 20, 101))
    assert out.min() >= 0 and out.max() <= 1


def test_normalizer_zero_std_none_and_nan():
    norm = RewardNormalizer(mean=0.25, std=0.0)
    assert norm([0.25, 0.2, 0.3, None]) == [0.5, 0.0, 1.0, None]
    out = norm(torch.tensor([math.nan, 0.25]))
    assert math.isnan(out[0]) and out[1] == 0.5
    assert RewardNormalizer(mean=1.0, std=2.0)([None, 2.0]) == [None, 0.75]


def test_normalizer_bad_input():
    with pytest.raises(RuntimeError, match="no mean/std"):
        RewardNormalizer()([1.0])
    with pytest.raises(ValueError, match="std"):
        RewardNormalizer(mean=0.0, std=-1.0)
    with pytest.raises(ValueError, match="both mean and std"):
        RewardNormalizer(mean=0.0)
    with pytest.raises(ValueError, match="clip"):
        RewardNormalizer(clip=0.0)
    with pytest.raises(ValueError, match="at least one"):
        RewardNormalizer().fit([None, math.nan])


def test_normalizer_fit_and_state_dict_round_trip(tmp_path):
    norm = RewardNormalizer(clip=1.5).fit([1.0, None, 2.0, 3.0, math.nan, 4.0])
    assert norm.mean == 2.5 and norm.std == pytest.approx(math.sqrt(1.25), abs=1e-12)
    assert RewardNormalizer().fit([0.3]).std == 0.0
    torch.save({"normalizer": norm.state_dict()}, tmp_path / "ckpt.pt")
    restored = RewardNormalizer()
    restored.load_state_dict(torch.load(tmp_path / "ckpt.pt")["normalizer"])
    assert restored.state_dict() == norm.state_dict() == {"mean": 2.5, "std": norm.std, "clip": 1.5}
    x = torch.linspace(-3, 8, 23)
    assert torch.equal(restored(x), norm(x))
    json.dumps(norm.state_dict())  # plain values
    with pytest.raises(ValueError, match="missing"):
        restored.load_state_dict({"mean": 1.0})


# -------------------------------------------------------------------------------------------------- selectors
@pytest.mark.parametrize("selector", [UniformSteps(3), StratifiedSteps(3)])
def test_random_selectors(selector):
    groups, steps = 200, 10
    out = selector.select(groups, steps, torch.Generator().manual_seed(0))
    assert out.shape == (groups, 3) and out.dtype == torch.long
    assert out.min() >= 0 and out.max() < steps
    assert (out[:, 1:] > out[:, :-1]).all()  # sorted and distinct
    assert len({tuple(row) for row in out.tolist()}) > 20  # fresh draw per group
    again = selector.select(groups, steps, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # seeded through the generator only
    assert not torch.equal(out, selector.select(groups, steps, torch.Generator().manual_seed(1)))
    counts = torch.bincount(out.flatten(), minlength=steps).float() / groups
    assert (counts > 0.15).all() and (counts < 0.45).all()  # every step reachable, ~3/10 each
    # The trainer repeats a group's row for its G rollouts: the steps are shared within the group.
    per_rollout = out.repeat_interleave(4, dim=0)
    assert (per_rollout.view(groups, 4, 3) == out[:, None]).all()
    with pytest.raises(ValueError, match="cannot select 3 distinct reward steps"):
        selector.select(2, 2)


def test_stratified_one_per_segment():
    out = StratifiedSteps(3).select(100, 10, torch.Generator().manual_seed(0))
    # segments [0, 3), [3, 6), [6, 10)
    assert ((out[:, 0] < 3) & (out[:, 1] >= 3) & (out[:, 1] < 6) & (out[:, 2] >= 6)).all()
    assert torch.equal(StratifiedSteps(4).select(2, 4), torch.tensor([[0, 1, 2, 3]] * 2))


def test_deterministic_selectors():
    assert torch.equal(FinalStep().select(3, 7), torch.tensor([[6]] * 3))
    assert torch.equal(AllSteps().select(2, 4), torch.tensor([[0, 1, 2, 3]] * 2))
    assert torch.equal(FixedSteps([-1, 2, 0]).select(2, 8), torch.tensor([[0, 2, 7]] * 2))
    assert torch.equal(UniformSteps(4).select(1, 4), torch.tensor([[0, 1, 2, 3]]))
    with pytest.raises(ValueError, match="outside"):
        FixedSteps([8]).select(1, 8)
    with pytest.raises(ValueError, match="same step twice"):
        FixedSteps([7, -1]).select(1, 8)
    with pytest.raises(ValueError, match="k"):
        UniformSteps(0)
    for selector in (UniformSteps(2), StratifiedSteps(2), FinalStep(), FixedSteps([0]), AllSteps()):
        assert isinstance(selector, StepSelector)
    assert isinstance(get_step_selector("stratified", 2), StratifiedSteps)
    assert isinstance(get_step_selector("final"), FinalStep)
    with pytest.raises(ValueError, match="unknown step selection"):
        get_step_selector("dense")


# ----------------------------------------------------------------------------------------- rewards, adapter
class WordCount(Reward):
    def score(self, states):
        return [float(len(text.split())) for text in states.texts]


class EditOnly(Reward):
    name = "edit_only"

    def score(self, states):
        return [1.0 if task == "edit" else None for task in states.columns["task"]]


def test_reward_names_and_adapter_kwargs():
    assert WordCount().name == "word_count"
    assert EditOnly().name == "edit_only"
    reward = WordCount()
    reward.name = "words"
    assert reward.name == "words"

    seen = {}

    def my_reward(prompts, completions, completion_ids, **kwargs):
        seen.update(kwargs, prompts=prompts, completions=completions, completion_ids=completion_ids)
        return [len(c) for c in completions]

    wrapped = as_reward(my_reward)
    assert wrapped.name == "my_reward"
    assert as_reward(functools.partial(my_reward)).name == "my_reward"
    assert as_reward(reward) is reward
    with pytest.raises(ValueError, match="model id"):
        as_reward("openai/clip-vit-base-patch32")

    states = make_states(["a b", "c"], steps=[1, 3], columns={"task": ["edit", "generate"], "answer": ["x", "y"]})
    states.extras["trainer_state"] = "state"
    assert wrapped.score(states) == [3, 1]
    assert seen["completions"] == ["a b", "c"] and seen["prompts"] == states.prompts
    assert seen["completion_ids"] == [[0, 0, 0], [0, 0, 0]]
    assert seen["images"] == states.images and seen["image_tensors"] is states.image_tensors
    assert seen["input_images"] == [None, None] and seen["step"] == [1, 3] and seen["num_steps"] == 4
    assert seen["task"] == ["edit", "generate"] and seen["answer"] == ["x", "y"]
    assert seen["trainer_state"] == "state" and seen["text_revealed"] == [1.0, 1.0]

    clashing = make_states(["a"], columns={"images": ["dataset value"]})
    with pytest.warns(UserWarning, match="reserved"):
        wrapped.score(clashing)
    assert seen["images"] == clashing.images


def test_compute_rewards_matrix_and_none():
    states = make_states(["one two", "three"], columns={"task": ["edit", "generate"]})

    def plain(completions, **kwargs):
        return [0.5] * len(completions)

    values, metrics = compute_rewards([WordCount(), EditOnly(), plain], states)
    assert values.shape == (2, 3) and values.dtype == torch.float32
    assert values[:, 0].tolist() == [2.0, 1.0] and values[0, 1] == 1.0 and math.isnan(values[1, 1])
    assert values[:, 2].tolist() == [0.5, 0.5]
    assert metrics == {
        "rewards/word_count/nan_count": 0.0,
        "rewards/edit_only/nan_count": 0.0,
        "rewards/plain/nan_count": 0.0,
    }


def test_compute_rewards_errors():
    states = make_states(["a", "b", "c"], steps=[2, 2, 5], num_steps=6)

    class Broken(Reward):
        def score(self, states):
            raise KeyError("boom")

    with pytest.raises(RuntimeError, match=r"reward 'broken' raised KeyError .* step\(s\) \[2, 5\] of 6"):
        compute_rewards([Broken()], states)

    def nan_reward(completions, **kwargs):
        return [1.0, math.nan, None]

    with pytest.warns(UserWarning, match=r"'nan_reward' returned NaN for 1 of 3 states \(step\(s\) \[2\]\)"):
        values, metrics = compute_rewards([nan_reward], states)
    assert metrics["rewards/nan_reward/nan_count"] == 1.0
    assert values[0, 0] == 1.0 and values[1:, 0].isnan().all()

    def short(completions, **kwargs):
        return [1.0]

    with pytest.raises(ValueError, match="reward 'short' returned 1 values for 3 states"):
        compute_rewards([short], states)

    def words(completions, **kwargs):
        return ["high"] * 3

    with pytest.raises(ValueError, match="reward 'words' returned 'high'"):
        compute_rewards([words], states)

    def infinite(completions, **kwargs):
        return [math.inf] * 3

    with pytest.raises(ValueError, match="finite"):
        compute_rewards([infinite], states)
    with pytest.raises(ValueError, match="unique"):
        compute_rewards([WordCount(), WordCount()], states)


def test_reasoning_format_reward():
    reward = ReasoningFormatReward(min_words=2, max_words=4)
    states = make_states(["a b c.", "a b c", "a.", "a b c d e.", "", "x y ."], steps=[0, 1, 2, 3, 3, 3])
    assert reward.score(states) == [1.0, 0.5, 0.5, 0.5, 0.0, 1.0]
    final_only = ReasoningFormatReward(min_words=2, max_words=4, final_step_only=True)
    assert final_only.score(states) == [None, None, None, 0.5, 0.0, 1.0]
    with pytest.raises(ValueError, match="min_words"):
        ReasoningFormatReward(min_words=5, max_words=2)


# ---------------------------------------------------------------------------------------- real trajectories
@pytest.fixture(scope="module")
def decoder(processor, tiny_model):
    return ParallelDecoder(tiny_model().eval(), processor, RolloutConfig(num_steps=NUM_STEPS))


@pytest.fixture(scope="module")
def rollout(decoder):
    dataset = build_toy_dataset("train", num_samples=4, seed=0)
    data = {column: list(dataset[column]) for column in ("prompt", "image", "task", "category")}
    steps = UniformSteps(2).select(4, NUM_STEPS, torch.Generator().manual_seed(0))
    trajectory = decoder.generate(
        data["prompt"], images=data["image"], tasks=data["task"], record_steps=steps.unique(), seeds=torch.arange(4)
    )
    return data, steps, trajectory


def test_states_from_trajectory(processor, rollout):
    data, steps, trajectory = rollout
    columns = {"task": data["task"], "category": data["category"]}
    states = RewardStates.from_trajectory(trajectory, processor, steps, data["prompt"], data["image"], columns)
    assert len(states) == 8 and states.num_steps == NUM_STEPS
    assert states.steps.tolist() == steps.flatten().tolist()
    assert states.trajectory_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert states.prompts[2] == states.prompts[3] == data["prompt"][1]
    assert states.columns["task"][::2] == data["task"] and states.input_images[0] is data["image"][0]
    for row, (i, j) in enumerate([(i, j) for i in range(4) for j in range(2)]):
        k = int(steps[i, j])
        state = trajectory.state_at(k + 1)[i]
        assert torch.equal(states.token_ids[row], state)
        assert states.texts[row] == trajectory.text_at(k, processor)[i]
        assert torch.equal(states.image_tensors[row], trajectory.image_at(k, processor)[i])
        revealed = state != processor.preset.mask_token_id
        assert states.text_revealed[row] == revealed[processor.text_positions].float().mean()
        assert states.image_revealed[row] == revealed[processor.image_positions].float().mean()
    assert states.image_tensors.shape == (8, 3, 32, 32) and states.images[0].size == (32, 32)

    grey = RewardStates.from_trajectory(trajectory, processor, steps, data["prompt"], grey_unrevealed=True)
    for j in range(2):
        expected = trajectory.image_at(steps[:, j], processor, grey_unknown=True)
        assert torch.equal(grey.image_tensors[j::2], expected)
    assert (grey.image_tensors == 0.5).any() and not (states.image_tensors == 0.5).all()

    # per-state form (the trainer's): state n = trajectory row rows[n] at steps[n], inputs given per state
    rows = torch.tensor([3, 0, 3])
    picked = torch.stack([steps[3, 0], steps[0, 1], steps[3, 1]])
    per_state = RewardStates.from_trajectory(
        trajectory, processor, picked, [data["prompt"][i] for i in rows], rows=rows, columns={"task": ["a", "b", "c"]}
    )
    assert per_state.trajectory_index.tolist() == [3, 0, 3] and per_state.columns["task"] == ["a", "b", "c"]
    for n, row in enumerate([6, 1, 7]):  # the same states in the rollout-major batch above
        assert per_state.texts[n] == states.texts[row]
        assert torch.equal(per_state.token_ids[n], states.token_ids[row])
        assert torch.equal(per_state.image_tensors[n], states.image_tensors[row])

    with pytest.raises(ValueError, match=r"no x0 estimate for step\(s\) \[7\]"):
        RewardStates.from_trajectory(trajectory, processor, torch.full((4,), 7), data["prompt"])
    with pytest.raises(ValueError, match="prompts has 3 entries"):
        RewardStates.from_trajectory(trajectory, processor, steps, data["prompt"][:3])


def test_custom_reward_end_to_end(processor, rollout):
    data, steps, trajectory = rollout

    class RevealedText(Reward):
        """Revealed text fraction, None for generation prompts."""

        def score(self, states):
            return [
                float(frac) if task == "edit" else None
                for frac, task in zip(states.text_revealed, states.columns["task"])
            ]

    def text_length(completions, step, **kwargs):
        return [float(len(c.split())) for c in completions]

    states = RewardStates.from_trajectory(
        trajectory, processor, steps, data["prompt"], data["image"], {"task": data["task"]}
    )
    values, metrics = compute_rewards([RevealedText(), text_length], states)
    assert values.shape == (8, 2)
    is_edit = torch.tensor([task == "edit" for task in states.columns["task"]])
    assert torch.equal(values[is_edit, 0], states.text_revealed[is_edit])
    assert values[~is_edit, 0].isnan().all()
    assert values[:, 1].tolist() == [float(len(t.split())) for t in states.texts]
    assert set(metrics) == {"rewards/revealed_text/nan_count", "rewards/text_length/nan_count"}


def test_calibrate_normalizer(decoder):
    data = build_toy_dataset("train", num_samples=40, seed=1)

    class StepIndex(Reward):
        def __init__(self):
            self.normalizer = None

        def raw_scores(self, states):
            return states.steps.float().tolist()

        def score(self, states):
            return self.normalizer(self.raw_scores(states))

    reward = StepIndex()
    norm = calibrate_normalizer(reward, decoder, data, fraction=0.01, step_selector=FixedSteps([0, -1]), min_prompts=3)
    # raw scores are 0 and 7, once per prompt: mean 3.5, std 3.5
    assert reward.normalizer is norm and (norm.mean, norm.std) == (3.5, 3.5)
    assert reward.normalizer([0.0, 7.0]) == [0.0, 1.0]


def test_example_runs(capsys):
    runpy.run_path(str(REPO / "examples" / "custom_reward.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "step " in out and "rewards/named_colours_drawn/nan_count" in out


# ----------------------------------------------------------------------------------------------------- CLIP
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_clip(folder: Path, name: str, cfg: dict) -> str:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


def caption(image) -> str:
    return " , ".join(f"a {obj.colour} {obj.shape}" for obj in parse_scene(image)) + " ."


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A tiny open_clip model trained contrastively for a few dozen steps on toy (image, caption) pairs."""
    folder = tmp_path_factory.mktemp("clip")
    name = register_clip(folder, "pararl-test-clip", TINY_CLIP)
    reward = CLIPAlignmentReward(name, allow_random_init=True, device="cpu")
    model, tokenizer = reward.model, reward.tokenizer

    data = build_toy_dataset("train", num_samples=96, seed=0)
    images = images_to_tensor(data["output_image"])
    captions = [caption(image) for image in data["output_image"]]
    train, held_out = slice(0, 64), slice(64, 96)

    torch.manual_seed(0)
    model.train().requires_grad_(True)
    # The 49k-row BPE embedding is frozen: it dominates the parameter count and random rows separate words anyway.
    model.token_embedding.requires_grad_(False)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    loss_fn = open_clip.ClipLoss()
    pixels, tokens = reward.preprocess(images[train]), tokenizer(captions[train])
    generator = torch.Generator().manual_seed(0)
    for _ in range(60):  # single-threaded, like every test (conftest)
        batch = torch.randperm(64, generator=generator)[:32]
        image_features = model.encode_image(pixels[batch], normalize=True)
        text_features = model.encode_text(tokens[batch], normalize=True)
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    reward.to("cpu")  # back to eval mode, frozen

    weights = folder / "tiny_clip.pt"
    torch.save(model.state_dict(), weights)
    return {
        "name": name,
        "folder": folder,
        "weights": weights,
        "reward": reward,
        "images": images,
        "captions": captions,
        "train": train,
        "held_out": held_out,
    }


def test_clip_matching_pairs_score_higher(tiny_clip):
    reward, images, captions = tiny_clip["reward"], tiny_clip["images"], tiny_clip["captions"]
    for part in (tiny_clip["train"], tiny_clip["held_out"]):
        texts = captions[part]
        matched = reward.score(make_states(texts, images[part]))
        mismatched = reward.score(make_states(texts[1:] + texts[:1], images[part]))
        # margins seen over training seeds: 0.39-0.78 (a random model gives ~0)
        assert sum(matched) / len(matched) > sum(mismatched) / len(mismatched) + 0.1
        assert all(-1.0 <= value <= 1.0 for value in matched)


def test_clip_normalizer_and_state_dict(tiny_clip):
    reward = tiny_clip["reward"]
    states = make_states(tiny_clip["captions"][:8], tiny_clip["images"][:8])
    raw = torch.tensor(reward.raw_scores(states), dtype=torch.float64)
    normed = CLIPAlignmentReward(model=reward.model, tokenizer=reward.tokenizer, device="cpu")
    normed.normalizer = RewardNormalizer().fit(raw)
    scores = torch.tensor(normed.score(states), dtype=torch.float64)
    assert torch.equal(scores, normed.normalizer(raw))
    assert scores.min() >= 0 and scores.max() <= 1
    restored = CLIPAlignmentReward(model=reward.model, tokenizer=reward.tokenizer, device="cpu")
    restored.load_state_dict(normed.state_dict())
    assert restored.normalizer.state_dict() == normed.normalizer.state_dict()
    assert restored.score(states) == normed.score(states)


def test_clip_long_text_chunks(tiny_clip):
    reward = tiny_clip["reward"]
    chunked = CLIPAlignmentReward(model=reward.model, tokenizer=reward.tokenizer, device="cpu", long_text="chunks")
    captions, images = tiny_clip["captions"], tiny_clip["images"]
    long_text = " ".join(captions[:8])  # eight sentences, far over the 24-token context
    pieces = chunked.split_text(long_text)
    assert len(pieces) > 1 and all(chunked._num_tokens(p) <= 22 for p in pieces)
    assert " ".join(pieces).split() == long_text.split()  # nothing lost, order kept
    states = make_states([long_text, captions[0], ""], images[:3])
    scores = chunked.score(states)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # a text that fits is one chunk: the same score as truncation; the long one differs from truncation
    truncated = reward.score(states)
    assert scores[1] == pytest.approx(truncated[1], abs=1e-5) and scores[2] == pytest.approx(truncated[2], abs=1e-5)
    assert scores[0] != pytest.approx(truncated[0], abs=1e-5)
    with pytest.raises(ValueError, match="long_text"):
        CLIPAlignmentReward(model=reward.model, tokenizer=reward.tokenizer, device="cpu", long_text="split")


def test_clip_image_consistency(tiny_clip):
    base = tiny_clip["reward"]
    reward = CLIPImageConsistencyReward(model=base.model, tokenizer=base.tokenizer, device="cpu")
    assert reward.name == "clip_image_consistency_reward"
    images = tiny_clip["images"][:3]
    inputs = tensor_to_images(images)
    states = make_states(["a", "b", "c"], images, input_images=[inputs[0], None, inputs[0]])
    scores = reward.score(states)
    assert scores[1] is None
    assert scores[0] == pytest.approx(1.0, abs=1e-5)  # output identical to the input image
    assert scores[2] < scores[0]


def test_clip_on_trajectory(tiny_clip, processor, rollout):
    data, steps, trajectory = rollout
    states = RewardStates.from_trajectory(trajectory, processor, steps, data["prompt"], data["image"])
    alignment = CLIPAlignmentReward(
        model=tiny_clip["reward"].model, tokenizer=tiny_clip["reward"].tokenizer, device="cpu"
    )
    values, metrics = compute_rewards([alignment, ReasoningFormatReward()], states)
    assert values.shape == (8, 2) and torch.isfinite(values).all()
    assert metrics["rewards/clip_alignment_reward/nan_count"] == 0.0


def test_clip_weights_loading(tiny_clip):
    name, folder, weights = tiny_clip["name"], tiny_clip["folder"], tiny_clip["weights"]
    loaded = CLIPAlignmentReward(name, pretrained=weights, device="cpu")
    states = make_states(tiny_clip["captions"][:4], tiny_clip["images"][:4])
    assert loaded.score(states) == pytest.approx(tiny_clip["reward"].score(states), abs=1e-6)

    wide = register_clip(folder, "pararl-test-clip-wide", {**TINY_CLIP, "embed_dim": 48})
    with pytest.raises(ValueError, match="does not fit open_clip model 'pararl-test-clip-wide'"):
        CLIPAlignmentReward(wide, pretrained=weights, device="cpu")
    big = register_clip(
        folder, "pararl-test-clip-64px", {**TINY_CLIP, "vision_cfg": {**TINY_CLIP["vision_cfg"], "image_size": 64}}
    )
    with pytest.raises(ValueError, match="positional_embedding"):
        CLIPAlignmentReward(big, pretrained=weights, device="cpu")
    state = torch.load(weights)
    state.pop("text_projection")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, folder / "partial.pt")
    with pytest.raises(ValueError, match=r"1 missing keys \['text_projection'\], 1 unexpected keys"):
        CLIPAlignmentReward(name, pretrained=folder / "partial.pt", device="cpu")
    with pytest.raises(ValueError, match="allow_random_init"):
        CLIPAlignmentReward(name, device="cpu")
    with pytest.raises(FileNotFoundError, match="neither a file nor"):
        CLIPAlignmentReward(name, pretrained=folder / "absent.pt", device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        CLIPAlignmentReward("no-such-clip", pretrained=weights, device="cpu")


def test_clip_half_precision(tiny_clip):
    # The GPU path casts the frozen CLIP to bf16/fp16; the same casting runs on the CPU with bf16.
    base = tiny_clip["reward"]
    half = CLIPAlignmentReward(
        model=copy.deepcopy(base.model), tokenizer=base.tokenizer, device="cpu", dtype=torch.bfloat16
    )
    assert next(half.model.parameters()).dtype == torch.bfloat16
    states = make_states(tiny_clip["captions"][:4], tiny_clip["images"][:4])
    assert half.score(states) == pytest.approx(base.score(states), abs=0.05)
