"""Every dataset row checked before the first training step, for ParaRL and parallel SFT.

A bad row found mid-training costs the run so far, and the consumers (`DiffusionGRPOTrainer`'s row split, the SFT
collator) only see a batch, so they can name a batch position at best. [`check_datasets`] reads the whole dataset
once at trainer construction and raises one [`DatasetRowError`] that names every bad row by its *dataset* index and
column (the first 20 and a count).

What a row must be (the pararl schema, shared by both trainers):

- `prompt`: present, a string that is not empty or whitespace only, within the preset's instruction budget unless
  the processor truncates;
- input image: `image` a PIL image (or an image file in a `datasets.Image` column) that decodes, has a mode that
  converts to RGB and, for an exact (palette) image tokenizer, the tokenizer's pixel size and only palette colours;
  or `image_codes` a `(rows, cols)` grid (or its flat form) of integer codes inside the codebook; or neither;
- `task`: absent, or one the preset knows; `"generate"` takes no input image and `"edit"` needs one;
- SFT only: `reasoning` present, a string, within the reasoning budget unless truncated; an output image in
  `output_image` / `output_image_codes`, checked like the input image.

Prompts with words the text tokenizer does not know (they become its unknown token) are counted; when they are
more than 1% of the rows, one warning gives the count and the first examples. A warning, not an error: only a
word-level tokenizer like the toy world's has an unknown token in use (the released checkpoints' byte-level BPE
reads any text), a few rare words do not make a dataset unusable, and an error would need an allow flag on every
such run; above 1% the model is likely being trained on prompts it cannot read, which a user must hear about.

Learned VQ encoders (MAGVIT-v2, aMUSEd) are not run here: they resize any RGB image, and a forward per image would
cost as much as the training's own encoding; for them an image must decode and convert to RGB.

Built on `datasets.map(batched=True)` over the needed columns only, in Arrow format: code grids are checked with
array operations, never row by row; images are decoded one by one (that is what decoding is). The result (the list of
problems) is cached by `datasets` for datasets stored on disk, so a second trainer on the same data reads it back.
"""

import io
import itertools
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from .image_tokenizers import PaletteImageTokenizer
from .processing import ParallelProcessor, code_grid, text_problem


__all__ = ["DatasetRowError", "RowProblem", "check_dataset", "check_datasets"]

Stage = Literal["pararl", "sft"]
# Bumped whenever a check changes: part of the cache fingerprint, so an old "no problem" result is never reused.
_CHECKS_VERSION = "2"
_MAX_LISTED = 20
# Share of rows with unknown prompt words above which the check warns, and the examples the warning shows.
_UNKNOWN_WORDS_SHARE = 0.01
_UNKNOWN_WORDS_EXAMPLES = 5
# Rows of a streamed (iterable) dataset read at construction; the rest would need a full pass over the stream.
_STREAM_ROWS_CHECKED = 1000
# (PIL column, code-grid column) of the input image and of the SFT target image.
_INPUT_IMAGE = ("image", "image_codes")
_OUTPUT_IMAGE = ("output_image", "output_image_codes")
# Pixel modes that `convert("RGB")` clips (16- and 32-bit integers, floats): such an image is not what it looks like.
_UNCONVERTIBLE_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_PROBLEM_FEATURES = datasets.Features(
    {
        "row": datasets.Value("int64"),
        "column": datasets.Value("string"),
        "problem": datasets.Value("string"),
        "fatal": datasets.Value("bool"),
    }
)


@dataclass(frozen=True)
class RowProblem:
    """One problem of one row: its index in the dataset, the column and what is wrong; `fatal=False` for what
    training survives (unknown prompt words), which is warned about, not raised."""

    row: int
    column: str
    problem: str
    fatal: bool = True

    def __str__(self) -> str:
        return f"row {self.row}, column {self.column!r}: {self.problem}"


class DatasetRowError(ValueError):
    """Rows of a dataset that training cannot use; `problems` lists them all, the message the first 20."""

    def __init__(self, name: str, num_rows: int | None, problems: Sequence[RowProblem]):
        self.problems = sorted(problems, key=lambda p: (p.row, p.column))
        self.bad_rows = sorted({p.row for p in self.problems})
        of = f" of {num_rows:,}" if num_rows is not None else ""
        lines = [str(p) for p in self.problems[:_MAX_LISTED]]
        if len(self.problems) > _MAX_LISTED:
            lines.append(f"... and {len(self.problems) - _MAX_LISTED:,} more problem(s)")
        super().__init__(
            f"{len(self.bad_rows):,}{of} rows of the {name} dataset cannot be used (row = index in the dataset); fix "
            "or drop them before training:\n  " + "\n  ".join(lines)
        )


