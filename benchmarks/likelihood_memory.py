"""Peak memory of the trainer's likelihood at MMaDA-Parallel-M's vocabulary (not a test).

The likelihood (`DiffusionGRPOTrainer._get_per_token_logps_and_entropies`) scores a micro-batch of (rollout, step)
rows: one forward, logits at the scored slots only. The `after` variant is the trainer's: text slots over the text
vocabulary (126,349 columns) and image slots over the codebook (8,192), one fp32 copy of the logits, and passes
without a graph (old / reference log-probs) split into row chunks of at most 2**28 logit elements. The `before`
variant is the baseline it replaced: every scored slot over the whole vocabulary up to the last image code (134,541
columns), the other modality's columns masked, four fp32 copies of the logits.

Both versions run on the same inputs in fresh subprocesses; the number reported is the peak resident memory of the
call above the resident memory just before it (Linux `VmHWM`, reset through `/proc/self/clear_refs`), for the pass
without a graph and for the loss pass (forward with a graph plus backward). The model is LLaDA-8B's layout and
vocabulary (134,541 embedding rows, MMaDA-Parallel-M's output part: 1,024 image slots and 255 text slots) at a
reduced width, so the numbers are dominated by the logits, which do not depend on the width.

Cases: `trajectory` rows score the tokens revealed at one step (64 steps, linear text and cosine image schedules:
at most 4 text and 25 image tokens a row) in a 24-row micro-batch (8 rollouts x 3 reward steps); `random_mask`
rows score every output slot (1,279) and use a 1-row micro-batch (at 24 rows one fp32 copy of the `before`
variant's logits is 16.5 GB).

    python benchmarks/likelihood_memory.py                      # all cases, JSON to benchmarks/results/
    python benchmarks/likelihood_memory.py --case trajectory --variant after --grad   # one measurement
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pararl.grpo.trainer import DiffusionGRPOTrainer, _LikelihoodSpan
from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.processing import MMADA_PARALLEL_M, ParallelProcessor
from pararl.rollout.schedules import build_reveal_plan


RESULTS = Path(__file__).resolve().parent / "results" / "likelihood_memory_cpu.json"
CASES = {"trajectory": 24, "random_mask": 1}  # rows per micro-batch
STEPS = 64


class WordIds:
    """Stand-in text tokenizer (no checkpoint here): each whitespace word maps to a fixed id."""

    bos_token_id = eos_token_id = mask_token_id = None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1000 + zlib.crc32(w.encode()) % 125000 for w in t.split()] for t in texts]}


class CodeGrids:
    """Stand-in image tokenizer: inputs are code grids."""

    def __init__(self, codebook_size, grid_shape):
        self.codebook_size, self.grid_shape, self.image_size = codebook_size, grid_shape, grid_shape


def build(width: int):
    preset = MMADA_PARALLEL_M
    processor = ParallelProcessor(WordIds(preset.image_token_offset), CodeGrids(8192, (32, 32)), preset)
    config = MaskedDiffusionConfig(
        vocab_size=preset.image_vocab_range[1],
        d_model=width,
        n_layers=1,
        n_heads=1,
        mlp_hidden_size=2 * width,
        max_sequence_length=4096,
        mask_token_id=preset.mask_token_id,
        pad_token_id=preset.pad_token_id,
        bos_token_id=preset.bos_token_id,
        eos_token_id=preset.eos_token_id,
    )
    torch.manual_seed(0)
    return MaskedDiffusionLM(config), processor


def make_rows(processor, case: str, rows: int):
    """`prompt | completion` ids and masks as `_generate_and_score_completions` builds them."""
    preset = processor.preset
    generator = torch.Generator().manual_seed(0)
    inputs = processor.encode_prompts(["w1 w2 w3 w4"] * rows, [torch.zeros(32, 32, dtype=torch.long)] * rows)
    text, image = processor.text_positions, processor.image_positions
    outputs = processor.masked_outputs(rows)
    outputs[:, text] = torch.randint(1000, 126000, (rows, len(text)), generator=generator)
    outputs[:, image] = preset.image_token_offset + torch.randint(0, 8192, (rows, len(image)), generator=generator)
    scored = torch.zeros_like(outputs, dtype=torch.bool)
    if case == "trajectory":  # the step that reveals the most tokens, in every row
        plan = build_reveal_plan(STEPS, len(text), len(image))
        step = max(range(STEPS), key=lambda k: plan.text_counts[k] + plan.image_counts[k])
        for positions, count in ((text, plan.text_counts[step]), (image, plan.image_counts[step])):
            chosen = torch.rand(rows, len(positions), generator=generator).argsort(1)[:, :count]
            scored[torch.arange(rows).unsqueeze(1), positions[chosen]] = True
    else:
        scored[:, processor.maskable_mask] = True
    ids = torch.cat([inputs["input_ids"], outputs], dim=1)
    mask = torch.cat([inputs["attention_mask"], scored.long()], dim=1)
    return ids, mask, outputs.shape[1]


def after(model, processor, case, ids, mask, logits_to_keep):
    """The trainer's likelihood as it is now (called on a stand-in for the trainer)."""
    preset = processor.preset
    plan = build_reveal_plan(STEPS, len(processor.text_positions), len(processor.image_positions))
    trajectory = case == "trajectory"
    spans = tuple(
        _LikelihoodSpan(
            slots=slots,
            vocab_range=vocab_range,
            exclude=exclude,
            temperature=1.0,
            num_scored=max(counts) if trajectory else len(slots),
        )
        for slots, vocab_range, exclude, counts in (
            (processor.text_positions, preset.text_vocab_range, preset.text_mask_column, plan.text_counts),
            (processor.image_positions, preset.image_vocab_range, preset.image_mask_column, plan.image_counts),
        )
    )
    trainer = SimpleNamespace(
        _spans=spans,
        processor=processor,
        rollout_config=SimpleNamespace(top_k=None),
        accelerator=SimpleNamespace(autocast=contextlib.nullcontext),
    )
    method = DiffusionGRPOTrainer._get_per_token_logps_and_entropies.__wrapped__
    return method(trainer, model, ids, mask, logits_to_keep, compute_entropy=torch.is_grad_enabled())[0]


