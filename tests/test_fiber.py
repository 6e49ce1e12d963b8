import pytest
import torch
from e3nn import o3
from helpers import random_rotations

from pyg_se3 import Fiber
from pyg_se3.fiber import wigner_D


def test_dim_irreps_and_structure():
    f = Fiber({2: 4, 0: 16, 1: 8})
    assert f.dim == 16 * 1 + 8 * 3 + 4 * 5
    assert f.irreps == o3.Irreps("16x0e+8x1o+4x2e")
    assert f.degrees == (0, 1, 2)
    assert f[1] == 8 and f[3] == 0
    assert list(f) == [(0, 16), (1, 8), (2, 4)]
    assert Fiber.create(3, 5) == Fiber({0: 5, 1: 5, 2: 5})
    assert Fiber.from_irreps("16x0e+8x1o+4x2e") == f
    assert Fiber({0: 2, 1: 3}) + Fiber({1: 1, 2: 4}) == Fiber({0: 2, 1: 4, 2: 4})


@pytest.mark.parametrize(
    "structure, message",
    [({0: 0}, "channels"), ({-1: 3}, "degrees"), ([(0, 1), (0, 2)], "twice"), ([(0, 1, 2)], "pairs")],
)
def test_bad_structure(structure, message):
    with pytest.raises(ValueError, match=message):
        Fiber(structure)


def test_from_irreps_rejects_pseudo_vectors():
    with pytest.raises(ValueError, match="irreps"):
        Fiber.from_irreps("1e")


def test_D_is_block_diagonal_wigner_and_type1_is_R():
    f = Fiber({0: 2, 1: 2, 2: 1, 3: 1})
    for R in random_rotations(5):
        D = f.D_from_matrix(R)
        assert D.shape == (f.dim, f.dim)
        torch.testing.assert_close(D @ D.T, torch.eye(f.dim, dtype=D.dtype), atol=1e-13, rtol=0)
        sl = f.offsets()[1]
        torch.testing.assert_close(D[sl, sl][:3, :3], R, atol=0, rtol=0)  # type-1 is R on (x, y, z)
        # block diagonal, one Wigner block per channel; same convention as e3nn (whose own
        # D_from_matrix goes through Euler angles and is only good to ~1e-6)
        expected = torch.block_diag(*[o3.Irrep(l, (-1) ** l).D_from_matrix(R) for l, c in f for _ in range(c)])
        torch.testing.assert_close(D, expected, atol=1e-5, rtol=0)
        assert D[(expected == 0)].abs().max() == 0


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_wigner_D_is_an_exact_representation(degree):
    R1, R2 = random_rotations(2)
    D1, D2, D12 = wigner_D(degree, R1), wigner_D(degree, R2), wigner_D(degree, R1 @ R2)
    torch.testing.assert_close(D12, D1 @ D2, atol=1e-14, rtol=0)
    torch.testing.assert_close(D1 @ D1.T, torch.eye(2 * degree + 1, dtype=D1.dtype), atol=1e-14, rtol=0)
    assert abs(torch.linalg.det(D1) - 1) < 1e-13
    # any memory layout of R (a QR factor is column-major)
    torch.testing.assert_close(wigner_D(degree, R1.T.contiguous().T), D1, atol=0, rtol=0)


def test_type1_features_rotate_like_positions():
    f = Fiber({1: 1})
    v = torch.randn(7, 3, dtype=torch.float64)
    R = random_rotations(1)[0]
    torch.testing.assert_close(f.rotate(v, R), v @ R.T)


def test_spherical_harmonics_rotate_with_D():
    """Our features and e3nn's harmonics share one convention: Y(R r) = D(R) Y(r)."""
    f = Fiber({0: 1, 1: 1, 2: 1, 3: 1})
    r = torch.randn(10, 3, dtype=torch.float64)
    R = random_rotations(1)[0]
    Y = o3.spherical_harmonics([0, 1, 2, 3], r, normalize=True)
    Y_rot = o3.spherical_harmonics([0, 1, 2, 3], r @ R.T, normalize=True)
    torch.testing.assert_close(Y_rot, f.rotate(Y, R), atol=1e-13, rtol=0)
    torch.testing.assert_close(Y_rot, Y @ f.D_from_matrix(R).T, atol=1e-13, rtol=0)


def test_split_join_roundtrip_and_layout():
    f = Fiber({0: 2, 1: 3, 2: 1})
    x = torch.arange(f.dim, dtype=torch.float64).expand(4, -1)
    blocks = f.split(x)
    assert blocks[1].shape == (4, 3, 3)
    # channel-major: channel 1 of degree 1 is components 2 + 3 .. 2 + 6
    assert blocks[1][0, 1].tolist() == [5.0, 6.0, 7.0]
    torch.testing.assert_close(f.join(blocks), x)


def test_cat_interleaves_per_degree():
    a, b = Fiber({0: 1, 1: 1}), Fiber({1: 2, 2: 1})
    xa, xb = torch.randn(3, a.dim), torch.randn(3, b.dim)
    out = Fiber.cat(xa, a, xb, b)
    merged = a + b
    blocks = merged.split(out)
    torch.testing.assert_close(blocks[0], a.split(xa)[0])
    torch.testing.assert_close(blocks[1], torch.cat([a.split(xa)[1], b.split(xb)[1]], dim=-2))
    torch.testing.assert_close(blocks[2], b.split(xb)[2])


def test_width_mismatch_names_argument():
    with pytest.raises(ValueError, match="x: expected last dimension 4"):
        Fiber({0: 1, 1: 1}).split(torch.randn(3, 5))
    with pytest.raises(ValueError, match="R:"):
        Fiber({1: 1}).D_from_matrix(torch.eye(2))


def test_embed_places_a_sub_fiber_and_zero_fills():
    target, source = Fiber({0: 2, 1: 1, 2: 1}), Fiber({0: 2, 2: 1})
    x = torch.randn(3, source.dim)
    out = target.split(target.embed(x, source))
    torch.testing.assert_close(out[0], source.split(x)[0])
    torch.testing.assert_close(out[2], source.split(x)[2])
    assert out[1].abs().max() == 0
    with pytest.raises(ValueError, match=r"source: .* is not a sub-fiber"):
        target.embed(torch.randn(3, 3), Fiber({0: 3}))
