"""pararl: ParaRL and parallel SFT for parallel multimodal masked-diffusion models, on top of TRL.

Top-level names are imported lazily, so `import pararl` stays cheap and `pararl.processing` or `pararl.toy` do not
pull in TRL and DeepSpeed.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0.dev0"

_LAZY = {
    "MaskedDiffusionConfig": "pararl.models",
    "MaskedDiffusionLM": "pararl.models",
    "SequencePreset": "pararl.processing",
    "ParallelProcessor": "pararl.processing",
    "ParallelDecoder": "pararl.rollout",
    "RolloutConfig": "pararl.rollout",
    "Trajectory": "pararl.rollout",
    "Reward": "pararl.rewards",
    "CLIPAlignmentReward": "pararl.rewards",
    "RewardNormalizer": "pararl.rewards",
    "ParallelSFTConfig": "pararl.sft",
    "ParallelSFTTrainer": "pararl.sft",
    "DiffusionGRPOConfig": "pararl.grpo",
    "DiffusionGRPOTrainer": "pararl.grpo",
}

# Spelled out (not `list(_LAZY)`) so linters and IDEs see the public names.
__all__ = [
    "MaskedDiffusionConfig",
    "MaskedDiffusionLM",
    "SequencePreset",
    "ParallelProcessor",
    "ParallelDecoder",
    "RolloutConfig",
    "Trajectory",
    "Reward",
    "CLIPAlignmentReward",
    "RewardNormalizer",
    "ParallelSFTConfig",
    "ParallelSFTTrainer",
    "DiffusionGRPOConfig",
    "DiffusionGRPOTrainer",
]
assert set(__all__) == set(_LAZY)

if TYPE_CHECKING:
    from .grpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
    from .models import MaskedDiffusionConfig, MaskedDiffusionLM
    from .processing import ParallelProcessor, SequencePreset
    from .rewards import CLIPAlignmentReward, Reward, RewardNormalizer
    from .rollout import ParallelDecoder, RolloutConfig, Trajectory
    from .sft import ParallelSFTConfig, ParallelSFTTrainer


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pararl' has no attribute {name!r}")
