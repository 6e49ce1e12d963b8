"""``torch.compile`` on the SE(3)-Transformer: compile time, and eager against compiled forward+backward.

The model and inputs are those of ``benchmarks/bench.py`` at NVIDIA's SE(3)-Transformer configuration: 2 attention
blocks and an output convolution, hidden degrees 0..2 x 32 channels, 4 heads, ``channels_div`` 2, kNN graph
(K = 16) over N random points at constant density, one scalar and one vector per point in and out, gradients
with respect to the positions and every parameter. Everything runs in one process, in float32 on the CPU:

1. eager forward+backward, ``--repeats`` times after one warm-up;
2. the first compiled forward+backward (Dynamo traces, Inductor compiles the forward and the backward graph);
3. compiled forward+backward, ``--repeats`` times.

"Compile" is the first compiled step minus the fastest compiled step, from a cold start: Inductor's on-disk caches
go to a fresh temporary folder (``--warm-cache`` uses the usual ones, as a second run of a program would). Times
are the *minimum* over repeats (the least disturbed by other work on the machine). Prints a Markdown table.

With ``--batches B`` it instead runs a PyG ``DataLoader`` of ``B`` batches of different sizes (``--graphs`` random
point clouds of 24..48 points each, kNN graphs within each cloud, so that every batch has its own node and edge
counts): eager, then compiled, one forward+backward per batch, and prints each batch's time and the number of
graphs Dynamo compiled (``torch._dynamo.utils.counters``). ``--dynamic true`` compiles with ``dynamic=True``.

    python benchmarks/compile.py                       # N = 1024, 1 thread
    python benchmarks/compile.py --num-nodes 256 --repeats 3
    python benchmarks/compile.py --batches 5 --channels 8 --max-degree 1   # compile time over a DataLoader
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable

import torch

import pyg_se3.nn.contraction
from pyg_se3 import Fiber
from pyg_se3.graph import KNN
from pyg_se3.models import SE3Transformer

K = 16  # neighbours, as in bench.py
NUM_LAYERS, NUM_HEADS, CHANNELS_DIV = 2, 4, 2  # as in bench.py (peers.py)


def make_inputs(num_nodes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Points uniform in a cube at bench.py's density (~16 neighbours within radius 1), features, kNN graph.

    Parameters
    ----------
    num_nodes
        Number of points ``N``.
    seed
        Seed of the points and features.

    Returns
    -------
    tuple
        ``x [N, 4]`` (a scalar and a vector per point), ``pos [N, 3]`` (requires grad), ``edge_index [2, N K]``.
    """
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(num_nodes, 3, generator=g) * (num_nodes / 16 * 4.19) ** (1 / 3)
    x = torch.randn(num_nodes, 4, generator=g)
    return x, pos.requires_grad_(True), KNN(K)(pos)


def step(model: Callable[..., torch.Tensor], params: list[torch.Tensor], x, pos, edge_index) -> float:
    """One forward+backward (loss: the sum of squares of the output); returns its wall time in seconds."""
    start = time.perf_counter()
    model(x, pos, edge_index).square().sum().backward()
    elapsed = time.perf_counter() - start
    for p in [*params, pos]:
        p.grad = None
    return elapsed


def make_loader(num_batches: int, graphs: int, seed: int = 0) -> list:
    """``num_batches`` PyG batches of ``graphs`` point clouds (24..48 points, density and features as in
    :func:`make_inputs`, kNN graph within each cloud), each batch with its own node and edge counts."""
    from torch_geometric.data import Data
    from torch_geometric.loader import DataLoader

    g = torch.Generator().manual_seed(seed)
    clouds = []
    for _ in range(num_batches * graphs):
        n = int(torch.randint(24, 49, (), generator=g))
        pos = torch.rand(n, 3, generator=g) * (n / 16 * 4.19) ** (1 / 3)
        clouds.append(Data(x=torch.randn(n, 4, generator=g), pos=pos, edge_index=KNN(K)(pos)))
    return list(DataLoader(clouds, batch_size=graphs))


