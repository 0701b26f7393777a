"""Unified multimodal vocabulary and the thinking-aware sequence template.

One sequence = input part + output part, under full bidirectional attention:

- input part:  ``<task> [<soi> input-image-codes <eoi>] <bos> instruction <eos> [pad ...]``
- output part: ``<soi> output-image-codes <eoi> <bos> text-span``

The text span has a fixed length ``max_reasoning_tokens`` and holds the reasoning, ``<eos>``, then
``text_fill_token_id`` up to its end (MMaDA-Parallel-M fills with ``<eos>``). Every output sequence of a preset
therefore has the same length and the same layout, which keeps the rollout free of per-sample shapes. Image code
``c`` becomes token ``image_token_offset + c``; presets with ``image_row_end_token_id`` (MMaDA-Parallel-A) put that
token after every image row. Only image and text slots of the output part are ever masked.

The input part is right-padded to the batch maximum with ``pad_token_id`` and a 0 in ``attention_mask``, so every
output part starts at the same column. The model masks padded keys and derives positions from the mask, so the
padding changes nothing. Presets that reproduce a released layout (``pad_prompt_to_max``) instead fill the
instruction up to its budget with attended ``text_fill_token_id`` tokens, as the released code does.

Presets with ``prompt_templates`` (MMaDA-Parallel-A) instead write the instruction into a literal text template
(``<system>...</system><user>{prompt}</user>``), tokenised whole with the tokenizer's own special tokens, and splice the
input image span in before the template's last token; their output part may start with extra tokens
(``output_prefix_token_ids``), skip the text ``<bos>`` and end with fixed text (``output_suffix_text``). Both reproduce
the released inference code's sequences token for token.

Unconditional rows (classifier-free guidance and conditioning dropout) are built here and nowhere else:
``drop_prompt`` turns the instruction into ``unconditional_prompt`` (empty by default: ``<bos> <eos>``) and
``drop_image`` removes the whole ``<soi> codes <eoi>`` span of the input image. The rollout's guidance rows and the SFT dropout both call
:meth:`ParallelProcessor.encode_prompts` with these flags, so training and sampling agree on what "unconditional"
means.
"""

import importlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from .image_tokenizers import ImageTokenizer


__all__ = [
    "SequencePreset",
    "ParallelProcessor",
    "MMADA_PARALLEL_M",
    "MMADA_PARALLEL_A",
    "code_grid",
    "load_processor",
    "text_problem",
]

ImageInput = Image.Image | torch.Tensor | None


