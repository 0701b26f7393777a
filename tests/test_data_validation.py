"""Every dataset row checked at trainer construction: named by dataset index and column, all bad rows listed."""

import io
import time

import datasets
import pytest
from PIL import Image

from pararl.data_validation import DatasetRowError, check_dataset
from pararl.sft import ParallelSFTConfig, ParallelSFTTrainer, pretokenize_dataset
from pararl.toy import build_toy_dataset


BACKGROUND = (214, 199, 164)
FEATURES = datasets.Features(
    {
        "prompt": datasets.Value("string"),
        "image": datasets.Image(),
        "task": datasets.Value("string"),
        "reasoning": datasets.Value("string"),
        "output_image": datasets.Image(),
    }
)


@pytest.fixture(scope="module")
def toy():
    return build_toy_dataset("train", num_samples=40, seed=0)


def rows_of(toy, n: int) -> list[dict]:
    columns = ["prompt", "image", "task", "reasoning", "output_image"]
    return [{name: toy[i % len(toy)][name] for name in columns} for i in range(n)]


def edit_row(toy) -> dict:
    return next(row for row in rows_of(toy, len(toy)) if row["task"] == "edit")


def generate_row(toy) -> dict:
    return next(row for row in rows_of(toy, len(toy)) if row["task"] == "generate")


def no_reward(completions, **kwargs):
    return [0.0] * len(completions)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_row_5_of_1000_fails_at_construction_listing_every_bad_row(make_grpo_config, make_trainer, toy, tmp_path):
    rows = rows_of(toy, 1000)
    rows[5]["prompt"] = None
    rows[700] = {**edit_row(toy), "task": "generate"}  # generation given an input image
    dataset = datasets.Dataset.from_list(rows, features=FEATURES)
    start = time.perf_counter()
    # The model path does not exist: the rows are checked before any model is loaded.
    with pytest.raises(DatasetRowError) as error:
        make_trainer(
            make_grpo_config(tmp_path), no_reward, model=str(tmp_path / "no-model-here"), train_dataset=dataset
        )
    seconds = time.perf_counter() - start
    message = str(error.value)
    assert message.startswith("2 of 1,000 rows of the train dataset cannot be used")
    assert "row 5, column 'prompt': missing" in message
    assert "row 700, column 'task': 'generate' with an input image" in message
    assert error.value.bad_rows == [5, 700]
    assert seconds < 30, f"checking 1,000 rows took {seconds:.1f} s"


def _problem_cases(toy):
    edit, generate = edit_row(toy), generate_row(toy)
    wide = Image.new("RGB", (30, 32), BACKGROUND)
    off_palette = Image.new("RGB", (32, 32), (1, 2, 3))
    speckled = edit["image"].convert("RGB")
    speckled.putpixel((1, 1), (0, 0, 0))
    truncated = png_bytes(edit["image"])[:60]
    grid = [[0] * 8 for _ in range(8)]
    return {
        "chat prompt": ({**generate, "prompt": [{"role": "user", "content": "hi"}]}, "prompt", "must be a string"),
        "missing prompt": ({**generate, "prompt": None}, "prompt", "missing"),
        "empty prompt": ({**generate, "prompt": ""}, "prompt", "is empty; give an instruction"),
        "blank prompt": ({**generate, "prompt": " \t "}, "prompt", "is empty (whitespace only)"),
        "prompt over budget": ({**generate, "prompt": "red " * 40}, "prompt", "over the budget"),
        "image wrong size": ({**edit, "image": wide}, "image", "30x32 pixels"),
        "colour off the palette": ({**edit, "image": off_palette}, "image", "not in the palette"),
        "cell not uniform": ({**edit, "image": speckled}, "image", "not one uniform colour"),
        "image does not decode": ({**edit, "image": {"bytes": truncated, "path": None}}, "image", "decode"),
        "float pixels": ({**edit, "image": Image.new("F", (32, 32))}, "image", "pixel mode 'F'"),
        "image is not an image": ({**edit, "image": grid}, "image", "must be a PIL image"),
        "codes wrong shape": ({**generate, "task": "edit", "image_codes": grid[:7]}, "image_codes", "shape"),
        "codes outside codebook": (
            {**generate, "task": "edit", "image_codes": [[9] * 8] * 8},
            "image_codes",
            "outside the codebook",
        ),
        "unknown task": ({**generate, "task": "draw"}, "task", "'draw' is not a task"),
        "generate with an image": ({**edit, "task": "generate"}, "task", "'generate' with an input image"),
        "generate with image codes": (
            {**generate, "image_codes": grid},
            "task",
            "'generate' with an input image",
        ),
        "edit without an image": ({**generate, "task": "edit"}, "task", "'edit' without an input image"),
    }


