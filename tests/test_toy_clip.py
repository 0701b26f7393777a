import hashlib
import json
import random

import pytest
import torch

from pararl.toy import generate_samples, parse_scene, scene_codes
from pararl.toy.claims import claim_holds, reasoning_claims
from pararl.toy.clip import (
    METRICS_FILE,
    TOY_CLIP_DIR,
    TOY_CLIP_NAME,
    WEIGHTS_FILE,
    clip_scores,
    codes_to_pixels,
    load_toy_clip,
)
from pararl.toy.clip_training import (
    ToyClipBatches,
    ToyClipTrainingConfig,
    add_junk,
    break_object,
    corrupt_codes,
    heldout_metrics,
    negative_objects,
    negative_words,
    train_toy_clip,
)
from pararl.toy.texts import split_words


@pytest.fixture(scope="module")
def toy_clip():
    return load_toy_clip()


@pytest.fixture(scope="module")
def samples():
    return generate_samples("test", 64, seed=11)


def test_asset_is_small_and_reproduces_its_recorded_heldout_retrieval(toy_clip):
    model, tokenizer = toy_clip
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert (TOY_CLIP_DIR / WEIGHTS_FILE).stat().st_size < 8 * 2**20
    recorded = json.loads((TOY_CLIP_DIR / METRICS_FILE).read_text())
    assert recorded["model"] == TOY_CLIP_NAME and not recorded["training"]["quick"]
    settings = {key: recorded["heldout"][key] for key in ("split", "num_samples", "batch_size", "seed")}
    metrics = heldout_metrics(model, tokenizer, **settings)
    for key in ("image_to_text_correct", "partial_image_to_text_correct", "hard_negative_wins", "hard_negative_count"):
        assert metrics[key] == recorded["heldout"][key], key
    for key in ("matched_cosine", "mismatched_cosine"):
        assert metrics[key] == pytest.approx(recorded["heldout"][key], abs=1e-6)
    # Far above chance (1/32) on held-out combinations.
    assert metrics["image_to_text_top1"] > 0.5


def test_matching_pairs_score_above_mismatched(toy_clip, samples):
    model, tokenizer = toy_clip
    texts = [s.reasoning for s in samples]
    codes = torch.stack([scene_codes(s.output_objects) for s in samples])
    shifted = torch.roll(codes, 1, dims=0)  # every text with another task's picture
    matched, mismatched = clip_scores(model, tokenizer, texts, codes), clip_scores(model, tokenizer, texts, shifted)
    assert matched.mean() > mismatched.mean() + 0.1
    # Hard negatives: the same scene, edited so that the reasoning's claim fails (e.g. the wrong colour).
    edited = []
    for i, sample in enumerate(samples):
        scene = negative_objects(sample.output_objects, reasoning_claims(sample.reasoning), random.Random(i))
        edited.append(scene_codes(scene))
    assert matched.mean() > clip_scores(model, tokenizer, texts, torch.stack(edited)).mean()
    # Intermediate states: half the words still masked, a third of the cells grey.
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    partial_texts = [" ".join(w for w in split_words(t) if rng.random() < 0.5) for t in texts]
    grey = torch.stack([corrupt_codes(c[None], 0.33, True, generator)[0] for c in codes])
    partial_shifted = torch.roll(grey, 1, dims=0)
    assert (
        clip_scores(model, tokenizer, partial_texts, grey).mean()
        > clip_scores(model, tokenizer, partial_texts, partial_shifted).mean()
    )


def test_open_clip_local_dir_and_reward_see_the_same_model(toy_clip, samples):
    import open_clip

    from pararl.rewards.clip import CLIPAlignmentReward

    model, tokenizer = toy_clip
    texts = [s.reasoning for s in samples[:8]]
    codes = torch.stack([scene_codes(s.output_objects) for s in samples[:8]])
    codes[0, :4] = -1  # a few unknown (grey) cells
    expected = clip_scores(model, tokenizer, texts, codes)
    # The folder is an open_clip "local-dir:" model, and the CLIP reward preprocesses pixels the same way.
    reward = CLIPAlignmentReward(model_name=f"local-dir:{TOY_CLIP_DIR}", device="cpu")
    pixels = codes_to_pixels(codes)
    scores = (reward.encode_images(pixels) * reward.encode_texts(texts)).sum(-1)
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)
    local = open_clip.create_model(f"local-dir:{TOY_CLIP_DIR}").eval()
    torch.testing.assert_close(local.state_dict()["text_projection"], model.state_dict()["text_projection"])


def test_codes_to_pixels_is_the_processors_decoding():
    from pararl.toy import toy_processor

    codes = torch.randint(-1, 9, (3, 8, 8))
    torch.testing.assert_close(codes_to_pixels(codes), toy_processor().decode_images(codes), atol=0, rtol=0)


def test_trimmed_text_encoding_equals_open_clip(toy_clip):
    from pararl.toy.clip_training import _encode_tokens_trimmed

    model, tokenizer = toy_clip
    tokens = tokenizer(["fire is red so the blue square becomes red .", "the red", "", "a dot"])
    torch.testing.assert_close(_encode_tokens_trimmed(model, tokens), model.encode_text(tokens, normalize=True))


