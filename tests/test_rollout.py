import math

import pytest
import torch

from pararl.rollout import (
    CallableSchedule,
    CosineSchedule,
    LinearSchedule,
    ParallelDecoder,
    RolloutConfig,
    build_reveal_plan,
    counter_uniform,
    draw_trajectory,
    get_schedule,
)
from pararl.rollout.sampling import guide, row_keys


PROMPTS = ["draw a red square", "paint the blue circle at the top left"]


@pytest.fixture(scope="module")
def model(tiny_model):
    # Peaked random logits, so confidences differ clearly between slots.
    return tiny_model(max_sequence_length=256, initializer_range=0.5).eval()


def decode(model, processor, prompts=PROMPTS, seeds=(11, 12), images=None, **kwargs):
    record_steps = kwargs.pop("record_steps", None)
    step_callback = kwargs.pop("step_callback", None)
    config = RolloutConfig(**{"num_steps": 8, **kwargs})
    decoder = ParallelDecoder(model, processor, config)
    trajectory = decoder.generate(
        prompts, images=images, seeds=torch.tensor(seeds), record_steps=record_steps, step_callback=step_callback
    )
    return decoder, trajectory


# ------------------------------------------------------------------------------------------------------ schedules
def test_linear_schedule_matches_llada_split():
    assert LinearSchedule().counts(10, 4) == [3, 3, 2, 2]
    assert LinearSchedule().counts(3, 5) == [1, 1, 1, 0, 0]


def test_cosine_schedule_exact_counts():
    counts = CosineSchedule().counts(64, 6)
    expected_revealed = [64 - math.floor(64 * math.cos(math.pi / 2 * (i + 1) / 6)) for i in range(5)] + [64]
    assert counts == [b - a for a, b in zip([0] + expected_revealed[:-1], expected_revealed)]
    assert sum(counts) == 64 and counts == sorted(counts)  # few early, many late


def test_callable_schedule_fraction_and_count():
    assert get_schedule(lambda step, steps: (step + 1) / steps).counts(8, 4) == [2, 2, 2, 2]
    assert CallableSchedule(lambda step, steps: [1, 1, 5][step]).counts(5, 3) == [1, 0, 4]
    with pytest.raises(ValueError, match="by its last"):
        CallableSchedule(lambda step, steps: 0.5).counts(8, 4)
    with pytest.raises(ValueError, match="decrease"):
        CallableSchedule(lambda step, steps: [3, 2, 4][step]).counts(4, 3)
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("exponential")


def test_plan_parallel_blocks_and_image_start():
    plan = build_reveal_plan(8, 26, 64, block_length=13, image_start=0.25)
    assert plan.text_counts == (4, 3, 3, 3, 4, 3, 3, 3)
    assert plan.text_windows == ((0, 13),) * 4 + ((13, 26),) * 4
    assert plan.image_counts[:2] == (0, 0) and tuple(plan.image_counts[2:]) == tuple(CosineSchedule().counts(64, 6))
    assert plan.image_steps == (2, 8)


def test_plan_sequential_orders():
    plan = build_reveal_plan(9, 26, 64, order="text_then_image")
    assert plan.text_steps == (0, 4) and plan.image_steps == (4, 9)
    assert all(c == 0 for c in plan.image_counts[:4]) and all(c == 0 for c in plan.text_counts[4:])
    plan = build_reveal_plan(8, 26, 64, order="image_then_text")
    assert plan.image_steps == (0, 4) and plan.text_steps == (4, 8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(block_length=5), "must divide the text span"),
        (dict(block_length=2, num_steps=8), "at least one step per block"),
        (dict(block_length=13, num_steps=7), "split equally"),
        (dict(order="diagonal"), "unknown order"),
        (dict(image_start=1.0), "image_start"),
        (dict(order="text_then_image", num_steps=1), "num_steps >= 2"),
    ],
)
def test_plan_errors(kwargs, match):
    args = {"num_steps": 8, **kwargs}
    with pytest.raises(ValueError, match=match):
        build_reveal_plan(args.pop("num_steps"), 26, 64, **args)


# ---------------------------------------------------------------------------------------------------------- noise
def _splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & (2**64 - 1)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & (2**64 - 1)
    return x ^ (x >> 31)


