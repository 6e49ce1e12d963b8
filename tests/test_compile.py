"""``torch.compile``: the SE(3)-Transformer compiles to one graph (no graph breaks) and computes what eager mode
computes, values and gradients with respect to positions and parameters; new positions reuse the compiled code, and
batches of other node and edge counts (a PyG ``DataLoader``'s) reuse it too once it is shape-dynamic.
The iterative model compiles too, with a graph break at each neighbour search."""

import pytest
import torch
from helpers import relative_error, unzero_displacements
from torch._dynamo.utils import counters
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

import pyg_se3.nn.contraction
from pyg_se3 import Fiber
from pyg_se3.basis import _clebsch_gordan_block_op, clebsch_gordan_block
from pyg_se3.graph import KNN, Radius
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer

pytestmark = [
    # Dynamo instantiates torch.autograd.Function for the ctx of our custom autograd function and means to swallow
    # the resulting deprecation warning (warnings.catch_warnings(record=True) in torch/_dynamo/side_effects.py),
    # which does not stop an "error" filter from raising it. torch's own doing, not ours.
    pytest.mark.filterwarnings(
        "ignore:<class 'torch.autograd.function.Function'> should not be instantiated:DeprecationWarning"
    ),
    # Inductor imports torch.utils.mkldnn, which uses the deprecated torch.jit.script_method at import time.
    pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
]

FIBER_IO = Fiber({0: 1, 1: 1})


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()  # reset() leaves Dynamo's counters (of compiled graphs) alone
    yield
    torch._dynamo.reset()


def step(model, x, pos, edge_index, weights):
    """Output, and the gradients of a weighted sum of it with respect to the positions and every parameter."""
    pos = pos.clone().requires_grad_(True)
    out = model(x, pos, edge_index)
    grads = torch.autograd.grad((out * weights).sum(), [pos, *model.parameters()])
    return out.detach(), grads


@pytest.mark.slow
def test_compiled_model_matches_eager_values_and_gradients(fresh_dynamo, monkeypatch, one_thread):
    """The smallest model with everything in it: basis (degrees 0..1), one attention block with its norm, the output
    convolution. Chunk sizing is made tiny, so that the compiled contractions run several chunks (at most
    ``COMPILED_MAX_CHUNKS``: eager mode runs 6 of 8 edges, compiled code 4 of 12) through the loop that Dynamo
    unrolls."""
    monkeypatch.setattr(pyg_se3.nn.contraction, "_CHUNK_BYTES", {"cpu": 2**8, "cuda": 2**8})
    torch.manual_seed(0)
    model = SE3Transformer(FIBER_IO, Fiber({0: 4, 1: 4}), FIBER_IO, num_layers=1, num_heads=2)
    g = torch.Generator().manual_seed(1)
    x, weights = torch.randn(12, FIBER_IO.dim, generator=g), torch.randn(12, FIBER_IO.dim, generator=g)
    positions = [torch.randn(12, 3, generator=g) for _ in range(2)]
    graphs = [KNN(4)(pos) for pos in positions]  # 48 edges each

    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error
    with torch._dynamo.config.patch(error_on_recompile=True):  # the second point cloud reuses the compiled code
        for pos, edge_index in zip(positions, graphs, strict=True):
            want, want_grads = step(model, x, pos, edge_index, weights)
            got, got_grads = step(compiled, x, pos, edge_index, weights)
            assert want.abs().max() > 1e-2
            assert relative_error(got, want) < 1e-5
            for name, a, b in zip(["pos", *dict(model.named_parameters())], got_grads, want_grads, strict=True):
                assert b.abs().max() > 0, name
                assert relative_error(a, b) < 1e-4, name


def loader_batches():
    """Five batches of a PyG ``DataLoader`` (two point clouds each, kNN graphs of 3 to 5 neighbours): every batch
    has its own number of nodes and of edges."""
    g = torch.Generator().manual_seed(2)
    clouds = []
    for n in [7, 11, 9, 13, 8, 12, 10, 14, 6, 15]:
        pos = torch.randn(n, 3, generator=g)
        clouds.append(Data(x=torch.randn(n, FIBER_IO.dim, generator=g), pos=pos, edge_index=KNN(3 + n % 3)(pos)))
    batches = list(DataLoader(clouds, batch_size=2))
    assert len(batches) == 5
    assert len({b.num_nodes for b in batches}) == 5 and len({b.edge_index.shape[1] for b in batches}) == 5
    return batches


def check_over_batches(compiled, model, batches):
    """The compiled model computes eager mode's values and gradients on every batch."""
    g = torch.Generator().manual_seed(3)
    for batch in batches:
        weights = torch.randn(batch.num_nodes, FIBER_IO.dim, generator=g)
        want, want_grads = step(model, batch.x, batch.pos, batch.edge_index, weights)
        got, got_grads = step(compiled, batch.x, batch.pos, batch.edge_index, weights)
        assert want.abs().max() > 1e-2
        assert relative_error(got, want) < 1e-5
        for name, a, b in zip(["pos", *dict(model.named_parameters())], got_grads, want_grads, strict=True):
            assert b.abs().max() > 0, name
            assert relative_error(a, b) < 1e-4, name


