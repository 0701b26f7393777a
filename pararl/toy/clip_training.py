"""How the toy world's tiny CLIP (:mod:`pararl.toy.clip`) is trained: its data, hard negatives, loop and metrics.

ParaRL's reward is the CLIP alignment between a *partial* reasoning and a *partial* image, so the tiny CLIP is
trained on what the reward will see, not only on finished outputs:

- positives: the target image of a task with its ground-truth reasoning (or, a quarter of the time, a caption of
  one to three of its objects);
- partial states: words of the text dropped at random (as if still masked; the reward drops mask tokens), and cells
  of the image replaced by mid-grey (unrevealed cells greyed out) or, with `grey_prob < 1`, by random codes;
- negatives: the other pairs of the batch (open_clip's `ClipLoss`; a pair whose text would also be true of another
  picture of the batch, through its distractor objects, is redrawn, so in-batch negatives are real negatives) plus,
  per pair, a *hard* negative image (the same scene edited so that one of the text's claims about it fails: the
  object recoloured, reshaped, moved or removed, or an object the text says is gone put back) and a hard negative
  text (one colour, shape or position word changed so that a claim fails), both checked with the evaluator's claim
  parser (:func:`pararl.toy.claims.reasoning_claims`); each adds a two-way softmax term. A share of the hard
  negative images are instead the picture itself with *junk*: stray colour cells in the background lanes or in the
  free cells of an occupied slot, so no valid scene. Without them a policy trained against the CLIP learns to paint
  junk;
- a curriculum: whole pairs first, the partial states phased in over the first 30% of the steps.
"""

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from .claims import Claim, claim_holds, reasoning_claims
from .clip import TOY_CLIP_NAME, codes_to_pixels, create_toy_clip, encode_images, encode_texts
from .palette import TOY_COLOURS, TOY_PALETTE
from .scenes import COL_WORDS, ROW_WORDS, SHAPE_CELLS, SHAPES, SLOT_NAMES, SLOT_STRIDE, ToyObject, scene_codes
from .tasks import ORIGINAL_CATEGORIES, generate_samples
from .texts import SHAPE_PLURALS, describe_scene, split_words


__all__ = [
    "ToyClipBatches",
    "ToyClipTrainingConfig",
    "add_junk",
    "break_object",
    "corrupt_codes",
    "heldout_metrics",
    "negative_objects",
    "negative_words",
    "train_toy_clip",
]


