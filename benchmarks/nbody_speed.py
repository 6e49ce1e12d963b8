"""How fast an N-body epoch trains, and where the time goes: the charged 5-body task of ``pyg-se3 train --task
nbody`` (EGNN's protocol: 3,000 training systems, 2,000 validation and 2,000 test systems evaluated), one model,
several ways of running it, and a peer on the same systems in the same run.

For each configuration (batch size, threads, evaluation every k epochs and its batch size, loader, optimiser
step) it measures, after one warm-up pass:

- training throughput: systems per second of batching, forward, backward and optimiser steps over
  ``--train-systems`` systems; the step is the trainer's own (``trainer``: fused AdamW, one gradient norm for the
  finiteness check and the clipping) or AdamW's loop over the parameter tensors with a check per gradient
  (``loop``);
- evaluation throughput: systems per second of batching and forward passes without gradients;
- the time of making the training batches alone (collation), to tell overhead from arithmetic

(each throughput the fastest of five timed passes, every pass's kept in the JSON beside it; the passes of all
configurations, and the peer's, are taken in turn, round after round, so that the machine's drift over the run
reaches every row alike), and derives the wall time of one epoch: 3,000 training systems plus, every ``k``
epochs, 4,000 evaluated ones, plus the trainer's files (``last.pt`` and the metrics at every epoch, ``loss.png``
and ``best.pt`` at every evaluated one; each write timed for the row's model, the fastest of three). The loaders
are PyG's ``DataLoader`` (``pyg``) and :class:`pyg_se3.loader.FixedSizeLoader` (``fixed``: the systems collated
once, batches cut out by indexing; the trainer's default for such data), which give the same batches.

The peer is EGNN (``egnn-pytorch``, the ``bench`` extra; `make bench-nbody` installs it) at the EGNN paper's
N-body size (4 layers, 64 features; inputs: speeds and charges, charge products on the edges; positions updated by
every layer), trained on the same batches with the same loss and optimiser in the last configuration (batch size,
threads, evaluation, loader); it is skipped with a message when not installed. Writes ``--out/nbody_speed.json``
and ``nbody_speed.md``.

    python benchmarks/nbody_speed.py                          # the 8 x 1 N-body model (16 channels)
    python benchmarks/nbody_speed.py --kernel depthwise --channels 32 --integrator velocity
    python benchmarks/nbody_speed.py --device cuda --layers 2 --integrator velocity --inverse-distance 0.1 \
        --inverse-powers 2 --inverse-scaled                  # the best N-body model, on a GPU

With ``--device cuda`` every batch is moved to the GPU as the trainer does (``batch.to(device)`` per step), each
timed pass ends with a synchronisation, and ``threads`` is the number of CPU threads beside the GPU. ``--amp bf16``
(or ``fp16``) adds the last configuration once more with the training steps under autocast, as ``pyg-se3 train
--amp`` runs them (evaluation stays float32, as the trainer's does); the peer is compared with the last float32
row.

    python benchmarks/nbody_speed.py --device cuda --amp bf16   # float32 and bf16 training steps, on a GPU
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from gpu import synchronize
from machine import processor
from torch import nn
from torch_geometric.loader import DataLoader

from pyg_se3._amp import AMP_DTYPES
from pyg_se3.loader import FixedSizeGraphs, FixedSizeLoader
from pyg_se3.runtime.tasks import ModelOptions, get_task
from pyg_se3.runtime.training import TrainConfig, Trainer, atomic_save

#: (name, batch size, threads, evaluate every k epochs, loader, optimiser step, evaluation batch size)
CONFIGURATIONS = [
    ("batch 16, 1 thread, evaluation every epoch in batches of 16, loop AdamW", 16, 1, 1, "pyg", "loop", 16),
    ("batch 16, 1 thread, evaluation every epoch in batches of 16", 16, 1, 1, "pyg", "trainer", 16),
    ("batch 16, 1 thread, evaluation every epoch", 16, 1, 1, "pyg", "trainer", 256),
    ("batch 100, 1 thread, evaluation every epoch", 100, 1, 1, "pyg", "trainer", 256),
    ("batch 100, 1 thread, evaluation every 10 epochs", 100, 1, 10, "pyg", "trainer", 256),
    ("batch 100, 2 threads, evaluation every 10 epochs", 100, 2, 10, "pyg", "trainer", 256),
    ("batch 100, 2 threads, evaluation every 10 epochs, collated once", 100, 2, 10, "fixed", "trainer", 256),
]
TRAIN, EVALUATED = 3000, 4000  # systems per epoch: the training split, and validation + test
REPEATS = 5  # timed passes per throughput, after the warm-up one
HISTORY = 100  # epochs of metrics the trainer has written when its bookkeeping is timed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--kernel", choices=["full", "depthwise"], default="full")
    parser.add_argument("--parity", action="store_true", help="only the kernel paths that respect parity (E(3))")
    parser.add_argument("--integrator", choices=["position", "velocity"], default="position")
    parser.add_argument("--inverse-distance", type=float, default=0.0, help="softening length (0: off)")
    parser.add_argument("--inverse-powers", type=int, default=1, help="powers 1 .. P of the inverse distances")
    parser.add_argument("--inverse-scaled", action="store_true", help="the power k scaled by s^k, into (0, 1]")
    parser.add_argument("--train-systems", type=int, default=600, help="systems per throughput measurement")
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="benchmarks/results/nbody_speed")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, ...")
    parser.add_argument(
        "--amp",
        choices=sorted(AMP_DTYPES),
        help="also time the last configuration with its training steps under autocast to this dtype",
    )
    return parser.parse_args(argv)


class EGNNPeer(nn.Module):
    """EGNN (``egnn-pytorch``) at the EGNN paper's N-body size, on our batches of 5-body systems.

    Node inputs: each particle's speed and charge, embedded to ``features``; edge inputs: the product of the two
    charges; every layer updates the features and the positions (the complete graph, dense as ``egnn-pytorch``
    takes it); the prediction is the positions after the last layer.
    """

    def __init__(self, layers: int = 4, features: int = 64) -> None:
        super().__init__()
        from egnn_pytorch import EGNN

        self.embed = nn.Linear(2, features)
        self.layers = nn.ModuleList(EGNN(dim=features, edge_dim=1, m_dim=features) for _ in range(layers))

    def forward(self, batch) -> torch.Tensor:
        systems = batch.num_graphs
        pos, vel, charge = (batch[key].view(systems, -1, batch[key].shape[-1]) for key in ("pos", "vel", "charge"))
        features = self.embed(torch.cat([vel.norm(dim=-1, keepdim=True), charge], dim=-1))
        edges = (charge * charge.transpose(1, 2)).unsqueeze(-1)
        for layer in self.layers:
            features, pos = layer(features, pos, edges=edges)
        return pos.reshape(-1, 3)


def peer_missing() -> str | None:
    """``None`` when ``egnn-pytorch`` can be imported, else why not (without importing it)."""
    if importlib.util.find_spec("egnn_pytorch") is None:
        return "egnn-pytorch is not installed (the bench extra: `make bench-nbody` installs it)"
    return None


def timed_pass(step, make_batches, device: torch.device):
    """A function running ``step`` over every batch ``make_batches()`` makes (batching and the copy to ``device``
    included) and returning the systems per second."""

    def one_pass() -> float:
        start = time.perf_counter()
        count = 0
        for batch in make_batches():
            step(batch.to(device))
            count += batch.num_graphs
        synchronize(device)
        return count / (time.perf_counter() - start)

    return one_pass


class _Loss:
    """``loss(batch)`` as a :class:`~pyg_se3.runtime.training.Task` for the trainer (the model is bound)."""

    def __init__(self, loss) -> None:
        self.loss_of_batch = loss

    def loss(self, model: nn.Module, batch) -> torch.Tensor:
        return self.loss_of_batch(batch)


def training_step(model: nn.Module, loss, kind: str, device: torch.device, out: str, amp: str | None = None):
    """One optimisation step of ``loss(batch)`` with gradient-norm clipping at 1 and a check that the loss and
    gradients are finite: ``"trainer"``, :meth:`Trainer.step <pyg_se3.runtime.training.Trainer.step>` itself
    (fused AdamW; one gradient norm for the check and the clipping; with ``amp``, under autocast to that dtype);
    ``"loop"``, AdamW's loop over the parameter tensors, a finiteness check per gradient and ``clip_grad_norm_``."""
    model.train()
    if kind == "trainer":
        config = TrainConfig(lr=1e-4, device=str(device), out=out, amp=amp)
        trainer = Trainer(model, _Loss(loss), [], None, config)
        return lambda batch: trainer.step(batch, 0, 0)
    if amp is not None:
        raise ValueError(f"amp: only the trainer's step runs under autocast, not the {kind!r} one")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=False)

    def step(batch) -> None:
        optimizer.zero_grad(set_to_none=True)
        value = loss(batch)
        value.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        checks = [value.detach().isfinite(), *(grad.isfinite().all() for grad in grads)]
        if torch.stack(checks).all():
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()

    return step


