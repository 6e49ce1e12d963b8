"""The Iterative SE(3)-Transformer: equivariance through graph rebuilds, gradients through the basis,
continuity with the smooth envelope, batching."""

from itertools import pairwise

import pytest
import torch
from helpers import relative_error, unzero_displacements
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

import pyg_se3.basis
from pyg_se3 import Fiber
from pyg_se3.graph import KNN, Complete, Radius
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.testing import assert_equivariant

FIBER_IN = Fiber({0: 1, 1: 1})
FIBER_HIDDEN = Fiber({0: 4, 1: 4, 2: 4})
GRAPHS = {"radius": lambda: Radius(1.6, max_num_neighbors=32), "knn": lambda: KNN(4), "complete": Complete}


def make_model(graph="complete", share_weights=False, **kwargs):
    kwargs = {"num_iterations": 3, "layers_per_iteration": 2, "num_heads": 2, **kwargs}
    model = IterativeSE3Transformer(
        FIBER_IN,
        FIBER_HIDDEN,
        graph=GRAPHS[graph]() if isinstance(graph, str) else graph,
        share_weights=share_weights,
        **kwargs,
    )
    return unzero_displacements(model.double())


@pytest.mark.parametrize("kernel", ["full", "depthwise"])
def test_untrained_model_leaves_points_in_place_and_learns(kernel, device):
    model = IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, num_iterations=2, num_heads=2, kernel=kernel)
    model = model.double().to(device)
    x, pos = point_cloud(device=device)
    out = model(x, pos)
    torch.testing.assert_close(out.pos, pos, atol=0, rtol=0)
    assert FIBER_HIDDEN.split(out.x)[1].abs().max() > 1e-3  # the hidden type-1 channels are not zeroed
    (out.pos - torch.randn(pos.shape, dtype=pos.dtype).to(device)).square().sum().backward()
    output_kernel = model.blocks[0].output.kernel
    zeroed = output_kernel.radial.heads[1] if kernel == "full" else output_kernel.mix  # what zero_output_ zeroed
    assert max(float(p.grad.abs().max()) for p in zeroed.parameters()) > 1e-6


