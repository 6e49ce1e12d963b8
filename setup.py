"""Builds pyg_se3's C++ CPU kernels (pyg_se3/csrc) as ``pyg_se3._C``; everything else is in pyproject.toml.

Built against the installed torch, so install with ``--no-build-isolation`` (as the Makefile does): an isolated
build would download another torch to compile against.
"""

from pathlib import Path

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

setup(
    ext_modules=[
        CppExtension(
            "pyg_se3._C",
            sorted(str(path) for path in Path("pyg_se3/csrc").glob("*.cpp")),
            # -fopenmp: at::parallel_for splits edges across torch's OpenMP threads (torch's own libgomp is loaded
            # first, so both share one thread pool)
            extra_compile_args=["-O3", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
)
