"""The collated-once loader (``pyg_se3.loader``): the batches of PyG's ``DataLoader`` for equal-size graphs, the
same losses on the N-body task in float64, and the trainer's choice between the two."""

from __future__ import annotations

import pytest
import torch
from helpers import unzero_displacements
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from pyg_se3.loader import FixedSizeGraphs, FixedSizeLoader
from pyg_se3.runtime.tasks import ModelOptions, get_task
from pyg_se3.runtime.training import TrainConfig, Trainer


class Framed(Data):
    """A graph with an attribute stacked along a new dimension and one shifted by a custom increment."""

    def __cat_dim__(self, key, value, *args, **kwargs):
        return None if key == "frame" else super().__cat_dim__(key, value, *args, **kwargs)

    def __inc__(self, key, value, *args, **kwargs):
        return 7 if key == "pair" else super().__inc__(key, value, *args, **kwargs)


def graphs(n: int = 11, nodes: int = 4, edges: int = 6, seed: int = 0, cls: type[Data] = Data) -> list[Data]:
    """``n`` graphs of one size, each with its own values and its own edges."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        data = cls(
            x=torch.randn(nodes, 3, generator=g),
            pos=torch.randn(nodes, 3, generator=g, dtype=torch.float64),
            edge_index=torch.randint(0, nodes, (2, edges), generator=g),
            edge_attr=torch.randn(edges, 2, generator=g),
            y=torch.randn(1, 2, generator=g),
            label=torch.randint(0, 5, (), generator=g),
        )
        if cls is Framed:
            data.frame = torch.randn(2, 3, generator=g)
            data.pair = torch.randint(0, 7, (3,), generator=g)
        out.append(data)
    return out


def assert_same_batch(fast, plain) -> None:
    assert type(fast).__name__ == type(plain).__name__
    assert set(fast.keys()) == set(plain.keys()) and fast.num_graphs == plain.num_graphs
    for key in plain.keys():
        a, b = fast[key], plain[key]
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), key
            assert a.is_contiguous() == b.is_contiguous(), key
        else:
            assert a == b, key
    for a, b in zip(fast.to_data_list(), plain.to_data_list(), strict=True):
        assert set(a.keys()) == set(b.keys())
        assert all(torch.equal(a[key], b[key]) for key in b.keys() if isinstance(b[key], torch.Tensor))


@pytest.mark.parametrize(
    ("batch_size", "shuffle", "drop_last"), [(4, True, False), (3, False, False), (5, True, True), (20, True, False)]
)
def test_batches_are_pyg_dataloader_batches(batch_size, shuffle, drop_last):
    data = graphs()
    fast = FixedSizeLoader(data, batch_size, shuffle, drop_last=drop_last, generator=torch.Generator().manual_seed(5))
    plain = DataLoader(data, batch_size, shuffle, drop_last=drop_last, generator=torch.Generator().manual_seed(5))
    pairs = list(zip(fast, plain, strict=True))
    assert len(pairs) == len(plain) > 0
    for a, b in pairs:
        assert_same_batch(a, b)
    if shuffle:  # the check can fail: another order gives other batches
        other = next(iter(FixedSizeLoader(data, batch_size, True, generator=torch.Generator().manual_seed(6))))
        assert not torch.equal(other.x, pairs[0][1].x)


def test_a_sampler_picks_the_same_graphs():
    data = graphs(13)
    sampler = DistributedSampler(data, num_replicas=3, rank=1, shuffle=True, seed=4)
    for a, b in zip(FixedSizeLoader(data, 2, sampler=sampler), DataLoader(data, 2, sampler=sampler), strict=True):
        assert_same_batch(a, b)


def test_custom_concatenation_and_increments():
    data = graphs(6, cls=Framed)
    for a, b in zip(FixedSizeLoader(data, 4), DataLoader(data, 4), strict=True):
        assert_same_batch(a, b)
    batch = FixedSizeGraphs(data).batch([2, 0])
    assert batch.frame.shape == (2, 2, 3)  # stacked, not concatenated
    assert torch.equal(batch.pair, torch.cat([data[2].pair, data[0].pair + 7]))


def test_explicit_node_counts_are_kept():
    data = [Data(x=torch.full((1, 3), float(i)), num_nodes=1) for i in range(5)]
    for a, b in zip(FixedSizeLoader(data, 2), DataLoader(data, 2), strict=True):
        assert_same_batch(a, b)
        assert a.num_nodes == b.num_nodes == a.num_graphs


def test_indexing_gives_each_graph_back():
    data = graphs(cls=Framed)
    stacked = FixedSizeGraphs(data)
    assert len(stacked) == len(data) and repr(stacked) == "FixedSizeGraphs(11 graphs of 4 nodes)"
    for i in (0, 5, -1):
        back = stacked[i]
        assert type(back) is Framed and set(back.keys()) == set(data[i].keys())
        assert all(torch.equal(back[key], data[i][key]) for key in data[i].keys())
    with pytest.raises(IndexError, match="index 11 is out of range for 11 graphs"):
        stacked[11]
    with pytest.raises(TypeError, match="index: expected an integer, got slice"):
        stacked[1:3]


class Transformed(list):
    """A dataset whose samples may change at every access."""

    transform = staticmethod(lambda data: data)


def _with(data: list[Data], index: int, **changes) -> list[Data]:
    changed = data[index].clone()
    for key, value in changes.items():
        changed[key] = value
    return [*data[:index], changed, *data[index + 1 :]]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: [], "expected at least one graph"),
        (lambda: _with(graphs(), 3, x=torch.zeros(5, 3), pos=torch.zeros(5, 3)), "graphs of 4 to 5 nodes"),
        (lambda: _with(graphs(), 3, edge_index=torch.zeros(2, 7, dtype=torch.long)), "'edge_index' has 6 to 7"),
        (lambda: _with(graphs(), 3, edge_attr=torch.zeros(5, 2)), "'edge_attr' has 5 to 6 entries per graph"),
        (
            lambda: _with(graphs(), 4, extra=torch.zeros(4)),
            r"graph 4 and graph 0 differ in their attributes \['extra'\]",
        ),
        (
            lambda: _with(graphs(), 0, extra=torch.zeros(4)),
            r"graph 1 and graph 0 differ in their attributes \['extra'\]",
        ),
        (lambda: [_with([g], 0, name="a")[0] for g in graphs(3)], "attribute 'name' is a str; only tensors"),
        (lambda: [*graphs(2), *graphs(2, cls=Framed)], "graphs of one torch_geometric.data.Data class"),
        (lambda: Transformed(graphs(3)), "has transform, so its samples may change at every access"),
    ],
)
def test_what_cannot_be_stacked_is_refused(make, message):
    with pytest.raises(ValueError, match=message):
        FixedSizeGraphs(make())


def test_bad_loader_arguments_are_refused():
    with pytest.raises(TypeError, match="'collate_fn' is not supported"):
        FixedSizeLoader(graphs(), 2, collate_fn=list)
    with pytest.raises(TypeError, match="'follow_batch' is not supported"):
        FixedSizeLoader(graphs(), 2, follow_batch=["x"])
    with pytest.raises(ValueError, match="a non-empty list of graph indices"):
        FixedSizeGraphs(graphs()).batch([])


@pytest.mark.parametrize("integrator", ["position", "velocity"])
def test_nbody_losses_and_gradients_equal_in_float64(tmp_path_factory, integrator):
    options = ModelOptions(
        num_iterations=2,
        layers_per_iteration=1,
        channels=4,
        num_heads=2,
        inputs="invariant",
        motion_edges=True,
        integrator=integrator,
    )
    task = get_task("nbody", options)
    systems = task.datasets(str(tmp_path_factory.mktemp("data")))["test"][:24]
    torch.manual_seed(0)
    model = unzero_displacements(task.build_model(0.1)).double()
    as_double = lambda batch: batch.apply(lambda t: t.double() if t.is_floating_point() else t)  # noqa: E731
    stacked = FixedSizeGraphs(systems)
    loaders = [
        loader(data, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(1))
        for loader, data in ((FixedSizeLoader, stacked), (DataLoader, systems))
    ]
    for fast, plain in zip(*loaders, strict=True):
        results = []
        for batch in (fast, plain):
            model.zero_grad()
            loss = task.loss(model, as_double(batch))
            loss.backward()
            results.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        (loss_a, grads_a), (loss_b, grads_b) = results
        assert loss_a.dtype == torch.float64 and float(loss_a) > 0
        assert abs(float(loss_a - loss_b)) <= 1e-12 * float(loss_b)
        assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-15) for a, b in zip(grads_a, grads_b, strict=True))


class MeanSquare:
    def loss(self, model, batch):
        return (model(batch.x).sum(-1) - batch.y).square().mean()

    def metrics(self, model, batch):
        err = (model(batch.x).sum(-1) - batch.y).square()
        return {"loss": (float(err.sum()), batch.num_graphs)}


def points(n: int, seed: int) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    return [Data(x=torch.randn(1, 3, generator=g), y=torch.randn(1, generator=g)) for _ in range(n)]


def _trainer(out, data, loader: str) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    config = TrainConfig(epochs=3, batch_size=3, lr=0.01, progress=False, out=str(out), loader=loader)
    return Trainer(model, MeanSquare(), data, points(5, seed=1), config)


def test_the_trainer_trains_identically_with_either_loader(tmp_path):
    data = points(10, seed=0)
    runs = {}
    for loader in ("auto", "pyg"):
        trainer = _trainer(tmp_path / loader, data, loader)
        expected = FixedSizeLoader if loader == "auto" else DataLoader
        assert type(trainer.loader(trainer.train_set, shuffle=True)) is expected
        runs[loader] = (trainer.fit(), trainer.model.state_dict())
    assert runs["auto"][0] == runs["pyg"][0]
    assert all(torch.equal(runs["auto"][1][k], runs["pyg"][1][k]) for k in runs["pyg"][1])


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (Transformed(graphs(6)), "loader='fixed': dataset: has transform, so its samples may change"),
        (_with(graphs(6), 2, x=torch.zeros(5, 3), pos=torch.zeros(5, 3)), "graphs of 4 to 5 nodes"),
    ],
)
def test_auto_falls_back_and_fixed_refuses(tmp_path, data, reason):
    assert type(_trainer(tmp_path / "auto", data, "auto").loader(data, shuffle=True)) is DataLoader
    with pytest.raises(ValueError, match=reason):
        _trainer(tmp_path / "fixed", data, "fixed").loader(data, shuffle=True)
