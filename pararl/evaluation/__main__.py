"""`python -m pararl.evaluation {generate,judge,report,run}`: ParaBench-style evaluation of a checkpoint.

    # the shipped toy policy on the toy world's held-out split, judged exactly, with tables and a gallery
    python -m pararl.evaluation run --benchmark toy --output_dir outputs/eval-toy --judge toy
    # ParaBench (a local copy) with GPT-4.1
    python -m pararl.evaluation run --benchmark /data/parabench.jsonl --model_name_or_path /ckpt \\
        --processor pararl.released:mmada_parallel_m_processor --judge api --judge_model gpt-4.1 \\
        --output_dir outputs/eval-parabench

A run folder holds the outputs (`outputs.jsonl`, `images/`), the judgements (`judgements/<judge>.jsonl`), the
reports (`report-<judge>.md/.json`) and the gallery (`gallery-<judge>.html`). Every step resumes: generation skips
finished ids, judging reuses the cache.
"""

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from .data import ColumnMap, export_toy_benchmark, load_benchmark


JUDGES = ("toy", "clip", "api")


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


def _share(value: str) -> float:
    share = float(value)
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"a share of the samples is in [0, 1], got {value}")
    return share


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("benchmark")
    group.add_argument(
        "--benchmark",
        required=True,
        help="A `datasets` save_to_disk folder or a .jsonl file in the benchmark schema (see pararl.evaluation.data),"
        " or 'toy': the toy world's held-out split, exported to <output_dir>/benchmark.jsonl.",
    )
    group.add_argument("--toy_samples", type=int, default=120, help="With --benchmark toy: number of prompts.")
    group.add_argument("--toy_seed", type=int, default=0, help="With --benchmark toy: seed of the toy split.")
    group.add_argument("--id_column", default="id", help="Column holding the unique row id.")
    group.add_argument("--prompt_column", default="prompt", help="Column holding the instruction.")
    group.add_argument(
        "--image_column", default="image", help="Column holding the input image (edits; empty for generation)."
    )
    group.add_argument("--task_column", default="task", help="Column holding the task, 'edit' or 'generate'.")
    group.add_argument(
        "--infer_task",
        action="store_true",
        help="The benchmark has no task column: rows with an input image are edits, the others generations.",
    )
    group.add_argument("--category_column", default="category", help="Column holding the category.")
    group.add_argument(
        "--reference_columns",
        default=None,
        help="Comma-separated reference columns kept for the judges (default: every column not mapped above).",
    )
    group.add_argument("--categories", default=None, help="Comma-separated categories to keep (default: all).")
    group.add_argument("--tasks", default=None, help="Comma-separated tasks to keep: edit, generate (default: both).")
    group.add_argument("--limit", type=int, default=None, help="Keep only the first N prompts (quick runs).")


def _add_generate_args(parser: argparse.ArgumentParser) -> None:
    from pararl.rollout.decoder import GUIDANCE_DROP, REMASKING
    from pararl.rollout.schedules import DECODE_ORDERS

    group = parser.add_argument_group("model")
    group.add_argument(
        "--model_name_or_path",
        default=None,
        help="Folder of a MaskedDiffusionLM or a released checkpoint, or of a LoRA adapter whose "
        "base_model_name_or_path is local (default: the shipped toy policy).",
    )
    group.add_argument("--adapter", default=None, help="Folder of a LoRA adapter (peft) applied to the model.")
    group.add_argument(
        "--processor",
        default="pararl.toy:toy_processor",
        help="'module:function' building the model's ParallelProcessor (as examples/pararl.py --processor).",
    )
    group.add_argument("--device", default=None, help="Device (default: cuda when available, else cpu).")
    group.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None, help="Model dtype.")
    group = parser.add_argument_group("sampling (pararl.rollout.RolloutConfig; omitted: its defaults)")
    group.add_argument("--num_steps", type=int, default=None, help="Length of the shared step axis (forwards).")
    group.add_argument(
        "--block_length", type=int, default=None, help="Semi-autoregressive text blocks (default: one)."
    )
    group.add_argument("--image_start", type=float, default=None, help="Fraction of the axis before the image starts.")
    group.add_argument("--order", choices=DECODE_ORDERS, default=None, help="Decoding order.")
    group.add_argument("--text_temperature", type=float, default=None, help="Text sampling temperature (0 = greedy).")
    group.add_argument(
        "--image_temperature", type=float, default=None, help="Image sampling temperature (0 = greedy)."
    )
    group.add_argument("--top_k", type=int, default=None, help="Keep the k most likely values per slot.")
    group.add_argument("--remasking", choices=REMASKING, default=None, help="How steps pick slots.")
    group.add_argument("--text_guidance_scale", type=float, default=None, help="Classifier-free guidance of the text.")
    group.add_argument(
        "--image_guidance_scale", type=float, default=None, help="Classifier-free guidance of the image."
    )
    group.add_argument("--guidance_drop", choices=GUIDANCE_DROP, default=None, help="What unconditional rows drop.")
    group.add_argument("--batch_size", type=int, default=16, help="Prompts per rollout.")
    group.add_argument(
        "--seed", type=int, default=0, help="Base of the per-row noise seeds (row seed = index + seed * 1000003)."
    )


