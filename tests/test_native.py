"""The C++ kernels (pyg_se3/csrc) against the plain-PyTorch path they replace on the CPU."""

import pytest
import torch
from helpers import random_features, random_graph

from pyg_se3 import Fiber, compute_basis
from pyg_se3.basis import num_J
from pyg_se3.nn import DepthwiseEdgeKernel, EdgeKernel, contraction
from pyg_se3.nn.contraction import NATIVE_KERNELS, _FeatureGrads, _path_sums, _stacked_features

CHANNELS = [3, 17, 2, 5]  # 17: more than one group of 16 channels, and a remainder


def test_native_kernels_are_built():
    """`make setup` builds them: without this, every test below would pass by exercising nothing."""
    assert NATIVE_KERNELS


def _operands(degree: int, num_edges: int = 23, dtype=torch.float64):
    """Features of degrees 0..3 (one of them a non-contiguous view, as ``Fiber.split`` gives) and their bases."""
    xs = [torch.randn(num_edges, c, 2 * k + 1, dtype=dtype) for k, c in enumerate(CHANNELS)]
    xs[2] = torch.randn(num_edges, 2 * 2 + 1, CHANNELS[2], dtype=dtype).transpose(1, 2)
    bs = [
        torch.randn(num_edges, 2 * k + 1, num_J(k, degree) * (2 * degree + 1), dtype=dtype)
        for k in range(len(CHANNELS))
    ]
    return xs, bs


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_stacked_features_match_python_path(degree):
    xs, bs = _operands(degree)
    m, start, stop = 2 * degree + 1, 4, 19
    rows = [x[start:stop] for x in xs], [b[start:stop] for b in bs]
    native = contraction._C.stacked_features(*rows, m)
    into_buffer = contraction._C.stacked_features(*rows, m, torch.full_like(native, float("nan")))
    expected = _stacked_features(xs, bs, start, stop, m)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(native, expected, atol=1e-13, rtol=0)
    torch.testing.assert_close(into_buffer, expected, atol=1e-13, rtol=0)
    # the layout: stacked[e, i, off_k + J C_k + c] = sum_a x_k[e, c, a] b_k[e, a, J m + i]
    k, c, J, i, e = 3, 4, min(degree, 3) * 2, degree, 7
    offset = sum(num_J(d, degree) * CHANNELS[d] for d in range(k))
    direct = (xs[k][start + e, c] * bs[k][start + e, :, J * m + i]).sum()
    torch.testing.assert_close(native[e, i, offset + J * CHANNELS[k] + c], direct, atol=1e-13, rtol=0)


