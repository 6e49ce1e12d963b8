"""Input validation shared by layers and models: bad input gets a ``ValueError`` naming the argument.

Checks of shapes, dtypes and sizes are static and run everywhere. Checks of *values* (finite positions, node
indices in range) read tensor data back to Python (:func:`checking_values`):

- on the CPU they always run in eager mode (reading back costs nothing there);
- on a GPU they run only in debug mode (:func:`debug`, :func:`set_debug`, or ``torch_geometric.debug()``), since
  each read-back synchronises the host with the device. Without it an out-of-range index surfaces as a device-side
  assert (CUDA's ``index out of bounds``) and NaN positions as NaN outputs;
- inside ``torch.compile`` (and ``torch.export``) they are skipped, since reading data back would split the graph;
- a model checks its inputs once per call and runs its layers under :func:`no_value_checks`; a layer called
  directly checks its own inputs.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch_geometric import is_debug_enabled as _pyg_debug_enabled

from pyg_se3._amp import LOW_PRECISION, autocast_on

if TYPE_CHECKING:  # pyg_se3.fiber imports this module
    from pyg_se3.fiber import Fiber

__all__ = [
    "as_integer",
    "check_batch",
    "check_dtype",
    "check_edge_index",
    "check_edge_weight",
    "check_graph_inputs",
    "check_int",
    "check_pos",
    "check_vectors",
    "checking_values",
    "debug",
    "is_debug_enabled",
    "model_dtype",
    "no_value_checks",
    "set_debug",
]

_INDEX_DTYPES = (torch.int64, torch.int32)


_debug = False
# Set while a model runs its layers on inputs it has checked (no_value_checks): a contextvar, so that one thread's
# model call does not switch off the checks of a layer another thread calls directly.
_values_checked: contextvars.ContextVar[bool] = contextvars.ContextVar("pyg_se3_values_checked", default=False)


def is_debug_enabled() -> bool:
    """Whether debug mode is on: value checks then also run on GPUs (see :func:`checking_values`).

    On with :func:`set_debug` or inside :func:`debug`, and also inside ``torch_geometric.debug()``.
    """
    return _debug or _pyg_debug_enabled()  # PyG's switch turns ours on too


def set_debug(mode: bool) -> None:
    """Switch debug mode on or off for the whole process (see :func:`debug` for a scoped switch)."""
    global _debug
    _debug = bool(mode)


@contextlib.contextmanager
def debug() -> Iterator[None]:
    """Debug mode inside the block (as ``torch_geometric.debug()``): value checks run on GPUs too, at the cost of
    a host-device synchronisation per check."""
    previous = _debug
    set_debug(True)
    try:
        yield
    finally:
        set_debug(previous)


class _NoValueChecks:
    def __enter__(self) -> None:
        self._token = _values_checked.set(True)

    def __exit__(self, *exc_info: object) -> None:
        _values_checked.reset(self._token)


def no_value_checks() -> contextlib.AbstractContextManager[None]:
    """A context in which :func:`checking_values` is ``False``: for a model that has checked its inputs once, to
    call its layers (and its graph builders) without checking the same values again.

    Under ``torch.compile`` a ``nullcontext`` (Dynamo cannot trace a contextvar, and checks are off anyway).
    """
    return contextlib.nullcontext() if torch.compiler.is_compiling() else _NoValueChecks()


def checking_values(device: torch.device | str | None = None) -> bool:
    """Whether value checks of tensors on ``device`` run: in eager mode, on the CPU, or on any device in debug mode
    (:func:`is_debug_enabled`); never while ``torch.compile`` traces, nor inside :func:`no_value_checks`.

    Value checks (``bool(tensor)``, ``int(tensor)``) are data-dependent: on a GPU each is a host-device
    synchronisation, under Dynamo a graph break. A compiled model is expected to be checked once in eager mode, as
    compiled code is usually compared with eager code anyway. ``device=None`` leaves the device out of it.
    """
    if torch.compiler.is_compiling() or _values_checked.get():
        return False
    return device is None or torch.device(device).type == "cpu" or is_debug_enabled()


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


def model_dtype(module: torch.nn.Module) -> torch.dtype | None:
    """The dtype of ``module``'s floating parameters, which its floating inputs must have (``None`` without any).

    A model cast to float16 or bfloat16 gets a ``ValueError``: sums over edges are kept in float32
    (:func:`~pyg_se3._amp.upcast`), which a 16-bit model cannot multiply; ``torch.autocast`` on a float32 model
    runs its matrix products in 16 bits instead.
    """
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), None)
    if dtype in LOW_PRECISION:
        raise ValueError(
            f"model: its parameters are {dtype}, which pyg_se3 models do not support; keep float32 parameters and "
            f"run the model under torch.autocast(device_type, dtype={dtype}) instead of casting it"
        )
    return dtype


def check_dtype(value: object, name: str, dtype: torch.dtype | None, autocast: bool = False) -> None:
    """``value`` must be a tensor of ``dtype``, the model's (:func:`model_dtype`; any dtype when ``None``).

    With ``autocast=True`` a float32 model also takes the autocast dtype while autocast is on for the tensor's
    device: features that autocast's matrix products made (e.g. an embedding before the first block).
    """
    if not isinstance(value, Tensor):
        raise ValueError(f"{name}: expected a tensor, got {type(value).__name__}")
    if dtype is None or value.dtype == dtype:
        return
    device_type = value.device.type
    if autocast and dtype == torch.float32 and autocast_on(device_type):
        if value.dtype == torch.get_autocast_dtype(device_type):
            return
    raise ValueError(
        f"{name}: expected a tensor of the model's dtype {dtype} (that of its parameters), got {value.dtype}; "
        f"convert the input or the model"
    )


def check_pos(pos: Tensor, num_nodes: int | None = None, name: str = "pos", values: bool = True) -> None:
    """``pos`` must be a finite floating ``[N, 3]`` tensor (with ``N == num_nodes`` when given) whose coordinates
    are at most ``sqrt(finfo.max) / 4`` in magnitude (~4.6e18 in float32, ~3.4e153 in float64).

    Within that bound no squared edge length ``|pos[j] - pos[i]|^2 <= 12 bound^2`` overflows: beyond it the
    basis is still finite (:func:`~pyg_se3.basis.compute_basis` rescales such edges), but the radial networks'
    layer norms, which square lengths times weights, would return NaN. Finiteness and the bound are one value
    check (one device synchronisation), skipped with ``values=False`` and under ``torch.compile``
    (:func:`checking_values`).
    """
    check_vectors(pos, num_nodes, name, "positions", values=False)
    if not (values and checking_values(pos.device)):
        return
    bound = torch.finfo(pos.dtype).max ** 0.5 / 4
    if bool((pos.abs() <= bound).all()):  # NaN and inf fail this too: one read-back for both checks
        return
    if not bool(torch.isfinite(pos).all()):
        raise ValueError(f"{name}: contains NaN or inf")
    raise ValueError(
        f"{name}: coordinates must lie within +-{bound:.3g} for {pos.dtype} (squared distances would overflow), got "
        f"up to {float(pos.abs().max()):.3g}; change the length unit or use float64"
    )


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
    if values and checking_values(value.device) and not bool(torch.isfinite(value).all()):
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
    if values and edge_index.numel() and checking_values(edge_index.device):
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
    if not (values and num_nodes and checking_values(batch.device)):
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
    dtype: torch.dtype | None = None,
    values: bool = True,
) -> None:
    """Validate the arguments of a layer or model ``forward(x, pos, edge_index, edge_attr, batch)``.

    ``dtype`` is the model's (:func:`model_dtype`): ``x``, ``pos`` and ``edge_attr`` must have it (``x`` may also
    have autocast's, see :func:`check_dtype`). ``values=False`` leaves out the value checks of ``pos`` and
    ``edge_index``, for a caller that has them checked elsewhere.
    """
    fiber_in.check(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x: expected a [N, {fiber_in.dim}] tensor, got shape {tuple(x.shape)}")
    check_dtype(x, "x", dtype, autocast=True)
    num_nodes = x.shape[0]
    check_pos(pos, num_nodes, values=values)
    check_dtype(pos, "pos", dtype)
    check_edge_index(edge_index, num_nodes, values=values)
    check_edge_attr(edge_attr, edge_index.shape[1], edge_dim, dtype)
    if batch is not None:
        # Its values are checked where they are used (pooling, graph builders), once.
        check_batch(batch, num_nodes, values=False)


def check_edge_attr(edge_attr: Tensor | None, num_edges: int, edge_dim: int, dtype: torch.dtype | None = None) -> None:
    """``edge_attr`` must be ``[E, edge_dim]`` (of the model's ``dtype`` when given, or autocast's, see
    :func:`check_dtype`) when ``edge_dim > 0`` and absent when it is 0."""
    if edge_dim == 0:
        if edge_attr is not None:
            raise ValueError("edge_attr: the layer was built with edge_dim=0; pass edge_attr=None")
        return
    if edge_attr is None:
        raise ValueError(f"edge_attr: expected a [E, {edge_dim}] tensor (edge_dim={edge_dim}), got None")
    check_dtype(edge_attr, "edge_attr", dtype, autocast=True)
    if edge_attr.dim() != 2 or edge_attr.shape != (num_edges, edge_dim):
        raise ValueError(f"edge_attr: expected shape [{num_edges}, {edge_dim}], got {tuple(edge_attr.shape)}")


def check_edge_weight(edge_weight: Tensor | None, num_edges: int, dtype: torch.dtype | None = None) -> None:
    """``edge_weight`` must be ``None`` or ``[E]`` weights in ``[0, 1]`` (an envelope), of the model's ``dtype``
    when given (or autocast's, see :func:`check_dtype`). The range is a value check (:func:`checking_values`)."""
    if edge_weight is None:
        return
    check_dtype(edge_weight, "edge_weight", dtype, autocast=True)
    if edge_weight.shape != (num_edges,):
        raise ValueError(f"edge_weight: expected shape [{num_edges}] (one weight per edge), got {_shape(edge_weight)}")
    if checking_values(edge_weight.device) and not bool(((edge_weight >= 0) & (edge_weight <= 1)).all()):
        raise ValueError("edge_weight: expected weights in [0, 1] (an envelope), got values outside (or NaN)")


def _shape(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
