"""PyG idioms of the equivariant graph layers (:class:`~pyg_se3.nn.SE3Conv`, :class:`~pyg_se3.nn.SE3Attention`):
keyword-only options, ``MessagePassing`` keyword arguments, ``edge_index`` as a tensor, an ``EdgeIndex`` or a sparse
adjacency ``adj_t`` (indexed ``[target, source]``), attention weights and their dropout, an optional ``pos`` given a
basis, and PyG-style ``repr``."""

import math

import pytest
import torch
from torch_geometric import EdgeIndex
from torch_geometric.utils import (
    scatter,
    to_edge_index,
    to_torch_coo_tensor,
    to_torch_csc_tensor,
    to_torch_csr_tensor,
)

from pyg_se3 import Fiber
from pyg_se3.basis import compute_basis
from pyg_se3.graph import KNN
from pyg_se3.nn import SE3Attention, SE3Conv
from pyg_se3.testing import assert_equivariant

FIBER_IN, FIBER_OUT = Fiber({0: 2, 1: 2}), Fiber({0: 4, 1: 4})
HEADS, EDGE_DIM, N = 2, 2, 9
SMALL = {"radial_hidden": 8, "edge_dim": EDGE_DIM}
TOL = {"atol": 1e-12, "rtol": 1e-12}

pytestmark = [
    # torch's one-time notices on building sparse tensors (the test's adjacencies); nothing of ours.
    pytest.mark.filterwarnings("ignore:Sparse invariant checks are implicitly disabled:UserWarning"),
    pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta state:UserWarning"),
    # Dynamo's own swallowed deprecation warning (see tests/test_compile.py).
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
    ),
]


def make(name: str, **kwargs):
    torch.manual_seed(0)
    if name == "conv":
        return SE3Conv(FIBER_IN, FIBER_OUT, **SMALL, **kwargs).double()
    return SE3Attention(FIBER_IN, FIBER_OUT, num_heads=HEADS, **SMALL, **kwargs).double()


def graph(seed: int = 1, num_nodes: int = N):
    """Features, positions, a kNN graph with its edges shuffled, and invariant edge features."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, FIBER_IN.dim, generator=g, dtype=torch.float64)
    pos = torch.randn(num_nodes, 3, generator=g, dtype=torch.float64)
    edge_index = KNN(3)(pos)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=g)]
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=g, dtype=torch.float64)
    return x, pos, edge_index, edge_attr


def bipartite_graph(seed: int = 2):
    """Seven sources and four targets (target 3 receives no edge), edges not sorted in any way."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(7, FIBER_IN.dim, generator=g, dtype=torch.float64),)
    x = (*x, torch.randn(4, FIBER_IN.dim, generator=g, dtype=torch.float64))
    pos = (torch.randn(7, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64))
    edge_index = torch.tensor([[3, 0, 6, 1, 5, 2, 0, 4], [1, 2, 0, 2, 1, 0, 0, 2]])
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=g, dtype=torch.float64)
    return x, pos, edge_index, edge_attr


def as_adjacency(form: str, edge_index, num_nodes: tuple[int, int]):
    """``edge_index`` in ``form``: an ``EdgeIndex`` or a sparse ``adj_t [N_dst, N_src]`` (PyG's convention)."""
    if form == "EdgeIndex":
        return EdgeIndex(edge_index, sparse_size=num_nodes)
    if form == "EdgeIndex-sorted":
        return EdgeIndex(edge_index, sparse_size=num_nodes).sort_by("col")[0]
    if form == "EdgeIndex-unsized":
        return EdgeIndex(edge_index)
    convert = {"coo": to_torch_coo_tensor, "csr": to_torch_csr_tensor, "csc": to_torch_csc_tensor}[form]
    return convert(edge_index.flip(0), size=(num_nodes[1], num_nodes[0]))


def storage_order(adjacency, edge_index, num_sources: int):
    """``perm`` with ``edge_index[:, perm]`` the (source, target) edges of ``adjacency`` in its own order."""
    if isinstance(adjacency, EdgeIndex):
        edges = adjacency.as_tensor()
    elif adjacency.layout == torch.strided:
        edges = adjacency
    else:
        edges = to_edge_index(adjacency)[0].flip(0)
    keys = edge_index[1] * num_sources + edge_index[0]
    order = torch.argsort(keys)
    perm = order[torch.searchsorted(keys[order], edges[1] * num_sources + edges[0])]
    assert torch.equal(edge_index[:, perm], edges)
    return perm


# --- constructor -----------------------------------------------------------------------------------------------------


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        SE3Attention(FIBER_IN, FIBER_OUT, HEADS)
    with pytest.raises(TypeError):
        SE3Conv(FIBER_IN, FIBER_OUT, EDGE_DIM)
    assert SE3Attention(FIBER_IN, FIBER_OUT, num_heads=HEADS).num_heads == HEADS


