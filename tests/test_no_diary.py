"""The product reads as a manual, not a lab notebook: no prose in it dates itself.

README.md, docs/**/*.md, benchmarks/RESULTS.md and the docstrings and comments of pararl/, examples/ and
benchmarks/ are searched for diary wording: work periods ("this round", "session 6"), relative time ("this time",
"yesterday", "what it shows so far"), which hardware happened to be available ("no GPU was available", "was
lent"), commit references in prose ("at commit c4cb2d5", "kept as they were") and change notes ("(new)", "we
tried", "the previous version of this README"). A measurement is described by what and where it was measured;
benchmarks/RESULTS.md is the one dated log, and its entry dates are not diary wording.
"""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent

# A hexadecimal word of 7-40 characters with at least one digit and one letter: a commit hash, not a number or a word.
_HASH = r"(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"

DIARY_PATTERNS = {
    "work period": re.compile(
        r"\b(?:this|that|last|previous|earlier|later|next|our|a\s+previous)\s+(?:round|session|work\s+period)s?\b"
        r"|\b(?:round|session|work\s+period)s?\s+\d+\b"
        r"|\bwork[- ]periods?\b"
        r"|\bstage\s+\d+\s+of\s+(?:our|the|this)\s+(?:work|project)\b",
        re.IGNORECASE,
    ),
    "relative time": re.compile(
        r"\bthis\s+time\b|\byesterday\b|\blast\s+(?:night|week|month)\b|\bearlier\s+today\b"
        r"|\b(?:shows?|shown|measured|learned|lent|available)(?:\s+[^\s.]+){0,4}?\s+so\s+far\b",
        re.IGNORECASE,
    ),
    "available hardware": re.compile(
        r"\b(?:was|were|been|is|are)\s+lent\b"
        r"|\bno\s+GPUs?\s+(?:was|were|is|has|had|here|available)\b"
        r"|\bno\s+GPUs?\b[^.\n]{0,40}?\b(?:available|lent)\b",
        re.IGNORECASE,
    ),
    "commit reference": re.compile(
        r"\bcommit\s+"
        + _HASH
        + r"|\b(?:at|in|since|before|after|from|until)\s+"
        + _HASH
        + r"|\bkept\s+as\s+(?:they|it)\s+(?:were|was)\b",
        re.IGNORECASE,
    ),
    "change note": re.compile(
        r"\(new\)|\bwe\s+(?:first\s+)?(?:tried|have\s+tried)\b"
        r"|\bprevious\s+versions?\s+of\s+(?:this|the)\s+(?:README|page|document|docs)\b"
        r"|\b(?:shipped|current)\s+then\b|\bbefore\s+this\s+change\b",
        re.IGNORECASE,
    ),
}


def diary_hits(text: str) -> list[tuple[int, str, str]]:
    """(line within `text`, pattern name, matched words) of every diary pattern found in `text`.

    Line breaks count as spaces for matching (prose is wrapped), and a hit is reported at the line it starts on.
    """
    hits = []
    for name, pattern in DIARY_PATTERNS.items():
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            hits.append((line, name, " ".join(match.group(0).split())))
    return sorted(hits)


def python_prose(path: Path) -> list[tuple[int, str]]:
    """(first line, text) of every docstring and comment of a Python file."""
    source = path.read_text(encoding="utf-8")
    prose = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            prose.append((token.start[0], token.string))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                if isinstance(body[0].value.value, str):
                    prose.append((body[0].lineno, body[0].value.value))
    return prose


def file_hits(path: Path) -> list[str]:
    """`file:line: pattern name: 'matched words'` for every diary hit in a markdown or Python file."""
    rel = path.relative_to(ROOT)
    text = path.read_text(encoding="utf-8")
    if not diary_hits(text):  # nothing anywhere in the file: no need to find its docstrings and comments
        return []
    chunks = [(1, text)] if path.suffix == ".md" else python_prose(path)
    found = []
    for first_line, text in chunks:
        # A docstring's first line is the line of its opening quotes, so its line numbers are exact.
        for line, name, words in diary_hits(text):
            found.append((first_line + line - 1, f"{rel}:{first_line + line - 1}: {name}: {words!r}"))
    return [hit for _, hit in sorted(found)]


GROUPS = {
    "README.md": lambda: [ROOT / "README.md"],
    "docs": lambda: sorted((ROOT / "docs").rglob("*.md")) if (ROOT / "docs").is_dir() else [],
    "benchmarks/RESULTS.md": lambda: [ROOT / "benchmarks" / "RESULTS.md"],
    "pararl": lambda: sorted((ROOT / "pararl").rglob("*.py")),
    "examples": lambda: sorted((ROOT / "examples").glob("*.py")),
    "benchmarks": lambda: sorted((ROOT / "benchmarks").glob("*.py")),
}


@pytest.mark.parametrize("group", list(GROUPS))
def test_no_diary_wording(group):
    paths = GROUPS[group]()
    assert group == "docs" or paths, f"nothing to check in {group}"
    found = [hit for path in paths for hit in file_hits(path)]
    assert not found, "diary wording (describe what and where, not when):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("This round re-measured it.", "work period"),
        ("Session 6: the toy policy", "work period"),
        ("the results of stage 2 of our work", "work period"),
        ("What the toy world shows so far", "relative time"),
        ("no GPU has been lent to this project so far.", "available hardware"),
        ("not pararl measurements — no GPU was available to\nthis project yet", "available hardware"),
        ("measured on the stage-4 policy\n(commit c4cb2d5) and are kept as they were.", "commit reference"),
        ("the policy shipped at c4cb2d5", "commit reference"),
        ("`loss_steps` (new): every token", "change note"),
        ("the toy policy after SFT stage 6 (shipped then)", "change note"),
    ],
)
def test_patterns_catch_diary(text, expected):
    assert expected in {name for _, name, _ in diary_hits(text)}


@pytest.mark.parametrize(
    "text",
    [
        "SFT stage 9 of the toy curriculum (1,000 steps)",
        "Rollouts are seeded by (seed, generation round, global row); evaluation rounds start far from training's.",
        "the tokens revealed so far plus the value drawn for each masked slot",
        "A bad row found mid-training costs the run so far.",
        "a world text round-trips exactly; pixels are round()ed",
        "requests.Session() keeps one connection pool",
        "the x0 image at 1/3 of the steps, 100 tasks in 2026 ms",
        "hash 0x9e3779b97f4a7c15 spreads the seeds",
        "Results: 2026-12-06 · Does RL raise coordination?",
    ],
)
def test_patterns_spare_technical_words(text):
    assert diary_hits(text) == []
