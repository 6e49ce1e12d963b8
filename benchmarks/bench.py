"""Speed and memory of pyg_se3's layers and models over graph sizes, and of peer implementations (``make bench``).

Each measurement runs in a fresh subprocess, so its peak resident memory (``ru_maxrss``, minus the process's
memory before building the inputs) belongs to that configuration alone. Times are medians of ``--repeats``
runs after one warm-up. Our models and the peers (``benchmarks/peers.py``: lucidrains' se3-transformer-pytorch
and e3nn's gated tensor-field network, at our fibers, neighbours and depth) go through the same code, and the
report gives each peer's time and memory as a ratio to those of its counterpart among ours. Every subprocess has
an address-space limit (``--memory-cap``); a size whose memory, extrapolated linearly in N from the previous
size, would exceed it is skipped, as is one whose time would exceed ``--timeout``. Results:
``benchmarks/results/bench.md`` (tables), ``bench.json`` and ``bench.png`` (time and memory against N, log-log),
with the command line that produced them.

    python benchmarks/bench.py --sizes 64 256 1024 4096 --threads 2
    python benchmarks/bench.py --no-peers --models SE3Transformer --sizes 64 256
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import peers as peer_adapters
from machine import processor

if TYPE_CHECKING:
    from peers import Inputs, Workload

RESULTS = Path(__file__).parent / "results"
BASE_MODELS = ["EdgeKernel", "SE3Attention", "SE3Transformer", "SE3ConvNet", "IterativeSE3Transformer"]
# Variants: "+depthwise" uses the depthwise edge kernel, "+checkpoint" activation checkpointing over groups of
# target nodes (the models' checkpoint=True: bounded memory for large graphs).
OUR_MODELS = [
    *BASE_MODELS,
    "EdgeKernel+depthwise",
    "SE3Transformer+depthwise",
    "SE3ConvNet+depthwise",
    "SE3Transformer+checkpoint",
    "IterativeSE3Transformer+checkpoint",
]
K = 16  # neighbours of the kNN graphs
RADIUS = 1.0  # cutoff of the radius graphs (on average ~16 neighbours at the benchmark's density)
RADIUS_MAX_NEIGHBORS = 64
OOM_EXIT = 3  # a measuring subprocess that ran out of memory exits with this


# ---------------------------------------------------------------------------------------------- workloads
def make_inputs(num_nodes: int, graph: str) -> Inputs:
    """Random points at constant density (~16 neighbours within ``RADIUS``), features and the graph.

    Parameters
    ----------
    num_nodes
        Number of points.
    graph
        ``"knn"`` (``K`` nearest neighbours) or ``"radius"`` (within ``RADIUS``).

    Returns
    -------
    Inputs
        Shared by our models and the peers; ``pos`` requires grad.
    """
    import torch

    from pyg_se3.graph import KNN, Radius

    pos = torch.rand(num_nodes, 3) * (num_nodes / 16 * 4.19) ** (1 / 3)
    x = torch.randn(num_nodes, 4)
    builder = KNN(K) if graph == "knn" else Radius(RADIUS, max_num_neighbors=RADIUS_MAX_NEIGHBORS)
    edge_index = builder(pos)
    return peer_adapters.Inputs(graph, pos.requires_grad_(True), x, edge_index, K, RADIUS)


def build_ours(model_name: str, inputs: Inputs, max_degree: int, channels: int) -> Workload:
    """One of ``OUR_MODELS`` at the benchmark's configuration (attention: 4 heads, ``channels_div`` 2).

    ``EdgeKernel`` is one edge kernel alone (hidden fiber in and out; ``+depthwise``: the depthwise one) on the
    source features of every edge, with the basis it needs (gradients flow through it to the positions).
    ``SE3ConvNet`` is our tensor-field network, the layer-for-layer counterpart of e3nn's gated network:
    ``SE3Conv`` + ``SE3Norm`` twice, then an output ``SE3Conv``, on one basis per forward.

    Parameters
    ----------
    model_name
        One of ``OUR_MODELS``.
    inputs
        The problem (:func:`make_inputs`).
    max_degree, channels
        Hidden degrees ``0..max_degree`` with ``channels`` channels each; inputs and outputs are one scalar and
        one vector per point.

    Returns
    -------
    Workload
    """
    from torch import nn

    from pyg_se3 import Fiber, compute_basis
    from pyg_se3.graph import KNN, Radius
    from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
    from pyg_se3.nn import SE3Attention, SE3Conv, SE3Norm, make_kernel

    num_layers, num_heads, channels_div = peer_adapters.NUM_LAYERS, peer_adapters.NUM_HEADS, peer_adapters.CHANNELS_DIV
    model_name, *variant = model_name.split("+")
    kernel = "depthwise" if "depthwise" in variant else "full"
    checkpoint = "checkpoint" in variant
    hidden = Fiber.create(max_degree + 1, channels)
    fiber_io = Fiber({0: 1, 1: 1})
    pos, x, edge_index = inputs.pos, inputs.x, inputs.edge_index
    builder = KNN(K) if inputs.graph == "knn" else Radius(RADIUS, max_num_neighbors=RADIUS_MAX_NEIGHBORS)
    if model_name == "EdgeKernel":
        module = make_kernel(kernel, hidden, hidden)
        h = x.new_empty(inputs.num_nodes, hidden.dim).normal_()

        def run():
            return module(h[edge_index[0]], compute_basis(pos, edge_index, max_degree))

    elif model_name == "SE3Attention":
        module = SE3Attention(hidden, hidden, num_heads=num_heads, channels_div=channels_div, kernel=kernel)
        h = x.new_empty(inputs.num_nodes, hidden.dim).normal_()

        def run():
            lengths = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
            basis = compute_basis(pos, edge_index, max_degree, edge_weight=builder.edge_weight(lengths))
            return module(h, pos, edge_index, basis=basis)

    elif model_name == "SE3Transformer":
        module = SE3Transformer(
            fiber_io,
            hidden,
            fiber_io,
            num_layers=num_layers,
            num_heads=num_heads,
            channels_div=channels_div,
            kernel=kernel,
            checkpoint=checkpoint,
        )

        def run():
            return module(x, pos, edge_index)

    elif model_name == "SE3ConvNet":
        module = nn.ModuleDict(
            {
                "convs": nn.ModuleList(
                    SE3Conv(hidden if i else fiber_io, hidden, kernel=kernel) for i in range(num_layers)
                ),
                "norms": nn.ModuleList(SE3Norm(hidden) for _ in range(num_layers)),
                "output": SE3Conv(hidden, fiber_io, kernel=kernel),
            }
        )

        def run():
            basis = compute_basis(pos, edge_index, max_degree)
            out = x
            for conv, norm in zip(module["convs"], module["norms"], strict=True):
                out = norm(conv(out, pos, edge_index, basis=basis))
            return module["output"](out, pos, edge_index, basis=basis)

    elif model_name == "IterativeSE3Transformer":
        module = IterativeSE3Transformer(
            fiber_io,
            hidden,
            num_iterations=2,
            layers_per_iteration=num_layers,
            num_heads=num_heads,
            graph=builder,
            kernel=kernel,
            checkpoint=checkpoint,
        )

        def run():
            return module(x, pos).pos

    else:
        raise ValueError(f"model: expected one of {OUR_MODELS} or a peer {sorted(peer_adapters.PEERS)}")
    return peer_adapters.Workload(module, run, pos, inputs.num_edges)


# ---------------------------------------------------------------------------------------------- one measurement
def time_workload(workload: Workload, repeats: int) -> dict[str, float]:
    """Median forward and forward+backward times (s) of ``repeats`` runs after one warm-up."""
    import torch

    times: dict[str, list[float]] = {"forward": [], "forward_backward": []}
    for i in range(repeats + 1):
        with torch.no_grad():
            start = time.perf_counter()
            workload.run()
            forward = time.perf_counter() - start
        start = time.perf_counter()
        workload.run().square().sum().backward()
        both = time.perf_counter() - start
        workload.module.zero_grad(set_to_none=True)
        workload.pos.grad = None
        if i:  # the first run is a warm-up
            times["forward"].append(forward)
            times["forward_backward"].append(both)
    return {name: statistics.median(values) for name, values in times.items()}


def import_modules(model: str) -> peer_adapters.Peer | None:
    """Import what measuring ``model`` needs (so that imports are not counted in its memory); its peer if any."""
    import importlib

    import numpy  # noqa: F401
    import torch  # noqa: F401

    import pyg_se3.graph
    import pyg_se3.models
    import pyg_se3.nn  # noqa: F401

    peer = peer_adapters.PEERS.get(model)
    if peer is not None:
        importlib.import_module(peer.module)
    return peer


def measure(model: str, num_nodes: int, graph: str, max_degree: int, channels: int, repeats: int) -> dict:
    """Build inputs and a model (ours or a peer's), run forward and forward+backward.

    Parameters
    ----------
    model
        One of ``OUR_MODELS`` or a peer's name (``peers.PEERS``).
    num_nodes, graph
        Problem size and ``"knn"`` or ``"radius"``.
    max_degree, channels
        Hidden degrees ``0..max_degree`` with ``channels`` channels each.
    repeats
        Timed runs after the warm-up.

    Returns
    -------
    dict
        The result row: median times (s), peak memory (GB: peak RSS minus the RSS before the inputs were
        built), edges, parameters, and the configuration.
    """
    import torch

    import pyg_se3

    peer = import_modules(model)
    torch.manual_seed(0)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    inputs = make_inputs(num_nodes, graph)
    if peer is not None:
        workload = peer.build(inputs, max_degree, channels)
    else:
        workload = build_ours(model, inputs, max_degree, channels)
    times = time_workload(workload, repeats)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "model": model,
        "version": peer.version() if peer else pyg_se3.__version__,
        "N": num_nodes,
        "E": workload.num_edges,
        "graph": graph,
        "degrees": f"0..{max_degree}",
        "channels": channels,
        "parameters": sum(p.numel() for p in workload.module.parameters()),
        "forward_s": times["forward"],
        "forward_backward_s": times["forward_backward"],
        "peak_GB": (peak - base_rss) / 1e6,  # ru_maxrss is in kB on Linux
    }


def limit_memory(cap_gb: float) -> None:
    """Let this process map at most ``cap_gb`` GB more than it has now (``RLIMIT_AS``; Linux only)."""
    try:
        with open("/proc/self/statm") as f:
            mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = mapped + int(cap_gb * 1e9)
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def measure_child(spec: dict) -> None:
    """The subprocess: one measurement under the memory cap, printed as the last line of stdout."""
    import_modules(spec["model"])  # libraries map (and numpy's BLAS reserves) much address space: before the cap
    limit_memory(spec.pop("memory_cap"))
    try:
        with contextlib.redirect_stdout(sys.stderr):  # peers print progress; stdout is for the result
            row = measure(**spec)
    except (MemoryError, RuntimeError) as error:
        if isinstance(error, MemoryError) or "alloc" in str(error).lower():
            print(f"out of memory: {str(error)[:300]}", file=sys.stderr)
            sys.exit(OOM_EXIT)
        raise
    print(json.dumps(row))


def config_row(model: str, n: int, graph: str, degree: int, channels: int) -> dict:
    """The configuration columns of a result row (all a row has when the configuration was not measured)."""
    return {"model": model, "N": n, "graph": graph, "degrees": f"0..{degree}", "channels": channels}


def run_isolated(args: argparse.Namespace, model: str, n: int, graph: str, degree: int) -> dict:
    """Measure one configuration in a fresh subprocess (``OMP_NUM_THREADS=--threads``, ``--timeout``).

    Returns
    -------
    dict
        The row of :func:`measure`, or the configuration with an ``error``: ``"out of memory"``, ``"over T s"``
        or ``"failed: <last line of stderr>"``.
    """
    spec = {"model": model, "num_nodes": n, "graph": graph, "max_degree": degree, "channels": args.channels}
    command = [
        sys.executable,
        __file__,
        "--one",
        json.dumps({**spec, "repeats": args.repeats, "memory_cap": args.memory_cap}),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    failed = config_row(model, n, graph, degree, args.channels)
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"over {args.timeout:g} s"}
    if result.returncode == OOM_EXIT:
        return {**failed, "error": f"out of memory (--memory-cap {args.memory_cap:g} GB)"}
    if result.returncode in (-9, 137):  # killed, most likely by the kernel's OOM killer
        return {**failed, "error": "out of memory (killed)"}
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        # Allocators other than torch's (e.g. OpenBLAS) report a failed allocation and exit by themselves.
        return {**failed, "error": "out of memory" if "alloc" in last.lower() else f"failed: {last[:200]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


Series = tuple[str, str, int]  # model, graph, max degree


def skip_reason(args: argparse.Namespace, previous: dict | None, n: int) -> str | None:
    """Why size ``n`` of a series is skipped: its memory or time, extrapolated linearly in N from the series'
    ``previous`` row, over ``--memory-cap`` or ``--timeout`` (``None``: measure it)."""
    if previous is None:
        return None
    growth = n / previous["N"]
    memory = previous["peak_GB"] * growth
    seconds = (args.repeats + 1) * (previous["forward_s"] + previous["forward_backward_s"]) * growth
    if memory > args.memory_cap:
        return f"skipped: ~{memory:.1f} GB expected, over --memory-cap {args.memory_cap:g} GB"
    if seconds > args.timeout:
        return f"skipped: ~{seconds:.0f} s expected, over --timeout {args.timeout:g} s"
    return None


def combine_rounds(rounds: list[dict]) -> dict:
    """One row from the rows of every round of a configuration: the first error if any, else the medians of the
    times and of the peak memory (the per-round values are kept under ``"rounds"``)."""
    errors = [r for r in rounds if "error" in r]
    if errors:
        return errors[0]
    row = dict(rounds[0])
    for key in ("forward_s", "forward_backward_s", "peak_GB"):
        row[key] = statistics.median(r[key] for r in rounds)
    if len(rounds) > 1:
        row["rounds"] = [{key: r[key] for key in ("forward_s", "forward_backward_s", "peak_GB")} for r in rounds]
    return row


def sweep(args: argparse.Namespace, series: list[Series]) -> list[dict]:
    """Every series at every ``--sizes``, smallest first; a series stops at its first failure or at the first size
    whose extrapolated memory or time is over the limits (:func:`skip_reason`).

    Sizes are the outer loop and ``--rounds`` the next one: in each round every series still running is measured
    once at that size, in turn, so that ours and the peers are measured close together in time and alternately
    (this machine's speed drifts by up to 2x over minutes); each row is then the median over the rounds."""
    rows: dict[Series, list[dict]] = {s: [] for s in series}
    previous: dict[Series, dict | None] = dict.fromkeys(series)
    running = list(series)
    for n in sorted(args.sizes):
        for model, graph, degree in list(running):
            reason = skip_reason(args, previous[(model, graph, degree)], n)
            if reason:
                rows[(model, graph, degree)].append(
                    config_row(model, n, graph, degree, args.channels) | {"error": reason}
                )
                print(f"{model:26s} {graph:6s} 0..{degree} N={n:6d}  {reason}", flush=True)
                running.remove((model, graph, degree))
        rounds: dict[Series, list[dict]] = {s: [] for s in running}
        for _ in range(args.rounds):
            for s in running:
                if not any("error" in r for r in rounds[s]):
                    rounds[s].append(run_isolated(args, s[0], n, s[1], s[2]))
        for s in list(running):
            row = combine_rounds(rounds[s])
            rows[s].append(row)
            model, graph, degree = s
            if "error" in row:
                print(f"{model:26s} {graph:6s} 0..{degree} N={n:6d}  {row['error']}", flush=True)
                running.remove(s)
                continue
            spread = ""
            if "rounds" in row:
                times = [r["forward_backward_s"] for r in row["rounds"]]
                spread = f" (rounds {min(times):.3f}-{max(times):.3f})"
            print(
                f"{model:26s} {graph:6s} 0..{degree} N={n:6d} E={row['E']:7d}  fwd {row['forward_s']:.3f} s"
                f"  fwd+bwd {row['forward_backward_s']:.3f} s{spread}  peak {row['peak_GB']:.2f} GB",
                flush=True,
            )
            previous[s] = row
    return [row for s in series for row in rows[s]]  # each series' sizes together, in the order of ``series``


# ---------------------------------------------------------------------------------------------- reporting
def _measured(rows: list[dict]) -> dict[tuple, dict]:
    """The rows that measured something, by (model, graph, degrees, N)."""
    return {(r["model"], r["graph"], r["degrees"], r["N"]): r for r in rows if "error" not in r}


def _ratios(numerator: dict, denominator: dict) -> dict[str, float | None]:
    """``{key}_ratio`` for time and memory: ``numerator / denominator`` (``None`` where the denominator is 0)."""
    return {
        f"{key}_ratio": numerator[key] / denominator[key] if denominator[key] > 0 else None
        for key in ("forward_s", "forward_backward_s", "peak_GB")
    }


def peer_ratios(rows: list[dict], peers: list[peer_adapters.Peer]) -> list[dict]:
    """Each peer measurement next to its reference's at the same graph, degrees and N (and next to the
    reference's depthwise-kernel variant, when that was measured too); ratios are peer / ours (above 1: ours is
    faster or smaller)."""
    ours = _measured(rows)
    measured = {r["model"] for r in rows}
    ratios = []
    for peer, reference in ((p, ref) for p in peers for ref in (p.reference, f"{p.reference}+depthwise")):
        if reference != peer.reference and reference not in measured:
            continue
        for row in (r for r in rows if r["model"] == peer.name):
            ref = ours.get((reference, row["graph"], row["degrees"], row["N"]))
            entry = {"peer": peer.name, "reference": reference, "graph": row["graph"], "degrees": row["degrees"]}
            entry |= {"N": row["N"], "peer_row": row, "reference_row": ref}
            if ref is not None and "error" not in row:
                entry |= _ratios(row, ref)
            ratios.append(entry)
    return ratios


def depthwise_ratios(rows: list[dict]) -> list[dict]:
    """Each ``X+depthwise`` measurement next to ``X``'s (the full kernel) at the same graph, degrees and N:
    full / depthwise (above 1: the depthwise kernel is faster or smaller)."""
    ours = _measured(rows)
    ratios = []
    for (model, graph, degrees, n), row in ours.items():
        full = ours.get((model.removesuffix("+depthwise"), graph, degrees, n))
        if model.endswith("+depthwise") and full is not None:
            entry = {"model": model.removesuffix("+depthwise"), "graph": graph, "degrees": degrees, "N": n}
            ratios.append(entry | _ratios(full, row))
    return ratios


def _cells(row: dict | None) -> list[str]:
    """Forward, forward+backward and memory cells of a row (a failed row's error in the first two)."""
    if row is None:
        return ["—"] * 3
    if "error" in row:
        return [row["error"], row["error"], "—"]
    return [f"{row['forward_s']:.3f}", f"{row['forward_backward_s']:.3f}", f"{row['peak_GB']:.2f}"]


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def write_results(
    rows: list[dict], ratios: list[dict], peers: list[peer_adapters.Peer], argv: list[str], out: Path
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/bench.py {' '.join(argv)}".strip()
    header = "| model | graph | degrees | N | E | parameters | forward (s) | forward+backward (s) | peak memory (GB) |"
    lines = [
        "# pyg_se3 benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {processor()}, {platform.system()}, {os.cpu_count()} CPUs; median "
        "of repeats after a warm-up (with --rounds: the median over rounds, each configuration measured once per "
        "round in a fresh process, alternating with the others at the same size); peak memory = the subprocess's "
        "peak RSS minus its RSS before the inputs were built.",
        "",
        header,
        "|" + "---|" * 9,
    ]
    for r in rows:
        version = "" if r["model"] in OUR_MODELS or "version" not in r else f" {r['version']}"
        edges = f"{r['E']} | {r['parameters']:,}" if "E" in r else "— | —"
        cells = [r["error"], "—", "—"] if "error" in r else _cells(r)
        lines.append(
            f"| {r['model']}{version} | {r['graph']} | {r['degrees']} | {r['N']} | {edges} | "
            + " | ".join(cells)
            + " |"
        )
    if ratios:
        lines += [
            "",
            "## Peers",
            "",
            "Ratios are peer / ours: above 1, ours is faster (time) or smaller (memory). Same inputs, graph, process "
            "settings and measurement as above.",
            "",
            "| peer | ours | graph | degrees | N | peer fwd+bwd (s) | ours fwd+bwd (s) | forward ratio | "
            "forward+backward ratio | peer memory (GB) | ours memory (GB) | memory ratio |",
            "|" + "---|" * 12,
        ]
        for e in ratios:
            peer_cells, ref_cells = _cells(e["peer_row"]), _cells(e["reference_row"])
            lines.append(
                f"| {e['peer']} | {e['reference']} | {e['graph']} | {e['degrees']} | {e['N']} | {peer_cells[1]} | "
                f"{ref_cells[1]} | {_ratio(e.get('forward_s_ratio'))} | {_ratio(e.get('forward_backward_s_ratio'))} | "
                f"{peer_cells[2]} | {ref_cells[2]} | {_ratio(e.get('peak_GB_ratio'))} |"
            )
        for peer in peers:
            lines += ["", f"**{peer.name}** against our `{peer.reference}`:", ""]
            lines += [f"- {note}" for note in peer.notes]
    depthwise = depthwise_ratios(rows)
    if depthwise:
        lines += [
            "",
            "## Depthwise kernel",
            "",
            "Ratios are full kernel / depthwise kernel, same fibers and inputs: above 1, the depthwise kernel is "
            "faster (time) or smaller (memory).",
            "",
            "| model | graph | degrees | N | forward ratio | forward+backward ratio | memory ratio |",
            "|" + "---|" * 7,
        ]
        lines += [
            f"| {e['model']} | {e['graph']} | {e['degrees']} | {e['N']} | {_ratio(e['forward_s_ratio'])} | "
            f"{_ratio(e['forward_backward_s_ratio'])} | {_ratio(e['peak_GB_ratio'])} |"
            for e in depthwise
        ]
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    flat_ratios = [{k: v for k, v in e.items() if not k.endswith("_row")} for e in ratios]
    results = {"command": command, "rows": rows, "peers": flat_ratios, "depthwise": depthwise}
    (out / "bench.json").write_text(json.dumps(results, indent=1) + "\n")
    measured = [r for r in rows if "error" not in r]
    if measured:
        plot(measured, out)


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    series = sorted({(r["model"], r["graph"], r["degrees"]) for r in rows})
    for key in series:
        points = sorted((r for r in rows if (r["model"], r["graph"], r["degrees"]) == key), key=lambda r: r["N"])
        label = f"{key[0]} ({key[1]}, degrees {key[2]})"
        style = {
            "marker": "o" if key[0] in OUR_MODELS else "s",
            "linestyle": "-" if key[1] == "knn" else "--",
            "label": label,
        }
        axes[0].plot([r["N"] for r in points], [r["forward_backward_s"] for r in points], **style)
        axes[1].plot([r["N"] for r in points], [r["peak_GB"] for r in points], **style)
    for ax, ylabel in zip(axes, ["forward+backward (s)", "peak memory (GB)"], strict=True):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (nodes)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- command line
def default_memory_cap() -> float:
    """16 GB, or 80 % of the machine's memory when that is less."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError):
        return 16.0
    return round(min(16.0, 0.8 * total), 1)


def select_peers(args: argparse.Namespace) -> list[peer_adapters.Peer]:
    """The requested peers that are installed (the others are skipped with a message)."""
    chosen = []
    for name in args.peers:
        peer = peer_adapters.PEERS[name]
        reason = peer_adapters.missing(peer)
        if reason:
            print(f"skipping peer {name}: {reason}", flush=True)
        else:
            chosen.append(peer)
    return chosen


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=BASE_MODELS, choices=OUR_MODELS, help="our models (and variants)"
    )
    parser.add_argument(
        "--peers",
        nargs="*",
        default=list(peer_adapters.PEERS),
        choices=list(peer_adapters.PEERS),
        help="peers to compare with (default: all installed); their reference models are measured too",
    )
    parser.add_argument("--no-peers", dest="peers", action="store_const", const=[], help="our models only")
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 256, 1024, 4096])
    parser.add_argument("--graphs", nargs="+", default=["knn", "radius"], choices=["knn", "radius"])
    parser.add_argument("--max-degrees", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every configuration this many times, alternating with the others at the same size "
        "(each in a fresh process); report the medians",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument(
        "--memory-cap", type=float, default=default_memory_cap(), help="GB per configuration (address space)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for bench.md, bench.json, bench.png")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # child process: one measurement, printed as JSON
        measure_child(json.loads(args.one))
        return
    for name in ("repeats", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected >= 1, got {getattr(args, name)}")
    peers = select_peers(args)
    models = args.models + [p.reference for p in peers if p.reference not in args.models]
    series = [
        (model, graph, degree)
        for model in [*dict.fromkeys(models), *(p.name for p in peers)]
        for graph in args.graphs
        for degree in args.max_degrees
    ]
    rows = sweep(args, series)
    ratios = peer_ratios(rows, peers)
    for e in ratios:
        if "forward_backward_s_ratio" in e:
            print(
                f"{e['peer']} / {e['reference']} {e['graph']} 0..{e['degrees'][-1]} N={e['N']}: forward+backward "
                f"{_ratio(e['forward_backward_s_ratio'])}, memory {_ratio(e['peak_GB_ratio'])}",
                flush=True,
            )
    write_results(rows, ratios, peers, argv, args.out)
    print(f"wrote {args.out / 'bench.md'}, bench.json and bench.png")


if __name__ == "__main__":
    main()
