"""``make demo``: the iterative thesis on the energy-minimisation experiment, iterative against single-pass at
equal layers and parameters (under 10 minutes on 2 CPU cores).

What it does:

1. trains the Iterative SE(3)-Transformer (3 iterations x 4 layers) and the single-pass SE(3)-Transformer with
   the same 12 layers (1 iteration x 12 layers) on the same fresh configurations of the energy-minimisation toy
   problem (:class:`~pyg_se3.runtime.tasks.EnergyTask`: ten points, a different double-well pair potential for every
   pair; the model sees only the current pair energies and distances and must move the points to lower the mean
   pair energy), with :class:`~pyg_se3.runtime.training.Trainer`, on a short schedule;
2. prints the test energies of both models next to the initial positions and to gradient descent, their ratio,
   the iterative model's energy after each iteration, and its equivariance error;
3. writes ``runs/demo/``: each model's metrics, checkpoints and loss curve, ``comparison.png`` (validation
   energy per epoch of both models) and ``iterations.png`` (a test configuration's points moving through the
   iterations, and the mean test energy after each iteration).

The short schedule is a demonstration; the results (docs/results.md) use the full runs.
``python -m pyg_se3.runtime.demo --help`` lists the options.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from e3nn import o3
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from pyg_se3.datasets import EnergyMinimisation
from pyg_se3.runtime.tasks import EnergyTask, ModelOptions
from pyg_se3.runtime.training import TrainConfig, Trainer, seed_everything

MODELS = {"iterative": (3, 4), "single-pass": (1, 12)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pyg_se3.runtime.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples-per-epoch", type=int, default=1600, help="fresh training configurations")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-samples", type=int, default=250, help="first N validation/test configurations")
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def options(num_iterations: int, layers_per_iteration: int) -> ModelOptions:
    """The energy task's default model (see :class:`~pyg_se3.runtime.tasks.EnergyTask`) with this layout."""
    defaults = {**EnergyTask.model_defaults, "num_iterations": num_iterations}
    return ModelOptions(**{**defaults, "layers_per_iteration": layers_per_iteration})


