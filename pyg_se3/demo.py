"""``make demo`` until the training demo exists: one forward/backward of an SE3Transformer on a random point
cloud, and its measured equivariance error in float64 and float32."""

from __future__ import annotations

import time

import torch
from e3nn import o3
from torch_cluster import knn_graph

from pyg_se3 import Fiber
from pyg_se3.models import SE3Transformer


def equivariance_error(model: SE3Transformer, x, pos, k: int, num_rotations: int = 5) -> float:
    """Largest relative error of ``model(rotated input) - rotated model(input)`` over random rotations."""
    out = model(x, pos, knn_graph(pos, k))
    worst = 0.0
    for _ in range(num_rotations):
        R = o3.rand_matrix(dtype=pos.dtype)
        shift = torch.randn(3, dtype=pos.dtype)
        pos_rot = pos @ R.T + shift
        out_rot = model(model.fiber_in.rotate(x, R), pos_rot, knn_graph(pos_rot, k))
        expected = model.fiber_out.rotate(out, R)
        worst = max(worst, float((out_rot - expected).norm() / expected.norm()))
    return worst


def main() -> None:
    torch.manual_seed(0)
    num_nodes, k = 64, 16
    fiber_in, fiber_out = Fiber({0: 1, 1: 1}), Fiber({0: 1, 1: 1})
    model = SE3Transformer(fiber_in, Fiber.create(3, 16), fiber_out, num_layers=2, num_heads=4)
    print(
        f"SE3Transformer, {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"hidden {model.fiber_hidden}, N={num_nodes}, kNN k={k}"
    )
    pos = torch.randn(num_nodes, 3, requires_grad=True)
    x = torch.randn(num_nodes, fiber_in.dim)
    start = time.perf_counter()
    out = model(x, pos, knn_graph(pos.detach(), k))
    out.pow(2).sum().backward()
    print(f"forward+backward: {time.perf_counter() - start:.3f} s; |d loss/d pos| = {pos.grad.norm():.3e}")
    for dtype in (torch.float64, torch.float32):
        model.to(dtype)
        with torch.no_grad():
            err = equivariance_error(model, x.to(dtype), pos.detach().to(dtype), k)
        print(f"equivariance error ({dtype}): {err:.2e} (max relative, 5 random rotations + translations)")


if __name__ == "__main__":
    main()
