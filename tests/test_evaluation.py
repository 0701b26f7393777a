"""pararl.evaluation: benchmark loading, resumable generation, the toy / CLIP judges, reports, gallery and CLI.

The API judge against a loopback chat-completions server is in tests/test_evaluation_api.py.
"""

import dataclasses
import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pararl.evaluation import (
    AXES,
    BenchmarkRow,
    ColumnMap,
    Judgement,
    Sample,
    ToyJudge,
    compare_runs,
    export_toy_benchmark,
    generate_outputs,
    load_benchmark,
    load_samples,
    read_outputs,
    summarize,
    write_gallery,
)
from pararl.evaluation import generation as generation_module
from pararl.rollout import RolloutConfig


NUM_SAMPLES = 6  # the first six toy categories: five kinds of edit and one of generation


@pytest.fixture(scope="module")
def toy_benchmark(tmp_path_factory):
    return export_toy_benchmark(tmp_path_factory.mktemp("bench") / "toy.jsonl", NUM_SAMPLES, seed=1)


@pytest.fixture(scope="module")
def policy():
    from pararl.toy.policy import load_toy_policy

    return load_toy_policy()


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory, toy_benchmark, policy, processor):
    """The toy policy's outputs on the benchmark with the toy evaluation's own settings (16 steps, seed 0)."""
    folder = tmp_path_factory.mktemp("run")
    rows = load_benchmark(toy_benchmark)
    generate_outputs(policy, processor, rows, folder, RolloutConfig(num_steps=16), batch_size=4, progress=False)
    return folder


# ------------------------------------------------------------------------------------------------------ data
def test_toy_benchmark_round_trip(toy_benchmark):
    from pararl.toy import build_toy_dataset

    rows = load_benchmark(toy_benchmark)
    dataset = build_toy_dataset("test", NUM_SAMPLES, seed=1)
    assert [r.id for r in rows] == [f"test-{i:05d}" for i in range(NUM_SAMPLES)]
    assert [r.index for r in rows] == list(range(NUM_SAMPLES))
    for row, truth in zip(rows, dataset):
        assert (row.prompt, row.task, row.category) == (truth["prompt"], truth["task"], truth["category"])
        assert set(row.references) == {"reasoning", "output_image", "answer"}
        assert row.references["answer"] == truth["answer"]
        assert np.array_equal(
            np.asarray(row.references["output_image"]), np.asarray(truth["output_image"].convert("RGB"))
        )
        if truth["image"] is None:
            assert row.image is None and row.task == "generate"
        else:
            assert np.array_equal(np.asarray(row.image), np.asarray(truth["image"].convert("RGB")))
    assert {r.task for r in rows} == {"edit", "generate"}


