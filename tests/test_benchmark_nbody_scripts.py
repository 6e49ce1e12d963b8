"""Smoke tests of ``benchmarks/nbody_speed.py`` and ``benchmarks/nbody_errors.py`` on tiny inputs, in this
process, and the error summary's arithmetic."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pyg_se3.nn.kernel
from pyg_se3.fiber import Fiber
from pyg_se3.loader import FixedSizeLoader
from pyg_se3.runtime import cli
from pyg_se3.runtime.tasks import ModelOptions, from_checkpoint, get_task, mse_per_graph
from pyg_se3.runtime.training import read_checkpoint

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def scripts(monkeypatch: pytest.MonkeyPatch):
    """The two modules (their folder on ``sys.path``, as when they run as scripts)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import nbody_errors
    import nbody_speed

    return nbody_speed, nbody_errors


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def tiny_checkpoint(root: Path, out: Path, max_batches: int, seed: int = 0, extra: tuple[str, ...] = ()) -> str:
    """The ``best.pt`` of a one-epoch N-body run of a tiny model (``extra``: more options)."""
    args = ["train", "--task", "nbody", "--root", str(root), "--epochs", "1", "--max-batches", str(max_batches)]
    model = ["--iterations", "1", "--layers", "1", "--channels", "4", "--seed", str(seed), "--no-progress"]
    assert cli.main([*args, *model, *extra, "--out", str(out)]) == 0
    return str(out / "best.pt")


def test_the_error_summary(scripts):
    errors = torch.cat([torch.tensor([10.0]), torch.ones(98), torch.zeros(1)])
    summary = scripts[1].summary(errors[torch.randperm(100)])
    assert summary["systems"] == 100 and summary["max"] == 10.0
    assert summary["mean"] == pytest.approx(108 / 100) and summary["median"] == 1.0
    assert summary["standard_error"] == pytest.approx(errors.double().std().item() / 10)
    assert summary["worst_1pct_share"] == pytest.approx(10 / 108)
    assert summary["worst_5pct_share"] == pytest.approx(14 / 108)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_the_errors_of_a_checkpoint(scripts, root, tmp_path):
    out = tmp_path / "run"
    checkpoint = tiny_checkpoint(root, out, max_batches=1)
    record = scripts[1].main([checkpoint, "--root", str(root), "--splits", "test", "--out", str(tmp_path / "e.json")])
    assert json.loads((tmp_path / "e.json").read_text()) == record
    test = record["checkpoints"][checkpoint]["test"]
    evaluated = json.loads((out / "metrics.json").read_text())[-1]["test_mse"]
    assert test["mean"] == pytest.approx(evaluated, rel=1e-6)  # the trainer's own test MSE
    assert 0 < test["median"] < test["mean"] < test["max"] and 0.05 < test["worst_5pct_share"] < 1
    bins = test["by_closest_pair"]
    assert [b["from"] for b in bins] == [0.0, 0.2, 0.4, 0.7, 1.0] and bins[-1]["to"] == float("inf")
    assert sum(b["systems"] for b in bins) == test["systems"]
    assert sum(b["share"] for b in bins) == pytest.approx(1.0)
    weighted = sum(b["mean"] * b["systems"] for b in bins if b["systems"]) / test["systems"]
    assert weighted == pytest.approx(test["mean"], rel=1e-9)


def test_the_closest_pair_and_the_breakdown_by_it(scripts):
    errors_module = scripts[1]
    # two systems: the first's closest pair 0.1 apart, the second's 2.0 (of three particles each)
    pos = torch.tensor([[0.0, 0, 0], [0.1, 0, 0], [5, 0, 0], [0, 0, 0], [0, 2, 0], [0, 0, 3]], dtype=torch.float64)
    systems = torch.tensor([0, 0, 0, 1, 1, 1])
    closest = errors_module.closest_pair(pos, systems)
    torch.testing.assert_close(closest, torch.tensor([0.1, 2.0], dtype=torch.float64))
    rows = errors_module.by_closest_pair(torch.tensor([3.0, 1.0]), closest, [0.0, 0.5, 1.0])
    assert [(r["from"], r["to"], r["systems"], r["mean"], r["share"]) for r in rows] == [
        (0.0, 0.5, 1, 3.0, 0.75),
        (0.5, 1.0, 0, None, 0.0),
        (1.0, float("inf"), 1, 1.0, 0.25),
    ]


