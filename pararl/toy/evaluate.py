"""Scores a toy policy: decodes a toy dataset with the parallel decoder and grades the outputs with the exact
evaluator (:mod:`pararl.toy.scoring`).

Run ``python -m pararl.toy.evaluate --model_name_or_path DIR`` to score a saved policy on the held-out split.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .palette import TOY_GRID
from .processing import toy_processor
from .scoring import evaluate, format_scores
from .tasks import build_toy_dataset


__all__ = ["EvaluateArguments", "generate_predictions", "main"]


def generate_predictions(
    model,
    processor,
    dataset,
    rollout_config=None,
    batch_size: int = 32,
    seed: int = 0,
    progress: bool = False,
    keep_step_maps: bool = False,
) -> dict:
    """Runs the parallel decoder over a toy dataset.

    Each sample's noise comes from its own row seed (`seed`, index), so predictions do not depend on `batch_size`.
    The model is put in eval mode for the rollout and restored afterwards.

    Args:
        model: The policy ([`~pararl.models.MaskedDiffusionLM`] or a wrapper the decoder accepts).
        processor: The toy [`~pararl.processing.ParallelProcessor`] (`pararl.toy.toy_processor()`).
        dataset: Rows with `prompt`, `image` (PIL or None) and `task`.
        rollout_config ([`~pararl.rollout.RolloutConfig`], *optional*): Sampling settings (decoder defaults).
        batch_size: Prompts per rollout.
        seed: Base of the per-sample row seeds.
        progress: Show a progress bar over the batches.
        keep_step_maps: Also return the final output parts and their step maps (when each token was revealed).

    Returns:
        `{"texts": list[str], "codes": LongTensor (N, 8, 8)}` (-1 where a cell is not an image token), plus
        `"output_ids"` and `"step_map"` (`LongTensor (N, L_out)`) with `keep_step_maps`.
    """
    from tqdm.auto import tqdm

    from pararl.rollout import ParallelDecoder

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    decoder = ParallelDecoder(model, processor, rollout_config)
    size = len(dataset)
    texts, codes, output_parts, step_maps = [], [], [], []
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for start in tqdm(range(0, size, batch_size), disable=not progress, desc="generating"):
            stop = min(start + batch_size, size)
            rows = [dataset[i] for i in range(start, stop)]
            # Row seeds from (seed, index): the same sample gets the same noise in any batch.
            seeds = torch.arange(start, stop, dtype=torch.long) + int(seed) * 1_000_003
            trajectory = decoder.generate(
                [row["prompt"] for row in rows],
                images=[row.get("image") for row in rows],
                tasks=[row.get("task") for row in rows],
                seeds=seeds,
            )
            output_ids = trajectory.output_ids.cpu()
            texts.extend(processor.decode_text(output_ids))
            codes.append(processor.image_codes(output_ids))
            if keep_step_maps:
                output_parts.append(output_ids)
                step_maps.append(trajectory.step_map.cpu())
    finally:
        model.train(was_training)
    grids = torch.cat(codes) if codes else torch.empty(0, *TOY_GRID, dtype=torch.long)
    predictions = {"texts": texts, "codes": grids}
    if keep_step_maps:
        predictions.update(output_ids=torch.cat(output_parts), step_map=torch.cat(step_maps))
    return predictions


# --------------------------------------------------------------------------------------------------------- CLI
@dataclass
class EvaluateArguments:
    """Arguments of `python -m pararl.toy.evaluate`."""

    model_name_or_path: str = field(metadata={"help": "Folder of a saved toy policy (MaskedDiffusionLM)."})
    split: str = field(default="test", metadata={"help": "Toy split to score: 'test' (held out) or 'train'."})
    num_samples: int = field(default=120, metadata={"help": "Number of samples (categories cycle)."})
    dataset_seed: int = field(default=0, metadata={"help": "Seed of the toy dataset."})
    steps: int | None = field(default=None, metadata={"help": "Decoding steps (default: the decoder's)."})
    temperature: float | None = field(
        default=None, metadata={"help": "Text and image sampling temperature (default: the decoder's; 0 = greedy)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the rollout noise."})
    batch_size: int = field(default=32, metadata={"help": "Prompts per rollout."})
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda when available, else cpu)."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the full result to this file."})


def main(argv: Sequence[str] | None = None) -> dict:
    """Command-line entry point: generates on a toy split with a saved model and prints the six axes."""
    from transformers import HfArgumentParser

    from pararl.models import MaskedDiffusionLM
    from pararl.rollout import RolloutConfig

    (args,) = HfArgumentParser(EvaluateArguments).parse_args_into_dataclasses(args=argv)
    if args.split not in ("train", "test"):
        raise ValueError(f"--split must be 'train' or 'test', got {args.split!r}.")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = MaskedDiffusionLM.from_pretrained(args.model_name_or_path).to(device)
    overrides = {}
    if args.steps is not None:
        overrides["num_steps"] = args.steps
    if args.temperature is not None:
        overrides["text_temperature"] = overrides["image_temperature"] = args.temperature
    dataset = build_toy_dataset(args.split, args.num_samples, seed=args.dataset_seed)
    predictions = generate_predictions(
        model,
        toy_processor(),
        dataset,
        RolloutConfig(**overrides),
        batch_size=args.batch_size,
        seed=args.seed,
        progress=True,
    )
    result = evaluate(predictions, dataset)
    print(format_scores(result))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({**result, "predictions": predictions["texts"]}, f, indent=2)
    return result


if __name__ == "__main__":
    main()
