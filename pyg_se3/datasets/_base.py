"""What the three datasets share: configs, seeds, deterministic files, checksums, the packaged-data lookup.

Life of a dataset instance (PyG's ``InMemoryDataset`` protocol):

1. ``download`` fills ``root/raw/<split>-<tag>.npz``: a copy of the packaged file of the repository's
   top-level ``datasets/<name>/<split>.npz`` when that file exists, passes the checksum listed in
   ``datasets/SHA256SUMS`` and was generated from exactly the requested configuration; otherwise the data are
   generated here, deterministically, by the same code (``tag`` hashes the configuration, so different
   configurations never share a file).
2. ``process`` turns the raw arrays into ``Data`` objects and saves them to ``root/processed``.
3. Every file written gets a ``.sha256`` sidecar. A raw or processed file whose checksum does not match
   (corrupted, truncated, edited) is never loaded: the dataset warns and rebuilds it.
4. Every processed file also gets a ``.pre.json`` sidecar recording the ``pre_transform`` and ``pre_filter`` that
   made it (:func:`preprocessing_record`). A processed file made with others is never loaded: the dataset warns
   and rebuilds it. (PyG records them once per ``processed`` folder, in ``pre_transform.pt``/``pre_filter.pt``,
   which here holds every split, dtype and configuration: it would miss a stale file and warn about a fresh one.
   Those two files are neither written nor read here.)
5. Many processes may share a root (a sweep, data-parallel ranks, a ``force_reload`` while others load): every
   file is written under a temporary name and renamed into place, and steps 1-4 run under an inter-process lock
   per split and configuration (``root/.<split>-<tag>.lock``), so a process waits while another builds the
   files it needs, then loads them.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import shutil
import warnings
import zipfile
from abc import abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

import pyg_se3
from pyg_se3 import checks
from pyg_se3._files import file_lock, replacing, write_text_atomic
from pyg_se3.fiber import Fiber

__all__ = [
    "SPLITS",
    "GeneratedDataset",
    "packaged_dir",
    "read_npz",
    "sha256_file",
    "split_generator",
    "write_npz",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")
_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


# ---------------------------------------------------------------------------------------------- validation
def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split: expected one of {list(SPLITS)}, got {split!r}")
    return split


def check_int(name: str, value: Any, minimum: int) -> int:
    """:func:`pyg_se3.checks.check_int` with the argument order of the other generation-parameter checks here."""
    return checks.check_int(value, name, minimum)


def check_positive(name: str, value: Any, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name}: expected a finite number {bound}, got {value!r}")
    return float(value)


def check_dtype(dtype: torch.dtype) -> str:
    for name, candidate in _DTYPES.items():
        if dtype == candidate:
            return name
    raise ValueError(f"dtype: expected torch.float32 or torch.float64, got {dtype!r}")


# ---------------------------------------------------------------------------------------------- seeds
def split_seed(seed: int, split: str) -> int:
    """The 32-bit seed of one split's random stream, derived from the dataset seed by NumPy's ``SeedSequence``.

    ``SeedSequence`` is stable across NumPy versions; 32 bits because torch seeds its Mersenne Twister with
    the low 32 bits of the seed anyway.
    """
    state = np.random.SeedSequence([seed, SPLITS.index(split)]).generate_state(1, np.uint32)
    return int(state[0])


def split_generator(seed: int, split: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for one split. Simulations draw from it one after another, so the first
    ``k`` simulations of a split do not depend on how many are generated."""
    return torch.Generator().manual_seed(split_seed(seed, split))


# ---------------------------------------------------------------------------------------------- files
def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> str:
    """Write ``arrays`` as an uncompressed ``.npz`` that is identical byte for byte for identical arrays.

    ``np.savez`` stamps the current time into the zip entries (and compressed bytes depend on the zlib build),
    so members are written here with a fixed timestamp, no compression, little-endian dtypes and sorted
    names. ``np.load`` reads the result as usual. Returns the file's sha256.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
        for name in sorted(arrays):
            array = np.asarray(arrays[name])
            if array.dtype.kind in "iuf" and array.dtype.byteorder == ">":
                array = array.astype(array.dtype.newbyteorder("<"))
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue())
    return sha256_file(path)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def read_config(path: str | Path) -> dict[str, Any] | None:
    """The generation config stored in a raw ``.npz``; ``None`` if the file is unreadable or has none."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return json.loads(archive["config"].item()) if "config" in archive.files else None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def config_array(config: Mapping[str, Any]) -> np.ndarray:
    return np.array(json.dumps(dict(config), sort_keys=True))


