"""The documentation: the site builds with `mkdocs build --strict` (a dead link or anchor, a missing page or a field
without help fails it), the config references are generated from the dataclasses, the README stays short, and every
link into the results log names an entry that exists.

The build needs the `docs` extra (CI installs it); without mkdocs-material these tests skip."""

import dataclasses
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
README_MAX_LINES = 250
README_MAX_LINE_LENGTH = 200
# reference page -> the dataclass its `<!-- config-reference: ... -->` marker expands
REFERENCES = {
    "reference/grpo_config": "pararl.grpo.config.DiffusionGRPOConfig",
    "reference/sft_config": "pararl.sft.config.ParallelSFTConfig",
    "reference/rollout_config": "pararl.rollout.decoder.RolloutConfig",
}
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    site_dir = tmp_path_factory.mktemp("site")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return site_dir


def test_the_site_builds_strictly(site):
    assert (site / "index.html").exists() and (site / "results" / "index.html").exists()


@pytest.mark.parametrize("page, dotted", REFERENCES.items(), ids=list(REFERENCES))
def test_the_config_reference_is_generated_from_the_dataclass(site, page, dotted):
    html = (site / page / "index.html").read_text()
    assert "config-reference:" not in html, "the marker was not expanded"
    module, name = dotted.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    declared = [f.name for f in dataclasses.fields(cls) if f.name in cls.__dict__.get("__annotations__", {})]
    assert declared
    missing = [field for field in declared if f'<a id="{field}"></a><strong><code>{field}</code></strong>' not in html]
    assert not missing, f"{page} has no entry for {missing}"


def test_the_results_log_is_included_once(site):
    html = (site / "results" / "index.html").read_text()
    assert "include:" not in html, "the include marker was not expanded"
    tracked = subprocess.run(["git", "ls-files", "*RESULTS.md"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked.split() in ([], ["benchmarks/RESULTS.md"]), tracked  # one file in git; the docs include it


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    long = [i + 1 for i, line in enumerate(lines) if len(line) > README_MAX_LINE_LENGTH]
    assert not long, f"README.md lines over {README_MAX_LINE_LENGTH} characters: {long}"


def test_the_readme_links_to_files_that_exist():
    for target in LINK.findall(README.read_text()):
        path = target.split("#")[0]
        if re.match(r"^[a-z]+:", target) or not path or path == "benchmarks/RESULTS.md":
            continue  # external, an anchor of the README, or the results log (checked below)
        assert (ROOT / path).exists(), f"README.md links to {target}, which does not exist"


def test_every_link_into_the_results_log_names_an_entry():
    if not RESULTS.exists():
        pytest.skip("benchmarks/RESULTS.md is not in this checkout")
    anchors = set(re.findall(r'<a id="([^"]+)"', RESULTS.read_text()))
    pages = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    dead = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            file_part, _, anchor = target.partition("#")
            if anchor and (file_part.endswith("RESULTS.md") or file_part.endswith("results.md")):
                if anchor not in anchors:
                    dead.append(f"{page.relative_to(ROOT)}: {target}")
    assert not dead, f"links to results entries that do not exist: {dead}"