def _encode_tokens_trimmed(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens, normalize=True)` computed only up to the batch's longest text.

    The text tower is causal and pools at the end-of-text token, so the padding after it never reaches the pooled
    feature: cutting it off gives the same embeddings (a test checks this) for a fraction of the training cost.
    """
    length = int((tokens != 0).sum(dim=1).max())
    tokens = tokens[:, :length]
    x = model.token_embedding(tokens) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return F.normalize(x @ model.text_projection, dim=-1)


# ----------------------------------------------------------------------------------------------- hard negatives
def _objects_at(objects: Sequence[ToyObject]) -> dict[int, ToyObject]:
    return {o.slot: o for o in objects}


def _violates(claims: Sequence[Claim], objects: Sequence[ToyObject]) -> bool:
    return any(not claim_holds(c, objects) for c in claims)


def _all_hold(claims: Sequence[Claim], objects: Sequence[ToyObject]) -> bool:
    """A text with claims is true of a picture (a text without claims is true of none)."""
    return bool(claims) and all(claim_holds(c, objects) for c in claims)


def negative_objects(
    objects: Sequence[ToyObject], claims: Sequence[Claim], rng: random.Random, tries: int = 8
) -> list[ToyObject] | None:
    """The scene edited so that at least one claim fails (one object recoloured, reshaped, moved, removed or added).

    Returns None when no such edit was found (e.g. a text without claims).
    """
    if not claims:
        return None
    objects = list(objects)
    for _ in range(tries):
        claim = rng.choice(claims)
        at = _objects_at(objects)
        free = [s for s in range(len(SLOT_NAMES)) if s not in at]
        if claim.kind == "absent":
            # Put back an object the text says is gone: a free slot, or repaint an existing object.
            shape = claim.shape or rng.choice(SHAPES)
            if free and rng.random() < 0.7:
                edited = [*objects, ToyObject(shape, claim.colour, rng.choice(free))]
            elif objects:
                victim = rng.choice(objects)
                edited = [ToyObject(shape, claim.colour, o.slot) if o == victim else o for o in objects]
            else:
                continue
        else:
            targets = [o for o in objects if o.colour == claim.colour and o.shape == claim.shape]
            if not targets:
                continue
            victim = rng.choice(targets)
            op = rng.choice(("colour", "shape", "shape", "move", "move", "remove"))
            if op == "colour":
                new = ToyObject(victim.shape, rng.choice([c for c in TOY_COLOURS if c != victim.colour]), victim.slot)
            elif op == "shape":
                new = ToyObject(rng.choice([s for s in SHAPES if s != victim.shape]), victim.colour, victim.slot)
            elif op == "move" and free:
                new = ToyObject(victim.shape, victim.colour, rng.choice(free))
            else:
                new = None
            edited = [o for o in objects if o != victim] + ([new] if new is not None else [])
        edited.sort(key=lambda o: o.slot)
        if _violates(claims, edited):
            return edited
    return None


_SWAPS: dict[str, tuple[str, ...]] = {}
for _group in (TOY_COLOURS, SHAPES, tuple(SHAPE_PLURALS.values()), ROW_WORDS, COL_WORDS):
    for _word in _group:
        _SWAPS[_word] = tuple(w for w in _group if w != _word)


def negative_words(words: Sequence[str], objects: Sequence[ToyObject], rng: random.Random, tries: int = 8):
    """The text with one colour, shape or position word changed so that one of its claims fails on `objects`.

    Keeps the number of words (so a word-drop mask applies to both texts). Returns None when nothing was found.
    """
    candidates = [i for i, word in enumerate(words) if word in _SWAPS]
    if not candidates:
        return None
    for _ in range(tries):
        i = rng.choice(candidates)
        edited = list(words)
        edited[i] = rng.choice(_SWAPS[words[i]])
        claims = reasoning_claims(" ".join(edited))
        if claims and _violates(claims, objects):
            return edited
    return None


# ------------------------------------------------------------------------------------------------------ batches
@dataclass
class ToyClipTrainingConfig:
    """How the tiny CLIP is trained (the defaults build the shipped asset).

    Args:
        steps: Optimiser steps.
        batch_size: Positive pairs per step (plus one hard negative image and text each).
        learning_rate / weight_decay / warmup_steps: AdamW with linear warm-up and cosine decay to 0.
        num_train_samples: Size of the pool of train-split tasks the batches are drawn from.
        caption_prob: Share of texts that are captions of 1-3 objects of the target instead of the reasoning.
        partial_text_prob / partial_image_prob: Share of pairs made partial (words dropped / cells corrupted).
        max_drop: The drop / corruption rate of a partial pair is uniform in [0.1, max_drop].
        grey_prob: Share of corrupted images whose corrupted cells are grey (else random codes).
        junk_negative_prob: Share of hard negative images that are the picture plus 1-4 junk cells (see
            :func:`add_junk`) instead of a claim-breaking edit.
        broken_negative_prob: Share of hard negative images that are the picture with one object broken (see
            :func:`break_object`; a claim-breaking edit when every object is a dot).
        hard_negative_weight: Weight of the two hard-negative terms next to `ClipLoss`.
        freeze_token_embedding: Keep the (random) 49408-row token embedding fixed: the world uses ~130 BPE tokens,
            and updating the whole table with AdamW would cost more than the rest of the step.
        curriculum: Fraction of the steps over which the partial-state probabilities ramp up from 0 (clean pairs
            first: a model that cannot match whole pairs learns nothing from partial ones).
        seed: Seeds the initialisation, the pool and the batches.
    """

    steps: int = 8000
    batch_size: int = 64
    learning_rate: float = 3e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    num_train_samples: int = 20000
    caption_prob: float = 0.25
    partial_text_prob: float = 0.5
    partial_image_prob: float = 0.5
    max_drop: float = 0.7
    grey_prob: float = 1.0
    junk_negative_prob: float = 0.3
    broken_negative_prob: float = 0.2
    hard_negative_weight: float = 1.0
    freeze_token_embedding: bool = True
    curriculum: float = 0.3
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "ToyClipTrainingConfig":
        """A few-second configuration (for the rebuild script's `--quick` and tests)."""
        return cls(**{"steps": 20, "batch_size": 32, "num_train_samples": 256, "warmup_steps": 2, **overrides})


def corrupt_codes(grids: torch.Tensor, rate: float, grey: bool, generator: torch.Generator) -> torch.Tensor:
    """Partial pictures: cells of `(K, 8, 8)` grids replaced at `rate`, by -1 (grey) or by random codes (half
    background, half a random colour). The same cells get the same replacement in all K grids, so a picture and its
    hard negative stay different only where the edit is visible."""
    shape = grids.shape[-2:]
    hit = torch.rand(shape, generator=generator) < rate
    if grey:
        fill = torch.full(shape, -1, dtype=torch.long)
    else:
        colour = torch.randint(1, len(TOY_PALETTE), shape, generator=generator)
        fill = torch.where(torch.rand(shape, generator=generator) < 0.5, 0, colour)
    return torch.where(hit, fill, grids)


def add_junk(objects: Sequence[ToyObject], count: int, rng: random.Random) -> torch.Tensor:
    """The scene's code grid with `count` junk cells: random colours in cells no valid scene paints (the background
    lanes between slots, or the free cells of an occupied slot's 2x2 block), so the picture no longer parses."""
    grid = scene_codes(objects)
    rows, cols = grid.shape
    occupied = {o.slot for o in objects}
    free_in_slot = [
        (i, j)
        for i in range(rows)
        for j in range(cols)
        if i % SLOT_STRIDE != 2
        and j % SLOT_STRIDE != 2
        and grid[i, j] == 0
        and (i // SLOT_STRIDE) * 3 + j // SLOT_STRIDE in occupied
    ]
    lanes = [(i, j) for i in range(rows) for j in range(cols) if i % SLOT_STRIDE == 2 or j % SLOT_STRIDE == 2]
    for i, j in rng.sample(lanes + free_in_slot, count):
        grid[i, j] = rng.randrange(1, len(TOY_PALETTE))
    return grid


def break_object(objects: Sequence[ToyObject], rng: random.Random) -> torch.Tensor | None:
    """The scene's code grid with one object broken so that it is no shape of the world: one cell of a bar, pole or
    square painted another colour, or one cell of a square erased. None when every object is a dot.

    A policy's pictures fail like this far more often than with stray cells (half-drawn or two-coloured objects), so
    the tiny CLIP must rank them below the whole picture too.
    """
    victims = [o for o in objects if o.shape != "dot"]
    if not victims:
        return None
    grid = scene_codes(objects)
    victim = rng.choice(victims)
    top, left = SLOT_STRIDE * (victim.slot // 3), SLOT_STRIDE * (victim.slot % 3)
    d_row, d_col = rng.choice(SHAPE_CELLS[victim.shape])
    i, j = top + d_row, left + d_col
    if victim.shape == "square" and rng.random() < 0.5:
        grid[i, j] = 0
    else:
        grid[i, j] = rng.choice([code for code in range(1, len(TOY_PALETTE)) if code != grid[i, j]])
    return grid


def _join_kept(words: Sequence[str], keep: Sequence[bool]) -> str:
    return " ".join(word for word, kept in zip(words, keep) if kept)


class ToyClipBatches:
    """Draws training batches: texts and code grids, and per pair a hard negative text and code grid.

    Args:
        config ([`ToyClipTrainingConfig`]): Sizes, augmentation rates and the seed.
        split: Toy split the tasks come from.
    """

    def __init__(self, config: ToyClipTrainingConfig, split: str = "train"):
        self.config = config
        self.rng = random.Random(f"pararl-toy-clip:{config.seed}")
        self.generator = torch.Generator().manual_seed(config.seed)
        self.pool = [
            (split_words(s.reasoning), tuple(s.output_objects), reasoning_claims(s.reasoning))
            for s in generate_samples(split, config.num_train_samples, seed=config.seed, world=ORIGINAL_CATEGORIES)
        ]

    def _text(self, index: int) -> tuple[list[str], list[Claim]]:
        words, objects, claims = self.pool[index]
        if objects and self.rng.random() < self.config.caption_prob:
            subset = self.rng.sample(list(objects), self.rng.randint(1, min(3, len(objects))))
            caption = describe_scene(subset)
            return split_words(caption), reasoning_claims(caption)
        return words, claims

    def __next__(self) -> dict:
        return self.sample()

    def sample(self, partial_scale: float = 1.0) -> dict:
        """One batch; `partial_scale` multiplies the partial-state probabilities (the training curriculum)."""
        cfg, rng = self.config, self.rng
        texts, negative_texts, grids = [], [], []
        chosen: list[tuple[tuple[ToyObject, ...], list[Claim]]] = []
        for _ in range(cfg.batch_size):
            # In-batch negatives must be negatives: a text that is also true of another picture of the batch (its
            # objects happen to be there as distractors) would be a positive scored as a negative. Redraw such pairs.
            for _ in range(20):
                index = rng.randrange(len(self.pool))
                objects = self.pool[index][1]
                words, claims = self._text(index)
                if not any(
                    _all_hold(claims, other) or _all_hold(other_claims, objects) for other, other_claims in chosen
                ):
                    break
            chosen.append((objects, claims))
            negative_text = negative_words(words, objects, rng)
            if negative_text is None:  # another task's reasoning: an ordinary negative
                negative_text = self.pool[rng.randrange(len(self.pool))][0]
            negative_scene = negative_objects(objects, claims, rng)
            if negative_scene is None:  # another task's picture
                negative_scene = self.pool[rng.randrange(len(self.pool))][1]
            draw = rng.random()
            broken = break_object(objects, rng) if draw >= 1 - cfg.broken_negative_prob else None
            if broken is not None:
                negative_codes = broken
            elif draw < cfg.junk_negative_prob:
                negative_codes = add_junk(objects, rng.randint(1, 4), rng)
            else:
                negative_codes = scene_codes(negative_scene)

            keep, keep_negative = [True] * len(words), [True] * len(negative_text)
            if rng.random() < cfg.partial_text_prob * partial_scale:
                # The same words dropped from both texts (edits keep the length), as if still masked.
                rate = rng.uniform(0.1, cfg.max_drop)
                keep = [rng.random() >= rate for _ in words]
                same_length = len(negative_text) == len(words)
                keep_negative = keep if same_length else [rng.random() >= rate for _ in negative_text]
            texts.append(_join_kept(words, keep))
            negative_texts.append(_join_kept(negative_text, keep_negative))

            pair = torch.stack([scene_codes(objects), negative_codes])
            if rng.random() < cfg.partial_image_prob * partial_scale:
                pair = corrupt_codes(
                    pair, rng.uniform(0.1, cfg.max_drop), rng.random() < cfg.grey_prob, self.generator
                )
            grids.append(pair)
        grids = torch.stack(grids)
        return {"texts": texts, "negative_texts": negative_texts, "codes": grids[:, 0], "negative_codes": grids[:, 1]}

    def __iter__(self):
        return self


# ------------------------------------------------------------------------------------------------------- training
def _learning_rate(config: ToyClipTrainingConfig, step: int) -> float:
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_toy_clip(config: ToyClipTrainingConfig | None = None, log_every: int = 0) -> tuple[torch.nn.Module, dict]:
    """Trains the tiny CLIP from scratch on CPU; deterministic given `config.seed` (and the thread count).

    Returns:
        `(model, info)`: the model in eval mode, and `{"config", "train_seconds", "final_loss"}`.
    """
    import open_clip
    from open_clip.loss import ClipLoss

    config = config if config is not None else ToyClipTrainingConfig()
    torch.manual_seed(config.seed)
    model = create_toy_clip().train()
    if config.freeze_token_embedding:
        model.token_embedding.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(TOY_CLIP_NAME)
    batches = ToyClipBatches(config)
    # open_clip's recipe: no weight decay on gains, biases and the temperature.
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    no_decay = [p for n, p in trainable if p.ndim < 2 or "logit_scale" in n]
    decay = [p for n, p in trainable if not (p.ndim < 2 or "logit_scale" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.learning_rate,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    clip_loss = ClipLoss()
    start = time.perf_counter()
    running = None
    for step in range(config.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        batch = batches.sample(min(1.0, step / max(1.0, config.curriculum * config.steps)))
        size = len(batch["texts"])
        images = encode_images(model, codes_to_pixels(torch.cat([batch["codes"], batch["negative_codes"]])))
        texts = _encode_tokens_trimmed(model, tokenizer(batch["texts"] + batch["negative_texts"]))
        image, negative_image = images[:size], images[size:]
        text, negative_text = texts[:size], texts[size:]
        scale = model.logit_scale.exp()
        loss = clip_loss(image, text, scale)
        # Hard negatives: each text against its picture and the edited picture, each picture against its text and
        # the edited text (two-way softmax, same temperature).
        positive = (image * text).sum(-1)
        text_to_image = torch.stack([positive, (text * negative_image).sum(-1)], dim=1) * scale
        image_to_text = torch.stack([positive, (image * negative_text).sum(-1)], dim=1) * scale
        target = torch.zeros(size, dtype=torch.long)
        hard = 0.5 * (F.cross_entropy(text_to_image, target) + F.cross_entropy(image_to_text, target))
        loss = loss + config.hard_negative_weight * hard
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"step {step + 1}/{config.steps}  loss {running:.4f}  scale {scale.item():.1f}", flush=True)
    info = {"config": asdict(config), "train_seconds": time.perf_counter() - start, "final_loss": running}
    return model.eval(), info


# -------------------------------------------------------------------------------------------------------- metrics
@torch.inference_mode()
def heldout_metrics(
    model: torch.nn.Module,
    tokenizer,
    split: str = "test",
    num_samples: int = 512,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Retrieval on fixed samples of a split (deterministic in `seed`), drawn from the six-category world's streams
    the tiny CLIP was trained on (its texts cover the open-ended categories' too).

    - `image_to_text_top1`: within consecutive batches of `batch_size`, each target picture retrieves the reasoning
      with the highest cosine; correct when that reasoning is true of the picture (all its claims hold, see
      :func:`~pararl.toy.claims.reasoning_claims`): its own, or another one that its distractors happen to make
      true, which no picture encoder could tell apart. `image_to_text_exact_top1` only counts its own reasoning.
    - `partial_image_to_text_top1`: the first, with half the words dropped and a quarter of the cells grey.
    - `hard_negative_accuracy`: how often a reasoning scores its picture above the picture edited so that one of its
      claims fails (:func:`negative_objects`).
    - `matched_cosine` / `mismatched_cosine`: mean cosine of matching pairs and of the other pairs of each batch.
    """
    samples = generate_samples(split, num_samples, seed=seed, world=ORIGINAL_CATEGORIES)
    texts = [s.reasoning for s in samples]
    codes = torch.stack([scene_codes(s.output_objects) for s in samples])
    rng = random.Random(f"pararl-toy-clip-eval:{seed}")
    generator = torch.Generator().manual_seed(seed)
    partial_texts = [" ".join(w for w in split_words(t) if rng.random() >= 0.5) for t in texts]
    partial_codes = torch.stack([corrupt_codes(c[None], 0.25, True, generator)[0] for c in codes])

    def embed(text_list, grids):
        return encode_texts(model, tokenizer, text_list).float(), encode_images(model, codes_to_pixels(grids)).float()

    text_emb, image_emb = embed(texts, codes)
    partial_text_emb, partial_image_emb = embed(partial_texts, partial_codes)
    claims = [reasoning_claims(t) for t in texts]
    correct = exact = partial_correct = 0
    matched, mismatched = [], []
    for start in range(0, num_samples, batch_size):
        stop = min(start + batch_size, num_samples)
        sims = image_emb[start:stop] @ text_emb[start:stop].T
        best = [start + j for j in sims.argmax(dim=1).tolist()]
        exact += sum(texts[j] == texts[i] for i, j in enumerate(best, start))
        correct += sum(_all_hold(claims[j], samples[i].output_objects) for i, j in enumerate(best, start))
        sims_partial = partial_image_emb[start:stop] @ partial_text_emb[start:stop].T
        best = [start + j for j in sims_partial.argmax(dim=1).tolist()]
        partial_correct += sum(_all_hold(claims[j], samples[i].output_objects) for i, j in enumerate(best, start))
        eye = torch.eye(stop - start, dtype=torch.bool)
        matched.append(sims[eye])
        mismatched.append(sims[~eye])

    negatives, wins = [], 0
    for i, sample in enumerate(samples):
        edited = negative_objects(
            sample.output_objects, reasoning_claims(sample.reasoning), random.Random(f"{seed}:{i}")
        )
        if edited is not None:
            negatives.append((i, scene_codes(edited)))
    if negatives:
        negative_emb = encode_images(model, codes_to_pixels(torch.stack([c for _, c in negatives]))).float()
        index = torch.tensor([i for i, _ in negatives])
        wins = int(((text_emb[index] * image_emb[index]).sum(-1) > (text_emb[index] * negative_emb).sum(-1)).sum())
    return {
        "split": split,
        "num_samples": num_samples,
        "batch_size": batch_size,
        "seed": seed,
        "image_to_text_correct": int(correct),
        "image_to_text_top1": correct / num_samples,
        "image_to_text_exact_correct": int(exact),
        "image_to_text_exact_top1": exact / num_samples,
        "partial_image_to_text_correct": int(partial_correct),
        "partial_image_to_text_top1": partial_correct / num_samples,
        "hard_negative_wins": wins,
        "hard_negative_count": len(negatives),
        "hard_negative_accuracy": wins / max(1, len(negatives)),
        "matched_cosine": torch.cat(matched).mean().item(),
        "mismatched_cosine": torch.cat(mismatched).mean().item(),
    }
