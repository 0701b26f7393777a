"""The toy world's RL recipe, in one place: the main job's defaults, LoRA adapter, data, rewards and evaluation.

`examples/pararl.py` (with no arguments), `benchmarks/ablations.py`, `benchmarks/easy_reward.py` and
`benchmarks/reward_diagnostics.py` all read these, so a benchmark always measures the job a user runs. Importing this
module is cheap (the command line is checked before trainers and rewards load).
"""

from collections.abc import Sequence


__all__ = [
    "TOY_COORDINATION_PROMPTS",
    "TOY_EVAL_SAMPLES",
    "TOY_GRPO_DEFAULTS",
    "TOY_LORA",
    "TOY_REWARDS",
    "TOY_TRAIN_CATEGORIES",
    "TOY_TRAIN_SAMPLES",
    "format_category_changes",
    "format_coordination_changes",
    "paired_reward_summary",
    "reward_curve",
    "save_reward_curve",
    "toy_coordination",
    "toy_datasets",
    "toy_evaluation",
    "toy_grpo_config",
    "toy_lora_config",
    "toy_reward",
]

# `DiffusionGRPOConfig` fields of the toy main job on CPU (the command line overrides them).
TOY_GRPO_DEFAULTS: dict = {
    "output_dir": "outputs/pararl-toy",
    "learning_rate": 1e-3,
    "max_steps": 30,
    "per_device_train_batch_size": 16,  # 2 prompts x 8 rollouts per step
    "num_generations": 8,
    "diffusion_steps": 16,
    # The reasoning in two semi-autoregressive blocks of 13 (its 26-token span; 8 of the 16 steps each), the paper's
    # way of decoding text: the colour word settles in the first block, the dot's cell at the end, so the picture
    # decides with the text in view. Decoded in one block, both are revealed at the last step, each drawn while the
    # other is masked, and no reward can make two independent draws agree (benchmarks/results/coordination_*).
    "block_length": 13,
    "num_reward_steps": 3,
    "beta": 0.0,
    # One reward step per third of the trajectory: uniformly drawn steps often land early, where the toy policy
    # shows the same partial state to every rollout of a group (zero reward spread, no signal).
    "reward_step_selection": "stratified",
    "logging_steps": 5,
    "save_strategy": "no",
    "report_to": "none",
    "gradient_checkpointing": False,
}
# `trl.ModelConfig` fields of the toy main job: it trains a LoRA adapter of the shipped policy (toy_lora_config).
TOY_LORA: dict = {"use_peft": True, "lora_r": 16, "lora_alpha": 32}
# The main job's prompts (toy seed 0): training prompts, and the held-out tasks scored before and after.
TOY_TRAIN_SAMPLES = 512
# The main job trains on open_colour ("add a dot at the top left .", any colour valid): its one open decision is
# written in both outputs, so coordination can be measured and learnt (held-out tasks still cover every family).
TOY_TRAIN_CATEGORIES: tuple[str, ...] = ("open_colour",)
TOY_EVAL_SAMPLES = 192
# Held-out open_colour prompts whose rollouts (x num_generations) measure coordination before and after.
TOY_COORDINATION_PROMPTS = 32

TOY_REWARDS = ("clip", "exact", "random")


def toy_reward(name: str, seed: int = 0, clip=None, long_text: str = "truncate"):
    """The toy main job's reward: `"clip"` (ParaRL: the tiny CLIP's normalised alignment; `clip` = a loaded
    `(model, tokenizer)` pair, default the shipped one), or a control: `"exact"` (the evaluator's own output
    alignment of each state, a perfect judge) or `"random"` (seeded uniform noise)."""
    from .reward import RandomReward, ToyOutputAlignment

    if name == "clip":
        from ..rewards import CLIPAlignmentReward, RewardNormalizer

        if clip is None:
            from .clip import load_toy_clip

            clip = load_toy_clip()
        model, tokenizer = clip
        return CLIPAlignmentReward(
            model=model, tokenizer=tokenizer, normalizer=RewardNormalizer(), long_text=long_text
        )
    if name == "exact":
        return ToyOutputAlignment()
    if name == "random":
        return RandomReward(seed)
    raise ValueError(f"toy reward must be one of {TOY_REWARDS}, got {name!r}.")


