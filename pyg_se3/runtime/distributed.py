"""Data-parallel training across processes started by ``torchrun``: one way to set up, shard, reduce and clean up.

Every helper is a no-op (or the single-process answer) when the process is not part of a process group, so the
same training code runs as one process (``python ...``) or as many (``torchrun --nproc_per_node=N ...``).

Conventions (used by :class:`~pyg_se3.runtime.training.Trainer`, the CLI and the examples):

- **Process group.** :func:`setup` initialises it from the variables that ``torchrun`` sets (``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) when ``WORLD_SIZE > 1``: backend ``nccl``
  for a CUDA device (each process on ``cuda:LOCAL_RANK``), ``gloo`` otherwise.
- **Global batch.** ``batch_size`` is per process: one optimiser step sees ``batch_size * world_size`` samples.
  Each process draws its share of every epoch with a :class:`~torch.utils.data.distributed.DistributedSampler`
  (shuffled with ``seed + epoch``, so every process agrees on the permutation and a resumed run sees the same
  batches). DDP averages the gradients of the per-process mean losses: with equal local batches (which the
  sampler guarantees) that is the gradient of the mean loss over the global batch, as one process with
  ``batch_size * world_size`` would compute it on the same samples (the samples differ from those of a
  one-process run: the permutation is the sampler's). When the dataset size is not a multiple of
  ``world_size`` the sampler pads the epoch by repeating its first samples, which then count twice.
- **Evaluation** shards the dataset without padding (process ``r`` takes samples ``r, r + W, r + 2W, ...``) and
  adds up the per-process sums and counts: every sample counts exactly once, and the means equal those of one
  process over the whole dataset (up to the order of floating-point additions), for ``1 / world_size`` of the
  work per process (evaluating everything everywhere would give the same numbers ``world_size`` times slower).
- **Outputs.** Only the main process (rank 0) writes files, prints and shows progress bars; see :func:`is_main`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm.auto import tqdm

T = TypeVar("T")

__all__ = [
    "all_true",
    "barrier",
    "cleanup",
    "eval_sampler",
    "is_distributed",
    "is_main",
    "main_first",
    "merge_sums",
    "print_main",
    "progress",
    "rank",
    "setup",
    "sum_floats",
    "train_sampler",
    "world_size",
    "wrap",
]


def is_distributed() -> bool:
    """Whether this process belongs to an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this process is the one that writes files, prints and shows progress bars (rank 0)."""
    return rank() == 0


def print_main(*args: Any, **kwargs: Any) -> None:
    """``print`` on the main process only."""
    if is_main():
        print(*args, **kwargs)


def progress(iterable: Iterable[T], **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` on the main process; a disabled bar (same interface) on the others.

    On the main process ``disable`` is left to the caller or to tqdm's ``TQDM_DISABLE`` environment variable.
    """
    if not is_main():
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def setup(device: str = "cpu") -> str:
    """Join the process group that ``torchrun`` describes, if any; returns the device this process should use.

    Parameters
    ----------
    device
        The requested device: ``"cpu"``, ``"cuda"``, ...

    Returns
    -------
    str
        ``device`` itself without ``torchrun`` (``WORLD_SIZE`` unset or 1); with it, ``"cuda:LOCAL_RANK"`` for a
        CUDA device (also made the current device) and ``device`` otherwise. Calling it again is harmless.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if torch.device(device).type == "cuda":
        device = f"cuda:{_local_rank()}"
        torch.cuda.set_device(device)
    if not is_distributed():
        if torch.device(device).type == "cuda":
            dist.init_process_group("nccl", init_method="env://", device_id=torch.device(device))
        else:
            dist.init_process_group("gloo", init_method="env://")
    return device


def cleanup() -> None:
    """Leave the process group (if any): call once at the end of a script that called :func:`setup`."""
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the ``with`` block on rank 0 first, then on the first process of every other node, then on the rest.

    For work that writes shared files, such as processing a dataset: the first process creates them while the
    others wait, and then finds them ready (on a shared file system, or on its node's disk).
    """
    stage = 0 if rank() == 0 else 1 if _local_rank() == 0 else 2
    for _ in range(stage):
        barrier()
    try:
        yield
    finally:
        for _ in range(2 - stage):
            barrier()


def wrap(model: nn.Module, device: str | torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """``model`` in a :class:`~torch.nn.parallel.DistributedDataParallel` (or ``model`` itself in one process).

    Call the returned module in training (its forward registers the gradient all-reduce) and keep ``model``
    for evaluation and ``state_dict`` (no ``module.`` prefix). The model's parameters are broadcast from rank 0.

    Parameters
    ----------
    model
        The model, already on ``device``.
    device
        This process's device (from :func:`setup`).
    find_unused_parameters
        Let DDP look for parameters that get no gradient in a step (costs a graph traversal per step; the
        models of this package use all their parameters in every step, so it is off).
    """
    if not is_distributed():
        return model
    device = torch.device(device)
    device_ids = [device] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


def train_sampler(dataset: Sized, seed: int, epoch: int) -> DistributedSampler | None:
    """This process's share of one shuffled epoch; ``None`` in one process (shuffle in the ``DataLoader``).

    Process ``r`` of ``W`` gets the samples at positions ``r, r + W, ...`` of the permutation drawn with
    ``seed + epoch`` (padded to a multiple of ``W``), so global batch ``k`` is positions ``k B W .. (k + 1) B W``.
    """
    if not is_distributed():
        return None
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return sampler


def eval_sampler(dataset: Sized) -> range | None:
    """This process's shard of ``dataset`` for evaluation, without padding: samples ``rank, rank + W, ...``;
    ``None`` in one process (every sample, in order)."""
    if not is_distributed():
        return None
    return range(rank(), len(dataset), world_size())


def _device() -> torch.device:
    """Where the tensors of collectives live: the current CUDA device with NCCL, the CPU with Gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (a collective: every process must call it at the same point)."""
    if not is_distributed():
        return flag
    value = torch.tensor(int(flag), device=_device())
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def sum_floats(*values: float) -> tuple[float, ...]:
    """The sums over processes of ``values`` (in float64); ``values`` unchanged in one process."""
    if not is_distributed():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_device())
    dist.all_reduce(total)
    return tuple(total.tolist())


def merge_sums(sums: dict[str, list[float]]) -> dict[str, list[float]]:
    """Add up per-process ``{name: [sum, count]}`` accumulators; ``sums`` unchanged in one process.

    The dictionaries are gathered (not all-reduced as tensors), so a process whose shard is empty (fewer samples
    than processes) or whose task reports other names takes part all the same.
    """
    if not is_distributed():
        return sums
    gathered: list[dict[str, list[float]]] = [{} for _ in range(world_size())]
    dist.all_gather_object(gathered, sums)
    merged: dict[str, list[float]] = {}
    for part in gathered:
        for name, (value, count) in part.items():
            acc = merged.setdefault(name, [0.0, 0])
            acc[0] += value
            acc[1] += count
    return merged
