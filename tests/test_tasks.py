"""The training tasks' inputs: ``inputs="invariant"`` makes predictions respect the physics' extra symmetries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e3nn import o3
from helpers import unzero_displacements
from torch_geometric.loader import DataLoader

from pyg_se3.graph import complete_edge_index
from pyg_se3.runtime.tasks import ModelOptions, get_task

OPTIONS = dict(num_iterations=2, layers_per_iteration=2, num_degrees=2, channels=4, num_heads=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _task_model_batch(
    name: str,
    inputs: str,
    root: Path,
    motion_edges: bool = False,
    integrator: str = "position",
    inverse_distance: float = 0.0,
    inverse_powers: int = 1,
    inverse_scaled: bool = False,
    parity: bool = False,
):
    options = ModelOptions(
        **OPTIONS,
        parity=parity,
        inputs=inputs,
        motion_edges=motion_edges,
        integrator=integrator,
        inverse_distance=inverse_distance,
        inverse_powers=inverse_powers,
        inverse_scaled=inverse_scaled,
    )
    task = get_task(name, options)
    test = task.datasets(str(root))["test"]
    torch.manual_seed(0)
    model = unzero_displacements(task.build_model(0.1)).double()
    batch = next(iter(DataLoader(test[:4], batch_size=4)))
    return task, model.eval(), batch.apply(lambda t: t.double() if t.is_floating_point() else t)


def _boosted(batch, velocity: torch.Tensor):
    """Every particle of each system given the extra velocity ``velocity[graph]``."""
    moved = batch.clone()
    moved.vel = batch.vel + velocity[batch.batch]
    moved.x = torch.cat([batch.x[:, :1], batch.x[:, 1:] + velocity[batch.batch]], dim=-1)
    return moved


@pytest.mark.parametrize("integrator", ["position", "velocity"])
@pytest.mark.parametrize(
    "motion_edges, inverse_distance, inverse_powers", [(False, 0.0, 1), (True, 0.0, 1), (True, 0.1, 1), (True, 0.1, 2)]
)
@pytest.mark.parametrize("name", ["nbody", "dynamics"])
def test_invariant_inputs_make_predictions_galilean_equivariant(
    name, motion_edges, inverse_distance, inverse_powers, integrator, root
):
    """A uniform boost ``u`` of a system moves the prediction by ``u * horizon``: exactly with invariant inputs,
    not with raw ones (the check can fail)."""
    errors = {}
    for inputs in ("raw", "invariant"):
        task, model, batch = _task_model_batch(
            name, inputs, root, motion_edges, integrator, inverse_distance, inverse_powers
        )
        velocity = torch.randn(batch.num_graphs, 3, dtype=torch.float64)
        with torch.no_grad():
            expected = task.predict(model, batch) + velocity[batch.batch] * task.horizon
            actual = task.predict(model, _boosted(batch, velocity))
        errors[inputs] = float((actual - expected).norm() / (expected - batch.pos).norm())
    assert errors["invariant"] < 1e-12, errors
    assert errors["raw"] > 1e-4, errors


def test_invariant_nbody_inputs_ignore_a_flip_of_every_charge(root):
    errors = {}
    for inputs in ("raw", "invariant"):
        task, model, batch = _task_model_batch("nbody", inputs, root)
        flipped = batch.clone()
        flipped.charge = -batch.charge
        flipped.x = torch.cat([-batch.x[:, :1], batch.x[:, 1:]], dim=-1)
        with torch.no_grad():
            out, out_flipped = task.predict(model, batch), task.predict(model, flipped)
        errors[inputs] = float((out_flipped - out).norm() / (out - batch.pos).norm())
    assert errors["invariant"] < 1e-12, errors
    assert errors["raw"] > 1e-4, errors


def test_invariant_velocities_are_relative_to_the_centre_of_mass(root):
    """The dynamics task weights the mean velocity by mass: the momentum of the model's velocity input is zero."""
    task, _, batch = _task_model_batch("dynamics", "invariant", root)
    vel = task.features(batch)[:, 1:]
    mass = batch.x[:, :1]
    momentum = torch.zeros(batch.num_graphs, 3, dtype=vel.dtype).index_add_(0, batch.batch, mass * vel)
    assert float(momentum.abs().max()) < 1e-12
    assert float((vel - batch.x[:, 1:]).abs().max()) > 1e-6  # the systems did have a net momentum to remove


@pytest.mark.parametrize("name", ["nbody", "dynamics"])
def test_motion_edges_are_the_input_frame_pair_invariants(name, root):
    task, _, batch = _task_model_batch(name, "raw", root, motion_edges=True)
    edge_index = complete_edge_index(batch.batch)
    # features of a moved configuration: the invariants still describe the input frame
    features = task.edge_attr_fn(batch)(batch.pos + torch.randn_like(batch.pos), edge_index)
    assert features.shape == (edge_index.shape[1], task.edge_dim)
    for k, (j, i) in enumerate(edge_index.t().tolist()):
        r, v = batch.pos[j] - batch.pos[i], batch.vel[j] - batch.vel[i]
        expected = [float(r.norm()), float(r @ v / r.norm()), float(v.norm())]
        if name == "nbody":
            expected = [float(batch.charge[i] * batch.charge[j]), *expected]
        assert features[k].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12), (k, j, i)


