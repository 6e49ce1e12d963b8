"""``parity=True``: kernels with only the terms that respect parity, and layers and models equivariant under
reflections too (E(3)), in float64; the same layers without it are not."""

import pytest
import torch
from e3nn import o3
from helpers import random_features, random_graph, relative_error, unzero_displacements

from pyg_se3 import Fiber, compute_basis
from pyg_se3.basis import num_J
from pyg_se3.graph import KNN
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import EdgeKernel, SE3Attention, SE3Conv
from pyg_se3.testing import POSITIONS, assert_equivariant

MAX_DEGREE = 3
FIBER_IN = Fiber({0: 2, 1: 2, 2: 1})
FIBER_OUT = Fiber({0: 4, 1: 4, 2: 4})
SMALL = {"radial_hidden": 8, "radial_layers": 1}
BROKEN_REFLECTION = r"^reflection \(with translation\) equivariance failed"


@pytest.mark.parametrize("parity, expected", [(False, [1, 3, 5, 7]), (True, [1, 2, 3, 4])])
def test_number_of_frequencies(parity, expected):
    assert [num_J(k, 3, parity) for k in range(4)] == expected
    assert all(num_J(k, l, parity) == num_J(l, k, parity) for k in range(4) for l in range(4))


def test_the_parity_basis_is_the_even_terms_of_the_full_one(device):
    pos, edge_index = (t.to(device) for t in random_graph(7, 25))
    full = compute_basis(pos, edge_index, MAX_DEGREE)
    even = compute_basis(pos, edge_index, MAX_DEGREE, parity=True)
    assert even.parity and not full.parity
    for (k, l), B in full.pairs.items():
        B = B.view(-1, 2 * k + 1, num_J(k, l), 2 * l + 1)
        kept = [index for index, J in enumerate(range(abs(k - l), k + l + 1)) if (k + l + J) % 2 == 0]
        actual = even[(k, l)].view(-1, 2 * k + 1, num_J(k, l, True), 2 * l + 1)
        torch.testing.assert_close(actual, B[:, :, kept], rtol=0, atol=1e-14)


def test_under_inversion_the_parity_basis_changes_sign_as_its_degrees_do(device):
    # B_J(-r) = (-1)^J B_J(r): with k + l + J even, the sign of a true tensor of degree k mapped to degree l
    pos, edge_index = (t.to(device) for t in random_graph(7, 25))
    for parity in (True, False):
        basis = compute_basis(pos, edge_index, MAX_DEGREE, parity=parity)
        inverted = compute_basis(-pos, edge_index, MAX_DEGREE, parity=parity)
        errors = {(k, l): relative_error(inverted[(k, l)], (-1) ** (k + l) * B) for (k, l), B in basis.pairs.items()}
        if parity:
            assert max(errors.values()) == 0
        else:  # the odd terms (the cross product for k = l = 1) change sign the other way
            assert errors[(1, 1)] > 0.1


def test_the_parity_basis_is_differentiable(device):
    pos, edge_index = random_graph(5, 12)
    pos = pos.to(device).requires_grad_(True)

    def blocks(p):
        return torch.cat([b.flatten() for b in compute_basis(p, edge_index.to(device), 2, parity=True).pairs.values()])

    assert torch.autograd.gradcheck(blocks, (pos,))


def layers():
    return {
        "conv": lambda parity: SE3Conv(FIBER_IN, FIBER_OUT, parity=parity, **SMALL),
        "conv_depthwise": lambda parity: SE3Conv(FIBER_IN, FIBER_OUT, parity=parity, kernel="depthwise", **SMALL),
        "conv_relative_position": lambda parity: SE3Conv(
            FIBER_IN, FIBER_OUT, parity=parity, relative_position=True, **SMALL
        ),
        "attention": lambda parity: SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2, parity=parity, **SMALL),
        "transformer": lambda parity: SE3Transformer(
            FIBER_IN, FIBER_OUT, FIBER_OUT, num_layers=2, num_heads=2, parity=parity, **SMALL
        ),
    }


@pytest.mark.parametrize("name", list(layers()))
def test_layers_and_models_with_parity_are_equivariant_under_reflections(name, device, num_rotations):
    torch.manual_seed(0)
    layer = layers()[name](True).double().to(device)
    errors = assert_equivariant(layer, FIBER_IN, FIBER_OUT, parity=True, num_rotations=min(5, num_rotations))
    assert errors.reflection <= 1e-10
    torch.manual_seed(0)
    with pytest.raises(AssertionError, match=BROKEN_REFLECTION):  # and without parity they are not
        assert_equivariant(layers()[name](False).double().to(device), FIBER_IN, FIBER_OUT, parity=True)


