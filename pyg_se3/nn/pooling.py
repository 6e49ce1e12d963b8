"""Global pooling of fibers over the nodes of each graph in a batch."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch_geometric.utils import scatter

from pyg_se3.checks import check_batch, check_int
from pyg_se3.fiber import Fiber

__all__ = ["SE3GlobalPool", "global_pool"]

_REDUCTIONS = ("mean", "sum", "max")


def global_pool(
    x: Tensor, batch: Tensor | None, fiber: Fiber, reduce: str = "mean", num_graphs: int | None = None
) -> Tensor:
    r"""Pool flat fiber features ``[N, fiber.dim]`` per graph to ``[B, fiber.dim]``.

    ``"mean"`` and ``"sum"`` are linear, hence equivariant for every degree. ``"max"`` is taken per component,
    which is equivariant only for scalars, so it is allowed only for type-0 fibers.

    ``batch`` gives each node's graph, in any order (see :func:`~pyg_se3.checks.check_batch`); ``None`` for one
    graph. ``B`` is ``num_graphs`` when given, which may count empty graphs (rows of zeros), and otherwise
    ``max(batch) + 1``, which must then not exceed the number of nodes (1 for no nodes).
    """
    if reduce not in _REDUCTIONS:
        raise ValueError(f"reduce: expected one of {_REDUCTIONS}, got {reduce!r}")
    if reduce == "max" and fiber.degrees != (0,):
        raise ValueError(f"reduce: 'max' is equivariant only for type-0 fibers, got {fiber}")
    fiber.check(x, "x")
    if num_graphs is not None:
        num_graphs = check_int(num_graphs, "num_graphs", 0)
    if batch is None:
        batch = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        implied = 1
    else:  # the check reads max(batch) back: reuse it rather than synchronise again
        implied = check_batch(batch, x.shape[0], num_graphs=num_graphs)
    if num_graphs is None:
        num_graphs = implied if implied is not None else (int(batch.max()) + 1 if batch.numel() else 1)
    return scatter(x, batch, dim=0, dim_size=num_graphs, reduce=reduce)


class SE3GlobalPool(nn.Module):
    """Module form of :func:`global_pool`: ``forward(x, batch) -> [num_graphs, fiber.dim]``."""

    def __init__(self, fiber: Fiber, reduce: str = "mean") -> None:
        super().__init__()
        if reduce not in _REDUCTIONS:
            raise ValueError(f"reduce: expected one of {_REDUCTIONS}, got {reduce!r}")
        self.fiber, self.reduce = fiber, reduce

    def forward(self, x: Tensor, batch: Tensor | None = None, num_graphs: int | None = None) -> Tensor:
        return global_pool(x, batch, self.fiber, self.reduce, num_graphs)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.fiber}, reduce={self.reduce!r})"
