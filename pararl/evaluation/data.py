"""The benchmark schema and its loader: ParaBench-style prompts from a `datasets` folder or a JSONL file.

A benchmark is a list of rows with these fields (the names the rest of `pararl.evaluation` uses):

- `id` (`str`): unique per row; outputs, judgements and the cache refer to rows by it.
- `prompt` (`str`): the instruction.
- `image` (PIL image or `None`): the input image of an edit; `None` for generation.
- `task` (`str`): `"edit"` or `"generate"`.
- `category` (`str`): the row's category (ParaBench: e.g. its edit and generation categories); reports group by it.
- `references` (`dict`): any other field a judge may use (strings, numbers, JSON strings or images), e.g. the toy
  world's `reasoning` (ground-truth reasoning), `output_image` (target picture) and `answer` (the structured truth
  its exact evaluator needs).
- `index` (`int`): the row's position in the benchmark file (before any filtering); the row seed of its sampling
  noise derives from it, as `pararl.toy.evaluate` does.

On disk a benchmark is either a folder written by `datasets.Dataset.save_to_disk` (images as `datasets.Image`
columns) or a JSONL file, one object per line, whose image fields are paths relative to the file (or absolute); a
reference field whose value is a path ending in `.png`, `.jpg`, `.jpeg` or `.webp` is read as an image too. Column
names are mapped by :class:`ColumnMap`; a mapped column that is missing is an error naming it (the hub layout of
ParaBench is not verified here, so nothing is guessed).
"""

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


__all__ = ["TASKS", "BenchmarkRow", "ColumnMap", "export_toy_benchmark", "load_benchmark", "save_benchmark"]

TASKS = ("edit", "generate")


@dataclass
class BenchmarkRow:
    """One benchmark prompt in the schema above."""

    id: str
    prompt: str
    task: str
    category: str
    image: Image.Image | None = None
    references: dict[str, Any] = field(default_factory=dict)
    index: int = 0


@dataclass(frozen=True)
class ColumnMap:
    """Which source column holds each schema field.

    `task=None` derives the task from the image (`edit` where the row has an input image, else `generate`): only
    when asked, never as a silent fallback. `references=None` keeps every other column as a reference field.
    """

    id: str = "id"
    prompt: str = "prompt"
    image: str | None = "image"
    task: str | None = "task"
    category: str = "category"
    references: tuple[str, ...] | None = None


def _read_rows(path: Path) -> tuple[list[dict], list[str], Path]:
    """Raw rows, their column names and the folder image paths are relative to."""
    if path.is_dir():
        import datasets

        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            raise ValueError(
                f"{path} holds a DatasetDict with splits {list(dataset)}; pass the folder of one split "
                f"(e.g. {path / next(iter(dataset))})."
            )
        return [dict(row) for row in dataset], list(dataset.column_names), path
    if path.suffix not in (".jsonl", ".json"):
        raise ValueError(f"benchmark {path} must be a `datasets` save_to_disk folder or a .jsonl file.")
    rows, columns = [], []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number} is not valid JSON ({error}).") from error
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number} must be a JSON object, got {type(row).__name__}.")
            rows.append(row)
            columns += [key for key in row if key not in columns]
    return rows, columns, path.parent


def _open_image(value, base: Path, where: str) -> Image.Image | None:
    """A PIL image from a `datasets` image, a path (relative to `base`) or None; unreadable -> an error naming it."""
    if value is None:
        return None
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):  # an undecoded datasets.Image cell
        value = value["path"] if not value.get("bytes") else value
    if isinstance(value, dict):
        import io

        source = io.BytesIO(value["bytes"])
    elif isinstance(value, str | os.PathLike):
        source = Path(value) if Path(value).is_absolute() else base / value
        if not source.is_file():
            raise ValueError(f"{where}: image file {source} does not exist.")
    else:
        raise ValueError(f"{where}: an image must be a path or an image, got {type(value).__name__}.")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except Exception as error:  # PIL raises several types for broken files
        raise ValueError(f"{where}: cannot read image {source} ({type(error).__name__}: {error}).") from error