def evaluation_step(model: nn.Module, predict):
    """One forward pass of ``predict(batch)`` without gradients."""

    def step(batch) -> None:
        model.eval()
        with torch.no_grad():
            predict(batch)

    return step


def history_row(epoch: int, eval_every: int) -> dict[str, float]:
    """A row of the N-body task's metrics history as the trainer writes it: the validation and test metrics at
    evaluated epochs only."""
    row = {"epoch": epoch, "lr": 1e-3, "train_loss": 1 / (epoch + 1)}
    if (epoch + 1) % eval_every == 0:
        for split in ("val", "test"):
            row |= {f"{split}_{name}": 1 / (epoch + 2) for name in ("loss", "mse", "constant_mse", "linear_mse")}
    return row


def bookkeeping_time(model: nn.Module, loss, eval_every: int, device: torch.device, out: str) -> float:
    """Seconds per epoch that :meth:`Trainer.fit <pyg_se3.runtime.training.Trainer.fit>` spends on its files for
    ``model``: ``last.pt`` and the metrics files at every epoch; at every evaluated epoch, ``loss.png`` and, as
    when validation improves, ``best.pt`` (a history of ``HISTORY`` epochs, the optimiser's moments filled in;
    each the fastest of three writes). ``model`` itself is left alone."""
    config = TrainConfig(lr=1e-4, device=str(device), out=out, eval_every=eval_every)
    trainer = Trainer(copy.deepcopy(model), _Loss(loss), [], None, config)
    for parameter in trainer.model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    trainer.optimizer.step()  # the moments exist, as in a checkpoint written after training steps
    trainer.history = [history_row(epoch, eval_every) for epoch in range(HISTORY)]

    def fastest(write: Callable[[], None]) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            write()
            times.append(time.perf_counter() - start)
        return min(times)

    checkpoint = fastest(lambda: atomic_save(trainer.state(), Path(out) / "last.pt"))
    metrics = fastest(trainer.write_metrics)
    plot = fastest(trainer.plot)
    return checkpoint + metrics + (checkpoint + plot) / eval_every


