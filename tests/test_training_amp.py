"""The trainer's mixed precision (``TrainConfig.amp``, ``--amp``): training steps run under autocast and evaluation
does not; fp16's loss scaling skips the steps whose scaled gradients overflow without calling them non-finite,
and a resumed fp16 run ends bit for bit where an uninterrupted one does."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_identical
from torch import nn
from torch_geometric.data import Data

from pyg_se3.runtime.training import TrainConfig, Trainer

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class RecordingTask:
    """Fit the targets (MSE); records the autocast state (on, dtype) of every loss and every evaluated batch."""

    def __init__(self) -> None:
        self.in_loss: list[tuple[bool, torch.dtype]] = []
        self.in_metrics: list[bool] = []

    def loss(self, model, batch):
        self.in_loss.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return (model(batch.x) - batch.y).square().mean()

    def metrics(self, model, batch):
        self.in_metrics.append(torch.is_autocast_enabled("cpu"))
        err = (model(batch.x) - batch.y).square().mean(-1)
        return {"loss": (float(err.sum()), batch.num_graphs)}


def data(n: int = 16, seed: int = 0) -> list[Data]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 3.0
    return [Data(x=x[i : i + 1], y=y[i : i + 1], num_nodes=1) for i in range(n)]


def trainer(out, amp, **options) -> Trainer:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    config = TrainConfig(
        **{"epochs": 4, "batch_size": 2, "lr": 0.05, "progress": False, "out": str(out), "amp": amp, **options}
    )
    return Trainer(model, RecordingTask(), data(), data(6, seed=1), config)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_steps_run_under_autocast_and_evaluation_does_not(amp, tmp_path):
    mixed = trainer(tmp_path / amp, amp)
    history = mixed.fit()
    assert set(mixed.task.in_loss) == {(True, DTYPES[amp])}
    assert len(mixed.task.in_metrics) > 0 and not any(mixed.task.in_metrics)
    assert all(p.dtype == torch.float32 for p in mixed.model.parameters())
    assert history[-1]["val_loss"] < 0.5 * history[0]["val_loss"]
    if amp == "bf16":  # the 16-bit products change the training losses a little, not the learning
        plain = trainer(tmp_path / "fp32", None)
        reference = plain.fit()
        assert not any(on for on, _ in plain.task.in_loss)
        losses = [row["train_loss"] for row in history]
        expected = [row["train_loss"] for row in reference]
        assert losses != expected
        assert losses == pytest.approx(expected, rel=0.05)
    # evaluation is float32: the reported validation loss is the float32 loss of the evaluated weights
    with torch.no_grad():
        val = torch.cat([(mixed.model(d.x) - d.y).square().mean(-1) for d in data(6, seed=1)]).mean()
    assert float(val) == pytest.approx(history[-1]["val_loss"], rel=1e-6)
    assert ("loss_scale" in history[-1]) == (amp == "fp16")


def test_fp16_overflowing_steps_are_skipped_with_a_smaller_scale_not_reported(tmp_path, capsys):
    """The gradient of the toy loss with respect to the first layer's float16 output is about 2 |y| / batch x
    scale: at the initial scale of 2^16, above float16's largest number (65504), so the first steps overflow until
    the halved scale fits; with ``on_nan="stop"`` the run still goes on, and the weights move only on the others."""
    mixed = trainer(tmp_path, "fp16", on_nan="stop", epochs=1)
    before = [p.detach().clone() for p in mixed.model.parameters()]
    steps = []
    original_step = mixed.optimizer.step
    mixed.optimizer.step = lambda *a, **k: steps.append(len(mixed.task.in_loss)) or original_step(*a, **k)
    (row,) = mixed.fit()
    halvings = round(math.log2(2.0**16 / row["loss_scale"]))
    assert 1 <= halvings < 8 and steps[0] > 1  # the first step overflowed, some later ones did not
    assert len(steps) == 8 - halvings  # 8 batches: every overflow halved the scale and made no step
    assert not mixed.skipped_batches and "non-finite" not in capsys.readouterr().err
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert all(int(s["step"]) == 8 - halvings for s in state["optimizer"]["state"].values())
    assert state["scaler"]["scale"] == row["loss_scale"]
    assert all(not torch.equal(a, b) for a, b in zip(before, mixed.model.parameters(), strict=True))


def test_a_non_finite_loss_is_still_a_non_finite_batch_under_fp16(tmp_path, capsys):
    bad = data()
    bad[5].y = torch.full((1, 1), math.nan)
    torch.manual_seed(0)
    config = TrainConfig(epochs=1, batch_size=1, lr=0.02, progress=False, out=str(tmp_path), amp="fp16")
    mixed = Trainer(nn.Linear(3, 1), RecordingTask(), bad, data(6, seed=1), config)
    mixed.fit()
    assert len(mixed.skipped_batches) == 1
    assert "(loss=nan); batch skipped" in capsys.readouterr().err
    assert all(torch.isfinite(p).all() for p in mixed.model.parameters())


def test_resume_is_exact_with_fp16_loss_scaling(tmp_path):
    options = {"epochs": 5, "warmup_epochs": 1.0, "ema_decay": 0.8}
    trainer(tmp_path / "full", "fp16", **options).fit()

    class Killed(Exception):
        pass

    def kill_after_epoch_2(row):
        if row["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        trainer(tmp_path / "parts", "fp16", **options).fit(on_epoch_end=kill_after_epoch_2)
    resumed = trainer(tmp_path / "parts", "fp16", **options, resume=True)
    assert resumed.start_epoch == 3
    resumed.fit()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "parts" / "last.pt", weights_only=False)
    for key in ("model", "trained_model", "optimizer"):
        assert_identical(a[key], b[key], key)
    assert a["scaler"] == b["scaler"] and a["history"] == b["history"]
    assert a["scaler"]["scale"] < 2.0**16  # the scale that was resumed is not the initial one


def test_bad_amp_is_refused():
    with pytest.raises(ValueError, match=r"amp: expected None \(float32\), 'bf16' or 'fp16', got 'fp8'"):
        TrainConfig(amp="fp8")
