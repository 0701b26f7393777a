import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from pararl.image_tokenizers import PaletteImageTokenizer
from pararl.processing import MMADA_PARALLEL_A, MMADA_PARALLEL_M, ParallelProcessor, SequencePreset


SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>", "<mask>", "<soi>", "<eoi>", "<edit>", "<generate>", "<row>"]
WORDS = "make the square red blue green so it becomes . left of".split()
PALETTE = [(255, 255, 255), (255, 0, 0), (0, 0, 255), (0, 128, 0)]


def make_tokenizer():
    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        mask_token="<mask>",
        additional_special_tokens=SPECIALS[5:],
    )


def make_preset(**overrides):
    values = dict(
        name="test",
        mask_token_id=4,
        image_token_offset=32,
        codebook_size=len(PALETTE),
        image_grid=(2, 3),
        soi_token_id=5,
        eoi_token_id=6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        text_fill_token_id=2,
        task_token_ids={"edit": 7, "generate": 8},
        max_prompt_tokens=6,
        max_reasoning_tokens=5,
    )
    values.update(overrides)
    return SequencePreset(**values)


@pytest.fixture
def small_processor():
    """A processor small enough to write its sequences out by hand: a 2x3 code grid of 4 colours, 12 words
    (conftest's `processor` is the toy world's)."""
    return ParallelProcessor(make_tokenizer(), PaletteImageTokenizer(PALETTE, (2, 3), 2), make_preset())


def test_output_layout_and_spans(small_processor):
    # <soi> 6 image slots <eoi> <bos> 5 text slots
    assert small_processor.output_length == 1 + 6 + 1 + 1 + 5
    assert small_processor.image_positions.tolist() == [1, 2, 3, 4, 5, 6]
    assert small_processor.text_positions.tolist() == [9, 10, 11, 12, 13]
    template = small_processor.masked_outputs(2)
    assert template.shape == (2, 14)
    assert template[0, 0] == 5 and template[0, 7] == 6 and template[0, 8] == 1
    assert small_processor.maskable_mask.sum() == 11
    assert (template[:, small_processor.maskable_mask] == 4).all()


def test_slot_masks_mark_each_modality_and_the_mask_column_is_the_text_vocabularys_own(small_processor):
    assert small_processor.image_slot_mask.nonzero().squeeze(-1).tolist() == [1, 2, 3, 4, 5, 6]
    assert small_processor.text_slot_mask.nonzero().squeeze(-1).tolist() == [9, 10, 11, 12, 13]
    assert torch.equal(small_processor.image_slot_mask | small_processor.text_slot_mask, small_processor.maskable_mask)
    assert small_processor.preset.text_mask_column == 4 and small_processor.preset.image_mask_column is None
    assert make_preset(mask_token_id=11, image_token_offset=10).image_mask_column == 1
    assert MMADA_PARALLEL_M.text_mask_column == 126336 and MMADA_PARALLEL_M.image_mask_column is None


def test_encode_prompts_layout_and_padding(small_processor):
    codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    batch = small_processor.encode_prompts(["make the square red", "make it blue"], images=[codes, None])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    first = [7, 5, 32, 33, 34, 35, 32, 33, 6, 1] + [10, 11, 12, 13] + [2]
    second = [8, 1, 10, 17, 14, 2]
    assert ids[0].tolist() == first
    assert ids[1, : len(second)].tolist() == second
    assert (ids[1, len(second) :] == 0).all()
    assert mask[0].tolist() == [1] * len(first)
    assert mask[1].tolist() == [1] * len(second) + [0] * (len(first) - len(second))


def test_unconditional_rows(small_processor):
    codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    batch = small_processor.encode_prompts(
        ["make the square red"] * 3,
        images=[codes] * 3,
        drop_prompt=[True, False, True],
        drop_image=[False, True, True],
    )
    ids = batch["input_ids"]
    assert ids[0].tolist() == [7, 5, 32, 33, 34, 35, 32, 33, 6, 1, 2]
    assert ids[1, :7].tolist() == [7, 1, 10, 11, 12, 13, 2]
    assert ids[2, :3].tolist() == [7, 1, 2]
    assert batch["attention_mask"][2].sum() == 3


