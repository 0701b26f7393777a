"""ParaBench-style evaluation of any checkpoint: generate (resumable), judge on six axes (an OpenAI-compatible VLM,
the toy world's exact evaluator, or CLIP; cached on disk), report per category with intervals and an HTML gallery.

Run it with `python -m pararl.evaluation --help`.
"""

from .cache import JudgeCache, cached_judge
from .data import TASKS, BenchmarkRow, ColumnMap, export_toy_benchmark, load_benchmark, save_benchmark
from .gallery import write_gallery
from .generation import generate_outputs, load_policy, read_outputs, row_seed
from .judges import AXES, APIJudge, CLIPJudge, Judge, Judgement, Sample, ToyJudge, axes_for, load_samples, parse_reply
from .report import compare_runs, format_comparison, format_report, summarize


__all__ = [
    "AXES",
    "APIJudge",
    "BenchmarkRow",
    "CLIPJudge",
    "ColumnMap",
    "Judge",
    "JudgeCache",
    "Judgement",
    "Sample",
    "TASKS",
    "ToyJudge",
    "axes_for",
    "cached_judge",
    "compare_runs",
    "export_toy_benchmark",
    "format_comparison",
    "format_report",
    "generate_outputs",
    "load_benchmark",
    "load_policy",
    "load_samples",
    "parse_reply",
    "read_outputs",
    "row_seed",
    "save_benchmark",
    "summarize",
    "write_gallery",
]
