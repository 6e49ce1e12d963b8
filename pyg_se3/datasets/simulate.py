r"""Particle simulators behind the datasets: pair interactions and symplectic integrators.

Every function works on a batch of independent systems of equal size along a leading dimension:
positions and velocities ``[B, N, 3]``, per-particle parameters ``[B, N]``.

Equations of motion (Newton, pairwise central forces):

.. math::
    m_i \ddot{x}_i = F_i(x) = \sum_{j \ne i} f(r_{ij}) \, (x_i - x_j), \qquad r_{ij} = |x_i - x_j|,

with the pair potentials

- gravity with Plummer softening :math:`\varepsilon`:
  :math:`U = -\sum_{i<j} G m_i m_j / \sqrt{r_{ij}^2 + \varepsilon^2}`,
  :math:`F_i = G m_i \sum_j m_j (x_j - x_i) / (r_{ij}^2 + \varepsilon^2)^{3/2}`;
- Lennard-Jones: :math:`U = \sum_{i<j} 4\epsilon [(\sigma/r_{ij})^{12} - (\sigma/r_{ij})^6]`,
  :math:`F_i = \sum_j 24\epsilon [2(\sigma/r_{ij})^{12} - (\sigma/r_{ij})^6] (x_i - x_j) / r_{ij}^2`;
- Coulomb (unit coupling): :math:`U = \sum_{i<j} q_i q_j / r_{ij}`,
  :math:`F_i = \sum_j q_i q_j (x_i - x_j) / r_{ij}^3` (like charges repel), optionally clipped per component.

Integrators: :func:`velocity_verlet` (second order, time-reversible, symplectic) and :func:`kick_drift`
(symplectic Euler, the "leapfrog" of the NRI/EGNN charged-particle generator).

Bit-for-bit reproducibility
---------------------------
The packaged datasets must regenerate bit for bit, for any batch composition, thread count, SIMD width or
processor. So the simulation uses only element-wise operations that IEEE-754 rounds correctly (``+ - * /``,
square roots, comparisons): squared norms are written out component by component and sums over neighbours are
sequential Python loops rather than ``Tensor.sum``, whose order of accumulation depends on the shape, SIMD width
and thread count. Consequently a system gives the same bits whether it is simulated alone or inside any batch.
Square roots go through :func:`correctly_rounded_sqrt`: PyTorch's own ``sqrt`` of a CPU tensor calls MKL's
vector maths, which misses the correctly rounded result by one unit in the last place for about 1 % of
float64 inputs, differently on different processors, and a charged 5-body simulation of 5000 steps amplifies
one such difference to O(1) in a few percent of the systems.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

__all__ = [
    "SQUARE_ROOTS",
    "Coulomb",
    "Gravity",
    "LennardJones",
    "PairPotential",
    "Trajectory",
    "correctly_rounded_sqrt",
    "kick_drift",
    "kinetic_energy",
    "pair_differences",
    "total_momentum",
    "velocity_verlet",
]


#: How the simulators take square roots (:func:`correctly_rounded_sqrt`). The datasets that simulate record it in
#: their configs, so that a raw file made with other square roots (other bits) is never taken for theirs.
SQUARE_ROOTS = "correctly_rounded"


# ---------------------------------------------------------------------------------------------- primitives
class _NumpySqrt(torch.autograd.Function):
    """``sqrt`` of a CPU tensor computed by NumPy (correctly rounded), differentiable."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        array = x.detach().numpy()
        out = torch.from_numpy(np.sqrt(array, out=np.empty_like(array)))
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        return grad / (2.0 * out)


