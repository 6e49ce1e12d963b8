"""Norm non-linearity: a non-linear function of each channel's norm rescales the channel."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyg_se3.fiber import Fiber

__all__ = ["SE3Norm"]


class SE3Norm(nn.Module):
    r"""Equivariant norm non-linearity (Fuchs et al. 2020), per channel ``c`` of each degree ``l``:

    .. math::
        f^l_c \mapsto \sigma\big(\mathrm{LN}(\|f^l\|)_c + b^l_c\big) \, \frac{f^l_c}{\|f^l_c\|}, \qquad
        \|f^l_c\| = \sqrt{\textstyle\sum_m (f^l_{cm})^2 + \epsilon^2}

    The norms are invariant, so only an invariant factor multiplies each equivariant direction. ``LN`` is a
    layer norm over the channels of one degree (its affine shift is ``b``); degrees with a single channel get
    only the affine part, because a layer norm over one value is constant. The same ``ε`` regularises both
    norms, so a zero feature maps to zero with finite gradients.

    Parameters
    ----------
    fiber
        The fiber of input and output.
    nonlinearity
        ``σ``; ReLU as in the SE(3)-Transformer.
    eps
        The regulariser ``ε`` of the norm.
    """

    def __init__(self, fiber: Fiber, nonlinearity: nn.Module | None = None, eps: float = 1e-6) -> None:
        super().__init__()
        self.fiber, self.eps = fiber, eps
        self.nonlinearity = nonlinearity if nonlinearity is not None else nn.ReLU()
        self.norms = nn.ModuleDict({str(d): nn.LayerNorm(c) if c > 1 else _Affine() for d, c in fiber})

    def reset_parameters(self) -> None:
        for module in self.norms.values():
            module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        """``[..., fiber.dim] -> [..., fiber.dim]``."""
        out = {}
        for degree, block in self.fiber.split(x).items():
            norm = torch.sqrt(block.pow(2).sum(-1) + self.eps**2)  # [..., C]
            scale = self.nonlinearity(self.norms[str(degree)](norm))
            out[degree] = block * (scale / norm).unsqueeze(-1)
        return self.fiber.join(out)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.fiber}, nonlinearity={self.nonlinearity}, eps={self.eps})"


class _Affine(nn.Module):
    """``x * w + b`` for a single channel."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1))
        self.bias = nn.Parameter(torch.zeros(1))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight + self.bias