@dataclass(frozen=True)
class SequencePreset:
    """Token ids and budgets of one model family's sequence layout.

    Args:
        name (`str`): Preset name, e.g. `"toy"` or `"mmada-parallel-m"`.
        mask_token_id (`int`): The `[MASK]` token.
        image_token_offset (`int`): Image code `c` is token `image_token_offset + c`.
        codebook_size (`int`): Number of image codes.
        image_grid (`tuple[int, int]`): Code grid `(rows, cols)` of one image.
        soi_token_id / eoi_token_id (`int`): Start / end of an image span.
        bos_token_id / eos_token_id (`int`): Start / end of a text span.
        pad_token_id (`int`): Token used to right-pad input parts (never attended).
        text_fill_token_id (`int`): Fills the output text span after the reasoning's `<eos>`.
        task_token_ids (`dict[str, int]`): Task name (`"edit"`, `"generate"`) to its task token.
        max_prompt_tokens (`int`): Instruction budget in tokens (without `<bos>`/`<eos>`).
        max_reasoning_tokens (`int`): Length of the output text span (reasoning + `<eos>` + fill).
        image_row_end_token_id (`int` or `None`, defaults to `None`): Token after every image row, if the family
            uses one (MMaDA-Parallel-A's newline).
        pad_prompt_to_max (`bool`, defaults to `False`): Fill every instruction to `max_prompt_tokens + 1` text
            tokens with attended `text_fill_token_id` tokens, as the released MMaDA-Parallel-M code does.
        prompt_templates (`dict[str, str]`, defaults to `{}`): Task name to a text template containing `{prompt}`.
            When set, the input part is the tokenizer's encoding of the filled template (with its default special
            tokens, as the released MMaDA-Parallel-A code calls it), the input image span goes before its last token,
            and no task token or text `<bos>`/`<eos>` is added; `task_token_ids` may be empty.
        unconditional_prompt (`str`, defaults to `""`): The instruction of `drop_prompt` rows.
        output_prefix_token_ids (`tuple[int, ...]`, defaults to `()`): Fixed tokens before the output `<soi>`.
        output_text_bos (`bool`, defaults to `True`): Put `bos_token_id` between the output image and text spans.
        output_suffix_text (`str`, defaults to `""`): Fixed text after the output text span (tokenised without
            special tokens).
    """

    name: str
    mask_token_id: int
    image_token_offset: int
    codebook_size: int
    image_grid: tuple[int, int]
    soi_token_id: int
    eoi_token_id: int
    bos_token_id: int
    eos_token_id: int
    pad_token_id: int
    text_fill_token_id: int
    task_token_ids: dict[str, int] = field(default_factory=dict)
    max_prompt_tokens: int = 64
    max_reasoning_tokens: int = 64
    image_row_end_token_id: int | None = None
    pad_prompt_to_max: bool = False
    prompt_templates: dict[str, str] = field(default_factory=dict)
    unconditional_prompt: str = ""
    output_prefix_token_ids: tuple[int, ...] = ()
    output_text_bos: bool = True
    output_suffix_text: str = ""

    @property
    def tasks(self) -> tuple[str, ...]:
        """Task names this preset knows (template keys for template presets, else task-token keys)."""
        return tuple(sorted(self.prompt_templates or self.task_token_ids))

    @property
    def num_image_tokens(self) -> int:
        return self.image_grid[0] * self.image_grid[1]

    @property
    def text_vocab_range(self) -> tuple[int, int]:
        """Vocabulary columns that text slots are sampled from (the mask column is excluded by the sampler)."""
        return (0, self.image_token_offset)

    @property
    def image_vocab_range(self) -> tuple[int, int]:
        """Vocabulary columns of the image codebook."""
        return (self.image_token_offset, self.image_token_offset + self.codebook_size)

    @property
    def text_mask_column(self) -> int | None:
        """The mask token's column within `text_vocab_range` (the one column text slots never sample), or `None`."""
        return _column(self.mask_token_id, self.text_vocab_range)

    @property
    def image_mask_column(self) -> int | None:
        """The mask token's column within `image_vocab_range`, or `None` (released presets keep it out of the codebook)."""
        return _column(self.mask_token_id, self.image_vocab_range)

    def model_config_kwargs(self) -> dict[str, int]:
        """The vocabulary size and special token ids a model of this layout is built with, e.g. a fresh policy:
        `MaskedDiffusionConfig(d_model=128, n_layers=4, n_heads=4, **preset.model_config_kwargs())`."""
        return {
            "vocab_size": self.image_vocab_range[1],
            "mask_token_id": self.mask_token_id,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
        }

    @property
    def sentinel_token_ids(self) -> dict[str, int]:
        ids = {
            "mask_token_id": self.mask_token_id,
            "soi_token_id": self.soi_token_id,
            "eoi_token_id": self.eoi_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "text_fill_token_id": self.text_fill_token_id,
        }
        ids.update({f"task_token_ids[{task!r}]": token for task, token in self.task_token_ids.items()})
        if self.image_row_end_token_id is not None:
            ids["image_row_end_token_id"] = self.image_row_end_token_id
        ids.update({f"output_prefix_token_ids[{i}]": token for i, token in enumerate(self.output_prefix_token_ids)})
        return ids


