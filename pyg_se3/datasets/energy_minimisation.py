r"""Energy minimisation: the toy problem of the Iterative SE(3)-Transformer tech report.

Move ten points so as to minimise the mean of a pair potential whose optimal distance differs for every pair
(Fuchs, Wagstaff, Dauparas & Posner, 2021; see ``datasets/README.md``). The task is unsupervised: the loss
is :meth:`EnergyMinimisation.energy` of the predicted positions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset
from torch_geometric.utils import scatter
from tqdm import tqdm

from pyg_se3.datasets._base import (
    GeneratedDataset,
    check_int,
    check_positive,
    check_split,
    config_array,
    split_generator,
)
from pyg_se3.fiber import Fiber
from pyg_se3.graph import complete_edge_index

__all__ = ["EnergyConfigurations", "EnergyMinimisation"]

#: Constant offset of the pair potential: makes its global minimum (almost exactly) 0.
V_OFFSET = 0.321919


def pair_index(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Index of the unordered pair ``{i, j}`` of each edge among the ``i < j`` pairs in row-major order."""
    a = torch.minimum(edge_index[0], edge_index[1])
    b = torch.maximum(edge_index[0], edge_index[1])
    return a * num_nodes - a * (a + 1) // 2 + (b - a - 1)


class EnergyMinimisation(GeneratedDataset):
    r"""Random point sets with random pair potentials; the task is to move the points to low energy.

    Each sample has ``num_nodes = 10`` points at :math:`x_i \sim N(0, 0.5^2 I)`, fully connected, and one
    parameter :math:`p_{ij} \sim U(0, 1)` per unordered pair. The pair potential is

    .. math::
        V(r; p) = x^4 - x^2 + 0.1 x + 0.321919, \qquad x = r - p - 1,

    a tilted double well in :math:`x`. :math:`V'(x) = 4x^3 - 2x + 0.1` vanishes at
    :math:`x_* = -0.730893\ldots` (global minimum, :math:`V = -3.47 \times 10^{-7}`, zero to the six digits of
    the offset), :math:`0.050254\ldots` (local maximum) and :math:`0.680639\ldots` (local minimum,
    :math:`V = 0.141332`). So each pair prefers the distance :math:`r_* = p + 1 + x_* = p + 0.269107\ldots`.
    With 45 pair distances and only :math:`3 \cdot 10 - 6 = 24` internal degrees of freedom the optima cannot
    all be met: the problem is frustrated, and the minimum of the total energy is unknown at input time.

    **Samples:** ``pos`` ``[N, 3]`` (initial positions), ``edge_index`` ``[2, N(N-1)]`` (complete graph, every
    ordered pair ``(j, i)``, ``j != i``), ``p`` ``[E]`` (per directed edge; both directions of a pair carry the
    same value), ``x`` ``[N, 1]`` of ones (:attr:`fiber` ``= Fiber({0: 1})``: the points are
    indistinguishable; the information is in ``p``), ``sample_id`` ``[1]``. There is no target ``y``: train by
    minimising :meth:`energy` of the output positions. Default sizes 2000 / 500 / 500.

    As in the original experiment, a model should see ``p`` only through the pair energies ``V(r; p)`` of its
    current positions (:class:`~pyg_se3.runtime.tasks.EnergyTask` does so), and train on fresh configurations
    (:class:`EnergyConfigurations`); the packaged validation and test splits stay fixed.

    Parameters
    ----------
    root, split, transform, pre_transform, pre_filter, force_reload, progress, dtype, seed
        As for :class:`~pyg_se3.datasets.ParticleDynamics`. The raw data are stored in float32.
    num_samples
        Samples in this split (default 2000 / 500 / 500).
    num_nodes
        Points per sample (>= 2).
    pos_std
        Standard deviation of the initial positions per axis.

    Examples
    --------
    >>> import tempfile
    >>> from pyg_se3.datasets import EnergyMinimisation
    >>> tmp = tempfile.TemporaryDirectory()
    >>> test = EnergyMinimisation(tmp.name, split="test", progress=False)
    >>> len(test), test[0]
    (500, Data(x=[10, 1], edge_index=[2, 90], pos=[10, 3], p=[90], sample_id=[1]))

    The loss is the mean pair energy at the positions a model outputs; here at the initial ones:

    >>> data = test[0]
    >>> EnergyMinimisation.energy(data.pos, data.edge_index, data.p)
    tensor([0.2232])
    >>> tmp.cleanup()
    """

    name = "energy_minimisation"
    fiber = Fiber({0: 1})
    default_num_samples: Mapping[str, int] = {"train": 2000, "val": 500, "test": 500}

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        num_samples: int | None = None,
        *,
        num_nodes: int = 10,
        pos_std: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        transform: Callable[[Data], Data] | None = None,
        pre_transform: Callable[[Data], Data] | None = None,
        pre_filter: Callable[[Data], bool] | None = None,
        force_reload: bool = False,
        progress: bool = True,
    ) -> None:
        config = self.make_config(split=split, num_samples=num_samples, num_nodes=num_nodes, pos_std=pos_std, seed=seed)
        super().__init__(root, config, dtype, transform, pre_transform, pre_filter, force_reload, progress)

    @classmethod
    def make_config(
        cls,
        split: str = "train",
        num_samples: int | None = None,
        num_nodes: int = 10,
        pos_std: float = 0.5,
        seed: int = 0,
    ) -> dict[str, Any]:
        check_split(split)
        if num_samples is None:
            num_samples = cls.default_num_samples[split]
        config = {
            "dataset": cls.name,
            "version": 1,
            "split": split,
            "num_samples": check_int("num_samples", num_samples, 1),
            "seed": check_int("seed", seed, 0),
            "num_nodes": check_int("num_nodes", num_nodes, 2),
            "pos_std": check_positive("pos_std", pos_std),
        }
        return json.loads(json.dumps(config))

    @classmethod
    def generate(cls, config: Mapping[str, Any], progress: bool = False) -> dict[str, np.ndarray]:
        """Raw arrays: ``pos`` ``[S, N, 3]`` and ``p`` ``[S, N(N-1)/2]`` (pairs ``i < j`` row-major), float32.

        Per sample, in this order from the split's generator: positions (float64, then rounded to float32),
        pair parameters.
        """
        g = split_generator(config["seed"], config["split"])
        n = config["num_nodes"]
        pos, p = [], []
        for _ in tqdm(range(config["num_samples"]), desc=f"{cls.name} {config['split']}", disable=not progress):
            pos.append(config["pos_std"] * torch.randn(n, 3, generator=g, dtype=torch.float64))
            p.append(torch.rand(n * (n - 1) // 2, generator=g, dtype=torch.float64))
        return {
            "config": config_array(config),
            "pos": _finite_float32("pos_std", torch.stack(pos)),
            "p": torch.stack(p).to(torch.float32).numpy(),
        }

    def build_samples(self, arrays: Mapping[str, np.ndarray]) -> list[Data]:
        return _samples(self.tensor(arrays["pos"]), self.tensor(arrays["p"]))

    # -------------------------------------------------------------- the objective
    @staticmethod
    def pair_energy(r: Tensor, p: Tensor) -> Tensor:
        r""":math:`V(r; p) = x^4 - x^2 + 0.1 x + 0.321919` with :math:`x = r - p - 1`, element-wise."""
        x = r - p - 1.0
        x2 = x * x
        return x2 * x2 - x2 + 0.1 * x + V_OFFSET

    @staticmethod
    def energy(
        pos: Tensor, edge_index: Tensor, p: Tensor, batch: Tensor | None = None, num_graphs: int | None = None
    ) -> Tensor:
        r"""Mean pair energy of each graph, differentiable in ``pos``: the unsupervised loss.

        .. math::
            E(G) = \frac{1}{|E_G|} \sum_{(j, i) \in E_G} V(|x_j - x_i|; p_{ij}).

        On the complete graph every unordered pair appears twice, so this is also the mean over pairs. The
        gradient is undefined where two connected points coincide (``r = 0``, a set of measure zero).

        Parameters
        ----------
        pos
            ``[N, 3]`` positions (all graphs of a batch).
        edge_index
            ``[2, E]`` edges.
        p
            ``[E]`` pair parameters.
        batch
            ``[N]`` graph of each node (``None``: one graph).
        num_graphs
            Number of graphs (default ``batch.max() + 1``).

        Returns
        -------
        Tensor
            ``[num_graphs]`` energies.
        """
        if p.shape != edge_index.shape[1:]:
            raise ValueError(f"p: expected shape [{edge_index.shape[1]}] (one per edge), got {tuple(p.shape)}")
        source, target = edge_index
        d = pos[source] - pos[target]
        r = torch.sqrt((d * d).sum(-1))
        values = EnergyMinimisation.pair_energy(r, p)
        if batch is None:
            graph = torch.zeros_like(target)
            num_graphs = 1
        else:
            graph = batch[target]
            num_graphs = int(batch.max()) + 1 if num_graphs is None else num_graphs
        return scatter(values, graph, dim=0, dim_size=num_graphs, reduce="mean")

    @staticmethod
    def gradient_descent(
        pos: Tensor,
        edge_index: Tensor,
        p: Tensor,
        batch: Tensor | None = None,
        num_steps: int = 1000,
        lr: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        r"""Baseline solver: plain gradient descent on :meth:`energy`, :math:`x \leftarrow x - \eta \nabla_x E`.

        Each graph's energy depends only on its own points, so descending the sum over the batch is descending
        each graph independently. Finds a local minimum near the initial positions; compare the energies of a
        model's one-shot or iterative predictions with these.

        Parameters
        ----------
        pos, edge_index, p, batch
            As for :meth:`energy`.
        num_steps
            Gradient steps (>= 0).
        lr
            Step size :math:`\eta` (> 0). The energy is a mean over the ``2 (N - 1)`` edges of each point, so
            steps of order 1 are stable for ``N = 10``.

        Returns
        -------
        tuple[Tensor, Tensor]
            Final positions ``[N, 3]`` and energies ``[num_graphs]`` (detached).
        """
        check_int("num_steps", num_steps, 0)
        check_positive("lr", lr)
        num_graphs = None if batch is None else int(batch.max()) + 1
        x = pos.detach().clone()
        with torch.enable_grad():
            for _ in range(num_steps):
                x.requires_grad_(True)
                energy = EnergyMinimisation.energy(x, edge_index, p, batch, num_graphs).sum()
                (grad,) = torch.autograd.grad(energy, x)
                x = (x - lr * grad).detach()
        final = EnergyMinimisation.energy(x, edge_index, p, batch, num_graphs).detach()
        return x, final


def _finite_float32(name: str, values: Tensor) -> np.ndarray:
    """``values`` rounded to float32, or a ValueError naming the generation parameter that made them overflow."""
    rounded = values.to(torch.float32)
    if not bool(torch.isfinite(rounded).all()):
        raise ValueError(f"{name}: the generated values do not fit in float32; expected a smaller {name}")
    return rounded.numpy()


def _samples(pos_all: Tensor, p_all: Tensor) -> list[Data]:
    """One ``Data`` per row of ``pos_all [S, N, 3]`` and ``p_all [S, N(N-1)/2]`` (pairs ``i < j`` row-major)."""
    n = pos_all.shape[1]
    edge_index = complete_edge_index(n)
    pairs = pair_index(edge_index, n)
    x = torch.ones(n, 1, dtype=pos_all.dtype)
    return [
        Data(
            pos=pos_all[s].clone(),
            edge_index=edge_index.clone(),
            p=p_all[s][pairs],
            x=x.clone(),
            sample_id=torch.tensor([s]),
        )
        for s in range(pos_all.shape[0])
    ]


class EnergyConfigurations(Dataset):
    r"""A stream of fresh :class:`EnergyMinimisation` configurations: new samples every epoch.

    The original experiment trains on configurations drawn afresh for every batch (5,000 per epoch, 100 epochs:
    about 500,000 in all), so a model cannot memorise a fixed training set. Here each epoch's samples are a
    function of ``(seed, epoch)`` alone: :meth:`set_epoch` (called by :class:`~pyg_se3.runtime.training.Trainer` at
    the start of every epoch, like ``DistributedSampler.set_epoch``) regenerates them, so a resumed run sees
    exactly the samples of an uninterrupted one. Samples have the fields and distribution of
    :class:`EnergyMinimisation` (positions :math:`N(0, \mathrm{pos\_std}^2)` rounded to float32,
    :math:`p_{ij} \sim U(0, 1)`), and batch with PyG's ``DataLoader`` like any dataset.

    Parameters
    ----------
    num_samples
        Samples per epoch (default 5000, as in the original experiment).
    num_nodes
        Points per sample (>= 2).
    pos_std
        Standard deviation of the initial positions per axis (> 0).
    seed
        Seed of the stream (>= 0); :meth:`set_epoch` may override it.
    dtype
        Floating dtype of ``pos`` and ``p``.
    """

    fiber = EnergyMinimisation.fiber

    def __init__(
        self,
        num_samples: int = 5000,
        *,
        num_nodes: int = 10,
        pos_std: float = 0.5,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.num_samples = check_int("num_samples", num_samples, 1)
        self.num_nodes = check_int("num_nodes", num_nodes, 2)
        self.pos_std = check_positive("pos_std", pos_std)
        self.seed, self.dtype, self.epoch = check_int("seed", seed, 0), dtype, 0
        self.set_epoch(0)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        """Draw the samples of ``epoch`` (>= 0) of the stream ``seed`` (default: the constructor's)."""
        self.epoch = check_int("epoch", epoch, 0)
        if seed is not None:
            self.seed = check_int("seed", seed, 0)
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        n = self.num_nodes
        pos = self.pos_std * torch.randn(self.num_samples, n, 3, generator=g, dtype=torch.float64)
        p = torch.rand(self.num_samples, n * (n - 1) // 2, generator=g, dtype=torch.float64)
        pos = torch.from_numpy(_finite_float32("pos_std", pos))
        self._samples = _samples(pos.to(self.dtype), p.to(torch.float32).to(self.dtype))

    def len(self) -> int:
        return self.num_samples

    def get(self, idx: int) -> Data:
        return self._samples[idx]

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.num_samples}, num_nodes={self.num_nodes}, pos_std={self.pos_std:g}, "
            f"seed={self.seed}, epoch={self.epoch})"
        )
