"""A training run killed with SIGKILL in the middle of an epoch, then resumed with ``--resume``, ends with exactly
the weights, optimizer state and metrics of an uninterrupted run (CPU, ``--deterministic``); the checkpoints it
left behind load.

Both runs are real ``pyg-se3 train`` processes. The killed one shows its progress bars on stderr (a file): after
epoch 0's checkpoint exists, the first bar update of epoch 1 that carries a loss says that an optimiser step of
epoch 1 has been taken, and the process is killed at once, with epoch 1 unfinished (checked afterwards: ``last.pt``
holds epoch 0 and ``metrics.json`` one row). The library has no test hook: the bar is what a user would watch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_identical

from pyg_se3.runtime.tasks import ModelOptions, get_task

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("TQDM_DISABLE", None)  # the killed run's progress bars say where it is
TINY_MODEL = ["--channels", "4", "--heads", "2", "--degrees", "2", "--iterations", "2", "--layers", "2"]
# 4 steps of 16 samples per epoch, then validation and test (400 samples each) with batches of 16.
TRAIN = ["--task", "dynamics", "--train-samples", "64", "--batch-size", "16", "--epochs", "3", "--deterministic"]
STEP_OF_EPOCH_1 = re.compile(r"epoch 1:[^\r\n]*loss=")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def train(root: Path, out: Path, *extra: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    command = [sys.executable, "-m", "pyg_se3", "train", *TRAIN, *TINY_MODEL, "--root", str(root), "--out", str(out)]
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=stderr, env=ENV, cwd=REPO)


def finish(process: subprocess.Popen, timeout: float = 240) -> None:
    try:
        assert process.wait(timeout=timeout) == 0, f"{process.args} exited with {process.returncode}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(root, tmp_path):
    get_task("dynamics", ModelOptions()).datasets(str(root))  # the dataset files, before two processes read them
    log = tmp_path / "killed.stderr"
    with open(log, "w") as stderr:
        killed = train(root, tmp_path / "killed", stderr=stderr)
    full = train(root, tmp_path / "full", "--no-progress")  # meanwhile, on the other core
    try:
        deadline = time.monotonic() + 240
        while not STEP_OF_EPOCH_1.search(log.read_text(errors="replace")):
            assert killed.poll() is None, f"exited with {killed.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no step of epoch 1 seen"
            time.sleep(0.01)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(timeout=60) == -signal.SIGKILL
    except BaseException:
        for process in (killed, full):
            process.kill()
            process.wait()
        raise

    # Killed in epoch 1: epoch 0's checkpoints and metrics are there, whole; nothing of epoch 1 is.
    out = tmp_path / "killed"
    assert load(out / "last.pt")["epoch"] == 1  # the next epoch to run
    assert load(out / "best.pt")["epoch"] == 1
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())] == [0]

    resumed = train(root, out, "--no-progress", "--resume")
    finish(resumed)
    finish(full)
    for name in ("last.pt", "best.pt"):
        a, b = load(tmp_path / "full" / name), load(out / name)
        assert a["optimizer"]["state"], "the optimizer has state to compare"
        for key in ("epoch", "model", "optimizer", "history", "best_val"):
            assert_identical(a[key], b[key], f"{name}[{key!r}]")
    assert load(out / "last.pt")["epoch"] == 3
    assert (out / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()
