"""SFT data: row validation, image pre-tokenisation and the collator.

Rows follow the pararl schema (the same dataset serves SFT and ParaRL): `prompt`, optional `image` (PIL or `None`),
optional `task`, `reasoning`, `output_image` (PIL); or the code grids `image_codes` / `output_image_codes` instead of
the PIL images. Every row is checked before anything reaches the model; a bad row raises a `ValueError` that names
the row and the field.
"""

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from ..processing import ParallelProcessor, code_grid, text_problem


__all__ = ["DataCollatorForParallelSFT", "pretokenize_dataset"]

# (PIL column, code-grid column, required)
_IMAGE_FIELDS = (("image", "image_codes", False), ("output_image", "output_image_codes", True))
_COLUMNS = ("prompt", "task", "reasoning", "image", "image_codes", "output_image", "output_image_codes")
_CODES_FEATURE = datasets.List(datasets.List(datasets.Value("int32")))


@dataclass
class _Rows:
    prompts: list[str]
    tasks: list[str | None]
    reasoning: list[str]
    images: list[torch.Tensor | None]
    output_images: list[torch.Tensor]


def _image_codes(
    images: Sequence[Any],
    codes: Sequence[Any],
    labels: Sequence[str],
    field_name: str,
    codes_field: str,
    required: bool,
    processor: ParallelProcessor,
) -> list[torch.Tensor | None]:
    """One code grid (or `None`) per row: the given codes, else the PIL image encoded (all rows in one call)."""
    tokenizer = processor.image_tokenizer
    height, width = tokenizer.image_size
    grids: list[torch.Tensor | None] = [None] * len(labels)
    to_encode = []
    for j, label in enumerate(labels):
        if codes[j] is not None:
            grid = code_grid(codes[j], processor.preset)
            if isinstance(grid, str):
                raise ValueError(f"{label}: field {codes_field!r} {grid}.")
            grids[j] = grid
            continue
        image = images[j]
        if image is None:
            if required:
                raise ValueError(
                    f"{label}: required field {field_name!r} is missing (give a PIL image in {field_name!r} or its "
                    f"code grid in {codes_field!r})."
                )
            continue
        if not isinstance(image, Image.Image):
            raise ValueError(f"{label}: field {field_name!r} must be a PIL image, got {type(image).__name__}.")
        if image.size != (width, height):
            raise ValueError(
                f"{label}: field {field_name!r} is {image.size[0]}x{image.size[1]} pixels (W x H) but the image "
                f"tokenizer needs {width}x{height}; resize the image first."
            )
        to_encode.append(j)
    if to_encode:
        try:
            encoded = tokenizer.encode([images[j] for j in to_encode])
        except ValueError:
            # Encode row by row to name the row that the tokenizer rejects.
            for j in to_encode:
                try:
                    tokenizer.encode([images[j]])
                except ValueError as error:
                    raise ValueError(f"{labels[j]}: field {field_name!r}: {error}") from error
            raise
        for j, grid in zip(to_encode, encoded):
            grids[j] = grid.cpu().long()
    return grids


