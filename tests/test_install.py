"""Installing into an existing environment: declared ranges, the exact pins of the dev set-up, optional C++ kernels.

`make install-check` runs this file (but for the dev-environment test) in a fresh venv with another torch and a
pure-Python install, where the kernels are missing.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import pyg_se3
from pyg_se3.nn import contraction, kernel

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
# The dependencies whose exact versions matter most: a user's torch (and what is compiled against it) must not be
# replaced by an install of pyg_se3.
CORE = ("torch", "torch-geometric", "e3nn")
SOURCE_BUILT = {"cluster": "torch-cluster", "scatter": "torch-scatter"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _constraints() -> dict[str, str]:
    """constraints.txt as {canonical name: pinned version}; every line that is not a comment must be an exact pin."""
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def _requirements(names: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, names)}


def test_dependencies_are_ranges():
    """pip must keep a user's torch, PyG and e3nn when they are recent enough, and never pull a compiled package."""
    dependencies = _requirements(_project()["dependencies"])
    for name, requirement in dependencies.items():
        operators = {specifier.operator for specifier in requirement.specifier}
        assert not operators & {"==", "==="}, f"{name} is pinned in pyproject.toml: {requirement}"
    for name in CORE:
        assert name in dependencies, f"{name} missing from the dependencies"
        assert any(s.operator == ">=" for s in dependencies[name].specifier), f"{name} has no lower bound"
    extras = _project()["optional-dependencies"]
    for extra, name in SOURCE_BUILT.items():
        assert name not in dependencies, f"{name} (built from source) is required; it belongs in an extra"
        assert name in _requirements(extras[extra]), f"extra {extra!r} does not install {name}"


def test_constraints_pin_every_dependency_within_its_range():
    pins = _constraints()
    project = _project()
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + [r for extra in ("cluster", "scatter", "test", "dev") for r in extras[extra]]
    for name, requirement in _requirements(declared).items():
        assert name in pins, f"constraints.txt does not pin {name}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside pyproject.toml's {requirement}"
        )


def test_dev_environment_matches_constraints():
    """`make setup` installs with constraints.txt: what is installed is what it pins (local labels such as +cpu
    aside). Fails after a pin changes until `make setup` re-runs, and in any other environment."""
    for name, pinned in _constraints().items():
        installed = Version(importlib.metadata.version(name))
        assert installed.public == pinned, f"{name} {installed} installed, constraints.txt pins {pinned}"


def _native_importable() -> bool:
    try:
        import pyg_se3._C  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def test_kernel_info_matches_the_import():
    # pyg_se3.nn.kernel re-exports what pyg_se3.nn.contraction, which imports pyg_se3._C, finds
    assert (kernel.NATIVE_KERNELS, kernel.NATIVE_KERNELS_INFO) == (
        contraction.NATIVE_KERNELS,
        contraction.NATIVE_KERNELS_INFO,
    )
    assert kernel.NATIVE_KERNELS == (contraction._C is not None) == _native_importable()
    if kernel.NATIVE_KERNELS:
        assert kernel.NATIVE_KERNELS_INFO == f"loaded from {contraction._C.__file__}"
    else:
        assert kernel.NATIVE_KERNELS_INFO.startswith(("not built", "failed to load"))


# Imports pyg_se3 under `-W error`, with pyg_se3._C made to fail as `block` says, runs a layer, and prints what the
# kernel module reports; log records go to stdout, marked, so that stderr holds only what else the import says.
_SCRIPT = """
import importlib.abc, json, logging, sys

BLOCK = {block!r}


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pyg_se3._C" or BLOCK is None:
            return None
        if BLOCK == "missing":  # what a pure-Python install gives
            raise ModuleNotFoundError("No module named 'pyg_se3._C'", name="pyg_se3._C")
        # what a _C compiled against another torch gives
        raise ImportError("_C.so: undefined symbol: _ZN3c1017RegisterOperatorsD1Ev")


sys.meta_path.insert(0, Blocker())
logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="LOG %(levelname)s %(name)s: %(message)s")
import pyg_se3, pyg_se3.nn
import torch
from pyg_se3 import Fiber
from pyg_se3.nn import SE3Conv, kernel

torch.manual_seed(0)
pos, x = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
edge_index = torch.tensor([[0, 1, 2, 3, 4, 5, 1], [1, 2, 3, 4, 5, 0, 3]])
conv = SE3Conv(Fiber({{0: 2, 1: 1}}), Fiber({{0: 3, 1: 2}})).double()
with torch.no_grad():  # the fast path, where the C++ kernels would run
    out = conv(x, pos, edge_index)
report = dict(native=kernel.NATIVE_KERNELS, info=kernel.NATIVE_KERNELS_INFO, file=pyg_se3.__file__,
              shape=list(out.shape), finite=bool(out.isfinite().all()))
print("REPORT", json.dumps(report))
"""


def _import_pyg_se3(tmp_path: Path, block: str | None) -> tuple[dict, list[str], str]:
    """(the report, the log records of pyg_se3, stderr) of a fresh interpreter's import."""
    # Not run from the repository root, where `-c` would import the source tree instead of the installed package.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", _SCRIPT.format(block=block)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (report,) = [json.loads(line.removeprefix("REPORT ")) for line in lines if line.startswith("REPORT ")]
    assert report["file"] == pyg_se3.__file__, "the subprocess imported another pyg_se3"
    assert report["shape"] == [6, 3 + 2 * 3] and report["finite"]
    logs = [line for line in lines if line.startswith("LOG ") and " pyg_se3" in line]
    return report, logs, result.stderr


@pytest.mark.slow
def test_import_reports_the_kernels_it_has(tmp_path):
    """An unmodified import: silent when the kernels load (the dev set-up), one INFO record when not built."""
    report, logs, stderr = _import_pyg_se3(tmp_path, block=None)
    assert stderr == ""
    assert report["native"] == kernel.NATIVE_KERNELS and report["info"] == kernel.NATIVE_KERNELS_INFO
    if kernel.NATIVE_KERNELS:
        assert logs == []
    else:
        assert len(logs) == 1 and logs[0].startswith("LOG INFO pyg_se3.nn.contraction: pyg_se3: C++ kernels not built")


@pytest.mark.slow
def test_missing_kernels_fall_back_quietly(tmp_path):
    """A pure-Python install runs on the PyTorch path; it says why once, at INFO (hidden by default), no warning."""
    report, logs, stderr = _import_pyg_se3(tmp_path, block="missing")
    assert stderr == ""
    assert not report["native"] and report["info"].startswith("not built")
    assert len(logs) == 1 and logs[0].startswith("LOG INFO pyg_se3.nn.contraction: pyg_se3: C++ kernels not built")


@pytest.mark.slow
def test_kernels_of_another_torch_fall_back_loudly(tmp_path):
    """A `_C` that does not load (built against another torch) is reported once at WARNING, not raised."""
    report, logs, stderr = _import_pyg_se3(tmp_path, block="stale")
    assert stderr == ""
    assert not report["native"] and report["info"].startswith("failed to load (ImportError: _C.so: undefined symbol")
    assert len(logs) == 1 and logs[0].startswith(
        "LOG WARNING pyg_se3.nn.contraction: pyg_se3: C++ kernels failed to load"
    )
