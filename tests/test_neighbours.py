"""The two neighbour-search engines of pyg_se3.graph: torch-cluster and the exact, chunked PyTorch search.

torch-cluster runs on the CPU only here, so it is the reference; the PyTorch engine runs on every device of the
``device`` fixture (CUDA where there is a GPU) and must return the same tensor: same edges, same order.
"""

import itertools
import subprocess
import sys
import textwrap
import warnings
import weakref

import pytest
import torch

import pyg_se3.graph as graph
from pyg_se3.graph import KNN, Complete, Radius, complete_edge_index

pytestmark = pytest.mark.usefixtures("one_thread")

SEEDS = range(4)


def random_batch(seed: int, dtype: torch.dtype = torch.float32, max_size: int = 40) -> tuple[torch.Tensor, ...]:
    """1 to 6 graphs of 1 to ``max_size`` nodes each, uniform in a cube per graph, ~5 points per unit volume
    whatever the graph's size (a ball of radius 0.4 holds ~1 neighbour, of radius 1 ~20)."""
    generator = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (int(torch.randint(1, 7, (), generator=generator)),), generator=generator)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    side = 0.6 * sizes[batch, None].to(dtype) ** (1 / 3)
    pos = torch.rand(len(batch), 3, generator=generator, dtype=dtype) * side
    return pos, batch, sizes


def by_target_then_source(edge_index: torch.Tensor) -> bool:
    key = edge_index[1] * (edge_index.numel() and int(edge_index.max()) + 1) + edge_index[0]
    return bool((key[1:] > key[:-1]).all())