@pytest.mark.parametrize("bins", [["0.2", "0.4"], ["0", "0.4", "0.2"], ["0", "0.2", "0.2"]])
def test_the_distance_bins_are_checked(scripts, bins, capsys):
    with pytest.raises(SystemExit):
        scripts[1].parse_args(["a.pt", "--distance-bins", *bins])
    assert "--distance-bins: expected increasing edges starting at 0" in capsys.readouterr().err


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_the_errors_of_an_ensemble(scripts, root, tmp_path):
    checkpoints = [tiny_checkpoint(root, tmp_path / str(seed), max_batches=2, seed=seed) for seed in (0, 1)]
    args = ["--root", str(root), "--splits", "val", "--out", str(tmp_path / "e.json"), "--ensemble"]
    record = scripts[1].main([*checkpoints, *args])["checkpoints"]
    singles = [record[path]["val"]["mean"] for path in checkpoints]
    assert singles[0] != singles[1]
    # the MSE of the averaged prediction is at most the average MSE (convexity), with equality only if they agree
    assert record["ensemble of 2"]["val"]["mean"] < sum(singles) / 2
    twice = scripts[1].main([checkpoints[0], checkpoints[0], *args])["checkpoints"]["ensemble of 2"]["val"]
    single = record[checkpoints[0]]["val"]
    for twice_bin, single_bin in zip(twice.pop("by_closest_pair"), single.pop("by_closest_pair"), strict=True):
        assert twice_bin == pytest.approx(single_bin)
    assert twice == pytest.approx(single)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_the_errors_averaged_with_the_reflection(scripts, root, tmp_path):
    checkpoint = tiny_checkpoint(root, tmp_path / "run", max_batches=2)
    run, averaged, shares = scripts[1].predictions(checkpoint, str(root), ["val"], reflections=True)
    predicted, target, systems, inputs = run["val"]
    task, model = from_checkpoint(read_checkpoint(checkpoint))
    batch = next(iter(FixedSizeLoader(task.datasets(str(root))["val"], batch_size=2000)))
    inverted = inverted_batch(batch)
    with torch.no_grad():
        mirror = task.predict_output(model.eval(), inverted)
        hidden = task.predict_output(model, batch).x
    mirrored = -mirror.pos
    assert float((mirrored - predicted).abs().max()) > 1e-4  # the SE(3) model is not reflection-equivariant
    torch.testing.assert_close(averaged["val"][0], (predicted + mirrored) / 2, rtol=0, atol=1e-6)
    # the hidden fiber's odd part under the inversion: type 0 changes sign where it is odd, type 1 keeps it
    scalars, vectors = hidden[:, :4], hidden[:, 4:16]
    odd = {"0": (scalars - mirror.x[:, :4]) / 2, "1": (vectors + mirror.x[:, 4:16]) / 2}
    assert model.fiber_hidden.dim == 16
    for degree, part in odd.items():
        full = scalars if degree == "0" else vectors
        assert shares["val"][degree] == pytest.approx(float(part.square().sum() / full.square().sum()), rel=1e-5)
    assert shares["val"]["1"] > 1e-3  # the SE(3) model's vectors hold pseudo-vectors
    assert all(torch.equal(a, b) for a, b in zip(averaged["val"][1:], (target, systems, inputs), strict=True))
    record = scripts[1].main(
        [checkpoint, "--root", str(root), "--splits", "val", "--reflections", "--out", str(tmp_path / "e.json")]
    )
    rows = record["checkpoints"]
    assert set(rows) == {checkpoint, f"{checkpoint}, averaged with its reflection"}
    assert rows[checkpoint]["val"]["hidden_pseudo_share"] == pytest.approx(shares["val"], rel=1e-12)
    # convexity: the averaged prediction's MSE is below the mean of the two predictions' MSEs (they disagree)
    mirrored_mse = float(mse_per_graph(mirrored, target, systems).mean())
    averaged_mse = rows[f"{checkpoint}, averaged with its reflection"]["val"]["mean"]
    assert averaged_mse < (rows[checkpoint]["val"]["mean"] + mirrored_mse) / 2


def test_the_pseudo_share_of_hidden_features(scripts):
    fiber = Fiber({0: 1, 1: 2})
    true = torch.tensor([[2.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])  # a true scalar, a true vector, a zero vector
    pseudo = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 3.0, 4.0]])  # a pseudo-vector
    x, inverted = true + pseudo, true * torch.tensor([1.0, -1, -1, -1, -1, -1, -1]) + pseudo
    assert scripts[1].pseudo_share(fiber, x, inverted) == pytest.approx({"0": 0.0, "1": 25 / 26})
    assert scripts[1].pseudo_share(fiber, torch.zeros(1, 7), torch.zeros(1, 7)) == {"0": 0.0, "1": 0.0}


def inverted_batch(batch):
    """The N-body ``batch`` inverted through the origin: positions, velocities, targets and the type-1 input."""
    inverted = batch.clone()
    inverted.pos, inverted.vel, inverted.y = -batch.pos, -batch.vel, -batch.y
    inverted.x = torch.cat([batch.x[:, :1], -batch.x[:, 1:]], -1)
    return inverted


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_a_parity_model_has_no_pseudo_tensors(scripts, root, tmp_path):
    checkpoint = tiny_checkpoint(root, tmp_path / "run", max_batches=2, extra=("--parity",))
    run, averaged, shares = scripts[1].predictions(checkpoint, str(root), ["val"], reflections=True)
    assert set(shares["val"]) == {"0", "1"} and max(shares["val"].values()) < 1e-12
    assert float((averaged["val"][0] - run["val"][0]).abs().max()) < 1e-6  # reflection-equivariant already


