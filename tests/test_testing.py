"""pyg_se3.testing.assert_equivariant: passes on the library's layers and models, fails (naming the check) on
modules that break rotation, translation or permutation equivariance."""

import doctest

import helpers
import pytest
import torch
from helpers import unzero_displacements
from torch import nn

import pyg_se3.testing
from pyg_se3 import Fiber
from pyg_se3.graph import Complete
from pyg_se3.models import IterativeOutput, IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import SE3Attention, SE3Conv
from pyg_se3.testing import POSITIONS, EquivarianceErrors, assert_equivariant, default_tolerances

FIBER_IN = Fiber({0: 2, 1: 1, 2: 1})
FIBER_OUT = Fiber({0: 2, 1: 2, 2: 1})
SMALL = {"radial_hidden": 8, "radial_layers": 1}


def conv():
    return SE3Conv(FIBER_IN, FIBER_OUT, **SMALL).double()


def iterative():
    model = IterativeSE3Transformer(
        Fiber({0: 1, 1: 1}), Fiber({0: 2, 1: 2}), num_iterations=2, num_heads=1, graph=Complete(), **SMALL
    )
    return unzero_displacements(model.double())


def assert_small(errors: EquivarianceErrors, bound: float = 1e-10) -> None:
    values = [errors.rotation, *errors.rotations, errors.translation, errors.permutation]
    assert all(isinstance(v, float) and 0 <= v <= bound for v in values), errors
    assert len(errors.rotations) == 3 and errors.rotation == max(errors.rotations)


@pytest.mark.parametrize(
    "make",
    [
        conv,
        lambda: SE3Attention(FIBER_IN, FIBER_OUT, num_heads=1, **SMALL).double(),
        lambda: SE3Transformer(FIBER_IN, Fiber({0: 4, 1: 4}), FIBER_OUT, num_layers=2, num_heads=2, **SMALL).double(),
    ],
    ids=["conv", "attention", "transformer"],
)
def test_passes_on_graph_layers_and_models(make):
    errors = assert_equivariant(make(), FIBER_IN, FIBER_OUT)
    assert_small(errors)
    assert (errors.rtol, errors.atol) == default_tolerances(torch.float64)


def test_passes_on_the_iterative_model_with_positions_as_outputs():
    model = iterative()
    x, pos = torch.randn(8, 4, dtype=torch.float64), torch.randn(8, 3, dtype=torch.float64)
    with torch.no_grad():
        assert (model(x, pos).pos - pos).abs().max() > 1e-4  # the points move: out.pos is a real test
    assert_small(assert_equivariant(model, Fiber({0: 1, 1: 1}), Fiber({0: 2, 1: 2}), x=x, pos=pos), 1e-9)


def test_positions_output_must_translate():
    model = iterative()

    def call(m, x, pos, edge_index):
        out = m(x, pos)
        return IterativeOutput(pos=2 * out.pos, x=out.x)  # scales the translation too

    with pytest.raises(AssertionError, match=r"translation equivariance failed for output 'pos'"):
        assert_equivariant(model, Fiber({0: 1, 1: 1}), Fiber({0: 2, 1: 2}), call=call)
    # without translations, 2 * pos is still rotation- and permutation-equivariant
    errors = assert_equivariant(model, Fiber({0: 1, 1: 1}), Fiber({0: 2, 1: 2}), call=call, translate=False)
    assert errors.translation is None and errors.rotation <= 1e-9


def test_float32_tolerance_path():
    errors = assert_equivariant(conv().float(), FIBER_IN, FIBER_OUT, dtype=torch.float32)
    assert (errors.rtol, errors.atol) == default_tolerances(torch.float32) == (1e-4, 1e-6)
    assert 1e-9 < errors.rotation <= 1e-4  # float32 rounding, well within tolerance
    with pytest.raises(AssertionError, match=r"^rotation equivariance failed .*\(rotation 0 of 3\)"):
        assert_equivariant(
            conv().float(), FIBER_IN, FIBER_OUT, dtype=torch.float32, rtol=1e-12, atol=0, translate=False
        )


class AddsPosition(nn.Module):
    """Adds the raw position to a type-1 output: rotation-equivariant, but not translation-invariant."""

    def __init__(self):
        super().__init__()
        self.conv = conv()

    def forward(self, x, pos, edge_index):
        out = self.conv(x, pos, edge_index)
        return torch.cat([out[:, :2], out[:, 2:5] + pos, out[:, 5:]], dim=1)


class CoordinateInScalar(nn.Module):
    """Puts a (centred, so translation-invariant) raw x coordinate into a scalar: not rotation-invariant."""

    def __init__(self):
        super().__init__()
        self.conv = conv()

    def forward(self, x, pos, edge_index):
        out = self.conv(x, pos, edge_index)
        return torch.cat([out[:, :1] + pos[:, :1] - pos[:, :1].mean(), out[:, 1:]], dim=1)


