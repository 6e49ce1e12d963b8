"""``torch.compile``: the SE(3)-Transformer compiles to one graph (no graph breaks) and computes what eager mode
computes, values and gradients with respect to positions and parameters; new positions reuse the compiled code.
The iterative model compiles too, with a graph break at each neighbour search."""

import pytest
import torch
from helpers import relative_error, unzero_displacements

import pyg_se3.nn.kernel
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
    monkeypatch.setattr(pyg_se3.nn.kernel, "_CHUNK_BYTES", {"cpu": 2**8, "cuda": 2**8})
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


# Resuming after the graph break of the neighbour search, Dynamo probes `.grad` of the (non-leaf) positions; torch
# hides that warning itself (torch._logging.hide_warnings in torch/_dynamo/variables/builder.py), which does not
# stop an "error" filter from raising it. pyg_se3 never reads .grad.
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


@pytest.mark.parametrize("k, l", [(0, 0), (2, 1), (1, 3)])
def test_clebsch_gordan_operator_for_the_compiler(k, l):
    """What compiled code uses instead of the in-memory cache: the same coefficients, in a fresh tensor (compiled
    code may write into an operator's output), with a fake implementation of the right shape (torch's opcheck)."""
    cpu = torch.device("cpu")
    cached = clebsch_gordan_block(k, l, torch.float64, cpu)
    fresh = _clebsch_gordan_block_op(k, l, torch.float64, cpu)
    assert torch.equal(fresh, cached) and fresh.data_ptr() != cached.data_ptr()
    torch.library.opcheck(_clebsch_gordan_block_op, (k, l, torch.float32, cpu))
