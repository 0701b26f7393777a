"""Rollout engine benchmark (not a test): engine vs bare forward, and vs a released-style reference loop.

Reports, on one random model and one batch of inputs:

1. the engine's time per step against a bare `model.backbone` forward of the same shape (overhead ratio; the goal is
   <= 1.05: everything but the backbone, i.e. sliced heads, sampling, remasking and bookkeeping, costs under 5%),
   and against the bare forward plus the sliced LM heads at every output slot (what is left is sampling and
   bookkeeping; the engine scores only still-masked slots, so this ratio can fall below 1);
2. a straightforward reference loop written the way the released MMaDA-Parallel samplers work (full-vocabulary logits
   at every position, one extra unconditional forward per guided modality, per-row Python loops with `.item()`
   reads and per-slot writes): its time per rollout against the engine's, and whether both give identical tokens
   for a fixed seed where their semantics agree (greedy, and sampled with the same counter-based noise).

3. with `--frontier`, the speed/quality frontier of fast decoding (`RolloutConfig`'s confidence thresholds and input
   key/value cache) on the shipped toy policy: forwards per rollout, rollout CPU time and the six ParaBench axes of
   the exact evaluator on held-out tasks, for the exact engine at 16 and 64 steps (and a second rollout seed of each,
   the yardstick of what a score difference means) and for each fast option; a markdown table, a JSON file and a
   PNG plot in `benchmarks/results/`; then forward counts and rollout times at the LLaDA-8B shape with random
   weights (CPU: reduced width).

Examples:

    python benchmarks/rollout.py --frontier                        # the fast decoding frontier
    python benchmarks/rollout.py --threads 1                       # small random model on CPU (CPU-time clock)
    python benchmarks/rollout.py --threads 1 --guidance 4 --text-guidance 2.5 --json   # guided, JSON output
    python benchmarks/rollout.py --device cuda --preset-shape llada8b --seq 1536 --batch 4 --steps 8
    python benchmarks/rollout.py --device cuda --preset-shape llada8b --seq 2560 --batch 4 --steps 8

`--preset-shape llada8b` builds a LLaDA-8B-shaped model (32 layers, d=4096, SwiGLU 12288, 134,541-token vocabulary
with MMaDA-Parallel-M's layout) with random bf16 weights: `--seq 1536` is text-to-image (256-token padded prompt,
1024 image tokens, 255 reasoning tokens), `--seq 2560` editing (an input image adds 1026 tokens). `--n-layers`
and `--width` shrink it for a smoke run on CPU.
"""

import argparse
import json
import platform
import time
import zlib

import torch

from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.processing import MMADA_PARALLEL_M, ParallelProcessor, SequencePreset
from pararl.rollout import ParallelDecoder, RolloutConfig
from pararl.rollout.sampling import IMAGE_VALUES, TEXT_VALUES, counter_uniform


SMALL_PRESET = SequencePreset(
    name="bench-small",
    mask_token_id=4,
    image_token_offset=2048,
    codebook_size=512,
    image_grid=(16, 16),
    soi_token_id=5,
    eoi_token_id=6,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
    text_fill_token_id=2,
    task_token_ids={"edit": 7, "generate": 8},
    max_prompt_tokens=64,
    max_reasoning_tokens=64,
)


class WordIds:
    """Stand-in text tokenizer: each whitespace word maps to a fixed id in `[first_id, last_id)`."""

    bos_token_id = eos_token_id = mask_token_id = None

    def __init__(self, vocab_size: int, first_id: int, last_id: int):
        self.vocab_size, self.first_id, self.last_id = vocab_size, first_id, last_id

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts, add_special_tokens=False):
        span = self.last_id - self.first_id
        return {"input_ids": [[self.first_id + zlib.crc32(w.encode()) % span for w in t.split()] for t in texts]}


class CodeGrids:
    """Stand-in image tokenizer: the benchmark passes code grids, never pixels."""

    def __init__(self, codebook_size: int, grid_shape: tuple[int, int]):
        self.codebook_size, self.grid_shape, self.image_size = codebook_size, grid_shape, grid_shape


