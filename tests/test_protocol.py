"""The trainer's protocol options: warm-up then cosine, weight decay on weight matrices only, evaluation every k
epochs, a moving average of the weights; and exact resume with all of them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import assert_identical
from torch import nn
from torch.nn.utils import parameters_to_vector
from torch_geometric.data import Data

from pyg_se3 import Fiber
from pyg_se3.runtime.training import TrainConfig, Trainer, parameter_groups
from pyg_se3.transforms import RandomReflection, RandomTimeReversal


class MeanSquare:
    """Fit the targets; every evaluation metric is the MSE."""

    def loss(self, model, batch):
        return (model(batch.x) - batch.y).square().mean()

    def metrics(self, model, batch):
        err = (model(batch.x) - batch.y).square().mean(-1)
        return {"loss": (float(err.sum()), batch.num_graphs)}


def data(n: int = 12, seed: int = 0) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    return [Data(x=x[i : i + 1], y=y[i : i + 1], sample_id=torch.tensor([i]), num_nodes=1) for i in range(n)]


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 1))


def trainer(out, transform=None, **options) -> Trainer:
    config = TrainConfig(**{"epochs": 6, "batch_size": 4, "lr": 0.05, "progress": False, "out": str(out), **options})
    sets = {"eval_sets": {"test": data(6, seed=2)}, "train_transform": transform}
    return Trainer(model(), MeanSquare(), data(), data(6, seed=1), config, **sets)


def inverting() -> RandomReflection:
    """Each sample's x (one vector) inverted with probability 1/2: a transform that draws random numbers."""
    return RandomReflection(Fiber({1: 1}), vector_keys=(), fiber_keys=("x",))


def reversing() -> RandomTimeReversal:
    """Each training sample swapped with probability 1/2 for another (x, y): a transform that draws."""
    return RandomTimeReversal([Data(x=-d.x, y=d.y + 1, sample_id=d.sample_id) for d in data()], keys=("x", "y"))


def test_warmup_rises_linearly_then_the_cosine_decays(tmp_path):
    t = trainer(tmp_path, epochs=10, warmup_epochs=2, lr=1.0, min_lr=0.1)
    assert [t.learning_rate(e) for e in (0, 1)] == pytest.approx([0.5, 1.0])
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (e - 2) / 8)) for e in range(2, 10)]
    assert [t.learning_rate(e) for e in range(2, 10)] == pytest.approx(cosine, rel=1e-12)
    # per step: the k-th of K warm-up steps runs at k / K of lr, never at 0
    assert t.learning_rate(0, 0.0, step=0.25) == pytest.approx(1.0 / 8)
    assert t.learning_rate(1, 0.75, step=0.25) == pytest.approx(1.0)
    assert trainer(tmp_path, epochs=10, lr=1.0).learning_rate(0) == 1.0  # no warm-up: the cosine from lr


def test_the_rate_each_epoch_trains_with_is_the_schedule(tmp_path):
    t = trainer(tmp_path, epochs=5, warmup_epochs=2, lr=0.05)
    rates = []
    original = t.step

    def spy(batch, epoch, index):
        rates.append(t.optimizer.param_groups[0]["lr"])
        return original(batch, epoch, index)

    t.step = spy
    history = t.fit()
    assert [row["lr"] for row in history] == pytest.approx([t.learning_rate(e) for e in range(5)])
    assert rates[:3] == pytest.approx([0.025] * 3) and rates[3:6] == pytest.approx([0.05] * 3)  # 3 steps per epoch


def test_weight_decay_on_weights_leaves_biases_and_norms_alone(tmp_path):
    net = model()
    groups = parameter_groups(net, 0.1, "weights")
    decayed, kept = ({id(p) for p in g["params"]} for g in groups)
    assert decayed == {id(net[0].weight), id(net[2].weight)}
    assert kept == {id(net[0].bias), id(net[1].weight), id(net[1].bias), id(net[2].bias)}
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert parameter_groups(net, 0.1, "all") == [{"params": list(net.parameters()), "weight_decay": 0.1}]
    # AdamW with zero gradients: only the decay moves parameters, and only the decayed ones
    optimizer = torch.optim.AdamW(groups, lr=0.5)
    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in net.named_parameters():
        factor = 1 - 0.5 * 0.1 if name.endswith("weight") and p.dim() == 2 else 1.0
        assert torch.allclose(p, before[name] * factor, rtol=0, atol=1e-7), name


