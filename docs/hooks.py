"""mkdocs hooks of pararl's documentation (`mkdocs.yml`: `hooks: [docs/hooks.py]`).

- `<!-- config-reference: package.module.ClassName -->` in a page becomes the parameter list of the fields that
  dataclass declares itself (name, type, default, help; one anchor per field), read from each field's `help` metadata, or, for a plain
  dataclass without metadata, from its docstring's `Args:` entries. A field with neither fails the build.
  Inherited fields (TRL's, transformers') are left to their own documentation.
- `<!-- include: path/from/the/repository/root.md -->` inlines a Markdown file kept outside `docs/` (the results log
  `benchmarks/RESULTS.md` lives once in git, beside its JSON files). Its relative links are resolved from its own
  folder: files under `benchmarks/results/` are published with the site (same relative paths), any other target
  becomes plain text naming the file, so `mkdocs build --strict` checks the rest of the site's links.
"""

import dataclasses
import importlib
import re
import sys
import typing
from pathlib import Path

from mkdocs.structure.files import File


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CONFIG_MARKER = re.compile(r"<!--\s*config-reference:\s*([\w.]+)\s*-->")
INCLUDE_MARKER = re.compile(r"<!--\s*include:\s*([\w./-]+)\s*-->")
MARKDOWN_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
# The files published beside the results page, under the same relative path as from benchmarks/RESULTS.md.
PUBLISHED = ROOT / "benchmarks"
PUBLISHED_FOLDER = "results"


# --- config reference -------------------------------------------------------------------------------------------


def _type_name(annotation) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = text.replace("typing.", "")
    return re.sub(r"\b(?:[a-z_][\w]*\.)+([A-Za-z_]\w*)", r"\1", text)  # drop module paths: `collections.abc.`


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def _docstring_entries(doc: str) -> tuple[dict[str, str], dict[str, str]]:
    """`({name: help}, {name: section})` from a Google/HF-style `Args:` or `Parameters:` docstring section.

    An entry is `name (type, ...): text` (text on the same line or indented below it); `a / b (...)` documents two
    fields at once; a `> Heading` line starts a section."""
    helps, sections, section = {}, {}, ""
    lines = (doc or "").expandtabs().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() in ("Args:", "Parameters:")), None)
    if start is None:
        return helps, sections
    entry = re.compile(r"^(\s*)([\w]+(?:\s*/\s*[\w]+)*)\s*\((.*?)\):\s*(.*)$")
    names, indent, body = [], None, []

    def flush():
        for name in names:
            helps[name] = " ".join(part for part in body if part).strip()

    for line in lines[start + 1 :]:
        stripped = line.strip()
        if stripped.startswith(">"):
            flush()
            names, body = [], []
            section = stripped.lstrip("> ").strip()
            continue
        match = entry.match(line)
        if match and (indent is None or len(match.group(1)) <= indent):
            flush()
            indent = len(match.group(1))
            names = [name.strip() for name in match.group(2).split("/")]
            body = [match.group(4).strip()]
            for name in names:
                sections[name] = section
            continue
        if stripped and indent is not None and len(line) - len(line.lstrip()) <= indent - 4:
            break  # the section ended (e.g. a `Returns:` heading at the outer indent)
        body.append(stripped)
    flush()
    return helps, sections


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _entry(field: dataclasses.Field, kind: str, help_text: str) -> str:
    """One parameter, as TRL's docs list them: name (type, default) — help; the anchor is the field's name."""
    return (
        f'- <a id="{field.name}"></a>**`{field.name}`** ({_one_line(kind)}, defaults to {_default(field)}) — '
        f"{_one_line(help_text)}"
    )


def config_reference(dotted: str) -> str:
    """Parameter lists of the fields `dotted` (a dataclass) declares itself, grouped by its docstring's sections."""
    module_name, class_name = dotted.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), class_name)
    own = cls.__dict__.get("__annotations__", {})
    hints = typing.get_type_hints(cls)
    doc_helps, sections = _docstring_entries(cls.__doc__)
    groups: dict[str, list[str]] = {}
    missing = []
    for field in dataclasses.fields(cls):
        if field.name not in own or field.name.startswith("_"):
            continue
        help_text = field.metadata.get("help") or doc_helps.get(field.name)
        if not help_text:
            missing.append(field.name)
            continue
        kind = f"`{_type_name(hints.get(field.name, field.type))}`"
        if field.metadata.get("choices"):
            kind += ", one of " + ", ".join(f"`{choice}`" for choice in field.metadata["choices"])
        groups.setdefault(sections.get(field.name, ""), []).append(_entry(field, kind, help_text))
    if missing:
        raise ValueError(f"{dotted}: no help metadata nor docstring entry for the fields {missing}.")
    out = []
    for section, entries in groups.items():
        if section or len(groups) > 1:
            out += [f"### {section or 'Defaults this class changes from its parent'}", ""]
        out += [*entries, ""]
    return "\n".join(out)


# --- the results log --------------------------------------------------------------------------------------------


def _include(relative: str) -> str:
    path = ROOT / relative
    if not path.exists():
        return f"*`{relative}` is not in this checkout.*\n"
    text = path.read_text()
    folder = path.parent

    def relink(match: re.Match) -> str:
        bang, label, target = match.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return match.group(0)
        file_part, _, anchor = target.partition("#")
        resolved = (folder / file_part).resolve()
        published = PUBLISHED / PUBLISHED_FOLDER
        if resolved.is_file() and resolved.is_relative_to(published):
            return f"{bang}[{label}]({resolved.relative_to(PUBLISHED).as_posix()}{'#' + anchor if anchor else ''})"
        shown = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else file_part
        return f"{label} (`{shown}`)" if label and label.strip("`") != shown else f"`{shown}`"

    return MARKDOWN_LINK.sub(relink, text)


# --- mkdocs events ----------------------------------------------------------------------------------------------


def on_files(files, config):
    """Publishes `benchmarks/results/*` (pictures and JSON the results log links to) at `results/` in the site."""
    folder = PUBLISHED / PUBLISHED_FOLDER
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                uri = path.relative_to(PUBLISHED).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    markdown = INCLUDE_MARKER.sub(lambda match: _include(match.group(1)), markdown)
    return CONFIG_MARKER.sub(lambda match: config_reference(match.group(1)), markdown)
