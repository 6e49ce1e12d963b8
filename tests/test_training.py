"""The Trainer on a toy task: non-finite losses and gradients are reported and skipped (or stop the run), never applied;
checkpoints are written atomically."""

import pytest
import torch
from torch import nn
from torch_geometric.data import Data

from pyg_se3.runtime.training import NonFiniteLossError, TrainConfig, Trainer, atomic_save


class ToyTask:
    """Fit a scalar to targets; batches whose target is NaN poison the loss."""

    def loss(self, model, batch):
        return (model(batch.x) - batch.y).square().mean()

    def metrics(self, model, batch):
        err = (model(batch.x) - batch.y).square().mean()
        return {"loss": (float(err) * batch.num_graphs, batch.num_graphs)}


def toy_data(poisoned: set[int] = frozenset()):
    return [
        Data(x=torch.ones(1, 1), y=torch.full((1, 1), float("nan") if i in poisoned else 3.0), num_nodes=1)
        for i in range(8)
    ]


def make_trainer(tmp_path, on_nan, poisoned=frozenset()):
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=1, lr=0.1, out=str(tmp_path), on_nan=on_nan, progress=False)
    return Trainer(nn.Linear(1, 1), ToyTask(), toy_data(poisoned), toy_data(), config)


def test_nan_batches_are_skipped_and_reported(tmp_path, capsys):
    trainer = make_trainer(tmp_path / "skip", "skip", poisoned={2, 5})
    history = trainer.fit()
    assert len(trainer.skipped_batches) == 4  # two poisoned samples, two epochs (shuffled: indices vary)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)
    assert "non-finite loss or gradient at epoch 0, batch" in capsys.readouterr().err
    # skipped batches made no optimiser step: 2 epochs x 8 batches - 4 skipped
    state = torch.load(tmp_path / "skip" / "last.pt", weights_only=False)
    assert all(int(s["step"]) == 12 for s in state["optimizer"]["state"].values())
    assert all(torch.isfinite(v).all() for v in state["model"].values())


class GradientPoisonTask(ToyTask):
    """A finite loss whose gradient is NaN in one parameter (the bias) for samples flagged by ``x = 2``: the term
    ``sqrt(|b - b|)`` is 0, and its derivative at 0 is 0 * inf."""

    def loss(self, model, batch):
        loss = super().loss(model, batch)
        if (batch.x == 2).any():
            loss = loss + (model.bias - model.bias.detach()).abs().sqrt().sum()
        return loss


class LossPoisonTask(ToyTask):
    """A non-finite loss with finite gradients for samples flagged by ``x = 2``: an infinite term that does not
    depend on the parameters."""

    def loss(self, model, batch):
        loss = super().loss(model, batch)
        return loss + torch.where(batch.x == 2, torch.inf, 0.0).sum()


class HugeGradientTask(ToyTask):
    """A finite loss with finite gradients for samples flagged by ``x = 2``, one of them 1e30: finite in float32,
    but its square is not, so the gradients have no norm to clip to."""

    def loss(self, model, batch):
        loss = super().loss(model, batch)
        if (batch.x == 2).any():
            loss = loss + 1e30 * model.bias.sum()
        return loss


@pytest.mark.parametrize(
    ("task", "reported"),
    [
        (GradientPoisonTask(), "batch skipped"),
        (LossPoisonTask(), "(loss=inf); batch skipped"),
        (HugeGradientTask(), "batch skipped"),
    ],
)
def test_a_non_finite_gradient_or_loss_alone_is_skipped(task, reported, tmp_path, capsys):
    data = toy_data()
    data[3].x = torch.full((1, 1), 2.0)
    torch.manual_seed(0)
    config = TrainConfig(epochs=2, batch_size=1, lr=0.1, out=str(tmp_path), on_nan="skip", progress=False)
    trainer = Trainer(nn.Linear(1, 1), task, data, toy_data(), config)
    history = trainer.fit()
    assert len(trainer.skipped_batches) == 2  # the flagged sample, in both epochs
    assert reported in capsys.readouterr().err
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in history)


def test_nan_batch_can_stop_the_run_without_touching_the_weights(tmp_path):
    trainer = make_trainer(tmp_path / "stop", "stop", poisoned={0, 1, 2, 3, 4, 5, 6, 7})
    before = [p.clone() for p in trainer.model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"epoch 0, batch 0 .*stopping"):
        trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert not (tmp_path / "stop" / "last.pt").exists()


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    atomic_save({"a": torch.ones(3)}, target)

    def broken_save(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, target)
    assert torch.equal(torch.load(target)["a"], torch.ones(3))  # the old checkpoint is intact


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="on_nan"):
        TrainConfig(on_nan="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
