"""Shared test helpers: random rotations, random graphs, equivariance measurement."""

from __future__ import annotations

import torch
from e3nn import o3

from pyg_se3 import Fiber

NUM_ROTATIONS = 20


def random_rotations(n: int = NUM_ROTATIONS, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n, 3, 3]`` rotations, uniform on SO(3) (e3nn)."""
    return o3.rand_matrix(n, dtype=dtype)


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
        output.kernel.radial.heads[output.fiber_out.degrees.index(1)].reset_parameters()
        output.self_interaction.reset_parameters()
    return model
