"""Input validation shared by layers and models: bad input gets a ``ValueError`` naming the argument.

Checks of shapes, dtypes and sizes are static and run everywhere. Checks of *values* (finite positions, node
indices in range) read tensor data back to Python: in eager mode they always run; inside ``torch.compile`` (and
``torch.export``) they are skipped, since reading data back would split the graph at every layer
(:func:`checking_values`).
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:  # pyg_se3.fiber imports this module
    from pyg_se3.fiber import Fiber

__all__ = [
    "as_integer",
    "check_batch",
    "check_edge_index",
    "check_graph_inputs",
    "check_int",
    "check_pos",
    "check_vectors",
    "checking_values",
]

_INDEX_DTYPES = (torch.int64, torch.int32)


def checking_values() -> bool:
    """Whether value checks run: always in eager mode, never while ``torch.compile`` traces.

    Value checks (``bool(tensor)``, ``int(tensor)``) are data-dependent: under Dynamo each would be a graph
    break (and a device synchronisation). A compiled model is expected to be checked once in eager mode, as
    compiled code is usually compared with eager code anyway.
    """
    return not torch.compiler.is_compiling()


def as_integer(value: object) -> int | None:
    """``value`` as a Python ``int`` if it is an integer, else ``None``.

    Integers are ``int``, NumPy integer scalars and 0-d integer torch tensors; ``bool`` is not one (``True`` as
    a number of channels is a bug, not a 1), and neither is an integral float such as ``2.0``.
    """
    if isinstance(value, bool) or (isinstance(value, Tensor) and (value.dim() != 0 or value.dtype == torch.bool)):
        return None
    try:
        return operator.index(value)  # what range() accepts: no floats, no NumPy bools
    except TypeError:
        return None


def check_int(value: object, name: str, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (see :func:`as_integer`), at least ``minimum`` when given; else a ``ValueError``."""
    result = as_integer(value)
    if result is None or (minimum is not None and result < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name}: expected an integer{bound}, got {value!r}")
    return result


def check_pos(pos: Tensor, num_nodes: int | None = None, name: str = "pos", values: bool = True) -> None:
    """``pos`` must be a finite floating ``[N, 3]`` tensor (with ``N == num_nodes`` when given).

    Finiteness is a value check, skipped with ``values=False`` and under ``torch.compile``
    (:func:`checking_values`).
    """
    check_vectors(pos, num_nodes, name, "positions", values)


def check_vectors(
    value: Tensor, num_nodes: int | None = None, name: str = "vel", what: str = "vectors", values: bool = True
) -> None:
    """``value`` must be a finite floating ``[N, 3]`` tensor of ``what`` (with ``N == num_nodes`` when given).

    Finiteness is a value check, skipped with ``values=False`` and under ``torch.compile``
    (:func:`checking_values`).
    """
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[1] != 3:
        raise ValueError(f"{name}: expected a [N, 3] tensor of {what}, got {_shape(value)}")
    if not value.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {value.dtype}")
    if num_nodes is not None and value.shape[0] != num_nodes:
        raise ValueError(f"{name}: expected {num_nodes} rows (one per node), got {value.shape[0]}")
    if values and checking_values() and not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name}: contains NaN or inf")


def check_edge_index(
    edge_index: Tensor, num_nodes: int | tuple[int, int], name: str = "edge_index", values: bool = True
) -> None:
    """``edge_index`` must be an integer ``[2, E]`` tensor with entries in ``[0, num_nodes)`` (for a bipartite
    graph, ``num_nodes = (sources, targets)``: sources in ``[0, sources)``, targets in ``[0, targets)``).

    The range is a value check (one device synchronisation), skipped with ``values=False`` and under
    ``torch.compile`` (:func:`checking_values`).
    """
    if not isinstance(edge_index, Tensor) or edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"{name}: expected a [2, E] tensor, got {_shape(edge_index)}")
    if edge_index.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name}: expected an int64 tensor, got {edge_index.dtype}")
    if values and edge_index.numel() and checking_values():
        if isinstance(num_nodes, tuple):
            ranges = [(edge_index[0], "source", num_nodes[0]), (edge_index[1], "target", num_nodes[1])]
        else:
            ranges = [(edge_index, "node", num_nodes)]
        # all minima and maxima in one read-back: one device synchronisation
        bounds = torch.stack([bound for indices, _, _ in ranges for bound in torch.aminmax(indices)]).tolist()
        for (_, what, count), low, high in zip(ranges, bounds[::2], bounds[1::2], strict=True):
            if low < 0 or high >= count:
                raise ValueError(f"{name}: {what} indices must lie in [0, {count}), got range [{low}, {high}]")


def check_batch(
    batch: Tensor,
    num_nodes: int,
    *,
    require_sorted: bool = False,
    num_graphs: int | None = None,
    values: bool = True,
    name: str = "batch",
) -> int | None:
    """``batch`` must give each node's graph: an int64 (or int32) ``[N]`` tensor of indices ``>= 0``.

    Without ``num_graphs`` the indices must be below ``N`` (a batch has at most as many graphs as nodes, as PyG's
    ``Batch`` of non-empty graphs always has); with it, below ``num_graphs`` (which may count empty graphs). This
    refuses a stray huge index, for which pooling or a graph builder would allocate a row per index. With
    ``require_sorted=True`` the indices must also be non-decreasing, each graph's nodes one run (as PyG's ``Batch``
    builds them): the graph builders need it, since torch-cluster and :func:`~pyg_se3.graph.complete_edge_index`
    find a graph's nodes by where its run starts. Pooling gathers by index, in any order.

    The values are read back in one device synchronisation; skipped with ``values=False`` (for a caller that
    hands ``batch`` on to a consumer that checks it) and under ``torch.compile`` (:func:`checking_values`).

    Returns
    -------
    int or None
        The number of graphs the indices imply, ``max(batch) + 1``, when the values were read (not for ``N = 0``);
        else ``None``.
    """
    if not isinstance(batch, Tensor) or batch.shape != (num_nodes,):
        raise ValueError(f"{name}: expected a [N] = [{num_nodes}] tensor of graph indices, got {_shape(batch)}")
    if batch.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name}: expected an int64 (or int32) tensor of graph indices, got {batch.dtype}")
    if not (values and num_nodes and checking_values()):
        return None
    stats = [*torch.aminmax(batch)]
    if require_sorted:
        stats.append((batch[1:] < batch[:-1]).any())
    low, high, *unsorted = torch.stack([stat.long() for stat in stats]).tolist()
    if low < 0:
        raise ValueError(f"{name}: graph indices must be non-negative, got {low}")
    if any(unsorted):
        raise ValueError(f"{name}: expected a sorted graph-index vector (as PyG's Batch builds it)")
    if num_graphs is not None and high >= num_graphs:
        raise ValueError(f"{name}: graph indices must lie in [0, {num_graphs}) (num_graphs={num_graphs}), got {high}")
    if num_graphs is None and high >= num_nodes:
        raise ValueError(
            f"{name}: graph indices must lie in [0, {num_nodes}), got {high}: without num_graphs a batch has at "
            "most as many graphs as nodes"
        )
    return high + 1


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
        # Its values are checked where they are used (pooling, graph builders), once.
        check_batch(batch, num_nodes, values=False)


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