def test_an_ensemble_needs_the_same_targets(scripts):
    positions = torch.randn(10, 3)
    systems = torch.arange(10) // 5
    run = {"test": (positions, positions + 1, systems, positions - 1)}
    other = {"test": (positions, positions + 2, systems, positions - 1)}
    averaged = scripts[1].ensemble([run, {"test": (positions + 2, positions + 1, systems, positions - 1)}], ["a", "b"])
    torch.testing.assert_close(averaged["test"][0], positions + 1)
    assert torch.equal(averaged["test"][1], positions + 1) and torch.equal(averaged["test"][2], systems)
    assert torch.equal(averaged["test"][3], positions - 1)
    with pytest.raises(ValueError, match="--ensemble: b was trained on other test data than a"):
        scripts[1].ensemble([run, other], ["a", "b"])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_the_speed_benchmark_runs(scripts, root, tmp_path, monkeypatch):
    nbody_speed = scripts[0]
    configurations = [("a", 4, 1, 1, "pyg", "loop", 4), ("b", 4, 1, 2, "fixed", "trainer", 8)]
    monkeypatch.setattr(nbody_speed, "CONFIGURATIONS", configurations)
    size = ["--iterations", "1", "--channels", "4", "--inverse-distance", "0.1", "--inverse-powers", "2"]
    size += ["--inverse-scaled", "--parity", "--train-systems", "8"]
    rows = nbody_speed.main(["--root", str(root), *size, "--device", "cpu", "--out", str(tmp_path), "--amp", "bf16"])
    saved = json.loads((tmp_path / "nbody_speed.json").read_text())
    assert saved["machine"]["device"] == "cpu"
    inverse = {"inverse_distance": 0.1, "inverse_powers": 2, "inverse_scaled": True, "parity": True}
    options = ModelOptions(1, 1, channels=4, inputs="invariant", motion_edges=True, **inverse)
    # the edge inputs (and so the parameters) hold 1/r, 1/r^2; parity drops the odd kernel paths
    built = get_task("nbody", options).build_model(1.0)
    assert built.parity and {key: saved["model"][key] for key in inverse} == inverse
    assert saved["model"]["parameters"] == sum(p.numel() for p in built.parameters())
    assert saved["rows"] == rows and [row["loader"] for row in rows] == ["pyg", "fixed", "fixed"]
    assert [(row["optimiser"], row["eval_batch_size"]) for row in rows] == [("loop", 4), ("trainer", 8), ("trainer", 8)]
    # --amp: the last configuration once more, its training steps under autocast
    assert [row["amp"] for row in rows] == [None, None, "bf16"] and rows[2]["configuration"] == "b, bf16 autocast"
    assert all(row["train_systems_per_s"] > 0 and row["epoch_s"] > 0 for row in rows)
    assert all(0 < row["bookkeeping_s_per_epoch"] < row["epoch_s"] for row in rows)
    assert all(len(row["train_passes_systems_per_s"]) == nbody_speed.REPEATS for row in rows)
    assert all(row["train_systems_per_s"] == max(row["train_passes_systems_per_s"]) for row in rows)
    assert rows[0]["speed_up"] == 1.0
    assert ("epoch_s" in saved["peer"]) == (saved["peer"].get("missing") is None)
    if "epoch_s" in saved["peer"]:  # the peer in the last configuration, compared with our last float32 row
        settings = ("batch_size", "threads", "eval_every", "loader", "optimiser", "eval_batch_size", "amp")
        assert [saved["peer"][key] for key in settings] == [rows[1][key] for key in settings]
        assert saved["peer"]["ours_over_peer_epoch"] == rows[1]["epoch_s"] / saved["peer"]["epoch_s"]
    table = (tmp_path / "nbody_speed.md").read_text()
    assert table.count("\n| ") >= 3 and "inverse distances s=0.1 powers 1..2, scaled" in table
    assert "4 channels, full kernel, parity, position integrator" in table


