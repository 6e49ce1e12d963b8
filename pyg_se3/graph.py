"""Neighbour graphs built from positions (torch-cluster, or an exact PyTorch search), and smooth cutoff envelopes.

A graph builder is a callable ``(pos [N, 3], batch [N] | None) -> edge_index [2, E]`` whose edges ``(j, i)``
never connect two graphs of a batch and carry the relative position ``pos[j] - pos[i]`` (source minus target).
Index construction passes no gradient (indices are integers); with a cutoff :attr:`GraphBuilder.envelope`, the
weight ``u(|r| / r_c)`` of each edge does, and it vanishes smoothly at the cutoff, so models that scale messages
and attention by it (see :class:`~pyg_se3.basis.Basis`) are continuous in the positions as points enter and
leave a neighbourhood.

Engines. :class:`Radius` and :class:`KNN` search neighbours with torch-cluster where it is installed and runs on
the positions' device (CPU; CUDA only when torch-cluster was compiled with CUDA, and its CUDA kNN only up to 100
neighbours), and otherwise with an exact, batched pure-PyTorch search (``engine="torch"``; any device) that
computes distances chunk by chunk, each target against the nodes of its own graph only, so memory stays
``O(N K)`` and below :data:`_CHUNK_ENTRIES` distances at a time, never ``O(N^2)``. Both engines return the same
tensor: edges ordered by target, then source (as :func:`complete_edge_index`), the same truncation rule and
warning. They differ only where distances tie exactly (lattices, coincident points): torch-cluster's CPU k-d tree
keeps whichever tied point it visits first, the PyTorch search the smallest source index. PyG 2.8's own
``knn_graph``/``radius_graph`` are no fallback: without pyg-lib they raise ``ImportError`` (they no longer use
torch-cluster either).
"""

from __future__ import annotations

import math
import numbers
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

from pyg_se3.checks import check_batch, check_int, check_pos

try:
    import torch_cluster
except (ImportError, OSError, RuntimeError) as error:
    # Not installed (ImportError), built against another torch (OSError loading its operators) or another CUDA
    # (RuntimeError from its own version check): the PyTorch engine then does every search.
    torch_cluster = None
    _TORCH_CLUSTER_ERROR: BaseException | None = error
else:
    _TORCH_CLUSTER_ERROR = None

