"""Fibers: how many channels a feature has of each rotation degree, and how it is laid out in memory.

A fiber assigns ``C_l`` channels to each degree ``l``. A node feature of fiber ``f`` is a *flat* tensor of width
``f.dim = sum_l C_l (2l + 1)`` in e3nn's ``mul_ir`` layout: degree blocks in increasing ``l``; within a block,
channel-major ``[C_l, 2l+1]``; type-1 components are ``(x, y, z)``. Flat features live in ``Data.x`` and batch
with PyG's ``Batch``/``DataLoader`` like any other node feature.

A rotation ``R`` acts on block ``l`` by the real Wigner matrix ``D^l(R)`` (e3nn's convention, ``D^1(R) = R``):
``f^l -> f^l D^l(R)^T``; on the flat layout, ``x -> x @ fiber.D_from_matrix(R).T``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Mapping

import torch
from e3nn import o3
from torch import Tensor

from pyg_se3.checks import as_integer, check_int

__all__ = ["Fiber", "wigner_D"]


class Fiber:
    r"""A map from rotation degree ``l >= 0`` to a number of channels ``C_l >= 1``.

    Parameters
    ----------
    structure
        ``{degree: channels}`` or an iterable of ``(degree, channels)`` pairs of integers (``int``, NumPy or 0-d
        torch integers; not ``bool``, nor floats such as ``1.5`` or ``2.0``). Degrees may come in any order;
        they are stored sorted. A degree given twice is an error (use ``+`` to add channels).

    Notes
    -----
    Parities follow the spherical harmonics (``l e`` for even ``l``, ``l o`` for odd ``l``): the natural parity of
    true scalars, vectors and tensors. Layers built with ``parity=True`` respect it, which makes them equivariant
    under reflections too; a fiber holds no pseudo-tensors (``0o``, ``1e``, ...). Other layers are equivariant
    under proper rotations only, where parity plays no role.

    Examples
    --------
    >>> f = Fiber({0: 16, 1: 8, 2: 4})
    >>> f
    Fiber({0: 16, 1: 8, 2: 4})
    >>> f.dim
    60
    >>> f.irreps
    16x0e+8x1o+4x2e
    >>> {degree: tuple(block.shape) for degree, block in f.split(torch.zeros(5, f.dim)).items()}
    {0: (5, 16, 1), 1: (5, 8, 3), 2: (5, 4, 5)}
    >>> Fiber.create(num_degrees=3, channels=32)
    Fiber({0: 32, 1: 32, 2: 32})
    """

    __slots__ = ("_structure",)

    def __init__(self, structure: Mapping[int, int] | Iterable[tuple[int, int]]) -> None:
        items = list(structure.items()) if isinstance(structure, Mapping) else list(structure)
        parsed: dict[int, int] = {}
        for item in items:
            if not (isinstance(item, tuple | list) and len(item) == 2):
                raise ValueError(f"structure: expected (degree, channels) pairs, got {item!r}")
            degree, channels = (as_integer(v) for v in item)
            if degree is None or degree < 0:
                raise ValueError(f"structure: degrees must be integers >= 0, got degree {item[0]!r}")
            if channels is None or channels < 1:
                raise ValueError(f"structure: channels must be integers >= 1, got {item[1]!r} for degree {degree}")
            if degree in parsed:
                raise ValueError(f"structure: degree {degree} given twice")
            parsed[degree] = channels
        self._structure: tuple[tuple[int, int], ...] = tuple(sorted(parsed.items()))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def create(cls, num_degrees: int, channels: int) -> Fiber:
        """Degrees ``0 .. num_degrees - 1``, each with ``channels`` channels."""
        return cls({degree: channels for degree in range(check_int(num_degrees, "num_degrees", 1))})

    @classmethod
    def from_irreps(cls, irreps: o3.Irreps | str) -> Fiber:
        """The fiber of an e3nn ``Irreps`` whose parities are those of the spherical harmonics."""
        irreps = o3.Irreps(irreps).simplify()
        structure: dict[int, int] = {}
        for mul, ir in irreps:
            if ir.p != (-1) ** ir.l:
                raise ValueError(f"irreps: {ir} is not a spherical-harmonic parity ({ir.l}{'eo'[ir.l % 2]})")
            structure[ir.l] = structure.get(ir.l, 0) + mul
        return cls(structure)

    # ------------------------------------------------------------------ structure
    @property
    def degrees(self) -> tuple[int, ...]:
        return tuple(degree for degree, _ in self._structure)

    @property
    def max_degree(self) -> int:
        return self._structure[-1][0] if self._structure else -1

    @property
    def dim(self) -> int:
        """Width of the flat feature: ``sum_l C_l (2l + 1)``."""
        return sum(channels * (2 * degree + 1) for degree, channels in self._structure)

    @property
    def irreps(self) -> o3.Irreps:
        return o3.Irreps([(channels, (degree, (-1) ** degree)) for degree, channels in self._structure])

    def __getitem__(self, degree: int) -> int:
        """Channels of ``degree``; 0 if the fiber does not have it."""
        return dict(self._structure).get(degree, 0)

    def __contains__(self, degree: object) -> bool:
        return degree in self.degrees

    def __iter__(self) -> Iterator[tuple[int, int]]:
        """``(degree, channels)`` pairs in increasing degree."""
        return iter(self._structure)

    def __len__(self) -> int:
        return len(self._structure)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fiber) and self._structure == other._structure

    def __hash__(self) -> int:
        return hash(self._structure)

    def __repr__(self) -> str:
        return f"Fiber({dict(self._structure)})"

    def __add__(self, other: Fiber) -> Fiber:
        """Channel-wise sum: the fiber of the concatenation (see :meth:`cat`)."""
        merged = dict(self._structure)
        for degree, channels in other:
            merged[degree] = merged.get(degree, 0) + channels
        return Fiber(merged)

    def __and__(self, other: Fiber) -> Fiber:
        """Degrees present in both; channels of ``self``."""
        return Fiber({d: c for d, c in self if d in other})

    # ------------------------------------------------------------------ layout
    def offsets(self) -> dict[int, slice]:
        """The slice of each degree's block in the flat layout."""
        out, start = {}, 0
        for degree, channels in self._structure:
            stop = start + channels * (2 * degree + 1)
            out[degree] = slice(start, stop)
            start = stop
        return out

    def split(self, x: Tensor) -> dict[int, Tensor]:
        """Flat ``[..., dim]`` to ``{degree: [..., C_l, 2l+1]}`` (views, no copy)."""
        self.check(x, "x")
        blocks = torch.split(x, [c * (2 * d + 1) for d, c in self._structure], dim=-1)
        return {d: block.unflatten(-1, (c, 2 * d + 1)) for (d, c), block in zip(self._structure, blocks, strict=True)}

    def join(self, blocks: Mapping[int, Tensor]) -> Tensor:
        """``{degree: [..., C_l, 2l+1]}`` back to flat ``[..., dim]``; the inverse of :meth:`split`."""
        if set(blocks) != set(self.degrees):
            raise ValueError(f"blocks: expected degrees {list(self.degrees)}, got {sorted(blocks)}")
        parts = []
        for degree, channels in self._structure:
            block = blocks[degree]
            if tuple(block.shape[-2:]) != (channels, 2 * degree + 1):
                raise ValueError(
                    f"blocks[{degree}]: expected trailing shape ({channels}, {2 * degree + 1}), "
                    f"got {tuple(block.shape[-2:])}"
                )
            parts.append(block.flatten(-2))
        return torch.cat(parts, dim=-1)

    def check(self, x: Tensor, name: str = "x") -> None:
        """Raise a ``ValueError`` naming ``name`` unless ``x`` is a ``[..., dim]`` floating tensor."""
        if not isinstance(x, Tensor):
            raise ValueError(f"{name}: expected a tensor of width {self.dim} for {self}, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.dim:
            raise ValueError(f"{name}: expected last dimension {self.dim} for {self}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")

    @staticmethod
    def cat(x_a: Tensor, fiber_a: Fiber, x_b: Tensor, fiber_b: Fiber) -> Tensor:
        """Concatenate two flat features channel-wise, per degree; the result has fiber ``fiber_a + fiber_b``.

        Within each degree the channels of ``x_a`` come first.
        """
        blocks_a, blocks_b = fiber_a.split(x_a), fiber_b.split(x_b)
        merged = fiber_a + fiber_b
        blocks = {}
        for degree in merged.degrees:
            parts = [blocks[degree] for blocks in (blocks_a, blocks_b) if degree in blocks]
            blocks[degree] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
        return merged.join(blocks)

    @staticmethod
    def uncat(x: Tensor, fiber_a: Fiber, fiber_b: Fiber) -> tuple[Tensor, Tensor]:
        """The inverse of :meth:`cat`: split features of fiber ``fiber_a + fiber_b`` into the two parts."""
        blocks = (fiber_a + fiber_b).split(x)
        part_a = {d: blocks[d][..., :c, :] for d, c in fiber_a}
        part_b = {d: blocks[d][..., fiber_a[d] :, :] for d in fiber_b.degrees}
        return fiber_a.join(part_a), fiber_b.join(part_b)

    def embed(self, x: Tensor, source: Fiber) -> Tensor:
        """Place features of ``source`` (degrees a subset of this fiber's, same channels) into this fiber's layout,
        with zeros for the degrees ``source`` lacks."""
        if any(source[d] != self[d] for d in source.degrees):
            raise ValueError(f"source: {source} is not a sub-fiber of {self} (same channels per degree)")
        if source == self:
            return x
        blocks = source.split(x)
        lead = x.shape[:-1]
        return self.join(
            {d: blocks[d] if d in blocks else x.new_zeros(*lead, c, 2 * d + 1) for d, c in self._structure}
        )

    # ------------------------------------------------------------------ rotations
    def D_from_matrix(self, R: Tensor) -> Tensor:
        """The ``[dim, dim]`` block-diagonal representation of the rotation matrix ``R`` (``[3, 3]``).

        Rotated features are ``x @ D.T``. The blocks are :func:`wigner_D` (exact to machine precision).
        """
        _check_rotation(R)
        blocks = [wigner_D(degree, R) for degree, channels in self._structure for _ in range(channels)]
        return torch.block_diag(*blocks) if blocks else R.new_zeros(0, 0)

    def rotate(self, x: Tensor, R: Tensor) -> Tensor:
        """``x @ D_from_matrix(R).T``, computed block by block: the features as seen after rotating space by ``R``
        (for an improper ``R``, ``det R = -1``: after that reflection, the features being of natural parity; see
        :func:`wigner_D`)."""
        _check_rotation(R)
        blocks = self.split(x)
        R = R.to(x.dtype)
        return self.join({d: b @ wigner_D(d, R).T for d, b in blocks.items()})


def _check_rotation(R: Tensor) -> None:
    if not isinstance(R, Tensor) or R.shape != (3, 3):
        raise ValueError(f"R: expected a [3, 3] rotation matrix, got {getattr(R, 'shape', R)}")


@functools.lru_cache(maxsize=64)
def _coupling(degree: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``sqrt(2l+1) * wigner_3j(l-1, 1, l)`` as a ``[(2l-1) * 3, 2l+1]`` isometry (``C^T C = I``)."""
    C = o3.wigner_3j(degree - 1, 1, degree, dtype=torch.float64).reshape(-1, 2 * degree + 1)
    return (C * (2 * degree + 1) ** 0.5).to(dtype=dtype, device=device)


def wigner_D(degree: int, R: Tensor) -> Tensor:
    r"""The real Wigner matrix ``D^l(R)`` (``[2l+1, 2l+1]``) in e3nn's basis, for a rotation matrix ``R``.

    ``D^0 = 1``, ``D^1 = R`` on ``(x, y, z)``, and ``D^l = C_l^T (D^{l-1} \otimes R) C_l`` with the isometry
    ``C_l`` built from e3nn's ``wigner_3j(l-1, 1, l)``: pure matrix products, exact to machine precision and
    differentiable in ``R``. (e3nn's own ``D_from_matrix`` goes through Euler angles and loses about half the
    digits of float64, ~1e-7, which would mask equivariance errors far above the 1e-10 we test for.)

    ``D^l`` is a polynomial of degree ``l`` in ``R``: for an improper orthogonal matrix ``-R`` (a rotation after
    the inversion through the origin) it is ``(-1)^l D^l(R)``, the representation of a type-``l`` feature of
    natural parity (a true scalar, vector, ...: the parity :attr:`Fiber.irreps` names).
    """
    if degree == 0:
        return R.new_ones(1, 1)
    R = R.contiguous()  # torch.kron views its inputs (R from a QR factorisation is column-major)
    D = R
    for l in range(2, degree + 1):
        C = _coupling(l, R.dtype, R.device)
        D = C.T @ torch.kron(D, R) @ C
    return D
