"""The edge kernels: modules that apply the equivariant kernel of every edge to its source node's features (the
radial network and its weights), and their registry. The contractions they run are in :mod:`pyg_se3.nn.contraction`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pyg_se3.basis import Basis, num_J
from pyg_se3.fiber import Fiber

# NATIVE_KERNELS(_INFO) and kernel_contraction are re-exported: README, setup.py, the Makefile and the benchmarks
# name them here
from pyg_se3.nn.contraction import NATIVE_KERNELS, NATIVE_KERNELS_INFO, depthwise_contraction, kernel_contraction
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.radial import HEAD_SCALINGS, RadialMLP

__all__ = [
    "KERNELS",
    "NATIVE_KERNELS",
    "NATIVE_KERNELS_INFO",
    "DepthwiseEdgeKernel",
    "EdgeKernel",
    "kernel_contraction",
    "make_kernel",
]


class _KernelBase(nn.Module):
    """What every edge kernel shares: fibers, edge features, the radial network's inputs and the flat output."""

    def __init__(
        self, fiber_in: Fiber, fiber_out: Fiber, edge_dim: int, chunk: int | None, parity: bool, radial_scaling: str
    ) -> None:
        super().__init__()
        if radial_scaling not in HEAD_SCALINGS:  # RadialMLP checks it too, under its own name (head_scaling)
            raise ValueError(f"radial_scaling: expected one of {HEAD_SCALINGS}, got {radial_scaling!r}")
        for name, fiber in (("fiber_in", fiber_in), ("fiber_out", fiber_out)):
            if not len(fiber):  # no input to weigh, or no output to produce: the radial network has no shape
                raise ValueError(f"{name}: expected at least one degree for an edge kernel, got {fiber}")
        if edge_dim < 0:
            raise ValueError(f"edge_dim: expected >= 0, got {edge_dim}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk: expected None or >= 1, got {chunk}")
        if not isinstance(parity, bool):
            raise ValueError(f"parity: expected True or False, got {parity!r}")
        self.fiber_in, self.fiber_out, self.edge_dim, self.chunk = fiber_in, fiber_out, edge_dim, chunk
        self.parity = parity
        # K_l: the stacked basis features per output degree, sum_k C_k nJ(k, l)
        self.fan_in = {l: sum(c * num_J(k, l, parity) for k, c in fiber_in) for l in fiber_out.degrees}

    @property
    def max_degree(self) -> int:
        return max(self.fiber_in.max_degree, self.fiber_out.max_degree)

    @property
    def radial_scaling(self) -> str:
        """Where the radial network's fan-in factor acts (its :class:`~pyg_se3.nn.radial.RadialMLP`'s
        ``head_scaling``)."""
        return self.radial.head_scaling

    def _check_basis(self, basis: Basis) -> None:
        """A ``ValueError`` for a basis with other terms than the kernel's (every entry point calls it)."""
        if basis.parity != self.parity:
            raise ValueError(
                f"basis: computed with parity={basis.parity}, the kernel has parity={self.parity}; compute it with "
                f"compute_basis(..., parity={self.parity})"
            )

    @staticmethod
    def _invariants(basis: Basis, edge_attr: Tensor | None) -> Tensor:
        """What the radial network sees of every edge (:meth:`~pyg_se3.basis.Basis.radial_inputs`)."""
        return basis.radial_inputs(edge_attr)

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        raise NotImplementedError

    def forward(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> Tensor:
        """Messages as a flat ``[E, fiber_out.dim]`` tensor."""
        return self.fiber_out.join(self.forward_blocks(x_j, basis, edge_attr))

    def __repr__(self) -> str:
        parity = ", parity=True" if self.parity else ""
        scaling = ", radial_scaling='forward'" if self.radial_scaling == "forward" else ""
        return (
            f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, edge_dim={self.edge_dim}{parity}{scaling})"
        )