def toy_grpo_config(**overrides):
    """The toy main job's `DiffusionGRPOConfig` (`examples/pararl.py` with no arguments: :data:`TOY_GRPO_DEFAULTS`,
    bf16 only on a GPU) with `overrides`."""
    import torch

    from ..grpo.config import DiffusionGRPOConfig

    on_cpu = not torch.cuda.is_available()
    return DiffusionGRPOConfig(**{**TOY_GRPO_DEFAULTS, "use_cpu": on_cpu, "bf16": not on_cpu, **overrides})


def toy_lora_config(lora_r: int = TOY_LORA["lora_r"], lora_alpha: int = TOY_LORA["lora_alpha"]):
    """The toy main job's LoRA adapter (of `lora_r` and `lora_alpha`), as `examples/pararl.py` builds it."""
    from trl import ModelConfig

    from ..cli import diffusion_peft_config

    return diffusion_peft_config(ModelConfig(use_peft=True, lora_r=lora_r, lora_alpha=lora_alpha))


def toy_datasets(
    train_samples: int = TOY_TRAIN_SAMPLES,
    eval_samples: int = TOY_EVAL_SAMPLES,
    seed: int = 0,
    train_categories: Sequence[str] | None = TOY_TRAIN_CATEGORIES,
):
    """The main job's `(train, held-out)` toy datasets: training prompts (of `train_categories` only; `None` = the
    default world's eight families) and held-out tasks of every category, so a narrowed training run is still judged
    on the whole world (plus any family outside the default world that it trains on, e.g. `open_colour`)."""
    from .tasks import CATEGORIES, EXTRA_CATEGORIES, build_toy_dataset

    train = build_toy_dataset("train", train_samples, seed=seed, categories=train_categories)
    world = CATEGORIES + tuple(c for c in EXTRA_CATEGORIES if c in (train_categories or ()))
    return train, build_toy_dataset("test", eval_samples, seed=seed, world=world)


def toy_evaluation(model, processor, dataset, args, keep_samples: bool = False) -> dict:
    """The exact six-axis evaluator on toy rows, decoded with the training rollout settings of `args` (a
    `DiffusionGRPOConfig`) and its seed, so before/after and every benchmark decode alike."""
    from .evaluate import generate_predictions
    from .scoring import evaluate

    was_training = model.training
    model.eval()
    try:
        predictions = generate_predictions(
            model, processor, dataset, rollout_config=args.to_rollout_config(), seed=args.seed
        )
    finally:
        model.train(was_training)
    result = evaluate(predictions, dataset)
    if not keep_samples:
        result.pop("samples")
    return result


def reward_curve(log_history: list[dict]) -> list[tuple[int, float]]:
    """`(step, reward)` of every logged training step (TRL's `reward` metric)."""
    return [(log["step"], log["reward"]) for log in log_history if "reward" in log and "step" in log]