# MMaDA-Parallel-M (MMaDA-8B-MixCoT + MAGVIT-v2): ids from the released prompting utilities; the instruction and
# the reasoning each get a 256-token text budget (BOS and EOS included), filled with EOS.
MMADA_PARALLEL_M = SequencePreset(
    name="mmada-parallel-m",
    mask_token_id=126336,
    image_token_offset=126349,
    codebook_size=8192,
    image_grid=(32, 32),
    soi_token_id=126084,
    eoi_token_id=126085,
    bos_token_id=126080,
    eos_token_id=126081,
    pad_token_id=126081,
    text_fill_token_id=126081,
    task_token_ids={"edit": 126095, "generate": 126088},
    max_prompt_tokens=254,
    max_reasoning_tokens=255,
    pad_prompt_to_max=True,
)

# MMaDA-Parallel-A (Lumina-DiMOO + aMUSEd VQ), as its released inference code lays sequences out:
#   input:  tokens("<system>{system prompt}</system><user>{instruction}</user>") with
#           "<BOI=126349> 32 x (32 image tokens, newline 126084) <EOI=126350>" spliced in before the last token;
#           the unconditional instruction is the literal "<uncondition>";
#   output: <answer-start 126354> <BOI> 32 x (32 image slots, newline) <EOI> 256 text slots tokens("</answer>").
# Image code c is token 126356 + c. The reasoning inside the fixed text span ends with LLaDA's <|endoftext|> (126081)
# and is filled with it: the released A code decodes all 256 slots with special tokens skipped and trains on
# unpadded text, so the end-of-reasoning token is pararl's choice (LLaDA's convention), not a released fact.
MMADA_PARALLEL_A_EDIT_SYSTEM_PROMPT = (
    "Generate an image applying the following editing instruction based on the original image."
)
MMADA_PARALLEL_A_GENERATE_SYSTEM_PROMPT = "Generate an image according to the text prompt."
MMADA_PARALLEL_A = SequencePreset(
    name="mmada-parallel-a",
    mask_token_id=126336,
    image_token_offset=126356,
    codebook_size=8192,
    image_grid=(32, 32),
    soi_token_id=126349,
    eoi_token_id=126350,
    bos_token_id=126080,
    eos_token_id=126081,
    pad_token_id=126339,
    text_fill_token_id=126081,
    task_token_ids={},
    max_prompt_tokens=512,
    max_reasoning_tokens=256,
    image_row_end_token_id=126084,
    prompt_templates={
        "edit": f"<system>{MMADA_PARALLEL_A_EDIT_SYSTEM_PROMPT}</system><user>{{prompt}}</user>",
        "generate": f"<system>{MMADA_PARALLEL_A_GENERATE_SYSTEM_PROMPT}</system><user>{{prompt}}</user>",
    },
    unconditional_prompt="<uncondition>",
    output_prefix_token_ids=(126354,),
    output_text_bos=False,
    output_suffix_text="</answer>",
)


def text_problem(value: Any, instruction: bool = False) -> str | None:
    """What makes `value` unusable as a text field (a prompt, a reasoning), or `None`: it must be a string (pararl
    uses no chat templates), and an `instruction` must hold more than whitespace. The one check of text fields, for
    the processor, the dataset check ([`~pararl.data_validation.check_dataset`]) and the trainers; the problem is
    phrased to follow the field's name (`"prompts[0]: must be a string, got list (...)"`)."""
    if instruction and isinstance(value, str) and not value.strip():
        return f"is empty{' (whitespace only)' if value else ''}; give an instruction"
    if value is None:
        return "missing (None); it must be a string"
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__} (pararl uses no chat templates: give the text itself)"
    return None