class EdgeKernel(_KernelBase):
    r"""Apply the equivariant kernel of every edge to the features of its source node.

    .. math::
        m_{ij}^l = \sum_k W^{lk}(r_{ij}) f_j^k
                 = \sum_k \sum_J \varphi^{lk}_J(|r_{ij}|, e_{ij}) \, B^{lk}_J(\hat r_{ij}) f_j^k

    One radial MLP produces the weights of all degree pairs at once (shared hidden layers, one output head per
    output degree).
    Per output degree ``l`` the contraction is done in the order that never builds a per-edge kernel
    ``[C_out (2l+1), C_in (2k+1)]``: first ``f_j^k [C_k, 2k+1] @ B^{lk} -> [C_k nJ, 2l+1]`` for every input
    degree ``k``; these are stacked to ``[K_l, 2l+1]`` with ``K_l = sum_k C_k nJ(k, l)``; then one batched
    matmul with the radial weights ``[C_out, K_l]``. This runs in chunks of edges, and the backward pass
    recomputes each chunk's weights (:func:`kernel_contraction`): the ``[E, C_out, K_l]`` weights of all edges,
    by far the largest tensor of the layer, never exist at once, and each chunk's weights are still in cache
    when the batched matmul reads them. The heads are scaled by ``K_l^{-1/2}`` (in their initial weights, or on
    their output with ``radial_scaling="forward"``), so a kernel roughly preserves the scale of its input
    features. On a symmetric graph (:attr:`Basis.reverse_pairs
    <pyg_se3.basis.Basis.reverse_pairs>`) whose radial inputs are equal on an edge and its reverse, the weights
    are computed once per pair: the same messages and gradients in fewer operations.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers.
    edge_dim
        Number of invariant edge features fed to the radial network besides the edge length.
    radial_hidden, radial_layers
        Width and depth of the radial MLP.
    chunk
        Edges per chunk of the contraction (:func:`kernel_contraction`); ``None`` sizes chunks automatically.
    parity
        Keep only the terms with ``k + l + J`` even (:mod:`pyg_se3.basis`): the kernel then maps true tensors to
        true tensors and is equivariant under reflections too (E(3)); it needs a basis computed with
        ``parity=True``. Default ``False``: every term (SE(3)).
    radial_scaling
        Where the radial heads' fan-in factor acts: ``"init"`` (on the initial weights; the default) or
        ``"forward"`` (on the output, at every call; the same function at initialisation, but an optimiser's step
        moves the kernel only that factor as far, which keeps the first steps of a wide model stable). See
        :class:`~pyg_se3.nn.radial.RadialMLP`'s ``head_scaling``.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        chunk: int | None = None,
        parity: bool = False,
        radial_scaling: str = "init",
    ) -> None:
        super().__init__(fiber_in, fiber_out, edge_dim, chunk, parity, radial_scaling)
        self.radial = RadialMLP(
            1 + edge_dim,
            [c * self.fan_in[l] for l, c in fiber_out],
            radial_hidden,
            radial_layers,
            head_scales=[self.fan_in[l] ** -0.5 for l in fiber_out.degrees],
            head_scaling=radial_scaling,
        )

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
        """Per output degree ``l``, the radial weights ``[E, C_out^l, K_l]`` of all edges at once (for inspection
        and tests; the forward pass never holds them)."""
        self._check_basis(basis)
        weights = self.radial(self._invariants(basis, edge_attr))
        return [w.view(-1, c, self.fan_in[l]) for (l, c), w in zip(self.fiber_out, weights, strict=True)]

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        """Messages as ``{l: [E, C_out^l, 2l+1]}``; ``x_j`` is ``[E, fiber_in.dim]`` (source features)."""
        self._check_basis(basis)
        blocks_in = self.fiber_in.split(x_j)
        xs = [blocks_in[k] for k in self.fiber_in.degrees]
        invariants = self._invariants(basis, edge_attr)
        # both edges of every reverse pair with the same radial inputs: their weights once per pair
        if not torch.compiler.is_compiling() and basis.pairs_agree(edge_attr):
            return self._paired_blocks(xs, basis, invariants, edge_attr)
        hidden = self.radial.trunk(invariants)
        return {
            l: kernel_contraction(
                hidden, head, xs, [basis[(k, l)] for k in self.fiber_in.degrees], l, self.chunk, scale=scale
            )
            for l, head, scale in self._heads()
        }

    def _heads(self) -> list[tuple[int, nn.Linear, float]]:
        """Per output degree: the degree, its radial head and the factor on the head's output."""
        heads = self.radial.heads
        return [(l, heads[h], self.radial.output_scale(h)) for h, l in enumerate(self.fiber_out.degrees)]

    def _paired_blocks(
        self, xs: list[Tensor], basis: Basis, invariants: Tensor, edge_attr: Tensor | None
    ) -> dict[int, Tensor]:
        """:meth:`forward_blocks` with the weights computed once per reverse pair, the edges in pair order (the
        first edge of every pair, then the second; ``invariants`` are the radial inputs, equal on both edges).
        Differentiated edge features keep a hidden row per edge, for per-edge gradients (equal values can have
        different derivatives: an antisymmetric feature at zero); the lengths are equal by construction, and
        share theirs."""
        if edge_attr is not None and edge_attr.requires_grad and torch.is_grad_enabled():
            hidden = self.radial.trunk(basis.to_pair_order(invariants))
        else:  # the first edge of every pair
            hidden = self.radial.trunk(invariants.index_select(0, basis.reverse_pairs[0]))
        xs = [basis.to_pair_order(x) for x in xs]
        out = {}
        for l, head, scale in self._heads():
            bs = [basis.paired((k, l)) for k in self.fiber_in.degrees]
            out[l] = basis.unpair(kernel_contraction(hidden, head, xs, bs, l, self.chunk, paired=True, scale=scale))
        return out


