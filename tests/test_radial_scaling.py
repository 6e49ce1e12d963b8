"""``radial_scaling="forward"``: the radial heads' fan-in factor on their output at every call, not in their weights."""

from __future__ import annotations

import pytest
import torch
from helpers import relative_error, unzero_displacements

from pyg_se3 import Fiber
from pyg_se3.graph import KNN, Complete
from pyg_se3.models import IterativeSE3Transformer
from pyg_se3.nn import SE3Conv
from pyg_se3.nn.kernel import EdgeKernel
from pyg_se3.nn.radial import RadialMLP
from pyg_se3.runtime import cli
from pyg_se3.runtime.tasks import from_checkpoint
from pyg_se3.runtime.training import read_checkpoint
from pyg_se3.testing import POSITIONS, assert_equivariant

FIBER_IN, FIBER_HIDDEN = Fiber({0: 2, 1: 1}), Fiber({0: 4, 1: 4, 2: 4})


def make_model(radial_scaling: str, kernel: str = "full", graph=None) -> IterativeSE3Transformer:
    """Built in float64: in float32 ``"init"`` rounds the scaled initial weights, ``"forward"`` the unscaled ones."""
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return unzero_displacements(_model(radial_scaling, kernel, graph))
    finally:
        torch.set_default_dtype(default)


def _model(radial_scaling: str, kernel: str, graph) -> IterativeSE3Transformer:
    return IterativeSE3Transformer(
        FIBER_IN,
        FIBER_HIDDEN,
        num_iterations=2,
        layers_per_iteration=2,
        graph=graph if graph is not None else Complete(),
        num_heads=2,
        radial_hidden=8,
        kernel=kernel,
        radial_scaling=radial_scaling,
        displacement_scale=0.3,
    )


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch = torch.tensor([0] * 5 + [1] * 4)
    x = torch.randn(9, FIBER_IN.dim, generator=g, dtype=torch.float64)
    return x, torch.randn(9, 3, generator=g, dtype=torch.float64), batch


def radial_heads(model: torch.nn.Module) -> dict[str, float]:
    """Qualified names of every radial head's weight and bias, with the head's fan-in factor."""
    scales = {}
    for name, module in model.named_modules():
        if isinstance(module, RadialMLP):
            for h, scale in enumerate(module.head_scales):
                scales[f"{name}.heads.{h}.weight"] = scales[f"{name}.heads.{h}.bias"] = scale
    return scales


@pytest.mark.parametrize("kernel", ["full", "depthwise"])
@pytest.mark.parametrize("graph", ["complete", "knn"])  # the complete graph's edges pair up with their reverses
def test_the_same_model_at_initialisation(kernel, graph):
    builder = Complete() if graph == "complete" else KNN(k=3)
    x, pos, batch = inputs()
    init, forward = (make_model(s, kernel, builder) for s in ("init", "forward"))
    with torch.no_grad():
        a, b = init(x, pos, batch), forward(x, pos, batch)
    assert float((a.pos - pos).norm()) > 1e-2  # the points move
    assert relative_error(b.pos, a.pos) < 1e-13 and relative_error(b.x, a.x) < 1e-13
    # the weights differ by the factor: the scale lives in the output
    heads = radial_heads(forward)
    weights_init, weights_forward = dict(init.named_parameters()), dict(forward.named_parameters())
    for name, scale in heads.items():
        torch.testing.assert_close(weights_forward[name] * scale, weights_init[name], rtol=1e-15, atol=0)
    assert min(heads.values()) < 1


@pytest.mark.parametrize("kernel", ["full", "depthwise"])
@pytest.mark.parametrize("graph", ["complete", "knn"])
def test_head_gradients_are_the_factor_times_those_of_init_scaling(kernel, graph):
    # L_forward(u) = L_init(s u): dL/du = s dL/dw for the heads, every other gradient equal
    builder = Complete() if graph == "complete" else KNN(k=3)
    x, pos, batch = inputs(1)
    grads = []
    for scaling in ("init", "forward"):
        model = make_model(scaling, kernel, builder)
        out = model(x, pos, batch)
        (out.pos.square().sum() + out.x.square().sum()).backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    heads = radial_heads(model)
    assert heads
    for name, grad in grads[1].items():
        expected = grads[0][name] * heads.get(name, 1.0)
        assert float(expected.abs().max()) > 0, name
        assert relative_error(grad, expected) < 1e-12, name


