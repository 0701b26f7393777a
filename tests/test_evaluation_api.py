"""APIJudge against a real chat-completions server on 127.0.0.1 (standard library, in a thread).

The server reads each request's text and images and answers from them; per prompt it can first inject 429s, a 500,
a reply slower than the client's timeout, or keep replying malformed JSON or out-of-range scores.
"""

import base64
import io
import json
import shutil
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from pararl.evaluation import AXES, APIJudge, JudgeCache, Sample, axes_for, cached_judge, parse_reply, summarize


pytest.importorskip("openai")


class ChatServer:
    """`plan[prompt]` lists what the next requests about `prompt` get: "429", "500", "slow", "malformed",
    "range" (a score of 150); then (and for prompts without a plan) a valid reply computed from the request."""

    def __init__(self):
        self.plan: dict[str, list[str]] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                reply = server.answer(self.path, body)
                if reply is None:  # the client gave up waiting and retried
                    return
                status, payload, headers = reply
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def answer(self, path, body):
        assert path == "/v1/chat/completions"
        user = body["messages"][1]["content"]
        text = next(part["text"] for part in user if part["type"] == "text")
        images = [part["image_url"]["url"] for part in user if part["type"] == "image_url"]
        prompt = next(line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("Instruction: "))
        with self.lock:
            self.requests.append({"prompt": prompt, "text": text, "images": len(images), "model": body["model"]})
            action = self.plan.get(prompt, []).pop(0) if self.plan.get(prompt) else "ok"
        if action == "429":
            return 429, {"error": {"message": "rate limited"}}, {"retry-after-ms": "5"}
        if action == "500":
            return 500, {"error": {"message": "boom"}}, {"retry-after-ms": "5"}
        if action == "slow":
            time.sleep(1.5)
            return None
        scores = self.scores(prompt, images, text)
        if action == "range":
            scores["text_quality"] = 150
        content = "this is not json" if action == "malformed" else json.dumps({"scores": scores, "rationale": "ok"})
        message = {"role": "assistant", "content": content}
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}, {}  # fmt: skip

    @staticmethod
    def scores(prompt: str, images: list[str], text: str) -> dict:
        """Scores that depend on the request: the prompt length and the red level of the last (output) image."""
        data = base64.b64decode(images[-1].split(",", 1)[1])
        red = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))[0]
        axes = [axis for axis in AXES if f"- {axis}:" in text]
        return {axis: (len(prompt) + red + i) % 101 for i, axis in enumerate(axes)}


@pytest.fixture
def server():
    chat = ChatServer()
    chat.thread.start()
    yield chat
    chat.httpd.shutdown()
    chat.httpd.server_close()


def _sample(name: str, task: str, red: int) -> Sample:
    source = Image.new("RGB", (16, 16), (0, 0, 255)) if task == "edit" else None
    return Sample(
        name, f"prompt {name}", task, "cat", f"reasoning {name}", Image.new("RGB", (16, 16), (red, 0, 0)), source
    )


def _judge(server, **kwargs) -> APIJudge:
    return APIJudge("judge-model", base_url=server.url, api_key="test", **{"timeout": 0.5, "max_retries": 3, **kwargs})


def test_retries_misses_and_cache(server, tmp_path):
    samples = [
        _sample("limited", "edit", 10),
        _sample("failing", "generate", 20),
        _sample("slow", "edit", 30),
        _sample("garbled", "edit", 40),
        _sample("outlier", "generate", 50),
        _sample("fine", "generate", 60),
    ]
    server.plan = {
        "prompt limited": ["429", "429"],
        "prompt failing": ["500"],
        "prompt slow": ["slow"],
        "prompt garbled": ["malformed"] * 5,
        "prompt outlier": ["range"] * 5,
    }
    cache = JudgeCache(tmp_path / "cache")
    judgements, counts = cached_judge(_judge(server, max_concurrency=3), samples, cache)
    asked = {}
    for request in server.requests:
        asked[request["prompt"]] = asked.get(request["prompt"], 0) + 1
    # 429s, a 500 and a timeout are retried by the client; malformed replies are asked again once (2 attempts).
    expected = {"limited": 3, "failing": 2, "slow": 2, "garbled": 2, "outlier": 2, "fine": 1}
    assert asked == {f"prompt {name}": count for name, count in expected.items()}
    for request in server.requests:
        assert request["images"] == (2 if "limited" in request["prompt"] or "slow" in request["prompt"]
                                     or "garbled" in request["prompt"] else 1)  # fmt: skip
        assert request["model"] == "judge-model"
    by_id = {j.id: j for j in judgements}
    for sample in samples:
        judgement = by_id[sample.id]
        if sample.id in ("garbled", "outlier"):
            assert judgement.missing and set(judgement.scores.values()) == {None}
            assert judgement.error.startswith("malformed reply:")
        else:
            assert not judgement.missing and judgement.rationale == "ok"
            red = sample.output_image.getpixel((0, 0))[0]
            expected = {a: (len(sample.prompt) + red + i) % 101 for i, a in enumerate(axes_for(sample.task))}
            assert {a: v for a, v in judgement.scores.items() if v is not None} == expected
            assert (judgement.scores["image_consistency"] is None) == (sample.task == "generate")
    assert "not JSON" in by_id["garbled"].error and "150" in by_id["outlier"].error
    assert counts == {"cached": 0, "judged": 6, "missing": 2}
    # The report counts the misses and never scores them.
    result = summarize(samples, judgements, num_bootstrap=0)
    assert result["overall"]["missing"] == 2
    assert result["overall"]["axes"]["text_quality"]["n"] == 4

    # A rerun pays nothing: every verdict (misses included) comes from the cache.
    before = len(server.requests)
    again, counts = cached_judge(_judge(server), samples, cache)
    assert len(server.requests) == before and counts["cached"] == 6
    assert [j.to_dict() for j in again] == [j.to_dict() for j in judgements]
    # Asking again for the misses only re-requests those two (the server now answers them).
    server.plan = {}
    fixed, counts = cached_judge(_judge(server), samples, cache, retry_missing=True)
    assert sorted(r["prompt"] for r in server.requests[before:]) == ["prompt garbled", "prompt outlier"]
    assert not any(j.missing for j in fixed) and counts == {"cached": 4, "judged": 2, "missing": 0}