def point_cloud(n=8, seed=0, device="cpu"):
    """Features and positions, drawn on the CPU (a CPU generator) and moved to ``device``: the same values on
    every device."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FIBER_IN.dim, generator=g, dtype=torch.float64)
    pos = torch.randn(n, 3, generator=g, dtype=torch.float64)
    return x.to(device), pos.to(device)


@pytest.mark.parametrize(
    "graph, share_weights, kernel",
    [(g, s, "full") for g in GRAPHS for s in (False, True)] + [("radius", False, "depthwise")],
)
def test_equivariance_including_graph_rebuilds(graph, share_weights, kernel, device, num_rotations):
    """Final positions, hidden fiber and every step of the trajectory: random rotations, each with a translation,
    a pure translation and a permutation of the nodes."""
    model = make_model(graph, share_weights, kernel=kernel).to(device)
    x, pos = (t.to(device) for t in point_cloud())
    with torch.no_grad():
        out = model(x, pos)
    assert (out.pos - pos).abs().max() > 1e-4  # the points did move
    errors = assert_equivariant(
        model, FIBER_IN, FIBER_HIDDEN, x=x, pos=pos, num_rotations=min(5, num_rotations), rtol=1e-9, atol=0.0
    )
    assert len(errors.rotations) == min(5, num_rotations)


def test_hidden_fiber_is_carried_without_bottleneck(device):
    model = make_model().to(device)
    x, pos = point_cloud(device=device)
    out = model(x, pos)
    assert out.x.shape == (8, FIBER_HIDDEN.dim)
    blocks = FIBER_HIDDEN.split(out.x)
    assert all(b.abs().max() > 1e-3 for b in blocks.values())
    assert len(out.trajectory) == 4 and torch.equal(out.trajectory[0], pos) and out.num_iterations == 3
    # the second block reads the whole hidden fiber of the first
    assert model.blocks[1].fiber_in == FIBER_HIDDEN


def test_gradient_through_basis_differs_from_detached(device):
    model = make_model().to(device)
    x, pos = point_cloud(device=device)
    target = torch.randn(pos.shape, dtype=pos.dtype).to(device)
    grads = {}
    for detach in (False, True):
        model.zero_grad()
        loss = (model(x, pos, detach_basis=detach).pos - target).square().mean()
        loss.backward()
        grads[detach] = torch.cat([p.grad.flatten() for p in model.blocks[0].parameters() if p.grad is not None])
    assert relative_error(grads[True], grads[False]) > 1e-3


def test_gradcheck_whole_model_wrt_input_positions(device):
    model = IterativeSE3Transformer(
        FIBER_IN, Fiber({0: 2, 1: 2}), num_iterations=2, layers_per_iteration=1, num_heads=2, graph=Complete()
    )
    model = unzero_displacements(model.double()).to(device)
    x, pos = point_cloud(4, device=device)
    pos.requires_grad_(True)
    # CUDA's atomic scatter-adds may sum in another order on the second backward pass that gradcheck runs to check
    # reentrancy; the CPU's backward is deterministic (exact, as before)
    nondet_tol = 0.0 if device.type == "cpu" else 1e-10
    assert torch.autograd.gradcheck(lambda p: model(x, p).pos, (pos,), nondet_tol=nondet_tol)


def test_edge_set_changes_when_points_cross_the_cutoff(device):
    """The graph is really rebuilt: large displacements move pairs across the radius between iterations."""
    torch.manual_seed(3)
    model = IterativeSE3Transformer(
        FIBER_IN, FIBER_HIDDEN, num_iterations=3, layers_per_iteration=1, num_heads=2, graph=Radius(1.0)
    )
    model = unzero_displacements(model.double())
    with torch.no_grad():  # make the displacements large so points cross the cutoff
        for block in model.blocks:
            for p in block.output.parameters():
                p.mul_(20.0)
    model = model.to(device)
    x, pos = point_cloud(12, seed=5, device=device)
    out = model(x, pos * 0.8)
    sets = [set(map(tuple, e.T.tolist())) for e in out.edge_indices]
    assert any(a != b for a, b in pairwise(sets))
    for edges, p in zip(sets, out.trajectory, strict=False):
        # each iteration's graph is exactly the radius graph of its own input positions
        dist = torch.cdist(p, p)
        assert edges == {(j, i) for i in range(12) for j in range(12) if i != j and dist[i, j] < 1.0}


def test_envelope_makes_output_continuous_across_the_cutoff(device):
    model = IterativeSE3Transformer(
        FIBER_IN, FIBER_HIDDEN, num_iterations=2, layers_per_iteration=2, num_heads=2, graph=Radius(1.5)
    )
    model = unzero_displacements(model.double()).to(device)
    x, pos = point_cloud(6, seed=1, device=device)
    pos = pos * 0.3
    pos[5] = torch.tensor([1.5, 0.0, 0.0], dtype=torch.float64, device=device) + pos[0]  # at the cutoff of 0
    step = torch.tensor([1e-6, 0.0, 0.0], dtype=torch.float64, device=device)
    with torch.no_grad():
        inside = model(x, torch.cat([pos[:5], (pos[5] - step)[None]]))
        outside = model(x, torch.cat([pos[:5], (pos[5] + step)[None]]))
        hard = IterativeSE3Transformer(
            FIBER_IN,
            FIBER_HIDDEN,
            num_iterations=2,
            layers_per_iteration=2,
            num_heads=2,
            graph=Radius(1.5, envelope=None),
        ).double()
        hard = hard.to(device)
        hard.load_state_dict(model.state_dict())
        hard_in = hard(x, torch.cat([pos[:5], (pos[5] - step)[None]]))
        hard_out = hard(x, torch.cat([pos[:5], (pos[5] + step)[None]]))
    smooth_jump = (inside.pos - outside.pos).abs().max()
    hard_jump = (hard_in.pos - hard_out.pos).abs().max()
    assert smooth_jump < 1e-5, smooth_jump
    assert hard_jump > 1e-3, hard_jump  # without the envelope the same move is a jump


def test_shared_weights_early_stopping(device):
    model = make_model(share_weights=True).to(device)
    x, pos = point_cloud(device=device)
    assert len(model.blocks) == 1
    model.eval()
    with torch.no_grad():
        full = model(x, pos, max_iterations=6)
        assert full.num_iterations == 6 and len(full.trajectory) == 7
        steps = [(b - a).norm(dim=-1).max() for a, b in zip(full.trajectory, full.trajectory[1:], strict=False)]
        tol = float(steps[1]) * 1.0001  # the second step is under tol: stop after it
        early = model(x, pos, tol=tol, max_iterations=6)
    expected = next(i for i, s in enumerate(steps) if s < tol) + 1
    assert early.num_iterations == expected
    torch.testing.assert_close(early.pos, full.trajectory[expected])


def test_early_stopping_arguments_are_checked():
    x, pos = point_cloud()
    with pytest.raises(ValueError, match="tol/max_iterations: only a model with share_weights=True"):
        make_model()(x, pos, max_iterations=2)
    with pytest.raises(ValueError, match="tol: early stopping is for inference"):
        make_model(share_weights=True)(x, pos, tol=1e-3)


def test_edge_attr_fn_is_recomputed_each_iteration():
    calls = []

    def pair_distance(p, edge_index):
        calls.append(edge_index.shape[1])
        return (p[edge_index[0]] - p[edge_index[1]]).norm(dim=-1, keepdim=True)

    model = make_model("radius", edge_dim=1)
    x, pos = point_cloud()
    out = model(x, pos, edge_attr_fn=pair_distance)
    assert calls == [e.shape[1] for e in out.edge_indices] and len(calls) == 3
    with pytest.raises(ValueError, match="edge_attr_fn"):
        model(x, pos)
    with pytest.raises(ValueError, match=r"edge_attr: expected shape"):
        model(x, pos, edge_attr_fn=lambda p, e: torch.zeros(e.shape[1], 2, dtype=p.dtype))


class _CountedComplete(Complete):
    """A complete graph that records its builds."""

    def __init__(self):
        super().__init__()
        self.builds = 0

    def build(self, pos, batch):
        self.builds += 1
        return super().build(pos, batch)


class _RebuiltComplete(_CountedComplete):
    """The same graph, declared to depend on the positions: rebuilt at every iteration."""

    depends_on_positions = True


def test_complete_graph_is_built_once_per_forward(monkeypatch):
    """The complete graph does not move with the points: it is built, and its reverse pairs found, once per
    forward pass, with the outputs and gradients (bit for bit) of rebuilding it at every iteration; the positions
    are still checked at every iteration."""
    found = []
    reverse_edge_pairs = pyg_se3.basis.reverse_edge_pairs
    monkeypatch.setattr(pyg_se3.basis, "reverse_edge_pairs", lambda *a: found.append(1) or reverse_edge_pairs(*a))
    x, pos = point_cloud()
    batch = torch.arange(pos.shape[0]) * 2 // pos.shape[0]  # two graphs
    once, rebuilt = _CountedComplete(), _RebuiltComplete()
    models = [make_model(once, edge_dim=1), make_model(rebuilt, edge_dim=1)]
    models[1].load_state_dict(models[0].state_dict())

    def run(model):
        p = pos.clone().requires_grad_(True)
        out = model(x, p, batch, edge_attr_fn=lambda q, e: (q[e[0]] - q[e[1]]).norm(dim=-1, keepdim=True))
        return out, torch.autograd.grad(out.pos.sin().sum() + out.x.sum(), [p, *model.parameters()])

    found.clear()
    (out, grads), (want, want_grads) = run(models[0]), run(models[1])
    assert (once.builds, rebuilt.builds, len(found)) == (1, 3, 1 + 3)
    assert all(torch.equal(e, f) for e, f in zip(out.edge_indices, want.edge_indices, strict=True))
    assert torch.equal(out.pos, want.pos) and not torch.equal(out.pos, pos)
    assert all(torch.equal(g, w) for g, w in zip(grads, want_grads, strict=True))
    with torch.no_grad():  # an iteration that throws the points to NaN: the next one refuses them
        for p in models[0].blocks[0].parameters():
            p.fill_(float("nan"))
    with pytest.raises(ValueError, match="pos: contains NaN or inf"):
        models[0](x, pos, batch, edge_attr_fn=lambda q, e: (q[e[0]] - q[e[1]]).norm(dim=-1, keepdim=True))
    assert once.builds == 2


def test_batch_from_dataloader_matches_graphs_alone(device):
    model = make_model("radius").to(device)
    graphs = []
    for seed, n in enumerate([5, 7, 6]):
        x, pos = point_cloud(n, seed, device=device)
        graphs.append(Data(x=x, pos=pos))
    batch = next(iter(DataLoader(graphs, batch_size=3)))
    out = model(batch.x, batch.pos, batch.batch)
    for e in out.edge_indices:
        assert (batch.batch[e[0]] == batch.batch[e[1]]).all()  # graphs never connect across the batch
    for i, g in enumerate(graphs):
        alone = model(g.x, g.pos)
        torch.testing.assert_close(out.pos[batch.batch == i], alone.pos, atol=1e-12, rtol=0)
        torch.testing.assert_close(out.x[batch.batch == i], alone.x, atol=1e-12, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_iterations"):
        IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, num_iterations=0)
    with pytest.raises(ValueError, match="graph: expected"):
        IterativeSE3Transformer(FIBER_IN, FIBER_HIDDEN, graph=lambda p, b: None)
    with pytest.raises(ValueError, match="fiber_hidden: with share_weights=True"):
        IterativeSE3Transformer(Fiber({0: 1, 3: 1}), FIBER_HIDDEN, share_weights=True)
    x, pos = point_cloud()
    with pytest.raises(ValueError, match="pos: contains NaN"):
        make_model()(x, pos.index_fill(0, torch.tensor([1]), float("nan")))


@pytest.mark.parametrize("graph", ["radius", "knn"])
def test_checkpointing_over_target_groups_gives_the_same_trajectory_and_gradients(graph, device):
    # groups of ~5 edges (several per iteration); the radius graph carries envelope weights, which the groups
    # must cut along with the edges
    model = make_model(graph, checkpoint_edges=5).to(device)
    x, pos = point_cloud(12, device=device)

    def run(checkpoint):
        for block in model.blocks:
            block.checkpoint = checkpoint
        model.zero_grad()
        pos_ = pos.clone().requires_grad_(True)
        out = model(x, pos_)
        (out.pos.square().sum() + out.x.square().sum()).backward()
        return [out.pos, out.x, pos_.grad, *[p.grad for p in model.parameters()]]

    got, want = run(True), run(False)
    for g, w in zip(got, want, strict=True):  # equal up to summation order (float64)
        torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)
    assert float((want[0].detach() - pos).abs().max()) > 1e-4  # the points moved