def _fmix32(x):
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_counter_noise_matches_its_integer_definition():
    seeds = torch.tensor([5, 2**40 + 3])
    noise = counter_uniform(seeds, step=3, stream=1, shape=(4, 5))
    key_a, key_b = (k.tolist() for k in row_keys(seeds, 3, 1))
    mixed = _splitmix64(_splitmix64(2**40 + 3) ^ (3 * 16 + 1))
    assert (key_a[1] & 0xFFFFFFFF, key_b[1] & 0xFFFFFFFF) == (mixed & 0xFFFFFFFF, mixed >> 32)
    for row in range(2):
        for element in (0, 7, 19):
            counter = (element * 0x9E3779B9 + key_a[row]) & 0xFFFFFFFF
            bits = _fmix32(_fmix32(counter) ^ (key_b[row] & 0xFFFFFFFF))
            expected = ((bits & 0x7FFFFF) + 0.5) / 2**23
            assert noise[row].flatten()[element].item() == expected
    # A row's noise depends on its own seed only, and the values are uniform in (0, 1).
    assert torch.equal(counter_uniform(seeds[1:], 3, 1, (4, 5))[0], noise[1])
    big = counter_uniform(torch.tensor([1]), 0, 0, (100_000,))
    assert 0 < big.min() and big.max() < 1 and abs(big.mean().item() - 0.5) < 0.01


def test_guidance_formula():
    cond, uncond = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    guided = guide(torch.cat([cond, uncond]), 2, 1.5)
    torch.testing.assert_close(guided, cond + 1.5 * (cond - uncond))
    assert torch.equal(guide(torch.cat([cond, uncond]), 2, 0.0), cond)


# -------------------------------------------------------------------------------------------------------- decoder
def test_every_slot_revealed_exactly_once(model, processor):
    _, traj = decode(model, processor, record_steps=[0, 7])
    maskable = processor.maskable_mask
    assert (traj.step_map[:, ~maskable] == -1).all()
    assert ((traj.step_map[:, maskable] >= 0) & (traj.step_map[:, maskable] < 8)).all()
    assert not (traj.output_ids == processor.preset.mask_token_id).any()
    template = processor.masked_outputs(2)
    assert torch.equal(traj.output_ids[:, ~maskable], template[:, ~maskable])
    offset = processor.preset.image_token_offset
    assert (traj.output_ids[:, processor.image_positions] >= offset).all()
    assert (traj.output_ids[:, processor.text_positions] < offset).all()
    assert (traj.token_logprobs[:, maskable] <= 0).all() and (traj.token_logprobs[:, ~maskable] == 0).all()


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_reveal_counts_follow_the_schedules(model, processor, remasking):
    decoder, traj = decode(model, processor, block_length=13, image_start=0.25, remasking=remasking)
    text_steps = traj.step_map[:, processor.text_positions]
    image_steps = traj.step_map[:, processor.image_positions]
    for step in range(8):
        assert ((text_steps == step).sum(1) == decoder.plan.text_counts[step]).all()
        assert ((image_steps == step).sum(1) == decoder.plan.image_counts[step]).all()
    # Block 0 (text slots 0-12) is written on steps 0-3, block 1 on steps 4-7.
    assert (text_steps[:, :13] < 4).all() and (text_steps[:, 13:] >= 4).all()


def test_rebuilt_states_equal_the_states_seen(model, processor):
    seen = []
    _, traj = decode(
        model, processor, record_steps=[1, 4], step_callback=lambda step, state: seen.append(state.clone())
    )
    assert len(seen) == 8
    for step, state in enumerate(seen):
        assert torch.equal(traj.state_at(step), state)
    assert torch.equal(traj.state_at(8), traj.output_ids)
    per_row = traj.state_at(torch.tensor([2, 5]))
    assert torch.equal(per_row[0], seen[2][0]) and torch.equal(per_row[1], seen[5][1])
    # x0 at a recorded step: no mask, agrees with every token known after the step, holds the step's reveals.
    mask_id = processor.preset.mask_token_id
    for step in (1, 4):
        x0, after = traj.x0_at(step), traj.state_at(step + 1)
        assert not (x0 == mask_id).any()
        assert torch.equal(x0[after != mask_id], after[after != mask_id])
        assert traj.revealed_at(step).sum() > 0
    assert torch.equal(traj.x0_at(torch.tensor([4, 1]))[0], traj.x0_at(4)[0])


