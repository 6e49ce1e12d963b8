"""Particle-simulation datasets as PyG ``InMemoryDataset`` objects.

- :class:`ParticleDynamics`: N-body dynamics (softened gravity, or Lennard-Jones) sliced into 10-step blocks;
  the dataset of the Iterative SE(3)-Transformer blog post.
- :class:`EnergyMinimisation`: move 10 points to minimise a frustrated pair potential; the toy problem of the
  Iterative SE(3)-Transformer tech report (unsupervised: :meth:`EnergyMinimisation.energy` is the loss);
  :class:`EnergyConfigurations` draws fresh training configurations of it every epoch.
- :class:`NBodyCharged`: the charged 5-body benchmark of NRI / EGNN / SEGNN.

Every dataset loads the packaged raw files of the repository's top-level ``datasets/`` folder when they
match the requested configuration, and otherwise generates the data deterministically (same code, same bits).
The simulators themselves are in :mod:`pyg_se3.datasets.simulate`.
"""

from pyg_se3.datasets._base import SPLITS, GeneratedDataset, packaged_dir
from pyg_se3.datasets.energy_minimisation import EnergyConfigurations, EnergyMinimisation
from pyg_se3.datasets.nbody_charged import NBodyCharged
from pyg_se3.datasets.particle_dynamics import ParticleDynamics

ALL_DATASETS = (ParticleDynamics, EnergyMinimisation, NBodyCharged)

__all__ = [
    "ALL_DATASETS",
    "SPLITS",
    "EnergyConfigurations",
    "EnergyMinimisation",
    "GeneratedDataset",
    "NBodyCharged",
    "ParticleDynamics",
    "packaged_dir",
]