def before(model, processor, case, ids, mask, logits_to_keep):
    """The likelihood at commit c4cb2d5 (before this change), reproduced: every scored slot over the columns
    [0, last image code), the other modality's columns masked."""
    preset = processor.preset
    plan = build_reveal_plan(STEPS, len(processor.text_positions), len(processor.image_positions))
    if case == "trajectory":
        num_scored = max(t + i for t, i in zip(plan.text_counts, plan.image_counts))
    else:
        num_scored = int(processor.maskable_mask.sum())
    is_image_slot = torch.zeros(processor.output_length, dtype=torch.bool)
    is_image_slot[processor.image_positions] = True
    text_columns = torch.zeros(preset.image_vocab_range[1], dtype=torch.bool)
    text_columns[: preset.image_token_offset] = True
    text_columns[preset.mask_token_id] = False
    image_columns = ~text_columns
    image_columns[preset.mask_token_id] = False
    prompt_length = ids.size(1) - logits_to_keep
    completion = ids[:, prompt_length:]
    scored = mask[:, prompt_length:].bool()
    model_ids = torch.cat([ids[:, :prompt_length], completion.masked_fill(scored, preset.mask_token_id)], 1)
    model_mask = torch.cat([mask[:, :prompt_length], torch.ones_like(completion)], dim=1)
    slots = torch.topk(scored.to(torch.float32), num_scored, dim=1).indices
    slot_scored = scored.gather(1, slots)
    logits = model(
        input_ids=model_ids,
        attention_mask=model_mask,
        logits_positions=slots + prompt_length,
        vocab_range=(0, preset.image_vocab_range[1]),
    ).logits
    is_image = is_image_slot[slots]
    allowed = torch.where(is_image.unsqueeze(-1), image_columns, text_columns)
    logits = logits.float() / 1.0
    logps = F.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    token_logps = logps.gather(-1, completion.gather(1, slots).unsqueeze(-1)).squeeze(-1)
    per_token = torch.zeros(completion.shape, dtype=token_logps.dtype)
    per_token = per_token.scatter(1, slots, token_logps.masked_fill(~slot_scored, 0.0))
    if torch.is_grad_enabled():
        with torch.no_grad():
            finite = logps.masked_fill(~allowed, 0.0)
            entropy = -(finite.exp() * finite).sum(-1)
            del entropy
    return per_token


def rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(args) -> dict:
    torch.set_num_threads(1)
    model, processor = build(args.width)
    ids, mask, keep = make_rows(processor, args.case, CASES[args.case])
    function = after if args.variant == "after" else before
    with torch.no_grad():  # warm-up with one row: allocator and kernels set up outside the measurement
        function(model, processor, args.case, ids[:1], mask[:1], keep)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    start = rss_kib("VmRSS")
    with torch.set_grad_enabled(args.grad):
        logps = function(model, processor, args.case, ids, mask, keep)
        if args.grad:
            logps.sum().backward()
    peak = rss_kib("VmHWM")
    return {
        "case": args.case,
        "variant": args.variant,
        "grad": args.grad,
        "rows": CASES[args.case],
        "scored_tokens": int(mask[:, -keep:].sum()),
        "peak_mib": round((peak - start) / 1024, 1),
        "sum_logps": float(logps.detach().sum()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=list(CASES))
    parser.add_argument("--variant", choices=["before", "after"])
    parser.add_argument("--grad", action="store_true", help="the loss pass: forward with a graph, then backward")
    parser.add_argument("--width", type=int, default=64)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(measure(args)))
        return
    results = []
    for case in CASES:
        for grad in (False, True):
            for variant in ("before", "after"):
                command = [sys.executable, __file__, "--case", case, "--variant", variant, "--width", str(args.width)]
                output = subprocess.run(
                    command + (["--grad"] if grad else []),
                    check=True,
                    capture_output=True,
                    text=True,
                    env={**os.environ, "OMP_NUM_THREADS": "1"},
                ).stdout
                results.append(json.loads(output.strip().splitlines()[-1]))
                print(results[-1], flush=True)
    for case in CASES:  # both versions compute the same numbers
        for grad in (False, True):
            pair = [r for r in results if r["case"] == case and r["grad"] == grad]
            assert abs(pair[0]["sum_logps"] - pair[1]["sum_logps"]) <= 1e-3 * abs(pair[0]["sum_logps"]), pair
    report = {
        "machine": f"2-core CPU sandbox ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, 1 thread",
        "model": f"LLaDA-8B layout and vocabulary (134,541 rows), width {args.width}, 1 layer, fp32",
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