@pytest.mark.parametrize(
    "name, setting, value",
    [
        ("conv", "node_dim", 1),
        ("attention", "node_dim", -2),
        ("conv", "flow", "target_to_source"),
        ("attention", "flow", "target_to_source"),
        ("conv", "decomposed_layers", 2),
        ("attention", "decomposed_layers", 2),
        ("attention", "aggr", "mean"),
    ],
)
def test_settings_fixed_by_the_maths_are_refused_by_name(name, setting, value):
    with pytest.raises(ValueError, match=rf"^{setting}: "):
        make(name, **{setting: value})


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_the_fixed_settings_themselves_are_accepted(name):
    extra = {"aggr": "sum"} if name == "attention" else {}
    layer = make(name, node_dim=0, flow="source_to_target", decomposed_layers=1, **extra)
    assert (layer.node_dim, layer.flow, layer.decomposed_layers) == (0, "source_to_target", 1)
    x, pos, edge_index, edge_attr = graph()
    torch.testing.assert_close(layer(x, pos, edge_index, edge_attr), make(name)(x, pos, edge_index, edge_attr))


def test_message_passing_kwargs_reach_the_aggregation():
    """``aggr_kwargs`` goes to PyG's aggregation: a softmax aggregation at temperature 0 weighs every message
    equally, which is the mean; at temperature 1 it is not."""
    x, pos, edge_index, edge_attr = graph()
    mean = make("conv", aggr="mean")(x, pos, edge_index, edge_attr)
    uniform = make("conv", aggr="softmax", aggr_kwargs={"t": 0.0})
    assert uniform.aggr_module.t == 0.0
    torch.testing.assert_close(uniform(x, pos, edge_index, edge_attr), mean, **TOL)
    tempered = make("conv", aggr="softmax", aggr_kwargs={"t": 1.0})(x, pos, edge_index, edge_attr)
    assert (tempered - mean).abs().max() > 1e-3


# --- edge_index forms ------------------------------------------------------------------------------------------------

FORMS = ["EdgeIndex", "EdgeIndex-sorted", "EdgeIndex-unsized", "coo", "csr", "csc"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", ["conv", "attention"])
@pytest.mark.parametrize("bipartite", [False, True], ids=["graph", "bipartite"])
def test_edge_index_forms_give_the_plain_result(name, form, bipartite):
    """Same output as the ``[2, E]`` tensor, to float64 rounding; ``edge_attr`` follows the adjacency's storage
    order (for a sparse ``adj_t``: ``to_edge_index``'s order, here sorted by target, then source)."""
    x, pos, edge_index, edge_attr = bipartite_graph() if bipartite else graph()
    sizes = (x[0].shape[0], x[1].shape[0]) if bipartite else (N, N)
    layer = make(name)
    want = layer(x, pos, edge_index, edge_attr)
    adjacency = as_adjacency(form, edge_index, sizes)
    perm = storage_order(adjacency, edge_index, sizes[0])
    if form not in ("EdgeIndex", "EdgeIndex-unsized"):
        assert not torch.equal(perm, torch.arange(len(perm)))  # the order really changed
    got = layer(x, pos, adjacency, edge_attr[perm])
    assert want.abs().max() > 1e-2
    torch.testing.assert_close(got, want, **TOL)


def test_a_sorted_edge_index_reaches_propagate():
    """An ``EdgeIndex`` of the right size, sorted by target, is what ``propagate`` sees: it hands the layer CSC
    pointers (segment reductions instead of scatters), with the same result."""
    x, pos, edge_index, edge_attr = graph()
    layer = make("attention")
    seen = []
    layer.register_message_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]["ptr"]))
    want = layer(x, pos, edge_index, edge_attr)
    adjacency = as_adjacency("EdgeIndex-sorted", edge_index, (N, N))
    got = layer(x, pos, adjacency, edge_attr[storage_order(adjacency, edge_index, N)])
    assert seen[0] is None and seen[1] is not None and seen[1].numel() == N + 1
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_a_basis_with_a_sparse_adjacency_must_be_of_its_edge_order(name):
    x, pos, edge_index, edge_attr = graph()
    layer = make(name)
    adj_t = as_adjacency("coo", edge_index, (N, N))
    edges = to_edge_index(adj_t)[0].flip(0)
    perm = storage_order(adj_t, edge_index, N)
    basis = compute_basis(pos, edges, layer.max_degree)
    want = layer(x, pos, edge_index, edge_attr)
    torch.testing.assert_close(layer(x, None, adj_t, edge_attr[perm], basis=basis), want, **TOL)
    with pytest.raises(ValueError, match=r"^basis: computed for other edges than those of the sparse adjacency"):
        layer(x, None, adj_t, edge_attr[perm], basis=compute_basis(pos, edge_index, layer.max_degree))
    with pytest.raises(ValueError, match=r"^basis: computed for other edges"):
        layer(x, None, adj_t, edge_attr[perm], basis=compute_basis(pos, edges[:, 1:], layer.max_degree))


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_adjacencies_of_the_wrong_size_name_edge_index(name):
    x, pos, edge_index, edge_attr = graph()
    layer = make(name)
    with pytest.raises(ValueError, match=r"^edge_index: a sparse adjacency adj_t must be \[N_dst, N_src\]"):
        layer(x, pos, to_torch_coo_tensor(edge_index.flip(0), size=(N + 1, N)), edge_attr)
    with pytest.raises(ValueError, match=r"^edge_index: an EdgeIndex of sparse size"):
        layer(x, pos, EdgeIndex(edge_index, sparse_size=(N, N + 2)), edge_attr)


