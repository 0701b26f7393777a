"""The package's layering: which modules an import pulls in, and (below) that the import graph has no cycle."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path


def _modules_after(statement: str) -> set[str]:
    """The `pararl` modules in `sys.modules` after running `statement` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint('\\n'.join(m for m in sys.modules if m.startswith('pararl')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(result.stdout.split())


def test_importing_the_processing_module_does_not_import_the_policy_model():
    modules = _modules_after("import pararl.processing")
    assert "pararl.processing" in modules and "pararl.image_tokenizers" in modules
    assert not {m for m in modules if m.startswith("pararl.models")}, modules


def test_the_image_tokenizers_import_nothing_of_pararl_but_the_weight_file_helpers():
    modules = _modules_after("import pararl.image_tokenizers")
    assert {m for m in modules if not m.startswith("pararl.image_tokenizers")} == {"pararl", "pararl.weight_files"}


# ------------------------------------------------------------------------------------------------- the import graph
PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "pararl"


def _module_files() -> dict[str, Path]:
    """`{dotted module name: file}` for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pararl modules `name` imports anywhere in its file (module level and inside functions; relative imports
    resolved; `if TYPE_CHECKING:` blocks skipped, they never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module
            for alias in node.names:  # `from package import module` imports the module
                found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    resolved = set()
    for target in found:
        while target and target not in modules:  # `import pararl.a.b` of an attribute: its module
            target = target.rpartition(".")[0]
        if target:
            resolved.add(target)
    return resolved


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_import_graph() -> dict[str, set[str]]:
    """`{module: modules its import runs}`: each imported module, plus the package `__init__`s that importing it
    runs first (those of packages the importer is not itself inside: its own are running already)."""
    modules = _module_files()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported_names(name, path, modules):
            edges.add(target)
            edges.update(p for p in _ancestors(target) if p not in _ancestors(name))
        graph[name] = edges - {name}
    return graph


def component_import_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph collapsed onto pararl's components (`pararl.models`, `pararl.rollout`, `pararl.processing`...):
    the layers, which import one way (image tokenizers -> models / processing -> rollout -> rewards -> trainers ->
    evaluation)."""

    def component(name: str) -> str:
        return ".".join(name.split(".")[:2])

    collapsed: dict[str, set[str]] = {}
    for name, targets in graph.items():
        edges = collapsed.setdefault(component(name), set())
        edges.update(component(t) for t in targets if component(t) != component(name) and component(t) != "pararl")
    return collapsed


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as `[a, b, ..., a]`, or `None`."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))
    return None


def test_the_module_import_graph_has_no_cycle():
    graph = module_import_graph()
    assert {"pararl.processing", "pararl.models.modeling", "pararl.grpo.trainer"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_layers_import_one_way():
    graph = component_import_graph(module_import_graph())
    cycle = find_cycle(graph)
    assert cycle is None, "the layers import each other: " + " -> ".join(cycle)
    assert (
        "pararl.models" not in graph["pararl.image_tokenizers"] and "pararl.processing" not in graph["pararl.models"]
    )


def test_the_cycle_finder_sees_function_level_and_relative_imports(tmp_path):
    # A made-up two-module package: a.py imports b at module level, b.py imports a inside a function, relatively.
    graph = {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    source = "def f():\n    from .a import g\n    from .. import other\n"
    path = tmp_path / "b.py"
    path.write_text(source)
    modules = {"pkg.sub.a": path, "pkg.sub.b": path, "pkg.other": path, "pkg": path}
    assert _imported_names("pkg.sub.b", path, modules) == {"pkg.sub.a", "pkg.other"}


# The evaluation harness's toy entry points (the exact toy judge, the toy benchmark's export, the shipped policy and
# CLIP as defaults): the only places outside `pararl.toy` that import it, each inside a function.
CORE_IMPORTS_OF_TOY = {
    ("pararl.evaluation.__main__", "pararl.toy"),
    ("pararl.evaluation.__main__", "pararl.toy.clip"),
    ("pararl.evaluation.data", "pararl.toy"),
    ("pararl.evaluation.judges", "pararl.toy"),
    ("pararl.evaluation.judges", "pararl.toy.scoring"),
}


def test_nothing_outside_the_toy_world_imports_it_but_the_evaluation_entry_points():
    graph = module_import_graph()
    toy = "pararl.toy"
    edges = {(name, t) for name, targets in graph.items() for t in targets if t.split(".")[:2] == toy.split(".")}
    assert {(name, t) for name, t in edges if not name.startswith(toy)} == CORE_IMPORTS_OF_TOY
