"""Shared test helpers: random rotations, random graphs, equivariance measurement, checkpoint comparison."""

from __future__ import annotations

import torch
from e3nn import o3

from pyg_se3 import Fiber

#: Random rotations per equivariance check (conftest.py lowers it under ``pytest --fast``).
NUM_ROTATIONS = 20


def random_rotations(n: int | None = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n, 3, 3]`` rotations, uniform on SO(3) (e3nn); ``n`` defaults to :data:`NUM_ROTATIONS` (read at call
    time, so that ``--fast`` applies)."""
    return o3.rand_matrix(NUM_ROTATIONS if n is None else n, dtype=dtype)


def random_graph(num_nodes: int, num_edges: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    """Positions ``[N, 3]`` and a random directed edge set without self-loops."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(num_nodes, 3, generator=g, dtype=dtype)
    src = torch.randint(num_nodes, (num_edges,), generator=g)
    dst = (src + torch.randint(1, num_nodes, (num_edges,), generator=g)) % num_nodes
    return pos, torch.stack([src, dst])


def random_features(fiber: Fiber, num_nodes: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(num_nodes, fiber.dim, dtype=dtype)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float(((actual - expected).norm() / expected.norm().clamp_min(1e-300)).detach())


def unzero_displacements(model):
    """Iterative blocks start as the identity on positions (zeroed displacement heads); give every block's
    displacement head random weights again, to test models whose points move."""
    for block in model.blocks:
        output = block.output
        output.kernel.reset_parameters()
        output.self_interaction.reset_parameters()
    return model


def assert_identical(a, b, where: str = "checkpoint") -> None:
    """Checkpoint contents equal bit for bit: tensors with ``torch.equal``, everything else with ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {a.keys()} != {b.keys()}"
        for key in a:
            assert_identical(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"
