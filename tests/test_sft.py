"""Parallel SFT: objective, masking, conditioning dropout, data validation and the trainer (offline, CPU, tiny)."""

import math
import os

import datasets
import pytest
import torch
from PIL import Image

from pararl.image_tokenizers import tensor_to_images
from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionLM
from pararl.sft import (
    DataCollatorForParallelSFT,
    ParallelSFTConfig,
    ParallelSFTTrainer,
    parallel_sft_loss,
    pretokenize_dataset,
    sample_mask_ratio,
    sample_output_mask,
)
from pararl.toy import build_toy_dataset, toy_processor


# The SFT tests' policy: a 256-token context and rope_theta 1e4 (the tiny model's defaults otherwise).
SFT_MODEL = dict(max_sequence_length=256, rope_theta=10000.0)


@pytest.fixture(scope="module")
def toy_rows():
    return build_toy_dataset("train", num_samples=64, seed=0)


@pytest.fixture(scope="module")
def toy_codes(toy_rows, processor):
    return pretokenize_dataset(toy_rows, processor)


def sft_config(tmp_path, **kwargs) -> ParallelSFTConfig:
    defaults = dict(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        seed=0,
    )
    return ParallelSFTConfig(**{**defaults, **kwargs})


# ------------------------------------------------------------------------------------------------------ objective
@pytest.mark.parametrize("text_weight", ["inverse_t", "constant"])
@pytest.mark.parametrize("image_weight", ["constant", "inverse_t"])
def test_loss_equals_hand_computation(text_weight, image_weight):
    # Vocabulary: text ids 0..5 (4 is the mask token, excluded from the text distribution), image ids 6..8.
    text_range, image_range, mask_id = (0, 6), (6, 9), 4
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 10, generator=generator)
    targets = torch.tensor([[1, 7, 3, 8], [6, 0, 5, 2]])
    is_image = torch.tensor([[False, True, False, True], [True, False, False, False]])
    loss_mask = torch.tensor([[True, True, False, True], [True, True, True, False]])
    t = torch.tensor([0.25, 0.8])
    num_text, num_image = 10, 6  # maskable slots of the batch, masked or not

    out = parallel_sft_loss(
        logits,
        targets,
        loss_mask,
        is_image,
        t,
        num_text_tokens=num_text,
        num_image_tokens=num_image,
        text_vocab_range=text_range,
        image_vocab_range=image_range,
        mask_token_id=mask_id,
        text_loss_weight=text_weight,
        image_loss_weight=image_weight,
    )

    text_sum = image_sum = 0.0
    for b in range(2):
        for k in range(4):
            if not loss_mask[b, k]:
                continue
            image = bool(is_image[b, k])
            start, end = image_range if image else text_range
            columns = [c for c in range(start, end) if image or c != mask_id]
            log_z = math.log(sum(math.exp(logits[b, k, c].item()) for c in columns))
            nll = log_z - logits[b, k, targets[b, k]].item()
            kind = image_weight if image else text_weight
            weight = 1.0 / t[b].item() if kind == "inverse_t" else 1.0
            if image:
                image_sum += weight * nll
            else:
                text_sum += weight * nll

    assert out.loss.item() == pytest.approx((text_sum + image_sum) / (num_text + num_image), rel=1e-5)
    assert out.text_loss.item() == pytest.approx(text_sum / num_text, rel=1e-5)
    assert out.image_loss.item() == pytest.approx(image_sum / num_image, rel=1e-5)


