"""Energy minimisation with the Iterative SE(3)-Transformer: move 10 points to a low-energy configuration.

The toy experiment of *Iterative SE(3)-Transformers* (Fuchs, Wagstaff, Dauparas & Posner, GSI 2021), as its
authors ran it: every pair of points has its own double-well potential ``V(r; p_ij)``; the model never sees
``p_ij``: every edge of every rebuilt graph carries only the current pair energy ``V`` (and its length ``r``, which
every radial network sees), so the model must move the points to find out what each pair prefers. It is trained
without labels on the mean pair energy of its output positions, on configurations drawn afresh every epoch
(:class:`~pyg_se3.datasets.EnergyConfigurations`), and evaluated on the packaged validation and test splits. The
script prints the mean final test energy next to the initial energy and to gradient descent on the energy.

Iterative versus single-pass with the same total number of layers: run once as is and once with
``--single-pass`` (one iteration of ``iterations * layers`` layers); both parameter counts are printed.
``--detach-basis geometry`` cuts the gradient through all geometry, ``--detach-basis harmonics`` only through
the spherical harmonics (the original code's ablation); ``--edge-inputs parameters`` also feeds ``p_ij``.

The defaults are a quick look (a few minutes on 2 CPU cores). The original protocol (3 x 4 layers, degrees
0..2 x 4 channels, 1 head, batch 128, 100 epochs of 5,000 fresh configurations, per-step cosine from 1e-3 to
1e-4) is the CLI's default for ``pyg-se3 train --task energy``.

Writes ``--out/metrics.csv`` (one row per epoch) and ``--out/last.pt`` (every epoch); ``--resume`` continues
from ``last.pt`` with the same weights, optimizer state, batch order and training samples as an uninterrupted run.

Data parallel on several processes (CPU cores or GPUs; ``--batch-size`` is per process, so a step sees
``batch-size x processes`` samples; only rank 0 prints and writes files; see ``pyg_se3.runtime.distributed``):

    torchrun --nproc_per_node=2 examples/train_energy_minimisation.py --batch-size 8 --out runs/energy_ddp
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from pyg_se3.datasets import EnergyConfigurations, EnergyMinimisation
from pyg_se3.runtime import distributed
from pyg_se3.runtime.tasks import EnergyTask, ModelOptions
from pyg_se3.runtime.training import atomic_save, write_csv  # atomic: a killed run never leaves a broken file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32, help="per process under torchrun")
    parser.add_argument("--lr", type=float, default=1e-3, help="initial learning rate")
    parser.add_argument("--min-lr", type=float, default=1e-4, help="where the per-step cosine schedule ends")
    parser.add_argument("--channels", type=int, default=4, help="hidden channels per degree")
    parser.add_argument("--degrees", type=int, default=3, help="hidden fiber degrees 0 .. degrees-1")
    parser.add_argument("--iterations", type=int, default=3, help="position updates")
    parser.add_argument("--layers", type=int, default=4, help="equivariant layers per iteration")
    parser.add_argument("--heads", type=int, default=1, help="attention heads")
    parser.add_argument("--grad-clip", type=float, default=1.0, help="clip the gradient norm (0: off)")
    parser.add_argument("--single-pass", action="store_true", help="1 iteration of iterations * layers layers")
    parser.add_argument("--detach-basis", choices=["geometry", "harmonics"], default=None, help="ablation")
    parser.add_argument("--edge-inputs", choices=["energy", "parameters"], default="energy")
    parser.add_argument("--train-samples", type=int, default=2000, help="fresh training samples per epoch")
    parser.add_argument("--eval-samples", type=int, default=None, help="first N val/test samples (default: all 500)")
    parser.add_argument("--root", default="data", help="datasets folder (shared with the pyg-se3 CLI)")
    parser.add_argument("--out", default="runs/example_energy", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    return parser.parse_args(argv)


def energy(pos: torch.Tensor, batch) -> torch.Tensor:
    """Mean pair energy of each graph of ``batch`` at positions ``pos``: the unsupervised loss."""
    return EnergyMinimisation.energy(pos, batch.edge_index, batch.p, batch.batch, batch.num_graphs)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = distributed.setup(args.device)  # under torchrun: join the process group (cuda -> cuda:LOCAL_RANK)
    out = Path(args.out)
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)

    root = Path(args.root) / "energy_minimisation"
    with distributed.main_first():  # one process prepares the dataset files, the others then load them
        val = EnergyMinimisation(root, split="val")[: args.eval_samples]
        test = EnergyMinimisation(root, split="test")[: args.eval_samples]
    train = EnergyConfigurations(args.train_samples, seed=args.seed)  # fresh samples every epoch

    def options(num_iterations: int, layers_per_iteration: int) -> ModelOptions:
        return ModelOptions(
            num_iterations=num_iterations,
            layers_per_iteration=layers_per_iteration,
            num_degrees=args.degrees,
            channels=args.channels,
            num_heads=args.heads,
            channels_div=1,
            detach_basis=args.detach_basis or False,
            edge_inputs=args.edge_inputs,
        )

    def build(task: EnergyTask) -> torch.nn.Module:
        return task.build_model(task.displacement_scale(train))

    torch.manual_seed(args.seed)
    tasks = {"iterative": EnergyTask(options(args.iterations, args.layers))}
    tasks["single-pass"] = EnergyTask(options(1, args.iterations * args.layers))
    iterative, single_pass = build(tasks["iterative"]), build(tasks["single-pass"])
    for name, candidate in (("iterative", iterative), ("single-pass", single_pass)):
        layout = f"{candidate.num_iterations} x {candidate.layers_per_iteration} layers"
        parameters = sum(p.numel() for p in candidate.parameters())
        distributed.print_main(f"{name:>11}: {layout}, {parameters:,} parameters")
    model = (single_pass if args.single_pass else iterative).to(device)
    net = distributed.wrap(model, device)  # under torchrun: DDP, whose forward sets up the gradient all-reduce
    which = "single-pass" if args.single_pass else "iterative"
    task = tasks[which]
    distributed.print_main(f"training the {which} model on {len(train)} fresh samples per epoch")
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)

    def predict(batch, module: torch.nn.Module = model) -> torch.Tensor:
        return task.predict(module, batch)

    @torch.no_grad()
    def evaluate(dataset) -> float:
        model.eval()
        total = 0.0
        shard = distributed.eval_sampler(dataset)  # under torchrun: this process's shard (None: everything)
        for batch in DataLoader(dataset, batch_size=128, sampler=shard):
            batch = batch.to(device)
            total += float(energy(predict(batch), batch).sum())
        (total,) = distributed.sum_floats(total)  # over the processes
        return total / len(dataset)

    # Baselines on the test set: the initial positions, and 1000 steps of gradient descent on the energy.
    whole = next(iter(DataLoader(test, batch_size=len(test))))
    initial_energy = float(energy(whole.pos, whole).mean())
    _, descended = EnergyMinimisation.gradient_descent(whole.pos, whole.edge_index, whole.p, whole.batch, 1000)
    gd_energy = float(descended.mean())
    distributed.print_main(f"test energy: initial {initial_energy:.4f}, gradient descent (1000 steps) {gd_energy:.4f}")

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
        # Samples and batch order depend only on (seed, epoch): a resumed run sees what an uninterrupted one sees.
        train.set_epoch(epoch)
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        sampler = distributed.train_sampler(train, args.seed * 1_000_003, epoch)  # torchrun: this process's share
        loader = DataLoader(train, args.batch_size, shuffle=sampler is None, sampler=sampler, generator=generator)
        losses = []
        bar = distributed.progress(loader, desc=f"epoch {epoch}", leave=False)  # torchrun: on rank 0 only
        for index, batch in enumerate(bar):
            for group in optimizer.param_groups:  # cosine from lr to min_lr, a new rate every step
                t = (epoch + index / len(loader)) / args.epochs
                group["lr"] = args.min_lr + (args.lr - args.min_lr) * 0.5 * (1 + math.cos(math.pi * t))
            batch = batch.to(device)
            loss = energy(predict(batch, net), batch).mean()
            optimizer.zero_grad()
            loss.backward()
            if args.grad_clip > 0:  # measured: without it, the energy jumps back up now and then during training
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(energy=f"{losses[-1]:.4f}")

        loss_sum, steps = distributed.sum_floats(sum(losses), len(losses))  # the mean over every process's steps
        row = {
            "epoch": epoch,
            "train_energy": loss_sum / steps,
            "val_energy": evaluate(val),
            "test_energy": evaluate(test),
            "test_initial_energy": initial_energy,
            "test_gd_energy": gd_energy,
        }
        history.append(row)
        if not distributed.is_main():
            continue
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        write_csv(history, out / "metrics.csv")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        atomic_save({**state, "history": history, "rng": torch.get_rng_state(), "args": vars(args)}, checkpoint)

    if history and distributed.is_main():
        final = history[-1]["test_energy"]
        print(f"\nmean test energy after {history[-1]['epoch'] + 1} epochs: {final:.4f}")
        print(f"  initial positions:       {initial_energy:.4f}  (model / initial = {final / initial_energy:.3f})")
        print(f"  gradient descent (1000): {gd_energy:.4f}  (model / descent = {final / gd_energy:.3f})")
    return history


if __name__ == "__main__":
    try:
        main()
    finally:
        distributed.cleanup()  # leave the torchrun process group, if any
