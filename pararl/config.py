"""Old home of `DiffusionGRPOConfig`, kept for `examples/pararl.py`: import it from `pararl` or `pararl.grpo`."""

from .grpo.config import DiffusionGRPOConfig


__all__ = ["DiffusionGRPOConfig"]
