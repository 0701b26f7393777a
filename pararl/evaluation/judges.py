"""Judges: score generated outputs on ParaBench's six axes (0-100) behind one small interface.

A judge is a class with `judge(samples) -> list[Judgement]` and an `identity()` (what the cache keys on). Three ship:

- :class:`APIJudge`: any OpenAI-compatible chat-completions server (OpenAI's GPT-4.1 as in the paper, or a local
  vLLM server with an open VLM), images sent as data URLs, our rubric (overridable from template files), strict
  JSON replies; a reply that stays malformed is a *missing* judgement, counted in the report, never a 0.
- :class:`ToyJudge`: the toy world's exact evaluator (`pararl.toy.evaluate`), same numbers.
- :class:`CLIPJudge`: CLIPScore-style automatic scores from an open_clip model (no API needed).

`None` in `Judgement.scores` means "does not apply" (image consistency of a generation, or an axis a judge does not
measure); a missing judgement has every applicable axis `None` and `missing=True`.
"""

import base64
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..axes import AXES


__all__ = [
    "AXES",
    "AXIS_DESCRIPTIONS",
    "APIJudge",
    "CLIPJudge",
    "Judge",
    "Judgement",
    "Sample",
    "ToyJudge",
    "axes_for",
    "load_samples",
    "parse_reply",
]

AXIS_DESCRIPTIONS = {
    "text_quality": "Text quality: is the reasoning fluent, grammatical, coherent and free of repetition?",
    "text_alignment": "Text alignment: does the reasoning correctly work out what the instruction asks for?",
    "image_consistency": "Image consistency (edits only): does the output keep everything of the input image that "
    "the instruction does not ask to change?",
    "image_alignment": "Image alignment: does the output image do what the instruction asks?",
    "image_quality": "Image quality: is the output image well-formed, free of artefacts and visually coherent?",
    "output_alignment": "Output alignment: does the output image show what the reasoning says, whether or not the "
    "reasoning is right?",
}


def axes_for(task: str) -> tuple[str, ...]:
    """The axes that apply to a task: all six for edits, all but image consistency for generation."""
    return AXES if task == "edit" else tuple(a for a in AXES if a != "image_consistency")


# ---------------------------------------------------------------------------------------------------- samples
@dataclass
class Sample:
    """One generated output with what a judge needs (a line of `outputs.jsonl`, images opened)."""

    id: str
    prompt: str
    task: str
    category: str
    reasoning: str
    output_image: Image.Image
    input_image: Image.Image | None = None
    references: dict[str, Any] = field(default_factory=dict)
    image_codes: list | None = None
    paths: dict[str, str | None] = field(default_factory=dict)  # image paths relative to the run folder

    def content_hash(self) -> str:
        """Hash of everything a judge sees (not the id): equal content is judged once."""
        digest = hashlib.sha256()

        def add(value):
            if isinstance(value, Image.Image):
                digest.update(f"image:{value.mode}:{value.size}:".encode())
                digest.update(value.tobytes())
            else:
                digest.update(json.dumps(value, sort_keys=True, default=str).encode())
            digest.update(b"\0")

        for value in (self.prompt, self.task, self.reasoning, self.output_image, self.input_image, self.image_codes):
            add(value)
        for key in sorted(self.references):
            add(key)
            add(self.references[key])
        return digest.hexdigest()


def _open(folder: Path, relative: str | None, where: str) -> Image.Image | None:
    if relative is None:
        return None
    path = folder / relative
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as error:
        raise ValueError(f"{where}: cannot read image {path} ({type(error).__name__}: {error}).") from error


