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

Which tokens the loss scores (`loss_steps`, `loss_step_group`): `--loss_steps` measures, per setting, the loss rows
(sequence forwards) of one rollout, the no-grad forwards the trainer adds (the importance-sampling correction's old
log-probs, for step groups > 1), and the time and peak memory of one optimizer step (AdamW, full parameters) on
all rows of `--rollouts` rollouts in one micro-batch, as TRL's loss pass runs them: the trainer's own row builder
and likelihood on trajectories drawn from the reveal schedule. Settings: `rewarded` s = 3, `all` with groups of 1, 4
and 8 steps; models: the shipped toy policy at the toy main job's schedule (16 steps), and the LLaDA-8B layout at
reduced width (as above) at 64 steps.

    python benchmarks/likelihood_memory.py --loss_steps         # all settings, JSON to benchmarks/results/
    python benchmarks/likelihood_memory.py --loss_steps --model toy --setting all-g4   # one measurement
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from pararl.grpo.trainer import DiffusionGRPOTrainer, _grouped_bounds, _likelihood_spans, _scheduled_group_starts
from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM
from pararl.processing import MMADA_PARALLEL_M, ParallelProcessor
from pararl.rollout.schedules import build_reveal_plan


RESULTS = Path(__file__).resolve().parent / "results" / "likelihood_memory_cpu.json"
LOSS_STEPS_RESULTS = RESULTS.with_name("loss_steps_cost_cpu.json")
# `--loss_steps` settings: (loss_steps, loss_step_group); models: (diffusion steps, rollouts measured together).
LOSS_SETTINGS = {"rewarded-s3": ("rewarded", 1), "all-g1": ("all", 1), "all-g4": ("all", 4), "all-g8": ("all", 8)}
LOSS_MODELS = {"toy": (16, 8), "llada": (64, 1)}
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
    plan = build_reveal_plan(STEPS, len(processor.text_positions), len(processor.image_positions))
    max_scored = (max(plan.text_counts), max(plan.image_counts)) if case == "trajectory" else None
    spans = _likelihood_spans(processor, max_scored, (1.0, 1.0))
    trainer = SimpleNamespace(
        _spans=spans,
        processor=processor,
        rollout_config=SimpleNamespace(top_k=None),
        accelerator=SimpleNamespace(autocast=contextlib.nullcontext),
    )
    method = DiffusionGRPOTrainer._get_per_token_logps_and_entropies.__wrapped__
    return method(trainer, model, ids, mask, logits_to_keep, compute_entropy=torch.is_grad_enabled())[0]


