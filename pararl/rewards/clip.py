"""CLIP rewards: text-image alignment of intermediate states (ParaRL's reward) and image-image consistency for edits.

Both load an [open_clip](https://github.com/mlfoundations/open_clip) model from a model name plus a *local* weights
file (or take an already built model and its tokenizer), encode images as tensors (resized and normalised with
torch, batched, never through PIL per image) and return the cosine similarity, optionally normalised by a
[`RewardNormalizer`].
"""

import logging
import os
import re
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from ..image_tokenizers import images_to_tensor
from .base import Reward, RewardStates
from .normalization import RewardNormalizer


__all__ = ["CLIPRewardBase", "CLIPAlignmentReward", "CLIPImageConsistencyReward", "load_open_clip"]

# Weight files open_clip writes into a "local-dir:" model folder, in order of preference.
_LOCAL_DIR_WEIGHTS = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
)


@contextmanager
def quiet_open_clip():
    # open_clip logs "initialized randomly" through the root logger whenever it builds a model before we load the
    # weights ourselves; that message would be wrong here, so it is muted for the build only.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_open_clip(
    model_name: str,
    pretrained: str | os.PathLike | None = None,
    allow_random_init: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """Builds an open_clip model with weights, and its tokenizer; never silently random.

    Args:
        model_name: An open_clip architecture (`"ViT-B-32"`, or a config registered with
            `open_clip.add_model_config`), or `"local-dir:/path"` (config and weights in one folder, as saved by
            open_clip), or `"hf-hub:org/repo"` (needs the Hub or its cache).
        pretrained: Path to a local weights file (`.safetensors`, `.bin`, `.pt`) for a plain architecture name, or
            an open_clip pretrained tag (downloaded or read from the open_clip cache).
        allow_random_init: Allow a randomly initialised model when no weights are given. Only for tests.

    Raises:
        ValueError: Unknown architecture; no weights and `allow_random_init=False`; a weights file that does not
            fit the architecture (missing or unexpected keys, wrong shapes).
        FileNotFoundError: `pretrained` is neither a file nor a known tag, or a `local-dir:` folder has no weights.
    """
    import open_clip

    pretrained = os.fspath(pretrained) if pretrained is not None else None
    checkpoint = None
    if model_name.startswith("hf-hub:"):
        # open_clip loads Hub checkpoints with strict=True and, with require_pretrained, fails when it cannot.
        model = open_clip.create_model(model_name, require_pretrained=True)
        return model, open_clip.get_tokenizer(model_name)
    if model_name.startswith("local-dir:"):
        folder = model_name[len("local-dir:") :]
        found = [
            os.path.join(folder, name) for name in _LOCAL_DIR_WEIGHTS if os.path.isfile(os.path.join(folder, name))
        ]
        if found:
            checkpoint = found[0]
        elif not allow_random_init:
            raise FileNotFoundError(
                f"no weights file in {folder!r} (looked for {', '.join(_LOCAL_DIR_WEIGHTS)}); open_clip would "
                "initialise the model randomly. Put the weights there or pass allow_random_init=True (tests only)."
            )
    else:
        if open_clip.get_model_config(model_name) is None:
            raise ValueError(
                f"unknown open_clip model {model_name!r}; use one of open_clip.list_models(), register a config with "
                "open_clip.add_model_config(path_to_json), or pass model_name='local-dir:/path/to/folder'."
            )
        if pretrained is None:
            if not allow_random_init:
                raise ValueError(
                    f"no weights for open_clip model {model_name!r}: pass pretrained='/path/to/weights' (or a built "
                    "model=), a random CLIP gives a meaningless reward. allow_random_init=True is for tests only."
                )
        elif os.path.isfile(pretrained):
            checkpoint = pretrained
        elif open_clip.is_pretrained_cfg(model_name, pretrained):
            model = open_clip.create_model(model_name, pretrained=pretrained, require_pretrained=True)
            return model, open_clip.get_tokenizer(model_name)
        else:
            raise FileNotFoundError(
                f"pretrained={pretrained!r} is neither a file nor an open_clip tag of {model_name!r} "
                f"(tags: {open_clip.list_pretrained_tags_by_model(model_name)})."
            )

    with quiet_open_clip():
        model = open_clip.create_model(model_name, load_weights=False)
    if checkpoint is not None:
        _load_weights_strict(model, checkpoint, model_name)
    return model, open_clip.get_tokenizer(model_name)