def write_sidecar(path: str | Path) -> None:
    write_text_atomic(f"{path}.sha256", sha256_file(path) + "\n")


def checksum_ok(path: str | Path) -> bool:
    """Whether ``path`` exists and matches the sha256 recorded in its ``.sha256`` sidecar."""
    path, sidecar = Path(path), Path(f"{path}.sha256")
    if not (path.is_file() and sidecar.is_file()):
        return False
    return sidecar.read_text().strip() == sha256_file(path)


def preprocessing_record(pre_transform: object, pre_filter: object) -> dict[str, str]:
    """What made a processed file: the ``repr`` of ``pre_transform`` and ``pre_filter`` without memory addresses.

    A function is recorded by its qualified name, an object (e.g. ``torch_geometric.transforms.Compose``) by its
    ``repr``. Two lambdas of one scope, or one function whose code changed, record the same: pass
    ``force_reload=True`` then.
    """

    def describe(obj: object) -> str:
        return "None" if obj is None else re.sub(r" at 0x[0-9a-fA-F]+", "", repr(obj))

    return {"pre_transform": describe(pre_transform), "pre_filter": describe(pre_filter)}


def read_record(path: str | Path) -> dict[str, str] | None:
    """The :func:`preprocessing_record` stored next to processed file ``path``; ``None`` if missing or unreadable."""
    try:
        return json.loads(Path(f"{path}.pre.json").read_text())
    except (OSError, ValueError):
        return None


def packaged_dir() -> Path:
    """The repository's top-level ``datasets/`` folder (absent from an installed wheel)."""
    return Path(pyg_se3.__file__).resolve().parents[1] / "datasets"


