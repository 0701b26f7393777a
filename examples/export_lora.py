# /// script
# dependencies = [
#     "pararl",
# ]
# ///

"""Merge a LoRA adapter trained with pararl (ParaRL or SFT) into its base model and save a standalone model.

`trainer.save_model()` of a LoRA run writes only the adapter (`adapter_config.json`, `adapter_model.safetensors`,
plus the tokenizer files). This script loads the base `MaskedDiffusionLM`, applies the adapter with PEFT, folds it
into the base weights (`merge_and_unload`) and saves a plain model (safetensors) that loads without PEFT. Tokenizer
files found in the adapter folder are copied next to it.

```bash
python examples/export_lora.py \
    --base_model outputs/toy-sft \
    --adapter outputs/toy-pararl-lora \
    --output_dir outputs/toy-pararl-merged
```
"""

import sys
from pathlib import Path


# `examples/pararl.py` shares the package's name: keep this folder off the import path so `import pararl` is the library.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import os
import shutil
from collections.abc import Sequence

import torch
from peft import PeftModel

from pararl.models import MaskedDiffusionLM


# Files a transformers tokenizer may save; whichever the adapter folder holds are copied to the merged model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--base_model", required=True, help="Folder of the base MaskedDiffusionLM the adapter was trained on."
    )
    parser.add_argument("--adapter", required=True, help="Folder written by trainer.save_model() of a LoRA run.")
    parser.add_argument("--output_dir", required=True, help="Where to save the merged model.")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=sorted(DTYPES),
        help="Dtype of the saved weights (the merge itself runs in float32).",
    )
    return parser.parse_args(argv)


def merge_lora(base_model: str, adapter: str) -> MaskedDiffusionLM:
    """The base model with the adapter folded into its weights (a plain `MaskedDiffusionLM`, no PEFT layers)."""
    if not os.path.isfile(os.path.join(adapter, "adapter_config.json")):
        raise ValueError(
            f"{adapter} has no adapter_config.json: pass the folder that trainer.save_model() wrote for a LoRA run."
        )
    # float32 for the merge: W + BA in bf16 would round the (small) adapter update away.
    model = MaskedDiffusionLM.from_pretrained(base_model, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def main(argv: Sequence[str] | None = None) -> str:
    args = parse_args(argv)
    model = merge_lora(args.base_model, args.adapter)
    model = model.to(DTYPES[args.dtype])
    os.makedirs(args.output_dir, exist_ok=True)
    model.save_pretrained(args.output_dir)  # safetensors (the only format transformers 5 writes)
    for name in TOKENIZER_FILES:
        path = os.path.join(args.adapter, name)
        if os.path.isfile(path):
            shutil.copy2(path, os.path.join(args.output_dir, name))
    print(f"Merged {args.adapter} into {args.base_model}: {args.output_dir}")
    return args.output_dir


if __name__ == "__main__":
    main()