__all__ = [
    "KNN",
    "Complete",
    "GraphBuilder",
    "Radius",
    "check_envelope",
    "check_radius",
    "complete_edge_index",
    "cosine_envelope",
    "envelope_weight",
    "polynomial_envelope",
    "reverse_edge_pairs",
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

ENGINES = ("auto", "torch-cluster", "torch")
# torch-cluster's CUDA kNN kernel keeps its candidates in a fixed array of 100 (it asserts k <= 100).
_TORCH_CLUSTER_CUDA_MAX_K = 100
# The PyTorch engine's distance block: at most this many (target, candidate source) pairs at a time. Each pair
# holds a distance, a temporary and masks (plus a source index in blocks that span several graphs): a peak of
# ~100 MiB on the CPU in float32 whatever N is (measured: kNN of one graph of 6,000 or 16,000 points); large
# enough that per-block overheads do not matter on a GPU.
_CHUNK_ENTRIES = 2**22


def _torch_cluster_has_cuda() -> bool:
    """Whether torch-cluster's operators were compiled with CUDA (its CPU-only build reports version -1)."""
    return torch_cluster is not None and int(torch.ops.torch_cluster.cuda_version()) != -1


def _engine(pos: Tensor, k: int = 1) -> str:
    """The engine that ``engine="auto"`` runs on ``pos``: ``"torch-cluster"`` or ``"torch"``.

    Parameters
    ----------
    pos
        The positions; only their device matters.
    k
        The most neighbours per node torch-cluster's kNN would be asked for (its CUDA kernel takes at most 100).
    """
    if torch_cluster is None:
        return "torch"
    if pos.device.type == "cpu":
        return "torch-cluster"
    if pos.device.type == "cuda" and _torch_cluster_has_cuda() and k <= _TORCH_CLUSTER_CUDA_MAX_K:
        return "torch-cluster"
    return "torch"  # MPS, XPU, meta, ...: torch-cluster has no kernels there


def _check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {list(ENGINES)}, got {engine!r}")
    if engine == "torch-cluster" and torch_cluster is None:
        raise ImportError(
            f"engine='torch-cluster': torch_cluster cannot be imported ({_TORCH_CLUSTER_ERROR}); "
            "use engine='auto' or 'torch'"
        )
    return engine


def _select_engine(engine: str, pos: Tensor, k: int) -> str:
    """The engine a builder set to ``engine`` runs on ``pos`` (``k``: as for :func:`_engine`)."""
    if engine == "auto":
        return _engine(pos, k)
    if engine == "torch-cluster" and _engine(pos, k) != "torch-cluster":
        raise RuntimeError(
            f"engine='torch-cluster': torch-cluster cannot search {k} neighbours on {pos.device} (it was "
            f"{'' if _torch_cluster_has_cuda() else 'not '}compiled with CUDA, and its CUDA kNN takes at most "
            f"{_TORCH_CLUSTER_CUDA_MAX_K}); use engine='auto' or 'torch'"
        )
    return engine


def check_radius(value: object, name: str) -> float:
    """``value`` as a ``float`` if it is a finite real number ``> 0`` (a cutoff radius), else a ``ValueError``
    naming the argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite radius > 0, got {value!r}")
    return float(value)


def check_envelope(kind: str | None, allow_none: bool = True) -> str | None:
    """``kind`` if it names an envelope (``"cosine"``, ``"polynomial"``; or ``None`` where allowed), else a
    ``ValueError`` naming the argument ``envelope``."""
    if (kind is None and allow_none) or (isinstance(kind, str) and kind in _ENVELOPES):
        return kind
    expected = f"one of {sorted(_ENVELOPES)}" + (" or None" if allow_none else "")
    raise ValueError(f"envelope: expected {expected}, got {kind!r}")


def envelope_weight(dist: Tensor, cutoff: float, kind: str = "cosine") -> Tensor:
    """The weights ``u(|r| / r_c)`` of edges of length ``dist`` (any shape) for envelope ``kind``; 0 beyond the
    cutoff. Differentiable in ``dist``."""
    return _ENVELOPES[check_envelope(kind, allow_none=False)](dist, cutoff)


class GraphBuilder(ABC):
    """Base class of the neighbour-graph builders."""

    envelope: str | None = None
    cutoff: float | None = None
    engine: str = "auto"  # see Radius and KNN; also what builders pickled before engines existed load with
    #: Whether the edges depend on the positions (``False`` for :class:`Complete`: the iterative model then builds
    #: the graph, and finds its reverse pairs, once per forward pass instead of once per iteration).
    depends_on_positions: bool = True

    @abstractmethod
    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor: ...

    def __call__(self, pos: Tensor, batch: Tensor | None = None) -> Tensor:
        """``edge_index [2, E]`` (int64, on ``pos.device``); sources in row 0, targets in row 1.

        ``batch`` is each node's graph, sorted, each index non-negative and below ``N`` (as PyG's ``Batch`` builds
        it; :func:`~pyg_se3.checks.check_batch`), or ``None`` for one graph.

        Under ``torch.compile`` this runs eagerly, between compiled graphs: torch-cluster's operators cannot be
        traced, and the number of edges depends on the positions. :class:`Radius` and :class:`KNN` order their
        edges by target, then source, whichever engine searched.
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
        return envelope_weight(dist, self.cutoff, self.envelope)


