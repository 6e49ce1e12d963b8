"""Graph layers run over groups of target nodes, with activation checkpointing per group: bounded memory at any
graph size."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint as recompute

from pyg_se3.basis import Basis
from pyg_se3.checks import checking_values, no_value_checks

__all__ = ["TargetGroups"]


class TargetGroups:
    r"""A graph cut into groups of consecutive target nodes, each with about ``max_edges`` incoming edges.

    A message-passing layer's output at node ``i`` depends only on the edges into ``i`` (and on ``x_i``), so the
    layer can run group by group on the bipartite graph (all sources ``->`` the group's targets) and the groups'
    outputs stacked give exactly the whole graph's output. With ``checkpoint=True`` each group is run under
    ``torch.utils.checkpoint``: its activations (the gathered features, keys, values, attention weights of its
    edges) are dropped after the forward pass and rebuilt, one group at a time, in the backward pass. Peak memory
    then grows with ``max_edges``, not with the number of edges ``E``; what is kept for all edges is the basis
    and the edge attributes.

    Edges are sorted by target once (a stable sort; graphs built by :mod:`pyg_se3.graph` already are) and the
    basis and edge attributes are permuted with them. Every per-edge tensor is cut with ``torch.split``, whose
    backward joins the groups' gradients once (slices would each build a zero gradient of all edges). The group
    boundaries are read back from the graph (a data-dependent step), so ``torch.compile(fullgraph=True)`` cannot
    trace it (checkpointing is meant for eager training on large graphs).

    Parameters
    ----------
    num_nodes
        Number of nodes ``N``.
    edge_index
        ``[2, E]`` edges ``(j, i)``.
    edge_attr
        ``[E, D]`` edge attributes, or ``None``.
    basis
        The basis of ``edge_index`` (:func:`~pyg_se3.basis.compute_basis`).
    max_edges
        Edges per group (a group holds at least one target node, so a node with more incoming edges gets a
        group of its own).
    checkpoint
        Recompute each group's activations in the backward pass (when gradients are enabled).
    """

    def __init__(
        self,
        num_nodes: int,
        edge_index: Tensor,
        edge_attr: Tensor | None,
        basis: Basis,
        max_edges: int,
        checkpoint: bool = True,
    ) -> None:
        if max_edges < 1:
            raise ValueError(f"max_edges: expected >= 1, got {max_edges}")
        self.checkpoint = checkpoint
        target = edge_index[1]
        if not bool((target[1:] >= target[:-1]).all()):
            order = torch.argsort(target, stable=True)
            edge_index = edge_index[:, order]
            edge_attr = None if edge_attr is None else edge_attr.index_select(0, order)
            basis = basis.index_select(order, edge_index)
            target = edge_index[1]
        # ptr[n] = number of edges into nodes < n; a group ends at the first node where ptr reaches a multiple
        # of max_edges
        ptr = torch.searchsorted(target, torch.arange(num_nodes + 1, device=target.device))
        marks = torch.arange(1, -(-target.numel() // max_edges), device=target.device) * max_edges
        cuts = torch.searchsorted(ptr, marks)
        bounds = torch.unique_consecutive(torch.cat([cuts.new_zeros(1), cuts, cuts.new_full((1,), num_nodes)]))
        if num_nodes == 0:  # one empty group
            bounds = cuts.new_zeros(2)
        group_edges = ptr[bounds].diff()
        edge_sizes = group_edges.tolist()
        # each group's edges with targets relabelled from 0
        first_node = torch.repeat_interleave(bounds[:-1], group_edges)
        local = torch.stack([edge_index[0], target - first_node]).split(edge_sizes, dim=1)
        self.node_sizes = bounds.diff().tolist()
        self.edge_indices = list(local)
        self.edge_attrs = [None] * len(local) if edge_attr is None else list(edge_attr.split(edge_sizes))
        self.bases = basis.split(edge_sizes, self.edge_indices)

    @property
    def num_groups(self) -> int:
        return len(self.node_sizes)

    def __call__(self, layer: Callable[..., Tensor], x: Tensor) -> Tensor:
        """``layer(x, None, edge_index, edge_attr, basis)`` of the whole graph, computed group by group; ``layer``
        must accept a bipartite ``x = (x_src, x_dst)`` (as :class:`~pyg_se3.nn.SE3Conv` and
        :class:`~pyg_se3.nn.SE3Attention` do)."""
        outputs = []
        if not checking_values():
            # Called by a model that checked its inputs (no_value_checks): the recomputation in the backward pass,
            # outside that context, must not check them again either, once per group and layer.
            layer = _WithoutValueChecks(layer)
        for x_dst, edge_index, edge_attr, basis in zip(
            x.split(self.node_sizes), self.edge_indices, self.edge_attrs, self.bases, strict=True
        ):
            inputs = ((x, x_dst), None, edge_index, edge_attr, basis)
            if self.checkpoint and torch.is_grad_enabled():
                outputs.append(recompute(layer, *inputs, use_reentrant=False))
            else:
                outputs.append(layer(*inputs))
        return torch.cat(outputs)


class _WithoutValueChecks:
    """``layer`` called under :func:`~pyg_se3.checks.no_value_checks`."""

    def __init__(self, layer: Callable[..., Tensor]) -> None:
        self.layer = layer

    def __call__(self, *inputs: object) -> Tensor:
        with no_value_checks():
            return self.layer(*inputs)
