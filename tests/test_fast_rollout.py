"""Fast decoding (confidence thresholds, input key/value cache) and the decoder's memory/attention-mask details."""

import pytest
import torch

from pararl.rollout import ParallelDecoder, RolloutConfig, build_reveal_plan


PROMPTS = ["draw a red square", "paint the blue circle at the top left"]


@pytest.fixture(scope="module")
def model(tiny_model):
    # Peaked random logits: confidences differ clearly between slots.
    return tiny_model(n_kv_heads=2, max_sequence_length=256, initializer_range=0.5).eval()


@pytest.fixture(scope="module")
def image(processor):
    return torch.randint(0, processor.preset.codebook_size, processor.preset.image_grid, generator=torch.Generator())


def decode(model, processor, prompts=PROMPTS, seeds=(11, 12), images=None, record_steps=None, callback=None, **kw):
    decoder = ParallelDecoder(model, processor, RolloutConfig(**{"num_steps": 8, **kw}))
    trajectory = decoder.generate(
        prompts, images=images, seeds=torch.tensor(seeds), record_steps=record_steps, step_callback=callback
    )
    return decoder, trajectory


def assert_same(a, b, logprobs_exact=True):
    assert torch.equal(a.output_ids, b.output_ids)
    assert torch.equal(a.step_map, b.step_map)
    assert torch.equal(a.x0, b.x0) and torch.equal(a.recorded_steps, b.recorded_steps)
    if logprobs_exact:
        assert torch.equal(a.token_logprobs, b.token_logprobs)
    else:
        torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=1e-5, rtol=0)


