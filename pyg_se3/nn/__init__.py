"""Equivariant layers over PyG graphs. Features are flat fiber tensors ``[N, fiber.dim]``."""

from pyg_se3.nn.attention import SE3Attention
from pyg_se3.nn.chunked import TargetGroups
from pyg_se3.nn.contraction import depthwise_contraction, kernel_contraction
from pyg_se3.nn.conv import SE3Conv
from pyg_se3.nn.kernel import KERNELS, DepthwiseEdgeKernel, EdgeKernel, make_kernel
from pyg_se3.nn.linear import SE3Linear
from pyg_se3.nn.norm import SE3Norm
from pyg_se3.nn.pooling import SE3GlobalPool, global_pool
from pyg_se3.nn.radial import RadialMLP

__all__ = [
    "KERNELS",
    "DepthwiseEdgeKernel",
    "EdgeKernel",
    "RadialMLP",
    "SE3Attention",
    "SE3Conv",
    "SE3GlobalPool",
    "SE3Linear",
    "SE3Norm",
    "TargetGroups",
    "depthwise_contraction",
    "global_pool",
    "kernel_contraction",
    "make_kernel",
]
