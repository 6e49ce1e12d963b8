"""The application around the library: the three experiments as training tasks, the trainer, the ``pyg-se3``
command line, ``make demo`` and data-parallel helpers.

``pyg_se3.runtime`` imports the library (:mod:`pyg_se3.fiber`, :mod:`pyg_se3.basis`, :mod:`pyg_se3.graph`,
:mod:`pyg_se3.nn`, :mod:`pyg_se3.models`, :mod:`pyg_se3.datasets`); the library never imports it, so
``import pyg_se3`` and the layers load without the trainer, its plotting or its command line.

- :mod:`pyg_se3.runtime.tasks`: datasets, model, loss, metrics and baselines of each experiment.
- :mod:`pyg_se3.runtime.features`: physics-aware inputs of the regression tasks.
- :mod:`pyg_se3.runtime.training`: the :class:`~pyg_se3.runtime.training.Trainer` (metrics, checkpoints, exact resume).
- :mod:`pyg_se3.runtime.distributed`: ``torchrun`` / DistributedDataParallel helpers.
- :mod:`pyg_se3.runtime.cli`: ``pyg-se3 train`` / ``evaluate`` (also ``python -m pyg_se3``).
- :mod:`pyg_se3.runtime.demo`: ``make demo``.
"""
