"""The SE(3)-Transformer: stacked equivariant attention blocks and a final tensor-field convolution."""

from __future__ import annotations

from torch import Tensor, nn

from pyg_se3.basis import Basis, compute_basis
from pyg_se3.checks import check_edge_weight, check_graph_inputs, model_dtype, no_value_checks
from pyg_se3.fiber import Fiber
from pyg_se3.graph import check_envelope, check_radius, envelope_weight
from pyg_se3.nn import SE3Attention, SE3Conv, SE3Norm, TargetGroups, global_pool

__all__ = ["SE3Transformer"]


class SE3Transformer(nn.Module):
    r"""SE(3)-Transformer (Fuchs et al. 2020) over a PyG graph.

    ``num_layers`` blocks of :class:`~pyg_se3.nn.SE3Attention` (GSE3Res) each followed by an
    :class:`~pyg_se3.nn.SE3Norm`, then an :class:`~pyg_se3.nn.SE3Conv` with self-interaction to ``fiber_out``:

    .. math::
        h^{(0)} = x, \quad h^{(t)} = \mathrm{Norm}(\mathrm{Attn}_t(h^{(t-1)}; B)), \quad
        y = \mathrm{Conv}(h^{(T)}; B)

    The kernel basis ``B`` (:func:`~pyg_se3.basis.compute_basis`) is computed **once per forward** from
    ``pos`` and shared by every layer; it stays in the autograd graph, so outputs are differentiable with
    respect to positions. Edge ``(j, i)`` carries the relative position ``pos[j] - pos[i]``.

    Parameters
    ----------
    fiber_in, fiber_hidden, fiber_out
        Fibers of the input features, of every hidden layer, and of the output.
    num_layers
        Number of attention blocks (the total number of equivariant layers is ``num_layers + 1``).
    num_heads
        Attention heads per block.
    edge_dim
        Number of invariant edge features (``edge_attr [E, edge_dim]``) fed to every radial network.
    channels_div
        Value/key channels are ``fiber_hidden``'s divided by this (see :class:`~pyg_se3.nn.SE3Attention`).
    norm
        Put an :class:`~pyg_se3.nn.SE3Norm` after each attention block: ``True`` or ``"layer"`` (the
        SE(3)-Transformer's), ``"rms"`` (channel norms scaled, not centred: more robust to rounding in deep
        models), ``"bias"`` (no normalisation, a learned shift of each channel norm: the original code's
        ``GNormBias``), ``False`` for none.
    radial_hidden, radial_layers
        Width and depth of every radial network.
    kernel
        ``"full"`` or ``"depthwise"`` edge kernels in every layer (see :class:`~pyg_se3.nn.SE3Conv`).
    parity
        Every layer keeps only the kernel terms that respect parity (see :class:`~pyg_se3.nn.SE3Conv`): with
        inputs of natural parity (:attr:`Fiber.irreps <pyg_se3.fiber.Fiber.irreps>`) and invariant edge features
        that are true scalars, the model is equivariant under reflections too, E(3). Default ``False`` (SE(3)).
    radial_scaling
        ``"init"`` (the default) or ``"forward"``: where every radial network's fan-in factor acts (see
        :class:`~pyg_se3.nn.SE3Conv`). ``"forward"`` keeps the first optimiser steps of wide models (32 channels
        and more) stable.
    checkpoint
        For large graphs: run every equivariant layer over groups of target nodes with about
        ``checkpoint_edges`` incoming edges each (:class:`~pyg_se3.nn.TargetGroups`), keep only the layers'
        inputs during the forward pass and recompute each group's activations in the backward pass
        (``torch.utils.checkpoint``). Peak memory then grows with ``checkpoint_edges`` and with the basis
        (about 1 kB per edge for degrees 0..2), not with the layers' activations of all edges; the cost is about
        one more forward pass of time. Values are those of the unchunked model up to summation order.
    checkpoint_edges
        Edges per group when ``checkpoint`` is on.
    relative_position
        Every layer adds each edge's relative position to the first type-1 channel of its source features
        (:func:`~pyg_se3.nn.conv.add_relative_position`; the original code's ``x_ij="add"``). Default ``False``.
    pooling
        ``None`` for node outputs ``[N, fiber_out.dim]``, or ``"mean"``/``"sum"`` to pool per graph of
        ``batch`` to ``[B, fiber_out.dim]``.
    cutoff
        The cutoff radius ``r_c`` of the graph (e.g. that of :class:`~pyg_se3.graph.Radius` or PyG's
        ``RadiusGraph``), or ``None`` (default) for no envelope. When set, every message and attention term of
        edge ``(j, i)`` is weighted by ``u(|x_j - x_i| / r_c)``, which falls smoothly to 0 at the cutoff (and is 0
        beyond it): the output is then continuous, and differentiable, as points cross the cutoff. Without it, a
        radius graph makes the model jump whenever an edge appears or disappears (as in SchNet's ``cutoff``).
    envelope
        The envelope ``u`` used with ``cutoff``: ``"cosine"`` (default) or ``"polynomial"``
        (:func:`~pyg_se3.graph.envelope_weight`).
    find_reverse_pairs
        Find the graph's reverse pairs when the basis is computed here (:func:`~pyg_se3.basis.compute_basis`'s
        option of that name): on a symmetric graph (radius, complete) the full kernels then compute their radial
        weights once per pair, the same outputs in fewer operations. Finding the pairs, and checking once per
        basis that both edges of every pair have the same radial inputs, reads data back from the device;
        ``False`` (every edge its own weights) avoids those host-device synchronisations, e.g. to capture the
        forward pass in a CUDA graph. Default ``True``.
    """

    find_reverse_pairs: bool = True  # what models pickled before the option existed load with

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_hidden: Fiber,
        fiber_out: Fiber,
        *,
        num_layers: int,
        num_heads: int = 4,
        edge_dim: int = 0,
        channels_div: int = 2,
        norm: bool | str = True,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        parity: bool = False,
        radial_scaling: str = "init",
        relative_position: bool = False,
        checkpoint: bool = False,
        checkpoint_edges: int = 2**15,
        pooling: str | None = None,
        cutoff: float | None = None,
        envelope: str = "cosine",
        find_reverse_pairs: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(find_reverse_pairs, bool):
            raise ValueError(f"find_reverse_pairs: expected True or False, got {find_reverse_pairs!r}")
        self.find_reverse_pairs = find_reverse_pairs
        self.cutoff = None if cutoff is None else check_radius(cutoff, "cutoff")
        self.envelope = check_envelope(envelope, allow_none=False)
        if num_layers < 0:
            raise ValueError(f"num_layers: expected >= 0, got {num_layers}")
        if checkpoint_edges < 1:
            raise ValueError(f"checkpoint_edges: expected >= 1, got {checkpoint_edges}")
        if pooling not in (None, "mean", "sum"):
            raise ValueError(f"pooling: expected None, 'mean' or 'sum', got {pooling!r}")
        self.fiber_in, self.fiber_hidden, self.fiber_out = fiber_in, fiber_hidden, fiber_out
        self.num_layers, self.edge_dim, self.pooling = num_layers, edge_dim, pooling
        self.checkpoint, self.checkpoint_edges = checkpoint, checkpoint_edges
        kernel_args = {
            "edge_dim": edge_dim,
            "radial_hidden": radial_hidden,
            "radial_layers": radial_layers,
            "kernel": kernel,
            "parity": parity,
            "radial_scaling": radial_scaling,
            "relative_position": relative_position,
        }
        layers: list[nn.Module] = []
        fiber = fiber_in
        for _ in range(num_layers):
            layers.append(
                SE3Attention(fiber, fiber_hidden, num_heads=num_heads, channels_div=channels_div, **kernel_args)
            )
            if norm:
                layers.append(SE3Norm(fiber_hidden, kind="layer" if norm is True else norm))
            fiber = fiber_hidden
        self.layers = nn.ModuleList(layers)
        self.output = SE3Conv(fiber, fiber_out, self_interaction=True, **kernel_args)
        self.max_degree = max(fiber_in.max_degree, fiber_hidden.max_degree, fiber_out.max_degree)
        self.parity = self.output.parity

    def reset_parameters(self) -> None:
        for module in [*self.layers, self.output]:
            module.reset_parameters()

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        batch: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
        num_graphs: int | None = None,
    ) -> Tensor:
        """Run the network.

        Parameters
        ----------
        x
            ``[N, fiber_in.dim]`` flat input features.
        pos
            ``[N, 3]`` positions.
        edge_index
            ``[2, E]`` edges ``(j, i)``, messages flow from ``j`` to ``i``.
        edge_attr
            ``[E, edge_dim]`` invariant edge features, or ``None`` when ``edge_dim == 0``.
        batch
            ``[N]`` graph index of each node (only used when ``pooling`` is set).
        basis
            A basis already computed for ``(pos, edge_index)`` (e.g. with envelope weights); computed here
            when ``None``.
        edge_weight
            ``[E]`` weights in ``[0, 1]`` of every message and attention term (e.g. a graph builder's
            :meth:`~pyg_se3.graph.GraphBuilder.edge_weight`), multiplied by the ``cutoff`` envelope when the
            model has one. Weights come either here and from ``cutoff``, or with ``basis``, not both.
        num_graphs
            With ``pooling``: the number of graphs ``B`` (PyG's ``data.num_graphs``, which may count empty
            graphs); ``max(batch) + 1`` when ``None``.

        Returns
        -------
        Tensor
            ``[N, fiber_out.dim]``, or ``[B, fiber_out.dim]`` with pooling.
        """
        dtype = model_dtype(self)
        check_graph_inputs(x, pos, edge_index, self.fiber_in, edge_attr, self.edge_dim, batch, dtype)
        check_edge_weight(edge_weight, edge_index.shape[1], dtype)
        if basis is None:
            # values checked above
            basis = compute_basis(
                pos,
                edge_index,
                self.max_degree,
                check_values=False,
                parity=self.parity,
                find_reverse_pairs=self.find_reverse_pairs,
            )
        if edge_weight is not None or self.cutoff is not None:
            basis = self._weighted(basis, edge_weight)
        groups = (
            TargetGroups(x.shape[0], edge_index, edge_attr, basis, self.checkpoint_edges) if self.checkpoint else None
        )

        def graph_layer(layer: nn.Module, h: Tensor) -> Tensor:
            return layer(h, pos, edge_index, edge_attr, basis) if groups is None else groups(layer, h)

        with no_value_checks():  # checked once above, not again by every layer (a device sync each on a GPU)
            h = x
            for layer in self.layers:
                h = graph_layer(layer, h) if isinstance(layer, SE3Attention) else layer(h)
            out = graph_layer(self.output, h)
        if self.pooling is not None:
            out = global_pool(out, batch, self.fiber_out, self.pooling, num_graphs)
        return out

    def _weighted(self, basis: Basis, edge_weight: Tensor | None) -> Basis:
        """``basis`` carrying ``edge_weight`` times the cutoff envelope of its edge lengths (differentiable)."""
        if self.cutoff is not None:
            envelope = envelope_weight(basis.dist.squeeze(-1), self.cutoff, self.envelope)
            edge_weight = envelope if edge_weight is None else edge_weight * envelope
        return basis.with_edge_weight(edge_weight)

    def __repr__(self) -> str:
        inner = "\n".join(f"  ({i}): {layer}" for i, layer in enumerate([*self.layers, self.output]))
        return f"{self.__class__.__name__}(\n{inner}\n)"
