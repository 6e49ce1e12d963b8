"""Cutoff envelopes in :class:`SE3Transformer` and the layers: continuity across the cutoff, equivariance,
gradients against finite differences, one place for the weights, and bad input."""

import pytest
import torch
from helpers import relative_error
from torch_geometric.utils import to_undirected

from pyg_se3 import Fiber
from pyg_se3.basis import compute_basis
from pyg_se3.graph import Complete, Radius, cosine_envelope, envelope_weight, polynomial_envelope
from pyg_se3.models import SE3Transformer
from pyg_se3.nn import SE3Attention, SE3Conv
from pyg_se3.testing import assert_equivariant

F64 = torch.float64
FIBER_IN, FIBER_HIDDEN, FIBER_OUT = Fiber({0: 2, 1: 1}), Fiber({0: 4, 1: 4}), Fiber({0: 1, 1: 1})
CUTOFF = 1.5


def make_model(**kwargs) -> SE3Transformer:
    torch.manual_seed(0)
    return SE3Transformer(
        FIBER_IN, FIBER_HIDDEN, FIBER_OUT, num_layers=2, num_heads=2, pooling="sum", **kwargs
    ).double()


def cloud(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Six points; node 5 sits exactly at the cutoff distance from node 0, every other pair well inside or out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, FIBER_IN.dim, generator=g, dtype=F64)
    pos = 0.3 * torch.randn(6, 3, generator=g, dtype=F64)
    pos[5] = pos[0] + torch.tensor([CUTOFF, 0.0, 0.0], dtype=F64)
    return x, pos


