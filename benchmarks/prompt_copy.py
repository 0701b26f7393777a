"""Does the toy policy read the prompt? The share of rows whose first colour word the policy predicts (argmax) from
the fully masked output part, i.e. before it has decided anything else.

On the open-ended families the prompt names the colour the reasoning must repeat ("draw a red square ." -> "a red
square is drawn at ..."), so this is a pure copy; chance is one in eight. A policy that fails it cannot agree with
itself on anything the prompt fixes, and ParaRL's premise 3 (its errors are disagreements between its two outputs)
does not hold.

    python benchmarks/prompt_copy.py --model_name_or_path DIR --categories open_generation
"""

import argparse
import json

import torch


def first_colour_accuracy(model, processor, dataset) -> tuple[int, int]:
    """(correct, rows with a colour word): argmax over the text columns at the first colour slot of the target."""
    from pararl.sft.data import DataCollatorForParallelSFT
    from pararl.toy.palette import TOY_COLOURS

    batch = DataCollatorForParallelSFT(processor, seed=0)([dataset[i] for i in range(len(dataset))])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    sequence = processor.concat(inputs, processor.masked_outputs(len(dataset)))
    with torch.no_grad():
        logits = model(**sequence).logits[:, batch["input_ids"].shape[1] :]
    low, high = processor.preset.text_vocab_range
    text_positions = processor.text_positions
    predicted = logits[:, text_positions, low:high].argmax(-1) + low
    target = batch["labels"][:, text_positions]
    colour_ids = torch.tensor(processor.tokenizer.convert_tokens_to_ids(list(TOY_COLOURS)))
    is_colour = torch.isin(target, colour_ids)
    has_colour = is_colour.any(dim=1)
    first = is_colour.float().argmax(dim=1)  # the first colour slot of each row
    rows = torch.arange(len(dataset))
    correct = (predicted[rows, first] == target[rows, first]) & has_colour
    return int(correct.sum()), int(has_colour.sum())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", default=None, help="Policy (default: the shipped toy policy).")
    parser.add_argument("--categories", nargs="+", default=["open_generation"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--output", default=None, help="Also write the result as JSON here.")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from pararl.toy import build_toy_dataset, toy_processor
    from pararl.toy.policy import load_toy_policy

    model = load_toy_policy(args.model_name_or_path)
    dataset = build_toy_dataset(args.split, args.samples, seed=args.seed, categories=args.categories)
    correct, total = first_colour_accuracy(model, toy_processor(), dataset)
    result = {**vars(args), "correct": correct, "rows": total, "accuracy": correct / max(total, 1)}
    print(f"first colour word predicted from the fully masked output: {correct} / {total}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