class DepthwiseEdgeKernel(_KernelBase):
    r"""A cheaper equivariant kernel: radial weights per path and channel, channels mixed afterwards.

    .. math::
        m_{ij}^l = L^l \Big[\, \textstyle\sum_J \varphi^{lk}_{cJ}(|r_{ij}|, e_{ij}) \,
                   \big(B^{lk}_J(\hat r_{ij}) f_{j,c}^k\big) \Big]_{k, c}

    Every input channel ``c`` of every input degree ``k`` reaches output degree ``l`` through its own paths
    ``J``, each scaled by one radial weight (a depthwise tensor product, e3nn's ``"uvu"``); a linear map
    ``L^l`` (:class:`~pyg_se3.nn.SE3Linear`) then mixes the ``sum_k C_k`` resulting channels into
    ``fiber_out``. The radial network thus produces ``K_l = sum_k C_k nJ(k, l)`` weights per edge and output
    degree instead of the full kernel's ``C_out K_l`` (32 times fewer for 32 output channels), which is where
    the full kernel spends its time. Equivariant for the same reason as :class:`EdgeKernel`: the weights are
    invariant, each path transforms as degree ``l``, and ``L^l`` acts on channels only.

    Parameters
    ----------
    fiber_in, fiber_out, edge_dim, radial_hidden, radial_layers
        As for :class:`EdgeKernel`.
    chunk
        Edges per chunk: each chunk's path features ``[n, 2l+1, K_l]`` are built, weighted and mixed, and rebuilt
        in the backward pass (:func:`~pyg_se3.nn.contraction.depthwise_contraction`); ``None`` sizes chunks to
        ~2 MiB on a CPU.
    parity, radial_scaling
        As for :class:`EdgeKernel`.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        chunk: int | None = None,
        parity: bool = False,
        radial_scaling: str = "init",
    ) -> None:
        super().__init__(fiber_in, fiber_out, edge_dim, chunk, parity, radial_scaling)
        channels_in = sum(c for _, c in fiber_in)
        # sum_J of nJ unit-variance terms, then L: scale each weight by nJ^{-1/2} on average
        self.radial = RadialMLP(
            1 + edge_dim,
            [self.fan_in[l] for l in fiber_out.degrees],
            radial_hidden,
            radial_layers,
            head_scales=[(self.fan_in[l] / channels_in) ** -0.5 for l in fiber_out.degrees],
            head_scaling=radial_scaling,
        )
        self.mix = SE3Linear(Fiber({l: channels_in for l in fiber_out.degrees}), fiber_out)

    def reset_parameters(self) -> None:
        self.radial.reset_parameters()
        self.mix.reset_parameters()

    @torch.no_grad()
    def zero_output_(self, degree: int, channels: slice) -> None:
        """Zero the mixing weights that produce ``channels`` of output ``degree``: those outputs start at 0
        (and still receive gradients)."""
        self.mix.weights[str(degree)][channels].zero_()

    def radial_weights(self, basis: Basis, edge_attr: Tensor | None) -> list[Tensor]:
        """Per output degree ``l``, the radial weights ``[E, K_l]`` (one per input channel and path)."""
        self._check_basis(basis)
        return self.radial(self._invariants(basis, edge_attr))

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        """Messages as ``{l: [E, C_out^l, 2l+1]}``; ``x_j`` is ``[E, fiber_in.dim]`` (source features)."""
        blocks_in = self.fiber_in.split(x_j)
        xs = [blocks_in[k] for k in self.fiber_in.degrees]
        out = {}
        for l, weights in zip(self.fiber_out.degrees, self.radial_weights(basis, edge_attr), strict=True):
            bs = [basis[(k, l)] for k in self.fiber_in.degrees]
            mix = self.mix.weights[str(l)]  # [C_out, sum_k C_k]
            out[l] = depthwise_contraction(weights, mix, xs, bs, l, self.chunk)
        return out


KERNELS = {"full": EdgeKernel, "depthwise": DepthwiseEdgeKernel}


def make_kernel(kind: str, fiber_in: Fiber, fiber_out: Fiber, **kwargs) -> _KernelBase:
    """The edge kernel named ``kind`` (``"full"``: :class:`EdgeKernel`, ``"depthwise"``:
    :class:`DepthwiseEdgeKernel`)."""
    if kind not in KERNELS:
        raise ValueError(f"kernel: expected one of {sorted(KERNELS)}, got {kind!r}")
    return KERNELS[kind](fiber_in, fiber_out, **kwargs)
