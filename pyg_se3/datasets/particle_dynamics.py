r"""Particle dynamics: predict where N interacting particles are 10 saved time steps later.

The dataset of the Iterative SE(3)-Transformer blog post (Dauparas & Fuchs, 2021, see ``datasets/README.md``):
simulate N particles under a pair potential with ordinary Newtonian dynamics, slice every simulation into
blocks of ``block_size`` saved steps, and ask for the positions at the end of each block given positions,
velocities and masses at its start. The task is SE(3)-equivariant: rotating and translating the input rotates and
translates the target.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from tqdm import tqdm

from pyg_se3.datasets._base import (
    GeneratedDataset,
    check_int,
    check_positive,
    check_split,
    config_array,
    split_generator,
)
from pyg_se3.datasets.simulate import (
    SQUARE_ROOTS,
    Gravity,
    LennardJones,
    PairPotential,
    correctly_rounded_sqrt,
    kinetic_energy,
    velocity_verlet,
)
from pyg_se3.fiber import Fiber

__all__ = ["ParticleDynamics"]

_POTENTIALS = ("gravity", "lennard_jones")
#: Default masses per potential. Velocity Verlet resolves an oscillation of frequency omega when
#: dt * omega << 1. Gravity (G = 1, dt = 0.01): a softened close encounter has
#: omega^2 = G (m_i + m_j) / softening^3, so m <= 0.015 with softening 0.15 gives dt * omega <= 0.03 and energy
#: errors ~2e-4 (0.055 and 5e-4 with the softening 0.1 of version 1), whereas m ~ 1 gives dt * omega ~ 0.15
#: and errors ~1e-2. Lennard-Jones (epsilon = sigma = 1): the bond has omega^2 = 114 epsilon / (m sigma^2);
#: mean mass 4 makes dt = 0.01 the customary MD step of 0.005 (sigma^2 m / epsilon)^(1/2) for unit mass.
DEFAULT_MASS_RANGE = {"gravity": (0.005, 0.015), "lennard_jones": (2.0, 6.0)}
#: Default integrator steps per saved step. Gravity: the default cluster (N ~ 12, total mass ~ 0.12, radius
#: ~ 0.9) has a crossing time sqrt(R^3 / (G M)) ~ 2.3; a block of 10 saved steps of 25 * 0.01 spans 2.5, so
#: the velocities turn within a block and linear extrapolation leaves ~35% of the constant-position error
#: (one integrator step per saved step, as in version 1, spans 0.1 and leaves 0.1%). Lennard-Jones keeps one
#: (unchanged from version 1): with 25, its warm cluster (kT = 0.5) evaporates within the run.
DEFAULT_SUBSTEPS = {"gravity": 25, "lennard_jones": 1}
#: The parameters that differ from version 1 of the dataset: passing them reproduces its data bit for bit.
VERSION_1 = {"softening": 0.1, "substeps": 1}
#: Jitter of the Lennard-Jones lattice, in units of sigma.
LATTICE_JITTER = 0.05


def _range(name: str, value: int | tuple[int, int] | list[int], minimum: int) -> list[int]:
    """An inclusive integer range ``[low, high]`` from an int or a pair."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, tuple | list) and len(value) == 2:
        low, high = value
    else:
        raise ValueError(f"{name}: expected an integer or a (low, high) pair, got {value!r}")
    check_int(name, low, minimum)
    check_int(name, high, minimum)
    if high < low:
        raise ValueError(f"{name}: expected low <= high, got {value!r}")
    return [int(low), int(high)]


