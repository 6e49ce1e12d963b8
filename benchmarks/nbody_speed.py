"""How fast an N-body epoch trains, and where the time goes: the charged 5-body task of ``pyg-se3 train --task
nbody`` (EGNN's protocol: 3,000 training systems, 2,000 validation and 2,000 test systems evaluated), one model,
several ways of running it.

For each configuration (batch size, threads, evaluation every k epochs) it measures, after one warm-up pass:

- training throughput: systems per second of forward, backward and AdamW steps over ``--train-systems`` systems;
- evaluation throughput: systems per second of forward passes without gradients, in batches of 256;
- the time of collating the batches alone (PyG's ``DataLoader``), to tell overhead from arithmetic;

and derives the wall time of one epoch: 3,000 training systems plus, every ``k`` epochs, 4,000 evaluated ones.
Writes ``--out/nbody_speed.json`` and ``nbody_speed.md``.

    python benchmarks/nbody_speed.py                          # the best N-body model (8 x 1 layers, 16 channels)
    python benchmarks/nbody_speed.py --channels 32 --train-systems 300
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch_geometric.loader import DataLoader

from pyg_se3.runtime.tasks import ModelOptions, get_task

#: (name, batch size, threads, evaluate every k epochs)
CONFIGURATIONS = [
    ("batch 16, 1 thread, evaluation every epoch", 16, 1, 1),
    ("batch 100, 1 thread, evaluation every epoch", 100, 1, 1),
    ("batch 100, 1 thread, evaluation every 10 epochs", 100, 1, 10),
    ("batch 100, 2 threads, evaluation every 10 epochs", 100, 2, 10),
]
TRAIN, EVALUATED = 3000, 4000  # systems per epoch: the training split, and validation + test


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--kernel", choices=["full", "depthwise"], default="full")
    parser.add_argument("--integrator", choices=["position", "velocity"], default="position")
    parser.add_argument("--train-systems", type=int, default=600, help="systems per throughput measurement")
    parser.add_argument("--root", default="data")
    parser.add_argument("--out", default="benchmarks/results/nbody_speed")
    return parser.parse_args(argv)


def throughput(task, model, systems, batch_size: int, train: bool) -> float:
    """Systems per second of training steps (``train``) or of evaluation forward passes, after a warm-up."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4) if train else None
    batches = list(DataLoader(systems, batch_size=batch_size, shuffle=train, generator=torch.Generator()))

    def one_pass() -> None:
        for batch in batches:
            if train:
                optimizer.zero_grad()
                task.loss(model, batch).backward()
                optimizer.step()
            else:
                with torch.no_grad():
                    task.predict(model, batch)

    model.train(train)
    one_pass()
    start = time.perf_counter()
    one_pass()
    return len(systems) / (time.perf_counter() - start)


def collation_time(systems, batch_size: int) -> float:
    """Seconds per training epoch spent collating batches alone."""
    start = time.perf_counter()
    for _ in DataLoader(systems, batch_size=batch_size, shuffle=True):
        pass
    return (time.perf_counter() - start) * TRAIN / len(systems)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    options = ModelOptions(
        num_iterations=args.iterations,
        layers_per_iteration=args.layers,
        channels=args.channels,
        kernel=args.kernel,
        integrator=args.integrator,
        inputs="invariant",
        motion_edges=True,
    )
    task = get_task("nbody", options)
    sets = task.datasets(args.root)
    systems = sets["train"][: args.train_systems]
    torch.manual_seed(0)
    model = task.build_model(task.displacement_scale(sets["train"]))
    parameters = sum(p.numel() for p in model.parameters())
    rows = []
    for name, batch_size, threads, eval_every in CONFIGURATIONS:
        torch.set_num_threads(threads)
        train_rate = throughput(task, model, systems, batch_size, train=True)
        eval_rate = throughput(task, model, sets["val"][: args.train_systems], 256, train=False)
        epoch = TRAIN / train_rate + EVALUATED / eval_rate / eval_every
        rows.append(
            {
                "configuration": name,
                "batch_size": batch_size,
                "threads": threads,
                "eval_every": eval_every,
                "train_systems_per_s": train_rate,
                "eval_systems_per_s": eval_rate,
                "collation_s_per_epoch": collation_time(systems, batch_size),
                "epoch_s": epoch,
            }
        )
        print(f"{name}: train {train_rate:.0f}/s, eval {eval_rate:.0f}/s, epoch {epoch:.1f} s", flush=True)
    baseline = rows[0]["epoch_s"]
    for row in rows:
        row["speed_up"] = baseline / row["epoch_s"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(["python benchmarks/nbody_speed.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": {**vars(args), "parameters": parameters},
        "machine": {"processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads()},
        "torch": torch.__version__,
        "rows": rows,
    }
    (out / "nbody_speed.json").write_text(json.dumps(record, indent=1))
    lines = [
        f"N-body epoch (3,000 training systems; 4,000 evaluated every k epochs), {parameters:,} parameters "
        f"({args.iterations} x {args.layers} layers, {args.channels} channels, {args.kernel} kernel)",
        "",
        "| configuration | train systems/s | eval systems/s | collation s/epoch | epoch s | speed-up |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['configuration']} | {r['train_systems_per_s']:.0f} | {r['eval_systems_per_s']:.0f} | "
        f"{r['collation_s_per_epoch']:.2f} | {r['epoch_s']:.1f} | {r['speed_up']:.1f}x |"
        for r in rows
    ]
    (out / "nbody_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return rows


if __name__ == "__main__":
    main()
