"""A self-contained HTML gallery of judged outputs: one card per sample with its prompt, input and output images,
reasoning, every axis score and the judge's rationale; filter by category and sort by any axis (a few lines of inline
JavaScript; `gallery.html#category=...&sort=...&order=asc` presets them). Opens from disk: images are embedded as
data URLs, or linked relative to the gallery file."""

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..axes import AXES, AXIS_HEADERS
from .judges import Judgement, Sample


__all__ = ["write_gallery"]

_STYLE = """
body{font-family:system-ui,sans-serif;margin:16px;background:#f4f4f6;color:#222}
h1{font-size:20px;margin:0 0 8px} .bar{margin:8px 0 16px;display:flex;gap:16px;align-items:center}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{box-sizing:border-box;background:#fff;border-radius:8px;padding:10px;width:340px;
box-shadow:0 1px 3px #0002;font-size:13px}
.card.missing{outline:2px solid #c33}
.meta{color:#666;font-size:12px;margin-bottom:4px} .prompt{font-weight:600;margin:4px 0}
.images{display:flex;gap:8px;margin:6px 0} .images figure{margin:0;text-align:center;font-size:11px;color:#666}
.images img{width:100px;height:100px;image-rendering:pixelated;border:1px solid #ccc;object-fit:contain;
background:#eee}
.reasoning{background:#f7f7f9;padding:6px;border-radius:4px;white-space:pre-wrap;margin:6px 0}
table{border-collapse:collapse;width:100%;font-size:12px} td{padding:1px 4px;border-bottom:1px solid #eee}
td.v{text-align:right;font-variant-numeric:tabular-nums} .rationale{color:#444;font-style:italic;margin-top:6px}
.error{color:#c33;margin-top:6px} details{margin-top:6px;font-size:12px;word-break:break-word}
"""

_SCRIPT = """
const grid=document.getElementById('grid'),cat=document.getElementById('category'),key=document.getElementById('sort');
function update(){const cards=[...grid.children];const k=key.value;const dir=document.getElementById('order').value;
cards.sort((a,b)=>{if(k==='id')return a.dataset.id.localeCompare(b.dataset.id);
const x=parseFloat(a.dataset[k]),y=parseFloat(b.dataset[k]);const nx=isNaN(x),ny=isNaN(y);
if(nx||ny)return nx-ny;return dir==='asc'?x-y:y-x;});
let shown=0;for(const c of cards){const ok=cat.value===''||c.dataset.category===cat.value;c.style.display=ok?'':'none';
shown+=ok;grid.appendChild(c);}document.getElementById('count').textContent=shown+' shown';}
const wanted=new URLSearchParams(location.hash.slice(1));  // e.g. gallery.html#category=spatial&sort=image_alignment
for(const [name,el] of [['category',cat],['sort',key],['order',document.getElementById('order')]])
if(wanted.has(name))el.value=wanted.get(name);
for(const el of [cat,key,document.getElementById('order')])el.addEventListener('change',update);update();
"""


def _image_source(image, relative: str | None, run_dir: Path, gallery_dir: Path, embed: bool) -> str | None:
    if image is None:
        return None
    if embed or relative is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return Path(os.path.relpath(run_dir / relative, gallery_dir)).as_posix()


def _overall(judgement: Judgement) -> float | None:
    if judgement.missing:
        return None
    values = [v for v in judgement.scores.values() if v is not None]
    return sum(values) / len(values) if values else None


