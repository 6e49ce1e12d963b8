"""The three experiments as training tasks: datasets, models, losses, metrics and baselines.

- ``dynamics``: :class:`~pyg_se3.datasets.ParticleDynamics`, predict positions one block (10 saved steps) ahead (MSE).
- ``energy``: :class:`~pyg_se3.datasets.EnergyMinimisation`, move the points to minimise the pair energy
  (unsupervised: the loss is the energy of the predicted positions).
- ``nbody``: :class:`~pyg_se3.datasets.NBodyCharged`, predict positions 1000 steps ahead (MSE), EGNN protocol.

Every task's model is an :class:`~pyg_se3.models.IterativeSE3Transformer`; with ``num_iterations=1`` and all
layers in that one iteration it is the single-pass SE(3)-Transformer with the same number of layers.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.loader import DataLoader
from torch_geometric.utils import scatter

from pyg_se3.checks import check_int
from pyg_se3.datasets import EnergyConfigurations, EnergyMinimisation, NBodyCharged, ParticleDynamics
from pyg_se3.fiber import Fiber
from pyg_se3.graph import KNN, Complete, GraphBuilder, Radius
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.runtime.features import pair_motion, relative_velocity, softened_inverse_distance
from pyg_se3.transforms import RandomReflection, RandomTimeReversal

__all__ = [
    "TASKS",
    "DynamicsTask",
    "EnergyTask",
    "ModelOptions",
    "NBodyTask",
    "Task",
    "build_graph",
    "from_checkpoint",
    "get_task",
    "mse_per_graph",
    "tasks_with",
]


def _option(default: Any, help: str, flag: str | None = None, **argparse: Any) -> Any:
    """A :class:`ModelOptions` field with its command-line definition (``flag``, ``help``, argparse keywords)."""
    return field(default=default, metadata={"help": help, "flag": flag, "argparse": argparse})


@dataclass(frozen=True)
class ModelOptions:
    """The model options of the three tasks: the one definition behind the CLI's model arguments (each field's
    flag, help and choices are its metadata; :func:`~pyg_se3.runtime.cli.build_parser` reads them), the
    checkpoints' records and the examples. Each task may have its own defaults (``TASKS[name].model_defaults``,
    applied by the CLI)."""

    num_iterations: int = _option(4, "position updates (1 = single-pass SE(3)-Transformer)", "--iterations", type=int)
    layers_per_iteration: int = _option(2, "equivariant layers per iteration", "--layers", type=int)
    num_degrees: int = _option(2, "hidden fiber degrees 0 .. degrees-1", "--degrees", type=int)
    channels: int = _option(16, "hidden channels per degree", type=int)
    num_heads: int = _option(4, "attention heads", "--heads", type=int)
    channels_div: int = _option(2, "key/value channels are the hidden channels divided by this", type=int)
    graph: str = _option("complete", "the graph rebuilt every iteration", choices=["complete", "knn", "radius"])
    radius: float = _option(2.5, "cutoff of --graph radius", type=float)
    k: int = _option(16, "neighbours of --graph knn", type=int)
    share_weights: bool = _option(False, "one block for all iterations", action="store_true")
    detach_basis: bool | str = _option(
        False,
        "no gradient through the basis: through all geometry (bare flag) or only the spherical harmonics",
        nargs="?",
        const="geometry",
        choices=["geometry", "harmonics"],
    )
    start: str = _option(
        "linear",
        "regression tasks: iterate from pos + vel * horizon (linear) or from pos (constant)",
        choices=["linear", "constant"],
    )
    kernel: str = _option(
        "full",
        "edge kernel: full (SE(3)-Transformer) or depthwise (weights per path and channel; faster)",
        choices=["full", "depthwise"],
    )
    parity: bool = _option(
        False,
        "keep only the kernel terms that respect parity: the model is equivariant under reflections too (E(3))",
        action="store_true",
    )
    radial_scaling: str = _option(
        "init",
        "where the radial networks' fan-in factor acts: on their initial weights (init) or on their output at every "
        "call (forward; the same model at initialisation, but Adam's steps move its kernels only that factor as "
        "far, so a wide model's first steps are stable at --lr 1e-3 without --warmup-epochs)",
        choices=["init", "forward"],
    )
    norm: str = _option(
        "layer",
        "norm non-linearity: layer norm of channel norms (SE(3)-Transformer), rms (not centred; more robust to "
        "rounding in deep float32 models) or bias (a learned shift only, the original code's GNormBias)",
        choices=["layer", "rms", "bias"],
    )
    inputs: str = _option(
        "raw",
        "regression tasks: the dataset's node inputs (raw), or only what the physics depends on (invariant): "
        "velocities relative to the centre of mass and, for nbody, |q| for the node charge (q_i q_j stays on edges)",
        choices=["raw", "invariant"],
    )
    motion_edges: bool = _option(
        False,
        "regression tasks: every edge also carries the pair's distance, radial speed and relative speed at the "
        "input frame",
        action="store_true",
    )
    inverse_distance: float = _option(
        0.0,
        "regression tasks: a softening length s > 0 makes every edge also carry the softened inverse distance "
        "1/sqrt(|r|^2 + s^2) of its pair at the input frame and at the current positions; 0: off",
        type=float,
    )
    inverse_powers: int = _option(
        1,
        "with --inverse-distance: the edges carry the powers 1 .. P of both softened inverse distances (2 adds "
        "1/(|r|^2 + s^2), the shape of the softened force's magnitude)",
        type=int,
    )
    inverse_scaled: bool = _option(
        False,
        "with --inverse-distance: multiply the power k of the softened inverse distances by s^k, so that they lie "
        "in (0, 1] (1 for coincident particles) rather than up to s^-k",
        action="store_true",
    )
    displacement: str = _option(
        "head",
        "how a block moves the points: a zero-initialised, scaled type-1 head (head) or the first hidden type-1 "
        "channel (hidden, the original code)",
        choices=["head", "hidden"],
    )
    relative_position: bool = _option(
        False,
        "add each edge's relative position to the first type-1 channel of its source features (the original "
        "code's x_ij='add')",
        action=argparse.BooleanOptionalAction,
    )
    integrator: str = _option(
        "position",
        "regression tasks: each iteration updates the positions (position), or a velocity carried between "
        "iterations from which the positions follow, starting from the input velocities (velocity)",
        choices=["position", "velocity"],
    )
    edge_inputs: str = _option(
        "energy",
        "energy task: edges carry the current pair energy V (energy, the original experiment) or also the pair "
        "parameter p (parameters: one pass then knows each pair's preferred distance)",
        choices=["energy", "parameters"],
    )


def build_graph(options: ModelOptions) -> GraphBuilder:
    """The graph builder of ``options.graph``."""
    if options.graph == "complete":
        return Complete()
    if options.graph == "knn":
        return KNN(options.k)
    if options.graph == "radius":
        return Radius(options.radius, max_num_neighbors=64)
    raise ValueError(f"graph: expected 'complete', 'knn' or 'radius', got {options.graph!r}")


def _first(dataset: Any, n: int | None) -> Any:
    """The first ``n`` samples of ``dataset`` (all of them for ``None``)."""
    return dataset if n is None else dataset[: check_int(n, "train_samples", 1)]


def mse_per_graph(pred: Tensor, target: Tensor, batch: Tensor, num_graphs: int | None = None) -> Tensor:
    """``[num_graphs]`` mean squared error of each graph, over its nodes and coordinates (0 for an empty graph)."""
    per_node = (pred - target).square().mean(-1)
    return scatter(per_node, batch, dim=0, dim_size=num_graphs, reduce="mean")


class Task:
    """One experiment, from its configuration: ``Task(options, data)`` holds the model options and the dataset's
    generation parameters; :meth:`datasets` returns the splits and :meth:`build_model` the model, and neither
    changes the task. Subclasses set ``name``, ``dataset_cls``, the loss and metrics, and the CLI defaults where
    they differ from :class:`ModelOptions` (``model_defaults``) and from the trainer's (``train_defaults``).

    Parameters
    ----------
    options
        The model options.
    data
        Keyword arguments of ``dataset_cls`` that define the data (e.g. ``num_particles`` or ``seed``; the
        packaged dataset's defaults for ``None``), validated here by ``dataset_cls.make_config``. What the task
        needs to know about the data (a prediction horizon, a unit of mass) follows from them.
    """

    name: ClassVar[str]
    dataset_cls: ClassVar[Any]
    model_defaults: ClassVar[dict[str, Any]] = {}
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: ModelOptions, data: Mapping[str, Any] | None = None) -> None:
        self.check_options(options)
        self.options = options
        self.data = dict(data or {})
        self.config = self.dataset_cls.make_config(**self.data)  # the training split's; ValueError naming a bad one

    def check_options(self, options: ModelOptions) -> None:
        """A ValueError naming the option for a value this task cannot use."""
        if options.start not in ("linear", "constant"):
            raise ValueError(f"start: expected 'linear' or 'constant', got {options.start!r}")
        if options.inputs not in ("raw", "invariant"):
            raise ValueError(f"inputs: expected 'raw' or 'invariant', got {options.inputs!r}")
        if options.edge_inputs not in ("energy", "parameters"):
            raise ValueError(f"edge_inputs: expected 'energy' or 'parameters', got {options.edge_inputs!r}")
        if not 0 <= options.inverse_distance < float("inf"):
            raise ValueError(
                f"inverse_distance: expected a softening length >= 0 (0: off), got {options.inverse_distance!r}"
            )
        if isinstance(options.inverse_powers, bool) or not isinstance(options.inverse_powers, int):
            raise ValueError(f"inverse_powers: expected an integer >= 1, got {options.inverse_powers!r}")
        if options.inverse_powers < 1 or (options.inverse_powers > 1 and not options.inverse_distance):
            raise ValueError(
                f"inverse_powers: expected 1, or an integer > 1 with inverse_distance > 0 (the powers of the softened "
                f"inverse distances), got {options.inverse_powers!r} with inverse_distance={options.inverse_distance!r}"
            )
        if options.inverse_scaled and not options.inverse_distance:
            raise ValueError("inverse_scaled: scales the softened inverse distances; pass inverse_distance > 0 too")

    def replace(self, **options: Any) -> Task:
        """The same task (same data) with some model options changed: ``task.replace(inputs="invariant")``."""
        return type(self)(replace(self.options, **options), self.data)

    @property
    def edge_dim(self) -> int:
        """Invariant edge features the model gets from :meth:`edge_attr_fn` (0: none)."""
        raise NotImplementedError

    def split(self, root: str, split: str, **kwargs: Any) -> Any:
        """One split of ``dataset_cls`` with this task's data, in ``root/<dataset name>``; ``kwargs`` are the
        dataset's other arguments (``dtype``, ``transform``, ``force_reload``, ...)."""
        return self.dataset_cls(str(Path(root) / self.dataset_cls.name), split=split, **self.data, **kwargs)

    def datasets(self, root: str, train_samples: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """The ``train``, ``val`` and ``test`` splits (``train_samples``: only the first ones of the training
        split); ``kwargs`` as in :meth:`split`."""
        sets = {split: self.split(root, split, **kwargs) for split in ("train", "val", "test")}
        sets["train"] = _first(sets["train"], train_samples)
        return sets

    def displacement_scale(self, dataset: Any) -> float:
        """The model's ``displacement_scale`` for displacement heads: :meth:`update_scale` of ``dataset``; 1 for
        ``displacement="hidden"``, which moves the points by a hidden channel as it comes (the original code)."""
        return self.update_scale(dataset) if self.options.displacement == "head" else 1.0

    def update_scale(self, dataset: Any) -> float:
        """The typical size of one iteration's update in ``dataset``."""
        raise NotImplementedError

    def build_model(self, displacement_scale: float = 1.0) -> IterativeSE3Transformer:
        """The model of :attr:`options` for this task's inputs (``dataset_cls.fiber``, :attr:`edge_dim`);
        ``displacement_scale`` from :meth:`displacement_scale` of the training set, or a checkpoint's record."""
        options = self.options
        return IterativeSE3Transformer(
            self.dataset_cls.fiber,
            Fiber.create(options.num_degrees, options.channels),
            num_iterations=options.num_iterations,
            layers_per_iteration=options.layers_per_iteration,
            graph=build_graph(options),
            share_weights=options.share_weights,
            displacement=options.displacement,
            displacement_scale=displacement_scale,
            num_heads=options.num_heads,
            edge_dim=self.edge_dim,
            channels_div=options.channels_div,
            norm=options.norm,
            kernel=options.kernel,
            parity=options.parity,
            radial_scaling=options.radial_scaling,
            relative_position=options.relative_position,
            **self.integration(),
        )

    def predict_output(self, model: nn.Module, batch: Any):
        """The model's whole :class:`~pyg_se3.models.IterativeOutput` for ``batch``."""
        raise NotImplementedError

    def predict(self, model: nn.Module, batch: Any) -> Tensor:
        """The predicted positions: ``predict_output(model, batch).pos``."""
        return self.predict_output(model, batch).pos

    def integration(self) -> dict[str, Any]:
        """The model's ``integrator`` and ``dt`` (none: its defaults)."""
        return {}

    def reflection(self) -> RandomReflection:
        """The training batches' random reflections (``--reflect``), for tasks whose physics is symmetric
        under them; a ``ValueError`` for the others."""
        have = _have(tasks_with(lambda task: task.has_reflection()))
        raise ValueError(f"--reflect: the {self.name!r} task has no reflection augmentation ({have})")

    @classmethod
    def has_reflection(cls) -> bool:
        """Whether the task has a :meth:`reflection` augmentation (``--reflect``)."""
        return cls.reflection is not Task.reflection

    @classmethod
    def has_time_reversal(cls) -> bool:
        """Whether the task's dataset has time-reversed samples (``--time-reversal``)."""
        return hasattr(cls.dataset_cls, "time_reversed")

    @classmethod
    def check_time_reversal(cls) -> None:
        """A ``ValueError`` for a task without :meth:`time_reversal` (before any data is loaded)."""
        if not cls.has_time_reversal():
            have = _have(tasks_with(lambda task: task.has_time_reversal()))
            raise ValueError(f"--time-reversal: the {cls.name!r} task has no time-reversed samples ({have})")

    def time_reversal(self, train_set: Any) -> RandomTimeReversal:
        """The training batches' random swaps for time-reversed samples (``--time-reversal``): every graph of a
        batch replaced by its counterpart of ``train_set.time_reversed()`` with probability 1/2; a
        ``ValueError`` for tasks whose dataset has none."""
        self.check_time_reversal()
        return RandomTimeReversal(train_set.time_reversed())


class _RegressionTask(Task):
    """Predict future positions; the loss is the MSE averaged per graph, then over graphs.

    The iterations start from ``options.start``: ``"linear"`` (default), the constant-velocity guess
    ``pos + vel * horizon``, which the model refines (its displacement heads start at zero, so an untrained
    model *is* that baseline); or ``"constant"``, the input positions, as in the original blog post.

    With ``options.inputs == "invariant"`` the model sees velocities relative to the system's centre of mass.
    The simulations have no walls, so the motion is Galilean invariant: a uniform boost ``u`` moves every target
    by ``u * horizon``, which the linear start carries exactly, and the network need not learn to ignore it.

    With ``options.motion_edges`` every edge of every rebuilt graph also carries
    :func:`~pyg_se3.runtime.features.pair_motion` of its pair at the *input* frame (distance, radial speed, relative
    speed). The graphs are built at the moving positions (from ``pos + vel * horizon`` on), so without them the
    radial networks see the input geometry only through type-1 features.

    With ``options.inverse_distance = s > 0`` every edge also carries
    :func:`~pyg_se3.runtime.features.softened_inverse_distance` of its pair at the input frame and at the
    current positions: the radial networks see the shape of the pair potential, largest for the close pairs that
    carry most of the error. With ``options.inverse_powers = P > 1`` they carry the powers ``1 .. P`` of each (the
    input frame's, then the current ones); the square has the shape of the softened force's magnitude. With
    ``options.inverse_scaled`` the power ``k`` is multiplied by ``s**k``: all lie in ``(0, 1]``.
    """

    task_edge_dim: ClassVar[int] = 0  # edge features of the task itself, before the motion invariants

    @property
    def horizon(self) -> float:
        """Time between a sample's input and its target (for the linear start and baseline)."""
        return self.dataset_cls.config_horizon(self.config)

    def reflection(self) -> RandomReflection:
        """Every graph of a batch inverted through the origin with probability 1/2: the simulations' forces are
        odd in the pair vectors (the charged one's per-component clipping too), so a reflected sample is a sample
        of the same physics."""
        return RandomReflection(self.dataset_cls.fiber, vector_keys=("pos", "vel", "y"), fiber_keys=("x",))

    def check_options(self, options: ModelOptions) -> None:
        super().check_options(options)
        if options.edge_inputs != "energy":
            raise ValueError(f"edge_inputs: only the energy task has pair parameters, got {options.edge_inputs!r}")
        if options.integrator == "velocity" and options.start != "linear":
            raise ValueError(
                f"start: integrator='velocity' starts from the input positions and velocities (start='linear'), "
                f"got {options.start!r}"
            )

    def integration(self) -> dict[str, Any]:
        """With ``integrator="velocity"``: ``num_iterations`` steps of ``dt`` cover the horizon."""
        if self.options.integrator == "position":
            return {}
        return {"integrator": "velocity", "dt": self.horizon / self.options.num_iterations}

    @property
    def edge_dim(self) -> int:
        inverse = 2 * self.options.inverse_powers * (self.options.inverse_distance > 0)  # both frames, each power
        return self.task_edge_dim + 3 * self.options.motion_edges + inverse

    def task_edge_features(self, batch: Any, edge_index: Tensor) -> Tensor | None:
        """The task's own edge features ``[E, task_edge_dim]`` of the edges ``edge_index`` (None: none)."""
        return None

    def edge_attr_fn(self, batch: Any):
        if self.edge_dim == 0:
            return None
        vel = batch.x[:, 1:]

        def features(pos: Tensor, edge_index: Tensor) -> Tensor:
            parts = [self.task_edge_features(batch, edge_index)]
            if self.options.motion_edges:
                parts.append(pair_motion(batch.pos, vel, edge_index))
            if self.options.inverse_distance > 0:
                softening = self.options.inverse_distance
                powers, scaled = self.options.inverse_powers, self.options.inverse_scaled
                parts.append(softened_inverse_distance(batch.pos, edge_index, softening, powers, scaled))
                parts.append(softened_inverse_distance(pos, edge_index, softening, powers, scaled))
            return torch.cat([part.to(pos.dtype) for part in parts if part is not None], dim=-1)

        return features

    def features(self, batch: Any) -> Tensor:
        """``[scalars, velocity]`` per node: :meth:`scalar_features`, then the velocity (relative to the centre of
        mass with ``inputs="invariant"``)."""
        vel = batch.x[:, 1:]  # not batch.vel: a transform that rotates the sample rotates x
        if self.options.inputs == "invariant":
            vel = relative_velocity(vel, batch.batch, self.masses(batch))
        return torch.cat([self.scalar_features(batch), vel], dim=-1)

    def scalar_features(self, batch: Any) -> Tensor:
        """The type-0 node inputs ``[num_nodes, 1]``."""
        raise NotImplementedError

    def masses(self, batch: Any) -> Tensor:
        """``[num_nodes]`` inertial masses, for the centre-of-mass velocity."""
        raise NotImplementedError

    def initial_positions(self, batch: Any) -> Tensor:
        """Where the iterations start: ``pos + vel * horizon`` (``start="linear"``; with
        ``integrator="velocity"`` the untrained model ends there), or ``pos``."""
        return batch.pos + batch.vel * self.horizon if self.options.start == "linear" else batch.pos

    @torch.no_grad()
    def update_scale(self, dataset: Any) -> float:
        """RMS per coordinate of what the model must add to its starting positions (over the first 256 samples
        of ``dataset``), divided by the number of iterations: the typical size of one update."""
        batch = next(iter(DataLoader(dataset[:256], batch_size=256)))
        rms = float((batch.y - self.initial_positions(batch)).square().mean().sqrt())
        iterations = self.options.num_iterations
        if self.options.integrator == "velocity":
            # a velocity update u at iteration t moves the final positions by u dt (T - t + 1): a constant update
            # moves them by u dt T (T + 1) / 2, with dt T = horizon
            return rms / (self.horizon * (iterations + 1) / 2)
        return rms / iterations

    def predict_output(self, model: nn.Module, batch: Any):
        """The model's whole :class:`~pyg_se3.models.IterativeOutput` (final positions and hidden fiber,
        positions after every iteration)."""
        if self.options.integrator == "velocity":
            start, state = batch.pos, {"vel": batch.x[:, 1:]}  # x, not batch.vel: transforms rotate x
        else:
            start, state = self.initial_positions(batch), {}
        return model(
            self.features(batch),
            start,
            batch.batch,
            edge_attr_fn=self.edge_attr_fn(batch),
            detach_basis=self.options.detach_basis,
            **state,
        )

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        return mse_per_graph(self.predict(model, batch), batch.y, batch.batch, batch.num_graphs).mean()

    def metrics(self, model: nn.Module, batch: Any) -> dict[str, tuple[float, int]]:
        n = batch.num_graphs
        mse = mse_per_graph(self.predict(model, batch), batch.y, batch.batch, n)
        constant = mse_per_graph(batch.pos, batch.y, batch.batch, n)
        linear = mse_per_graph(batch.pos + batch.vel * self.horizon, batch.y, batch.batch, n)
        return {
            "loss": (float(mse.sum()), n),
            "mse": (float(mse.sum()), n),
            "constant_mse": (float(constant.sum()), n),
            "linear_mse": (float(linear.sum()), n),
        }


class DynamicsTask(_RegressionTask):
    """Particle dynamics, one block (10 saved steps) ahead; inputs: mass (type 0, divided by the mean of the mass
    range so that it is of order 1) and velocity (type 1)."""

    name = "dynamics"
    dataset_cls = ParticleDynamics

    @property
    def mass_unit(self) -> float:
        """The mean of the data's mass range: masses divided by it are of order 1."""
        return sum(self.config["mass_range"]) / 2

    def scalar_features(self, batch: Any) -> Tensor:
        return batch.x[:, :1] / self.mass_unit

    def masses(self, batch: Any) -> Tensor:
        return batch.x[:, 0]


class NBodyTask(_RegressionTask):
    """Charged 5-body, frame 30 -> frame 40 (1000 steps of 0.001); inputs: charge (type 0) and velocity
    (type 1), edge feature ``q_i q_j`` recomputed on every rebuilt graph.

    With ``inputs="invariant"`` the type-0 input is ``|q| = 1`` instead of ``q``: the forces depend on charges only
    through ``q_i q_j``, so flipping every sign leaves the motion unchanged, and the edge feature carries all the
    charge information. Velocities are then relative to the centre of mass (the particles have equal masses).
    """

    name = "nbody"
    dataset_cls = NBodyCharged
    task_edge_dim = 1
    # 5-particle systems: evaluated in batches of 16, 4,000 of them take half as long as a training epoch
    train_defaults: ClassVar[dict[str, Any]] = {"eval_batch_size": 256}

    def scalar_features(self, batch: Any) -> Tensor:
        charge = batch.x[:, :1]
        return charge.abs() if self.options.inputs == "invariant" else charge

    def masses(self, batch: Any) -> Tensor:
        return torch.ones_like(batch.x[:, 0])

    def task_edge_features(self, batch: Any, edge_index: Tensor) -> Tensor:
        charge = batch.charge.squeeze(-1)
        return (charge[edge_index[0]] * charge[edge_index[1]]).unsqueeze(-1)


class EnergyTask(Task):
    r"""Energy minimisation, as in the original experiment: the loss is the mean pair energy of the predicted
    positions; the model never sees the pair parameters ``p_ij``.

    Every edge of every iteration carries the current pair energy :math:`V(r_{ij}; p_{ij})` (with the length
    :math:`r_{ij}`, which every radial network sees), recomputed from that iteration's positions and
    differentiable in them; ``p`` enters only through ``V`` and the loss, so the model has to move the points to
    find out what each pair prefers. ``options.edge_inputs = "parameters"`` also feeds ``p_ij`` itself (one pass
    then knows every pair's preferred distance ``p + 0.269``): kept for comparison.

    Training configurations are drawn fresh every epoch (:class:`~pyg_se3.datasets.EnergyConfigurations`,
    5,000 per epoch by default, a function of the run's seed and the epoch); validation and test are the fixed
    packaged splits of :class:`~pyg_se3.datasets.EnergyMinimisation`.
    """

    name = "energy"
    dataset_cls = EnergyMinimisation
    #: The original experiment's sizes: 3 iterations x 4 layers, degrees 0..2 x 4 channels, 1 head, relative
    #: positions in the type-1 features; our displacement heads and layer norm, which trained better than the
    #: original code's choices (see docs/results.md, energy minimisation).
    model_defaults: ClassVar[dict[str, Any]] = {
        "num_iterations": 3,
        "layers_per_iteration": 4,
        "num_degrees": 3,
        "channels": 4,
        "num_heads": 1,
        "channels_div": 1,
        "relative_position": True,
    }
    #: Adam(W without decay), lr 1e-3 with a per-step cosine to 1e-4, batch 128, 100 epochs of 5,000 samples.
    train_defaults: ClassVar[dict[str, Any]] = {
        "epochs": 100,
        "batch_size": 128,
        "min_lr": 1e-4,
        "schedule": "step",
        "train_samples": 5000,
    }

    def check_options(self, options: ModelOptions) -> None:
        super().check_options(options)
        # the points have no velocities: these options would change nothing, so they are refused
        if options.inputs != "raw":
            raise ValueError(f"inputs: the energy task has only 'raw' inputs, got {options.inputs!r}")
        if options.motion_edges:
            raise ValueError("motion_edges: the energy task's points have no velocities; pass motion_edges=False")
        if options.inverse_distance:
            raise ValueError(
                f"inverse_distance: the energy task's edges carry their pair energy; pass 0, got "
                f"{options.inverse_distance!r}"
            )
        if options.integrator != "position":
            raise ValueError(f"integrator: the energy task's points have no velocities, got {options.integrator!r}")

    @property
    def edge_dim(self) -> int:
        return 2 if self.options.edge_inputs == "parameters" else 1

    def datasets(self, root: str, train_samples: int | None = None, **kwargs: Any) -> dict[str, Any]:
        """Fixed validation and test splits; a stream of ``train_samples`` (default 5000) fresh training
        configurations per epoch, in the dtype of ``kwargs["dtype"]`` (default float32)."""
        sets = {split: self.split(root, split, **kwargs) for split in ("val", "test")}
        num_samples = self.train_defaults["train_samples"] if train_samples is None else train_samples
        shape = {name: self.config[name] for name in ("num_nodes", "pos_std")}  # the fixed splits' configurations
        stream = EnergyConfigurations(num_samples, **shape, dtype=kwargs.get("dtype", torch.float32))
        return {"train": stream, **sets}

    def edge_attr_fn(self, batch: Any):
        lookup = _EdgeLookup(batch.edge_index, batch.p, batch.num_nodes)
        with_parameters = self.options.edge_inputs == "parameters"

        def features(pos: Tensor, edge_index: Tensor) -> Tensor:
            p = lookup(edge_index)
            r = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
            energy = EnergyMinimisation.pair_energy(r, p)
            return torch.stack([p, energy], dim=-1) if with_parameters else energy.unsqueeze(-1)

        return features

    def predict_output(self, model: nn.Module, batch: Any):
        """The model's whole :class:`~pyg_se3.models.IterativeOutput` (positions after every iteration)."""
        return model(
            batch.x,
            batch.pos,
            batch.batch,
            edge_attr_fn=self.edge_attr_fn(batch),
            detach_basis=self.options.detach_basis,
        )

    @torch.no_grad()
    def update_scale(self, dataset: Any) -> float:
        """RMS per coordinate of the moves that gradient descent makes on the first 64 samples of ``dataset``,
        divided by the number of iterations: the typical size of one update."""
        batch = next(iter(DataLoader(dataset[:64], batch_size=64)))
        final, _ = EnergyMinimisation.gradient_descent(batch.pos, batch.edge_index, batch.p, batch.batch, 200)
        return float((final - batch.pos).square().mean().sqrt()) / self.options.num_iterations

    def energies(self, pos: Tensor, batch: Any) -> Tensor:
        return EnergyMinimisation.energy(pos, batch.edge_index, batch.p, batch.batch, batch.num_graphs)

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        return self.energies(self.predict(model, batch), batch).mean()

    def metrics(self, model: nn.Module, batch: Any) -> dict[str, tuple[float, int]]:
        n = batch.num_graphs
        final = self.energies(self.predict(model, batch), batch)
        initial = self.energies(batch.pos, batch)
        return {
            "loss": (float(final.sum()), n),
            "energy": (float(final.sum()), n),
            "initial_energy": (float(initial.sum()), n),
        }


class _EdgeLookup:
    """Values stored per edge of one graph structure, looked up for the edges of another (same nodes)."""

    def __init__(self, edge_index: Tensor, values: Tensor, num_nodes: int) -> None:
        keys = edge_index[0] * num_nodes + edge_index[1]
        self.keys, order = torch.sort(keys)
        self.values, self.num_nodes = values[order], num_nodes

    def __call__(self, edge_index: Tensor) -> Tensor:
        keys = edge_index[0] * self.num_nodes + edge_index[1]
        slot = torch.searchsorted(self.keys, keys).clamp_max(len(self.keys) - 1)
        if not bool((self.keys[slot] == keys).all()):
            raise ValueError("edge_index: contains pairs the dataset has no value for")
        return self.values[slot]


TASKS = {"dynamics": DynamicsTask, "energy": EnergyTask, "nbody": NBodyTask}


def tasks_with(has: Callable[[type[Task]], bool]) -> str:
    """``"a and b"``: the names of the tasks of :data:`TASKS` whose class ``has`` something (for example
    ``lambda task: task.has_reflection()``), for help texts and errors."""
    return " and ".join(name for name, task in TASKS.items() if has(task))


def _have(names: str) -> str:
    """``"a has"`` or ``"a and b have"``."""
    return names + (" have" if " and " in names else " has")


def get_task(name: str, options: ModelOptions, data: Mapping[str, Any] | None = None) -> Task:
    """``TASKS[name](options, data)``, with a ValueError naming ``task`` for an unknown name."""
    if name not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](options, data)


def from_checkpoint(state: Mapping[str, Any]) -> tuple[Task, IterativeSE3Transformer]:
    """The task and the trained model of a checkpoint of ``pyg-se3 train`` (a ``best.pt`` or ``last.pt``, as
    :func:`~pyg_se3.runtime.training.read_checkpoint` returns it): the task rebuilt from the recorded name and model
    options, the model from the recorded displacement scale, with the checkpoint's weights loaded."""
    extra = state["config"]["extra"]
    task = get_task(extra["task"], ModelOptions(**extra["model"]))
    model = task.build_model(extra["displacement_scale"])
    model.load_state_dict(state["model"])
    return task, model
