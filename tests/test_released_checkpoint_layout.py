"""Real-checkpoint loading, checked offline on synthetic checkpoints that have the released layouts at tiny sizes.

What the layouts are, from the released MMaDA-Parallel code and checkpoints:
- MMaDA / LLaDA `config.json`: LLaDA field names, `model_type` "mmada" or "llada"; weights
  `model.transformer.{wte,blocks.N.{attn_norm,q_proj,k_proj,v_proj,attn_out,ff_norm,ff_proj,up_proj,ff_out},ln_f,ff_out}`
  in `model-0000K-of-0000N.safetensors` shards listed by `model.safetensors.index.json`.
- MAGVIT-v2 (`showlab/magvitv2`): `config.json` with only the class name, `pytorch_model.safetensors` with
  `encoder.* / decoder.* / quantize.*` keys of a taming-style VQGAN.
- aMUSEd VQ (MMaDA-Parallel-A): diffusers `VQModel` in the checkpoint's `vqvae/` subfolder.
- Sequence templates (M: `<|interleave|> <|soi|> img <|eoi|> BOS text EOS`; A: the
  `<system>...</system><user>...</user>` prompt with the image before its last token, and
  `BOA BOI rows+newline EOI text </answer>` as the output).
"""

import json
import os
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pararl.image_tokenizers import MAGVIT2Config, MAGVIT2ImageTokenizer, PaletteImageTokenizer, tensor_to_images
from pararl.models import (
    MaskedDiffusionConfig,
    MaskedDiffusionLM,
    config_from_released,
    is_released_checkpoint,
    load_released_checkpoint,
)
from pararl.processing import MMADA_PARALLEL_A, MMADA_PARALLEL_M, ParallelProcessor
from pararl.released import load_text_tokenizer


# ============================================================================================ released LLaDA / MMaDA
TINY = dict(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=48, embedding_size=128)


