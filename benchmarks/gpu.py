"""GPU benchmarks of the SE(3)-Transformer: forward+backward over graph sizes, and QM9-sized training throughput.

Two parts, on one CUDA device, each point in the same process (peak memory is ``torch.cuda.max_memory_allocated``,
reset before every point):

1. ``forward``: forward+backward time and peak memory of our ``SE3Transformer`` at NVIDIA's SE(3)-Transformer
   configuration, the one of ``benchmarks/bench.py`` (same model builder and inputs: 2 attention layers and an
   output convolution, hidden degrees 0..2 x 32 channels, 4 heads, ``channels_div`` 2, kNN graph with K = 16 over
   N random points at constant density, one scalar and one vector per point in and out; the loss is the sum of
   squares of the output, gradients to every parameter and to the positions), for every ``--sizes`` until the
   device runs out of memory (reported as such; larger sizes are not tried). In float32, and with ``--amp`` also
   under ``torch.autocast`` (bf16 or fp16; see ``pyg_se3/_amp.py`` for what stays in float32), with
   ``--compile`` also through ``torch.compile(fullgraph=True)`` (recompiled for every N; the first step, compile
   included, is reported apart).
2. ``train``: training throughput (graphs per second) on QM9-sized molecules, NVIDIA's QM9 model setting: batches
   of 240 random graphs of 18 nodes, fully connected (``complete_edge_index``), 6 invariant input features per
   node and 4 per edge, 7 attention layers, hidden degrees 0..3 x 32 channels, 8 heads, ``channels_div`` 2, max
   pooling of 128 output scalars and a two-layer MLP head; Adam steps on the L1 loss against random targets; in
   float32 and under autocast (``--amp``'s dtype, bf16 by default; fp16 with a ``GradScaler``). Batches are on the
   device before timing (no data loading). NVIDIA's published throughput is printed next to ours, as theirs.

Times are medians over ``--repeats`` steps after ``--warmup`` steps, timed with CUDA events (``perf_counter`` on
the CPU). Results: ``gpu.json`` and ``gpu.md`` under ``--out`` (default ``benchmarks/results/gpu/``), with the
device, torch and CUDA versions and the command line. ``--device cpu --tiny`` is a smoke run of both parts at tiny
sizes on the CPU (seconds; written to a temporary folder unless ``--out`` is given); CPU numbers of the full
benchmark are ``benchmarks/bench.py``'s and ``benchmarks/compile.py``'s.

    python benchmarks/gpu.py                            # both parts, float32 and (training) bf16 autocast
    python benchmarks/gpu.py --amp bf16 --compile       # also autocast and compiled forward+backward
    python benchmarks/gpu.py --parts forward --sizes 1024 4096 16384 --models SE3Transformer+checkpoint
    python benchmarks/gpu.py --device cpu --tiny        # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import bench
import peers
import torch
from machine import processor
from torch import Tensor, nn

import pyg_se3
from pyg_se3 import Fiber
from pyg_se3._amp import AMP_DTYPES
from pyg_se3.graph import complete_edge_index
from pyg_se3.models import SE3Transformer
from pyg_se3.nn import global_pool

RESULTS = bench.RESULTS / "gpu"
# The SE3Transformer variants of bench.py that the forward part can run ("+checkpoint": bounded memory).
MODELS = [name for name in bench.OUR_MODELS if name.split("+")[0] == "SE3Transformer"]
DEFAULT_SIZES = [64, 128, 256, 512, 1024, 2048, 4096, 8192]


@dataclasses.dataclass(frozen=True)
class QM9Setting:
    """The training part's model and batches (defaults: NVIDIA's QM9 setting, at QM9's mean molecule size).

    Attributes
    ----------
    batch_size, nodes_per_graph
        Graphs per batch and nodes per graph (QM9: 18 atoms on average, hydrogens included).
    node_features, edge_features
        Invariant inputs per node (fiber ``{0: node_features}``) and per edge (``edge_attr``), as NVIDIA's
        (6 atom features, 4 bond types).
    num_layers, max_degree, channels, num_heads, channels_div
        Attention layers; hidden degrees ``0..max_degree`` with ``channels`` channels each; heads; key/value
        channel divisor.
    """

    batch_size: int = 240
    nodes_per_graph: int = 18
    node_features: int = 6
    edge_features: int = 4
    num_layers: int = 7
    max_degree: int = 3
    channels: int = 32
    num_heads: int = 8
    channels_div: int = 2

    @property
    def pooled(self) -> int:
        """Output scalars per node, pooled per graph into the MLP head (NVIDIA: degrees x channels)."""
        return (self.max_degree + 1) * self.channels


QM9 = QM9Setting()
# Smoke run (--tiny): both parts at sizes that take seconds on one CPU thread.
TINY_SIZES = [16, 32]
TINY_FORWARD = {"max_degree": 1, "channels": 8}
TINY_QM9 = QM9Setting(batch_size=4, nodes_per_graph=6, num_layers=2, max_degree=1, channels=8, num_heads=2)

# NVIDIA's own figures for their implementation (DGL), quoted from the README of NVIDIA DeepLearningExamples,
# DGLPyTorch/DrugDiscovery/SE3Transformer, "Training performance: NVIDIA DGX A100 (8x A100 80GB)", 1 GPU, batch 240:
# 2.21 (TF32) and 2.92 (mixed precision) molecules per millisecond, averaged over five entire training epochs after a
# warm-up epoch, PyTorch 21.07 NGC container. Compare TF32 with a --tf32 run of ours.
NVIDIA_QM9_PUBLISHED = [
    {"precision": "TF32", "graphs_per_s": 2210.0},
    {"precision": "mixed precision", "graphs_per_s": 2920.0},
]
NVIDIA_QM9_SOURCE = (
    "NVIDIA's published figures for their DGL implementation (not measured here): NVIDIA DeepLearningExamples, "
    "DGLPyTorch/DrugDiscovery/SE3Transformer README, training performance on one A100 80GB (DGX A100), batch 240, "
    "PyTorch 21.07 NGC container, averaged over five entire training epochs after a warm-up epoch. Their "
    "QM9 graphs are the molecules' bonds (DGL's QM9EdgeDataset), far fewer edges than the complete graphs here, "
    "with bases precomputed once before training (`--precompute_bases`)."
)


# ---------------------------------------------------------------------------------------------- device helpers
def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """Free cached blocks and start a new peak of ``torch.cuda.max_memory_allocated`` (CUDA only)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_gb(device: torch.device, peak: bool) -> float | None:
    """Allocated memory on ``device`` in GB, now or at its peak since :func:`reset_peak_memory` (``None`` off CUDA)."""
    if device.type != "cuda":
        return None
    return (torch.cuda.max_memory_allocated(device) if peak else torch.cuda.memory_allocated(device)) / 1e9


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device (or an allocator on it) running out of memory."""
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "alloc_failed" in message)


def time_steps(
    step: Callable[[], object], device: torch.device, warmup: int, repeats: int
) -> tuple[list[float], float]:
    """Run ``step`` ``warmup`` times, then ``repeats`` timed times.

    On CUDA each timed step is bracketed by CUDA events on the current stream (no synchronisation between steps);
    elsewhere by ``time.perf_counter``.

    Parameters
    ----------
    step
        One step (e.g. forward+backward).
    device
        Where it runs.
    warmup, repeats
        Untimed and timed steps.

    Returns
    -------
    tuple
        The ``repeats`` step times in seconds, and the wall time of the first warm-up step (compilation, if any,
        included; ``nan`` without warm-up).
    """
    first = math.nan
    for i in range(warmup):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i == 0:
            first = time.perf_counter() - start
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        for begin, end in events:
            begin.record()
            step()
            end.record()
        torch.cuda.synchronize(device)
        return [begin.elapsed_time(end) / 1e3 for begin, end in events], first
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times, first


def autocast(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``amp``'s dtype (``"bf16"``, ``"fp16"``) on ``device``'s type; no-op for ``None``."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])


def precision_name(amp: str | None) -> str:
    """``"float32"`` or ``"autocast <dtype>"``."""
    return "float32" if amp is None else f"autocast {amp}"


def _failure(error: BaseException) -> str:
    """A result row's ``error``: ``"out of memory"`` or ``"failed: <type>: <message>"`` (first line, shortened)."""
    if is_out_of_memory(error):
        return "out of memory"
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"failed: {type(error).__name__}: {first_line[:200]}"


