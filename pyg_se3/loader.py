"""Mini-batches of equal-size graphs, collated once.

Particle systems of a fixed number of particles (the charged N-body task: 5 particles, 20 edges each) make batches
whose layout never changes: the same number of nodes and edges per graph, the edge indices shifted by the same
offsets. PyG's :class:`~torch_geometric.loader.DataLoader` nevertheless collates every batch from a list of
:class:`~torch_geometric.data.Data` objects, attribute by attribute. :class:`FixedSizeGraphs` collates a whole
dataset once into per-graph stacked tensors, and :class:`FixedSizeLoader` cuts batches out of them by indexing:
the same batches as ``DataLoader`` (equal tensors, the same order for the same sampler or generator), without the
per-batch collation.

>>> import torch
>>> from torch_geometric.data import Data
>>> from torch_geometric.loader import DataLoader
>>> from pyg_se3.loader import FixedSizeLoader
>>> graphs = [Data(pos=torch.randn(4, 3), edge_index=torch.tensor([[0, 1, 2], [1, 2, 3]])) for _ in range(10)]
>>> fast = next(iter(FixedSizeLoader(graphs, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
>>> plain = next(iter(DataLoader(graphs, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
>>> all(torch.equal(fast[key], plain[key]) for key in plain.keys())
True
>>> fast.edge_index[:, 3:6]  # the second graph's edges, shifted by its first node
tensor([[4, 5, 6],
        [5, 6, 7]])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader as TorchDataLoader
from torch_geometric.data import Batch, Data
from torch_geometric.data.collate import collate

__all__ = ["FixedSizeGraphs", "FixedSizeLoader"]


class _Stacked:
    """One attribute of every graph: ``values[g]`` is graph ``g``'s, with its collation offset removed."""

    def __init__(self, values: Tensor, cat_dim: int | None, size: int, increment: int, shape: torch.Size) -> None:
        self.values, self.cat_dim, self.size, self.increment = values, cat_dim, size, increment
        self.shape = shape  # one graph's (a 0-dimensional tensor is collated as one entry)

    def item(self, index: int) -> Tensor:
        """Graph ``index``'s attribute, as it was before collation."""
        return self.values[index].view(self.shape)

    def gather(self, index: Tensor) -> Tensor:
        """The attribute of the batch of graphs ``index``, as :func:`~torch_geometric.data.collate.collate`
        makes it."""
        values = self.values[index]
        if self.increment:
            offsets = torch.arange(len(index), device=values.device) * self.increment
            values = values + offsets.view(-1, *([1] * (values.dim() - 1))).to(values.dtype)
        if self.cat_dim is None:  # stacked along a new first dimension
            return values
        return values.movedim(0, self.cat_dim).flatten(self.cat_dim, self.cat_dim + 1).contiguous()


