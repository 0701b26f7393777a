"""The policy model: a LLaDA-architecture masked-diffusion transformer, registered with the `transformers` Auto classes.

Importing this package registers `model_type="masked_diffusion"` with `AutoConfig`, `AutoModel` and
`AutoModelForMaskedLM`, so a saved model loads with `AutoModelForMaskedLM.from_pretrained(path)` without
`trust_remote_code`. `MaskedDiffusionLM.from_pretrained` also loads released LLaDA / MMaDA / MMaDA-Parallel folders
(see `loading`). Image tokenizers: `MAGVIT2ImageTokenizer` (MMaDA-Parallel-M) and `AmusedVQImageTokenizer`
(MMaDA-Parallel-A, needs the optional `diffusers`).
"""

from .amused import AmusedVQImageTokenizer
from .configuration import MaskedDiffusionConfig
from .loading import config_from_released, load_released_checkpoint, load_released_processor, load_text_tokenizer
from .magvit2 import MAGVIT2Config, MAGVIT2ImageTokenizer
from .modeling import (
    ATTENTION_LORA_TARGETS,
    MaskedDiffusionLM,
    MaskedDiffusionLMOutput,
    MaskedDiffusionPreTrainedModel,
)


__all__ = [
    "ATTENTION_LORA_TARGETS",
    "AmusedVQImageTokenizer",
    "MAGVIT2Config",
    "MAGVIT2ImageTokenizer",
    "config_from_released",
    "load_released_checkpoint",
    "load_released_processor",
    "load_text_tokenizer",
    "MaskedDiffusionConfig",
    "MaskedDiffusionLM",
    "MaskedDiffusionLMOutput",
    "MaskedDiffusionPreTrainedModel",
]
