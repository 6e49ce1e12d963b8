"""The energy-minimisation experiment as its authors ran it: the model sees only (V, r) on every edge of every
iteration, fresh training configurations per (seed, epoch), exact resume; and the original code's model choices
(displacement by a hidden channel, relative positions in type-1 features, the bias-only norm, the harmonics-only
basis ablation), each equivariant."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_identical, relative_error
from torch_geometric.loader import DataLoader

from pyg_se3 import Fiber
from pyg_se3.datasets import EnergyConfigurations, EnergyMinimisation
from pyg_se3.graph import Complete
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.nn import SE3Norm
from pyg_se3.nn.kernel import EdgeKernel
from pyg_se3.runtime import cli
from pyg_se3.runtime.tasks import EnergyTask, ModelOptions
from pyg_se3.runtime.training import TrainConfig, Trainer
from pyg_se3.testing import assert_equivariant

SMALL = {"num_iterations": 3, "layers_per_iteration": 2, "num_degrees": 2, "channels": 2, "num_heads": 1}


def energy_batch(n: int = 3, seed: int = 0, dtype: torch.dtype = torch.float64):
    return next(iter(DataLoader(EnergyConfigurations(n, seed=seed, dtype=dtype), batch_size=n)))


# ------------------------------------------------------------------------------------------ the edge inputs
@pytest.mark.parametrize("displacement", ["head", "hidden"])
def test_edge_inputs_are_the_current_energy_and_length_at_every_iteration(monkeypatch, displacement):
    task = EnergyTask(ModelOptions(**SMALL, displacement=displacement))
    assert task.edge_dim == 1
    torch.manual_seed(0)
    model = task.build_model(0.3).double()
    for block in model.blocks:  # make every block move the points (heads start at zero)
        block.output.reset_parameters()
    seen = []
    original = EdgeKernel._invariants
    monkeypatch.setattr(EdgeKernel, "_invariants", staticmethod(lambda b, e: seen.append(original(b, e)) or seen[-1]))
    batch = energy_batch()
    out = task.predict_output(model, batch)
    layers = SMALL["layers_per_iteration"]
    assert len(seen) == SMALL["num_iterations"] * layers
    for t, edge_index in enumerate(out.edge_indices):
        pos = out.trajectory[t]
        assert (out.trajectory[t + 1] - pos).abs().max() > 1e-3  # the points moved, so the inputs change
        r = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        lookup = {(int(a), int(b)): p for a, b, p in zip(*batch.edge_index, batch.p, strict=True)}
        p = torch.stack([lookup[(int(a), int(b))] for a, b in edge_index.T])
        expected = torch.stack([r, EnergyMinimisation.pair_energy(r, p)], dim=-1)
        for invariants in seen[t * layers : (t + 1) * layers]:
            torch.testing.assert_close(invariants, expected, atol=1e-12, rtol=0)


def test_pair_parameters_are_fed_only_on_request():
    batch = energy_batch()
    for edge_inputs, columns in (("energy", 1), ("parameters", 2)):
        task = EnergyTask(ModelOptions(**SMALL, edge_inputs=edge_inputs))
        features = task.edge_attr_fn(batch)(batch.pos, batch.edge_index)
        assert task.edge_dim == columns and features.shape == (batch.edge_index.shape[1], columns)
        torch.testing.assert_close(features[:, -1], EnergyMinimisation.pair_energy(_lengths(batch), batch.p))
    torch.testing.assert_close(features[:, 0], batch.p)
    with pytest.raises(ValueError, match="edge_inputs"):
        EnergyTask(ModelOptions(edge_inputs="p"))


def _lengths(batch):
    return (batch.pos[batch.edge_index[0]] - batch.pos[batch.edge_index[1]]).norm(dim=-1)


# ------------------------------------------------------------------------------------------ the stream
def test_stream_is_a_function_of_seed_and_epoch():
    stream = EnergyConfigurations(50, seed=3)
    first = [d.pos.clone() for d in stream]
    stream.set_epoch(1)
    second = [d.pos.clone() for d in stream]
    stream.set_epoch(0)
    assert all(torch.equal(a, d.pos) for a, d in zip(first, stream, strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    other = EnergyConfigurations(50, seed=0)
    other.set_epoch(1, seed=3)
    assert all(torch.equal(a, d.pos) for a, d in zip(second, other, strict=True))
    # the samples' distribution: N(0, 0.5^2) positions, U(0, 1) pair parameters shared by both directions
    pos = torch.stack(first)
    assert abs(float(pos.std()) - 0.5) < 0.03 and abs(float(pos.mean())) < 0.03
    p = torch.cat([d.p for d in stream])
    assert 0 <= float(p.min()) and float(p.max()) < 1 and abs(float(p.mean()) - 0.5) < 0.05
    data = stream[0]
    table = torch.zeros(10, 10)
    table[data.edge_index[0], data.edge_index[1]] = data.p
    assert data.edge_index.shape == (2, 90) and torch.equal(table, table.T)


def test_stream_arguments_are_checked():
    for kwargs, name in (({"num_samples": 0}, "num_samples"), ({"pos_std": -1.0}, "pos_std"), ({"seed": -2}, "seed")):
        with pytest.raises(ValueError, match=name):
            EnergyConfigurations(**kwargs)
    with pytest.raises(ValueError, match="pos_std"):
        EnergyConfigurations(4, pos_std=1e300)  # finite in float64, infinite in float32
    with pytest.raises(ValueError, match="epoch"):
        EnergyConfigurations(4).set_epoch(-1)


def test_trainer_draws_each_epochs_samples_and_resumes_bit_exactly(tmp_path):
    task = EnergyTask(ModelOptions(**{**SMALL, "num_iterations": 2, "layers_per_iteration": 1}))
    val = EnergyConfigurations(8, seed=99, dtype=torch.float64)

    def trainer(out, epochs, resume=False):
        torch.manual_seed(0)
        stream = EnergyConfigurations(12, dtype=torch.float64)
        model = task.build_model(0.3).double()
        config = TrainConfig(epochs=epochs, batch_size=4, seed=5, out=str(out), resume=resume, progress=False)
        config = TrainConfig(**{**config.__dict__, "schedule": "step", "min_lr": 1e-4})
        return Trainer(model, task, stream, val, config), stream

    full, stream = trainer(tmp_path / "full", 3)
    full.fit()
    assert (stream.epoch, stream.seed) == (2, 5)  # the trainer set the epoch and the run's seed
    part, _ = trainer(tmp_path / "part", 3)

    def interrupt(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # killed after epoch 1's checkpoint

    with pytest.raises(KeyboardInterrupt):
        part.fit(on_epoch_end=interrupt)
    resumed, _ = trainer(tmp_path / "part", 3, resume=True)
    assert resumed.start_epoch == 2
    resumed.fit()
    a, b = (torch.load(p / "last.pt", weights_only=False) for p in (tmp_path / "full", tmp_path / "part"))
    for key in ("model", "optimizer", "history"):
        assert_identical(a[key], b[key], key)


def test_per_step_cosine_schedule(tmp_path):
    model = torch.nn.Linear(1, 1)
    config = TrainConfig(epochs=4, lr=1e-3, min_lr=1e-4, schedule="step", out=str(tmp_path), progress=False)
    trainer = Trainer(model, None, [], None, config)
    assert trainer.learning_rate(0) == pytest.approx(1e-3)
    assert trainer.learning_rate(1, 0.5) == pytest.approx(1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi * 1.5 / 4)))
    assert trainer.learning_rate(4) == pytest.approx(1e-4)
    for kwargs, name in (({"min_lr": 2e-3}, "min_lr"), ({"schedule": "linear"}, "schedule")):
        with pytest.raises(ValueError, match=name):
            TrainConfig(**kwargs)


def test_cli_defaults_of_the_energy_task_are_the_original_protocol():
    args = cli.build_parser().parse_args(["train", "--task", "energy"])
    cli._apply_defaults(args)
    expected = {"num_iterations": 3, "layers_per_iteration": 4, "num_degrees": 3, "channels": 4, "num_heads": 1}
    expected |= {"channels_div": 1, "epochs": 100, "batch_size": 128, "min_lr": 1e-4, "schedule": "step"}
    assert {k: getattr(args, k) for k in expected} == expected
    assert args.train_samples == 5000 and args.edge_inputs == "energy" and args.grad_clip == 1.0
    assert (args.displacement, args.norm, args.relative_position) == ("head", "layer", True)
    args = cli.build_parser().parse_args(["train", "--task", "nbody", "--channels", "7"])
    cli._apply_defaults(args)
    assert (args.channels, args.num_iterations, args.epochs, args.schedule) == (7, 4, 10, "epoch")


# ------------------------------------------------------------------------------------------ model choices
FIBER_IN = Fiber({0: 1, 1: 1})
HIDDEN = Fiber({0: 3, 1: 3, 2: 2})


def _model(**kwargs) -> IterativeSE3Transformer:
    torch.manual_seed(1)
    model = IterativeSE3Transformer(
        FIBER_IN, HIDDEN, num_iterations=2, layers_per_iteration=2, num_heads=1, graph=Complete(), **kwargs
    )
    for block in model.blocks:  # displacement heads start at zero: give them weights, so that the points move
        block.output.reset_parameters()
    return model.double()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"displacement": "hidden"},
        {"relative_position": True},
        {"norm": "bias"},
        {"displacement": "hidden", "relative_position": True, "norm": "bias"},
    ],
    ids=["hidden", "relative_position", "bias_norm", "original"],
)
def test_original_model_choices_are_equivariant(kwargs, num_rotations):
    model = _model(**kwargs)
    g = torch.Generator().manual_seed(0)
    x, pos = torch.randn(7, FIBER_IN.dim, generator=g, dtype=torch.float64), torch.randn(7, 3, generator=g).double()
    with torch.no_grad():
        out = model(x, pos)
    assert (out.pos - pos).abs().max() > 1e-3  # the points moved (hidden channels are not zero at start)
    # positions, hidden fiber and trajectory: rotations (each with a translation), a translation, a permutation
    errors = assert_equivariant(
        model, FIBER_IN, HIDDEN, x=x, pos=pos, num_rotations=num_rotations, rtol=1e-10, atol=0.0
    )
    assert len(errors.rotations) == num_rotations


def test_hidden_displacement_moves_by_the_first_type1_channel():
    model = _model(displacement="hidden", displacement_scale=0.5)
    x, pos = torch.randn(5, FIBER_IN.dim, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    seen = []
    model.blocks[0].register_forward_hook(lambda module, args, output: seen.append(output))
    out = model(x, pos)
    first = HIDDEN.split(seen[0])[1][:, 0]
    torch.testing.assert_close(out.trajectory[1], pos + 0.5 * first, atol=1e-14, rtol=0)
    assert model.blocks[0].fiber_out == HIDDEN  # no separate displacement channel
    with pytest.raises(ValueError, match="fiber_hidden"):
        IterativeSE3Transformer(FIBER_IN, Fiber({0: 2}), displacement="hidden")
    with pytest.raises(ValueError, match="displacement"):
        IterativeSE3Transformer(FIBER_IN, HIDDEN, displacement="velocity")


def test_relative_position_changes_the_messages_of_type1_inputs_only():
    with_rel, without = _model(relative_position=True), _model()
    x, pos = torch.randn(6, FIBER_IN.dim, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    assert relative_error(with_rel(x, pos).x, without(x, pos).x) > 1e-3
    attention = with_rel.blocks[0].layers[0]
    assert attention.relative_position and "relative_position=True" in repr(attention)


def test_bias_norm_is_a_shifted_norm():
    norm = SE3Norm(HIDDEN, kind="bias").double()
    x = torch.randn(4, HIDDEN.dim, dtype=torch.float64)
    out = HIDDEN.split(norm(x))
    for degree, block in HIDDEN.split(x).items():
        length = (block.square().sum(-1) + norm.eps**2).sqrt()
        scale = torch.relu(length + norm.norms[str(degree)].bias) / length
        torch.testing.assert_close(out[degree], block * scale.unsqueeze(-1))


def test_harmonics_ablation_keeps_gradients_through_lengths_and_edge_features():
    model = _model(relative_position=True, edge_dim=1)
    x, pos = torch.randn(6, FIBER_IN.dim, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)

    def lengths(p, edge_index):
        return (p[edge_index[0]] - p[edge_index[1]]).norm(dim=-1, keepdim=True)

    grads = {}
    for detach in (False, "harmonics", "geometry", True):
        start = pos.clone().requires_grad_(True)
        out = model(x, start, edge_attr_fn=lengths, detach_basis=detach)
        (grads[detach],) = torch.autograd.grad(out.pos.square().sum(), start)
    assert torch.equal(grads["geometry"], grads[True])
    assert relative_error(grads["harmonics"], grads[False]) > 1e-3
    assert relative_error(grads["harmonics"], grads["geometry"]) > 1e-3
    with pytest.raises(ValueError, match="detach_basis"):
        model(x, pos, edge_attr_fn=lengths, detach_basis="sh")


@pytest.mark.slow
def test_demo_runs_and_reports_both_models(tmp_path, one_thread):
    from pyg_se3.runtime import demo

    args = ["--epochs", "1", "--samples-per-epoch", "8", "--batch-size", "4", "--eval-samples", "4"]
    rows = demo.main([*args, "--root", str(tmp_path / "data"), "--out", str(tmp_path / "demo"), "--threads", "1"])
    for name in ("comparison.png", "iterations.png", "iterative/best.pt", "single-pass/best.pt"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    iterative, single = rows["iterative SE(3)-Transformer"], rows["single-pass SE(3)-Transformer"]
    assert math.isfinite(iterative) and math.isfinite(single) and rows["ratio"] == pytest.approx(iterative / single)
    assert rows["gradient descent (1000 steps)"] < rows["initial positions"]