def test_missing_asset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="build_assets"):
        load_toy_clip(directory=tmp_path)


def test_hard_negatives_break_a_claim(samples):
    rng = random.Random(0)
    for sample in samples:
        claims = reasoning_claims(sample.reasoning)
        scene = negative_objects(sample.output_objects, claims, rng)
        assert scene is not None and not all(claim_holds(c, scene) for c in claims)
        words = negative_words(split_words(sample.reasoning), sample.output_objects, rng)
        if words is not None:
            assert len(words) == len(split_words(sample.reasoning))
            assert not all(claim_holds(c, sample.output_objects) for c in reasoning_claims(" ".join(words)))


def test_batches_and_training_are_deterministic():
    config = ToyClipTrainingConfig.quick(steps=2, batch_size=8, num_train_samples=32)
    first, second = next(ToyClipBatches(config)), next(ToyClipBatches(config))
    assert first["texts"] == second["texts"] and torch.equal(first["codes"], second["codes"])
    assert first["codes"].shape == first["negative_codes"].shape == (8, 8, 8)
    assert len(first["negative_texts"]) == 8
    model_a, _ = train_toy_clip(config)
    model_b, _ = train_toy_clip(config)
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_quick_rebuild_runs(tmp_path):
    from pararl.toy.build_assets import main

    results = main(["--quick", "--only", "clip", "--output_dir", str(tmp_path), "--log_every", "0"])
    folder = tmp_path / "clip"
    assert {p.name for p in folder.iterdir()} == {
        f"{TOY_CLIP_NAME}.json",
        "open_clip_config.json",
        WEIGHTS_FILE,
        METRICS_FILE,
    }
    recorded = json.loads((folder / METRICS_FILE).read_text())
    assert recorded["training"]["quick"] and recorded["heldout"] == results["clip"]["heldout"]
    model, tokenizer = load_toy_clip(directory=folder)
    assert (
        heldout_metrics(model, tokenizer, num_samples=64)["image_to_text_correct"]
        == (recorded["heldout"]["image_to_text_correct"])
    )


def test_junk_pictures_never_parse_and_keep_the_scene(samples):
    rng = random.Random(0)
    for sample in samples:
        clean = scene_codes(sample.output_objects)
        count = rng.randint(1, 4)
        junk = add_junk(sample.output_objects, count, rng)
        changed = junk != clean
        assert int(changed.sum()) == count and bool((clean[changed] == 0).all())  # only background cells painted
        with pytest.raises(ValueError):
            parse_scene(junk, strict=True)


def test_broken_objects_never_parse_and_change_one_cell_of_one_object(samples):
    rng = random.Random(0)
    broken_any = False
    for sample in samples:
        clean = scene_codes(sample.output_objects)
        broken = break_object(sample.output_objects, rng)
        if all(o.shape == "dot" for o in sample.output_objects):
            assert broken is None
            continue
        broken_any = True
        changed = broken != clean
        assert int(changed.sum()) == 1 and int(clean[changed]) != 0  # one painted cell repainted or erased
        with pytest.raises(ValueError):
            parse_scene(broken, strict=True)
    assert broken_any


def test_shipped_clip_prefers_the_clean_picture_to_the_same_picture_with_junk(toy_clip, samples):
    model, tokenizer = toy_clip
    rng = random.Random(1)
    texts = [s.reasoning for s in samples]
    clean = torch.stack([scene_codes(s.output_objects) for s in samples])
    junk = torch.stack([add_junk(s.output_objects, rng.randint(1, 4), rng) for s in samples])
    wins = clip_scores(model, tokenizer, texts, clean) > clip_scores(model, tokenizer, texts, junk)
    assert wins.float().mean() > 0.8


def test_shipped_clip_prefers_the_whole_picture_to_one_with_a_broken_object(toy_clip, samples):
    model, tokenizer = toy_clip
    rng = random.Random(2)
    breakable = [s for s in samples if any(o.shape != "dot" for o in s.output_objects)]
    texts = [s.reasoning for s in breakable]
    clean = torch.stack([scene_codes(s.output_objects) for s in breakable])
    broken = torch.stack([break_object(s.output_objects, rng) for s in breakable])
    wins = clip_scores(model, tokenizer, texts, clean) > clip_scores(model, tokenizer, texts, broken)
    assert len(breakable) >= 32 and wins.float().mean() > 0.7


def test_training_batches_are_the_recorded_ones():
    # SHA-256 of the quick configuration's first batch (texts, hard negative texts, both code grids), recorded from
    # the code that trained the shipped tiny CLIP: the hard negatives, corruptions and their RNG order are unchanged.
    batch = ToyClipBatches(ToyClipTrainingConfig.quick()).sample()
    digest = hashlib.sha256(json.dumps([batch["texts"], batch["negative_texts"]]).encode())
    digest.update(batch["codes"].numpy().tobytes() + batch["negative_codes"].numpy().tobytes())
    assert digest.hexdigest() == "076b1b94c8f91b6a4a43d6b4acfd72aa4e6de6a2ca505bd118a0668d7fcbcbde"