@pytest.mark.parametrize(
    "name, integrator, inverse_distance, inverse_powers",
    [
        ("nbody", "position", 0.0, 1),
        ("nbody", "velocity", 0.0, 1),
        ("dynamics", "position", 0.0, 1),
        ("dynamics", "velocity", 0.0, 1),
        ("nbody", "velocity", 0.1, 1),
        ("dynamics", "position", 0.1, 1),
        ("nbody", "velocity", 0.1, 2),
    ],
)
def test_motion_edges_keep_the_prediction_equivariant(name, integrator, inverse_distance, inverse_powers, root):
    """A rotation and translation of the input moves the prediction the same way (float64)."""
    task, model, batch = _task_model_batch(name, "invariant", root, True, integrator, inverse_distance, inverse_powers)
    fiber_in = task.dataset_cls.fiber
    # by hand: task.predict reads a whole batch (pos, vel, x) whose velocities rotate too, not (x, pos) alone
    R, shift = o3.rand_matrix(dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    moved = batch.clone()
    moved.pos, moved.vel, moved.x = batch.pos @ R.T + shift, batch.vel @ R.T, fiber_in.rotate(batch.x, R)
    with torch.no_grad():
        out, out_moved = task.predict(model, batch), task.predict(model, moved)
    expected = out @ R.T + shift
    assert float((out_moved - expected).norm() / (expected - moved.pos).norm()) < 1e-12
    assert float((out - batch.pos).norm()) > 1e-3  # the model moved the points


@pytest.mark.parametrize("parity", [True, False])
def test_with_parity_the_nbody_prediction_is_equivariant_under_reflections(parity, root):
    """The best N-body model's inputs (invariant velocities, |q|, pair motion, scaled inverse distances: true
    scalars and vectors) with parity=True: a reflection (an improper rotation) and translation of the input moves
    the prediction the same way (float64); without parity it does not."""
    task, model, batch = _task_model_batch("nbody", "invariant", root, True, "velocity", 0.1, 2, True, parity)
    assert model.parity is parity
    fiber_in = task.dataset_cls.fiber
    R, shift = -o3.rand_matrix(dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    moved = batch.clone()
    moved.pos, moved.vel, moved.x = batch.pos @ R.T + shift, batch.vel @ R.T, fiber_in.rotate(batch.x, R)
    with torch.no_grad():
        out, out_moved = task.predict(model, batch), task.predict(model, moved)
    expected = out @ R.T + shift
    error = float((out_moved - expected).norm() / (expected - moved.pos).norm())
    assert error < 1e-12 if parity else error > 1e-3
    assert float((out - batch.pos).norm()) > 1e-3  # the model moved the points


@pytest.mark.parametrize("powers, scaled", [(1, False), (2, False), (3, False), (1, True), (2, True)])
@pytest.mark.parametrize("name", ["nbody", "dynamics"])
def test_inverse_distance_edges_are_at_the_input_frame_and_at_the_current_positions(name, powers, scaled, root):
    softening = 0.3
    task, _, batch = _task_model_batch(
        name, "raw", root, inverse_distance=softening, inverse_powers=powers, inverse_scaled=scaled
    )
    assert task.edge_dim == (1 if name == "nbody" else 0) + 2 * powers
    edge_index = complete_edge_index(batch.batch)
    current = batch.pos + torch.randn_like(batch.pos)
    features = task.edge_attr_fn(batch)(current, edge_index)
    assert features.shape == (edge_index.shape[1], task.edge_dim)
    for k, (j, i) in enumerate(edge_index.t().tolist()):
        squared = [float((at[j] - at[i]).square().sum() + softening**2) for at in (batch.pos, current)]
        unit = softening if scaled else 1.0
        expected = [unit**p * value ** (-p / 2) for value in squared for p in range(1, powers + 1)]
        if name == "nbody":
            expected = [float(batch.charge[i] * batch.charge[j]), *expected]
        assert features[k].tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12), (k, j, i)


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
def test_a_bad_inverse_distance_softening_is_rejected(value):
    with pytest.raises(ValueError, match="inverse_distance: expected a softening length >= 0"):
        get_task("nbody", ModelOptions(inverse_distance=value))


@pytest.mark.parametrize(
    "powers, softening, message",
    [
        (0, 0.1, "inverse_powers: expected 1, or an integer > 1 with inverse_distance > 0"),
        (2, 0.0, "inverse_powers: expected 1, or an integer > 1 with inverse_distance > 0"),
        (1.5, 0.1, "inverse_powers: expected an integer >= 1, got 1.5"),
        (True, 0.1, "inverse_powers: expected an integer >= 1, got True"),
    ],
)
def test_bad_inverse_powers_are_rejected(powers, softening, message):
    with pytest.raises(ValueError, match=message):
        get_task("nbody", ModelOptions(inverse_distance=softening, inverse_powers=powers))


def test_inverse_scaled_without_inverse_distances_is_rejected():
    with pytest.raises(ValueError, match="inverse_scaled: scales the softened inverse distances"):
        get_task("nbody", ModelOptions(inverse_scaled=True))


def test_unknown_inputs_option_is_rejected():
    with pytest.raises(ValueError, match="inputs: expected 'raw' or 'invariant', got 'relative'"):
        get_task("nbody", ModelOptions(inputs="relative"))


def test_options_without_effect_on_the_energy_task_are_rejected():
    with pytest.raises(ValueError, match="motion_edges: the energy task's points have no velocities"):
        get_task("energy", ModelOptions(motion_edges=True))
    with pytest.raises(ValueError, match="inverse_distance: the energy task's edges carry their pair energy"):
        get_task("energy", ModelOptions(inverse_distance=0.1))
    with pytest.raises(ValueError, match="inputs: the energy task has only 'raw' inputs, got 'invariant'"):
        get_task("energy", ModelOptions(inputs="invariant"))
    dynamics = get_task("dynamics", ModelOptions())
    assert dynamics.replace(inputs="invariant").options.inputs == "invariant"
    with pytest.raises(ValueError, match="inputs: expected 'raw' or 'invariant'"):
        dynamics.replace(inputs="boosted")


@pytest.mark.parametrize("name", ["dynamics", "nbody"])
def test_a_task_is_configuration_and_loading_data_does_not_change_it(name, root):
    # What the task knows of the data (the horizon, the mass unit) follows from its configuration, before any data
    # is loaded, and equals what the loaded dataset says.
    task = get_task(name, ModelOptions(**OPTIONS))
    before = dict(vars(task))
    sets = task.datasets(str(root), train_samples=8)
    assert vars(task) == before
    assert task.horizon == sets["train"].horizon == sets["test"].horizon > 0
    batch = next(iter(DataLoader(sets["test"][:3], batch_size=3)))
    expected = batch.pos + batch.vel * sets["test"].horizon
    assert torch.equal(task.initial_positions(batch), expected)
    if name == "dynamics":
        assert task.mass_unit == sum(sets["train"].config["mass_range"]) / 2


def test_task_data_parameters_reach_the_datasets_and_the_horizon(root):
    task = get_task("nbody", ModelOptions(**OPTIONS), data={"target_frame": 35})
    assert task.horizon == pytest.approx(0.001 * 100 * 5)
    test = task.split(str(root), "test", num_samples=4)
    assert test.config["target_frame"] == 35 and test.horizon == task.horizon
    with pytest.raises(ValueError, match="target_frame"):
        get_task("nbody", ModelOptions(), data={"target_frame": 20})  # before input_frame 30


def test_the_cli_model_arguments_are_the_model_options():
    from dataclasses import asdict, fields

    from pyg_se3.runtime.cli import _apply_defaults, _model_options, build_parser

    parser = build_parser()
    train = next(a for a in parser._actions if getattr(a, "choices", None) and "train" in a.choices).choices["train"]
    group = next(g for g in train._action_groups if g.title.startswith("model"))
    assert [action.dest for action in group._group_actions] == [f.name for f in fields(ModelOptions)]
    args = parser.parse_args(["train", "--task", "dynamics", "--iterations", "3", "--share-weights", "--norm", "rms"])
    _apply_defaults(args)
    expected = asdict(ModelOptions(num_iterations=3, share_weights=True, norm="rms"))
    assert asdict(_model_options(args)) == expected


@pytest.mark.parametrize("name", ["nbody", "dynamics"])
def test_an_untrained_velocity_integrator_model_is_the_linear_baseline(name, root):
    options = ModelOptions(**OPTIONS, inputs="invariant", motion_edges=True, integrator="velocity")
    task = get_task(name, options)
    batch = next(iter(DataLoader(task.datasets(str(root))["test"][:4], batch_size=4)))
    batch = batch.apply(lambda t: t.double() if t.is_floating_point() else t)
    model = task.build_model(0.1).double()
    assert model.integrator == "velocity" and model.dt == pytest.approx(task.horizon / OPTIONS["num_iterations"])
    with torch.no_grad():
        out, metrics = task.predict(model, batch), task.metrics(model, batch)
    linear = batch.pos + batch.vel * task.horizon
    assert float((out - linear).norm() / linear.norm()) < 1e-14
    assert metrics["mse"][0] == pytest.approx(metrics["linear_mse"][0], rel=1e-12)
    with pytest.raises(ValueError, match="start: integrator='velocity' starts from the input positions"):
        get_task(name, ModelOptions(integrator="velocity", start="constant"))
    with pytest.raises(ValueError, match="integrator: the energy task's points have no velocities"):
        get_task("energy", ModelOptions(integrator="velocity"))
