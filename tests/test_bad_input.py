"""No silent wrong results: degenerate geometry gets exact limits and true gradients, and bad input gets a
``ValueError`` naming the argument and what was expected."""

import numpy as np
import pytest
import torch
from helpers import random_graph, relative_error, unzero_displacements

from pyg_se3 import Fiber, compute_basis
from pyg_se3.basis import edge_harmonics
from pyg_se3.graph import KNN, Complete, Radius, complete_edge_index
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import SE3Attention, SE3Conv, SE3GlobalPool, global_pool
from pyg_se3.testing import assert_equivariant

FIBER_IN = Fiber({0: 2, 1: 1})
FIBER_HIDDEN = Fiber({0: 3, 1: 3})
FIBER_OUT = Fiber({0: 1, 1: 1})
NUM_NODES = 6
# Node 5 sits on node 1: positions are pos = q[TWINS] for free coordinates q [5, 3]. Moving q moves both twins
# together, along which the model is differentiable; pulling them apart is not (the direction of their edge jumps).
TWINS = torch.tensor([0, 1, 2, 3, 4, 1])


def cloud(dtype: torch.dtype = torch.float64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and positions of ``NUM_NODES`` random points."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(NUM_NODES, FIBER_IN.dim, generator=g, dtype=dtype)
    return x, torch.randn(NUM_NODES, 3, generator=g, dtype=dtype)


def small_transformer(dtype: torch.dtype = torch.float64) -> SE3Transformer:
    model = SE3Transformer(FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=1, num_heads=1, radial_hidden=8)
    return model.to(dtype)


def small_iterative(graph) -> IterativeSE3Transformer:
    model = IterativeSE3Transformer(
        FIBER_IN, FIBER_HIDDEN, num_iterations=2, layers_per_iteration=1, num_heads=1, radial_hidden=8, graph=graph
    )
    return unzero_displacements(model.double())


def with_envelope(model: SE3Transformer, graph, x, pos, edge_index):
    """The model with the graph's envelope weights on the basis (as the iterative model runs its blocks)."""
    basis = compute_basis(pos, edge_index, model.max_degree)
    basis.edge_weight = graph.edge_weight(basis.dist.squeeze(-1))
    return model(x, pos, edge_index, basis=basis)


# ---------------------------------------------------------------------------------------------- 1. zero-length edges
def test_zero_length_edges_have_exact_limits_and_zero_gradients():
    pos = torch.randn(4, 3, dtype=torch.float64)
    pos[3] = pos[0]  # coincident distinct points
    pos.requires_grad_(True)
    # self-loops 0->0 and 1->1, coincident 3->0 and 0->3, one ordinary edge 2->0
    edge_index = torch.tensor([[0, 1, 3, 0, 2], [0, 1, 0, 3, 0]])
    zero = torch.tensor([0, 1, 2, 3])
    basis = compute_basis(pos, edge_index, 2)
    sh = edge_harmonics(basis.rel_pos, 4)  # the harmonics the blocks are built from
    assert torch.equal(basis.dist[zero], torch.zeros(4, 1, dtype=torch.float64))
    assert torch.equal(sh[zero, 0], torch.ones(4, dtype=torch.float64))
    assert torch.equal(sh[zero, 1:], torch.zeros_like(sh[zero, 1:]))
    for tensor in [basis.dist, sh, *basis.pairs.values()]:
        (grad,) = torch.autograd.grad((tensor[zero] * torch.randn_like(tensor[zero])).sum(), pos, retain_graph=True)
        assert grad.abs().max() == 0
    # the ordinary edge is unaffected
    assert float(basis.dist[4].detach()) == pytest.approx(float((pos[2] - pos[0]).detach().norm()), rel=1e-15)
    assert sh[4, 1:4].abs().max() > 0.1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ordinary_edges_are_bit_identical_next_to_zero_length_ones(dtype):
    """Masking zero-length edges changes nothing, in values or gradients, for the other edges."""
    pos, edge_index = random_graph(6, 20, dtype)
    loops = torch.arange(6).repeat(2, 1)
    pos.requires_grad_(True)
    plain = compute_basis(pos, edge_index, 2)
    mixed = compute_basis(pos, torch.cat([edge_index, loops], dim=1), 2)
    fields = zip([plain.dist, *plain.pairs.values()], [mixed.dist, *mixed.pairs.values()], strict=True)
    for a, b in fields:
        assert torch.equal(a, b[:20])
        weights = torch.randn_like(a)
        (grad_a,) = torch.autograd.grad((a * weights).sum(), pos, retain_graph=True)
        (grad_b,) = torch.autograd.grad((b[:20] * weights).sum(), pos, retain_graph=True)
        assert torch.equal(grad_a, grad_b)


@pytest.mark.parametrize(
    "graph",
    [KNN(k=3, loop=True), Radius(2.5, loop=True), Radius(2.5, envelope="polynomial", loop=True)],
    ids=["knn", "radius-cosine", "radius-polynomial"],
)
def test_transformer_position_gradient_with_self_loops_matches_finite_differences(graph):
    model = small_transformer()
    x, pos = cloud()
    edge_index = graph(pos)
    assert (edge_index[0] == edge_index[1]).sum() == NUM_NODES
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: with_envelope(model, graph, x, p, edge_index), (pos,))