def on(device: torch.device, builder, pos: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
    """``builder`` run on ``device``, its edges brought back to the CPU."""
    return builder(pos.to(device), None if batch is None else batch.to(device)).cpu()


# ---------------------------------------------------------------------------------------------- engines agree
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("k", [1, 3, 8, 45])
@pytest.mark.parametrize("seed", SEEDS)
def test_knn_engines_return_the_same_tensor(seed, k, loop, dtype, device):
    pos, batch, sizes = random_batch(seed, dtype)
    expected = KNN(k, loop, engine="torch-cluster")(pos, batch)
    edges = on(device, KNN(k, loop, engine="torch"), pos, batch)
    assert torch.equal(edges, expected)
    assert by_target_then_source(edges)
    # k beyond a graph's size: all of its nodes (less the node itself without loops), as torch-cluster does
    in_degree = torch.bincount(edges[1], minlength=len(batch))
    assert torch.equal(in_degree, (sizes[batch] - int(not loop)).clamp(max=k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("r", [0.4, 0.7, 1.5])
@pytest.mark.parametrize("seed", SEEDS)
def test_radius_engines_return_the_same_tensor(seed, r, loop, dtype, device):
    pos, batch, _ = random_batch(seed, dtype)
    expected = Radius(r, max_num_neighbors=64, loop=loop, engine="torch-cluster")(pos, batch)
    edges = on(device, Radius(r, max_num_neighbors=64, loop=loop, engine="torch"), pos, batch)
    assert torch.equal(edges, expected)
    assert by_target_then_source(edges)
    assert edges.shape[1] > loop * len(batch)  # some edges besides self-loops: the comparison is not vacuous
    length = (pos[edges[0]] - pos[edges[1]]).norm(dim=-1)
    assert (length < r).all() and (batch[edges[0]] == batch[edges[1]]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("seed", SEEDS)
def test_radius_truncation_same_edges_same_warning_once(seed, loop, dtype, device):
    pos, batch, _ = random_batch(seed + 100, dtype)
    r, cap = 1.0, 5
    results, messages = [], []
    for engine, on_device in (("torch-cluster", torch.device("cpu")), ("torch", device)):
        builder = Radius(r, max_num_neighbors=cap, loop=loop, engine=engine)
        with pytest.warns(RuntimeWarning, match=rf"node\(s\) have more than max_num_neighbors={cap}") as record:
            results.append(on(on_device, builder, pos, batch))
        messages.append([str(warning.message) for warning in record])
        on(on_device, builder, pos, batch)  # the second call is silent (warnings are errors in this suite)
    assert torch.equal(results[0], results[1])
    assert messages[0] == messages[1] and len(messages[0]) == 1
    # the cap nearest within r, counted independently: nodes with more than `cap` in reach were crowded
    distance = torch.cdist(pos.double(), pos.double())
    reach = (distance < r) & (batch[:, None] == batch[None, :])
    if not loop:
        reach.fill_diagonal_(False)
    crowded = int((reach.sum(0) > cap).sum())
    assert crowded > 0 and messages[0][0].startswith(f"Radius(r={r}): {crowded} node(s)")
    assert torch.equal(torch.bincount(results[1][1], minlength=len(batch)), reach.sum(0).clamp(max=cap))


def test_crowded_radius_keeps_the_nearest_with_the_torch_engine():
    pos = torch.randn(40, 3, dtype=torch.float64) * 0.3
    with pytest.warns(RuntimeWarning, match=r"40 node\(s\) have more than max_num_neighbors=6"):
        edges = Radius(5.0, max_num_neighbors=6, engine="torch")(pos)
    nearest = (torch.cdist(pos, pos) + torch.eye(40) * 1e9).topk(6, largest=False, dim=0).indices
    assert set(map(tuple, edges.T.tolist())) == {(int(j), i) for i in range(40) for j in nearest[:, i]}


@pytest.mark.parametrize("engine", ["torch-cluster", "torch"])
@pytest.mark.parametrize("loop", [False, True])
def test_empty_single_node_and_whole_graph(engine, loop):
    empty = torch.zeros(0, 3)
    for batch in (None, torch.zeros(0, dtype=torch.long)):
        for builder in (KNN(3, loop, engine=engine), Radius(1.0, loop=loop, engine=engine)):
            edges = builder(empty, batch)
            assert edges.shape == (2, 0) and edges.dtype == torch.long
    one = torch.zeros(1, 3)
    self_loop = torch.zeros(2, loop, dtype=torch.long)
    assert torch.equal(KNN(3, loop, engine=engine)(one), self_loop)
    assert torch.equal(Radius(1.0, loop=loop, engine=engine)(one, torch.zeros(1, dtype=torch.long)), self_loop)
    # k at least the graph's size: every pair of the graph, in complete_edge_index's order
    pos, batch, sizes = random_batch(7)
    expected = complete_edge_index(batch, loop)
    assert torch.equal(KNN(int(sizes.max()), loop, engine=engine)(pos, batch), expected)
    assert torch.equal(Complete(loop)(pos, batch), expected)


# ------------------------------------------------------------------------------------------------------ ties
CUBE = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)  # 3, 3, 1 at 1, √2, √3


def test_exact_ties_keep_the_smallest_source_index(device):
    cube = CUBE.to(device)
    # k=2 cuts each corner's three neighbours at distance 1: the two smallest indices are kept, every time
    expected = {(j, i) for i in range(8) for j in sorted(j for j in range(8) if bin(i ^ j).count("1") == 1)[:2]}
    for _ in range(3):
        edges = KNN(2, engine="torch")(cube).cpu()
        assert set(map(tuple, edges.T.tolist())) == expected and by_target_then_source(edges)
    with pytest.warns(RuntimeWarning, match="8 node"):
        truncated = Radius(1.2, max_num_neighbors=2, engine="torch")(cube).cpu()
    assert torch.equal(truncated, edges)
    # torch-cluster's k-d tree keeps two of the three tied corners too, though not necessarily these
    tied = {(j, i) for i in range(8) for j in range(8) if bin(i ^ j).count("1") == 1}
    reference = KNN(2, engine="torch-cluster")(CUBE)
    assert set(map(tuple, reference.T.tolist())) <= tied and reference.shape[1] == 16


@pytest.mark.parametrize("max_num_neighbors", [2, 32])
@pytest.mark.parametrize("engine", ["torch", "torch-cluster"])
def test_the_cutoff_is_strict(engine, max_num_neighbors):
    """Node 0 has three neighbours at 0.5 and two at exactly r = 1 (all squared lengths exact): the latter are out,
    whether the radius search or the truncation (a cap of 2) picks the edges."""
    pos = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0, 1, 0], [0.5, 0, 0]], dtype=torch.float64)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        edges = Radius(1.0, max_num_neighbors, engine=engine)(pos)
    assert len(record) == (max_num_neighbors == 2)
    into_0 = set(edges[0, edges[1] == 0].tolist())
    if max_num_neighbors == 32:
        assert into_0 == {2, 3, 5}
    elif engine == "torch":
        assert into_0 == {2, 3}  # the smallest indices among the three tied at 0.5
    else:
        assert into_0 < {2, 3, 5} and len(into_0) == 2
    assert ((pos[edges[0]] - pos[edges[1]]).norm(dim=-1) < 1).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda engine: KNN(3, engine=engine),
        lambda engine: KNN(7, loop=True, engine=engine),
        lambda engine: Radius(1.2, engine=engine),
        lambda engine: Radius(1.5, max_num_neighbors=6, engine=engine),
    ],
    ids=["knn-3", "knn-7-loop", "radius-1", "radius-sqrt2"],
)
@pytest.mark.parametrize("engine", ["torch", "torch-cluster"])
def test_uncut_shells_give_rotation_invariant_edges(make, engine):
    """k and r fall between the cube's distance shells (1, √2, √3), so the rounding of a rotated copy moves no
    point across: the edge set must not change, and both engines must agree."""
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64)).Q
    moved = CUBE @ rotation.T + torch.randn(3, dtype=torch.float64)
    edges = make(engine)(CUBE)
    assert edges.shape[1] > 0 and torch.equal(make(engine)(moved), edges)
    assert torch.equal(edges, make("torch" if engine == "torch-cluster" else "torch-cluster")(CUBE))


