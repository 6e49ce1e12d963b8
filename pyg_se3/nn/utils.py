"""Small helpers shared by the layers."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.utils import scatter, softmax

from pyg_se3.basis import Basis, compute_basis
from pyg_se3.checks import check_dtype, check_edge_attr, check_edge_index, check_edge_weight, check_pos, model_dtype

__all__ = ["edge_softmax", "node_features", "prepare_basis"]


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

    ``x`` is the pair of :func:`node_features`; ``layer`` must have ``fiber_in``, ``edge_dim`` and ``max_degree``.
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
        return compute_basis(pos, edge_index, layer.max_degree, edge_weight=edge_weight, check_values=False)
    if pos is not None:
        _check_positions(pos, num_nodes, bipartite, values=False, dtype=dtype)
    if basis.num_edges != edge_index.shape[1]:
        raise ValueError(f"basis: computed for {basis.num_edges} edges, but edge_index has {edge_index.shape[1]}")
    if basis.max_degree < layer.max_degree:
        raise ValueError(f"basis: computed up to degree {basis.max_degree}, the layer needs {layer.max_degree}")
    return basis if edge_weight is None else basis.with_edge_weight(edge_weight)


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