def _check_texts(
    texts: Sequence[Any],
    labels: Sequence[str],
    field_name: str,
    budget: int,
    truncate: bool,
    processor: ParallelProcessor,
) -> list[str]:
    for j, text in enumerate(texts):
        problem = text_problem(text, instruction=field_name == "prompt")
        if problem:
            raise ValueError(f"{labels[j]}: field {field_name!r} {problem}.")
    lengths = [len(ids) for ids in processor.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    over = [j for j, length in enumerate(lengths) if length > budget]
    if over and not truncate:
        j = over[0]
        raise ValueError(
            f"{labels[j]}: field {field_name!r} has {lengths[j]} tokens, over the budget of {budget} tokens of preset "
            f"{processor.preset.name!r}; shorten it or set truncate_{field_name}=True."
        )
    if over:
        warnings.warn(
            f"{len(over)} {field_name!r} value(s) over the budget of {budget} tokens will be truncated (first: "
            f"{labels[over[0]]}, {lengths[over[0]]} tokens).",
            stacklevel=3,
        )
    return list(texts)


def _validate_rows(columns: Mapping[str, Sequence[Any]], labels: Sequence[str], processor: ParallelProcessor) -> _Rows:
    """Checks a batch of rows (given as columns) and turns their images into code grids."""
    num_rows = len(labels)

    def column(name: str) -> Sequence[Any]:
        values = columns.get(name)
        return values if values is not None else [None] * num_rows

    preset = processor.preset
    prompts = _check_texts(
        column("prompt"), labels, "prompt", preset.max_prompt_tokens, processor.truncate_prompt, processor
    )
    reasoning = _check_texts(
        column("reasoning"),
        labels,
        "reasoning",
        preset.max_reasoning_tokens - 1,
        processor.truncate_reasoning,
        processor,
    )
    grids = {}
    for field_name, codes_field, required in _IMAGE_FIELDS:
        grids[field_name] = _image_codes(
            column(field_name), column(codes_field), labels, field_name, codes_field, required, processor
        )
    tasks = list(column("task"))
    for j, task in enumerate(tasks):
        if task is None:
            continue
        if task not in preset.tasks:
            raise ValueError(
                f"{labels[j]}: field 'task' is {task!r}; preset {preset.name!r} knows {list(preset.tasks)}."
            )
        if task == "edit" and grids["image"][j] is None:
            raise ValueError(f"{labels[j]}: task 'edit' needs an input image in field 'image' (or 'image_codes').")
    return _Rows(prompts, tasks, reasoning, grids["image"], grids["output_image"])


def pretokenize_dataset(
    dataset: datasets.Dataset | datasets.IterableDataset,
    processor: ParallelProcessor,
    num_proc: int | None = None,
    batch_size: int = 64,
    desc: str | None = None,
) -> datasets.Dataset | datasets.IterableDataset:
    """Validates every row and runs the image tokenizer once over a dataset.

    Built on `datasets.map(batched=True)`: the result is cached by `datasets`' fingerprinting (a second call with the
    same dataset and processor loads it from the cache) and shows a progress bar. PIL columns `image` /
    `output_image` are replaced by the code-grid columns `image_codes` / `output_image_codes` (`None` where a row
    has no input image); rows that already carry code grids are checked and kept. Text columns stay strings: the
    collator tokenises them, which is cheap, and conditioning dropout needs the raw instruction.

    Args:
        dataset (`datasets.Dataset` or `datasets.IterableDataset`): Rows in the pararl schema.
        processor ([`~pararl.processing.ParallelProcessor`]): Holds the image tokenizer and the text budgets;
            its `truncate_prompt` / `truncate_reasoning` decide between an error and a warning for long texts.
        num_proc (`int`, *optional*): Worker processes for `map` (map-style datasets only).
        batch_size (`int`, defaults to `64`): Rows per image-tokenizer call.
        desc (`str`, *optional*): Progress-bar label.

    Returns:
        The pre-tokenised dataset.

    Raises:
        ValueError: a row misses a required field, has an image of the wrong size or with content the image
            tokenizer rejects, codes of the wrong shape or range, an unknown task, or a text over its budget
            (unless truncation is enabled); the message names the row index and the field.
    """
    columns = dataset.column_names
    if columns is not None:
        for name in ("prompt", "reasoning"):
            if name not in columns:
                raise ValueError(f"dataset has no {name!r} column (columns: {columns}); it is a required field.")
        if "output_image" not in columns and "output_image_codes" not in columns:
            raise ValueError(
                f"dataset has neither an 'output_image' nor an 'output_image_codes' column (columns: {columns}); the "
                "output image is a required field."
            )
    columns = columns or []
    remove = [name for name, _, _ in _IMAGE_FIELDS if name in columns]
    has_input_image = "image" in columns or "image_codes" in columns

    def encode(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
        rows = _validate_rows(batch, [f"row {index}" for index in indices], processor)
        out = {"output_image_codes": [grid.tolist() for grid in rows.output_images]}
        if has_input_image or any(grid is not None for grid in rows.images):
            out["image_codes"] = [grid.tolist() if grid is not None else None for grid in rows.images]
        return out

    features = None
    if dataset.features is not None:
        features = datasets.Features({name: value for name, value in dataset.features.items() if name not in remove})
        features["output_image_codes"] = _CODES_FEATURE
        if has_input_image:
            features["image_codes"] = _CODES_FEATURE
    map_kwargs = {"batched": True, "with_indices": True, "batch_size": batch_size, "remove_columns": remove}
    if isinstance(dataset, datasets.Dataset):
        map_kwargs.update(num_proc=num_proc, desc=desc or "Pre-tokenising images")
    return dataset.map(encode, features=features, **map_kwargs)


@dataclass
class DataCollatorForParallelSFT:
    """Turns pararl rows into model inputs for parallel SFT, with conditioning dropout.

    Each batch becomes `input_ids` / `attention_mask` (the input part, right-padded) and `labels` (the clean output
    part, `(B, L_out)`); the trainer masks the output part. Rows may hold PIL images (encoded here) or the code grids
    written by [`pretokenize_dataset`]. Conditioning dropout asks the processor for the unconditional input part
    (`encode_prompts(..., drop_prompt=..., drop_image=...)`), so a dropped row is exactly the rollout's
    unconditional row.

    Args:
        processor ([`~pararl.processing.ParallelProcessor`]): Builds the input and output parts.
        prompt_dropout (`float`, defaults to `0.0`): Probability of dropping a row's instruction.
        image_dropout (`float`, defaults to `0.0`): Probability of dropping a row's input image (rows that have
            one), independently of `prompt_dropout`.
        seed (`int`, *optional*): Seed of the collator's own random generator (the global RNG is never used). In a
            DataLoader worker the generator is seeded from the worker's seed instead, so workers draw different
            decisions. `None` seeds it from the global RNG once, at the first call.

    Raises:
        ValueError: on a bad row, naming its position in the batch and the field.
    """

    processor: ParallelProcessor
    prompt_dropout: float = 0.0
    image_dropout: float = 0.0
    seed: int | None = None
    _generator: torch.Generator | None = field(default=None, init=False, repr=False)
    _generator_key: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        for name in ("prompt_dropout", "image_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {getattr(self, name)}.")

    def generator(self) -> torch.Generator:
        """The generator of this process (or DataLoader worker)."""
        worker = get_worker_info()
        key = None if worker is None else worker.seed
        if self._generator is None or key != self._generator_key:
            if worker is not None:
                seed = worker.seed
            elif self.seed is not None:
                seed = self.seed
            else:
                seed = int(torch.randint(0, 2**62, ()).item())
            self._generator = torch.Generator().manual_seed(seed % 2**63)
            self._generator_key = key
        return self._generator

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(examples) == 0:
            raise ValueError("cannot collate an empty batch.")
        for j, example in enumerate(examples):
            if not isinstance(example, Mapping):
                raise ValueError(f"example {j} of the batch must be a dict-like row, got {type(example).__name__}.")
        columns = {name: [example.get(name) for example in examples] for name in _COLUMNS}
        labels = [f"example {j} of the batch" for j in range(len(examples))]
        rows = _validate_rows(columns, labels, self.processor)

        # Both draws always happen, so the random stream does not depend on which rows have an input image.
        draws = torch.rand(len(examples), 2, generator=self.generator())
        drop_prompt = (draws[:, 0] < self.prompt_dropout).tolist()
        has_image = [grid is not None for grid in rows.images]
        drop_image = [bool(d) and h for d, h in zip((draws[:, 1] < self.image_dropout).tolist(), has_image)]

        inputs = self.processor.encode_prompts(
            rows.prompts, rows.images, rows.tasks, drop_prompt=drop_prompt, drop_image=drop_image
        )
        outputs = self.processor.encode_outputs(rows.reasoning, rows.output_images)
        return {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "labels": outputs}
