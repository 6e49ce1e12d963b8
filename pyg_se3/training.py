"""A small, dependable training loop: progress bars, metrics files, atomic checkpoints, exact resume, plots.

The loop is task-agnostic: a :class:`Task` says how to compute the loss and the evaluation metrics of a batch.
Every epoch writes ``metrics.csv`` and ``metrics.json`` (one row per epoch), ``last.pt`` (model, optimizer,
history, RNG states) and, when validation improves, ``best.pt``; ``loss.png`` plots the curves.
Checkpoints are written to a temporary file and renamed, so a killed run never leaves a half-written one.
``resume=True`` continues from ``last.pt`` with the identical optimizer state; batch order is a function of
``(seed, epoch)``, so a resumed run sees the same batches as an uninterrupted one.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same loop trains with
:class:`~torch.nn.parallel.DistributedDataParallel`; see :mod:`pyg_se3.distributed` for the conventions.
``batch_size`` is per process (a step sees ``batch_size * world_size`` samples), the reported training loss
and evaluation metrics are those of the whole data (reduced over processes), the decision to skip a non-finite
batch is taken by all processes together, and only rank 0 writes files, prints and shows progress bars.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from pyg_se3 import distributed

__all__ = ["Task", "TrainConfig", "Trainer", "atomic_save", "seed_everything"]


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
        The optimisation (AdamW; the learning rate of epoch ``e`` is ``lr (1 + cos(pi e / epochs)) / 2``).
        Under ``torchrun``, ``batch_size`` is per process: a step sees ``batch_size * world_size`` samples.
    seed
        Seeds initialisation and the batch order of every epoch.
    device
        ``"cpu"``, ``"cuda"``, ...; under ``torchrun`` a CUDA device becomes ``cuda:LOCAL_RANK``.
    out
        Output folder for metrics, checkpoints and plots.
    resume
        Continue from ``out/last.pt`` if it exists.
    grad_clip
        Clip the gradient norm to this value (``None``: no clipping).
    on_nan
        A non-finite loss or gradient: ``"skip"`` the batch (reported with its index) or ``"stop"`` the run.
    max_batches
        Stop each epoch after this many training batches (``None``: all); for smoke tests and quick looks.
    progress
        Show tqdm progress bars.
    """

    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.0
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
        if not self.lr > 0:
            raise ValueError(f"lr: expected > 0, got {self.lr}")
        if self.on_nan not in ("skip", "stop"):
            raise ValueError(f"on_nan: expected 'skip' or 'stop', got {self.on_nan!r}")