def before(model, processor, case, ids, mask, logits_to_keep):
    """The baseline the per-modality likelihood replaced, reproduced: every scored slot over the columns
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


def loss_setup(model_name: str, width: int):
    """The model, processor and reveal plan of a `--loss_steps` model."""
    from pararl.rollout import ParallelDecoder
    from pararl.toy import toy_processor
    from pararl.toy.policy import load_toy_policy
    from pararl.toy.recipe import toy_grpo_config

    if model_name == "toy":
        model, processor = load_toy_policy(), toy_processor()
        rollout_config = toy_grpo_config(use_cpu=True, bf16=False).to_rollout_config()
        return model, processor, ParallelDecoder(model, processor, rollout_config).plan
    model, processor = build(width)
    return model, processor, build_reveal_plan(STEPS, len(processor.text_positions), len(processor.image_positions))


def synthetic_trajectory(processor, plan, rollouts: int, generator: torch.Generator):
    """A stand-in `Trajectory` (input part, final output, step map) whose steps reveal the plan's counts, at random
    slots (the cost does not depend on which)."""
    preset = processor.preset
    inputs = processor.encode_prompts(["w1 w2 w3 w4"] * rollouts, [None] * rollouts)
    text, image = processor.text_positions, processor.image_positions
    outputs = processor.masked_outputs(rollouts)
    low, high = preset.text_vocab_range
    outputs[:, text] = torch.randint(max(low, 10), high - 1, (rollouts, len(text)), generator=generator)
    codebook = preset.image_vocab_range[1] - preset.image_vocab_range[0]
    outputs[:, image] = preset.image_vocab_range[0] + torch.randint(
        0, codebook, (rollouts, len(image)), generator=generator
    )
    step_map = torch.full(outputs.shape, -1, dtype=torch.long)
    for positions, counts in ((text, plan.text_counts), (image, plan.image_counts)):
        order = positions[torch.rand(rollouts, len(positions), generator=generator).argsort(1)]
        steps = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        step_map.scatter_(1, order, steps.expand(rollouts, -1))
    return SimpleNamespace(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], output_ids=outputs, step_map=step_map
    )


def loss_trainer(processor, plan, loss_steps: str, group: int) -> SimpleNamespace:
    """A stand-in trainer with what the row builder and the likelihood read, sized as `__init__` sizes them."""
    max_scored = tuple(max(_grouped_bounds(counts, group)) for counts in (plan.text_counts, plan.image_counts))
    return SimpleNamespace(
        _spans=_likelihood_spans(processor, max_scored, (1.0, 1.0)),
        processor=processor,
        rollout_config=SimpleNamespace(top_k=None),
        accelerator=SimpleNamespace(autocast=contextlib.nullcontext),
        loss_all_steps=loss_steps == "all",
        args=SimpleNamespace(loss_step_group=group),
        _loss_group_starts=_scheduled_group_starts(plan, group, plan.num_steps),
    )


def measure_loss_steps(args) -> dict:
    """One optimizer step on every loss row of `rollouts` rollouts, built by the trainer's own row builder."""
    torch.set_num_threads(1)
    loss_steps, group = LOSS_SETTINGS[args.setting]
    num_steps, rollouts = LOSS_MODELS[args.model]
    model, processor, plan = loss_setup(args.model, args.width)
    model.train()
    generator = torch.Generator().manual_seed(0)
    trajectory = synthetic_trajectory(processor, plan, rollouts, generator)
    trainer = loss_trainer(processor, plan, loss_steps, group)
    rewarded = torch.stack([torch.randperm(num_steps, generator=generator)[:3].sort().values for _ in range(rollouts)])
    first_steps, group = DiffusionGRPOTrainer._loss_row_steps(trainer, rewarded, None)
    rows_per_rollout = first_steps.size(1)
    rollout_of_row = torch.arange(rollouts).repeat_interleave(rows_per_rollout)
    completion_ids, completion_mask = DiffusionGRPOTrainer._trajectory_rows(
        trainer, trajectory, rollout_of_row, first_steps.flatten(), group
    )
    ids = torch.cat([trajectory.input_ids[rollout_of_row], completion_ids], dim=1)
    mask = torch.cat([trajectory.attention_mask[rollout_of_row], completion_mask], dim=1)
    keep = completion_ids.size(1)
    likelihood = DiffusionGRPOTrainer._get_per_token_logps_and_entropies.__wrapped__
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def optimizer_step() -> float:
        """One step; returns the seconds of its no-grad pass."""
        begin = time.perf_counter()
        if group > 1:  # the importance-sampling correction's old log-probs: one pass without a graph
            with torch.no_grad():
                likelihood(trainer, model, ids, mask, keep, batch_size=ids.size(0))
        no_grad_seconds = time.perf_counter() - begin
        logps = likelihood(trainer, model, ids, mask, keep, compute_entropy=True)[0]
        loss = -(logps * completion_mask).sum() / completion_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return no_grad_seconds

    # Peak over the first step too (it creates AdamW's state, the same for every setting of a model): the allocator
    # caches what a step frees, so later steps alone would show only what outgrows the first.
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = rss_kib("VmRSS")
    optimizer_step()  # warm-up for the timing
    times, no_grad_times = [], []
    for _ in range(args.repeats):
        begin = time.perf_counter()
        no_grad_times.append(optimizer_step())
        times.append(time.perf_counter() - begin)
    peak = rss_kib("VmHWM")
    return {
        "model": args.model,
        "setting": args.setting,
        "diffusion_steps": num_steps,
        "rollouts": rollouts,
        "rollout_forwards_per_rollout": num_steps,  # the decoder's, for scale
        "rows_per_rollout": rows_per_rollout,
        "grad_forwards_per_rollout": rows_per_rollout,
        "no_grad_forwards_per_rollout": rows_per_rollout if group > 1 else 0,
        "scored_tokens_per_rollout": int(completion_mask.sum()) / rollouts,
        "output_tokens": int(processor.maskable_mask.sum()),
        "seconds_per_rollout": round(sorted(times)[len(times) // 2] / rollouts, 4),
        "no_grad_seconds_per_rollout": round(sorted(no_grad_times)[len(times) // 2] / rollouts, 4),
        "peak_mib": round((peak - start) / 1024, 1),
    }


def grouping_gap(groups=(2, 4, 8), num_prompts: int = 2) -> list[dict]:
    """How far step grouping's scored distribution is from the sampled one, on real rollouts of the shipped toy policy
    (toy main job's settings, 8 rollouts per prompt): per group size, the mean and largest |old - sampling| log-prob
    of a scored token, and TRL's default `sequence_mask` ratio of the rows (mean, share zeroed above clip_max 3)."""
    import tempfile
    import warnings

    from pararl.rewards import Reward
    from pararl.toy import build_toy_dataset, toy_policy_path, toy_processor
    from pararl.toy.recipe import toy_grpo_config

    class Words(Reward):
        def score(self, states):
            return [len(text.split()) / 10 for text in states.texts]

    dataset = build_toy_dataset("train", 16)
    batch = [dataset[i] for i in range(num_prompts) for _ in range(8)]
    results = []
    for group in groups:
        with tempfile.TemporaryDirectory() as output_dir, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = toy_grpo_config(
                output_dir=output_dir,
                use_cpu=True,
                bf16=False,
                loss_steps="all",
                loss_step_group=group,
                per_device_train_batch_size=len(batch),
                log_trajectory_pictures=False,
            )
            trainer = DiffusionGRPOTrainer(
                model=toy_policy_path(),
                reward_funcs=[Words()],
                args=config,
                train_dataset=dataset,
                processing_class=toy_processor(),
            )
            trainer.model.train()
            out = trainer._generate_and_score_completions(batch)
        scored = out["completion_mask"].bool()
        gap = (out["old_per_token_logps"] - out["sampling_per_token_logps"])[scored].abs()
        ratio = out["importance_sampling_ratio"].flatten()
        results.append(
            {
                "loss_step_group": group,
                "mean_abs_logp_gap": round(gap.mean().item(), 4),
                "max_abs_logp_gap": round(gap.max().item(), 3),
                "sequence_mask_ratio_mean": round(ratio.mean().item(), 3),
                "sequence_mask_rows_zeroed": round((ratio == 0).float().mean().item(), 3),
            }
        )
        print(results[-1], flush=True)
    return results


def run_loss_steps(args) -> None:
    """Every (model, setting) in a fresh subprocess; JSON to `LOSS_STEPS_RESULTS`."""
    results = []
    for model_name in LOSS_MODELS:
        for setting in LOSS_SETTINGS:
            command = [sys.executable, __file__, "--loss_steps", "--model", model_name, "--setting", setting]
            command += ["--width", str(args.width), "--repeats", str(args.repeats)]
            output = subprocess.run(
                command, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}
            ).stdout
            results.append(json.loads(output.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    torch.set_num_threads(1)
    gap = grouping_gap()
    report = {
        "machine": f"2-core x86_64 CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"torch {torch.__version__}, 1 thread",
        "models": {
            "toy": "the shipped toy policy, the toy main job's schedule (16 steps), 8 rollouts in one micro-batch",
            "llada": f"LLaDA-8B layout and vocabulary, width {args.width}, 1 layer, 64 steps, 1 rollout",
        },
        "measured": "one AdamW step (full parameters, fp32) on all loss rows of the rollouts: likelihood forward "
        "with a graph, backward, step; plus the no-grad old-log-prob pass of step groups > 1; median of "
        f"{args.repeats} after a warm-up step; peak = resident memory above the loaded model's, over all steps "
        "(the first creates AdamW's state)",
        "results": results,
        "grouping_gap": {
            "what": "step grouping's approximation on 16 real rollouts (2 prompts x 8) of the shipped toy policy at "
            "the main job's settings: |old - sampling| log-prob per scored token, and TRL's default sequence_mask "
            "importance-sampling ratio per row",
            "results": gap,
        },
    }
    LOSS_STEPS_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    LOSS_STEPS_RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {LOSS_STEPS_RESULTS}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=list(CASES))
    parser.add_argument("--variant", choices=["before", "after"])
    parser.add_argument("--grad", action="store_true", help="the loss pass: forward with a graph, then backward")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--loss_steps", action="store_true", help="the loss-steps cost table (see the docstring)")
    parser.add_argument("--model", choices=list(LOSS_MODELS))
    parser.add_argument("--setting", choices=list(LOSS_SETTINGS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.loss_steps:
        if args.setting is None:
            run_loss_steps(args)
        else:
            print(json.dumps(measure_loss_steps(args)))
        return
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