def test_evaluation_every_k_epochs_and_after_the_last(tmp_path):
    t = trainer(tmp_path, epochs=7, eval_every=3)
    history = t.fit()
    evaluated = [row["epoch"] for row in history if "val_loss" in row]
    assert evaluated == [2, 5, 6]
    assert all(("test_loss" in row) == (row["epoch"] in evaluated) for row in history)
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] - 1 in evaluated
    assert best["best_val"] == min(row["val_loss"] for row in history if "val_loss" in row)


def test_the_curves_are_plotted_at_the_evaluated_epochs(tmp_path, monkeypatch):
    t = trainer(tmp_path, epochs=7, eval_every=3)
    plotted = []
    monkeypatch.setattr(t, "plot", lambda: plotted.append(t.history[-1]["epoch"]))
    t.fit()
    assert plotted == [2, 5, 6]
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + 7  # the metrics: every epoch


def test_the_moving_average_is_what_is_evaluated_and_checkpointed(tmp_path):
    """With ema_decay d: after the first step the average is the weights, then a <- d a + (1 - d) w after every
    step; validation and test are of the average, and best.pt's "model" reproduces them."""
    t = trainer(tmp_path, epochs=4, ema_decay=0.7)
    expected: list[torch.Tensor] = []
    original = t.step

    def follow(batch, epoch, index):
        loss = original(batch, epoch, index)
        w = parameters_to_vector(t.model.parameters()).detach().double()
        expected.append(w if not expected else 0.7 * expected[-1] + 0.3 * w)
        return loss

    t.step = follow
    history = t.fit()
    averaged = parameters_to_vector(t.evaluated_model.parameters()).detach().double()
    trained = parameters_to_vector(t.model.parameters()).detach().double()
    assert len(expected) == 12 and torch.allclose(averaged, expected[-1], rtol=0, atol=1e-6)
    assert (averaged - trained).abs().max() > 1e-3  # the average lags: it is not the trained weights
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    row = next(r for r in history if r["epoch"] == best["epoch"] - 1)
    net = model()
    for weights, evaluated in ((best["model"], True), (best["trained_model"], False)):
        net.load_state_dict(weights)
        with torch.no_grad():
            val = torch.cat([(net(d.x) - d.y).square().mean(-1) for d in data(6, seed=1)]).mean()
        assert (float(val) == pytest.approx(row["val_loss"], rel=1e-6)) is evaluated
    assert best["ema_steps"] == 3 * best["epoch"]


def test_resume_refuses_another_moving_average(tmp_path):
    trainer(tmp_path, epochs=2, ema_decay=0.9).fit()
    for other in (0.0, 0.99):
        with pytest.raises(ValueError, match=f"ema_decay: .* was trained with ema_decay=0.9, not {other}"):
            trainer(tmp_path, epochs=4, ema_decay=other, resume=True)


@pytest.mark.parametrize(
    ("loader", "ema_decay", "transform"),
    [
        ("pyg", 0.0, None),
        ("fixed", 0.0, None),
        ("fixed", 0.8, None),
        ("fixed", 0.0, inverting),
        ("fixed", 0.0, reversing),
    ],
)
def test_resume_is_exact_with_the_protocol_options(tmp_path, loader, ema_decay, transform):
    """Killed and resumed runs end bit for bit where an uninterrupted one does, with either loader (the
    uninterrupted run always uses PyG's: the loaders are interchangeable), with and without the moving average,
    with and without random reflections or time reversals of the training batches."""
    transform = transform and transform()
    options = dict(
        epochs=6,
        warmup_epochs=1.5,
        schedule="step",
        weight_decay=0.05,
        weight_decay_on="weights",
        eval_every=2,
        ema_decay=ema_decay,
    )
    full = trainer(tmp_path / "full", transform, **options, loader="pyg")
    full.fit()

    class Killed(Exception):
        pass

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):  # as if killed after epoch 2's checkpoints
        trainer(tmp_path / "parts2", transform, **options, loader=loader).fit(on_epoch_end=kill_after_epoch_2)
    resumed = trainer(tmp_path / "parts2", transform, **options, resume=True, loader=loader)
    assert resumed.start_epoch == 3
    resumed.fit()
    for name in ("last.pt", "best.pt"):
        a = torch.load(tmp_path / "full" / name, weights_only=False)
        b = torch.load(tmp_path / "parts2" / name, weights_only=False)
        assert_identical(a["model"], b["model"], name)
        assert_identical(a["optimizer"], b["optimizer"], name)
        assert a["history"] == b["history"]
        assert ("trained_model" in a) == bool(ema_decay) and a.get("ema_steps") == b.get("ema_steps")
        if ema_decay:
            assert_identical(a["trained_model"], b["trained_model"], name)


