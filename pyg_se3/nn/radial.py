"""Radial networks: the learnable part of an equivariant kernel, a function of invariants only."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["RadialMLP"]


class RadialMLP(nn.Module):
    r"""An MLP of the edge invariants (length ``|r|`` and invariant edge features) to per-edge kernel weights.

    .. math::
        \varphi(|r|, e) = W_n \, \sigma(\mathrm{LN}(\cdots \sigma(\mathrm{LN}(W_1 [|r|, e] + b_1)) \cdots)) + b_n

    Parameters
    ----------
    in_dim
        Number of invariant inputs (1 for the length, plus ``edge_dim``).
    out_dim
        Number of weights per edge.
    hidden_dim
        Width of the hidden layers.
    num_layers
        Number of hidden layers (each Linear, LayerNorm, activation).
    activation
        Non-linearity between layers.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 32,
        num_layers: int = 2,
        activation: type[nn.Module] = nn.SiLU,
    ) -> None:
        super().__init__()
        if in_dim < 1 or out_dim < 1 or hidden_dim < 1 or num_layers < 0:
            raise ValueError(
                f"in_dim/out_dim/hidden_dim/num_layers: expected positive sizes, got "
                f"{in_dim}/{out_dim}/{hidden_dim}/{num_layers}"
            )
        self.in_dim, self.out_dim, self.hidden_dim, self.num_layers = in_dim, out_dim, hidden_dim, num_layers
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), activation()]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def reset_parameters(self) -> None:
        for module in self.net:
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def forward(self, invariants: Tensor) -> Tensor:
        """``[E, in_dim] -> [E, out_dim]``."""
        return self.net(invariants)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(in_dim={self.in_dim}, out_dim={self.out_dim}, "
            f"hidden_dim={self.hidden_dim}, num_layers={self.num_layers})"
        )
