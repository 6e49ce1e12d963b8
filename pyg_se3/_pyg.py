"""Import PyTorch Geometric once, without its import-time deprecation warnings.

PyG 2.8 warns that torch-cluster is ignored (its own radius/kNN now need pyg-lib; pyg_se3.graph calls
torch_cluster directly where it is installed, else searches with PyTorch), and PyG scripts a few helpers with
``torch.jit.script``, which torch deprecates (2.13 on). Neither is actionable for a pyg_se3 user, so
``import pyg_se3`` silences exactly these two messages, only while PyG loads.
"""

import warnings

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="'torch-cluster' is no longer necessary", category=DeprecationWarning)
    # a DeprecationWarning in torch 2.13, a FutureWarning from 2.14 on
    warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")
    import torch_geometric  # noqa: F401
