"""Coordination of a toy policy's two outputs on the open_colour family (the dot's colour is left to the model).

For each decoding (the given one, then text written first, then picture drawn first): how often the colour word and
the dot's colour match, how often two independent draws from the same prompt's rollouts would (coordination is the
difference), distinct choices per prompt (sharpening), and which output reveals the colour first. See
`pararl.toy.coordination`.

    python benchmarks/coordination.py                                  # the shipped policy, held-out prompts
    python benchmarks/coordination.py --model_name_or_path DIR --block_length 13 --output result.json
"""

import argparse
import json
import time

import torch


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Policy (default: the shipped toy policy).")
    parser.add_argument("--adapter", default=None, help="A LoRA adapter folder to apply to the policy.")
    parser.add_argument("--split", default="test", choices=["train", "test"])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--diffusion_steps", type=int, default=16)
    parser.add_argument("--block_length", type=int, default=None, help="Semi-autoregressive text blocks.")
    parser.add_argument("--dataset_seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="Seed of the rollout noise.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None, help="Also write the result as JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from pararl.rollout import RolloutConfig
    from pararl.toy import build_toy_dataset, toy_processor
    from pararl.toy.coordination import coordination_report, format_coordination
    from pararl.toy.policy import load_toy_policy

    model = load_toy_policy(args.model_name_or_path)
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).merge_and_unload().eval()
    dataset = build_toy_dataset(args.split, args.prompts, seed=args.dataset_seed, categories=["open_colour"])
    config = RolloutConfig(num_steps=args.diffusion_steps, block_length=args.block_length)
    start = time.perf_counter()
    report = coordination_report(model, toy_processor(), dataset, config, args.generations, args.seed)
    print(f"open_colour, {args.split} split, {args.prompts} prompts x {args.generations} rollouts (%)")
    print(format_coordination(report))
    result = {"settings": vars(args), "seconds": round(time.perf_counter() - start, 1), **report}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