# ---------------------------------------------------------------------------------------------- part 1: forward
def to_device(inputs: peers.Inputs, device: torch.device) -> peers.Inputs:
    """``bench.make_inputs``'s problem on ``device``, with ``pos`` a leaf that requires grad."""
    return dataclasses.replace(
        inputs,
        pos=inputs.pos.detach().to(device).requires_grad_(True),
        x=inputs.x.to(device),
        edge_index=inputs.edge_index.to(device),
    )


def measure_forward(
    model_name: str,
    num_nodes: int,
    device: torch.device,
    amp: str | None = None,
    compiled: bool = False,
    max_degree: int = 2,
    channels: int = 32,
    warmup: int = 3,
    repeats: int = 10,
) -> dict:
    """Forward+backward time and peak memory of one of ``MODELS`` on one kNN problem of ``num_nodes`` points.

    The inputs and the model are ``bench.make_inputs(num_nodes, "knn")`` and ``bench.build_ours`` (NVIDIA's
    configuration at ``max_degree=2``, ``channels=32``), moved to ``device``.

    Parameters
    ----------
    model_name
        One of ``MODELS``.
    num_nodes
        Points ``N``.
    device
        Where to run.
    amp
        ``None`` (float32), ``"bf16"`` or ``"fp16"`` (the forward under ``torch.autocast``).
    compiled
        Run through ``torch.compile(fullgraph=True)`` (after ``torch.compiler.reset()``: compiled for this N).
    max_degree, channels
        Hidden degrees ``0..max_degree`` with ``channels`` channels each.
    warmup, repeats
        Untimed and timed steps.

    Returns
    -------
    dict
        The row: configuration, edges, parameters, median and fastest step times (s), the first step (s; for a
        compiled model, compilation included), peak and base (model and inputs) memory in GB (``None`` off CUDA).
    """
    torch.manual_seed(0)
    inputs = to_device(bench.make_inputs(num_nodes, "knn"), device)
    workload = bench.build_ours(model_name, inputs, max_degree, channels)
    module = workload.module.to(device)
    if compiled:
        torch.compiler.reset()
    forward = torch.compile(module, fullgraph=True) if compiled else module
    x, pos, edge_index = inputs.x, inputs.pos, inputs.edge_index

    def step() -> None:
        with autocast(device, amp):
            out = forward(x, pos, edge_index)
        out.float().square().sum().backward()
        module.zero_grad(set_to_none=True)
        pos.grad = None

    reset_peak_memory(device)
    base = memory_gb(device, peak=False)
    times, first = time_steps(step, device, warmup, repeats)
    return {
        "model": model_name,
        "precision": precision_name(amp),
        "compiled": compiled,
        "N": num_nodes,
        "E": workload.num_edges,
        "degrees": f"0..{max_degree}",
        "channels": channels,
        "parameters": sum(p.numel() for p in module.parameters()),
        "forward_backward_s": statistics.median(times),
        "fastest_s": min(times),
        "first_step_s": first,
        "peak_GB": memory_gb(device, peak=True),
        "base_GB": base,
    }


