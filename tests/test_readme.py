"""The README's and the docs' code runs: every ```python block of README.md and docs/**/*.md, each in a fresh
interpreter, and their toy-world evaluation commands in a reduced form (fewer prompts and steps), so the quick start,
the custom-reward example and every page's example cannot silently break.

A block that needs a GPU or a real checkpoint is preceded by a visible `<!-- not-run: reason -->` line; such blocks
are listed, not run. A block that appears on several pages (the quick start is in the README and in the docs) runs
once, under the first place it appears."""

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(.*?)\s*-->")


def code_blocks(path: Path, language: str) -> list[tuple[int, str, str | None]]:
    """`(line, code, not-run reason or None)` of every fenced block of `language` in `path`."""
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            start, body = i + 1, []
            i += 1
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            previous = next((line for line in reversed(lines[: start - 1]) if line.strip()), "")
            reason = NOT_RUN.search(previous)
            blocks.append((start + 1, "\n".join(body) + "\n", reason.group(1) if reason else None))
        i += 1
    return blocks


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT).as_posix()}:{line}"


def python_blocks() -> list[tuple[str, str, str | None]]:
    """`(where, code, not-run reason)` of every python block of the README and the docs, the same code (same syntax
    tree, whatever its formatting) once."""
    seen, blocks = {}, []
    for path in PAGES:
        for line, code, reason in code_blocks(path, "python"):
            key = ast.dump(ast.parse(code))
            if key in seen:
                continue
            seen[key] = _where(path, line)
            blocks.append((_where(path, line), code, reason))
    return blocks


PYTHON_BLOCKS = python_blocks()
README_BLOCKS = code_blocks(README, "python")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def test_the_readme_and_docs_have_the_blocks_this_file_runs():
    assert len(README_BLOCKS) >= 2 and len(PYTHON_BLOCKS) >= 8, PYTHON_BLOCKS
    assert all(reason for _, _, reason in PYTHON_BLOCKS if reason is not None), "a not-run marker needs its reason"
    first_code = README_BLOCKS[0][1]
    assert "DiffusionGRPOTrainer" in first_code and "trainer.train()" in first_code  # the README's quick start
    assert any("class NamedColoursDrawn(Reward)" in code and "trainer.train()" in code for _, code, _ in README_BLOCKS)


@pytest.mark.parametrize("where, code, reason", PYTHON_BLOCKS, ids=[where for where, _, _ in PYTHON_BLOCKS])
def test_python_block_runs(where, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"{where} is marked not-run: {reason}")
    script = tmp_path / "block.py"
    script.write_text(code)
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{where} failed:\n{result.stderr[-4000:]}"


def toy_evaluation_commands() -> list[list[str]]:
    """The README's and the docs' `python -m pararl.evaluation ...` commands on the toy benchmark (not the one that
    needs a trained adapter), continuation lines joined and comments dropped, as argument lists."""
    commands = []
    for path in PAGES:
        for _, code, _ in code_blocks(path, "bash"):
            for command in code.replace("\\\n", " ").splitlines():
                command = command.split(" #")[0].strip()
                if command.startswith("python -m pararl.evaluation") and "outputs/eval-toy " in command + " ":
                    if "--model_name_or_path" not in command:
                        commands.append(shlex.split(command))
    return commands


def reduced(argv: list[str]) -> list[str]:
    """`argv` with 4 prompts and 2 denoising steps, run by this interpreter."""
    sizes = {"--toy_samples": "4", "--num_steps": "2"}
    out = [sys.executable if argv[0] == "python" else argv[0]]
    for previous, value in zip(argv, argv[1:]):
        out.append(sizes.get(previous, value))
    return out


def test_the_toy_evaluation_commands_run_in_reduced_form(tmp_path):
    commands = toy_evaluation_commands()
    assert [argv[3] for argv in commands] == ["run", "judge", "report"], commands
    for argv in commands:
        result = subprocess.run(reduced(argv), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, f"{shlex.join(argv)} failed:\n{result.stderr[-4000:]}"
    run = tmp_path / "outputs" / "eval-toy"
    assert len((run / "outputs.jsonl").read_text().splitlines()) == 4
    assert {"toy.jsonl", "clip.jsonl"} <= {path.name for path in (run / "judgements").iterdir()}
    assert "| **all** | 4 |" in result.stdout  # the report's table, over the 4 reduced prompts
