"""Speed and memory of pyg_se3's layers and models over graph sizes (``make bench``).

Each measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, minus the process's
memory before building the inputs) belongs to that configuration alone. Times are medians of ``--repeats``
runs after one warm-up. Results: ``benchmarks/results/bench.md`` (table) and ``bench.png`` (time and memory
against N, log-log), with the command line that produced them.

    python benchmarks/bench.py --sizes 64 256 1024 4096 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


# ---------------------------------------------------------------------------------------------- one measurement
def measure(model_name: str, num_nodes: int, graph: str, max_degree: int, channels: int, repeats: int) -> dict:
    """Build inputs and a model, run forward and forward+backward; return times (s) and peak memory (GB)."""
    import torch

    from pyg_se3 import Fiber, compute_basis
    from pyg_se3.graph import KNN, Radius
    from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
    from pyg_se3.nn import SE3Attention

    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hidden = Fiber.create(max_degree + 1, channels)
    fiber_in = Fiber({0: 1, 1: 1})
    # Constant density: on average ~16 neighbours within the radius.
    pos = torch.rand(num_nodes, 3) * (num_nodes / 16 * 4.19) ** (1 / 3)
    x = torch.randn(num_nodes, fiber_in.dim)
    builder = KNN(16) if graph == "knn" else Radius(1.0, max_num_neighbors=64)
    edge_index = builder(pos)
    if model_name == "SE3Attention":
        layer = SE3Attention(hidden, hidden, num_heads=4, channels_div=2)
        h = torch.randn(num_nodes, hidden.dim)

        def run():
            basis = compute_basis(
                pos,
                edge_index,
                max_degree,
                edge_weight=builder.edge_weight((pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)),
            )
            return layer(h, pos, edge_index, basis=basis)

        module = layer
    elif model_name == "SE3Transformer":
        module = SE3Transformer(fiber_in, hidden, fiber_in, num_layers=2, num_heads=4, channels_div=2)

        def run():
            return module(x, pos, edge_index)
    else:
        module = IterativeSE3Transformer(
            fiber_in, hidden, num_iterations=2, layers_per_iteration=2, num_heads=4, graph=builder
        )

        def run():
            return module(x, pos).pos

    pos.requires_grad_(True)
    times = {"forward": [], "forward_backward": []}
    for i in range(repeats + 1):
        with torch.no_grad():
            start = time.perf_counter()
            run()
            forward = time.perf_counter() - start
        start = time.perf_counter()
        run().square().sum().backward()
        both = time.perf_counter() - start
        module.zero_grad(set_to_none=True)
        pos.grad = None
        if i:  # the first run is a warm-up
            times["forward"].append(forward)
            times["forward_backward"].append(both)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": model_name,
        "N": num_nodes,
        "E": int(edge_index.shape[1]),
        "graph": graph,
        "degrees": f"0..{max_degree}",
        "channels": channels,
        "parameters": sum(p.numel() for p in module.parameters()),
        "forward_s": statistics.median(times["forward"]),
        "forward_backward_s": statistics.median(times["forward_backward"]),
        "peak_GB": (peak - base_rss) / 1e6,  # ru_maxrss is in kB on Linux
    }


def run_isolated(args: argparse.Namespace, model: str, n: int, graph: str, degree: int) -> dict | None:
    command = [sys.executable, __file__, "--one", json.dumps([model, n, graph, degree, args.channels, args.repeats])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        print(f"  {model} N={n}: over {args.timeout} s, skipped", flush=True)
        return None
    if result.returncode != 0:
        reason = "out of memory" if result.returncode in (-9, 137) else result.stderr.strip().splitlines()[-1:]
        print(f"  {model} N={n}: failed ({reason})", flush=True)
        return None
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- reporting
def write_results(rows: list[dict], argv: list[str]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = "| model | graph | degrees | N | E | parameters | forward (s) | forward+backward (s) | peak memory (GB) |"
    lines = [
        "# pyg_se3 benchmark",
        "",
        f"Command: `python benchmarks/bench.py {' '.join(argv)}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {platform.system()}; median of repeats after a "
        "warm-up; peak memory = the subprocess's peak RSS minus its RSS before the inputs were built.",
        "",
        header,
        "|" + "---|" * 9,
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['graph']} | {r['degrees']} | {r['N']} | {r['E']} | {r['parameters']:,} | "
            f"{r['forward_s']:.3f} | {r['forward_backward_s']:.3f} | {r['peak_GB']:.2f} |"
        )
    (RESULTS / "bench.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench.json").write_text(json.dumps(rows, indent=1))
    plot(rows)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    series = sorted({(r["model"], r["graph"], r["degrees"]) for r in rows})
    for key in series:
        points = sorted((r for r in rows if (r["model"], r["graph"], r["degrees"]) == key), key=lambda r: r["N"])
        label = f"{key[0]} ({key[1]}, degrees {key[2]})"
        style = {"marker": "o", "linestyle": "-" if key[1] == "knn" else "--", "label": label}
        axes[0].plot([r["N"] for r in points], [r["forward_backward_s"] for r in points], **style)
        axes[1].plot([r["N"] for r in points], [r["peak_GB"] for r in points], **style)
    for ax, ylabel in zip(axes, ["forward+backward (s)", "peak memory (GB)"], strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (nodes)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "bench.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["SE3Attention", "SE3Transformer", "IterativeSE3Transformer"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024, 4096])
    parser.add_argument("--graphs", nargs="+", default=["knn", "radius"], choices=["knn", "radius"])
    parser.add_argument("--max-degrees", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one measurement, printed as JSON
        print(json.dumps(measure(*json.loads(args.one))))
        return
    rows = []
    for model in args.models:
        for graph in args.graphs:
            for degree in args.max_degrees:
                for n in args.sizes:
                    row = run_isolated(args, model, n, graph, degree)
                    if row is None:
                        break  # larger N will not fit either
                    rows.append(row)
                    print(
                        f"{model:24s} {graph:6s} 0..{degree} N={n:6d} E={row['E']:7d}  fwd {row['forward_s']:.3f} s"
                        f"  fwd+bwd {row['forward_backward_s']:.3f} s  peak {row['peak_GB']:.2f} GB",
                        flush=True,
                    )
    write_results(rows, argv)
    print(f"wrote {RESULTS / 'bench.md'} and {RESULTS / 'bench.png'}")


if __name__ == "__main__":
    main()