def forward_variants(amp: str | None, compile_too: bool) -> list[tuple[str | None, bool]]:
    """(amp, compiled) pairs to measure: float32 eager, and with ``amp`` / ``compile_too`` those too."""
    precisions = [None] + ([amp] if amp else [])
    return [(p, c) for c in [False, *([True] if compile_too else [])] for p in precisions]


def sweep_forward(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Every model and variant over ``args.sizes`` (smallest first), each series stopping at its first failure."""
    rows = []
    for model_name in args.models:
        for amp, compiled in forward_variants(args.amp, args.compile):
            for n in sorted(args.sizes):
                config = {"model": model_name, "precision": precision_name(amp), "compiled": compiled, "N": n}
                error = None
                try:
                    row = measure_forward(
                        model_name, n, device, amp, compiled, args.max_degree, args.channels, args.warmup, args.repeats
                    )
                except (RuntimeError, MemoryError) as caught:  # OutOfMemoryError and compile errors are these
                    error = _failure(caught)
                reset_peak_memory(device)  # the failed point's tensors are gone with its frames
                if error is not None:
                    rows.append({**config, "error": error})
                    print(f"{_label(config)} N={n:6d}  {error}", flush=True)
                    break
                rows.append(row)
                print(
                    f"{_label(row)} N={n:6d} E={row['E']:8d}  fwd+bwd {row['forward_backward_s'] * 1e3:9.2f} ms"
                    f"  peak {_gb(row['peak_GB'])}",
                    flush=True,
                )
    return rows


def _label(row: dict) -> str:
    return f"{row['model']:26s} {row['precision']:14s} {'compiled' if row['compiled'] else 'eager':8s}"


def _gb(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f} GB"


# ---------------------------------------------------------------------------------------------- part 2: training
class QM9Regressor(nn.Module):
    """NVIDIA's QM9 network in pyg_se3: ``SE3Transformer`` to ``setting.pooled`` scalars per node, max-pooled per
    graph (:func:`~pyg_se3.nn.global_pool`, number of graphs given), then ``Linear -> ReLU -> Linear`` to one
    number per graph.

    Parameters
    ----------
    setting
        Sizes (:class:`QM9Setting`).
    """

    def __init__(self, setting: QM9Setting) -> None:
        super().__init__()
        self.backbone = SE3Transformer(
            Fiber({0: setting.node_features}),
            Fiber.create(setting.max_degree + 1, setting.channels),
            Fiber({0: setting.pooled}),
            num_layers=setting.num_layers,
            num_heads=setting.num_heads,
            channels_div=setting.channels_div,
            edge_dim=setting.edge_features,
        )
        self.pooled = Fiber({0: setting.pooled})
        self.head = nn.Sequential(nn.Linear(setting.pooled, setting.pooled), nn.ReLU(), nn.Linear(setting.pooled, 1))

    def forward(
        self, x: Tensor, pos: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int
    ) -> Tensor:
        """``[num_graphs]`` predictions of the graphs of ``batch``."""
        nodes = self.backbone(x, pos, edge_index, edge_attr)
        return self.head(global_pool(nodes, batch, self.pooled, "max", num_graphs)).squeeze(-1)


def qm9_batch(setting: QM9Setting, device: torch.device, seed: int = 0) -> dict[str, Tensor]:
    """One random batch of QM9-sized, fully connected molecules.

    Parameters
    ----------
    setting
        Batch size and graph size.
    device
        Where the tensors go.
    seed
        Seed of the positions, features and targets.

    Returns
    -------
    dict
        ``x [N, node_features]`` (one-hot atom types), ``pos [N, 3]`` (Å-scale, ~1.5 Å spread),
        ``edge_index [2, E]`` (every ordered pair of distinct nodes of a graph), ``edge_attr [E, edge_features]``
        (one-hot bond types), ``batch [N]`` and ``y [B]`` (standard-normal targets).
    """
    g = torch.Generator().manual_seed(seed)
    num_graphs, n = setting.batch_size, setting.nodes_per_graph
    batch = torch.arange(num_graphs).repeat_interleave(n)
    edge_index = complete_edge_index(batch)
    x = nn.functional.one_hot(torch.randint(setting.node_features, (batch.numel(),), generator=g))
    edge_attr = nn.functional.one_hot(torch.randint(setting.edge_features, (edge_index.shape[1],), generator=g))
    tensors = {
        "x": x.float(),
        "pos": 1.5 * torch.randn(batch.numel(), 3, generator=g),
        "edge_index": edge_index,
        "edge_attr": edge_attr.float(),
        "batch": batch,
        "y": torch.randn(num_graphs, generator=g),
    }
    return {name: t.to(device) for name, t in tensors.items()}


def measure_training(
    setting: QM9Setting,
    device: torch.device,
    amp: str | None = None,
    compiled: bool = False,
    warmup: int = 5,
    repeats: int = 20,
) -> dict:
    """Training throughput of :class:`QM9Regressor`: Adam steps (lr 1e-3) on the L1 loss of one random batch.

    Parameters
    ----------
    setting
        Model and batch sizes.
    device
        Where to run.
    amp
        ``None`` (float32), ``"bf16"`` or ``"fp16"`` (forward and loss under ``torch.autocast``; fp16 with a
        ``torch.amp.GradScaler``).
    compiled
        Run the model through ``torch.compile`` (after ``torch.compiler.reset()``).
    warmup, repeats
        Untimed and timed steps.

    Returns
    -------
    dict
        The row: configuration, nodes and edges per batch, parameters, graphs per second (batch size over the
        median step), median and fastest step (s), first step (s), peak and base memory in GB (``None`` off
        CUDA), and the final loss.
    """
    torch.manual_seed(0)
    data = qm9_batch(setting, device)
    model = QM9Regressor(setting).to(device)
    if compiled:
        torch.compiler.reset()
    forward = torch.compile(model) if compiled else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    inputs = [data[name] for name in ("x", "pos", "edge_index", "edge_attr", "batch")]
    losses: list[Tensor] = []

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = nn.functional.l1_loss(forward(*inputs, setting.batch_size).float(), data["y"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses[:] = [loss.detach()]

    reset_peak_memory(device)
    base = memory_gb(device, peak=False)
    times, first = time_steps(step, device, warmup, repeats)
    median = statistics.median(times)
    return {
        "model": "QM9Regressor",
        "precision": precision_name(amp),
        "compiled": compiled,
        "batch_size": setting.batch_size,
        "nodes_per_graph": setting.nodes_per_graph,
        "N": data["x"].shape[0],
        "E": data["edge_index"].shape[1],
        "layers": setting.num_layers,
        "degrees": f"0..{setting.max_degree}",
        "channels": setting.channels,
        "heads": setting.num_heads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "graphs_per_s": setting.batch_size / median,
        "step_s": median,
        "fastest_s": min(times),
        "first_step_s": first,
        "peak_GB": memory_gb(device, peak=True),
        "base_GB": base,
        "loss": float(losses[0]) if losses else math.nan,
    }


def sweep_training(args: argparse.Namespace, device: torch.device, setting: QM9Setting) -> list[dict]:
    """Training throughput in float32 and under ``args.amp`` (bf16 when not given), eager and, with ``--compile``,
    compiled; a failure (out of memory included) is recorded in its row and the others still run."""
    rows = []
    for amp, compiled in forward_variants(args.amp or "bf16", args.compile):
        config = {"model": "QM9Regressor", "precision": precision_name(amp), "compiled": compiled}
        error = None
        try:
            row = measure_training(setting, device, amp, compiled, args.warmup, args.train_repeats)
        except (RuntimeError, MemoryError) as caught:
            error = _failure(caught)
        reset_peak_memory(device)
        if error is not None:
            rows.append({**config, "error": error})
            print(f"{_label(config)} training  {error}", flush=True)
            continue
        rows.append(row)
        print(
            f"{_label(row)} training  {row['graphs_per_s']:9.1f} graphs/s  step {row['step_s'] * 1e3:8.2f} ms"
            f"  peak {_gb(row['peak_GB'])}",
            flush=True,
        )
    return rows


# ---------------------------------------------------------------------------------------------- results
def environment(device: torch.device) -> dict:
    """Device name, library versions and precision settings of this run."""
    info: dict = {
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pyg_se3": pyg_se3.__version__,
        "python": platform.python_version(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info |= {
            "device": properties.name,
            "device_memory_GB": properties.total_memory / 1e9,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
    else:
        info |= {
            "device": processor(),
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
        }
    return info


def _number(value: float | None, digits: int) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    """The report: environment, command, and one table per part (NVIDIA's published training figures apart)."""
    env = results["environment"]
    clock = "CUDA events" if env["device_type"] == "cuda" else "`time.perf_counter`"
    lines = [
        "# pyg_se3 GPU benchmark",
        "",
        f"Command: `{results['command']}`  ",
        f"Device: {env['device']}; torch {env['torch']}, CUDA {env['cuda'] or '—'}, pyg_se3 {env['pyg_se3']}; "
        f"float32 matmul precision `{env['float32_matmul_precision']}`.  ",
        f"Times: median of {results['repeats']} steps (training: {results['train_repeats']}) after "
        f"{results['warmup']} warm-up step(s), {clock}; peak memory: `torch.cuda.max_memory_allocated`, reset "
        "before every point (model and inputs included; — off CUDA).",
    ]
    if results["tiny"]:
        lines += ["", "**Smoke run (`--tiny`): tiny sizes, not a benchmark.**"]
    forward_rows = results["forward"]
    if forward_rows:
        lines += [
            "",
            "## Forward+backward",
            "",
            "`SE3Transformer` at NVIDIA's configuration (`benchmarks/bench.py`'s model and inputs), kNN graph "
            f"K = {bench.K}, loss the sum of squares of the output, gradients to the parameters and positions.",
            "",
            "| model | precision | compiled | N | E | forward+backward (ms) | fastest (ms) | first step (s) | "
            "peak memory (GB) |",
            "|" + "---|" * 9,
        ]
        for r in forward_rows:
            head = f"| {r['model']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} | {r['N']} |"
            if "error" in r:
                lines.append(f"{head} — | {r['error']} | — | — | — |")
                continue
            lines.append(
                f"{head} {r['E']} | {_number(r['forward_backward_s'] * 1e3, 2)} | {_number(r['fastest_s'] * 1e3, 2)}"
                f" | {_number(r['first_step_s'], 2)} | {_number(r['peak_GB'], 3)} |"
            )
    train_rows = results["train"]
    if train_rows:
        setting = results["qm9"]
        lines += [
            "",
            "## Training throughput, QM9-sized graphs",
            "",
            f"Batches of {setting['batch_size']} random graphs of {setting['nodes_per_graph']} nodes, fully "
            f"connected; {setting['num_layers']} attention layers, degrees 0..{setting['max_degree']} x "
            f"{setting['channels']} channels, {setting['num_heads']} heads, channels_div {setting['channels_div']}, "
            "max pooling and an MLP head; Adam on the L1 loss against random targets; the batch is on the device "
            "before timing (no data loading).",
            "",
            "| implementation | precision | compiled | graphs/s | step (ms) | first step (s) | peak memory (GB) |",
            "|" + "---|" * 7,
        ]
        for r in train_rows:
            head = f"| pyg_se3 (this run) | {r['precision']} | {'yes' if r['compiled'] else 'no'} |"
            if "error" in r:
                lines.append(f"{head} {r['error']} | — | — | — |")
                continue
            lines.append(
                f"{head} {_number(r['graphs_per_s'], 1)} | {_number(r['step_s'] * 1e3, 2)} | "
                f"{_number(r['first_step_s'], 2)} | {_number(r['peak_GB'], 3)} |"
            )
        for published in results["nvidia_published"]:
            lines.append(
                f"| NVIDIA's published figure (DGL, A100 80GB; not measured here) | {published['precision']} | no | "
                f"{published['graphs_per_s']:,.0f} | — | — | — |"
            )
        lines += ["", results["nvidia_source"]]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out: Path) -> None:
    """``gpu.json`` and ``gpu.md`` in ``out`` (created if needed)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "gpu.md").write_text(markdown(results))


# ---------------------------------------------------------------------------------------------- command line
def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check the command line (refuses a CUDA run without CUDA, and a CPU run without ``--tiny``)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N; cpu only with --tiny (a smoke run)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes and models: a smoke run in seconds")
    parser.add_argument("--parts", nargs="+", default=["forward", "train"], choices=["forward", "train"])
    parser.add_argument("--models", nargs="+", default=["SE3Transformer"], choices=MODELS, help="forward part")
    parser.add_argument("--sizes", nargs="+", type=int, help=f"forward part's N (default {DEFAULT_SIZES})")
    parser.add_argument("--max-degree", type=int, help="forward part's hidden degrees 0..L (default 2)")
    parser.add_argument("--channels", type=int, help="forward part's channels per degree (default 32)")
    parser.add_argument(
        "--amp",
        nargs="?",
        const="bf16",
        choices=sorted(AMP_DTYPES),
        help="also measure under torch.autocast to this dtype (bf16 without a value); the training part always "
        "measures float32 and autocast (bf16 unless given)",
    )
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile'd models")
    parser.add_argument(
        "--tf32", action="store_true", help="float32 matmuls in TF32 (torch.set_float32_matmul_precision('high'))"
    )
    parser.add_argument("--warmup", type=int, help="untimed steps before each point (default 3; 1 with --tiny)")
    parser.add_argument("--repeats", type=int, help="timed steps, forward part (default 10; 2 with --tiny)")
    parser.add_argument("--train-repeats", type=int, help="timed steps, training part (default 20; 2 with --tiny)")
    parser.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads); default: torch's")
    parser.add_argument("--out", type=Path, help=f"folder for gpu.json and gpu.md (default {RESULTS})")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"CUDA is not available (torch {torch.__version__}, CUDA build {torch.version.cuda}): this benchmark "
            "measures a GPU. For a smoke run of the script on the CPU: --device cpu --tiny; CPU benchmarks are "
            "benchmarks/bench.py and benchmarks/compile.py"
        )
    if device.type != "cuda" and not args.tiny:
        parser.error(
            f"--device {args.device}: this benchmark measures a CUDA device; off CUDA only --tiny (a smoke run) is "
            "accepted. CPU benchmarks are benchmarks/bench.py and benchmarks/compile.py"
        )
    tiny = args.tiny
    defaults = {
        "sizes": TINY_SIZES if tiny else DEFAULT_SIZES,
        "max_degree": TINY_FORWARD["max_degree"] if tiny else 2,
        "channels": TINY_FORWARD["channels"] if tiny else 32,
        "warmup": 1 if tiny else 3,
        "repeats": 2 if tiny else 10,
        "train_repeats": 2 if tiny else 20,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("repeats", "train_repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup: expected >= 0, got {args.warmup}")
    if min(args.sizes) < 2:
        parser.error(f"--sizes: expected >= 2, got {min(args.sizes)}")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    args.device = device
    return args


def run(argv: list[str] | None = None) -> tuple[dict, Path]:
    """Run the benchmark for a command line; write and return its results.

    Parameters
    ----------
    argv
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    tuple
        The results (as in ``gpu.json``) and the folder they were written to.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = args.device
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.set_float32_matmul_precision("high")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    setting = TINY_QM9 if args.tiny else QM9
    results: dict = {
        "command": f"python benchmarks/gpu.py {shlex.join(argv)}".strip(),
        "environment": environment(device),
        "tiny": args.tiny,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "train_repeats": args.train_repeats,
        "forward_configuration": {
            "num_layers": peers.NUM_LAYERS,
            "num_heads": peers.NUM_HEADS,
            "channels_div": peers.CHANNELS_DIV,
            "k": bench.K,
            "max_degree": args.max_degree,
            "channels": args.channels,
        },
        "qm9": dataclasses.asdict(setting),
        "forward": sweep_forward(args, device) if "forward" in args.parts else [],
        "train": sweep_training(args, device, setting) if "train" in args.parts else [],
        "nvidia_published": NVIDIA_QM9_PUBLISHED,
        "nvidia_source": NVIDIA_QM9_SOURCE,
    }
    out = args.out or (Path(tempfile.mkdtemp(prefix="pyg_se3_gpu_smoke_")) if args.tiny else RESULTS)
    write_results(results, out)
    print(f"wrote {out / 'gpu.md'} and gpu.json", flush=True)
    return results, out


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
