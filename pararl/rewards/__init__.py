"""Rewards on intermediate rollout states: the `Reward` base class, CLIP alignment, normalisation, step selection
and the TRL-callable adapter."""

from .base import FunctionReward, Reward, RewardFunc, RewardStates, as_reward, compute_rewards
from .clip import CLIPAlignmentReward, CLIPImageConsistencyReward, CLIPRewardBase, load_open_clip
from .normalization import RewardNormalizer, calibrate_normalizer
from .steps import AllSteps, FinalStep, FixedSteps, StepSelector, StratifiedSteps, UniformSteps, get_step_selector
from .text import ReasoningFormatReward


__all__ = [
    "AllSteps",
    "CLIPAlignmentReward",
    "CLIPImageConsistencyReward",
    "CLIPRewardBase",
    "FinalStep",
    "FixedSteps",
    "FunctionReward",
    "ReasoningFormatReward",
    "Reward",
    "RewardFunc",
    "RewardNormalizer",
    "RewardStates",
    "StepSelector",
    "StratifiedSteps",
    "UniformSteps",
    "as_reward",
    "calibrate_normalizer",
    "compute_rewards",
    "get_step_selector",
    "load_open_clip",
]
