"""Builds pyg_se3's optional C++ CPU kernels (pyg_se3/csrc) as ``pyg_se3._C``; everything else is in pyproject.toml.

The kernels are only a speed-up: without them the plain-PyTorch path runs everything, and
``pyg_se3.nn.kernel.NATIVE_KERNELS_INFO`` says why they are missing. They are compiled against the torch of the
build environment, so they are built only where torch is importable there:

- ``pip install --no-build-isolation .`` (what the Makefile does) compiles them against the installed torch;
- a default, isolated ``pip install .`` has no torch in its build environment and builds a pure-Python package.
  (Listing torch in ``[build-system]`` would make every isolated build download a multi-GB torch, and compile
  against that one rather than the user's.)

A failed compilation (no C++ compiler, say) also falls back to a pure-Python package. ``PYG_SE3_NATIVE=1`` turns
either fallback into an error (the Makefile's set-up uses it); ``PYG_SE3_NATIVE=0`` skips the kernels.
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.errors import BaseError, CCompilerError

NATIVE = os.environ.get("PYG_SE3_NATIVE", "auto").strip().lower()
if NATIVE not in {"auto", "0", "1"}:
    sys.exit(f"PYG_SE3_NATIVE must be 0, 1 or auto, not {NATIVE!r}")
# What a failed compilation raises: compiler errors, a missing compiler (OSError), and torch's ninja build
# (RuntimeError, CalledProcessError).
BUILD_ERRORS = (BaseError, CCompilerError, OSError, RuntimeError, subprocess.CalledProcessError)


def _fall_back(reason: str) -> None:
    """Say (in pip's verbose build log) that the package is built without the kernels, or fail if they are required."""
    if NATIVE == "1":
        sys.exit(f"pyg_se3: PYG_SE3_NATIVE=1 but the C++ kernels cannot be built: {reason}")
    print(f"pyg_se3: building without the C++ kernels ({reason}); the PyTorch path runs everything", file=sys.stderr)


def _native_build() -> dict:
    """``setup()`` arguments that build ``pyg_se3._C``, or none when torch is not importable."""
    if NATIVE == "0":
        _fall_back("PYG_SE3_NATIVE=0")
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError as error:  # an isolated build environment
        _fall_back(f"torch is not importable in the build environment: {error}")
        return {}

    class OptionalBuildExtension(BuildExtension):
        """torch's ``BuildExtension``, which leaves a pure-Python package when the compilation fails."""

        def run(self) -> None:
            try:
                super().run()
            except BUILD_ERRORS as error:
                _fall_back(f"compiling them failed: {error}")
                # Nothing was built: forget the extension, so that no later step (install, editable wheel) looks
                # for its output.
                self.extensions = []

    extension = CppExtension(
        "pyg_se3._C",
        sorted(str(path) for path in Path("pyg_se3/csrc").glob("*.cpp")),
        # -fopenmp: at::parallel_for splits edges across torch's OpenMP threads (torch's own libgomp is loaded
        # first, so both share one thread pool)
        extra_compile_args=["-O3", "-fopenmp"],
        extra_link_args=["-fopenmp"],
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": OptionalBuildExtension}}


setup(**_native_build())
