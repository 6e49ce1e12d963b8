"""``pyg-se3`` (also ``python -m pyg_se3``): train and evaluate the Iterative SE(3)-Transformer on the three tasks.

Examples
--------
    pyg-se3 train --task dynamics --epochs 20 --out runs/dynamics
    pyg-se3 train --task dynamics --epochs 40 --out runs/dynamics --resume     # continue to epoch 40
    pyg-se3 evaluate --task dynamics --checkpoint runs/dynamics/best.pt
    torchrun --nproc_per_node=2 -m pyg_se3 train --task dynamics --out runs/ddp  # data parallel, 2 processes

Under ``torchrun`` (several processes: CPU cores, GPUs or nodes), ``--batch-size`` is per process, so one step
sees ``batch-size x processes`` samples; see :mod:`pyg_se3.runtime.distributed`. Only rank 0 prints and writes files.

Resuming
--------
``--resume`` continues the run recorded in ``--out/last.pt`` (if there is one) with the checkpoint's options:
the task, every model option, ``--batch-size``, ``--train-samples``, ``--lr``, ``--min-lr``, ``--schedule``,
``--warmup-epochs``, ``--weight-decay``, ``--weight-decay-on``, ``--ema-decay``, ``--eval-every``, ``--seed``,
``--grad-clip``, ``--reflect``, ``--time-reversal`` and ``--max-batches`` (it defines what an epoch trains). An option
left out is taken from the checkpoint; one given with another value is refused (start a new ``--out`` instead),
since the resumed run would no longer be the recorded one, or would not load. ``--epochs`` (that is what resuming
is for) and ``--on-nan`` may change and are also the checkpoint's when left out; ``--device``, ``--amp``,
``--root``, ``--no-progress``, ``--deterministic``, ``--loader`` and ``--eval-batch-size`` are how to run, not what,
and are never taken from the checkpoint.

Errors
------
A bad option (a non-positive size, a non-finite or out-of-range number, an unavailable ``--device``, an ``--out``
that is a file), an unreadable checkpoint, an option that differs from the resumed checkpoint's, or a NaN with
``--on-nan stop`` ends the command with one ``pyg-se3: error: ...`` line naming the option, and exit status 2;
option errors are found before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from torch_geometric.transforms import Compose

from pyg_se3.runtime import distributed
from pyg_se3.runtime.tasks import TASKS, ModelOptions, from_checkpoint, get_task, tasks_with
from pyg_se3.runtime.training import (
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    json_safe,
    read_checkpoint,
    seed_everything,
)

__all__ = ["main"]


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """Model options, one per field of :class:`~pyg_se3.runtime.tasks.ModelOptions` (its flag, help and argparse
    keywords are the field's metadata). Every default is ``None`` here, filled in by :func:`_apply_defaults` (the
    task's, then ``ModelOptions``'): an option left out is then told apart from one given."""
    group = parser.add_argument_group("model (defaults depend on --task: see the task's model_defaults)")
    for option in fields(ModelOptions):
        argparse_kwargs = dict(option.metadata["argparse"])
        if argparse_kwargs.get("action") == "store_true":
            argparse_kwargs["default"] = None
        group.add_argument(_flag(option.name), dest=option.name, help=option.metadata["help"], **argparse_kwargs)


#: The trainer's options as the CLI names them, with their defaults where a task sets none.
TRAIN_DEFAULTS = {
    "epochs": 10,
    "batch_size": 16,
    "lr": 1e-3,
    "min_lr": 0.0,
    "schedule": "epoch",
    "warmup_epochs": 0.0,
    "train_samples": None,
    "weight_decay": 0.0,
    "weight_decay_on": "all",
    "ema_decay": 0.0,
    "eval_every": 1,
    "seed": 0,
    "grad_clip": 1.0,
    "on_nan": "skip",
    "reflect": False,
    "time_reversal": False,
}


def _apply_defaults(args: argparse.Namespace) -> None:
    """Fill every option left at ``None``: the task's default, else the generic one."""
    task = TASKS[args.task]
    defaults = {**asdict(ModelOptions()), **TRAIN_DEFAULTS, **task.model_defaults, **task.train_defaults}
    if args.command == "evaluate":  # evaluate's batches are evaluation batches: the task's size for them
        defaults["batch_size"] = defaults.get("eval_batch_size") or defaults["batch_size"]
    for name, value in defaults.items():
        if getattr(args, name, value) is None:
            setattr(args, name, value)