class NodeIndexInScalar(nn.Module):
    """Adds each node's index to a scalar: SE(3)-invariant, but not permutation-equivariant."""

    def __init__(self):
        super().__init__()
        self.conv = conv()

    def forward(self, x, pos, edge_index):
        out = self.conv(x, pos, edge_index)
        index = torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1)
        return torch.cat([out[:, :1] + 0.1 * index, out[:, 1:]], dim=1)


def test_fails_on_a_translation_variant_module():
    with pytest.raises(AssertionError, match=r"translation equivariance failed for output 'out': max relative error"):
        assert_equivariant(AddsPosition(), FIBER_IN, FIBER_OUT)
    # it is rotation-equivariant: without translations it passes
    assert assert_equivariant(AddsPosition(), FIBER_IN, FIBER_OUT, translate=False).rotation <= 1e-10


def test_fails_on_a_rotation_variant_module():
    with pytest.raises(
        AssertionError, match=r"rotation \(with translation\) equivariance failed .*\(rotation 0 of 3\)"
    ):
        assert_equivariant(CoordinateInScalar(), FIBER_IN, FIBER_OUT)
    with pytest.raises(AssertionError, match=r"^rotation equivariance failed .*max relative error \d\.\d+e[+-]\d+"):
        assert_equivariant(CoordinateInScalar(), FIBER_IN, FIBER_OUT, translate=False)


def test_reflections_are_checked_with_parity():
    # SE(3) layers couple true tensors to pseudo-tensors (the cross product r x f): reflections break them, and
    # only the check asked for with parity=True sees it
    assert assert_equivariant(conv(), FIBER_IN, FIBER_OUT).reflection is None
    with pytest.raises(AssertionError, match=r"^reflection \(with translation\) equivariance failed for output 'out'"):
        assert_equivariant(conv(), FIBER_IN, FIBER_OUT, parity=True)
    e3 = SE3Conv(FIBER_IN, FIBER_OUT, parity=True, **SMALL).double()
    errors = assert_equivariant(e3, FIBER_IN, FIBER_OUT, parity=True)
    assert_small(errors)
    assert 0 <= errors.reflection <= 1e-10


def test_fails_on_a_permutation_breaking_module():
    with pytest.raises(AssertionError, match=r"permutation equivariance failed for output 'out'"):
        assert_equivariant(NodeIndexInScalar(), FIBER_IN, FIBER_OUT)
    errors = assert_equivariant(NodeIndexInScalar(), FIBER_IN, FIBER_OUT, permute=False)
    assert errors.permutation is None and errors.rotation <= 1e-10


def test_call_graph_and_dict_outputs():
    layer = SE3Conv(FIBER_IN, FIBER_OUT, edge_dim=1, **SMALL).double()

    def call(m, x, pos, edge_index):  # invariant edge features: the edge lengths
        length = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=1, keepdim=True)
        return {"h": m(x, pos, edge_index, length), "centre": pos.mean(0, keepdim=True)}

    kinds = {"h": FIBER_OUT, "centre": POSITIONS}
    errors = assert_equivariant(layer, FIBER_IN, kinds, call=call, graph=Complete(), num_nodes=5, num_rotations=2)
    assert len(errors.rotations) == 2 and errors.rotation <= 1e-10 and errors.permutation <= 1e-10
    edge_index = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])
    assert assert_equivariant(layer, FIBER_IN, kinds, call=call, graph=edge_index, num_nodes=4).rotation <= 1e-10
    with pytest.raises(ValueError, match="give a mapping with exactly these keys"):
        assert_equivariant(layer, FIBER_IN, FIBER_OUT, call=call)


