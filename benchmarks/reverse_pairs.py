"""Radial weights once per reverse pair against once per edge, in one process, on symmetric graphs.

On a symmetric graph (radius, complete) an edge and its reverse have the same length, and where their edge
features are equal too, the full kernel (:class:`pyg_se3.nn.EdgeKernel`) computes their radial weights once
(:attr:`pyg_se3.basis.Basis.reverse_pairs`). This script times the same modules on the same inputs with the pairs
found (``compute_basis``'s default) and without (``find_reverse_pairs=False``), the two alternating, each time
the fastest of ``--repeats`` passes after a warm-up:

- ``SE3Attention`` (32 channels per degree, 8 heads) on a radius graph of ``--nodes`` points, degrees 0..1 and
  0..3 (``--degrees``): forward+backward (gradients of features and positions) and forward without gradients;
- a training step's forward+backward and an evaluation pass of the charged N-body task's 8 x 1 model (16
  channels, velocity carried; edge features ``q_i q_j`` and the pair's motion at the input frame, as
  ``benchmarks/nbody_speed.py`` has it) and of its best model (8 x 2, and inverse distances at the input and
  the current positions, the latter differentiated in training) on batches of 100 five-body systems (the complete
  graph), with ``--root`` holding the dataset; skipped with ``--no-nbody``.

With ``--device cuda`` everything runs on the GPU and every pass is timed to a synchronisation; finding the pairs
and comparing the edge features then each read a value back from the device, which the per-edge way does not.
Writes ``--out/reverse_pairs.json`` and ``reverse_pairs.md``.

    python benchmarks/reverse_pairs.py --threads 1 --root data
    python benchmarks/reverse_pairs.py --device cuda --root data --out benchmarks/results/reverse_pairs/gpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from flops import best_time
from gpu import synchronize
from machine import processor

from pyg_se3 import Fiber, compute_basis
from pyg_se3.graph import Radius
from pyg_se3.nn import SE3Attention


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (timed to a synchronisation)")
    parser.add_argument("--nodes", type=int, default=512, help="points of the radius graph")
    parser.add_argument("--degrees", type=int, nargs="+", default=[1, 3], help="largest degrees of the layers")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement (the fastest counts)")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two ways")
    parser.add_argument("--batches", type=int, default=10, help="N-body batches of 100 systems per pass")
    parser.add_argument("--root", default="data", help="the N-body dataset's root")
    parser.add_argument("--no-nbody", action="store_true", help="time the attention layer only")
    parser.add_argument("--out", default="benchmarks/results/reverse_pairs")
    return parser.parse_args(argv)


def attention_passes(nodes: int, max_degree: int, pairs: bool, device: torch.device):
    """``(forward+backward, forward)`` callables of one attention layer on a radius graph (~5 neighbours)."""
    g = torch.Generator().manual_seed(0)
    pos = (torch.rand(nodes, 3, generator=g) * (nodes / 2) ** (1 / 3)).to(device)
    edge_index = Radius(0.9, max_num_neighbors=64)(pos)
    fiber = Fiber.create(max_degree + 1, 32)
    torch.manual_seed(0)
    layer = SE3Attention(fiber, fiber, num_heads=8).to(device)
    x = torch.randn(nodes, fiber.dim, generator=g).to(device)

    def train():
        p, h = pos.clone().requires_grad_(True), x.clone().requires_grad_(True)
        basis = compute_basis(p, edge_index, max_degree, find_reverse_pairs=pairs)
        layer(h, p, edge_index, basis=basis).square().sum().backward()

    @torch.no_grad()
    def evaluate():
        layer(x, pos, edge_index, basis=compute_basis(pos, edge_index, max_degree, find_reverse_pairs=pairs))

    return edge_index.shape[1], train, evaluate


#: The N-body models: ``benchmarks/nbody_speed.py``'s (its default), and the best one (8 x 2 layers, inverse
#: distances and their squares scaled; features of the positions that each iteration moves, so differentiated)
NBODY_MODELS = {
    "8 x 1 model": {"layers_per_iteration": 1},
    "best model, 8 x 2 with inverse distances": {
        "layers_per_iteration": 2,
        "inverse_distance": 0.1,
        "inverse_powers": 2,
        "inverse_scaled": True,
    },
}


def nbody_passes(root: str, model_name: str, num_batches: int, pairs: bool, device: torch.device):
    """``(forward+backward, forward)`` callables of an N-body model (:data:`NBODY_MODELS`) over ``num_batches``
    batches of 100 systems."""
    from pyg_se3.loader import FixedSizeGraphs, FixedSizeLoader
    from pyg_se3.runtime.tasks import ModelOptions, get_task

    options = ModelOptions(
        num_iterations=8,
        channels=16,
        integrator="velocity",
        inputs="invariant",
        motion_edges=True,
        **NBODY_MODELS[model_name],
    )
    task = get_task("nbody", options)
    systems = task.datasets(root)["train"][: 100 * num_batches]
    batches = [batch.to(device) for batch in FixedSizeLoader(FixedSizeGraphs(systems), batch_size=100)]
    torch.manual_seed(0)
    model = task.build_model(1.0).to(device)
    for block in model.blocks:  # the task builds the default model; its blocks' option, set afterwards
        block.find_reverse_pairs = pairs

    def train():
        for batch in batches:
            task.loss(model, batch).backward()

    @torch.no_grad()
    def evaluate():
        for batch in batches:
            task.loss(model, batch)

    return 20 * len(systems), train, evaluate


def synchronised(fn, device: torch.device):
    """``fn`` followed by a wait for the device's queued work (a GPU pass is timed to its end)."""

    def run():
        fn()
        synchronize(device)

    return run


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    layer = "SE3Attention, degrees 0..{}, 32 channels, radius graph of {} points"
    cases = [(layer.format(d, args.nodes), d) for d in args.degrees]
    if not args.no_nbody:
        systems = f"(16 channels), {args.batches} batches of 100 systems"
        cases += [(f"N-body {name} {systems}", name) for name in NBODY_MODELS]
    rows = []
    for name, case in cases:
        best = {}
        for _ in range(args.rounds):
            for pairs in (True, False):
                if isinstance(case, str):
                    edges, train, evaluate = nbody_passes(args.root, case, args.batches, pairs, device)
                else:
                    edges, train, evaluate = attention_passes(args.nodes, case, pairs, device)
                times = tuple(best_time(synchronised(fn, device), args.repeats) for fn in (train, evaluate))
                best[pairs] = tuple(min(t, b) for t, b in zip(times, best.get(pairs, times), strict=True))
        rows.append(
            {
                "case": name,
                "edges": edges,
                "per_pair_s": {"train": best[True][0], "eval": best[True][1]},
                "per_edge_s": {"train": best[False][0], "eval": best[False][1]},
            }
        )
        print(name, rows[-1]["per_pair_s"], rows[-1]["per_edge_s"], flush=True)
    result = {
        "command": "python benchmarks/reverse_pairs.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{processor()}, {os.cpu_count()} CPUs, {args.threads} threads"
        + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "rows": rows,
    }
    write(result, Path(args.out))
    return result


def write(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "reverse_pairs.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}; torch {result['torch']}; fastest passes, the two ways alternating.",
        "",
        "| case | edges | train s, per pair | per edge | speed-up | eval s, per pair | per edge | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        pair, edge = row["per_pair_s"], row["per_edge_s"]
        lines.append(
            f"| {row['case']} | {row['edges']:,} | {pair['train']:.3f} | {edge['train']:.3f} | "
            f"{edge['train'] / pair['train']:.2f}x | {pair['eval']:.3f} | {edge['eval']:.3f} | "
            f"{edge['eval'] / pair['eval']:.2f}x |"
        )
    (out / "reverse_pairs.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
