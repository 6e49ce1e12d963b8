"""The chunked contractions of the edge kernels, functional: stacked basis features, radial weights and channel
mixing contracted per edge in the cheap order, chunk by chunk over the edges, on the C++ kernels where they run.

:func:`kernel_contraction` is the full kernel's contraction (:class:`~pyg_se3.nn.kernel.EdgeKernel`),
:func:`depthwise_contraction` the depthwise kernel's (:class:`~pyg_se3.nn.kernel.DepthwiseEdgeKernel`). Both size
the chunks (:func:`_edges_per_chunk`, :func:`_chunks` under ``torch.compile``) and apply a custom autograd function
that runs each pass on the C++ kernels (:data:`NATIVE_KERNELS`) or on the plain-PyTorch path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

from pyg_se3._amp import autocast_on, backward_with_forward_autocast, record_autocast

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
    "COMPILED_MAX_CHUNKS",
    "NATIVE_KERNELS",
    "NATIVE_KERNELS_INFO",
    "depthwise_contraction",
    "kernel_contraction",
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


def _chunk_size(chunk: int | None, per_edge: int, like: Tensor) -> int:
    """``chunk`` if given (checked), else :func:`_edges_per_chunk`: the chunk size of both public contractions."""
    if chunk is None:
        return _edges_per_chunk(per_edge, like)
    if chunk < 1:
        raise ValueError(f"chunk: expected None or >= 1, got {chunk}")
    return chunk


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


_T = TypeVar("_T")


def _split(blocks: Sequence[_T]) -> tuple[Sequence[_T], Sequence[_T]]:
    """``(xs, bs)`` from the trailing inputs ``*xs, *bs`` of the autograd functions below (one feature block and one
    basis block per input degree; ``torch.autograd.Function`` takes tensors only as positional arguments), or from
    their ``needs_input_grad`` flags."""
    num_in = len(blocks) // 2
    return blocks[:num_in], blocks[num_in:]


def _groups(blocks: Sequence[Tensor], groups: int) -> list[list[Tensor]]:
    """Per group of edges, the rows of every block that belong to it (``groups`` consecutive runs of equal
    length)."""
    rows = blocks[0].shape[0] // groups if blocks else 0
    return [[block[g * rows : (g + 1) * rows] for block in blocks] for g in range(groups)]


def _fan_in_major(weight: Tensor, bias: Tensor, fan_in: int) -> tuple[Tensor, Tensor]:
    """The radial network's last layer (``weight [C K, H]``, ``bias [C K]``) with its rows reordered from
    ``(c, k)`` to ``(k, c)``: it then writes each edge's weights as a row-major ``[K, C]`` matrix, which the
    per-edge product ``[m, K] x [K, C]`` reads faster than the transposed view of a ``[C, K]`` one."""
    channels = weight.shape[0] // fan_in
    weight_kc = weight.view(channels, fan_in, -1).transpose(0, 1).reshape(fan_in * channels, -1)
    return weight_kc, bias.view(channels, fan_in).t().reshape(-1)


class _KernelContraction(torch.autograd.Function):
    """``out[e] = (hidden[e] W^T + b).view(C, K) @ stacked[e]``, chunked over edges, weights recomputed.

    Neither the radial weights ``[E, C, K]`` nor the stacked features ``[E, K, m]`` of all edges are ever held:
    each chunk builds its own, uses them and drops them; the backward pass rebuilds them chunk by chunk. Only
    the inputs are saved. Within a chunk the per-edge products are taken component-major (``[m, K] x [K, C]``
    rather than ``[C, K] x [K, m]``): the same arithmetic, 4-7x faster in MKL's batched matmul for ``m <= 5``.
    The forward writes each edge's weights as a row-major ``[K, C]`` matrix (:func:`_fan_in_major`), 2.6x faster
    again in that product than the transposed view of a ``[C, K]`` one (the N-body model's ``[3, 64] x [64, 17]``,
    one thread); the backward's ``[m, C] x [C, K]`` reads the ``[C, K]`` order fastest, and its recomputation
    keeps it.
    With ``groups`` > 1 the feature and basis blocks hold ``groups`` runs of ``E`` edges each, and edge
    ``g E + e`` takes the weights of ``hidden[e]``: each chunk's weights serve all runs (an edge and its reverse).
    ``hidden`` then has ``E`` rows, whose gradient sums the runs', or one per edge, ``groups E``, whose runs hold
    equal values: the weights come from the first run, and every edge's row gets its own gradient.
    The backward is written with differentiable operations, so double backward (e.g. training on forces, the
    gradient of an energy with respect to positions) works too.
    """

    @staticmethod
    def forward(
        ctx, chunk: int, m: int, groups: int, hidden: Tensor, weight: Tensor, bias: Tensor, *blocks: Tensor
    ) -> Tensor:
        xs, bs = _split(blocks)
        num_edges, fan_in = xs[0].shape[0] // groups, sum(_stacked_sizes(xs, bs, m))
        if _use_native(hidden):
            out = _C.kernel_contraction(hidden, weight, bias, xs, bs, m, chunk, groups)
        else:
            out = hidden.new_empty(groups * num_edges, weight.shape[0] // fan_in, m)
            weights_buffer = _buffer(hidden, chunk, weight.shape[0])
            runs = list(zip(_groups(xs, groups), _groups(bs, groups), _groups([out], groups), strict=True))
            weight_kc, bias_kc = _fan_in_major(weight, bias, fan_in)
            for start, stop in _chunks(num_edges, chunk):
                n = stop - start
                weights = torch.addmm(bias_kc, hidden[start:stop], weight_kc.t(), out=_rows(weights_buffer, n))
                for xs_run, bs_run, (out_run,) in runs:
                    stacked = _stacked_features(xs_run, bs_run, start, stop, m)  # [n, m, K]
                    product = torch.bmm(stacked, weights.view(n, fan_in, -1))
                    out_run[start:stop] = product.transpose(1, 2)
        ctx.save_for_backward(hidden, weight, bias, *blocks)
        ctx.chunk, ctx.m, ctx.groups, ctx.fan_in = chunk, m, groups, fan_in
        record_autocast(ctx, hidden.device)
        return out

    @staticmethod
    @backward_with_forward_autocast
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        hidden, weight, bias, *blocks = ctx.saved_tensors
        m, groups, fan_in = ctx.m, ctx.groups, ctx.fan_in
        xs, bs = _split(blocks)
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[3:6]
        need_x, need_b = _split(ctx.needs_input_grad[6:])
        if _use_native(grad):
            grads = _C.kernel_contraction_backward(
                grad,
                hidden,
                weight,
                bias,
                xs,
                bs,
                m,
                ctx.chunk,
                groups,
                need_hidden,
                need_weight,
                need_bias,
                need_x,
                need_b,
            )
            return None, None, None, *grads
        runs = [
            (xs_run, bs_run, grad_run, _FeatureGrads(xs_run, bs_run, need_x, need_b))
            for xs_run, bs_run, (grad_run,) in zip(
                _groups(xs, groups), _groups(bs, groups), _groups([grad], groups), strict=True
            )
        ]
        num_edges = xs[0].shape[0] // groups
        per_edge = groups > 1 and hidden.shape[0] > num_edges  # a hidden row per edge, each its own gradient
        d_hidden: list[list[Tensor]] = [[] for _ in range(groups if per_edge else 1)]
        d_weight = d_bias = None
        # per chunk, the weights' buffer holds their gradient, then the recomputed weights
        weights_buffer = _buffer(hidden, ctx.chunk, weight.shape[0])
        d_stacked_buffer = _buffer(hidden, ctx.chunk, m, fan_in)
        for start, stop in _chunks(num_edges, ctx.chunk):
            n = stop - start
            gs = [grad_run[start:stop].transpose(1, 2).contiguous() for _, _, grad_run, _ in runs]  # [n, m, C]
            d_weights = _rows(weights_buffer, n)
            for i, (g, (xs_run, bs_run, _, _)) in enumerate(zip(gs, runs, strict=True)):
                stacked = _stacked_features(xs_run, bs_run, start, stop, m)  # [n, m, K]
                out = None if d_weights is None or i > 0 else d_weights.view(n, -1, fan_in)
                part = torch.bmm(g.transpose(1, 2), stacked, out=out).view(n, -1)
                if per_edge and need_hidden:
                    d_hidden[i].append(part @ weight)
                if i == 0:
                    d_weights = part
                else:  # summed over the groups; in place on the fast path
                    d_weights = d_weights.add_(part) if weights_buffer is not None else d_weights + part
            if need_hidden and not per_edge:
                d_hidden[0].append(d_weights @ weight)
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
                for g, (_, _, _, feature_grads) in zip(gs, runs, strict=True):
                    d_stacked = torch.bmm(g, weights.view(n, -1, fan_in), out=_rows(d_stacked_buffer, n))
                    feature_grads.add(d_stacked, start)
        # None (a zero gradient) for inputs that need none, and when there are no edges
        block_grads = [run[3].result() for run in runs]
        joined = [None if parts[0] is None else torch.cat(parts) for parts in zip(*block_grads, strict=True)]
        d_hidden_all = torch.cat([torch.cat(parts) for parts in d_hidden]) if d_hidden[0] else None
        return None, None, None, d_hidden_all, d_weight, d_bias, *joined


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
        xs, bs = _split(blocks)
        if _use_native(weights):
            out = _C.depthwise_contraction(weights, mix, xs, bs, m, chunk)
        else:
            out = weights.new_empty(weights.shape[0], m, mix.shape[0])
            in_place = _fast_path(weights)
            for start, stop in _chunks(weights.shape[0], chunk):
                paths = _scale(_stacked_features(xs, bs, start, stop, m), weights[start:stop, None], in_place)
                out[start:stop] = torch.matmul(_path_sums(paths, xs, bs), mix.t())
        ctx.save_for_backward(weights, mix, *blocks)
        ctx.chunk, ctx.m = chunk, m
        record_autocast(ctx, weights.device)
        return out

    @staticmethod
    @backward_with_forward_autocast
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        weights, mix, *blocks = ctx.saved_tensors
        m = ctx.m
        xs, bs = _split(blocks)
        need_weights, need_mix = ctx.needs_input_grad[2:4]
        need_x, need_b = _split(ctx.needs_input_grad[4:])
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
    paired: bool = False,
    scale: float = 1.0,
) -> Tensor:
    r"""Messages of one output degree through the full kernel: the radial head's weights contracted with the
    stacked basis features.

    .. math::
        m_e = s \big(W_h z_e + b_h\big)_{[C, K]} \; \big[\, x_e^k B_e^{k l} \,\big]_{k} \in \mathbb{R}^{C \times (2l+1)}

    computed chunk by chunk over the edges (see :class:`_KernelContraction`): memory ``O(E (H + \dim x))``
    instead of ``O(E C K)``.

    Parameters
    ----------
    hidden
        ``[E, H]`` last hidden layer of the radial network; when ``paired``, ``[E / 2, H]`` (one row per pair),
        or ``[E, H]`` in the order of ``xs`` with equal rows for the two edges of a pair (the weights come from
        the first edges' rows; every row gets its own gradient).
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
    paired
        The edges come in pairs that share their radial weights (an edge and its reverse, whose radial inputs
        are equal): ``xs`` and ``bs`` hold ``E`` edges, the first edge of every pair, then the second ones in the
        same order (:meth:`~pyg_se3.basis.Basis.paired`), and ``hidden`` the ``E / 2`` pairs; the weights are
        computed once per pair. Default ``False``.
    scale
        ``s``, a factor on the head's output (:meth:`~pyg_se3.nn.radial.RadialMLP.output_scale`), applied as
        ``W_h (s z_e) + s b_h``: to the hidden rows, not to the ``C K`` weights of every edge. Default 1.

    Returns
    -------
    Tensor
        ``[E, C, 2l+1]``, in the order of ``xs``.
    """
    chunk = _chunk_size(chunk, head.out_features, hidden)
    groups = 2 if paired else 1
    bias = head.bias
    if scale != 1.0:
        hidden, bias = hidden * scale, bias * scale
    return _KernelContraction.apply(chunk, 2 * degree + 1, groups, hidden, head.weight, bias, *xs, *bs)


def depthwise_contraction(
    weights: Tensor,
    mix: Tensor,
    xs: Sequence[Tensor],
    bs: Sequence[Tensor],
    degree: int,
    chunk: int | None = None,
) -> Tensor:
    r"""Messages of one output degree through the depthwise kernel: every input channel's paths weighted, summed
    over the paths, then the channels mixed.

    .. math::
        m_e = L \Big[\, \textstyle\sum_J w_{e,cJ} \, \big(x_e^k B_e^{k l}\big)_{cJ} \Big]_{k, c}
              \in \mathbb{R}^{C \times (2l+1)}

    computed chunk by chunk over the edges (see :class:`_DepthwiseContraction`): memory ``O(E (K + \dim x))``
    instead of ``O(E K (2l+1))``.

    Parameters
    ----------
    weights
        ``[E, K]`` radial weights, one per input channel and path (``K = sum_k C_k nJ(k, l)``, ordered as the
        stacked features: input degree, then path ``J``, then channel).
    mix
        ``[C, sum_k C_k]`` channel mixing ``L``.
    xs, bs
        Per input degree ``k``: source features ``[E, C_k, 2k+1]`` and basis ``[E, 2k+1, nJ(k, l) (2l+1)]``.
    degree
        The output degree ``l``.
    chunk
        Edges per chunk; by default sized so that one chunk's path features take about 2 MiB on a CPU (under
        ``torch.compile`` as for :func:`kernel_contraction`).

    Returns
    -------
    Tensor
        ``[E, C, 2l+1]``.
    """
    m = 2 * degree + 1
    chunk = _chunk_size(chunk, weights.shape[1] * m, weights)
    return _DepthwiseContraction.apply(chunk, m, weights, mix, *xs, *bs).transpose(1, 2)