def test_datasets_folder_with_column_mapping(tmp_path):
    import datasets

    image = Image.new("RGB", (8, 8), "red")
    features = datasets.Features(
        {
            "uid": datasets.Value("string"),
            "instruction": datasets.Value("string"),
            "source": datasets.Image(),
            "kind": datasets.Value("string"),
            "note": datasets.Value("string"),
        }
    )
    data = {
        "uid": ["a", "b"],
        "instruction": ["make it blue", "draw a cat"],
        "source": [image, None],
        "kind": ["colour", "animals"],
        "note": ["x", "y"],
    }
    datasets.Dataset.from_dict(data, features=features).save_to_disk(str(tmp_path / "bench"))
    columns = ColumnMap(id="uid", prompt="instruction", image="source", task=None, category="kind")
    rows = load_benchmark(tmp_path / "bench", columns)
    assert [(r.id, r.task, r.category, r.references) for r in rows] == [
        ("a", "edit", "colour", {"note": "x"}),
        ("b", "generate", "animals", {"note": "y"}),
    ]
    assert rows[0].image.size == (8, 8)
    # The default mapping names the missing column and the flag that fixes it.
    with pytest.raises(ValueError, match=r"no column 'id' for the field 'id'.*--id_column"):
        load_benchmark(tmp_path / "bench")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_benchmark_bad_input(tmp_path):
    good = {"id": "1", "prompt": "p", "task": "generate", "category": "c", "image": None}
    path = _write_jsonl(tmp_path / "b.jsonl", [{k: v for k, v in good.items() if k != "category"}])
    with pytest.raises(ValueError, match=r"no column 'category'.*--category_column"):
        load_benchmark(path)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    path = _write_jsonl(tmp_path / "b.jsonl", [{**good, "task": "edit", "image": "broken.png"}])
    with pytest.raises(ValueError, match=r"id '1'.*cannot read image .*broken.png"):
        load_benchmark(path)
    path = _write_jsonl(tmp_path / "b.jsonl", [{**good, "task": "edit", "image": "absent.png"}])
    with pytest.raises(ValueError, match=r"absent.png does not exist"):
        load_benchmark(path)
    path = _write_jsonl(tmp_path / "b.jsonl", [good, {**good, "id": "2", "category": "d"}])
    with pytest.raises(ValueError, match=r"unknown categories \['e'\]; the benchmark has \['c', 'd'\]"):
        load_benchmark(path, categories=["e"])
    assert [r.id for r in load_benchmark(path, categories=["d"])] == ["2"]
    with pytest.raises(ValueError, match="not unique"):
        load_benchmark(_write_jsonl(tmp_path / "b.jsonl", [good, good]))
    with pytest.raises(ValueError, match=r"task 'make' is not one of"):
        load_benchmark(_write_jsonl(tmp_path / "b.jsonl", [{**good, "task": "make"}]))
    with pytest.raises(ValueError, match="an edit needs an input image"):
        load_benchmark(_write_jsonl(tmp_path / "b.jsonl", [{**good, "task": "edit"}]))


# ------------------------------------------------------------------------------------------------ generation
def test_generation_resumes_after_a_kill(tmp_path, toy_benchmark, policy, processor, monkeypatch):
    rows = load_benchmark(toy_benchmark)
    config = RolloutConfig(num_steps=4)
    reference = tmp_path / "uninterrupted"
    generate_outputs(policy, processor, rows, reference, config, batch_size=4, progress=False)

    real_generate = generation_module.ParallelDecoder.generate
    prompts_seen = []

    def dying_generate(self, prompts, *args, **kwargs):
        if prompts_seen:  # the second batch: the process "dies" mid-run
            raise KeyboardInterrupt
        prompts_seen.extend(prompts)
        return real_generate(self, prompts, *args, **kwargs)

    folder = tmp_path / "killed"
    monkeypatch.setattr(generation_module.ParallelDecoder, "generate", dying_generate)
    with pytest.raises(KeyboardInterrupt):
        generate_outputs(policy, processor, rows, folder, config, batch_size=2, progress=False)
    assert [r["id"] for r in read_outputs(folder)] == [r.id for r in rows[:2]]
    # A kill in the middle of writing the next line leaves a truncated last line: tolerated and redone.
    with open(folder / "outputs.jsonl", "a") as f:
        f.write('{"id": "test-00002", "reason')
    assert len(read_outputs(folder)) == 2

    resumed = []

    def counting_generate(self, prompts, *args, **kwargs):
        resumed.extend(prompts)
        return real_generate(self, prompts, *args, **kwargs)

    monkeypatch.setattr(generation_module.ParallelDecoder, "generate", counting_generate)
    outputs = generate_outputs(policy, processor, rows, folder, config, batch_size=3, progress=False)
    assert resumed == [r.prompt for r in rows[2:]]  # finished ids are not decoded again
    assert [r["id"] for r in outputs] == [r.id for r in rows]
    # Row seeds do not depend on batching: the resumed run equals the uninterrupted one.
    expected = read_outputs(reference)
    assert [(o["reasoning"], o["image_codes"]) for o in outputs] == [
        (o["reasoning"], o["image_codes"]) for o in expected
    ]
    for output in outputs:
        assert (folder / output["output_image"]).is_file()
    # A rerun with other settings, or of a benchmark whose rows changed, is refused rather than mixed into the folder.
    with pytest.raises(ValueError, match="num_steps"):
        generate_outputs(policy, processor, rows, folder, RolloutConfig(num_steps=5), progress=False)
    changed = [dataclasses.replace(rows[0], prompt="draw a red dot .")]
    with pytest.raises(ValueError, match="holds id 'test-00000' for another prompt"):
        generate_outputs(policy, processor, changed, folder, config, progress=False)