class ParticleDynamics(GeneratedDataset):
    r"""N-body particle dynamics sliced into blocks of ``block_size`` steps.

    **Physics.** Newton's equations :math:`m_i \ddot x_i = F_i` for a pair potential
    (:mod:`pyg_se3.datasets.simulate`), integrated with velocity Verlet (:func:`~.simulate.velocity_verlet`):

    - ``'gravity'`` (default): :math:`F_i = G m_i \sum_j m_j (x_j - x_i) / (|x_j - x_i|^2 + \varepsilon^2)^{3/2}`
      with ``G = 1``, softening :math:`\varepsilon = 0.15`. Initial positions :math:`x_i \sim N(0, s^2 I)`
      (``pos_std`` :math:`s = 0.5`), masses :math:`m_i \sim U(0.005, 0.015)`, velocities
      :math:`v_i \sim N(0, I)` rescaled per simulation to virial equilibrium :math:`2K = -U`, so that the
      cluster neither collapses nor disperses as a whole (a few particles escape: ~2% of the particles are
      unbound at a block start). ``substeps = 25`` integrator steps per saved step: a block spans 2.5 time
      units, about one crossing time, so the trajectories within a block are curved.
    - ``'lennard_jones'``: :math:`U = \sum_{i<j} 4\epsilon[(\sigma/r)^{12} - (\sigma/r)^6]`; particles start on a
      simple cubic lattice of spacing :math:`2^{1/6}\sigma` (the pair minimum) jittered by
      :math:`N(0, (0.05\sigma)^2)`, masses :math:`U(2, 6)`, Maxwell-Boltzmann velocities
      :math:`v_i \sim N(0, (k T / m_i) I)` at ``temperature`` :math:`kT = 0.5\epsilon`.

    Each simulation draws its number of particles uniformly from ``num_particles`` (default 5..20) and saves
    ``num_steps`` steps (an int, or a ``(low, high)`` range drawn per simulation), each of ``substeps``
    integrator steps of ``dt = 0.01``. Time between saved steps: ``substeps * dt``; between a sample's input
    and its target: :attr:`horizon` ``= block_size * substeps * dt`` (2.5 for gravity, 0.1 for
    Lennard-Jones). Version 1 of the dataset (softening 0.1, one integrator step per saved step, an almost
    straight-line task) is ``ParticleDynamics(root, softening=0.1, substeps=1)`` (:data:`VERSION_1`).

    **Samples.** One per block of ``block_size`` saved steps (non-overlapping, starting at step 0); a simulation
    of ``T`` saved steps gives ``T // block_size`` blocks. Attributes:

    - ``pos`` ``[N, 3]``, ``vel`` ``[N, 3]``: the state at the start of the block;
    - ``mass`` ``[N, 1]``;
    - ``x`` ``[N, 4]``: the flat fiber features of :attr:`fiber` ``= Fiber({0: 1, 1: 1})``, i.e. ``[m, vx, vy, vz]``;
    - ``y`` ``[N, 3]``: the positions at the end of the block;
    - ``sim_id`` ``[1]``: the simulation (index within the split), ``block_start`` ``[1]``: the saved step
      the block starts at; ``sample_id`` ``[1]``: the sample's index within the split.

    No edges are stored: models build their graph from ``pos`` (e.g. ``torch_cluster.radius_graph`` or a
    complete graph), as the iterative model must after every position update anyway.

    **Splits** are by simulation: train, val and test simulations come from independent random streams, so
    no block of a test simulation is in train. Default sizes 160 / 20 / 20 simulations (3200 / 400 / 400
    blocks); the first ``k`` simulations of a split do not depend on ``num_simulations``.

    Parameters
    ----------
    root
        Folder for the ``raw/`` and ``processed/`` files.
    split
        ``'train'``, ``'val'`` or ``'test'``.
    num_simulations
        Simulations in this split (default 160 / 20 / 20).
    potential
        ``'gravity'`` or ``'lennard_jones'``.
    G, softening
        Gravity only: gravitational constant and Plummer softening length (default 0.15; version 1: 0.1).
    epsilon, sigma, temperature
        Lennard-Jones only: well depth, length scale and initial temperature (units of ``epsilon``).
    dt
        Integrator time step (> 0).
    substeps
        Integrator steps per saved step (an integer >= 1); default per potential (see above), 1 in version 1.
    num_steps
        Saved steps per simulation: an int or an inclusive ``(low, high)`` range.
    block_size
        Saved steps per sample.
    num_particles
        Particles per simulation: an int or an inclusive ``(low, high)`` range (each >= 2).
    mass_range
        ``(low, high)`` of the uniform mass distribution; default per potential (see above).
    pos_std
        Gravity only: standard deviation of the initial positions per axis.
    seed
        Seed of the random streams (split seeds derive from it, see :func:`~._base.split_seed`).
    dtype
        Floating dtype of the samples (the raw data are float64).
    transform, pre_transform, pre_filter, force_reload
        As in PyG's datasets.
    progress
        Show progress bars while generating.

    Examples
    --------
    The default configuration copies the packaged files (no simulation):

    >>> import tempfile
    >>> from pyg_se3.datasets import ParticleDynamics
    >>> tmp = tempfile.TemporaryDirectory()
    >>> test = ParticleDynamics(tmp.name, split="test", progress=False)
    >>> len(test), ParticleDynamics.fiber, test.horizon
    (400, Fiber({0: 1, 1: 1}), 2.5)
    >>> test[0]
    Data(x=[6, 4], y=[6, 3], pos=[6, 3], vel=[6, 3], mass=[6, 1], sim_id=[1], block_start=[1], sample_id=[1])

    Any other configuration is simulated, here 2 simulations of 20 saved steps (2 blocks each):

    >>> small = ParticleDynamics(tmp.name, split="val", num_simulations=2, num_steps=20, progress=False)
    >>> len(small)
    4
    >>> tmp.cleanup()
    """

    name = "particle_dynamics"
    fiber = Fiber({0: 1, 1: 1})
    sample_format = 2  # sample_id added
    default_num_simulations: Mapping[str, int] = {"train": 160, "val": 20, "test": 20}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_simulations: int | None = None,
        *,
        potential: str = "gravity",
        G: float = 1.0,
        softening: float = 0.15,
        epsilon: float = 1.0,
        sigma: float = 1.0,
        temperature: float = 0.5,
        dt: float = 0.01,
        substeps: int | None = None,
        num_steps: int | tuple[int, int] = 200,
        block_size: int = 10,
        num_particles: int | tuple[int, int] = (5, 20),
        mass_range: tuple[float, float] | None = None,
        pos_std: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        transform: Callable[[Data], Data] | None = None,
        pre_transform: Callable[[Data], Data] | None = None,
        pre_filter: Callable[[Data], bool] | None = None,
        force_reload: bool = False,
        progress: bool = True,
    ) -> None:
        config = self.make_config(
            split=split,
            num_simulations=num_simulations,
            potential=potential,
            G=G,
            softening=softening,
            epsilon=epsilon,
            sigma=sigma,
            temperature=temperature,
            dt=dt,
            substeps=substeps,
            num_steps=num_steps,
            block_size=block_size,
            num_particles=num_particles,
            mass_range=mass_range,
            pos_std=pos_std,
            seed=seed,
        )
        super().__init__(root, config, dtype, transform, pre_transform, pre_filter, force_reload, progress)

    # -------------------------------------------------------------- configuration
    @classmethod
    def make_config(
        cls,
        split: str = "train",
        num_simulations: int | None = None,
        potential: str = "gravity",
        G: float = 1.0,
        softening: float = 0.15,
        epsilon: float = 1.0,
        sigma: float = 1.0,
        temperature: float = 0.5,
        dt: float = 0.01,
        substeps: int | None = None,
        num_steps: int | tuple[int, int] = 200,
        block_size: int = 10,
        num_particles: int | tuple[int, int] = (5, 20),
        mass_range: tuple[float, float] | None = None,
        pos_std: float = 0.5,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Validate the generation parameters (``ValueError`` naming the bad one) into the stored config."""
        check_split(split)
        if num_simulations is None:
            num_simulations = cls.default_num_simulations[split]
        if potential not in _POTENTIALS:
            raise ValueError(f"potential: expected one of {list(_POTENTIALS)}, got {potential!r}")
        block_size = check_int("block_size", block_size, 1)
        steps = _range("num_steps", num_steps, block_size)
        if mass_range is None:
            mass_range = DEFAULT_MASS_RANGE[potential]
        if substeps is None:
            substeps = DEFAULT_SUBSTEPS[potential]
        if not (isinstance(mass_range, tuple | list) and len(mass_range) == 2):
            raise ValueError(f"mass_range: expected a (low, high) pair, got {mass_range!r}")
        low, high = (check_positive("mass_range", m) for m in mass_range)
        if high < low:
            raise ValueError(f"mass_range: expected low <= high, got {mass_range!r}")
        config: dict[str, Any] = {
            "dataset": cls.name,
            "version": 2,
            "square_roots": SQUARE_ROOTS,
            "split": split,
            "num_simulations": check_int("num_simulations", num_simulations, 1),
            "seed": check_int("seed", seed, 0),
            "potential": potential,
            "dt": check_positive("dt", dt),
            "substeps": check_int("substeps", substeps, 1),
            "num_steps": steps,
            "block_size": block_size,
            "num_particles": _range("num_particles", num_particles, 2),
            "mass_range": [low, high],
        }
        if potential == "gravity":
            config |= {
                "G": check_positive("G", G),
                "softening": check_positive("softening", softening, allow_zero=True),
                "pos_std": check_positive("pos_std", pos_std),
            }
        else:
            config |= {
                "epsilon": check_positive("epsilon", epsilon),
                "sigma": check_positive("sigma", sigma),
                "temperature": check_positive("temperature", temperature, allow_zero=True),
            }
        return json.loads(json.dumps(config))

    @staticmethod
    def pair_potential(config: Mapping[str, Any], mass: Tensor) -> PairPotential:
        """The interaction of ``config`` for masses ``mass`` ``[B, N]``."""
        if config["potential"] == "gravity":
            return Gravity(mass, G=config["G"], softening=config["softening"])
        return LennardJones(epsilon=config["epsilon"], sigma=config["sigma"])

    # -------------------------------------------------------------- generation
    @classmethod
    def initial_conditions(cls, config: Mapping[str, Any], num: int | None = None) -> list[dict[str, Any]]:
        """The first ``num`` (default: all) simulations' initial states, drawn one after another.

        Each is ``{'num_steps': T, 'mass': [N], 'pos': [N, 3], 'vel': [N, 3]}`` in float64. Draws, per
        simulation and in this order from the split's generator: N (if a range), T (if a range), masses,
        positions (gravity) or lattice jitter (Lennard-Jones), velocities.
        """
        generator = split_generator(config["seed"], config["split"])
        num = config["num_simulations"] if num is None else num
        return [cls._draw_one(config, generator) for _ in range(num)]

    @classmethod
    def _draw_one(cls, config: Mapping[str, Any], g: torch.Generator) -> dict[str, Any]:
        f64 = torch.float64
        n = _draw_int(config["num_particles"], g)
        steps = _draw_int(config["num_steps"], g)
        m_low, m_high = config["mass_range"]
        mass = m_low + (m_high - m_low) * torch.rand(n, generator=g, dtype=f64)
        if config["potential"] == "gravity":
            pos = config["pos_std"] * torch.randn(n, 3, generator=g, dtype=f64)
            vel = torch.randn(n, 3, generator=g, dtype=f64)
            # Virial equilibrium 2K = -U (with a stable scale however N and the masses came out).
            pot = cls.pair_potential(config, mass[None])
            u = pot.potential_energy(pos[None])[0]
            k = kinetic_energy(vel[None], mass[None])[0]
            vel = vel * correctly_rounded_sqrt(-u / (2.0 * k))
        else:
            sigma = config["sigma"]
            pos = _lattice(n, 2.0 ** (1.0 / 6.0) * sigma) + (LATTICE_JITTER * sigma) * torch.randn(
                n, 3, generator=g, dtype=f64
            )
            scale = correctly_rounded_sqrt(config["temperature"] * config["epsilon"] / mass).unsqueeze(-1)
            vel = scale * torch.randn(n, 3, generator=g, dtype=f64)
        return {"num_steps": steps, "mass": mass, "pos": pos, "vel": vel}

    @classmethod
    def simulate(
        cls, config: Mapping[str, Any], initial: list[dict[str, Any]], progress: bool = False
    ) -> list[tuple[Tensor, Tensor]]:
        """Integrate every initial state; returns ``(pos, vel)`` frames ``[F, N, 3]`` at the block boundaries.

        Simulations with the same N are integrated together (vectorised along the batch dimension); the
        result of each is bit-identical to integrating it alone.
        """
        block, substeps = config["block_size"], config["substeps"]
        out: list[tuple[Tensor, Tensor] | None] = [None] * len(initial)
        by_size: dict[int, list[int]] = {}
        for index, state in enumerate(initial):
            by_size.setdefault(state["mass"].numel(), []).append(index)
        sizes = sorted(by_size)
        for n in tqdm(sizes, desc=f"{cls.name} {config['split']}", unit="N", disable=not progress):
            members = by_size[n]
            mass = torch.stack([initial[i]["mass"] for i in members])
            pos = torch.stack([initial[i]["pos"] for i in members])
            vel = torch.stack([initial[i]["vel"] for i in members])
            steps = max(initial[i]["num_steps"] for i in members) * substeps
            forces = cls.pair_potential(config, mass).forces
            traj = velocity_verlet(pos, vel, mass, forces, config["dt"], steps, save_every=block * substeps)
            for row, i in enumerate(members):
                frames = initial[i]["num_steps"] // block + 1
                out[i] = (traj.pos[row, :frames], traj.vel[row, :frames])
        return out  # type: ignore[return-value]

    @classmethod
    def generate(cls, config: Mapping[str, Any], progress: bool = False) -> dict[str, np.ndarray]:
        """Raw arrays (float64, ragged over simulations, concatenated):

        ``num_particles`` ``[S]``, ``num_frames`` ``[S]``, ``mass`` ``[sum N]``, ``pos``/``vel``
        ``[sum_s F_s N_s, 3]`` (simulation-major, then frame, then particle), ``config``.
        """
        initial = cls.initial_conditions(config)
        frames = cls.simulate(config, initial, progress=progress)
        return {
            "config": config_array(config),
            "num_particles": np.array([s["mass"].numel() for s in initial], dtype=np.int64),
            "num_frames": np.array([p.shape[0] for p, _ in frames], dtype=np.int64),
            "mass": torch.cat([s["mass"] for s in initial]).numpy(),
            "pos": torch.cat([p.reshape(-1, 3) for p, _ in frames]).numpy(),
            "vel": torch.cat([v.reshape(-1, 3) for _, v in frames]).numpy(),
        }

    # -------------------------------------------------------------- samples
    def build_samples(self, arrays: Mapping[str, np.ndarray]) -> list[Data]:
        block = self.config["block_size"]
        mass_all, pos_all, vel_all = (self.tensor(arrays[key]) for key in ("mass", "pos", "vel"))
        samples: list[Data] = []
        mass_offset = frame_offset = 0
        for sim, (n, num_frames) in enumerate(zip(arrays["num_particles"], arrays["num_frames"], strict=True)):
            n, num_frames = int(n), int(num_frames)
            mass = mass_all[mass_offset : mass_offset + n].unsqueeze(-1)
            pos = pos_all[frame_offset : frame_offset + num_frames * n].view(num_frames, n, 3)
            vel = vel_all[frame_offset : frame_offset + num_frames * n].view(num_frames, n, 3)
            mass_offset += n
            frame_offset += num_frames * n
            for b in range(num_frames - 1):
                samples.append(
                    Data(
                        pos=pos[b].clone(),
                        vel=vel[b].clone(),
                        mass=mass.clone(),
                        x=torch.cat([mass, vel[b]], dim=-1),
                        y=pos[b + 1].clone(),
                        sim_id=torch.tensor([sim]),
                        block_start=torch.tensor([b * block]),
                        sample_id=torch.tensor([len(samples)]),
                    )
                )
        return samples

    @property
    def potential(self) -> str:
        return self.config["potential"]

    @property
    def horizon(self) -> float:
        """Time between a sample's input and its target: ``block_size * substeps * dt``."""
        return self.config_horizon(self.config)

    @staticmethod
    def config_horizon(config: Mapping[str, Any]) -> float:
        """:attr:`horizon` of the dataset of ``config`` (from :meth:`make_config`), without building it."""
        return config["block_size"] * config["substeps"] * config["dt"]

    def time_reversed(self) -> list[Data]:
        r"""Every sample's time-reversed counterpart: the same simulation run backwards, from the end of the
        block to its start.

        Velocity Verlet is time-reversible: started from the state :math:`(x_T, -v_T)` at the end of a block, its
        steps retrace the trajectory with the velocities reversed and end at :math:`(x_0, -v_0)`, up to rounding
        (the forces depend on positions only). So the counterpart of a sample starts at the end of its block
        with the velocities reversed, and its target is the sample's input positions.

        Each block is integrated again in float64 (``block_size * substeps`` steps of ``dt``, the samples of one
        size together) from the sample's stored start; its end state, rounded to the dataset's dtype, is the
        counterpart's input. With ``dtype=torch.float64`` that is the stored end of the block (the next saved
        step) exactly; otherwise, where a close encounter makes the motion chaotic, the float32 rounding of the
        start can lead elsewhere, and the counterpart is then the exact reversal of the trajectory it starts
        from, up to float64 rounding and the rounding of its inputs.

        Returns
        -------
        list[Data]
            One per sample, in order, with the sample's attributes: ``pos``, ``vel`` and the velocity part of
            ``x`` replaced by the reversed start, ``y`` by the sample's ``pos``; masses, ``sim_id``,
            ``block_start`` and ``sample_id`` kept.

        Examples
        --------
        >>> import tempfile
        >>> from pyg_se3.datasets import ParticleDynamics
        >>> tmp = tempfile.TemporaryDirectory()
        >>> data = ParticleDynamics(tmp.name, split="val", num_simulations=2, num_steps=20, progress=False)
        >>> backwards = data.time_reversed()
        >>> torch.equal(backwards[1].y, data[1].pos), torch.equal(backwards[1].sample_id, data[1].sample_id)
        (True, True)
        >>> tmp.cleanup()
        """
        samples = [self[i] for i in range(len(self))]
        starts = [
            {
                "num_steps": self.config["block_size"],
                "mass": sample.mass.squeeze(-1).double(),
                "pos": sample.pos.double(),
                "vel": sample.vel.double(),
            }
            for sample in samples
        ]
        reversed_samples = []
        for sample, (pos, vel) in zip(samples, self.simulate(self.config, starts), strict=True):
            new = sample.clone()
            new.pos = pos[-1].to(sample.pos.dtype)  # frames at the block's start and end
            new.vel = -vel[-1].to(sample.vel.dtype)
            new.x = torch.cat([sample.mass, new.vel], dim=-1)
            new.y = sample.pos.clone()
            reversed_samples.append(new)
        return reversed_samples

    def integrate_block(self, data: Data, num_steps: int | None = None) -> Tensor:
        """Positions after integrating a sample's own initial state ``num_steps`` integrator steps of ``dt``
        (default: one block, ``block_size * substeps``) with the dataset's potential and the library's
        integrator, in the sample's dtype."""
        steps = self.config["block_size"] * self.config["substeps"] if num_steps is None else num_steps
        mass = data.mass.squeeze(-1).unsqueeze(0)
        traj = velocity_verlet(
            data.pos.unsqueeze(0),
            data.vel.unsqueeze(0),
            mass,
            self.pair_potential(self.config, mass).forces,
            self.config["dt"],
            steps,
            save_every=steps,
        )
        return traj.pos[0, -1]


def _draw_int(bounds: list[int], g: torch.Generator) -> int:
    low, high = bounds
    if low == high:
        return low
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _lattice(n: int, spacing: float) -> Tensor:
    """The first ``n`` sites (lexicographic) of a centred simple cubic lattice of ``ceil(n^(1/3))^3`` sites."""
    side = math.ceil(round(n ** (1.0 / 3.0), 9))
    grid = torch.arange(side, dtype=torch.float64)
    sites = torch.cartesian_prod(grid, grid, grid)[:n]
    return (sites - (side - 1) / 2.0) * spacing
