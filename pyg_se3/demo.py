"""``make demo``: train the Iterative SE(3)-Transformer on the packaged particle-dynamics data (a few minutes on
2 CPU cores), compare it with the baselines, and draw the results.

What it does:

1. loads :class:`~pyg_se3.datasets.ParticleDynamics` (the packaged default data: 3200 / 400 / 400 blocks);
2. trains the iterative model (4 iterations x 2 layers) and a single-pass SE(3)-Transformer with the same number
   of layers (1 iteration x 8 layers) on the same batches, with :class:`~pyg_se3.training.Trainer`;
3. prints a table of train / test MSE next to the constant-position and constant-velocity baselines, and the
   trained model's equivariance error;
4. writes ``runs/demo/``: each model's metrics, checkpoints and loss curve, ``comparison.png`` (validation MSE
   per epoch of both models against the baselines) and ``test_block.png`` (a test block: start, truth, the
   linear guess and the iterative model's trajectory through its iterations).

``python -m pyg_se3.demo --help`` lists the options (more epochs, more channels, another output folder).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from e3nn import o3
from torch_geometric.loader import DataLoader
from tqdm.auto import tqdm

from pyg_se3.tasks import DynamicsTask, ModelOptions, build_model
from pyg_se3.training import TrainConfig, Trainer, seed_everything


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pyg_se3.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batches-per-epoch", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def train_model(name: str, options: ModelOptions, task: DynamicsTask, sets: dict, scale: float, args) -> Trainer:
    seed_everything(args.seed)
    model = build_model(task.dataset_cls.fiber, options, task.edge_dim, scale)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        out=str(Path(args.out) / name),
        max_batches=args.batches_per_epoch,
    )
    trainer = Trainer(model, task, sets["train"], sets["val"], config, eval_sets={"test": sets["test"]})
    params = sum(p.numel() for p in model.parameters())
    shape = f"{options.num_iterations} iteration(s) x {options.layers_per_iteration} layers"
    print(f"\n[{name}] {shape}, {params:,} parameters")
    start = time.perf_counter()
    trainer.fit(
        on_epoch_end=lambda row: tqdm.write(
            f"  epoch {row['epoch']:2d}  train {row['train_loss']:.3e}  val {row['val_mse']:.3e}"
            f"  test {row['test_mse']:.3e}"
            f"  ({time.perf_counter() - start:.0f} s)"
        )
    )
    history = trainer.history
    trainer.load(Path(config.out) / "best.pt")  # evaluate the best-validation weights...
    trainer.history = history  # ...but keep the whole curve for the plots
    return trainer


def equivariance_error(model, task: DynamicsTask, dataset) -> float:
    """Relative error of the trained model under a random rotation and translation of a test block, float64."""
    model = model.double().eval()
    batch = next(iter(DataLoader(dataset[:1], batch_size=1)))
    batch = batch.apply(lambda t: t.double() if t.is_floating_point() else t)
    R, shift = o3.rand_matrix(dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    with torch.no_grad():
        out = task.predict(model, batch)
        moved = batch.clone()
        moved.pos, moved.vel = batch.pos @ R.T + shift, batch.vel @ R.T
        moved.x = task.dataset_cls.fiber.rotate(batch.x, R)
        rotated = task.predict(model, moved)
    model.float()
    expected = out @ R.T + shift
    return float((rotated - expected).norm() / expected.norm())


def results_table(trainers: dict[str, Trainer], sets: dict) -> str:
    rows = {}
    for split in ("train", "test"):
        results = {name: trainer.evaluate(sets[split]) for name, trainer in trainers.items()}
        any_result = next(iter(results.values()))
        rows.setdefault("constant position", {})[split] = any_result["constant_mse"]
        rows.setdefault("linear extrapolation x + v t", {})[split] = any_result["linear_mse"]
        for name, result in results.items():
            rows.setdefault(name, {})[split] = result["mse"]
    lines = [f"{'model':<34}{'train MSE':>12}{'test MSE':>12}", "-" * 58]
    lines += [f"{name:<34}{values['train']:>12.3e}{values['test']:>12.3e}" for name, values in rows.items()]
    return "\n".join(lines)


def plot_comparison(trainers: dict[str, Trainer], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, trainer in trainers.items():
        history = trainer.history
        ax.plot([r["epoch"] for r in history], [r["val_mse"] for r in history], marker="o", label=name)
    last = next(iter(trainers.values())).history[-1]
    ax.axhline(last["val_linear_mse"], color="gray", linestyle="--", label="linear extrapolation")
    ax.axhline(last["val_constant_mse"], color="gray", linestyle=":", label="constant position")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MSE")
    ax.set_title("Particle dynamics, 10 steps ahead")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)


def plot_test_block(trainer: Trainer, task: DynamicsTask, dataset, out: Path) -> None:
    """Start, truth, linear guess and the iterative model's path through its iterations, for one test block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = next(iter(DataLoader(dataset[:1], batch_size=1)))
    model = trainer.model.eval()
    with torch.no_grad():
        result = model(task.features(batch), task.initial_positions(batch), batch.batch)
    trajectory = torch.stack(result.trajectory)  # [T+1, N, 3]
    start, truth = batch.pos, batch.y
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    # Left: the whole block in the x-y plane.
    ax = axes[0]
    ax.scatter(
        start[:, 0], start[:, 1], s=40 * batch.mass.squeeze() / batch.mass.mean(), c="lightgray", label="start of block"
    )
    ax.scatter(truth[:, 0], truth[:, 1], marker="x", c="black", label="truth (10 steps later)")
    ax.scatter(
        result.pos[:, 0], result.pos[:, 1], facecolors="none", edgecolors="tab:red", s=60, label="iterative model"
    )
    for i in range(start.shape[0]):
        ax.plot([start[i, 0], truth[i, 0]], [start[i, 1], truth[i, 1]], color="lightgray", lw=0.8)
    ax.set_title("a test block (x-y projection)")
    ax.set_aspect("equal")
    ax.legend(fontsize=8)
    # Right: zoom on the particle with the largest curvature, in units of the linear guess's error.
    errors = (trajectory[0] - truth).norm(dim=-1)
    i = int(errors.argmax())
    ax = axes[1]
    path = trajectory[:, i] - truth[i]
    ax.plot(path[:, 0], path[:, 1], "-o", color="tab:red", label="model: iteration 0 (linear guess) -> 4")
    for t, point in enumerate(path):
        ax.annotate(str(t), (point[0], point[1]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.scatter([0], [0], marker="x", c="black", s=80, label="truth")
    ax.set_title(f"particle {i}: position relative to the truth")
    ax.legend(fontsize=8)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "test_block.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    base = ModelOptions(num_iterations=4, layers_per_iteration=2, num_degrees=2, channels=args.channels)
    task = DynamicsTask(base)
    sets = task.datasets(args.root, progress=False)
    print(
        f"ParticleDynamics: {len(sets['train'])} / {len(sets['val'])} / {len(sets['test'])} blocks; "
        f"predict positions {task.horizon:g} time units (10 steps) ahead"
    )
    scale = task.displacement_scale(sets["train"])
    single = ModelOptions(num_iterations=1, layers_per_iteration=8, num_degrees=2, channels=args.channels)
    trainers = {
        "iterative SE(3)-Transformer": train_model("iterative", base, task, sets, scale, args),
        "single-pass SE(3)-Transformer": train_model(
            "single_pass", single, task.with_options(single), sets, scale * base.num_iterations, args
        ),
    }
    print("\nBest-validation checkpoints, MSE per coordinate:")
    print(results_table(trainers, sets))
    iterative = trainers["iterative SE(3)-Transformer"]
    print(
        f"\nequivariance error of the trained iterative model (float64, random rotation + translation): "
        f"{equivariance_error(iterative.model, task, sets['test']):.1e}"
    )
    plot_comparison(trainers, out)
    plot_test_block(iterative, task, sets["test"], out)
    print(
        f"\nwrote {out}/comparison.png, {out}/test_block.png and each model's metrics, checkpoints and "
        f"loss.png under {out}/; total {time.perf_counter() - began:.0f} s"
    )


if __name__ == "__main__":
    main()