def test_encode_outputs_and_decode_invert(small_processor):
    codes = torch.tensor([[[0, 1, 2], [3, 0, 1]], [[3, 3, 3], [2, 2, 2]]])
    outputs = small_processor.encode_outputs(["it becomes red .", "blue"], [codes[0], codes[1]])
    assert outputs[0, small_processor.text_positions].tolist() == [17, 18, 13, 19, 2]
    assert outputs[1, small_processor.text_positions].tolist() == [14, 2, 2, 2, 2]
    assert small_processor.decode_text(outputs) == ["it becomes red .", "blue"]
    assert torch.equal(small_processor.image_codes(outputs), codes)
    pixels = small_processor.decode_images(small_processor.image_codes(outputs))
    assert torch.equal(small_processor.image_tokenizer.encode(pixels), codes)


def test_decode_partial_state_drops_masks(small_processor):
    codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    outputs = small_processor.encode_outputs(["it becomes red ."], [codes])
    partial = outputs.clone()
    partial[0, small_processor.text_positions[1]] = 4
    partial[0, small_processor.image_positions[:2]] = 4
    assert small_processor.decode_text(partial) == ["it red ."]
    grid = small_processor.image_codes(partial)
    assert grid[0, 0].tolist() == [-1, -1, 2]
    pixels = small_processor.decode_images(grid)
    assert torch.all(pixels[0, :, :2, :4] == 0.5)  # the two unknown cells (2 px each) are grey
    assert not torch.all(pixels[0, :, :2, 4:] == 0.5)


def test_row_end_tokens():
    preset = make_preset(image_row_end_token_id=9)
    processor = ParallelProcessor(make_tokenizer(), PaletteImageTokenizer(PALETTE, (2, 3), 2), preset)
    assert processor.image_positions.tolist() == [1, 2, 3, 5, 6, 7]
    codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    outputs = processor.encode_outputs(["red"], [codes])
    assert outputs[0, :10].tolist() == [5, 32, 33, 34, 9, 35, 32, 33, 9, 6]
    assert torch.equal(processor.image_codes(outputs)[0], codes)


def test_pad_prompt_to_max_fills_with_attended_tokens():
    preset = make_preset(pad_prompt_to_max=True)
    processor = ParallelProcessor(make_tokenizer(), PaletteImageTokenizer(PALETTE, (2, 3), 2), preset)
    batch = processor.encode_prompts(["red"])
    assert batch["input_ids"][0].tolist() == [8, 1, 13, 2, 2, 2, 2, 2, 2]
    assert batch["attention_mask"][0].sum() == 9


def test_pil_images_are_encoded(small_processor):
    codes = torch.tensor([[0, 1, 2], [3, 0, 1]])
    from pararl.image_tokenizers import tensor_to_images

    image = tensor_to_images(small_processor.image_tokenizer.decode(codes[None]))[0]
    batch = small_processor.encode_prompts(["red"], images=[image])
    assert batch["input_ids"][0, 2:8].tolist() == (codes.flatten() + 32).tolist()


def test_concat(small_processor):
    inputs = small_processor.encode_prompts(["red", "make the square red"])
    outputs = small_processor.masked_outputs(2)
    full = small_processor.concat(inputs, outputs)
    assert full["input_ids"].shape == (2, inputs["input_ids"].size(1) + small_processor.output_length)
    assert (full["attention_mask"][:, -small_processor.output_length :] == 1).all()