def packaged_checksums(folder: Path | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` from ``datasets/SHA256SUMS`` (``sha256sum`` format); empty if missing."""
    manifest = (folder or packaged_dir()) / "SHA256SUMS"
    if not manifest.is_file():
        return {}
    sums = {}
    for line in manifest.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip().lstrip("*")] = digest
    return sums


def config_tag(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- base class
class GeneratedDataset(InMemoryDataset):
    """An ``InMemoryDataset`` whose raw data are generated deterministically from a config (see module doc).

    Subclasses define ``name``, ``fiber``, ``make_config`` (validate parameters into a JSON-able dict),
    ``generate`` (config to raw arrays) and ``build_samples`` (raw arrays to ``Data`` objects).
    """

    name: ClassVar[str]
    #: The fiber of ``data.x`` (for :class:`~pyg_se3.transforms.RandomRotation` and the models).
    fiber: ClassVar[Fiber]
    #: The version of what ``build_samples`` makes of the raw arrays (raised when the samples gain or change an
    #: attribute): from 2 on it is in the processed file's name, so a root's older processed file is not loaded
    #: as if it were current (it stays, for the code that made it) and a new one is built from the same raw file.
    sample_format: ClassVar[int] = 1

    def __init__(
        self,
        root: str | Path,
        config: dict[str, Any],
        dtype: torch.dtype,
        transform: Callable[[Data], Data] | None,
        pre_transform: Callable[[Data], Data] | None,
        pre_filter: Callable[[Data], bool] | None,
        force_reload: bool,
        progress: bool,
    ) -> None:
        self.config = config
        self.split = config["split"]
        self.dtype = dtype
        self._dtype_name = check_dtype(dtype)
        self.progress = bool(progress)
        Path(root).mkdir(parents=True, exist_ok=True)
        with file_lock(Path(root) / f".{self.split}-{self.tag}.lock"):
            super().__init__(str(root), transform, pre_transform, pre_filter, force_reload=force_reload)
            path = self.processed_paths[0]
            problem = self._processed_file_problem(path)
            if problem is not None:
                warnings.warn(f"{path}: {problem}; rebuilding it from the raw data", UserWarning, stacklevel=2)
                self.process()
            self.load(path)

    def _processed_file_problem(self, path: str) -> str | None:
        """Why the processed file must not be loaded (corrupted, or made with other pre-processing), or ``None``."""
        if not checksum_ok(path):
            return "processed file fails its sha256 checksum (corrupted or modified)"
        record, wanted = read_record(path), preprocessing_record(self.pre_transform, self.pre_filter)
        if record != wanted:
            return f"processed file was made with {record or 'unrecorded pre-processing'}, not with {wanted}"
        return None

    # -------------------------------------------------------------- subclass interface
    @classmethod
    @abstractmethod
    def make_config(cls, **params: Any) -> dict[str, Any]:
        """Validate generation parameters (``ValueError`` naming the bad one) into a JSON-able config."""

    @classmethod
    @abstractmethod
    def generate(cls, config: Mapping[str, Any], progress: bool = False) -> dict[str, np.ndarray]:
        """The raw arrays of ``config`` (including ``'config'``), generated deterministically."""

    @abstractmethod
    def build_samples(self, arrays: Mapping[str, np.ndarray]) -> list[Data]:
        """One ``Data`` per sample of the raw arrays, floating tensors in ``self.dtype``."""

    # -------------------------------------------------------------- PyG protocol
    @property
    def tag(self) -> str:
        return config_tag(self.config)

    @property
    def raw_file_names(self) -> list[str]:
        return [f"{self.split}-{self.tag}.npz"]

    @property
    def processed_file_names(self) -> list[str]:
        version = f"-samples{self.sample_format}" if self.sample_format > 1 else ""
        return [f"{self.split}-{self.tag}-{self._dtype_name}{version}.pt"]

    def download(self) -> None:
        target = Path(self.raw_paths[0])
        packaged = self._matching_packaged_file()
        if packaged is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            with replacing(target) as tmp:
                shutil.copyfile(packaged, tmp)
        else:
            write_npz(target, self.generate(self.config, progress=self.progress))
        write_sidecar(target)

    def _process(self) -> None:
        """Build the processed file if it is missing (or on ``force_reload``); ``__init__`` checks an existing one.

        Replaces PyG's version, whose per-folder ``pre_transform.pt``/``pre_filter.pt`` record is wrong here (see
        the module doc); each processed file has its own record.
        """
        if self.force_reload or not Path(self.processed_paths[0]).is_file():
            Path(self.processed_dir).mkdir(parents=True, exist_ok=True)
            self.process()

    def process(self) -> None:
        raw = Path(self.raw_paths[0])
        if not checksum_ok(raw) or read_config(raw) != self.config:
            warnings.warn(
                f"{raw}: raw file fails its sha256 checksum or holds another configuration; rebuilding it",
                UserWarning,
                stacklevel=2,
            )
            self.download()
        data_list = self.build_samples(read_npz(raw))
        if self.pre_filter is not None:
            data_list = [data for data in data_list if self.pre_filter(data)]
        if self.pre_transform is not None:
            data_list = [self.pre_transform(data) for data in data_list]
        path = self.processed_paths[0]
        with replacing(path) as tmp:
            self.save(data_list, str(tmp))
        write_sidecar(path)
        record = preprocessing_record(self.pre_transform, self.pre_filter)
        write_text_atomic(f"{path}.pre.json", json.dumps(record, sort_keys=True) + "\n")

    def _matching_packaged_file(self) -> Path | None:
        """The packaged file of this split if it was generated from exactly this config and is intact."""
        relative = f"{self.name}/{self.split}.npz"
        path = packaged_dir() / relative
        if not path.is_file() or read_config(path) != self.config:
            return None
        expected = packaged_checksums().get(relative)
        if expected != sha256_file(path):
            warnings.warn(
                f"{path}: packaged file does not match datasets/SHA256SUMS; generating the data instead",
                UserWarning,
                stacklevel=3,
            )
            return None
        return path

    # -------------------------------------------------------------- helpers for subclasses
    def tensor(self, array: np.ndarray) -> torch.Tensor:
        """A floating raw array as a tensor of the dataset's dtype."""
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)}, split={self.split!r})"