def released_config(model_type="mmada", **changes):
    """A config.json with every field of the released MMaDA-Parallel-M config, at tiny sizes."""
    config = {
        "_name_or_path": "/somewhere/MMaDA0000",
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["MMadaModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": "modeling_llada.LLaDAModelLM",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "codebook_size": 32,
        "d_model": TINY["d_model"],
        "embedding_dropout": 0.0,
        "embedding_size": TINY["embedding_size"],
        "eos_token_id": 91,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "llm_vocab_size": 96,
        "mask_token_id": 90,
        "max_sequence_length": 256,
        "mlp_hidden_size": TINY["mlp_hidden_size"],
        "mlp_ratio": 4,
        "model_type": model_type,
        "multi_query_attention": None,
        "n_heads": TINY["n_heads"],
        "n_kv_heads": TINY["n_kv_heads"],
        "n_layers": TINY["n_layers"],
        "new_vocab_size": 128,
        "num_new_special_tokens": 0,
        "num_vq_tokens": 256,
        "pad_token_id": 91,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": 500000.0,
        "scale_logits": False,
        "torch_dtype": "float32",
        "transformers_version": "4.46.0",
        "use_cache": False,
        "vocab_size": 96,
        "weight_tying": False,
    }
    config.update(changes)
    return config


def released_weights(config, seed=0):
    """Weights under the released key names, shapes written out from the LLaDA llama block (not from pararl)."""
    generator = torch.Generator().manual_seed(seed)
    d, e, h = config["d_model"], config["embedding_size"], config["mlp_hidden_size"]
    kv = config["n_kv_heads"] * (d // config["n_heads"])
    shapes = {"model.transformer.wte.weight": (e, d), "model.transformer.ln_f.weight": (d,)}
    for i in range(config["n_layers"]):
        block = f"model.transformer.blocks.{i}."
        shapes.update(
            {
                block + "attn_norm.weight": (d,),
                block + "q_proj.weight": (d, d),
                block + "k_proj.weight": (kv, d),
                block + "v_proj.weight": (kv, d),
                block + "attn_out.weight": (d, d),
                block + "ff_norm.weight": (d,),
                block + "ff_proj.weight": (h, d),
                block + "up_proj.weight": (h, d),
                block + "ff_out.weight": (d, h),
            }
        )
    if not config["weight_tying"]:
        shapes["model.transformer.ff_out.weight"] = (e, d)
    return {key: torch.randn(shape, generator=generator) * 0.05 for key, shape in shapes.items()}


def write_released(directory, config=None, weights=None, shards=2):
    """Writes config.json, generation_config.json and `shards` safetensors shards with a model.safetensors.index.json."""
    config = config if config is not None else released_config()
    weights = weights if weights is not None else released_weights(config)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(directory, "generation_config.json"), "w") as f:
        json.dump({"_from_model_config": True, "bos_token_id": 89, "eos_token_id": 91}, f)
    keys = sorted(weights)
    weight_map = {}
    for k in range(shards):
        name = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {key: weights[key].contiguous() for key in keys[k::shards]}
        save_file(part, os.path.join(directory, name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(w.numel() * 4 for w in weights.values())}, "weight_map": weight_map}
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    return weights


def test_released_config_maps_onto_masked_diffusion_config():
    config = config_from_released(released_config(), {"bos_token_id": 89})
    assert isinstance(config, MaskedDiffusionConfig)
    assert (config.d_model, config.n_layers, config.n_heads, config.n_kv_heads) == (32, 2, 4, 2)
    assert (config.mlp_hidden_size, config.embedding_size, config.max_sequence_length) == (48, 128, 256)
    # mmada: the usable ids are text + image codes (new_vocab_size), not the LLM's 96.
    assert config.vocab_size == 128
    assert (config.mask_token_id, config.eos_token_id, config.pad_token_id, config.bos_token_id) == (90, 91, 91, 89)
    assert (config.rope_theta, config.rms_norm_eps, config.weight_tying, config.include_bias) == (
        500000.0,
        1e-5,
        False,
        False,
    )
    # llada: vocab_size as given; mlp_hidden_size from mlp_ratio when absent; n_kv_heads None -> n_heads.
    raw = released_config("llada", vocab_size=120, mlp_hidden_size=None, n_kv_heads=None, new_vocab_size=None)
    config = config_from_released(raw)
    assert (config.vocab_size, config.mlp_hidden_size, config.n_kv_heads, config.bos_token_id) == (120, 128, 4, None)
    # Lumina-DiMOO style: image codes after `text_vocab_size`; the usable ids never exceed the embedding.
    raw = released_config("llada", vocab_size=96, new_vocab_size=None, text_vocab_size=92, codebook_size=32)
    assert config_from_released(raw).vocab_size == 124
    assert config_from_released({**raw, "codebook_size": 64}).vocab_size == 128


def test_full_size_mmada_parallel_m_config():
    # The released MMaDA-Parallel-M config values, mapped without building anything.
    raw = released_config(
        d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288, embedding_size=134656,
        llm_vocab_size=126464, new_vocab_size=134656, codebook_size=8192, vocab_size=126464,
        mask_token_id=126336, eos_token_id=126081, pad_token_id=126081, max_sequence_length=4096,
    )  # fmt: skip
    config = config_from_released(raw, {"bos_token_id": 126080, "eos_token_id": 126081})
    assert config.vocab_size == config.embedding_size == 134656
    assert config.vocab_size >= MMADA_PARALLEL_M.image_vocab_range[1]
    assert (config.bos_token_id, config.mask_token_id) == (126080, 126336)


def test_unsupported_released_switches_are_listed():
    raw = released_config(block_type="sequential", layer_norm_type="default", rope=False)
    with pytest.raises(ValueError) as error:
        config_from_released(raw)
    message = str(error.value)
    for fragment in ("block_type='sequential'", "layer_norm_type='default'", "rope=False"):
        assert fragment in message
    with pytest.raises(ValueError, match="model_type is 'masked_diffusion'"):
        config_from_released({**released_config(), "model_type": "masked_diffusion"})
    with pytest.raises(ValueError, match="required size field"):
        config_from_released({k: v for k, v in released_config().items() if k != "d_model"})


def test_load_sharded_released_checkpoint(tmp_path):
    directory = tmp_path / "MMaDA-Parallel-M"
    weights = write_released(directory)
    assert is_released_checkpoint(directory)
    assert sorted(os.listdir(directory)) == [
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    model = MaskedDiffusionLM.from_pretrained(directory)
    state = model.state_dict()
    assert set(state) == set(weights)
    assert all(torch.equal(state[key], value) for key, value in weights.items())
    assert model.config.model_type == "masked_diffusion" and model.config.bos_token_id == 89
    input_ids = torch.tensor([[1, 2, 90, 90, 100]])
    logits = model(input_ids).logits
    assert logits.shape == (1, 5, 128) and torch.isfinite(logits).all()

    # bf16 loading and saving in pararl's own format round-trip exactly.
    half = load_released_checkpoint(directory, dtype=torch.bfloat16)
    assert half.model.transformer.wte.weight.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "saved")
    reloaded = MaskedDiffusionLM.from_pretrained(tmp_path / "saved")
    assert torch.equal(reloaded(input_ids).logits, logits)


def test_tied_single_file_llada_checkpoint(tmp_path):
    config = released_config("llada", weight_tying=True)
    weights = released_weights(config)
    os.makedirs(tmp_path / "llada")
    with open(tmp_path / "llada" / "config.json", "w") as f:
        json.dump(config, f)
    save_file(weights, str(tmp_path / "llada" / "model.safetensors"), metadata={"format": "pt"})
    model = MaskedDiffusionLM.from_pretrained(tmp_path / "llada")
    assert model.config.weight_tying and "model.transformer.ff_out.weight" not in model.state_dict()
    assert torch.equal(model.model.transformer.wte.weight, weights["model.transformer.wte.weight"])


@pytest.mark.parametrize(
    "break_it, fragments",
    [
        (
            lambda w: w.pop("model.transformer.blocks.1.up_proj.weight"),
            ["1 missing key(s)", "blocks.1.up_proj.weight"],
        ),
        (
            lambda w: w.__setitem__("model.transformer.blocks.0.k_proj.weight", torch.zeros(32, 32)),
            ["1 wrong shape(s)", "blocks.0.k_proj.weight: checkpoint (32, 32) vs model (16, 32)"],
        ),
        (
            lambda w: w.__setitem__("model.transformer.blocks.0.q_norm.weight", torch.ones(32)),
            ["1 unexpected key(s)", "blocks.0.q_norm.weight"],
        ),
    ],
    ids=["missing", "shape", "unexpected"],
)
def test_broken_released_checkpoint_is_refused(tmp_path, break_it, fragments):
    config = released_config()
    weights = released_weights(config)
    break_it(weights)
    write_released(tmp_path / "broken", config, weights)
    with pytest.raises(ValueError) as error:
        MaskedDiffusionLM.from_pretrained(tmp_path / "broken")
    for fragment in fragments:
        assert fragment in str(error.value)
    assert "Nothing was loaded" in str(error.value)


def test_missing_shard_and_missing_weights(tmp_path):
    write_released(tmp_path / "ckpt")
    index_path = tmp_path / "ckpt" / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    moved = "model.transformer.ln_f.weight"
    other = {"model-00001-of-00002.safetensors": "model-00002-of-00002.safetensors"}
    index["weight_map"][moved] = other.get(index["weight_map"][moved], "model-00001-of-00002.safetensors")
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"maps 1 key\(s\) to shards that do not hold them: \[model.transformer.ln_f"):
        MaskedDiffusionLM.from_pretrained(tmp_path / "ckpt")
    os.remove(tmp_path / "ckpt" / "model-00002-of-00002.safetensors")
    with pytest.raises(FileNotFoundError, match="model-00002-of-00002.safetensors"):
        MaskedDiffusionLM.from_pretrained(tmp_path / "ckpt")
    os.makedirs(tmp_path / "empty")
    with open(tmp_path / "empty" / "config.json", "w") as f:
        json.dump(released_config(), f)
    with pytest.raises(FileNotFoundError, match="no weights"):
        MaskedDiffusionLM.from_pretrained(tmp_path / "empty")