def batches(loader: str, systems, batch_size: int, shuffle: bool):
    """A function making a fresh loader of ``systems`` (a ``FixedSizeGraphs`` for ``loader="fixed"``)."""
    kind = FixedSizeLoader if loader == "fixed" else DataLoader
    return lambda: kind(systems, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(0))


def collation_time(make_batches) -> float:
    """Seconds per training epoch spent making the batches alone."""
    start = time.perf_counter()
    count = sum(batch.num_graphs for batch in make_batches())
    return (time.perf_counter() - start) * TRAIN / count


@dataclass
class Row:
    """One configuration of one model: its settings, its two timed passes and their throughputs."""

    name: str
    model: nn.Module
    settings: dict[str, Any]
    train: Callable[[], float]
    evaluate: Callable[[], float]
    make_train_batches: Callable
    bookkeeping_s: float = 0.0
    train_rates: list[float] = field(default_factory=list)
    eval_rates: list[float] = field(default_factory=list)


def prepare(
    name: str,
    model: nn.Module,
    loss,
    predict,
    sources: dict,
    batch_size: int,
    threads: int,
    eval_every: int,
    loader: str,
    optimiser: str,
    eval_batch: int,
    device: torch.device,
    out: str,
    amp: str | None = None,
) -> Row:
    """The row of ``model`` at one configuration, not yet timed (``out``: the trainer's scratch folder; ``amp``:
    the training steps' autocast dtype, or ``None``)."""
    settings = {
        "batch_size": batch_size,
        "threads": threads,
        "eval_every": eval_every,
        "loader": loader,
        "optimiser": optimiser,
        "eval_batch_size": eval_batch,
        "amp": amp,
    }
    make_train = batches(loader, sources[loader]["train"], batch_size, shuffle=True)
    make_eval = batches(loader, sources[loader]["val"], eval_batch, shuffle=False)
    train = timed_pass(training_step(model, loss, optimiser, device, out, amp), make_train, device)
    evaluate = timed_pass(evaluation_step(model, predict), make_eval, device)
    bookkeeping = bookkeeping_time(model, loss, eval_every, device, out)
    return Row(name, model, settings, train, evaluate, make_train, bookkeeping)