def _add_data_arguments(parser: argparse.ArgumentParser, batch_size_help: str) -> None:
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--root", default="data", help="dataset folder (raw/processed files)")
    parser.add_argument(
        "--train-samples",
        type=int,
        help="use only the first N training samples (default: all); energy: fresh samples per epoch (default 5000)",
    )
    parser.add_argument("--batch-size", type=int, help=batch_size_help)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (torchrun: cuda means cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyg-se3", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model; writes metrics, checkpoints and plots to --out")
    _add_data_arguments(train, "per process under torchrun (default: 16; energy 128)")
    _add_model_arguments(train)
    train.add_argument("--epochs", type=int, help="default: 10; energy 100")
    train.add_argument("--lr", type=float, help="initial learning rate (default 1e-3)")
    train.add_argument("--min-lr", type=float, help="where the cosine schedule ends (default 0; energy 1e-4)")
    train.add_argument(
        "--schedule",
        choices=["epoch", "step"],
        help="cosine learning rate per epoch or per step (default epoch; energy step)",
    )
    train.add_argument(
        "--warmup-epochs",
        type=float,
        help="linear warm-up of the learning rate over this many epochs (per step with --schedule step), then the "
        "cosine (default 0: none); without one (or --radial-scaling forward), the first steps of a wide model "
        "(32+ channels) blow its loss up",
    )
    train.add_argument("--weight-decay", type=float, help="AdamW's (default 0)")
    train.add_argument(
        "--weight-decay-on",
        choices=["all", "weights"],
        help="which parameters decay: all (default), or weights only (not biases and normalisation parameters)",
    )
    train.add_argument(
        "--ema-decay",
        type=float,
        help="evaluate and checkpoint an exponential moving average of the weights with this decay per step, in "
        "[0, 1) (default 0: the trained weights), e.g. 0.999",
    )
    train.add_argument(
        "--eval-every",
        type=int,
        help="evaluate every N epochs and after the last (default 1); only evaluated epochs can be the best",
    )
    train.add_argument(
        "--eval-batch-size",
        type=int,
        help="samples per evaluation batch (default: --batch-size; nbody 256); larger is faster for small graphs, "
        "and may change on --resume",
    )
    train.add_argument(
        "--loader",
        choices=["auto", "pyg", "fixed"],
        default="auto",
        help="batches: collated once when all graphs have one size (auto, the default; fixed: always), or PyG's "
        "DataLoader (pyg); the same batches either way",
    )
    train.add_argument(
        "--amp",
        choices=["bf16", "fp16"],
        help="mixed precision: each training step's forward pass and loss under torch.autocast to this dtype, the "
        "weights, optimiser and evaluation in float32; fp16 with dynamic loss scaling (default: float32 throughout)",
    )
    train.add_argument(
        "--reflect",
        action="store_true",
        default=None,
        help="invert every training graph through the origin with probability 1/2 (positions, velocities, targets "
        "and odd-degree features change sign): the simulations are symmetric under reflections, an SE(3) model "
        f"need not be ({tasks_with(lambda task: task.has_reflection())})",
    )
    train.add_argument(
        "--time-reversal",
        action="store_true",
        default=None,
        help="swap every training graph with probability 1/2 for the same simulation run backwards, from the "
        "target frame's state with the velocities reversed to the input positions: the simulations are "
        f"reversible ({tasks_with(lambda task: task.has_time_reversal())})",
    )
    train.add_argument("--max-batches", type=int, help="training batches per epoch (default all)")
    train.add_argument("--grad-clip", type=float, help="clip the gradient norm to this (default 1; 0: no clipping)")
    train.add_argument("--on-nan", choices=["skip", "stop"], help="a non-finite loss: skip the batch (default) or stop")
    train.add_argument("--out", default="runs/default", help="output folder")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --out/last.pt with its options: one left out is the checkpoint's, one that differs is "
        "refused; only --epochs, --on-nan, --eval-batch-size, --device, --amp, --root, --no-progress and "
        "--deterministic may change",
    )
    train.add_argument(
        "--deterministic",
        action="store_true",
        help="only deterministic PyTorch kernels (torch.use_deterministic_algorithms): bit-reproducible runs, "
        "e.g. a killed run resumed with --resume ends with the weights of an uninterrupted one (slower on CUDA)",
    )
    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on every split")
    _add_data_arguments(
        evaluate,
        "samples per evaluation batch, per process under torchrun (default: nbody 256; energy 128; else 16)",
    )
    evaluate.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by train")
    return parser


