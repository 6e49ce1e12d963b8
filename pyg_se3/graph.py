"""Neighbour graphs built from positions with torch-cluster, and smooth cutoff envelopes.

A graph builder is a callable ``(pos [N, 3], batch [N] | None) -> edge_index [2, E]`` whose edges ``(j, i)``
never connect two graphs of a batch and carry the relative position ``pos[j] - pos[i]`` (source minus target).
Index construction passes no gradient (indices are integers); with a cutoff :attr:`GraphBuilder.envelope`, the
weight ``u(|r| / r_c)`` of each edge does, and it vanishes smoothly at the cutoff, so models that scale messages
and attention by it (see :class:`~pyg_se3.basis.Basis`) are continuous in the positions as points enter and
leave a neighbourhood.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod

import torch
import torch_cluster
from torch import Tensor

from pyg_se3.checks import check_batch, check_int, check_pos

__all__ = [
    "KNN",
    "Complete",
    "GraphBuilder",
    "Radius",
    "complete_edge_index",
    "cosine_envelope",
    "polynomial_envelope",
]


def cosine_envelope(dist: Tensor, cutoff: float) -> Tensor:
    r"""``u(s) = (cos(pi s) + 1) / 2`` for ``s = |r| / r_c < 1``, else 0: ``u(0) = 1``, ``u(1) = u'(1) = 0``."""
    s = (dist / cutoff).clamp(max=1.0)
    return 0.5 * (torch.cos(math.pi * s) + 1.0)


def polynomial_envelope(dist: Tensor, cutoff: float, exponent: int = 6) -> Tensor:
    r"""The polynomial envelope of DimeNet (Gasteiger et al. 2020), ``p = exponent``:

    ``u(s) = 1 - (p+1)(p+2)/2 s^p + p(p+2) s^{p+1} - p(p+1)/2 s^{p+2}`` for ``s < 1``, else 0. It is flat near
    0 (``u = 1 - O(s^p)``) and ``u(1) = u'(1) = u''(1) = 0``.
    """
    p = exponent
    s = (dist / cutoff).clamp(max=1.0)
    return 1 - (p + 1) * (p + 2) / 2 * s**p + p * (p + 2) * s ** (p + 1) - p * (p + 1) / 2 * s ** (p + 2)


_ENVELOPES = {"cosine": cosine_envelope, "polynomial": polynomial_envelope}