def save_reward_curve(
    log_history: list[dict],
    path: str,
    title: str = "ParaRL on the toy world",
    control_log_history: list[dict] | None = None,
) -> None:
    """Draws the logged training reward per step (and its running mean over a fifth of the run) to a PNG.

    With `control_log_history` (the same job at learning rate 0: same prompts and rollout noise, no update) its curve
    is drawn beside, and a second panel shows the paired difference, the only part of the curve that is learning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = reward_curve(log_history)
    if not points:
        raise ValueError("the log history holds no 'reward' entry; was the trainer run with logging on?")
    control = dict(reward_curve(control_log_history)) if control_log_history is not None else None
    fig, axes = plt.subplots(1, 1 if control is None else 2, figsize=(6 if control is None else 11, 3.4), dpi=120)
    ax = axes if control is None else axes[0]
    _plot_rewards(ax, points, "#1f4e79", "ParaRL")
    if control is not None:
        _plot_rewards(ax, sorted(control.items()), "#b0b0b0", "no update (lr 0)")
        paired = [(step, reward - control[step]) for step, reward in points if step in control]
        _plot_rewards(axes[1], paired, "#7a1f1f", "ParaRL - no update")
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[1].set_title("paired difference (same prompts and rollout noise)")
    ax.set_title(title)
    ax.set_ylabel("mean reward of the step's rollouts")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_rewards(ax, points, colour: str, label: str) -> None:
    """One reward curve: each logged step (thin) and its running mean over a fifth of the run (thick)."""
    steps, rewards = zip(*points)
    window = max(1, len(rewards) // 5)
    running = [
        sum(rewards[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1)) for i in range(len(rewards))
    ]
    ax.plot(steps, rewards, color=colour, alpha=1.0 if window == 1 else 0.35, marker="o", markersize=3,
            linewidth=2 if window == 1 else 1, label=f"{label} (each logged step)")  # fmt: skip
    if window > 1:
        ax.plot(steps, running, color=colour, linewidth=2, label=f"{label}, running mean over {window}")
    ax.set_xlabel("training step")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=7)


def paired_reward_summary(log_history: list[dict], control_log_history: list[dict]) -> dict:
    """The reward's paired difference to the no-update run, per logged step and over the last half of the run."""
    control = dict(reward_curve(control_log_history))
    paired = [reward - control[step] for step, reward in reward_curve(log_history) if step in control]
    if not paired:
        raise ValueError("the run and its no-update control share no logged step; were both logged alike?")
    last_half = paired[len(paired) // 2 :]
    return {
        "control_rewards": [control[step] for step in sorted(control)],
        "paired_difference": paired,
        "paired_difference_mean": sum(paired) / len(paired),
        "paired_difference_last_half": sum(last_half) / len(last_half),
    }


def toy_coordination(model, processor, args, prompts: int = TOY_COORDINATION_PROMPTS, seed: int = 0) -> dict:
    """Coordination of the policy's two outputs on held-out open_colour prompts (`prompts` x `args.num_generations`
    rollouts, decoded with the training rollout settings of `args` and its seed), and its coupling: see
    :func:`pararl.toy.coordination.coordination_report`."""
    from .coordination import coordination_report
    from .tasks import build_toy_dataset

    dataset = build_toy_dataset("test", prompts, seed=seed, categories=["open_colour"])
    return coordination_report(
        model, processor, dataset, args.to_rollout_config(), generations=args.num_generations, seed=args.seed
    )


def format_coordination_changes(before: dict, after: dict) -> str:
    """Per decoding: matched, independent draws, coordination and distinct choices per group, before -> after."""
    columns = (("matched", "matched", "{:.1f}"), ("independent", "independent", "{:.1f}"),
               ("coordination", "coordination", "{:+.1f}"), ("distinct_text_choices", "words/prompt", "{:.2f}"),
               ("distinct_image_choices", "colours/prompt", "{:.2f}"))  # fmt: skip
    rows = [["decoding", *(header for _, header, _ in columns)]]
    for decoding in before:
        cells = [decoding]
        for key, _, form in columns:
            old, new = before[decoding][key], after[decoding][key]
            cells.append(f"{form.format(old)} -> {form.format(new)} ({new - old:+.1f})")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    )


def format_category_changes(before: dict, after: dict, axes: tuple[str, ...] | None = None) -> str:
    """Per category (and `all`): every axis before -> after, from two :func:`toy_evaluation` results."""
    from ..axes import AXES, AXIS_HEADERS

    axes = axes or (*AXES, "overall")
    rows = [*before["categories"], "all"]

    def table(result, category):
        if category == "all":
            return {**result["axes"], "overall": result["overall"]}
        return result["categories"][category]

    headers = ["category", *(AXIS_HEADERS.get(axis, "Overall") for axis in axes)]
    lines = []
    for category in rows:
        cells = [category]
        for axis in axes:
            old, new = table(before, category).get(axis), table(after, category).get(axis)
            cells.append("-" if old is None or new is None else f"{old:.1f} -> {new:.1f} ({new - old:+.1f})")
        lines.append(cells)
    widths = [max(len(row[i]) for row in [headers, *lines]) for i in range(len(headers))]

    def render(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    rule = "-" * len(render(headers))
    return "\n".join([render(headers), rule, *(render(r) for r in lines[:-1]), rule, render(lines[-1])])
