"""Self-interaction: an equivariant linear map that mixes channels within each degree."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyg_se3.fiber import Fiber

__all__ = ["SE3Linear"]


class SE3Linear(nn.Module):
    r"""Self-interaction (a "1x1 convolution" on fibers): channels mix within each degree, components never.

    .. math::
        f_{\mathrm{out}}^l = W^l f_{\mathrm{in}}^l \;(+\, b \text{ for } l = 0), \qquad
        W^l \in \mathbb{R}^{C^l_{\mathrm{out}} \times C^l_{\mathrm{in}}}

    Equivariant because ``W^l`` acts on channels and ``D^l(R)`` on the ``2l+1`` components. Degrees of
    ``fiber_in`` absent from ``fiber_out`` are dropped.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers. Every degree of ``fiber_out`` must be in ``fiber_in``.
    bias
        Add a learnable bias to the type-0 output (the only degree where a constant is equivariant).
    """

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber, bias: bool = False) -> None:
        super().__init__()
        missing = [d for d in fiber_out.degrees if d not in fiber_in]
        if missing:
            raise ValueError(
                f"fiber_out: degrees {missing} are not in fiber_in {fiber_in}; a linear map cannot create them"
            )
        self.fiber_in, self.fiber_out = fiber_in, fiber_out
        self.weights = nn.ParameterDict({str(d): nn.Parameter(torch.empty(c, fiber_in[d])) for d, c in fiber_out})
        self.bias = nn.Parameter(torch.empty(fiber_out[0])) if bias and 0 in fiber_out else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for degree, weight in self.weights.items():
            nn.init.normal_(weight, std=self.fiber_in[int(degree)] ** -0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``[..., fiber_in.dim] -> [..., fiber_out.dim]``."""
        return self.fiber_out.join(self.forward_blocks(self.fiber_in.split(x)))

    def forward_blocks(self, blocks: dict[int, Tensor]) -> dict[int, Tensor]:
        """``{l: [..., C_in^l, 2l+1]} -> {l: [..., C_out^l, 2l+1]}``."""
        out = {d: torch.matmul(self.weights[str(d)], blocks[d]) for d in self.fiber_out.degrees}
        if self.bias is not None:
            out[0] = out[0] + self.bias.unsqueeze(-1)
        return out

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, bias={self.bias is not None})"