def load_samples(run_dir: str | os.PathLike, categories: Sequence[str] | None = None) -> list[Sample]:
    """The samples of a run folder written by :func:`~pararl.evaluation.generation.generate_outputs`."""
    from .generation import OUTPUTS_FILE, read_outputs

    folder = Path(run_dir)
    records = read_outputs(folder)
    if not records:
        raise ValueError(f"{folder} holds no {OUTPUTS_FILE}; run `python -m pararl.evaluation generate` first.")
    if categories is not None:
        known = sorted({r["category"] for r in records})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; the run has {known}.")
        records = [r for r in records if r["category"] in set(categories)]
    samples = []
    for record in records:
        where = f"{folder / OUTPUTS_FILE} id {record['id']!r}"
        references, paths = {}, {"output_image": record["output_image"], "input_image": record.get("input_image")}
        for key, value in record.get("references", {}).items():
            is_path = isinstance(value, str) and value.startswith("references/") and value.endswith(".png")
            references[key] = _open(folder, value, where) if is_path else value
            if is_path:
                paths[f"references.{key}"] = value
        samples.append(
            Sample(
                id=record["id"],
                prompt=record["prompt"],
                task=record["task"],
                category=record["category"],
                reasoning=record["reasoning"],
                output_image=_open(folder, record["output_image"], where),
                input_image=_open(folder, record.get("input_image"), where),
                references=references,
                image_codes=record.get("image_codes"),
                paths=paths,
            )
        )
    return samples


@dataclass
class Judgement:
    """A judge's verdict on one sample: `scores` (0-100, `None` = not applicable), a short `rationale`, and
    `missing` when no valid verdict could be had (`error` says why; `cacheable=False` for transport errors that
    cost nothing and are worth asking again)."""

    id: str
    scores: dict[str, float | None]
    rationale: str = ""
    missing: bool = False
    error: str | None = None
    cacheable: bool = True

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "scores": self.scores,
            "rationale": self.rationale,
            "missing": self.missing,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Judgement":
        return cls(
            data["id"], data["scores"], data.get("rationale", ""), data.get("missing", False), data.get("error")
        )


class Judge:
    """The judge interface: `judge(samples) -> list[Judgement]` (same order) and `identity()` for the cache."""

    name: str = "judge"

    def identity(self) -> dict[str, str | None]:
        """`{"judge", "model", "template"}`: a verdict is reused only when all three and the sample are equal."""
        raise NotImplementedError

    def judge(self, samples: Sequence[Sample]) -> list[Judgement]:
        raise NotImplementedError


def _file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _missing(sample: Sample, error: str, cacheable: bool = True) -> Judgement:
    return Judgement(sample.id, {a: None for a in AXES}, "", True, error, cacheable)


# ------------------------------------------------------------------------------------------------------ toy judge
class ToyJudge(Judge):
    """The toy world's exact evaluator (:func:`pararl.toy.scoring.evaluate_sample`, x100): the numbers of
    `python -m pararl.toy.evaluate`. Needs the toy references (`answer`, `reasoning`) and the output's code grid."""

    name = "toy"

    def identity(self) -> dict[str, str | None]:
        return {"judge": self.name, "model": "pararl.toy.evaluate", "template": None}

    def judge(self, samples: Sequence[Sample]) -> list[Judgement]:
        from pararl.toy.scoring import evaluate_sample

        verdicts = []
        for sample in samples:
            if "answer" not in sample.references or "reasoning" not in sample.references:
                raise ValueError(
                    f"sample {sample.id!r} has no toy references 'answer' and 'reasoning'; ToyJudge scores only the "
                    "toy world's benchmark (pararl.evaluation.export_toy_benchmark)."
                )
            if sample.image_codes is None:
                raise ValueError(f"sample {sample.id!r} has no image_codes; regenerate it with pararl.evaluation.")
            row = {"answer": sample.references["answer"], "reasoning": sample.references["reasoning"]}
            scores = evaluate_sample(sample.reasoning, sample.image_codes, row)
            verdicts.append(Judgement(sample.id, {a: None if v is None else 100.0 * v for a, v in scores.items()}))
        return verdicts