class GraphBuilder(ABC):
    """Base class of the neighbour-graph builders."""

    envelope: str | None = None
    cutoff: float | None = None

    @abstractmethod
    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor: ...

    def __call__(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """``edge_index [2, E]`` (int64, on ``pos.device``); sources in row 0, targets in row 1.

        ``batch`` is each node's graph, sorted, each index non-negative and below ``N`` (as PyG's ``Batch`` builds
        it; :func:`~pyg_se3.checks.check_batch`), or ``None`` for one graph.

        Under ``torch.compile`` this runs eagerly, between compiled graphs: torch-cluster's operators cannot be
        traced, and the number of edges depends on the positions.
        """
        if torch.compiler.is_compiling():
            return _call_eagerly(self, pos, batch)
        check_pos(pos)
        if batch is not None:
            check_batch(batch, pos.shape[0], require_sorted=True)
        with torch.no_grad():
            return self.build(pos.detach(), batch)

    def edge_weight(self, dist: Tensor) -> Tensor | None:
        """Envelope weights ``u(|r| / r_c)`` of edges of length ``dist`` (any shape), or ``None`` without one."""
        if self.envelope is None:
            return None
        return _ENVELOPES[self.envelope](dist, self.cutoff)


class Radius(GraphBuilder):
    r"""Edges between points closer than ``r`` (torch-cluster ``radius_graph``), with a smooth envelope.

    Parameters
    ----------
    r
        The cutoff radius ``r_c``.
    max_num_neighbors
        At most this many incoming edges per node. torch-cluster would silently drop the excess in an arbitrary
        (index) order, which is not rotation-equivariant; instead, when a node has more neighbours than this,
        pyg_se3 warns once (naming how many nodes and the cap) and keeps each such node's
        ``max_num_neighbors`` **nearest** neighbours within ``r``.
    envelope
        ``"cosine"`` (default), ``"polynomial"`` or ``None``. Messages and attention weights of each edge are
        scaled by ``u(|r_ij| / r)``, which falls smoothly to 0 at the cutoff: the model's output is then
        continuous as points cross the radius, and gradients carry the information of who is about to become a
        neighbour (the gap that hard top-k/sorting leaves, see the Iterative SE(3)-Transformer texts).
        The envelope cannot make truncation by ``max_num_neighbors`` continuous.
    loop
        Include self-loops (zero-length edges).
    """

    def __init__(
        self, r: float, max_num_neighbors: int = 32, envelope: str | None = "cosine", loop: bool = False
    ) -> None:
        if not r > 0 or not math.isfinite(r):
            raise ValueError(f"r: expected a finite radius > 0, got {r}")
        max_num_neighbors = check_int(max_num_neighbors, "max_num_neighbors", 1)
        if envelope is not None and envelope not in _ENVELOPES:
            raise ValueError(f"envelope: expected one of {sorted(_ENVELOPES)} or None, got {envelope!r}")
        self.r, self.cutoff, self.max_num_neighbors = float(r), float(r), max_num_neighbors
        self.envelope, self.loop = envelope, loop
        self._warned = False

    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor:
        cap = self.max_num_neighbors
        # Ask for one more than the cap: a node that gets cap + 1 would have been truncated.
        edge_index = torch_cluster.radius_graph(
            pos, self.r, batch, loop=self.loop, max_num_neighbors=cap + 1, flow="source_to_target"
        )
        in_degree = torch.bincount(edge_index[1], minlength=pos.shape[0])
        crowded = int((in_degree > cap).sum())
        if crowded == 0:
            return edge_index
        if not self._warned:
            warnings.warn(
                f"Radius(r={self.r}): {crowded} node(s) have more than max_num_neighbors={cap} neighbours; "
                f"keeping the {cap} nearest of each (this warning is shown once per graph builder)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        nearest = torch_cluster.knn_graph(pos, cap, batch, loop=self.loop, flow="source_to_target")
        length = (pos[nearest[0]] - pos[nearest[1]]).norm(dim=-1)
        return nearest[:, length < self.r]

    def __repr__(self) -> str:
        return (
            f"Radius(r={self.r}, max_num_neighbors={self.max_num_neighbors}, envelope={self.envelope!r}, "
            f"loop={self.loop})"
        )


class KNN(GraphBuilder):
    """Each node receives edges from its ``k`` nearest neighbours in its own graph (torch-cluster ``knn_graph``).

    No envelope: which points are the ``k`` nearest changes discontinuously, whatever weights one puts on edges.
    """

    def __init__(self, k: int, loop: bool = False) -> None:
        self.k, self.loop = check_int(k, "k", 1), loop

    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor:
        return torch_cluster.knn_graph(pos, self.k, batch, loop=self.loop, flow="source_to_target")

    def __repr__(self) -> str:
        return f"KNN(k={self.k}, loop={self.loop})"


class Complete(GraphBuilder):
    """All ordered pairs of distinct nodes within each graph of the batch (``O(sum_g n_g^2)`` edges)."""

    def __init__(self, loop: bool = False) -> None:
        self.loop = loop

    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor:
        if batch is None:
            batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        return _complete_edge_index(batch, self.loop)  # batch checked by __call__

    def __repr__(self) -> str:
        return f"Complete(loop={self.loop})"


def complete_edge_index(batch: Tensor | int, loop: bool = False) -> Tensor:
    """All edges ``(j, i)`` within each graph of a sorted ``batch`` vector (checked as the graph builders check
    it, see :func:`~pyg_se3.checks.check_batch`), or of one graph of ``batch`` nodes; ordered by target ``i``,
    then source ``j``."""
    if isinstance(batch, Tensor):
        # N is its own length; the shape check then refuses anything but a vector
        check_batch(batch, batch.shape[0] if batch.dim() else 0, require_sorted=True)
    else:
        batch = torch.zeros(check_int(batch, "batch", 0), dtype=torch.long)
    return _complete_edge_index(batch, loop)


def _complete_edge_index(batch: Tensor, loop: bool) -> Tensor:
    num_nodes, device = batch.numel(), batch.device
    sizes = torch.bincount(batch)
    start = torch.cumsum(sizes, 0) - sizes  # first node of each graph
    graph_size = sizes[batch]  # per node: how many nodes its graph has
    target = torch.repeat_interleave(torch.arange(num_nodes, device=device), graph_size)
    first_slot = torch.cumsum(graph_size, 0) - graph_size
    source = start[batch[target]] + torch.arange(target.numel(), device=device) - first_slot[target]
    edge_index = torch.stack([source, target])
    return edge_index if loop else edge_index[:, source != target]


# Under torch.compile only (in eager mode its frames would shift the `stacklevel` of Radius's warning).
_call_eagerly = torch.compiler.disable(
    GraphBuilder.__call__, reason="neighbour search: torch-cluster operators, a data-dependent number of edges"
)