def test_transport_failure_is_missing_and_not_cached(server, tmp_path):
    server.plan = {"prompt down": ["500"] * 10}
    cache = JudgeCache(tmp_path / "cache")
    (judgement,), _ = cached_judge(_judge(server, max_retries=1), [_sample("down", "generate", 1)], cache)
    assert judgement.missing and judgement.error.startswith("request failed: InternalServerError")
    assert len(server.requests) == 2  # one retry
    server.plan = {}
    (judgement,), counts = cached_judge(_judge(server), [_sample("down", "generate", 1)], cache)
    assert not judgement.missing and counts["judged"] == 1


def test_templates_override_and_key_the_cache(server, tmp_path):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "generate.txt").write_text(
        'PAPER RUBRIC {"like": "json"}\nInstruction: {prompt}\n{axes}\nReply: {reply_format}'
    )
    cache = JudgeCache(tmp_path / "cache")
    sample = _sample("t", "generate", 5)
    cached_judge(_judge(server), [sample], cache)
    (custom,), counts = cached_judge(_judge(server, template_dir=folder), [sample], cache)
    assert counts["judged"] == 1  # another template is another verdict
    assert server.requests[-1]["text"].startswith(
        'PAPER RUBRIC {"like": "json"}\nInstruction: prompt t\n- text_quality:'
    )
    assert not custom.missing
    (folder / "edit.txt").write_text("{prompt} {answer_key}")
    with pytest.raises(ValueError, match=r"unknown placeholders \['answer_key'\]"):
        _judge(server, template_dir=folder)
    with pytest.raises(ValueError, match="does not exist"):
        _judge(server, template_dir=tmp_path / "nowhere")


def test_parse_reply_is_strict():
    axes = axes_for("generate")
    good = {"scores": dict.fromkeys(axes, 50), "rationale": " fine "}
    assert parse_reply(json.dumps(good), axes) == (dict.fromkeys(axes, 50.0), "fine")
    assert parse_reply("```json\n" + json.dumps(good) + "\n```", axes)[1] == "fine"
    bad = {
        "not JSON": "scores: 5",
        "exactly 'scores' and 'rationale'": json.dumps({**good, "extra": 1}),
        "missing axes": json.dumps({"scores": {"text_quality": 1}, "rationale": ""}),
        "unknown axes": json.dumps({"scores": {**good["scores"], "image_consistency": 3}, "rationale": ""}),
        "not a number in": json.dumps({"scores": {**good["scores"], "text_quality": True}, "rationale": ""}),
        "'rationale' must be a string": json.dumps({"scores": good["scores"], "rationale": 3}),
        "empty reply": "",
    }
    for message, text in bad.items():
        with pytest.raises(ValueError, match=message):
            parse_reply(text, axes)
    with pytest.raises(ValueError, match=r"-1 is not a number in \[0, 100\]"):
        parse_reply(json.dumps({"scores": {**good["scores"], "image_quality": -1}, "rationale": ""}), axes)


