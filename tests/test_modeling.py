"""Tests of the LLaDA-architecture masked-diffusion model (`pararl.models`)."""

import math
import os

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

from pararl.models import ATTENTION_LORA_TARGETS, MaskedDiffusionConfig, MaskedDiffusionLM, MaskedDiffusionLMOutput


ATTN = ["q_proj", "k_proj", "v_proj", "attn_out"]  # what ATTENTION_LORA_TARGETS must wrap
BLOCK_PARAMS = ["attn_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_norm", "ff_proj", "up_proj", "ff_out"]


def make_model(config: MaskedDiffusionConfig, seed: int = 0) -> MaskedDiffusionLM:
    torch.manual_seed(seed)
    model = MaskedDiffusionLM(config)
    # Norm weights start at 1; randomise them so that a test would notice a norm that is skipped or misplaced.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "ln_f" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def random_ids(config: MaskedDiffusionConfig, *shape: int, seed: int = 1) -> torch.LongTensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.vocab_size, shape, generator=generator)


def reference_logits(model: MaskedDiffusionLM, input_ids: torch.LongTensor) -> torch.Tensor:
    """The architecture written out naively in float64: explicit per-head softmax, complex-number rotary."""
    config = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    head_dim = config.d_model // config.n_heads
    group = config.n_heads // config.n_kv_heads
    length = input_ids.shape[1]

    def rms(x, w):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + config.rms_norm_eps) * w

    half = head_dim // 2
    angles = torch.arange(length, dtype=torch.float64)[:, None] * config.rope_theta ** (
        -torch.arange(half, dtype=torch.float64) * 2 / head_dim
    )
    rotation = torch.polar(torch.ones_like(angles), angles)  # (L, half)

    def rope(x):  # x (L, head_dim): pairs (i, i + half) rotate together
        z = torch.complex(x[:, :half], x[:, half:]) * rotation
        return torch.cat([z.real, z.imag], dim=-1)

    outputs = []
    for ids in input_ids:
        h = sd["model.transformer.wte.weight"][ids]
        for i in range(config.n_layers):
            p = f"model.transformer.blocks.{i}."
            x = rms(h, sd[p + "attn_norm.weight"])
            q, k, v = (x @ sd[p + f"{n}_proj.weight"].T for n in "qkv")
            heads = []
            for head in range(config.n_heads):
                kv = head // group
                qh = rope(q[:, head * head_dim : (head + 1) * head_dim])
                kh = rope(k[:, kv * head_dim : (kv + 1) * head_dim])
                vh = v[:, kv * head_dim : (kv + 1) * head_dim]
                heads.append(torch.softmax(qh @ kh.T / math.sqrt(head_dim), dim=-1) @ vh)
            h = h + torch.cat(heads, dim=-1) @ sd[p + "attn_out.weight"].T
            x = rms(h, sd[p + "ff_norm.weight"])
            gate, up = x @ sd[p + "ff_proj.weight"].T, x @ sd[p + "up_proj.weight"].T
            h = h + (gate * torch.sigmoid(gate) * up) @ sd[p + "ff_out.weight"].T
        h = rms(h, sd["model.transformer.ln_f.weight"])
        head_weight = sd["model.transformer.wte.weight" if config.weight_tying else "model.transformer.ff_out.weight"]
        outputs.append(h @ head_weight.T)
    return torch.stack(outputs)


def test_parameter_names_follow_llada_layout(tiny_config):
    model = MaskedDiffusionLM(tiny_config)
    expected = ["model.transformer.wte.weight"]
    for i in range(tiny_config.n_layers):
        expected += [f"model.transformer.blocks.{i}.{name}.weight" for name in BLOCK_PARAMS]
    expected += ["model.transformer.ln_f.weight", "model.transformer.ff_out.weight"]
    assert [name for name, _ in model.named_parameters()] == expected
    assert list(model.state_dict()) == expected
    shapes = dict(model.named_parameters())
    assert shapes["model.transformer.blocks.0.k_proj.weight"].shape == (16, 32)  # 2 kv heads of width 8
    assert shapes["model.transformer.blocks.0.ff_out.weight"].shape == (32, 64)
    assert shapes["model.transformer.ff_out.weight"].shape == (64, 32)