def _add_judge_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("judge")
    group.add_argument(
        "--judge",
        choices=JUDGES,
        default="toy",
        help="toy: the toy world's exact evaluator; clip: CLIPScore-style scores of an open_clip model; api: a VLM "
        "behind any OpenAI-compatible server (GPT-4.1, or a local vLLM server).",
    )
    group.add_argument("--judge_model", default="gpt-4.1", help="api: the judge model name.")
    group.add_argument(
        "--base_url", default=None, help="api: the server, e.g. http://localhost:8000/v1 (default: OpenAI)."
    )
    group.add_argument("--api_key", default=None, help="api: the key (default: $OPENAI_API_KEY; 'EMPTY' for none).")
    group.add_argument(
        "--template_dir",
        default=None,
        help="api: folder with system.txt / edit.txt / generate.txt replacing the built-in rubric prompts.",
    )
    group.add_argument("--max_concurrency", type=int, default=8, help="api: requests in flight at once.")
    group.add_argument(
        "--max_retries", type=int, default=6, help="api: retries (with backoff) on 429, 5xx and timeouts."
    )
    group.add_argument("--timeout", type=float, default=120.0, help="api: seconds per request.")
    group.add_argument(
        "--max_parse_attempts", type=int, default=2, help="api: requests per sample while replies are malformed."
    )
    group.add_argument("--json_mode", action="store_true", help="api: ask for response_format json_object.")
    group.add_argument(
        "--clip_model",
        default="toy",
        help="clip: 'toy' (the shipped tiny CLIP), an open_clip architecture with --clip_pretrained, or "
        "'local-dir:PATH'.",
    )
    group.add_argument("--clip_pretrained", default=None, help="clip: local weights file for --clip_model.")
    group.add_argument("--cache_dir", default=None, help="Judgement cache (default: <output_dir>/judge_cache).")
    group.add_argument("--retry_missing", action="store_true", help="Ask again for cached missing verdicts.")
    group.add_argument(
        "--max_missing",
        type=_share,
        default=0.0,
        help="Share of the judged samples (0-1) that may end without a verdict (failed requests, malformed replies) "
        "before the command fails with exit status 1; the judgements are written either way.",
    )


def _add_report_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("report")
    group.add_argument(
        "--compare_to", default=None, help="Another run folder (e.g. before RL), judged by the same judge."
    )
    group.add_argument("--num_bootstrap", type=int, default=1000, help="Bootstrap resamples of the 95%% intervals.")
    group.add_argument(
        "--embed_images", action="store_true", help="Embed the images in the gallery (one portable file)."
    )
    group.add_argument("--title", default=None, help="Title of the report and gallery.")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pararl.evaluation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    formatter = argparse.ArgumentDefaultsHelpFormatter
    specs = {
        "generate": (
            "Decode the model over the benchmark into <output_dir> (resumes).",
            [_add_data_args, _add_generate_args],
        ),
        "judge": ("Judge the outputs in <output_dir> (cached).", [_add_judge_args]),
        "report": ("Tables, comparison and HTML gallery of a judged run.", [_add_report_args]),
        "run": (
            "generate, judge and report in one go.",
            [_add_data_args, _add_generate_args, _add_judge_args, _add_report_args],
        ),
    }
    for name, (help_text, adders) in specs.items():
        sub = commands.add_parser(name, help=help_text, description=help_text, formatter_class=formatter)
        sub.add_argument("--output_dir", required=True, help="The run folder (outputs, judgements, reports).")
        if name == "report":
            sub.add_argument("--judge", choices=JUDGES, default="toy", help="Whose judgements to report.")
        if name in ("judge", "report"):
            sub.add_argument("--categories", default=None, help="Comma-separated categories to keep (default: all).")
        for add in adders:
            add(sub)
    return parser