def _required_columns(stage: Stage) -> tuple[tuple[str, ...], ...]:
    """Column groups a dataset must have (one column of each group) for a stage."""
    if stage == "sft":
        return (("prompt",), ("reasoning",), _OUTPUT_IMAGE)
    return (("prompt",),)


def _columns_read(stage: Stage) -> tuple[str, ...]:
    columns = ("prompt", "task", *_INPUT_IMAGE)
    return (*columns, "reasoning", *_OUTPUT_IMAGE) if stage == "sft" else columns


# ----------------------------------------------------------------------------------------------------- the checks
class _RowChecker:
    """Checks a batch of rows given as columns (Python lists or Arrow arrays); returns their problems."""

    def __init__(self, processor: ParallelProcessor, stage: Stage, image_modes: Mapping[str, str] | None = None):
        self.processor = processor
        self.stage = stage
        # `datasets.Image(mode=...)` columns: the consumers see the image in that mode, and so does the check.
        self.image_modes = dict(image_modes or {})

    def __call__(self, columns: Mapping[str, Any], indices: Sequence[int]) -> list[RowProblem]:
        problems: list[RowProblem] = []
        preset, processor = self.processor.preset, self.processor
        self._texts(
            columns, indices, "prompt", preset.max_prompt_tokens, processor.truncate_prompt, problems, prompt=True
        )
        has_input = self._images(columns, indices, *_INPUT_IMAGE, required=False, problems=problems)
        self._tasks(columns, indices, has_input, problems)
        if self.stage == "sft":
            budget = preset.max_reasoning_tokens - 1
            self._texts(columns, indices, "reasoning", budget, processor.truncate_reasoning, problems)
            self._images(columns, indices, *_OUTPUT_IMAGE, required=True, problems=problems)
        return problems

    # -------------------------------------------------------------------------------------------------- texts
    def _texts(self, columns, indices, name, budget, truncate, problems, prompt=False) -> None:
        """Checks a text column; a prompt must not be blank, and its unknown words are noted (not fatal)."""
        values = _python(columns.get(name), len(indices))
        good = []
        for j, value in enumerate(values):
            problem = text_problem(value, instruction=prompt)
            if problem:
                problems.append(RowProblem(indices[j], name, problem))
            else:
                good.append(j)
        unk = getattr(self.processor.tokenizer, "unk_token_id", None) if prompt else None
        if (truncate and unk is None) or not good:
            return
        texts = [values[j] for j in good]
        encodings = _encode(self.processor.tokenizer, texts)
        if unk is not None:
            shown = self.processor.tokenizer.unk_token  # where a slow tokenizer gives no offsets
            for j, text, (ids, offsets) in zip(good, texts, encodings):
                unknown = [text[start:end] or shown for token, (start, end) in zip(ids, offsets) if token == unk]
                if unknown:
                    problems.append(RowProblem(indices[j], name, ", ".join(map(repr, unknown)), fatal=False))
        if truncate:
            return
        for j, (ids, _) in zip(good, encodings):
            length = len(ids)
            if length > budget:
                problems.append(
                    RowProblem(
                        indices[j],
                        name,
                        f"{length} tokens, over the budget of {budget} of preset {self.processor.preset.name!r} "
                        f"(shorten it, or set truncate_{name}=True)",
                    )
                )

    # ------------------------------------------------------------------------------------------------- images
    def _images(self, columns, indices, image_name, codes_name, required, problems) -> list[bool]:
        """Checks the PIL column and the code-grid column of one image; returns whether each row has the image."""
        num_rows = len(indices)
        codes_present = self._codes(columns.get(codes_name), indices, codes_name, problems)
        images = _python(columns.get(image_name), num_rows)
        present = [codes_present[j] or images[j] is not None for j in range(num_rows)]
        opened: dict[int, Image.Image] = {}
        for j, value in enumerate(images):
            if value is None:
                if required and not codes_present[j]:
                    problems.append(
                        RowProblem(
                            indices[j],
                            image_name,
                            f"missing; give a PIL image in {image_name!r} or its code grid in {codes_name!r}",
                        )
                    )
                continue
            image = _open_image(value, self.image_modes.get(image_name))
            if isinstance(image, str):
                problems.append(RowProblem(indices[j], image_name, image))
            else:
                opened[j] = image
        tokenizer = self.processor.image_tokenizer
        if isinstance(tokenizer, PaletteImageTokenizer) and opened:
            self._palette_images(tokenizer, opened, indices, image_name, problems)
        return present

    @staticmethod
    def _palette_images(tokenizer, opened, indices, name, problems) -> None:
        height, width = tokenizer.image_size
        sized = []
        for j, image in opened.items():
            if image.size != (width, height):
                problems.append(
                    RowProblem(
                        indices[j],
                        name,
                        f"{image.size[0]}x{image.size[1]} pixels (W x H) but the image tokenizer needs "
                        f"{width}x{height}; resize the image first",
                    )
                )
            else:
                sized.append(j)
        if not sized:
            return
        try:
            tokenizer.encode([opened[j] for j in sized])
            return
        except ValueError:
            pass
        for j in sized:  # only batches holding a bad image get here: encode row by row to name every one
            try:
                tokenizer.encode([opened[j]])
            except ValueError as error:
                problems.append(RowProblem(indices[j], name, str(error).removeprefix("image 0, ")))

    def _codes(self, values, indices, name, problems) -> list[bool]:
        """Checks a code-grid column; returns whether each row has a grid."""
        num_rows = len(indices)
        if values is None:
            return [False] * num_rows
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if isinstance(values, pa.Array) and _is_integer_grid_type(values.type):
            return self._arrow_codes(values, indices, name, problems)
        values = _python(values, num_rows)
        for j, value in enumerate(values):
            if value is not None:
                grid = code_grid(value, self.processor.preset)
                if isinstance(grid, str):
                    problems.append(RowProblem(indices[j], name, grid))
        return [value is not None for value in values]

    def _arrow_codes(self, values: pa.Array, indices, name, problems) -> list[bool]:
        """Vectorised shape and range checks of `list<list<int>>` (or flat `list<int>`) code grids."""
        preset = self.processor.preset
        rows, cols = preset.image_grid
        present = ~np.asarray(values.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        lengths = np.asarray(pc.list_value_length(values).fill_null(0).to_numpy(zero_copy_only=False))
        flat = values.flatten()  # values of the non-null rows, in row order
        row_of = np.repeat(np.arange(len(values)), lengths)
        nested = pa.types.is_list(values.type.value_type) or pa.types.is_large_list(values.type.value_type)
        if nested:
            inner = np.asarray(pc.list_value_length(flat).fill_null(-1).to_numpy(zero_copy_only=False))
            shape_ok = lengths == rows
            np.logical_and.at(shape_ok, row_of, inner == cols)
            row_of = np.repeat(row_of, np.maximum(inner, 0))
            flat = flat.flatten()
            shape = f"({rows}, {cols})"
        else:
            shape_ok = lengths == rows * cols
            shape = f"({rows * cols},) (the flat form of ({rows}, {cols}))"
        codes = np.asarray(flat.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
        out_of_range = np.zeros(len(values), dtype=bool)
        np.logical_or.at(out_of_range, row_of, (codes < 0) | (codes >= preset.codebook_size))
        for j in np.flatnonzero(present & ~shape_ok):
            problems.append(RowProblem(indices[j], name, f"is not a code grid of shape {shape}"))
        for j in np.flatnonzero(present & shape_ok & out_of_range):
            problems.append(
                RowProblem(indices[j], name, f"has codes outside the codebook [0, {preset.codebook_size}) (or nulls)")
            )
        return present.tolist()

    # -------------------------------------------------------------------------------------------------- tasks
    def _tasks(self, columns, indices, has_image, problems) -> None:
        known = self.processor.preset.tasks
        for j, task in enumerate(_python(columns.get("task"), len(indices))):
            if task is None:
                continue
            if not isinstance(task, str) or task not in known:
                problems.append(RowProblem(indices[j], "task", f"{task!r} is not a task of this preset {list(known)}"))
            elif task == "generate" and has_image[j]:
                problems.append(
                    RowProblem(
                        indices[j],
                        "task",
                        "'generate' with an input image: generation takes none (drop the image, or use task 'edit')",
                    )
                )
            elif task == "edit" and not has_image[j]:
                problems.append(
                    RowProblem(
                        indices[j], "task", "'edit' without an input image: give one in 'image' or 'image_codes'"
                    )
                )


def _encode(tokenizer, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    """`(ids, character offsets)` per text without special tokens, as the processor tokenises; a fast tokenizer's
    Rust backend directly (the same ids, without building a `BatchEncoding`: most of the check's time is
    tokenisation)."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is not None:
        return [(e.ids, e.offsets) for e in backend.encode_batch(texts, add_special_tokens=False)]
    if getattr(tokenizer, "is_fast", False):
        encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return list(zip(encoded["input_ids"], encoded["offset_mapping"]))
    # A slow tokenizer has no offsets: the unknown words are then shown as the unknown token.
    return [(ids, [(0, 0)] * len(ids)) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _token_counts(tokenizer, texts: list[str]) -> list[int]:
    """Tokens per text without special tokens, as the processor counts them."""
    return [len(ids) for ids, _ in _encode(tokenizer, texts)]


def _python(values: Any, num_rows: int) -> list:
    """A column as a Python list (`None` per row when the column is absent)."""
    if values is None:
        return [None] * num_rows
    if isinstance(values, pa.ChunkedArray | pa.Array):
        return values.to_pylist()
    return list(values)


def _is_integer_grid_type(kind: pa.DataType) -> bool:
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return False
    inner = kind.value_type
    if pa.types.is_list(inner) or pa.types.is_large_list(inner):
        inner = inner.value_type
    return pa.types.is_integer(inner)


def _open_image(value: Any, mode: str | None = None) -> Image.Image | str:
    """The decoded image (converted to `mode` if given), or the problem: PIL images, and `datasets.Image` cells
    (`{"bytes", "path"}`)."""
    if isinstance(value, Mapping) and ("bytes" in value or "path" in value):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        if source is None:
            return "an image cell with neither bytes nor a path"
        try:
            value = Image.open(source)
        except Exception as error:  # PIL raises many types for bad files
            return f"does not decode as an image ({type(error).__name__}: {error})"
    if not isinstance(value, Image.Image):
        return (
            f"must be a PIL image, got {type(value).__name__} (code grids go in the '*_codes' columns, e.g. "
            "'image_codes')"
        )
    try:
        value.load()
        if mode is not None and value.mode != mode:
            value = value.convert(mode)
    except Exception as error:
        return f"does not decode ({type(error).__name__}: {error})"
    if value.mode in _UNCONVERTIBLE_MODES:
        return f"has pixel mode {value.mode!r}, which does not convert to RGB without clipping; convert it first"
    return value


# ------------------------------------------------------------------------------------------------------ datasets
def _fingerprint(dataset: datasets.Dataset, processor: ParallelProcessor, stage: Stage) -> str:
    """What the result depends on: the data, the checks, the preset, both tokenizers and the truncation options."""
    from datasets.fingerprint import Hasher

    tokenizer, image_tokenizer = processor.tokenizer, processor.image_tokenizer
    signature = (
        dataset._fingerprint,
        stage,
        _CHECKS_VERSION,
        repr(processor.preset),
        type(tokenizer).__name__,
        getattr(tokenizer, "name_or_path", None),
        Hasher.hash(sorted(tokenizer.get_vocab().items())) if dataset.cache_files else len(tokenizer),
        repr(image_tokenizer),
        getattr(image_tokenizer, "palette", None),
        processor.truncate_prompt,
        processor.truncate_reasoning,
    )
    return Hasher.hash(signature)


def _problems_of_dataset(dataset: datasets.Dataset, processor, stage: Stage, name: str, num_proc, batch_size):
    columns = [column for column in _columns_read(stage) if column in dataset.column_names]
    view = dataset.select_columns(columns)
    modes = {}
    for column in columns:
        feature = view.features[column]
        if isinstance(feature, datasets.Image):
            # Decoded here, row by row, so that a file that does not decode names its row.
            modes[column] = feature.mode
            view = view.cast_column(column, datasets.Image(decode=False))
    checker = _RowChecker(processor, stage, {column: mode for column, mode in modes.items() if mode})

    def check(batch: pa.Table, indices: list[int]) -> dict[str, list]:
        found = checker({column: batch.column(column) for column in batch.column_names}, indices)
        return {
            "row": [p.row for p in found],
            "column": [p.column for p in found],
            "problem": [p.problem for p in found],
            "fatal": [p.fatal for p in found],
        }

    result = view.with_format("arrow").map(
        check,
        batched=True,
        with_indices=True,
        batch_size=batch_size,
        remove_columns=columns,
        features=_PROBLEM_FEATURES,
        num_proc=num_proc,
        new_fingerprint=_fingerprint(dataset, processor, stage),
        desc=f"Checking the {name} dataset",
    )
    table = result.with_format(None).to_dict()
    return [RowProblem(*fields) for fields in zip(table["row"], table["column"], table["problem"], table["fatal"])]


def _problems_of_rows(rows, checker: _RowChecker, batch_size: int) -> list[RowProblem]:
    """Problems of an iterable of row dicts (torch datasets, lists, the head of a stream), batch by batch."""
    names = _columns_read(checker.stage)
    problems: list[RowProblem] = []
    batch: list[Mapping] = []
    start = 0
    for row in itertools.chain(rows, [None]):  # None flushes the last batch
        if row is not None:
            if not isinstance(row, Mapping):
                raise ValueError(f"dataset rows must be dicts (column -> value), got {type(row).__name__}.")
            batch.append(row)
        if batch and (row is None or len(batch) == batch_size):
            columns = {name: [item.get(name) for item in batch] for name in names}
            problems.extend(checker(columns, list(range(start, start + len(batch)))))
            start += len(batch)
            batch = []
    return problems


def check_dataset(
    dataset: Any,
    processor: ParallelProcessor,
    stage: Stage = "pararl",
    name: str = "train",
    num_proc: int | None = None,
    batch_size: int = 512,
) -> None:
    """Checks every row of a dataset for a stage (`"pararl"` or `"sft"`); see the module docstring for the rules.

    Args:
        dataset (`datasets.Dataset`, `datasets.IterableDataset`, or a sequence of row dicts): The rows. Of a streamed
            dataset only the first 1,000 rows can be read at construction (with a warning saying so).
        processor ([`~pararl.processing.ParallelProcessor`]): Preset, tokenizers and truncation options to check
            against.
        stage: `"pararl"` (prompt, input image, task) or `"sft"` (also reasoning and the output image).
        name: What the error calls the dataset (`"train"`, `"eval"`).
        num_proc: Worker processes of `datasets.map`.
        batch_size: Rows per check.

    Raises:
        DatasetRowError: listing the bad rows by dataset index and column.
        ValueError: the dataset lacks a required column.
    """
    if dataset is None:
        return
    if stage not in ("pararl", "sft"):
        raise ValueError(f"stage must be 'pararl' or 'sft', got {stage!r}.")
    column_names = getattr(dataset, "column_names", None)
    if column_names is not None:
        for group in _required_columns(stage):
            if not any(column in column_names for column in group):
                which = " or ".join(repr(column) for column in group)
                raise ValueError(
                    f"the {name} dataset has no {which} column (columns: {column_names}); it is required."
                )
    checker = _RowChecker(processor, stage)
    num_rows = None
    if isinstance(dataset, datasets.Dataset):
        num_rows = len(dataset)
        problems = _problems_of_dataset(dataset, processor, stage, name, num_proc, batch_size)
    elif isinstance(dataset, datasets.IterableDataset):
        warnings.warn(
            f"the {name} dataset is streamed: only its first {_STREAM_ROWS_CHECKED:,} rows are checked before "
            "training; later bad rows fail when their batch arrives.",
            stacklevel=2,
        )
        problems = _problems_of_rows(dataset.take(_STREAM_ROWS_CHECKED), checker, batch_size)
    else:
        num_rows = len(dataset)
        problems = _problems_of_rows((dataset[i] for i in range(num_rows)), checker, batch_size)
    fatal = [p for p in problems if p.fatal]
    if fatal:
        raise DatasetRowError(name, num_rows, fatal)
    _warn_unknown_words(processor, name, [p for p in problems if not p.fatal], num_rows)


def _warn_unknown_words(processor, name: str, notes: Sequence[RowProblem], num_rows: int | None) -> None:
    """One warning when more than 1% of the checked rows have prompt words the tokenizer does not know."""
    if not notes or num_rows == 0:
        return
    notes = sorted(notes, key=lambda p: p.row)
    of = f" of {num_rows:,}" if num_rows is not None else ""
    if num_rows is not None and len(notes) <= _UNKNOWN_WORDS_SHARE * num_rows:
        return
    examples = "; ".join(f"row {p.row}: {p.problem}" for p in notes[:_UNKNOWN_WORDS_EXAMPLES])
    more = (
        f"; ... and {len(notes) - _UNKNOWN_WORDS_EXAMPLES:,} more rows" if len(notes) > _UNKNOWN_WORDS_EXAMPLES else ""
    )
    tokenizer = processor.tokenizer
    warnings.warn(
        f"{len(notes):,}{of} prompts of the {name} dataset have words the tokenizer does not know, read by the model "
        f"as {tokenizer.unk_token} ({examples}{more}); rephrase them with words of its vocabulary.",
        stacklevel=3,
    )


def check_datasets(
    processor: ParallelProcessor,
    stage: Stage,
    train_dataset: Any = None,
    eval_dataset: Any = None,
    num_proc: int | None = None,
) -> None:
    """[`check_dataset`] of a trainer's train and eval datasets (a dict of eval datasets is checked by key)."""
    check_dataset(train_dataset, processor, stage, "train", num_proc)
    evals = eval_dataset if isinstance(eval_dataset, Mapping) else {"": eval_dataset}
    for key, dataset in evals.items():
        check_dataset(dataset, processor, stage, f"eval ({key})" if key else "eval", num_proc)