def test_cli_judges_a_run_with_the_api(server, tmp_path, capsys):
    from pararl.evaluation import export_toy_benchmark
    from pararl.evaluation.__main__ import main

    benchmark = export_toy_benchmark(tmp_path / "toy.jsonl", 3, seed=1)
    run = tmp_path / "run"
    args = ["--output_dir", str(run), "--judge", "api", "--judge_model", "judge-model", "--base_url", server.url]
    main(["run", "--benchmark", str(benchmark), "--num_steps", "2", "--api_key", "k", "--num_bootstrap", "20", *args])
    assert len(server.requests) == 3
    report = json.loads((run / "report-api.json").read_text())
    assert report["overall"]["num_samples"] == 3 and report["overall"]["missing"] == 0
    assert (run / "gallery-api.html").read_text().count('class="card') == 3
    main(["judge", "--api_key", "k", *args])
    assert len(server.requests) == 3 and "0 asked, 3 from cache" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- failures through the CLI
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """Three toy outputs (two steps each), generated once; each test judges a copy."""
    from pararl.evaluation import export_toy_benchmark
    from pararl.evaluation.__main__ import main

    folder = tmp_path_factory.mktemp("api-run")
    benchmark = export_toy_benchmark(folder / "toy.jsonl", 3, seed=1)
    main(["generate", "--benchmark", str(benchmark), "--num_steps", "2", "--output_dir", str(folder / "run")])
    return folder / "run"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _judge_cli(run, url, *flags):
    from pararl.evaluation.__main__ import main

    return main(["judge", "--output_dir", str(run), "--judge", "api", "--judge_model", "judge-model", "--base_url",
                 url, "--api_key", "k", *flags])  # fmt: skip


@pytest.mark.parametrize("server_kind", ["nothing listens", "never replies"])
def test_an_unreachable_judge_fails_in_seconds_with_its_cause(toy_run, tmp_path, capsys, server_kind):
    from pararl.evaluation.__main__ import main

    run = shutil.copytree(toy_run, tmp_path / "run")
    with socket.socket() as listener:
        if server_kind == "never replies":  # the kernel accepts connections into the backlog; nobody answers
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            port = listener.getsockname()[1]
        else:
            port = _free_port()
        url = f"http://127.0.0.1:{port}/v1"
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_info:
            _judge_cli(run, url, "--timeout", "1", "--max_retries", "2")
        assert time.perf_counter() - start < 15  # one check without retries, not 3 samples x 3 attempts x 1 s
    assert exit_info.value.code == 1
    captured = capsys.readouterr()
    assert "judged 3 samples with api: 3 asked, 0 from cache, 3 missing" in captured.out
    cause = "APIConnectionError: Connection error." if server_kind == "nothing listens" else "APITimeoutError"
    assert (
        f"3 of 3 judgements missing:\n  3 x not asked: the server failed the reachability check: {cause}"
    ) in captured.err
    assert f"(base_url {url}/)" in captured.err
    assert "error: 3 of 3 judgements missing, more than --max_missing 0 allows" in captured.err
    # The report refuses to tabulate nothing.
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--output_dir", str(run), "--judge", "api"])
    assert exit_info.value.code == 1
    assert "all 3 api judgements" in capsys.readouterr().err and not (run / "report-api.md").exists()


def test_failed_requests_are_counted_against_max_missing_and_marked_in_the_report(server, toy_run, tmp_path, capsys):
    from pararl.evaluation import read_outputs
    from pararl.evaluation.__main__ import main

    run = shutil.copytree(toy_run, tmp_path / "run")
    failing = read_outputs(run)[0]["prompt"]
    server.plan = {failing: ["500"] * 10}
    with pytest.raises(SystemExit) as exit_info:
        _judge_cli(run, server.url, "--max_retries", "1")
    assert exit_info.value.code == 1
    assert len(server.requests) == 4  # 2 answered + the failing one twice (one retry); the check is a GET
    err = capsys.readouterr().err
    assert "1 of 3 judgements missing:\n  1 x request failed: InternalServerError: Error code: 500" in err
    assert f"(base_url {server.url}/)" in err and "1 of 3 judgements missing, more than --max_missing 0 allows" in err
    with pytest.raises(SystemExit) as exit_info:
        _judge_cli(run, server.url, "--max_missing", "5")
    assert (
        exit_info.value.code == 2
        and "--max_missing: a share of the samples is in [0, 1], got 5" in capsys.readouterr().err
    )
    # A third may be missing: accepted, and the report marks what it could not average.
    server.plan = {failing: ["500"] * 10}
    _judge_cli(run, server.url, "--max_retries", "1", "--max_missing", "0.34")
    main(["report", "--output_dir", str(run), "--judge", "api", "--num_bootstrap", "0"])
    report = (run / "report-api.md").read_text()
    assert "nan" not in report.lower() and "| **all** | 3 | 1 |" in report
    assert " *" in report.split("| **all** |")[1].splitlines()[0]  # means over 2 of 3 samples are marked
    assert "| missing |" in report  # the failing sample's category has no verdict at all