@pytest.mark.parametrize("graph", [Complete(), Complete(loop=True), KNN(k=3)], ids=["complete", "loops", "knn"])
def test_transformer_gradient_with_coincident_points_matches_finite_differences(graph):
    model = small_transformer()
    x, pos = cloud()
    q = pos[:5].clone().requires_grad_(True)
    edge_index = graph(q.detach()[TWINS])
    assert ((edge_index[0] == 1) & (edge_index[1] == 5)).any()
    assert torch.autograd.gradcheck(lambda q: model(x, q[TWINS], edge_index), (q,))
    # pulling the twins apart is not differentiable: the gradient there stays bounded
    pos = q.detach()[TWINS].requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, pos, edge_index).square().sum(), pos)
    assert grad.abs().max() < 1e3


@pytest.mark.parametrize("graph", [KNN(k=3, loop=True), Radius(2.5, loop=True)], ids=["knn", "radius"])
def test_iterative_position_gradient_with_self_loops_matches_finite_differences(graph):
    model = small_iterative(graph)
    x, pos = cloud()
    pos.requires_grad_(True)
    out = model(x, pos)
    assert (out.edge_indices[0][0] == out.edge_indices[0][1]).sum() == NUM_NODES
    assert relative_error(out.pos, pos) > 1e-3  # the points move
    assert torch.autograd.gradcheck(lambda p: model(x, p).pos, (pos,))


def test_iterative_gradient_with_coincident_points_matches_finite_differences():
    model = small_iterative(Complete())
    x, pos = cloud()
    q = pos[:5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q: model(x, q[TWINS]).pos, (q,))
    pos = q.detach()[TWINS].requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x, pos).pos.square().sum(), pos)
    assert grad.abs().max() < 1e3


def test_float32_position_gradient_with_self_loops_is_equivariant(num_rotations):
    model = small_transformer(torch.float32)
    x, pos = cloud(torch.float32)
    edge_index = KNN(k=3, loop=True)(pos)

    def forces(model, x, pos, edge_index):
        with torch.enable_grad():  # assert_equivariant runs the model under torch.no_grad()
            pos = pos.clone().requires_grad_(True)
            energy = FIBER_OUT.split(model(x, pos, edge_index))[0].sum()  # invariant
            return torch.autograd.grad(energy, pos)[0]

    assert forces(model, x, pos, edge_index).abs().max() > 1e-3
    # the gradient is a type-1 field: random rotations (each with a translation), a translation, a permutation
    n = min(5, num_rotations)
    errors = assert_equivariant(
        model,
        FIBER_IN,
        Fiber({1: 1}),
        x=x,
        pos=pos,
        graph=edge_index,
        call=forces,
        num_rotations=n,
        dtype=torch.float32,
        rtol=1e-4,
        atol=0.0,
    )
    assert len(errors.rotations) == n


# ---------------------------------------------------------------------------------------------- 2. batch
BAD_BATCHES = {
    "negative": (torch.tensor([-1, -1, -1, 0, 0, 0]), "non-negative"),
    "bool": (torch.tensor([False, False, False, True, True, True]), "int64"),
    "float": (torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]), "int64"),
    "2-D": (torch.zeros(NUM_NODES, 1, dtype=torch.long), r"\[N\] = \[6\]"),
    "too short": (torch.zeros(NUM_NODES - 1, dtype=torch.long), r"\[N\] = \[6\]"),
    "huge id": (torch.tensor([0, 0, 0, 10**9, 10**9, 10**9]), "num_graphs"),
}
POOLED = SE3Transformer(FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=0, pooling="sum").double()
BATCH_CONSUMERS = {
    "knn": lambda pos, x, batch: KNN(k=2)(pos, batch),
    "radius": lambda pos, x, batch: Radius(2.0)(pos, batch),
    "complete": lambda pos, x, batch: Complete()(pos, batch),
    "complete_edge_index": lambda pos, x, batch: complete_edge_index(batch),
    "global_pool": lambda pos, x, batch: global_pool(x, batch, FIBER_IN),
    "SE3GlobalPool": lambda pos, x, batch: SE3GlobalPool(FIBER_IN, "sum")(x, batch),
    "transformer": lambda pos, x, batch: POOLED(x, pos, complete_edge_index(NUM_NODES), batch=batch),
    "iterative": lambda pos, x, batch: small_iterative(KNN(k=2))(x, pos, batch),
}
SORTED_CONSUMERS = ["knn", "radius", "complete", "complete_edge_index", "iterative"]


