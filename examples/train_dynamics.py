"""Particle dynamics with the Iterative SE(3)-Transformer: predict where every particle is 10 steps later.

Reproduces the experiment of the Iterative SE(3)-Transformer blog post (Dauparas & Fuchs, 2021) on the packaged
``ParticleDynamics`` data (softened gravity, 5-20 particles, velocity Verlet, blocks of 10 steps): an iterative
model that moves the particles in 4 updates on the complete graph, trained on the mean squared error of the
final positions, reported every epoch next to two baselines: constant positions and linear extrapolation
``pos + vel * horizon`` (where the iterations start).

The defaults are a quick look (800 training blocks, 8 channels: a few minutes on 2 CPU cores). Full size:

    python examples/train_dynamics.py --epochs 100 --train-samples 3200 --channels 16 --out runs/dynamics_full

Writes ``--out/metrics.csv`` (one row per epoch) and ``--out/last.pt`` (every epoch); ``--resume`` continues
from ``last.pt`` with the same weights, optimizer state and batch order as an uninterrupted run.

Data parallel on several processes (CPU cores or GPUs; ``--batch-size`` is per process, so a step sees
``batch-size x processes`` blocks; only rank 0 prints and writes files; see ``pyg_se3.runtime.distributed``):

    torchrun --nproc_per_node=2 examples/train_dynamics.py --batch-size 8 --out runs/dynamics_ddp
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from pyg_se3 import Fiber
from pyg_se3.datasets import ParticleDynamics
from pyg_se3.graph import Complete
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.runtime import distributed
from pyg_se3.runtime.tasks import DynamicsTask, ModelOptions, mse_per_graph
from pyg_se3.runtime.training import atomic_save, write_csv  # atomic: a killed run never leaves a broken file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16, help="per process under torchrun")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--channels", type=int, default=8, help="hidden channels per degree")
    parser.add_argument("--degrees", type=int, default=2, help="hidden fiber degrees 0 .. degrees-1")
    parser.add_argument("--iterations", type=int, default=4, help="position updates")
    parser.add_argument("--layers", type=int, default=2, help="equivariant layers per iteration")
    parser.add_argument("--heads", type=int, default=4, help="attention heads")
    parser.add_argument("--train-samples", type=int, default=800, help="first N training blocks (3200: all)")
    parser.add_argument("--eval-samples", type=int, default=None, help="first N val/test blocks (default: all 400)")
    parser.add_argument("--root", default="data", help="datasets folder (shared with the pyg-se3 CLI)")
    parser.add_argument("--out", default="runs/example_dynamics", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = distributed.setup(args.device)  # under torchrun: join the process group (cuda -> cuda:LOCAL_RANK)
    out = Path(args.out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    root = Path(args.root) / "particle_dynamics"
    with distributed.main_first():  # one process prepares the dataset files, the others then load them
        train = ParticleDynamics(root, split="train")
        val = ParticleDynamics(root, split="val")[: args.eval_samples]
        test = ParticleDynamics(root, split="test")[: args.eval_samples]
    train = train[: args.train_samples]
    # The task's inputs: mass (type 0, divided by the mean of the mass range) and velocity (type 1), and the start
    # pos + vel * horizon (linear extrapolation over one block), which the iterations refine.
    task = DynamicsTask(ModelOptions(num_iterations=args.iterations))
    # One update's typical size: the model's displacement heads then work at unit scale.
    displacement_scale = task.displacement_scale(train)

    model = IterativeSE3Transformer(
        Fiber({0: 1, 1: 1}),
        Fiber.create(args.degrees, args.channels),
        num_iterations=args.iterations,
        layers_per_iteration=args.layers,
        num_heads=args.heads,
        graph=Complete(),
        displacement_scale=displacement_scale,
    ).to(device)
    net = distributed.wrap(model, device)  # under torchrun: DDP, whose forward sets up the gradient all-reduce
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    distributed.print_main(f"{sum(p.numel() for p in model.parameters()):,} parameters; {len(train)} training blocks")

    @torch.no_grad()
    def evaluate(dataset) -> dict[str, float]:
        model.eval()
        sums = {"mse": 0.0, "constant_mse": 0.0, "linear_mse": 0.0}
        shard = distributed.eval_sampler(dataset)  # under torchrun: this process's shard (None: everything)
        for batch in DataLoader(dataset, batch_size=128, sampler=shard):
            batch = batch.to(device)
            pred = task.predict(model, batch)
            for name, guess in (
                ("mse", pred),
                ("constant_mse", batch.pos),
                ("linear_mse", task.initial_positions(batch)),
            ):
                sums[name] += float(mse_per_graph(guess, batch.y, batch.batch).sum())
        totals = distributed.sum_floats(*sums.values())  # over the processes
        return {name: value / len(dataset) for name, value in zip(sums, totals, strict=True)}

    history, first_epoch = [], 0
    checkpoint = out / "last.pt"
    if args.resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device)  # every process loads it (a shared folder)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"].cpu())
        history, first_epoch = state["history"], state["epoch"] + 1
        distributed.print_main(f"resuming from {checkpoint} at epoch {first_epoch}")

    for epoch in range(first_epoch, args.epochs):
        model.train()
        # The batch order depends only on (seed, epoch): a resumed run sees the batches an uninterrupted one sees.
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        sampler = distributed.train_sampler(train, args.seed * 1_000_003, epoch)  # torchrun: this process's share
        loader = DataLoader(train, args.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator)
        losses = []
        bar = distributed.progress(loader, desc=f"epoch {epoch}", leave=False)  # torchrun: on rank 0 only
        for batch in bar:
            batch = batch.to(device)
            loss = mse_per_graph(task.predict(net, batch), batch.y, batch.batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(mse=f"{losses[-1]:.3g}")

        val_metrics, test_metrics = evaluate(val), evaluate(test)
        loss_sum, steps = distributed.sum_floats(sum(losses), len(losses))  # the mean over every process's steps
        row = {
            "epoch": epoch,
            "train_mse": loss_sum / steps,
            "val_mse": val_metrics["mse"],
            "test_mse": test_metrics["mse"],
            "test_constant_mse": test_metrics["constant_mse"],
            "test_linear_mse": test_metrics["linear_mse"],
        }
        history.append(row)
        if not distributed.is_main():
            continue
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        write_csv(history, out / "metrics.csv")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        atomic_save({**state, "history": history, "rng": torch.get_rng_state(), "args": vars(args)}, checkpoint)

    if history and distributed.is_main():
        last = history[-1]
        print(f"\ntest MSE after {last['epoch'] + 1} epochs: {last['test_mse']:.4g}")
        print(f"  constant position:    {last['test_constant_mse']:.4g}")
        print(f"  linear extrapolation: {last['test_linear_mse']:.4g}")
    return history


if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.cleanup()  # leave the torchrun process group, if any