def test_the_train_transform_shapes_every_training_batch_and_no_evaluated_one(tmp_path):
    def batches_seen(transform, out):
        t = trainer(out, transform, epochs=2)
        seen, evaluated = [], []
        loss, metrics = t.task.loss, t.task.metrics
        t.task.loss = lambda model, batch: seen.append(batch.x.clone()) or loss(model, batch)
        t.task.metrics = lambda model, batch: evaluated.append(batch.x.clone()) or metrics(model, batch)
        t.fit()
        return seen, torch.cat(evaluated)

    torch.manual_seed(1)
    seen, evaluated = batches_seen(inverting(), tmp_path / "inverted")
    originals, plain_evaluated = batches_seen(None, tmp_path / "plain")  # the same batches, in the same order
    assert len(seen) == len(originals) == 6
    same = torch.cat([(a == b).all(-1) for a, b in zip(seen, originals, strict=True)])
    inverted = torch.cat([(a == -b).all(-1) for a, b in zip(seen, originals, strict=True)])
    assert bool((same ^ inverted).all())  # every sample as it was, or inverted
    assert 0 < int(inverted.sum()) < len(inverted)  # some of each
    assert torch.equal(evaluated, plain_evaluated)  # validation and test are never transformed


def test_a_step_is_adamw_on_the_clipped_gradient(tmp_path):
    """One training step in float64 against the same step by hand: the loss's gradient, clipped to norm 0.1 by
    ``clip_grad_norm_``, then the loop implementation of AdamW (the trainer runs the fused one)."""
    t = trainer(tmp_path, grad_clip=0.1, weight_decay=0.05, weight_decay_on="weights")
    t.model.double()
    reference = copy.deepcopy(t.model)
    optimizer = torch.optim.AdamW(parameter_groups(reference, 0.05, "weights"), lr=0.05, foreach=False)
    assert t.optimizer.defaults["fused"] and not optimizer.defaults["fused"]
    batch = next(iter(t.loader(t.train_set, shuffle=True)))
    batch.x, batch.y = batch.x.double(), batch.y.double()
    for _ in range(3):  # the moments too
        loss = t.step(batch, 0, 0)
        expected = t.task.loss(reference, batch)
        expected.backward()
        norm = nn.utils.clip_grad_norm_(reference.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad()
        assert norm > 0.1  # the clipping acts
        assert loss == float(expected.detach())
        for (name, p), q in zip(t.model.named_parameters(), reference.parameters(), strict=True):
            assert torch.allclose(p, q, rtol=1e-13, atol=1e-15), name


def test_evaluation_batches_have_eval_batch_size_and_the_same_metrics(tmp_path):
    t = trainer(tmp_path / "a", eval_batch_size=12)
    u = trainer(tmp_path / "b")  # batch_size 4 for evaluation too
    t.model.double(), u.model.double()
    sizes = [batch.num_graphs for batch in t.loader(t.train_set, shuffle=False)]
    assert sizes == [12] and [b.num_graphs for b in u.loader(u.train_set, shuffle=False)] == [4, 4, 4]
    assert [b.num_graphs for b in t.loader(t.train_set, shuffle=True)] == [4, 4, 4]  # training keeps batch_size
    for dataset in (data(), data(6, seed=1)):
        double = [d.clone() for d in dataset]
        for d in double:
            d.x, d.y = d.x.double(), d.y.double()
        assert t.evaluate(double)["loss"] == pytest.approx(u.evaluate(double)["loss"], rel=1e-12)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("warmup_epochs", -1.0, "warmup_epochs: expected a number in"),
        ("warmup_epochs", 7.0, r"warmup_epochs: expected a number in \[0, epochs=6\]"),
        ("weight_decay_on", "biases", "weight_decay_on: expected 'all' or 'weights'"),
        ("eval_every", 0, "eval_every: expected an integer >= 1"),
        ("eval_every", 1.5, "eval_every: expected an integer >= 1"),
        ("eval_batch_size", 0, r"eval_batch_size: expected >= 1 or None \(batch_size\)"),
        ("loader", "fast", "loader: expected 'auto', 'pyg' or 'fixed'"),
        ("ema_decay", 1.0, r"ema_decay: expected a number in \[0, 1\)"),
        ("ema_decay", -0.5, r"ema_decay: expected a number in \[0, 1\)"),
        ("ema_decay", math.nan, r"ema_decay: expected a number in \[0, 1\)"),
    ],
)
def test_bad_protocol_options_are_refused(option, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(epochs=6, **{option: value})