def test_config_aliases_defaults_and_validation(tiny_config):
    assert tiny_config.hidden_size == 32
    assert tiny_config.num_hidden_layers == 2
    assert tiny_config.num_attention_heads == 4
    assert tiny_config.num_key_value_heads == 2
    assert tiny_config.intermediate_size == 64
    assert tiny_config.max_position_embeddings == 128
    assert tiny_config.embedding_size == 64
    assert MaskedDiffusionConfig(n_heads=8, d_model=64).n_kv_heads == 8
    assert MaskedDiffusionConfig(hidden_size=64, n_heads=4).d_model == 64

    small = dict(vocab_size=64, mlp_hidden_size=64, mask_token_id=4)
    with pytest.raises(ValueError, match="d_model"):
        MaskedDiffusionConfig(d_model=30, n_heads=4, **small)
    with pytest.raises(ValueError, match="n_kv_heads"):
        MaskedDiffusionConfig(d_model=32, n_heads=4, n_kv_heads=3, **small)
    with pytest.raises(ValueError, match="embedding_size"):
        MaskedDiffusionConfig(d_model=32, n_heads=4, embedding_size=32, **small)
    with pytest.raises(ValueError, match="mask_token_id"):
        MaskedDiffusionConfig(d_model=32, n_heads=4, vocab_size=64, mask_token_id=64, mlp_hidden_size=64)
    with pytest.raises(ValueError, match="rotary"):
        MaskedDiffusionConfig(d_model=36, n_heads=4, **small)


def test_forward_matches_naive_reference(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 9)
    logits = model(input_ids).logits
    assert logits.shape == (2, 9, 64)
    torch.testing.assert_close(logits.double(), reference_logits(model, input_ids), atol=1e-5, rtol=1e-5)


def test_output_types_and_shapes(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 3, 10)
    out = model(input_ids)
    assert isinstance(out, MaskedDiffusionLMOutput)
    assert out.loss is None and out.logits.shape == (3, 10, 64)
    assert model.backbone(input_ids).shape == (3, 10, 32)
    positions = torch.tensor([[0, 9], [3, 3], [5, 1]])
    assert model(input_ids, logits_positions=positions).logits.shape == (3, 2, 64)
    assert model(input_ids, logits_positions=torch.tensor([2, 4, 6]), vocab_range=(10, 30)).logits.shape == (3, 3, 20)
    (logits,) = model(input_ids, return_dict=False)
    torch.testing.assert_close(logits, out.logits)
    # TRL's GRPOTrainer writes `model.generation_config.pad_token_id`.
    assert model.generation_config.pad_token_id == tiny_config.pad_token_id
    assert model.get_input_embeddings() is model.model.transformer.wte
    assert model.get_output_embeddings() is model.model.transformer.ff_out


def test_attention_is_bidirectional(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 1, 8)
    changed = input_ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % tiny_config.vocab_size
    first = model(input_ids).logits[0, 0]
    assert not torch.allclose(first, model(changed).logits[0, 0], atol=1e-6)


