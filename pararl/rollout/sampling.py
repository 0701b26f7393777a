"""Sampling primitives of the rollout: counter-based noise, the sampling distribution, Gumbel-max draws, confidence.

**Reproducible noise.** Every random number of a rollout is a pure function of `(row seed, step, stream, element)`:
a splitmix64 mix (int64 torch ops, on the `(B,)` row seeds) turns `(seed, step, stream)` into two 32-bit keys
`ka, kb`; with `c` the flat index of the element (a slot, or a `(slot, vocabulary column)` pair),
`bits = fmix32(fmix32(c * 0x9E3779B9 + ka) ^ kb)` (MurmurHash3's finaliser, int32 torch ops, all modulo 2**32),
and its low 23 bits `k` give the uniform number `(k + 0.5) / 2**23` in `(0, 1)`, exact in float32. There is no
generator state, so a sample's noise does not depend on the other rows of the batch, on the batch size, or on the
device (CPU and CUDA compute the same integers). Streams: :data:`TEXT_VALUES`, :data:`IMAGE_VALUES` (Gumbel noise of
the drawn values), :data:`TEXT_CONFIDENCE`, :data:`IMAGE_CONFIDENCE` (uniform confidence of random remasking). This
is a statistical hash, not a cryptographic one.

**Sampling distribution** (the one token log-probabilities refer to): guided logits (fp32), the excluded columns set
to `-inf`, divided by the temperature, then, with `top_k`, everything below the k-th largest value set to `-inf`;
log-softmax of that. Temperature 0 means greedy: the argmax is drawn, and the distribution used for confidence and
log-probabilities is the temperature-1 one (as LLaDA's samplers do), so it stays informative.
"""

import torch


__all__ = [
    "TEXT_VALUES",
    "IMAGE_VALUES",
    "TEXT_CONFIDENCE",
    "IMAGE_CONFIDENCE",
    "row_keys",
    "counter_uniform",
    "element_counters",
    "slot_counters",
    "default_seeds",
    "guide",
    "sampling_logits",
    "draw",
]

TEXT_VALUES, IMAGE_VALUES, TEXT_CONFIDENCE, IMAGE_CONFIDENCE = 0, 1, 2, 3

_INT64_MIN = -(1 << 63)


def _signed64(value: int) -> int:
    """Two's-complement int64 value of an unsigned 64-bit constant (torch has no uint64 arithmetic)."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >= 1 << 63 else value


def _signed32(value: int) -> int:
    value &= (1 << 32) - 1
    return value - (1 << 32) if value >= 1 << 31 else value


_GOLDEN64 = _signed64(0x9E3779B97F4A7C15)
_MIX64_A = _signed64(0xBF58476D1CE4E5B9)
_MIX64_B = _signed64(0x94D049BB133111EB)
_GOLDEN32 = _signed32(0x9E3779B9)
_FMIX32_A = _signed32(0x85EBCA6B)
_FMIX32_B = _signed32(0xC2B2AE35)


def _shr64(x: torch.Tensor, bits: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; mask off the copied sign bits to get splitmix's logical shift.
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    x = x + _GOLDEN64
    x = (x ^ _shr64(x, 30)) * _MIX64_A
    x = (x ^ _shr64(x, 27)) * _MIX64_B
    return x ^ _shr64(x, 31)


def _fmix32_(x: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser, in place on an int32 tensor (products wrap modulo 2**32 on CPU and CUDA).

    `>>` on int32 is arithmetic, so the shifted copy (in `scratch`, no allocation) is masked to a logical shift.
    """
    for shift, multiplier in ((16, _FMIX32_A), (13, _FMIX32_B), (16, None)):
        torch.bitwise_right_shift(x, shift, out=scratch)
        scratch &= (1 << (32 - shift)) - 1
        x ^= scratch
        if multiplier is not None:
            x *= multiplier
    return x


def _low32_as_int32(x: torch.Tensor) -> torch.Tensor:
    low = x & 0xFFFFFFFF
    return (low - ((low >> 31) << 32)).to(torch.int32)


