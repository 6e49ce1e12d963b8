"""Where an N-body model's error is: the distribution of the per-system test MSE of trained checkpoints.

The charged N-body MSE is a mean over systems of very different difficulty: most systems move smoothly, a few
have close encounters of charged particles, whose large forces the 1,000 simulation steps between the input and
the target frame resolve and a model must guess. For each checkpoint (a ``best.pt`` of ``pyg-se3 train --task
nbody``) and split, this prints and records the mean and median of the per-system MSE, the share of the total
carried by the worst 1 % and 5 % of the systems, the largest, and the standard error of the mean (the standard
deviation of the per-system MSE over the square root of the number of systems: how much another draw of as many
systems from the same distribution would move the mean). With ``--ensemble`` it adds the same summary for the
average of the checkpoints' predicted positions (models trained on the same data, e.g. the seeds of one
configuration): how much of the error is the models' disagreement rather than what none of them predicts. With
``--reflections`` it adds, per checkpoint, the average of its prediction and the reflection of its prediction for
the inverted input, ``(f(x) - f(-x)) / 2``: a model equivariant under reflections too (at twice the cost), and
how much of the error is the model's handedness, which SE(3) equivariance leaves free; and the share of the
final hidden fiber, per degree, that is odd under the inversion, ``|f(x) - (-1)^l f(-x)|^2 / (4 |f(x)|^2)``: the
pseudo-tensors (pseudo-scalars, pseudo-vectors) the model carries, which a model built with ``parity=True``
cannot (its share is 0). It also breaks the error
down by each system's closest pair at the input frame (``--distance-bins``): the systems with a close encounter
ahead, which carry most of it. Writes ``--out`` (JSON).

    python benchmarks/nbody_errors.py runs/nbody_vel/seed0/best.pt runs/nbody_vel500/seed0/best.pt --root data
    python benchmarks/nbody_errors.py runs/nbody_vel/seed{0,1,2}/best.pt --ensemble --splits val test --root data
    python benchmarks/nbody_errors.py runs/nbody_p2sc/seed0/best.pt --reflections --splits val test --root data
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch_geometric.utils import scatter

from pyg_se3.fiber import Fiber
from pyg_se3.graph import complete_edge_index
from pyg_se3.loader import FixedSizeLoader
from pyg_se3.runtime.tasks import from_checkpoint, mse_per_graph
from pyg_se3.runtime.training import read_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="best.pt files of N-body runs")
    parser.add_argument("--root", default="data")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument(
        "--ensemble", action="store_true", help="also summarise the average of the checkpoints' predictions"
    )
    parser.add_argument(
        "--reflections",
        action="store_true",
        help="also summarise each checkpoint's prediction averaged with that of the inverted input, reflected back",
    )
    parser.add_argument(
        "--distance-bins",
        nargs="+",
        type=float,
        default=[0.0, 0.2, 0.4, 0.7, 1.0],
        help="lower edges of the bins of the closest input pair's distance (the last bin is open)",
    )
    parser.add_argument("--out", default="benchmarks/results/nbody/errors.json")
    args = parser.parse_args(argv)
    if args.distance_bins != sorted(set(args.distance_bins)) or args.distance_bins[0] != 0:
        parser.error(f"--distance-bins: expected increasing edges starting at 0, got {args.distance_bins}")
    return args


def predictions(
    path: str, root: str, splits: list[str], reflections: bool = False
) -> tuple[dict[str, tuple[torch.Tensor, ...]], dict[str, tuple[torch.Tensor, ...]], dict[str, dict[str, float]]]:
    """Per split of ``splits``: the positions predicted by the checkpoint at ``path``, the targets (both
    ``[N, 3]``), each particle's system ``[N]`` and the input positions ``[N, 3]``; with ``reflections``, the same
    for the prediction averaged with its reflection, and the pseudo share of the final hidden fiber per degree
    (:func:`pseudo_share`; both empty otherwise)."""
    state = read_checkpoint(path)
    extra = state["config"]["extra"]
    if extra.get("task") != "nbody":
        raise ValueError(f"{path}: a checkpoint of the {extra.get('task')!r} task, not 'nbody'")
    task, model = from_checkpoint(state)
    sets = task.datasets(root)
    model.eval()
    reflection = task.reflection()
    out, averaged, shares = {}, {}, {}
    with torch.no_grad():
        for split in splits:
            batch = next(iter(FixedSizeLoader(sets[split], batch_size=len(sets[split]))))
            output = task.predict_output(model, batch)
            out[split] = output.pos, batch.y, batch.batch, batch.pos
            if reflections:
                inverted = reflection.reflect(batch, torch.ones(batch.num_graphs, dtype=torch.bool))
                mirror = task.predict_output(model, inverted)
                averaged[split] = (output.pos - mirror.pos) / 2, batch.y, batch.batch, batch.pos
                shares[split] = pseudo_share(model.fiber_hidden, output.x, mirror.x)
    return out, averaged, shares


def pseudo_share(fiber: Fiber, x: torch.Tensor, x_inverted: torch.Tensor) -> dict[str, float]:
    """Per degree ``l`` of ``fiber``: the share of ``|x|^2`` in the part of the features that is odd under the
    inversion, given ``x`` and the features ``x_inverted`` computed from the inverted input. A type-``l`` feature
    of natural parity satisfies ``f(-x) = (-1)^l f(x)``, a pseudo-tensor ``f(-x) = -(-1)^l f(x)``; the odd part
    is ``(f(x) - (-1)^l f(-x)) / 2``. A degree whose features are all zero carries nothing odd: share 0."""
    blocks, inverted = fiber.split(x), fiber.split(x_inverted)
    shares = {}
    for l in fiber.degrees:
        total = float(blocks[l].square().sum())
        odd = float((blocks[l] - (-1) ** l * inverted[l]).square().sum()) / 4
        shares[str(l)] = odd / total if total > 0 else 0.0
    return shares


def ensemble(runs: list[dict[str, tuple[torch.Tensor, ...]]], paths: list[str]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per split: the average of the runs' predictions, with the targets, systems and inputs (the targets must be
    the same for all runs)."""
    out = {}
    for split, (_, target, systems, inputs) in runs[0].items():
        for path, run in zip(paths[1:], runs[1:], strict=True):
            if not torch.equal(run[split][1], target):
                raise ValueError(f"--ensemble: {path} was trained on other {split} data than {paths[0]}")
        out[split] = torch.stack([run[split][0] for run in runs]).mean(0), target, systems, inputs
    return out


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