# ---------------------------------------------------------------------------------------------- memory bound
@pytest.mark.parametrize("budget", [1, 37, 400])
def test_chunks_stay_within_the_budget_and_change_nothing(budget, monkeypatch):
    pos, batch, sizes = random_batch(3, torch.float64)
    with pytest.warns(RuntimeWarning, match="max_num_neighbors=3"):
        expected = [KNN(5, engine="torch-cluster")(pos, batch), Radius(0.7, 3, engine="torch-cluster")(pos, batch)]
    blocks = []
    squared_distance = graph._squared_distance

    def counting(*args):
        squared = squared_distance(*args)
        blocks.append(squared.numel())
        return squared

    monkeypatch.setattr(graph, "_squared_distance", counting)
    monkeypatch.setattr(graph, "_CHUNK_ENTRIES", budget)
    with pytest.warns(RuntimeWarning, match="max_num_neighbors=3"):
        got = [KNN(5, engine="torch")(pos, batch), Radius(0.7, 3, engine="torch")(pos, batch)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    # a block exceeds the budget only as one row of the largest graph
    assert max(blocks) <= max(budget, int(sizes.max()))
    if budget == 1:
        assert len(blocks) == 2 * len(batch)  # a row per target, each against its own graph


def test_no_block_mask_outlives_its_block(monkeypatch):
    """Each block is reduced to its edges before the next: keeping the masks would hold N^2 booleans in all."""
    pos, batch, _ = random_batch(3)
    masks = []
    nearest = graph._nearest

    def tracking(*args):
        assert all(mask() is None for mask in masks)  # every earlier block's mask is freed by now
        keep = nearest(*args)
        masks.append(weakref.ref(keep))
        return keep

    monkeypatch.setattr(graph, "_nearest", tracking)
    monkeypatch.setattr(graph, "_CHUNK_ENTRIES", 100)
    for make in (lambda engine: KNN(3, engine=engine), lambda engine: Radius(0.7, 64, engine=engine)):
        assert torch.equal(make("torch")(pos, batch), make("torch-cluster")(pos, batch))
    assert len(masks) > 4


def test_a_batch_of_small_graphs_never_builds_cross_graph_blocks(monkeypatch):
    sizes = torch.randint(1, 21, (300,))
    batch = torch.repeat_interleave(torch.arange(300), sizes)
    pos = torch.randn(len(batch), 3)
    shapes = []
    squared_distance = graph._squared_distance

    def recording(*args):
        squared = squared_distance(*args)
        shapes.append(tuple(squared.shape))
        return squared

    monkeypatch.setattr(graph, "_squared_distance", recording)
    edges = KNN(4, engine="torch")(pos, batch)
    assert torch.equal(edges, KNN(4, engine="torch-cluster")(pos, batch))
    # candidates per target: its own graph's nodes, padded to the largest graph (20), not the N ~ 3000 nodes
    assert shapes and all(width <= 20 for _, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(batch)


# ---------------------------------------------------------------------------------------------- engine choice
def test_engine_choice(monkeypatch):
    cpu = torch.zeros(2, 3)
    assert graph._engine(cpu) == "torch-cluster"  # installed here, built for the CPU
    assert graph._engine(torch.zeros(2, 3, device="meta")) == "torch"  # no torch-cluster kernels there
    assert graph._engine(cpu, k=1000) == "torch-cluster"  # only its CUDA kNN is limited to 100 neighbours
    with pytest.raises(RuntimeError, match="engine='torch-cluster': torch-cluster cannot search"):
        KNN(3, engine="torch-cluster").build(torch.zeros(2, 3, device="meta"), None)
    with pytest.raises(ValueError, match=r"engine: expected one of \['auto', 'torch-cluster', 'torch'\]"):
        KNN(3, engine="cuda")
    assert repr(KNN(3)) == "KNN(k=3, loop=False, engine='auto')"
    assert repr(Radius(1.0, engine="torch")).endswith("loop=False, engine='torch')")

    calls = []
    knn_torch = graph._knn_torch
    monkeypatch.setattr(graph, "_knn_torch", lambda *args: calls.append(args) or knn_torch(*args))
    pos = torch.randn(10, 3)
    auto = KNN(3)(pos)
    assert calls == []  # auto on the CPU: torch-cluster
    monkeypatch.setattr(graph, "torch_cluster", None)
    assert graph._engine(cpu) == "torch"
    assert torch.equal(KNN(3)(pos), auto) and len(calls) == 1  # auto without torch-cluster: the PyTorch engine
    with pytest.raises(ImportError, match="engine='torch-cluster': torch_cluster cannot be imported"):
        KNN(3, engine="torch-cluster")


def test_builders_pickled_before_engines_existed_run_auto():
    old = KNN(3)
    del old.__dict__["engine"]  # what unpickling a builder from before the `engine` argument leaves
    assert old.engine == "auto" and torch.equal(old(CUBE), KNN(3)(CUBE))


@pytest.mark.slow
def test_import_and_search_without_torch_cluster_are_silent():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torch_cluster"] = None  # import torch_cluster now raises ImportError
        import torch
        import pyg_se3
        from pyg_se3 import graph
        assert graph.torch_cluster is None and graph._engine(torch.zeros(1, 3)) == "torch"
        pos = torch.rand(30, 3, dtype=torch.float64)
        batch = torch.tensor([0] * 12 + [1] * 18)
        dist = torch.cdist(pos, pos).masked_fill(batch[:, None] != batch[None, :], 9.0).fill_diagonal_(9.0)
        edges = graph.KNN(4)(pos, batch)
        nearest = dist.topk(4, dim=0, largest=False).indices
        assert set(map(tuple, edges.T.tolist())) == {(int(j), i) for i in range(30) for j in nearest[:, i]}
        edges = graph.Radius(0.5)(pos, batch)
        assert set(map(tuple, edges.T.tolist())) == set(map(tuple, (dist < 0.5).nonzero().tolist()))
        try:
            graph.Radius(0.5, engine="torch-cluster")
        except ImportError:
            pass
        else:
            raise AssertionError("engine='torch-cluster' without torch_cluster")
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n" and result.stderr == ""
