"""Achieved floating-point throughput of the dominant contraction against this machine's dense matmul.

The dominant work of a full-kernel layer is :func:`pyg_se3.nn.kernel.kernel_contraction`: per edge, the radial
head's weights ``[C, K]`` (a matmul ``[E, H] x [H, C K]``) contracted with the stacked basis features
``[K, 2l+1]``. This script times it alone, forward and forward+backward, for every output degree of the second
attention layer at the benchmark configuration (hidden degrees 0..2 x 32 channels, 16 key + 16 value channels
per degree, radial width 32, kNN with K=16), counts its multiply-adds, and compares the achieved rate with a
large dense ``float32`` matmul on the same threads. Results: ``benchmarks/results/flops.md``.

    python benchmarks/flops.py --threads 2 --nodes 1024
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from machine import processor

RESULTS = Path(__file__).parent / "results"


def best_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` runs after one warm-up (the least disturbed by other processes)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_rate(size: int, repeats: int) -> float:
    """FLOP/s of a dense ``size x size`` float32 matmul."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    return 2 * size**3 / best_time(lambda: a @ b, repeats)


def contraction_flops(num_edges: int, hidden: int, channels: int, fan_in: int, m: int, stacked: int) -> dict:
    """Multiply-adds x 2 of one degree's contraction: ``stacked`` is the FLOPs of building ``[E, K, m]``."""
    head = 2 * num_edges * hidden * channels * fan_in  # [E, H] x [H, C K]
    apply = 2 * num_edges * channels * fan_in * m  # [C, K] x [K, m] per edge
    forward = head + apply + stacked
    # backward: recompute stacked and the head; dW (apply), dS (apply), d_hidden and d_weight (head each),
    # d_x and d_basis (stacked each)
    backward = (head + stacked) + 2 * apply + 2 * head + 2 * stacked
    return {"forward": forward, "forward_backward": forward + backward}


def measure(num_nodes: int, repeats: int) -> list[dict]:
    import torch

    from pyg_se3 import Fiber, compute_basis
    from pyg_se3.basis import num_J
    from pyg_se3.graph import KNN
    from pyg_se3.nn import SE3Attention
    from pyg_se3.nn.kernel import kernel_contraction

    torch.manual_seed(0)
    pos = torch.rand(num_nodes, 3) * (num_nodes / 16 * 4.19) ** (1 / 3)
    edge_index = KNN(16)(pos)
    hidden_fiber = Fiber.create(3, 32)
    layer = SE3Attention(hidden_fiber, hidden_fiber, num_heads=4, channels_div=2)
    kernel = layer.to_key_value
    basis = compute_basis(pos, edge_index, 2)
    num_edges = edge_index.shape[1]
    x_j = torch.randn(num_edges, hidden_fiber.dim, requires_grad=True)
    blocks = hidden_fiber.split(x_j)
    hidden = kernel.radial.trunk(basis.dist).detach().requires_grad_(True)
    rows = []
    for l, head in zip(kernel.fiber_out.degrees, kernel.radial.heads, strict=True):
        m = 2 * l + 1
        xs = [blocks[k] for k in hidden_fiber.degrees]
        # the basis needs gradients, as in the models (they flow back to the positions)
        bs = [basis[(k, l)].detach().requires_grad_(True) for k in hidden_fiber.degrees]

        def forward(xs=xs, bs=bs, head=head, l=l):
            with torch.no_grad():
                kernel_contraction(hidden, head, xs, bs, l)

        def forward_backward(xs=xs, bs=bs, head=head, l=l):
            kernel_contraction(hidden, head, xs, bs, l).sum().backward()

        stacked = sum(2 * num_edges * c * (2 * k + 1) * num_J(k, l) * m for k, c in hidden_fiber)
        flops = contraction_flops(
            num_edges, kernel.radial.hidden_dim, kernel.fiber_out[l], kernel.fan_in[l], m, stacked
        )
        times = {"forward": best_time(forward, repeats), "forward_backward": best_time(forward_backward, repeats)}
        rows.append({"degree": l, "E": num_edges, "flops": flops, "times": times})
    return rows


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    peak = matmul_rate(args.matmul_size, args.repeats)
    rows = measure(args.nodes, args.repeats)
    lines = [
        "# Throughput of the dominant contraction",
        "",
        f"Command: `python benchmarks/flops.py {' '.join(argv)}`  ",
        f"Machine: {processor()}, {os.cpu_count()} CPUs, {args.threads} threads; "
        f"fastest of {args.repeats} runs. Dense float32 matmul ({args.matmul_size}^2): **{peak / 1e9:.1f} GFLOP/s**.",
        "",
        "| output degree | E | pass | GFLOP | time (s) | GFLOP/s | of dense matmul |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = {"forward": [0.0, 0.0], "forward_backward": [0.0, 0.0]}
    for row in rows:
        for kind in ("forward", "forward_backward"):
            flops, seconds = row["flops"][kind], row["times"][kind]
            totals[kind][0] += flops
            totals[kind][1] += seconds
            lines.append(
                f"| {row['degree']} | {row['E']} | {kind.replace('_', '+')} | {flops / 1e9:.2f} | {seconds:.3f} | "
                f"{flops / seconds / 1e9:.1f} | {flops / seconds / peak:.0%} |"
            )
    for kind, (flops, seconds) in totals.items():
        lines.append(
            f"| all | | {kind.replace('_', '+')} | {flops / 1e9:.2f} | {seconds:.3f} | {flops / seconds / 1e9:.1f} | "
            f"**{flops / seconds / peak:.0%}** |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flops.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
