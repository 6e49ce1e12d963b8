"""Value checks (finite positions, indices in range, graph indices) read tensors back to the host: a model runs each
once per call (the iterative model: once per iteration, in its graph builder), not once per layer; on a GPU they
run only in debug mode, so that a forward pass never synchronises with the device."""

import collections
import sys
import threading

import pytest
import torch
import torch_geometric
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from pyg_se3 import Fiber, checks
from pyg_se3.graph import KNN
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import SE3Attention

FIBER_IO = Fiber({0: 1, 1: 1})
FIBER_HIDDEN = Fiber({0: 4, 1: 4})


@pytest.fixture
def value_checks(monkeypatch):
    """Counts, per check function, the value checks that ran (each is one read-back)."""
    counts = collections.Counter()
    original = checks.checking_values

    def counting(device=None):
        running = original(device)
        if running:
            counts[sys._getframe(1).f_code.co_name] += 1
        return running

    monkeypatch.setattr(checks, "checking_values", counting)
    return counts


def two_clouds():
    """A batch of two point clouds (14 nodes) with kNN graphs, as a PyG ``DataLoader`` makes it."""
    g = torch.Generator().manual_seed(0)
    clouds = []
    with checks.no_value_checks():  # the kNN graph builder's checks are not the model's
        for n in (6, 8):
            pos = torch.randn(n, 3, generator=g)
            clouds.append(Data(x=torch.randn(n, FIBER_IO.dim, generator=g), pos=pos, edge_index=KNN(4)(pos)))
    return next(iter(DataLoader(clouds, batch_size=2)))


@pytest.mark.parametrize("checkpoint", [False, True])
def test_transformer_checks_each_value_once_per_call(value_checks, checkpoint):
    """Positions, edge indices and graph indices once each, in the forward and the backward pass, also with
    activation checkpointing, whose groups call every layer on a bipartite graph (and again in the backward
    pass): without the model's no_value_checks each such call would check its edge indices."""
    model = SE3Transformer(
        FIBER_IO, FIBER_HIDDEN, FIBER_IO, num_layers=2, num_heads=2, pooling="mean", checkpoint=checkpoint
    )
    model.checkpoint_edges = 16  # several groups of target nodes
    batch = two_clouds()
    pos = batch.pos.requires_grad_(True)
    model(batch.x, pos, batch.edge_index, batch=batch.batch).square().sum().backward()
    assert pos.grad.abs().max() > 0
    assert value_checks == {"check_pos": 1, "check_edge_index": 1, "check_batch": 1}


def test_layers_called_directly_still_check_their_inputs(value_checks):
    layer = SE3Attention(FIBER_IO, FIBER_HIDDEN, num_heads=2)
    batch = two_clouds()
    layer(batch.x, batch.pos, batch.edge_index)
    assert value_checks == {"check_pos": 1, "check_edge_index": 1}
    with checks.no_value_checks():
        layer(batch.x, batch.pos, batch.edge_index)
    assert value_checks == {"check_pos": 1, "check_edge_index": 1}
    bad = batch.edge_index.clone()
    bad[0, 0] = batch.num_nodes
    with pytest.raises(ValueError, match=r"^edge_index: node indices must lie in \[0, 14\)"):
        layer(batch.x, batch.pos, bad)


@pytest.mark.parametrize("share_weights", [False, True])
def test_iterative_model_checks_each_value_once_per_iteration(value_checks, share_weights):
    """The graph builder checks the positions and graph indices it gets, once per iteration; the blocks, which run
    on its graph, check nothing again (they would check positions and edge indices once more per iteration)."""
    model = IterativeSE3Transformer(
        FIBER_IO, FIBER_HIDDEN, num_iterations=3, num_heads=2, graph=KNN(4), share_weights=share_weights
    )
    batch = two_clouds()
    pos = batch.pos.requires_grad_(True)
    out = model(batch.x, pos, batch.batch)
    (out.pos.square().sum() + out.x.square().sum()).backward()
    assert pos.grad.abs().max() > 0
    assert value_checks["check_pos"] >= 1  # the graph builder's
    assert all(count <= 3 for count in value_checks.values()), value_checks


def test_value_checks_run_on_the_cpu_and_on_gpus_only_in_debug_mode():
    assert checks.checking_values("cpu") and checks.checking_values(torch.device("cpu"))
    assert not checks.checking_values("cuda") and not checks.is_debug_enabled()
    with checks.debug():
        assert checks.checking_values("cuda") and checks.is_debug_enabled()
    assert not checks.checking_values("cuda")
    with torch_geometric.debug():  # PyG's switch turns ours on too
        assert checks.checking_values("cuda")
    checks.set_debug(True)
    try:
        assert checks.checking_values("cuda")
    finally:
        checks.set_debug(False)
    assert not checks.checking_values("cuda")


def test_no_value_checks_is_scoped_to_its_thread():
    """A model running in one thread (inside no_value_checks) does not switch off the checks of a layer called in
    another."""
    inside, other = threading.Event(), []
    done = threading.Event()

    def model_call():
        with checks.no_value_checks():
            inside.set()
            done.wait(10)

    thread = threading.Thread(target=model_call)
    thread.start()
    assert inside.wait(10)
    other.append(checks.checking_values("cpu"))
    done.set()
    thread.join()
    assert other == [True]
    with checks.no_value_checks():
        assert not checks.checking_values("cpu")
        with checks.debug():  # debug mode does not undo a model's single check
            assert not checks.checking_values("cpu")
    assert checks.checking_values("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_forward_on_cuda_does_not_synchronise():
    """With debug mode off, a forward pass of the SE(3)-Transformer on a GPU never waits for the device:
    ``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising call into an error."""
    model = SE3Transformer(FIBER_IO, FIBER_HIDDEN, FIBER_IO, num_layers=2, num_heads=2).cuda()
    batch = two_clouds().cuda()  # the graph is built on the CPU: torch-cluster's kNN synchronises
    pos = batch.pos.requires_grad_(True)
    model(batch.x, pos, batch.edge_index)  # the first call caches Clebsch-Gordan blocks on the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = model(batch.x, pos, batch.edge_index)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert out.shape == (batch.num_nodes, FIBER_IO.dim) and bool(torch.isfinite(out).all())
    with checks.debug(), pytest.raises(ValueError, match=r"^pos: contains NaN or inf"):  # and it still can check
        model(batch.x, pos.detach().index_fill(0, torch.tensor([1], device="cuda"), float("nan")), batch.edge_index)