# ---------------------------------------------------------------------------------------------------- judges
def test_toy_judge_equals_the_toy_evaluator(generated_run, policy, processor):
    from pararl.toy import build_toy_dataset
    from pararl.toy.evaluate import generate_predictions
    from pararl.toy.scoring import evaluate

    samples = load_samples(generated_run)
    judgements = ToyJudge().judge(samples)
    dataset = build_toy_dataset("test", NUM_SAMPLES, seed=1)
    # What `python -m pararl.toy.evaluate --split test --num_samples 6 --dataset_seed 1 --steps 16` computes.
    truth = evaluate(generate_predictions(policy, processor, dataset, RolloutConfig(num_steps=16), seed=0), dataset)
    for judgement, expected in zip(judgements, truth["samples"]):
        for axis in AXES:
            if expected[axis] is None:
                assert judgement.scores[axis] is None
            else:
                assert judgement.scores[axis] == pytest.approx(100.0 * expected[axis], abs=1e-9)
    result = summarize(samples, judgements, num_bootstrap=0)
    for axis in AXES:
        assert result["overall"]["axes"][axis]["mean"] == pytest.approx(truth["axes"][axis], abs=1e-4)
    assert result["overall"]["overall"]["mean"] == pytest.approx(truth["overall"], abs=1e-4)
    for category, table in truth["categories"].items():
        assert result["categories"][category]["overall"]["mean"] == pytest.approx(table["overall"], abs=1e-4)


def _sample(sample_id, task="edit", category="c", reasoning="a red dot", output=None, source=None):
    output = output or Image.new("RGB", (32, 32), "red")
    source = source if task == "edit" else None
    if task == "edit" and source is None:
        source = Image.new("RGB", (32, 32), "blue")
    return Sample(sample_id, f"prompt {sample_id}", task, category, reasoning, output, source)


def test_clip_judge_with_the_toy_clip():
    from pararl.evaluation import CLIPJudge
    from pararl.toy import generate_samples, render_scene
    from pararl.toy.clip import load_toy_clip

    model, tokenizer = load_toy_clip()
    judge = CLIPJudge(model=model, tokenizer=tokenizer, device="cpu")
    toy = [s for s in generate_samples("test", 12, seed=3) if s.input_objects is not None][:4]
    truths = [
        Sample(
            f"t{i}",
            s.prompt,
            "edit",
            s.category,
            s.reasoning,
            render_scene(s.output_objects),
            render_scene(s.input_objects),
        )
        for i, s in enumerate(toy)
    ]
    # The same samples with each reasoning paired to another sample's picture.
    swapped = [
        Sample(t.id, t.prompt, "edit", t.category, t.reasoning, truths[(i + 1) % 4].output_image, t.input_image)
        for i, t in enumerate(truths)
    ]
    right, wrong = judge.judge(truths), judge.judge(swapped)
    right_mean = sum(j.scores["output_alignment"] for j in right) / 4
    wrong_mean = sum(j.scores["output_alignment"] for j in wrong) / 4
    assert right_mean > wrong_mean
    # An edit that returns its input unchanged is perfectly consistent; a generation has no consistency.
    unchanged = Sample("u", "p", "edit", "c", "r", truths[0].input_image, truths[0].input_image)
    generation = Sample("g", "p", "generate", "c", "r", truths[0].output_image)
    same, gen = judge.judge([unchanged, generation])
    assert same.scores["image_consistency"] == pytest.approx(100.0, abs=1e-3)
    assert gen.scores["image_consistency"] is None
    assert gen.scores["text_quality"] is None  # not measured by CLIP
    for judgement in right + wrong:
        assert 0.0 <= judgement.scores["image_alignment"] <= 100.0
    # The cache identity names the weights by content: retrained weights never get stale verdicts.
    from pararl.toy.clip import TOY_CLIP_DIR, WEIGHTS_FILE

    named = CLIPJudge(
        model=model, tokenizer=tokenizer, model_name="toy", weights=TOY_CLIP_DIR / WEIGHTS_FILE, device="cpu"
    )
    assert named.identity()["model"].startswith("toy@") and judge.identity()["model"] != named.identity()["model"]


