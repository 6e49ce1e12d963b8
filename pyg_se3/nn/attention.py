"""Equivariant multi-head graph attention: the GSE3Res block of the SE(3)-Transformer."""

from __future__ import annotations

import torch
from torch import Tensor
from torch_geometric.nn import MessagePassing

from pyg_se3._amp import upcast
from pyg_se3.basis import Basis
from pyg_se3.fiber import Fiber
from pyg_se3.nn.conv import add_relative_position
from pyg_se3.nn.kernel import make_kernel
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.utils import edge_softmax, node_features, prepare_basis

__all__ = ["SE3Attention"]


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

    Parameters
    ----------
    fiber_in, fiber_out
        Input and output fibers.
    num_heads
        Number of attention heads. Every key and value degree's channels must be divisible by it.
    channels_div
        The value fiber has ``fiber_out``'s degrees with ``channels // channels_div`` channels (at least 1).
        Keys and queries have the value fiber's degrees that ``fiber_in`` also has (queries are a linear map
        of the input, which cannot create new degrees).
    edge_dim
        Number of invariant edge features for the radial networks.
    radial_hidden, radial_layers
        Width and depth of the radial network.
    kernel
        ``"full"`` (:class:`~pyg_se3.nn.EdgeKernel`, the SE(3)-Transformer's kernel) or ``"depthwise"``
        (:class:`~pyg_se3.nn.DepthwiseEdgeKernel`: radial weights per path and channel, then channel mixing;
        several times faster).
    relative_position
        Add each edge's relative position to the first type-1 channel of the source features before the key and
        value kernel (:func:`~pyg_se3.nn.conv.add_relative_position`; the original code's ``x_ij="add"``).
        Default ``False``.

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
        num_heads: int = 4,
        channels_div: int = 2,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        relative_position: bool = False,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        if num_heads < 1:
            raise ValueError(f"num_heads: expected >= 1, got {num_heads}")
        if channels_div < 1:
            raise ValueError(f"channels_div: expected >= 1, got {channels_div}")
        self.fiber_in, self.fiber_out, self.edge_dim = fiber_in, fiber_out, edge_dim
        self.num_heads, self.channels_div = num_heads, channels_div
        self.relative_position = relative_position
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
        self.to_key_value = make_kernel(
            kernel,
            fiber_in,
            self.key_fiber + self.value_fiber,
            edge_dim=edge_dim,
            radial_hidden=radial_hidden,
            radial_layers=radial_layers,
        )
        self.to_query = SE3Linear(fiber_in, self.key_fiber)
        self.project = SE3Linear(self.value_fiber + fiber_in, fiber_out, bias=True)
        self.reset_parameters()

    @property
    def max_degree(self) -> int:
        return self.to_key_value.max_degree

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.to_key_value.reset_parameters()
        self.to_query.reset_parameters()
        self.project.reset_parameters()

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        pos: Tensor | tuple[Tensor, Tensor] | None,
        edge_index: Tensor,
        edge_attr: Tensor | None = None,
        basis: Basis | None = None,
        edge_weight: Tensor | None = None,
    ) -> Tensor:
        """Attend; ``basis`` (from :func:`~pyg_se3.basis.compute_basis`) is computed from ``pos`` if absent.

        ``x`` may be a bipartite pair ``(x_src, x_dst)`` (PyG's convention), with ``pos = (pos_src, pos_dst)``
        or a ``basis``: keys and values come from the sources, queries and the skip connection from the
        targets, and the output has one row per target. ``edge_weight [E]`` (values in ``[0, 1]``, e.g. a cutoff
        envelope :meth:`~pyg_se3.graph.GraphBuilder.edge_weight`) weights each edge's attention term before
        normalisation; it may instead come with the ``basis`` (:func:`~pyg_se3.basis.compute_basis`), not both.
        """
        x_src, x_dst = node_features(self, x)
        basis = prepare_basis(self, (x_src, x_dst), pos, edge_index, edge_attr, basis, edge_weight)
        query = self.to_query(x_dst)
        attended = self.propagate(
            edge_index,
            x=(x_src, x_dst),
            query=query,
            basis=basis,
            edge_attr=edge_attr,
            size=(x_src.shape[0], x_dst.shape[0]),
        )
        return self.project(Fiber.cat(attended, self.value_fiber, x_dst, self.fiber_in))

    def message(
        self,
        x_j: Tensor,
        query_i: Tensor,
        basis: Basis,
        edge_attr: Tensor | None,
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
        return (
            f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, num_heads={self.num_heads}, "
            f"key_fiber={self.key_fiber}, value_fiber={self.value_fiber}, edge_dim={self.edge_dim}, "
            f"kernel={type(self.to_key_value).__name__}, relative_position={self.relative_position})"
        )
