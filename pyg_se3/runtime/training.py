"""A small, dependable training loop: progress bars, metrics files, atomic checkpoints, exact resume, plots.

The loop is task-agnostic: a :class:`Task` says how to compute the loss and the evaluation metrics of a batch.
Every epoch writes ``metrics.csv`` and ``metrics.json`` (one row per epoch; ``metrics.json`` writes a non-finite
number as ``null``, so that it stays valid JSON, ``metrics.csv`` as ``nan``), ``last.pt`` (model, optimizer,
history, RNG states) and, when validation improves, ``best.pt``; ``loss.png`` plots the curves at every evaluated
epoch (every ``eval_every``-th and the last). A NaN validation loss never counts as an improvement; an epoch that
made no optimisation step (every batch skipped as non-finite) reports a NaN training loss, with a warning on
stderr.
Checkpoints are written to a temporary file and renamed, so a killed run never leaves a half-written one, and
``best.pt`` is written before ``last.pt``: a run killed between the two resumes at the epoch before and redoes it.
``resume=True`` continues from ``last.pt`` with the identical optimizer state; batch order is a function of
``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one. With ``ema_decay``, the
exponential moving average of the weights is what is evaluated and what a checkpoint's ``"model"`` holds (so
``best.pt`` reproduces the reported metrics); the trained weights are kept beside it for resuming.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop trains with
:class:`~torch.nn.parallel.DistributedDataParallel`; see :mod:`pyg_se3.runtime.distributed` for the conventions.
``batch_size`` is per process (a step sees ``batch_size * world_size`` samples), the reported training loss
and evaluation metrics are those of the whole data (reduced over processes), the decision to skip a non-finite
batch is taken by all processes together, and only rank 0 writes files, prints and shows progress bars.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from pyg_se3._amp import AMP_DTYPES
from pyg_se3._files import replacing, write_text_atomic
from pyg_se3.loader import FixedSizeGraphs, FixedSizeLoader
from pyg_se3.runtime import distributed

__all__ = [
    "Task",
    "TrainConfig",
    "Trainer",
    "atomic_save",
    "json_safe",
    "parameter_groups",
    "read_checkpoint",
    "seed_everything",
    "write_csv",
]


class Task(Protocol):
    """How to train and evaluate one model on one kind of data."""

    def loss(self, model: nn.Module, batch: Any) -> Tensor:
        """The scalar training loss of a batch (a mean over its items)."""

    def metrics(self, model: nn.Module, batch: Any) -> dict[str, tuple[float, int]]:
        """Evaluation metrics of a batch as ``{name: (sum over items, number of items)}``; must include
        ``"loss"`` (the validation loss that picks the best checkpoint)."""


@dataclass
class TrainConfig:
    """Options of :class:`Trainer` (all have the CLI's defaults).

    Attributes
    ----------
    epochs, batch_size, lr, weight_decay
        The optimisation (AdamW, fused on CPUs and CUDA GPUs: ``lr`` finite and > 0, ``weight_decay`` finite and
        >= 0; cosine decay of the learning rate from ``lr`` to ``min_lr``: at time ``t`` (in epochs) it is
        ``min_lr + (lr - min_lr) (1 + cos(pi t / epochs)) / 2``). Under ``torchrun``, ``batch_size`` is per
        process: a step sees ``batch_size * world_size`` samples.
    min_lr
        The learning rate the cosine reaches at the end (default 0).
    schedule
        ``"epoch"`` (default): ``t`` is the epoch's index, one rate per epoch; ``"step"``: ``t`` is
        ``epoch + batch / batches_per_epoch``, a new rate every step (the original energy experiment's schedule).
    warmup_epochs
        A linear warm-up before the cosine (default 0: none): the rate rises to ``lr`` over the first
        ``warmup_epochs`` (the ``k``-th of ``K`` epochs, or steps with ``schedule="step"``, of the warm-up runs at
        ``k / K`` of ``lr``, never at 0), then the cosine decays from ``lr`` to ``min_lr`` over the remaining
        epochs. At most ``epochs``.
    weight_decay_on
        Which parameters ``weight_decay`` applies to: ``"all"`` (default) or ``"weights"``, the parameters with
        two or more dimensions (weight matrices); biases and the normalisations' scales and shifts, which are
        vectors, then have none (the usual choice of transformer training recipes).
    loader
        How batches are made: ``"auto"`` (default) collates each dataset once with
        :class:`~pyg_se3.loader.FixedSizeLoader` when its graphs all have the same size and it has no ``transform``
        and no ``set_epoch`` (their samples may change at every access), and uses PyG's
        :class:`~torch_geometric.loader.DataLoader` otherwise; ``"pyg"`` always uses the ``DataLoader``;
        ``"fixed"`` always the collated-once loader, and refuses a dataset it cannot take. Both give the same
        batches in the same order. The collated copy is kept for the trainer's life (about the dataset's memory
        again); a dataset changed in place after its first use needs ``"pyg"``.
    ema_decay
        Evaluate (and checkpoint as ``"model"``) an exponential moving average of the weights,
        ``w_ema <- ema_decay w_ema + (1 - ema_decay) w`` after every optimisation step, starting from the weights
        after the first step (:class:`torch.optim.swa_utils.AveragedModel`); buffers are copied, not averaged.
        In [0, 1); 0 (default): evaluate the trained weights themselves. It averages over about
        ``1 / (1 - ema_decay)`` steps: 0.999 is about 5 epochs of 3,000 samples in batches of 16.
    eval_batch_size
        Samples per evaluation batch, >= 1 (``None``, the default: ``batch_size``). Evaluation keeps no
        activations for a backward pass, so it takes larger batches than training in the same memory, and small
        graphs evaluate several times faster in batches of hundreds; the metrics do not depend on it (up to
        floating-point rounding).
    eval_every
        Evaluate the validation and ``eval_sets`` every this many epochs (default 1), and always after the last
        epoch; only evaluated epochs can be the best. Rows of the other epochs have no validation metrics.
    amp
        Mixed precision for training: ``None`` (default: float32), ``"bf16"`` or ``"fp16"``. The forward pass and
        the loss of every training step run under ``torch.autocast(device type, dtype)`` (what pyg_se3 keeps in
        float32 under it: :mod:`pyg_se3._amp`); the parameters, gradients and optimiser state stay float32, and
        evaluation runs in float32, so the metrics and the choice of the best epoch carry no 16-bit rounding.
        ``"fp16"`` scales the loss with a :class:`torch.amp.GradScaler` (checkpointed with the rest): a step whose
        scaled gradients overflow is skipped and the scale halved, as dynamic loss scaling does, and is not a
        non-finite batch (``on_nan`` is not consulted, nothing is reported); every epoch's row records the scale
        it ended with as ``loss_scale``. A non-finite loss is a non-finite batch in either dtype. How to run, not
        what: a resumed run may change it.
    seed
        Seeds initialisation and the batch order of every epoch.
    device
        ``"cpu"``, ``"cuda"``, ...; under ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK``.
    out
        Output folder for metrics, checkpoints and plots.
    resume
        Continue from ``out/last.pt`` if it exists.
    grad_clip
        Clip the gradient norm to this value, finite and > 0 (``None``: no clipping).
    on_nan
        A non-finite loss or gradient: ``"skip"`` the batch (reported with its index) or ``"stop"`` the run. The
        check is on the norm of all gradients together: one too large for its square to be represented counts
        as non-finite too.
    max_batches
        Stop each epoch after this many training batches, >= 1 (``None``: all); for smoke tests and quick looks.
    progress
        Show tqdm progress bars.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    min_lr: float = 0.0
    schedule: str = "epoch"
    warmup_epochs: float = 0.0
    weight_decay: float = 0.0
    weight_decay_on: str = "all"
    ema_decay: float = 0.0
    eval_every: int = 1
    eval_batch_size: int | None = None
    loader: str = "auto"
    amp: str | None = None
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/default"
    resume: bool = False
    grad_clip: float | None = 1.0
    on_nan: str = "skip"
    max_batches: int | None = None
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs: expected >= 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {self.batch_size}")
        if not 0 < self.lr < math.inf:
            raise ValueError(f"lr: expected a finite number > 0, got {self.lr}")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"min_lr: expected a number in [0, lr={self.lr}], got {self.min_lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {self.weight_decay}")
        # a negative max-norm would flip the gradient: the run would train uphill
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ValueError(f"grad_clip: expected a finite number > 0 or None (no clipping), got {self.grad_clip}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size: expected >= 1 or None (batch_size), got {self.eval_batch_size}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches: expected >= 1 or None (all), got {self.max_batches}")
        if self.schedule not in ("epoch", "step"):
            raise ValueError(f"schedule: expected 'epoch' or 'step', got {self.schedule!r}")
        if self.on_nan not in ("skip", "stop"):
            raise ValueError(f"on_nan: expected 'skip' or 'stop', got {self.on_nan!r}")
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise ValueError(f"warmup_epochs: expected a number in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.weight_decay_on not in ("all", "weights"):
            raise ValueError(f"weight_decay_on: expected 'all' or 'weights', got {self.weight_decay_on!r}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay: expected a number in [0, 1) (0: no average), got {self.ema_decay}")
        if self.loader not in ("auto", "pyg", "fixed"):
            raise ValueError(f"loader: expected 'auto', 'pyg' or 'fixed', got {self.loader!r}")
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"amp: expected None (float32), 'bf16' or 'fp16', got {self.amp!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 1:
            raise ValueError(f"eval_every: expected an integer >= 1, got {self.eval_every!r}")


class NonFiniteLossError(RuntimeError):
    """Raised with ``on_nan="stop"`` when a batch gives a NaN/inf loss or gradient."""


#: Devices on which the trainer's AdamW runs fused (``torch.optim.AdamW(..., fused=True)``).
FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, inf) in its dicts and lists replaced by ``None``: ``json.dumps``
    would write ``NaN``, which is not JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def read_checkpoint(path: str | Path, map_location: Any = None) -> dict[str, Any]:
    """A checkpoint written by :class:`Trainer`; a ``ValueError`` naming ``path`` when it is missing, empty,
    truncated, damaged or not a checkpoint."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except Exception as error:  # torch.load fails on damaged files in many ways (EOF, zip, pickle, ...)
        raise ValueError(f"{path}: not a readable checkpoint (empty, truncated or damaged?): {error}") from error
    if not isinstance(state, dict) or not {"model", "epoch", "config"} <= state.keys():
        raise ValueError(f"{path}: not a checkpoint written by pyg_se3 (no model, epoch and config)")
    return state


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: readers never see a partial file."""
    with replacing(path) as tmp:
        torch.save(obj, tmp)