def _model_options(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(**{f.name: getattr(args, f.name) for f in fields(ModelOptions)})


#: The command-line names of the options whose attribute has another name.
_FLAGS = {option.name: option.metadata["flag"] for option in fields(ModelOptions) if option.metadata["flag"]}
#: Options that must be integers >= 1 (when given; ``None`` means "all" for the last two).
_POSITIVE_INTEGERS = (
    "num_iterations",
    "layers_per_iteration",
    "num_degrees",
    "channels",
    "num_heads",
    "channels_div",
    "k",
    "epochs",
    "batch_size",
    "train_samples",
    "max_batches",
    "eval_every",
    "eval_batch_size",
)
#: Options that must be finite numbers, and their bound.
_FINITE_NUMBERS = {
    "lr": "> 0",
    "radius": "> 0",
    "min_lr": ">= 0",
    "weight_decay": ">= 0",
    "grad_clip": ">= 0 (0: off)",
    "warmup_epochs": ">= 0",
}


def _flag(name: str) -> str:
    """``--option`` as typed on the command line for the attribute ``name``."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, naming the option, a value that would fail after the data is loaded or would train wrongly."""
    for name in _POSITIVE_INTEGERS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"{_flag(name)}: expected a positive integer, got {value}")
    for name, bound in _FINITE_NUMBERS.items():
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and (value >= 0 if bound.startswith(">=") else value > 0)):
            raise ValueError(f"{_flag(name)}: expected a finite number {bound}, got {value}")
    if getattr(args, "warmup_epochs", None) is not None and args.warmup_epochs > args.epochs:
        raise ValueError(f"--warmup-epochs: expected a number in [0, --epochs={args.epochs}], got {args.warmup_epochs}")
    if getattr(args, "ema_decay", None) is not None and not 0 <= args.ema_decay < 1:
        raise ValueError(f"--ema-decay: expected a number in [0, 1) (0: no average), got {args.ema_decay}")
    if getattr(args, "min_lr", None) is not None and args.min_lr > args.lr:
        raise ValueError(f"--min-lr: expected a number in [0, --lr={args.lr}], got {args.min_lr}")
    out = getattr(args, "out", None)
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out: expected a folder, but {out} is a file")
    _check_device(args.device)


