"""``pyg_se3.runtime.features``: centre-of-mass velocities, pair invariants, softened inverse distances (float64)."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from pyg_se3.graph import complete_edge_index
from pyg_se3.runtime.features import pair_motion, relative_velocity, softened_inverse_distance


def _systems():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pos = torch.randn(9, 3, dtype=torch.float64)
    vel = torch.randn(9, 3, dtype=torch.float64)
    mass = torch.rand(9, dtype=torch.float64) + 0.5
    return pos, vel, mass, batch


def test_relative_velocity_removes_each_systems_centre_of_mass_velocity():
    _, vel, mass, batch = _systems()
    out = relative_velocity(vel, batch, mass)
    for g in range(3):
        rows = batch == g
        centre = (mass[rows, None] * vel[rows]).sum(0) / mass[rows].sum()
        torch.testing.assert_close(out[rows], vel[rows] - centre, rtol=1e-14, atol=1e-14)
    # equal masses by default: the plain mean; one system without batch
    torch.testing.assert_close(relative_velocity(vel[:3]), vel[:3] - vel[:3].mean(0), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(relative_velocity(vel, batch, mass.unsqueeze(-1)), out, rtol=0, atol=0)


def test_pair_motion_values_and_invariance_under_rotation_translation_and_boost():
    pos, vel, _, batch = _systems()
    edge_index = complete_edge_index(batch)
    out = pair_motion(pos, vel, edge_index)
    for k, (j, i) in enumerate(edge_index.t().tolist()):
        r, v = pos[j] - pos[i], vel[j] - vel[i]
        assert out[k].tolist() == pytest.approx([float(r.norm()), float(r @ v / r.norm()), float(v.norm())], rel=1e-13)
    # by hand: a function of (pos, vel), invariant under a boost of the velocities too (not assert_equivariant's)
    R = o3.rand_matrix(dtype=torch.float64)
    shift, boost = torch.randn(2, 3, dtype=torch.float64)
    moved = pair_motion(pos @ R.T + shift, vel @ R.T + boost, edge_index)
    torch.testing.assert_close(moved, out, rtol=1e-12, atol=1e-12)
    # the radial speed is positive for separating pairs, negative for approaching ones
    approaching = pair_motion(pos, -vel, edge_index)
    torch.testing.assert_close(approaching[:, 1], -out[:, 1], rtol=0, atol=1e-15)


def test_pair_motion_of_coincident_particles_is_finite():
    pos = torch.zeros(2, 3, dtype=torch.float64)
    vel = torch.tensor([[1.0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    out = pair_motion(pos, vel, torch.tensor([[0], [1]]))
    assert out.tolist() == [[0.0, 0.0, 1.0]]


def test_softened_inverse_distance_values_limits_and_invariance():
    pos, _, _, batch = _systems()
    edge_index = complete_edge_index(batch)
    out = softened_inverse_distance(pos, edge_index, 0.2)
    assert out.shape == (edge_index.shape[1], 1)
    for k, (j, i) in enumerate(edge_index.t().tolist()):
        assert float(out[k]) == pytest.approx(float(((pos[j] - pos[i]).norm() ** 2 + 0.04) ** -0.5), rel=1e-14)
    R, shift = o3.rand_matrix(dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(softened_inverse_distance(pos @ R.T + shift, edge_index, 0.2), out, rtol=1e-13, atol=0)
    # coincident particles: 1 / s; far apart: the inverse distance
    pair = torch.tensor([[0], [1]])
    assert softened_inverse_distance(torch.zeros(2, 3, dtype=torch.float64), pair, 0.2).item() == pytest.approx(5.0)
    far = torch.tensor([[0.0, 0, 0], [1e4, 0, 0]], dtype=torch.float64)
    assert softened_inverse_distance(far, pair, 0.2).item() == pytest.approx(1e-4, rel=1e-9)


def test_softened_inverse_distance_powers():
    """Column ``k - 1`` is the ``k``-th power of the softened inverse distance; the first is the default's."""
    pos, _, _, batch = _systems()
    edge_index = complete_edge_index(batch)
    out = softened_inverse_distance(pos, edge_index, 0.2, powers=3)
    assert out.shape == (edge_index.shape[1], 3)
    assert torch.equal(out[:, :1], softened_inverse_distance(pos, edge_index, 0.2))
    for k, (j, i) in enumerate(edge_index.t().tolist()):
        squared = float((pos[j] - pos[i]).norm() ** 2 + 0.04)
        assert out[k].tolist() == pytest.approx([squared**-0.5, squared**-1, squared**-1.5], rel=1e-14)
    pair = torch.tensor([[0], [1]])
    coincident = softened_inverse_distance(torch.zeros(2, 3, dtype=torch.float64), pair, 0.2, powers=2)
    assert coincident[0].tolist() == pytest.approx([5.0, 25.0])
    scaled = softened_inverse_distance(pos, edge_index, 0.2, powers=3, scaled=True)
    torch.testing.assert_close(scaled, out * torch.tensor([0.2, 0.04, 0.008], dtype=out.dtype), rtol=1e-14, atol=0)
    assert bool((scaled > 0).all() and (scaled <= 1).all())
    coincident = softened_inverse_distance(torch.zeros(2, 3, dtype=torch.float64), pair, 0.2, powers=2, scaled=True)
    assert coincident[0].tolist() == pytest.approx([1.0, 1.0])
    for powers in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="powers: expected an integer >= 1"):
            softened_inverse_distance(pos, edge_index, 0.2, powers=powers)


def test_bad_inputs_name_the_argument():
    pos, vel, mass, batch = _systems()
    with pytest.raises(ValueError, match=r"vel: expected a \[N, 3\] tensor of velocities"):
        relative_velocity(vel[:, :2], batch)
    with pytest.raises(ValueError, match="vel: contains NaN or inf"):
        relative_velocity(torch.full_like(vel, float("nan")), batch)
    with pytest.raises(ValueError, match=r"batch: expected a long tensor of shape \[9\]"):
        relative_velocity(vel, batch[:4])
    with pytest.raises(ValueError, match=r"mass: expected shape \[9\] or \[9, 1\]"):
        relative_velocity(vel, batch, mass[:3])
    with pytest.raises(ValueError, match="mass: expected positive masses"):
        relative_velocity(vel, batch, -mass)
    with pytest.raises(ValueError, match="vel: expected 9 rows"):
        pair_motion(pos, vel[:5], complete_edge_index(batch))
    with pytest.raises(ValueError, match=r"edge_index: node indices must lie in \[0, 9\)"):
        pair_motion(pos, vel, torch.tensor([[0], [9]]))
    for softening in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softening: expected a positive finite length"):
            softened_inverse_distance(pos, complete_edge_index(batch), softening)
