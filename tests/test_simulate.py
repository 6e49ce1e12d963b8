"""The simulators behind the datasets: forces, conservation laws, equivariance, reproducibility."""

import math

import pytest
import torch
from helpers import random_rotations, relative_error

from pyg_se3.datasets import NBodyCharged, ParticleDynamics
from pyg_se3.datasets.simulate import (
    Coulomb,
    Gravity,
    LennardJones,
    correctly_rounded_sqrt,
    kick_drift,
    kinetic_energy,
    total_momentum,
    velocity_verlet,
)

F64 = torch.float64


def _random_system(batch: int, n: int, seed: int = 0, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    pos = spread * torch.randn(batch, n, 3, generator=g, dtype=F64)
    vel = 0.1 * torch.randn(batch, n, 3, generator=g, dtype=F64)
    mass = 0.5 + torch.rand(batch, n, generator=g, dtype=F64)
    return pos, vel, mass


def _energies(potential, traj, mass):
    """Total energy ``[B, F]`` along a trajectory (``potential`` built for masses ``[B, 1, N]``)."""
    return potential.potential_energy(traj.pos) + kinetic_energy(traj.vel, mass.unsqueeze(1))


def _grouped_default_simulations(split: str, num: int | None = None):
    """The first ``num`` (default: all) default ParticleDynamics simulations of a split, grouped by N:
    ``(config, [(mass, pos, vel)])``."""
    config = ParticleDynamics.make_config(split=split)
    groups: dict[int, list] = {}
    for state in ParticleDynamics.initial_conditions(config, num):
        groups.setdefault(state["mass"].numel(), []).append(state)
    stacked = [
        tuple(torch.stack([s[key] for s in group]) for key in ("mass", "pos", "vel")) for group in groups.values()
    ]
    return config, stacked


# ---------------------------------------------------------------------------------------------- forces
def test_two_body_forces_by_hand():
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 2.0]]], dtype=F64)
    mass = torch.tensor([[2.0, 3.0]], dtype=F64)
    # Gravity: |F| = G m1 m2 r / (r^2 + eps^2)^1.5 = 1.5 * 6 * 2 / (4.25)^1.5, attractive.
    f = Gravity(mass, G=1.5, softening=0.5).forces(pos)
    magnitude = 1.5 * 6.0 * 2.0 / 4.25**1.5
    torch.testing.assert_close(f, torch.tensor([[[0, 0, magnitude], [0, 0, -magnitude]]], dtype=F64))
    # Coulomb: like charges repel with q1 q2 / r^2 = 1/4; opposite charges attract.
    f = Coulomb(torch.tensor([[1.0, 1.0]], dtype=F64)).forces(pos)
    torch.testing.assert_close(f, torch.tensor([[[0, 0, -0.25], [0, 0, 0.25]]], dtype=F64))
    f = Coulomb(torch.tensor([[1.0, -1.0]], dtype=F64)).forces(pos)
    torch.testing.assert_close(f, torch.tensor([[[0, 0, 0.25], [0, 0, -0.25]]], dtype=F64))
    # Coulomb clipping acts per component: 1 / 0.05^2 = 400 is clipped to 100.
    close = torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, 0.05]]], dtype=F64)
    f = Coulomb(torch.tensor([[1.0, 1.0]], dtype=F64), clip=100.0).forces(close)
    torch.testing.assert_close(f, torch.tensor([[[0, 0, -100.0], [0, 0, 100.0]]], dtype=F64))
    # Lennard-Jones: zero force at the minimum 2^(1/6) sigma, repulsive inside, attractive outside.
    lj = LennardJones(epsilon=1.0, sigma=1.0)
    for r, sign in [(2 ** (1 / 6), 0.0), (1.0, -1.0), (1.5, 1.0)]:
        f = lj.forces(torch.tensor([[[0.0, 0.0, 0.0], [0.0, 0.0, r]]], dtype=F64))
        expected = 24 * (2 / r**13 - 1 / r**7)  # -dU/dr on the particle at +r
        torch.testing.assert_close(f[0, 1, 2], torch.tensor(expected, dtype=F64), atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(f[0, 0], -f[0, 1], atol=0, rtol=0)
        assert abs(float(f[0, 0, 2])) < 1e-12 if sign == 0 else torch.sign(f[0, 0, 2]) == sign


@pytest.mark.parametrize("kind", ["gravity", "lennard_jones", "coulomb"])
def test_forces_are_minus_gradient_of_potential(kind):
    pos, _, mass = _random_system(3, 6, spread=1.5)
    potential = {
        "gravity": Gravity(mass, G=1.0, softening=0.1),
        "lennard_jones": LennardJones(epsilon=0.7, sigma=0.6),
        "coulomb": Coulomb(torch.where(mass > 1.0, 1.0, -1.0).to(F64)),
    }[kind]
    x = pos.clone().requires_grad_()
    (grad,) = torch.autograd.grad(potential.potential_energy(x).sum(), x)
    torch.testing.assert_close(potential.forces(pos), -grad, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- integrators
@pytest.mark.slow
def test_velocity_verlet_energy_drift_over_whole_default_simulations():
    """The first two default ParticleDynamics simulations of every split, whole (200 saved steps of 25
    integrator steps each): the total energy stays within 1e-3 (relative) of its initial value at every
    integrator step. Measured: 2.5e-4 worst over all 200 simulations (a minute); every simulation is checked at
    its saved steps by ``test_datasets.py``."""
    worst = 0.0
    for split in ("train", "val", "test"):
        config, groups = _grouped_default_simulations(split, 2)
        for mass, pos, vel in groups:
            potential = ParticleDynamics.pair_potential(config, mass)
            steps = config["num_steps"][1] * config["substeps"]
            traj = velocity_verlet(pos, vel, mass, potential.forces, config["dt"], steps)
            energy = _energies(ParticleDynamics.pair_potential(config, mass.unsqueeze(1)), traj, mass)
            drift = ((energy - energy[:, :1]).abs().amax(1) / energy[:, 0].abs()).max()
            worst = max(worst, float(drift))
    assert worst < 1e-3, worst
    assert worst > 1e-8  # the check measures something: the integrator is not exact


def test_velocity_verlet_is_second_order():
    """Halving dt divides the energy error by ~4 (a first-order method would give ~2)."""
    pos, vel, mass = _random_system(1, 5, seed=3, spread=1.0)
    potential = Gravity(mass, G=1.0, softening=0.3)
    errors = []
    for dt, steps in [(0.02, 100), (0.01, 200)]:
        traj = velocity_verlet(pos, vel, mass, potential.forces, dt, steps)
        energy = _energies(Gravity(mass.unsqueeze(1), G=1.0, softening=0.3), traj, mass)
        errors.append(float((energy - energy[:, :1]).abs().max()))
    assert 3.0 < errors[0] / errors[1] < 5.0, errors


def test_velocity_verlet_is_time_reversible():
    pos, vel, mass = _random_system(2, 7, seed=4)
    potential = Gravity(mass, G=1.0, softening=0.2)
    forward = velocity_verlet(pos, vel, mass, potential.forces, 0.01, 100, save_every=100)
    back = velocity_verlet(forward.pos[:, -1], -forward.vel[:, -1], mass, potential.forces, 0.01, 100, save_every=100)
    torch.testing.assert_close(back.pos[:, -1], pos, atol=1e-10, rtol=0)
    torch.testing.assert_close(-back.vel[:, -1], vel, atol=1e-10, rtol=0)


def test_kick_drift_matches_the_reference_loop_by_hand():
    pos, vel, _ = _random_system(1, 4, seed=5)
    charge = torch.tensor([[1.0, -1.0, 1.0, -1.0]], dtype=F64)
    potential = Coulomb(charge, clip=100.0)
    dt = 0.001
    # Reference generator: v += dt F(x0); then for each step: x += dt v; save; v += dt F(x).
    x, v, saved = pos.clone(), vel + dt * potential.forces(pos), []
    for _ in range(6):
        x = x + dt * v
        saved.append((x, v))
        v = v + dt * potential.forces(x)
    traj = kick_drift(pos, vel, torch.ones_like(charge), potential.forces, dt, 6, save_every=3)
    assert traj.steps.tolist() == [3, 6]
    torch.testing.assert_close(traj.pos[:, 0], saved[2][0], atol=0, rtol=0)
    torch.testing.assert_close(traj.vel[:, 1], saved[5][1], atol=0, rtol=0)


def test_momentum_conserved_without_clipping():
    """Charged N-body: in every simulation where clipping never acts, total momentum is conserved to 1e-6
    (measured ~1e-14); where it acts, it is not (which is why the check is restricted)."""
    config = NBodyCharged.make_config(split="val", num_samples=120)
    initial = NBodyCharged.initial_conditions(config)
    clipped_pos, clipped_vel = NBodyCharged.simulate(config, initial)
    free_pos, free_vel = NBodyCharged.simulate(config | {"clip": None}, initial)
    unclipped = (clipped_pos == free_pos).flatten(1).all(1) & (clipped_vel == free_vel).flatten(1).all(1)
    assert 20 <= int(unclipped.sum()) < len(unclipped)  # both kinds occur in this sample
    momentum = clipped_vel.sum(-2)  # unit masses
    error = (momentum - initial["vel"].sum(-2).unsqueeze(1)).abs().flatten(1).amax(1)
    assert float(error[unclipped].max()) < 1e-6
    assert float(error[~unclipped].max()) > 1e-6
    # Gravity with unequal masses, no clipping at all: P = sum m v is conserved.
    pos, vel, mass = _random_system(4, 9, seed=6)
    traj = velocity_verlet(pos, vel, mass, Gravity(mass, softening=0.1).forces, 0.01, 200, save_every=20)
    p = total_momentum(traj.vel, mass.unsqueeze(1))
    assert float((p - p[:, :1]).abs().max()) < 1e-6 * float(p.abs().max())


@pytest.mark.parametrize("kind", ["gravity", "lennard_jones", "coulomb"])
def test_simulator_is_equivariant(kind):
    """A rotated and translated initial state gives the rotated and translated trajectory."""
    if kind == "lennard_jones":
        config = ParticleDynamics.make_config(potential="lennard_jones", num_simulations=2)
        states = ParticleDynamics.initial_conditions(config)[:1]
        pos, vel, mass = (states[0][key].unsqueeze(0) for key in ("pos", "vel", "mass"))
    else:
        pos, vel, mass = _random_system(3, 6, seed=7)
    make = {
        "gravity": lambda m: Gravity(m, softening=0.1).forces,
        "lennard_jones": lambda m: LennardJones().forces,
        "coulomb": lambda m: Coulomb(torch.where(m > 1.0, 1.0, -1.0).to(F64), clip=None).forces,
    }[kind]
    dt, steps = (0.001, 500) if kind == "coulomb" else (0.01, 100)
    reference = velocity_verlet(pos, vel, mass, make(mass), dt, steps, save_every=10)
    shift = torch.tensor([0.3, -1.2, 2.0], dtype=F64)
    # a hand loop: velocity_verlet is a function of (pos, vel, mass), not a module of (x, pos) for assert_equivariant
    for R in random_rotations(3):
        moved = velocity_verlet(pos @ R.T + shift, vel @ R.T, mass, make(mass), dt, steps, save_every=10)
        assert relative_error(moved.pos - shift, reference.pos @ R.T) < 1e-9
        assert relative_error(moved.vel, reference.vel @ R.T) < 1e-9


def test_batch_composition_does_not_change_a_single_bit():
    """What makes regeneration of a subset (and of the packaged files on any machine) exact."""
    pos, vel, mass = _random_system(5, 6, seed=8)
    potential = Gravity(mass, softening=0.1)
    together = velocity_verlet(pos, vel, mass, potential.forces, 0.01, 50, save_every=50)
    alone = velocity_verlet(
        pos[3:4], vel[3:4], mass[3:4], Gravity(mass[3:4], softening=0.1).forces, 0.01, 50, save_every=50
    )
    assert torch.equal(together.pos[3], alone.pos[0]) and torch.equal(together.vel[3], alone.vel[0])


def test_correctly_rounded_sqrt_is_the_ieee_square_root():
    """What makes regeneration exact across processors: every square root the simulators take is the correctly
    rounded one. Python's ``math.sqrt`` is; PyTorch's CPU ``sqrt`` (MKL) misses it for ~1 % of such values."""
    x = 100.0 * torch.rand(100_000, generator=torch.Generator().manual_seed(0), dtype=F64)
    expected = torch.tensor([math.sqrt(value) for value in x.tolist()], dtype=F64)
    assert torch.equal(correctly_rounded_sqrt(x), expected)
    assert torch.equal(correctly_rounded_sqrt(x[::3]), expected[::3])  # strided
    assert torch.equal(correctly_rounded_sqrt(x[5]), expected[5])  # 0-d
    # float32: the float64 root of a float32 rounded to float32 is the correctly rounded float32 root
    x32 = x.float()
    expected32 = torch.tensor([math.sqrt(value) for value in x32.tolist()], dtype=F64).float()
    assert torch.equal(correctly_rounded_sqrt(x32), expected32)
    assert correctly_rounded_sqrt(x32).dtype == torch.float32


def test_correctly_rounded_sqrt_gradient():
    x = (0.1 + torch.rand(7, generator=torch.Generator().manual_seed(1), dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(correctly_rounded_sqrt, (x,))
    (grad,) = torch.autograd.grad(correctly_rounded_sqrt(x).sum(), x)
    assert torch.allclose(grad, 0.5 / torch.sqrt(x.detach()), rtol=1e-15, atol=0)


def test_correctly_rounded_sqrt_rejects_other_dtypes():
    with pytest.raises(TypeError, match=r"x must be float32 or float64, got torch\.int64"):
        correctly_rounded_sqrt(torch.tensor([4]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"dt": 0.0}, "dt"), ({"dt": -0.1}, "dt"), ({"num_steps": -1}, "num_steps"), ({"save_every": 0}, "save_every")],
)
def test_integrator_rejects_bad_arguments(kwargs, message):
    pos, vel, mass = _random_system(1, 3)
    arguments = {"dt": 0.01, "num_steps": 2, "save_every": 1} | kwargs
    for integrator in (velocity_verlet, kick_drift):
        with pytest.raises(ValueError, match=message):
            integrator(pos, vel, mass, Gravity(mass).forces, **arguments)
    with pytest.raises(ValueError, match="mass"):
        velocity_verlet(pos, vel, -mass, Gravity(mass).forces, 0.01, 1)


def test_correctly_rounded_sqrt_of_a_negative_number_is_nan_with_a_warning():
    with pytest.warns(RuntimeWarning, match="invalid value"):
        out = correctly_rounded_sqrt(torch.tensor([-1.0, 4.0], dtype=F64))
    assert torch.isnan(out[0]) and out[1].item() == 2.0