def write_gallery(
    samples: Sequence[Sample],
    judgements: Sequence[Judgement],
    path: str | os.PathLike,
    run_dir: str | os.PathLike,
    title: str = "pararl evaluation",
    embed_images: bool = False,
    judge_name: str | None = None,
) -> Path:
    """Writes the gallery to `path` (images linked relative to it, or embedded with `embed_images`)."""
    if len(samples) != len(judgements) or any(s.id != j.id for s, j in zip(samples, judgements)):
        raise ValueError("judgements must be given in the order of the samples, one per sample.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    run_dir, gallery_dir = Path(run_dir), path.parent
    escape = html.escape
    cards = []
    for sample, judgement in zip(samples, judgements):
        overall = _overall(judgement)
        data = {"id": sample.id, "category": sample.category, "overall": "" if overall is None else f"{overall:.4f}"}
        for axis in AXES:
            value = None if judgement.missing else judgement.scores.get(axis)
            # data-text_quality -> dataset.text_quality in the script (no dash: no camel-casing)
            data[axis] = "" if value is None else f"{value:.4f}"
        attributes = " ".join(f'data-{k}="{escape(str(v))}"' for k, v in data.items())
        figures = []
        shown = [("input", sample.input_image, sample.paths.get("input_image"))]
        shown.append(("output", sample.output_image, sample.paths.get("output_image")))
        shown += [
            (f"reference: {key}", value, sample.paths.get(f"references.{key}"))
            for key, value in sample.references.items()
            if isinstance(value, Image.Image)
        ]
        for label, image, relative in shown:
            source = _image_source(image, relative, run_dir, gallery_dir, embed_images)
            if source is not None:
                figures.append(
                    f'<figure><img src="{escape(source)}" alt="{label}"><figcaption>{label}</figcaption></figure>'
                )
        rows = []
        for axis in AXES:
            value = judgement.scores.get(axis)
            if value is None and not judgement.missing:
                continue
            shown = "missing" if judgement.missing else f"{value:.1f}"
            rows.append(f'<tr><td>{AXIS_HEADERS[axis]}</td><td class="v">{shown}</td></tr>')
        if overall is not None:
            rows.append(f'<tr><td><b>Overall</b></td><td class="v"><b>{overall:.1f}</b></td></tr>')
        extra = ""
        texts = [
            (k, v)
            for k, v in sample.references.items()
            if isinstance(v, str | int | float) and not isinstance(v, bool)
        ]
        if texts:
            items = "".join(f"<div><b>{escape(k)}</b>: {escape(str(v)[:500])}</div>" for k, v in texts)
            extra += f"<details><summary>references</summary>{items}</details>"
        if judgement.rationale:
            extra += f'<div class="rationale">{escape(judgement.rationale)}</div>'
        if judgement.error:
            extra += f'<div class="error">{escape(judgement.error)}</div>'
        cards.append(
            f'<div class="card{" missing" if judgement.missing else ""}" {attributes}>'
            f'<div class="meta">{escape(sample.id)} · {escape(sample.task)} · {escape(sample.category)}</div>'
            f'<div class="prompt">{escape(sample.prompt)}</div>'
            f'<div class="images">{"".join(figures)}</div>'
            f'<div class="reasoning">{escape(sample.reasoning) or "<i>(empty reasoning)</i>"}</div>'
            f"<table>{''.join(rows)}</table>{extra}</div>"
        )
    categories = sorted({s.category for s in samples})
    options = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in categories)
    sort_options = '<option value="overall">Overall</option>' + "".join(
        f'<option value="{a}">{AXIS_HEADERS[a]}</option>' for a in AXES
    )
    missing = sum(j.missing for j in judgements)
    subtitle = f"{len(samples)} samples, {missing} missing verdicts" + (f", judge: {judge_name}" if judge_name else "")
    document = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title><style>{_STYLE}</style></head>
<body><h1>{escape(title)}</h1><div class="meta">{escape(subtitle)}</div>
<div class="bar"><label>category <select id="category"><option value="">all</option>{options}</select></label>
<label>sort by <select id="sort">{sort_options}<option value="id">id</option></select></label>
<label><select id="order"><option value="desc">high first</option>
<option value="asc">low first</option></select></label>
<span id="count"></span></div>
<div class="grid" id="grid">
{chr(10).join(cards)}
</div><script>{_SCRIPT}</script>
<script type="application/json" id="axes">{json.dumps(list(AXES))}</script></body></html>
"""
    path.write_text(document)
    return path
