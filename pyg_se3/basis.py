r"""The equivariant kernel basis of a graph: spherical harmonics of the edge directions times Clebsch–Gordan.

For an edge ``(j, i)`` of ``edge_index`` (PyG's source-to-target flow: ``j = edge_index[0]`` sends,
``i = edge_index[1]`` receives) the **relative position is** ``r_ij = pos[j] - pos[i]``, everywhere in pyg_se3.

The kernel mapping a degree-``k`` input to a degree-``l`` output is

.. math::
    W^{lk}(r) = \sum_{J=|k-l|}^{k+l} \varphi^{lk}_J(|r|) \, B^{lk}_J(\hat r), \qquad
    B^{lk}_J(\hat r) = \sqrt{2l+1} \sum_{m=-J}^{J} Y_{Jm}(\hat r) \, Q^{lk}_{Jm},

with real spherical harmonics ``Y_J`` in Cartesian form (e3nn, ``normalization='component'``) and
``Q^{lk}_J = e3nn.o3.wigner_3j(l, k, J)`` (Frobenius norm 1; the factor ``sqrt(2l+1)`` keeps the per-component
variance of a feature unchanged by the kernel). ``B`` depends on geometry only: :func:`compute_basis` evaluates it
once per graph, and every layer reuses it. It is differentiable with respect to positions.

**Parity.** Under the inversion ``r -> -r`` the harmonic ``Y_J`` changes sign for odd ``J``, and a feature of
degree ``l`` of natural parity (a true scalar, vector, ...; the parity :attr:`Fiber.irreps
<pyg_se3.fiber.Fiber.irreps>` names) by ``(-1)^l``. The terms with ``k + l + J`` odd therefore couple a true
tensor to a pseudo-tensor (for ``k = l = 1``, ``J = 1`` is the cross product ``r x f``). With ``parity=True`` the
basis keeps only the terms with ``k + l + J`` even, ``J = |k-l|, |k-l|+2, .., k+l``: layers built on it are
equivariant under reflections too, E(3) rather than SE(3).

Layout, chosen for the contraction order used by the layers (basis with features first, radial weights last):
``basis[(k, l)]`` is ``[E, 2k+1, nJ * (2l+1)]`` with ``nJ = 2 min(k, l) + 1`` (``min(k, l) + 1`` with
``parity=True``; :func:`num_J`) and the last axis ordered ``(J, m_out)``. Then
``x_j^k [E, C, 2k+1] @ basis[(k, l)]`` is ``[E, C, nJ, 2l+1]`` and flattens for free to ``[E, C * nJ, 2l+1]``,
ready for the per-edge radial weights ``[E, C_out, C * nJ]``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import torch
from e3nn import o3
from torch import Tensor

from pyg_se3._amp import autocast_disabled
from pyg_se3.checks import check_edge_index, check_int, check_pos
from pyg_se3.graph import reverse_edge_pairs

__all__ = ["Basis", "clebsch_gordan_block", "compute_basis", "edge_harmonics", "edge_vectors", "num_J"]


def num_J(k: int, l: int, parity: bool = False) -> int:
    """Number of angular frequencies ``J`` coupling degrees ``k`` and ``l``: ``2 min(k, l) + 1``, or
    ``min(k, l) + 1`` with ``parity=True`` (those with ``k + l + J`` even)."""
    return min(k, l) + 1 if parity else 2 * min(k, l) + 1


def _frequencies(k: int, l: int, parity: bool) -> range:
    """The ``J`` of the basis of the pair ``(k, l)``, in order: ``|k-l| .. k+l``, every other one with ``parity``."""
    return range(abs(k - l), k + l + 1, 2 if parity else 1)


@functools.cache
def _clebsch_gordan_block_cpu(k: int, l: int, parity: bool) -> Tensor:
    """``[sum_J (2J+1), (2k+1) * nJ * (2l+1)]`` in float64 on the CPU (computed once per process)."""
    J_min, J_max = abs(k - l), k + l
    width = (J_max + 1) ** 2 - J_min**2  # rows for every J of the range: a contiguous slice of the harmonics
    Q = torch.zeros(width, 2 * k + 1, num_J(k, l, parity), 2 * l + 1, dtype=torch.float64)
    for index, J in enumerate(_frequencies(k, l, parity)):
        row = J * J - J_min * J_min
        w3j = o3.wigner_3j(l, k, J, dtype=torch.float64)  # [2l+1, 2k+1, 2J+1]
        Q[row : row + 2 * J + 1, :, index, :] = w3j.permute(2, 1, 0) * (2 * l + 1) ** 0.5
    return Q.reshape(width, -1)


def _clebsch_gordan_shape(k: int, l: int, parity: bool) -> tuple[int, int]:
    J_min, J_max = abs(k - l), k + l
    return (J_max + 1) ** 2 - J_min**2, (2 * k + 1) * num_J(k, l, parity) * (2 * l + 1)


@functools.lru_cache(maxsize=256)
def _clebsch_gordan_block_cached(k: int, l: int, dtype: torch.dtype, device: torch.device, parity: bool) -> Tensor:
    return _clebsch_gordan_block_cpu(k, l, parity).to(dtype=dtype, device=device)


# What torch.compile sees instead of the cache: an opaque operator that Dynamo does not trace into (tracing the
# caches, here and in e3nn, would warn, and trace e3nn's float64 computation of the coefficients). Its output is
# a copy, since compiled code may reuse an operator's output buffer in place.
@torch.library.custom_op("pyg_se3::clebsch_gordan_block", mutates_args=())
def _clebsch_gordan_block_op(k: int, l: int, dtype: torch.dtype, device: torch.device, parity: bool) -> Tensor:
    return _clebsch_gordan_block_cached(k, l, dtype, device, parity).clone()


@_clebsch_gordan_block_op.register_fake
def _(k: int, l: int, dtype: torch.dtype, device: torch.device, parity: bool) -> Tensor:
    return torch.empty(_clebsch_gordan_shape(k, l, parity), dtype=dtype, device=device)


def clebsch_gordan_block(k: int, l: int, dtype: torch.dtype, device: torch.device, parity: bool = False) -> Tensor:
    """Clebsch–Gordan coefficients for the pair (input degree ``k``, output degree ``l``), stacked over ``J``.

    Returns ``[sum_J (2J+1), (2k+1) * nJ * (2l+1)]``: rows are the spherical harmonics ``Y_J`` for
    ``J = |k-l| .. k+l`` in order (a contiguous slice of the harmonics of all degrees), so that
    ``Y @ Q`` is the flattened basis of :func:`compute_basis`. With ``parity=True`` the columns are those of the
    ``J`` with ``k + l + J`` even (``nJ = min(k, l) + 1``), and the rows of the other ``J`` are zero. Cached in
    memory per dtype and device (under ``torch.compile``: a copy of the cached tensor, from an operator that the
    compiler does not trace into).
    """
    parity = bool(parity)
    if torch.compiler.is_compiling():
        return _clebsch_gordan_block_op(k, l, dtype, device, parity)
    return _clebsch_gordan_block_cached(k, l, dtype, device, parity)


def edge_vectors(pos: Tensor | tuple[Tensor, Tensor], edge_index: Tensor) -> Tensor:
    """``r_ij = pos[j] - pos[i]`` for every edge ``(j, i)`` of ``edge_index`` (source minus target); for a
    bipartite graph ``pos = (pos_src, pos_dst)`` and ``r_ij = pos_src[j] - pos_dst[i]``."""
    pos_src, pos_dst = pos if isinstance(pos, tuple) else (pos, pos)
    return pos_src.index_select(0, edge_index[0]) - pos_dst.index_select(0, edge_index[1])


def _lengths_and_directions(vectors: Tensor) -> tuple[Tensor, Tensor]:
    """``|r|`` (``[E, 1]``) and ``r / |r|`` (``[E, 3]``); both exactly 0, with zero gradient, for zero-length edges.

    An edge is zero-length when ``|r|`` is below ``tiny ** 0.25`` of its dtype (~1e-77 in float64, ~1e-10 in
    float32, where ``|r|^2`` would leave the normal range). Its direction is masked rather than divided by a
    clamped length: ``r / clamp(|r|)`` has a derivative of ``1 / clamp`` (~1e77), and for a self-loop the
    ``+G`` and ``-G`` it sends into the same node swamp every other contribution. The mask is a ``torch.where``,
    so every other edge gets exactly the values and gradients of the plain formula.

    An edge whose ``|r|^2`` overflows (float32 lengths above ~1e19) is first divided by its largest component:
    ``|r| = s |r / s|`` and ``r / |r| = (r / s) / |r / s|``, finite for every representable length. Every other
    edge is divided by exactly 1, which leaves its values and gradients bit for bit as they were.
    """
    tiny = torch.finfo(vectors.dtype).tiny ** 0.25  # squares of lengths above it stay normal
    with torch.no_grad():
        huge = torch.isinf((vectors * vectors).sum(dim=-1, keepdim=True))
        # constant in autograd: both formulas are homogeneous in s, so their derivatives are those of the plain ones
        scale = torch.where(huge, vectors.abs().amax(dim=-1, keepdim=True), 1.0)
    scaled = vectors / scale
    square = (scaled * scaled).sum(dim=-1, keepdim=True)
    zero = square < tiny * tiny
    # the clamp keeps the unused branch of the masked edges finite, so that their zero gradient stays 0, not NaN
    length = square.clamp_min(tiny * tiny).sqrt()
    return torch.where(zero, 0.0, scale * length), torch.where(zero, 0.0, scaled / length)


def _harmonics(directions: Tensor, max_degree: int) -> Tensor:
    """e3nn's spherical harmonics of degrees ``0 .. max_degree`` (component normalisation, Cartesian polynomials
    of the unnormalised ``directions``: a masked, zero direction gives ``Y_0 = 1`` and ``Y_J = 0``)."""
    return o3.spherical_harmonics(list(range(max_degree + 1)), directions, normalize=False, normalization="component")


def edge_harmonics(vectors: Tensor, max_degree: int) -> Tensor:
    """``[E, (max_degree + 1)^2]`` spherical harmonics of the directions of ``vectors [E, 3]`` (e.g. a basis's
    ``rel_pos``), those :func:`compute_basis` builds its blocks from (of degrees ``0 .. 2 * max_degree`` there):
    e3nn's, component normalisation; a zero-length vector gets ``Y_0 = 1`` and ``Y_J = 0`` for ``J > 0``, with zero
    gradient (see :func:`compute_basis`)."""
    return _harmonics(_lengths_and_directions(vectors)[1], check_int(max_degree, "max_degree", 0))


@dataclass
class Basis:
    """Everything about a graph's geometry that the layers need; build with :func:`compute_basis`.

    Attributes
    ----------
    edge_index
        ``[2, E]``, the graph it was computed for.
    rel_pos
        ``[E, 3]`` relative positions ``pos[j] - pos[i]``; read by :func:`~pyg_se3.nn.conv.add_relative_position`
        (the layers' ``relative_position=True``).
    dist
        ``[E, 1]`` edge lengths; exactly 0, with zero gradient, for zero-length edges (see :func:`compute_basis`).
    pairs
        ``{(k, l): [E, 2k+1, nJ * (2l+1)]}`` for all ``0 <= k, l <= max_degree``.
    edge_weight
        Optional ``[E]`` weights in ``[0, 1]`` (a smooth cutoff envelope) that scale every message and every
        attention weight before normalisation, or ``None``.
    parity
        Whether the blocks keep only the terms that respect parity (``k + l + J`` even; see the module
        documentation). A layer runs on a basis of its own ``parity`` only.
    reverse_pairs
        ``[2, E / 2]`` the edges in reverse pairs (:func:`~pyg_se3.graph.reverse_edge_pairs`) when the graph is
        symmetric, else ``None``. An :class:`~pyg_se3.nn.EdgeKernel` whose radial inputs are equal on both edges
        of every pair (:meth:`pairs_agree`) then computes the radial weights once per pair (:meth:`paired`,
        :meth:`unpair`). A basis cut into runs or reindexed (:meth:`split`, :meth:`index_select`) has none.
    """

    edge_index: Tensor
    rel_pos: Tensor
    dist: Tensor
    max_degree: int
    pairs: dict[tuple[int, int], Tensor] = field(repr=False)
    edge_weight: Tensor | None = None
    parity: bool = False
    reverse_pairs: Tensor | None = field(default=None, repr=False)
    # blocks in pair order and the order itself, built on first use and shared by the layers that use this basis;
    # each entry keeps the tensors it was built from, so that replacing a block (or the pairs) rebuilds it
    _paired: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def split(self, sizes: list[int], edge_indices: list[Tensor]) -> list[Basis]:
        """The bases of consecutive runs of ``sizes`` edges, each for its own ``edge_indices[i]`` (e.g. the run's
        edges with relabelled targets). Built with ``torch.split``, whose backward joins the runs' gradients
        once: slicing would build a zero gradient of all edges for every run (quadratic in the number of runs)."""
        if sum(sizes) != self.num_edges or len(sizes) != len(edge_indices):
            raise ValueError(f"sizes: expected one size per edge index, summing to {self.num_edges}, got {sizes}")
        fields = [self.rel_pos, self.dist, *self.pairs.values()]
        if self.edge_weight is not None:
            fields.append(self.edge_weight)
        runs = zip(*(tensor.split(sizes) for tensor in fields), strict=True)
        out = []
        for edge_index, (rel_pos, dist, *rest) in zip(edge_indices, runs, strict=True):
            pairs = dict(zip(self.pairs, rest[: len(self.pairs)], strict=True))
            edge_weight = rest[len(self.pairs)] if self.edge_weight is not None else None
            out.append(self._other_edges(edge_index, rel_pos, dist, pairs, edge_weight))
        return out

    def index_select(self, index: Tensor, edge_index: Tensor) -> Basis:
        """The basis of the edges ``index`` (e.g. a permutation), which form ``edge_index``."""
        pairs = {pair: b.index_select(0, index) for pair, b in self.pairs.items()}
        edge_weight = None if self.edge_weight is None else self.edge_weight.index_select(0, index)
        rel_pos, dist = (t.index_select(0, index) for t in (self.rel_pos, self.dist))
        return self._other_edges(edge_index, rel_pos, dist, pairs, edge_weight)

    def _other_edges(
        self,
        edge_index: Tensor,
        rel_pos: Tensor,
        dist: Tensor,
        pairs: dict[tuple[int, int], Tensor],
        edge_weight: Tensor | None,
    ) -> Basis:
        """This basis with the values of other edges (a run, a selection): without reverse pairs."""
        return replace(
            self,
            edge_index=edge_index,
            rel_pos=rel_pos,
            dist=dist,
            pairs=pairs,
            edge_weight=edge_weight,
            reverse_pairs=None,
        )

    def with_edge_weight(self, edge_weight: Tensor) -> Basis:
        """This basis carrying the envelope weights ``edge_weight [E]``. Weights come in one place: a basis that
        carries them already gets a ``ValueError``."""
        if self.edge_weight is not None:
            raise ValueError(
                "edge_weight: the basis carries envelope weights already; pass weights with the basis or as "
                "edge_weight (or a model cutoff), not both"
            )
        return replace(self, edge_weight=edge_weight)

    def paired(self, pair: tuple[int, int]) -> Tensor:
        """Block ``(k, l)`` with its edges in pair order: the first edge of every reverse pair, then the second
        ones (the order :func:`~pyg_se3.nn.contraction.kernel_contraction` takes with ``paired=True``). Built
        once per block and shared by the layers that use this basis."""
        return self._in_pair_order(pair, self[pair])

    def to_pair_order(self, edge_values: Tensor) -> Tensor:
        """``[E, ...]`` values of the edges in pair order (as :meth:`paired`)."""
        return edge_values.index_select(0, self._pair_order()[0])

    def unpair(self, paired: Tensor) -> Tensor:
        """``[E, ...]`` values in pair order back in the order of ``edge_index``."""
        return paired.index_select(0, self._pair_order()[1])

    def radial_inputs(self, edge_attr: Tensor | None = None) -> Tensor:
        """``[E, 1 + D]`` what the radial networks see of every edge: its length (``dist``), then its invariant
        features ``edge_attr [E, D]`` where given."""
        return self.dist if edge_attr is None else torch.cat([self.dist, edge_attr], dim=-1)

    def pairs_agree(self, edge_attr: Tensor | None = None) -> bool:
        """Whether both edges of every reverse pair have the same radial inputs: the same length (``dist``) and
        the same ``edge_attr [E, D]`` row (where given). Compared once and kept for this basis and these edge
        features, which every layer using the basis shares (each comparison reads a flag back from the device),
        and compared again once either is replaced or changed in place. ``False`` without reverse pairs."""
        if self.reverse_pairs is None:
            return False
        key = tuple((t, _version(t)) for t in (self.reverse_pairs, self.dist, edge_attr) if t is not None)
        cached = self._paired.get("agree")
        if cached is not None and _same_versions(cached[0], key):
            return cached[1]
        first, second = self.to_pair_order(self.radial_inputs(edge_attr).detach()).chunk(2)
        agree = torch.equal(first, second)
        if all(version is not None for _, version in key):  # inference tensors have no version: compared each time
            self._paired["agree"] = (key, agree)
        return agree

    def _pair_order(self) -> tuple[Tensor, Tensor]:
        """The edges in pair order and its inverse permutation."""
        pairs = self.reverse_pairs
        if pairs is None:
            raise ValueError("basis: its graph has no reverse pairs (reverse_pairs is None)")
        cached = self._paired.get("order")
        if cached is None or cached[0] is not pairs:
            order = pairs.flatten()
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(order.numel(), device=order.device)
            cached = self._paired["order"] = (pairs, (order, inverse))
        return cached[1]

    def _in_pair_order(self, key: tuple[int, int], tensor: Tensor) -> Tensor:
        cached = self._paired.get(key)
        if cached is None or cached[0] is not tensor or cached[1] is not self.reverse_pairs:
            cached = self._paired[key] = (tensor, self.reverse_pairs, self.to_pair_order(tensor))
        return cached[2]

    def __getitem__(self, pair: tuple[int, int]) -> Tensor:
        try:
            return self.pairs[pair]
        except KeyError:
            raise ValueError(
                f"basis: it was computed up to degree {self.max_degree}; degrees {pair} were requested. "
                "Pass a larger max_degree to compute_basis."
            ) from None


def compute_basis(
    pos: Tensor | tuple[Tensor, Tensor],
    edge_index: Tensor,
    max_degree: int,
    *,
    edge_weight: Tensor | None = None,
    detach: bool = False,
    check_values: bool = True,
    parity: bool = False,
    find_reverse_pairs: bool = True,
) -> Basis:
    r"""Evaluate the kernel basis of every edge for all degree pairs up to ``max_degree``.

    Parameters
    ----------
    pos
        ``[N, 3]`` node positions, or ``(pos_src, pos_dst)`` for a bipartite graph.
    edge_index
        ``[2, E]`` edges ``(j, i)``; the relative position is ``pos[j] - pos[i]``.
    max_degree
        Largest input or output degree of any layer that will use the basis.
    edge_weight
        Optional ``[E]`` envelope weights carried along for the layers (see :class:`Basis`).
    detach
        Cut the basis out of the autograd graph (the original SE(3)-Transformer's behaviour). By default the
        basis is differentiable with respect to ``pos``.
    check_values
        Check that positions are finite and node indices in range (shapes and dtypes are always checked). Each
        check reads data back from the device; a caller that has checked them already passes ``False``.
    parity
        Keep only the terms with ``k + l + J`` even, for layers that are equivariant under reflections too
        (``parity=True`` layers; see the module documentation). Default ``False``: all terms, SE(3).
    find_reverse_pairs
        Find the graph's reverse pairs (:attr:`Basis.reverse_pairs`; a sort of the edges, which reads data back
        from the device) when ``pos`` is one point set and not under ``torch.compile``. On a symmetric graph
        (radius, complete) the full kernels then compute their radial weights once per pair: the same messages
        in fewer operations. ``False`` leaves ``reverse_pairs`` ``None``.

    Returns
    -------
    Basis

    Raises
    ------
    ValueError
        Naming the argument: ``pos`` not ``[N, 3]`` floating (or not finite), ``edge_index`` not ``[2, E]``
        integer (or with indices out of range), ``max_degree`` not an integer ``>= 0``, ``parity`` not a bool.

    Notes
    -----
    **Zero-length edges** (self-loops, coincident points; lengths below ``tiny ** 0.25`` of the dtype, ~1e-77 in
    float64 and ~1e-10 in float32) have no direction. Their direction is masked to 0: the harmonics are then
    their polynomial (Cartesian) value at the origin, ``Y_0 = 1`` and ``Y_J = 0`` for ``J > 0``, and ``dist`` is
    exactly 0; all of them with **zero gradient**. This is the exact limit and the exact derivative for a
    self-loop, whose relative position is identically zero, so that the model is constant in ``pos`` along it.
    For two distinct coincident points it is the limit along every motion that keeps them together (the
    directions along which the model is differentiable, where gradients then agree with finite differences);
    pulling them apart is not differentiable (the edge's direction jumps), and there the gradient is the bounded
    one of the other edges. It is equivariant. Every other edge gets bit for bit the values and gradients of the
    plain ``Y(r / |r|)`` and ``|r|``.

    Under ``torch.autocast`` the basis is still computed in the dtype of ``pos`` (autocast is switched off here):
    it is cheap next to the layers that share it, and a 16-bit basis would double the error of the gradients with
    respect to positions (see :mod:`pyg_se3._amp`).

    Examples
    --------
    >>> import torch
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    >>> edge_index = torch.tensor([[1, 2, 0], [0, 0, 1]])  # edges (j, i): j sends to i
    >>> basis = compute_basis(pos, edge_index, max_degree=1)
    >>> basis.num_edges, basis.dist.squeeze(-1).tolist()
    (3, [1.0, 2.0, 1.0])
    >>> basis.rel_pos[1].tolist()  # pos[2] - pos[0]
    [0.0, 2.0, 0.0]
    >>> {pair: tuple(b.shape) for pair, b in basis.pairs.items()}  # [E, 2k+1, nJ (2l+1)]
    {(0, 0): (3, 1, 1), (0, 1): (3, 1, 3), (1, 0): (3, 3, 1), (1, 1): (3, 3, 9)}
    >>> tuple(compute_basis(pos, edge_index, max_degree=1, parity=True)[(1, 1)].shape)  # J = 0, 2 (no cross product)
    (3, 3, 6)
    """
    max_degree = check_int(max_degree, "max_degree", 0)
    for name, flag in (("parity", parity), ("find_reverse_pairs", find_reverse_pairs)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name}: expected True or False, got {flag!r}")
    _check_geometry(pos, edge_index, check_values)
    if detach:
        pos = tuple(p.detach() for p in pos) if isinstance(pos, tuple) else pos.detach()
    with autocast_disabled(edge_index.device):  # see Notes
        rel_pos = edge_vectors(pos, edge_index)
        dist, directions = _lengths_and_directions(rel_pos)
        sh = _harmonics(directions, 2 * max_degree)
        pairs: dict[tuple[int, int], Tensor] = {}
        for k in range(max_degree + 1):
            for l in range(max_degree + 1):
                J_min, J_max = abs(k - l), k + l
                Y = sh[:, J_min * J_min : (J_max + 1) * (J_max + 1)]
                Q = clebsch_gordan_block(k, l, sh.dtype, sh.device, parity)
                pairs[(k, l)] = (Y @ Q).view(-1, 2 * k + 1, num_J(k, l, parity) * (2 * l + 1))
    reverse_pairs = None
    if find_reverse_pairs and not isinstance(pos, tuple) and not torch.compiler.is_compiling():
        reverse_pairs = reverse_edge_pairs(edge_index, pos.shape[0])
    return Basis(
        edge_index=edge_index,
        rel_pos=rel_pos,
        dist=dist,
        max_degree=max_degree,
        pairs=pairs,
        edge_weight=edge_weight,
        parity=parity,
        reverse_pairs=reverse_pairs,
    )


def _version(tensor: Tensor) -> int | None:
    """``tensor``'s version counter (how often it was changed in place), ``None`` for an inference tensor, which
    has none."""
    return None if tensor.is_inference() else tensor._version


def _same_versions(key: tuple, other: tuple) -> bool:
    """Whether two ``((tensor, version), ...)`` keys name the same tensors at the same versions."""
    return len(key) == len(other) and all(a is b and u == v for (a, u), (b, v) in zip(key, other, strict=True))


def _check_geometry(pos: Tensor | tuple[Tensor, Tensor], edge_index: Tensor, values: bool) -> None:
    """``pos`` ``[N, 3]`` (or a pair) and ``edge_index`` ``[2, E]`` that indexes it; see :mod:`pyg_se3.checks`."""
    if isinstance(pos, tuple):
        if len(pos) != 2:
            raise ValueError(f"pos: expected a tensor or a pair (pos_src, pos_dst), got a tuple of {len(pos)}")
        check_pos(pos[0], name="pos[0]", values=values)
        check_pos(pos[1], name="pos[1]", values=values)
        num_nodes = (pos[0].shape[0], pos[1].shape[0])
    else:
        check_pos(pos, values=values)
        num_nodes = pos.shape[0]
    check_edge_index(edge_index, num_nodes, values=values)