def test_padding_anywhere_gives_each_sample_its_unpadded_logits(tiny_config):
    model = make_model(tiny_config)
    # Input part and output part per sample; the batch pads each part to its batch maximum, so the shorter input
    # leaves padding in the MIDDLE of the sequence (between input and output) and the shorter output at the end.
    samples = [([1, 10, 11, 12, 13, 2], [4, 4, 20, 4]), ([1, 14, 2], [4, 21, 4, 4, 4, 22])]
    max_in, max_out = (max(len(s[part]) for s in samples) for part in (0, 1))
    rows, masks = [], []
    for pad_id, (inp, out) in zip([0, 37], samples):  # padding content must not matter either
        rows.append(inp + [pad_id] * (max_in - len(inp)) + out + [pad_id] * (max_out - len(out)))
        masks.append([1] * len(inp) + [0] * (max_in - len(inp)) + [1] * len(out) + [0] * (max_out - len(out)))
    input_ids, attention_mask = torch.tensor(rows), torch.tensor(masks)
    assert attention_mask[1].tolist() == [1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1]  # a hole in the middle

    batched = model(input_ids, attention_mask=attention_mask).logits
    for i, (inp, out) in enumerate(samples):
        alone = model(torch.tensor([inp + out])).logits[0]
        real = attention_mask[i].bool()
        torch.testing.assert_close(batched[i, real], alone, atol=1e-5, rtol=0)

    # The default positions are cumsum(mask) - 1: passing them explicitly changes nothing.
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    explicit = model(input_ids, attention_mask=attention_mask, position_ids=positions).logits
    torch.testing.assert_close(explicit, batched, atol=0, rtol=0)


def test_all_padding_row_stays_finite(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 5)
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    logits = model(input_ids, attention_mask=attention_mask).logits
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[0, :3], model(input_ids[:1, :3]).logits[0], atol=1e-5, rtol=0)


def test_positions_and_vocab_range_slice_the_full_logits(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 10)
    attention_mask = torch.tensor([[1] * 10, [1] * 7 + [0] * 3])
    full = model(input_ids, attention_mask=attention_mask).logits
    positions = torch.tensor([[9, 0, 4], [6, 2, 2]])
    sliced = model(input_ids, attention_mask=attention_mask, logits_positions=positions, vocab_range=(5, 41)).logits
    expected = torch.stack([full[b, positions[b], 5:41] for b in range(2)])
    torch.testing.assert_close(sliced, expected, atol=1e-6, rtol=1e-6)
    shared = model(input_ids, attention_mask=attention_mask, logits_positions=torch.tensor([1, 3]), vocab_range=(0, 8))
    torch.testing.assert_close(shared.logits, full[:, [1, 3], :8], atol=1e-6, rtol=1e-6)
    hidden = model.backbone(input_ids, attention_mask=attention_mask)
    torch.testing.assert_close(model.lm_logits(hidden, positions, (5, 41)), sliced, atol=0, rtol=0)

    with pytest.raises(ValueError, match="vocab_range"):
        model(input_ids, vocab_range=(10, 65))
    with pytest.raises(ValueError, match="vocab_range"):
        model(input_ids, vocab_range=(8, 8))
    with pytest.raises(ValueError, match="logits_positions"):
        model(input_ids, logits_positions=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(input_ids, attention_mask=torch.ones(2, 9))


def test_labels_give_mean_cross_entropy(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 6)
    labels = torch.full((2, 6), -100)
    labels[0, 1], labels[0, 4], labels[1, 0] = 17, 30, 25
    out = model(input_ids, labels=labels)
    logits = out.logits
    expected = (
        -(logits[0, 1].log_softmax(-1)[17] + logits[0, 4].log_softmax(-1)[30] + logits[1, 0].log_softmax(-1)[25]) / 3
    )
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-6)

    # (B, L) labels with positions and a vocabulary slice: targets are full-vocabulary ids.
    positions = torch.tensor([[1, 4], [0, 2]])
    sliced = model(input_ids, logits_positions=positions, vocab_range=(16, 32), labels=labels)
    lp = sliced.logits.log_softmax(-1)
    expected = -(lp[0, 0, 17 - 16] + lp[0, 1, 30 - 16] + lp[1, 0, 25 - 16]) / 3
    torch.testing.assert_close(sliced.loss, expected, atol=1e-6, rtol=1e-6)
    loss, _ = model(input_ids, logits_positions=positions, vocab_range=(16, 32), labels=labels, return_dict=False)
    torch.testing.assert_close(loss, sliced.loss)
    with pytest.raises(ValueError, match="vocab_range"):
        model(input_ids, logits_positions=positions, vocab_range=(20, 32), labels=labels)


