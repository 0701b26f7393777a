"""The policy model: a LLaDA-architecture masked-diffusion transformer, registered with the `transformers` Auto classes.

Importing this package registers `model_type="masked_diffusion"` with `AutoConfig`, `AutoModel` and
`AutoModelForMaskedLM`, so a saved model loads with `AutoModelForMaskedLM.from_pretrained(path)` without
`trust_remote_code`.
"""

from .configuration import MaskedDiffusionConfig
from .modeling import MaskedDiffusionLM, MaskedDiffusionLMOutput, MaskedDiffusionPreTrainedModel


__all__ = [
    "MaskedDiffusionConfig",
    "MaskedDiffusionLM",
    "MaskedDiffusionLMOutput",
    "MaskedDiffusionPreTrainedModel",
]