class NonFiniteLossError(RuntimeError):
    """Raised with ``on_nan="stop"`` when a batch gives a NaN/inf loss or gradient."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


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

    Under ``torchrun``, creating a ``Trainer`` joins the process group (:func:`pyg_se3.distributed.setup`);
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
    ) -> None:
        self.device = distributed.setup(config.device)
        self.model, self.task, self.config = model.to(self.device), task, config
        self.train_set, self.val_set = train_set, val_set
        self.eval_sets = dict(eval_sets or {})
        self.out = Path(config.out)
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.history: list[dict[str, float]] = []
        self.best_val = math.inf
        self.start_epoch = 0
        self.skipped_batches: list[tuple[int, int]] = []
        if config.resume and self._checkpoint_exists(self.out / "last.pt"):
            self.load(self.out / "last.pt")
        self.train_model = distributed.wrap(self.model, self.device)

    @staticmethod
    def _checkpoint_exists(path: Path) -> bool:
        """Whether ``path`` exists, for every process: either all of them see it or none does."""
        exists = path.exists()
        everywhere, nowhere = distributed.all_true(exists), distributed.all_true(not exists)
        if not (everywhere or nowhere):
            raise RuntimeError(f"{path}: some processes see it and others do not; resuming needs a shared folder")
        return exists

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "epoch": self.start_epoch,
            "history": self.history,
            "best_val": self.best_val,
            "config": asdict(self.config),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def load(self, path: Path) -> None:
        """Restore everything :meth:`state` saved; training continues at the epoch after the saved one."""
        state = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.start_epoch, self.history, self.best_val = state["epoch"], state["history"], state["best_val"]
        torch.set_rng_state(state["rng"]["torch"].cpu())  # map_location may have moved it to the GPU
        random.setstate(state["rng"]["python"])

    # ------------------------------------------------------------------ loops
    def loader(self, dataset: Iterable, shuffle: bool, epoch: int = 0) -> DataLoader:
        """Batches of ``dataset``: shuffled with ``(seed, epoch)`` for training, in order for evaluation. Under
        ``torchrun``: this process's share of each global batch (training) or its shard (evaluation)."""
        seed = self.config.seed * 1_000_003
        generator = torch.Generator().manual_seed(seed + epoch)
        sampler = distributed.train_sampler(dataset, seed, epoch) if shuffle else distributed.eval_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            generator=generator,
        )

    def learning_rate(self, epoch: int) -> float:
        """Cosine decay from ``lr`` over ``epochs``: a function of the epoch alone, so a run resumed with a larger
        ``--epochs`` continues on the longer schedule."""
        return self.config.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / max(self.config.epochs, 1)))

    def train_epoch(self, epoch: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(epoch)
        self.model.train()
        total, count = 0.0, 0
        loader = self.loader(self.train_set, shuffle=True, epoch=epoch)
        num_batches = len(loader) if self.config.max_batches is None else min(len(loader), self.config.max_batches)
        bar = tqdm(loader, desc=f"epoch {epoch}", total=num_batches, leave=False, disable=not self._progress)
        for index, batch in enumerate(bar):
            if self.config.max_batches is not None and index >= self.config.max_batches:
                break
            loss = self.step(batch.to(self.device), epoch, index)
            if loss is not None:
                total, count = total + loss, count + 1
                bar.set_postfix(loss=f"{loss:.4g}")
        # Several processes: every step's global loss is the mean of the per-process losses (equal local batches).
        total, count = distributed.sum_floats(total, count)
        return total / max(count, 1)

    @property
    def _progress(self) -> bool:
        return self.config.progress and distributed.is_main()

    def step(self, batch: Any, epoch: int, index: int) -> float | None:
        """One optimisation step; returns the loss (this process's, under ``torchrun``), or ``None`` for a skipped
        non-finite batch. With several processes the decision to skip is taken together (a batch is skipped
        everywhere when the loss or gradient of any process is not finite), so the processes never diverge."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task.loss(self.train_model, batch)
        finite = distributed.all_true(bool(torch.isfinite(loss)))  # before backward: it is a collective under DDP
        if finite:
            loss.backward()
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            finite = distributed.all_true(all(bool(torch.isfinite(g).all()) for g in grads))
        if not finite:
            message = f"non-finite loss or gradient at epoch {epoch}, batch {index} (loss={float(loss.detach()):.4g})"
            if self.config.on_nan == "stop":
                raise NonFiniteLossError(message + "; stopping (on_nan='stop'); weights and checkpoints untouched")
            if distributed.is_main():
                tqdm.write(f"warning: {message}; batch skipped", file=sys.stderr)
            self.skipped_batches.append((epoch, index))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        if self.config.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, dataset: Iterable) -> dict[str, float]:
        """Mean of every metric of the task over ``dataset`` (under ``torchrun``: each process evaluates its shard,
        and the sums and counts are added up)."""
        self.model.eval()
        sums: dict[str, list[float]] = {}
        for batch in self.loader(dataset, shuffle=False):
            for name, (value, n) in self.task.metrics(self.model, batch.to(self.device)).items():
                acc = sums.setdefault(name, [0.0, 0])
                acc[0] += value
                acc[1] += n
        sums = distributed.merge_sums(sums)
        return {name: s / max(n, 1) for name, (s, n) in sums.items()}

    def fit(self, on_epoch_end: Callable[[dict[str, float]], None] | None = None) -> list[dict[str, float]]:
        """Train from ``start_epoch`` to ``config.epochs``; returns the history (one dict per epoch).
        ``on_epoch_end`` is called on every process (print from :func:`pyg_se3.distributed.is_main` only)."""
        epochs = range(self.start_epoch, self.config.epochs)
        for epoch in tqdm(epochs, desc="training", disable=not self._progress):
            row: dict[str, float] = {
                "epoch": epoch,
                "lr": self.learning_rate(epoch),
                "train_loss": self.train_epoch(epoch),
            }
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

    def _checkpoint(self, row: dict[str, float]) -> None:
        val = row.get("val_loss", row["train_loss"])
        improved = val < self.best_val
        self.best_val = min(val, self.best_val)
        if not distributed.is_main():
            return
        state = self.state()
        atomic_save(state, self.out / "last.pt")
        if improved:
            atomic_save(state, self.out / "best.pt")
        self.write_metrics()
        self.plot()

    # ------------------------------------------------------------------ outputs
    def write_metrics(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        tmp = self.out / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out / "metrics.csv")
        tmp = self.out / ".metrics.json.tmp"
        tmp.write_text(json.dumps(self.history, indent=1))
        os.replace(tmp, self.out / "metrics.json")

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