class Radius(GraphBuilder):
    r"""Edges between points closer than ``r`` (``|pos[j] - pos[i]|^2 < r^2``), with a smooth envelope.

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
    engine
        ``"auto"`` (default): torch-cluster's ``radius_graph`` where it runs on the positions' device, else the
        exact PyTorch search (see the module's docstring); ``"torch-cluster"`` or ``"torch"`` to force one. Both
        return the same edges in the same order (by target, then source); among neighbours tied at exactly the
        same distance, truncation keeps an arbitrary one with torch-cluster, the smallest index with ``"torch"``.

    Examples
    --------
    Three points on a line; only the first two are closer than ``r``. Row 0 holds the sources, row 1 the targets:

    >>> import torch
    >>> from pyg_se3.graph import Radius
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    >>> graph = Radius(r=1.5)
    >>> graph(pos, None)
    tensor([[1, 0],
            [0, 1]])

    The cosine envelope's weight of an edge falls from 1 at length 0 to 0 at the cutoff:

    >>> graph.edge_weight(torch.tensor([0.0, 0.75, 1.5]))
    tensor([1.0000, 0.5000, 0.0000])
    """

    def __init__(
        self,
        r: float,
        max_num_neighbors: int = 32,
        envelope: str | None = "cosine",
        loop: bool = False,
        engine: str = "auto",
    ) -> None:
        r = check_radius(r, "r")
        max_num_neighbors = check_int(max_num_neighbors, "max_num_neighbors", 1)
        check_envelope(envelope)
        self.r, self.cutoff, self.max_num_neighbors = r, r, max_num_neighbors
        self.envelope, self.loop, self.engine = envelope, loop, _check_engine(engine)
        self._warned = False

    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor:
        cap, num_nodes = self.max_num_neighbors, pos.shape[0]
        r2 = _squared_radius(self.r, pos.dtype)
        # torch-cluster's kNN (for crowded nodes) asks for one more neighbour without self-loops
        if _select_engine(self.engine, pos, cap + (not self.loop)) == "torch":
            edge_index, crowded = _radius_torch(pos, batch, r2, cap, self.loop)
            crowded = int(crowded)
        else:
            # Ask for one more than the cap: a node that gets cap + 1 would have been truncated.
            edge_index = torch_cluster.radius_graph(
                pos, self.r, batch, loop=self.loop, max_num_neighbors=cap + 1, flow="source_to_target"
            )
            in_degree = torch.bincount(edge_index[1], minlength=num_nodes)
            crowded = int((in_degree > cap).sum())
            if crowded:
                edge_index = torch_cluster.knn_graph(pos, cap, batch, loop=self.loop, flow="source_to_target")
                # the radius search's own test (same sum, same rounding), so both engines agree at the cutoff
                edge_index = edge_index[:, _squared_distance(pos, edge_index[0], edge_index[1]) < r2]
            edge_index = _by_target_then_source(edge_index, num_nodes)
        if crowded and not self._warned:
            warnings.warn(
                f"Radius(r={self.r}): {crowded} node(s) have more than max_num_neighbors={cap} neighbours; "
                f"keeping the {cap} nearest of each (this warning is shown once per graph builder)",
                RuntimeWarning,
                stacklevel=3,
            )
            self._warned = True
        return edge_index

    def __repr__(self) -> str:
        return (
            f"Radius(r={self.r}, max_num_neighbors={self.max_num_neighbors}, envelope={self.envelope!r}, "
            f"loop={self.loop}, engine={self.engine!r})"
        )


class KNN(GraphBuilder):
    """Each node receives edges from its ``k`` nearest neighbours in its own graph (all of them in a graph of at
    most ``k`` nodes, ``k + 1`` without self-loops).

    No envelope: which points are the ``k`` nearest changes discontinuously, whatever weights one puts on edges.

    Parameters
    ----------
    k
        Neighbours per node (the node itself counts as one with ``loop=True``).
    loop
        Include self-loops.
    engine
        ``"auto"`` (default): torch-cluster's ``knn_graph`` where it runs on the positions' device, else the exact
        PyTorch search (see the module's docstring); ``"torch-cluster"`` or ``"torch"`` to force one. Both return
        the same edges in the same order (by target, then source); among neighbours tied at exactly the k-th
        distance, torch-cluster keeps an arbitrary one, ``"torch"`` the smallest index.

    Examples
    --------
    >>> import torch
    >>> from pyg_se3.graph import KNN
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 0.0, 0.0]])
    >>> KNN(k=1)(pos, None)  # each node's nearest neighbour sends to it
    tensor([[1, 0, 1],
            [0, 1, 2]])
    """

    def __init__(self, k: int, loop: bool = False, engine: str = "auto") -> None:
        self.k, self.loop, self.engine = check_int(k, "k", 1), loop, _check_engine(engine)

    def build(self, pos: Tensor, batch: Tensor | None) -> Tensor:
        if _select_engine(self.engine, pos, self.k + (not self.loop)) == "torch":
            return _knn_torch(pos, batch, self.k, self.loop)
        edge_index = torch_cluster.knn_graph(pos, self.k, batch, loop=self.loop, flow="source_to_target")
        return _by_target_then_source(edge_index, pos.shape[0])

    def __repr__(self) -> str:
        return f"KNN(k={self.k}, loop={self.loop}, engine={self.engine!r})"


class Complete(GraphBuilder):
    """All ordered pairs of distinct nodes within each graph of the batch (``O(sum_g n_g^2)`` edges).

    Examples
    --------
    Two graphs of two nodes each; no edge joins them:

    >>> import torch
    >>> from pyg_se3.graph import Complete
    >>> Complete()(torch.zeros(4, 3), torch.tensor([0, 0, 1, 1]))
    tensor([[1, 0, 3, 2],
            [0, 1, 2, 3]])
    """

    depends_on_positions = False

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


