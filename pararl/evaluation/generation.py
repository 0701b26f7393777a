"""Decode a checkpoint over a benchmark, resumably: one PNG and one JSONL line per prompt under an output folder.

Layout of a run folder:

- `run.json`: what produced the outputs (model, adapter, rollout settings, seed); a rerun with other settings is
  refused instead of mixing two runs in one folder.
- `outputs.jsonl`: one line per finished prompt: `id`, `prompt`, `task`, `category`, `seed`, `reasoning`,
  `output_image` (path), `input_image` (path or null), `image_codes` (the output's VQ code grid) and `references`
  (images as paths).
- `images/<id>.png` (outputs), `inputs/<id>.png` (edit inputs), `references/<id>.<field>.png` (reference images).

Each batch is appended and flushed to disk (`fsync`) as soon as it is decoded, so a killed run loses at most the
batch in flight; a rerun skips the ids already in `outputs.jsonl` (a truncated last line, from a kill mid-write, is
dropped and its prompt decoded again).
"""

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from pararl.image_tokenizers import tensor_to_images
from pararl.rollout import ParallelDecoder, RolloutConfig

from .data import BenchmarkRow


__all__ = ["OUTPUTS_FILE", "RUN_FILE", "generate_outputs", "load_policy", "read_outputs", "row_seed"]

OUTPUTS_FILE = "outputs.jsonl"
RUN_FILE = "run.json"
# Row seeds as pararl.toy.evaluate.generate_predictions derives them: the toy's held-out numbers are reproduced.
SEED_STRIDE = 1_000_003


def row_seed(seed: int, index: int) -> int:
    """The noise seed of the benchmark row at position `index`: independent of batching and of the other rows."""
    return index + int(seed) * SEED_STRIDE


def load_policy(
    model_name_or_path: str,
    adapter: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
):
    """A policy for evaluation: a saved `MaskedDiffusionLM` folder, a released checkpoint, or a base plus a LoRA
    adapter (`adapter`: a folder saved by peft, e.g. by `trainer.save_model()` with a `peft_config`).

    A folder holding `adapter_config.json` may also be passed as `model_name_or_path`: its base is then read from
    the adapter's `base_model_name_or_path`. Adapters are applied with peft and kept unmerged (exact either way).
    A checkpoint that lacks weights of the model is refused: they would be randomly initialised.
    """
    from pararl.models import MaskedDiffusionLM, is_released_checkpoint, load_released_checkpoint

    path = Path(model_name_or_path)
    if not path.is_dir():
        raise ValueError(f"--model_name_or_path {path} is not a local folder (evaluation runs offline).")
    if (path / "adapter_config.json").is_file():
        if adapter is not None:
            raise ValueError(f"{path} is itself a LoRA adapter; pass the base as --model_name_or_path instead.")
        adapter = str(path)
        base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ValueError(
                f"the adapter {path} names base {base!r}, which is not a local folder; pass the base model as "
                f"--model_name_or_path and the adapter as --adapter."
            )
        path = Path(base)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    if is_released_checkpoint(path):
        model = load_released_checkpoint(path, **kwargs)
    else:
        model, info = MaskedDiffusionLM.from_pretrained(str(path), output_loading_info=True, **kwargs)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"{path} lacks {len(missing)} weights (e.g. {missing[:3]}); they would be randomly initialised and "
                "the outputs meaningless. Point at a complete checkpoint."
            )
    if adapter is not None:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise ValueError(f"--adapter {adapter} holds no adapter_config.json (not a peft adapter folder).")
        model = PeftModel.from_pretrained(model, adapter)
    return model.to(device).eval()


def read_outputs(folder: str | os.PathLike) -> list[dict]:
    """The finished outputs of a run folder, in the order they were written; a truncated last line is dropped."""
    path = Path(folder) / OUTPUTS_FILE
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the line a kill interrupted: no newline after it
                break
            raise ValueError(
                f"{path}:{number} is corrupt ({error}); only a truncated last line is tolerated."
            ) from error
    return records


def _drop_truncated_tail(path: Path) -> None:
    """Cuts `path` after its last newline, so that appending never glues a new line onto a half-written one."""
    if not path.is_file():
        return
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with open(path, "r+b") as f:
            f.truncate(end)


