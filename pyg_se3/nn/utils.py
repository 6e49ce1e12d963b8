"""Small helpers shared by the layers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch_geometric import EdgeIndex
from torch_geometric.typing import Adj, SparseTensor
from torch_geometric.utils import is_sparse, scatter, softmax, to_edge_index

from pyg_se3.basis import Basis, compute_basis
from pyg_se3.checks import (
    check_dtype,
    check_edge_attr,
    check_edge_index,
    check_edge_weight,
    check_pos,
    checking_values,
    model_dtype,
)

__all__ = [
    "edge_softmax",
    "layer_inputs",
    "message_passing_kwargs",
    "node_features",
    "options_repr",
    "prepare_basis",
    "resolve_edge_index",
]

# MessagePassing settings that the maths of the layers fix: {name: (allowed values, why)}
_FIXED_SETTINGS: dict[str, tuple[tuple[Any, ...], str]] = {
    "node_dim": ((0,), "features are flat [N, fiber.dim] tensors with the nodes along dimension 0"),
    "flow": (
        ("source_to_target",),
        "the basis is computed for edges (j, i) = edge_index[:, e] with r_ij = pos[j] - pos[i]; pass "
        "edge_index.flip(0) to send messages the other way",
    ),
    "decomposed_layers": ((1,), "splitting the features along their last dimension would cut the fibers apart"),
}


def message_passing_kwargs(
    layer: str, kwargs: dict[str, Any], fixed: dict[str, tuple[tuple[Any, ...], str]] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``MessagePassing.__init__`` for ``layer`` (its class name): ``kwargs`` with the
    settings fixed by the maths filled in (``node_dim=0``, ``flow="source_to_target"``, ``decomposed_layers=1``,
    and the layer's own ``fixed`` ones, ``{name: (allowed values, why)}``, the first value the default).

    A conflicting value gets a ``ValueError`` naming the argument; anything else (e.g. ``aggr_kwargs``) is passed on.
    """
    settings = {**_FIXED_SETTINGS, **(fixed or {})}
    out = dict(kwargs)
    for name, (allowed, why) in settings.items():
        if name in out and not any(_same(out[name], value) for value in allowed):
            expected = " or ".join(repr(value) for value in allowed)
            raise ValueError(f"{name}: {layer} needs {name}={expected} ({why}), got {out[name]!r}")
        out.setdefault(name, allowed[0])
    return out


def _same(value: Any, allowed: Any) -> bool:
    return type(value) is type(allowed) and value == allowed


def resolve_edge_index(edge_index: Adj, num_nodes: tuple[int, int], basis: Basis | None = None) -> tuple[Adj, Tensor]:
    """The edges of ``edge_index`` as ``(for propagate, [2, E] tensor)``: the latter in PyG's
    ``(source, target)`` order, the one the basis, the checks and every per-edge tensor (``edge_attr``,
    ``edge_weight``, attention weights) follow. ``num_nodes = (N_src, N_dst)``.

    * A plain ``[2, E]`` tensor is returned as both, untouched (the default path costs nothing).
    * PyG's :class:`~torch_geometric.EdgeIndex` is passed on to ``propagate`` (which then uses its CSC
      pointers when it is sorted by target) when its sparse size is ``(N_src, N_dst)``, as a plain tensor when a
      size is unknown (``propagate`` would infer it from the largest index); any other size is a ``ValueError``.
    * A sparse adjacency ``adj_t`` (``torch.sparse`` COO, CSR or CSC, or ``torch_sparse.SparseTensor``) is indexed
      ``[target, source]`` (PyG's transposed convention) and has shape ``[N_dst, N_src]``. Its edges are read in
      storage order with :func:`torch_geometric.utils.to_edge_index` and flipped to ``(source, target)``; its
      values are not read. A ``basis`` given with it must have been computed for exactly these edges (checked
      when value checks run, :func:`~pyg_se3.checks.checking_values`), else a ``ValueError``.
    """
    if type(edge_index) is Tensor and edge_index.layout == torch.strided:  # the default path, first
        return edge_index, edge_index
    if isinstance(edge_index, EdgeIndex):
        edges = edge_index.as_tensor()
        sizes = edge_index.sparse_size()
        if None in sizes:
            return edges, edges
        if tuple(sizes) != tuple(num_nodes):
            raise ValueError(
                f"edge_index: an EdgeIndex of sparse size {tuple(sizes)}, but x has (N_src, N_dst) = "
                f"{tuple(num_nodes)} nodes"
            )
        return edge_index, edges
    if not is_sparse(edge_index):
        return edge_index, edge_index
    shape = tuple(edge_index.sparse_sizes()) if isinstance(edge_index, SparseTensor) else tuple(edge_index.shape)
    if shape[:2] != (num_nodes[1], num_nodes[0]) or len(shape) != 2:
        raise ValueError(
            f"edge_index: a sparse adjacency adj_t must be [N_dst, N_src] = [{num_nodes[1]}, {num_nodes[0]}] "
            f"(indexed [target, source]), got shape {list(shape)}"
        )
    edges = to_edge_index(edge_index)[0].flip(0)
    if basis is not None:
        same = basis.num_edges == edges.shape[1]
        if same and checking_values(edges.device):
            same = torch.equal(basis.edge_index, edges)
        if not same:
            raise ValueError(
                "basis: computed for other edges than those of the sparse adjacency edge_index; compute it from "
                "torch_geometric.utils.to_edge_index(adj_t)[0].flip(0), the (source, target) edges in the "
                "adjacency's storage order"
            )
    return edges, edges


