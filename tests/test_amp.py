"""Mixed precision: under ``torch.autocast(..., dtype=torch.bfloat16)`` both models run forward and backward,
their equivariance error is bounded (a measured bound, far below that of a wrong rotation), and what autocast
must not touch (float64 models, the float32 basis) is bit for bit what it is without autocast."""

import pytest
import torch
from e3nn import o3
from helpers import relative_error, unzero_displacements

from pyg_se3 import Fiber, compute_basis
from pyg_se3.graph import KNN
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer

FIBER_IO, FIBER_HIDDEN = Fiber({0: 1, 1: 1}), Fiber.create(3, 8)
NUM_NODES = 32
# Measured with this file's models, inputs and rotations, max over the 10 rotations (the same without autocast in
# float32 / float64 for comparison): SE3Transformer 7.1e-3 (3.3e-7 / 5.9e-16); iterative model, positions 6.2e-3
# (1.2e-7 / 2.4e-16), hidden fiber 0.12 (8.7e-7 / 1.9e-15). bfloat16 keeps 8 bits of mantissa to float32's 24:
# its errors are those of float32 times ~2e4 (2^15 = 3e4). The iterative model's errors depend on its random
# initialisation: over 6 other seeds (6 rotations each) positions 1e-3 to 9.3e-3, hidden fiber 1.3e-2 to 0.12
# (the loop below with torch.manual_seed(100 + s) in iterative()). The bounds are about 1.5-3x
# the largest measured values; comparing with a wrong rotation gives 0.6-1.4.
BOUNDS = {"SE3Transformer": 2e-2, "iterative positions": 1.5e-2, "iterative hidden": 0.18}


def bf16(device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16)


def inputs(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(1)
    pos = torch.randn(NUM_NODES, 3, generator=g, dtype=torch.float64)
    x = torch.randn(NUM_NODES, FIBER_IO.dim, generator=g, dtype=torch.float64)
    return x.to(dtype), pos.to(dtype)


def median_neighbour_distance(pos: torch.Tensor) -> float:
    d = torch.cdist(pos, pos)
    d.fill_diagonal_(float("inf"))
    return float(d.min(1).values.median())


def se3_transformer() -> SE3Transformer:
    torch.manual_seed(0)
    return SE3Transformer(FIBER_IO, FIBER_HIDDEN, FIBER_IO, num_layers=2, num_heads=2)


def iterative() -> IterativeSE3Transformer:
    """4 iterations x 2 layers whose points move: random displacement heads, updates of 0.1 neighbour distance."""
    torch.manual_seed(0)
    scale = 0.1 * median_neighbour_distance(inputs()[1])
    model = IterativeSE3Transformer(
        FIBER_IO, FIBER_HIDDEN, num_iterations=4, num_heads=2, graph=KNN(8), displacement_scale=scale
    )
    return unzero_displacements(model)


@pytest.mark.parametrize("kind", ["SE3Transformer", "iterative"])
def test_bfloat16_autocast_forward_and_backward(kind, one_thread):
    model = se3_transformer() if kind == "SE3Transformer" else iterative()
    x, pos = inputs()
    pos.requires_grad_(True)
    with bf16():
        if kind == "SE3Transformer":
            out = model(x, pos, KNN(8)(pos))
        else:
            result = model(x, pos)
            out = torch.cat([result.pos, result.x], dim=1)
    # the outputs are sums over edges (or positions plus such sums): accumulated in float32
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.abs().max() > 1e-2
    (out * torch.randn_like(out)).sum().backward()  # outside the autocast region, as recommended
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().max() > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


def test_bfloat16_autocast_equivariance_error_is_bounded(one_thread):
    """Relative equivariance error over 10 random rotations (and translations, for the iterative model) under
    bfloat16 autocast, against the bounds above; the error of comparing with a *wrong* rotation (an independent
    random one) must be far larger, so that the bounds mean something. Only the models run under autocast: inputs
    and outputs are rotated in float64 (a rotation under autocast would be a bfloat16 matmul)."""
    x, pos = inputs(torch.float64)
    torch.manual_seed(2)
    rotations, wrong = o3.rand_matrix(10, dtype=torch.float64), o3.rand_matrix(10, dtype=torch.float64)
    shifts = torch.randn(10, 3, dtype=torch.float64)
    se3, it = se3_transformer(), iterative()
    edge_index = KNN(8)(pos)

    def run(model, x, pos, *args):
        with torch.no_grad(), bf16():
            return model(x.float(), pos.float(), *args)

    out, moved = run(se3, x, pos, edge_index).double(), run(it, x, pos)
    moved_pos, moved_x = moved.pos.double(), moved.x.double()
    assert (moved_pos - pos).norm(dim=-1).mean() > 0.1 * median_neighbour_distance(pos)  # the points move
    errors = {name: [] for name in BOUNDS}
    broken = {name: [] for name in BOUNDS}
    # a hand loop, not pyg_se3.testing.assert_equivariant: each rotation is also compared with a wrong one (W)
    for R, W, t in zip(rotations, wrong, shifts, strict=True):
        x_rotated = FIBER_IO.rotate(x, R)
        rotated = run(se3, x_rotated, pos @ R.T, edge_index).double()
        errors["SE3Transformer"].append(relative_error(rotated, FIBER_IO.rotate(out, R)))
        broken["SE3Transformer"].append(relative_error(rotated, FIBER_IO.rotate(out, W)))
        result = run(it, x_rotated, pos @ R.T + t)
        for name, got, want, fiber in [
            ("iterative positions", result.pos.double() - t, moved_pos, None),
            ("iterative hidden", result.x.double(), moved_x, FIBER_HIDDEN),
        ]:
            errors[name].append(relative_error(got, fiber.rotate(want, R) if fiber else want @ R.T))
            broken[name].append(relative_error(got, fiber.rotate(want, W) if fiber else want @ W.T))
    for name, bound in BOUNDS.items():
        assert max(errors[name]) <= bound, (name, max(errors[name]))
        assert min(broken[name]) > 3 * bound, (name, min(broken[name]))


def test_autocast_leaves_float64_models_and_the_basis_exact(one_thread):
    """Autocast casts float32 matrix products only: a float64 model computes exactly what it computes without
    autocast (values and gradients), and the basis stays float32, identical to the basis without autocast."""
    x, pos = inputs(torch.float64)
    edge_index = KNN(8)(pos)
    model = se3_transformer().double()
    results = []
    for enabled in (False, True):
        p = pos.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = model(x, p, edge_index)
        grads = torch.autograd.grad(out.square().sum(), [p, *model.parameters()])
        results.append((out, grads))
    (out_a, grads_a), (out_b, grads_b) = results
    assert out_b.dtype == torch.float64 and torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))

    pos32 = pos.float()
    plain = compute_basis(pos32, edge_index, 2)
    with bf16():
        autocast = compute_basis(pos32, edge_index, 2)
    assert all(b.dtype == torch.float32 for b in autocast.pairs.values())
    assert all(torch.equal(plain[pair], autocast[pair]) for pair in plain.pairs)
    assert torch.equal(plain.rel_pos, autocast.rel_pos) and torch.equal(plain.dist, autocast.dist)