def test_same_seeds_same_rollout_and_recording_changes_nothing(model, processor):
    _, first = decode(model, processor, record_steps=[2])
    _, second = decode(model, processor)
    assert torch.equal(first.output_ids, second.output_ids) and torch.equal(first.step_map, second.step_map)
    assert torch.equal(first.token_logprobs, second.token_logprobs)
    _, other = decode(model, processor, seeds=(21, 22))
    assert not torch.equal(first.output_ids, other.output_ids)


def test_guidance_scale_zero_is_the_unguided_path(model, processor):
    decoder, plain = decode(model, processor, image_guidance_scale=0.0)
    inputs = processor.encode_prompts(PROMPTS)
    uncond = processor.encode_prompts(PROMPTS, drop_prompt=[True, True])
    uncond = {k: torch.nn.functional.pad(v, (0, inputs["input_ids"].shape[1] - v.shape[1])) for k, v in uncond.items()}
    # Unconditional rows given with scale 0 are ignored: the same forward batch, the same tokens.
    again = decoder.decode(
        **inputs,
        uncond_input_ids=uncond["input_ids"],
        uncond_attention_mask=uncond["attention_mask"],
        seeds=torch.tensor([11, 12]),
    )
    assert torch.equal(plain.output_ids, again.output_ids) and torch.equal(plain.token_logprobs, again.token_logprobs)
    # Guidance against rows equal to the conditional ones is an exact no-op on the logits.
    guided = ParallelDecoder(
        model, processor, RolloutConfig(num_steps=8, text_guidance_scale=2.0, image_guidance_scale=3.0)
    )
    same = guided.decode(
        **inputs,
        uncond_input_ids=inputs["input_ids"],
        uncond_attention_mask=inputs["attention_mask"],
        seeds=torch.tensor([11, 12]),
    )
    assert torch.equal(plain.output_ids, same.output_ids)
    # Real guidance changes the rollout.
    _, changed = decode(model, processor, image_guidance_scale=3.0, guidance_drop="prompt")
    assert not torch.equal(plain.output_ids, changed.output_ids)


@pytest.mark.parametrize("order", ["text_then_image", "image_then_text"])
def test_sequential_orders_finish_one_modality_first(model, processor, order):
    _, traj = decode(model, processor, order=order)
    text_steps = traj.step_map[:, processor.text_positions]
    image_steps = traj.step_map[:, processor.image_positions]
    first, second = (text_steps, image_steps) if order == "text_then_image" else (image_steps, text_steps)
    assert (first < 4).all() and (second >= 4).all()