@pytest.mark.parametrize("integrator", ["position", "velocity"])
def test_the_iterative_model_with_parity_is_equivariant_under_reflections_through_rebuilds(integrator, num_rotations):
    # the initial velocities ride in x as a second type-1 channel, so that they transform with the inputs
    fiber_in, fiber_hidden = Fiber({0: 1, 1: 1}), Fiber({0: 4, 1: 4, 2: 4})
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, fiber_in.dim + 3, generator=g, dtype=torch.float64)
    pos = torch.randn(10, 3, generator=g, dtype=torch.float64)

    def call(module, x, pos, edge_index):  # the model builds its own kNN graphs, rebuilt every iteration
        vel = x[:, fiber_in.dim :] if integrator == "velocity" else None
        out = module(x[:, : fiber_in.dim], pos, vel=vel)
        return {"pos": out.pos, "x": out.x, "trajectory": out.trajectory}

    kinds = {"pos": POSITIONS, "x": fiber_hidden, "trajectory": POSITIONS}
    for parity in (True, False):
        torch.manual_seed(0)
        model = IterativeSE3Transformer(
            fiber_in,
            fiber_hidden,
            num_iterations=3,
            graph=KNN(k=4),
            num_heads=2,
            integrator=integrator,
            dt=0.25,
            displacement_scale=0.3,
            parity=parity,
            **SMALL,
        )
        model = unzero_displacements(model.double())
        check = {"x": x, "pos": pos, "call": call, "parity": True, "num_rotations": min(5, num_rotations)}
        if parity:
            errors = assert_equivariant(model, Fiber({0: 1, 1: 2}), kinds, rtol=1e-12, atol=0, **check)
            assert errors.reflection <= 1e-12
        else:
            with pytest.raises(AssertionError, match=BROKEN_REFLECTION):
                assert_equivariant(model, Fiber({0: 1, 1: 2}), kinds, **check)


def test_parity_drops_the_radial_weights_of_the_odd_terms():
    full, even = EdgeKernel(FIBER_IN, FIBER_OUT), EdgeKernel(FIBER_IN, FIBER_OUT, parity=True)
    for l, c_out in FIBER_OUT:
        assert even.fan_in[l] == sum(c * num_J(k, l, True) for k, c in FIBER_IN)
        assert [h.out_features for h in even.radial.heads][FIBER_OUT.degrees.index(l)] == c_out * even.fan_in[l]
    assert sum(p.numel() for p in even.parameters()) < sum(p.numel() for p in full.parameters())


def test_a_basis_of_the_other_parity_is_an_error_naming_it():
    pos, edge_index = random_graph(6, 15)
    x = random_features(FIBER_IN, 6)
    for parity, kernel in ((True, "full"), (False, "full"), (True, "depthwise"), (False, "depthwise")):
        layer = SE3Conv(FIBER_IN, FIBER_OUT, parity=parity, kernel=kernel).double()
        basis = compute_basis(pos, edge_index, MAX_DEGREE, parity=not parity)
        with pytest.raises(ValueError, match=f"basis: computed with parity={not parity}, the kernel has parity"):
            layer(x, None, edge_index, basis=basis)
        with pytest.raises(ValueError, match=f"basis: computed with parity={not parity}, the kernel has parity"):
            layer.kernel.radial_weights(basis, None)
        layer(x, None, edge_index, basis=compute_basis(pos, edge_index, MAX_DEGREE, parity=parity))
    with pytest.raises(ValueError, match="parity: expected True or False"):
        compute_basis(pos, edge_index, 1, parity=1)
    with pytest.raises(ValueError, match="parity: expected True or False"):
        SE3Conv(FIBER_IN, FIBER_OUT, parity="yes")


def test_parity_is_in_the_repr():
    assert "parity=True" in repr(SE3Conv(FIBER_IN, FIBER_OUT, parity=True))
    assert "parity" not in repr(SE3Conv(FIBER_IN, FIBER_OUT))
    assert "parity=True" in repr(SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2, parity=True))
    assert "parity=True" in repr(IterativeSE3Transformer(FIBER_IN, FIBER_OUT, num_heads=2, parity=True))


def test_improper_wigner_matrices_are_those_of_natural_parity():
    R = o3.rand_matrix(dtype=torch.float64)
    for l in range(5):
        assert torch.equal(Fiber({l: 1}).D_from_matrix(-R), (-1) ** l * Fiber({l: 1}).D_from_matrix(R))