class FixedSizeGraphs(Sequence):
    """A dataset of graphs of equal size, collated once into stacked tensors.

    Every graph must have the same number of nodes, the same attributes (tensors only) and, for each attribute, the
    same size along the dimension that PyG concatenates it on (the same number of edges, for instance) and the same
    collation increment (``edge_index`` is shifted by the number of nodes). The graphs themselves may differ in
    every value, the edge indices included.

    Parameters
    ----------
    dataset
        A PyG dataset or a sequence of :class:`~torch_geometric.data.Data`, not empty. It is read once, here; the
        stacked tensors hold a copy of its values (about the memory of the dataset itself).

    Raises
    ------
    ValueError
        When ``dataset`` is empty, holds anything but ``Data`` objects, an attribute that is not a tensor, or graphs
        of different sizes (the message names the attribute); or when it has a ``transform`` or a ``set_epoch``
        method: its samples may then change at every access, and collating them once would freeze one draw (pass
        ``list(dataset)`` to collate exactly that).

    Notes
    -----
    ``graphs[i]`` gives graph ``i`` back as a ``Data`` object; :meth:`batch` gives a
    :class:`~torch_geometric.data.Batch` of several, equal to ``Batch.from_data_list`` of the same graphs (the same
    tensors, ``batch``, ``ptr`` and the bookkeeping that ``Batch.get_example`` and ``to_data_list`` read).
    """

    def __init__(self, dataset: Sequence[Data]) -> None:
        changing = [name for name in ("transform", "set_epoch") if getattr(dataset, name, None) is not None]
        if changing:
            raise ValueError(
                f"dataset: has {' and '.join(changing)}, so its samples may change at every access and cannot be "
                "collated once (list(dataset) would collate one draw of them)"
            )
        graphs = list(dataset)
        if not graphs:
            raise ValueError("dataset: expected at least one graph, got an empty dataset")
        kinds = {type(graph) for graph in graphs}
        if len(kinds) != 1 or not issubclass(next(iter(kinds)), Data):
            names = ", ".join(sorted(kind.__name__ for kind in kinds))
            raise ValueError(f"dataset: expected graphs of one torch_geometric.data.Data class, got {names}")
        first = graphs[0]
        keys = set(first.keys())
        for index, graph in enumerate(graphs):
            if set(graph.keys()) != keys:
                differ = sorted(keys.symmetric_difference(graph.keys()))
                raise ValueError(f"dataset: graph {index} and graph 0 differ in their attributes {differ}")
        for key, value in first.items():
            if not isinstance(value, Tensor) and key != "num_nodes":
                raise ValueError(f"dataset: attribute {key!r} is a {type(value).__name__}; only tensors can be stacked")
        num_nodes = {graph.num_nodes for graph in graphs}
        if len(num_nodes) != 1:
            raise ValueError(f"dataset: graphs of {min(num_nodes)} to {max(num_nodes)} nodes; expected one size")
        whole, slices, increments = collate(Batch, graphs, increment=True, add_batch=False)
        self.num_graphs, self.num_nodes = len(graphs), first.num_nodes
        self._base_cls = type(first)
        self._explicit_num_nodes = "num_nodes" in first.keys()  # collated as a count, not stacked
        self._attributes = {
            key: self._stack(first, key, whole[key], slices[key], increments[key])
            for key in first.keys()
            if key != "num_nodes"
        }

    def _stack(self, first: Data, key: str, value: Tensor, slices: Tensor, increments: Tensor) -> _Stacked:
        sizes = slices.diff()
        if not bool((sizes == sizes[0]).all()):
            raise ValueError(
                f"dataset: attribute {key!r} has {int(sizes.min())} to {int(sizes.max())} entries per graph; "
                "expected the same number in every graph"
            )
        step = first.__inc__(key, first[key])
        step = int(step) if not isinstance(step, Tensor) else int(step.item())
        expected = torch.arange(self.num_graphs, device=increments.device) * step
        if not torch.equal(increments.view(-1).to(expected.dtype), expected):
            raise ValueError(f"dataset: attribute {key!r} is shifted by different amounts in different graphs")
        cat_dim = first.__cat_dim__(key, first[key])
        if cat_dim is None:
            return _Stacked(value, None, 1, step, first[key].shape)
        cat_dim %= value.dim()
        per_graph = value.unflatten(cat_dim, (self.num_graphs, int(sizes[0]))).movedim(cat_dim, 0)
        if step:
            offsets = expected.view(-1, *([1] * (per_graph.dim() - 1))).to(per_graph.dtype)
            per_graph = per_graph - offsets
        return _Stacked(per_graph.contiguous(), cat_dim, int(sizes[0]), step, first[key].shape)

    def __len__(self) -> int:
        return self.num_graphs

    def __getitem__(self, index: int) -> Data:  # type: ignore[override]
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"index: expected an integer, got {type(index).__name__} (use batch() for several graphs)")
        if not -self.num_graphs <= index < self.num_graphs:
            raise IndexError(f"index {index} is out of range for {self.num_graphs} graphs")
        index %= self.num_graphs
        data = self._base_cls()
        for key, attribute in self._attributes.items():
            data[key] = attribute.item(index)
        if self._explicit_num_nodes:
            data.num_nodes = self.num_nodes
        return data

    def batch(self, index: Sequence[int] | Tensor) -> Batch:
        """The graphs ``index`` (in that order) as one :class:`~torch_geometric.data.Batch`."""
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or len(index) == 0:
            raise ValueError(f"index: expected a non-empty list of graph indices, got shape {tuple(index.shape)}")
        count = len(index)
        device = next((a.values.device for a in self._attributes.values()), None)
        out = Batch(_base_cls=self._base_cls)
        for key, attribute in self._attributes.items():
            out[key] = attribute.gather(index)
        if self._explicit_num_nodes:
            out._store._num_nodes = [self.num_nodes] * count
            out.num_nodes = self.num_nodes * count
        out.batch = torch.arange(count, device=device).repeat_interleave(self.num_nodes)
        out.ptr = torch.arange(count + 1, device=device) * self.num_nodes
        out._num_graphs = count
        # PyG keeps this bookkeeping on the CPU whatever the data's device
        out._slice_dict = {key: torch.arange(count + 1) * a.size for key, a in self._attributes.items()}
        out._inc_dict = {key: torch.arange(count) * a.increment for key, a in self._attributes.items()}
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.num_graphs} graphs of {self.num_nodes} nodes)"


class FixedSizeLoader(TorchDataLoader):
    """A :class:`~torch_geometric.loader.DataLoader` for datasets of equal-size graphs, collated once.

    Gives the same batches as ``torch_geometric.loader.DataLoader(dataset, batch_size, shuffle, **kwargs)``, in
    the same order for the same ``generator`` or ``sampler`` (the sampling is PyTorch's own, over the graph
    indices), while each batch is cut out of :class:`FixedSizeGraphs` by indexing instead of collated from ``Data``
    objects.

    Parameters
    ----------
    dataset
        The graphs (see :class:`FixedSizeGraphs` for what they must share), or a :class:`FixedSizeGraphs` already
        made from them: loaders over the same data, one per epoch for instance, then share one collated copy.
    batch_size
        Graphs per batch (default 1).
    shuffle
        Reshuffle the graphs every time the loader is iterated (default ``False``).
    **kwargs
        Further arguments of :class:`torch.utils.data.DataLoader` (``generator``, ``sampler``, ``drop_last``,
        ``num_workers``, ...), except ``collate_fn``, which this loader provides; PyG's ``follow_batch`` and
        ``exclude_keys`` are not supported.
    """

    def __init__(
        self, dataset: Sequence[Data] | FixedSizeGraphs, batch_size: int = 1, shuffle: bool = False, **kwargs: Any
    ) -> None:
        for name in ("collate_fn", "follow_batch", "exclude_keys"):
            if name in kwargs:
                raise TypeError(f"FixedSizeLoader: {name!r} is not supported (use torch_geometric's DataLoader)")
        self.graphs = dataset if isinstance(dataset, FixedSizeGraphs) else FixedSizeGraphs(dataset)
        super().__init__(range(len(self.graphs)), batch_size, shuffle, collate_fn=self.graphs.batch, **kwargs)
