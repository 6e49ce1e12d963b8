"""Equivariant multi-head graph attention: the GSE3Res block of the SE(3)-Transformer."""

from __future__ import annotations

from typing import Any, Literal, overload

import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.nn import MessagePassing
from torch_geometric.typing import Adj, SparseTensor
from torch_geometric.utils import is_torch_sparse_tensor
from torch_geometric.utils.sparse import set_sparse_value

from pyg_se3._amp import upcast
from pyg_se3.basis import Basis
from pyg_se3.fiber import Fiber
from pyg_se3.nn.conv import add_relative_position
from pyg_se3.nn.kernel import make_kernel
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.utils import edge_softmax, layer_inputs, message_passing_kwargs, options_repr

__all__ = ["SE3Attention"]

_SUMMED = {"aggr": (("add", "sum"), "the softmax-weighted values are summed over each target's incoming edges")}


class SE3Attention(MessagePassing):
    r"""Multi-head SE(3)-equivariant self-attention over graph edges (GSE3Res, Fuchs et al. 2020).

    .. math::
        q_i &= \bigoplus_l W_Q^l f_i^l, \qquad
        k_{ij} = \bigoplus_l \sum_k W_K^{lk}(x_j - x_i) f_j^k, \qquad
        v_{ij} = \bigoplus_l \sum_k W_V^{lk}(x_j - x_i) f_j^k \\
        \alpha_{ij}^h &= \frac{u_{ij} \exp(q_i^h \cdot k_{ij}^h / \sqrt{d_h})}
                             {\sum_{j'} u_{ij'} \exp(q_i^h \cdot k_{ij'}^h / \sqrt{d_h})}, \qquad
        f_{\mathrm{out}, i} = W_O \Big[ \textstyle\sum_j \alpha_{ij} v_{ij} \;\big\|\; f_i \Big]

    The dot product runs over all degrees, channels and components of one head, so the logits are invariant
    and the output equivariant. Keys and values come from **one fused edge convolution**
    (:class:`~pyg_se3.nn.kernel.EdgeKernel` with the key and value channels stacked per degree); queries from a
    self-interaction. The attention output is concatenated with the input fiber (the skip connection) and
    projected to ``fiber_out`` by :class:`~pyg_se3.nn.SE3Linear`. ``u_ij`` are the optional envelope weights of
    the basis (1 when it has none, which gives the ordinary softmax via ``torch_geometric.utils.softmax``).
    Edge ``(j, i)`` of ``edge_index`` sends from ``j = edge_index[0]`` to ``i = edge_index[1]`` (PyG's
    ``flow="source_to_target"``); its relative position is ``pos[j] - pos[i]``.

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers (flat features of widths ``fiber_in.dim`` and ``fiber_out.dim``).
    num_heads
        Number of attention heads (default ``4``). Every key and value degree's channels must be divisible by it.
    edge_dim
        Number of invariant edge features for the radial networks (``edge_attr [E, edge_dim]``; default ``0``).
    channels_div
        The value fiber has ``fiber_out``'s degrees with ``channels // channels_div`` channels (at least 1;
        default ``2``). Keys and queries have the value fiber's degrees that ``fiber_in`` also has (queries are a
        linear map of the input, which cannot create new degrees).
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
        Add each edge's relative position to the first type-1 channel of the source features before the key and
        value kernel (:func:`~pyg_se3.nn.conv.add_relative_position`; the original code's ``x_ij="add"``).
        Default ``False``.
    dropout
        Dropout probability of the normalised attention weights ``alpha`` in training mode, which exposes each
        node to a randomly sampled neighbourhood (as :class:`~torch_geometric.nn.conv.TransformerConv`'s).
        Invariant weights, so the layer stays equivariant. Default ``0``.
    **kwargs
        Further arguments of :class:`~torch_geometric.nn.conv.MessagePassing`. The maths fix ``aggr="add"``,
        ``node_dim=0``, ``flow="source_to_target"`` and ``decomposed_layers=1``: another value of these is a
        ``ValueError`` naming the argument.

    Shapes
    ------
    - **input:** node features ``x [N, fiber_in.dim]`` or bipartite ``(x_src [N_src, fiber_in.dim],
      x_dst [N_dst, fiber_in.dim])``; positions ``pos [N, 3]`` or ``(pos_src [N_src, 3], pos_dst [N_dst, 3])``,
      or ``None`` with a ``basis``; edges ``edge_index [2, E]`` (a tensor or an
      :class:`~torch_geometric.EdgeIndex`) or a sparse adjacency ``adj_t [N_dst, N_src]``; edge features
      ``edge_attr [E, edge_dim]`` *(optional)*; envelope weights ``edge_weight [E]`` *(optional)*
    - **output:** node features ``[N, fiber_out.dim]`` or ``[N_dst, fiber_out.dim]``; with
      ``return_attention_weights=True`` also ``(edge_index [2, E], alpha [E, num_heads])``
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        *,
        num_heads: int = 4,
        edge_dim: int = 0,
        channels_div: int = 2,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        parity: bool = False,
        radial_scaling: str = "init",
        relative_position: bool = False,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**message_passing_kwargs(type(self).__name__, kwargs, _SUMMED))
        if num_heads < 1:
            raise ValueError(f"num_heads: expected >= 1, got {num_heads}")
        if channels_div < 1:
            raise ValueError(f"channels_div: expected >= 1, got {channels_div}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout}")
        self.fiber_in, self.fiber_out, self.edge_dim = fiber_in, fiber_out, edge_dim
        self.num_heads, self.channels_div = num_heads, channels_div
        self.relative_position, self.dropout = relative_position, float(dropout)
        self.value_fiber = Fiber({d: max(1, c // channels_div) for d, c in fiber_out})
        self.key_fiber = self.value_fiber & fiber_in
        if not len(self.key_fiber):
            raise ValueError(f"fiber_in: shares no degree with fiber_out {fiber_out}; attention needs a common degree")
        for name, fiber in (("value", self.value_fiber), ("key", self.key_fiber)):
            for degree, channels in fiber:
                if channels % num_heads:
                    raise ValueError(
                        f"num_heads: {num_heads} does not divide the {channels} {name} channels of degree "
                        f"{degree} (fiber_out {fiber_out}, channels_div {channels_div})"
                    )
        self.key_dim_per_head = self.key_fiber.dim // num_heads
        self._kernel_kind = kernel
        self.to_key_value = make_kernel(
            kernel,
            fiber_in,
            self.key_fiber + self.value_fiber,
            edge_dim=edge_dim,
            radial_hidden=radial_hidden,
            radial_layers=radial_layers,
            parity=parity,
            radial_scaling=radial_scaling,
        )
        self.to_query = SE3Linear(fiber_in, self.key_fiber)
        self.project = SE3Linear(self.value_fiber + fiber_in, fiber_out, bias=True)
        self._alpha: Tensor | None = None
        self.reset_parameters()

    @property
    def max_degree(self) -> int:
        return self.to_key_value.max_degree

    @property
    def parity(self) -> bool:
        """Whether the layer keeps only the kernel terms that respect parity (E(3)-equivariant)."""
        return self.to_key_value.parity

    def reset_parameters(self) -> None:
        """Re-initialise the key/value kernel, the query map and the output projection."""
        super().reset_parameters()
        self.to_key_value.reset_parameters()
        self.to_query.reset_parameters()
        self.project.reset_parameters()

    @overload
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: Adj,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
        return_attention_weights: Literal[False] | None = None,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
        *,
        return_attention_weights: Literal[True],
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]: ...

    @overload
    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: SparseTensor,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
        *,
        return_attention_weights: Literal[True],
    ) -> tuple[Tensor, SparseTensor]: ...

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: Adj,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]] | tuple[Tensor, SparseTensor]:
        """Attend.

        Parameters
        ----------
        x
            Node features ``[N, fiber_in.dim]``, or a bipartite pair ``(x_src, x_dst)`` (PyG's convention): keys
            and values come from the sources, queries and the skip connection from the targets, and the output
            has one row per target.
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
            weighting each edge's attention term before normalisation; it may instead come with the ``basis``,
            not both. Default ``None``.
        return_attention_weights
            When ``True``, also return ``(edge_index, alpha)``: the softmax weights ``alpha [E, num_heads]``
            (before dropout), which sum to 1 over each target's incoming edges for each head (also with envelope
            weights; 0 for a target whose every edge has weight 0). For a ``torch.sparse`` adjacency the pair is
            ``(adj_t with values alpha, alpha)``, for a ``SparseTensor`` the adjacency with values ``alpha`` (as
            :class:`~torch_geometric.nn.conv.GATConv`). Default ``None``: the output only.
        """
        x_src, x_dst, adjacency, basis = layer_inputs(self, x, pos, edge_index, edge_attr, basis, edge_weight)
        query = self.to_query(x_dst)
        keep_alpha = bool(return_attention_weights)
        attended = self.propagate(
            adjacency,
            x=(x_src, x_dst),
            query=query,
            basis=basis,
            edge_attr=edge_attr,
            keep_alpha=keep_alpha,
            size=(x_src.shape[0], x_dst.shape[0]),
        )
        out = self.project(Fiber.cat(attended, self.value_fiber, x_dst, self.fiber_in))
        if not keep_alpha:
            return out
        alpha, self._alpha = self._alpha, None
        if isinstance(edge_index, SparseTensor):
            return out, edge_index.set_value(alpha, layout="coo")
        if is_torch_sparse_tensor(edge_index):
            return out, (set_sparse_value(edge_index, alpha), alpha)
        return out, (edge_index, alpha)

    def message(
        self,
        x_j: Tensor,
        query_i: Tensor,
        basis: Basis,
        edge_attr: Tensor | None,
        keep_alpha: bool,
        index: Tensor,
        ptr: Tensor | None,
        size_i: int | None,
    ) -> Tensor:
        if self.relative_position:
            x_j = add_relative_position(x_j, self.fiber_in, basis)
        key_value = self.to_key_value.forward_blocks(x_j, basis, edge_attr)
        keys = {d: key_value[d][:, :c] for d, c in self.key_fiber}
        values = {d: key_value[d][:, self.key_fiber[d] :] for d in self.value_fiber.degrees}
        # logits, softmax and the weighted values (summed over edges) in float32 under autocast (see _amp.py)
        logits = (upcast(self._heads(keys)) * upcast(self._heads(self.key_fiber.split(query_i)))).sum(-1)
        alpha = edge_softmax(logits * self.key_dim_per_head**-0.5, index, size_i, ptr=ptr, weight=basis.edge_weight)
        if keep_alpha:
            self._alpha = alpha
        if self.dropout > 0.0 and self.training:
            alpha = F.dropout(alpha, p=self.dropout, training=True)
        weighted = {
            d: (v.unflatten(1, (self.num_heads, -1)) * alpha[:, :, None, None]).flatten(1, 2) for d, v in values.items()
        }
        return self.value_fiber.join(weighted)

    def _heads(self, blocks: dict[int, Tensor]) -> Tensor:
        """``{l: [E, C_l, 2l+1]}`` to ``[E, H, d_head]``: each head takes a contiguous run of channels."""
        return torch.cat(
            [b.reshape(b.shape[0], self.num_heads, b.shape[1] * b.shape[2] // self.num_heads) for b in blocks.values()],
            dim=-1,
        )

    def __repr__(self) -> str:
        options = {
            "edge_dim": (self.edge_dim, 0),
            "channels_div": (self.channels_div, 2),
            "kernel": (self._kernel_kind, "full"),
            "parity": (self.parity, False),
            "radial_scaling": (self.to_key_value.radial_scaling, "init"),
            "relative_position": (self.relative_position, False),
            "dropout": (self.dropout, 0.0),
        }
        return options_repr(self, options, shown=f", num_heads={self.num_heads}")