# ------------------------------------------------------------------------------------------ the PyTorch engine
def _squared_radius(r: float, dtype: torch.dtype) -> float:
    """``r^2`` rounded to ``dtype``: torch-cluster compares squared lengths with ``r * r`` cast to the positions'
    type, so the engines draw the cutoff at the same value."""
    return float(torch.tensor(r * r, dtype=torch.float64).to(dtype))


def _squared_distance(pos: Tensor, source: Tensor, target: Tensor) -> Tensor:
    """``|pos[source] - pos[target]|^2`` for index tensors of broadcastable shapes.

    Summed ``x``, then ``y``, then ``z``, each difference squared separately (no fused multiply-add, no reduction
    kernel with its own order): the rounding of torch-cluster's CPU searches, so that a point at the cutoff or
    at the k-th distance falls on the same side in both engines.
    """
    squared = None
    for coordinate in pos.unbind(1):
        diff = coordinate[source] - coordinate[target]
        diff.mul_(diff)
        squared = diff if squared is None else squared.add_(diff)
    return squared


def _nearest(squared: Tensor, candidate: Tensor, k: int) -> Tensor:
    """Per row, the mask of the ``k`` candidates with the smallest ``squared`` distance (all, when fewer).

    Among candidates tied at the k-th distance the leftmost columns (the smallest source indices) are kept:
    :func:`torch.topk` leaves its choice among equal values unspecified, so only the k-th *value* is taken from
    it. Overwrites ``squared``.
    """
    if squared.shape[1] <= k:
        return candidate
    squared.masked_fill_(~candidate, math.inf)
    kth = squared.topk(k, dim=1, largest=False, sorted=True).values[:, -1:]  # inf in rows of < k candidates
    keep = candidate & (squared <= kth)
    tied_rows = (keep.sum(1) > k).nonzero().squeeze(1)  # ties at the k-th distance: rare but for lattices
    if tied_rows.numel():
        closer = squared[tied_rows] < kth[tied_rows]
        tied = keep[tied_rows] & ~closer
        room = k - closer.sum(1, keepdim=True)
        keep[tied_rows] = closer | (tied & (tied.cumsum(1, dtype=torch.int32) <= room))
    return keep


