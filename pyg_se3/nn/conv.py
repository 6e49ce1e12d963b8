"""Tensor-field convolution on PyG graphs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing

from pyg_se3._amp import upcast
from pyg_se3.basis import Basis
from pyg_se3.fiber import Fiber
from pyg_se3.nn.kernel import make_kernel
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.utils import node_features, prepare_basis

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
    ``edge_index`` sends from ``j`` to ``i``; its relative position is ``pos[j] - pos[i]``.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers (flat features of widths ``fiber_in.dim`` and ``fiber_out.dim``).
    edge_dim
        Number of invariant edge features (``edge_attr`` is ``[E, edge_dim]``).
    self_interaction
        Add ``w^{ll} f_i^l`` for the degrees common to both fibers.
    aggr
        PyG aggregation of messages (``"add"``, ``"mean"``, ...); ``"add"`` keeps the output continuous
        when an envelope switches edges on and off.
    radial_hidden, radial_layers
        Width and depth of the radial network.
    kernel
        ``"full"`` (:class:`~pyg_se3.nn.EdgeKernel`, the SE(3)-Transformer's kernel) or ``"depthwise"``
        (:class:`~pyg_se3.nn.DepthwiseEdgeKernel`: radial weights per path and channel, then channel mixing;
        several times faster).
    relative_position
        Add each edge's relative position to the first type-1 channel of the source features before the
        kernel (:func:`add_relative_position`; the original SE(3)-Transformer code's ``x_ij="add"``). Default
        ``False``.

    Shapes
    ------
    ``x [N, fiber_in.dim]``, ``pos [N, 3]``, ``edge_index [2, E]``, ``edge_attr [E, edge_dim]`` ->
    ``[N, fiber_out.dim]``; or bipartite ``x = (x_src [N_src, .], x_dst [N_dst, .])`` with
    ``pos = (pos_src, pos_dst)`` or a ``basis`` -> ``[N_dst, fiber_out.dim]``.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        self_interaction: bool = True,
        aggr: str = "add",
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        relative_position: bool = False,
    ) -> None:
        super().__init__(aggr=aggr, node_dim=0)
        self.fiber_in, self.fiber_out, self.edge_dim = fiber_in, fiber_out, edge_dim
        self.relative_position = relative_position
        self.kernel = make_kernel(
            kernel, fiber_in, fiber_out, edge_dim=edge_dim, radial_hidden=radial_hidden, radial_layers=radial_layers
        )
        common = fiber_out & fiber_in
        self.self_interaction = SE3Linear(fiber_in, common) if self_interaction and len(common) else None
        self.reset_parameters()

    @property
    def max_degree(self) -> int:
        return self.kernel.max_degree

    def reset_parameters(self) -> None:
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
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
    ) -> Tensor:
        """Convolve; ``basis`` (from :func:`~pyg_se3.basis.compute_basis`) is computed from ``pos`` if absent.

        ``x`` may be a bipartite pair ``(x_src, x_dst)`` (PyG's convention), with ``pos = (pos_src, pos_dst)``
        or a ``basis``: messages come from the sources, the self-interaction from the targets, and the output
        has one row per target. ``edge_weight [E]`` (values in ``[0, 1]``, e.g. a cutoff envelope
        :meth:`~pyg_se3.graph.GraphBuilder.edge_weight`) scales each edge's message; it may instead come with the
        ``basis`` (:func:`~pyg_se3.basis.compute_basis`), not both.
        """
        x_src, x_dst = node_features(self, x)
        basis = prepare_basis(self, (x_src, x_dst), pos, edge_index, edge_attr, basis, edge_weight)
        out = self.propagate(
            edge_index, x=(x_src, x_dst), basis=basis, edge_attr=edge_attr, size=(x_src.shape[0], x_dst.shape[0])
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
        return (
            f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, edge_dim={self.edge_dim}, "
            f"self_interaction={self.self_interaction is not None}, aggr={self.aggr!r}, "
            f"kernel={type(self.kernel).__name__}, relative_position={self.relative_position})"
        )