def closest_pair(pos: torch.Tensor, systems: torch.Tensor) -> torch.Tensor:
    """``[num_systems]``: the smallest distance between two particles of each system (``pos`` ``[N, 3]``,
    ``systems`` ``[N]``, sorted, each system with at least two particles)."""
    src, dst = complete_edge_index(systems)
    distances = (pos[src] - pos[dst]).norm(dim=-1)
    return scatter(distances, systems[dst], dim=0, dim_size=int(systems.max()) + 1, reduce="min")


def by_closest_pair(errors: torch.Tensor, closest: torch.Tensor, edges: list[float]) -> list[dict]:
    """Per bin ``[edges[k], edges[k + 1])`` of the closest pair's distance (the last bin open): its systems, their
    mean error (None for an empty bin) and their share of the total error."""
    errors, total = errors.double(), float(errors.double().sum())
    rows = []
    for low, high in zip(edges, [*edges[1:], float("inf")], strict=True):
        inside = (closest >= low) & (closest < high)
        count = int(inside.sum())
        rows.append(
            {
                "from": low,
                "to": high,
                "systems": count,
                "mean": float(errors[inside].mean()) if count else None,
                "share": float(errors[inside].sum()) / total,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    record = {
        "command": " ".join(["python benchmarks/nbody_errors.py", *(sys.argv[1:] if argv is None else argv)]),
        "checkpoints": {},
    }
    print("| checkpoint | split | mean | standard error | median | worst 1 % share | worst 5 % share | max |")
    print("|---|---|---|---|---|---|---|---|")
    named, runs, shares = {}, [], {}
    for path in args.checkpoints:
        run, averaged, shares[path] = predictions(path, args.root, args.splits, args.reflections)
        named[path] = run
        runs.append(run)
        if averaged:
            named[f"{path}, averaged with its reflection"] = averaged
    if args.ensemble:
        named[f"ensemble of {len(runs)}"] = ensemble(runs, args.checkpoints)
    for name, run in named.items():
        rows = {}
        for split, (predicted, target, systems, inputs) in run.items():
            errors = mse_per_graph(predicted, target, systems)
            rows[split] = summary(errors)
            rows[split]["by_closest_pair"] = by_closest_pair(errors, closest_pair(inputs, systems), args.distance_bins)
            if split in shares.get(name, {}):
                rows[split]["hidden_pseudo_share"] = shares[name][split]
        record["checkpoints"][name] = rows
        for split, r in rows.items():
            print(
                f"| {name} | {split} | {r['mean']:.3g} | {r['standard_error']:.2g} | {r['median']:.2g} | "
                f"{r['worst_1pct_share']:.2f} | {r['worst_5pct_share']:.2f} | {r['max']:.3f} |",
                flush=True,
            )
    print("\n| checkpoint | split | closest input pair | systems | mean | share of the error |")
    print("|---|---|---|---|---|---|")
    for name, rows in record["checkpoints"].items():
        for split, r in rows.items():
            for b in r["by_closest_pair"]:
                mean = "-" if b["mean"] is None else f"{b['mean']:.3g}"
                print(f"| {name} | {split} | {b['from']:g}-{b['to']:g} | {b['systems']} | {mean} | {b['share']:.2f} |")
    if args.reflections:
        print("\n| checkpoint | split | share of the final hidden fiber odd under the inversion, per degree |")
        print("|---|---|---|")
        for name, per_split in shares.items():
            for split, share in per_split.items():
                print(f"| {name} | {split} | {', '.join(f'{l}: {v:.3f}' for l, v in share.items())} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
