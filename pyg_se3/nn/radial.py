"""Radial networks: the learnable part of an equivariant kernel, a function of invariants only."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["HEAD_SCALINGS", "RadialMLP"]

HEAD_SCALINGS = ("init", "forward")


class RadialMLP(nn.Module):
    r"""An MLP of the edge invariants (length ``|r|`` and invariant edge features) to per-edge kernel weights.

    .. math::
        \varphi_h(|r|, e) = W_h \, z + b_h, \qquad
        z = \sigma(\mathrm{LN}(\cdots \sigma(\mathrm{LN}(W_1 [|r|, e] + b_1)) \cdots))

    One trunk ``z`` is shared by all outputs; the final layer is split into one head per output group (in
    :class:`~pyg_se3.nn.kernel.EdgeKernel`, one per output degree), so every group of weights comes out as its
    own contiguous tensor, ready for a batched matmul, without a split or a copy.

    Parameters
    ----------
    in_dim
        Number of invariant inputs (1 for the length, plus ``edge_dim``).
    out_dims
        Number of weights per edge of each head.
    hidden_dim
        Width of the hidden layers.
    num_layers
        Number of hidden layers (each Linear, LayerNorm, activation).
    head_scales
        A factor per head (e.g. ``fan_in ** -0.5`` so that the kernel preserves the scale of features); default 1.
    head_scaling
        Where the factor acts. ``"init"`` (the default): on the head's initial weights and bias, once. ``"forward"``:
        on the head's output, at every call, the weights initialised without it (e3nn's convention). Both give the
        same function at initialisation; they train differently: an optimiser step of a given size on the weights
        (Adam's first steps, about ``lr`` per weight whatever its scale) moves a ``"forward"`` head's output only
        ``scale`` times as far, where a wide layer's fan-in makes that output sum many weights. With ``"forward"``
        the factors are also kept as a buffer (``"scales"``, a record: the output is multiplied by the exact
        Python floats), so that a state dict of the one scaling does not load into the other.
    activation
        Non-linearity between layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dims: Sequence[int],
        hidden_dim: int = 32,
        num_layers: int = 2,
        head_scales: Sequence[float] | None = None,
        head_scaling: str = "init",
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        out_dims = list(out_dims)
        if in_dim < 1 or hidden_dim < 1 or num_layers < 0 or not out_dims or min(out_dims) < 1:
            raise ValueError(
                f"in_dim/out_dims/hidden_dim/num_layers: expected positive sizes, got "
                f"{in_dim}/{out_dims}/{hidden_dim}/{num_layers}"
            )
        self.in_dim, self.out_dims, self.hidden_dim, self.num_layers = in_dim, out_dims, hidden_dim, num_layers
        self.head_scales = list(head_scales) if head_scales is not None else [1.0] * len(out_dims)
        if len(self.head_scales) != len(out_dims):
            raise ValueError(f"head_scales: expected {len(out_dims)} values, got {len(self.head_scales)}")
        if head_scaling not in HEAD_SCALINGS:
            raise ValueError(f"head_scaling: expected one of {HEAD_SCALINGS}, got {head_scaling!r}")
        self.head_scaling = head_scaling
        if head_scaling == "forward":
            self.register_buffer("scales", torch.tensor(self.head_scales, dtype=torch.float64))
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), activation()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList([nn.Linear(width, d) for d in out_dims])
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for module in [*self.trunk, *self.heads]:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        if self.head_scaling == "init":
            for head, scale in zip(self.heads, self.head_scales, strict=True):
                head.weight.mul_(scale)
                head.bias.mul_(scale)

    def output_scale(self, head: int) -> float:
        """The factor that multiplies the output of head ``head`` at every call: its scale with ``"forward"``,
        1 with ``"init"`` (the scale is in the weights)."""
        return self.head_scales[head] if self.head_scaling == "forward" else 1.0

    def forward(self, invariants: Tensor) -> list[Tensor]:
        """``[E, in_dim]`` to one ``[E, out_dims[h]]`` tensor per head."""
        hidden = self.trunk(invariants)
        outputs = [head(hidden) for head in self.heads]
        if self.head_scaling == "forward":
            outputs = [out * scale for out, scale in zip(outputs, self.head_scales, strict=True)]
        return outputs

    def __repr__(self) -> str:
        scaling = ", head_scaling='forward'" if self.head_scaling == "forward" else ""
        return (
            f"{self.__class__.__name__}(in_dim={self.in_dim}, out_dims={self.out_dims}, "
            f"hidden_dim={self.hidden_dim}, num_layers={self.num_layers}{scaling})"
        )
