"""``IterativeSE3Transformer(integrator="velocity")``: a velocity carried between iterations, positions following."""

from __future__ import annotations

import pytest
import torch
from helpers import relative_error, unzero_displacements

from pyg_se3 import Fiber
from pyg_se3.graph import KNN, Complete
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.testing import POSITIONS, assert_equivariant

FIBER_IN, FIBER_HIDDEN = Fiber({0: 1, 1: 1}), Fiber({0: 4, 1: 4})
SMALL = dict(layers_per_iteration=2, num_heads=2, radial_hidden=8)


def make_model(graph=None, num_iterations=3, dt=0.25, share_weights=False, moving=True, **kwargs):
    torch.manual_seed(0)
    model = IterativeSE3Transformer(
        FIBER_IN,
        FIBER_HIDDEN,
        num_iterations=num_iterations,
        graph=graph if graph is not None else KNN(k=3),
        share_weights=share_weights,
        integrator="velocity",
        dt=dt,
        displacement_scale=0.3,
        **SMALL,
        **kwargs,
    ).double()
    return unzero_displacements(model) if moving else model


def two_systems(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.tensor([0] * 6 + [1] * 5)
    pos = torch.randn(11, 3, generator=g, dtype=torch.float64)
    vel = torch.randn(11, 3, generator=g, dtype=torch.float64)
    x = torch.randn(11, FIBER_IN.dim, generator=g, dtype=torch.float64)
    return x, pos, vel, batch


@torch.no_grad()
def test_an_untrained_model_is_linear_extrapolation():
    x, pos, vel, batch = two_systems()
    model = make_model(moving=False, num_iterations=4, dt=0.25)
    out = model(x, pos, batch, vel=vel)
    assert relative_error(out.pos, pos + 4 * 0.25 * vel) < 1e-15
    assert torch.equal(out.vel, vel)
    for t, step in enumerate(out.trajectory):
        assert relative_error(step, pos + t * 0.25 * vel) < 1e-15


@torch.no_grad()
def test_the_positions_follow_the_carried_velocity():
    # x_{t+1} - x_t = dt v_{t+1}: the velocity implied by the trajectory changes by the blocks' updates and ends
    # at out.vel
    x, pos, vel, batch = two_systems()
    out = make_model(dt=0.5)(x, pos, batch, vel=vel)
    steps = [(b - a) / 0.5 for a, b in zip(out.trajectory[:-1], out.trajectory[1:], strict=True)]
    assert relative_error(steps[-1], out.vel) < 1e-13
    assert float((steps[0] - vel).norm()) > 1e-3  # the first block changed the velocity
    assert float((steps[-1] - steps[0]).norm()) > 1e-3  # and the others too


@pytest.mark.parametrize("share_weights", [False, True])
def test_equivariant_under_rotations_and_translations_through_rebuilds(share_weights, num_rotations):
    # the initial velocities ride in x as a second type-1 channel, so that they rotate with the inputs
    x, pos, vel, _ = two_systems(1)
    model = make_model(share_weights=share_weights)

    def call(module, x, pos, edge_index):  # the model builds its own graphs (kNN, rebuilt every iteration)
        out = module(x[:, : FIBER_IN.dim], pos, vel=x[:, FIBER_IN.dim :].reshape(-1, 3))
        return {"pos": out.pos, "vel": out.vel, "x": out.x, "trajectory": out.trajectory}

    with torch.no_grad():
        out = call(model, torch.cat([x, vel], dim=-1), pos, None)
    assert float((out["pos"] - pos - 3 * 0.25 * vel).norm()) > 1e-2  # the model is not the linear baseline
    kinds = {"pos": POSITIONS, "vel": Fiber({1: 1}), "x": FIBER_HIDDEN, "trajectory": POSITIONS}
    assert_equivariant(
        model,
        Fiber({0: 1, 1: 2}),  # FIBER_IN, then the velocity
        kinds,
        x=torch.cat([x, vel], dim=-1),
        pos=pos,
        call=call,
        num_rotations=num_rotations,
        rtol=1e-12,
        atol=0,
    )


@torch.no_grad()
def test_a_boost_the_blocks_do_not_see_shifts_the_output_by_the_boost_times_the_duration():
    x, pos, vel, batch = two_systems(2)
    model = make_model(graph=Complete(), num_iterations=3, dt=0.2)
    boost = torch.randn(2, 3, dtype=torch.float64)[batch]  # one per system
    out, boosted = model(x, pos, batch, vel=vel), model(x, pos, batch, vel=vel + boost)
    # the graph is complete and x does not carry the boost: every iteration sees the same relative geometry,
    # shifted by boost * t * dt, so the updates are equal and the output moves by boost * 3 * dt
    assert relative_error(boosted.pos, out.pos + 3 * 0.2 * boost) < 1e-12
    assert relative_error(boosted.vel, out.vel + boost) < 1e-12


def test_gradients_reach_every_block_and_the_initial_velocity():
    x, pos, vel, batch = two_systems()
    model = make_model()
    vel = vel.clone().requires_grad_(True)
    model(x, pos, batch, vel=vel).pos.square().sum().backward()
    assert float(vel.grad.norm()) > 0
    for block in model.blocks:  # (the hidden outputs of the last block reach nothing: not every parameter)
        assert any(p.grad is not None and float(p.grad.norm()) > 0 for p in block.output.parameters())
        assert all(p.grad is not None and float(p.grad.norm()) > 0 for p in block.layers[0].parameters())


def test_velocity_arguments_are_checked():
    x, pos, vel, batch = two_systems()
    position_model = IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, num_iterations=1, **SMALL).double()
    with pytest.raises(ValueError, match="vel: only a model with integrator='velocity'"):
        position_model(x, pos, batch, vel=vel)
    model = make_model(share_weights=True).eval()
    with pytest.raises(ValueError, match=r"vel: expected the \[N, 3\] initial velocities"):
        model(x, pos, batch)
    with pytest.raises(ValueError, match="vel: expected 11 rows"):
        model(x, pos, batch, vel=vel[:5])
    with pytest.raises(ValueError, match="vel: expected the dtype of pos"):
        model(x, pos, batch, vel=vel.float())
    with pytest.raises(ValueError, match="tol: early stopping needs integrator='position'"):
        model(x, pos, batch, vel=vel, tol=1e-3)
    with pytest.raises(ValueError, match="integrator: expected 'position' or 'velocity', got 'leapfrog'"):
        IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, integrator="leapfrog")
    for dt in (0.0, -1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="dt: expected a finite number > 0"):
            IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, integrator="velocity", dt=dt)
    assert "integrator='velocity', dt=0.25" in repr(make_model(moving=False))