@pytest.mark.parametrize("case", list(_problem_cases(build_toy_dataset("train", num_samples=40, seed=0))))
def test_each_bad_row_is_named_with_its_column(case, toy, processor):
    bad, column, detail = _problem_cases(toy)[case]
    good = rows_of(toy, 3)
    # As a Python list (the row-by-row path) and, where Arrow can hold it, as a `datasets.Dataset`.
    forms = [[*good, bad, *good]]
    if case not in ("chat prompt", "image is not an image", "image does not decode", "float pixels"):
        features = FEATURES.copy()
        if "image_codes" in bad:
            features["image_codes"] = datasets.List(datasets.List(datasets.Value("int32")))
            good = [{**row, "image_codes": None} for row in good]
        forms.append(datasets.Dataset.from_list([*good, bad, *good], features=features))
    for dataset in forms:
        with pytest.raises(DatasetRowError) as error:
            check_dataset(dataset, processor, "pararl", batch_size=2)
        assert error.value.bad_rows == [3], str(error.value)
        (problem,) = error.value.problems
        assert problem.column == column and detail in problem.problem, str(problem)


def test_the_first_20_bad_rows_are_listed_with_a_count(toy, processor):
    rows = rows_of(toy, 200)
    for i in range(10, 200, 8):  # 24 bad rows
        rows[i]["prompt"] = None
    with pytest.raises(DatasetRowError) as error:
        check_dataset(datasets.Dataset.from_list(rows, features=FEATURES), processor)
    message = str(error.value)
    assert message.startswith("24 of 200 rows")
    assert "row 10, column 'prompt'" in message and "row 162, column 'prompt'" in message
    assert "row 170," not in message and "... and 4 more problem(s)" in message
    assert len(error.value.problems) == 24


def test_good_datasets_pass_for_both_stages(toy, processor):
    check_dataset(toy, processor, "pararl")
    check_dataset(toy, processor, "sft")
    codes = pretokenize_dataset(toy, processor)  # image_codes / output_image_codes as Arrow list<list<int32>>
    check_dataset(codes, processor, "sft")
    flat = datasets.Dataset.from_dict(
        {"prompt": ["paint it"], "task": ["edit"], "image_codes": [list(range(9)) * 7 + [0]]}
    )
    check_dataset(flat, processor, "pararl")  # the flat (64,) form of an (8, 8) grid is accepted, as consumers do


def test_sft_checks_reasoning_and_the_output_image_at_construction(toy, processor, tmp_path):
    rows = rows_of(toy, 30)
    rows[4]["reasoning"] = None
    rows[17]["output_image"] = None
    args = ParallelSFTConfig(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", dataset_kwargs={"skip_prepare_dataset": True}
    )
    with pytest.raises(DatasetRowError) as error:
        ParallelSFTTrainer(
            str(tmp_path / "no-model-here"),
            args=args,
            train_dataset=datasets.Dataset.from_list(rows, features=FEATURES),
            processing_class=processor,
        )
    assert error.value.bad_rows == [4, 17]
    assert "row 4, column 'reasoning': missing" in str(error.value)
    assert "row 17, column 'output_image': missing" in str(error.value)
    with pytest.raises(ValueError, match="has no 'reasoning' column"):
        check_dataset(toy.remove_columns("reasoning"), processor, "sft")


