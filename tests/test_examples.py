"""Smoke tests of the example scripts and of the ``pyg-se3`` CLI: they run, learn, write their files and resume.

Each example runs once as a user runs it (a subprocess, tiny settings: 8 samples, 5 epochs of 4 steps); the
interrupted-and-resumed runs it is compared with run in-process through the script's ``main(argv)`` (same code,
no second interpreter start-up). The CLI runs as a subprocess for ``train`` and ``evaluate``; its loss and resume
checks use the :class:`~pyg_se3.runtime.training.Trainer` in-process.

Everything runs with one intra-op thread (``OMP_NUM_THREADS=1`` for subprocesses, a fixture in-process): these
models are tiny, and on a machine whose cores are busy, two threads per process made each step ~100x slower.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_identical

from pyg_se3.runtime import cli
from pyg_se3.runtime.tasks import ModelOptions, get_task
from pyg_se3.runtime.training import TrainConfig, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
TINY_MODEL = ["--channels", "4", "--heads", "2", "--degrees", "2", "--iterations", "2", "--layers", "2"]
# The examples' loss column and the files they write.
SCRIPTS = {
    "train_dynamics.py": ("train_mse", ["metrics.csv", "last.pt"]),
    "train_energy_minimisation.py": ("train_energy", ["metrics.csv", "last.pt"]),
    "train_nbody.py": ("train_mse", ["metrics.csv", "last.pt", "best.pt"]),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """One datasets folder for the whole module: each dataset is copied from the packaged files and processed
    once."""
    return tmp_path_factory.mktemp("data")


def run(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=300)
    assert result.returncode == 0, f"{args}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


def decreased(losses: list[float], k: int = 2, factor: float = 0.9) -> bool:
    """Whether the mean of the last ``k`` losses is below ``factor`` times the mean of the first ``k``."""
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return math.isfinite(last) and last < factor * first


def read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def load_example(script: str):
    spec = importlib.util.spec_from_file_location(f"example_{Path(script).stem}", EXAMPLES / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_training_state(a: dict, b: dict) -> None:
    """Same epoch, weights, optimizer state (moments, step counts, hyper-parameters) and metrics history."""
    assert a["optimizer"]["state"], "the optimizer has state to compare"
    for key in ("epoch", "model", "optimizer"):
        assert_identical(a[key], b[key], key)
    assert_identical(a["history"], b["history"], "history")


# ---------------------------------------------------------------------------------------------- the examples
@pytest.mark.parametrize("script", list(SCRIPTS))
@pytest.mark.slow
def test_example_learns_writes_its_files_and_resumes_exactly(script, root, tmp_path, one_thread, capsys):
    loss_key, files = SCRIPTS[script]
    args = [*TINY_MODEL, "--root", str(root), "--train-samples", "8", "--eval-samples", "8", "--batch-size", "2"]
    args += ["--lr", "3e-3"]  # measured over seeds 0-3: last/first loss ratio 0.18-0.73 (a frozen model: 1.000)
    if script == "train_energy_minimisation.py":
        # its cosine schedule depends on --epochs, which the resumed run below changes: keep the rate constant
        args += ["--min-lr", "3e-3"]

    # As a user runs it: 5 epochs over the same 8 samples (20 steps).
    full = tmp_path / "full"
    result = run(str(EXAMPLES / script), *args, "--epochs", "5", "--out", str(full))
    for name in files:
        assert (full / name).stat().st_size > 0, name
    assert not list(full.glob("*.tmp")), "no temporary files left behind"
    rows = read_csv(full / "metrics.csv")
    assert [row["epoch"] for row in rows] == [0, 1, 2, 3, 4]
    losses = [row[loss_key] for row in rows]
    assert decreased(losses), f"{loss_key} per epoch: {losses}"
    assert "epoch 4" in result.stdout

    # Interrupted after 2 epochs, then resumed to 5: the same weights, optimizer state and metrics, bit for bit.
    main = load_example(script).main
    resumed = tmp_path / "resumed"
    main([*args, "--epochs", "2", "--out", str(resumed)])
    assert torch.load(resumed / "last.pt")["epoch"] == 1
    capsys.readouterr()
    history = main([*args, "--epochs", "5", "--out", str(resumed), "--resume"])
    assert f"resuming from {resumed / 'last.pt'} at epoch 2" in capsys.readouterr().out
    assert [row["epoch"] for row in history] == [0, 1, 2, 3, 4]
    assert_same_training_state(torch.load(full / "last.pt"), torch.load(resumed / "last.pt"))
    assert read_csv(resumed / "metrics.csv") == rows


def test_energy_example_single_pass_has_the_same_total_layers(root, tmp_path, one_thread, capsys):
    main = load_example("train_energy_minimisation.py").main
    args = [*TINY_MODEL, "--root", str(root), "--train-samples", "4", "--eval-samples", "4", "--batch-size", "4"]
    main([*args, "--epochs", "1", "--out", str(tmp_path), "--single-pass"])
    out = capsys.readouterr().out
    assert "iterative: 2 x 2 layers" in out and "single-pass: 1 x 4 layers" in out
    assert "training the single-pass model" in out
    blocks = {key.split(".")[1] for key in torch.load(tmp_path / "last.pt")["model"] if key.startswith("blocks.")}
    assert blocks == {"0"}, blocks


def test_nbody_example_trains_with_the_cli_tasks_inputs(root, tmp_path, one_thread, capsys):
    """The example's --invariant-inputs / --motion-edges are the CLI's --inputs invariant --motion-edges (the
    example predicts through the task), and the example trains with them."""
    example = load_example("train_nbody.py")
    args = [*TINY_MODEL, "--root", str(root), "--train-samples", "8", "--eval-samples", "8", "--batch-size", "4"]
    history = example.main([*args, "--epochs", "1", "--out", str(tmp_path), "--invariant-inputs", "--motion-edges"])
    state = torch.load(tmp_path / "last.pt")
    assert state["args"]["motion_edges"] is True
    assert 0 < history[0]["test_mse"] < history[0]["test_linear_mse"] * 10
    # the weights fit the CLI task's model: q_i q_j and the 3 motion invariants on every edge
    task = get_task(
        "nbody",
        ModelOptions(
            num_iterations=2,
            layers_per_iteration=2,
            num_degrees=2,
            channels=4,
            num_heads=2,
            inputs="invariant",
            motion_edges=True,
        ),
    )
    assert task.edge_dim == 4
    task.build_model().load_state_dict(state["model"])  # strict: same parameters, same shapes


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.slow
@pytest.mark.parametrize("average", [[], ["--ema-decay", "0.5"]], ids=["weights", "moving-average"])
def test_cli_train_then_evaluate(root, tmp_path, average):
    out = tmp_path / "run"
    data = ["--task", "dynamics", "--root", str(root), "--no-progress"]
    short = ["--epochs", "1", "--max-batches", "3", "--train-samples", "12", "--batch-size", "4"]
    result = run("-m", "pyg_se3", "train", *data, *TINY_MODEL, *short, *average, "--out", str(out))
    for name in ("metrics.csv", "metrics.json", "last.pt", "best.pt", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["epoch"] == 0
    # The training loss is an MSE of the scale of the validation ones (positions move ~1e-3 per block).
    assert 0 < row["train_loss"] < 100 * row["val_linear_mse"], row
    assert json.loads((out / "metrics.json").read_text()) == [row]
    assert read_csv(out / "metrics.csv")[0]["val_mse"] == pytest.approx(row["val_mse"], rel=1e-12)

    result = run("-m", "pyg_se3", "evaluate", *data, "--checkpoint", str(out / "best.pt"), "--batch-size", "256")
    report = json.loads(result.stdout)
    assert set(report) >= {"train", "val", "test"}
    # The checkpoint's model (with --ema-decay, the average) gives the metrics that the training run recorded
    # (other batch size: rounding only).
    assert report["val"]["mse"] == pytest.approx(row["val_mse"], rel=1e-4)
    assert report["test"]["linear_mse"] == pytest.approx(row["test_linear_mse"], rel=1e-4)


def _dynamics_trainer(root: Path, out: Path, epochs: int, lr: float = 3e-3, resume: bool = False) -> Trainer:
    """A tiny model on the first 8 training blocks, 4 steps per epoch; validation on 8 blocks."""
    options = ModelOptions(num_iterations=2, layers_per_iteration=2, num_degrees=2, channels=4, num_heads=2)
    task = get_task("dynamics", options)
    sets = task.datasets(str(root))
    seed_everything(0)
    model = task.build_model(task.displacement_scale(sets["train"]))
    config = TrainConfig(epochs=epochs, batch_size=2, lr=lr, out=str(out), resume=resume, progress=False)
    return Trainer(model, task, sets["train"][:8], sets["val"][:8], config)


@pytest.mark.slow
def test_trainer_loss_decreases_and_the_check_can_fail(root, tmp_path, one_thread):
    losses = [row["train_loss"] for row in _dynamics_trainer(root, tmp_path / "learns", epochs=5).fit()]
    assert decreased(losses), f"train_loss per epoch: {losses}"
    # The same run without learning (a negligible learning rate) fails the check.
    frozen = [row["train_loss"] for row in _dynamics_trainer(root, tmp_path / "frozen", 5, lr=1e-12).fit()]
    assert not decreased(frozen), f"train_loss per epoch: {frozen}"


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_trainer_resumes_an_interrupted_run_exactly(root, tmp_path, one_thread):
    _dynamics_trainer(root, tmp_path / "full", epochs=3).fit()

    def stop_after_epoch_0(row):
        if row["epoch"] == 0:
            raise _Interrupt  # as if killed after the first epoch's checkpoint was written

    with pytest.raises(_Interrupt):
        _dynamics_trainer(root, tmp_path / "resumed", epochs=3).fit(on_epoch_end=stop_after_epoch_0)
    trainer = _dynamics_trainer(root, tmp_path / "resumed", epochs=3, resume=True)
    assert trainer.start_epoch == 1
    trainer.fit()
    full, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("full", "resumed"))
    assert_same_training_state(full, resumed)


@pytest.mark.slow
def test_cli_resume_with_more_epochs_matches_an_uninterrupted_run(root, tmp_path, one_thread):
    args = ["train", "--task", "dynamics", "--root", str(root), "--no-progress", *TINY_MODEL]
    args += ["--train-samples", "8", "--batch-size", "4"]
    assert cli.main([*args, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert cli.main([*args, "--epochs", "1", "--out", str(tmp_path / "resumed")]) == 0
    assert cli.main([*args, "--epochs", "2", "--out", str(tmp_path / "resumed"), "--resume"]) == 0
    full, resumed = (torch.load(tmp_path / d / "last.pt", weights_only=False) for d in ("full", "resumed"))
    assert resumed["epoch"] == 2
    assert_same_training_state(full, resumed)