# ---------------------------------------------------------------------------------------------------- report
def _judged(values: dict[str, tuple[str, str, float | None]]):
    """Samples and judgements from {id: (task, category, score on every axis or None = missing)}."""
    samples, judgements = [], []
    for sample_id, (task, category, score) in values.items():
        samples.append(_sample(sample_id, task, category))
        if score is None:
            judgements.append(Judgement(sample_id, dict.fromkeys(AXES), missing=True, error="malformed reply: x"))
        else:
            scores = {a: (None if a == "image_consistency" and task == "generate" else score) for a in AXES}
            judgements.append(Judgement(sample_id, scores, rationale=f"why {sample_id}"))
    return samples, judgements


def test_summary_means_missing_and_intervals():
    samples, judgements = _judged(
        {"a": ("edit", "x", 10.0), "b": ("edit", "x", 30.0), "c": ("generate", "y", 80.0), "d": ("edit", "x", None)}
    )
    result = summarize(samples, judgements, num_bootstrap=200)
    x = result["categories"]["x"]
    assert (x["num_samples"], x["missing"]) == (3, 1)
    assert x["axes"]["text_quality"] == {
        "mean": 20.0, "low": pytest.approx(10.0), "high": pytest.approx(30.0), "n": 2, "missing": 1
    }  # fmt: skip
    assert result["categories"]["y"]["axes"]["image_consistency"]["mean"] is None
    overall = result["overall"]
    assert overall["missing"] == 1
    assert overall["axes"]["text_quality"]["mean"] == pytest.approx(40.0)  # (10 + 30 + 80) / 3: the miss is no 0
    assert overall["axes"]["image_consistency"]["mean"] == pytest.approx(20.0)  # edits only
    assert overall["overall"]["mean"] == pytest.approx((5 * 40.0 + 20.0) / 6)
    for table in [overall, *result["tasks"].values(), *result["categories"].values()]:
        for entry in table["axes"].values():
            if entry["mean"] is not None:
                assert entry["low"] - 1e-9 <= entry["mean"] <= entry["high"] + 1e-9


def test_compare_runs_pairs_ids():
    before = _judged({"a": ("edit", "x", 10.0), "b": ("edit", "x", 30.0), "c": ("generate", "y", 50.0)})
    after = _judged({"a": ("edit", "x", 20.0), "b": ("edit", "x", 40.0), "z": ("generate", "y", 0.0)})
    result = compare_runs(*before, *after, num_bootstrap=100)
    assert (result["num_shared"], result["only_a"], result["only_b"]) == (2, 1, 1)
    entry = result["overall"]["text_quality"]
    assert (entry["a"], entry["b"], entry["delta"]) == (20.0, 30.0, 10.0)
    # Every pair improves by exactly 10: the paired interval has no width.
    assert entry["low"] == pytest.approx(10.0) and entry["high"] == pytest.approx(10.0)