def run_loader(model: torch.nn.Module, params: list[torch.Tensor], args: argparse.Namespace) -> None:
    """Eager, then compiled, forward+backward over a DataLoader of batches of different sizes; prints a table."""
    from torch._dynamo.utils import counters

    batches = make_loader(args.batches, args.graphs)

    def steps(runner: Callable[..., torch.Tensor]) -> list[tuple[float, float]]:
        """Per batch: wall time, and this process's CPU time (what compiling costs on a machine shared with other
        work, whose wall time mostly measures waiting)."""
        times = []
        for b in batches:
            cpu = time.process_time()
            wall = step(runner, params, b.x, b.pos.requires_grad_(True), b.edge_index)
            times.append((wall, time.process_time() - cpu))
        return times

    eager = steps(model)
    dynamic = {"auto": None, "true": True}[args.dynamic]
    counters.clear()
    compiled = steps(torch.compile(model, fullgraph=True, dynamic=dynamic))
    print(
        f"SE3Transformer, {NUM_LAYERS} layers, degrees 0..{args.max_degree} x {args.channels} channels, "
        f"{NUM_HEADS} heads, kNN K={K}; a DataLoader of {args.batches} batches of {args.graphs} point clouds; "
        f"torch.compile(fullgraph=True, dynamic={dynamic}); float32, {args.threads} CPU threads, "
        f"torch {torch.__version__}; {'warm' if args.warm_cache else 'cold'} compile caches\n"
    )
    print("| batch | nodes | edges | eager | compiled (first pass): wall | CPU |")
    print("|---|---|---|---|---|---|")
    for i, (b, (e, _), (wall, cpu)) in enumerate(zip(batches, eager, compiled, strict=True)):
        print(f"| {i} | {b.num_nodes} | {b.edge_index.shape[1]} | {e:.2f} s | {wall:.1f} s | {cpu:.1f} s |")
    graphs = counters["stats"]["unique_graphs"]
    wall, cpu = (sum(t[i] for t in compiled) for i in range(2))
    print(f"\ngraphs compiled: {graphs}; compiled pass over all batches: {wall:.0f} s wall, {cpu:.0f} s CPU")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-nodes", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--max-degree", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--max-chunks",
        type=int,
        default=pyg_se3.nn.contraction.COMPILED_MAX_CHUNKS,
        help="chunks per compiled kernel contraction (pyg_se3.nn.contraction.COMPILED_MAX_CHUNKS)",
    )
    parser.add_argument("--warm-cache", action="store_true", help="use Inductor's usual on-disk caches")
    parser.add_argument("--batches", type=int, default=0, help="time a DataLoader of this many batches instead")
    parser.add_argument("--graphs", type=int, default=4, help="point clouds per batch (with --batches)")
    parser.add_argument("--dynamic", choices=["auto", "true"], default="auto", help="torch.compile's dynamic")
    args = parser.parse_args(argv)
    if not args.warm_cache:  # read by Inductor when it first compiles
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache = tempfile.mkdtemp(prefix="pyg_se3_compile_")
    torch.set_num_threads(args.threads)
    pyg_se3.nn.contraction.COMPILED_MAX_CHUNKS = args.max_chunks

    torch.manual_seed(0)
    fiber_io = Fiber({0: 1, 1: 1})
    model = SE3Transformer(
        fiber_io,
        Fiber.create(args.max_degree + 1, args.channels),
        fiber_io,
        num_layers=NUM_LAYERS,
        num_heads=NUM_HEADS,
        channels_div=CHANNELS_DIV,
    )
    params = list(model.parameters())
    if args.batches:
        run_loader(model, params, args)
        if not args.warm_cache:
            shutil.rmtree(cache, ignore_errors=True)
        return
    x, pos, edge_index = make_inputs(args.num_nodes)

    eager = [step(model, params, x, pos, edge_index) for _ in range(args.repeats + 1)][1:]
    compiled_model = torch.compile(model, fullgraph=True)
    first = step(compiled_model, params, x, pos, edge_index)
    compiled = [step(compiled_model, params, x, pos, edge_index) for _ in range(args.repeats)]

    # with gradients enabled, as above: the graph compiled for forward+backward (no_grad would compile another)
    expected = model(x, pos, edge_index).detach()
    relative = float((compiled_model(x, pos, edge_index).detach() - expected).norm() / expected.norm())

    print(
        f"SE3Transformer, {NUM_LAYERS} layers, degrees 0..{args.max_degree} x {args.channels} channels, "
        f"{NUM_HEADS} heads, channels_div {CHANNELS_DIV}, kNN K={K}, N={args.num_nodes} "
        f"({edge_index.shape[1]} edges), {sum(p.numel() for p in params):,} parameters; float32, "
        f"{args.threads} CPU threads, torch {torch.__version__}, at most {args.max_chunks} chunks per compiled "
        f"contraction; {'warm' if args.warm_cache else 'cold'} compile caches; min of {args.repeats} repeats\n"
    )
    print("| | forward+backward | |")
    print("|---|---|---|")
    print(f"| eager | {min(eager):.2f} s | |")
    print(f"| compiled (Inductor) | {min(compiled):.2f} s | x{min(eager) / min(compiled):.2f} |")
    print(f"| first compiled step (compile + run) | {first:.1f} s | compile ~{first - min(compiled):.0f} s |")
    print(f"\nrelative difference of the outputs, compiled vs eager: {relative:.1e}")
    if not args.warm_cache:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
