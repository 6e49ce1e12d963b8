"""Regenerate the packaged raw files of every dataset's default configuration, bit for bit.

Usage (from the repository root)::

    python datasets/generate.py                 # (re)write datasets/<name>/<split>.npz and datasets/SHA256SUMS
    python datasets/generate.py --check         # regenerate into a temporary folder, compare with SHA256SUMS
    python datasets/generate.py --check --only particle_dynamics energy_minimisation

The data come from the library (``Dataset.make_config`` and ``Dataset.generate`` of
:mod:`pyg_se3.datasets`); this script only writes files and checksums.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from pyg_se3.datasets import ALL_DATASETS, SPLITS
from pyg_se3.datasets._base import packaged_checksums, write_npz

HERE = Path(__file__).resolve().parent


def generate(out_dir: Path, only: list[str] | None = None, progress: bool = True) -> dict[str, str]:
    """Write ``out_dir/<name>/<split>.npz`` for the selected datasets; returns ``{relative path: sha256}``."""
    sums = {}
    for cls in ALL_DATASETS:
        if only and cls.name not in only:
            continue
        for split in SPLITS:
            config = cls.make_config(split=split)
            start = time.perf_counter()
            arrays = cls.generate(config, progress=progress)
            relative = f"{cls.name}/{split}.npz"
            sums[relative] = write_npz(out_dir / relative, arrays)
            size = (out_dir / relative).stat().st_size
            print(f"{relative}: {time.perf_counter() - start:6.1f} s, {size / 1e6:.2f} MB, sha256 {sums[relative]}")
    return sums


def write_manifest(folder: Path, sums: dict[str, str]) -> None:
    merged = packaged_checksums(folder) | sums
    lines = [f"{digest}  {name}" for name, digest in sorted(merged.items())]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="regenerate elsewhere and compare checksums")
    parser.add_argument("--only", nargs="+", choices=[cls.name for cls in ALL_DATASETS], help="datasets")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    if not args.check:
        write_manifest(HERE, generate(HERE, args.only, progress=not args.quiet))
        return 0
    expected = packaged_checksums(HERE)
    with tempfile.TemporaryDirectory() as tmp:
        sums = generate(Path(tmp), args.only, progress=not args.quiet)
    bad = [name for name, digest in sums.items() if expected.get(name) != digest]
    for name in bad:
        print(f"MISMATCH {name}: packaged {expected.get(name)}, regenerated {sums[name]}", file=sys.stderr)
    print("all checksums match" if not bad else f"{len(bad)} mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