class _Cards(HTMLParser):
    def __init__(self):
        super().__init__()
        self.cards, self.images, self.options = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "card" in attrs.get("class", "").split():
            self.cards.append(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "option":
            self.options.append(attrs["value"])


@pytest.mark.parametrize("embed", [False, True])
def test_gallery_cards_and_images(generated_run, embed):
    import base64
    import io

    samples = load_samples(generated_run)
    judgements = ToyJudge().judge(samples)
    judgements[0] = Judgement(samples[0].id, dict.fromkeys(AXES), missing=True, error="malformed reply: not JSON")
    path = write_gallery(
        samples, judgements, generated_run / "site" / "gallery.html", generated_run, embed_images=embed
    )
    parser = _Cards()
    parser.feed(path.read_text())
    assert [card["data-id"] for card in parser.cards] == [s.id for s in samples]
    assert {card["data-category"] for card in parser.cards} == {s.category for s in samples}
    assert parser.cards[0]["data-overall"] == "" and "missing" in parser.cards[0]["class"]
    assert float(parser.cards[1]["data-text_quality"]) == pytest.approx(judgements[1].scores["text_quality"], abs=1e-3)
    # input (edits), output and the toy's reference picture on every card
    assert len(parser.images) == sum(3 if s.task == "edit" else 2 for s in samples)
    for source in parser.images:
        if embed:
            assert source.startswith("data:image/png;base64,")
            Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))).verify()
        else:
            assert not source.startswith("/") and (path.parent / source).resolve().is_file()
    categories = sorted({s.category for s in samples})
    assert parser.options[: 1 + len(categories)] == ["", *categories]
    assert {"overall", *AXES} <= set(parser.options)
    assert "malformed reply: not JSON" in path.read_text()