def node_features(layer: torch.nn.Module, x: Tensor | tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """``x [N, fiber_in.dim]``, or a bipartite pair ``(x_src [N_src, .], x_dst [N_dst, .])`` as PyG's layers take
    it, as the checked pair ``(x_src, x_dst)``, of the layer's dtype (see :func:`~pyg_se3.checks.check_dtype`)."""
    dtype = model_dtype(layer)
    if not isinstance(x, tuple):
        _check_node_features(layer, x, "x", dtype)
        return x, x
    if len(x) != 2:
        raise ValueError(f"x: expected a tensor or a pair (x_src, x_dst), got a tuple of {len(x)}")
    _check_node_features(layer, x[0], "x[0]", dtype)
    _check_node_features(layer, x[1], "x[1]", dtype)
    return x


def _check_node_features(layer: torch.nn.Module, x: Tensor, name: str, dtype: torch.dtype | None) -> None:
    layer.fiber_in.check(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name}: expected a [N, {layer.fiber_in.dim}] tensor, got shape {tuple(x.shape)}")
    check_dtype(x, name, dtype, autocast=True)


def prepare_basis(
    layer: torch.nn.Module,
    x: tuple[Tensor, Tensor],
    pos: Tensor | tuple[Tensor, Tensor] | None,
    edge_index: Tensor,
    edge_attr: Tensor | None,
    basis: Basis | None,
    edge_weight: Tensor | None = None,
) -> Basis:
    """Validate a layer's inputs and return the basis to use (``basis`` itself, or computed from ``pos``),
    carrying the envelope weights ``edge_weight`` when given.

    ``x`` is the pair of :func:`node_features`; ``layer`` must have ``fiber_in``, ``edge_dim``, ``max_degree`` and
    ``parity``.
    A layer given a ``basis`` does not read ``pos``; when both are given, ``pos`` still gets its (free) shape
    checks, but not the value check, which would synchronise with the device at every layer. ``pos`` and
    ``edge_attr`` must have the layer's dtype (see :func:`~pyg_se3.checks.check_dtype`).
    """
    dtype = model_dtype(layer)
    bipartite = x[0] is not x[1]
    num_nodes = (x[0].shape[0], x[1].shape[0]) if bipartite else x[0].shape[0]
    if basis is None or basis.edge_index is not edge_index or bipartite:
        # A model that built the basis from this very edge_index has checked it already (the range check
        # synchronises with the device, so it is worth skipping once per layer); not so for bipartite sizes.
        check_edge_index(edge_index, num_nodes)
    check_edge_attr(edge_attr, edge_index.shape[1], layer.edge_dim, dtype)
    check_edge_weight(edge_weight, edge_index.shape[1], dtype)
    if basis is None:
        if pos is None:
            raise ValueError("pos: expected [N, 3] positions (or pass a precomputed basis), got None")
        _check_positions(pos, num_nodes, bipartite, values=True, dtype=dtype)
        return compute_basis(
            pos, edge_index, layer.max_degree, edge_weight=edge_weight, check_values=False, parity=layer.parity
        )
    if pos is not None:
        _check_positions(pos, num_nodes, bipartite, values=False, dtype=dtype)
    if basis.num_edges != edge_index.shape[1]:
        raise ValueError(f"basis: computed for {basis.num_edges} edges, but edge_index has {edge_index.shape[1]}")
    if basis.max_degree < layer.max_degree:
        raise ValueError(f"basis: computed up to degree {basis.max_degree}, the layer needs {layer.max_degree}")
    return basis if edge_weight is None else basis.with_edge_weight(edge_weight)


def layer_inputs(
    layer: torch.nn.Module,
    x: Tensor | tuple[Tensor, Tensor],
    pos: Tensor | tuple[Tensor, Tensor] | None,
    edge_index: Adj,
    edge_attr: Tensor | None,
    basis: Basis | None,
    edge_weight: Tensor | None,
) -> tuple[Tensor, Tensor, Adj, Basis]:
    """What a graph layer's ``forward`` works with: ``(x_src, x_dst)`` (:func:`node_features`), the edges for
    ``propagate`` (:func:`resolve_edge_index`) and the checked basis of the edges (:func:`prepare_basis`)."""
    x_src, x_dst = node_features(layer, x)
    adjacency, edges = resolve_edge_index(edge_index, (x_src.shape[0], x_dst.shape[0]), basis)
    return x_src, x_dst, adjacency, prepare_basis(layer, (x_src, x_dst), pos, edges, edge_attr, basis, edge_weight)


def options_repr(layer: torch.nn.Module, options: dict[str, tuple[Any, Any]], shown: str = "") -> str:
    """``Layer(fiber_in, fiber_out{shown}, name=value, ...)`` with the ``options`` ``{name: (value, default)}``
    that differ from their defaults: a constructor call that builds the layer again."""
    extra = "".join(f", {name}={value!r}" for name, (value, default) in options.items() if value != default)
    return f"{layer.__class__.__name__}({layer.fiber_in}, {layer.fiber_out}{shown}{extra})"


def _check_positions(
    pos: Tensor | tuple[Tensor, Tensor],
    num_nodes: int | tuple[int, int],
    bipartite: bool,
    values: bool,
    dtype: torch.dtype | None,
) -> None:
    """``pos [N, 3]``, or ``(pos_src, pos_dst)`` for a bipartite graph, one row per node of ``x``, of ``dtype``."""
    if not bipartite:
        check_pos(pos, num_nodes, values=values)
        check_dtype(pos, "pos", dtype)
        return
    if not isinstance(pos, tuple) or len(pos) != 2:
        raise ValueError("pos: a bipartite x = (x_src, x_dst) needs pos = (pos_src, pos_dst) or a basis")
    for i in range(2):
        check_pos(pos[i], num_nodes[i], f"pos[{i}]", values)
        check_dtype(pos[i], f"pos[{i}]", dtype)


def edge_softmax(
    logits: Tensor, index: Tensor, num_nodes: int, ptr: Tensor | None = None, weight: Tensor | None = None
) -> Tensor:
    r"""Softmax of ``logits [E, H]`` over the incoming edges of each target node ``index [E]``.

    With ``weight [E]`` (envelope values in ``[0, 1]``) each term is weighted before normalisation:
    ``alpha_ij = u_ij exp(s_ij) / sum_j' u_ij' exp(s_ij')``. An edge with ``u = 0`` then contributes nothing,
    exactly as if it were absent, which keeps attention continuous when edges enter or leave a cutoff.
    A node whose every edge has ``u = 0`` receives weights 0.
    """
    if weight is None:
        return softmax(logits, index, ptr, num_nodes, dim=0)
    shift = scatter(logits.detach(), index, dim=0, dim_size=num_nodes, reduce="max").index_select(0, index)
    terms = weight.unsqueeze(-1) * torch.exp(logits - shift)
    total = scatter(terms, index, dim=0, dim_size=num_nodes, reduce="sum").index_select(0, index)
    return terms / (total + torch.finfo(terms.dtype).tiny)