@pytest.mark.parametrize(
    "consumer, bad",
    # complete_edge_index takes the length of batch as N: it cannot be too short
    [(c, b) for c in BATCH_CONSUMERS for b in BAD_BATCHES if (c, b) != ("complete_edge_index", "too short")],
)
def test_bad_batch_is_refused_by_every_entry_point(consumer, bad):
    batch, message = BAD_BATCHES[bad]
    x, pos = cloud()
    with pytest.raises(ValueError, match=f"^batch: .*{message}"):
        BATCH_CONSUMERS[consumer](pos, x, batch)


@pytest.mark.parametrize("consumer", list(BATCH_CONSUMERS))
def test_unsorted_batch_is_refused_where_graphs_must_be_contiguous(consumer):
    x, pos = cloud()
    batch = torch.tensor([1, 1, 1, 0, 0, 0])
    if consumer in SORTED_CONSUMERS:
        with pytest.raises(ValueError, match=r"^batch: expected a sorted"):
            BATCH_CONSUMERS[consumer](pos, x, batch)
    else:  # pooling gathers by graph index, in any order
        assert BATCH_CONSUMERS[consumer](pos, x, batch).shape[0] == 2


@pytest.mark.parametrize("consumer", list(BATCH_CONSUMERS))
def test_good_batches_of_int32_and_int64_are_accepted(consumer):
    x, pos = cloud()
    for dtype in (torch.int64, torch.int32):
        BATCH_CONSUMERS[consumer](pos, x, torch.tensor([0, 0, 0, 1, 1, 1], dtype=dtype))


def test_pooling_with_num_graphs_allows_empty_graphs_and_bounds_the_ids():
    x, _ = cloud()
    batch = torch.tensor([0, 0, 0, 7, 7, 7])
    with pytest.raises(ValueError, match=r"^batch: .*num_graphs"):
        global_pool(x, batch, FIBER_IN, "sum")  # 8 graphs for 6 nodes: pass num_graphs
    out = global_pool(x, batch, FIBER_IN, "sum", num_graphs=8)
    torch.testing.assert_close(out[[0, 7]], torch.stack([x[:3].sum(0), x[3:].sum(0)]))
    assert out[1:7].abs().max() == 0
    with pytest.raises(ValueError, match=r"^batch: graph indices must lie in \[0, 5\)"):
        global_pool(x, batch, FIBER_IN, "sum", num_graphs=5)
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError, match=r"^num_graphs: expected an integer"):
            global_pool(x, batch, FIBER_IN, "sum", num_graphs=bad)


def test_empty_batch_is_accepted():
    empty = torch.zeros(0, dtype=torch.long)
    assert torch.equal(global_pool(torch.zeros(0, FIBER_IN.dim), empty, FIBER_IN), torch.zeros(1, FIBER_IN.dim))
    assert KNN(k=2)(torch.zeros(0, 3), empty).shape == (2, 0)
    assert complete_edge_index(empty).shape == (2, 0)