# ---------------------------------------------------------------------------------------------------- commands
def _benchmark(args) -> list:
    path = args.benchmark
    if path == "toy":
        path = Path(args.output_dir) / "benchmark.jsonl"
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        export_toy_benchmark(path, args.toy_samples, seed=args.toy_seed)
    columns = ColumnMap(
        id=args.id_column,
        prompt=args.prompt_column,
        image=args.image_column or None,
        task=None if args.infer_task else args.task_column,
        category=args.category_column,
        references=tuple(_csv(args.reference_columns)) if args.reference_columns is not None else None,
    )
    return load_benchmark(path, columns, categories=_csv(args.categories), tasks=_csv(args.tasks), limit=args.limit)


def generate(args) -> list[dict]:
    import torch

    from pararl.processing import load_processor
    from pararl.rollout import RolloutConfig

    from .generation import generate_outputs, load_policy

    rows = _benchmark(args)
    processor = load_processor(args.processor)
    model_path = args.model_name_or_path
    if model_path is None:
        from pararl.toy import toy_policy_path

        model_path = toy_policy_path()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype) if args.dtype else None
    model = load_policy(model_path, args.adapter, device=device, dtype=dtype)
    names = ("num_steps", "block_length", "image_start", "order", "text_temperature", "image_temperature", "top_k",
             "remasking", "text_guidance_scale", "image_guidance_scale", "guidance_drop")  # fmt: skip
    config = RolloutConfig(**{name: getattr(args, name) for name in names if getattr(args, name) is not None})
    run_info = {"model": str(model_path), "adapter": args.adapter, "processor": args.processor}
    return generate_outputs(
        model, processor, rows, args.output_dir, config, batch_size=args.batch_size, seed=args.seed, run_info=run_info
    )


def build_judge(args):
    from .judges import APIJudge, CLIPJudge, ToyJudge

    if args.judge == "toy":
        return ToyJudge()
    if args.judge == "clip":
        if args.clip_model == "toy":
            from pararl.toy.clip import TOY_CLIP_DIR, TOY_CLIP_NAME, WEIGHTS_FILE, load_toy_clip

            model, tokenizer = load_toy_clip()
            return CLIPJudge(
                model=model, tokenizer=tokenizer, model_name=TOY_CLIP_NAME, weights=TOY_CLIP_DIR / WEIGHTS_FILE
            )
        return CLIPJudge(model_name=args.clip_model, pretrained=args.clip_pretrained)
    return APIJudge(
        args.judge_model,
        base_url=args.base_url,
        api_key=args.api_key,
        template_dir=args.template_dir,
        max_concurrency=args.max_concurrency,
        max_retries=args.max_retries,
        timeout=args.timeout,
        max_parse_attempts=args.max_parse_attempts,
        json_mode=args.json_mode,
    )


class TooManyMissing(RuntimeError):
    """More judgements missing than `--max_missing` allows (exit status 1)."""


class NothingToReport(RuntimeError):
    """Every judgement of the run is missing (exit status 1)."""


def missing_causes(judgements) -> list[tuple[str, int]]:
    """The distinct errors of the missing judgements with their counts, most frequent first."""
    return Counter(j.error or "no verdict" for j in judgements if j.missing).most_common()


