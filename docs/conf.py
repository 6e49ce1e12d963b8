"""Sphinx configuration of the pyg_se3 documentation (``make docs``: HTML with warnings as errors, then doctests).

Nothing here reaches the network at build time: no intersphinx, no remote images, MathJax is the only script
loaded from a CDN, and only by the reader's browser.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# Doctests and autodoc import the library: one thread keeps them quiet on a shared machine and deterministic.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyg_se3  # noqa: E402

project = "pyg_se3"
author = "pyg_se3 developers"
copyright = "pyg_se3 developers"
version = release = pyg_se3.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []

# Markdown pages: $...$ / $$...$$ maths, ::: fences, anchors for the headings of every page (#section links).
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# NumPy-style docstrings.
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True
# The layers document their tensor shapes in a "Shapes" section.
napoleon_custom_sections = ["Shapes"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports: list[str] = []
autosummary_generate = False

# Doctests: `>>>` blocks of the docstrings autodoc pulls in and the {doctest} blocks of the pages.
# The setup gives every example the names its module has in scope (e.g. ``Fiber`` in pyg_se3.fiber's).
doctest_global_setup = """
import torch
from pyg_se3 import Basis, Fiber, compute_basis
torch.manual_seed(0)
torch.set_num_threads(1)
"""
doctest_test_doctest_blocks = "default"

html_theme = "furo"
html_title = f"pyg_se3 {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