def test_sample_result_independent_of_batch_and_padding(model, processor, tmp_path):
    image = torch.randint(0, processor.preset.codebook_size, processor.preset.image_grid)
    for kwargs in ({}, {"image_guidance_scale": 2.0, "text_temperature": 0.5}):
        _, alone = decode(model, processor, prompts=["draw a red square"], seeds=(7,), **kwargs)
        _, batch = decode(
            model,
            processor,
            prompts=["paint the blue circle at the top left of the image", "draw a red square"],
            images=[image, None],
            seeds=(3, 7),
            **kwargs,
        )
        assert batch.attention_mask[1].sum() < batch.attention_mask.shape[1]  # the row really is padded
        assert torch.equal(alone.output_ids[0], batch.output_ids[1])
        assert torch.equal(alone.step_map[0], batch.step_map[1])
        torch.testing.assert_close(alone.token_logprobs[0], batch.token_logprobs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("top_k", [None, 3])
def test_token_logprobs_are_the_sampling_distribution(model, processor, top_k):
    preset = processor.preset
    temperatures = {"text_temperature": 0.7, "image_temperature": 1.3}
    _, traj = decode(model, processor, top_k=top_k, **temperatures)
    input_length = traj.input_ids.shape[1]
    spans = [
        (processor.text_positions, preset.text_vocab_range, temperatures["text_temperature"]),
        (processor.image_positions, preset.image_vocab_range, temperatures["image_temperature"]),
    ]
    for step in (0, 3, 7):
        with torch.no_grad():
            logits = model(**traj.sequences_at(step)).logits.float()
        for slots, (start, end), temperature in spans:
            scores = logits[:, input_length + slots, start:end]
            if start <= preset.mask_token_id < end:
                scores[..., preset.mask_token_id - start] = float("-inf")
            scores = scores / temperature
            if top_k is not None:
                kth = scores.topk(top_k, dim=-1).values[..., -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            expected = torch.log_softmax(scores, -1).gather(-1, (traj.output_ids[:, slots] - start).unsqueeze(-1))[
                ..., 0
            ]
            revealed = traj.step_map[:, slots] == step
            assert revealed.any()
            torch.testing.assert_close(
                traj.token_logprobs[:, slots][revealed], expected[revealed], atol=1e-5, rtol=1e-5
            )


def test_greedy_decoding_uses_temperature_one_logprobs(model, processor):
    _, traj = decode(model, processor, text_temperature=0.0, image_temperature=0.0)
    _, again = decode(model, processor, text_temperature=0.0, image_temperature=0.0, seeds=(99, 98))
    assert torch.equal(traj.output_ids, again.output_ids)  # greedy ignores the noise
    input_length = traj.input_ids.shape[1]
    with torch.no_grad():
        logits = model(**traj.sequences_at(0)).logits.float()
    start, end = processor.preset.image_vocab_range
    slots = processor.image_positions
    scores = logits[:, input_length + slots, start:end]
    revealed = traj.step_map[:, slots] == 0
    assert torch.equal(traj.output_ids[:, slots][revealed], scores.argmax(-1)[revealed] + start)
    expected = torch.log_softmax(scores, -1).max(-1).values
    torch.testing.assert_close(traj.token_logprobs[:, slots][revealed], expected[revealed], atol=1e-5, rtol=1e-5)


def test_bad_arguments_raise_clear_errors(model, processor):
    for kwargs, match in [
        (dict(num_steps=0), "num_steps"),
        (dict(order="diagonal"), "unknown order"),
        (dict(remasking="entropy"), "unknown remasking"),
        (dict(guidance_drop="all"), "unknown guidance_drop"),
        (dict(text_temperature=-1.0), "text_temperature"),
        (dict(top_k=0), "top_k"),
        (dict(image_start=1.0), "image_start"),
        (dict(block_length=0), "block_length"),
        (dict(text_schedule="zigzag"), "unknown schedule"),
    ]:
        with pytest.raises(ValueError, match=match):
            RolloutConfig(**kwargs)
    with pytest.raises(ValueError, match="must divide the text span"):
        ParallelDecoder(model, processor, RolloutConfig(block_length=5))
    with pytest.raises(ValueError, match="at least one step per block"):
        ParallelDecoder(model, processor, RolloutConfig(num_steps=1, block_length=13))
    inputs = processor.encode_prompts(PROMPTS)
    guided = ParallelDecoder(model, processor, RolloutConfig(num_steps=4, image_guidance_scale=1.0))
    with pytest.raises(ValueError, match="uncond_input_ids"):
        guided.decode(**inputs)
    plain = ParallelDecoder(model, processor, RolloutConfig(num_steps=4))
    with pytest.raises(ValueError, match="seeds"):
        plain.decode(**inputs, seeds=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="record_steps"):
        plain.decode(**inputs, record_steps=[4])
    traj = plain.decode(**inputs, record_steps=[1])
    with pytest.raises(ValueError, match="not recorded"):
        traj.x0_at(2)
    with pytest.raises(ValueError, match="step must lie"):
        traj.state_at(5)


def test_trajectory_batching_helpers(model, processor):
    _, traj = decode(model, processor, record_steps=[3])
    row = traj.index_select([1])
    assert row.batch_size == 1 and torch.equal(row.output_ids[0], traj.output_ids[1])
    assert torch.equal(row.x0_at(3)[0], traj.x0_at(3)[1]) and torch.equal(row.recorded_steps, traj.recorded_steps)
    assert traj.to("cpu").output_ids.device.type == "cpu"
    texts = traj.text_at(7, processor)
    assert texts == processor.decode_text(traj.output_ids)
    assert traj.image_at(3, processor, grey_unknown=True).shape == (2, 3, 32, 32)


def test_draw_trajectory_width(model, processor):
    _, traj = decode(model, processor, record_steps=[0, 4])
    picture = draw_trajectory(traj, processor, index=1)
    # Two recorded steps + the final output; 32 px images upscaled x4, 8 px padding on each side.
    assert picture.size[0] == 3 * (32 * 4 + 2 * 8)
    assert draw_trajectory(traj, processor, steps=[1, 2, 5], scale=2).size[0] == 4 * (32 * 2 + 16)
    with pytest.raises(ValueError, match="index"):
        draw_trajectory(traj, processor, index=2)