def correctly_rounded_sqrt(x: Tensor) -> Tensor:
    """The square root of every element, correctly rounded (IEEE-754) on every processor; differentiable.

    On the CPU PyTorch's ``torch.sqrt`` goes through MKL's vector maths, which is off by one unit in the last
    place for about 1 % of float64 inputs, and differently so on different processors; NumPy's ``sqrt`` is the
    processor's correctly rounded instruction. On a GPU ``torch.sqrt`` is already correctly rounded.

    Parameters
    ----------
    x
        A float32 or float64 tensor. Negative elements give ``nan``, as with ``torch.sqrt`` (on the CPU with
        NumPy's ``RuntimeWarning``).
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"correctly_rounded_sqrt: x must be float32 or float64, got {x.dtype}")
    if x.device.type != "cpu":
        return torch.sqrt(x)
    return _NumpySqrt.apply(x)


def pair_differences(pos: Tensor) -> tuple[Tensor, Tensor]:
    """``d[b, i, j] = pos[b, j] - pos[b, i]`` (``[B, N, N, 3]``) and ``|d|^2`` (``[B, N, N]``).

    The squared norm is written out per component so that it is reproducible bit for bit (see module doc).
    """
    d = pos.unsqueeze(-3) - pos.unsqueeze(-2)
    r2 = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    return d, r2


def _sum_over_neighbours(coef: Tensor, d: Tensor) -> Tensor:
    """``sum_j coef[b, i, j] * d[b, i, j]`` in the fixed order ``j = 0, 1, ...`` (``[B, N, 3]``)."""
    terms = coef.unsqueeze(-1) * d
    out = terms[..., 0, :]
    for j in range(1, terms.shape[-2]):
        out = out + terms[..., j, :]
    return out


def _eye(values: Tensor) -> Tensor:
    return torch.eye(values.shape[-1], dtype=torch.bool, device=values.device)


def _off_diagonal(values: Tensor) -> Tensor:
    """``values`` with the self-pairs ``i == j`` zeroed."""
    return torch.where(_eye(values), torch.zeros((), dtype=values.dtype, device=values.device), values)


def _nonsingular(r2: Tensor) -> Tensor:
    """``r2`` with its (zero) diagonal replaced by 1, so that laws singular at ``r = 0`` stay finite there.

    Masking ``inf`` after the fact is not enough: autograd would multiply the zero gradient of the masked
    entries by an infinite derivative and return ``nan``.
    """
    return torch.where(_eye(r2), torch.ones((), dtype=r2.dtype, device=r2.device), r2)


def _ordered_sum(values: Tensor, dim: int) -> Tensor:
    """``values.sum(dim)`` accumulated in index order, reproducible bit for bit (see module doc)."""
    slices = values.unbind(dim)
    out = slices[0]
    for item in slices[1:]:
        out = out + item
    return out


def _pair_sum(values: Tensor) -> Tensor:
    """``sum_{i<j} values[b, i, j]`` (``[B]``), in a fixed order."""
    return _ordered_sum(_ordered_sum(torch.triu(values, diagonal=1), -1), -1)


def kinetic_energy(vel: Tensor, mass: Tensor) -> Tensor:
    r""":math:`K = \tfrac12 \sum_i m_i |v_i|^2` (``[...]`` from ``vel [..., N, 3]``, ``mass [..., N]``)."""
    v2 = vel[..., 0] * vel[..., 0] + vel[..., 1] * vel[..., 1] + vel[..., 2] * vel[..., 2]
    return 0.5 * _ordered_sum(mass * v2, -1)


def total_momentum(vel: Tensor, mass: Tensor) -> Tensor:
    r""":math:`P = \sum_i m_i v_i` (``[..., 3]`` from ``vel [..., N, 3]``, ``mass [..., N]``)."""
    return _ordered_sum(mass.unsqueeze(-1) * vel, -2)


# ---------------------------------------------------------------------------------------------- potentials
class PairPotential(ABC):
    """A pairwise interaction; per-particle parameters (masses, charges) are held by the instance."""

    @abstractmethod
    def forces(self, pos: Tensor) -> Tensor:
        """Forces ``[B, N, 3]`` on every particle at positions ``pos`` ``[B, N, 3]``."""

    @abstractmethod
    def potential_energy(self, pos: Tensor) -> Tensor:
        """Total potential energy ``[B]``."""


@dataclass(frozen=True)
class Gravity(PairPotential):
    r"""Newtonian gravity with Plummer softening.

    .. math::
        U = -\sum_{i<j} \frac{G m_i m_j}{\sqrt{r_{ij}^2 + \varepsilon^2}}, \qquad
        F_i = G m_i \sum_{j} \frac{m_j (x_j - x_i)}{(r_{ij}^2 + \varepsilon^2)^{3/2}}.

    Parameters
    ----------
    mass
        ``[B, N]`` masses.
    G
        Gravitational constant.
    softening
        Plummer length :math:`\varepsilon \ge 0`; bounds the force at close encounters. With
        ``softening=0`` two coincident particles give ``inf``.
    """

    mass: Tensor
    G: float = 1.0
    softening: float = 0.1

    def forces(self, pos: Tensor) -> Tensor:
        d, r2 = pair_differences(pos)
        s = _nonsingular(r2 + self.softening * self.softening)
        inv3 = _off_diagonal(1.0 / (s * correctly_rounded_sqrt(s)))
        acc = _sum_over_neighbours(inv3 * self.mass.unsqueeze(-2), d)
        return (self.G * self.mass).unsqueeze(-1) * acc

    def potential_energy(self, pos: Tensor) -> Tensor:
        _, r2 = pair_differences(pos)
        mm = self.mass.unsqueeze(-1) * self.mass.unsqueeze(-2)
        return -self.G * _pair_sum(mm / correctly_rounded_sqrt(_nonsingular(r2 + self.softening * self.softening)))


@dataclass(frozen=True)
class LennardJones(PairPotential):
    r"""The Lennard-Jones 12-6 potential (no cut-off).

    .. math::
        U = \sum_{i<j} 4\epsilon \left[ (\sigma/r_{ij})^{12} - (\sigma/r_{ij})^{6} \right], \qquad
        F_i = \sum_j \frac{24\epsilon}{r_{ij}^2} \left[ 2(\sigma/r_{ij})^{12} - (\sigma/r_{ij})^{6} \right]
        (x_i - x_j).

    The pair minimum is :math:`-\epsilon` at :math:`r = 2^{1/6}\sigma`.
    """

    epsilon: float = 1.0
    sigma: float = 1.0

    def forces(self, pos: Tensor) -> Tensor:
        d, r2 = pair_differences(pos)
        r2 = _nonsingular(r2)
        sr2 = (self.sigma * self.sigma) / r2
        sr6 = sr2 * sr2 * sr2
        coef = _off_diagonal((24.0 * self.epsilon) * (2.0 * (sr6 * sr6) - sr6) / r2)
        # d points from i to j; the force on i points along x_i - x_j = -d.
        return -_sum_over_neighbours(coef, d)

    def potential_energy(self, pos: Tensor) -> Tensor:
        _, r2 = pair_differences(pos)
        sr2 = (self.sigma * self.sigma) / _nonsingular(r2)
        sr6 = sr2 * sr2 * sr2
        return _pair_sum(_off_diagonal((4.0 * self.epsilon) * (sr6 * sr6 - sr6)))


@dataclass(frozen=True)
class Coulomb(PairPotential):
    r"""Coulomb interaction with unit coupling, as in the NRI/EGNN charged-particle benchmark.

    .. math::
        U = \sum_{i<j} \frac{q_i q_j}{r_{ij}}, \qquad
        F_i = \operatorname{clip}\Big( \sum_j \frac{q_i q_j (x_i - x_j)}{r_{ij}^3},\ -c,\ c \Big),

    the clip acting on each Cartesian component (``clip=None``: no clipping). Clipping bounds the kicks of
    close encounters but breaks momentum conservation and rotation equivariance whenever it is active.
    """

    charge: Tensor
    clip: float | None = None

    def forces(self, pos: Tensor) -> Tensor:
        d, r2 = pair_differences(pos)
        r2 = _nonsingular(r2)
        qq = self.charge.unsqueeze(-1) * self.charge.unsqueeze(-2)
        coef = _off_diagonal(qq / (r2 * correctly_rounded_sqrt(r2)))
        force = -_sum_over_neighbours(coef, d)
        if self.clip is not None:
            force = force.clamp(-self.clip, self.clip)
        return force

    def potential_energy(self, pos: Tensor) -> Tensor:
        _, r2 = pair_differences(pos)
        qq = self.charge.unsqueeze(-1) * self.charge.unsqueeze(-2)
        return _pair_sum(_off_diagonal(qq / correctly_rounded_sqrt(_nonsingular(r2))))

    def is_clipped(self, pos: Tensor) -> Tensor:
        """``[B]``: whether any force component of a system exceeds the clip at ``pos``."""
        if self.clip is None:
            return torch.zeros(pos.shape[0], dtype=torch.bool, device=pos.device)
        unclipped = Coulomb(self.charge, clip=None).forces(pos)
        return (unclipped.abs() > self.clip).flatten(1).any(-1)


# ---------------------------------------------------------------------------------------------- integrators
@dataclass(frozen=True)
class Trajectory:
    """Saved frames of a batch of simulations: ``pos``/``vel`` ``[B, F, N, 3]`` at the steps ``steps`` ``[F]``."""

    pos: Tensor
    vel: Tensor
    steps: Tensor


def _check_integration_args(pos: Tensor, vel: Tensor, mass: Tensor, dt: float, num_steps: int, save_every: int) -> None:
    if pos.dim() != 3 or pos.shape[-1] != 3:
        raise ValueError(f"pos: expected a [B, N, 3] tensor, got shape {tuple(pos.shape)}")
    if vel.shape != pos.shape:
        raise ValueError(f"vel: expected shape {tuple(pos.shape)} (that of pos), got {tuple(vel.shape)}")
    if mass.shape != pos.shape[:-1]:
        raise ValueError(f"mass: expected shape {tuple(pos.shape[:-1])}, got {tuple(mass.shape)}")
    if not bool((mass > 0).all()):
        raise ValueError("mass: expected every mass > 0")
    if not (isinstance(dt, int | float) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt: expected a finite time step > 0, got {dt!r}")
    if not (isinstance(num_steps, int) and num_steps >= 0):
        raise ValueError(f"num_steps: expected an integer >= 0, got {num_steps!r}")
    if not (isinstance(save_every, int) and save_every >= 1):
        raise ValueError(f"save_every: expected an integer >= 1, got {save_every!r}")


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block.

    The integrators launch thousands of small element-wise kernels; handing each to an OpenMP team costs more
    than it saves, and on an oversubscribed machine (CI, parallel jobs) it is catastrophic: measured 2.7 s
    on one thread against 91 s on two for 1000 charged-particle simulations on a busy 2-core machine.
    Thread count does not change results (element-wise kernels only).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _steps(num_steps: int, progress: bool, desc: str) -> Iterable[int]:
    steps = range(1, num_steps + 1)
    return tqdm(steps, desc=desc, leave=False, unit="step") if progress else steps


def velocity_verlet(
    pos: Tensor,
    vel: Tensor,
    mass: Tensor,
    forces: Callable[[Tensor], Tensor],
    dt: float,
    num_steps: int,
    save_every: int = 1,
    progress: bool = False,
) -> Trajectory:
    r"""Integrate Newton's equations with velocity Verlet (kick-drift-kick).

    .. math::
        v_{n+1/2} = v_n + \tfrac{\Delta t}{2} a(x_n), \quad
        x_{n+1} = x_n + \Delta t\, v_{n+1/2}, \quad
        v_{n+1} = v_{n+1/2} + \tfrac{\Delta t}{2} a(x_{n+1}), \qquad a = F / m.

    Symplectic and time-reversible, with global error :math:`O(\Delta t^2)` and bounded energy error. The
    acceleration is a pure function of positions, so restarting from any saved ``(x_n, v_n)`` reproduces
    the rest of the trajectory bit for bit.

    Parameters
    ----------
    pos, vel
        Initial state ``[B, N, 3]``.
    mass
        ``[B, N]`` masses (> 0).
    forces
        Map from positions ``[B, N, 3]`` to forces ``[B, N, 3]`` (e.g. ``PairPotential.forces``).
    dt
        Time step (> 0).
    num_steps
        Number of steps.
    save_every
        Save the state at steps ``0, save_every, 2 save_every, ... <= num_steps``.
    progress
        Show a progress bar over the steps (tqdm).

    Returns
    -------
    Trajectory
        Frames ``[B, num_steps // save_every + 1, N, 3]``.
    """
    _check_integration_args(pos, vel, mass, dt, num_steps, save_every)
    inv_mass = (1.0 / mass).unsqueeze(-1)
    half = 0.5 * dt
    saved_pos, saved_vel, steps = [pos], [vel], [0]
    with _one_thread():
        acc = forces(pos) * inv_mass
        for step in _steps(num_steps, progress, "velocity Verlet"):
            vel_half = vel + half * acc
            pos = pos + dt * vel_half
            acc = forces(pos) * inv_mass
            vel = vel_half + half * acc
            if step % save_every == 0:
                saved_pos.append(pos)
                saved_vel.append(vel)
                steps.append(step)
    return Trajectory(torch.stack(saved_pos, 1), torch.stack(saved_vel, 1), torch.tensor(steps))


def kick_drift(
    pos: Tensor,
    vel: Tensor,
    mass: Tensor,
    forces: Callable[[Tensor], Tensor],
    dt: float,
    num_steps: int,
    save_every: int = 1,
    progress: bool = False,
) -> Trajectory:
    r"""Symplectic Euler in kick-drift order: the "leapfrog" of the NRI/EGNN charged-particle generator.

    .. math::
        v \leftarrow v_0 + \Delta t\, a(x_0); \qquad \text{for } n = 1, 2, \dots:\quad
        x_n = x_{n-1} + \Delta t\, v, \quad \text{save } (x_n, v), \quad v \leftarrow v + \Delta t\, a(x_n).

    The positions are exactly those of a leapfrog whose half-step velocity starts at
    :math:`v_{1/2} = v_0 + \Delta t\, a(x_0)` (a full rather than a half first kick, as in the reference
    generator); the velocity saved with :math:`x_n` is the drift velocity :math:`v_{n-1/2}`.

    Parameters are those of :func:`velocity_verlet`. Frames are saved at steps ``save_every, 2 save_every, ...
    <= num_steps`` (not step 0), i.e. ``num_steps // save_every`` frames.
    """
    _check_integration_args(pos, vel, mass, dt, num_steps, save_every)
    inv_mass = (1.0 / mass).unsqueeze(-1)
    saved_pos, saved_vel, steps = [], [], []
    with _one_thread():
        vel = vel + dt * (forces(pos) * inv_mass)
        for step in _steps(num_steps, progress, "kick-drift"):
            pos = pos + dt * vel
            if step % save_every == 0:
                saved_pos.append(pos)
                saved_vel.append(vel)
                steps.append(step)
            vel = vel + dt * (forces(pos) * inv_mass)
    if not steps:
        empty = pos.new_empty(pos.shape[0], 0, *pos.shape[1:])
        return Trajectory(empty, empty.clone(), torch.zeros(0, dtype=torch.long))
    return Trajectory(torch.stack(saved_pos, 1), torch.stack(saved_vel, 1), torch.tensor(steps))