@pytest.mark.slow
@pytest.mark.parametrize("dynamic, most", [(None, 2), (True, 1)])
def test_compiled_model_is_shape_dynamic_over_a_dataloader(dynamic, most, fresh_dynamo, monkeypatch, one_thread):
    """Five batches of different node and edge counts: compiled at most twice by default (Dynamo compiles the
    first batch's static shapes, and on the next batch marks the sizes that changed dynamic), once with
    ``dynamic=True``, and every batch computes what eager mode computes. Nothing in the model specialises the
    number of nodes or edges: chunk bounds are symbolic (``pyg_se3.nn.contraction._chunks``; 4 chunks of each batch's
    63..110 edges here, made tiny as in the test above). Dynamo and AOTAutograd only (``aot_eager``): the
    forward and backward graphs are traced with symbolic sizes; Inductor is the next test's."""
    monkeypatch.setattr(pyg_se3.nn.contraction, "_CHUNK_BYTES", {"cpu": 2**8, "cuda": 2**8})
    torch.manual_seed(0)
    model = SE3Transformer(FIBER_IO, Fiber({0: 4, 1: 4}), FIBER_IO, num_layers=1, num_heads=2)
    compiled = torch.compile(model, fullgraph=True, dynamic=dynamic, backend="aot_eager")
    check_over_batches(compiled, model, loader_batches())
    assert 1 <= counters["stats"]["unique_graphs"] <= most


@pytest.mark.slow
def test_pooled_model_compiles_to_one_graph(fresh_dynamo, one_thread):
    """A pooled model compiles with ``fullgraph=True`` (Dynamo only: graph breaks are the point here), with
    ``num_graphs`` (PyG's ``data.num_graphs``) or without it (the number of graphs then comes from ``batch``
    inside the graph), and pools as eager mode on batches of different sizes."""
    torch.manual_seed(0)
    model = SE3Transformer(FIBER_IO, Fiber({0: 4, 1: 4}), FIBER_IO, num_layers=1, num_heads=2, pooling="sum")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend="eager")
    for batch in loader_batches()[:3]:
        args = (batch.x, batch.pos, batch.edge_index)
        want = model(*args, batch=batch.batch)
        assert want.shape == (2, FIBER_IO.dim) and want.abs().max() > 1e-2
        for num_graphs in (batch.num_graphs, None):
            got = compiled(*args, batch=batch.batch, num_graphs=num_graphs)
            assert relative_error(got, want) < 1e-6


@pytest.mark.slow
def test_compiled_model_with_inductor_compiles_once_over_a_dataloader(fresh_dynamo, one_thread):
    """Inductor generates code for symbolic sizes (``dynamic=True``: one compilation, the slow part, rather than
    the two of the default, whose second is the same code generation) that computes eager mode's values and
    gradients on five batches of different node and edge counts."""
    torch.manual_seed(0)
    model = SE3Transformer(FIBER_IO, Fiber({0: 4, 1: 4}), FIBER_IO, num_layers=1, num_heads=2)
    check_over_batches(torch.compile(model, fullgraph=True, dynamic=True), model, loader_batches())
    assert counters["stats"]["unique_graphs"] == 1


# Resuming after the graph break of the neighbour search, Dynamo probes `.grad` of the (non-leaf) positions; torch
# hides that warning itself (torch._logging.hide_warnings in torch/_dynamo/variables/builder.py), which does not
# stop an "error" filter from raising it. pyg_se3 never reads .grad.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf Tensor:UserWarning")
@pytest.mark.parametrize("graph", [KNN(4), Radius(1.5)])
def test_compiled_iterative_model_matches_eager(graph, fresh_dynamo, one_thread):
    """The iterative model compiles with one graph break per iteration, at the neighbour search (torch-cluster,
    a data-dependent number of edges), and computes what eager mode computes, through two graph rebuilds. Dynamo and
    AOTAutograd only (``aot_eager``): Inductor's code generation is what the test above exercises."""
    torch.manual_seed(0)
    model = IterativeSE3Transformer(
        FIBER_IO, Fiber({0: 4, 1: 4}), num_iterations=2, num_heads=2, graph=graph, displacement_scale=0.1
    )
    model = unzero_displacements(model)
    g = torch.Generator().manual_seed(1)
    x, pos = torch.randn(12, FIBER_IO.dim, generator=g), torch.randn(12, 3, generator=g)
    results = []
    for runner in (model, torch.compile(model, backend="aot_eager")):
        p = pos.clone().requires_grad_(True)
        out = runner(x, p)
        grads = torch.autograd.grad(out.pos.square().sum() + out.x.square().sum(), [p, *model.parameters()])
        results.append((out, grads))
    (want, want_grads), (got, got_grads) = results
    assert (want.pos - pos).abs().max() > 1e-2  # the points moved
    assert all(torch.equal(a, b) for a, b in zip(got.edge_indices, want.edge_indices, strict=True))
    assert relative_error(got.pos, want.pos) < 1e-6 and relative_error(got.x, want.x) < 1e-6
    assert all(relative_error(a, b) < 1e-5 for a, b in zip(got_grads, want_grads, strict=True))


@pytest.mark.parametrize("parity", [False, True])
@pytest.mark.parametrize("k, l", [(0, 0), (2, 1), (1, 3)])
def test_clebsch_gordan_operator_for_the_compiler(k, l, parity):
    """What compiled code uses instead of the in-memory cache: the same coefficients, in a fresh tensor (compiled
    code may write into an operator's output), with a fake implementation of the right shape (torch's opcheck)."""
    cpu = torch.device("cpu")
    cached = clebsch_gordan_block(k, l, torch.float64, cpu, parity)
    fresh = _clebsch_gordan_block_op(k, l, torch.float64, cpu, parity)
    assert torch.equal(fresh, cached) and fresh.data_ptr() != cached.data_ptr()
    torch.library.opcheck(_clebsch_gordan_block_op, (k, l, torch.float32, cpu, parity))
