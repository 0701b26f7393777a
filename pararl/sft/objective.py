r"""The parallel-synthesis SFT objective: masked-token cross-entropy with modality-specific weights.

Only the output part of a sequence (`<soi> image <eoi> <bos> text`) is noised. Each sample draws one mask ratio
`t ~ U(min_mask_ratio, 1)`, shared by both output modalities (MMaDA-Parallel, Fig. 3: "the same ratio p_mask");
every maskable output slot is then masked independently with probability `t`, and at least one slot per modality is
masked so that both modalities get a gradient from every sample. The loss is the cross-entropy at the masked slots,

$$
\mathcal{L} = \frac{1}{N_\text{text} + N_\text{image}} \sum_{b} \sum_{i \,\in\, \text{masked}(b)}
    w_{m(i)}(t_b) \, \big(-\log p_\theta(x_0^i \mid x_{t_b})\big),
$$

with `w_text(t) = 1/t` and `w_image(t) = 1` by default (the paper's best setting; each is `"inverse_t"` or
`"constant"`), and `N_text`, `N_image` the numbers of *maskable* text and image slots in the batch.

Why this normalisation. With `w = 1/t` on every token it is the standard unbiased estimator of the masked-diffusion
ELBO per token (LLaDA, MDLM): `E_t[1/t * sum over masked] = sum over all slots`. The denominator counts maskable
slots, not masked ones: a count of masked slots would make the estimator biased (it correlates with `t`) and would
undo the `1/t` weighting. Because every output part of a preset has the same layout, `N_text + N_image` is
`batch_size * slots_per_sample`, so the normaliser is proportional to the batch size: averaging micro-batches or
ranks gives exactly the loss of the whole batch, with no cross-rank token counting. (The released MMaDA-Parallel-M
code instead sums a per-modality text term, divided by the sequence length, and a per-modality image mean.) The
logged `loss/text` and `loss/image` divide each modality's sum by its own slot count, so
`loss = (N_text * loss_text + N_image * loss_image) / (N_text + N_image)`.

Each slot is scored under its own modality's distribution, the one the rollout samples from: text slots over
`text_vocab_range` with the mask column excluded, image slots over `image_vocab_range`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F


__all__ = [
    "LOSS_WEIGHTS",
    "ParallelSFTLossOutput",
    "loss_weight",
    "masked_token_nll",
    "parallel_sft_loss",
    "sample_mask_ratio",
    "sample_output_mask",
]

LOSS_WEIGHTS = ("inverse_t", "constant")


class ParallelSFTLossOutput(NamedTuple):
    """Result of [`parallel_sft_loss`].

    Attributes:
        loss (`torch.Tensor`, 0-dim): The training loss (normalised by all maskable slots).
        text_loss (`torch.Tensor`, 0-dim): Weighted text cross-entropy sum / number of maskable text slots.
        image_loss (`torch.Tensor`, 0-dim): Weighted image cross-entropy sum / number of maskable image slots.
    """

    loss: torch.Tensor
    text_loss: torch.Tensor
    image_loss: torch.Tensor


def sample_mask_ratio(
    batch_size: int,
    min_mask_ratio: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draws one mask ratio per sample, `t ~ U(min_mask_ratio, 1)`: `FloatTensor (batch_size,)`.

    The floor keeps `1/t` bounded (at most `1 / min_mask_ratio`).
    """
    if not 0.0 < min_mask_ratio <= 1.0:
        raise ValueError(f"min_mask_ratio must be in (0, 1], got {min_mask_ratio}.")
    u = torch.rand(batch_size, generator=generator, device=device)
    return min_mask_ratio + (1.0 - min_mask_ratio) * u


