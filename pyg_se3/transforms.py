r"""Data augmentation that respects fibers: rotate, reflect or translate *every* geometric field of a sample.

PyG's ``RandomRotate`` rotates ``pos`` only, about one axis. For equivariant models the velocities, the
targets and the type-1 parts of the node features must turn with the positions, or the sample stops being
physically consistent. :class:`RandomRotation` draws :math:`R` uniformly (Haar measure) from SO(3) and applies

.. math::
    \text{pos} \mapsto \text{pos}\, R^\top, \quad \text{vel} \mapsto \text{vel}\, R^\top, \quad
    y \mapsto y\, R^\top, \quad x \mapsto x\, D(R)^\top,

with :math:`D(R)` the block-diagonal Wigner matrix of the fiber of ``x`` (identity on type-0 blocks, :math:`R`
on type-1 blocks, :math:`D^l(R)` on type-:math:`l` blocks). Invariant attributes (masses, charges, ``p``,
``edge_attr``, indices) are left alone.

SE(3)-equivariant models need not be equivariant under reflections: a kernel that maps a vector ``v`` to
``r x v`` (the degree-1 coupling of two vectors) changes sign the wrong way under the inversion
:math:`x \mapsto -x`. Where the physics is symmetric under reflections (forces built from pair vectors, as in
the simulations of :mod:`pyg_se3.datasets`), :class:`RandomReflection` teaches the model that symmetry from
data: it inverts samples through the origin, each with probability ``p``,

.. math::
    \text{pos} \mapsto -\text{pos}, \quad \text{vel} \mapsto -\text{vel}, \quad
    y \mapsto -y, \quad x_l \mapsto (-1)^l x_l,

which with the rotations covers every reflection (a reflection is the inversion followed by a rotation).

Time reversal is a symmetry of the same simulations: run backwards from its target frame, with the velocities
reversed, a trajectory passes through its input state again. :class:`RandomTimeReversal` swaps samples for
such time-reversed counterparts (built by the dataset, e.g. :meth:`~pyg_se3.datasets.NBodyCharged.time_reversed`),
each with probability ``p``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from e3nn import o3
from torch import Tensor
from torch_geometric.data import Batch, Data
from torch_geometric.transforms import BaseTransform

from pyg_se3.fiber import Fiber

__all__ = ["RandomReflection", "RandomRotation", "RandomTimeReversal", "RandomTranslation"]


def _check_keys(name: str, keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str) or not all(isinstance(key, str) for key in keys):
        raise ValueError(f"{name}: expected a sequence of attribute names, got {keys!r}")
    return tuple(keys)


def _check_fiber(fiber: Fiber | None) -> Fiber:
    """``fiber``, or the default ``Fiber({0: 1, 1: 1})`` (a scalar and a vector) for ``None``."""
    fiber = Fiber({0: 1, 1: 1}) if fiber is None else fiber
    if not isinstance(fiber, Fiber):
        raise ValueError(f"fiber: expected a Fiber, got {type(fiber).__name__}")
    return fiber


def _check_probability(p: float) -> float:
    if isinstance(p, bool) or not (isinstance(p, int | float) and 0 <= p <= 1):
        raise ValueError(f"p: expected a probability in [0, 1], got {p!r}")
    return float(p)


def _num_graphs(data: Data) -> int:
    return data.num_graphs if isinstance(data, Batch) else 1


def _check_flip(data: Data, flip: Tensor) -> None:
    graphs = _num_graphs(data)
    if not isinstance(flip, Tensor) or flip.dtype != torch.bool or flip.shape != (graphs,):
        got = getattr(flip, "shape", flip)
        raise ValueError(f"flip: expected a boolean tensor of shape ({graphs},), got {got}")


def _check_vectors(data: Data, key: str) -> Tensor:
    value = data[key]
    if not isinstance(value, Tensor) or value.dim() != 2 or value.shape[-1] != 3:
        raise ValueError(f"{key}: expected a [N, 3] tensor of vectors, got {getattr(value, 'shape', value)}")
    return value


class RandomRotation(BaseTransform):
    r"""Rotate a sample by a rotation drawn uniformly from SO(3) (``e3nn.o3.rand_matrix``).

    Parameters
    ----------
    fiber
        The fiber of the attributes in ``fiber_keys`` (default ``Fiber({0: 1, 1: 1})``, e.g. mass or charge and
        velocity); use the dataset's ``fiber`` class attribute.
    vector_keys
        Attributes holding ``[N, 3]`` vectors (rotated as :math:`v R^\top`); missing ones are skipped.
    fiber_keys
        Attributes holding flat fiber features (rotated by :meth:`Fiber.rotate`); missing ones are skipped.

    Notes
    -----
    The rotation is about the origin; positions keep their centre only if it is the origin. Draws use torch's
    global random state (seed it with ``torch.manual_seed``).

    Examples
    --------
    A node with a scalar (2) and a vector, and its velocity: the type-1 part of ``x`` turns with ``vel``.

    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from pyg_se3 import Fiber
    >>> from pyg_se3.transforms import RandomRotation
    >>> data = Data(x=torch.tensor([[2.0, 1.0, 0.0, 0.0]]), vel=torch.tensor([[1.0, 0.0, 0.0]]))
    >>> rotated = RandomRotation(Fiber({0: 1, 1: 1}))(data)
    >>> rotated.x[0, 0].item(), torch.allclose(rotated.x[:, 1:], rotated.vel)
    (2.0, True)

    :meth:`rotate` applies a given rotation, here 90 degrees about ``z``:

    >>> R = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> RandomRotation(Fiber({0: 1, 1: 1})).rotate(data, R).x
    tensor([[2., 0., 1., 0.]])
    """

    def __init__(
        self,
        fiber: Fiber | None = None,
        vector_keys: Sequence[str] = ("pos", "vel", "y"),
        fiber_keys: Sequence[str] = ("x",),
    ) -> None:
        self.fiber = _check_fiber(fiber)
        self.vector_keys = _check_keys("vector_keys", vector_keys)
        self.fiber_keys = _check_keys("fiber_keys", fiber_keys)

    def forward(self, data: Data) -> Data:
        dtype = next((data[key].dtype for key in self.vector_keys if key in data), torch.float64)
        return self.rotate(data, o3.rand_matrix(dtype=dtype))

    def rotate(self, data: Data, R: Tensor) -> Data:
        """Apply the fixed rotation ``R`` ``[3, 3]`` to every geometric field of (a copy of) ``data``."""
        if not isinstance(R, Tensor) or R.shape != (3, 3):
            raise ValueError(f"R: expected a [3, 3] rotation matrix, got {getattr(R, 'shape', R)}")
        data = data.clone()
        for key in self.vector_keys:
            if key in data:
                vectors = _check_vectors(data, key)
                data[key] = vectors @ R.to(vectors.dtype).T
        for key in self.fiber_keys:
            if key in data:
                data[key] = self.fiber.rotate(data[key], R)
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fiber={self.fiber}, vector_keys={self.vector_keys}, fiber_keys={self.fiber_keys})"
        )


class RandomReflection(BaseTransform):
    r"""Invert samples through the origin, :math:`x \mapsto -x`, each with probability ``p``: positions,
    velocities and targets change sign, and so does the type-:math:`l` part of the features for odd :math:`l`.

    Applied to a collated :class:`~torch_geometric.data.Batch` it reflects each of its graphs independently
    (a training loop can then apply it to every batch, with no per-sample transform and the fast loader kept).

    Parameters
    ----------
    fiber
        The fiber of the attributes in ``fiber_keys`` (default ``Fiber({0: 1, 1: 1})``); use the dataset's
        ``fiber`` class attribute. Their type-:math:`l` blocks are multiplied by :math:`(-1)^l`: true tensors,
        such as velocities; a pseudo-vector (an angular momentum) would keep its sign and must not be listed.
    vector_keys
        Attributes holding ``[N, 3]`` vectors or positions (negated); missing ones are skipped.
    fiber_keys
        Attributes holding flat fiber features; missing ones are skipped.
    p
        The probability of reflecting each sample, in ``[0, 1]`` (default 0.5: both handednesses equally often).

    Notes
    -----
    Invariant attributes (masses, charges, ``edge_attr``, indices) are left alone. Draws use torch's global
    random state (``torch.manual_seed``), one per graph.

    Examples
    --------
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from pyg_se3 import Fiber
    >>> from pyg_se3.transforms import RandomReflection
    >>> data = Data(x=torch.tensor([[2.0, 1.0, 0.0, 0.0]]), pos=torch.tensor([[0.0, 1.0, 2.0]]))
    >>> reflected = RandomReflection(Fiber({0: 1, 1: 1}), p=1.0)(data)
    >>> reflected.x, reflected.pos
    (tensor([[ 2., -1., -0., -0.]]), tensor([[-0., -1., -2.]]))
    """

    def __init__(
        self,
        fiber: Fiber | None = None,
        vector_keys: Sequence[str] = ("pos", "vel", "y"),
        fiber_keys: Sequence[str] = ("x",),
        p: float = 0.5,
    ) -> None:
        self.fiber = _check_fiber(fiber)
        self.p = _check_probability(p)
        self.vector_keys = _check_keys("vector_keys", vector_keys)
        self.fiber_keys = _check_keys("fiber_keys", fiber_keys)

    def forward(self, data: Data) -> Data:
        return self.reflect(data, torch.rand(_num_graphs(data)) < self.p)

    def reflect(self, data: Data, flip: Tensor) -> Data:
        """(A copy of) ``data`` with the graphs where ``flip`` (a ``[num_graphs]`` boolean tensor; ``[1]`` for a
        single sample) is true inverted through the origin."""
        _check_flip(data, flip)
        data = data.clone()
        sign = 1.0 - 2.0 * flip.double()
        if isinstance(data, Batch):
            sign = sign.to(data.batch.device)[data.batch]
        for key in self.vector_keys:
            if key in data:
                data[key] = _check_vectors(data, key) * _per_row(sign, data[key], key)
        for key in self.fiber_keys:
            if key in data:
                blocks = self.fiber.split(data[key])
                node_sign = _per_row(sign, data[key], key)
                data[key] = self.fiber.join({d: b * node_sign.unsqueeze(-1) ** d for d, b in blocks.items()})
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(fiber={self.fiber}, vector_keys={self.vector_keys}, "
            f"fiber_keys={self.fiber_keys}, p={self.p})"
        )


def _per_row(sign: Tensor, value: Tensor, key: str) -> Tensor:
    """``sign`` (one per graph of a sample, or one per node of a batch) as a ``[rows, 1]`` column for ``value``."""
    if sign.numel() not in (1, value.shape[0]):
        raise ValueError(f"{key}: expected one row per node ({sign.numel()}), got {value.shape[0]}")
    return sign.to(dtype=value.dtype, device=value.device).expand(value.shape[0]).unsqueeze(-1)


class RandomTimeReversal(BaseTransform):
    r"""Swap samples for their time-reversed counterparts, each with probability ``p``.

    A sample maps an input state (positions, velocities) to later positions. Where the dynamics are reversible,
    the trajectory run backwards from the target frame with the velocities reversed is as much a sample of the
    same physics, with the input positions as its target. ``reversed_samples`` holds those counterparts (for the
    charged N-body benchmark and particle dynamics: :meth:`~pyg_se3.datasets.NBodyCharged.time_reversed`,
    :meth:`~pyg_se3.datasets.ParticleDynamics.time_reversed`), matched to the samples by
    ``index_key``; the attributes in ``keys`` of a swapped graph are replaced by its counterpart's.

    Applied to a collated :class:`~torch_geometric.data.Batch` it swaps each of its graphs independently, so a
    training loop can apply it to every batch (the fast loader kept), as :class:`RandomReflection`.

    Parameters
    ----------
    reversed_samples
        The counterparts, each with a one-element ``index_key`` (unique) and, for every key in ``keys``, one
        row per node.
    keys
        Node attributes taken from the counterpart (default ``("pos", "vel", "x", "y")``); missing ones are
        skipped. The others (charges, edges, ``edge_attr``) must be those of the sample.
    p
        The probability of swapping each sample, in ``[0, 1]`` (default 0.5: both directions of time equally
        often).
    index_key
        The attribute that names a sample (default ``"sample_id"``).

    Notes
    -----
    Draws use torch's global random state (``torch.manual_seed``), one per graph. A swapped graph whose
    ``index_key`` has no counterpart, or whose counterpart has another number of nodes, is an error.

    Examples
    --------
    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from pyg_se3.transforms import RandomTimeReversal
    >>> forward = Data(pos=torch.zeros(2, 3), y=torch.ones(2, 3), sample_id=torch.tensor([7]))
    >>> backward = Data(pos=torch.ones(2, 3), y=torch.zeros(2, 3), sample_id=torch.tensor([7]))
    >>> swapped = RandomTimeReversal([backward], p=1.0)(forward)
    >>> torch.equal(swapped.pos, backward.pos), torch.equal(swapped.y, backward.y)
    (True, True)
    """

    def __init__(
        self,
        reversed_samples: Sequence[Data],
        keys: Sequence[str] = ("pos", "vel", "x", "y"),
        p: float = 0.5,
        index_key: str = "sample_id",
    ) -> None:
        self.keys = _check_keys("keys", keys)
        self.p = _check_probability(p)
        if not isinstance(index_key, str):
            raise ValueError(f"index_key: expected an attribute name, got {index_key!r}")
        self.index_key = index_key
        if len(reversed_samples) == 0:
            raise ValueError("reversed_samples: expected at least one sample, got none")
        ids = [self._sample_id(sample, k) for k, sample in enumerate(reversed_samples)]
        if len(set(ids)) != len(ids):
            raise ValueError(f"reversed_samples: expected unique {index_key} values, got repeats")
        self._position = torch.full((max(ids) + 1,), -1, dtype=torch.long)
        self._position[torch.tensor(ids)] = torch.arange(len(ids))
        sizes = torch.tensor([sample.num_nodes for sample in reversed_samples])
        self._sizes, self._start = sizes, torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        self._values = {
            key: torch.cat([self._node_rows(sample, key) for sample in reversed_samples])
            for key in self.keys
            if key in reversed_samples[0]
        }

    def _sample_id(self, sample: Data, k: int) -> int:
        value = sample[self.index_key] if self.index_key in sample else None
        if not isinstance(value, Tensor) or value.numel() != 1 or value.is_floating_point() or int(value) < 0:
            got = getattr(value, "shape", value)
            raise ValueError(f"reversed_samples[{k}].{self.index_key}: expected one integer >= 0, got {got}")
        return int(value)

    def _node_rows(self, sample: Data, key: str) -> Tensor:
        value = sample[key] if key in sample else None
        if not isinstance(value, Tensor) or value.dim() < 1 or value.shape[0] != sample.num_nodes:
            got = getattr(value, "shape", value)
            raise ValueError(f"reversed_samples: {key} expected one row per node ({sample.num_nodes}), got {got}")
        return value

    def forward(self, data: Data) -> Data:
        return self.swap(data, torch.rand(_num_graphs(data)) < self.p)

    def swap(self, data: Data, flip: Tensor) -> Data:
        """(A copy of) ``data`` with the graphs where ``flip`` (a ``[num_graphs]`` boolean tensor; ``[1]`` for a
        single sample) is true replaced by their counterparts."""
        _check_flip(data, flip)
        ids = data[self.index_key].view(-1).cpu() if self.index_key in data else None
        if ids is None or ids.shape != flip.shape:
            got = None if ids is None else tuple(ids.shape)
            raise ValueError(f"{self.index_key}: expected one per graph ({flip.numel()}), got {got}")
        if isinstance(data, Batch):
            graph, ptr = data.batch.cpu(), data.ptr.cpu()
        else:
            graph, ptr = torch.zeros(data.num_nodes, dtype=torch.long), torch.tensor([0, data.num_nodes])
        known = (ids >= 0) & (ids < self._position.numel())
        position = torch.where(known, self._position[ids.clamp(0, self._position.numel() - 1)], -1)
        missing = flip & (position < 0)
        if missing.any():
            raise ValueError(f"{self.index_key}: no reversed counterpart for {ids[missing].tolist()}")
        sizes = ptr[1:] - ptr[:-1]
        wrong = flip & (self._sizes[position.clamp(min=0)] != sizes)
        if wrong.any():
            raise ValueError(f"{self.index_key}: the counterparts of {ids[wrong].tolist()} have other numbers of nodes")
        nodes = torch.nonzero(flip[graph]).squeeze(-1)
        rows = self._start[position[graph[nodes]]] + nodes - ptr[graph[nodes]]
        data = data.clone()
        for key, values in self._values.items():
            if key in data:
                value = data[key].clone()
                index = nodes.to(value.device)
                value[index] = values[rows].to(dtype=value.dtype, device=value.device)
                data[key] = value
        return data

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._sizes.numel()} reversed samples, keys={self.keys}, p={self.p}, "
            f"index_key={self.index_key!r})"
        )


class RandomTranslation(BaseTransform):
    r"""Translate the positions of a sample by :math:`t \sim N(0, \sigma^2 I)`: ``pos`` and ``y`` move, velocities
    and features (translation-invariant) do not.

    Parameters
    ----------
    std
        :math:`\sigma` (> 0).
    position_keys
        Attributes holding ``[N, 3]`` positions; missing ones are skipped.

    Examples
    --------
    Positions and targets move together, so their differences are unchanged:

    >>> import torch
    >>> from torch_geometric.data import Data
    >>> from pyg_se3.transforms import RandomTranslation
    >>> data = Data(pos=torch.zeros(2, 3), y=torch.ones(2, 3))
    >>> moved = RandomTranslation(std=1.0)(data)
    >>> torch.allclose(moved.y - moved.pos, data.y - data.pos)
    True
    """

    def __init__(self, std: float = 1.0, position_keys: Sequence[str] = ("pos", "y")) -> None:
        if not (isinstance(std, int | float) and std > 0):
            raise ValueError(f"std: expected a number > 0, got {std!r}")
        self.std = float(std)
        self.position_keys = _check_keys("position_keys", position_keys)

    def forward(self, data: Data) -> Data:
        data = data.clone()
        shift = None
        for key in self.position_keys:
            if key in data:
                positions = _check_vectors(data, key)
                if shift is None:
                    shift = self.std * torch.randn(3, dtype=positions.dtype, device=positions.device)
                data[key] = positions + shift
        return data

    def __repr__(self) -> str:
        return f"{type(self).__name__}(std={self.std}, position_keys={self.position_keys})"