@pytest.mark.parametrize("degree", [0, 2, 3])
def test_feature_grads_match_autograd(degree):
    """Gradients written chunk by chunk into rows of full-size tensors (C++) and concatenated (PyTorch), against
    autograd."""
    xs, bs = _operands(degree)
    m, num_edges = 2 * degree + 1, xs[0].shape[0]
    d_stacked = torch.randn(num_edges, m, sum(num_J(k, degree) * c for k, c in enumerate(CHANNELS))).double()
    need_x, need_b = [True, False, True, True], [True, True, False, True]
    leaves = [t.detach().requires_grad_() for t in (*xs, *bs)]
    expected = torch.autograd.grad(_stacked_features(leaves[:4], leaves[4:], 0, num_edges, m), leaves, d_stacked)
    python = _FeatureGrads(xs, bs, need_x, need_b)
    native = [
        torch.empty(t.shape, dtype=t.dtype) if need else None
        for t, need in zip((*xs, *bs), need_x + need_b, strict=True)
    ]
    for start in range(0, num_edges, 7):  # chunks of 7 edges, the last one shorter
        python.add(d_stacked[start : start + 7], start)
        rows = [t if t is None else t[start : start + 7] for t in native]
        chunk = [x[start : start + 7] for x in xs], [b[start : start + 7] for b in bs]
        contraction._C.stacked_feature_grads(*chunk, d_stacked[start : start + 7], rows[:4], rows[4:])
    for grads in (python.result(), native):
        for got, needed, want in zip(grads, need_x + need_b, expected, strict=True):
            assert (got is not None) == needed
            if needed:
                assert want.abs().max() > 1e-3
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("degree", [0, 2, 3])
def test_depthwise_path_sums_and_grads_match_autograd(degree):
    """The depthwise kernel's path sums (weighted path features summed over each channel's paths, never stored)
    and, from one pass, their gradients for the weights, features and basis, and the sums again."""
    xs, bs = _operands(degree)
    m, num_edges = 2 * degree + 1, xs[0].shape[0]
    fan_in = sum(num_J(k, degree) * c for k, c in enumerate(CHANNELS))
    weights = torch.randn(num_edges, fan_in, dtype=torch.float64)
    leaves = [t.detach().requires_grad_() for t in (weights, *xs, *bs)]
    stacked = _stacked_features(leaves[1:5], leaves[5:], 0, num_edges, m)
    expected_sums = _path_sums(stacked * leaves[0][:, None], xs, bs)
    assert expected_sums.shape == (num_edges, m, sum(CHANNELS))
    torch.testing.assert_close(contraction._C.depthwise_path_sums(xs, bs, weights, m), expected_sums.detach())
    d_sums = torch.randn_like(expected_sums)
    expected = torch.autograd.grad(expected_sums, leaves, d_sums)
    need = [True, True, False, True, True, True, True, False, True]  # weights, then features, then bases
    got = [torch.empty(t.shape, dtype=t.dtype) if n else None for t, n in zip(leaves, need, strict=True)]
    sums = torch.full_like(d_sums, float("nan"))
    contraction._C.depthwise_path_sum_grads(xs, bs, weights, d_sums, sums, got[0], got[1:5], got[5:])
    torch.testing.assert_close(sums, expected_sums.detach(), atol=1e-12, rtol=0)
    for g, n, want in zip(got, need, expected, strict=True):
        if n:
            assert want.abs().max() > 1e-3
            torch.testing.assert_close(g, want, atol=1e-12, rtol=0)


class _CountingC:
    """``pyg_se3._C`` that counts the calls of each of its functions."""

    def __init__(self, module):
        self.module, self.calls = module, {}

    def __getattr__(self, name):
        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return getattr(self.module, name)(*args, **kwargs)

        return counted


@pytest.mark.parametrize("kind", [EdgeKernel, DepthwiseEdgeKernel])
@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("wrt", ["all", "parameters", "features"])
def test_kernels_match_without_native_kernels(kind, dtype, tolerance, wrt, monkeypatch):
    """A whole kernel's messages and gradients (all of them: features, positions through the basis, parameters;
    or only some), with the C++ kernels and with the plain-PyTorch path. 40 edges in chunks of 7: the C++ loop
    gives each thread its own range of edges, every range ends in a short chunk."""
    fiber_in, fiber_out = Fiber({0: 3, 1: 17, 2: 2}), Fiber({0: 4, 1: 4, 2: 4})
    kernel = kind(fiber_in, fiber_out, edge_dim=2, chunk=7).to(dtype)
    pos, edge_index = random_graph(9, 40)
    x_j = random_features(fiber_in, 40).to(dtype)
    edge_attr = torch.randn(40, 2, dtype=dtype)

    def run():
        # what does not need a gradient does not require one: the backward skips it
        x, pos_ = x_j.detach().requires_grad_(wrt != "parameters"), pos.to(dtype).requires_grad_(wrt != "parameters")
        kernel.requires_grad_(wrt != "features")
        out = kernel(x, compute_basis(pos_, edge_index, 2), edge_attr)
        inputs = [t for t in (x, pos_, *kernel.parameters()) if t.requires_grad]
        return out, *torch.autograd.grad(out.square().sum(), inputs)

    counting = _CountingC(contraction._C)
    monkeypatch.setattr(contraction, "_C", counting)
    native = run()
    name = "kernel_contraction" if kind is EdgeKernel else "depthwise_contraction"
    assert counting.calls[name] == counting.calls[name + "_backward"] == len(fiber_out)
    monkeypatch.setattr(contraction, "NATIVE_KERNELS", False)
    calls, python = dict(counting.calls), run()
    assert counting.calls == calls  # the patch took effect: the plain-PyTorch path ran everything
    for got, want in zip(native, python, strict=True):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, atol=tolerance, rtol=tolerance)


