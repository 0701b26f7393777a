"""No silent random weights: pararl checkpoints, truncated files and LoRA resumes are checked key by key."""

import os

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionLM
from pararl.sft import ParallelSFTConfig, ParallelSFTTrainer, pretokenize_dataset
from pararl.toy import build_toy_dataset
from pararl.weight_files import check_resume_checkpoint


def saved(model, folder) -> tuple[str, dict]:
    model.save_pretrained(folder)
    path = os.path.join(folder, "model.safetensors")
    return path, load_file(path)


Q = "model.transformer.blocks.0.q_proj.weight"
K = "model.transformer.blocks.1.k_proj.weight"


@pytest.mark.parametrize(
    "change, listed",
    [
        (lambda state: state.pop(Q), f"1 missing key(s) [{Q}]"),
        (lambda state: state.update(extra=torch.zeros(3)), "1 unexpected key(s) [extra]"),
        (lambda state: state.update({K: torch.zeros(5, 32)}), f"1 wrong shape(s) [{K}: checkpoint (5, 32) vs model"),
    ],
    ids=["missing", "unexpected", "wrong shape"],
)
def test_pararl_checkpoint_with_bad_keys_is_refused(processor, tiny_model, tmp_path, change, listed):
    path, state = saved(tiny_model(), tmp_path)
    change(state)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not fit the model") as error:
        MaskedDiffusionLM.from_pretrained(str(tmp_path))
    assert listed in str(error.value)


def test_all_bad_keys_are_listed_at_once(processor, tiny_model, tmp_path):
    path, state = saved(tiny_model(), tmp_path)
    state.pop(Q)
    state[K] = torch.zeros(5, 32)
    state["extra"] = torch.zeros(3)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError) as error:
        MaskedDiffusionLM.from_pretrained(str(tmp_path), dtype=torch.float32)
    message = str(error.value)
    assert "1 missing key(s)" in message and "1 unexpected key(s)" in message and "1 wrong shape(s)" in message


def test_a_folder_without_config_json_is_named_up_front(processor, tiny_model, tmp_path):
    saved(tiny_model(), tmp_path)
    os.remove(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError) as error:
        MaskedDiffusionLM.from_pretrained(str(tmp_path))
    assert str(error.value).startswith(f"{tmp_path} has no config.json;")
    assert "missing key" not in str(error.value)


def test_good_checkpoint_loads_exactly(processor, tiny_model, tmp_path):
    model = tiny_model()
    saved(model, tmp_path)
    loaded, info = MaskedDiffusionLM.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_truncated_safetensors_names_the_file(processor, tiny_model, tmp_path):
    path, _ = saved(tiny_model(), tmp_path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 100])
    with pytest.raises(ValueError, match=f"cannot read the weight file {path}.*truncated"):
        MaskedDiffusionLM.from_pretrained(str(tmp_path))


def lora(model):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(ATTENTION_LORA_TARGETS)))


def drop_adapter_keys(folder, count: int = 2) -> list[str]:
    path = os.path.join(folder, "adapter_model.safetensors")
    state = load_file(path)
    dropped = sorted(state)[:count]
    for key in dropped:
        state.pop(key)
    save_file(state, path, metadata={"format": "pt"})
    return dropped


def test_lora_checkpoint_missing_adapter_keys_is_refused(processor, tiny_model, tmp_path):
    model = lora(tiny_model())
    model.save_pretrained(tmp_path)
    check_resume_checkpoint(model, tmp_path)  # complete: fine
    dropped = drop_adapter_keys(tmp_path)
    with pytest.raises(ValueError, match="2 missing key") as error:
        check_resume_checkpoint(model, tmp_path)
    assert all(key in str(error.value) for key in dropped)


def test_sft_resume_with_missing_adapter_keys_raises(processor, tiny_model, tmp_path):
    data = pretokenize_dataset(build_toy_dataset("train", num_samples=8, seed=0), processor)
    args = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none", disable_tqdm=True)
    args.update(per_device_train_batch_size=4, save_strategy="steps", save_steps=1, max_steps=1)
    first = ParallelSFTTrainer(
        lora(tiny_model()), args=ParallelSFTConfig(**args), train_dataset=data, processing_class=processor
    )
    first.train()
    checkpoint = os.path.join(tmp_path, "checkpoint-1")
    dropped = drop_adapter_keys(checkpoint)
    args["max_steps"] = 2
    resumed = ParallelSFTTrainer(
        lora(tiny_model()), args=ParallelSFTConfig(**args), train_dataset=data, processing_class=processor
    )
    with pytest.raises(ValueError, match="2 missing key") as error:
        resumed.train(resume_from_checkpoint=checkpoint)
    assert dropped[0] in str(error.value)


def test_pararl_resume_with_missing_adapter_keys_raises(make_grpo_config, make_trainer, tiny_model, tmp_path):
    model = lora(tiny_model())
    model.save_pretrained(tmp_path / "checkpoint-1")
    drop_adapter_keys(tmp_path / "checkpoint-1", count=1)
    toy = build_toy_dataset("train", num_samples=8, seed=0)
    trainer = make_trainer(
        make_grpo_config(tmp_path),
        lambda completions, **kwargs: [0.0] * len(completions),
        model=model,
        train_dataset=toy,
    )
    with pytest.raises(ValueError, match="1 missing key"):
        trainer._load_from_checkpoint(str(tmp_path / "checkpoint-1"))


def test_full_model_resume_with_a_missing_key_raises(processor, tiny_model, tmp_path):
    model = tiny_model()
    path, state = saved(model, tmp_path)
    state.pop(Q)
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"1 missing key.*{Q}"):
        check_resume_checkpoint(model, tmp_path)