def _describe(config: RolloutConfig) -> dict:
    return {key: value if isinstance(value, int | float | str | None) else repr(value) for key, value in
            dataclasses.asdict(config).items()}  # fmt: skip


def _check_run(folder: Path, run: dict) -> None:
    path = folder / RUN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in set(previous) | set(run) if previous.get(key) != run.get(key))
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} -> {run.get(key)!r}" for key in changed)
            raise ValueError(
                f"{folder} holds outputs of another run ({details}); use a new --output_dir to compare settings."
            )
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run, indent=2) + "\n")


def _save(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return str(path.relative_to(path.parent.parent))


def generate_outputs(
    model,
    processor,
    rows: Sequence[BenchmarkRow],
    output_dir: str | os.PathLike,
    rollout_config: RolloutConfig | None = None,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = True,
    run_info: dict | None = None,
) -> list[dict]:
    """Decodes every row not yet in `output_dir`, a batch at a time, and returns all the run's outputs.

    Args:
        model: The policy (a `MaskedDiffusionLM`, or a peft model wrapping one).
        processor ([`~pararl.processing.ParallelProcessor`]): The model's processor.
        rows: Benchmark rows (:func:`~pararl.evaluation.data.load_benchmark`).
        output_dir: The run folder (layout in the module docstring).
        rollout_config ([`~pararl.rollout.RolloutConfig`], *optional*): Sampling settings (decoder defaults).
        batch_size: Prompts per rollout.
        seed: Base of the row seeds (:func:`row_seed`).
        progress: Show a progress bar.
        run_info: Extra identity of the run (model path, adapter) recorded in `run.json` and checked on resume.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    folder = Path(output_dir)
    config = rollout_config if rollout_config is not None else RolloutConfig()
    _check_run(folder, {**(run_info or {}), "rollout": _describe(config), "seed": int(seed)})
    outputs_path = folder / OUTPUTS_FILE
    _drop_truncated_tail(outputs_path)
    done = {record["id"]: record for record in read_outputs(folder)}
    for row in rows:
        if row.id in done and (done[row.id]["prompt"], done[row.id]["task"]) != (row.prompt, row.task):
            raise ValueError(
                f"{folder / OUTPUTS_FILE} holds id {row.id!r} for another prompt ({done[row.id]['prompt']!r}, now "
                f"{row.prompt!r}); the benchmark changed: use a new --output_dir."
            )
    todo = [row for row in rows if row.id not in done]
    decoder = ParallelDecoder(model, processor, config)
    bar = tqdm(total=len(rows), initial=len(rows) - len(todo), disable=not progress, desc="generating", unit="prompt")
    model.eval()
    with open(outputs_path, "a") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            seeds = torch.tensor([row_seed(seed, row.index) for row in batch], dtype=torch.long)
            with torch.inference_mode():
                trajectory = decoder.generate(
                    [row.prompt for row in batch],
                    images=[row.image for row in batch],
                    tasks=[row.task for row in batch],
                    seeds=seeds,
                )
            output_ids = trajectory.output_ids.cpu()
            texts = processor.decode_text(output_ids)
            codes = processor.image_codes(output_ids)
            pictures = tensor_to_images(processor.decode_images(codes).float().cpu())
            lines = []
            for row, text, grid, picture, row_seed_value in zip(batch, texts, codes, pictures, seeds.tolist()):
                references = {
                    key: _save(value, folder / "references" / f"{row.id}.{key}.png")
                    if isinstance(value, Image.Image)
                    else value
                    for key, value in row.references.items()
                }
                record = {
                    "id": row.id,
                    "prompt": row.prompt,
                    "task": row.task,
                    "category": row.category,
                    "seed": row_seed_value,
                    "reasoning": text,
                    "output_image": _save(picture, folder / "images" / f"{row.id}.png"),
                    "input_image": None
                    if row.image is None
                    else _save(row.image, folder / "inputs" / f"{row.id}.png"),
                    "image_codes": grid.tolist(),
                    "references": references,
                }
                lines.append(json.dumps(record) + "\n")
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    bar.close()
    return read_outputs(folder)