def measure(rows: list[Row], repeats: int = REPEATS) -> list[dict]:
    """Time every row's training and evaluation passes, the rows in turn, round after round (a warm-up round,
    then ``repeats`` timed ones): the machine's drift over the run reaches every row alike, and each throughput is
    the fastest of its passes (the least disturbed by the rest of the machine). Every pass starts from the
    weights the model had before the first, so every configuration trains and evaluates the same model."""
    weights = {id(row.model): copy.deepcopy(row.model.state_dict()) for row in rows}
    for timed in [False] + [True] * repeats:
        for row in rows:
            torch.set_num_threads(row.settings["threads"])
            row.model.load_state_dict(weights[id(row.model)])
            train_rate = row.train()
            row.model.load_state_dict(weights[id(row.model)])
            eval_rate = row.evaluate()
            if timed:
                row.train_rates.append(train_rate)
                row.eval_rates.append(eval_rate)
    return [summary(row) for row in rows]


def summary(row: Row) -> dict:
    """A timed row's throughputs (the fastest passes, and every timed pass's, in order) and the epoch they make."""
    train_rate, eval_rate = max(row.train_rates), max(row.eval_rates)
    epoch = TRAIN / train_rate + EVALUATED / eval_rate / row.settings["eval_every"] + row.bookkeeping_s
    print(f"{row.name}: train {train_rate:.0f}/s, eval {eval_rate:.0f}/s, epoch {epoch:.1f} s", flush=True)
    return {
        "configuration": row.name,
        **row.settings,
        "train_systems_per_s": train_rate,
        "eval_systems_per_s": eval_rate,
        "train_passes_systems_per_s": row.train_rates,
        "eval_passes_systems_per_s": row.eval_rates,
        "collation_s_per_epoch": collation_time(row.make_train_batches),
        "bookkeeping_s_per_epoch": row.bookkeeping_s,
        "epoch_s": epoch,
    }