def judge(args) -> dict:
    from .cache import JudgeCache, cached_judge, merge_judgements, write_atomic
    from .judges import load_samples

    samples = load_samples(args.output_dir, categories=_csv(args.categories) if "categories" in args else None)
    judge_ = build_judge(args)
    cache = JudgeCache(args.cache_dir or Path(args.output_dir) / "judge_cache")
    judgements, counts = cached_judge(judge_, samples, cache, retry_missing=args.retry_missing, progress=True)
    folder = Path(args.output_dir) / "judgements"
    # Merged by sample id: a run over some categories never drops the verdicts of the others.
    keys = [cache.key(judge_, sample) for sample in samples]
    counts["total"] = merge_judgements(folder / f"{args.judge}.jsonl", judgements, keys)
    counts["identity"] = judge_.identity()
    write_atomic(folder / f"{args.judge}.json", json.dumps(counts, indent=2) + "\n")
    print(f"judged {len(samples)} samples with {args.judge}: {counts['judged']} asked, {counts['cached']} from cache, "
          f"{counts['missing']} missing")  # fmt: skip
    if counts["missing"]:
        causes = missing_causes(judgements)
        lines = [f"  {count} x {cause}" for cause, count in causes[:3]]
        if len(causes) > 3:
            lines.append(
                f"  ... and {len(causes) - 3} other causes (the 'error' field of {folder / args.judge}.jsonl)"
            )
        print(f"{counts['missing']} of {len(samples)} judgements missing:\n" + "\n".join(lines), file=sys.stderr)
    if counts["missing"] > args.max_missing * len(samples):
        raise TooManyMissing(
            f"{counts['missing']} of {len(samples)} judgements missing, more than --max_missing {args.max_missing:g} "
            "allows; fix the cause above and run `judge` again (cached verdicts cost nothing), or raise --max_missing."
        )
    return counts


def _judged(run_dir: str, judge_name: str, categories=None):
    from .judges import Judgement, load_samples

    path = Path(run_dir) / "judgements" / f"{judge_name}.jsonl"
    if not path.is_file():
        raise ValueError(f"{path} does not exist; run `python -m pararl.evaluation judge --judge {judge_name}` first.")
    verdicts = {}
    for line in path.read_text().splitlines():
        if line.strip():
            judgement = Judgement.from_dict(json.loads(line))
            verdicts[judgement.id] = judgement
    samples = load_samples(run_dir, categories)
    unjudged = [s.id for s in samples if s.id not in verdicts]
    if unjudged:
        raise ValueError(
            f"{len(unjudged)} outputs of {run_dir} have no {judge_name} judgement (e.g. {unjudged[:3]}); run "
            f"`python -m pararl.evaluation judge --output_dir {run_dir} --judge {judge_name}` again (cached verdicts "
            "cost nothing)."
        )
    return samples, [verdicts[s.id] for s in samples]


def report(args) -> dict:
    from .gallery import write_gallery
    from .report import compare_runs, dump_json, format_comparison, format_report, summarize

    folder = Path(args.output_dir)
    categories = _csv(args.categories) if "categories" in args else None
    samples, judgements = _judged(args.output_dir, args.judge, categories)
    if all(j.missing for j in judgements):
        cause, count = missing_causes(judgements)[0]
        raise NothingToReport(
            f"all {len(judgements)} {args.judge} judgements of {folder} are missing ({count} x {cause}); nothing to "
            f"report. Fix the cause and run `python -m pararl.evaluation judge --output_dir {folder} --judge "
            f"{args.judge}` again."
        )
    title = args.title or f"{folder.name} ({args.judge} judge)"
    result = summarize(samples, judgements, num_bootstrap=args.num_bootstrap)
    dump_json(result, folder / f"report-{args.judge}.json")
    text = format_report(result, title)
    outputs = {"report": folder / f"report-{args.judge}.md", "json": folder / f"report-{args.judge}.json"}
    if args.compare_to:
        other_samples, other_judgements = _judged(args.compare_to, args.judge, categories)
        comparison = compare_runs(other_samples, other_judgements, samples, judgements, args.num_bootstrap)
        dump_json(comparison, folder / f"comparison-{args.judge}.json")
        text += "\n" + format_comparison(comparison, Path(args.compare_to).name, folder.name)
        outputs["comparison"] = folder / f"comparison-{args.judge}.json"
    outputs["report"].write_text(text)
    outputs["gallery"] = write_gallery(
        samples, judgements, folder / f"gallery-{args.judge}.html", folder, title, args.embed_images, args.judge
    )
    print(text)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return result


def main(argv=None):
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "generate":
            return generate(args)
        if args.command == "judge":
            return judge(args)
        if args.command == "report":
            return report(args)
        generate(args)
        judge(args)
        return report(args)
    except (TooManyMissing, NothingToReport) as error:
        parser.exit(1, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
