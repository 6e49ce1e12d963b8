"""Collect trained energy-minimisation runs into one results table: iterative against single-pass, mean +- std over
seeds, with and without gradient-descent polishing, and gradient descent alone.

Each run is a ``pyg-se3 train --task energy --out RUNS/<config>_s<seed> --seed <seed> ...`` folder; runs that
differ only in their seed are grouped. For every run the best-validation checkpoint (``best.pt``) is evaluated on
the packaged test split (500 configurations): the mean final energy, the energy after each iteration, and the
energy after polishing the model's output with :meth:`~pyg_se3.datasets.EnergyMinimisation.gradient_descent`
(``--polish-steps`` steps of step size 1). Gradient descent alone starts from the initial positions with the same
steps. A file ``RUNS/<run>.time`` holding the run's wall time in seconds (``/usr/bin/time -f "%e s"``) is read
when present.

    python examples/energy_results.py --runs runs/energy --out results/energy

Writes ``--out/energy.json`` (every run and every group) and ``--out/energy.md`` (the table).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from pyg_se3.datasets import EnergyMinimisation
from pyg_se3.runtime.tasks import from_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", required=True, help="folder of run folders named <config>_s<seed>")
    parser.add_argument("--out", required=True, help="output folder for energy.json and energy.md")
    parser.add_argument("--root", default="data", help="datasets folder")
    parser.add_argument("--polish-steps", type=int, default=1000, help="gradient-descent steps (step size 1)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


@torch.no_grad()
def evaluate_run(folder: Path, test, polish_steps: int) -> dict:
    """Test energies of the run's best-validation checkpoint (means over the test configurations)."""
    state = torch.load(folder / "best.pt", map_location="cpu", weights_only=False)
    extra = state["config"]["extra"]
    task, model = from_checkpoint(state)
    model.eval()
    batch = next(iter(DataLoader(test, batch_size=len(test))))
    out = task.predict_output(model, batch)
    per_iteration = [float(task.energies(pos, batch).mean()) for pos in out.trajectory]
    _, polished = EnergyMinimisation.gradient_descent(out.pos, batch.edge_index, batch.p, batch.batch, polish_steps)
    history = state["history"]
    return {
        "run": folder.name,
        "seed": state["config"]["seed"],
        "model": extra["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "best_epoch": state["epoch"] - 1,
        "epochs": len(history),
        "test_energy": per_iteration[-1],
        "energy_per_iteration": per_iteration,
        "polished_energy": float(polished.mean()),
        "wall_s": _wall_time(folder),
    }


def _task(checkpoint: Path) -> str | None:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["config"]["extra"].get("task")


def _wall_time(folder: Path) -> float | None:
    path = folder.with_name(folder.name + ".time")
    if not path.exists():
        return None
    return float(path.read_text().split()[0])


def summarise(runs: list[dict]) -> dict:
    """Mean and sample standard deviation over the seeds of one configuration."""

    def stats(key: str) -> dict[str, float]:
        values = [run[key] for run in runs]
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return {"mean": statistics.fmean(values), "std": std}

    walls = [run["wall_s"] for run in runs if run["wall_s"] is not None]
    return {
        "seeds": sorted(run["seed"] for run in runs),
        "model": runs[0]["model"],
        "parameters": runs[0]["parameters"],
        "test_energy": stats("test_energy"),
        "polished_energy": stats("polished_energy"),
        "energy_per_iteration": [
            statistics.fmean(run["energy_per_iteration"][t] for run in runs)
            for t in range(len(runs[0]["energy_per_iteration"]))
        ],
        "wall_s_per_run": statistics.fmean(walls) if walls else None,
    }


def table(groups: dict[str, dict], baselines: dict[str, float]) -> str:
    lines = [
        "| configuration | iterations x layers | parameters | seeds | test energy | after GD polishing | wall / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, group in groups.items():
        model = group["model"]
        layout = f"{model['num_iterations']} x {model['layers_per_iteration']}"
        energy, polished = group["test_energy"], group["polished_energy"]
        wall = f"{group['wall_s_per_run'] / 60:.1f} min" if group["wall_s_per_run"] else "-"
        lines.append(
            f"| {name} | {layout} | {group['parameters']:,} | {len(group['seeds'])} | "
            f"{energy['mean']:.4f} ± {energy['std']:.4f} | {polished['mean']:.4f} ± {polished['std']:.4f} | {wall} |"
        )
    lines.append("")
    lines += [f"- {name}: {value:.4f}" for name, value in baselines.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    test = EnergyMinimisation(Path(args.root) / EnergyMinimisation.name, split="test", progress=False)
    whole = next(iter(DataLoader(test, batch_size=len(test))))
    _, descended = EnergyMinimisation.gradient_descent(
        whole.pos, whole.edge_index, whole.p, whole.batch, args.polish_steps
    )
    baselines = {
        "initial positions": float(EnergyMinimisation.energy(whole.pos, whole.edge_index, whole.p, whole.batch).mean()),
        f"gradient descent alone ({args.polish_steps} steps)": float(descended.mean()),
    }
    runs = [
        evaluate_run(folder, test, args.polish_steps)
        for folder in sorted(Path(args.runs).iterdir())
        if (folder / "best.pt").exists() and _task(folder / "best.pt") == "energy"
    ]
    grouped: dict[str, list[dict]] = {}
    for run in runs:
        grouped.setdefault(re.sub(r"_s\d+$", "", run["run"]), []).append(run)
    groups = {name: summarise(members) for name, members in grouped.items()}
    results = {"baselines": baselines, "groups": groups, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "energy.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "energy.md").write_text(table(groups, baselines))
    print(table(groups, baselines))
    return results


if __name__ == "__main__":
    main()