def _chunks(
    num_nodes: int, batch: Tensor | None, device: torch.device, budget: int
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """The candidate pairs of each node of a sorted ``batch`` with the nodes of its own graph, block by block.

    Yields ``(target [R], source [R or 1, W], candidate [R or 1, W])`` for consecutive targets: row ``t`` lists
    the nodes of ``target[t]``'s graph, in index order, in its first columns; the columns beyond that graph's
    size (padding up to ``W``, the largest graph in the block) are not candidates. A block within one graph has
    one row of sources for all its targets. Each block has ``R * W <= budget`` entries, except a single row of a
    graph with more than ``budget`` nodes: memory is ``O(budget)``, never ``N x N``, and a batch of small graphs
    does not pay for the pairs across its graphs.
    """
    if batch is None:
        sizes = torch.tensor([num_nodes])
        first = size = None
    else:
        counts = torch.bincount(batch)
        first, size = (torch.cumsum(counts, 0) - counts)[batch], counts[batch]
        sizes = counts.cpu()  # one read-back of B graph sizes, to plan the blocks on the host
    size_host = torch.repeat_interleave(sizes, sizes)
    first_host = torch.repeat_interleave(torch.cumsum(sizes, 0) - sizes, sizes)
    start = 0
    while start < num_nodes:
        # the widest graph only grows as rows are added: the rows that fit are a prefix of the window
        window = size_host[start : start + max(1, budget // int(size_host[start]))]
        widest = torch.cummax(window, 0).values
        rows = max(1, int((torch.arange(1, len(window) + 1) * widest <= budget).sum()))
        width, stop = int(widest[rows - 1]), start + rows
        column = torch.arange(width, device=device)
        target = torch.arange(start, stop, device=device)
        if first is None or first_host[start] == first_host[stop - 1]:
            # one graph: its nodes are the block's columns, no gather of an [R, W] index needed
            yield target, (int(first_host[start]) + column)[None], torch.ones(1, width, dtype=torch.bool, device=device)
        else:
            source = (first[start:stop, None] + column).clamp_(max=num_nodes - 1)  # padding: any valid index
            yield target, source, column < size[start:stop, None]
        start = stop


def _edges(target: Tensor, source: Tensor, keep: Tensor) -> Tensor:
    """``edge_index [2, E]`` of the kept pairs of a block (``target [R]``, ``source [R or 1, W]``, ``keep [R, W]``),
    row by row, column by column: by target, then source. Each block is reduced to its edges at once, so that
    no mask outlives its block."""
    row, column = keep.nonzero(as_tuple=True)
    return torch.stack([source.expand_as(keep)[row, column], target[row]])


def _cat(edges: list[Tensor], device: torch.device) -> Tensor:
    return torch.cat(edges, 1) if edges else torch.empty(2, 0, dtype=torch.long, device=device)


def _knn_torch(pos: Tensor, batch: Tensor | None, k: int, loop: bool) -> Tensor:
    """The ``k`` nearest sources of each node in its graph (PyTorch engine of :class:`KNN`)."""
    edges = []
    for target, source, candidate in _chunks(pos.shape[0], batch, pos.device, _CHUNK_ENTRIES):
        if not loop:
            candidate = candidate & (source != target[:, None])
        squared = _squared_distance(pos, source, target[:, None])
        edges.append(_edges(target, source, _nearest(squared, candidate.expand_as(squared), k)))
    return _cat(edges, pos.device)


def _radius_torch(pos: Tensor, batch: Tensor | None, r2: float, cap: int, loop: bool) -> tuple[Tensor, Tensor]:
    """Edges shorter than ``sqrt(r2)``, at most the ``cap`` nearest per target (PyTorch engine of
    :class:`Radius`), and the number of targets that had more than ``cap`` (a 0-d tensor)."""
    edges, crowded = [], torch.zeros((), dtype=torch.long, device=pos.device)
    for target, source, candidate in _chunks(pos.shape[0], batch, pos.device, _CHUNK_ENTRIES):
        if not loop:
            candidate = candidate & (source != target[:, None])
        squared = _squared_distance(pos, source, target[:, None])
        within = candidate & (squared < r2)
        crowded += (within.sum(1) > cap).sum()
        edges.append(_edges(target, source, _nearest(squared, within, cap)))
    return _cat(edges, pos.device), crowded


def reverse_edge_pairs(edge_index: Tensor, num_nodes: int) -> Tensor | None:
    """The edges of a symmetric graph in reverse pairs: ``[2, E / 2]``, row 0 the edges ``(j, i)`` with ``j < i``,
    row 1 the index of each one's reverse ``(i, j)``; ``None`` unless every edge has exactly one reverse (a
    directed graph such as a kNN graph, a self-loop, a repeated edge).

    Radius and complete graphs without self-loops are symmetric: an edge and its reverse have the same length and
    opposite directions, so a kernel whose radial weights depend on invariants of the pair alone needs them once
    per pair (:class:`~pyg_se3.nn.EdgeKernel`; :func:`~pyg_se3.basis.compute_basis` finds the pairs).

    Parameters
    ----------
    edge_index
        ``[2, E]`` integer edges ``(j, i)``, indices below ``num_nodes``.
    num_nodes
        Number of nodes.

    Examples
    --------
    >>> import torch
    >>> from pyg_se3.graph import reverse_edge_pairs
    >>> reverse_edge_pairs(torch.tensor([[1, 0, 2, 0], [0, 1, 0, 2]]), 3)
    tensor([[1, 3],
            [0, 2]])
    >>> reverse_edge_pairs(torch.tensor([[1, 2], [0, 0]]), 3) is None  # no edge 0 -> 1
    True
    """
    num_edges = edge_index.shape[1]
    source, target = edge_index
    forward = (source < target).nonzero().squeeze(1)
    if num_edges == 0 or 2 * forward.numel() != num_edges:  # no edges, self-loops or unbalanced directions
        return None
    key = source * num_nodes + target
    order = torch.argsort(key)
    sorted_key = key[order]
    if bool((sorted_key[1:] == sorted_key[:-1]).any()):  # a repeated edge
        return None
    # the reverse of each forward edge, if present; distinct and all with j > i, so they are the other half
    wanted = target[forward] * num_nodes + source[forward]
    found = torch.searchsorted(sorted_key, wanted).clamp_max(num_edges - 1)
    if not torch.equal(sorted_key[found], wanted):
        return None
    return torch.stack([forward, order[found]])


def _by_target_then_source(edge_index: Tensor, num_nodes: int) -> Tensor:
    """``edge_index`` reordered by target, then source: the PyTorch engine's order. torch-cluster's CPU kNN
    orders each target's sources by distance, its radius search in k-d tree order, its CUDA kernels by index."""
    return edge_index[:, torch.argsort(edge_index[1] * num_nodes + edge_index[0])]


# Under torch.compile only (in eager mode its frames would shift the `stacklevel` of Radius's warning).
_call_eagerly = torch.compiler.disable(
    GraphBuilder.__call__, reason="neighbour search: torch-cluster operators, a data-dependent number of edges"
)