def test_grouped_kv_heads_equal_repeated_multi_head(tiny_config):
    gqa = make_model(tiny_config)
    mha_config = MaskedDiffusionConfig(**{**tiny_config.to_dict(), "n_kv_heads": 4})
    mha = MaskedDiffusionLM(mha_config).eval()
    head_dim = 8
    state = {}
    for name, value in gqa.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            # Query head h reads kv head h // 2: repeat each kv head's rows twice, in place.
            value = value.view(2, head_dim, -1).repeat_interleave(2, dim=0).reshape(4 * head_dim, -1)
        state[name] = value
    mha.load_state_dict(state)
    input_ids = random_ids(tiny_config, 2, 7)
    torch.testing.assert_close(mha(input_ids).logits, gqa(input_ids).logits, atol=1e-5, rtol=1e-5)


def test_weight_tying_reuses_the_embedding(tiny_config):
    config = MaskedDiffusionConfig(**{**tiny_config.to_dict(), "weight_tying": True})
    model = make_model(config)
    assert "ff_out" not in model.model.transformer
    assert not any(name == "model.transformer.ff_out.weight" for name, _ in model.named_parameters())
    assert model.get_output_embeddings() is None
    input_ids = random_ids(config, 2, 6)
    hidden = model.backbone(input_ids)
    wte = model.model.transformer.wte.weight
    torch.testing.assert_close(model(input_ids).logits, F.linear(hidden, wte), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        model(input_ids, vocab_range=(3, 9)).logits, F.linear(hidden, wte[3:9]), atol=1e-6, rtol=1e-6
    )
    torch.testing.assert_close(model(input_ids).logits.double(), reference_logits(model, input_ids), atol=1e-5, rtol=0)


def test_padded_embedding_rows(tiny_config):
    config = MaskedDiffusionConfig(**{**tiny_config.to_dict(), "embedding_size": 72})
    model = make_model(config)
    assert model.model.transformer.wte.weight.shape == (72, 32)
    assert model.model.transformer.ff_out.weight.shape == (72, 32)
    assert model(random_ids(config, 1, 4)).logits.shape == (1, 4, 72)


def test_save_and_load_round_trip(tiny_config, tmp_path):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 6)
    expected = model(input_ids).logits
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "model.safetensors" in files and "config.json" in files
    assert not any(f.endswith((".bin", ".pt")) for f in files)

    loaded = MaskedDiffusionLM.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(input_ids).logits, expected, atol=0, rtol=0)
    assert loaded.config.architectures == ["MaskedDiffusionLM"]

    assert isinstance(AutoConfig.from_pretrained(tmp_path), MaskedDiffusionConfig)
    for auto_class in (AutoModelForMaskedLM, AutoModel):
        auto = auto_class.from_pretrained(tmp_path).eval()
        assert type(auto) is MaskedDiffusionLM
        torch.testing.assert_close(auto(input_ids).logits, expected, atol=0, rtol=0)


def _lora_modules(peft_model) -> set[str]:
    prefix = "base_model.model."
    return {name.removeprefix(prefix) for name, m in peft_model.named_modules() if isinstance(m, LoraLayer)}


def test_lora_wraps_named_modules_and_trains_only_adapters(tiny_config):
    model = make_model(tiny_config).train()
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=ATTENTION_LORA_TARGETS))
    expected = {f"model.transformer.blocks.{i}.{name}" for i in range(2) for name in ATTN}
    assert _lora_modules(peft_model) == expected

    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    input_ids = random_ids(tiny_config, 2, 6)
    peft_model(input_ids, labels=input_ids).loss.backward()
    optimizer.step()
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_B" in name for name in changed)


