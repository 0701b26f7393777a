"""Sample reasoning + image from a parallel masked-diffusion checkpoint and draw the denoising trajectory.

    python examples/generate.py --prompt "draw a red square in the middle" --output_dir outputs/generate
    python examples/generate.py --model_name_or_path outputs/toy-sft --image scene.png --prompt "paint the circle blue"

Writes `image.png` (the final image), `reasoning.txt` (the final reasoning) and `trajectory.png` (intermediate images
left to right with the partial reasoning under each) into `--output_dir`.
"""

import argparse
import sys
from pathlib import Path


# examples/pararl.py would shadow the `pararl` package for scripts run from this folder: drop the folder from the path.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from pararl.cli import check_flags  # noqa: E402
from pararl.models import MaskedDiffusionConfig, MaskedDiffusionLM  # noqa: E402
from pararl.models.image_tokenizers import tensor_to_images  # noqa: E402
from pararl.rollout import ParallelDecoder, RolloutConfig, draw_trajectory  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--model_name_or_path",
        default=None,
        help="Local checkpoint directory of a MaskedDiffusionLM. Omitted: a tiny randomly initialised toy model, so "
        "the script runs offline (its outputs are noise; it only demonstrates the pipeline).",
    )
    parser.add_argument(
        "--preset", choices=["toy"], default="toy", help="Sequence layout and tokenizers (the toy world)."
    )
    parser.add_argument("--prompt", required=True, help="The instruction.")
    parser.add_argument("--image", default=None, help="Input image (PNG) for an editing task; omitted: generation.")
    parser.add_argument("--num_steps", type=int, default=32, help="Length of the shared step axis (forwards).")
    parser.add_argument(
        "--block_length", type=int, default=None, help="Semi-autoregressive text blocks (None: one block)."
    )
    parser.add_argument("--image_start", type=float, default=0.0, help="Fraction of the axis before the image starts.")
    parser.add_argument("--order", choices=["parallel", "text_then_image", "image_then_text"], default="parallel")
    parser.add_argument("--text_temperature", type=float, default=0.0, help="0 = greedy text.")
    parser.add_argument("--image_temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--remasking", choices=["low_confidence", "random"], default="low_confidence")
    parser.add_argument("--text_guidance_scale", type=float, default=0.0)
    parser.add_argument("--image_guidance_scale", type=float, default=0.0)
    parser.add_argument("--guidance_drop", choices=["prompt", "image", "both"], default="both")
    parser.add_argument("--num_pictures", type=int, default=6, help="Intermediate steps drawn in trajectory.png.")
    parser.add_argument("--output_dir", default="outputs/generate")
    parser.add_argument("--seed", type=int, default=0, help="Row seed of the sampling noise.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    check_flags(parser, sys.argv[1:] if argv is None else argv)  # no abbreviations; the closest flag for a typo
    return parser.parse_args(argv)


def load_model(args, processor) -> MaskedDiffusionLM:
    if args.model_name_or_path is not None:
        dtype = torch.bfloat16 if str(args.device).startswith("cuda") else torch.float32
        return MaskedDiffusionLM.from_pretrained(args.model_name_or_path, dtype=dtype).to(args.device).eval()
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


def main(argv=None) -> dict[str, Path]:
    args = parse_args(argv)
    from pararl.toy import toy_processor

    processor = toy_processor()
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
    draw_trajectory(trajectory.to("cpu"), processor).save(paths["trajectory"])
    print(f"reasoning: {reasoning}")
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


if __name__ == "__main__":
    main()
