"""The library core never imports the application (``pyg_se3.runtime``)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pyg_se3

PACKAGE = Path(pyg_se3.__file__).parent


def _core_files() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if "runtime" not in p.relative_to(PACKAGE).parts[:1]]


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_core_sources_do_not_import_the_runtime():
    files = _core_files()
    assert any(p.name == "fiber.py" for p in files) and any(p.parent.name == "nn" for p in files)
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(m for m in _imported_modules(p) if m.startswith("pyg_se3.runtime"))
        for p in files
        if p.name != "__main__.py"  # `python -m pyg_se3` is the command line's entry point
    }
    assert {name: mods for name, mods in offenders.items() if mods} == {}


@pytest.mark.slow
def test_importing_the_library_loads_no_runtime_module():
    code = (
        "import sys, pyg_se3, pyg_se3.nn, pyg_se3.models, pyg_se3.datasets, pyg_se3.graph, pyg_se3.loader, "
        "pyg_se3.transforms, pyg_se3.testing\n"
        "print(sorted(m for m in sys.modules if m.startswith('pyg_se3.runtime')))"
    )
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_detector_sees_a_runtime_import(tmp_path):
    # the check above can fail: an import of the runtime in a module is found
    bad = tmp_path / "bad.py"
    bad.write_text("from pyg_se3.runtime.tasks import get_task\nimport pyg_se3.runtime.cli\n")
    assert {"pyg_se3.runtime.tasks", "pyg_se3.runtime.cli"} <= _imported_modules(bad)