def test_lora_regex_covers_mlp_without_the_lm_head(tiny_config):
    model = make_model(tiny_config)
    regex = r".*blocks\.\d+\.(q_proj|k_proj|v_proj|attn_out|ff_proj|up_proj|ff_out)"
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=regex))
    names = ATTN + ["ff_proj", "up_proj", "ff_out"]
    assert _lora_modules(peft_model) == {f"model.transformer.blocks.{i}.{n}" for i in range(2) for n in names}
    input_ids = random_ids(tiny_config, 1, 5)
    logits = peft_model(input_ids, vocab_range=(8, 16)).logits
    assert logits.shape == (1, 5, 8)
    # The rollout calls `backbone` / `lm_logits` directly, also through the PEFT wrapper.
    hidden = peft_model.backbone(input_ids)
    torch.testing.assert_close(peft_model.lm_logits(hidden, vocab_range=(8, 16)), logits, atol=0, rtol=0)


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, use_reentrant):
    model = make_model(tiny_config).train()
    input_ids = random_ids(tiny_config, 2, 7)
    attention_mask = torch.tensor([[1] * 7, [1] * 3 + [0] * 2 + [1] * 2])

    calls = []
    model.model.transformer.blocks[0].ff_proj.register_forward_hook(lambda *args: calls.append(1))

    def grads():
        model.zero_grad()
        model(input_ids, attention_mask=attention_mask, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain = grads()
    assert len(calls) == 1
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
    assert all(block.gradient_checkpointing for block in model.model.transformer.blocks)
    checkpointed = grads()
    assert len(calls) == 3  # the forward, then its replay during backward
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_bfloat16_and_autocast(tiny_config):
    model = make_model(tiny_config)
    input_ids = random_ids(tiny_config, 2, 6)
    attention_mask = torch.tensor([[1] * 6, [1, 1, 0, 1, 1, 0]])
    reference = model(input_ids, attention_mask=attention_mask).logits

    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(input_ids, attention_mask=attention_mask).logits
    assert torch.isfinite(autocast).all()
    assert (autocast.float() - reference).abs().max() < 0.05

    bf16 = make_model(tiny_config).to(torch.bfloat16)
    logits = bf16(input_ids, attention_mask=attention_mask, labels=input_ids)
    assert logits.logits.dtype == torch.bfloat16 and logits.loss.dtype == torch.float32
    assert (logits.logits.float() - reference).abs().max() < 0.05


def test_lora_with_reentrant_checkpointing_reaches_every_adapter(tiny_config):
    # TRL enables reentrant checkpointing; with a frozen base the block inputs must still require grad, or the
    # adapters of checkpointed blocks silently get no gradient.
    model = make_model(tiny_config).train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=ATTENTION_LORA_TARGETS))
    input_ids = random_ids(tiny_config, 2, 6)
    peft_model(input_ids, labels=input_ids).loss.backward()
    lora_b = {name: p.grad for name, p in peft_model.named_parameters() if "lora_B" in name}
    assert len(lora_b) == 8
    assert all(grad is not None and grad.abs().sum() > 0 for grad in lora_b.values())


@pytest.mark.parametrize("weight_tying", [False, True])
def test_resize_token_embeddings_keeps_sliced_head(tiny_config, weight_tying):
    config = MaskedDiffusionConfig(**{**tiny_config.to_dict(), "weight_tying": weight_tying})
    model = make_model(config)
    input_ids = random_ids(config, 1, 5)
    before = model(input_ids).logits
    model.resize_token_embeddings(80, mean_resizing=False)
    assert model.config.vocab_size == model.config.embedding_size == 80
    assert model.model.transformer.wte.weight.shape == (80, 32)
    after = model(input_ids, vocab_range=(0, 70)).logits
    assert after.shape == (1, 5, 70)
    torch.testing.assert_close(after[..., :64], before, atol=1e-6, rtol=1e-6)