# --- attention weights -----------------------------------------------------------------------------------------------


def reference_attention(layer: SE3Attention, x, pos, edge_index, edge_attr, edge_weight=None):
    """Attention weights and output recomputed edge by edge and node by node from the layer's maps."""
    src, dst = edge_index
    basis = compute_basis(pos, edge_index, layer.max_degree)
    key_value = layer.to_key_value.forward_blocks(x[src], basis, edge_attr)
    query = layer.key_fiber.split(layer.to_query(x))
    logits = torch.zeros(edge_index.shape[1], HEADS, dtype=x.dtype)
    for h in range(HEADS):
        for d, c in layer.key_fiber:
            heads = slice(h * c // HEADS, (h + 1) * c // HEADS)
            logits[:, h] += (key_value[d][:, :c][:, heads] * query[d][dst][:, heads]).sum((1, 2))
    logits = logits / math.sqrt(layer.key_fiber.dim / HEADS)
    alpha = torch.zeros_like(logits)
    for i in range(x.shape[0]):
        into = dst == i
        terms = torch.exp(logits[into] - logits[into].max(0).values)
        if edge_weight is not None:
            terms = terms * edge_weight[into, None]
        alpha[into] = terms / terms.sum(0)
    attended = {}
    for d, c in layer.value_fiber:
        values = key_value[d][:, layer.key_fiber[d] :].unflatten(1, (HEADS, c // HEADS))
        weighted = (values * alpha[:, :, None, None]).flatten(1, 2)
        attended[d] = scatter(weighted, dst, dim=0, dim_size=x.shape[0], reduce="sum")
    out = layer.project(Fiber.cat(layer.value_fiber.join(attended), layer.value_fiber, x, FIBER_IN))
    return alpha, out


@pytest.mark.parametrize("weighted", [False, True], ids=["softmax", "envelope"])
def test_attention_weights_are_the_softmax_weights_used(weighted):
    x, pos, edge_index, edge_attr = graph()
    edge_weight = torch.rand(edge_index.shape[1], dtype=torch.float64) if weighted else None
    layer = make("attention")
    out, (returned, alpha) = layer(
        x, pos, edge_index, edge_attr, edge_weight=edge_weight, return_attention_weights=True
    )
    assert returned is edge_index and alpha.shape == (edge_index.shape[1], HEADS)
    torch.testing.assert_close(out, layer(x, pos, edge_index, edge_attr, edge_weight=edge_weight), rtol=0, atol=0)
    totals = scatter(alpha, edge_index[1], dim=0, dim_size=N, reduce="sum")
    torch.testing.assert_close(totals, torch.ones(N, HEADS, dtype=torch.float64), **TOL)
    want_alpha, want_out = reference_attention(layer, x, pos, edge_index, edge_attr, edge_weight)
    torch.testing.assert_close(alpha, want_alpha, **TOL)
    torch.testing.assert_close(out, want_out, **TOL)
    assert alpha.std() > 1e-3  # not uniform: the test can tell weights apart
    assert layer._alpha is None  # not kept after the call


@pytest.mark.parametrize("form", ["EdgeIndex", "coo", "csr"])
def test_attention_weights_follow_the_adjacency(form):
    """For an ``EdgeIndex`` the pair is ``(edge_index, alpha)``; for a ``torch.sparse`` ``adj_t`` it is
    ``(adj_t with values alpha, alpha)`` (as ``GATConv``), ``alpha`` in the adjacency's storage order."""
    x, pos, edge_index, edge_attr = graph()
    layer = make("attention")
    _, (_, want) = layer(x, pos, edge_index, edge_attr, return_attention_weights=True)
    adjacency = as_adjacency(form, edge_index, (N, N))
    perm = storage_order(adjacency, edge_index, N)
    _, (returned, alpha) = layer(x, pos, adjacency, edge_attr[perm], return_attention_weights=True)
    torch.testing.assert_close(alpha, want[perm], **TOL)
    if form == "EdgeIndex":
        assert returned is adjacency
    else:
        assert returned.layout == adjacency.layout and returned.shape == (N, N, HEADS)
        dense = returned.to_dense()
        torch.testing.assert_close(dense[edge_index[1], edge_index[0]], want, **TOL)


def test_dropout_of_attention_weights():
    x, pos, edge_index, edge_attr = graph()
    plain, dropped = make("attention"), make("attention", dropout=0.5)
    want, (_, want_alpha) = plain(x, pos, edge_index, edge_attr, return_attention_weights=True)
    dropped.eval()
    torch.testing.assert_close(dropped(x, pos, edge_index, edge_attr), want, rtol=0, atol=0)
    dropped.train()
    torch.manual_seed(3)
    first, (_, alpha) = dropped(x, pos, edge_index, edge_attr, return_attention_weights=True)
    second = dropped(x, pos, edge_index, edge_attr)
    assert (first - want).abs().max() > 1e-3 and (first - second).abs().max() > 1e-3
    torch.testing.assert_close(alpha, want_alpha, rtol=0, atol=0)  # the weights before dropout
    plain.train()  # p = 0: training mode changes nothing
    torch.testing.assert_close(plain(x, pos, edge_index, edge_attr), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^dropout: "):
        make("attention", dropout=1.0)


@pytest.mark.slow
def test_attention_weights_compile_without_graph_breaks():
    x, pos, edge_index, edge_attr = graph()
    layer = make("attention")
    want, (_, want_alpha) = layer(x, pos, edge_index, edge_attr, return_attention_weights=True)
    torch._dynamo.reset()
    try:
        compiled = torch.compile(layer, fullgraph=True, backend="eager")
        torch.testing.assert_close(compiled(x, pos, edge_index, edge_attr), want, **TOL)
        out, (_, alpha) = compiled(x, pos, edge_index, edge_attr, return_attention_weights=True)
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(alpha, want_alpha, **TOL)


# --- equivariance through the new paths ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["EdgeIndex-sorted", "csr"])
@pytest.mark.parametrize("name", ["conv", "attention"])
def test_equivariant_through_edge_index_forms(name, form):
    torch.manual_seed(0)
    kwargs = {"num_heads": HEADS} if name == "attention" else {}
    layer = (SE3Attention if name == "attention" else SE3Conv)(FIBER_IN, FIBER_OUT, radial_hidden=8, **kwargs).double()

    def call(module, x, pos, edge_index):
        return module(x, pos, as_adjacency(form, edge_index, (x.shape[0], x.shape[0])))

    assert_equivariant(layer, FIBER_IN, FIBER_OUT, call=call)


def test_attention_weights_are_invariant():
    torch.manual_seed(0)
    layer = SE3Attention(FIBER_IN, FIBER_OUT, num_heads=HEADS, radial_hidden=8, dropout=0.3).double().eval()

    def call(module, x, pos, edge_index):
        out, (_, alpha) = module(x, pos, edge_index, return_attention_weights=True)
        return {"x": out, "alpha": alpha}

    assert_equivariant(layer, FIBER_IN, {"x": FIBER_OUT, "alpha": Fiber({0: HEADS})}, call=call)


# --- pos and basis ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["conv", "attention"])
def test_pos_is_optional_given_a_basis(name):
    x, pos, edge_index, edge_attr = graph()
    layer = make(name, relative_position=True)
    basis = compute_basis(pos, edge_index, layer.max_degree)
    want = layer(x, pos, edge_index, edge_attr)
    torch.testing.assert_close(layer(x, None, edge_index, edge_attr, basis=basis), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^pos: .*basis"):
        layer(x, None, edge_index, edge_attr)


# --- repr ------------------------------------------------------------------------------------------------------------


def test_repr_in_pyg_style():
    assert repr(SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2)) == (
        "SE3Attention(Fiber({0: 2, 1: 2}), Fiber({0: 4, 1: 4}), num_heads=2)"
    )
    assert repr(SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2, kernel="depthwise", dropout=0.1)) == (
        "SE3Attention(Fiber({0: 2, 1: 2}), Fiber({0: 4, 1: 4}), num_heads=2, kernel='depthwise', dropout=0.1)"
    )
    assert repr(SE3Conv(FIBER_IN, FIBER_OUT)) == "SE3Conv(Fiber({0: 2, 1: 2}), Fiber({0: 4, 1: 4}))"
    assert repr(SE3Conv(FIBER_IN, FIBER_OUT, edge_dim=3, aggr="mean", self_interaction=False)) == (
        "SE3Conv(Fiber({0: 2, 1: 2}), Fiber({0: 4, 1: 4}), edge_dim=3, self_interaction=False, aggr='mean')"
    )
