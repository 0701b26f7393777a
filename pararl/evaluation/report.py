"""Tables of judged outputs: per category x axis, per task and overall (0-100), with bootstrap 95% intervals, and
the side-by-side comparison of two runs (e.g. before and after RL).

An axis of a group is the mean of its per-sample scores over the samples where the axis applies and the verdict is
not missing; *Overall* is the mean of the group's axis means (as ParaBench and `pararl.toy.evaluate` average).
Missing verdicts are counted per group and per axis, never scored: the table marks a mean over fewer samples than
the group holds (`*`), and writes `missing` where an axis of a group has no verdict at all (then Overall is `missing`
too, not a mean of the other axes). Intervals are percentile bootstraps over the group's samples
(the Overall interval re-averages the axes of each resample); comparisons resample the shared ids in pairs.
"""

import json
import math
from collections.abc import Sequence

import numpy as np

from ..axes import AXES, AXIS_HEADERS
from .judges import Judgement, Sample, axes_for


__all__ = ["AXIS_HEADERS", "compare_runs", "format_comparison", "format_report", "summarize"]


def _matrix(judgements: Sequence[Judgement]) -> np.ndarray:
    """`(N, 6)` scores, NaN where an axis does not apply or the verdict is missing."""
    values = np.full((len(judgements), len(AXES)), np.nan)
    for i, judgement in enumerate(judgements):
        if judgement.missing:
            continue
        for j, axis in enumerate(AXES):
            value = judgement.scores.get(axis)
            if value is not None:
                values[i, j] = float(value)
    return values


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    count = (~np.isnan(values)).sum(axis)
    total = np.nansum(values, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _means(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis means `(..., 6)` and Overall `(...)` of score matrices `(..., N, 6)`."""
    axes = _nanmean(values, -2)
    return axes, _nanmean(axes, -1)


def _percentiles(samples: np.ndarray) -> np.ndarray:
    """`(2, K)` 2.5% and 97.5% percentiles of bootstrap draws `(B, K)`, NaN for columns with no value."""
    bounds = np.full((2, samples.shape[1]), np.nan)
    valid = ~np.isnan(samples).all(0)
    if valid.any():
        bounds[:, valid] = np.nanpercentile(samples[:, valid], [2.5, 97.5], axis=0)
    return bounds


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 4)


def _group(values: np.ndarray, lost: np.ndarray, num_bootstrap: int, rng: np.random.Generator) -> dict:
    """The table of one group; `lost` `(N, 6)` marks the axes that apply to a sample whose verdict is missing."""
    missing = int(lost.any(1).sum())
    axes, overall = _means(values)
    if (np.isnan(axes) & lost.any(0)).any():  # an axis with no verdict at all: no Overall over the others
        overall = np.nan
    table = {"num_samples": int(values.shape[0]), "missing": int(missing), "axes": {}, "overall": {}}
    low, high = np.full(len(AXES), np.nan), np.full(len(AXES), np.nan)
    overall_low = overall_high = np.nan
    if num_bootstrap > 0 and values.shape[0] > 0:
        index = rng.integers(0, values.shape[0], size=(num_bootstrap, values.shape[0]))
        boot_axes, boot_overall = _means(values[index])
        low, high = _percentiles(boot_axes)
        overall_low, overall_high = _percentiles(boot_overall[:, None])[:, 0]
    for j, axis in enumerate(AXES):
        count = int((~np.isnan(values[:, j])).sum())
        table["axes"][axis] = {
            "mean": _number(axes[j]),
            "low": _number(low[j]),
            "high": _number(high[j]),
            "n": count,
            "missing": int(lost[:, j].sum()),
        }
    if np.isnan(overall):
        overall_low = overall_high = np.nan
    table["overall"] = {"mean": _number(overall), "low": _number(overall_low), "high": _number(overall_high)}
    return table


def _groups(samples: Sequence[Sample]) -> dict[str, dict[str, list[int]]]:
    groups: dict[str, dict[str, list[int]]] = {"categories": {}, "tasks": {}}
    for i, sample in enumerate(samples):
        groups["categories"].setdefault(sample.category, []).append(i)
        groups["tasks"].setdefault(sample.task, []).append(i)
    return groups


def _check_pairs(samples: Sequence[Sample], judgements: Sequence[Judgement]) -> None:
    if len(samples) != len(judgements) or any(s.id != j.id for s, j in zip(samples, judgements)):
        raise ValueError("judgements must be given in the order of the samples, one per sample.")


def summarize(
    samples: Sequence[Sample], judgements: Sequence[Judgement], num_bootstrap: int = 1000, seed: int = 0
) -> dict:
    """The report as a JSON-able dict: `{"overall": table, "tasks": {task: table}, "categories": {category: table},
    "judge": ...}`, each table `{"num_samples", "missing", "axes": {axis: {"mean", "low", "high", "n", "missing"}},
    "overall": {"mean", "low", "high"}}` (0-100; `low`/`high` the 95% bootstrap interval; `None` where there is no
    verdict to average)."""
    _check_pairs(samples, judgements)
    values = _matrix(judgements)
    lost = np.array(
        [[j.missing and axis in axes_for(s.task) for axis in AXES] for s, j in zip(samples, judgements)], dtype=bool
    ).reshape(len(samples), len(AXES))
    rng = np.random.default_rng(seed)
    result = {"overall": _group(values, lost, num_bootstrap, rng), "tasks": {}, "categories": {}}
    for kind, groups in _groups(samples).items():
        for name in sorted(groups):
            rows = np.array(groups[name])
            result[kind][name] = _group(values[rows], lost[rows], num_bootstrap, rng)
    result["num_bootstrap"] = num_bootstrap
    return result


def _cell(entry: dict, missing: int, intervals: bool = True) -> str:
    """`mean [low, high]`; `*` after a mean over fewer samples than apply, `missing` for no verdict, `-` for an
    axis that does not apply."""
    if entry.get("mean") is None:
        return "missing" if missing else "-"
    mark = " *" if missing else ""
    if not intervals or entry.get("low") is None:
        return f"{entry['mean']:.1f}{mark}"
    return f"{entry['mean']:.1f} [{entry['low']:.1f}, {entry['high']:.1f}]{mark}"


def _markdown(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def format_report(result: dict, title: str | None = None) -> str:
    """Markdown: one row per category, then one per task, then all; cells `mean [low, high]`."""
    headers = ["group", "n", "missing", *(AXIS_HEADERS[a] for a in AXES), "Overall"]

    def row(name, table):
        cells = [_cell(table["axes"][a], table["axes"][a].get("missing", 0)) for a in AXES]
        overall = _cell(table["overall"], table["missing"])
        return [name, str(table["num_samples"]), str(table["missing"]), *cells, overall]

    rows = [row(name, table) for name, table in result["categories"].items()]
    rows += [row(f"**{task} (all)**", table) for task, table in result["tasks"].items()]
    rows.append(row("**all**", result["overall"]))
    text = _markdown(headers, rows)
    note = (
        f"Scores 0-100; [low, high] = 95% bootstrap interval ({result.get('num_bootstrap')} resamples). "
        "'missing' = verdicts the judge could not give (malformed replies, failed requests): counted, never scored; "
        "`*` = a mean over the judged samples only; a `missing` cell has no verdict at all."
    )
    return (f"## {title}\n\n" if title else "") + text + "\n\n" + note + "\n"


def compare_runs(
    samples_a: Sequence[Sample],
    judgements_a: Sequence[Judgement],
    samples_b: Sequence[Sample],
    judgements_b: Sequence[Judgement],
    num_bootstrap: int = 1000,
    seed: int = 0,
) -> dict:
    """Run B against run A over the ids both hold: per group and axis the two means and B - A with a paired
    bootstrap 95% interval. Returns `{"num_shared", "only_a", "only_b", "overall": ..., "tasks": ..., "categories":
    ...}`, each group `{axis or "overall": {"a", "b", "delta", "low", "high"}, "num_samples"}`."""
    _check_pairs(samples_a, judgements_a)
    _check_pairs(samples_b, judgements_b)
    index_b = {s.id: i for i, s in enumerate(samples_b)}
    shared = [i for i, s in enumerate(samples_a) if s.id in index_b]
    if not shared:
        raise ValueError("the two runs share no sample id; compare runs of the same benchmark.")
    a = _matrix(judgements_a)[shared]
    b = _matrix(judgements_b)[[index_b[samples_a[i].id] for i in shared]]
    kept = [samples_a[i] for i in shared]
    rng = np.random.default_rng(seed)

    def group(rows: np.ndarray) -> dict:
        axes_a, overall_a = _means(a[rows])
        axes_b, overall_b = _means(b[rows])
        out = {"num_samples": len(rows)}
        if num_bootstrap > 0:
            index = rows[rng.integers(0, len(rows), size=(num_bootstrap, len(rows)))]
            boot_a, boot_overall_a = _means(a[index])
            boot_b, boot_overall_b = _means(b[index])
            bounds = _percentiles(
                np.concatenate([boot_b - boot_a, (boot_overall_b - boot_overall_a)[:, None]], axis=1)
            )
        else:
            bounds = np.full((2, len(AXES) + 1), np.nan)
        for j, name in enumerate([*AXES, "overall"]):
            mean_a = overall_a if name == "overall" else axes_a[j]
            mean_b = overall_b if name == "overall" else axes_b[j]
            out[name] = {
                "a": _number(mean_a),
                "b": _number(mean_b),
                "delta": _number(mean_b - mean_a),
                "low": _number(bounds[0, j]),
                "high": _number(bounds[1, j]),
            }
        return out

    result = {
        "num_shared": len(shared),
        "only_a": len(samples_a) - len(shared),
        "only_b": len(samples_b) - len(shared),
        "overall": group(np.arange(len(shared))),
        "tasks": {},
        "categories": {},
    }
    for kind, groups in _groups(kept).items():
        for name in sorted(groups):
            result[kind][name] = group(np.array(groups[name]))
    return result


def format_comparison(result: dict, name_a: str = "A", name_b: str = "B") -> str:
    """Markdown: per group and axis `A -> B (delta [low, high])`."""
    headers = ["group", "n", *(AXIS_HEADERS[a] for a in AXES), "Overall"]

    def cell(entry):
        if entry["delta"] is None:
            return "-"
        interval = f" [{entry['low']:+.1f}, {entry['high']:+.1f}]" if entry["low"] is not None else ""
        return f"{entry['a']:.1f} → {entry['b']:.1f} ({entry['delta']:+.1f}{interval})"

    def row(name, table):
        return [name, str(table["num_samples"]), *(cell(table[a]) for a in [*AXES, "overall"])]

    rows = [row(name, table) for name, table in result["categories"].items()]
    rows += [row(f"**{task} (all)**", table) for task, table in result["tasks"].items()]
    rows.append(row("**all**", result["overall"]))
    note = (
        f"{name_a} → {name_b} (B - A [95% paired bootstrap interval]) over {result['num_shared']} shared ids "
        f"({result['only_a']} only in {name_a}, {result['only_b']} only in {name_b})."
    )
    return _markdown(headers, rows) + "\n\n" + note + "\n"


def dump_json(data: dict, path) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