# ----------------------------------------------------------------------------------------------------- CLIP judge
class CLIPJudge(Judge):
    """CLIPScore-style automatic scores, `100 * max(cosine, 0)`, from an open_clip model.

    `image_alignment`: prompt vs output image; `output_alignment`: reasoning vs output image; `image_consistency`
    (edits): input vs output image. The other axes are not measured (`None`). Numbers are on CLIPScore's scale, not
    a judge's: compare runs with each other, not with GPT-4.1 scores.

    Args:
        model / tokenizer: A built open_clip model and its tokenizer (e.g. `pararl.toy.clip.load_toy_clip()`), or
        model_name / pretrained: an open_clip architecture and a local weights file (see
            :func:`pararl.rewards.clip.load_open_clip`). With a built model, `model_name` only names it.
        weights: The weights file of a built model, hashed into the cache identity (`pretrained` is hashed too), so
            that retrained weights are never served stale verdicts.
        device: Where to run (default: cuda when available).
        batch_size: Images or texts per forward.
    """

    name = "clip"

    def __init__(
        self, model=None, tokenizer=None, model_name=None, pretrained=None, weights=None, device=None, batch_size=64
    ):
        from pararl.rewards.clip import CLIPAlignmentReward

        self.model_name = model_name or type(model).__name__
        weights = pretrained if pretrained is not None else weights
        self.weights_digest = _file_digest(weights) if weights is not None and os.path.isfile(weights) else None
        self.encoder = CLIPAlignmentReward(
            model_name=model_name,
            pretrained=pretrained,
            model=model,
            tokenizer=tokenizer,
            device=device,
            batch_size=batch_size,
        )

    def identity(self) -> dict[str, str | None]:
        model = self.model_name if self.weights_digest is None else f"{self.model_name}@{self.weights_digest}"
        return {"judge": self.name, "model": model, "template": None}

    def judge(self, samples: Sequence[Sample]) -> list[Judgement]:
        import torch

        from pararl.image_tokenizers import images_to_tensor

        if not samples:
            return []
        encoder = self.encoder

        def embed(images):
            # Benchmark images may differ in size: each is resized to the model's input on its own, then batched.
            pixels = torch.cat([encoder.preprocess(images_to_tensor([image])) for image in images])
            with torch.inference_mode():
                chunks = [
                    encoder.model.encode_image(c.to(encoder.dtype)).float() for c in pixels.split(encoder.batch_size)
                ]
            return torch.nn.functional.normalize(torch.cat(chunks), dim=-1)

        outputs = embed([s.output_image for s in samples])
        prompts = encoder.encode_texts([s.prompt for s in samples])
        reasonings = encoder.encode_texts([s.reasoning for s in samples])
        edits = [i for i, s in enumerate(samples) if s.input_image is not None]
        consistency = {}
        if edits:
            inputs = embed([samples[i].input_image for i in edits])
            consistency = dict(zip(edits, (inputs * outputs[edits]).sum(-1).tolist()))

        def score(cosine: float) -> float:
            return 100.0 * max(cosine, 0.0)

        verdicts = []
        alignment = (prompts * outputs).sum(-1).tolist()
        agreement = (reasonings * outputs).sum(-1).tolist()
        for i, sample in enumerate(samples):
            scores = {a: None for a in AXES}
            scores["image_alignment"] = score(alignment[i])
            # An empty reasoning claims nothing: no agreement to measure (not a CLIP score of the empty string).
            scores["output_alignment"] = score(agreement[i]) if sample.reasoning.strip() else 0.0
            if sample.task == "edit" and i in consistency:
                scores["image_consistency"] = score(consistency[i])
            verdicts.append(Judgement(sample.id, scores))
        return verdicts


# ------------------------------------------------------------------------------------------------------ API judge
DEFAULT_SYSTEM = """You are a strict, consistent evaluator of thinking-aware image generation and editing.
A model received an instruction (and, for edits, an input image) and produced a reasoning text and an output image
at the same time. Score its outputs on each requested axis from 0 (fails completely) to 100 (flawless), judging each
axis on its own. Reply with one JSON object and nothing else."""

DEFAULT_TASK_TEMPLATE = """Task: {task}
Instruction: {prompt}
{images}
Reasoning written by the model:
\"\"\"{reasoning}\"\"\"

Score these axes (0-100 each):
{axes}

Reply with exactly this JSON object (numbers, no text around it):
{reply_format}"""

TEMPLATE_FILES = ("system.txt", "edit.txt", "generate.txt")
_FIELDS = ("task", "prompt", "category", "reasoning", "images", "axes", "reply_format")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(_FIELDS) + r")\}")


def _data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL)