def _load_weights_strict(model: torch.nn.Module, checkpoint: str, model_name: str) -> None:
    """Loads a weights file into `model`, turning every mismatch into one clear error."""
    import open_clip
    from open_clip.factory import load_state_dict

    hint = f"weights file {checkpoint!r} does not fit open_clip model {model_name!r}"
    try:
        raw = load_state_dict(checkpoint)
    except Exception as error:
        raise ValueError(f"could not read CLIP weights {checkpoint!r}: {type(error).__name__}: {error}") from error
    # open_clip silently interpolates position embeddings of another resolution; for a reward that is a
    # different model, so such files are refused.
    expected = model.state_dict()
    for key in ("visual.positional_embedding", "positional_embedding"):
        if key in raw and key in expected and tuple(raw[key].shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{hint}: {key} has shape {tuple(raw[key].shape)} in the file and {tuple(expected[key].shape)} in the "
                "model (another image size or context length)."
            )
    try:
        incompatible = open_clip.load_checkpoint(model, checkpoint, strict=False)
    except RuntimeError as error:  # size mismatches raise even with strict=False
        raise ValueError(f"{hint}: {error}") from error
    missing = list(getattr(incompatible, "missing_keys", []))
    unexpected = list(getattr(incompatible, "unexpected_keys", []))
    if missing or unexpected:
        raise ValueError(
            f"{hint}: {len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected keys {unexpected[:5]}. "
            "Check that model_name names the architecture the weights were trained with."
        )


def _default_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


class CLIPRewardBase(Reward):
    """Shared CLIP machinery: loading, device/dtype, batched image and text encoding, normalisation.

    Subclasses implement :meth:`raw_scores` (un-normalised scores); :meth:`score` applies the normaliser. See
    [`CLIPAlignmentReward`] for the arguments.
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | os.PathLike | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        normalizer: RewardNormalizer | None = None,
        batch_size: int = 64,
        allow_random_init: bool = False,
    ):
        if model is None:
            if model_name is None:
                raise ValueError("give model_name (plus pretrained weights) or an already built model=.")
            model, built_tokenizer = load_open_clip(model_name, pretrained, allow_random_init=allow_random_init)
            tokenizer = tokenizer if tokenizer is not None else built_tokenizer
        elif pretrained is not None:
            raise ValueError("pretrained is only used to build a model from model_name; the given model= has weights.")
        if tokenizer is None:
            if model_name is None:
                raise ValueError("a built model= needs its tokenizer=, or model_name to look the tokenizer up.")
            import open_clip

            tokenizer = open_clip.get_tokenizer(model_name)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if normalizer is not None and not isinstance(normalizer, RewardNormalizer):
            raise ValueError(f"normalizer must be a RewardNormalizer or None, got {type(normalizer).__name__}.")
        self.model_name = model_name
        self.model = model
        self.tokenizer = tokenizer
        self.normalizer = normalizer
        self.batch_size = batch_size
        self._dtype = dtype
        self.to(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

    # ------------------------------------------------------------------------------------------- model plumbing
    def to(self, device: torch.device | str) -> "CLIPRewardBase":
        self.device = torch.device(device)
        self.dtype = self._dtype if self._dtype is not None else _default_dtype(self.device)
        # The CLIP model is a frozen scorer: eval mode, no grads, half precision on GPUs.
        self.model = self.model.to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def context_length(self) -> int:
        length = getattr(self.tokenizer, "context_length", None) or getattr(self.model, "context_length", None)
        if not length:
            raise ValueError("cannot tell the CLIP text context length; give a tokenizer with .context_length.")
        return int(length)

    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(self.model)
        mean = cfg.get("mean") or open_clip.OPENAI_DATASET_MEAN
        std = cfg.get("std") or open_clip.OPENAI_DATASET_STD
        shape = (1, 3, 1, 1)
        return torch.tensor(mean, device=self.device).view(shape), torch.tensor(std, device=self.device).view(shape)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """`FloatTensor (N, 3, H, W)` in [0, 1] -> model input: shortest side resized (bicubic, antialiased) to the
        model's image size, centre crop, normalised with the model's mean/std (what open_clip's transform does)."""
        pixels = pixels.to(self.device, torch.float32)
        height, width = pixels.shape[-2:]
        target_h, target_w = self.image_size
        scale = max(target_h / height, target_w / width)
        size = (max(target_h, round(height * scale)), max(target_w, round(width * scale)))
        if size != (height, width):
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        top, left = (size[0] - target_h) // 2, (size[1] - target_w) // 2
        pixels = pixels[..., top : top + target_h, left : left + target_w].clamp(0.0, 1.0)
        mean, std = self._mean_std()
        return (pixels - mean) / std

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings `(N, D)` (float32) of images `(N, 3, H, W)` in [0, 1], in batches."""
        embeddings = []
        for chunk in pixels.split(self.batch_size):
            features = self.model.encode_image(self.preprocess(chunk).to(self.dtype))
            embeddings.append(F.normalize(features.float(), dim=-1))
        return torch.cat(embeddings) if embeddings else torch.empty(0, 0, device=self.device)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings `(N, D)` (float32); the tokenizer truncates texts over the context length."""
        embeddings = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
            embeddings.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        return torch.cat(embeddings) if embeddings else torch.empty(0, 0, device=self.device)

    # ---------------------------------------------------------------------------------------------------- scoring
    def raw_scores(self, states: RewardStates) -> list[float | None]:
        """Un-normalised scores (what calibration fits the normaliser on)."""
        raise NotImplementedError

    def score(self, states: RewardStates) -> list[float | None]:
        raw = self.raw_scores(states)
        return raw if self.normalizer is None else self.normalizer(raw)

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict() if self.normalizer is not None else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        unexpected = set(state_dict) - {"normalizer"}
        if unexpected:
            raise ValueError(f"reward {self.name!r} got unexpected state_dict keys {sorted(unexpected)}.")
        normalizer_state = state_dict.get("normalizer")
        if normalizer_state is None:
            self.normalizer = None
            return
        if self.normalizer is None:
            self.normalizer = RewardNormalizer()
        self.normalizer.load_state_dict(normalizer_state)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, model_name={self.model_name!r}, device={str(self.device)!r}, "
            f"dtype={self.dtype}, normalizer={self.normalizer!r})"
        )


