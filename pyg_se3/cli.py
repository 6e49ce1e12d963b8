"""``pyg-se3`` (also ``python -m pyg_se3``): train and evaluate the Iterative SE(3)-Transformer on the three tasks.

Examples
--------
    pyg-se3 train --task dynamics --epochs 20 --out runs/dynamics
    pyg-se3 train --task dynamics --epochs 40 --out runs/dynamics --resume     # continue to epoch 40
    pyg-se3 evaluate --task dynamics --checkpoint runs/dynamics/best.pt
    torchrun --nproc_per_node=2 -m pyg_se3 train --task dynamics --out runs/ddp  # data parallel, 2 processes

Under ``torchrun`` (several processes: CPU cores, GPUs or nodes), ``--batch-size`` is per process, so one step
sees ``batch-size x processes`` samples; see :mod:`pyg_se3.distributed`. Only rank 0 prints and writes files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import torch

from pyg_se3 import distributed
from pyg_se3.tasks import TASKS, ModelOptions, build_model, get_task
from pyg_se3.training import TrainConfig, Trainer, seed_everything

__all__ = ["main"]


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    defaults = ModelOptions()
    group.add_argument(
        "--iterations",
        dest="num_iterations",
        type=int,
        default=defaults.num_iterations,
        help="position updates (1 = single-pass SE(3)-Transformer)",
    )
    group.add_argument(
        "--layers",
        dest="layers_per_iteration",
        type=int,
        default=defaults.layers_per_iteration,
        help="equivariant layers per iteration",
    )
    group.add_argument(
        "--degrees",
        dest="num_degrees",
        type=int,
        default=defaults.num_degrees,
        help="hidden fiber degrees 0 .. degrees-1",
    )
    group.add_argument("--channels", type=int, default=defaults.channels, help="hidden channels per degree")
    group.add_argument("--heads", dest="num_heads", type=int, default=defaults.num_heads, help="attention heads")
    group.add_argument("--graph", choices=["complete", "knn", "radius"], default=defaults.graph)
    group.add_argument("--radius", type=float, default=defaults.radius, help="cutoff of --graph radius")
    group.add_argument("--k", type=int, default=defaults.k, help="neighbours of --graph knn")
    group.add_argument("--share-weights", action="store_true", help="one block for all iterations")
    group.add_argument(
        "--kernel",
        choices=["full", "depthwise"],
        default=defaults.kernel,
        help="edge kernel: full (SE(3)-Transformer) or depthwise (weights per path and channel; faster)",
    )
    group.add_argument(
        "--norm",
        choices=["layer", "rms"],
        default=defaults.norm,
        help="norm non-linearity: layer norm of channel norms (SE(3)-Transformer) or rms (not centred; more robust "
        "to rounding in deep float32 models)",
    )
    group.add_argument("--detach-basis", action="store_true", help="no gradient through the basis")
    group.add_argument(
        "--start",
        choices=["linear", "constant"],
        default=defaults.start,
        help="regression tasks: iterate from pos + vel * horizon (linear) or from pos (constant)",
    )
    group.add_argument(
        "--inputs",
        choices=["raw", "invariant"],
        default=defaults.inputs,
        help="regression tasks: the dataset's node inputs (raw), or only what the physics depends on (invariant): "
        "velocities relative to the centre of mass and, for nbody, |q| for the node charge (q_i q_j stays on edges)",
    )
    group.add_argument(
        "--motion-edges",
        action="store_true",
        help="regression tasks: every edge also carries the pair's distance, radial speed and relative speed at the "
        "input frame",
    )


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=sorted(TASKS), required=True)
    parser.add_argument("--root", default="data", help="dataset folder (raw/processed files)")
    parser.add_argument(
        "--train-samples", type=int, default=None, help="use only the first N training samples (default: all)"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="per process under torchrun")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (torchrun: cuda means cuda:LOCAL_RANK)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyg-se3", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a model; writes metrics, checkpoints and plots to --out")
    _add_data_arguments(train)
    _add_model_arguments(train)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--weight-decay", type=float, default=0.0)
    train.add_argument("--max-batches", type=int, default=None, help="training batches per epoch (default all)")
    train.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0: no clipping)")
    train.add_argument("--on-nan", choices=["skip", "stop"], default="skip")
    train.add_argument("--out", default="runs/default", help="output folder")
    train.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    train.add_argument(
        "--deterministic",
        action="store_true",
        help="only deterministic PyTorch kernels (torch.use_deterministic_algorithms): bit-reproducible runs, "
        "e.g. a killed run resumed with --resume ends with the weights of an uninterrupted one (slower on CUDA)",
    )
    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on every split")
    _add_data_arguments(evaluate)
    evaluate.add_argument("--checkpoint", required=True, help="a best.pt / last.pt written by train")
    return parser


def _model_options(args: argparse.Namespace) -> ModelOptions:
    return ModelOptions(**{f.name: getattr(args, f.name) for f in fields(ModelOptions)})


def _subset(dataset, n: int | None):
    if n is None:
        return dataset
    if n < 1:
        raise ValueError(f"--train-samples: expected >= 1, got {n}")
    return dataset[:n]


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
    with distributed.main_first():  # the first process prepares the dataset files, the others then load them
        sets = task.datasets(args.root)
    scale = task.displacement_scale(sets["train"])
    seed_everything(args.seed)
    model = build_model(task.dataset_cls.fiber, options, task.edge_dim, scale)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        device=device,
        out=args.out,
        resume=args.resume,
        on_nan=args.on_nan,
        grad_clip=args.grad_clip or None,
        max_batches=args.max_batches,
        progress=not args.no_progress,
        extra={"task": args.task, "model": asdict(options), "displacement_scale": scale},
    )
    trainer = Trainer(
        model, task, _subset(sets["train"], args.train_samples), sets["val"], config, eval_sets={"test": sets["test"]}
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
            print(json.dumps(row), flush=True)

    history = trainer.fit(on_epoch_end=report)
    return history[-1] if history else {}


def evaluate(args: argparse.Namespace) -> dict:
    device = distributed.setup(args.device)
    state = torch.load(args.checkpoint, map_location=device, weights_only=False)
    extra = state["config"]["extra"]
    if extra.get("task") != args.task:
        raise ValueError(f"--task: the checkpoint was trained on {extra.get('task')!r}, not {args.task!r}")
    options = ModelOptions(**extra["model"])
    task = get_task(args.task, options)
    with distributed.main_first():
        sets = task.datasets(args.root)
    model = build_model(task.dataset_cls.fiber, options, task.edge_dim, extra["displacement_scale"])
    model.load_state_dict(state["model"])
    config = TrainConfig(
        batch_size=args.batch_size,
        device=device,
        out=str(Path(args.checkpoint).parent),
        progress=not args.no_progress,
    )
    trainer = Trainer(model, task, sets["train"], None, config)
    results = {split: trainer.evaluate(dataset) for split, dataset in sets.items()}
    if distributed.is_main():
        print(json.dumps({"checkpoint": args.checkpoint, "epoch": state["epoch"] - 1, **results}, indent=1))
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        (train if args.command == "train" else evaluate)(args)
    except ValueError as error:
        print(f"pyg-se3: error: {error}", file=sys.stderr)
        return 2
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
