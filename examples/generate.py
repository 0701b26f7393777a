"""Sample reasoning + image from a parallel masked-diffusion checkpoint and draw the denoising trajectory.

    python examples/generate.py --prompt "draw a red square in the middle" --output_dir outputs/generate
    python examples/generate.py --model_name_or_path outputs/toy-sft --image scene.png --prompt "paint the circle blue"
    python examples/generate.py --model_name_or_path /local/MMaDA-Parallel-M \
        --processor pararl.released:mmada_parallel_m_processor --prompt "..."

Without `--model_name_or_path` it samples the shipped toy policy (toy processor only). A randomly initialised model
is never sampled unless `--allow_random_weights` asks for one (its outputs are noise). Prompt words that the
tokenizer does not know (they would silently become `<unk>`) are reported with a warning.

Writes `image.png` (the final image), `reasoning.txt` (the final reasoning) and `trajectory.png` (intermediate images
left to right with the partial reasoning under each) into `--output_dir`.
"""

import argparse
import sys
import warnings
from pathlib import Path


# examples/pararl.py would shadow the `pararl` package for scripts run from this folder: drop the folder from the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pararl.cli import check_flags, parse_command_line, usage_error  # noqa: E402
from pararl.image_tokenizers import tensor_to_images  # noqa: E402
from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM  # noqa: E402
from pararl.processing import load_processor  # noqa: E402
from pararl.rollout import ParallelDecoder, RolloutConfig, draw_trajectory  # noqa: E402
from pararl.rollout.decoder import GUIDANCE_DROP, REMASKING  # noqa: E402
from pararl.rollout.schedules import DECODE_ORDERS  # noqa: E402


TOY_PROCESSOR = "pararl.toy:toy_processor"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="Local checkpoint folder: a MaskedDiffusionLM, a released checkpoint, or a LoRA adapter whose base is "
        "local. Omitted: the shipped toy policy (with the toy processor).",
    )
    parser.add_argument("--adapter", default=None, help="Folder of a LoRA adapter (peft) applied to the model.")
    parser.add_argument(
        "--processor",
        default=TOY_PROCESSOR,
        help="'module:function' building the model's ParallelProcessor, as in examples/pararl.py (e.g. "
        "pararl.released:mmada_parallel_m_processor).",
    )
    parser.add_argument(
        "--allow_random_weights",
        action="store_true",
        help="Without --model_name_or_path, sample a tiny randomly initialised model (noise; demonstrates the "
        "pipeline only).",
    )
    parser.add_argument("--prompt", required=True, help="The instruction.")
    parser.add_argument("--image", default=None, help="Input image (PNG) for an editing task; omitted: generation.")
    parser.add_argument("--num_steps", type=int, default=32, help="Length of the shared step axis (forwards).")
    parser.add_argument(
        "--block_length", type=int, default=None, help="Semi-autoregressive text blocks (None: one block)."
    )
    parser.add_argument("--image_start", type=float, default=0.0, help="Fraction of the axis before the image starts.")
    parser.add_argument("--order", choices=DECODE_ORDERS, default="parallel")
    parser.add_argument("--text_temperature", type=float, default=0.0, help="0 = greedy text.")
    parser.add_argument("--image_temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--remasking", choices=REMASKING, default="low_confidence")
    parser.add_argument("--text_guidance_scale", type=float, default=0.0)
    parser.add_argument("--image_guidance_scale", type=float, default=0.0)
    parser.add_argument("--guidance_drop", choices=GUIDANCE_DROP, default="both")
    parser.add_argument("--num_pictures", type=int, default=6, help="Intermediate steps drawn in trajectory.png.")
    parser.add_argument("--output_dir", default="outputs/generate")
    parser.add_argument("--seed", type=int, default=0, help="Row seed of the sampling noise.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    check_flags(parser, sys.argv[1:] if argv is None else argv)  # no abbreviations; the closest flag for a typo
    args = parse_command_line(parser, sys.argv[1:] if argv is None else argv)
    if not args.prompt.strip():
        usage_error(parser, "--prompt is empty; give the instruction, e.g. --prompt 'draw a red square .'")
    return args


def load_model(args, processor) -> MaskedDiffusionLM:
    from pararl.evaluation.generation import load_policy

    dtype = torch.bfloat16 if str(args.device).startswith("cuda") else torch.float32
    if args.model_name_or_path is not None:
        return load_policy(args.model_name_or_path, args.adapter, device=args.device, dtype=dtype)
    if not args.allow_random_weights:
        if args.processor != TOY_PROCESSOR:
            raise ValueError(
                f"--model_name_or_path is required with --processor {args.processor!r}; pass --allow_random_weights "
                "to sample a randomly initialised model instead (its outputs are noise)."
            )
        from pararl.toy import toy_policy_path

        return load_policy(toy_policy_path(), args.adapter, device=args.device, dtype=dtype)
    preset = processor.preset
    torch.manual_seed(args.seed)
    config = MaskedDiffusionConfig(
        d_model=64,
        n_layers=2,
        n_heads=4,
        mlp_hidden_size=128,
        max_sequence_length=512,
        **preset.model_config_kwargs(),
    )
    return MaskedDiffusionLM(config).to(args.device).eval()


def warn_unknown_words(tokenizer, prompt: str) -> list[str]:
    """Warns about the prompt's pieces that the tokenizer turns into its unknown token; returns them."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    encoding = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    unknown = [prompt[start:end] for token, (start, end) in zip(encoding["input_ids"], encoding["offset_mapping"])
               if token == unk]  # fmt: skip
    if unknown:
        warnings.warn(
            f"the prompt has words the tokenizer does not know, read by the model as {tokenizer.unk_token}: "
            f"{unknown}; rephrase with words of its vocabulary.",
            stacklevel=2,
        )
    return unknown


def main(argv=None) -> dict[str, Path]:
    args = parse_args(argv)
    processor = load_processor(args.processor)
    warn_unknown_words(processor.tokenizer, args.prompt)
    model = load_model(args, processor)
    config = RolloutConfig(
        num_steps=args.num_steps,
        block_length=args.block_length,
        image_start=args.image_start,
        order=args.order,
        text_temperature=args.text_temperature,
        image_temperature=args.image_temperature,
        top_k=args.top_k,
        remasking=args.remasking,
        text_guidance_scale=args.text_guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
        guidance_drop=args.guidance_drop,
    )
    decoder = ParallelDecoder(model, processor, config)
    image = Image.open(args.image).convert("RGB") if args.image else None
    count = max(1, min(args.num_pictures, args.num_steps))
    record = sorted({round(i * (args.num_steps - 1) / max(1, count - 1)) for i in range(count)})
    trajectory = decoder.generate(
        [args.prompt], images=[image], record_steps=record, seeds=torch.tensor([args.seed]), progress=True
    )

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "image": output_dir / "image.png",
        "reasoning": output_dir / "reasoning.txt",
        "trajectory": output_dir / "trajectory.png",
    }
    pixels = processor.decode_images(processor.image_codes(trajectory.output_ids))
    tensor_to_images(pixels.float().cpu())[0].save(paths["image"])
    reasoning = processor.decode_text(trajectory.output_ids)[0]
    paths["reasoning"].write_text(reasoning + "\n")
    draw_trajectory(trajectory.to("cpu"), processor, prompt=args.prompt).save(paths["trajectory"])
    print(f"reasoning: {reasoning}")
    print("saved: " + ", ".join(str(path) for path in paths.values()))
    return paths


if __name__ == "__main__":
    main()