def row_keys(seeds: torch.Tensor, step: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int32 keys per row, `(R,)` each, from int64 row seeds, a step and a stream id."""
    mixed = _splitmix64(_splitmix64(seeds) ^ (step * 16 + stream))
    return _low32_as_int32(mixed), _low32_as_int32(_shr64(mixed, 32))


def counter_uniform(
    seeds: torch.Tensor,
    step: int,
    stream: int,
    shape: tuple[int, ...] | None = None,
    counters: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform float32 noise in `(0, 1)`, a pure function of `(seed, step, stream, element)`.

    Args:
        seeds: `LongTensor (R,)` row seeds; the device of the result.
        step: Step index on the rollout axis.
        stream: One of the stream ids of this module, so different uses never share numbers.
        shape: Per-row shape: the result is `(R, *shape)` and element `i` (row-major flat index) of a row always gets
            the same number.
        counters: Instead of `shape`, scrambled element indices (see :func:`element_counters` and
            :func:`slot_counters`) with a leading dim of 1 or R; the result has their shape with R rows. This is how
            the decoder draws noise for a per-row subset of slots that still matches the full-shape numbers.
    """
    if counters is None:
        if shape is None:
            raise ValueError("counter_uniform needs a shape or counters.")
        counters = element_counters(shape, seeds.device).unsqueeze(0)
    key_a, key_b = row_keys(seeds, step, stream)
    view = (-1,) + (1,) * (counters.dim() - 1)
    # Everything below runs in place on one int32 buffer plus one scratch buffer: the hash runs over every
    # (slot, vocabulary column) of a step, so allocations and memory passes are what it costs.
    bits = counters + key_a.view(view)
    scratch = torch.empty_like(bits)
    _fmix32_(bits, scratch)
    bits ^= key_b.view(view)
    _fmix32_(bits, scratch)
    # The low 23 bits k as the significand of a float in [1, 2): 1 + k / 2**23; minus (1 - 2**-24) gives
    # (k + 0.5) / 2**23, exactly (Sterbenz), in (0, 1), without an int-to-float conversion pass.
    bits &= 0x7FFFFF
    bits |= 0x3F800000
    return bits.view(torch.float32).sub_(1.0 - 2.0**-24)


def element_counters(shape: tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """Scrambled flat element indices (`int32`, `index * golden` modulo 2**32) of a tensor of `shape`."""
    numel = 1
    for size in shape:
        numel *= size
    if numel >= 1 << 31:
        raise ValueError(f"noise tensors of {numel} elements per row are not supported (limit 2**31); shape {shape}.")
    return (torch.arange(numel, dtype=torch.int32, device=device) * _GOLDEN32).view(shape)


def slot_counters(slots: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """Scrambled element indices of the rows `slots` (`LongTensor (R, n)`) of a per-row `(K, width)` tensor.

    Returns `int32 (R, n, width)` (or `(R, n)` without `width`): the same numbers :func:`element_counters` gives at
    those slots, so noise drawn for a subset of slots equals the full-shape noise there.
    """
    if width is None:
        return slots.to(torch.int32) * _GOLDEN32
    base = (slots.to(torch.int32) * width) * _GOLDEN32  # products wrap modulo 2**32, as the full-shape ones do
    columns = element_counters((width,), slots.device)
    return base.unsqueeze(-1) + columns


def default_seeds(batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Row seeds drawn from torch's (CPU) RNG: `LongTensor (batch_size,)` in `[0, 2**62)`."""
    return torch.randint(0, 1 << 62, (batch_size,), generator=generator, dtype=torch.long)


def guide(logits: torch.Tensor, batch_size: int, scale: float) -> torch.Tensor:
    """Classifier-free guidance on stacked `[cond; uncond]` rows: `cond + scale * (cond - uncond)` (fp32)."""
    cond = logits[:batch_size].float()
    if scale == 0:
        return cond
    return torch.lerp(logits[batch_size:].float(), cond, 1.0 + scale)


def sampling_logits(
    logits: torch.Tensor, temperature: float, top_k: int | None = None, exclude_column: int | None = None
) -> torch.Tensor:
    """The sampling distribution's logits in fp32 (may write into `logits` when it is already fp32).

    `exclude_column` (e.g. the text mask token) is set to `-inf`; then division by the temperature (1 when greedy);
    then top-k filtering. `log_softmax` of the result is the sampling distribution.
    """
    logits = logits.float()
    if exclude_column is not None:
        logits[..., exclude_column] = float("-inf")
    if temperature > 0 and temperature != 1:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def draw(
    logits: torch.Tensor,
    temperature: float,
    seeds: torch.Tensor,
    step: int,
    stream: int,
    counters: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws one value per slot from `logits (R, n, V)` (output of :func:`sampling_logits`) by Gumbel-max.

    `counters` (`int32`, broadcastable to `logits`, see :func:`slot_counters`) names the noise elements; by default
    slot `j` of the tensor is element `(j, column)`. Returns `(indices (R, n), log_probs (R, n))`: the drawn column
    and its log-probability under the sampling distribution. Temperature 0 takes the argmax (first index on ties)
    and draws no noise.
    """
    log_probs = torch.log_softmax(logits, dim=-1)
    if temperature > 0:
        if counters is None:
            counters = element_counters(tuple(logits.shape[1:]), logits.device).unsqueeze(0)
        noise = counter_uniform(seeds, step, stream, counters=counters)
        # Gumbel-max: argmax(logits + g) with g = -log(-log u), computed in place as logits - log(-log u).
        noise = noise.log_().neg_().log_()
        indices = torch.sub(logits, noise, out=noise).argmax(dim=-1)
    else:
        indices = logits.argmax(dim=-1)
    return indices, log_probs.gather(-1, indices.unsqueeze(-1)).squeeze(-1)
