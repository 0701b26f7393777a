"""Parallel-synthesis SFT: masked-token training of both output modalities at once, with conditioning dropout."""

from .config import ParallelSFTConfig
from .data import DataCollatorForParallelSFT, pretokenize_dataset
from .objective import (
    ParallelSFTLossOutput,
    masked_token_nll,
    parallel_sft_loss,
    sample_mask_ratio,
    sample_output_mask,
)
from .trainer import ParallelSFTTrainer


__all__ = [
    "DataCollatorForParallelSFT",
    "ParallelSFTConfig",
    "ParallelSFTLossOutput",
    "ParallelSFTTrainer",
    "masked_token_nll",
    "parallel_sft_loss",
    "pretokenize_dataset",
    "sample_mask_ratio",
    "sample_output_mask",
]