def test_is_reproducible_and_leaves_the_global_rng_alone():
    layer = conv()
    state = torch.get_rng_state()
    first = assert_equivariant(layer, FIBER_IN, FIBER_OUT, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert assert_equivariant(layer, FIBER_IN, FIBER_OUT, seed=3) == assert_equivariant(
        layer, FIBER_IN, FIBER_OUT, seed=3
    )
    assert first.rotation <= 1e-10


def test_bad_arguments():
    with pytest.raises(ValueError, match="last dimension"):
        assert_equivariant(conv(), FIBER_IN, Fiber({0: 1}))
    with pytest.raises(TypeError, match="fiber_out"):
        assert_equivariant(conv(), FIBER_IN, "1x0e")
    with pytest.raises(ValueError, match="num_rotations"):
        assert_equivariant(conv(), FIBER_IN, FIBER_OUT, num_rotations=0)


def test_docstring_examples_run():
    result = doctest.testmod(pyg_se3.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_given_rotations_replace_the_random_ones():
    quarter_turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    errors = assert_equivariant(conv(), FIBER_IN, FIBER_OUT, rotations=torch.stack([quarter_turn, quarter_turn.T]))
    assert len(errors.rotations) == 2 and errors.rotation <= 1e-10
    assert len(assert_equivariant(conv(), FIBER_IN, FIBER_OUT, rotations=quarter_turn.float()).rotations) == 1
    # a rotation-variant module fails at the given rotation: the message names its index
    with pytest.raises(AssertionError, match=r"\(rotation 0 of 1\)"):
        assert_equivariant(CoordinateInScalar(), FIBER_IN, FIBER_OUT, rotations=quarter_turn, translate=False)
    with pytest.raises(ValueError, match="rotations: expected proper rotation matrices"):
        assert_equivariant(conv(), FIBER_IN, FIBER_OUT, rotations=-quarter_turn)  # det -1: a reflection
    with pytest.raises(ValueError, match="rotations: expected proper rotation matrices"):
        assert_equivariant(conv(), FIBER_IN, FIBER_OUT, rotations=2 * quarter_turn)
    with pytest.raises(ValueError, match=r"rotations: expected shape \[K, 3, 3\]"):
        assert_equivariant(conv(), FIBER_IN, FIBER_OUT, rotations=torch.eye(2, dtype=torch.float64))


def test_the_trajectory_of_an_output_object_is_checked_as_positions():
    model = iterative()
    fiber_in, hidden = Fiber({0: 1, 1: 1}), Fiber({0: 2, 1: 2})

    def call(m, x, pos, edge_index):  # the final positions and features are right, the first iterate is not
        out = m(x, pos)
        return IterativeOutput(pos=out.pos, x=out.x, trajectory=[out.trajectory[0], 2 * out.trajectory[1]])

    with pytest.raises(AssertionError, match=r"translation equivariance failed for output 'trajectory\[1\]'"):
        assert_equivariant(model, fiber_in, hidden, call=call)
    # a mapping that names .x and .pos only leaves the trajectory out
    errors = assert_equivariant(model, fiber_in, {"x": hidden, "pos": POSITIONS}, call=call)
    assert errors.rotation <= 1e-9
    # the unbroken model passes with its trajectory
    assert assert_equivariant(model, fiber_in, {"x": hidden, "pos": POSITIONS, "trajectory": POSITIONS}).rotation < 1e-9


def test_lists_of_tensors_in_dict_outputs():
    layer = conv()

    def call(m, x, pos, edge_index):
        return {"h": [m(x, pos, edge_index), x], "path": [pos, pos.mean(0, keepdim=True)]}

    kinds = {"h": FIBER_OUT, "path": POSITIONS}
    with pytest.raises(ValueError, match=r"output 'h\[1\]': expected last dimension"):
        assert_equivariant(layer, FIBER_IN, kinds, call=call)

    def fixed(m, x, pos, edge_index):
        return {"h": (m(x, pos, edge_index),), "path": [pos, pos.mean(0, keepdim=True)]}

    assert assert_equivariant(layer, FIBER_IN, kinds, call=fixed).rotation <= 1e-10

    def moved_twice(m, x, pos, edge_index):
        return {"h": (m(x, pos, edge_index),), "path": [pos, 2 * pos]}

    with pytest.raises(AssertionError, match=r"translation equivariance failed for output 'path\[1\]'"):
        assert_equivariant(layer, FIBER_IN, kinds, call=moved_twice)


def test_forces_computed_with_autograd_in_call():
    """Forces -dE/dpos of an invariant energy transform as a type-1 fiber: ``call`` turns autograd back on."""
    layer = SE3Conv(FIBER_IN, Fiber({0: 1}), **SMALL).double()

    def forces(m, x, pos, edge_index):
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            return -torch.autograd.grad(m(x, pos, edge_index).square().sum(), pos)[0]

    errors = assert_equivariant(layer, FIBER_IN, Fiber({1: 1}), call=forces)
    assert errors.rotation <= 1e-10 and errors.translation <= 1e-10 and errors.permutation <= 1e-10
    with pytest.raises(AssertionError, match="rotation"):  # not a scalar: its forces would not rotate as a vector
        assert_equivariant(layer, FIBER_IN, Fiber({0: 3}), call=forces, translate=False)


def test_the_fast_tier_lowers_the_rotations_and_the_gradcheck_cost(fast, num_rotations):
    """tests/conftest.py: ``--fast`` (``make test-fast``) checks 3 rotations and runs fast-mode gradchecks;
    without it (``make test``) 20 rotations and full Jacobians."""
    assert num_rotations == (3 if fast else 20) == helpers.NUM_ROTATIONS == len(helpers.random_rotations())
    for check in (torch.autograd.gradcheck, torch.autograd.gradgradcheck):
        assert getattr(check, "keywords", {}) == ({"fast_mode": True} if fast else {})
    linear = torch.nn.Linear(3, 2).double()
    assert torch.autograd.gradcheck(linear, (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))