def load_benchmark(
    path: str | os.PathLike,
    columns: ColumnMap | None = None,
    categories: Sequence[str] | None = None,
    tasks: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[BenchmarkRow]:
    """Loads a benchmark in the schema above.

    Args:
        path: A `save_to_disk` folder or a `.jsonl` file.
        columns: Source column of each field (default: the schema's own names).
        categories: Keep only these categories; a name the benchmark does not have is an error listing those it has.
        tasks: Keep only these tasks (`"edit"`, `"generate"`).
        limit: Keep the first `limit` rows (after filtering), for quick runs.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"benchmark {path} does not exist.")
    columns = columns or ColumnMap()
    raw, names, base = _read_rows(path)
    required = {"id": columns.id, "prompt": columns.prompt, "category": columns.category}
    if columns.task is not None:
        required["task"] = columns.task
    if columns.image is not None:
        required["image"] = columns.image
    for field_name, column in required.items():
        if column not in names:
            flag = f"--{field_name}_column"
            raise ValueError(
                f"benchmark {path} has no column {column!r} for the field {field_name!r} (its columns: {names}); "
                f"name the right one with {flag}."
            )
    used = set(required.values())
    reference_columns = columns.references if columns.references is not None else [c for c in names if c not in used]
    for column in reference_columns:
        if column not in names:
            raise ValueError(f"benchmark {path} has no reference column {column!r} (its columns: {names}).")

    rows, seen = [], set()
    for number, item in enumerate(raw):
        where = f"{path} row {number}"
        row_id = item.get(columns.id)
        if row_id is None or str(row_id) == "":
            raise ValueError(f"{where}: empty {columns.id!r} (the id).")
        row_id = str(row_id)
        where = f"{path} row {number} (id {row_id!r})"
        if row_id in seen:
            raise ValueError(f"{where}: the id is not unique.")
        if any(c in row_id for c in "/\\") or row_id in (".", ".."):
            raise ValueError(f"{where}: ids name output files and may not contain '/' or '\\'.")
        seen.add(row_id)
        prompt = item.get(columns.prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError(f"{where}: {columns.prompt!r} must be a non-empty string, got {prompt!r}.")
        image = _open_image(item.get(columns.image), base, where) if columns.image is not None else None
        task = item.get(columns.task) if columns.task is not None else ("edit" if image is not None else "generate")
        if task not in TASKS:
            raise ValueError(f"{where}: task {task!r} is not one of {list(TASKS)}.")
        if task == "edit" and image is None:
            raise ValueError(f"{where}: an edit needs an input image in {columns.image!r}.")
        category = item.get(columns.category)
        if not isinstance(category, str) or not category:
            raise ValueError(f"{where}: {columns.category!r} must be a non-empty string, got {category!r}.")
        references = {}
        for column in reference_columns:
            value = item.get(column)
            if isinstance(value, Image.Image | dict) or (
                isinstance(value, str) and Path(value).suffix.lower() in (".png", ".jpg", ".jpeg", ".webp")
            ):
                value = _open_image(value, base, f"{where} reference {column!r}")
            references[column] = value
        rows.append(BenchmarkRow(row_id, prompt, task, category, image, references, index=number))

    known = sorted({row.category for row in rows})
    if categories is not None:
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; the benchmark has {known}.")
        rows = [row for row in rows if row.category in set(categories)]
    if tasks is not None:
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown tasks {unknown}; use {list(TASKS)}.")
        rows = [row for row in rows if row.task in set(tasks)]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}.")
        rows = rows[:limit]
    if not rows:
        raise ValueError(f"benchmark {path} holds no rows after filtering.")
    return rows


def save_benchmark(rows: Sequence[BenchmarkRow], path: str | os.PathLike) -> Path:
    """Writes rows as `path` (a .jsonl file) with the images as PNG files in `<stem>_images/` beside it."""
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ValueError(f"save_benchmark writes a .jsonl file, got {path}.")
    folder = path.parent / f"{path.stem}_images"
    folder.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            record = {"id": row.id, "prompt": row.prompt, "task": row.task, "category": row.category, "image": None}
            if row.image is not None:
                row.image.save(folder / f"{row.id}.png")
                record["image"] = f"{folder.name}/{row.id}.png"
            for key, value in row.references.items():
                if isinstance(value, Image.Image):
                    value.save(folder / f"{row.id}.{key}.png")
                    value = f"{folder.name}/{row.id}.{key}.png"
                record[key] = value
            f.write(json.dumps(record) + "\n")
    return path


def export_toy_benchmark(path: str | os.PathLike, num_samples: int = 120, seed: int = 0) -> Path:
    """The toy world's held-out split (`build_toy_dataset("test", num_samples, seed)`) as a benchmark JSONL.

    Ids are `test-{index:05d}`; the references are the toy's `reasoning`, `output_image` and `answer`, which
    :class:`~pararl.evaluation.judges.ToyJudge` scores against.
    """
    from pararl.toy import build_toy_dataset

    dataset = build_toy_dataset("test", num_samples, seed=seed)
    rows = [
        BenchmarkRow(
            id=f"test-{index:05d}",
            prompt=row["prompt"],
            task=row["task"],
            category=row["category"],
            image=row["image"],
            references={"reasoning": row["reasoning"], "output_image": row["output_image"], "answer": row["answer"]},
            index=index,
        )
        for index, row in enumerate(dataset)
    ]
    return save_benchmark(rows, path)