def code_grid(value: Any, preset: SequencePreset) -> torch.Tensor | str:
    """`value` (a `(rows, cols)` grid of `preset`'s image codes, or its flat form; a tensor, an array or nested lists)
    as a `(rows, cols)` LongTensor on its device, or the problem that makes it none: not integers, the wrong shape,
    codes outside the codebook. The one check of code grids, for the processor, the dataset check, the SFT collator and
    the trainer; the problem is phrased to follow the field's name (`"images[0] (a code grid) has shape ..."`)."""
    grid_shape = tuple(preset.image_grid)
    try:
        grid = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        return f"is not a grid of integer codes ({error})"
    if grid.dim() == 1 and grid.numel() == preset.num_image_tokens:
        grid = grid.reshape(grid_shape)
    if tuple(grid.shape) != grid_shape:
        return f"has shape {tuple(grid.shape)}, expected {grid_shape}"
    if grid.dtype.is_floating_point or grid.dtype.is_complex or grid.dtype == torch.bool:
        return f"must hold integer codes, got dtype {grid.dtype}"
    low, high = int(grid.min()), int(grid.max())
    if low < 0 or high >= preset.codebook_size:
        return f"has codes in [{low}, {high}], outside the codebook [0, {preset.codebook_size})"
    return grid.long()


