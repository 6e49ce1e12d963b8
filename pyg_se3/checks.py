"""Input validation shared by layers and models: bad input gets a ``ValueError`` naming the argument.

Checks of shapes, dtypes and sizes are static and run everywhere. Checks of *values* (finite positions, node
indices in range) read tensor data back to Python: in eager mode they always run; inside ``torch.compile`` (and
``torch.export``) they are skipped, since reading data back would split the graph at every layer
(:func:`checking_values`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pyg_se3.fiber import Fiber

__all__ = ["check_edge_index", "check_graph_inputs", "check_pos", "check_vectors", "checking_values"]


def checking_values() -> bool:
    """Whether value checks run: always in eager mode, never while ``torch.compile`` traces.

    Value checks (``bool(tensor)``, ``int(tensor)``) are data-dependent: under Dynamo each would be a graph
    break (and a device synchronisation). A compiled model is expected to be checked once in eager mode, as
    compiled code is usually compared with eager code anyway.
    """
    return not torch.compiler.is_compiling()


def check_pos(pos: Tensor, num_nodes: int | None = None, name: str = "pos") -> None:
    """``pos`` must be a finite floating ``[N, 3]`` tensor (with ``N == num_nodes`` when given).

    Finiteness is a value check, skipped under ``torch.compile`` (:func:`checking_values`).
    """
    check_vectors(pos, num_nodes, name, "positions")


def check_vectors(value: Tensor, num_nodes: int | None = None, name: str = "vel", what: str = "vectors") -> None:
    """``value`` must be a finite floating ``[N, 3]`` tensor of ``what`` (with ``N == num_nodes`` when given).

    Finiteness is a value check, skipped under ``torch.compile`` (:func:`checking_values`).
    """
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != 3:
        raise ValueError(f"{name}: expected a [N, 3] tensor of {what}, got {_shape(value)}")
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if num_nodes is not None and value.shape[0] != num_nodes:
        raise ValueError(f"{name}: expected {num_nodes} rows (one per node), got {value.shape[0]}")
    if checking_values() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def check_edge_index(edge_index: Tensor, num_nodes: int | tuple[int, int], name: str = "edge_index") -> None:
    """``edge_index`` must be an integer ``[2, E]`` tensor with entries in ``[0, num_nodes)`` (for a bipartite
    graph, ``num_nodes = (sources, targets)``: sources in ``[0, sources)``, targets in ``[0, targets)``).

    The range is a value check, skipped under ``torch.compile`` (:func:`checking_values`).
    """
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name}: expected a [2, E] tensor, got {_shape(edge_index)}")
    if edge_index.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name}: expected an int64 tensor, got {edge_index.dtype}")
    if edge_index.numel() and checking_values():
        if isinstance(num_nodes, tuple):
            ranges = [(edge_index[0], "source", num_nodes[0]), (edge_index[1], "target", num_nodes[1])]
        else:
            ranges = [(edge_index, "node", num_nodes)]
        for indices, what, count in ranges:
            low, high = int(indices.min()), int(indices.max())
            if low < 0 or high >= count:
                raise ValueError(f"{name}: {what} indices must lie in [0, {count}), got range [{low}, {high}]")


def check_graph_inputs(
    x: Tensor,
    pos: Tensor,
    edge_index: Tensor,
    fiber_in: Fiber,
    edge_attr: Tensor | None = None,
    edge_dim: int = 0,
    batch: Tensor | None = None,
) -> None:
    """Validate the arguments of a layer or model ``forward(x, pos, edge_index, edge_attr, batch)``."""
    fiber_in.check(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x: expected a [N, {fiber_in.dim}] tensor, got shape {tuple(x.shape)}")
    num_nodes = x.shape[0]
    check_pos(pos, num_nodes)
    check_edge_index(edge_index, num_nodes)
    check_edge_attr(edge_attr, edge_index.shape[1], edge_dim)
    if batch is not None:
        if not isinstance(batch, Tensor) or batch.shape != (num_nodes,) or batch.is_floating_point():
            raise ValueError(f"batch: expected an integer [N] = [{num_nodes}] tensor, got {_shape(batch)}")


def check_edge_attr(edge_attr: Tensor | None, num_edges: int, edge_dim: int) -> None:
    """``edge_attr`` must be ``[E, edge_dim]`` when ``edge_dim > 0`` and absent when it is 0."""
    if edge_dim == 0:
        if edge_attr is not None:
            raise ValueError("edge_attr: the layer was built with edge_dim=0; pass edge_attr=None")
        return
    if edge_attr is None:
        raise ValueError(f"edge_attr: expected a [E, {edge_dim}] tensor (edge_dim={edge_dim}), got None")
    if edge_attr.dim() != 2 or edge_attr.shape != (num_edges, edge_dim):
        raise ValueError(f"edge_attr: expected shape [{num_edges}, {edge_dim}], got {tuple(edge_attr.shape)}")


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
