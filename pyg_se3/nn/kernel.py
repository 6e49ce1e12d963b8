"""The fused per-edge equivariant kernel: basis, features and radial weights contracted in the cheap order."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyg_se3.basis import Basis, num_J
from pyg_se3.fiber import Fiber
from pyg_se3.nn.radial import RadialMLP

__all__ = ["EdgeKernel"]


class EdgeKernel(nn.Module):
    r"""Apply the equivariant kernel of every edge to the features of its source node.

    .. math::
        m_{ij}^l = \sum_k W^{lk}(r_{ij}) f_j^k
                 = \sum_k \sum_J \varphi^{lk}_J(|r_{ij}|, e_{ij}) \, B^{lk}_J(\hat r_{ij}) f_j^k

    One radial MLP produces the weights of all degree pairs at once (shared hidden layers, one output head per
    output degree).
    Per output degree ``l`` the contraction is done in the order that never builds a per-edge kernel
    ``[C_out (2l+1), C_in (2k+1)]``: first ``f_j^k [C_k, 2k+1] @ B^{lk} -> [C_k nJ, 2l+1]`` for every input
    degree ``k``; these are stacked to ``[K_l, 2l+1]`` with ``K_l = sum_k C_k nJ(k, l)``; then one batched
    matmul with the radial weights ``[C_out, K_l]``. The heads are initialised scaled by ``K_l^{-1/2}``, so a
    kernel roughly preserves the scale of its input features.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers.
    edge_dim
        Number of invariant edge features fed to the radial network besides the edge length.
    radial_hidden, radial_layers
        Width and depth of the radial MLP.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
    ) -> None:
        super().__init__()
        if edge_dim < 0:
            raise ValueError(f"edge_dim: expected >= 0, got {edge_dim}")
        self.fiber_in, self.fiber_out, self.edge_dim = fiber_in, fiber_out, edge_dim
        self.fan_in = {l: sum(c * num_J(k, l) for k, c in fiber_in) for l in fiber_out.degrees}
        self.radial = RadialMLP(
            1 + edge_dim,
            [c * self.fan_in[l] for l, c in fiber_out],
            radial_hidden,
            radial_layers,
            head_scales=[self.fan_in[l] ** -0.5 for l in fiber_out.degrees],
        )

    @property
    def max_degree(self) -> int:
        return max(self.fiber_in.max_degree, self.fiber_out.max_degree)

    def reset_parameters(self) -> None:
        self.radial.reset_parameters()

    @torch.no_grad()
    def zero_output_(self, degree: int, channels: slice) -> None:
        """Zero the radial weights that produce ``channels`` of output ``degree``: those outputs start at 0
        (and still receive gradients)."""
        head = self.radial.heads[self.fiber_out.degrees.index(degree)]
        per_channel = (self.fiber_out[degree], self.fan_in[degree])  # the head's outputs are [C_out, K_l]
        head.weight.unflatten(0, per_channel)[channels].zero_()
        head.bias.unflatten(0, per_channel)[channels].zero_()

    def radial_weights(self, basis: Basis, edge_attr: Tensor | None) -> list[Tensor]:
        """Per output degree ``l``, the radial weights ``[E, C_out^l, K_l]``."""
        invariants = basis.dist if edge_attr is None else torch.cat([basis.dist, edge_attr], dim=-1)
        return [
            w.view(-1, c, self.fan_in[l]) for (l, c), w in zip(self.fiber_out, self.radial(invariants), strict=True)
        ]

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        """Messages as ``{l: [E, C_out^l, 2l+1]}``; ``x_j`` is ``[E, fiber_in.dim]`` (source features)."""
        blocks_in = self.fiber_in.split(x_j)
        num_edges = x_j.shape[0]
        out = {}
        for (l, _), weights in zip(self.fiber_out, self.radial_weights(basis, edge_attr), strict=True):
            stacked = torch.cat(
                [
                    torch.matmul(blocks_in[k], basis[(k, l)]).view(num_edges, c_k * num_J(k, l), 2 * l + 1)
                    for k, c_k in self.fiber_in
                ],
                dim=1,
            )
            out[l] = torch.bmm(weights, stacked)
        return out

    def forward(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> Tensor:
        """Messages as a flat ``[E, fiber_out.dim]`` tensor."""
        return self.fiber_out.join(self.forward_blocks(x_j, basis, edge_attr))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, edge_dim={self.edge_dim})"
