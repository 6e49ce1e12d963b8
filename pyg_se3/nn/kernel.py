"""The fused per-edge equivariant kernel: basis, features and radial weights contracted in the cheap order."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyg_se3._amp import autocast_on, backward_with_forward_autocast, record_autocast
from pyg_se3.basis import Basis, num_J
from pyg_se3.fiber import Fiber
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.radial import RadialMLP

# The C++ kernels of pyg_se3/csrc are an optional speed-up, built by setup.py where it can (torch importable at
# build time, a C++ compiler); without them the plain-PyTorch path does everything. Why they are missing is said
# once, at import, in NATIVE_KERNELS_INFO and a log record rather than a warning, so that `python -W error` and the
# test suite import pyg_se3 silently: at INFO when they were not built (a pure-Python install is a supported one),
# at WARNING when a built `_C` does not load (compiled against another torch: the user should rebuild it).
try:
    import pyg_se3._C as _C
except (ImportError, OSError) as error:
    _C = None
    if isinstance(error, ModuleNotFoundError) and error.name == "pyg_se3._C":
        NATIVE_KERNELS_INFO = (
            "not built (an isolated `pip install`, which has no torch to compile against, no C++ compiler, or "
            "PYG_SE3_NATIVE=0); `pip install --no-build-isolation` from the source builds them"
        )
        _level = logging.INFO
    else:  # e.g. "undefined symbol": built against another torch release
        NATIVE_KERNELS_INFO = (
            f"failed to load ({type(error).__name__}: {error}); compiled against another torch? "
            "`pip install --no-build-isolation` from the source rebuilds them"
        )
        _level = logging.WARNING
    logging.getLogger(__name__).log(
        _level, "pyg_se3: C++ kernels %s; the plain-PyTorch path runs everything", NATIVE_KERNELS_INFO
    )
else:
    NATIVE_KERNELS_INFO = f"loaded from {_C.__file__}"

__all__ = [
    "KERNELS",
    "NATIVE_KERNELS",
    "NATIVE_KERNELS_INFO",
    "DepthwiseEdgeKernel",
    "EdgeKernel",
    "kernel_contraction",
    "make_kernel",
]

#: Whether the C++ kernels (``pyg_se3._C``) are built and load. On a CPU, in float32/float64, they run both
#: contractions (forward, and backward without ``create_graph``) wherever autograd records nothing: every thread
#: takes its own range of edges through the chunk loop, with single-threaded operations and C++ loops for the
#: stacked basis features. The plain-PyTorch path does the rest (double backward, GPUs, autocast, compile), and
#: everything when they are missing.
NATIVE_KERNELS = _C is not None
#: Why :data:`NATIVE_KERNELS` is what it is: ``"loaded from <path>"``, ``"not built (...)"`` or
#: ``"failed to load (<the ImportError>) ..."``.
NATIVE_KERNELS_INFO: str
_NATIVE_DTYPES = (torch.float32, torch.float64)

# Edges per chunk are chosen so that one chunk's radial weights take about this many bytes: on a CPU they then
# stay in cache between the matmul that writes them and the one that reads them; on a GPU chunks only bound
# the transient memory.
_CHUNK_BYTES = {"cpu": 2**21, "cuda": 2**28}
# torch.compile unrolls the Python loop over chunks into the graph; a compiled contraction takes at most this many
# chunks (larger ones), so that compile time does not grow with the number of edges.
# Measured (benchmarks/compile.py, N=1024, 1 CPU thread; eager 2.6 s per step): 1 chunk 4.0 s per step and ~100 s
# to compile, 4 chunks 3.4 s and ~125 s, 8 chunks 3.3 s and ~175 s.
COMPILED_MAX_CHUNKS = 4


def _edges_per_chunk(per_edge: int, like: Tensor) -> int:
    """Edges per chunk when ``per_edge`` numbers of ``like``'s dtype and device are built per edge: about
    ``_CHUNK_BYTES`` per chunk (:func:`_chunks` caps their number under ``torch.compile``). Independent of the
    number of edges, which ``torch.compile`` keeps symbolic."""
    budget = _CHUNK_BYTES.get(like.device.type, _CHUNK_BYTES["cuda"])
    return max(8, budget // (per_edge * like.element_size()))


def _chunks(num_edges: int, chunk: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each chunk of ``num_edges`` edges: ``chunk`` edges each, the last one shorter.

    Under ``torch.compile`` the number of edges is symbolic (a shape-dynamic model compiles once for all graphs),
    and the loop over chunks is unrolled: there are ``min(ceil(E / chunk), COMPILED_MAX_CHUNKS)`` chunks of
    nearly equal sizes, with symbolic bounds. The count is fixed by comparisons of ``E`` with multiples of
    ``chunk`` (guards on a range of ``E``, not on its value): all graphs within one range share the compiled code.
    """
    if not torch.compiler.is_compiling():
        return [(start, min(start + chunk, num_edges)) for start in range(0, num_edges, chunk)]
    count = COMPILED_MAX_CHUNKS
    for fewer in range(1, COMPILED_MAX_CHUNKS):
        if num_edges <= fewer * chunk:
            count = fewer
            break
    return [(i * num_edges // count, (i + 1) * num_edges // count) for i in range(count)]


def _fast_path(like: Tensor) -> bool:
    """Whether this chunked pass may reuse buffers across chunks (``out=``), and on a CPU use the C++ kernels:
    autograd records nothing (the forward of the autograd functions below, and their backward without
    ``create_graph``), autocast leaves ``like``'s dtype alone (it is off, or ``like`` is float64, which it never
    casts), and not under ``torch.compile`` (which traces the plain-PyTorch path)."""
    autocast = autocast_on(like.device.type) and like.dtype != torch.float64
    return not (torch.is_grad_enabled() or torch.compiler.is_compiling() or autocast)


def _use_native(like: Tensor) -> bool:
    """Whether :data:`NATIVE_KERNELS` run the pass over ``like``: a fast path, on a CPU, in float32 or float64."""
    return NATIVE_KERNELS and like.device.type == "cpu" and like.dtype in _NATIVE_DTYPES and _fast_path(like)


def _buffer(like: Tensor, chunk: int, *shape: int) -> Tensor | None:
    """A ``[min(chunk, E), *shape]`` buffer that every chunk of a pass over ``like``'s ``E`` edges writes its
    ``[:n]`` rows to (``None`` off the fast path): fresh tensors per chunk cost allocations (on a CPU, page
    faults). Never compiled (no fast path there), so ``min`` does not tie compiled code to a range of ``E``."""
    return like.new_empty(min(chunk, like.shape[0]), *shape) if _fast_path(like) else None


def _rows(buffer: Tensor | None, n: int) -> Tensor | None:
    return None if buffer is None else buffer[:n]


def _scale(features: Tensor, weights: Tensor, in_place: bool) -> Tensor:
    """``features * weights``, in place on the fast path (``features`` is then a fresh tensor no one else holds)."""
    return features.mul_(weights) if in_place else features * weights


def _stacked_sizes(xs: Sequence[Tensor], bs: Sequence[Tensor], m: int) -> list[int]:
    """Per input block ``k``, its ``nJ C_k`` columns of the stacked features (which sum to ``K``)."""
    return [x.shape[1] * b.shape[2] // m for x, b in zip(xs, bs, strict=True)]


def _basis_rows(b: Tensor, m: int) -> Tensor:
    """``[n, 2k+1, nJ m] -> [n, m nJ, 2k+1]``: row ``i nJ + J`` is the basis column ``J m + i``."""
    n, a = b.shape[:2]
    return b.view(n, a, -1, m).permute(0, 3, 2, 1).reshape(n, -1, a)


def _stacked_features(xs: Sequence[Tensor], bs: Sequence[Tensor], start: int, stop: int, m: int) -> Tensor:
    r"""``[n, m, K]``: every input block ``x_k [n, C_k, 2k+1]`` times its basis ``[n, 2k+1, nJ m]``, stacked along
    ``K = sum_k nJ C_k``, component-major, then path-major, channels fastest:
    ``stacked[e, i, off_k + J C_k + c] = sum_a x_k[e, c, a] b_k[e, a, J m + i]`` (the layout in which the
    batched matmuls with the weights are fastest, and the C++ kernel's loops run over contiguous channels; the
    C++ kernel ``_C.stacked_features`` computes the same)."""
    n = stop - start
    return torch.cat(
        [
            torch.matmul(_basis_rows(b[start:stop], m), x[start:stop].transpose(1, 2)).view(n, m, -1)
            for x, b in zip(xs, bs, strict=True)
        ],
        dim=2,
    )


class _FeatureGrads:
    """Gradients of the feature blocks ``x_k`` and basis blocks ``b_k`` of :func:`_stacked_features`, added chunk by
    chunk in a backward pass and concatenated at the end (the C++ kernel ``_C.stacked_feature_grads`` writes the
    same into rows of full-size tensors)."""

    def __init__(
        self, xs: Sequence[Tensor], bs: Sequence[Tensor], need_x: Sequence[bool], need_b: Sequence[bool]
    ) -> None:
        self.xs, self.bs, self.need = xs, bs, [*need_x, *need_b]
        self.parts: list[list[Tensor]] = [[] for _ in self.need]

    def add(self, d_stacked: Tensor, start: int) -> None:
        """The gradients for edges ``start:start+n`` from ``d_stacked [n, m, K]``."""
        n, m = d_stacked.shape[:2]
        stop = start + n
        xs, bs = [x[start:stop] for x in self.xs], [b[start:stop] for b in self.bs]
        sizes = _stacked_sizes(xs, bs, m)
        need_x, need_b = self.need[: len(xs)], self.need[len(xs) :]
        for i, (x, b, d_s) in enumerate(zip(xs, bs, d_stacked.split(sizes, dim=2), strict=True)):
            d_s = d_s.reshape(n, -1, x.shape[1])  # [n, m nJ, C_k]
            if need_x[i]:
                self.parts[i].append(d_s.transpose(1, 2) @ _basis_rows(b, m))
            if need_b[i]:
                d_rows = d_s @ x  # [n, m nJ, 2k+1], the gradient of _basis_rows(b)
                d_b = d_rows.view(n, m, -1, b.shape[1]).permute(0, 3, 2, 1).reshape(b.shape)
                self.parts[len(xs) + i].append(d_b)

    def result(self) -> list[Tensor | None]:
        """Per feature block, then per basis block: its gradient, or ``None`` where not needed (or no edges)."""
        return [torch.cat(parts) if parts else None for parts in self.parts]


class _KernelContraction(torch.autograd.Function):
    """``out[e] = (hidden[e] W^T + b).view(C, K) @ stacked[e]``, chunked over edges, weights recomputed.

    Neither the radial weights ``[E, C, K]`` nor the stacked features ``[E, K, m]`` of all edges are ever held:
    each chunk builds its own, uses them and drops them; the backward pass rebuilds them chunk by chunk. Only
    the inputs are saved. Within a chunk the per-edge products are taken component-major (``[m, K] x [K, C]``
    rather than ``[C, K] x [K, m]``): the same arithmetic, 4-7x faster in MKL's batched matmul for ``m <= 5``.
    The backward is written with differentiable operations, so double backward (e.g. training on forces, the
    gradient of an energy with respect to positions) works too.
    """

    @staticmethod
    def forward(ctx, chunk: int, m: int, hidden: Tensor, weight: Tensor, bias: Tensor, *blocks: Tensor) -> Tensor:
        num_in = len(blocks) // 2
        xs, bs = blocks[:num_in], blocks[num_in:]
        num_edges, fan_in = hidden.shape[0], sum(_stacked_sizes(xs, bs, m))
        if _use_native(hidden):
            out = _C.kernel_contraction(hidden, weight, bias, xs, bs, m, chunk)
        else:
            out = hidden.new_empty(num_edges, weight.shape[0] // fan_in, m)
            weights_buffer = _buffer(hidden, chunk, weight.shape[0])
            for start, stop in _chunks(num_edges, chunk):
                n = stop - start
                weights = torch.addmm(bias, hidden[start:stop], weight.t(), out=_rows(weights_buffer, n))
                stacked = _stacked_features(xs, bs, start, stop, m)  # [n, m, K]
                out[start:stop] = torch.bmm(stacked, weights.view(n, -1, fan_in).transpose(1, 2)).transpose(1, 2)
        ctx.save_for_backward(hidden, weight, bias, *blocks)
        ctx.chunk, ctx.m, ctx.num_in, ctx.fan_in = chunk, m, num_in, fan_in
        record_autocast(ctx, hidden.device)
        return out

    @staticmethod
    @backward_with_forward_autocast
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, *blocks = ctx.saved_tensors
        num_in, m, fan_in = ctx.num_in, ctx.m, ctx.fan_in
        xs, bs = blocks[:num_in], blocks[num_in:]
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[2:5]
        need_x, need_b = ctx.needs_input_grad[5 : 5 + num_in], ctx.needs_input_grad[5 + num_in :]
        if _use_native(grad):
            grads = _C.kernel_contraction_backward(
                grad, hidden, weight, bias, xs, bs, m, ctx.chunk, need_hidden, need_weight, need_bias, need_x, need_b
            )
            return None, None, *grads
        d_hidden, feature_grads = [], _FeatureGrads(xs, bs, need_x, need_b)
        d_weight = d_bias = None
        # per chunk, the weights' buffer holds their gradient, then the recomputed weights
        weights_buffer = _buffer(hidden, ctx.chunk, weight.shape[0])
        d_stacked_buffer = _buffer(hidden, ctx.chunk, m, fan_in)
        for start, stop in _chunks(hidden.shape[0], ctx.chunk):
            n = stop - start
            g = grad[start:stop].transpose(1, 2).contiguous()  # [n, m, C]
            stacked = _stacked_features(xs, bs, start, stop, m)  # [n, m, K]
            d_weights = _rows(weights_buffer, n)
            d_weights = torch.bmm(
                g.transpose(1, 2), stacked, out=None if d_weights is None else d_weights.view(n, -1, fan_in)
            ).view(n, -1)
            if need_hidden:
                d_hidden.append(d_weights @ weight)
            # parameter gradients are sums over chunks: accumulated in the parameters' dtype (under autocast the
            # products are in 16 bits; without it, .to() is a no-op)
            if need_weight:
                if d_weight is None:
                    d_weight = (d_weights.t() @ hidden[start:stop]).to(weight.dtype)
                elif d_weights.dtype == d_weight.dtype:
                    d_weight = d_weight.addmm_(d_weights.t(), hidden[start:stop])
                else:
                    d_weight = d_weight + (d_weights.t() @ hidden[start:stop]).to(weight.dtype)
            if need_bias:
                part = d_weights.sum(0).to(bias.dtype)
                d_bias = part if d_bias is None else d_bias + part
            if any(need_x) or any(need_b):
                weights = torch.addmm(bias, hidden[start:stop], weight.t(), out=_rows(weights_buffer, n))
                feature_grads.add(torch.bmm(g, weights.view(n, -1, fan_in), out=_rows(d_stacked_buffer, n)), start)
        # None (a zero gradient) for inputs that need none, and when there are no edges
        return None, None, torch.cat(d_hidden) if d_hidden else None, d_weight, d_bias, *feature_grads.result()


def _path_sums(paths: Tensor, xs: Sequence[Tensor], bs: Sequence[Tensor]) -> Tensor:
    """``[n, m, K] -> [n, m, sum_k C_k]``: each input channel's path features summed over its paths ``J``."""
    n, m = paths.shape[:2]
    num_j = [b.shape[2] // m for b in bs]
    parts = paths.split(_stacked_sizes(xs, bs, m), dim=2)
    return torch.cat([p.view(n, m, j, x.shape[1]).sum(2) for p, j, x in zip(parts, num_j, xs, strict=True)], dim=2)


def _spread_over_paths(d_sums: Tensor, xs: Sequence[Tensor], bs: Sequence[Tensor]) -> Tensor:
    """``[n, m, sum_k C_k] -> [n, m, K]``: the gradient of :func:`_path_sums` (each channel's value on every one
    of its paths)."""
    n, m = d_sums.shape[:2]
    parts = d_sums.split([x.shape[1] for x in xs], dim=2)
    return torch.cat(
        [p.unsqueeze(2).expand(n, m, b.shape[2] // m, -1).reshape(n, m, -1) for p, b in zip(parts, bs, strict=True)],
        dim=2,
    )


class _DepthwiseContraction(torch.autograd.Function):
    """``out[e] = sum_J(stacked[e] * w[e]) @ mix^T``: ``[m, K]`` path features, one weight per path, summed over
    each input channel's paths to ``[m, sum_k C_k]``, then ``[C, sum_k C_k]`` channel mixing. Chunked over edges
    like :class:`_KernelContraction`: only the inputs are saved, and the backward pass rebuilds each chunk's path
    features. With the C++ kernels the path features are summed as they are built and never stored (a third of
    the memory traffic, and a mixing matmul a third the size, of weighting ``[m, K]`` features and mixing them
    with ``mix`` repeated over the paths, their previous form). The backward is written with differentiable
    operations (double backward).
    """

    @staticmethod
    def forward(ctx, chunk: int, m: int, weights: Tensor, mix: Tensor, *blocks: Tensor) -> Tensor:
        num_in = len(blocks) // 2
        xs, bs = blocks[:num_in], blocks[num_in:]
        if _use_native(weights):
            out = _C.depthwise_contraction(weights, mix, xs, bs, m, chunk)
        else:
            out = weights.new_empty(weights.shape[0], m, mix.shape[0])
            in_place = _fast_path(weights)
            for start, stop in _chunks(weights.shape[0], chunk):
                paths = _scale(_stacked_features(xs, bs, start, stop, m), weights[start:stop, None], in_place)
                out[start:stop] = torch.matmul(_path_sums(paths, xs, bs), mix.t())
        ctx.save_for_backward(weights, mix, *blocks)
        ctx.chunk, ctx.m, ctx.num_in = chunk, m, num_in
        record_autocast(ctx, weights.device)
        return out

    @staticmethod
    @backward_with_forward_autocast
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        weights, mix, *blocks = ctx.saved_tensors
        num_in, m = ctx.num_in, ctx.m
        xs, bs = blocks[:num_in], blocks[num_in:]
        need_weights, need_mix = ctx.needs_input_grad[2:4]
        need_x, need_b = ctx.needs_input_grad[4 : 4 + num_in], ctx.needs_input_grad[4 + num_in :]
        if _use_native(grad):
            grads = _C.depthwise_contraction_backward(
                grad, weights, mix, xs, bs, m, ctx.chunk, need_weights, need_mix, need_x, need_b
            )
            return None, None, *grads
        d_weights, feature_grads = [], _FeatureGrads(xs, bs, need_x, need_b)
        d_mix = None
        in_place = _fast_path(weights)
        for start, stop in _chunks(weights.shape[0], ctx.chunk):
            g, w = grad[start:stop], weights[start:stop, None]  # [n, m, C], [n, 1, K]
            stacked = _stacked_features(xs, bs, start, stop, m)  # [n, m, K]
            d_paths = _spread_over_paths(torch.matmul(g, mix), xs, bs)  # [n, m, K]
            if need_weights:
                d_weights.append((d_paths * stacked).sum(1))
            if need_mix:
                sums = _path_sums(_scale(stacked, w, in_place), xs, bs)
                part = (g.flatten(0, 1).t() @ sums.flatten(0, 1)).to(mix.dtype)
                d_mix = part if d_mix is None else d_mix + part
            if any(need_x) or any(need_b):
                feature_grads.add(_scale(d_paths, w, in_place), start)
        return None, None, torch.cat(d_weights) if d_weights else None, d_mix, *feature_grads.result()


def kernel_contraction(
    hidden: Tensor,
    head: nn.Linear,
    xs: Sequence[Tensor],
    bs: Sequence[Tensor],
    degree: int,
    chunk: int | None = None,
) -> Tensor:
    r"""Messages of one output degree: the radial head's weights contracted with the stacked basis features.

    .. math::
        m_e = \big(W_h z_e + b_h\big)_{[C, K]} \; \big[\, x_e^k B_e^{k l} \,\big]_{k}  \in \mathbb{R}^{C \times (2l+1)}

    computed chunk by chunk over the edges (see :class:`_KernelContraction`): memory ``O(E (H + \dim x))``
    instead of ``O(E C K)``.

    Parameters
    ----------
    hidden
        ``[E, H]`` last hidden layer of the radial network.
    head
        The radial network's output layer for this degree (``H -> C K``).
    xs, bs
        Per input degree ``k``: source features ``[E, C_k, 2k+1]`` and basis ``[E, 2k+1, nJ(k, l) (2l+1)]``.
    degree
        The output degree ``l``.
    chunk
        Edges per chunk; by default sized so that one chunk's weights take about 2 MiB on a CPU (under
        ``torch.compile``: larger when needed to make at most ``COMPILED_MAX_CHUNKS`` chunks, since the compiler
        unrolls the loop; see :func:`_chunks`).
    """
    if chunk is None:
        chunk = _edges_per_chunk(head.out_features, hidden)
    return _KernelContraction.apply(chunk, 2 * degree + 1, hidden, head.weight, head.bias, *xs, *bs)


class _KernelBase(nn.Module):
    """What every edge kernel shares: fibers, edge features, the radial network's inputs and the flat output."""

    def __init__(self, fiber_in: Fiber, fiber_out: Fiber, edge_dim: int, chunk: int | None) -> None:
        super().__init__()
        for name, fiber in (("fiber_in", fiber_in), ("fiber_out", fiber_out)):
            if not len(fiber):  # no input to weigh, or no output to produce: the radial network has no shape
                raise ValueError(f"{name}: expected at least one degree for an edge kernel, got {fiber}")
        if edge_dim < 0:
            raise ValueError(f"edge_dim: expected >= 0, got {edge_dim}")
        if chunk is not None and chunk < 1:
            raise ValueError(f"chunk: expected None or >= 1, got {chunk}")
        self.fiber_in, self.fiber_out, self.edge_dim, self.chunk = fiber_in, fiber_out, edge_dim, chunk
        # K_l: the stacked basis features per output degree, sum_k C_k nJ(k, l)
        self.fan_in = {l: sum(c * num_J(k, l) for k, c in fiber_in) for l in fiber_out.degrees}

    @property
    def max_degree(self) -> int:
        return max(self.fiber_in.max_degree, self.fiber_out.max_degree)

    @staticmethod
    def _invariants(basis: Basis, edge_attr: Tensor | None) -> Tensor:
        return basis.dist if edge_attr is None else torch.cat([basis.dist, edge_attr], dim=-1)

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        raise NotImplementedError

    def forward(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> Tensor:
        """Messages as a flat ``[E, fiber_out.dim]`` tensor."""
        return self.fiber_out.join(self.forward_blocks(x_j, basis, edge_attr))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_out}, edge_dim={self.edge_dim})"


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
    when the batched matmul reads them. The heads are initialised scaled by ``K_l^{-1/2}``, so a kernel roughly
    preserves the scale of its input features.

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
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        chunk: int | None = None,
    ) -> None:
        super().__init__(fiber_in, fiber_out, edge_dim, chunk)
        self.radial = RadialMLP(
            1 + edge_dim,
            [c * self.fan_in[l] for l, c in fiber_out],
            radial_hidden,
            radial_layers,
            head_scales=[self.fan_in[l] ** -0.5 for l in fiber_out.degrees],
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
        weights = self.radial(self._invariants(basis, edge_attr))
        return [w.view(-1, c, self.fan_in[l]) for (l, c), w in zip(self.fiber_out, weights, strict=True)]

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        """Messages as ``{l: [E, C_out^l, 2l+1]}``; ``x_j`` is ``[E, fiber_in.dim]`` (source features)."""
        blocks_in = self.fiber_in.split(x_j)
        hidden = self.radial.trunk(self._invariants(basis, edge_attr))
        xs = [blocks_in[k] for k in self.fiber_in.degrees]
        return {
            l: kernel_contraction(hidden, head, xs, [basis[(k, l)] for k in self.fiber_in.degrees], l, self.chunk)
            for l, head in zip(self.fiber_out.degrees, self.radial.heads, strict=True)
        }


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
        in the backward pass (:class:`_DepthwiseContraction`); ``None`` sizes chunks to ~2 MiB on a CPU.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_out: Fiber,
        edge_dim: int = 0,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        chunk: int | None = None,
    ) -> None:
        super().__init__(fiber_in, fiber_out, edge_dim, chunk)
        channels_in = sum(c for _, c in fiber_in)
        # sum_J of nJ unit-variance terms, then L: scale each weight by nJ^{-1/2} on average
        self.radial = RadialMLP(
            1 + edge_dim,
            [self.fan_in[l] for l in fiber_out.degrees],
            radial_hidden,
            radial_layers,
            head_scales=[(self.fan_in[l] / channels_in) ** -0.5 for l in fiber_out.degrees],
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
        return self.radial(self._invariants(basis, edge_attr))

    def forward_blocks(self, x_j: Tensor, basis: Basis, edge_attr: Tensor | None = None) -> dict[int, Tensor]:
        """Messages as ``{l: [E, C_out^l, 2l+1]}``; ``x_j`` is ``[E, fiber_in.dim]`` (source features)."""
        blocks_in = self.fiber_in.split(x_j)
        xs = [blocks_in[k] for k in self.fiber_in.degrees]
        out = {}
        for l, weights in zip(self.fiber_out.degrees, self.radial_weights(basis, edge_attr), strict=True):
            bs = [basis[(k, l)] for k in self.fiber_in.degrees]
            mix = self.mix.weights[str(l)]  # [C_out, sum_k C_k]
            chunk = self.chunk or _edges_per_chunk(weights.shape[1] * (2 * l + 1), weights)
            messages = _DepthwiseContraction.apply(chunk, 2 * l + 1, weights, mix, *xs, *bs)  # [E, m, C_out]
            out[l] = messages.transpose(1, 2)
        return out


KERNELS = {"full": EdgeKernel, "depthwise": DepthwiseEdgeKernel}


def make_kernel(kind: str, fiber_in: Fiber, fiber_out: Fiber, **kwargs) -> _KernelBase:
    """The edge kernel named ``kind`` (``"full"``: :class:`EdgeKernel`, ``"depthwise"``:
    :class:`DepthwiseEdgeKernel`)."""
    if kind not in KERNELS:
        raise ValueError(f"kernel: expected one of {sorted(KERNELS)}, got {kind!r}")
    return KERNELS[kind](fiber_in, fiber_out, **kwargs)