def test_eval_dataset_is_checked_too(make_grpo_config, make_trainer, toy, tmp_path):
    rows = rows_of(toy, 8)
    rows[2]["task"] = "paint"
    with pytest.raises(DatasetRowError, match=r"rows of the eval dataset[\s\S]*row 2, column 'task'"):
        make_trainer(
            make_grpo_config(tmp_path),
            no_reward,
            model=str(tmp_path / "no-model-here"),
            train_dataset=toy,
            eval_dataset=datasets.Dataset.from_list(rows, features=FEATURES),
        )


def test_streamed_dataset_head_is_checked_with_a_warning(toy, processor):
    rows = rows_of(toy, 12)
    rows[9]["prompt"] = None
    stream = datasets.Dataset.from_list(rows, features=FEATURES).to_iterable_dataset()
    with pytest.warns(UserWarning, match="streamed"), pytest.raises(DatasetRowError, match="row 9, column 'prompt'"):
        check_dataset(stream, processor)


def test_result_is_cached_for_datasets_on_disk(toy, processor, tmp_path, monkeypatch):
    toy.save_to_disk(str(tmp_path / "data"))
    on_disk = datasets.load_from_disk(str(tmp_path / "data"))
    check_dataset(on_disk, processor)
    calls = []
    from pararl import data_validation

    original = data_validation._RowChecker.__call__
    monkeypatch.setattr(
        data_validation._RowChecker, "__call__", lambda self, *a: calls.append(1) or original(self, *a)
    )
    check_dataset(on_disk, processor)
    assert calls == []  # read back from `datasets`' cache
    check_dataset(on_disk, processor, "sft")  # other checks: another fingerprint, computed afresh
    assert calls


def test_check_is_cheap_per_row(toy, processor):
    """Arrow code grids are checked without a per-row loop: 20,000 rows of (8, 8) grids in well under a second."""
    codes = pretokenize_dataset(toy, processor).select_columns(["prompt", "task", "image_codes"])
    big = datasets.concatenate_datasets([codes] * 500)
    start = time.perf_counter()
    check_dataset(big, processor, batch_size=1000)
    seconds = time.perf_counter() - start
    print(f"checked {len(big)} rows in {seconds:.2f} s")
    assert seconds < 20


def test_token_counts_are_the_processors(toy, processor):
    from pararl.data_validation import _token_counts

    texts = [*toy["prompt"], *toy["reasoning"], "red " * 40, "", "zzz unknown !"]
    expected = [len(ids) for ids in processor.tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert _token_counts(processor.tokenizer, texts) == expected


def test_unknown_prompt_words_warn_once_above_one_percent(toy, processor, tmp_path):
    import warnings

    rows = rows_of(toy, 300)
    rows[7]["prompt"] = "write about a red apple ."  # 3 of 300 rows: 1%, not above it
    for i in (40, 41):
        rows[i]["prompt"] = rows[7]["prompt"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_dataset(datasets.Dataset.from_list(rows, features=FEATURES), processor)
    for i in range(100, 110):  # 13 of 300
        rows[i]["prompt"] = f"paint the zebra{i} red ."
    with pytest.warns(UserWarning) as caught:
        check_dataset(datasets.Dataset.from_list(rows, features=FEATURES), processor)
    (warning,) = caught
    assert str(warning.message) == (
        "13 of 300 prompts of the train dataset have words the tokenizer does not know, read by the model as <unk> "
        "(row 7: 'write', 'about', 'apple'; row 40: 'write', 'about', 'apple'; row 41: 'write', 'about', 'apple'; "
        "row 100: 'zebra100'; row 101: 'zebra101'; ... and 8 more rows); rephrase them with words of its "
        "vocabulary."
    )
    # The row-by-row path (lists, torch datasets) counts the same rows.
    with pytest.warns(UserWarning, match="13 of 300 prompts of the train dataset"):
        check_dataset(rows, processor, "sft")