def test_native_kernels_reject_bad_operands():
    xs, bs = _operands(1)
    with pytest.raises(RuntimeError, match=r"bs\[1\]: expected 3 rows"):
        contraction._C.stacked_features(xs, [bs[0], bs[1][:, :2], *bs[2:]], 3)
    with pytest.raises(RuntimeError, match="xs, bs: expected one number of edges"):
        contraction._C.stacked_features(xs, [bs[0][:5], *bs[1:]], 3)
    with pytest.raises(RuntimeError, match="out: expected shape"):
        contraction._C.stacked_features(xs, bs, 3, torch.empty(2, 3, 4, dtype=torch.float64))
    d_stacked = torch.empty(23, 3, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="d_stacked: expected"):
        contraction._C.stacked_feature_grads(xs, bs, d_stacked, [None] * 4, [None] * 4)
    d_stacked = torch.empty(23, 3, sum(num_J(k, 1) * c for k, c in enumerate(CHANNELS)), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"d_xs\[0\]: expected a contiguous CPU tensor of shape"):
        contraction._C.stacked_feature_grads(
            xs, bs, d_stacked, [torch.empty(23, 3, 2).double()] + [None] * 3, [None] * 4
        )


def test_native_contractions_reject_bad_operands():
    xs, bs = _operands(1)
    fan_in = sum(num_J(k, 1) * c for k, c in enumerate(CHANNELS))
    hidden, weight, bias = torch.randn(23, 8).double(), torch.randn(2 * fan_in, 8).double(), torch.randn(2 * fan_in)
    C = contraction._C
    with pytest.raises(RuntimeError, match="bias: expected a CPU tensor of dtype Double, got Float"):
        C.kernel_contraction(hidden, weight, bias, xs, bs, 3, 7)
    bias = bias.double()
    with pytest.raises(RuntimeError, match=r"weight, bias: expected \[C K, 8\]"):
        C.kernel_contraction(hidden, weight[:-1], bias, xs, bs, 3, 7)
    with pytest.raises(RuntimeError, match="chunk: expected >= 1, got 0"):
        C.kernel_contraction(hidden, weight, bias, xs, bs, 3, 0)
    with pytest.raises(RuntimeError, match="groups: expected >= 1, got 0"):
        C.kernel_contraction(hidden, weight, bias, xs, bs, 3, 7, 0)
    with pytest.raises(RuntimeError, match=r"expected groups x E edges and E or groups x E rows of hidden, got 23"):
        C.kernel_contraction(hidden, weight, bias, xs, bs, 3, 7, 2)  # 23 edges in 2 groups
    with pytest.raises(RuntimeError, match=r"got 22 edges and 23 rows for groups=2"):
        C.kernel_contraction(hidden, weight, bias, [x[:22] for x in xs], [b[:22] for b in bs], 3, 7, 2)
    flags = [True] * 3
    with pytest.raises(RuntimeError, match=r"grad: expected \[23, 2, 3\]"):
        C.kernel_contraction_backward(
            torch.zeros(23, 3, 2).double(), hidden, weight, bias, xs, bs, 3, 7, 1, *flags, [True] * 4, [True] * 4
        )
    with pytest.raises(RuntimeError, match="need flags: expected one per block"):
        C.kernel_contraction_backward(
            torch.zeros(23, 2, 3).double(), hidden, weight, bias, xs, bs, 3, 7, 1, *flags, [True], [True] * 4
        )
    weights, mix = torch.randn(23, fan_in).double(), torch.randn(5, sum(CHANNELS)).double()
    with pytest.raises(RuntimeError, match=r"weights, mix: expected \[E, \d+\] and \[C, \d+\]"):
        C.depthwise_contraction(weights, mix[:, 1:], xs, bs, 3, 7)
    with pytest.raises(RuntimeError, match=r"xs: expected 22 edges \(those of weights\), got 23"):
        C.depthwise_contraction(weights[1:], mix, xs, bs, 3, 7)
    with pytest.raises(RuntimeError, match=r"weights: expected a CPU tensor \[23, \d+\] .* contiguous rows"):
        C.depthwise_path_sums(xs, bs, weights.t().contiguous().t(), 3)
    with pytest.raises(RuntimeError, match=r"d_sums: expected a contiguous CPU tensor of shape \[23, 3, 27\]"):
        C.depthwise_path_sum_grads(xs, bs, weights, torch.zeros(23, 3, 26).double(), None, None, [None] * 4, [None] * 4)
