"""Where an N-body model's error is: the distribution of the per-system test MSE of trained checkpoints.

The charged N-body MSE is a mean over systems of very different difficulty: most systems move smoothly, a few
have close encounters of charged particles, whose large forces the 1,000 simulation steps between the input and
the target frame resolve and a model must guess. For each checkpoint (a ``best.pt`` of ``pyg-se3 train --task
nbody``) and split, this prints and records the mean and median of the per-system MSE, the share of the total
carried by the worst 1 % and 5 % of the systems, the largest, and the standard error of the mean (the standard
deviation of the per-system MSE over the square root of the number of systems: how much another draw of as many
systems from the same distribution would move the mean). Writes ``--out`` (JSON).

    python benchmarks/nbody_errors.py runs/nbody_vel/seed0/best.pt runs/nbody_vel500/seed0/best.pt --root data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pyg_se3.loader import FixedSizeLoader
from pyg_se3.runtime.tasks import from_checkpoint, mse_per_graph
from pyg_se3.runtime.training import read_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="best.pt files of N-body runs")
    parser.add_argument("--root", default="data")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--out", default="benchmarks/results/nbody/errors.json")
    return parser.parse_args(argv)


def per_system_mse(path: str, root: str, splits: list[str]) -> dict[str, torch.Tensor]:
    """The MSE of every system of ``splits``, predicted by the checkpoint at ``path``."""
    state = read_checkpoint(path)
    extra = state["config"]["extra"]
    if extra.get("task") != "nbody":
        raise ValueError(f"{path}: a checkpoint of the {extra.get('task')!r} task, not 'nbody'")
    task, model = from_checkpoint(state)
    sets = task.datasets(root)
    model.eval()
    errors = {}
    with torch.no_grad():
        for split in splits:
            parts = [
                mse_per_graph(task.predict(model, batch), batch.y, batch.batch, batch.num_graphs)
                for batch in FixedSizeLoader(sets[split], batch_size=250)
            ]
            errors[split] = torch.cat(parts)
    return errors


def summary(errors: torch.Tensor) -> dict[str, float]:
    """Mean, its standard error, median, the worst 1 % and 5 % of the systems' share of the total, the largest."""
    ordered = errors.double().sort(descending=True).values
    total = float(ordered.sum())
    return {
        "systems": len(ordered),
        "mean": float(ordered.mean()),
        "standard_error": float(ordered.std() / len(ordered) ** 0.5),
        "median": float(ordered.median()),
        "worst_1pct_share": float(ordered[: max(len(ordered) // 100, 1)].sum()) / total,
        "worst_5pct_share": float(ordered[: max(len(ordered) // 20, 1)].sum()) / total,
        "max": float(ordered[0]),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    record = {
        "command": " ".join(["python benchmarks/nbody_errors.py", *(sys.argv[1:] if argv is None else argv)]),
        "checkpoints": {},
    }
    print("| checkpoint | split | mean | standard error | median | worst 1 % share | worst 5 % share | max |")
    print("|---|---|---|---|---|---|---|---|")
    for path in args.checkpoints:
        rows = {split: summary(e) for split, e in per_system_mse(path, args.root, args.splits).items()}
        record["checkpoints"][path] = rows
        for split, r in rows.items():
            print(
                f"| {path} | {split} | {r['mean']:.3g} | {r['standard_error']:.2g} | {r['median']:.2g} | "
                f"{r['worst_1pct_share']:.2f} | {r['worst_5pct_share']:.2f} | {r['max']:.3f} |",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    main()