def sample_output_mask(
    t: torch.Tensor,
    image_slots: torch.Tensor,
    text_slots: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks each maskable output slot with its sample's probability `t`, at least one slot per modality.

    Args:
        t (`torch.Tensor` of shape `(B,)`): Mask ratio per sample.
        image_slots (`torch.BoolTensor` of shape `(L_out,)`): True at image slots of the output part.
        text_slots (`torch.BoolTensor` of shape `(L_out,)`): True at text slots of the output part.
        generator (`torch.Generator`, *optional*): Random source (on `t`'s device).

    Returns:
        `torch.BoolTensor` of shape `(B, L_out)`: True where the slot is masked. Sentinels (and the input part,
        which is not even passed here) are never masked.
    """
    batch_size, length = t.shape[0], image_slots.shape[0]
    if (image_slots & text_slots).any():
        raise ValueError("image_slots and text_slots overlap; a slot belongs to one modality.")
    maskable = image_slots | text_slots
    u = torch.rand(batch_size, length, generator=generator, device=t.device)
    masked = (u < t[:, None]) & maskable
    # A sample whose draw masked nothing of a modality gets one uniformly chosen slot of it masked: fresh uniform
    # scores restricted to that modality's slots make argmax a uniform pick.
    for slots in (image_slots, text_slots):
        if not slots.any():
            continue
        empty = ~(masked & slots).any(dim=1)
        scores = torch.rand(batch_size, length, generator=generator, device=t.device).masked_fill(~slots, -1.0)
        pick = F.one_hot(scores.argmax(dim=1), length).bool()
        masked |= pick & empty[:, None]
    return masked


def loss_weight(t: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample token weight: `1/t` for `"inverse_t"`, `1` for `"constant"`."""
    if kind == "inverse_t":
        return 1.0 / t
    if kind == "constant":
        return torch.ones_like(t)
    raise ValueError(f"loss weight must be one of {list(LOSS_WEIGHTS)}, got {kind!r}.")


def masked_token_nll(
    logits: torch.Tensor,
    targets: torch.Tensor,
    is_image: torch.Tensor,
    text_vocab_range: tuple[int, int],
    image_vocab_range: tuple[int, int],
    mask_token_id: int | None = None,
) -> torch.Tensor:
    """Cross-entropy of each target under its modality's own distribution, in float32.

    Args:
        logits (`torch.Tensor` of shape `(B, K, V)`): Full-vocabulary logits at `K` output slots per sample.
        targets (`torch.LongTensor` of shape `(B, K)`): Full-vocabulary target ids.
        is_image (`torch.BoolTensor` of shape `(B, K)`): True where the slot is an image slot.
        text_vocab_range (`tuple[int, int]`): Columns `[start, end)` of text tokens.
        image_vocab_range (`tuple[int, int]`): Columns `[start, end)` of image codes.
        mask_token_id (`int`, *optional*): Excluded from the text distribution (the sampler never emits it).

    Returns:
        `torch.FloatTensor` of shape `(B, K)`: `-log p(target)`.
    """
    nll = logits.new_zeros(targets.shape, dtype=torch.float32)
    for selected, (start, end), excluded in (
        (~is_image, text_vocab_range, mask_token_id),
        (is_image, image_vocab_range, None),
    ):
        if not selected.any():
            continue
        # Slice the columns first (a view), then gather the rows: only (rows, end - start) values are copied.
        scores = logits[..., start:end][selected].float()
        if excluded is not None and start <= excluded < end:
            column = torch.zeros(end - start, dtype=torch.bool, device=scores.device)
            column[excluded - start] = True
            scores = scores.masked_fill(column, float("-inf"))
        values = F.cross_entropy(scores, targets[selected] - start, reduction="none")
        nll = nll.masked_scatter(selected, values)
    return nll


def parallel_sft_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss_mask: torch.Tensor,
    is_image: torch.Tensor,
    t: torch.Tensor,
    *,
    num_text_tokens: int,
    num_image_tokens: int,
    text_vocab_range: tuple[int, int],
    image_vocab_range: tuple[int, int],
    mask_token_id: int | None = None,
    text_loss_weight: str = "inverse_t",
    image_loss_weight: str = "constant",
) -> ParallelSFTLossOutput:
    """The masked-token SFT loss (see the module docstring for the formula and its normalisation).

    Args:
        logits (`torch.Tensor` of shape `(B, K, V)`): Full-vocabulary logits at `K` scored output slots per sample.
        targets (`torch.LongTensor` of shape `(B, K)`): Clean target ids at those slots.
        loss_mask (`torch.BoolTensor` of shape `(B, K)`): True at masked slots (the only ones in the loss).
        is_image (`torch.BoolTensor` of shape `(B, K)`): True at image slots, False at text slots.
        t (`torch.Tensor` of shape `(B,)`): Mask ratio of each sample.
        num_text_tokens (`int`): Maskable text slots in the batch (masked or not): the text normaliser.
        num_image_tokens (`int`): Maskable image slots in the batch: the image normaliser.
        text_vocab_range, image_vocab_range, mask_token_id: See [`masked_token_nll`].
        text_loss_weight (`str`, defaults to `"inverse_t"`): `"inverse_t"` (weight `1/t`) or `"constant"` (1).
        image_loss_weight (`str`, defaults to `"constant"`): `"inverse_t"` or `"constant"`.

    Returns:
        [`ParallelSFTLossOutput`] with `loss`, `text_loss` and `image_loss`.
    """
    if num_text_tokens < 0 or num_image_tokens < 0 or num_text_tokens + num_image_tokens == 0:
        raise ValueError(
            f"num_text_tokens ({num_text_tokens}) and num_image_tokens ({num_image_tokens}) must be >= 0 and not "
            "both 0: they count the maskable output slots of the batch."
        )
    nll = masked_token_nll(logits, targets, is_image, text_vocab_range, image_vocab_range, mask_token_id)
    weights = torch.where(
        is_image,
        loss_weight(t, image_loss_weight).float()[:, None],
        loss_weight(t, text_loss_weight).float()[:, None],
    )
    weighted = nll * weights * loss_mask
    image_sum = (weighted * is_image).sum()
    text_sum = (weighted * ~is_image).sum()
    loss = (text_sum + image_sum) / (num_text_tokens + num_image_tokens)
    return ParallelSFTLossOutput(
        loss=loss,
        text_loss=text_sum / max(num_text_tokens, 1),
        image_loss=image_sum / max(num_image_tokens, 1),
    )