def test_adams_first_step_moves_a_forward_head_only_its_factor_as_far():
    # Adam's first step is lr * g / (|g| + eps) per weight, about lr whatever the weight's scale: on a head whose
    # factor is in the output, the output moves only `scale` times as far
    invariants = torch.randn(50, 2, dtype=torch.float64)
    target = torch.randn(50, 96, dtype=torch.float64)
    moves = []
    for scaling in ("init", "forward"):
        torch.manual_seed(0)
        mlp = RadialMLP(2, [96], hidden_dim=8, head_scales=[0.05], head_scaling=scaling).double()
        before = mlp(invariants)[0].detach()
        optimizer = torch.optim.Adam(mlp.heads.parameters(), lr=1e-3)
        (mlp(invariants)[0] * target).sum().backward()
        optimizer.step()
        moves.append(mlp(invariants)[0].detach() - before)
    assert relative_error(moves[1], 0.05 * moves[0]) < 1e-5  # up to Adam's eps
    assert float(moves[0].abs().max()) > 1e-3


def test_equivariant_after_training_like_weights(num_rotations):
    model = make_model("forward", graph=KNN(k=3))
    with torch.no_grad():  # weights far from their initial scale, as training leaves them
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, pos, _ = inputs(2)

    def call(module, x, pos, edge_index):  # the model builds its own graphs, rebuilt every iteration
        out = module(x, pos)
        return {"pos": out.pos, "x": out.x}

    assert_equivariant(
        model,
        FIBER_IN,
        {"pos": POSITIONS, "x": FIBER_HIDDEN},
        x=x,
        pos=pos,
        call=call,
        num_rotations=num_rotations,
        rtol=1e-12,
        atol=0,
    )


def test_a_state_dict_of_one_scaling_does_not_load_into_the_other():
    init, forward = SE3Conv(FIBER_IN, FIBER_HIDDEN), SE3Conv(FIBER_IN, FIBER_HIDDEN, radial_scaling="forward")
    with pytest.raises(RuntimeError, match=r"Unexpected key.*scales"):
        init.load_state_dict(forward.state_dict())
    with pytest.raises(RuntimeError, match=r"Missing key.*scales"):
        forward.load_state_dict(init.state_dict())
    again = SE3Conv(FIBER_IN, FIBER_HIDDEN, radial_scaling="forward")
    again.load_state_dict(forward.state_dict())
    assert "radial_scaling='forward'" in repr(again) and "radial_scaling" not in repr(init)


def test_bad_scaling_names_the_argument():
    with pytest.raises(ValueError, match=r"radial_scaling: expected one of .*'init', 'forward'.*'output'"):
        SE3Conv(FIBER_IN, FIBER_HIDDEN, radial_scaling="output")
    with pytest.raises(ValueError, match="radial_scaling"):
        EdgeKernel(FIBER_IN, FIBER_HIDDEN, radial_scaling="Forward")
    with pytest.raises(ValueError, match="head_scaling: expected one of"):
        RadialMLP(1, [4], head_scaling="both")


def test_the_cli_option_reaches_every_kernel_and_the_checkpoint(tmp_path):
    args = ["train", "--task", "nbody", "--root", str(tmp_path / "data"), "--epochs", "1", "--max-batches", "1"]
    model = ["--iterations", "1", "--layers", "1", "--channels", "4", "--no-progress", "--radial-scaling", "forward"]
    assert cli.main([*args, *model, "--out", str(tmp_path / "run")]) == 0
    task, restored = from_checkpoint(read_checkpoint(str(tmp_path / "run" / "best.pt")))
    assert task.options.radial_scaling == "forward"
    mlps = [m for m in restored.modules() if isinstance(m, RadialMLP)]
    assert mlps and all(m.head_scaling == "forward" for m in mlps)