def parse_reply(text: str | None, axes: Sequence[str]) -> tuple[dict[str, float], str]:
    """Strictly parses a judge reply `{"scores": {axis: 0-100, ...}, "rationale": "..."}` (a ```json fence around
    it is allowed). Raises `ValueError` saying what is wrong: not JSON, an axis missing or unknown, a score that is
    not a number in [0, 100], a rationale that is not a string."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty reply")
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        reply = json.loads(body)
    except json.JSONDecodeError as error:
        raise ValueError(f"reply is not JSON ({error.msg})") from error
    if not isinstance(reply, dict) or set(reply) != {"scores", "rationale"}:
        keys = sorted(reply) if isinstance(reply, dict) else type(reply).__name__
        raise ValueError(f"reply must be an object with exactly 'scores' and 'rationale', got {keys}")
    scores, rationale = reply["scores"], reply["rationale"]
    if not isinstance(rationale, str):
        raise ValueError("'rationale' must be a string")
    if not isinstance(scores, dict):
        raise ValueError("'scores' must be an object")
    missing = [a for a in axes if a not in scores]
    unknown = [a for a in scores if a not in axes]
    if missing or unknown:
        raise ValueError(f"scores: missing axes {missing}, unknown axes {unknown}")
    parsed = {}
    for axis in axes:
        value = scores[axis]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ValueError(f"score {axis}={value!r} is not a number in [0, 100]")
        parsed[axis] = float(value)
    return parsed, rationale.strip()


class APIJudge(Judge):
    """A VLM judge behind any OpenAI-compatible chat-completions endpoint.

    One request per sample scores all its axes (six for an edit, five for a generation): the system rubric plus the
    task template filled with the instruction and the reasoning, and the input image (edits) and output image as
    PNG data URLs. The reply must parse with :func:`parse_reply`; a malformed one is asked again up to
    `max_parse_attempts` times in all, then recorded as missing. Transport errors (429, 5xx, timeouts, refused
    connections) are retried by the openai client with exponential backoff (`max_retries`), honouring the server's
    `retry-after`; a sample that still fails is missing too, but not cached, so a rerun asks again. Before the first
    request, one `GET /models` without retries (at most 30 s) checks that the server answers and takes the key: a dead
    endpoint or a refused key makes every sample missing with that cause in seconds, instead of paying every
    sample's retries.

    Args:
        model: The judge model (e.g. `"gpt-4.1"`, or the model name a vLLM server serves).
        base_url: The endpoint (default: OpenAI's; a local vLLM server: `http://localhost:8000/v1`).
        api_key: Default: `$OPENAI_API_KEY`; `"EMPTY"` for a server without keys.
        template_dir: A folder with any of `system.txt`, `edit.txt`, `generate.txt` replacing the built-in rubric
            (placeholders: `{task}`, `{prompt}`, `{category}`, `{reasoning}`, `{images}`, `{axes}`,
            `{reply_format}`), e.g. to use the paper's published judge prompts.
        max_concurrency: Requests in flight at once.
        max_retries / timeout: The openai client's retries (with backoff) and per-request timeout in seconds.
        max_parse_attempts: Requests per sample when replies are malformed.
        temperature / max_tokens: Sampling settings of the judge.
        json_mode: Ask for `response_format={"type": "json_object"}` (OpenAI and vLLM support it).
    """

    name = "api"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        template_dir: str | os.PathLike | None = None,
        max_concurrency: int = 8,
        max_retries: int = 6,
        timeout: float = 120.0,
        max_parse_attempts: int = 2,
        temperature: float = 0.0,
        max_tokens: int = 512,
        json_mode: bool = False,
    ):
        try:
            import openai
        except ImportError as error:
            raise ImportError("APIJudge needs the openai client: pip install 'pararl[eval]'.") from error
        if max_concurrency < 1 or max_parse_attempts < 1 or max_retries < 0:
            raise ValueError("max_concurrency and max_parse_attempts must be >= 1 and max_retries >= 0.")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key is None:
            if base_url is None:
                raise ValueError(
                    "no API key: set OPENAI_API_KEY or pass --api_key (or a --base_url of a local server)."
                )
            api_key = "EMPTY"
        self.model = model
        self.base_url = base_url
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout)
        self.templates = self._read_templates(template_dir)
        self.max_concurrency = max_concurrency
        self.max_parse_attempts = max_parse_attempts
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.json_mode = json_mode
        self.timeout = timeout
        self._unreachable: str | None = None  # the cause, once the reachability check failed
        self._checked = False

    @staticmethod
    def _read_templates(template_dir) -> dict[str, str]:
        templates = {
            "system.txt": DEFAULT_SYSTEM,
            "edit.txt": DEFAULT_TASK_TEMPLATE,
            "generate.txt": DEFAULT_TASK_TEMPLATE,
        }
        if template_dir is None:
            return templates
        folder = Path(template_dir)
        if not folder.is_dir():
            raise ValueError(f"judge template folder {folder} does not exist.")
        found = [name for name in TEMPLATE_FILES if (folder / name).is_file()]
        if not found:
            raise ValueError(f"judge template folder {folder} holds none of {list(TEMPLATE_FILES)}.")
        for name in found:
            text = (folder / name).read_text()
            if name != "system.txt":
                unknown = sorted(set(re.findall(r"(?<!\{)\{([a-z_]+)\}(?!\})", text)) - set(_FIELDS))
                if unknown:
                    raise ValueError(
                        f"template {folder / name} has unknown placeholders {unknown}; use {list(_FIELDS)}."
                    )
            templates[name] = text
        return templates

    def identity(self) -> dict[str, str | None]:
        text = json.dumps([self.templates[name] for name in TEMPLATE_FILES])
        return {"judge": self.name, "model": self.model, "template": hashlib.sha256(text.encode()).hexdigest()[:16]}

    def messages(self, sample: Sample) -> list[dict]:
        """The chat messages for one sample."""
        axes = axes_for(sample.task)
        images = (
            "The first image is the input image; the second is the model's output image."
            if sample.task == "edit"
            else "The image is the model's output image."
        )
        fields = {
            "task": sample.task,
            "prompt": sample.prompt,
            "category": sample.category,
            "reasoning": sample.reasoning,
            "images": images,
            "axes": "\n".join(f"- {axis}: {AXIS_DESCRIPTIONS[axis]}" for axis in axes),
            "reply_format": json.dumps(
                {"scores": {axis: "<0-100>" for axis in axes}, "rationale": "<one or two sentences>"}
            ),
        }
        # Only our placeholders are filled: other braces (e.g. a JSON example in a user's template) stay as written.
        text = _PLACEHOLDER.sub(lambda match: fields[match.group(1)], self.templates[f"{sample.task}.txt"])
        content: list[dict] = [{"type": "text", "text": text}]
        if sample.task == "edit" and sample.input_image is not None:
            content.append({"type": "image_url", "image_url": {"url": _data_url(sample.input_image)}})
        content.append({"type": "image_url", "image_url": {"url": _data_url(sample.output_image)}})
        return [{"role": "system", "content": self.templates["system.txt"]}, {"role": "user", "content": content}]

    def _judge_one(self, sample: Sample) -> Judgement:
        import openai

        axes = axes_for(sample.task)
        messages = self.messages(sample)
        kwargs = {"response_format": {"type": "json_object"}} if self.json_mode else {}
        error = None
        for _ in range(self.max_parse_attempts):
            try:
                response = self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                    **kwargs,
                )
            except openai.OpenAIError as failure:  # retries already spent by the client
                return _missing(sample, f"request failed: {self._cause(failure)}", cacheable=False)
            try:
                text = response.choices[0].message.content
                scores, rationale = parse_reply(text, axes)
            except (ValueError, IndexError, AttributeError) as failure:
                error = f"malformed reply: {failure}"
                continue
            full = {axis: scores.get(axis) for axis in AXES}
            return Judgement(sample.id, full, rationale)
        return _missing(sample, error)

    def _cause(self, failure: Exception) -> str:
        return f"{type(failure).__name__}: {failure} (base_url {self.client.base_url})"

    def check_reachable(self) -> str | None:
        """One `GET /models` without retries: `None` when the server answers (any HTTP status but 401 / 403), else
        the cause. Checked once per judge."""
        import openai

        if not self._checked:
            self._checked = True
            client = self.client.with_options(max_retries=0, timeout=min(self.timeout, 30.0))
            try:
                client.models.list()
            except (openai.APIConnectionError, openai.AuthenticationError, openai.PermissionDeniedError) as failure:
                self._unreachable = self._cause(failure)
            except openai.APIStatusError:  # e.g. 404: a chat server without /models still answers
                pass
        return self._unreachable

    def judge(self, samples: Sequence[Sample]) -> list[Judgement]:
        if samples and self.check_reachable() is not None:
            error = f"not asked: the server failed the reachability check: {self._unreachable}"
            return [_missing(sample, error, cacheable=False) for sample in samples]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            return list(pool.map(self._judge_one, samples))