# -------------------------------------------------------------------------------------------------------- CLI
def _make_adapter(folder: Path) -> Path:
    """A LoRA adapter of the toy policy after a few random-direction steps (its outputs differ from the base)."""
    from peft import LoraConfig, get_peft_model

    from pararl.models import ATTENTION_LORA_TARGETS
    from pararl.toy import toy_policy_path
    from pararl.toy.policy import load_toy_policy

    model = get_peft_model(
        load_toy_policy(), LoraConfig(r=4, lora_alpha=8, target_modules=list(ATTENTION_LORA_TARGETS))
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == toy_policy_path()
    return folder


def test_cli_runs_end_to_end_with_an_adapter(tmp_path, toy_benchmark, capsys):
    from pararl.evaluation.__main__ import main
    from pararl.evaluation.generation import load_policy
    from pararl.toy import toy_policy_path

    adapter = _make_adapter(tmp_path / "adapter")
    common = ["--benchmark", str(toy_benchmark), "--limit", "3", "--num_steps", "4", "--num_bootstrap", "50"]
    base_dir, lora_dir = tmp_path / "base", tmp_path / "lora"
    main(["run", *common, "--output_dir", str(base_dir), "--judge", "toy"])
    main(["run", *common, "--output_dir", str(lora_dir), "--judge", "toy", "--model_name_or_path", str(adapter)])
    main(["judge", "--output_dir", str(lora_dir), "--judge", "clip"])
    main(["report", "--output_dir", str(lora_dir), "--judge", "clip", "--num_bootstrap", "50"])
    main(["report", "--output_dir", str(lora_dir), "--judge", "toy", "--compare_to", str(base_dir)])
    out = capsys.readouterr().out
    for name in ("report-toy.md", "report-toy.json", "gallery-toy.html", "report-clip.md", "gallery-clip.html"):
        assert (lora_dir / name).is_file(), name
    assert "→" in (lora_dir / "report-toy.md").read_text() and (lora_dir / "comparison-toy.json").is_file()
    assert "judged 3 samples with toy: 3 asked, 0 from cache, 0 missing" in out
    run = json.loads((lora_dir / "run.json").read_text())
    assert run["adapter"] is None and run["model"] == str(adapter)
    # The adapter changes the policy: its outputs differ from the base's.
    base, lora = read_outputs(base_dir), read_outputs(lora_dir)
    assert [o["image_codes"] for o in base] != [o["image_codes"] for o in lora]
    # The adapter folder and base + --adapter load the same policy.
    a, b = load_policy(str(adapter)), load_policy(toy_policy_path(), adapter=str(adapter))
    ids = torch.arange(40).unsqueeze(0) % 30
    torch.testing.assert_close(a(input_ids=ids).logits, b(input_ids=ids).logits)
    # A rerun of the judge is served by the cache.
    main(["judge", "--output_dir", str(lora_dir), "--judge", "clip"])
    assert "0 asked, 3 from cache" in capsys.readouterr().out
    # More outputs than judgements: the report refuses rather than leave them out.
    main(["generate", *common[:2], "--limit", "4", "--num_steps", "4", "--output_dir", str(base_dir)])
    with pytest.raises(ValueError, match=r"1 outputs of .* have no toy judgement \(e.g. \['test-00003'\]\)"):
        main(["report", "--output_dir", str(base_dir), "--judge", "toy"])


def test_a_partial_judge_run_merges_into_the_judgements(generated_run, tmp_path, monkeypatch, capsys):
    import shutil

    from pararl.evaluation import cache
    from pararl.evaluation.__main__ import main

    run = shutil.copytree(generated_run, tmp_path / "run")
    main(["judge", "--output_dir", str(run), "--judge", "toy"])
    path = run / "judgements" / "toy.jsonl"
    full = path.read_text()
    assert len(full.splitlines()) == NUM_SAMPLES
    category = read_outputs(run)[0]["category"]
    main(["judge", "--output_dir", str(run), "--judge", "toy", "--categories", category])
    assert "judged 1 samples with toy: 0 asked, 1 from cache" in capsys.readouterr().out
    assert path.read_text() == full  # the other categories' verdicts are kept, in place
    assert sorted(p.name for p in path.parent.iterdir()) == ["toy.json", "toy.jsonl"]  # no temporary file left
    # A write that dies half-way leaves the old file whole.
    monkeypatch.setattr(cache.os, "replace", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        main(["judge", "--output_dir", str(run), "--judge", "toy", "--categories", category])
    assert path.read_text() == full and sorted(p.name for p in path.parent.iterdir()) == ["toy.json", "toy.jsonl"]


def test_cli_help_explains_every_flag(capsys):
    from pararl.evaluation.__main__ import _build_parser

    parser = _build_parser()
    for command in ("generate", "judge", "report", "run"):
        with pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        text = capsys.readouterr().out
        assert "--output_dir" in text
    subparsers = next(a for a in parser._actions if a.choices and "run" in a.choices).choices
    for action in subparsers["run"]._actions:
        assert action.help, action.option_strings
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--output_dir", "x", "--benchmark", "toy", "--judge", "gpt"])


def test_benchmark_row_ids_must_name_files(tmp_path):
    path = _write_jsonl(
        tmp_path / "b.jsonl", [{"id": "a/b", "prompt": "p", "task": "generate", "category": "c", "image": None}]
    )
    with pytest.raises(ValueError, match="may not contain '/'"):
        load_benchmark(path)
    assert BenchmarkRow("x", "p", "generate", "c").references == {}


def test_judging_bad_run_folders(generated_run, tmp_path):
    import shutil

    with pytest.raises(ValueError, match=r"no outputs.jsonl; run `python -m pararl.evaluation generate`"):
        load_samples(tmp_path)
    with pytest.raises(ValueError, match=r"unknown categories \['nope'\]; the run has \["):
        load_samples(generated_run, categories=["nope"])
    copy = shutil.copytree(generated_run, tmp_path / "run")
    first = read_outputs(copy)[0]
    (copy / first["output_image"]).write_bytes(b"truncated")
    with pytest.raises(ValueError, match=rf"id '{first['id']}': cannot read image .*{first['id']}.png"):
        load_samples(copy)
    sample = load_samples(generated_run)[0]
    sample.references = {}
    with pytest.raises(ValueError, match="no toy references 'answer' and 'reasoning'"):
        ToyJudge().judge([sample])