def pooled(model: SE3Transformer, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The model on the radius graph of ``pos`` (rebuilt for every input, as a data pipeline would)."""
    return model(x, pos, Radius(CUTOFF, envelope=None)(pos))


@pytest.mark.parametrize("envelope", ["cosine", "polynomial"])
def test_cutoff_makes_the_transformer_continuous_across_the_cutoff(envelope):
    x, pos = cloud()
    step = torch.zeros(6, 3, dtype=F64)
    step[5, 0] = 1e-9
    smooth, hard = make_model(cutoff=CUTOFF, envelope=envelope), make_model()
    with torch.no_grad():
        assert Radius(CUTOFF)(pos - step).shape[1] == Radius(CUTOFF)(pos + step).shape[1] + 2  # one pair leaves
        smooth_jump = (pooled(smooth, x, pos - step) - pooled(smooth, x, pos + step)).abs().max()
        hard_jump = (pooled(hard, x, pos - step) - pooled(hard, x, pos + step)).abs().max()
    assert smooth_jump < 1e-8, smooth_jump
    assert hard_jump > 1e-3, hard_jump  # without the cutoff the same move is a jump


def test_cutoff_on_a_complete_graph_equals_the_radius_graph():
    """Edges beyond the cutoff get weight exactly 0: they contribute nothing, as if absent."""
    x, pos = cloud()
    pos[5, 0] += 0.2  # now clearly outside
    model = make_model(cutoff=CUTOFF)
    with torch.no_grad():
        complete = model(x, pos, Complete()(pos))
        radius = model(x, pos, Radius(CUTOFF, envelope=None)(pos))
    assert Complete()(pos).shape[1] > Radius(CUTOFF)(pos).shape[1]
    assert relative_error(complete, radius) < 1e-13


def test_cutoff_model_is_equivariant(num_rotations):
    """The pooled output: random rotations, each with a translation, a pure translation, a permutation."""
    x, pos = cloud()
    errors = assert_equivariant(
        make_model(cutoff=CUTOFF),
        FIBER_IN,
        FIBER_OUT,
        x=x,
        pos=pos,
        graph=Complete()(pos),
        num_rotations=min(5, num_rotations),
        rtol=1e-12,
        atol=0.0,
    )
    assert len(errors.rotations) == min(5, num_rotations)


def test_cutoff_gradients_match_finite_differences_near_the_cutoff():
    x, pos = cloud()
    pos[5, 0] -= 0.01  # inside, on the envelope's slope
    edge_index = Complete()(pos)
    model = make_model(cutoff=CUTOFF, envelope="polynomial")
    weights = torch.randn(1, FIBER_OUT.dim, dtype=F64)

    def energy(p: torch.Tensor) -> torch.Tensor:
        return (model(x, p, edge_index) * weights).sum()

    p = pos.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(p), p)
    eps = 1e-6
    numeric = torch.zeros_like(pos)
    with torch.no_grad():
        for i in range(pos.shape[0]):
            for d in range(3):
                shift = torch.zeros_like(pos)
                shift[i, d] = eps
                numeric[i, d] = (energy(pos + shift) - energy(pos - shift)) / (2 * eps)
    assert grad[5].abs().max() > 1e-4  # the node on the slope feels the envelope
    assert relative_error(grad, numeric) < 1e-6


def test_edge_weight_argument_equals_a_weighted_basis_in_every_layer_and_the_model():
    x, pos = cloud()
    edge_index = to_undirected(Radius(CUTOFF, envelope=None)(pos))
    dist = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
    weight = cosine_envelope(dist, CUTOFF)
    torch.manual_seed(0)
    conv = SE3Conv(FIBER_IN, FIBER_HIDDEN).double()
    attention = SE3Attention(FIBER_IN, FIBER_HIDDEN, num_heads=2).double()
    weighted = compute_basis(pos, edge_index, 1, edge_weight=weight)
    for layer in (conv, attention):
        by_argument = layer(x, pos, edge_index, edge_weight=weight)
        assert torch.equal(by_argument, layer(x, None, edge_index, basis=weighted))
        assert relative_error(by_argument, layer(x, pos, edge_index)) > 1e-3  # the weights do something
    model = make_model()
    with_cutoff = make_model(cutoff=CUTOFF)
    # equal up to rounding: the model's lengths come from the basis, these from torch.norm
    assert relative_error(model(x, pos, edge_index, edge_weight=weight), with_cutoff(x, pos, edge_index)) < 1e-14
    # weights from the argument and from the cutoff multiply
    half = torch.full_like(weight, 0.5)
    halved = model(x, pos, edge_index, edge_weight=0.5 * weight)
    assert relative_error(with_cutoff(x, pos, edge_index, edge_weight=half), halved) < 1e-14


def test_envelope_weight_is_the_named_envelope():
    dist = torch.linspace(0, 2 * CUTOFF, 13, dtype=F64)
    assert torch.equal(envelope_weight(dist, CUTOFF), cosine_envelope(dist, CUTOFF))
    assert torch.equal(envelope_weight(dist, CUTOFF, "polynomial"), polynomial_envelope(dist, CUTOFF))
    assert torch.equal(envelope_weight(dist, CUTOFF)[dist >= CUTOFF], torch.zeros(7, dtype=F64))
    assert envelope_weight(dist, CUTOFF)[0] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cutoff": 0.0}, "cutoff: expected a finite radius > 0"),
        ({"cutoff": float("inf")}, "cutoff: expected a finite radius > 0"),
        ({"cutoff": "1"}, "cutoff: expected a finite radius > 0"),
        ({"cutoff": 1.0, "envelope": "gauss"}, "envelope: expected one of"),
        ({"cutoff": 1.0, "envelope": None}, "envelope: expected one of"),
    ],
)
def test_bad_cutoff_or_envelope_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_model(**kwargs)


def test_bad_edge_weight_raises_naming_it():
    x, pos = cloud()
    edge_index = Complete()(pos)
    num_edges = edge_index.shape[1]
    model, conv = make_model(), SE3Conv(FIBER_IN, FIBER_HIDDEN).double()
    for call in (
        lambda w, **kw: model(x, pos, edge_index, edge_weight=w, **kw),
        lambda w, **kw: conv(x, pos, edge_index, edge_weight=w, **kw),
    ):
        with pytest.raises(ValueError, match=r"edge_weight: expected shape \[30\]"):
            call(torch.ones(num_edges - 1, dtype=F64))
        with pytest.raises(ValueError, match=r"edge_weight: expected weights in \[0, 1\]"):
            call(torch.full((num_edges,), 1.5, dtype=F64))
        with pytest.raises(ValueError, match=r"edge_weight: expected weights in \[0, 1\]"):
            call(torch.full((num_edges,), float("nan"), dtype=F64))
        with pytest.raises(ValueError, match="edge_weight: expected a tensor of the model's dtype"):
            call(torch.ones(num_edges, dtype=torch.float32))
        with pytest.raises(ValueError, match="edge_weight: expected a tensor"):
            call([1.0] * num_edges)
    weighted = compute_basis(pos, edge_index, 1, edge_weight=torch.ones(num_edges, dtype=F64))
    ones = torch.ones(num_edges, dtype=F64)
    with pytest.raises(ValueError, match="envelope weights already"):
        model(x, pos, edge_index, basis=weighted, edge_weight=ones)
    with pytest.raises(ValueError, match="envelope weights already"):
        make_model(cutoff=CUTOFF)(x, pos, edge_index, basis=weighted)
    with pytest.raises(ValueError, match="envelope weights already"):
        conv(x, pos, edge_index, basis=weighted, edge_weight=ones)
