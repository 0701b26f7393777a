"""Parallel-decoding rollouts: reveal schedules, sampling, the decoder and its trajectories."""

from .decoder import ParallelDecoder, RolloutConfig
from .sampling import counter_uniform, default_seeds
from .schedules import (
    CallableSchedule,
    CosineSchedule,
    LinearSchedule,
    RevealPlan,
    RevealSchedule,
    build_reveal_plan,
    get_schedule,
)
from .trajectory import Trajectory
from .visualize import draw_trajectory


__all__ = [
    "CallableSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "ParallelDecoder",
    "RevealPlan",
    "RevealSchedule",
    "RolloutConfig",
    "Trajectory",
    "build_reveal_plan",
    "counter_uniform",
    "default_seeds",
    "draw_trajectory",
    "get_schedule",
]
