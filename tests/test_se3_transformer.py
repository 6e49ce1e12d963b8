import subprocess
import sys

import pytest
import torch
from helpers import random_features, random_graph
from torch_geometric.data import Batch, Data
from torch_geometric.loader import DataLoader

from pyg_se3 import Fiber, compute_basis
from pyg_se3.models import SE3Transformer
from pyg_se3.nn import TargetGroups
from pyg_se3.testing import assert_equivariant

FIBER_IN = Fiber({0: 2, 1: 1, 2: 1, 3: 1})
FIBER_HIDDEN = Fiber({0: 4, 1: 4, 2: 4, 3: 4})
FIBER_OUT = Fiber({0: 1, 1: 2, 2: 1, 3: 1})


def small_model(edge_dim=0, **kwargs):
    return SE3Transformer(FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=2, num_heads=2, edge_dim=edge_dim, **kwargs)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("kernel", ["full", "depthwise"])
def test_equivariance(dtype, tol, kernel, device, num_rotations):
    """Random rotations, each with a translation, a pure translation and a permutation of the nodes."""
    model = small_model(edge_dim=1, kernel=kernel).to(device, dtype)
    pos, edge_index = random_graph(10, 45)
    x = random_features(FIBER_IN, 10)
    edge_attr = torch.rand(45, 1, dtype=dtype).to(device)
    with torch.no_grad():
        out = model(x.to(device, dtype), pos.to(device, dtype), edge_index.to(device), edge_attr)
    assert out.abs().max() > 1e-3
    errors = assert_equivariant(
        model,
        FIBER_IN,
        FIBER_OUT,
        x=x,
        pos=pos,
        graph=edge_index,
        call=lambda m, x, pos, edge_index: m(x, pos, edge_index, edge_attr),
        num_rotations=num_rotations,
        dtype=dtype,
        device=device,
        rtol=tol,
        atol=0.0,
    )
    assert len(errors.rotations) == num_rotations


def test_translation_invariance_and_permutation_equivariance(device):
    model = small_model().to(device, torch.float64)
    pos, edge_index = (t.to(device) for t in random_graph(8, 30))
    x = random_features(FIBER_IN, 8).to(device)
    out = model(x, pos, edge_index)
    torch.testing.assert_close(model(x, pos + 10.0, edge_index), out, atol=1e-10, rtol=0)
    perm = torch.randperm(8).to(device)
    inverse = torch.argsort(perm)
    torch.testing.assert_close(model(x[perm], pos[perm], inverse[edge_index]), out[perm], atol=1e-12, rtol=0)


def test_gradcheck_wrt_positions(device):
    model = SE3Transformer(Fiber({0: 1, 1: 1}), Fiber({0: 4, 1: 4, 2: 4}), Fiber({1: 1}), num_layers=1, num_heads=2)
    model = model.double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(4, 8))
    x = random_features(model.fiber_in, 4).to(device)
    pos.requires_grad_(True)
    # CUDA's atomic scatter-adds may sum in another order on the second backward pass that gradcheck runs to check
    # reentrancy; the CPU's backward is deterministic (exact, as before)
    nondet_tol = 0.0 if device.type == "cpu" else 1e-10
    assert torch.autograd.gradcheck(lambda p: model(x, p, edge_index), (pos,), nondet_tol=nondet_tol)


