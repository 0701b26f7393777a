"""The package's layering: which modules an import pulls in, and (below) that the import graph has no cycle."""

import subprocess
import sys


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
