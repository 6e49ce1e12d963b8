r"""The charged N-body benchmark of NRI (Kipf et al., 2018) in the 3D form of EGNN (Satorras et al., 2021).

Five charged particles interact by Coulomb forces; predict their positions 1000 steps later from positions,
velocities and charges. The setup (and its quirks: the full first kick of its "leapfrog", force components
clipped at 100) follows the reference generator used by EGNN, SEGNN and their successors; the random draws are
our own (torch, seeded), so the numbers differ from the files those papers used but the distribution is the
same.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from pyg_se3.datasets._base import (
    GeneratedDataset,
    check_int,
    check_positive,
    check_split,
    config_array,
    split_generator,
)
from pyg_se3.datasets.simulate import SQUARE_ROOTS, Coulomb, correctly_rounded_sqrt, kick_drift
from pyg_se3.fiber import Fiber
from pyg_se3.graph import complete_edge_index

__all__ = ["NBodyCharged"]

#: Simulations integrated together: small enough for the working set to stay in cache.
_CHUNK = 1000


class NBodyCharged(GeneratedDataset):
    r"""Charged particles under Coulomb forces; predict positions at frame 40 from the state at frame 30.

    **Simulation** (per sample): ``num_particles = 5`` particles of unit mass, charges :math:`q_i = \pm 1` with
    equal probability, positions :math:`x_i \sim N(0, I)`, velocities of speed 0.5 in uniformly random
    directions (:math:`0.5\, g / |g|`, :math:`g \sim N(0, I)`); forces

    .. math::
        F_i = \operatorname{clip}\Big(\sum_{j \ne i} q_i q_j \frac{x_i - x_j}{|x_i - x_j|^3},\ -100,\ 100\Big)

    (like charges repel; the clip acts per component), no walls; ``dt = 0.001`` with the reference generator's
    kick-drift leapfrog (:func:`~.simulate.kick_drift`). Of ``num_steps = 5000`` steps every
    ``save_every = 100``-th is saved: 49 frames, frame :math:`k` being the state after step
    :math:`(k + 1) \cdot 100`. Only the frames a sample needs are computed and stored.

    **Samples:** ``pos`` ``[5, 3]``, ``vel`` ``[5, 3]`` at frame ``input_frame = 30``; ``charge`` ``[5, 1]``;
    ``x`` ``[5, 4]`` ``= [q, vx, vy, vz]`` (:attr:`fiber` ``= Fiber({0: 1, 1: 1})``); ``y`` ``[5, 3]`` the
    positions at frame ``target_frame = 40``; ``edge_index`` ``[2, 20]`` the complete graph; ``edge_attr``
    ``[20, 1]`` :math:`q_i q_j`; ``sample_id`` ``[1]``.

    **Splits** 3000 / 2000 / 2000 simulations from independent random streams. As in EGNN, the train split is
    a prefix: ``num_samples=10000`` gives 10000 simulations whose first 3000 are the default train split.

    The raw files store float32 (the precision the benchmark's models consume); the simulation runs in
    float64, and rounding to float32 is deterministic, so regeneration is still bit for bit.

    Parameters
    ----------
    root, split, transform, pre_transform, pre_filter, force_reload, progress, dtype, seed
        As for :class:`~pyg_se3.datasets.ParticleDynamics`.
    num_samples
        Simulations in this split (default 3000 / 2000 / 2000).
    num_particles
        Particles per simulation (>= 2).
    pos_std, speed
        Initial position standard deviation per axis and initial speed.
    dt
        Time step (> 0).
    clip
        Bound on each force component (``None``: no clipping).
    num_steps, save_every
        Reference trajectory length and saving interval; ``(num_steps - 1) // save_every`` frames.
    input_frame, target_frame
        Frames of the input state and of the target positions.

    Examples
    --------
    >>> import tempfile
    >>> from pyg_se3.datasets import NBodyCharged
    >>> tmp = tempfile.TemporaryDirectory()
    >>> test = NBodyCharged(tmp.name, split="test", progress=False)
    >>> len(test), test[0].num_nodes, test[0].num_edges, NBodyCharged.fiber
    (2000, 5, 20, Fiber({0: 1, 1: 1}))

    Each edge carries the product of its end points' charges:

    >>> data = test[0]
    >>> source, target = data.edge_index
    >>> torch.equal(data.edge_attr, data.charge[source] * data.charge[target])
    True
    >>> tmp.cleanup()
    """

    name = "nbody_charged"
    fiber = Fiber({0: 1, 1: 1})
    default_num_samples: Mapping[str, int] = {"train": 3000, "val": 2000, "test": 2000}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_samples: int | None = None,
        *,
        num_particles: int = 5,
        pos_std: float = 1.0,
        speed: float = 0.5,
        dt: float = 0.001,
        clip: float | None = 100.0,
        num_steps: int = 5000,
        save_every: int = 100,
        input_frame: int = 30,
        target_frame: int = 40,
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
            num_samples=num_samples,
            num_particles=num_particles,
            pos_std=pos_std,
            speed=speed,
            dt=dt,
            clip=clip,
            num_steps=num_steps,
            save_every=save_every,
            input_frame=input_frame,
            target_frame=target_frame,
            seed=seed,
        )
        super().__init__(root, config, dtype, transform, pre_transform, pre_filter, force_reload, progress)

    @property
    def horizon(self) -> float:
        """Time between a sample's input and its target frame: ``dt * save_every * (target_frame - input_frame)``."""
        return self.config_horizon(self.config)

    @staticmethod
    def config_horizon(config: Mapping[str, Any]) -> float:
        """:attr:`horizon` of the dataset of ``config`` (from :meth:`make_config`), without building it."""
        return config["dt"] * config["save_every"] * (config["target_frame"] - config["input_frame"])

    @classmethod
    def make_config(
        cls,
        split: str = "train",
        num_samples: int | None = None,
        num_particles: int = 5,
        pos_std: float = 1.0,
        speed: float = 0.5,
        dt: float = 0.001,
        clip: float | None = 100.0,
        num_steps: int = 5000,
        save_every: int = 100,
        input_frame: int = 30,
        target_frame: int = 40,
        seed: int = 0,
    ) -> dict[str, Any]:
        check_split(split)
        if num_samples is None:
            num_samples = cls.default_num_samples[split]
        save_every = check_int("save_every", save_every, 1)
        num_steps = check_int("num_steps", num_steps, 1)
        num_frames = (num_steps - 1) // save_every
        input_frame = check_int("input_frame", input_frame, 0)
        target_frame = check_int("target_frame", target_frame, 0)
        if not input_frame < target_frame < num_frames:
            raise ValueError(
                f"target_frame: expected input_frame < target_frame < {num_frames} (the number of frames), got "
                f"input_frame={input_frame}, target_frame={target_frame}"
            )
        config = {
            "dataset": cls.name,
            "version": 1,
            "square_roots": SQUARE_ROOTS,
            "split": split,
            "num_samples": check_int("num_samples", num_samples, 1),
            "seed": check_int("seed", seed, 0),
            "num_particles": check_int("num_particles", num_particles, 2),
            "pos_std": check_positive("pos_std", pos_std),
            "speed": check_positive("speed", speed, allow_zero=True),
            "dt": check_positive("dt", dt),
            "clip": None if clip is None else check_positive("clip", clip),
            "num_steps": num_steps,
            "save_every": save_every,
            "input_frame": input_frame,
            "target_frame": target_frame,
        }
        return json.loads(json.dumps(config))

    # -------------------------------------------------------------- generation
    @staticmethod
    def initial_conditions(config: Mapping[str, Any], num: int | None = None) -> dict[str, Tensor]:
        """The first ``num`` (default: all) simulations' initial states, drawn one after another.

        Returns ``charge`` ``[S, N]`` and ``pos``/``vel`` ``[S, N, 3]`` (float64). Draws per simulation, in this
        order: charges (``u ~ U(0, 1)``, ``q = +1 if u < 0.5 else -1``), positions, velocity directions.
        """
        g = split_generator(config["seed"], config["split"])
        n = config["num_particles"]
        num = config["num_samples"] if num is None else num
        charge, pos, vel = [], [], []
        for _ in range(num):
            u = torch.rand(n, generator=g, dtype=torch.float64)
            charge.append(torch.where(u < 0.5, 1.0, -1.0).to(torch.float64))
            pos.append(config["pos_std"] * torch.randn(n, 3, generator=g, dtype=torch.float64))
            direction = torch.randn(n, 3, generator=g, dtype=torch.float64)
            # Norm written out per component: bit-reproducible (see simulate's module doc).
            norm = correctly_rounded_sqrt(
                direction[:, 0] * direction[:, 0]
                + direction[:, 1] * direction[:, 1]
                + direction[:, 2] * direction[:, 2]
            )
            vel.append(config["speed"] * (direction / norm.unsqueeze(-1)))
        return {"charge": torch.stack(charge), "pos": torch.stack(pos), "vel": torch.stack(vel)}

    @staticmethod
    def simulate(
        config: Mapping[str, Any], initial: Mapping[str, Tensor], num_frames: int | None = None, progress: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Saved frames ``0 .. num_frames - 1`` (default: up to ``target_frame``) of every simulation.

        Returns ``pos``, ``vel`` ``[S, F, N, 3]`` (float64). Simulations are integrated in chunks; each is
        bit-identical to integrating it alone.
        """
        num_frames = config["target_frame"] + 1 if num_frames is None else num_frames
        steps = num_frames * config["save_every"]
        pos_out, vel_out = [], []
        num = initial["pos"].shape[0]
        for start in range(0, num, _CHUNK):
            part = slice(start, start + _CHUNK)
            charge = initial["charge"][part]
            traj = kick_drift(
                initial["pos"][part],
                initial["vel"][part],
                torch.ones_like(charge),
                Coulomb(charge, clip=config["clip"]).forces,
                config["dt"],
                steps,
                save_every=config["save_every"],
                progress=progress,
            )
            pos_out.append(traj.pos)
            vel_out.append(traj.vel)
        return torch.cat(pos_out), torch.cat(vel_out)

    @classmethod
    def generate(cls, config: Mapping[str, Any], progress: bool = False) -> dict[str, np.ndarray]:
        """Raw arrays: ``charge`` int8 ``[S, N]``; ``pos`` float32 ``[S, 2, N, 3]`` (input and target frames);
        ``vel`` float32 ``[S, N, 3]`` (input frame); ``config``."""
        initial = cls.initial_conditions(config)
        pos, vel = cls.simulate(config, initial, progress=progress)
        frames = [config["input_frame"], config["target_frame"]]
        return {
            "config": config_array(config),
            "charge": initial["charge"].to(torch.int8).numpy(),
            "pos": pos[:, frames].to(torch.float32).numpy(),
            "vel": vel[:, config["input_frame"]].to(torch.float32).numpy(),
        }

    def time_reversed(self) -> list[Data]:
        r"""Every sample's time-reversed counterpart: the same simulation run backwards, from the target frame to
        the input frame.

        The simulator's kick-drift steps are reversible: with :math:`v^\pm = v_{n \pm 1/2}` the drift velocities
        before and after :math:`x_n`, the state saved at a frame is :math:`(x_n, v^-)` and the next step kicks to
        :math:`v^+ = v^- + \Delta t\, a(x_n)`. Started from :math:`(x_n, -v^+)`, the same steps give
        :math:`-v^-` and drift back to :math:`x_{n-1}`, and so on: the forces depend on positions only (the
        per-component clip too). So the counterpart of a sample starts at its target frame's state
        :math:`(x_T, -v_{T+1/2})` and its target is the sample's input positions.

        The packaged arrays keep the target frame's positions, not its velocity, so each sample is integrated
        again, in float64, from its stored input state (``pos``, ``vel``) over the horizon; its end state, rounded
        to the dataset's dtype, is the counterpart's input. Where a close encounter makes the motion chaotic the
        integration ends away from the stored target (as the float32 rounding of the inputs leaves every
        sample's target slightly uncertain): the counterpart is still an exact reversal of the trajectory it
        starts from, up to float64 rounding and the rounding of its inputs.

        Returns
        -------
        list[Data]
            One per sample, in order, with the sample's attributes: ``pos``, ``vel`` and the velocity part of
            ``x`` replaced by the reversed start, ``y`` by the sample's ``pos``; charges, edges and
            ``sample_id`` kept.

        Examples
        --------
        >>> import tempfile
        >>> from pyg_se3.datasets import NBodyCharged
        >>> tmp = tempfile.TemporaryDirectory()
        >>> data = NBodyCharged(tmp.name, split="val", num_samples=4, progress=False)
        >>> backwards = data.time_reversed()
        >>> torch.equal(backwards[2].y, data[2].pos), torch.equal(backwards[2].sample_id, data[2].sample_id)
        (True, True)
        >>> tmp.cleanup()
        """
        samples = [self[i] for i in range(len(self))]
        if not samples:
            return []
        pos = torch.stack([s.pos for s in samples]).double()
        vel = torch.stack([s.vel for s in samples]).double()
        charge = torch.stack([s.charge.squeeze(-1) for s in samples]).double()
        config = self.config
        steps = config["save_every"] * (config["target_frame"] - config["input_frame"])
        forces = Coulomb(charge, clip=config["clip"]).forces
        end = kick_drift(pos, vel, torch.ones_like(charge), forces, config["dt"], steps, save_every=steps)
        end_pos, end_vel = end.pos[:, -1], end.vel[:, -1]  # the saved velocity is the one that drifted in
        start_vel = -(end_vel + config["dt"] * forces(end_pos))  # minus the one that would drift on
        reversed_samples = []
        for s, sample in enumerate(samples):
            new = sample.clone()
            new.pos = end_pos[s].to(sample.pos.dtype)
            new.vel = start_vel[s].to(sample.vel.dtype)
            new.x = torch.cat([sample.charge, new.vel], dim=-1)
            new.y = sample.pos.clone()
            reversed_samples.append(new)
        return reversed_samples

    def build_samples(self, arrays: Mapping[str, np.ndarray]) -> list[Data]:
        n = self.config["num_particles"]
        edge_index = complete_edge_index(n)
        charge_all = self.tensor(arrays["charge"])
        pos_all, vel_all = self.tensor(arrays["pos"]), self.tensor(arrays["vel"])
        samples = []
        for s in range(charge_all.shape[0]):
            charge = charge_all[s].unsqueeze(-1)
            samples.append(
                Data(
                    pos=pos_all[s, 0].clone(),
                    vel=vel_all[s].clone(),
                    charge=charge,
                    x=torch.cat([charge, vel_all[s]], dim=-1),
                    y=pos_all[s, 1].clone(),
                    edge_index=edge_index.clone(),
                    edge_attr=charge[edge_index[0]] * charge[edge_index[1]],
                    sample_id=torch.tensor([s]),
                )
            )
        return samples