class CountingBackbone:
    """Wraps `model.backbone` to record the rows and attention mask of every forward."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __enter__(self):
        original = self.model.backbone

        def backbone(input_ids, attention_mask=None, *args, **kwargs):
            self.calls.append((input_ids.shape[0], attention_mask, kwargs.get("past_key_values") is not None))
            return original(input_ids, attention_mask, *args, **kwargs)

        self.model.backbone = backbone
        return self

    def __exit__(self, *exc):
        del self.model.backbone


EXACT_CASES = [
    {},
    {"block_length": 13, "image_start": 0.25},
    {"image_guidance_scale": 2.0, "text_guidance_scale": 1.5, "guidance_drop": "prompt", "text_temperature": 0.7},
    {"order": "text_then_image", "top_k": 5},
]


# --------------------------------------------------------------------------------------- thresholds above 1 = exact
@pytest.mark.parametrize("case", EXACT_CASES)
def test_thresholds_above_one_with_schedule_floor_are_the_exact_engine(model, processor, image, case):
    images = [image, None]  # an edit (input image) and a generation, so the inputs are padded
    with CountingBackbone(model) as exact_calls:
        _, exact = decode(model, processor, images=images, record_steps=[0, 3, 6], **case)
    fast_config = {"text_threshold": 1.5, "image_threshold": 3.0, "threshold_floor": "schedule"}
    with CountingBackbone(model) as fast_calls:
        _, fast = decode(model, processor, images=images, record_steps=[0, 3, 6], **case, **fast_config)
    assert_same(fast, exact)
    assert [c[0] for c in fast_calls.calls] == [c[0] for c in exact_calls.calls]  # the same forwards
    assert (exact.row_num_steps == 8).all()
    # One modality thresholded, the other on its schedule: still exact.
    _, text_only = decode(
        model, processor, images=images, record_steps=[0, 3, 6], text_threshold=2.0, threshold_floor="schedule", **case
    )
    assert_same(text_only, exact)


# ------------------------------------------------------------------------------------------ variable-length rows
@pytest.mark.parametrize("case", [{}, {"block_length": 13}, {"image_guidance_scale": 2.0}])
def test_threshold_rows_reveal_every_slot_once_and_end_early(model, processor, case):
    seen = []
    _, traj = decode(
        model,
        processor,
        num_steps=16,
        text_threshold=0.1,
        image_threshold=0.3,
        record_steps=[0, 2, 15],
        callback=lambda step, state: seen.append(state.clone()),
        **case,
    )
    maskable = processor.maskable_mask
    assert (traj.step_map[:, ~maskable] == -1).all()
    assert not (traj.output_ids == processor.preset.mask_token_id).any()
    steps = traj.step_map[:, maskable]
    assert ((steps >= 0) & (steps < 16)).all()
    ends = traj.row_num_steps
    assert ends.max() < 16, "low thresholds on peaked logits should end before the budget"
    assert len(seen) == int(ends.max())  # the loop stops once every row has ended
    for step, state in enumerate(seen):
        assert torch.equal(traj.state_at(step), state)
    plan = build_reveal_plan(
        16, len(processor.text_positions), len(processor.image_positions), block_length=case.get("block_length")
    )
    for slots, counts in (
        (processor.text_positions, plan.text_counts),
        (processor.image_positions, plan.image_counts),
    ):
        span_steps = traj.step_map[:, slots]
        revealed = torch.stack([(span_steps == k).sum(1) for k in range(16)], 1)
        for row in range(2):
            # At least one per step while the row runs, and never behind the schedule (so it ends in the budget).
            running = revealed[row, : span_steps[row].max() + 1]
            assert (running >= 1).all()
            assert (revealed[row].cumsum(0) >= torch.tensor(counts).cumsum(0)).all()
    if case.get("block_length"):
        text_steps = traj.step_map[:, processor.text_positions]
        assert (text_steps[:, :13].max(1).values < text_steps[:, 13:].min(1).values).all()  # blocks in order
    # x0 of a step after a row ended is its final output; before, it agrees with what the step revealed.
    for step in (0, 2, 15):
        x0, after = traj.x0_at(step), traj.state_at(step + 1)
        known = after != processor.preset.mask_token_id
        assert torch.equal(x0[known], after[known]) and not (x0 == processor.preset.mask_token_id).any()
    assert torch.equal(traj.x0_at(15), traj.output_ids)


def test_threshold_logprobs_are_the_full_forward_distribution(model, processor):
    _, traj = decode(model, processor, num_steps=16, text_threshold=0.3, image_threshold=0.3, text_temperature=0.8)
    preset = processor.preset
    input_length = traj.input_ids.shape[1]
    for step in range(int(traj.row_num_steps.max())):
        with torch.no_grad():
            logits = model(**traj.sequences_at(step)).logits.float()
        for slots, (start, end), temperature in (
            (processor.text_positions, preset.text_vocab_range, 0.8),
            (processor.image_positions, preset.image_vocab_range, 1.0),
        ):
            scores = logits[:, input_length + slots, start:end]
            if start <= preset.mask_token_id < end:
                scores[..., preset.mask_token_id - start] = float("-inf")
            expected = torch.log_softmax(scores / temperature, -1)
            expected = expected.gather(-1, (traj.output_ids[:, slots] - start).unsqueeze(-1))[..., 0]
            revealed = traj.step_map[:, slots] == step
            torch.testing.assert_close(traj.token_logprobs[:, slots][revealed], expected[revealed], atol=1e-5, rtol=0)


def test_finished_rows_leave_the_batch(model, processor):
    with CountingBackbone(model) as calls:
        _, traj = decode(model, processor, num_steps=16, text_threshold=0.3, image_threshold=0.3, seeds=(1, 2))
    ends = traj.row_num_steps.tolist()
    assert ends[0] != ends[1], "pick seeds whose rows end at different steps"
    assert [rows for rows, _, _ in calls.calls] == [2] * min(ends) + [1] * (max(ends) - min(ends))


def test_a_finished_rows_result_does_not_depend_on_the_batch(model, processor, image):
    kwargs = {"num_steps": 16, "text_threshold": 0.1, "image_threshold": 0.3, "block_length": 13}
    for extra in ({}, {"image_guidance_scale": 2.0, "input_cache_refresh": 3}):
        _, alone = decode(model, processor, prompts=["draw a red square"], seeds=(7,), **kwargs, **extra)
        _, batch = decode(
            model,
            processor,
            prompts=["paint the blue circle at the top left of the image", "draw a red square", "draw a dot"],
            images=[image, None, None],
            seeds=(3, 7, 5),
            **kwargs,
            **extra,
        )
        assert batch.attention_mask[1].sum() < batch.attention_mask.shape[1]  # the row really is padded
        assert len(set(batch.row_num_steps.tolist())) > 1  # rows of the batch end at different steps
        assert torch.equal(alone.output_ids[0], batch.output_ids[1])
        assert torch.equal(alone.step_map[0], batch.step_map[1])
        torch.testing.assert_close(alone.token_logprobs[0], batch.token_logprobs[1], atol=1e-5, rtol=0)


def test_cap_bounds_reveals_per_step(model, processor):
    decoder, traj = decode(model, processor, num_steps=16, text_threshold=0.01, image_threshold=0.01, threshold_cap=7)
    for slots in (processor.text_positions, processor.image_positions):
        span_steps = traj.step_map[:, slots]
        per_step = torch.stack([(span_steps == k).sum(1) for k in range(16)], 1)
        assert per_step.max() == 7  # a threshold of 0.01 takes everything the cap allows
    assert decoder.max_reveals_per_step == 14


# ------------------------------------------------------------------------------------------------- input cache
@pytest.mark.parametrize(
    "case",
    [
        {},
        {"text_threshold": 0.5, "image_threshold": 0.5, "image_guidance_scale": 2.0},
        {"order": "image_then_text", "block_length": 13},  # the cache supports every decode order
    ],
)
def test_cache_refreshed_every_forward_equals_no_cache(model, processor, image, case):
    images = [image, None]
    _, plain = decode(model, processor, images=images, record_steps=[1, 5], **case)
    with CountingBackbone(model) as calls:
        _, cached = decode(model, processor, images=images, record_steps=[1, 5], input_cache_refresh=1, **case)
    assert_same(cached, plain)
    assert not any(past for _, _, past in calls.calls)


def test_stale_cache_runs_output_only_forwards(model, processor, image):
    images = [image, None]
    _, plain = decode(model, processor, images=images)
    with CountingBackbone(model) as calls:
        _, cached = decode(model, processor, images=images, input_cache_refresh=3)
    assert [past for _, _, past in calls.calls] == [False, True, True] * 2 + [False, True]
    # An approximation of the full forward: it changes some tokens, and its log-probs are still log-probs.
    maskable = processor.maskable_mask
    assert not torch.equal(cached.output_ids, plain.output_ids)
    assert (cached.token_logprobs[:, maskable] <= 0).all()
    assert not (cached.output_ids == processor.preset.mask_token_id).any()


def test_backbone_with_past_key_values_equals_the_full_forward(model, processor, image):
    inputs = processor.encode_prompts(PROMPTS, images=[image, None])
    outputs = processor.masked_outputs(2)
    outputs[:, processor.image_positions[:10]] = processor.preset.image_token_offset + 3
    ids = torch.cat([inputs["input_ids"], outputs], 1)
    mask = torch.cat([inputs["attention_mask"], torch.ones_like(outputs)], 1)
    length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        full = model.backbone(ids, attention_mask=mask)
        same, key_values = model.backbone(ids, attention_mask=mask, use_cache=True)
        assert torch.equal(same, full)
        prefix = [(k[:, :, :length], v[:, :, :length]) for k, v in key_values]
        assert prefix[0][0].shape == (2, model.config.n_kv_heads, length, 32 // 4)
        suffix = model.backbone(ids[:, length:], attention_mask=mask, past_key_values=prefix)
        torch.testing.assert_close(suffix, full[:, length:], atol=1e-5, rtol=1e-5)
        # Without padding no mask is needed: default positions continue after the prefix.
        unpadded = ids[:1, : int(mask[0].sum())]
        short = int(inputs["attention_mask"][0].sum())
        full = model.backbone(unpadded)
        _, key_values = model.backbone(unpadded, use_cache=True)
        prefix = [(k[:, :, :short], v[:, :, :short]) for k, v in key_values]
        torch.testing.assert_close(model.backbone(unpadded[:, short:], past_key_values=prefix), full[:, short:])
    with pytest.raises(ValueError, match="cached positions"):
        model.backbone(ids[:, length:], attention_mask=mask[:, length:], past_key_values=prefix)


# ------------------------------------------------------------------------------------ memory and attention masks
@pytest.mark.parametrize("fast", [False, True])
def test_chunked_draw_gives_the_same_tokens(model, processor, fast):
    kwargs = {"image_guidance_scale": 2.0, "text_guidance_scale": 1.0, "top_k": 6, "record_steps": [2]}
    if fast:
        kwargs.update(text_threshold=0.5, image_threshold=0.5)
    _, whole = decode(model, processor, **kwargs)
    decoder = ParallelDecoder(
        model, processor, RolloutConfig(num_steps=8, **{k: v for k, v in kwargs.items() if k != "record_steps"})
    )
    decoder.max_draw_elements = 1  # one slot per chunk
    widths, lm_logits = [], model.lm_logits
    model.lm_logits = lambda hidden, positions=None, **kw: (
        widths.append(positions.shape[1]) or lm_logits(hidden, positions=positions, **kw)
    )
    try:
        chunked = decoder.generate(PROMPTS, seeds=torch.tensor([11, 12]), record_steps=[2])
    finally:
        del model.lm_logits
    assert set(widths) == {1}  # the logits of one slot at a time, never a (rows, slots, vocabulary) block
    assert_same(chunked, whole)


@pytest.mark.parametrize("fast", [{}, {"text_threshold": 0.5}, {"input_cache_refresh": 2}])
def test_no_attention_mask_without_padding(model, processor, image, fast):
    with CountingBackbone(model) as calls:
        decode(model, processor, prompts=[PROMPTS[0]] * 2, **fast)
    assert calls.calls and all(mask is None for _, mask, _ in calls.calls)
    with CountingBackbone(model) as calls:
        decode(model, processor, images=[image, None], **fast)
    assert all(mask is not None for _, mask, _ in calls.calls)


# ----------------------------------------------------------------------------------------- options and policy
def test_bad_fast_options_are_clear_errors(model, processor):
    for kwargs, match in [
        (dict(text_threshold=0.0), "text_threshold must be a probability > 0"),
        (dict(image_threshold=-0.5), "image_threshold must be a probability > 0"),
        (dict(text_threshold=0.9, threshold_cap=0), "threshold_cap must be a positive int"),
        (dict(text_threshold=0.9, threshold_floor="two"), "unknown threshold_floor"),
        (dict(text_threshold=0.9, remasking="random"), "remasking='low_confidence'"),
        (dict(input_cache_refresh=0), "input_cache_refresh must be a positive int"),
    ]:
        with pytest.raises(ValueError, match=match):
            RolloutConfig(**kwargs)
    with pytest.raises(ValueError, match="threshold_cap=3 is below the floor: the image schedule reveals up to"):
        ParallelDecoder(model, processor, RolloutConfig(num_steps=8, image_threshold=0.9, threshold_cap=3))


def test_policy_properties_say_when_the_trainer_must_correct():
    assert not RolloutConfig().off_policy and RolloutConfig().exact_forward and not RolloutConfig().fast
    threshold = RolloutConfig(text_threshold=0.9, image_threshold=0.9)
    assert threshold.fast and threshold.exact_forward and not threshold.off_policy
    assert RolloutConfig(input_cache_refresh=1).exact_forward and not RolloutConfig(input_cache_refresh=1).off_policy
    stale = RolloutConfig(input_cache_refresh=4)
    assert not stale.exact_forward and stale.off_policy
    assert RolloutConfig(image_guidance_scale=2.0).off_policy and RolloutConfig(text_temperature=0.0).off_policy
    assert not RolloutConfig(top_k=4).off_policy  # a filter the trainer's likelihood replays
