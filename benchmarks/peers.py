"""Peer implementations for ``benchmarks/bench.py``: one small adapter per peer.

An adapter builds the peer's model at the configuration of ours (fibers, neighbours, depth) on the benchmark's
inputs and returns a :class:`Workload`; ``bench.py`` times every workload, ours and the peers', with the same
code in the same kind of isolated subprocess. Each peer is compared with one of our models, its ``reference``:

- ``lucidrains-SE3Transformer``: lucidrains' ``se3-transformer-pytorch`` (the ``bench`` extra), against our
  ``SE3Transformer``.
- ``e3nn-GatePoints``: e3nn's gated tensor-field network (``e3nn.nn.models.v2106``), against ``SE3ConvNet``,
  our tensor-field network of the same depth (``bench.py``).

Peers are imported in the measuring subprocess only; the runner checks with :func:`missing` (no import) whether
a peer is installed, and skips it with a message when not.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor, nn

__all__ = ["PEERS", "Inputs", "Peer", "Workload", "missing"]


# ---------------------------------------------------------------------------------------------- shared types
@dataclass
class Inputs:
    """One benchmark problem, shared by our models and the peers.

    Attributes
    ----------
    graph
        ``"knn"`` or ``"radius"``.
    pos
        ``[N, 3]`` positions; they require grad, so forward+backward differentiates with respect to them.
    x
        ``[N, 4]`` input features: one scalar and one vector per point (fiber ``{0: 1, 1: 1}``, irreps
        ``1x0e+1x1o``), e3nn's flat layout.
    edge_index
        ``[2, E]`` edges ``(j, i)`` from ``j`` to ``i`` (our kNN or radius graph of ``pos``).
    k
        Neighbours per point of the kNN graph.
    radius
        Cutoff of the radius graph.
    """

    graph: str
    pos: Tensor
    x: Tensor
    edge_index: Tensor
    k: int
    radius: float

    @property
    def num_nodes(self) -> int:
        return self.pos.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]


@dataclass
class Workload:
    """What the timing loop runs: ``run()`` is a forward pass returning one tensor (the loss of
    forward+backward is its sum of squares); ``module`` holds every parameter; ``pos`` gets a gradient."""

    module: nn.Module
    run: Callable[[], Tensor]
    pos: Tensor
    num_edges: int


@dataclass(frozen=True)
class Peer:
    """A peer implementation.

    Attributes
    ----------
    name
        Its name in ``--peers`` and in the results.
    distribution, module
        The package that provides it (``pip`` name) and the module to import.
    requirement
        How to install it.
    reference
        Our model it is compared with.
    build
        ``build(inputs, max_degree, channels) -> Workload``.
    notes
        How the configurations were matched, for the report.
    """

    name: str
    distribution: str
    module: str
    requirement: str
    reference: str
    build: Callable[[Inputs, int, int], Workload]
    notes: list[str] = field(default_factory=list)

    def version(self) -> str:
        return importlib.metadata.version(self.distribution)


def missing(peer: Peer) -> str | None:
    """``None`` when ``peer`` can be imported, else why not (without importing it)."""
    if importlib.util.find_spec(peer.module.split(".")[0]) is None:
        return f"{peer.distribution} is not installed (pip install '{peer.requirement}'; `make bench` does it)"
    return None


# Our attention blocks at the benchmark's configuration (bench.py builds SE3Transformer with these).
NUM_LAYERS = 2
NUM_HEADS = 4
CHANNELS_DIV = 2
IO_DEGREES = 2  # inputs and outputs: one channel each of degrees 0 and 1


# ---------------------------------------------------------------------------------------------- lucidrains
def build_lucidrains(inputs: Inputs, max_degree: int, channels: int) -> Workload:
    """lucidrains' ``SE3Transformer`` at our ``SE3Transformer``'s configuration.

    Parameters
    ----------
    inputs
        The benchmark problem; the model runs on the batch of one point cloud ``pos[None]``.
    max_degree
        Hidden degrees ``0..max_degree``.
    channels
        Channels per hidden degree.

    Returns
    -------
    Workload
        Its forward returns the degree-0 and degree-1 outputs, flattened and concatenated.
    """
    import torch
    from se3_transformer_pytorch import SE3Transformer

    n = inputs.num_nodes
    if inputs.graph == "knn":
        neighbours = {"num_neighbors": inputs.k}
    else:  # every neighbour within the radius: top-k by distance with k = the largest in-degree, masked by radius
        most = int(torch.bincount(inputs.edge_index[1], minlength=n).max())
        neighbours = {"num_neighbors": most, "valid_radius": inputs.radius}
    model = SE3Transformer(
        dim=channels,
        depth=NUM_LAYERS,
        num_degrees=max_degree + 1,
        heads=NUM_HEADS,
        dim_head=channels // CHANNELS_DIV // NUM_HEADS,  # its key/value fiber = our value fiber
        input_degrees=IO_DEGREES,
        dim_in=1,
        output_degrees=IO_DEGREES,
        dim_out=1,
        differentiable_coors=True,
        **neighbours,
    )
    coors = inputs.pos[None]
    feats = {"0": inputs.x[None, :, :1, None], "1": inputs.x[None, :, 1:4].reshape(1, n, 1, 3)}

    def run() -> Tensor:
        out = model(feats, coors)
        return torch.cat([out["0"].flatten(), out["1"].flatten()])

    return Workload(model, run, inputs.pos, inputs.num_edges)


LUCIDRAINS = Peer(
    name="lucidrains-SE3Transformer",
    distribution="se3-transformer-pytorch",
    module="se3_transformer_pytorch",
    requirement="se3-transformer-pytorch==0.9.0",
    reference="SE3Transformer",
    build=build_lucidrains,
    notes=[
        f"`SE3Transformer(dim=C, depth={NUM_LAYERS}, num_degrees=L+1, heads={NUM_HEADS}, "
        f"dim_head=C/{CHANNELS_DIV}/{NUM_HEADS}, input_degrees=2, dim_in=1, output_degrees=2, dim_out=1, "
        "differentiable_coors=True)`: hidden fiber C channels per degree, keys/values C/2 per degree in 4 heads "
        f"(ours: channels_div={CHANNELS_DIV}), {NUM_LAYERS} attention blocks, degree 0+1 inputs and outputs.",
        "Neighbours: kNN graphs: `num_neighbors=K`; it finds them itself by a dense N x N distance matrix and "
        "top-k. Radius graphs: `valid_radius=r`, `num_neighbors` = the largest in-degree (it pads every point to "
        "that many). Its E column is our graph's.",
        "Its architecture adds an input convolution, a feed-forward block after each attention block and a "
        "self key/value (`attend_self=True`, its default); its radial networks are 128 wide (ours 32). "
        "In 0.9.0 `get_basis` builds the basis under `torch.no_grad` when `differentiable_coors=True` (and "
        "detaches it otherwise), so its positions get gradients through the distances only; ours also through "
        "the basis.",
    ],
)


# ---------------------------------------------------------------------------------------------- e3nn
def build_e3nn(inputs: Inputs, max_degree: int, channels: int) -> Workload:
    """e3nn's gated tensor-field network (``e3nn.nn.models.v2106.gate_points_networks``) at our fibers.

    ``SimpleNetwork`` with two changes: its hidden irreps are ours (``C x 0e + C x 1o + C x 2e ...``, one parity
    per degree, where ``SimpleNetwork`` would take both), and it runs on the benchmark's ``edge_index`` instead
    of its own O(N^2) radius search. Everything else (spherical harmonics up to ``max_degree`` as edge
    attributes, 10 smooth radial basis functions up to ``max_radius``, ``fc_neurons=[10, 100]``, gates) is its.

    Parameters
    ----------
    inputs
        The benchmark problem.
    max_degree
        Hidden degrees ``0..max_degree``.
    channels
        Multiplicity of each hidden irrep.

    Returns
    -------
    Workload
        Its forward returns the ``1x0e+1x1o`` node outputs.
    """
    import torch
    from e3nn import o3
    from e3nn.nn.models.v2106.gate_points_message_passing import MessagePassing
    from e3nn.nn.models.v2106.gate_points_networks import SimpleNetwork
    from e3nn.nn.models.v2106.points_convolution import Convolution

    irreps_io = o3.Irreps("1x0e+1x1o")
    irreps_hidden = o3.Irreps([(channels, (degree, (-1) ** degree)) for degree in range(max_degree + 1)])
    edge_index = inputs.edge_index
    with torch.no_grad():
        longest = float((inputs.pos[edge_index[0]] - inputs.pos[edge_index[1]]).norm(dim=-1).max())
    # Its radial basis goes smoothly to 0 at max_radius: put it just beyond the longest edge.
    max_radius = inputs.radius if inputs.graph == "radius" else 1.01 * longest
    num_neighbors = inputs.num_edges / inputs.num_nodes

    class GatePointsOnGraph(SimpleNetwork):
        def preprocess(self, data: dict[str, Tensor]) -> tuple[Tensor, ...]:
            src, dst = edge_index
            batch = src.new_zeros(data["pos"].shape[0])
            return batch, data["x"], src, dst, data["pos"][src] - data["pos"][dst]

    model = GatePointsOnGraph(
        irreps_io, irreps_io, max_radius, num_neighbors, inputs.num_nodes, mul=1, layers=NUM_LAYERS,
        lmax=max_degree, pool_nodes=False,
    )  # fmt: skip
    model.mp = MessagePassing(
        irreps_node_sequence=[irreps_io] + NUM_LAYERS * [irreps_hidden] + [irreps_io],
        irreps_node_attr="0e",
        irreps_edge_attr=o3.Irreps.spherical_harmonics(max_degree),
        fc_neurons=[model.number_of_basis, 100],
        num_neighbors=num_neighbors,
    )
    # Each convolution starts with its messages switched off (alpha = 0: output = self-connection only), so
    # the output would not depend on the neighbours; give them a weight, as training would.
    for module in model.modules():
        if isinstance(module, Convolution):
            torch.nn.init.normal_(module.alpha.weight)
    data = {"pos": inputs.pos, "x": inputs.x}
    return Workload(model, lambda: model(data), inputs.pos, inputs.num_edges)


E3NN = Peer(
    name="e3nn-GatePoints",
    distribution="e3nn",
    module="e3nn.nn.models.v2106.gate_points_networks",
    requirement="e3nn",
    reference="SE3ConvNet",
    build=build_e3nn,
    notes=[
        f"`e3nn.nn.models.v2106.gate_points_networks.SimpleNetwork` ({NUM_LAYERS} gated convolutions and an "
        "output convolution, as our `SE3ConvNet`: SE3Conv + SE3Norm twice, then SE3Conv), with hidden irreps "
        "`Cx0e+Cx1o+Cx2e` (+`Cx3o`): one e3nn irrep per degree, with the parity of the spherical harmonics, "
        "the closest to our SO(3) fibers (its own network would take both parities of each degree, twice the "
        "features). Parity excludes paths that SO(3) allows (e.g. 1o x 1o -> 1o, the cross product), so it has "
        "fewer kernel paths than ours.",
        "Same graph (our `edge_index`), inputs and outputs `1x0e+1x1o`. Its edge kernels are depthwise "
        "(`uvu` tensor products, one weight per channel and path from a [10, 100] MLP; channels mix in node-wise "
        "linear layers), with spherical harmonics up to L; ours mix all channels on every edge (a radial network "
        "gives [C_out, C_in] per path) with harmonics up to 2L.",
    ],
)

PEERS: dict[str, Peer] = {peer.name: peer for peer in (LUCIDRAINS, E3NN)}
