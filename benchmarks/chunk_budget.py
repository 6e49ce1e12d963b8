"""How many bytes of radial weights one chunk of the kernel contraction should hold on a CPU.

The chunked contractions (:mod:`pyg_se3.nn.kernel`) size their chunks of edges by a byte budget
(``_CHUNK_BYTES``: ``"cpu"``, and ``"cpu_threads"`` for the full kernel on more than one thread). This script
times forward+backward of our models (the benchmark configuration of ``bench.py``: hidden degrees 0..2 x 32
channels, 4 heads, kNN K=16) with several budgets, interleaved run by run so that the machine's drift hits every
budget alike, for each thread count, and writes the median and fastest time of each to
``benchmarks/results/chunk_budget.md``.

    python benchmarks/chunk_budget.py --threads 1 2 --sizes 64 256 1024
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import bench

RESULTS = Path(__file__).parent / "results"


def time_budgets(model: str, num_nodes: int, threads: int, budgets: list[int], repeats: int) -> dict[int, list]:
    """Forward+backward seconds of ``model`` per total chunk budget (bytes), ``repeats`` interleaved runs each
    after one warm-up."""
    import torch

    from pyg_se3.nn import kernel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    work = bench.build_ours(model, bench.make_inputs(num_nodes, "knn"), 2, 32)

    def step() -> float:
        start = time.perf_counter()
        work.run().square().sum().backward()
        seconds = time.perf_counter() - start
        work.module.zero_grad(set_to_none=True)
        work.pos.grad = None
        return seconds

    default = dict(kernel._CHUNK_BYTES)
    times: dict[int, list] = {budget: [] for budget in budgets}
    try:
        for run in range(repeats + 1):
            for budget in budgets:
                kernel._CHUNK_BYTES.update(cpu=budget, cpu_threads=budget)
                seconds = step()
                if run:  # the first run of each budget is its warm-up
                    times[budget].append(seconds)
    finally:
        kernel._CHUNK_BYTES.update(default)
    return times


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["SE3Transformer", "SE3Transformer+depthwise"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024])
    parser.add_argument("--budgets-mib", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    budgets = [mib * 2**20 for mib in args.budgets_mib]
    lines = [
        "# Chunk budget of the kernel contraction",
        "",
        f"Command: `python benchmarks/chunk_budget.py {' '.join(argv)}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. Forward+backward seconds, "
        f"median (fastest) of {args.repeats} runs interleaved across budgets; kNN K=16, degrees 0..2 x 32 channels. "
        "Budget: bytes of radial weights (depthwise: path features) per chunk.",
        "",
        "| model | threads | N | " + " | ".join(f"{mib} MiB" for mib in args.budgets_mib) + " |",
        "|---|---|---|" + "---|" * len(budgets),
    ]
    for model in args.models:
        for threads in args.threads:
            for num_nodes in args.sizes:
                times = time_budgets(model, num_nodes, threads, budgets, args.repeats)
                medians = {budget: statistics.median(values) for budget, values in times.items()}
                best = min(medians.values())
                cells = [
                    f"{'**' if medians[b] == best else ''}{medians[b]:.3f}{'**' if medians[b] == best else ''} "
                    f"({min(times[b]):.3f})"
                    for b in budgets
                ]
                lines.append(f"| {model} | {threads} | {num_nodes} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "chunk_budget.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