def train_model(name: str, task: EnergyTask, sets: dict, args: argparse.Namespace) -> Trainer:
    seed_everything(args.seed)
    model = task.build_model(task.displacement_scale(sets["train"]))
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        min_lr=1e-4,
        schedule="step",
        seed=args.seed,
        out=str(Path(args.out) / name),
    )
    trainer = Trainer(model, task, sets["train"], sets["val"], config)
    params = sum(p.numel() for p in model.parameters())
    layout = f"{task.options.num_iterations} x {task.options.layers_per_iteration} layers"
    print(f"\n[{name}] {layout}, {params:,} parameters, {len(sets['train'])} fresh configurations per epoch")
    start = time.perf_counter()
    trainer.fit(
        on_epoch_end=lambda row: tqdm.write(
            f"  epoch {row['epoch']:2d}  train {row['train_loss']:.4f}  val {row['val_energy']:.4f}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )
    )
    history = trainer.history
    trainer.load(Path(config.out) / "best.pt")  # evaluate the best-validation weights...
    trainer.history = history  # ...but keep the whole curve for the plot
    return trainer


@torch.no_grad()
def energy_per_iteration(trainer: Trainer, batch) -> list[float]:
    """Mean energy of ``batch`` before the first and after every iteration."""
    out = trainer.task.predict_output(trainer.evaluated_model.eval(), batch)
    return [float(trainer.task.energies(pos, batch).mean()) for pos in out.trajectory]


def equivariance_error(trainer: Trainer, batch) -> float:
    """Relative error of the trained model's output positions under a random rotation and translation, float64."""
    model, task = trainer.evaluated_model.double().eval(), trainer.task
    batch = batch.clone().apply(lambda t: t.double() if t.is_floating_point() else t)  # apply works in place
    R, shift = o3.rand_matrix(dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        out = task.predict(model, batch)
        moved = batch.clone()
        moved.pos = batch.pos @ R.T + shift
        rotated = task.predict(model, moved)
    model.float()
    expected = out @ R.T + shift
    return float((rotated - expected).norm() / expected.norm())


def results(trainers: dict[str, Trainer], curves: dict[str, list[float]], batch) -> dict[str, float]:
    """Mean test energies: the initial positions, gradient descent, and each model's (the last of its curve)."""
    rows = {"initial positions": curves["iterative"][0]}
    _, descended = EnergyMinimisation.gradient_descent(batch.pos, batch.edge_index, batch.p, batch.batch, 1000)
    rows["gradient descent (1000 steps)"] = float(descended.mean())
    for name in trainers:
        rows[f"{name} SE(3)-Transformer"] = curves[name][-1]
    return rows


def plot_comparison(trainers: dict[str, Trainer], rows: dict[str, float], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, trainer in trainers.items():
        history = trainer.history
        ax.plot([r["epoch"] for r in history], [r["val_energy"] for r in history], marker="o", label=name)
    ax.axhline(rows["gradient descent (1000 steps)"], color="gray", linestyle="--", label="gradient descent (test)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation energy")
    ax.set_title("Energy minimisation: iterative 3 x 4 vs single-pass 1 x 12")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)


def plot_iterations(trainer: Trainer, batch, energies: list[float], out: Path) -> None:
    """One test configuration's points through the iterations (x-y projection), and the energy per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = batch.batch == 0
    with torch.no_grad():
        result = trainer.task.predict_output(trainer.evaluated_model.eval(), batch)
    path = torch.stack([pos[first] for pos in result.trajectory])  # [T+1, 10, 3]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    ax = axes[0]
    for i in range(path.shape[1]):
        ax.plot(path[:, i, 0], path[:, i, 1], "-", color="tab:gray", lw=0.8)
    colours = plt.cm.viridis(torch.linspace(0, 1, path.shape[0]).numpy())
    for t, (points, colour) in enumerate(zip(path, colours, strict=True)):
        label = "input" if t == 0 else f"after iteration {t}"
        ax.scatter(points[:, 0], points[:, 1], color=colour, s=30, label=label, zorder=3)
    ax.set_title("a test configuration: the points through the iterations (x-y)")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(range(len(energies)), energies, "-o", color="tab:red")
    ax.set_xticks(range(len(energies)))
    ax.set_xlabel("iteration (0: input positions)")
    ax.set_ylabel("mean test energy")
    ax.set_title("energy after each iteration")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "iterations.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    tasks = {name: EnergyTask(options(*layout)) for name, layout in MODELS.items()}
    sets = tasks["iterative"].datasets(args.root, train_samples=args.samples_per_epoch, progress=False)
    sets = {"train": sets["train"], "val": sets["val"][: args.eval_samples], "test": sets["test"][: args.eval_samples]}
    print(
        f"EnergyMinimisation: {len(sets['train'])} fresh training configurations per epoch, "
        f"{len(sets['val'])} validation and {len(sets['test'])} test configurations of 10 points"
    )
    trainers = {name: train_model(name, task, sets, args) for name, task in tasks.items()}
    test = next(iter(DataLoader(sets["test"], batch_size=len(sets["test"]))))
    curves = {name: energy_per_iteration(trainer, test) for name, trainer in trainers.items()}
    rows = results(trainers, curves, test)
    print(f"\nMean test energy ({len(sets['test'])} configurations), best-validation checkpoints:")
    for name, value in rows.items():
        print(f"  {name:<34}{value:>10.4f}")
    ratio = rows["iterative SE(3)-Transformer"] / rows["single-pass SE(3)-Transformer"]
    verdict = "iteration helps" if ratio < 1 else "iteration does not help on this short schedule"
    print(f"  iterative / single-pass: {ratio:.2f} ({verdict})")
    energies = curves["iterative"]
    print("  iterative model, energy after each iteration: " + " -> ".join(f"{e:.4f}" for e in energies))
    print(
        "\nequivariance error of the trained iterative model (float64, random rotation + translation): "
        f"{equivariance_error(trainers['iterative'], test):.1e}"
    )
    plot_comparison(trainers, rows, out)
    plot_iterations(trainers["iterative"], test, energies, out)
    print(
        f"\nwrote {out}/comparison.png, {out}/iterations.png and each model's metrics, checkpoints and "
        f"loss.png under {out}/; total {time.perf_counter() - began:.0f} s"
    )
    return {**rows, "ratio": ratio}


if __name__ == "__main__":
    main()
