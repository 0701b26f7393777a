"""The policy model: a LLaDA-architecture masked-diffusion transformer, registered with the `transformers` Auto classes.

Importing this package registers `model_type="masked_diffusion"` with `AutoConfig`, `AutoModel` and
`AutoModelForMaskedLM`, so a saved model loads with `AutoModelForMaskedLM.from_pretrained(path)` without
`trust_remote_code`. `MaskedDiffusionLM.from_pretrained` also loads released LLaDA / MMaDA / MMaDA-Parallel folders
(their config is mapped by `conversion.config_from_released`). The image tokenizers live in `pararl.image_tokenizers`,
the released checkpoints' processors in `pararl.released`.
"""

from .configuration import MaskedDiffusionConfig
from .conversion import config_from_released, is_released_checkpoint
from .modeling import (
    ATTENTION_LORA_TARGETS,
    MaskedDiffusionLM,
    MaskedDiffusionLMOutput,
    MaskedDiffusionPreTrainedModel,
    load_released_checkpoint,
)


__all__ = [
    "ATTENTION_LORA_TARGETS",
    "config_from_released",
    "is_released_checkpoint",
    "load_released_checkpoint",
    "MaskedDiffusionConfig",
    "MaskedDiffusionLM",
    "MaskedDiffusionLMOutput",
    "MaskedDiffusionPreTrainedModel",
]
