"""An on-disk cache of judgements, keyed by (judge, judge model, prompt template, sample content hash).

Reruns, resumed runs and a second report over the same outputs never pay for a judgement twice. One small JSON file
per key, written atomically (temporary file + rename), so concurrent or killed runs never leave a half entry.
Missing verdicts from malformed replies are cached too (they were paid for; `retry_missing=True` asks again);
transport failures are not (nothing was paid, and a rerun should ask again).
"""

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .judges import Judge, Judgement, Sample


__all__ = ["JudgeCache", "cached_judge", "merge_judgements", "write_atomic"]


class JudgeCache:
    """Judgements under `folder/<key[:2]>/<key>.json`."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    @staticmethod
    def key(judge: Judge, sample: Sample) -> str:
        identity = judge.identity()
        payload = json.dumps(
            [identity.get("judge"), identity.get("model"), identity.get("template"), sample.content_hash()]
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:  # never written by put(); treat a damaged entry as absent
            return None

    def put(self, key: str, judgement: Judgement) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = judgement.to_dict()
        data.pop("id")  # the same content under another id reuses the verdict
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)


def cached_judge(
    judge: Judge,
    samples: Sequence[Sample],
    cache: JudgeCache | None,
    retry_missing: bool = False,
    chunk_size: int = 32,
    progress: bool = False,
) -> tuple[list[Judgement], dict[str, int]]:
    """Judges `samples`, asking `judge` only for those the cache has no verdict for, `chunk_size` samples at a time
    (each chunk is cached as soon as it is judged, so a killed run keeps what it paid for).

    Returns the judgements (in sample order) and counts `{"cached": ..., "judged": ..., "missing": ...}`.
    """
    from tqdm.auto import tqdm

    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    keys = [cache.key(judge, sample) if cache is not None else None for sample in samples]
    results: list[Judgement | None] = [None] * len(samples)
    todo = []
    for i, key in enumerate(keys):
        entry = cache.get(key) if cache is not None else None
        if entry is not None and not (retry_missing and entry.get("missing")):
            results[i] = Judgement.from_dict({"id": samples[i].id, **entry})
        else:
            todo.append(i)
    bar = tqdm(total=len(todo), disable=not progress, desc=f"judging ({judge.name})", unit="sample")
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        fresh = judge.judge([samples[i] for i in chunk])
        if len(fresh) != len(chunk):
            raise RuntimeError(f"judge {judge.name!r} returned {len(fresh)} judgements for {len(chunk)} samples.")
        for i, judgement in zip(chunk, fresh):
            if cache is not None and judgement.cacheable:
                cache.put(keys[i], judgement)
            results[i] = judgement
        bar.update(len(chunk))
    bar.close()
    missing = sum(1 for r in results if r.missing)
    return results, {"cached": len(samples) - len(todo), "judged": len(todo), "missing": missing}


def merge_judgements(path: str | os.PathLike, judgements: Sequence[Judgement], keys: Sequence[str]) -> int:
    """Merges judgements into the JSONL file at `path` (one line per sample id, with its cache `key`) and writes it
    atomically (temporary file + rename); returns the number of lines.

    A partial run (`--categories`, `--limit`) replaces only the lines of the samples it judged: every other line is
    kept. A fresh *missing* verdict never replaces a valid one of the same key (same judge and content): a failed
    request must not erase a verdict that was paid for.
    """
    path = Path(path)
    lines: dict[str, dict] = {}
    if path.is_file():
        for number, text in enumerate(path.read_text().splitlines(), 1):
            if text.strip():
                try:
                    entry = json.loads(text)
                    lines[entry["id"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError) as error:
                    raise ValueError(
                        f"{path} line {number} is not a judgement ({error}); move the file away to judge afresh."
                    ) from error
    for judgement, key in zip(judgements, keys, strict=True):
        old = lines.get(judgement.id)
        if judgement.missing and old is not None and not old.get("missing") and old.get("key") == key:
            continue
        lines[judgement.id] = {**judgement.to_dict(), "key": key}
    write_atomic(path, "".join(json.dumps(entry) + "\n" for entry in lines.values()))
    return len(lines)


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to a temporary file beside `path`, then renames it over `path`: a killed run leaves the old file
    or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as f:
        f.write(text)
    try:
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise
