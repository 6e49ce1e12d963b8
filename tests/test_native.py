"""The C++ kernels (pyg_se3/csrc) against the plain-PyTorch path they replace on the CPU."""

import pytest
import torch
from helpers import random_features, random_graph

from pyg_se3 import Fiber, compute_basis
from pyg_se3.basis import num_J
from pyg_se3.nn import DepthwiseEdgeKernel, EdgeKernel
from pyg_se3.nn import kernel as kernel_module
from pyg_se3.nn.kernel import NATIVE_KERNELS, _FeatureGrads, _stacked_features

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


def _python_path(fn, *args):
    with torch.enable_grad():  # the C++ kernels run only where autograd records nothing
        return fn(*args)


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_stacked_features_match_python_path(degree):
    xs, bs = _operands(degree)
    m, start, stop = 2 * degree + 1, 4, 19
    with torch.no_grad():
        native = _stacked_features(xs, bs, start, stop, m)
        into_buffer = _stacked_features(xs, bs, start, stop, m, torch.full_like(native, float("nan")))
    expected = _python_path(_stacked_features, xs, bs, start, stop, m)
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
    """Gradients written chunk by chunk into full-size tensors (C++) and concatenated (PyTorch), against autograd."""
    xs, bs = _operands(degree)
    m, num_edges = 2 * degree + 1, xs[0].shape[0]
    d_stacked = torch.randn(num_edges, m, sum(num_J(k, degree) * c for k, c in enumerate(CHANNELS))).double()
    need_x, need_b = [True, False, True, True], [True, True, False, True]
    leaves = [t.detach().requires_grad_() for t in (*xs, *bs)]
    stacked = _python_path(_stacked_features, leaves[:4], leaves[4:], 0, num_edges, m)
    expected = torch.autograd.grad(stacked, leaves, d_stacked)
    for native in (True, False):
        with torch.enable_grad() if not native else torch.no_grad():
            grads = _FeatureGrads(xs, bs, need_x, need_b)
            assert grads.native == native
            for start in range(0, num_edges, 7):  # chunks of 7 edges, the last one shorter
                grads.add(d_stacked[start : start + 7], start)
        for got, needed, want in zip(grads.result(), need_x + need_b, expected, strict=True):
            assert (got is not None) == needed
            if needed:
                assert want.abs().max() > 1e-3
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


@pytest.mark.parametrize("kind", [EdgeKernel, DepthwiseEdgeKernel])
def test_kernels_match_without_native_kernels(kind, monkeypatch):
    """A whole kernel's messages and every gradient (features, positions through the basis, parameters), float64,
    with the C++ kernels and with the plain-PyTorch path."""
    fiber_in, fiber_out = Fiber({0: 3, 1: 17, 2: 2}), Fiber({0: 4, 1: 4, 2: 4})
    kernel = kind(fiber_in, fiber_out, edge_dim=2, chunk=7).double()
    pos, edge_index = random_graph(9, 40)
    x_j = random_features(fiber_in, 40).requires_grad_(True)
    edge_attr = torch.randn(40, 2, dtype=torch.float64)

    def run():
        pos_ = pos.clone().requires_grad_(True)
        out = kernel(x_j, compute_basis(pos_, edge_index, 2), edge_attr)
        return out, *torch.autograd.grad(out.square().sum(), [x_j, pos_, *kernel.parameters()])

    native = run()
    monkeypatch.setattr(kernel_module, "NATIVE_KERNELS", False)
    for got, want in zip(native, run(), strict=True):
        assert want.abs().max() > 1e-6
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)


def test_native_kernels_reject_bad_operands():
    xs, bs = _operands(1)
    with pytest.raises(RuntimeError, match=r"bs\[1\]: expected 3 rows"):
        kernel_module._C.stacked_features(xs, [bs[0], bs[1][:, :2], *bs[2:]], 3)
    with pytest.raises(RuntimeError, match="xs, bs: expected one number of edges"):
        kernel_module._C.stacked_features(xs, [bs[0][:5], *bs[1:]], 3)
    with pytest.raises(RuntimeError, match="out: expected shape"):
        kernel_module._C.stacked_features(xs, bs, 3, torch.empty(2, 3, 4, dtype=torch.float64))
    d_stacked = torch.empty(23, 3, 5, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="d_stacked: expected"):
        kernel_module._C.stacked_feature_grads(xs, bs, d_stacked, [None] * 4, [None] * 4)
    d_stacked = torch.empty(23, 3, sum(num_J(k, 1) * c for k, c in enumerate(CHANNELS)), dtype=torch.float64)
    with pytest.raises(RuntimeError, match=r"d_xs\[0\]: expected a contiguous CPU tensor of shape"):
        kernel_module._C.stacked_feature_grads(
            xs, bs, d_stacked, [torch.empty(23, 3, 2).double()] + [None] * 3, [None] * 4
        )