def inverse_note(args: argparse.Namespace) -> str:
    """The edges' inverse-distance inputs, for the table's title ('' when off)."""
    if not args.inverse_distance:
        return ""
    scaled = ", scaled" if args.inverse_scaled else ""
    return f", inverse distances s={args.inverse_distance:g} powers 1..{args.inverse_powers}{scaled}"


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    options = ModelOptions(
        num_iterations=args.iterations,
        layers_per_iteration=args.layers,
        channels=args.channels,
        kernel=args.kernel,
        parity=args.parity,
        integrator=args.integrator,
        inputs="invariant",
        motion_edges=True,
        inverse_distance=args.inverse_distance,
        inverse_powers=args.inverse_powers,
        inverse_scaled=args.inverse_scaled,
    )
    task = get_task("nbody", options)
    sets = task.datasets(args.root)
    plain = {"train": sets["train"][: args.train_systems], "val": sets["val"][: args.train_systems]}
    start = time.perf_counter()
    collated = {split: FixedSizeGraphs(systems) for split, systems in plain.items()}
    collate_once_s = (time.perf_counter() - start) * TRAIN / (2 * args.train_systems)
    sources = {"pyg": plain, "fixed": collated}
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = task.build_model(task.displacement_scale(sets["train"])).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    loss = lambda batch: task.loss(model, batch)  # noqa: E731
    predict = lambda batch: task.predict(model, batch)  # noqa: E731
    missing = peer_missing()
    with tempfile.TemporaryDirectory() as scratch:
        pending = [
            prepare(name, model, loss, predict, sources, *configuration, device, scratch)
            for name, *configuration in CONFIGURATIONS
        ]
        if args.amp is not None:  # the last configuration again, its training steps under autocast
            name = f"{CONFIGURATIONS[-1][0]}, {args.amp} autocast"
            configuration = CONFIGURATIONS[-1][1:]
            pending.append(prepare(name, model, loss, predict, sources, *configuration, device, scratch, args.amp))
        if missing is None:  # the peer at the last configuration, timed in the same rounds
            torch.manual_seed(0)
            egnn = EGNNPeer().to(device)
            name = f"EGNN (egnn-pytorch {importlib.metadata.version('egnn-pytorch')}), " + CONFIGURATIONS[-1][0]
            mse = lambda batch: (egnn(batch) - batch.y).square().mean()  # noqa: E731
            pending.append(prepare(name, egnn, mse, egnn, sources, *CONFIGURATIONS[-1][1:], device, scratch))
        rows = measure(pending)
    baseline = rows[0]["epoch_s"]
    peer: dict[str, Any] = {"missing": missing}
    if missing is None:
        peer = rows.pop()
        peer["parameters"] = sum(p.numel() for p in egnn.parameters())
        last_float32 = [row for row in rows if row["amp"] is None][-1]
        peer["ours_over_peer_epoch"] = last_float32["epoch_s"] / peer["epoch_s"]
    else:
        print(f"peer skipped: {missing}", file=sys.stderr)
    for row in rows:
        row["speed_up"] = baseline / row["epoch_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["python benchmarks/nbody_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": {**vars(args), "parameters": parameters},
        "machine": {
            "processor": processor(),
            "cpus": torch.get_num_threads(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "torch": torch.__version__,
        "collate_once_s": collate_once_s,
        "rows": rows,
        "peer": peer,
    }
    (out / "nbody_speed.json").write_text(json.dumps(record, indent=1) + "\n")
    lines = [
        f"N-body epoch (3,000 training systems; 4,000 evaluated every k epochs), {parameters:,} parameters "
        f"({args.iterations} x {args.layers} layers, {args.channels} channels, {args.kernel} kernel"
        f"{', parity' if args.parity else ''}, "
        f"{args.integrator} integrator{inverse_note(args)}) on {record['machine']['device']}; collating the "
        f"3,000 systems once: {collate_once_s:.2f} s",
        "",
        "| configuration | train systems/s | eval systems/s | collation s/epoch | files s/epoch | epoch s | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['configuration']} | {r['train_systems_per_s']:.0f} | {r['eval_systems_per_s']:.0f} | "
        f"{r['collation_s_per_epoch']:.2f} | {r['bookkeeping_s_per_epoch']:.2f} | {r['epoch_s']:.1f} | "
        f"{r['speed_up']:.1f}x |"
        for r in rows
    ]
    if "epoch_s" in peer:
        lines += [
            f"| {peer['configuration']} ({peer['parameters']:,} parameters) | {peer['train_systems_per_s']:.0f} | "
            f"{peer['eval_systems_per_s']:.0f} | {peer['collation_s_per_epoch']:.2f} | "
            f"{peer['bookkeeping_s_per_epoch']:.2f} | {peer['epoch_s']:.1f} | "
            f"peer: ours take {peer['ours_over_peer_epoch']:.1f}x its epoch |"
        ]
    (out / "nbody_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