def test_mask_sampling_respects_slots_and_modalities():
    length = 12
    image_slots = torch.zeros(length, dtype=torch.bool)
    image_slots[1:6] = True
    text_slots = torch.zeros(length, dtype=torch.bool)
    text_slots[8:12] = True
    generator = torch.Generator().manual_seed(0)

    # Tiny t: most draws mask nothing, yet every sample gets at least one slot of each modality.
    masked = sample_output_mask(torch.full((500,), 1e-4), image_slots, text_slots, generator=generator)
    assert (masked & ~(image_slots | text_slots)).sum() == 0
    assert (masked & image_slots).any(dim=1).all() and (masked & text_slots).any(dim=1).all()
    assert ((masked & image_slots).sum(dim=1) == 1).float().mean() > 0.99

    # t = 1 masks every maskable slot and nothing else.
    masked = sample_output_mask(torch.ones(3), image_slots, text_slots, generator=generator)
    assert torch.equal(masked, (image_slots | text_slots).expand(3, -1))

    # The mask rate follows t, shared by both modalities: t, plus the forced slot of draws that masked none of the
    # n slots of a modality, i.e. an expected rate of t + (1 - t)^n / n.
    n_draws, t = 4000, 0.3
    masked = sample_output_mask(torch.full((n_draws,), t), image_slots, text_slots, generator=generator)
    for slots in (image_slots, text_slots):
        n = int(slots.sum())
        expected = t + (1 - t) ** n / n
        rate = masked[:, slots].float().mean().item()
        assert abs(rate - expected) < 3 * math.sqrt(expected * (1 - expected) / (n_draws * n))

    t = sample_mask_ratio(5000, 0.2, generator=generator)
    assert t.min() >= 0.2 and t.max() <= 1.0 and abs(t.mean().item() - 0.6) < 0.02


# -------------------------------------------------------------------------------------------------------- dropout
def test_conditioning_dropout_rate_and_rows(processor, toy_codes):
    edit_row = next(row for row in toy_codes if row["task"] == "edit")
    collator = DataCollatorForParallelSFT(processor, prompt_dropout=0.1, image_dropout=0.1, seed=0)
    n = 2000
    batch = collator([edit_row] * n)

    conditional = processor.encode_prompts([edit_row["prompt"]], [torch.tensor(edit_row["image_codes"])])
    variants = {}
    for drop_prompt in (False, True):
        for drop_image in (False, True):
            row = processor.encode_prompts(
                [edit_row["prompt"]],
                [torch.tensor(edit_row["image_codes"])],
                drop_prompt=[drop_prompt],
                drop_image=[drop_image],
            )
            variants[drop_prompt, drop_image] = row["input_ids"][0, : int(row["attention_mask"].sum())]
    assert torch.equal(variants[False, False], conditional["input_ids"][0])

    counts = dict.fromkeys(variants, 0)
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = ids[: int(mask.sum())]
        # Every row is exactly one of the processor's four rows (the same rows the rollout uses for guidance).
        match = [key for key, row in variants.items() if torch.equal(ids, row)]
        assert len(match) == 1
        counts[match[0]] += 1

    def within_3_sigma(count, p):
        return abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p))

    assert within_3_sigma(counts[True, False] + counts[True, True], 0.1)
    assert within_3_sigma(counts[False, True] + counts[True, True], 0.1)
    assert within_3_sigma(counts[True, True], 0.01)  # independent drops
    # Targets are never affected by dropout.
    assert (batch["labels"] == batch["labels"][0]).all()


def test_generation_rows_never_get_an_image_and_eval_has_no_dropout(processor, tiny_model, toy_codes, tmp_path):
    gen_row = next(row for row in toy_codes if row["task"] == "generate")
    batch = DataCollatorForParallelSFT(processor, prompt_dropout=0.0, image_dropout=1.0, seed=0)([gen_row] * 4)
    expected = processor.encode_prompts([gen_row["prompt"]], [None], ["generate"])["input_ids"]
    assert torch.equal(batch["input_ids"], expected.expand(4, -1))

    trainer = ParallelSFTTrainer(
        tiny_model(**SFT_MODEL),
        args=sft_config(tmp_path, prompt_dropout=1.0, image_dropout=1.0),
        train_dataset=toy_codes,
        processing_class=processor,
    )
    edit_rows = [row for row in toy_codes if row["task"] == "edit"][:3]
    train_batch = trainer.data_collator(edit_rows)
    eval_batch = trainer._eval_data_collator(edit_rows)
    assert not (train_batch["input_ids"] == processor.preset.soi_token_id).any()
    assert (eval_batch["input_ids"] == processor.preset.soi_token_id).sum(dim=1).eq(1).all()