def _check_device(name: str) -> None:
    """Refuse a device that PyTorch cannot parse or that this machine does not have."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: expected cpu, cuda, cuda:N, mps, ..., got {name!r}") from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)  # torch.cuda, torch.mps, torch.xpu, ...
    if not hasattr(backend, "is_available"):
        raise ValueError(f"--device: expected cpu, cuda, cuda:N, mps, ..., got {name!r}")
    if not backend.is_available():
        raise ValueError(f"--device: {name!r} is not available on this machine (PyTorch sees no {device.type} device)")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise ValueError(f"--device: {name!r} is not available on this machine ({count} {device.type} devices)")


def _read_cli_checkpoint(path: str | Path, option: str) -> dict[str, Any]:
    """A checkpoint written by ``pyg-se3 train``, on the CPU; a ``ValueError`` naming ``option`` otherwise."""
    try:
        state = read_checkpoint(path, map_location="cpu")
    except ValueError as error:
        raise ValueError(f"{option}: {error}") from None
    extra = state["config"].get("extra", {}) if isinstance(state["config"], dict) else {}
    if not {"task", "model"} <= extra.keys():
        raise ValueError(f"{option}: {path} was not written by pyg-se3 train (it records no task and model options)")
    return state


#: The trainer's options that a resumed run takes from its checkpoint; see the module docstring.
_RECORDED_TRAIN_OPTIONS = (
    "epochs",
    "batch_size",
    "lr",
    "min_lr",
    "schedule",
    "warmup_epochs",
    "weight_decay",
    "weight_decay_on",
    "ema_decay",
    "eval_every",
    "seed",
    "max_batches",
)
#: Recorded options that ``--resume`` may change.
_MAY_CHANGE_ON_RESUME = ("epochs", "on_nan")


def _recorded_options(state: dict[str, Any]) -> dict[str, Any]:
    """The options of the run that wrote ``state``, by attribute name, as the command line gives them."""
    config, extra = state["config"], state["config"]["extra"]
    # a model option added after the checkpoint was written: its default, which is what the run used
    recorded = {"task": extra["task"], **asdict(ModelOptions()), **extra["model"]}
    recorded |= {name: config[name] for name in (*_RECORDED_TRAIN_OPTIONS, "on_nan") if name in config}
    if "grad_clip" in config:
        recorded["grad_clip"] = config["grad_clip"] or 0.0  # no clipping: None in the checkpoint, 0 on the CLI
    if "train_samples" in extra:  # recorded since the checkpoints of this version
        recorded["train_samples"] = extra["train_samples"]
    recorded["reflect"] = extra.get("reflect", False)  # not recorded before the option existed: off
    recorded["time_reversal"] = extra.get("time_reversal", False)
    return recorded


def _resume_options(args: argparse.Namespace, explicit: set[str]) -> None:
    """With ``--resume`` and an ``--out/last.pt``: take every recorded option not in ``explicit`` (given on the
    command line) from the checkpoint, and refuse one given with another value."""
    path = Path(args.out) / "last.pt"
    if not path.exists():
        return  # nothing to resume: a new run
    for name, value in _recorded_options(_read_cli_checkpoint(path, "--resume")).items():
        if name not in explicit:
            setattr(args, name, value)
        elif name not in _MAY_CHANGE_ON_RESUME and getattr(args, name) != value:
            recorded = f"no {_flag(name)}" if value is None else value
            raise ValueError(
                f"{_flag(name)}: the checkpoint in {args.out} was trained with {recorded}; resume with the same "
                "value or start a new --out"
            )


@contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    """With ``enabled``: deterministic kernels only (an error for an operation that has none; cuBLAS needs a
    fixed workspace) inside the block; the previous setting is restored after it."""
    previous = torch.are_deterministic_algorithms_enabled()
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train(args: argparse.Namespace) -> dict:
    with _deterministic(args.deterministic):
        return _train(args)


def _train(args: argparse.Namespace) -> dict:
    device = distributed.setup(args.device)
    options = _model_options(args)
    task = get_task(args.task, options)
    reflection = task.reflection() if args.reflect else None  # before loading data: a task without it fails at once
    if args.time_reversal:
        task.check_time_reversal()
    with distributed.main_first():  # the first process prepares the dataset files, the others then load them
        sets = task.datasets(args.root, train_samples=args.train_samples)
    augmentations = [task.time_reversal(sets["train"])] if args.time_reversal else []
    augmentations += [reflection] if reflection is not None else []
    augment = Compose(augmentations) if augmentations else None
    scale = task.displacement_scale(sets["train"])
    seed_everything(args.seed)
    model = task.build_model(scale)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        min_lr=args.min_lr,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        weight_decay=args.weight_decay,
        weight_decay_on=args.weight_decay_on,
        ema_decay=args.ema_decay,
        eval_every=args.eval_every,
        eval_batch_size=args.eval_batch_size,
        loader=args.loader,
        amp=args.amp,
        seed=args.seed,
        device=device,
        out=args.out,
        resume=args.resume,
        on_nan=args.on_nan,
        grad_clip=args.grad_clip or None,
        max_batches=args.max_batches,
        progress=not args.no_progress,
        extra={
            "task": args.task,
            "model": asdict(options),
            "displacement_scale": scale,
            "train_samples": args.train_samples,
            "reflect": args.reflect,
            "time_reversal": args.time_reversal,
        },
    )
    trainer = Trainer(
        model,
        task,
        sets["train"],
        sets["val"],
        config,
        eval_sets={"test": sets["test"]},
        train_transform=augment,
    )
    if distributed.is_main():
        processes = f" in {distributed.world_size()} processes" if distributed.is_distributed() else ""
        print(
            f"{args.task}: {sum(p.numel() for p in model.parameters()):,} parameters; "
            f"{len(trainer.train_set)} train samples{processes}; writing to {config.out}",
            file=sys.stderr,
        )

    def report(row: dict[str, float]) -> None:
        if distributed.is_main():
            print(json.dumps(json_safe(row), allow_nan=False), flush=True)  # one JSON line: NaN as null

    history = trainer.fit(on_epoch_end=report)
    return history[-1] if history else {}


def evaluate(args: argparse.Namespace) -> dict:
    state = _read_cli_checkpoint(args.checkpoint, "--checkpoint")
    device = distributed.setup(args.device)
    extra = state["config"]["extra"]
    if extra.get("task") != args.task:
        raise ValueError(f"--task: the checkpoint was trained on {extra.get('task')!r}, not {args.task!r}")
    task, model = from_checkpoint(state)
    with distributed.main_first():
        sets = task.datasets(args.root)
    config = TrainConfig(
        batch_size=args.batch_size,
        device=device,
        out=str(Path(args.checkpoint).parent),
        progress=not args.no_progress,
    )
    trainer = Trainer(model, task, sets["train"], None, config)
    results = {split: trainer.evaluate(dataset) for split, dataset in sets.items()}
    if distributed.is_main():
        report = {"checkpoint": args.checkpoint, "epoch": state["epoch"] - 1, **results}
        print(json.dumps(json_safe(report), indent=1, allow_nan=False))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    explicit = {name for name, value in vars(args).items() if value is not None}  # the rest default to None
    try:
        _apply_defaults(args)
        if args.command == "train" and args.resume:
            _resume_options(args, explicit)
        _check_options(args)
        (train if args.command == "train" else evaluate)(args)
    except NonFiniteLossError as error:
        print(f"pyg-se3: error: --on-nan stop: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"pyg-se3: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