class ParallelProcessor:
    """Builds input and output parts of thinking-aware sequences and decodes any output state.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]): Text tokenizer of the unified vocabulary.
        image_tokenizer ([`~pararl.image_tokenizers.ImageTokenizer`]): Image (VQ) tokenizer.
        preset ([`SequencePreset`]): Token ids and budgets.
        truncate_prompt (`bool`, defaults to `False`): Truncate instructions over the budget with a warning instead
            of raising.
        truncate_reasoning (`bool`, defaults to `False`): Same for reasoning texts given to `encode_outputs`.
    """

    def __init__(
        self,
        tokenizer,
        image_tokenizer: ImageTokenizer,
        preset: SequencePreset,
        truncate_prompt: bool = False,
        truncate_reasoning: bool = False,
    ):
        self.tokenizer = tokenizer
        self.image_tokenizer = image_tokenizer
        self.preset = preset
        self.truncate_prompt = truncate_prompt
        self.truncate_reasoning = truncate_reasoning
        self._check_compatible()
        # Instruction ids of unconditional (drop_prompt) rows; empty by default, i.e. `<bos> <eos>`.
        self._unconditional_ids = (
            tokenizer(preset.unconditional_prompt, add_special_tokens=False)["input_ids"]
            if preset.unconditional_prompt
            else []
        )

        rows, cols = preset.image_grid
        row_end = preset.image_row_end_token_id
        # Output layout: [prefix] <soi> image slots (+ row ends) <eoi> [<bos>] text span [suffix].
        image_span = []
        for _ in range(rows):
            image_span += [preset.mask_token_id] * cols + ([row_end] if row_end is not None else [])
        template = [*preset.output_prefix_token_ids, preset.soi_token_id, *image_span, preset.eoi_token_id]
        if preset.output_text_bos:
            template.append(preset.bos_token_id)
        text_start = len(template)
        template += [preset.mask_token_id] * preset.max_reasoning_tokens
        if preset.output_suffix_text:
            template += tokenizer(preset.output_suffix_text, add_special_tokens=False)["input_ids"]
        self._output_template = torch.tensor(template, dtype=torch.long)
        slot_is_mask = self._output_template == preset.mask_token_id
        self.text_positions = torch.arange(text_start, text_start + preset.max_reasoning_tokens)
        self.image_positions = torch.nonzero(slot_is_mask[:text_start]).squeeze(-1)
        self.maskable_mask = slot_is_mask
        self.output_length = len(template)
        # Boolean `(output_length,)` masks of the two modalities' slots (the trainers' per-modality bookkeeping).
        self.text_slot_mask = torch.zeros(self.output_length, dtype=torch.bool)
        self.text_slot_mask[self.text_positions] = True
        self.image_slot_mask = torch.zeros(self.output_length, dtype=torch.bool)
        self.image_slot_mask[self.image_positions] = True

    # ----------------------------------------------------------------------------------------------- validation
    def _check_compatible(self) -> None:
        preset, tokenizer = self.preset, self.tokenizer
        grid = tuple(self.image_tokenizer.grid_shape)
        if grid != tuple(preset.image_grid):
            raise ValueError(
                f"image tokenizer grid {grid} does not match preset {preset.name!r} image_grid {preset.image_grid}."
            )
        if self.image_tokenizer.codebook_size != preset.codebook_size:
            raise ValueError(
                f"image tokenizer codebook_size {self.image_tokenizer.codebook_size} does not match preset "
                f"{preset.name!r} codebook_size {preset.codebook_size}."
            )
        if preset.max_reasoning_tokens < 2:
            raise ValueError("preset max_reasoning_tokens must be >= 2 (room for one token and <eos>).")
        for task, template in preset.prompt_templates.items():
            if "{prompt}" not in template:
                raise ValueError(
                    f"preset prompt_templates[{task!r}] must contain '{{prompt}}' where the instruction goes."
                )
        if preset.prompt_templates and preset.pad_prompt_to_max:
            raise ValueError("preset pad_prompt_to_max only applies to presets without prompt_templates.")
        text_vocab = len(tokenizer)
        for field_name, token_id in preset.sentinel_token_ids.items():
            if not 0 <= token_id < text_vocab:
                raise ValueError(
                    f"tokenizer is missing the special token for {field_name} (id {token_id}); its vocabulary has "
                    f"{text_vocab} tokens. Use the tokenizer that belongs to preset {preset.name!r}."
                )
        for attr in ("bos_token_id", "eos_token_id", "mask_token_id"):
            tok_id = getattr(tokenizer, attr, None)
            if tok_id is not None and tok_id != getattr(preset, attr):
                raise ValueError(
                    f"tokenizer.{attr} is {tok_id} but preset {preset.name!r} uses {getattr(preset, attr)}; "
                    "the tokenizer and the preset must describe the same vocabulary."
                )

    def _image_codes(self, images: Sequence[ImageInput], field_name: str) -> list[torch.Tensor | None]:
        """Turns PIL images or code grids into validated (rows, cols) code grids, encoding PIL images in one batch."""
        codes: list[torch.Tensor | None] = [None] * len(images)
        pil_index = [i for i, image in enumerate(images) if isinstance(image, Image.Image)]
        if pil_index:
            encoded = self.image_tokenizer.encode([images[i] for i in pil_index])
            for i, grid in zip(pil_index, encoded):
                codes[i] = grid
        for i, image in enumerate(images):
            if image is None or isinstance(image, Image.Image):
                continue
            grid = code_grid(image, self.preset)
            if isinstance(grid, str):
                raise ValueError(f"{field_name}[{i}] (a code grid) {grid}.")
            codes[i] = grid
        return codes

    def _text_ids(self, texts: Sequence[str], budget: int, truncate: bool, field_name: str) -> list[list[int]]:
        ids = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        for i, row in enumerate(ids):
            if len(row) > budget:
                if not truncate:
                    raise ValueError(
                        f"{field_name}[{i}] has {len(row)} tokens, over the budget of {budget} of preset "
                        f"{self.preset.name!r}; shorten it or pass truncate_{field_name.split('[')[0]}=True."
                    )
                warnings.warn(f"{field_name}[{i}] truncated from {len(row)} to {budget} tokens.", stacklevel=3)
                ids[i] = row[:budget]
        return ids

    def _image_span(self, grid: torch.Tensor) -> list[int]:
        tokens = (grid + self.preset.image_token_offset).tolist()
        row_end = self.preset.image_row_end_token_id
        span = [self.preset.soi_token_id]
        for row in tokens:
            span += row + ([row_end] if row_end is not None else [])
        return span + [self.preset.eoi_token_id]

    # --------------------------------------------------------------------------------------------------- encode
    def encode_prompts(
        self,
        prompts: Sequence[str],
        images: Sequence[ImageInput] | None = None,
        tasks: Sequence[str | None] | None = None,
        drop_prompt: Sequence[bool] | None = None,
        drop_image: Sequence[bool] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Builds the input parts of a batch.

        Args:
            prompts: Instructions.
            images: Per row an input image (PIL), its code grid `(rows, cols)`, or `None` (generation).
            tasks: Per row `"edit"` or `"generate"`; defaults to `"edit"` where an image is given.
            drop_prompt: Per row, replace the instruction by the empty one (unconditional row).
            drop_image: Per row, leave out the input image span (unconditional row).

        Returns:
            `{"input_ids": LongTensor (B, L_in), "attention_mask": LongTensor (B, L_in)}`, right-padded.
        """
        batch = len(prompts)
        images = list(images) if images is not None else [None] * batch
        tasks = list(tasks) if tasks is not None else [None] * batch
        drop_prompt = list(drop_prompt) if drop_prompt is not None else [False] * batch
        drop_image = list(drop_image) if drop_image is not None else [False] * batch
        for name, values in (
            ("images", images),
            ("tasks", tasks),
            ("drop_prompt", drop_prompt),
            ("drop_image", drop_image),
        ):
            if len(values) != batch:
                raise ValueError(f"{name} has {len(values)} entries but there are {batch} prompts.")
        for i, prompt in enumerate(prompts):
            problem = text_problem(prompt)  # an empty instruction is allowed: it encodes as `<bos> <eos>`
            if problem:
                raise ValueError(f"prompts[{i}]: {problem}.")

        preset = self.preset
        codes = self._image_codes(images, "images")
        text_ids = self._text_ids(prompts, preset.max_prompt_tokens, self.truncate_prompt, "prompt")
        rows = []
        for i in range(batch):
            task = tasks[i] or ("edit" if codes[i] is not None else "generate")
            if task not in preset.tasks:
                raise ValueError(f"tasks[{i}] is {task!r}; preset {preset.name!r} knows {list(preset.tasks)}.")
            if preset.prompt_templates:
                # Released Lumina-DiMOO layout: the filled template, tokenised whole, image before its last token.
                if drop_prompt[i]:
                    instruction_text = preset.unconditional_prompt
                elif len(text_ids[i]) < len(self.tokenizer(prompts[i], add_special_tokens=False)["input_ids"]):
                    instruction_text = self.tokenizer.decode(text_ids[i])
                else:
                    instruction_text = prompts[i]
                row = self.tokenizer(preset.prompt_templates[task].replace("{prompt}", instruction_text))["input_ids"]
                if codes[i] is not None and not drop_image[i]:
                    row = row[:-1] + self._image_span(codes[i]) + row[-1:]
                rows.append(row)
                continue
            row = [preset.task_token_ids[task]]
            if codes[i] is not None and not drop_image[i]:
                row += self._image_span(codes[i])
            instruction = self._unconditional_ids if drop_prompt[i] else text_ids[i]
            row += [preset.bos_token_id, *instruction, preset.eos_token_id]
            if preset.pad_prompt_to_max:
                row += [preset.text_fill_token_id] * (preset.max_prompt_tokens - len(instruction))
            rows.append(row)

        length = max(len(row) for row in rows)
        input_ids = torch.full((batch, length), preset.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, : len(row)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def encode_outputs(self, reasoning: Sequence[str], images: Sequence[ImageInput]) -> torch.Tensor:
        """Builds target output parts (for SFT and tests): `LongTensor (B, L_out)`."""
        if len(reasoning) != len(images):
            raise ValueError(f"reasoning has {len(reasoning)} entries but images has {len(images)}.")
        for i, image in enumerate(images):
            if image is None:
                raise ValueError(f"output images[{i}] is missing; every output part needs an image.")
        preset = self.preset
        codes = self._image_codes(images, "output images")
        text_ids = self._text_ids(reasoning, preset.max_reasoning_tokens - 1, self.truncate_reasoning, "reasoning")
        outputs = self.masked_outputs(len(reasoning))
        grids = torch.stack(codes).view(len(codes), -1)
        outputs[:, self.image_positions] = grids + preset.image_token_offset
        text = torch.full((len(reasoning), preset.max_reasoning_tokens), preset.text_fill_token_id, dtype=torch.long)
        for i, row in enumerate(text_ids):
            text[i, : len(row) + 1] = torch.tensor([*row, preset.eos_token_id], dtype=torch.long)
        outputs[:, self.text_positions] = text
        return outputs

    def masked_outputs(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The fully masked output part (sentinels fixed): the rollout's starting state."""
        return self._output_template.to(device).expand(batch_size, -1).clone()

    # --------------------------------------------------------------------------------------------------- decode
    def decode_text(self, output_ids: torch.Tensor) -> list[str]:
        """Decodes the text span of output states: masks dropped, cut at the first `<eos>`, specials skipped."""
        text = output_ids[:, self.text_positions.to(output_ids.device)].tolist()
        texts = []
        for row in text:
            row = [token for token in row if token != self.preset.mask_token_id]
            if self.preset.eos_token_id in row:
                row = row[: row.index(self.preset.eos_token_id)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return texts

    def image_codes(self, output_ids: torch.Tensor) -> torch.Tensor:
        """Image code grids `(B, rows, cols)` of output states; -1 where a slot holds no image token (masked)."""
        tokens = output_ids[:, self.image_positions.to(output_ids.device)] - self.preset.image_token_offset
        valid = (tokens >= 0) & (tokens < self.preset.codebook_size)
        return torch.where(valid, tokens, -1).view(-1, *self.preset.image_grid)

    def decode_images(self, codes: torch.Tensor, grey_unknown: bool = True) -> torch.Tensor:
        """Decodes code grids `(B, rows, cols)` (-1 = unknown) to images `(B, 3, H, W)` in [0, 1].

        Unknown cells are decoded as code 0 and, with `grey_unknown`, painted mid-grey afterwards.
        """
        unknown = codes < 0
        pixels = self.image_tokenizer.decode(codes.clamp(min=0))
        if grey_unknown and unknown.any():
            height, width = pixels.shape[-2:]
            rows, cols = codes.shape[-2:]
            cell_mask = unknown.repeat_interleave(height // rows, dim=1).repeat_interleave(width // cols, dim=2)
            pixels = pixels.masked_fill(cell_mask.unsqueeze(1).to(pixels.device), 0.5)
        return pixels

    def concat(self, inputs: dict[str, torch.Tensor], output_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full sequences `input part + output part` with their attention mask (output slots always attended)."""
        input_ids, attention_mask = inputs["input_ids"], inputs["attention_mask"]
        ids = torch.cat([input_ids, output_ids.to(input_ids.device)], dim=1)
        mask = torch.cat([attention_mask, torch.ones_like(output_ids, device=attention_mask.device)], dim=1)
        return {"input_ids": ids, "attention_mask": mask}


def _column(token_id: int, vocab_range: tuple[int, int]) -> int | None:
    start, end = vocab_range
    return token_id - start if start <= token_id < end else None


def load_processor(spec: str) -> ParallelProcessor:
    """The processor built by `"module:function"` (e.g. `"pararl.toy:toy_processor"`), as the scripts' `--processor`
    names it: a processor is code plus a tokenizer folder, so scripts name the function that builds it."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"processor {spec!r} must have the form 'module:function', e.g. 'pararl.toy:toy_processor'.")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"processor {spec!r}: cannot import {name!r} from {module!r} ({error}).") from error
    processor = factory()
    if not isinstance(processor, ParallelProcessor):
        raise ValueError(f"processor {spec!r} returned a {type(processor).__name__}, not a ParallelProcessor.")
    return processor