# --------------------------------------------------------------------------------------------------------- trainer
class _Recorder(torch.nn.Module):
    """Wraps a model and keeps the inputs and outputs of its forward calls."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls = []

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        self.calls.append((kwargs, out))
        return out


def test_compute_loss_masks_only_the_output_and_scores_masked_slots(processor, tiny_model, toy_codes, tmp_path):
    model = tiny_model(**SFT_MODEL)
    trainer = ParallelSFTTrainer(model, args=sft_config(tmp_path), train_dataset=toy_codes, processing_class=processor)
    batch = trainer.data_collator([toy_codes[i] for i in range(6)])
    recorder = _Recorder(model)
    preset = processor.preset

    state = trainer._mask_generator.get_state()
    loss = trainer.compute_loss(recorder, batch)
    (kwargs, out) = recorder.calls[0]
    input_length = batch["input_ids"].shape[1]
    sequence = kwargs["input_ids"]

    # The input part goes in untouched; only maskable output slots hold the mask token.
    assert torch.equal(sequence[:, :input_length], batch["input_ids"])
    output = sequence[:, input_length:]
    masked = output == preset.mask_token_id
    assert not (masked & ~processor.maskable_mask).any()
    assert torch.equal(output[~masked], batch["labels"][~masked])
    assert masked[:, processor.image_positions].any(dim=1).all()
    assert masked[:, processor.text_positions].any(dim=1).all()
    # Logits are computed only at masked output slots (each row's masked slots, padded to the batch maximum).
    positions = kwargs["logits_positions"] - input_length
    for row in range(len(positions)):
        count = int(masked[row].sum())
        assert torch.equal(positions[row, :count], masked[row].nonzero().squeeze(-1))

    # The same loss from full-vocabulary logits at every output slot, with the same draws.
    trainer._mask_generator.set_state(state)
    t = sample_mask_ratio(6, trainer.args.min_mask_ratio, generator=trainer._mask_generator)
    image_slots, text_slots = processor.image_slot_mask, processor.text_slot_mask
    replay = sample_output_mask(t, image_slots, text_slots, generator=trainer._mask_generator)
    assert torch.equal(replay, masked)
    slots = torch.arange(processor.output_length).expand(6, -1)
    full = model(input_ids=sequence, attention_mask=kwargs["attention_mask"], logits_positions=slots + input_length)
    reference = parallel_sft_loss(
        full.logits,
        batch["labels"],
        masked,
        image_slots.expand(6, -1),
        t,
        num_text_tokens=6 * len(processor.text_positions),
        num_image_tokens=6 * len(processor.image_positions),
        text_vocab_range=preset.text_vocab_range,
        image_vocab_range=preset.image_vocab_range,
        mask_token_id=preset.mask_token_id,
    )
    assert loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)
    assert trainer._metrics["train"]["loss/text"][-1] == pytest.approx(reference.text_loss.item(), rel=1e-5)
    assert trainer._metrics["train"]["loss/image"][-1] == pytest.approx(reference.image_loss.item(), rel=1e-5)


def test_loss_falls_on_toy_world(processor, tiny_model, toy_rows, tmp_path):
    trainer = ParallelSFTTrainer(
        tiny_model(d_model=64, **SFT_MODEL),
        args=sft_config(
            tmp_path,
            max_steps=50,
            per_device_train_batch_size=8,
            learning_rate=3e-3,
            lr_scheduler_type="constant",
            eval_strategy="steps",
            eval_steps=50,
            per_device_eval_batch_size=16,
        ),
        train_dataset=toy_rows,  # PIL rows: the trainer pre-tokenises them
        eval_dataset=build_toy_dataset("test", num_samples=16, seed=1),
        processing_class=processor,
    )
    trainer.train()
    history = trainer.state.log_history
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 50
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.75 * first, (first, last)
    logged = next(entry for entry in history if "loss" in entry)
    assert {"loss/text", "loss/image", "mask_ratio"} <= set(logged)
    evaluated = next(entry for entry in history if "eval_loss" in entry)
    assert {"eval_loss/text", "eval_loss/image"} <= set(evaluated)


def test_lora_changes_only_adapters(processor, tiny_model, toy_codes, tmp_path):
    from peft import LoraConfig

    model = tiny_model(**SFT_MODEL)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    trainer = ParallelSFTTrainer(
        model,
        args=sft_config(tmp_path, max_steps=3, learning_rate=1e-2),
        train_dataset=toy_codes,
        processing_class=processor,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=list(ATTENTION_LORA_TARGETS), lora_dropout=0.0),
    )
    trainer.train()
    changed_adapters = 0
    for name, param in trainer.model.named_parameters():
        if "lora_" in name:
            changed_adapters += not torch.equal(param, before.get(name, torch.zeros_like(param)))
            continue
        base_name = name.replace("base_model.model.", "").replace(".base_layer", "")
        assert torch.equal(param, before[base_name]), name
    assert changed_adapters > 0


def test_save_model_writes_safetensors_that_reload(processor, tiny_model, toy_codes, tmp_path):
    model = tiny_model(**SFT_MODEL)
    trainer = ParallelSFTTrainer(
        model, args=sft_config(tmp_path / "run"), train_dataset=toy_codes, processing_class=processor
    )
    trainer.train()
    out = tmp_path / "saved"
    trainer.save_model(str(out))
    assert os.path.exists(out / "model.safetensors")
    assert os.path.exists(out / "tokenizer.json")
    reloaded = MaskedDiffusionLM.from_pretrained(str(out))
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name

    # A path works as `model` too.
    again = ParallelSFTTrainer(
        str(out), args=sft_config(tmp_path / "again"), train_dataset=toy_codes, processing_class=processor
    )
    assert torch.equal(again.model.model.transformer.wte.weight, model.model.transformer.wte.weight)


# ------------------------------------------------------------------------------------------------------------ data
def test_pretokenize_round_trip(processor, toy_rows, toy_codes):
    assert "image" not in toy_codes.column_names and "output_image" not in toy_codes.column_names
    image_tokenizer = processor.image_tokenizer
    for i in range(len(toy_rows)):
        for pil_field, codes_field in (("image", "image_codes"), ("output_image", "output_image_codes")):
            original, codes = toy_rows[i][pil_field], toy_codes[i][codes_field]
            if original is None:
                assert codes is None
                continue
            decoded = tensor_to_images(image_tokenizer.decode(torch.tensor(codes)[None]))[0]
            assert decoded.tobytes() == original.convert("RGB").tobytes()
    # Deterministic fingerprint: a second run is served from `datasets`' cache for on-disk datasets.
    assert pretokenize_dataset(toy_rows, toy_processor())._fingerprint == toy_codes._fingerprint
    # Pre-tokenised rows collate to the same tensors as the PIL rows.
    collator = DataCollatorForParallelSFT(processor)
    from_pil, from_codes = collator([toy_rows[i] for i in range(8)]), collator([toy_codes[i] for i in range(8)])
    for key in from_pil:
        assert torch.equal(from_pil[key], from_codes[key])


def _bad_rows():
    good = {
        "prompt": "paint the red dot blue .",
        "image": None,
        "task": "generate",
        "reasoning": "the dot is blue .",
        "output_image": Image.new("RGB", (32, 32), (214, 199, 164)),
    }
    off_palette = Image.new("RGB", (32, 32), (214, 199, 164))
    off_palette.putpixel((0, 0), (1, 2, 3))
    cases = {
        "missing prompt": ({"prompt": None}, "prompt", "missing"),
        "missing reasoning": ({"reasoning": None}, "reasoning", "missing"),
        "missing output image": ({"output_image": None}, "output_image", "missing"),
        "input image wrong size": (
            {"image": Image.new("RGB", (30, 32)), "task": "edit"},
            "image",
            "30x32",
        ),
        "output image wrong size": ({"output_image": Image.new("RGB", (64, 64))}, "output_image", "64x64"),
        "colour not in palette": ({"output_image": off_palette}, "output_image", "not one uniform colour"),
        "prompt over budget": ({"prompt": "red " * 40}, "prompt", "over the budget"),
        "reasoning over budget": ({"reasoning": "blue " * 40}, "reasoning", "over the budget"),
        "unknown task": ({"task": "draw"}, "task", "draw"),
        "edit without image": ({"task": "edit"}, "image", "needs an input image"),
    }
    return good, cases


@pytest.mark.parametrize("case", list(_bad_rows()[1]))
def test_bad_row_raises_naming_row_and_field(case, processor):
    good, cases = _bad_rows()
    change, field_name, detail = cases[case]
    bad = {**good, **change}
    rows = [dict(good), dict(good), dict(good), bad]
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "image": datasets.Image(),
            "task": datasets.Value("string"),
            "reasoning": datasets.Value("string"),
            "output_image": datasets.Image(),
        }
    )
    dataset = datasets.Dataset.from_list(rows, features=features)
    with pytest.raises(ValueError, match=r"row 3\b") as error:
        pretokenize_dataset(dataset, processor, batch_size=2)
    assert repr(field_name) in str(error.value) and detail in str(error.value)

    collator = DataCollatorForParallelSFT(processor)
    with pytest.raises(ValueError, match="example 1 of the batch") as error:
        collator([good, bad])
    assert repr(field_name) in str(error.value) and detail in str(error.value)


def test_over_budget_text_truncates_with_warning_by_option(processor):
    good, _ = _bad_rows()
    long_prompt = {**good, "prompt": "red " * 40}
    truncating = toy_processor(truncate_prompt=True)
    with pytest.warns(UserWarning, match="truncated"):
        batch = DataCollatorForParallelSFT(truncating)([long_prompt])
    # <task> <bos> prompt (budget) <eos>
    assert int(batch["attention_mask"].sum()) == processor.preset.max_prompt_tokens + 3


def test_missing_column_and_bad_codes(processor, toy_codes):
    dataset = datasets.Dataset.from_dict({"prompt": ["a"], "output_image_codes": [[[0] * 8] * 8]})
    with pytest.raises(ValueError, match="'reasoning' column"):
        pretokenize_dataset(dataset, processor)
    row = dict(toy_codes[0])
    with pytest.raises(ValueError, match="example 0 of the batch: field 'output_image_codes' has shape"):
        DataCollatorForParallelSFT(processor)([{**row, "output_image_codes": [[0] * 8] * 7}])
    with pytest.raises(ValueError, match="outside the codebook"):
        DataCollatorForParallelSFT(processor)([{**row, "output_image_codes": [[99] * 8] * 8}])


# ---------------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"text_loss_weight": "linear"}, "text_loss_weight"),
        ({"image_loss_weight": "1/t"}, "image_loss_weight"),
        ({"min_mask_ratio": 0.0}, "min_mask_ratio"),
        ({"prompt_dropout": 1.5}, "prompt_dropout"),
        ({"image_dropout": -0.1}, "image_dropout"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
        ({"dataset_kwargs": {"packing": True}}, "dataset_kwargs"),
    ],
)
def test_config_validation(kwargs, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        ParallelSFTConfig(output_dir=str(tmp_path), use_cpu=True, **kwargs)


def test_config_defaults(tmp_path):
    args = ParallelSFTConfig(output_dir=str(tmp_path), use_cpu=True, model_init_kwargs='{"dtype": "float32"}')
    assert args.bf16 is False  # never on CPU
    assert args.logging_steps == 10 and args.remove_unused_columns is False
    assert (args.text_loss_weight, args.image_loss_weight) == ("inverse_t", "constant")
    assert (args.prompt_dropout, args.image_dropout) == (0.1, 0.1)
    assert args.model_init_kwargs == {"dtype": "float32"}


def test_trainer_rejects_wrong_processing_class(processor, tiny_model, toy_codes, tmp_path):
    with pytest.raises(ValueError, match="ParallelProcessor"):
        ParallelSFTTrainer(
            tiny_model(**SFT_MODEL),
            args=sft_config(tmp_path),
            train_dataset=toy_codes,
            processing_class=processor.tokenizer,
        )
