"""No silent wrong results, no lost checkpoints: bad options are refused in one line naming the option, epochs
that trained nothing or validated to NaN say so, the best checkpoint survives a kill between the two saves, and
``--resume`` refuses options that differ from the checkpoint's.

The Trainer runs in-process on a toy task (a scalar fit, a few samples); the CLI runs in-process through
``cli.main`` with a tiny model. Most refusals happen before any data is loaded: those never create ``--root``.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_identical
from torch import nn
from torch_geometric.data import Data

from pyg_se3.runtime import cli, tasks, training
from pyg_se3.runtime.training import TrainConfig, Trainer

TINY = ["--iterations", "1", "--layers", "1", "--channels", "2", "--degrees", "1", "--heads", "1"]
SHORT = ["--train-samples", "4", "--batch-size", "2", "--max-batches", "1", "--epochs", "1", "--no-progress"]


# ---------------------------------------------------------------------------------------------- the toy task
class ScriptedTask:
    """Fit a scalar to 3; the validation loss of epoch ``e`` is ``val_losses[e]`` (``None``: the real one)."""

    def __init__(self, val_losses: list[float] | None = None) -> None:
        self.val_losses, self.epoch = val_losses, 0

    def loss(self, model, batch):
        return (model(batch.x) - batch.y).square().mean()

    def metrics(self, model, batch):
        n = batch.num_graphs
        if self.val_losses is None:
            return {"loss": (float(self.loss(model, batch)) * n, n)}
        return {"loss": (self.val_losses[self.epoch] * n, n)}


class EpochData(list):
    """A training set that tells the task which epoch runs (the Trainer calls ``set_epoch``)."""

    def __init__(self, items: list, task: ScriptedTask) -> None:
        super().__init__(items)
        self.task = task

    def set_epoch(self, epoch: int, seed: int) -> None:
        self.task.epoch = epoch


def samples(n: int = 4, target: float = 3.0) -> list[Data]:
    return [Data(x=torch.ones(1, 1), y=torch.full((1, 1), target), num_nodes=1) for _ in range(n)]


def toy_trainer(out: Path, epochs: int, val_losses=None, resume=False, target=3.0) -> Trainer:
    torch.manual_seed(0)
    task = ScriptedTask(val_losses)
    # a constant learning rate: runs resumed with more epochs train as an uninterrupted one
    config = TrainConfig(epochs=epochs, batch_size=2, lr=0.1, min_lr=0.1, out=str(out), resume=resume, progress=False)
    return Trainer(nn.Linear(1, 1), task, EpochData(samples(target=target), task), samples(), config)


def load(path: Path) -> dict:
    return torch.load(path, weights_only=False)


def strict_json(path: Path):
    """``json.loads`` that refuses NaN and Infinity (not JSON)."""

    def refuse(constant: str):
        raise ValueError(f"{path}: {constant} is not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------------------------------------- TrainConfig
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("grad_clip", -1.0),
        ("grad_clip", 0.0),
        ("grad_clip", math.inf),
        ("grad_clip", math.nan),
        ("max_batches", 0),
        ("max_batches", -1),
        ("lr", math.inf),
        ("lr", math.nan),
        ("min_lr", math.nan),
        ("weight_decay", math.inf),
        ("weight_decay", -1.0),
    ],
)
def test_train_config_refuses_values_that_train_wrongly(option, value):
    with pytest.raises(ValueError, match=option):
        TrainConfig(**{option: value})


# ---------------------------------------------------------------------------------------------- the Trainer
def test_an_epoch_without_a_step_reports_nan_and_warns(tmp_path, capsys):
    trainer = toy_trainer(tmp_path, epochs=1, target=math.nan)  # every training batch is non-finite: skipped
    history = trainer.fit()
    assert math.isnan(history[0]["train_loss"])
    assert "epoch 0 made no optimisation step" in capsys.readouterr().err
    assert strict_json(tmp_path / "metrics.json")[0]["train_loss"] is None


def test_a_nan_validation_epoch_never_counts_as_best(tmp_path):
    trainer = toy_trainer(tmp_path, epochs=3, val_losses=[math.nan, 0.3, 0.5])
    trainer.fit()
    assert trainer.best_val == 0.3
    best, last = load(tmp_path / "best.pt"), load(tmp_path / "last.pt")
    assert best["epoch"] == 2 and best["best_val"] == 0.3 and last["best_val"] == 0.3
    rows = strict_json(tmp_path / "metrics.json")  # valid JSON: non-finite numbers are null
    assert [row["val_loss"] for row in rows] == [None, 0.3, 0.5]
    assert "nan" in (tmp_path / "metrics.csv").read_text()


def test_the_best_checkpoint_survives_a_kill_between_the_two_saves(tmp_path, monkeypatch):
    val_losses = [0.5, 0.3, 0.4]  # epoch 1 is the best
    toy_trainer(tmp_path / "full", epochs=3, val_losses=val_losses).fit()
    saves, save = [], training.atomic_save

    def killed_at_the_fourth_save(obj, path):  # epoch 0 writes two files, epoch 1 dies between its two
        saves.append(path)
        if len(saves) == 4:
            raise KeyboardInterrupt
        save(obj, path)

    monkeypatch.setattr(training, "atomic_save", killed_at_the_fourth_save)
    with pytest.raises(KeyboardInterrupt):
        toy_trainer(tmp_path / "killed", epochs=3, val_losses=val_losses).fit()
    monkeypatch.setattr(training, "atomic_save", save)
    toy_trainer(tmp_path / "killed", epochs=3, val_losses=val_losses, resume=True).fit()
    for name in ("best.pt", "last.pt"):
        full, resumed = load(tmp_path / "full" / name), load(tmp_path / "killed" / name)
        for key in ("epoch", "model", "optimizer", "history", "best_val"):
            assert_identical(full[key], resumed[key], f"{name}[{key!r}]")
    assert load(tmp_path / "killed" / "best.pt")["epoch"] == 2


def test_resume_rewrites_a_best_checkpoint_that_an_older_version_lost(tmp_path):
    """An older version wrote last.pt first: a kill after it left best.pt an improvement behind."""
    val_losses = [0.5, 0.3, 0.4]
    toy_trainer(tmp_path / "full", epochs=3, val_losses=val_losses).fit()
    out = tmp_path / "old"
    toy_trainer(out, epochs=1, val_losses=val_losses).fit()
    stale = load(out / "best.pt")
    toy_trainer(out, epochs=2, val_losses=val_losses, resume=True).fit()
    torch.save(stale, out / "best.pt")  # as if killed before epoch 1's best.pt
    toy_trainer(out, epochs=3, val_losses=val_losses, resume=True).fit()
    assert_identical(load(tmp_path / "full" / "best.pt")["model"], load(out / "best.pt")["model"])
    assert load(out / "best.pt")["epoch"] == 2


# ---------------------------------------------------------------------------------------------- CLI refusals
def cli_error(capsys, *argv: str) -> str:
    """Run ``pyg-se3 *argv`` in-process; it must fail with exit status 2 and one ``pyg-se3: error:`` line."""
    assert cli.main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("pyg-se3: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def train_args(tmp_path: Path, *extra: str, root: Path | None = None) -> list[str]:
    root = tmp_path / "no-data" if root is None else root
    return ["train", "--task", "dynamics", "--root", str(root), "--out", str(tmp_path / "out"), *TINY, *SHORT, *extra]


CUDA = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@pytest.mark.parametrize(
    ("extra", "option"),
    [
        (["--grad-clip", "-1"], "--grad-clip"),
        (["--grad-clip", "inf"], "--grad-clip"),
        (["--grad-clip", "nan"], "--grad-clip"),
        (["--ema-decay", "1"], "--ema-decay"),
        (["--ema-decay", "-0.1"], "--ema-decay"),
        (["--ema-decay", "nan"], "--ema-decay"),
        (["--max-batches", "0"], "--max-batches"),
        (["--max-batches", "-1"], "--max-batches"),
        (["--iterations", "0"], "--iterations"),
        (["--layers", "0"], "--layers"),
        (["--degrees", "0"], "--degrees"),
        (["--channels", "0"], "--channels"),
        (["--heads", "0"], "--heads"),
        (["--channels-div", "0"], "--channels-div"),
        (["--k", "0"], "--k"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--train-samples", "0"], "--train-samples"),
        (["--lr", "inf"], "--lr"),
        (["--lr", "0"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--min-lr", "inf"], "--min-lr"),
        (["--min-lr", "1"], "--min-lr"),
        (["--weight-decay", "inf"], "--weight-decay"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--radius", "inf"], "--radius"),
        (["--radius", "0"], "--radius"),
        (["--warmup-epochs", "-1"], "--warmup-epochs"),
        (["--warmup-epochs", "nan"], "--warmup-epochs"),
        (["--warmup-epochs", "100"], "--warmup-epochs"),
        (["--eval-every", "0"], "--eval-every"),
        (["--eval-batch-size", "0"], "--eval-batch-size"),
        (["--device", "bogus"], "--device"),
        (["--device", CUDA], "--device"),
    ],
)
def test_cli_refuses_a_bad_option_before_loading_data(tmp_path, capsys, extra, option):
    line = cli_error(capsys, *train_args(tmp_path, *extra))
    assert line.startswith(f"pyg-se3: error: {option}: "), line
    assert not (tmp_path / "no-data").exists(), "refused before any data was loaded"
    assert not (tmp_path / "out").exists()


def test_cli_refuses_reflections_for_a_task_without_them(tmp_path, capsys):
    argv = train_args(tmp_path, "--reflect")
    line = cli_error(capsys, *argv[:2], "energy", *argv[3:])
    expected = "--reflect: the 'energy' task has no reflection augmentation (dynamics and nbody have)"
    assert line == f"pyg-se3: error: {expected}"
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "out").exists()


def test_cli_refuses_time_reversal_for_a_task_without_it(tmp_path, capsys):
    argv = train_args(tmp_path, "--time-reversal")
    line = cli_error(capsys, *argv[:2], "energy", *argv[3:])
    expected = "--time-reversal: the 'energy' task has no time-reversed samples (dynamics and nbody have)"
    assert line == f"pyg-se3: error: {expected}"
    assert not (tmp_path / "no-data").exists() and not (tmp_path / "out").exists()


def test_augmentations_are_named_from_the_tasks_that_have_them(monkeypatch):
    have = {name: (task.has_reflection(), task.has_time_reversal()) for name, task in tasks.TASKS.items()}
    assert have == {"dynamics": (True, True), "energy": (False, False), "nbody": (True, True)}
    helps = _train_helps()
    assert helps["reflect"].endswith("(dynamics and nbody)")
    assert helps["time_reversal"].endswith("(dynamics and nbody)")

    class Reflected(tasks.TASKS["energy"]):  # a task that gains the augmentation appears in help and errors
        def reflection(self):
            raise AssertionError("not called")

    monkeypatch.setitem(tasks.TASKS, "reflected", Reflected)
    helps = _train_helps()
    assert helps["reflect"].endswith("(dynamics and nbody and reflected)")
    assert helps["time_reversal"].endswith("(dynamics and nbody)")
    monkeypatch.setattr(tasks, "TASKS", {"energy": tasks.TASKS["energy"], "nbody": tasks.TASKS["nbody"]})
    with pytest.raises(ValueError, match=r"no reflection augmentation \(nbody has\)$"):
        tasks.get_task("energy", tasks.ModelOptions()).reflection()


def _train_helps() -> dict[str, str]:
    """The ``train`` subcommand's help texts by destination, from a parser built afresh."""
    commands = next(action for action in cli.build_parser()._actions if action.dest == "command")
    return {action.dest: action.help for action in commands.choices["train"]._actions}


