"""pyg_se3: the Iterative SE(3)-Transformer for PyTorch Geometric.

Features are *fibers* (:class:`~pyg_se3.fiber.Fiber`): flat node tensors ``[N, fiber.dim]`` in e3nn's layout.
Layers live in :mod:`pyg_se3.nn`, models in :mod:`pyg_se3.models`, the kernel basis in :mod:`pyg_se3.basis`.
Edge ``(j, i)`` of an ``edge_index`` carries the relative position ``pos[j] - pos[i]`` (source minus target).
"""

import pyg_se3._pyg  # noqa: F401  (first: loads PyG without its import-time warnings)
from pyg_se3.basis import Basis, compute_basis
from pyg_se3.fiber import Fiber

__version__ = "0.1.0"

__all__ = ["Basis", "Fiber", "__version__", "compute_basis"]