def test_the_speed_benchmark_takes_the_rows_in_turn(scripts):
    nbody_speed = scripts[0]
    calls, seen = [], []
    models = [nn.Linear(2, 2), nn.Linear(3, 1)]
    start = [model.weight.detach().clone() for model in models]
    rates = iter(range(1, 100))

    def timed(name, model):
        def one_pass():
            calls.append(name)
            seen.append(torch.equal(model.weight, start[models.index(model)]))  # every pass from the first weights
            with torch.no_grad():
                model.weight.add_(1.0)  # as training changes them
            return float(next(rates))

        return one_pass

    one_batch = lambda: [SimpleNamespace(num_graphs=1)]  # noqa: E731
    rows = [
        nbody_speed.Row(
            name, model, {"threads": 1, "eval_every": every}, timed(name, model), timed(name + "e", model), one_batch
        )
        for name, model, every in (("a", models[0], 1), ("b", models[1], 10))
    ]
    summaries = nbody_speed.measure(rows, repeats=2)
    assert calls == ["a", "ae", "b", "be"] * 3 and all(seen)  # a warm-up round, then two timed ones, in turn
    assert rows[0].train_rates == [5.0, 9.0] and rows[0].eval_rates == [6.0, 10.0]
    assert rows[1].train_rates == [7.0, 11.0] and rows[1].eval_rates == [8.0, 12.0]
    train, evaluated = nbody_speed.TRAIN, nbody_speed.EVALUATED
    assert [row["epoch_s"] for row in summaries] == [train / 9 + evaluated / 10, train / 11 + evaluated / 12 / 10]
    assert [(row["configuration"], row["train_systems_per_s"], row["eval_every"]) for row in summaries] == [
        ("a", 9.0, 1),
        ("b", 11.0, 10),
    ]
    assert [(row["train_passes_systems_per_s"], row["eval_passes_systems_per_s"]) for row in summaries] == [
        ([5.0, 9.0], [6.0, 10.0]),
        ([7.0, 11.0], [8.0, 12.0]),
    ]


def test_the_trainer_files_are_timed_as_fit_writes_them(scripts, tmp_path, monkeypatch):
    nbody_speed = scripts[0]
    model = nn.Linear(3, 2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    written = []
    for name in ("write_metrics", "plot"):
        method = getattr(nbody_speed.Trainer, name)
        monkeypatch.setattr(nbody_speed.Trainer, name, lambda self, m=method, n=name: written.append(n) or m(self))
    seconds = nbody_speed.bookkeeping_time(model, lambda batch: model.weight.sum(), 4, torch.device("cpu"), tmp_path)
    assert seconds > 0 and written == ["write_metrics"] * 3 + ["plot"] * 3
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())  # the model left alone
    state = torch.load(tmp_path / "last.pt", weights_only=False)
    assert all("exp_avg" in moments for moments in state["optimizer"]["state"].values())  # as after training
    assert len(state["optimizer"]["state"]) == 2 and len(state["history"]) == nbody_speed.HISTORY
    evaluated = [row["epoch"] for row in state["history"] if "val_mse" in row and "test_linear_mse" in row]
    assert evaluated == list(range(3, nbody_speed.HISTORY, 4))
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 1 + nbody_speed.HISTORY


def test_the_results_name_the_processor(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import machine

    fallback = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.partition(":")[2].strip() for line in lines if line.startswith("model name")]
    assert machine.processor() == (names[0] if names else fallback)  # e.g. "Intel(R) Xeon(R) ...", not "x86_64"
    monkeypatch.setattr(machine, "Path", lambda path: Path("/no/such/cpuinfo"))
    assert machine.processor() == fallback


def test_the_reverse_pairs_benchmark_runs(root, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import reverse_pairs

    argv = ["--root", str(root), "--nodes", "40", "--degrees", "1", "--batches", "1", "--repeats", "1"]
    result = reverse_pairs.main([*argv, "--rounds", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "reverse_pairs.json").read_text()) == result
    rows = result["rows"]
    assert [row["case"].split(" (")[0] for row in rows] == [
        "SE3Attention, degrees 0..1, 32 channels, radius graph of 40 points",
        "N-body 8 x 1 model",
        "N-body best model, 8 x 2 with inverse distances",
    ]
    assert rows[1]["edges"] == rows[2]["edges"] == 20 * 100
    assert all(t > 0 for row in rows for way in ("per_pair_s", "per_edge_s") for t in row[way].values())
    table = (tmp_path / "reverse_pairs.md").read_text()
    assert table.count("\n| ") == 4 and "1 batches of 100 systems" in table
    # the two ways of the N-body rows: every contraction paired, none
    flags = []
    kernel_contraction = pyg_se3.nn.kernel.kernel_contraction

    def recorded(*args, paired=False, **kwargs):
        flags.append(paired)
        return kernel_contraction(*args, paired=paired, **kwargs)

    monkeypatch.setattr(pyg_se3.nn.kernel, "kernel_contraction", recorded)
    for pairs in (True, False):
        flags.clear()
        reverse_pairs.nbody_passes(str(root), "8 x 1 model", 1, pairs, torch.device("cpu"))[2]()
        assert len(flags) == 8 * 2 and set(flags) == {pairs}  # 8 iterations, 2 output degrees