def parameter_groups(model: nn.Module, weight_decay: float, decay_on: str = "all") -> list[dict[str, Any]]:
    """The optimiser's parameter groups: every parameter with ``weight_decay`` (``decay_on="all"``), or only those
    with two or more dimensions, the rest without (``"weights"``; see :class:`TrainConfig`)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if decay_on == "all":
        return [{"params": parameters, "weight_decay": weight_decay}]
    return [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``rows`` as a CSV table (columns: every key, in order of first appearance), written atomically."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with replacing(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


class Trainer:
    """Train ``model`` on ``task`` with the datasets given; see the module docstring for what it writes.

    Parameters
    ----------
    model
        The model to train.
    task
        A :class:`Task`.
    train_set, val_set
        PyG datasets (or lists of ``Data``). ``val_set`` may be ``None`` (then the best checkpoint is the last).
    config
        A :class:`TrainConfig`.
    eval_sets
        More datasets to evaluate every epoch, by name (e.g. ``{"test": test_set}``).
    train_transform
        Applied to every training batch before it is moved to the device and stepped on (e.g. a
        :class:`~pyg_se3.transforms.RandomReflection`, which reflects each graph of a batch on its own): augmentation
        that keeps the fast loader, unlike a dataset ``transform``. Its draws come from torch's global random
        state, which checkpoints save, so a resumed run draws what an uninterrupted one would.

    Notes
    -----
    Under ``torchrun``, creating a ``Trainer`` joins the process group (:func:`pyg_se3.runtime.distributed.setup`);
    ``model`` stays the plain module (checkpoints hold its ``state_dict``, without a ``module.`` prefix) and
    ``train_model`` is its :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, the one that
    :meth:`step` calls. ``resume`` then needs ``out/last.pt`` on a file system that every process sees.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_set: Iterable,
        val_set: Iterable | None,
        config: TrainConfig,
        eval_sets: dict[str, Iterable] | None = None,
        train_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        self.device = distributed.setup(config.device)
        self.model, self.task, self.config = model.to(self.device), task, config
        self.train_set, self.val_set = train_set, val_set
        self.eval_sets = dict(eval_sets or {})
        self.train_transform = train_transform
        self.out = Path(config.out)
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        groups = parameter_groups(model, config.weight_decay, config.weight_decay_on)
        # the fused kernel: one pass over all parameters instead of a Python loop over them (5x faster for the
        # N-body model's 280 small tensors on a CPU); the devices without it get the loop
        floating = all(p.is_floating_point() for p in model.parameters())
        device_type = torch.device(self.device).type
        fused = device_type in FUSED_ADAMW_DEVICES and floating
        self.optimizer = torch.optim.AdamW(groups, lr=config.lr, fused=fused or None)
        if config.amp is not None and not torch.amp.is_autocast_available(device_type):
            raise ValueError(f"amp: torch.autocast is not available on {device_type!r} devices; use amp=None")
        self.scaler = torch.amp.GradScaler(device_type) if config.amp == "fp16" else None
        self.average = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=False)
            if config.ema_decay
            else None
        )
        self.history: list[dict[str, float]] = []
        self.best_val = math.inf
        self.start_epoch = 0
        self.skipped_batches: list[tuple[int, int]] = []
        self._collated: dict[int, tuple[Iterable, FixedSizeGraphs | None]] = {}
        if config.resume and self._checkpoint_exists(self.out / "last.pt"):
            self.load(self.out / "last.pt")
            if distributed.is_main():
                self._restore_best()
        self.train_model = distributed.wrap(self.model, self.device)

    @staticmethod
    def _checkpoint_exists(path: Path) -> bool:
        """Whether ``path`` exists, for every process: either all of them see it or none does."""
        exists = path.exists()
        everywhere, nowhere = distributed.all_true(exists), distributed.all_true(not exists)
        if not (everywhere or nowhere):
            raise RuntimeError(f"{path}: some processes see it and others do not; resuming needs a shared folder")
        return exists

    @property
    def evaluated_model(self) -> nn.Module:
        """The weights that are evaluated and checkpointed as ``"model"``: the moving average with ``ema_decay``,
        else the trained model."""
        return self.model if self.average is None else self.average.module

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        averaged = {}
        if self.average is not None:
            averaged = {"trained_model": self.model.state_dict(), "ema_steps": int(self.average.n_averaged)}
        return {
            "model": self.evaluated_model.state_dict(),
            **averaged,
            "optimizer": self.optimizer.state_dict(),
            **({} if self.scaler is None else {"scaler": self.scaler.state_dict()}),
            "epoch": self.start_epoch,
            "history": self.history,
            "best_val": self.best_val,
            "config": asdict(self.config),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def load(self, path: Path) -> None:
        """Restore everything :meth:`state` saved; training continues at the epoch after the saved one."""
        state = read_checkpoint(path, map_location=self.device)
        recorded = state["config"].get("ema_decay", 0.0) if isinstance(state["config"], dict) else 0.0
        if recorded != self.config.ema_decay:
            raise ValueError(
                f"ema_decay: {path} was trained with ema_decay={recorded}, not {self.config.ema_decay}; resume with "
                "the same value"
            )
        if self.average is None:
            self.model.load_state_dict(state["model"])
        else:
            self.model.load_state_dict(state["trained_model"])
            self.average.module.load_state_dict(state["model"])
            self.average.n_averaged.fill_(state["ema_steps"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:  # else a run resumed in fp16 starts a fresh scale
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.history, self.best_val = state["epoch"], state["history"], state["best_val"]
        if math.isnan(self.best_val):  # written by an older version, which let a NaN validation loss poison it
            self.best_val = min(
                (v for v in map(self._selection_loss, self.history) if math.isfinite(v)), default=math.inf
            )
        torch.set_rng_state(state["rng"]["torch"].cpu())  # map_location may have moved it to the GPU
        random.setstate(state["rng"]["python"])

    def _restore_best(self) -> None:
        """Rewrite ``best.pt`` from the state just loaded when that state is the best epoch and ``best.pt`` is
        missing, unreadable or of another epoch: an older version wrote ``last.pt`` first, and a run killed
        between the two writes lost the best checkpoint for good."""
        best = next((row for row in self.history if self._selection_loss(row) == self.best_val), None)
        if best is None or best is not self.history[-1]:
            return  # the best epoch is an earlier one: its weights are only in best.pt
        path = self.out / "best.pt"
        try:
            if read_checkpoint(path)["epoch"] == self.start_epoch:
                return
        except ValueError:
            pass  # missing or damaged: rewrite it
        tqdm.write(
            f"warning: {path} is not the best epoch ({best['epoch']}); rewriting it from last.pt", file=sys.stderr
        )
        atomic_save(self.state(), path)

    def _selection_loss(self, row: dict[str, float]) -> float:
        """The loss that picks the best checkpoint: the validation loss (NaN for an epoch that was not evaluated:
        it cannot be the best), or the training loss when there is no validation set."""
        if self.val_set is None:
            return row["train_loss"]
        return row.get("val_loss", math.nan)

    # ------------------------------------------------------------------ loops
    def loader(self, dataset: Iterable, shuffle: bool, epoch: int = 0) -> DataLoader | FixedSizeLoader:
        """Batches of ``dataset``: shuffled with ``(seed, epoch)`` for training, in order (``eval_batch_size``
        each) for evaluation. Under ``torchrun``: this process's share of each global batch (training) or its
        shard (evaluation)."""
        seed = self.config.seed * 1_000_003
        generator = torch.Generator().manual_seed(seed + epoch)
        sampler = distributed.train_sampler(dataset, seed, epoch) if shuffle else distributed.eval_sampler(dataset)
        graphs = self._fixed_size(dataset)
        batch_size = self.config.batch_size if shuffle else self.config.eval_batch_size or self.config.batch_size
        return (DataLoader if graphs is None else FixedSizeLoader)(
            dataset if graphs is None else graphs,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
        )

    def _fixed_size(self, dataset: Iterable) -> FixedSizeGraphs | None:
        """``dataset`` collated once (at its first use, then kept), or ``None`` for PyG's ``DataLoader``; see
        ``TrainConfig.loader``."""
        if self.config.loader == "pyg":
            return None
        cached = self._collated.get(id(dataset))
        if cached is not None and cached[0] is dataset:
            return cached[1]
        try:
            graphs = FixedSizeGraphs(dataset)
        except ValueError as error:
            if self.config.loader == "fixed":
                raise ValueError(f"loader='fixed': {error}; use loader='auto' or 'pyg'") from error
            graphs = None
        self._collated[id(dataset)] = (dataset, graphs)
        return graphs

    def learning_rate(self, epoch: int, fraction: float = 0.0, step: float = 1.0) -> float:
        """The rate at ``fraction`` (in [0, 1)) of ``epoch``: the warm-up, then the cosine decay from ``lr`` to
        ``min_lr`` (see :class:`TrainConfig`); ``step`` is the length of one schedule step in epochs (1 per epoch,
        ``1 / batches`` per step), at whose end the warm-up's rate is taken. A function of the time alone, so a
        run resumed with a larger ``--epochs`` continues on the longer schedule."""
        lr, low, warmup = self.config.lr, self.config.min_lr, self.config.warmup_epochs
        t = epoch + fraction
        if t < warmup:
            return lr * min(1.0, (t + step) / warmup)
        t = (t - warmup) / max(self.config.epochs - warmup, 1e-12)
        return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))

    def _set_learning_rate(self, value: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = value

    def train_epoch(self, epoch: int) -> float:
        self._set_learning_rate(self.learning_rate(epoch))
        self.model.train()
        total, count = 0.0, 0
        set_epoch = getattr(self.train_set, "set_epoch", None)
        if set_epoch is not None:  # a stream of fresh samples: this epoch's, a function of (seed, epoch)
            set_epoch(epoch, seed=self.config.seed)
        loader = self.loader(self.train_set, shuffle=True, epoch=epoch)
        num_batches = len(loader) if self.config.max_batches is None else min(len(loader), self.config.max_batches)
        bar = tqdm(loader, desc=f"epoch {epoch}", total=num_batches, leave=False, disable=not self._progress)
        for index, batch in enumerate(bar):
            if self.config.max_batches is not None and index >= self.config.max_batches:
                break
            if self.config.schedule == "step":
                per_step = 1 / max(num_batches, 1)
                self._set_learning_rate(self.learning_rate(epoch, index * per_step, per_step))
            if self.train_transform is not None:  # on the host, where the batch is made: no device syncs
                batch = self.train_transform(batch)
            loss = self.step(batch.to(self.device), epoch, index)
            if loss is not None:
                total, count = total + loss, count + 1
                bar.set_postfix(loss=f"{loss:.4g}")
        # Several processes: every step's global loss is the mean of the per-process losses (equal local batches).
        total, count = distributed.sum_floats(total, count)
        if count == 0:  # nothing was trained: a loss of 0 would read as a perfect epoch
            if distributed.is_main():
                message = f"epoch {epoch} made no optimisation step (every batch skipped, or none); train_loss is nan"
                tqdm.write(f"warning: {message}", file=sys.stderr)
            return math.nan
        return total / count

    def _autocast(self) -> torch.autocast | contextlib.nullcontext:
        """The context of a training step's forward pass and loss: autocast to ``amp``'s dtype, or none."""
        if self.config.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=AMP_DTYPES[self.config.amp])

    @property
    def _progress(self) -> bool:
        return self.config.progress and distributed.is_main()

    def step(self, batch: Any, epoch: int, index: int) -> float | None:
        """One optimisation step; returns the loss (this process's, under ``torchrun``), or ``None`` for a skipped
        non-finite batch. With several processes the decision to skip is taken together (a batch is skipped
        everywhere when the loss or gradient of any process is not finite), so the processes never diverge.
        With ``amp="fp16"`` a finite loss whose scaled gradients overflow also returns ``None``, unreported: the
        loss scaler halves its scale and the step is skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.task.loss(self.train_model, batch)
        # Backward runs on a non-finite loss too (its gradients are then discarded), so that every process of a
        # distributed run joins the gradient all-reduce; the loss and whether it and every gradient are finite
        # then reach the host in one synchronisation per step (each one stalls a GPU).
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()
        loss = loss.detach()
        if self.scaler is not None:  # the true gradients, for the check and the clipping
            self.scaler.unscale_(self.optimizer)
        # One norm of all gradients, finite iff every gradient is (and none so large that its square overflows),
        # is both the check and the clipping's norm.
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norm = nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=loss.device)
        checks = torch.stack([loss.double(), loss.isfinite().double(), (loss.isfinite() & norm.isfinite()).double()])
        value, loss_finite, finite = checks.tolist()
        if not distributed.all_true(bool(finite)):
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.update()  # a smaller scale, and the scaler ready for the next step
                if distributed.all_true(bool(loss_finite)):  # the scaled gradients overflowed: skip the step
                    return None
            message = f"non-finite loss or gradient at epoch {epoch}, batch {index} (loss={value:.4g})"
            if self.config.on_nan == "stop":
                raise NonFiniteLossError(message + "; stopping (on_nan='stop'); weights and checkpoints untouched")
            if distributed.is_main():
                tqdm.write(f"warning: {message}; batch skipped", file=sys.stderr)
            self.skipped_batches.append((epoch, index))
            return None
        if self.config.grad_clip is not None:
            nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.grad_clip, norm)
        self.optimizer.step()
        if self.scaler is not None:
            self.scaler.update()
        if self.average is not None:
            self.average.update_parameters(self.model)
        return value

    @torch.no_grad()
    def evaluate(self, dataset: Iterable) -> dict[str, float]:
        """Mean of every metric of the task over ``dataset`` (under ``torchrun``: each process evaluates its shard,
        and the sums and counts are added up). With ``ema_decay``, of the moving average of the weights."""
        model = self.evaluated_model
        model.eval()
        sums: dict[str, list[float]] = {}
        for batch in self.loader(dataset, shuffle=False):
            for name, (value, n) in self.task.metrics(model, batch.to(self.device)).items():
                acc = sums.setdefault(name, [0.0, 0])
                acc[0] += value
                acc[1] += n
        sums = distributed.merge_sums(sums)
        return {name: s / max(n, 1) for name, (s, n) in sums.items()}

    def fit(self, on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train from ``start_epoch`` to ``config.epochs``; returns the history (one dict per epoch).
        ``on_epoch_end`` is called on every process (print from :func:`pyg_se3.runtime.distributed.is_main` only)."""
        epochs = range(self.start_epoch, self.config.epochs)
        for epoch in tqdm(epochs, desc="training", disable=not self._progress):
            row: dict[str, float] = {
                "epoch": epoch,
                "lr": self.learning_rate(epoch),
                "train_loss": self.train_epoch(epoch),
            }
            if self.scaler is not None:
                row["loss_scale"] = self.scaler.get_scale()
            if self._evaluates(epoch):
                if self.val_set is not None:
                    row.update({f"val_{k}": v for k, v in self.evaluate(self.val_set).items()})
                for name, dataset in self.eval_sets.items():
                    row.update({f"{name}_{k}": v for k, v in self.evaluate(dataset).items()})
            self.history.append(row)
            self.start_epoch = epoch + 1
            self._checkpoint(row)
            if on_epoch_end is not None:
                on_epoch_end(row)
        distributed.barrier()  # when fit returns, rank 0's files are written, on every process
        return self.history

    def _evaluates(self, epoch: int) -> bool:
        """Whether ``epoch`` is evaluated: every ``eval_every``-th one, and the last."""
        return (epoch + 1) % self.config.eval_every == 0 or epoch + 1 == self.config.epochs

    def _checkpoint(self, row: dict[str, float]) -> None:
        val = self._selection_loss(row)
        improved = math.isfinite(val) and val < self.best_val  # a NaN is no improvement (and would stick in min)
        if improved:
            self.best_val = val
        if not distributed.is_main():
            return
        state = self.state()
        # best.pt first: last.pt records the new best_val, so a kill between the two must leave last.pt at the
        # epoch before, which a resumed run then redoes (writing both again)
        if improved:
            atomic_save(state, self.out / "best.pt")
        atomic_save(state, self.out / "last.pt")
        self.write_metrics()
        # the validation curves gain points only at evaluated epochs, and a plot costs ~0.3 s: a tenth of a fast epoch
        if self._evaluates(int(row["epoch"])):
            self.plot()

    # ------------------------------------------------------------------ outputs
    def write_metrics(self) -> None:
        write_csv(self.history, self.out / "metrics.csv")
        write_text_atomic(self.out / "metrics.json", json.dumps(json_safe(self.history), indent=1, allow_nan=False))

    def plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        epochs = [row["epoch"] for row in self.history]
        for key in self.history[-1]:
            if key.endswith("loss") or key.endswith("mse"):
                ax.plot(epochs, [row.get(key, math.nan) for row in self.history], marker="o", label=key)
        ax.set_xlabel("epoch")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(self.out / "loss.png", dpi=100)
        plt.close(fig)