def build(args) -> tuple[MaskedDiffusionLM, ParallelProcessor]:
    if args.preset_shape == "llada8b":
        preset = MMADA_PARALLEL_M
        tokenizer = WordIds(preset.image_token_offset, 1000, 126000)
        shape = dict(d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288)
    else:
        preset = SMALL_PRESET
        tokenizer = WordIds(preset.image_token_offset, 10, preset.image_token_offset)
        shape = dict(d_model=256, n_layers=4, n_heads=8, mlp_hidden_size=688)
    if args.n_layers is not None:
        shape["n_layers"] = args.n_layers
    if args.width is not None:
        shape.update(d_model=args.width, n_heads=max(1, args.width // 128), mlp_hidden_size=3 * args.width)
    processor = ParallelProcessor(tokenizer, CodeGrids(preset.codebook_size, preset.image_grid), preset)
    config = MaskedDiffusionConfig(
        vocab_size=preset.image_vocab_range[1],
        max_sequence_length=4096,
        mask_token_id=preset.mask_token_id,
        pad_token_id=preset.pad_token_id,
        bos_token_id=preset.bos_token_id,
        eos_token_id=preset.eos_token_id,
        initializer_range=0.02 if args.preset_shape == "llada8b" else 0.2,
        **shape,
    )
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build directly in the target dtype: an fp32 8B model would need 32 GB first
    try:
        with torch.device(args.device):
            torch.manual_seed(args.seed)
            model = MaskedDiffusionLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False), processor


def make_inputs(args, processor):
    preset = processor.preset
    generator = torch.Generator().manual_seed(args.seed)
    words = max(1, min(preset.max_prompt_tokens, args.prompt_words))
    prompts = [
        " ".join(f"w{int(i)}" for i in torch.randint(0, 10_000, (words,), generator=generator))
        for _ in range(args.batch)
    ]
    images = None
    if args.preset_shape == "llada8b" and args.seq == 2560:
        images = [
            torch.randint(0, preset.codebook_size, preset.image_grid, generator=generator) for _ in range(args.batch)
        ]
    return prompts, images


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleaved(functions: dict, device: str, repeats: int, clock: str = "wall") -> dict[str, float]:
    """Best-of-`repeats` time of each function, calling them in turn (so load changes hit all of them alike).

    `clock="cpu"` measures this process's CPU time instead of wall time: on a shared CPU machine other processes
    then barely move the numbers (run with `--threads 1` so that no thread spins waiting for another).
    """
    now = time.process_time if clock == "cpu" else time.perf_counter
    for fn in functions.values():
        fn()  # warm-up
    best = {name: float("inf") for name in functions}
    for _ in range(repeats):
        for name, fn in functions.items():
            sync(device)
            start = now()
            fn()
            sync(device)
            best[name] = min(best[name], now() - start)
    return best


# ------------------------------------------------------------------------------------------------- reference loop
def reference_rollout(
    model, processor, plan, config: RolloutConfig, input_ids, attention_mask, uncond_ids, uncond_mask, seeds
):
    """A released-sampler-style loop: full logits everywhere, a separate unconditional forward per guided modality,
    per-row loops with host reads. Same schedules and sampling semantics as the engine (for the token comparison)."""
    preset = processor.preset
    mask_id = preset.mask_token_id
    batch, input_length = input_ids.shape
    device = input_ids.device
    outputs = processor.masked_outputs(batch, device)
    x = torch.cat([input_ids, outputs], 1)
    full_mask = torch.cat([attention_mask, torch.ones_like(outputs)], 1)
    ux = torch.cat([uncond_ids, outputs], 1) if uncond_ids is not None else None
    umask = torch.cat([uncond_mask, torch.ones_like(outputs)], 1) if uncond_ids is not None else None
    text_cols = (input_length + processor.text_positions).tolist()
    image_cols = (input_length + processor.image_positions).tolist()
    t0, t1 = preset.text_vocab_range
    i0, i1 = preset.image_vocab_range
    for step in range(plan.num_steps):
        if plan.text_counts[step] == 0 and plan.image_counts[step] == 0:
            continue
        logits = model(x, attention_mask=full_mask).logits  # full vocabulary, every position
        if ux is not None:
            ux[:, input_length:] = x[:, input_length:]
        spans = [
            (
                text_cols,
                t0,
                t1,
                config.text_temperature,
                config.text_guidance_scale,
                plan.text_counts[step],
                TEXT_VALUES,
                plan.text_windows[step],
            ),
            (
                image_cols,
                i0,
                i1,
                config.image_temperature,
                config.image_guidance_scale,
                plan.image_counts[step],
                IMAGE_VALUES,
                None,
            ),
        ]
        for cols, start, end, temperature, scale, count, stream, window in spans:
            if count == 0:
                continue
            scores = logits[:, cols, start:end].float()
            if scale > 0:  # one more forward per guided modality, as the released A sampler does
                uncond = model(ux, attention_mask=umask).logits[:, cols, start:end].float()
                scores = scores + scale * (scores - uncond)
            if start <= mask_id < end:
                scores[..., mask_id - start] = float("-inf")
            if temperature > 0:
                scores = scores / temperature
            probs = torch.softmax(scores, -1)
            if temperature > 0:
                gumbel = -torch.log(-torch.log(counter_uniform(seeds, step, stream, tuple(scores.shape[1:]))))
                choice = (scores + gumbel).argmax(-1)
            else:
                choice = scores.argmax(-1)
            confidence = torch.gather(probs, -1, choice.unsqueeze(-1)).squeeze(-1).log()
            current = x[:, cols]
            for row in range(batch):  # per-row loop with host reads, like the released samplers
                masked = current[row] == mask_id
                if window is not None:
                    allowed = torch.zeros_like(masked)
                    allowed[window[0] : window[1]] = True
                    masked = masked & allowed
                k = min(count, int(masked.sum().item()))
                conf = torch.where(masked, confidence[row], torch.tensor(float("-inf"), device=device))
                picked = conf.topk(k).indices.tolist()
                for slot in picked:  # one write per revealed slot
                    x[row, cols[slot]] = int(choice[row, slot].item()) + start
    return x[:, input_length:]


def flops_per_forward(
    config, rows: int, length: int, text_slots: int, image_slots: int, vocab: tuple[int, int]
) -> float:
    d, layers, ffn = config.d_model, config.n_layers, config.mlp_hidden_size
    kv = config.n_kv_heads or config.n_heads
    params = layers * (2 * d * d + 2 * d * (d * kv // config.n_heads) + 3 * d * ffn)
    head = 2 * d * (vocab[0] * text_slots + vocab[1] * image_slots)
    return rows * (2 * params * length + 4 * layers * d * length * length + head)


# ------------------------------------------------------------------------------------------- fast decoding frontier
EXACT_16, EXACT_64 = {"num_steps": 16}, {"num_steps": 64}
# (name, RolloutConfig overrides, rollout seed). The exact engine runs at two seeds: their difference is the noise a
# score difference has to be read against.
FRONTIER = [
    ("exact 16", EXACT_16, 0),
    ("exact 16 (seed 1)", EXACT_16, 1),
    ("exact 64", EXACT_64, 0),
    ("exact 64 (seed 1)", EXACT_64, 1),
    ("cache r=2, 64", {**EXACT_64, "input_cache_refresh": 2}, 0),
    ("cache r=4, 64", {**EXACT_64, "input_cache_refresh": 4}, 0),
    ("tau 0.99, 64", {**EXACT_64, "text_threshold": 0.99, "image_threshold": 0.99}, 0),
    ("tau 0.9, 64", {**EXACT_64, "text_threshold": 0.9, "image_threshold": 0.9}, 0),
    ("tau 0.7, 64", {**EXACT_64, "text_threshold": 0.7, "image_threshold": 0.7}, 0),
    ("tau 0.9 floor=schedule, 64", {**EXACT_64, "text_threshold": 0.9, "image_threshold": 0.9, "threshold_floor": "schedule"}, 0),
    ("tau 0.9 cap 4, 64", {**EXACT_64, "text_threshold": 0.9, "image_threshold": 0.9, "threshold_cap": 4}, 0),
    ("tau 0.7 cap 4, 64", {**EXACT_64, "text_threshold": 0.7, "image_threshold": 0.7, "threshold_cap": 4}, 0),
    ("tau 0.7 cap 5, 64", {**EXACT_64, "text_threshold": 0.7, "image_threshold": 0.7, "threshold_cap": 5}, 0),
    ("tau 0.7 cap 5 + cache r=4, 64", {**EXACT_64, "text_threshold": 0.7, "image_threshold": 0.7, "threshold_cap": 5, "input_cache_refresh": 4}, 0),
    ("cache r=4, 16", {**EXACT_16, "input_cache_refresh": 4}, 0),
    ("tau 0.9, 16", {**EXACT_16, "text_threshold": 0.9, "image_threshold": 0.9}, 0),
    ("tau 0.9 floor=schedule, 16", {**EXACT_16, "text_threshold": 0.9, "image_threshold": 0.9, "threshold_floor": "schedule"}, 0),
    ("tau 0.7 floor=schedule, 16", {**EXACT_16, "text_threshold": 0.7, "image_threshold": 0.7, "threshold_floor": "schedule"}, 0),
    ("tau 0.9 floor=schedule + cache r=4, 16", {**EXACT_16, "text_threshold": 0.9, "image_threshold": 0.9, "threshold_floor": "schedule", "input_cache_refresh": 4}, 0),
]  # fmt: skip


class ForwardCounter:
    """Counts the backbone forwards of a model and the rows they run on (the decoder calls `model.backbone`)."""

    def __init__(self, model):
        self.model, self.calls, self.rows = model, 0, 0
        self.original = model.backbone

    def __enter__(self):
        def backbone(input_ids, *args, **kwargs):
            self.calls += 1
            self.rows += input_ids.shape[0]
            return self.original(input_ids, *args, **kwargs)

        self.model.backbone = backbone
        return self

    def __exit__(self, *exc):
        del self.model.backbone


def toy_frontier(args) -> list[dict]:
    """Every FRONTIER configuration on the shipped toy policy over held-out tasks (process CPU time, 1 thread)."""
    from pararl.toy import build_toy_dataset, toy_policy_path, toy_processor
    from pararl.toy.evaluate import generate_predictions
    from pararl.toy.policy import scores_of
    from pararl.toy.scoring import evaluate

    model = MaskedDiffusionLM.from_pretrained(toy_policy_path()).eval()
    processor = toy_processor()
    dataset = build_toy_dataset("test", args.toy_tasks)
    results = []
    for name, overrides, seed in FRONTIER:
        config = RolloutConfig(**overrides)
        with ForwardCounter(model) as counter:
            start = time.process_time()
            predictions = generate_predictions(model, processor, dataset, config, batch_size=args.toy_batch, seed=seed)
            seconds = time.process_time() - start
        scores = scores_of(evaluate(predictions, dataset))
        results.append(
            {
                "name": name,
                "config": overrides,
                "seed": seed,
                "exact": not config.fast,
                "off_policy": config.off_policy,
                "forward_calls": counter.calls,
                "forwards_per_rollout": counter.rows / len(dataset),
                "rollout_cpu_s": seconds,
                "scores": scores,
            }
        )
        row = results[-1]
        print(
            f"  {name:<40} {row['forwards_per_rollout']:6.1f} forwards/rollout  {seconds:7.1f} s  "
            + " ".join(f"{axis[:8]} {value:5.1f}" for axis, value in scores.items() if value is not None),
            flush=True,
        )
    return results


def frontier_verdict(results: list[dict], tolerance: float = 1.0) -> dict:
    """Per budget (16, 64): each fast option against the exact engine at the same budget and seed, and the best one.

    "Within tolerance" = every six-axis score at least the exact engine's minus `tolerance` points. The best option is
    the one with the fewest forwards among those within tolerance.
    """
    verdict = {}
    for steps in (16, 64):
        exact = next(r for r in results if r["exact"] and r["config"]["num_steps"] == steps and r["seed"] == 0)
        spread = next(r for r in results if r["exact"] and r["config"]["num_steps"] == steps and r["seed"] == 1)
        options = []
        for r in results:
            if r["exact"] or r["config"]["num_steps"] != steps:
                continue
            drops = {a: exact["scores"][a] - v for a, v in r["scores"].items() if a != "overall" and v is not None}
            options.append(
                {
                    "name": r["name"],
                    "forward_reduction": exact["forwards_per_rollout"] / r["forwards_per_rollout"],
                    "time_reduction": exact["rollout_cpu_s"] / r["rollout_cpu_s"],
                    "largest_drop": max(drops.values()),
                    "largest_drop_axis": max(drops, key=drops.get),
                    "within_tolerance": max(drops.values()) <= tolerance,
                }
            )
        seed_spread = {
            a: abs(exact["scores"][a] - spread["scores"][a]) for a in exact["scores"] if exact["scores"][a] is not None
        }
        within = [o for o in options if o["within_tolerance"]]
        best = max(within, key=lambda o: o["forward_reduction"]) if within else None
        verdict[steps] = {"options": options, "best_within_tolerance": best, "exact_seed_spread": seed_spread}
    return verdict


def frontier_table(results: list[dict], verdict: dict) -> str:
    from pararl.axes import AXES, AXIS_HEADERS

    reductions = {o["name"]: o for v in verdict.values() for o in v["options"]}
    header = ["option", "forwards / rollout", "rollout CPU s", *(AXIS_HEADERS[a] for a in AXES), "Overall", "vs exact"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for r in results:
        o = reductions.get(r["name"])
        versus = (
            f"{o['forward_reduction']:.1f}x fewer forwards, {o['time_reduction']:.1f}x less time, worst axis "
            f"{-o['largest_drop']:+.1f} ({AXIS_HEADERS[o['largest_drop_axis']]})"
            if o
            else "-"
        )
        scores = [r["scores"][a] for a in AXES] + [r["scores"]["overall"]]
        cells = [
            r["name"],
            f"{r['forwards_per_rollout']:.1f}",
            f"{r['rollout_cpu_s']:.1f}",
            *("-" if v is None else f"{v:.1f}" for v in scores),
            versus,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier_plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, (key, label) in zip(
        axes, (("overall", "overall (mean of the six axes)"), ("output_alignment", "output alignment"))
    ):
        for r in results:
            steps = r["config"]["num_steps"]
            colour = (
                ("tab:blue" if steps == 16 else "tab:red")
                if r["exact"]
                else ("tab:cyan" if steps == 16 else "tab:orange")
            )
            marker = "s" if r["exact"] else ("^" if "input_cache_refresh" in r["config"] else "o")
            ax.scatter(r["forwards_per_rollout"], r["scores"][key], c=colour, marker=marker, s=46, zorder=3)
            ax.annotate(
                r["name"],
                (r["forwards_per_rollout"], r["scores"][key]),
                fontsize=6.5,
                xytext=(4, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("forwards per rollout (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("toy policy, held-out tasks: squares = exact engine (red 64, blue 16 steps)", fontsize=9)
    axes[1].set_title(
        "circles = thresholds, triangles = with input cache (orange 64, cyan 16-step budget)", fontsize=9
    )
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def llada_shape_fast(args) -> dict:
    """Fast options at the LLaDA-8B shape with random weights (reduced width on CPU).

    Random weights give near-uniform predictions over a 126k-token vocabulary, so no threshold fires and the rollout
    forward counts show the floor's. At a reduced width the sliced heads (full width in the vocabulary dimension)
    dominate a rollout's time, unlike at 8B, so the input cache's effect is also measured on the backbone alone: a
    full forward against an output-part forward on a cached input part, and their FLOPs at the full 8B width.
    """
    shape = argparse.Namespace(**{**vars(args), "preset_shape": "llada8b", "batch": args.llada_batch})
    model, processor = build(shape)
    full_width = argparse.Namespace(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden_size=12288)
    runs, forwards = [], []
    for seq in (1536, 2560):
        shape.seq = seq
        prompts, images = make_inputs(shape, processor)
        for name, overrides in (
            ("exact", {}),
            ("cache r=4", {"input_cache_refresh": 4}),
            ("tau 0.9", {"text_threshold": 0.9, "image_threshold": 0.9}),
        ):
            config = RolloutConfig(num_steps=args.llada_steps, image_start=0.25, **overrides)
            decoder = ParallelDecoder(model, processor, config)
            with ForwardCounter(model) as counter:
                start = time.process_time()
                decoder.generate(prompts, images, seeds=torch.arange(shape.batch))
                seconds = time.process_time() - start
            runs.append(
                {
                    "sequence": seq,
                    "name": name,
                    "forward_calls": counter.calls,
                    "forwards_per_rollout": counter.rows / shape.batch,
                    "rollout_cpu_s": seconds,
                }
            )
            print(f"  seq {seq} {name:<10} {counter.calls} forwards  rollout {seconds:7.2f} s", flush=True)
        # The backbone alone: full forward vs output-part forward on the cached input part.
        inputs = processor.encode_prompts(prompts, images)
        ids = torch.cat([inputs["input_ids"], processor.masked_outputs(shape.batch)], 1)
        input_length = inputs["input_ids"].shape[1]
        with torch.inference_mode():
            _, key_values = model.backbone(ids, use_cache=True)
            prefix = [
                (k[:, :, :input_length].contiguous(), v[:, :, :input_length].contiguous()) for k, v in key_values
            ]
            best = interleaved(
                {
                    "full": lambda ids=ids: model.backbone(ids),
                    "cached": lambda ids=ids[:, input_length:], prefix=prefix: model.backbone(
                        ids, past_key_values=prefix
                    ),
                },
                "cpu",
                args.repeats,
                "cpu",
            )
        length, output_length = ids.shape[1], ids.shape[1] - input_length
        full_flops = flops_per_forward(full_width, 1, length, 0, 0, (0, 0))
        d, layers = full_width.d_model, full_width.n_layers
        params = layers * (4 * d * d + 3 * d * full_width.mlp_hidden_size)
        cached_flops = 2 * params * output_length + 4 * layers * d * output_length * length
        forwards.append(
            {
                "sequence": seq,
                "input_length": input_length,
                "full_forward_s": best["full"],
                "cached_forward_s": best["cached"],
                "measured_ratio": best["full"] / best["cached"],
                "flop_ratio_at_8b_width": full_flops / cached_flops,
            }
        )
        print(
            f"  seq {seq}: input part {input_length} tokens; backbone forward {best['full'] * 1e3:.0f} ms full, "
            f"{best['cached'] * 1e3:.0f} ms on a cached input part ({best['full'] / best['cached']:.2f}x; "
            f"{full_flops / cached_flops:.2f}x fewer FLOPs at the 8B width)",
            flush=True,
        )
    return {"rollouts": runs, "backbone_forwards": forwards}


def run_frontier(args) -> None:
    import os

    torch.set_num_threads(1)
    print(f"toy frontier: shipped policy, {args.toy_tasks} held-out tasks, process CPU time, 1 thread", flush=True)
    results = toy_frontier(args)
    verdict = frontier_verdict(results)
    print("\n" + frontier_table(results, verdict) + "\n")
    for steps, v in verdict.items():
        spread = ", ".join(f"{a} {d:.1f}" for a, d in v["exact_seed_spread"].items())
        best = v["best_within_tolerance"]
        print(f"{steps} steps: exact engine, seed 0 vs seed 1 differ by: {spread}")
        if best is None:
            print(f"{steps} steps: no fast option keeps every axis within 1 point of the exact engine")
        else:
            print(
                f"{steps} steps: best within 1 point: {best['name']} ({best['forward_reduction']:.1f}x fewer forwards, "
                f"{best['time_reduction']:.1f}x less CPU time)"
            )
    print(f"\nLLaDA-8B shape, random weights, width {args.width}, {args.n_layers} layers, {args.llada_steps} steps:")
    llada = llada_shape_fast(args)
    os.makedirs(args.results_dir, exist_ok=True)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, 1 thread, process CPU time",
        "toy_tasks": args.toy_tasks,
        "toy_batch": args.toy_batch,
        "toy": results,
        "verdict": {str(k): v for k, v in verdict.items()},
        "llada8b_shape": {
            "width": args.width,
            "n_layers": args.n_layers,
            "steps": args.llada_steps,
            "batch": args.llada_batch,
            **llada,
        },
    }
    with open(os.path.join(args.results_dir, "rollout_fast_toy_cpu.json"), "w") as f:
        json.dump(report, f, indent=2)
    frontier_plot(results, os.path.join(args.results_dir, "rollout_fast_frontier.png"))
    print(f"wrote {args.results_dir}/rollout_fast_toy_cpu.json and rollout_fast_frontier.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--frontier", action="store_true", help="the fast decoding frontier (toy policy + LLaDA shape)"
    )
    parser.add_argument("--toy-tasks", type=int, default=192, help="--frontier: held-out toy tasks")
    parser.add_argument("--toy-batch", type=int, default=32, help="--frontier: prompts per rollout")
    parser.add_argument("--llada-steps", type=int, default=8, help="--frontier: steps at the LLaDA-8B shape")
    parser.add_argument("--llada-batch", type=int, default=1, help="--frontier: batch at the LLaDA-8B shape")
    parser.add_argument("--results-dir", default="benchmarks/results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default=None, help="default: float32 on CPU, bfloat16 on CUDA"
    )
    parser.add_argument("--preset-shape", choices=["small", "llada8b"], default="small")
    parser.add_argument(
        "--seq", type=int, choices=[1536, 2560], default=1536, help="llada8b only: 1536 = T2I, 2560 = editing"
    )
    parser.add_argument("--n-layers", type=int, default=None, help="override the number of layers (smoke runs)")
    parser.add_argument(
        "--width", type=int, default=None, help="override d_model (heads of 128, SwiGLU 3x) for smoke runs"
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--prompt-words", type=int, default=48)
    parser.add_argument("--guidance", type=float, default=0.0, help="image guidance scale of the timed runs")
    parser.add_argument("--text-guidance", type=float, default=0.0, help="text guidance scale of the timed runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (best one reported)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default=None,
        help="wall time, or this process's CPU time (robust on a shared CPU; default on CPU, with --threads 1)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.clock = args.clock or ("wall" if args.device.startswith("cuda") else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.frontier:
        if args.width is None:
            args.width = 256
        if args.n_layers is None:
            args.n_layers = 2
        run_frontier(args)
        return

    model, processor = build(args)
    prompts, images = make_inputs(args, processor)
    seeds = torch.arange(args.batch) + 1000 * args.seed
    config = RolloutConfig(
        num_steps=args.steps,
        image_guidance_scale=args.guidance,
        text_guidance_scale=args.text_guidance,
        image_start=0.25,
    )
    decoder = ParallelDecoder(model, processor, config)
    plan = decoder.plan
    forwards = sum(1 for t, i in zip(plan.text_counts, plan.image_counts) if t or i)

    # Inputs exactly as the engine builds them (uncond rows padded to the conditional length).
    captured = {}
    original = decoder.decode
    decoder.decode = lambda *a, **k: captured.update(args=a, kwargs=k)
    decoder.generate(prompts, images, seeds=seeds)
    decoder.decode = original
    input_ids, attention_mask = captured["args"]
    uncond_ids, uncond_mask = captured["kwargs"]["uncond_input_ids"], captured["kwargs"]["uncond_attention_mask"]
    rows = args.batch * (2 if config.guided else 1)
    length = input_ids.shape[1] + processor.output_length
    sequence = torch.cat([input_ids] + ([uncond_ids] if config.guided else []))
    sequence = torch.cat([sequence, processor.masked_outputs(rows, args.device)], 1)
    masks = torch.cat([attention_mask] + ([uncond_mask] if config.guided else []))
    masks = torch.cat([masks, torch.ones(rows, processor.output_length, dtype=masks.dtype, device=masks.device)], 1)
    forward_mask = None if bool(masks.all()) else masks  # what the engine passes
    run_seeds = seeds.to(args.device)
    preset = processor.preset

    # The engine runs the unconditional rows only on steps where a guided modality reveals tokens; so does this.
    step_rows = []
    for text, image in zip(plan.text_counts, plan.image_counts):
        if text or image:
            guided = (text and config.text_guidance_scale > 0) or (image and config.image_guidance_scale > 0)
            step_rows.append(rows if guided else args.batch)
    masks_by_rows = {
        n: None if forward_mask is None or bool(forward_mask[:n].all()) else forward_mask[:n]
        for n in {rows, args.batch}
    }

    @torch.inference_mode()
    def bare_forwards():  # the same bare backbone forwards as the engine runs
        for n in step_rows:
            model.backbone(sequence[:n], attention_mask=masks_by_rows[n])

    text_columns = input_ids.shape[1] + processor.text_positions.to(args.device)
    image_columns = input_ids.shape[1] + processor.image_positions.to(args.device)

    @torch.inference_mode()
    def bare_with_heads():  # the same forwards plus the sliced LM heads at every output slot
        for n in step_rows:
            hidden = model.backbone(sequence[:n], attention_mask=masks_by_rows[n])
            model.lm_logits(hidden, positions=text_columns, vocab_range=preset.text_vocab_range)
            model.lm_logits(hidden, positions=image_columns, vocab_range=preset.image_vocab_range)

    @torch.inference_mode()
    def reference():
        return reference_rollout(
            model, processor, plan, config, input_ids, attention_mask, uncond_ids, uncond_mask, run_seeds
        )

    functions = {
        "engine": lambda: decoder.decode(*captured["args"], **captured["kwargs"]),
        "bare": bare_forwards,
        "bare_heads": bare_with_heads,
    }
    if not args.skip_reference:
        functions["reference"] = reference
    best = interleaved(functions, args.device, args.repeats, args.clock)
    engine_time, forward_time = best["engine"], best["bare"] / forwards
    step_time = engine_time / forwards
    vocab = (preset.text_vocab_range[1] - preset.text_vocab_range[0], preset.codebook_size)
    # Model FLOPs of the forwards the engine runs (sliced heads at every output slot).
    text_slots, image_slots = len(processor.text_positions), len(processor.image_positions)
    flops = sum(flops_per_forward(model.config, n, length, text_slots, image_slots, vocab) for n in step_rows)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        if not args.device.startswith("cuda")
        else torch.cuda.get_device_name(),
        "device": args.device,
        "dtype": args.dtype,
        "clock": args.clock,
        "preset_shape": args.preset_shape,
        "model_params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "batch": args.batch,
        "rows_per_forward": rows,
        "sequence_length": length,
        "steps": args.steps,
        "forwards": forwards,
        "image_guidance": args.guidance,
        "text_guidance": args.text_guidance,
        "bare_forward_s": forward_time,
        "engine_step_s": step_time,
        "overhead_ratio": step_time / forward_time,
        "bare_forward_with_heads_s": best["bare_heads"] / forwards,
        "overhead_ratio_vs_forward_with_heads": engine_time / best["bare_heads"],
        "engine_rollout_s": engine_time,
        "sample_step_s": step_time / args.batch,
        "engine_tflops": flops / engine_time / 1e12,
    }

    if not args.skip_reference:
        ref_time = best["reference"]
        report["reference_rollout_s"] = ref_time
        report["speedup_vs_reference"] = ref_time / engine_time
        # Token agreement where semantics agree: no guidance, greedy and sampled (same counter-based noise).
        for name, temperature in (("greedy", 0.0), ("sampled", 1.0)):
            same = RolloutConfig(
                num_steps=args.steps, image_start=0.25, text_temperature=temperature, image_temperature=temperature
            )
            engine = ParallelDecoder(model, processor, same).decode(
                input_ids, attention_mask, seeds=seeds.to(args.device)
            )
            with torch.inference_mode():
                ref = reference_rollout(
                    model, processor, plan, same, input_ids, attention_mask, None, None, seeds.to(args.device)
                )
            report[f"identical_tokens_{name}"] = bool(torch.equal(engine.output_ids, ref))
            report[f"token_agreement_{name}"] = (engine.output_ids == ref).float().mean().item()

    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"machine: {report['machine']} | device {args.device} {args.dtype} | {args.preset_shape} "
        f"({report['model_params_M']} M params) | {args.clock} clock, best of {args.repeats}"
    )
    print(
        f"batch {args.batch} ({rows} rows/forward{' on guided steps' if config.guided else ''}), sequence {length}, "
        f"{args.steps} steps ({forwards} forwards), "
        f"guidance image {args.guidance} / text {args.text_guidance}"
    )
    rows_out = [
        ("bare backbone forward", f"{forward_time * 1e3:.1f} ms"),
        ("engine time per step", f"{step_time * 1e3:.1f} ms"),
        ("overhead ratio (goal <= 1.05)", f"{report['overhead_ratio']:.3f}"),
        ("bare forward + sliced heads", f"{report['bare_forward_with_heads_s'] * 1e3:.1f} ms"),
        ("ratio to forward + heads", f"{report['overhead_ratio_vs_forward_with_heads']:.3f}"),
        ("engine rollout", f"{engine_time:.3f} s"),
        ("per sample-step", f"{report['sample_step_s'] * 1e3:.2f} ms"),
        ("achieved TFLOP/s", f"{report['engine_tflops']:.3f}"),
    ]
    if "reference_rollout_s" in report:
        rows_out += [
            ("reference rollout", f"{report['reference_rollout_s']:.3f} s"),
            ("speed-up vs reference", f"{report['speedup_vs_reference']:.2f}x"),
            (
                "identical tokens, greedy",
                f"{report['identical_tokens_greedy']} ({report['token_agreement_greedy']:.4f})",
            ),
            (
                "identical tokens, sampled",
                f"{report['identical_tokens_sampled']} ({report['token_agreement_sampled']:.4f})",
            ),
        ]
    width = max(len(name) for name, _ in rows_out)
    for name, value in rows_out:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