class CLIPAlignmentReward(CLIPRewardBase):
    """CLIP alignment between the partial reasoning text and the partial image: ParaRL's reward.

    The raw score is the cosine similarity of the CLIP embeddings of `states.texts[i]` and
    `states.image_tensors[i]`; with a `normalizer` it becomes `(clip((x - mean) / std, -c, c) + c) / (2c)` in [0, 1]
    (the paper's normalisation; fit it with [`calibrate_normalizer`]).

    Args:
        model_name (`str`, *optional*): open_clip architecture (or `"local-dir:/path"`), see [`load_open_clip`].
        pretrained (`str`, *optional*): Local weights file for `model_name` (or an open_clip tag). A file that does
            not fit the architecture is an error, never a silent random init.
        model (`torch.nn.Module`, *optional*): An already built open_clip model (instead of `model_name`). It is
            moved to `device`/`dtype` in place, put in eval mode and frozen.
        tokenizer (*optional*): Its open_clip tokenizer; looked up from `model_name` when not given.
        device (`str` or `torch.device`, *optional*): Defaults to CUDA when available, else CPU.
        dtype (`torch.dtype`, *optional*): Defaults to bfloat16 on GPUs that support it, float16 on other GPUs,
            float32 on the CPU.
        normalizer ([`RewardNormalizer`], *optional*): Maps raw scores to [0, 1]; `None` returns raw cosines.
        long_text (`str`, defaults to `"truncate"`): What to do with text over CLIP's context length:
            - `"truncate"`: the tokenizer keeps the first tokens (the reasoning's beginning), as CLIP always does;
            - `"chunks"`: split the text into sentences (on `"."`), pack consecutive sentences into chunks that fit
              the context, score every chunk against the image and average the chunk scores of each state (a
              single sentence over the context is truncated). All chunks of the batch are encoded together.
        batch_size (`int`, defaults to `64`): Images or texts per CLIP forward.
        allow_random_init (`bool`, defaults to `False`): Allow `model_name` without weights (tests only).

    Empty partial texts (no text token revealed yet) are scored like any other text (CLIP's empty prompt).
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | os.PathLike | None = None,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        normalizer: RewardNormalizer | None = None,
        long_text: str = "truncate",
        batch_size: int = 64,
        allow_random_init: bool = False,
    ):
        if long_text not in ("truncate", "chunks"):
            raise ValueError(f'long_text must be "truncate" or "chunks", got {long_text!r}.')
        super().__init__(
            model_name=model_name,
            pretrained=pretrained,
            model=model,
            tokenizer=tokenizer,
            device=device,
            dtype=dtype,
            normalizer=normalizer,
            batch_size=batch_size,
            allow_random_init=allow_random_init,
        )
        self.long_text = long_text

    def raw_scores(self, states: RewardStates) -> list[float | None]:
        image_embeds = self.encode_images(states.image_tensors)
        if self.long_text == "truncate":
            text_embeds = self.encode_texts(states.texts)
            return (image_embeds * text_embeds).sum(-1).tolist()
        chunks, owner = [], []
        for i, text in enumerate(states.texts):
            for chunk in self.split_text(text):
                chunks.append(chunk)
                owner.append(i)
        owner = torch.tensor(owner, device=self.device)
        cosines = (image_embeds[owner] * self.encode_texts(chunks)).sum(-1)
        totals = torch.zeros(len(states), device=self.device).index_add_(0, owner, cosines)
        counts = torch.zeros(len(states), device=self.device).index_add_(0, owner, torch.ones_like(cosines))
        return (totals / counts).tolist()

    def split_text(self, text: str) -> list[str]:
        """Sentence chunks of `text` that each fit the context (`"chunks"` mode); one chunk when it already fits."""
        budget = self.context_length - 2  # start and end tokens
        sentences = [piece.strip() for piece in re.findall(r"[^.]*(?:\.|$)", text)]
        sentences = [sentence for sentence in sentences if sentence]
        if not sentences:
            return [text.strip()]
        lengths = [self._num_tokens(sentence) for sentence in sentences]
        chunks, current, used = [], [], 0
        for sentence, length in zip(sentences, lengths):
            if current and used + length > budget:
                chunks.append(" ".join(current))
                current, used = [], 0
            current.append(sentence)
            used += length
        chunks.append(" ".join(current))
        return chunks

    def _num_tokens(self, text: str) -> int:
        if hasattr(self.tokenizer, "encode"):  # open_clip's SimpleTokenizer: BPE ids without start/end
            return len(self.tokenizer.encode(text))
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer wraps a HF tokenizer
        if inner is not None:
            return len(inner(text, add_special_tokens=False)["input_ids"])
        return len(text.split())


class CLIPImageConsistencyReward(CLIPRewardBase):
    """For edits: CLIP image-image cosine between the input image and the partial output image.

    `None` for states without an input image (generation prompts). Input images are encoded once per distinct
    image object of the batch (a prompt's image is shared by its rollouts and steps). Takes the same arguments as
    [`CLIPAlignmentReward`] except `long_text`; pass `model=other_reward.model, tokenizer=other_reward.tokenizer` to
    share one CLIP model between rewards.
    """

    def raw_scores(self, states: RewardStates) -> list[float | None]:
        rows = [i for i, image in enumerate(states.input_images) if image is not None]
        scores: list[float | None] = [None] * len(states)
        if not rows:
            return scores
        distinct: dict[int, int] = {}
        inputs = []
        for i in rows:
            key = id(states.input_images[i])
            if key not in distinct:
                distinct[key] = len(inputs)
                # Input images may differ in size from each other and from outputs: resize each with torch.
                inputs.append(self.preprocess(images_to_tensor([states.input_images[i]])))
        input_embeds = self._encode_preprocessed(torch.cat(inputs))
        index = torch.tensor([distinct[id(states.input_images[i])] for i in rows], device=self.device)
        output_embeds = self.encode_images(states.image_tensors[rows])
        cosines = (input_embeds[index] * output_embeds).sum(-1).tolist()
        for i, value in zip(rows, cosines):
            scores[i] = value
        return scores

    @torch.inference_mode()
    def _encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        embeddings = [
            F.normalize(self.model.encode_image(chunk.to(self.dtype)).float(), dim=-1)
            for chunk in pixels.split(self.batch_size)
        ]
        return torch.cat(embeddings)