# ================================================================================= LLaDA-like text tokenizers
# LLaDA ids: BOS <|startoftext|> 126080, EOS <|endoftext|> 126081, [MASK] 126336. The M tokenizer
# has len 126349 (= MMaDA's image-token offset, `len(text_tokenizer)`); A's covers Lumina-DiMOO's ids up to 126355.
LLADA_SPECIALS = {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>"}
WORDS = (
    "make the sky red so it becomes a sunset . Generate an image applying following editing instruction based on "
    "original according to text prompt"
).split()
A_TAGS = ["<system>", "</system>", "<user>", "</user>", "<uncondition>", "</answer>"]
WORD_ID = {word: 1000 + i for i, word in enumerate(dict.fromkeys(WORDS))}
TAG_ID = {tag: 2000 + i for i, tag in enumerate(A_TAGS)}


def fake_llada_tokenizer(size, with_mask_token=True):
    """A WordLevel tokenizer with LLaDA's special ids, placeholder tokens elsewhere, BOS added like LLaDA's."""
    tokens = [f"<|placeholder_{i}|>" for i in range(size)]
    for table in (LLADA_SPECIALS, {i: w for w, i in WORD_ID.items()}, {i: t for t, i in TAG_ID.items()}):
        for i, token in table.items():
            tokens[i] = token
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token=tokens[0]))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.add_tokens([AddedToken(tag, normalized=False) for tag in A_TAGS])
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", 126080)]
    )
    extra = {"mask_token": "<|mdm_mask|>"} if with_mask_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|startoftext|>", eos_token="<|endoftext|>", unk_token=tokens[0], **extra
    )


