import pytest
import torch
from e3nn import o3
from helpers import random_graph, random_rotations, relative_error

from pyg_se3 import compute_basis
from pyg_se3.basis import clebsch_gordan_block, edge_harmonics, num_J
from pyg_se3.fiber import wigner_D

MAX_DEGREE = 3


def D(l, R):
    return wigner_D(l, R)


def test_basis_matches_definition(device):
    """basis[(k, l)][e, m, (J, o)] = sqrt(2l+1) sum_M Y_JM(r_hat) wigner_3j(l, k, J)[o, m, M]."""
    pos, edge_index = (t.to(device) for t in random_graph(6, 15))
    basis = compute_basis(pos, edge_index, MAX_DEGREE)
    r = pos[edge_index[0]] - pos[edge_index[1]]
    for k in range(MAX_DEGREE + 1):
        for l in range(MAX_DEGREE + 1):
            parts = []
            for J in range(abs(k - l), k + l + 1):
                Y = o3.spherical_harmonics(J, r, normalize=True, normalization="component")
                parts.append(torch.einsum("eM,omM->emo", Y, o3.wigner_3j(l, k, J, dtype=r.dtype, device=device)))
            expected = torch.stack(parts, dim=2).flatten(2) * (2 * l + 1) ** 0.5
            torch.testing.assert_close(basis[(k, l)], expected, atol=1e-12, rtol=0)
            assert basis[(k, l)].shape == (15, 2 * k + 1, num_J(k, l) * (2 * l + 1))


def test_relative_position_is_source_minus_target(device):
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], dtype=torch.float64, device=device)
    basis = compute_basis(pos, torch.tensor([[1], [0]], device=device), 0)
    torch.testing.assert_close(basis.rel_pos, torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, device=device))
    torch.testing.assert_close(basis.dist, torch.tensor([[14.0**0.5]], dtype=torch.float64, device=device))


def test_basis_is_equivariant(device):
    """B^{lk}(R r) = D^l(R) B^{lk}(r) D^k(R)^T for every J, 20 random rotations."""
    pos, edge_index = (t.to(device) for t in random_graph(8, 30))
    basis = compute_basis(pos, edge_index, MAX_DEGREE)
    for R in random_rotations().to(device):
        rotated = compute_basis(pos @ R.T, edge_index, MAX_DEGREE)
        for (k, l), B in basis.pairs.items():
            B = B.view(-1, 2 * k + 1, num_J(k, l), 2 * l + 1)
            expected = torch.einsum("ab,ebJc,dc->eaJd", D(k, R), B, D(l, R))
            actual = rotated[(k, l)].view_as(B)
            assert relative_error(actual, expected) < 1e-12


def test_basis_is_translation_invariant(device):
    pos, edge_index = (t.to(device) for t in random_graph(8, 30))
    a = compute_basis(pos, edge_index, 2)
    b = compute_basis(pos + torch.tensor([3.0, -1.0, 7.5], dtype=pos.dtype, device=device), edge_index, 2)
    for pair in a.pairs:
        torch.testing.assert_close(a[pair], b[pair], atol=1e-13, rtol=0)


def test_basis_gradcheck_wrt_positions(device):
    pos, edge_index = (t.to(device) for t in random_graph(5, 12))
    pos.requires_grad_(True)

    def fn(p):
        basis = compute_basis(p, edge_index, 2)
        return tuple(basis.pairs.values())

    # CUDA's atomic scatter-adds may sum in another order on the second backward pass that gradcheck runs to check
    # reentrancy; the CPU's backward is deterministic (exact, as before)
    nondet_tol = 0.0 if device.type == "cpu" else 1e-10
    assert torch.autograd.gradcheck(fn, (pos,), nondet_tol=nondet_tol)


def test_detach_cuts_gradient():
    pos, edge_index = random_graph(5, 12)
    pos.requires_grad_(True)
    assert compute_basis(pos, edge_index, 1)[(1, 1)].requires_grad
    assert not compute_basis(pos, edge_index, 1, detach=True)[(1, 1)].requires_grad


def test_zero_length_edges_are_finite(device):
    pos = torch.zeros(3, 3, dtype=torch.float64, device=device, requires_grad=True)
    edge_index = torch.tensor([[0, 1, 2, 0], [1, 2, 0, 0]], device=device)
    basis = compute_basis(pos, edge_index, MAX_DEGREE)
    total = sum(B.sum() for B in basis.pairs.values())
    total.backward()
    assert all(torch.isfinite(B).all() for B in basis.pairs.values())
    assert torch.isfinite(pos.grad).all()
    # Y_0 = 1, Y_J = 0 for J > 0 at r = 0: only the J = 0 part of (k, k) survives
    sh = edge_harmonics(basis.rel_pos, 2 * MAX_DEGREE)
    torch.testing.assert_close(sh[:, 0], torch.ones(4, dtype=torch.float64, device=device))
    assert sh[:, 1:].abs().max() == 0


def test_clebsch_gordan_cached_in_memory():
    a = clebsch_gordan_block(2, 3, torch.float64, torch.device("cpu"))
    b = clebsch_gordan_block(2, 3, torch.float64, torch.device("cpu"))
    assert a is b


def test_max_degree_too_small_is_a_clear_error():
    pos, edge_index = random_graph(4, 6)
    basis = compute_basis(pos, edge_index, 1)
    with pytest.raises(ValueError, match="basis: it was computed up to degree 1"):
        basis[(2, 0)]


def test_edge_harmonics_are_e3nns_of_the_directions_and_build_the_blocks():
    pos, edge_index = random_graph(6, 15)
    basis = compute_basis(pos, edge_index, 2)
    sh = edge_harmonics(basis.rel_pos, 4)
    expected = o3.spherical_harmonics(list(range(5)), basis.rel_pos, normalize=True, normalization="component")
    torch.testing.assert_close(sh, expected, rtol=1e-13, atol=1e-13)
    # the (1, 1) block is Y of degrees 0..2 times the Clebsch-Gordan coefficients
    block = (sh[:, :9] @ clebsch_gordan_block(1, 1, torch.float64, torch.device("cpu"))).view(-1, 3, 9)
    torch.testing.assert_close(basis[(1, 1)], block, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="max_degree"):
        edge_harmonics(basis.rel_pos, -1)
