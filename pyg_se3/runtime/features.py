r"""Input features that respect more of the physics than rotations: Galilean boosts and pair motion.

For particles without walls the motion is Galilean invariant: giving every particle of a system the same extra
velocity :math:`u` moves every later position by :math:`u t` and changes nothing else. A model that predicts
``pos + vel * t`` plus a correction computed from :func:`relative_velocity` respects that exactly.

:func:`pair_motion` gives each edge three invariants (under rotations, translations and boosts) of its two
particles at one instant: their distance, radial speed and relative speed,

.. math::
    \big(|r|,\; r \cdot v / |r|,\; |v|\big), \qquad r = x_j - x_i, \quad v = v_j - v_i,

which with the pair's charges or masses fix the two-body part of their motion. Used as edge features of a graph
rebuilt at moved positions, they keep the input frame's pair geometry in view of the radial networks.

:func:`softened_inverse_distance` gives each edge :math:`1 / \sqrt{|r|^2 + s^2}`, the Plummer-softened inverse
distance of N-body codes: the shape of a Coulomb or gravitational potential, which a radial network fed the
distance alone must build from smooth functions of it, and which is largest for the close pairs whose motion
is hardest to predict. The softening length :math:`s > 0` keeps it finite, at most :math:`1/s`, for coincident
particles. Its powers :math:`k = 1 .. P` can be asked for too: the square, :math:`1 / (|r|^2 + s^2)`, is the
shape of the softened force's magnitude. Scaled by :math:`s^k` they lie in :math:`(0, 1]`, of the order of a
radial network's other inputs, rather than up to :math:`s^{-k}`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter

from pyg_se3.checks import check_edge_index, check_pos, check_vectors

__all__ = ["pair_motion", "relative_velocity", "softened_inverse_distance"]


def relative_velocity(vel: Tensor, batch: Tensor | None = None, mass: Tensor | None = None) -> Tensor:
    r"""Velocities relative to the centre of mass of each system: :math:`v_i - \sum_j m_j v_j / \sum_j m_j`.

    Parameters
    ----------
    vel
        ``[N, 3]`` velocities.
    batch
        ``[N]`` system of each node (PyG's ``batch``); ``None``: one system.
    mass
        ``[N]`` or ``[N, 1]`` positive masses; ``None``: equal masses (the mean velocity).

    Returns
    -------
    ``[N, 3]``, whose mass-weighted sum over each system is zero.
    """
    check_vectors(vel, None, "vel", "velocities")
    n = vel.shape[0]
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=vel.device)
    if batch.shape != (n,) or batch.dtype != torch.long:
        raise ValueError(f"batch: expected a long tensor of shape [{n}], got {batch.dtype} {tuple(batch.shape)}")
    if mass is None:
        mass = torch.ones(n, dtype=vel.dtype, device=vel.device)
    mass = mass.reshape(-1) if mass.dim() == 2 and mass.shape[1:] == (1,) else mass
    if mass.shape != (n,):
        raise ValueError(f"mass: expected shape [{n}] or [{n}, 1], got {tuple(mass.shape)}")
    if n and not bool((mass > 0).all()):
        raise ValueError("mass: expected positive masses")
    num_graphs = int(batch.max()) + 1 if n else 0
    weight = mass.to(vel.dtype).unsqueeze(-1)
    momentum = scatter(weight * vel, batch, dim=0, dim_size=num_graphs, reduce="sum")
    total = scatter(weight, batch, dim=0, dim_size=num_graphs, reduce="sum")
    return vel - (momentum / total)[batch]


def pair_motion(pos: Tensor, vel: Tensor, edge_index: Tensor) -> Tensor:
    r"""``[E, 3]`` per edge ``j -> i``: distance :math:`|r|`, radial speed :math:`r \cdot v / |r|` (positive when
    the particles separate) and relative speed :math:`|v|`, with :math:`r = x_j - x_i`, :math:`v = v_j - v_i`.

    Parameters
    ----------
    pos, vel
        ``[N, 3]`` positions and velocities at one instant.
    edge_index
        ``[2, E]`` (source, target) pairs; the radial speed of a pair at distance zero is 0.
    """
    check_pos(pos)
    check_vectors(vel, pos.shape[0], "vel", "velocities")
    check_edge_index(edge_index, pos.shape[0])
    src, dst = edge_index
    r, v = pos[src] - pos[dst], vel[src] - vel[dst]
    distance = r.norm(dim=-1)
    radial_speed = (r * v).sum(-1) / distance.clamp_min(torch.finfo(pos.dtype).tiny)
    return torch.stack([distance, radial_speed, v.norm(dim=-1)], dim=-1)


def softened_inverse_distance(
    pos: Tensor, edge_index: Tensor, softening: float, powers: int = 1, scaled: bool = False
) -> Tensor:
    r"""``[E, powers]`` per edge ``j -> i``: :math:`(|x_j - x_i|^2 + s^2)^{-k/2}` for :math:`k = 1 ..` ``powers``,
    with :math:`s` = ``softening``; the first column is the softened inverse distance.

    Parameters
    ----------
    pos
        ``[N, 3]`` positions.
    edge_index
        ``[2, E]`` (source, target) pairs.
    softening
        The softening length :math:`s > 0`: the value for coincident particles is :math:`s^{-k}`, and for pairs much
        farther apart than :math:`s` it is the inverse distance to the power :math:`k`.
    powers
        How many powers, :math:`P \geq 1` (default 1: the inverse distance alone; 2 adds
        :math:`1 / (|r|^2 + s^2)`, the shape of the softened force's magnitude).
    scaled
        Multiply the power :math:`k` by :math:`s^k`: :math:`(s^2 / (|r|^2 + s^2))^{k/2}`, in :math:`(0, 1]`, 1 for
        coincident particles (default False: in units of inverse length, up to :math:`s^{-k}`).
    """
    check_pos(pos)
    check_edge_index(edge_index, pos.shape[0])
    if not softening > 0 or softening == float("inf"):
        raise ValueError(f"softening: expected a positive finite length, got {softening!r}")
    if isinstance(powers, bool) or not isinstance(powers, int) or powers < 1:
        raise ValueError(f"powers: expected an integer >= 1, got {powers!r}")
    src, dst = edge_index
    inverse = ((pos[src] - pos[dst]).pow(2).sum(-1, keepdim=True) + softening**2).rsqrt()
    if scaled:
        inverse = inverse * softening
    return torch.cat([inverse.pow(k) for k in range(1, powers + 1)], dim=-1)