@pytest.fixture(scope="module")
def m_tokenizer():
    return fake_llada_tokenizer(126349)


@pytest.fixture(scope="module")
def a_tokenizer():
    return fake_llada_tokenizer(126356)


def ids(text):
    return [WORD_ID[word] for word in text.split()]


def vq_stub():
    # Any ImageTokenizer with a 32x32 grid and 8192 codes: the templates only see code grids.
    palette = [(i % 256, (i // 256) % 256, i // 65536) for i in range(8192)]
    return PaletteImageTokenizer(palette, grid_shape=(32, 32), cell_size=1)


def test_load_text_tokenizer_from_folder(tmp_path, m_tokenizer):
    fake_llada_tokenizer(126349, with_mask_token=False).save_pretrained(tmp_path / "tok")
    tokenizer = load_text_tokenizer(tmp_path / "tok", preset=MMADA_PARALLEL_M)
    assert len(tokenizer) == MMADA_PARALLEL_M.image_token_offset == 126349
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.mask_token_id) == (126080, 126081, 126336)
    assert tokenizer("make the sky red")["input_ids"] == [126080, *ids("make the sky red")]
    with pytest.raises(ValueError, match="uses special ids up to 126354"):
        load_text_tokenizer(tmp_path / "tok", preset=MMADA_PARALLEL_A)
    with pytest.raises(FileNotFoundError, match="not a local folder"):
        load_text_tokenizer(tmp_path / "nowhere")


# ============================================================================== presets vs released templates
INSTRUCTION, REASONING = "make the sky red", "so it becomes a sunset ."


def code_grid(seed=0):
    return torch.randint(0, 8192, (32, 32), generator=torch.Generator().manual_seed(seed))


def test_m_preset_matches_released_inference_and_training_layouts(m_tokenizer):
    codes = code_grid()
    image = [126349 + c for c in codes.flatten().tolist()]  # code + len(text tokenizer)
    INTERLEAVE, SOI, EOI, BOS, EOS, MASK = 126095, 126084, 126085, 126080, 126081, 126336

    # Released inference.py: <|interleave|> <|soi|> codes <|eoi|> BOS instruction EOS, no padding.
    inference = ParallelProcessor(m_tokenizer, vq_stub(), replace(MMADA_PARALLEL_M, pad_prompt_to_max=False))
    prompt = inference.encode_prompts([INSTRUCTION], images=[codes])
    assert prompt["input_ids"][0].tolist() == [INTERLEAVE, SOI, *image, EOI, BOS, *ids(INSTRUCTION), EOS]
    # Released interleave_generate: <|soi|> 1024 MASK <|eoi|> BOS, then max_seq_length - 1 = 255 MASK.
    assert inference.masked_outputs(1)[0].tolist() == [SOI] + [MASK] * 1024 + [EOI, BOS] + [MASK] * 255
    # Unconditional row of inference.py: the same image slots, text "" -> BOS EOS.
    uncond = inference.encode_prompts([INSTRUCTION], images=[codes], drop_prompt=[True])
    assert uncond["input_ids"][0].tolist() == [INTERLEAVE, SOI, *image, EOI, BOS, EOS]

    # Released training (train_interleave.py): the text part (BOS..EOS) EOS-padded to max_text_len = 256, and the
    # output text BOS reasoning EOS, EOS-padded to 256.
    training = ParallelProcessor(m_tokenizer, vq_stub(), MMADA_PARALLEL_M)
    prompt = training.encode_prompts([INSTRUCTION], images=[codes])["input_ids"][0].tolist()
    text = [BOS, *ids(INSTRUCTION), EOS]
    assert prompt == [INTERLEAVE, SOI, *image, EOI, *text, *[EOS] * (256 - len(text))]
    assert len(prompt) == 3 + 1024 + 256
    target = training.encode_outputs([REASONING], [codes])[0].tolist()
    out_text = [BOS, *ids(REASONING), EOS]
    assert target == [SOI, *image, EOI, *out_text, *[EOS] * (256 - len(out_text))]
    assert training.decode_text(torch.tensor([target])) == [REASONING]


def test_a_preset_matches_released_inference_layout(a_tokenizer):
    codes = code_grid(1)
    rows = codes.tolist()
    NEWLINE, BOI, EOI, BOA, MASK = 126084, 126349, 126350, 126354, 126336
    image = [token for row in rows for token in [126356 + c for c in row] + [NEWLINE]]
    system = ids("Generate an image applying the following editing instruction based on the original image .")
    tag = TAG_ID

    processor = ParallelProcessor(a_tokenizer, vq_stub(), MMADA_PARALLEL_A)
    # inference.py: tokenizer("<system>S</system><user>P</user>") with the image span before the last token.
    prompt_ids = [126080, tag["<system>"], *system, tag["</system>"], tag["<user>"], *ids(INSTRUCTION), tag["</user>"]]
    expected = prompt_ids[:-1] + [BOI, *image, EOI] + prompt_ids[-1:]
    assert processor.encode_prompts([INSTRUCTION], images=[codes])["input_ids"][0].tolist() == expected
    # Output: [BOA] [BOI] 32 rows x (32 MASK + newline) [EOI] 256 MASK tokens("</answer>").
    masked = [BOA, BOI, *([MASK] * 32 + [NEWLINE]) * 32, EOI, *[MASK] * 256, tag["</answer>"]]
    assert processor.masked_outputs(1)[0].tolist() == masked
    assert len(masked) == 1 + 1 + 32 * 33 + 1 + 256 + 1

    # Guidance rows: uncon_text = "<uncondition>" instruction with the image; uncon_image = the prompt alone.
    batch = processor.encode_prompts(
        [INSTRUCTION] * 2, images=[codes] * 2, drop_prompt=[True, False], drop_image=[False, True]
    )
    uncond_text = [
        126080,
        tag["<system>"],
        *system,
        tag["</system>"],
        tag["<user>"],
        tag["<uncondition>"],
        tag["</user>"],
    ]
    assert batch["input_ids"][0].tolist() == uncond_text[:-1] + [BOI, *image, EOI] + uncond_text[-1:]
    assert batch["input_ids"][1, : len(prompt_ids)].tolist() == prompt_ids
    assert batch["attention_mask"][1].sum() == len(prompt_ids)

    # Text-to-image uses the generation system prompt and no image.
    generate = processor.encode_prompts([INSTRUCTION])["input_ids"][0].tolist()
    system_gen = ids("Generate an image according to the text prompt .")
    assert generate == [
        126080,
        tag["<system>"],
        *system_gen,
        tag["</system>"],
        tag["<user>"],
        *ids(INSTRUCTION),
        tag["</user>"],
    ]

    # SFT targets keep the layout; image codes and the reasoning decode back.
    target = processor.encode_outputs([REASONING], [codes])
    assert target[0, -1] == tag["</answer>"] and target[0, 1] == BOI
    assert torch.equal(processor.image_codes(target)[0], codes)
    assert processor.decode_text(target) == [REASONING]


def test_load_released_processor_m(tmp_path, m_tokenizer, monkeypatch):
    from pararl.released import load_released_processor, mmada_parallel_m_processor

    write_released(tmp_path / "M")
    m_tokenizer.save_pretrained(tmp_path / "M")
    # A MAGVIT-v2 with the release's bits (13 -> 8192 codes) and a 2x downsampling: 64 px -> the 32x32 grid.
    magvit = MAGVIT2ImageTokenizer(
        tiny_magvit_config(image_size=64, encoder_ch_mult=(1, 1), encoder_num_res_blocks=(1, 1),
                           decoder_ch_mult=(1, 1), decoder_num_res_blocks=(1, 1), z_channels=13)
    )  # fmt: skip
    magvit.save_pretrained(tmp_path / "magvitv2")
    with pytest.raises(ValueError, match="needs the MAGVIT-v2 weights"):
        load_released_processor(tmp_path / "M")
    processor = load_released_processor(tmp_path / "M", tmp_path / "magvitv2")
    assert processor.preset is MMADA_PARALLEL_M and len(processor.tokenizer) == 126349
    assert processor.image_tokenizer.grid_shape == (32, 32) and processor.image_tokenizer.image_size == (64, 64)
    image = tensor_to_images(torch.rand(1, 3, 64, 64))[0]
    codes = magvit.encode([image])[0]
    prompt = processor.encode_prompts([INSTRUCTION], images=[image])["input_ids"][0]
    assert prompt[2 : 2 + 1024].tolist() == (codes.flatten() + 126349).tolist()
    # The argument-free form of the example scripts' --processor option reads the folders from the environment.
    monkeypatch.delenv("PARARL_IMAGE_TOKENIZER_PATH", raising=False)
    monkeypatch.setenv("PARARL_MODEL_PATH", str(tmp_path / "M"))
    with pytest.raises(ValueError, match="set PARARL_IMAGE_TOKENIZER_PATH"):
        mmada_parallel_m_processor()
    monkeypatch.setenv("PARARL_IMAGE_TOKENIZER_PATH", str(tmp_path / "magvitv2"))
    assert mmada_parallel_m_processor().preset is MMADA_PARALLEL_M


def test_load_released_processor_a(tmp_path, a_tokenizer):
    from pararl.released import load_released_processor

    write_released(tmp_path / "A", released_config("llada"))
    a_tokenizer.save_pretrained(tmp_path / "A")
    tiny_vq_model(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, num_vq_embeddings=8192).save_pretrained(tmp_path / "A" / "vqvae")  # fmt: skip
    processor = load_released_processor(tmp_path / "A")
    assert processor.preset is MMADA_PARALLEL_A
    assert processor.image_tokenizer.grid_shape == (32, 32) and processor.image_tokenizer.codebook_size == 8192
    ids = processor.encode_prompts([INSTRUCTION], images=[tensor_to_images(torch.rand(1, 3, 64, 64))[0]])["input_ids"]
    assert ids[0, -1] == TAG_ID["</user>"] and (ids[0] == 126084).sum() == 32


# ========================================================================================================= MAGVIT-v2
def tiny_magvit_config(**changes):
    values = dict(
        image_size=32, ch=8, encoder_ch_mult=(1, 2, 2), encoder_num_res_blocks=(1, 2, 1), decoder_ch_mult=(1, 1, 2),
        decoder_num_res_blocks=(2, 1, 1), attn_resolutions=(16,), resolution=32, z_channels=6, norm_num_groups=4,
    )  # fmt: skip
    values.update(changes)
    return MAGVIT2Config(**values)


def test_magvit2_default_is_the_released_architecture():
    with torch.device("meta"):
        tokenizer = MAGVIT2ImageTokenizer()
    shapes = {key: tuple(value.shape) for key, value in tokenizer.state_dict().items()}
    # 95,387,004 float32 parameters = 381.5 MB: the size of showlab/magvitv2's pytorch_model.safetensors (382 MB).
    assert sum(value.numel() for value in tokenizer.state_dict().values()) == 95_387_004
    assert len(shapes) == 380
    released = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down.0.block.3.conv2.weight": (128, 128, 3, 3),
        "encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "encoder.down.3.downsample.conv.weight": (512, 512, 3, 3),
        "encoder.down.4.block.3.norm2.weight": (512,),
        "encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "encoder.mid.block_2.conv1.weight": (512, 512, 3, 3),
        "encoder.norm_out.weight": (512,),
        "encoder.conv_out.weight": (13, 512, 3, 3),
        "encoder.quant_conv.weight": (13, 13, 1, 1),
        "decoder.post_quant_conv.weight": (13, 13, 1, 1),
        "decoder.conv_in.weight": (512, 13, 3, 3),
        "decoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "decoder.up.4.block.2.conv1.weight": (512, 512, 3, 3),
        "decoder.up.3.block.0.nin_shortcut.weight": (256, 512, 1, 1),
        "decoder.up.1.upsample.conv.weight": (128, 128, 3, 3),
        "decoder.up.0.block.3.conv2.weight": (128, 128, 3, 3),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    assert {key: shapes.get(key) for key in released} == released
    # No level attention (attn_resolutions (5,) matches no level), no downsample after the last encoder level, no
    # upsample at decoder level 0.
    assert not any(".attn." in key for key in shapes)
    assert "encoder.down.4.downsample.conv.weight" not in shapes and "decoder.up.0.upsample.conv.weight" not in shapes
    assert (tokenizer.codebook_size, tokenizer.grid_shape, tokenizer.image_size) == (8192, (32, 32), (512, 512))
    # The released config.json names only the class: the defaults are the architecture.
    assert MAGVIT2Config.from_dict({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1"}) == MAGVIT2Config()


def test_lookup_free_quantisation_bit_order():
    tokenizer = MAGVIT2ImageTokenizer(tiny_magvit_config(z_channels=4))
    quantizer = tokenizer.quantize
    # Channel 0 is the most significant bit: signs (+, -, -, +) -> 0b1001 = 9; (-, +, +, +) -> 0b0111 = 7.
    latents = torch.tensor([[0.3, -1.0, -0.2, 2.0], [-0.1, 0.5, 0.2, 1.0]]).T.reshape(1, 4, 1, 2)
    assert quantizer.codes(latents).tolist() == [[[9, 7]]]
    assert quantizer.vectors(torch.tensor([[[9, 7]]]))[0, :, 0, :].T.tolist() == [[1, -1, -1, 1], [-1, 1, 1, 1]]
    table = quantizer.codebook()
    assert table.shape == (16, 4) and table[9].tolist() == [1, -1, -1, 1]
    assert torch.equal(quantizer.codes(table.T.reshape(1, 4, 4, 4)).flatten(), torch.arange(16))


def test_magvit2_encode_decode_and_released_style_checkpoint(tmp_path):
    torch.manual_seed(0)
    tokenizer = MAGVIT2ImageTokenizer(tiny_magvit_config())
    assert (tokenizer.codebook_size, tokenizer.grid_shape, tokenizer.image_size) == (64, (8, 8), (32, 32))
    assert any(".attn.0.q.weight" in key for key in tokenizer.state_dict())  # level attention at resolution 16
    pixels = torch.rand(2, 3, 32, 32)
    codes = tokenizer.encode(pixels)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long and 0 <= codes.min() and codes.max() < 64
    images = tokenizer.decode(codes)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    tokenizer.max_batch_size = 1  # chunked calls give the same result
    assert torch.equal(tokenizer.encode(pixels), codes) and torch.allclose(tokenizer.decode(codes), images, atol=1e-5)
    # PIL images of another size are squashed (bicubic resize) to image_size.
    big = tensor_to_images(torch.nn.functional.interpolate(pixels, size=(48, 40)))
    assert tokenizer.encode(big).shape == (2, 8, 8)

    # Released layout: config.json with the class name (+ tiny sizes here), pytorch_model.safetensors holding the
    # LFQ buffers `quantize.embedding` (+-1 bit table) and `quantize.power_vals` besides encoder/decoder weights.
    folder = tmp_path / "magvitv2"
    os.makedirs(folder)
    sizes = {k: v for k, v in tiny_magvit_config().to_dict().items() if not k.startswith("_") and k != "image_size"}
    with open(folder / "config.json", "w") as f:
        json.dump({"_class_name": "MAGVITv2", "_diffusers_version": "0.30.1", **sizes}, f)
    state = {key: value.clone() for key, value in tokenizer.state_dict().items()}
    bits = 6
    powers = 2 ** torch.arange(bits - 1, -1, -1)
    state["quantize.embedding"] = ((torch.arange(64).unsqueeze(1) // powers) % 2).float() * 2 - 1
    state["quantize.power_vals"] = powers
    save_file(state, str(folder / "pytorch_model.safetensors"), metadata={"format": "pt"})
    loaded = MAGVIT2ImageTokenizer.from_pretrained(folder, image_size=32)
    assert torch.equal(loaded.encode(pixels), codes)
    assert torch.equal(loaded.decode(codes), images)

    # Another bit order in the stored buffers is refused.
    save_file({**state, "quantize.power_vals": powers.flip(0)}, str(folder / "pytorch_model.safetensors"))
    with pytest.raises(ValueError, match="another code order"):
        MAGVIT2ImageTokenizer.from_pretrained(folder, image_size=32)

    # pararl's own save_pretrained round-trips.
    tokenizer.save_pretrained(tmp_path / "saved")
    assert torch.equal(MAGVIT2ImageTokenizer.from_pretrained(tmp_path / "saved").encode(pixels), codes)


def test_broken_magvit2_checkpoints(tmp_path):
    tokenizer = MAGVIT2ImageTokenizer(tiny_magvit_config())
    tokenizer.save_pretrained(tmp_path / "ok")
    state = tokenizer.state_dict()
    broken = {key: value for key, value in state.items() if key != "decoder.up.1.upsample.conv.weight"}
    broken["encoder.conv_out.weight"] = torch.zeros(5, 16, 3, 3)
    broken["encoder.extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "ok" / "pytorch_model.safetensors"))
    with pytest.raises(ValueError) as error:
        MAGVIT2ImageTokenizer.from_pretrained(tmp_path / "ok")
    message = str(error.value)
    assert "1 missing key(s) [decoder.up.1.upsample.conv.weight]" in message
    assert "1 unexpected key(s) [encoder.extra.weight]" in message
    assert "encoder.conv_out.weight: checkpoint (5, 16, 3, 3) vs model (6, 16, 3, 3)" in message
    with open(tmp_path / "ok" / "config.json", "w") as f:
        json.dump({"ch": 8, "channel_multipliers": [1, 2]}, f)
    with pytest.raises(ValueError, match=r"unknown MAGVIT-v2 config fields \['channel_multipliers'\]"):
        MAGVIT2ImageTokenizer.from_pretrained(tmp_path / "ok")
    with pytest.raises(ValueError, match="must be 32x32 pixels"):
        tokenizer.encode(torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 64\)"):
        tokenizer.decode(torch.full((1, 8, 8), 64))


# ========================================================================================================== aMUSEd VQ
def tiny_vq_model(**changes):
    diffusers = pytest.importorskip("diffusers", reason="aMUSEd VQ needs the optional extra pararl[amused]")
    values = dict(
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=4, num_vq_embeddings=32,
        norm_num_groups=4, lookup_from_codebook=True, mid_block_add_attention=False, force_upcast=True,
    )  # fmt: skip
    values.update(changes)
    torch.manual_seed(0)
    return diffusers.VQModel(**values)


def test_amused_vq_tokenizer_from_released_subfolder(tmp_path):
    from pararl.image_tokenizers.amused import AmusedVQImageTokenizer

    vq = tiny_vq_model()
    vq.save_pretrained(tmp_path / "MMaDA-Parallel-A" / "vqvae")
    tokenizer = AmusedVQImageTokenizer.from_pretrained(tmp_path / "MMaDA-Parallel-A", image_size=32)
    assert (tokenizer.codebook_size, tokenizer.grid_shape, tokenizer.image_size) == (32, (8, 8), (32, 32))
    pixels = torch.rand(2, 3, 32, 32)
    codes = tokenizer.encode(pixels)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    # The released calls: quantize(encode(x).latents)[2][2] and decode(codes, force_not_quantize=True, shape=...).
    with torch.no_grad():
        reference_codes = vq.quantize(vq.encode(pixels).latents)[2][2].reshape(2, 8, 8)
        reference = vq.decode(codes.reshape(2, -1), force_not_quantize=True, shape=(2, 8, 8, 4)).sample.clip(0, 1)
    assert torch.equal(codes, reference_codes)
    assert torch.allclose(tokenizer.decode(codes), reference)
    tokenizer.max_batch_size = 1
    assert torch.equal(tokenizer.encode(pixels), codes) and torch.allclose(
        tokenizer.decode(codes), reference, atol=1e-5
    )
    # PIL input of another aspect ratio is centre-cropped and resized.
    assert tokenizer.encode(tensor_to_images(torch.rand(1, 3, 40, 64))).shape == (1, 8, 8)

    # A VQ folder with a missing key is refused (diffusers alone would initialise it randomly).
    from safetensors.torch import load_file

    weights_path = tmp_path / "MMaDA-Parallel-A" / "vqvae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(str(weights_path))
    weights.pop("decoder.conv_out.weight")
    save_file(weights, str(weights_path))
    with pytest.raises(ValueError, match=r"1 missing key\(s\) \[decoder.conv_out.weight\]"):
        AmusedVQImageTokenizer.from_pretrained(tmp_path / "MMaDA-Parallel-A", image_size=32)


def test_amused_without_diffusers_says_how_to_install(monkeypatch):
    from pararl.image_tokenizers import amused

    monkeypatch.setitem(sys.modules, "diffusers", None)
    with pytest.raises(ImportError, match=r'pip install "pararl\[amused\]"'):
        amused.AmusedVQImageTokenizer.from_pretrained("/nowhere")


# =============================================================================================== CLIP weights
def test_clip_reward_loads_local_open_clip_weights(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    try:
        from pararl.rewards.clip import CLIPAlignmentReward
    except ImportError as error:  # pragma: no cover - depends on the rewards module being in place
        pytest.skip(f"pararl.rewards.clip.CLIPAlignmentReward is not available yet: {error}")
    tiny = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    with open(tmp_path / "pararl-test-tiny-clip.json", "w") as f:
        json.dump(tiny, f)
    open_clip.add_model_config(str(tmp_path / "pararl-test-tiny-clip.json"))
    torch.manual_seed(0)
    model = open_clip.create_model("pararl-test-tiny-clip")
    save_file(model.state_dict(), str(tmp_path / "clip.safetensors"))

    reward = CLIPAlignmentReward("pararl-test-tiny-clip", pretrained=tmp_path / "clip.safetensors", device="cpu")
    loaded = reward.model.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in model.state_dict().items())
    assert reward.encode_texts(["a red sky"]).shape == (1, 16)
    assert reward.encode_images(torch.rand(2, 3, 48, 48)).shape == (2, 16)

    broken = {key: value for key, value in model.state_dict().items() if key != "text_projection"}
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match="text_projection"):
        CLIPAlignmentReward("pararl-test-tiny-clip", pretrained=tmp_path / "broken.safetensors", device="cpu")