def test_bad_inputs(small_processor):
    with pytest.raises(ValueError, match=r"prompt\[1\] has 7 tokens, over the budget of 6"):
        small_processor.encode_prompts(["red", "make the square red so it becomes"])
    with pytest.raises(ValueError, match=r"images\[0\] \(a code grid\) has codes in \[0, 4\], outside the codebook"):
        small_processor.encode_prompts(["red"], images=[torch.tensor([[0, 1, 2], [3, 0, 4]])])
    with pytest.raises(ValueError, match=r"prompts\[0\]: must be a string, got list \(pararl uses no chat templates"):
        small_processor.encode_prompts([[{"role": "user", "content": "red"}]])
    with pytest.raises(ValueError, match=r"images\[0\] \(a code grid\) has shape \(3, 2\), expected \(2, 3\)"):
        small_processor.encode_prompts(["red"], images=[torch.zeros(3, 2, dtype=torch.long)])
    with pytest.raises(ValueError, match="tasks\\[0\\] is 'paint'"):
        small_processor.encode_prompts(["red"], tasks=["paint"])
    with pytest.raises(ValueError, match=r"reasoning\[0\] has 5 tokens"):
        small_processor.encode_outputs(["it becomes red . red"], [torch.zeros(2, 3, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"output images\[0\] is missing"):
        small_processor.encode_outputs(["red"], [None])
    with pytest.raises(ValueError, match="images has 1 entries but there are 2 prompts"):
        small_processor.encode_prompts(["red", "blue"], images=[None])


def test_truncation_warns():
    processor = ParallelProcessor(
        make_tokenizer(), PaletteImageTokenizer(PALETTE, (2, 3), 2), make_preset(), truncate_prompt=True
    )
    with pytest.warns(UserWarning, match="truncated from 7 to 6"):
        batch = processor.encode_prompts(["make the square red so it becomes"])
    assert batch["attention_mask"].sum() == 1 + 1 + 6 + 1


def test_incompatible_tokenizer_and_preset():
    image_tokenizer = PaletteImageTokenizer(PALETTE, (2, 3), 2)
    with pytest.raises(ValueError, match="missing the special token for soi_token_id"):
        ParallelProcessor(make_tokenizer(), image_tokenizer, make_preset(soi_token_id=30))
    with pytest.raises(ValueError, match="tokenizer.eos_token_id is 2 but preset 'test' uses 3"):
        ParallelProcessor(make_tokenizer(), image_tokenizer, make_preset(eos_token_id=3))
    with pytest.raises(ValueError, match="grid"):
        ParallelProcessor(make_tokenizer(), PaletteImageTokenizer(PALETTE, (3, 3), 2), make_preset())
    with pytest.raises(ValueError, match="codebook_size"):
        ParallelProcessor(make_tokenizer(), image_tokenizer, make_preset(codebook_size=5))


def test_released_presets_ranges():
    assert MMADA_PARALLEL_M.image_vocab_range == (126349, 126349 + 8192)
    assert MMADA_PARALLEL_M.num_image_tokens == 1024
    assert MMADA_PARALLEL_A.image_vocab_range == (126356, 126356 + 8192)
    assert MMADA_PARALLEL_A.image_row_end_token_id == 126084


def test_load_processor_builds_from_module_function_and_names_bad_specs():
    from pararl.processing import ParallelProcessor, load_processor

    assert isinstance(load_processor("pararl.toy:toy_processor"), ParallelProcessor)
    with pytest.raises(ValueError, match="module:function"):
        load_processor("pararl.toy.toy_processor")
    with pytest.raises(ValueError, match="cannot import 'nope'"):
        load_processor("pararl.toy:nope")
    with pytest.raises(ValueError, match="not a ParallelProcessor"):
        load_processor("pararl.toy:world_vocabulary")


def test_model_config_kwargs_match_the_shipped_toy_policy(processor):
    import json
    from pathlib import Path

    from pararl.toy import toy_policy_path

    shipped = json.loads((Path(toy_policy_path()) / "config.json").read_text())
    kwargs = processor.preset.model_config_kwargs()
    assert kwargs == {key: shipped[key] for key in kwargs}
    assert kwargs["vocab_size"] == processor.preset.image_vocab_range[1]