# ---------------------------------------------------------------------------------------------- 3. integers
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Fiber({1.5: 2}), "structure: degrees must be integers"),
        (lambda: Fiber({0: 2.7}), "structure: channels must be integers"),
        (lambda: Fiber({0: 2.0}), "structure: channels must be integers"),
        (lambda: Fiber({True: 2}), "structure: degrees must be integers"),
        (lambda: Fiber({0: True}), "structure: channels must be integers"),
        (lambda: Fiber({0: "2"}), "structure: channels must be integers"),
        (lambda: Fiber.create(2.5, 4), "num_degrees: expected an integer"),
        (lambda: Fiber.create(2, 4.5), "structure: channels must be integers"),
        (lambda: KNN(k=2.7), "k: expected an integer"),
        (lambda: KNN(k=True), "k: expected an integer"),
        (lambda: Radius(1.0, max_num_neighbors=2.5), "max_num_neighbors: expected an integer"),
        (lambda: Radius(1.0, max_num_neighbors=False), "max_num_neighbors: expected an integer"),
    ],
)
def test_non_integers_are_refused(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_numpy_and_torch_integers_are_integers():
    assert Fiber({np.int64(1): np.int32(2), torch.tensor(0): torch.tensor(3)}) == Fiber({0: 3, 1: 2})
    assert KNN(k=np.int64(3)).k == 3 and type(KNN(k=torch.tensor(3)).k) is int
    assert Radius(1.0, max_num_neighbors=np.uint8(4)).max_num_neighbors == 4
    with pytest.raises(ValueError, match="k: expected an integer"):
        KNN(k=torch.tensor(3.0))
    with pytest.raises(ValueError, match="k: expected an integer"):
        KNN(k=torch.tensor([3]))


# ---------------------------------------------------------------------------------------------- 4. basis and layers
def test_compute_basis_checks_its_inputs():
    pos, edge_index = random_graph(5, 8)
    with pytest.raises(ValueError, match=r"edge_index: node indices must lie in \[0, 5\)"):
        compute_basis(pos, torch.tensor([[0, 5], [1, 2]]), 1)
    with pytest.raises(ValueError, match=r"edge_index: node indices must lie in \[0, 5\)"):
        compute_basis(pos, torch.tensor([[0, -1], [1, 2]]), 1)
    with pytest.raises(ValueError, match=r"edge_index: expected a \[2, E\] tensor"):
        compute_basis(pos, edge_index[0], 1)
    with pytest.raises(ValueError, match="edge_index: expected an int64"):
        compute_basis(pos, edge_index.double(), 1)
    nan = pos.clone()
    nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="pos: contains NaN or inf"):
        compute_basis(nan, edge_index, 1)
    with pytest.raises(ValueError, match=r"pos: expected a \[N, 3\] tensor"):
        compute_basis(pos[:, :2], edge_index, 1)
    with pytest.raises(ValueError, match="max_degree: expected an integer"):
        compute_basis(pos, edge_index, 1.5)
    with pytest.raises(ValueError, match="max_degree: expected an integer"):
        compute_basis(pos, edge_index, -1)


def test_compute_basis_checks_bipartite_inputs():
    pos_src, pos_dst = torch.randn(5, 3, dtype=torch.float64), torch.randn(3, 3, dtype=torch.float64)
    edge_index = torch.tensor([[4, 0], [2, 1]])
    assert compute_basis((pos_src, pos_dst), edge_index, 1).num_edges == 2
    with pytest.raises(ValueError, match=r"edge_index: target indices must lie in \[0, 3\)"):
        compute_basis((pos_src, pos_dst), torch.tensor([[0], [3]]), 1)
    bad = pos_dst.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"pos\[1\]: contains NaN or inf"):
        compute_basis((pos_src, bad), edge_index, 1)
    with pytest.raises(ValueError, match=r"pos: expected a tensor or a pair"):
        compute_basis((pos_src, pos_dst, pos_dst), edge_index, 1)


LAYERS = {
    "conv": lambda: SE3Conv(FIBER_IN, FIBER_HIDDEN),
    "attention": lambda: SE3Attention(FIBER_IN, FIBER_HIDDEN, num_heads=1),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_given_a_basis_still_checks_the_shape_of_pos(name):
    layer = LAYERS[name]().double()
    x, pos = cloud()
    edge_index = complete_edge_index(NUM_NODES)
    basis = compute_basis(pos, edge_index, layer.max_degree)
    assert layer(x, pos, edge_index, basis=basis).shape == (NUM_NODES, FIBER_HIDDEN.dim)
    with pytest.raises(ValueError, match=r"pos: expected a \[N, 3\] tensor"):
        layer(x, pos[:, :2], edge_index, basis=basis)
    with pytest.raises(ValueError, match="pos: expected 6 rows"):
        layer(x, pos[:4], edge_index, basis=basis)
    with pytest.raises(ValueError, match="pos: expected a floating-point tensor"):
        layer(x, pos.long(), edge_index, basis=basis)
    bipartite = edge_index[:, edge_index[1] < 2]
    basis = compute_basis((pos, pos[:2]), bipartite, layer.max_degree)
    assert layer((x, x[:2]), (pos, pos[:2]), bipartite, basis=basis).shape == (2, FIBER_HIDDEN.dim)
    with pytest.raises(ValueError, match=r"pos\[1\]: expected 2 rows"):
        layer((x, x[:2]), (pos, pos), bipartite, basis=basis)
    with pytest.raises(ValueError, match=r"pos: a bipartite x = \(x_src, x_dst\) needs pos = \(pos_src, pos_dst\)"):
        layer((x, x[:2]), pos, bipartite, basis=basis)


@pytest.mark.parametrize("kernel", ["full", "depthwise"])
def test_empty_fibers_are_refused_by_edge_kernels(kernel):
    with pytest.raises(ValueError, match=r"fiber_in: expected at least one degree"):
        SE3Conv(Fiber({}), FIBER_OUT, kernel=kernel)
    with pytest.raises(ValueError, match=r"fiber_out: expected at least one degree"):
        SE3Conv(FIBER_IN, Fiber({}), kernel=kernel)