def test_batch_equals_graphs_alone(device):
    model = small_model(edge_dim=2).double().to(device)
    graphs = []
    for seed, n in enumerate([5, 8, 1, 6]):
        if n > 1:
            pos, edge_index = random_graph(n, 3 * n, seed=seed)
        else:  # a single-node graph in the batch
            pos, edge_index = torch.randn(1, 3, dtype=torch.float64), torch.empty(2, 0, dtype=torch.long)
        graphs.append(
            Data(
                x=random_features(FIBER_IN, n),
                pos=pos,
                edge_index=edge_index,
                edge_attr=torch.randn(edge_index.shape[1], 2, dtype=torch.float64),
            ).to(device)  # drawn on the CPU, then moved: the same graphs on every device
        )
    batch = Batch.from_data_list(graphs)
    out = model(batch.x, batch.pos, batch.edge_index, batch.edge_attr, batch.batch)
    for i, g in enumerate(graphs):
        alone = model(g.x, g.pos, g.edge_index, g.edge_attr)
        torch.testing.assert_close(out[batch.batch == i], alone, atol=1e-12, rtol=0)
    # and through a DataLoader, with pooling per graph
    pooled_model = small_model(edge_dim=2, pooling="mean").double().to(device)
    pooled_model.load_state_dict(model.state_dict())
    loaded = next(iter(DataLoader(graphs, batch_size=4)))
    pooled = pooled_model(loaded.x, loaded.pos, loaded.edge_index, loaded.edge_attr, loaded.batch)
    for i, g in enumerate(graphs):
        torch.testing.assert_close(pooled[i], model(g.x, g.pos, g.edge_index, g.edge_attr).mean(0))


def test_degenerate_geometry_is_finite(device):
    model = small_model().double().to(device)
    pos = torch.zeros(5, 3, dtype=torch.float64, device=device)
    pos[3:] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64, device=device)  # two clusters of coincident points
    pos.requires_grad_(True)
    # coincident pairs, a self-loop, and node 4 isolated (no incoming edges)
    edge_index = torch.tensor([[0, 1, 2, 3, 1, 0], [1, 2, 0, 0, 1, 3]], device=device)
    x = random_features(FIBER_IN, 5).to(device).requires_grad_(True)
    out = model(x, pos, edge_index)
    out.square().sum().backward()
    params = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.isfinite(out).all() and torch.isfinite(pos.grad).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(g).all() for g in params)


def test_single_node_graph(device, num_rotations):
    model = small_model().double().to(device)
    pos = torch.randn(1, 3, dtype=torch.float64).to(device).requires_grad_(True)
    x = random_features(FIBER_IN, 1).to(device)
    no_edges = torch.empty(2, 0, dtype=torch.long, device=device)
    out = model(x, pos, no_edges)
    out.sum().backward()
    assert out.shape == (1, FIBER_OUT.dim) and torch.isfinite(out).all()
    # no neighbours: only self-interactions act, and rotating the input still rotates the output
    errors = assert_equivariant(
        model,
        FIBER_IN,
        FIBER_OUT,
        x=x,
        pos=pos.detach(),
        graph=no_edges,
        num_rotations=num_rotations,
        rtol=1e-12,
        atol=0.0,
    )
    assert errors.rotation < 1e-12


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: {**a, "x": a["x"][:, :-1]}, "x: expected last dimension"),
        (lambda a: {**a, "edge_index": a["edge_index"] + 100}, "edge_index: node indices must lie in"),
        (lambda a: {**a, "edge_index": a["edge_index"][:1]}, r"edge_index: expected a \[2, E\]"),
        (lambda a: {**a, "edge_index": a["edge_index"].double()}, "edge_index: expected an int64"),
        (lambda a: {**a, "pos": a["pos"][:, :2]}, r"pos: expected a \[N, 3\]"),
        (lambda a: {**a, "pos": a["pos"][:-1]}, "pos: expected 6 rows"),
        (
            lambda a: {**a, "pos": a["pos"].index_fill(0, torch.tensor([2]), float("nan"))},
            "pos: contains NaN",
        ),
        (
            lambda a: {**a, "pos": a["pos"].index_fill(0, torch.tensor([0]), float("inf"))},
            "pos: contains NaN",
        ),
        (lambda a: {**a, "edge_attr": torch.randn(3, 1)}, "edge_attr: the layer was built with edge_dim=0"),
        (lambda a: {**a, "batch": torch.zeros(2, dtype=torch.long)}, "batch: expected"),
    ],
)
def test_bad_input_names_the_argument(change, message):
    model = small_model()
    pos, edge_index = random_graph(6, 12, torch.float32)
    args = {"x": random_features(FIBER_IN, 6, torch.float32), "pos": pos, "edge_index": edge_index}
    with pytest.raises(ValueError, match=message):
        model(**change(args))


