"""Tensor-field convolution on PyG graphs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.nn.aggr import Aggregation
from torch_geometric.typing import Adj

from pyg_se3._amp import upcast
from pyg_se3.basis import Basis
from pyg_se3.fiber import Fiber
from pyg_se3.nn.kernel import make_kernel
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.utils import layer_inputs, message_passing_kwargs, options_repr

__all__ = ["SE3Conv", "add_relative_position"]


def add_relative_position(x_j: Tensor, fiber: Fiber, basis: Basis) -> Tensor:
    """Source features ``x_j [E, fiber.dim]`` with each edge's relative position ``r_ij = pos[j] - pos[i]`` added
    to the first type-1 channel (the original SE(3)-Transformer code's ``x_ij="add"``); ``x_j`` itself when
    ``fiber`` has no type-1 channel. ``r_ij`` is a type-1 vector, so the sum is one too."""
    if 1 not in fiber:
        return x_j
    start = fiber.offsets()[1].start
    return x_j + F.pad(basis.rel_pos.to(x_j.dtype), (start, fiber.dim - start - 3))


class SE3Conv(MessagePassing):
    r"""The SE(3)-equivariant tensor-field convolution (Thomas et al. 2018; Fuchs et al. 2020).

    .. math::
        f_{\mathrm{out},i}^l = w^{ll} f_{\mathrm{in},i}^l
            + \bigoplus_{j \in \mathcal{N}(i)} u_{ij} \sum_k W^{lk}(x_j - x_i) \, f_{\mathrm{in},j}^k

    with kernels ``W^{lk}`` built from the shared :class:`~pyg_se3.basis.Basis` and a radial network of
    ``|x_j - x_i|`` and the invariant edge features (see :class:`~pyg_se3.nn.kernel.EdgeKernel`), the
    self-interaction ``w^{ll}`` (:class:`~pyg_se3.nn.SE3Linear`, degrees present in both fibers), ``u_ij`` the
    optional envelope weights of the basis, and ``⊕`` the aggregation (sum by default). Edge ``(j, i)`` of
    ``edge_index`` sends from ``j = edge_index[0]`` to ``i = edge_index[1]`` (PyG's ``flow="source_to_target"``);
    its relative position is ``pos[j] - pos[i]``.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers (flat features of widths ``fiber_in.dim`` and ``fiber_out.dim``).
    edge_dim
        Number of invariant edge features (``edge_attr [E, edge_dim]``; default ``0``).
    radial_hidden, radial_layers
        Width and depth of the radial network (default ``32`` and ``2``).
    kernel
        ``"full"`` (:class:`~pyg_se3.nn.EdgeKernel`, the SE(3)-Transformer's kernel; the default) or
        ``"depthwise"`` (:class:`~pyg_se3.nn.DepthwiseEdgeKernel`: radial weights per path and channel, then
        channel mixing; several times faster).
    parity
        Keep only the kernel terms that respect parity (:mod:`pyg_se3.basis`): with features of natural parity
        (:attr:`Fiber.irreps <pyg_se3.fiber.Fiber.irreps>`: true scalars, vectors, ...) the layer is then
        equivariant under reflections too, E(3) rather than SE(3), with fewer radial weights. The basis must be
        computed with the same ``parity``. Default ``False``.
    radial_scaling
        Where the radial network's fan-in factor acts: ``"init"`` (on its initial output weights; the default) or
        ``"forward"`` (on its output, at every call: the same function at initialisation, and an optimiser's step
        moves the kernel only that factor as far, which keeps a wide layer's first training steps stable; see
        :class:`~pyg_se3.nn.EdgeKernel`).
    relative_position
        Add each edge's relative position to the first type-1 channel of the source features before the
        kernel (:func:`add_relative_position`; the original SE(3)-Transformer code's ``x_ij="add"``). Default
        ``False``.
    self_interaction
        Add ``w^{ll} f_i^l`` for the degrees common to both fibers (default ``True``).
    aggr
        PyG aggregation of messages (``"add"``, the default, ``"mean"``, ...; see
        :class:`~torch_geometric.nn.conv.MessagePassing`); ``"add"`` keeps the output continuous when an envelope
        switches edges on and off. Only aggregations that act on each feature component linearly, such as
        ``"add"`` and ``"mean"``, keep the layer equivariant.
    **kwargs
        Further arguments of :class:`~torch_geometric.nn.conv.MessagePassing` (e.g. ``aggr_kwargs``). The maths fix
        ``node_dim=0``, ``flow="source_to_target"`` and ``decomposed_layers=1``: another value of these is a
        ``ValueError`` naming the argument.

    Shapes
    ------
    - **input:** node features ``x [N, fiber_in.dim]`` or bipartite ``(x_src [N_src, fiber_in.dim],
      x_dst [N_dst, fiber_in.dim])``; positions ``pos [N, 3]`` or ``(pos_src [N_src, 3], pos_dst [N_dst, 3])``,
      or ``None`` with a ``basis``; edges ``edge_index [2, E]`` (a tensor or an
      :class:`~torch_geometric.EdgeIndex`) or a sparse adjacency ``adj_t [N_dst, N_src]``; edge features
      ``edge_attr [E, edge_dim]`` *(optional)*; envelope weights ``edge_weight [E]`` *(optional)*
    - **output:** node features ``[N, fiber_out.dim]`` or ``[N_dst, fiber_out.dim]``
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        *,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        parity: bool = False,
        radial_scaling: str = "init",
        relative_position: bool = False,
        self_interaction: bool = True,
        aggr: str | Aggregation = "add",
        **kwargs: Any,
    ) -> None:
        super().__init__(aggr=aggr, **message_passing_kwargs(type(self).__name__, kwargs))
        self.fiber_in, self.fiber_out, self.edge_dim = fiber_in, fiber_out, edge_dim
        self.relative_position = relative_position
        self._kernel_kind = kernel
        self.kernel = make_kernel(
            kernel,
            fiber_in,
            fiber_out,
            edge_dim=edge_dim,
            radial_hidden=radial_hidden,
            radial_layers=radial_layers,
            parity=parity,
            radial_scaling=radial_scaling,
        )
        common = fiber_out & fiber_in
        self.self_interaction = SE3Linear(fiber_in, common) if self_interaction and len(common) else None
        self.reset_parameters()

    @property
    def max_degree(self) -> int:
        return self.kernel.max_degree

    @property
    def parity(self) -> bool:
        """Whether the layer keeps only the kernel terms that respect parity (E(3)-equivariant)."""
        return self.kernel.parity

    def reset_parameters(self) -> None:
        """Re-initialise the edge kernel, the self-interaction and the aggregation's parameters (if any)."""
        super().reset_parameters()
        self.kernel.reset_parameters()
        if self.self_interaction is not None:
            self.self_interaction.reset_parameters()

    @torch.no_grad()
    def zero_output_(self, degree: int, channels: slice) -> None:
        """Make ``channels`` of output ``degree`` start at exactly 0 (messages and self-interaction); they keep
        their gradients, so they learn. E.g. a displacement head that starts as the identity on positions."""
        if degree not in self.fiber_out:
            raise ValueError(f"degree: {degree} is not a degree of fiber_out {self.fiber_out}")
        self.kernel.zero_output_(degree, channels)
        if self.self_interaction is not None and degree in self.self_interaction.fiber_out:
            self.self_interaction.weights[str(degree)][channels].zero_()

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: Adj,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
    ) -> Tensor:
        """Convolve.

        Parameters
        ----------
        x
            Node features ``[N, fiber_in.dim]``, or a bipartite pair ``(x_src, x_dst)`` (PyG's convention):
            messages come from the sources, the self-interaction from the targets, and the output has one row per
            target.
        pos
            Positions ``[N, 3]`` (``(pos_src, pos_dst)`` for a bipartite ``x``), from which the basis is computed;
            may be ``None`` when ``basis`` is given (a ``ValueError`` naming both when neither is).
        edge_index
            The edges ``(j, i)``, ``j`` sending to ``i``: a ``[2, E]`` tensor, a
            :class:`~torch_geometric.EdgeIndex`, or a sparse adjacency ``adj_t [N_dst, N_src]`` indexed
            ``[target, source]`` (PyG's convention; ``torch.sparse`` or ``torch_sparse.SparseTensor``), whose edges
            are taken in storage order (:func:`torch_geometric.utils.to_edge_index`) and whose values are not read
            (see :func:`~pyg_se3.nn.utils.resolve_edge_index`).
        edge_attr
            Invariant edge features ``[E, edge_dim]`` in the order of the edges, or ``None`` (default).
        basis
            The basis of these edges (:func:`~pyg_se3.basis.compute_basis`), computed from ``pos`` when ``None``
            (default).
        edge_weight
            ``[E]`` values in ``[0, 1]`` (e.g. a cutoff envelope :meth:`~pyg_se3.graph.GraphBuilder.edge_weight`)
            scaling each edge's message; it may instead come with the ``basis``, not both. Default ``None``.
        """
        x_src, x_dst, adjacency, basis = layer_inputs(self, x, pos, edge_index, edge_attr, basis, edge_weight)
        out = self.propagate(
            adjacency, x=(x_src, x_dst), basis=basis, edge_attr=edge_attr, size=(x_src.shape[0], x_dst.shape[0])
        )
        if self.self_interaction is not None:
            out = out + self.fiber_out.embed(self.self_interaction(x_dst), self.self_interaction.fiber_out)
        return out

    def message(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None) -> Tensor:
        if self.relative_position:
            x_j = add_relative_position(x_j, self.fiber_in, basis)
        messages = upcast(self.kernel(x_j, basis, edge_attr))  # summed over edges: float32 under autocast
        if basis.edge_weight is not None:
            messages = messages * basis.edge_weight.unsqueeze(-1)
        return messages

    def __repr__(self) -> str:
        options = {
            "edge_dim": (self.edge_dim, 0),
            "kernel": (self._kernel_kind, "full"),
            "parity": (self.parity, False),
            "radial_scaling": (self.kernel.radial_scaling, "init"),
            "relative_position": (self.relative_position, False),
            "self_interaction": (self.self_interaction is not None, True),
            "aggr": (self.aggr, "add"),
        }
        return options_repr(self, options)
