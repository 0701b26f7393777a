"""benchmarks/RESULTS.md, the dated results log: every entry is anchored and dated, and every link in it resolves."""

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
LOG = (BENCHMARKS / "RESULTS.md").read_text(encoding="utf-8")
ANCHOR = re.compile(r'^<a id="([a-z0-9-]+)"></a>\n## (\d{4}-\d{2}-\d{2}) · \S', re.MULTILINE)


def test_every_entry_has_a_unique_anchor_and_a_date_newest_first():
    entries = ANCHOR.findall(LOG)
    headings = re.findall(r"^## \d{4}-", LOG, re.MULTILINE)
    assert entries and len(entries) == len(headings), "every dated '## ' heading needs an <a id> line right above it"
    slugs = [slug for slug, _ in entries]
    assert len(slugs) == len(set(slugs)), sorted({s for s in slugs if slugs.count(s) > 1})
    dates = [date for _, date in entries]
    assert dates == sorted(dates, reverse=True), "entries go newest first"


def test_links_resolve():
    slugs = {slug for slug, _ in ANCHOR.findall(LOG)}
    for target in re.findall(r"\]\(([^)\s]+)\)", LOG):
        if target.startswith("#"):
            assert target[1:] in slugs, f"no entry {target}"
        else:
            assert (BENCHMARKS / target).is_file(), f"no file {target}"


def test_every_recorded_result_has_an_entry():
    linked = set(re.findall(r"\]\((results/[^)\s]+)\)", LOG))
    recorded = {f"results/{path.name}" for path in (BENCHMARKS / "results").iterdir()}
    assert not recorded - linked, f"results without an entry in RESULTS.md: {sorted(recorded - linked)}"
