"""Models built from :mod:`pyg_se3.nn`."""

from pyg_se3.models.iterative import IterativeOutput, IterativeSE3Transformer
from pyg_se3.models.se3_transformer import SE3Transformer

__all__ = ["IterativeOutput", "IterativeSE3Transformer", "SE3Transformer"]
