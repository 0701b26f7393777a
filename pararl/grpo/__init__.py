"""ParaRL: GRPO over the steps of parallel denoising trajectories (`DiffusionGRPOConfig` + `DiffusionGRPOTrainer`,
subclasses of TRL's `GRPOConfig` / `GRPOTrainer`)."""

from .config import DiffusionGRPOConfig
from .trainer import DiffusionGRPOTrainer


__all__ = ["DiffusionGRPOConfig", "DiffusionGRPOTrainer"]
