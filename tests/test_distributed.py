"""Data-parallel training under ``torchrun``: 2 CPU processes (gloo, loopback) against one process.

The :class:`~pyg_se3.runtime.training.Trainer` runs in 2 processes of ``torchrun`` (this file is also the worker script,
see ``_worker``), in float64, on 12 training samples with 2 per process and step (global batch 4), one of which
has a NaN target. The reference is one process fed the same global batches (the union of both processes' local
batches of each step). Checked: the weights after 2 epochs agree to 1e-10 (they move by > 1e-3), the reported
training loss and validation metrics are those of the reference (evaluation shards the 5 validation samples 3 + 2
without padding), both processes skip the poisoned step together and end with identical weights and optimizer
states, only rank 0 writes files, checkpoints hold the plain model's ``state_dict``, and a distributed run
interrupted after one epoch and resumed on both processes ends bit-identical to an uninterrupted one.
The same training with DDP bypassed (no gradient all-reduce) is run as a control: it must *fail* the comparison.

A second test runs the ``pyg-se3`` CLI under ``torchrun`` and loads and evaluates its checkpoint in one process.

The workers run with warnings as errors, except the two PyG import warnings that pyproject.toml ignores too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_identical
from torch.utils.data.distributed import DistributedSampler
from torch_geometric.loader import DataLoader

from pyg_se3.runtime import distributed
from pyg_se3.runtime.tasks import ModelOptions, from_checkpoint, get_task
from pyg_se3.runtime.training import TrainConfig, Trainer, seed_everything

REPO = Path(__file__).resolve().parents[1]
WORLD, LOCAL_BATCH, EPOCHS = 2, 2, 2
NUM_TRAIN, NUM_VAL, POISONED = 12, 5, 5  # 3 steps per epoch; sample 5 has a NaN target
TINY_MODEL = ["--channels", "4", "--heads", "2", "--degrees", "2", "--iterations", "2", "--layers", "2"]
OPTIONS = ModelOptions(num_iterations=2, layers_per_iteration=2, num_degrees=2, channels=4, num_heads=2)
# Warnings are errors in the workers as in pytest (pyproject.toml), with the same two PyG import-time exceptions.
WARNINGS = ",".join(
    [
        "error",
        "ignore:'torch-cluster' is no longer necessary:DeprecationWarning",
        "ignore:`torch.jit.script` is deprecated:DeprecationWarning",
    ]
)
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "TQDM_DISABLE": "1",
    "GLOO_SOCKET_IFNAME": "lo",  # loopback only
    "PYTHONWARNINGS": WARNINGS,
}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}"]
    command += ["--master_addr=127.0.0.1", f"--master_port={free_port()}", *args]
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=240)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    return result


# ---------------------------------------------------------------------------------------------- the setting
def datasets(root: Path):
    """The dynamics task in float64: 12 training samples (one with a NaN target) and 5 validation ones."""
    task = get_task("dynamics", OPTIONS)
    sets = task.datasets(str(root), dtype=torch.float64)
    train = [sets["train"][i] for i in range(NUM_TRAIN)]
    train[POISONED].y = torch.full_like(train[POISONED].y, float("nan"))
    return task, train, sets["val"][:NUM_VAL], task.displacement_scale(sets["train"])


def make_trainer(root: Path, out: Path, batch_size: int, epochs: int = EPOCHS, resume: bool = False, cls=Trainer):
    task, train, val, scale = datasets(root)
    seed_everything(0)
    model = task.build_model(scale).double()
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-3, out=str(out), resume=resume, progress=False)
    return cls(model, task, train, val, config)


class SameGlobalBatches(Trainer):
    """One process fed the global batches of ``WORLD`` processes: step ``k`` sees every process's ``k``-th local
    batch (each process's share of the epoch drawn by ``DistributedSampler``, as the Trainer does under
    torchrun), concatenated."""

    def loader(self, dataset, shuffle, epoch=0):
        if not shuffle:
            return super().loader(dataset, shuffle, epoch)
        shares = []
        for rank in range(WORLD):
            sampler = DistributedSampler(dataset, WORLD, rank, shuffle=True, seed=self.config.seed * 1_000_003)
            sampler.set_epoch(epoch)
            shares.append(list(sampler))
        steps = range(0, len(shares[0]), LOCAL_BATCH)
        order = [i for k in steps for share in shares for i in share[k : k + LOCAL_BATCH]]
        return DataLoader([dataset[i] for i in order], batch_size=WORLD * LOCAL_BATCH)


# ---------------------------------------------------------------------------------------------- the worker
def _worker(root: Path, base: Path) -> None:
    """Run by each process of ``torchrun``: three trainings; every process saves its own final state."""
    distributed.setup("cpu")
    rank = distributed.rank()

    def save_state(trainer: Trainer, name: str) -> None:
        state = {"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}
        torch.save({**state, "skipped": trainer.skipped_batches}, base / "states" / f"{name}-rank{rank}.pt")

    with distributed.main_first():  # the test process has prepared the dataset files: nothing to write
        datasets(root)
    # 1. Each process is given its own output folder: only rank 0's may appear.
    trainer = make_trainer(root, base / f"full-rank{rank}", LOCAL_BATCH)
    trainer.fit()
    save_state(trainer, "full")
    # 2. Interrupted after one epoch (a shared folder), then resumed by a new Trainer on every process.
    make_trainer(root, base / "split", LOCAL_BATCH, epochs=1).fit()
    torch.manual_seed(1)  # a different initialisation: the weights must come from the checkpoint
    trainer = make_trainer(root, base / "split", LOCAL_BATCH, resume=True)
    assert trainer.start_epoch == 1
    trainer.fit()
    save_state(trainer, "split")
    # 3. Control: DDP bypassed, each process steps on its own local gradient.
    trainer = make_trainer(root, base / "unsynced", LOCAL_BATCH)
    trainer.train_model = trainer.model
    trainer.fit()
    distributed.cleanup()


# ---------------------------------------------------------------------------------------------- the tests
@pytest.mark.slow
def test_two_processes_train_like_one_process_on_the_same_global_batches(root, tmp_path, one_thread):
    reference = make_trainer(root, tmp_path / "reference", WORLD * LOCAL_BATCH, cls=SameGlobalBatches)
    initial = {k: v.clone() for k, v in reference.model.state_dict().items()}
    reference.fit()
    (tmp_path / "states").mkdir()
    torchrun(__file__, str(root), str(tmp_path))

    # Only rank 0 wrote files (each process was given its own folder).
    assert not (tmp_path / "full-rank1").exists()
    for name in ("last.pt", "best.pt", "metrics.csv", "metrics.json", "loss.png"):
        assert (tmp_path / "full-rank0" / name).stat().st_size > 0, name
    full = torch.load(tmp_path / "full-rank0" / "last.pt", weights_only=False)
    expected = torch.load(tmp_path / "reference" / "last.pt", weights_only=False)

    # The plain model's state_dict: it loads into a model without DDP.
    assert full["model"].keys() == expected["model"].keys()
    reference.model.load_state_dict(full["model"])

    # The same weights after 2 epochs of 3 steps (the poisoned one skipped): agreement to 1e-10, moves of 1e-3.
    moved = max(float((full["model"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1e-3, moved
    for key, value in expected["model"].items():
        assert value.dtype == torch.float64
        torch.testing.assert_close(full["model"][key], value, rtol=0, atol=1e-10, msg=key)
    assert all(int(s["step"]) == 4 for s in full["optimizer"]["state"].values())
    assert len(reference.skipped_batches) == EPOCHS  # the step with the poisoned sample, in every epoch

    # The reported numbers are those of the whole data.
    assert len(full["history"]) == EPOCHS
    for row, want in zip(full["history"], expected["history"], strict=True):
        assert row.keys() == want.keys()
        for key in row:
            assert row[key] == pytest.approx(want[key], rel=1e-12, abs=0), key

    # Both processes skipped the same steps and ended in the same state, bit for bit.
    states = {
        (name, rank): torch.load(tmp_path / "states" / f"{name}-rank{rank}.pt", weights_only=False)
        for name in ("full", "split")
        for rank in range(WORLD)
    }
    for name, first_epoch in (("full", 0), ("split", 1)):  # the resumed Trainer ran epoch 1 only
        skipped = [(epoch, index) for epoch, index in reference.skipped_batches if epoch >= first_epoch]
        assert states[name, 0]["skipped"] == states[name, 1]["skipped"] == skipped
        assert_identical(states[name, 0]["model"], states[name, 1]["model"])
        assert_identical(states[name, 0]["optimizer"], states[name, 1]["optimizer"])

    # Interrupted and resumed on both processes: the uninterrupted run, bit for bit.
    split = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    for key in ("epoch", "model", "optimizer", "history"):
        assert_identical(split[key], full[key])

    # Control: without the gradient all-reduce the comparison fails.
    unsynced = torch.load(tmp_path / "unsynced" / "last.pt", weights_only=False)
    gap = max(float((unsynced["model"][k] - v).abs().max()) for k, v in expected["model"].items())
    assert gap > 1e-6, gap


@pytest.mark.slow
def test_cli_under_torchrun(root, tmp_path, one_thread):
    out = tmp_path / "run"
    data = ["--task", "dynamics", "--root", str(root), "--no-progress"]
    short = ["--epochs", "1", "--train-samples", "8", "--batch-size", "2"]
    result = torchrun("-m", "pyg_se3", "train", *data, *TINY_MODEL, *short, "--out", str(out))
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [row["epoch"] for row in rows] == [0], result.stdout  # printed by rank 0 only
    assert "8 train samples in 2 processes" in result.stderr
    for name in ("metrics.csv", "metrics.json", "last.pt", "best.pt", "loss.png"):
        assert (out / name).stat().st_size > 0, name
    state = torch.load(out / "best.pt", weights_only=False)
    assert all(int(s["step"]) == 2 for s in state["optimizer"]["state"].values())  # 8 samples / (2 x 2) per step
    # One process loads the checkpoint (a plain state_dict) and finds the validation MSE the run reported.
    task, model = from_checkpoint(state)
    assert task.name == "dynamics"
    val = task.datasets(str(root))["val"]
    trainer = Trainer(model, task, val, None, TrainConfig(batch_size=256, out=str(tmp_path / "eval"), progress=False))
    assert trainer.evaluate(val)["mse"] == pytest.approx(rows[0]["val_mse"], rel=1e-5)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]), Path(sys.argv[2]))