def test_missing_edge_attr_is_an_error():
    model = small_model(edge_dim=3)
    pos, edge_index = random_graph(6, 12, torch.float32)
    with pytest.raises(ValueError, match=r"edge_attr: expected a \[E, 3\]"):
        model(random_features(FIBER_IN, 6, torch.float32), pos, edge_index)
    with pytest.raises(ValueError, match=r"edge_attr: expected shape \[12, 3\]"):
        model(random_features(FIBER_IN, 6, torch.float32), pos, edge_index, torch.randn(12, 2))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="num_heads: 3 does not divide"):
        SE3Transformer(FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=1, num_heads=3)
    with pytest.raises(ValueError, match="pooling"):
        SE3Transformer(FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=1, pooling="median")


@pytest.mark.slow
def test_import_emits_no_warnings():
    code = "import pyg_se3, pyg_se3.nn, pyg_se3.models"
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("checkpoint_edges", [1, 7, 1000])
@pytest.mark.parametrize("kernel", ["full", "depthwise"])
def test_activation_checkpointing_gives_the_same_values_and_gradients(kernel, checkpoint_edges, device):
    # 1: a group per target node; 7: groups of several nodes; 1000: one group. The edges are not sorted by
    # target, and node 0 has no incoming edge (its output is its self-interaction alone).
    model = small_model(edge_dim=1, kernel=kernel, checkpoint_edges=checkpoint_edges).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(10, 45))
    edge_index = edge_index[:, edge_index[1] != 0]
    assert not bool((edge_index[1].diff() >= 0).all())
    x = random_features(FIBER_IN, 10).to(device)
    edge_attr = torch.rand(edge_index.shape[1], 1, dtype=torch.float64).to(device)

    def values_and_gradients(checkpoint):
        model.checkpoint = checkpoint
        model.zero_grad()
        pos_ = pos.clone().requires_grad_(True)
        x_ = x.clone().requires_grad_(True)
        attr_ = edge_attr.clone().requires_grad_(True)
        out = model(x_, pos_, edge_index, attr_)
        out.square().sum().backward()
        with torch.no_grad():  # without gradients the groups run one after another, without recomputation
            out_no_grad = model(x, pos, edge_index, edge_attr)
        return [out, out_no_grad, pos_.grad, x_.grad, attr_.grad, *[p.grad for p in model.parameters()]]

    got, want = values_and_gradients(True), values_and_gradients(False)
    assert len(got) == len(want) and all(g is not None for g in got)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-12)
    assert float(want[2].abs().max()) > 0  # a real gradient with respect to positions was compared


def test_target_groups_cover_every_node_and_edge_once(device):
    pos, edge_index = (t.to(device) for t in random_graph(30, 200))
    basis = compute_basis(pos, edge_index, 1)
    groups = TargetGroups(30, edge_index, None, basis, max_edges=25)
    assert sum(groups.node_sizes) == 30 and groups.num_groups > 1
    sizes = [ei.shape[1] for ei in groups.edge_indices]
    assert sum(sizes) == 200 and max(sizes) < 25 + 30  # a group overshoots by at most one node's edges
    # the groups' edges, targets relabelled back, are the sorted graph's edges; their basis rows go with them
    first = torch.tensor([0, *groups.node_sizes], device=device).cumsum(0)[:-1]
    rebuilt = torch.cat(
        [
            ei + torch.stack([torch.zeros_like(ei[0]), first[g].expand_as(ei[0])])
            for g, ei in enumerate(groups.edge_indices)
        ],
        dim=1,
    )
    order = torch.argsort(edge_index[1], stable=True)
    assert torch.equal(rebuilt, edge_index[:, order])
    torch.testing.assert_close(torch.cat([b.pairs[(1, 1)] for b in groups.bases]), basis.pairs[(1, 1)][order])
    with pytest.raises(ValueError, match="max_edges"):
        TargetGroups(30, edge_index, None, basis, max_edges=0)