def test_cli_refuses_an_out_that_is_a_file(tmp_path, capsys):
    (tmp_path / "out").write_text("not a folder")
    assert cli_error(capsys, *train_args(tmp_path)).startswith("pyg-se3: error: --out: ")
    assert not (tmp_path / "no-data").exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 10, None])  # empty, damaged, truncated
def test_cli_refuses_an_unreadable_checkpoint(tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "last.pt"
    if content is None:
        torch.save({"model": {"w": torch.ones(100)}}, path)
        content = path.read_bytes()[:200]
    path.write_bytes(content)
    line = cli_error(capsys, *train_args(tmp_path, "--resume"))
    assert line.startswith("pyg-se3: error: --resume: ") and str(path) in line, line
    line = cli_error(
        capsys, "evaluate", "--task", "dynamics", "--root", str(tmp_path / "no-data"), "--checkpoint", str(path)
    )
    assert line.startswith("pyg-se3: error: --checkpoint: ") and str(path) in line, line
    assert not (tmp_path / "no-data").exists()


def test_cli_evaluate_refuses_a_missing_checkpoint(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    line = cli_error(
        capsys, "evaluate", "--task", "dynamics", "--root", str(tmp_path / "no-data"), "--checkpoint", missing
    )
    assert line.startswith("pyg-se3: error: --checkpoint: ") and missing in line, line


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def test_cli_on_nan_stop_is_one_line(tmp_path, capsys, monkeypatch, root, one_thread):
    nan_loss = lambda self, model, batch: math.nan * sum(p.sum() for p in model.parameters())  # noqa: E731
    monkeypatch.setattr(tasks.DynamicsTask, "loss", nan_loss)
    line = cli_error(capsys, *train_args(tmp_path, "--on-nan", "stop", root=root))
    assert line.startswith("pyg-se3: error: --on-nan stop: non-finite loss"), line


# ---------------------------------------------------------------------------------------------- resume
@pytest.fixture(scope="module")
def trained(root, tmp_path_factory) -> Path:
    """A one-epoch run of the tiny model (its options: TINY, SHORT, --lr 0.002, --graph knn --k 3)."""
    out = tmp_path_factory.mktemp("trained")
    argv = train_args(out, "--lr", "0.002", "--graph", "knn", "--k", "3", root=root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "out"


def copy_of(trained: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(trained, out)
    return out


@pytest.mark.parametrize(
    ("extra", "recorded"),
    [
        (["--graph", "radius"], "knn"),
        (["--k", "4"], "3"),
        (["--detach-basis"], "False"),
        (["--seed", "1"], "0"),
        (["--lr", "0.001"], "0.002"),
        (["--channels", "4"], "2"),
        (["--kernel", "depthwise"], "full"),
        (["--parity"], "False"),
        (["--radial-scaling", "forward"], "init"),
        (["--iterations", "2"], "1"),
        (["--batch-size", "4"], "2"),
        (["--max-batches", "2"], "1"),
        (["--train-samples", "8"], "4"),
        (["--grad-clip", "0"], "1.0"),
        (["--share-weights"], "False"),
        (["--relative-position"], "False"),
        (["--integrator", "velocity"], "position"),
        (["--inverse-distance", "0.1"], "0.0"),
        (["--inverse-powers", "2"], "1"),
        (["--inverse-scaled"], "False"),
        (["--reflect"], "False"),
        (["--time-reversal"], "False"),
        (["--warmup-epochs", "0.5"], "0.0"),
        (["--weight-decay-on", "weights"], "all"),
        (["--eval-every", "2"], "1"),
        (["--ema-decay", "0.9"], "0.0"),
    ],
)
def test_resume_refuses_an_option_that_differs_from_the_checkpoint(trained, tmp_path, capsys, extra, recorded):
    out = copy_of(trained, tmp_path)
    before = (out / "last.pt").read_bytes()
    base = ["train", "--task", "dynamics", "--root", str(tmp_path / "no-data"), "--out", str(out), "--resume"]
    line = cli_error(capsys, *base, *extra)
    option = extra[0].replace("--no-", "--")
    expected = f"pyg-se3: error: {option}: the checkpoint in {out} was trained with {recorded}; resume with the same"
    assert line.startswith(expected), line
    assert (out / "last.pt").read_bytes() == before
    assert not (tmp_path / "no-data").exists()


def test_resume_refuses_another_task(trained, tmp_path, capsys):
    out = copy_of(trained, tmp_path)
    line = cli_error(capsys, "train", "--task", "nbody", "--out", str(out), "--resume", "--root", str(tmp_path / "x"))
    assert line.startswith(f"pyg-se3: error: --task: the checkpoint in {out} was trained with dynamics"), line


def test_resume_takes_the_options_it_is_not_given_from_the_checkpoint(trained, root, tmp_path, one_thread):
    out = copy_of(trained, tmp_path)
    first = load(out / "last.pt")["config"]
    # the same value of an option is fine; --epochs, --device, --no-progress, --root, --eval-batch-size may change
    argv = ["train", "--task", "dynamics", "--root", str(root), "--out", str(out), "--resume", "--k", "3"]
    assert cli.main([*argv, "--epochs", "2", "--device", "cpu", "--no-progress", "--eval-batch-size", "7"]) == 0
    last = load(out / "last.pt")
    assert last["config"]["eval_batch_size"] == 7 and first["eval_batch_size"] is None
    assert last["epoch"] == 2 and [row["epoch"] for row in last["history"]] == [0, 1]
    for key in ("batch_size", "lr", "min_lr", "schedule", "weight_decay", "seed", "grad_clip", "max_batches"):
        assert last["config"][key] == first[key], key
    assert last["config"]["extra"] == first["extra"]
    assert last["config"]["extra"]["model"]["graph"] == "knn" and last["config"]["lr"] == 0.002


def test_amp_trains_the_model_under_autocast_and_resume_may_change_it(trained, root, tmp_path, one_thread):
    """``--amp`` reaches the trainer and the model trains under it; like ``--device`` it is how to run, not what:
    ``--resume`` takes another value, or none."""
    out = copy_of(trained, tmp_path)
    assert load(out / "last.pt")["config"]["amp"] is None
    argv = ["train", "--task", "dynamics", "--root", str(root), "--out", str(out), "--resume", "--no-progress"]
    for epochs, amp in ((2, "bf16"), (3, "fp16"), (4, None)):
        assert cli.main([*argv, "--epochs", str(epochs), *(["--amp", amp] if amp else [])]) == 0
        state = load(out / "last.pt")
        row = state["history"][-1]
        assert state["config"]["amp"] == amp and ("scaler" in state) == (amp == "fp16")
        assert ("loss_scale" in row) == (amp == "fp16") and math.isfinite(row["train_loss"])
        assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    scales = [row.get("loss_scale") for row in state["history"]]
    assert scales[:2] == [None, None] and scales[2] > 0 and scales[3] is None


def test_a_model_option_the_checkpoint_predates_is_its_default_on_resume(trained, root, tmp_path, capsys, one_thread):
    # a checkpoint written before --parity existed: the run had none, and resuming keeps it so
    out = copy_of(trained, tmp_path)
    state = load(out / "last.pt")
    del state["config"]["extra"]["model"]["parity"]
    torch.save(state, out / "last.pt")
    resume = ["train", "--task", "dynamics", "--root", str(root), "--out", str(out), "--resume"]
    line = cli_error(capsys, *resume, "--parity")
    assert line.startswith(f"pyg-se3: error: --parity: the checkpoint in {out} was trained with False"), line
    assert cli.main([*resume, "--epochs", "2"]) == 0
    last = load(out / "last.pt")
    assert last["epoch"] == 2 and last["config"]["extra"]["model"]["parity"] is False


@pytest.mark.parametrize(("flag", "key"), [("--reflect", "reflect"), ("--time-reversal", "time_reversal")])
def test_dynamics_augmentation_is_recorded_applied_and_kept_on_resume(root, tmp_path, one_thread, flag, key):
    """``--reflect`` (inverted graphs) and ``--time-reversal`` (blocks run backwards) on the dynamics task: another
    first training loss from the same seed and batches, recorded, and kept by a resumed run without being told."""
    losses = {}
    for name, extra in (("plain", []), ("augmented", [flag])):
        out = tmp_path / name
        argv = train_args(tmp_path, "--train-samples", "16", "--max-batches", "4", *extra, root=root)
        argv[argv.index("--out") + 1] = str(out)  # the later --train-samples and --max-batches win
        assert cli.main(argv) == 0
        state = load(out / "last.pt")
        assert state["config"]["extra"][key] is bool(extra)
        losses[name] = state["history"][0]["train_loss"]
    assert math.isfinite(losses["augmented"]) and losses["augmented"] != losses["plain"]
    resume = ["train", "--task", "dynamics", "--root", str(root), "--out", str(tmp_path / "augmented"), "--resume"]
    assert cli.main([*resume, "--epochs", "2", "--no-progress"]) == 0
    assert load(tmp_path / "augmented" / "last.pt")["config"]["extra"][key] is True


def test_cli_evaluate_batches_at_the_tasks_evaluation_size(root, tmp_path, one_thread, monkeypatch, capsys):
    """``pyg-se3 evaluate`` evaluates nbody in batches of 256 (train's ``--eval-batch-size`` default), or of
    ``--batch-size`` when given, with the metrics the training run recorded."""
    argv = train_args(tmp_path, "--train-samples", "16", "--max-batches", "2", "--eval-every", "1", root=root)
    argv[2] = "nbody"
    assert cli.main(argv) == 0
    recorded = load(tmp_path / "out" / "best.pt")["history"][-1]
    capsys.readouterr()
    sizes = []
    loader = Trainer.loader

    def recording_loader(self, dataset, shuffle, epoch=0):
        batches = list(loader(self, dataset, shuffle, epoch))
        sizes.append([batch.num_graphs for batch in batches])
        return batches

    monkeypatch.setattr(Trainer, "loader", recording_loader)
    checkpoint = ["evaluate", "--task", "nbody", "--root", str(root), "--checkpoint", str(tmp_path / "out" / "best.pt")]
    for extra, size in (([], 256), (["--batch-size", "600"], 600)):
        sizes.clear()
        assert cli.main([*checkpoint, "--no-progress", *extra]) == 0
        report = json.loads(capsys.readouterr().out)
        assert [batches[0] for batches in sizes] == [size] * 3  # train, val, test
        assert [sum(batches) for batches in sizes] == [3000, 2000, 2000]
        assert report["val"]["mse"] == pytest.approx(recorded["val_mse"], rel=1e-5)
        assert report["test"]["mse"] == pytest.approx(recorded["test_mse"], rel=1e-5)


def test_time_reversal_is_recorded_applied_and_kept_on_resume(root, tmp_path, one_thread):
    """``--time-reversal`` trains on reversed nbody samples (another first training loss from the same seed and
    batches), is recorded, and a resumed run keeps it and ends where an uninterrupted one does."""
    runs = {}
    for name, extra, epochs in (
        ("plain", [], "2"),
        ("reversed", ["--time-reversal"], "2"),
        ("parts", ["--time-reversal"], "1"),
    ):
        out = tmp_path / name
        argv = train_args(
            tmp_path, "--train-samples", "16", "--max-batches", "4", "--epochs", epochs, *extra, root=root
        )
        argv[2], argv[argv.index("--out") + 1] = "nbody", str(out)  # the later options win
        assert cli.main(argv) == 0
        runs[name] = load(out / "last.pt")
        assert runs[name]["config"]["extra"]["time_reversal"] is bool(extra)
    assert runs["reversed"]["history"][0]["train_loss"] != runs["plain"]["history"][0]["train_loss"]
    resume = ["train", "--task", "nbody", "--root", str(root), "--out", str(tmp_path / "parts"), "--resume"]
    assert cli.main([*resume, "--epochs", "2", "--no-progress"]) == 0
    parts = load(tmp_path / "parts" / "last.pt")
    assert parts["config"]["extra"]["time_reversal"] is True
    assert parts["history"] == runs["reversed"]["history"]
    assert_identical(parts["model"], runs["reversed"]["model"], "model")
    assert parts["config"]["eval_batch_size"] == 256  # nbody's default
