"""Symmetric graphs: their edges in reverse pairs, and the full kernel computing its radial weights once per pair
with the messages and gradients of the kernel that computes them per edge."""

import pytest
import torch
from helpers import random_features

import pyg_se3.basis
import pyg_se3.nn.kernel
from pyg_se3 import Fiber, compute_basis
from pyg_se3.graph import KNN, Complete, Radius, reverse_edge_pairs
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import EdgeKernel, contraction

FIBER_IN, FIBER_OUT = Fiber({0: 3, 1: 4, 2: 2}), Fiber({0: 5, 1: 2, 2: 3})
HIDDEN = Fiber({0: 4, 1: 4})


def _points(num_nodes=14, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(num_nodes, 3, generator=g, dtype=torch.float64)
    batch = torch.tensor([0] * 6 + [1] * (num_nodes - 6))
    return pos, batch


@pytest.mark.parametrize("builder", [Complete(), Radius(1.5, max_num_neighbors=64)])
def test_symmetric_graphs_come_in_reverse_pairs(builder):
    pos, batch = _points(30)
    edge_index = builder(pos, batch)
    pairs = reverse_edge_pairs(edge_index, 30)
    assert pairs.shape == (2, edge_index.shape[1] // 2)
    assert (edge_index[0, pairs[0]] < edge_index[1, pairs[0]]).all()
    assert torch.equal(edge_index[:, pairs[1]], edge_index[:, pairs[0]].flip(0))
    assert sorted(pairs.flatten().tolist()) == list(range(edge_index.shape[1]))  # every edge once


@pytest.mark.parametrize(
    "edge_index",
    [
        [[1, 2], [0, 0]],  # no edge 0 -> 1 nor 0 -> 2
        [[1, 0, 2], [0, 1, 2]],  # a self-loop
        [[1, 0, 1, 0], [0, 1, 0, 1]],  # repeated edges
        [[0, 1, 0, 2], [1, 0, 2, 1]],  # as many edges j < i as j > i, but 0 -> 2 has no reverse
        [[], []],
    ],
)
def test_graphs_without_reverse_pairs(edge_index):
    assert reverse_edge_pairs(torch.tensor(edge_index, dtype=torch.long).view(2, -1), 3) is None


def test_knn_graph_is_directed():
    pos, batch = _points(30)
    edge_index = KNN(k=3)(pos, batch)
    edges = set(map(tuple, edge_index.T.tolist()))
    assert any((i, j) not in edges for j, i in edges)  # the case the test is about
    assert reverse_edge_pairs(edge_index, 30) is None
    assert compute_basis(pos, edge_index, 1).reverse_pairs is None


def test_blocks_in_pair_order_and_back():
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    basis = compute_basis(pos, edge_index, 2)
    forward, reverse = basis.reverse_pairs
    half = len(forward)
    for pair, block in basis.pairs.items():
        paired = basis.paired(pair)
        assert torch.equal(paired[:half], block[forward]) and torch.equal(paired[half:], block[reverse])
        assert basis.paired(pair) is paired  # built once for all the layers
        assert torch.equal(basis.unpair(paired), block)
    values = torch.randn(edge_index.shape[1], 4, dtype=torch.float64)
    assert torch.equal(basis.unpair(basis.to_pair_order(values)), values)
    # a replaced block is put in pair order anew
    basis.pairs[(1, 1)] = 2 * basis.pairs[(1, 1)]
    assert torch.equal(basis.paired((1, 1))[:half], basis.pairs[(1, 1)][forward])


def test_bases_without_reverse_pairs():
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    basis = compute_basis(pos, edge_index, 1)
    assert basis.reverse_pairs is not None
    assert compute_basis(pos, edge_index, 1, find_reverse_pairs=False).reverse_pairs is None
    assert compute_basis((pos, pos.flip(0)), edge_index, 1).reverse_pairs is None  # bipartite
    half = edge_index.shape[1] // 2
    assert all(run.reverse_pairs is None for run in basis.split([half, half], [edge_index[:, :half]] * 2))
    assert basis.index_select(torch.arange(half), edge_index[:, :half]).reverse_pairs is None
    for call in (lambda b: b.paired((0, 0)), lambda b: b.unpair(pos), lambda b: b.to_pair_order(pos)):
        with pytest.raises(ValueError, match="reverse_pairs is None"):
            call(compute_basis(pos, edge_index, 1, find_reverse_pairs=False))
    with pytest.raises(ValueError, match="find_reverse_pairs: expected True or False"):
        compute_basis(pos, edge_index, 1, find_reverse_pairs=1)


def _radial_rows(kernel):
    """A list that receives the number of rows every call of the kernel's radial trunk sees."""
    rows = []
    kernel.radial.trunk.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    return rows


def _paired_calls(monkeypatch):
    """A list that receives the ``paired`` flag of every contraction of the full kernel."""
    calls = []

    def recorded(*args, paired=False, **kwargs):
        calls.append(paired)
        return contraction.kernel_contraction(*args, paired=paired, **kwargs)

    monkeypatch.setattr(pyg_se3.nn.kernel, "kernel_contraction", recorded)
    return calls


def _messages_and_grads(kernel, x, pos, edge_index, edge_attr, find_reverse_pairs, wrt):
    basis = compute_basis(pos, edge_index, 2, find_reverse_pairs=find_reverse_pairs)
    out = kernel(x[edge_index[0]], basis, edge_attr)
    loss = out.sin().sum()
    # second order through the basis: the gradient with respect to the positions, differentiated again
    (d_pos,) = torch.autograd.grad(loss, pos, create_graph=True)
    return out, *torch.autograd.grad(loss + d_pos.square().sum(), wrt)


@pytest.mark.parametrize("native", [True, False])
def test_kernel_computes_weights_once_per_pair_with_the_same_messages_and_gradients(native, monkeypatch):
    if not native:
        monkeypatch.setattr(contraction, "NATIVE_KERNELS", False)
    pos, batch = _points()
    pos.requires_grad_(True)
    edge_index = Complete()(pos, batch)
    # 43 pairs in chunks of 7: the C++ loop gives each thread its own range of pairs, every range ends short
    kernel = EdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=2, chunk=7).double()
    x = random_features(FIBER_IN, pos.shape[0]).requires_grad_(True)
    charge = torch.randn(pos.shape[0], dtype=torch.float64)
    source, target = edge_index
    edge_attr = torch.stack([charge[source] * charge[target], (charge[source] - charge[target]).abs()], dim=-1)
    rows = _radial_rows(kernel)
    wrt = [pos, x, *kernel.parameters()]
    shared = _messages_and_grads(kernel, x, pos, edge_index, edge_attr, True, wrt)
    per_edge = _messages_and_grads(kernel, x, pos, edge_index, edge_attr, False, wrt)
    assert rows == [edge_index.shape[1] // 2, edge_index.shape[1]]
    for got, want in zip(shared, per_edge, strict=True):
        assert want.abs().max() > 1e-3
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("native", [True, False])
def test_kernel_shares_differentiated_edge_features_with_per_edge_gradients(native, monkeypatch):
    """Edge features equal on both edges of every pair at one point, with opposite derivatives there (an
    antisymmetric feature at zero): the weights are shared, and every edge keeps its own hidden row and gradient,
    the per-edge kernel's (with respect to the features' inputs, the positions and the parameters; first and
    second order)."""
    if not native:
        monkeypatch.setattr(contraction, "NATIVE_KERNELS", False)
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    kernel = EdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=1, chunk=7).double()
    x = random_features(FIBER_IN, pos.shape[0])
    charge = torch.ones(pos.shape[0], dtype=torch.float64)
    rows, paired = _radial_rows(kernel), _paired_calls(monkeypatch)

    def gradients(find_reverse_pairs):
        q, p = charge.clone().requires_grad_(True), pos.clone().requires_grad_(True)
        edge_attr = (q[edge_index[0]] - q[edge_index[1]]).unsqueeze(-1)  # 0 everywhere
        basis = compute_basis(p, edge_index, 2, find_reverse_pairs=find_reverse_pairs)
        loss = kernel(x[edge_index[0]], basis, edge_attr).sin().sum()
        # second order too: the gradient with respect to the features' inputs, differentiated again
        (d_q,) = torch.autograd.grad(loss, q, create_graph=True)
        return d_q, *torch.autograd.grad(loss + d_q.square().sum(), [q, p, *kernel.parameters()])

    got, want = gradients(True), gradients(False)
    assert rows == [edge_index.shape[1]] * 2 and paired == [True] * 3 + [False] * 3  # 3 output degrees
    for g, w in zip(got, want, strict=True):  # d_q, then the second-order gradients
        assert w.abs().max() > 1e-3
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    with torch.no_grad():
        edge_attr = (charge[edge_index[0]] - charge[edge_index[1]]).unsqueeze(-1)
        shared = kernel(x[edge_index[0]], compute_basis(pos, edge_index, 2), edge_attr)
        per_edge = kernel(x[edge_index[0]], compute_basis(pos, edge_index, 2, find_reverse_pairs=False), edge_attr)
    assert rows[2:] == [edge_index.shape[1] // 2, edge_index.shape[1]]
    torch.testing.assert_close(shared, per_edge, atol=1e-12, rtol=1e-12)


def test_kernel_does_not_share_unequal_edge_features():
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    kernel = EdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=1).double()
    x = random_features(FIBER_IN, pos.shape[0])
    edge_attr = torch.randn(edge_index.shape[1], 1, dtype=torch.float64)  # a directed edge feature
    rows = _radial_rows(kernel)
    with torch.no_grad():
        got = kernel(x[edge_index[0]], compute_basis(pos, edge_index, 2), edge_attr)
        want = kernel(x[edge_index[0]], compute_basis(pos, edge_index, 2, find_reverse_pairs=False), edge_attr)
    assert rows == [edge_index.shape[1]] * 2
    assert torch.equal(got, want)


def test_iterative_model_is_the_same_with_and_without_pairs():
    """The whole iterative model (attention layers, graphs and bases rebuilt every iteration): outputs and
    gradients with every kernel sharing its weights per pair against the same weights in a model that computes
    them per edge (``find_reverse_pairs=False``)."""
    pos, batch = _points()
    fiber_in, fiber_hidden = Fiber({0: 1, 1: 1}), Fiber({0: 8, 1: 8})
    torch.manual_seed(0)
    shared_model = IterativeSE3Transformer(fiber_in, fiber_hidden, num_iterations=3, graph=Complete()).double()
    per_edge_model = IterativeSE3Transformer(
        fiber_in, fiber_hidden, num_iterations=3, graph=Complete(), find_reverse_pairs=False
    ).double()
    per_edge_model.load_state_dict(shared_model.state_dict())
    x = random_features(fiber_in, pos.shape[0])

    def run(model):
        rows = [_radial_rows(module) for module in model.modules() if isinstance(module, EdgeKernel)]
        p = pos.clone().requires_grad_(True)
        out = model(x, p, batch=batch)
        return rows, (out.pos, *torch.autograd.grad(out.pos.square().sum(), [p, *model.parameters()]))

    rows, shared = run(shared_model)
    assert all(r and all(n < 60 for n in r) for r in rows)  # 2 complete graphs of 6 and 8 nodes: 86 edges
    rows, per_edge = run(per_edge_model)
    assert all(r and all(n == 86 for n in r) for r in rows)
    for got, want in zip(shared, per_edge, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    assert "find_reverse_pairs=False" in repr(per_edge_model) and "find_reverse_pairs" not in repr(shared_model)


def test_transformer_finds_pairs_unless_told_not_to():
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    fiber = Fiber({0: 2, 1: 2})
    torch.manual_seed(0)
    models = [
        SE3Transformer(fiber, HIDDEN, fiber, num_layers=2, num_heads=2, find_reverse_pairs=find).double()
        for find in (True, False)
    ]
    models[1].load_state_dict(models[0].state_dict())
    x = random_features(fiber, pos.shape[0])
    rows = [[_radial_rows(m) for m in model.modules() if isinstance(m, EdgeKernel)] for model in models]
    got, want = (model(x, pos, edge_index) for model in models)
    half = edge_index.shape[1] // 2
    assert all(r == [half] for r in rows[0]) and all(r == [2 * half] for r in rows[1])
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    with pytest.raises(ValueError, match="find_reverse_pairs: expected True or False"):
        SE3Transformer(fiber, HIDDEN, fiber, num_layers=1, num_heads=2, find_reverse_pairs="no")
    with pytest.raises(ValueError, match="find_reverse_pairs: expected True or False"):
        IterativeSE3Transformer(fiber, HIDDEN, num_heads=2, find_reverse_pairs=1)


def _counted_equal(monkeypatch):
    """A list that receives one entry per ``torch.equal`` call made by :meth:`Basis.pairs_agree`."""
    calls = []

    def counted(a, b):
        calls.append(a.shape)
        return torch.equal(a, b)

    monkeypatch.setattr(pyg_se3.basis, "torch", _TorchWith(equal=counted))
    return calls


class _TorchWith:
    """``torch`` with some functions replaced."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name):
        return self.replaced.get(name, getattr(torch, name))


def test_pairs_agree_is_compared_once_per_basis_and_edge_features(monkeypatch):
    """Every layer of a forward pass shares one comparison of the radial inputs of both edges of every pair; a
    new or changed edge feature tensor is compared anew (a stale answer would pair directed features)."""
    pos, batch = _points()
    edge_index = Complete()(pos, batch)
    source, target = edge_index
    charge = torch.randn(pos.shape[0], dtype=torch.float64)
    edge_attr = (charge[source] * charge[target]).unsqueeze(-1)
    fiber = Fiber({0: 2, 1: 2})
    model = SE3Transformer(fiber, HIDDEN, fiber, num_layers=3, num_heads=2, edge_dim=1).double()
    kernels = [m for m in model.modules() if isinstance(m, EdgeKernel)]
    assert len(kernels) >= 4
    x = random_features(fiber, pos.shape[0])
    basis = compute_basis(pos, edge_index, 1)
    assert basis.radial_inputs() is basis.dist
    assert torch.equal(basis.radial_inputs(edge_attr)[:, 0], basis.dist[:, 0])
    assert torch.equal(basis.radial_inputs(edge_attr)[:, 1:], edge_attr)
    compared = _counted_equal(monkeypatch)
    rows = [_radial_rows(m) for m in kernels]
    with torch.no_grad():
        model(x, pos, edge_index, edge_attr, basis=basis)
        assert len(compared) == 1 and all(r == [edge_index.shape[1] // 2] for r in rows)
        model(x, pos, edge_index, edge_attr, basis=basis)  # the same basis and features: kept
        assert len(compared) == 1
        edge_attr[0] += 1.0  # in place: edge 0 and its reverse now differ
        got = model(x, pos, edge_index, edge_attr, basis=basis)
        assert len(compared) == 2 and all(r[-1] == edge_index.shape[1] for r in rows)
        want = model(x, pos, edge_index, edge_attr, basis=compute_basis(pos, edge_index, 1, find_reverse_pairs=False))
        assert torch.equal(got, want)
        assert basis.pairs_agree(None) and len(compared) == 3  # lengths alone: another key
    with torch.inference_mode():  # inference tensors have no version counter: compared every time
        features = (charge[source] * charge[target]).unsqueeze(-1)
        assert basis.pairs_agree(features) and basis.pairs_agree(features) and len(compared) == 5
    assert not compute_basis(pos, edge_index, 1, find_reverse_pairs=False).pairs_agree(edge_attr)
