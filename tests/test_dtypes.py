"""No silent wrong results, dtypes and types: inputs of another dtype than the model's parameters, non-tensor
inputs and models cast to 16 bits get a ``ValueError`` naming the argument and the dtype; huge finite positions
give finite outputs; a processed dataset file made with another ``pre_filter`` is rebuilt, not loaded."""

import pytest
import torch

from pyg_se3 import Fiber, compute_basis
from pyg_se3.datasets import EnergyMinimisation
from pyg_se3.graph import KNN, complete_edge_index
from pyg_se3.models import IterativeSE3Transformer, SE3Transformer
from pyg_se3.nn import SE3Attention, SE3Conv

FIBER = Fiber({0: 2, 1: 1})
NUM_NODES, EDGE_DIM = 5, 2


def inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(NUM_NODES, FIBER.dim, generator=g).to(dtype)
    pos = torch.randn(NUM_NODES, 3, generator=g).to(dtype)
    edge_index = complete_edge_index(NUM_NODES)
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=g).to(dtype)
    return x, pos, edge_index, edge_attr


def transformer() -> SE3Transformer:
    return SE3Transformer(FIBER, FIBER, FIBER, num_layers=1, num_heads=1, edge_dim=EDGE_DIM, radial_hidden=4)


def iterative(edge_dim: int = 0) -> IterativeSE3Transformer:
    return IterativeSE3Transformer(
        FIBER, FIBER, num_iterations=1, layers_per_iteration=1, num_heads=1, graph=KNN(3), edge_dim=edge_dim,
        radial_hidden=4,
    )  # fmt: skip


def layers() -> list[torch.nn.Module]:
    return [
        SE3Conv(FIBER, FIBER, edge_dim=EDGE_DIM, radial_hidden=4),
        SE3Attention(FIBER, FIBER, num_heads=1, edge_dim=EDGE_DIM, radial_hidden=4),
    ]


def replaced(name: str, value: object) -> dict[str, object]:
    x, pos, edge_index, edge_attr = inputs()
    arguments = {"x": x, "pos": pos, "edge_index": edge_index, "edge_attr": edge_attr}
    arguments[name] = value
    return arguments


WRONG_DTYPES = [("x", torch.float16), ("x", torch.float64), ("pos", torch.float16), ("pos", torch.float64)]
WRONG_DTYPES += [("edge_attr", torch.float64), ("edge_attr", torch.float16)]


@pytest.mark.parametrize(("name", "dtype"), WRONG_DTYPES)
def test_transformer_and_layers_name_an_input_of_another_dtype(name, dtype):
    value = dict(zip(["x", "pos", "edge_index", "edge_attr"], inputs(), strict=True))[name].to(dtype)
    for module in [transformer(), *layers()]:
        with pytest.raises(ValueError, match=rf"^{name}: .*torch\.float32.*{dtype}"):
            module(**replaced(name, value))


@pytest.mark.parametrize("name", ["x", "pos", "edge_attr"])
@pytest.mark.parametrize("kind", ["list", "numpy"])
def test_transformer_and_layers_name_a_non_tensor_input(name, kind):
    value = dict(zip(["x", "pos", "edge_index", "edge_attr"], inputs(), strict=True))[name]
    value = value.tolist() if kind == "list" else value.numpy()
    for module in [transformer(), *layers()]:
        with pytest.raises(ValueError, match=rf"^{name}: expected .*tensor"):
            module(**replaced(name, value))


def test_float64_model_rejects_float32_inputs():
    x, pos, edge_index, edge_attr = inputs()
    with pytest.raises(ValueError, match=r"^x: .*torch\.float64.*torch\.float32"):
        transformer().double()(x, pos, edge_index, edge_attr)


@pytest.mark.parametrize(("name", "dtype"), [("x", torch.float64), ("pos", torch.float16)])
def test_iterative_names_an_input_of_another_dtype(name, dtype):
    x, pos, _, _ = inputs()
    arguments = {"x": x, "pos": pos}
    arguments[name] = arguments[name].to(dtype)
    with pytest.raises(ValueError, match=rf"^{name}: .*torch\.float32.*{dtype}"):
        iterative()(**arguments)


@pytest.mark.parametrize("bad", ["float64", "list"])
def test_iterative_names_bad_edge_attr_from_edge_attr_fn(bad):
    def edge_attr_fn(pos, edge_index):
        attr = torch.ones(edge_index.shape[1], EDGE_DIM, dtype=torch.float64)
        return attr.tolist() if bad == "list" else attr

    x, pos, _, _ = inputs()
    with pytest.raises(ValueError, match=r"^edge_attr: expected"):
        iterative(EDGE_DIM)(x, pos, edge_attr_fn=edge_attr_fn)


def test_float32_inputs_still_run_under_autocast():
    x, pos, edge_index, edge_attr = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = transformer()(x, pos, edge_index, edge_attr)
        result = iterative()(x, pos)
    assert torch.isfinite(out).all() and torch.isfinite(result.pos).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_cast_to_16_bits_gets_a_clear_error(dtype):
    x, pos, edge_index, edge_attr = inputs(dtype)
    for module in [transformer(), *layers()]:
        with pytest.raises(ValueError, match=rf"{dtype}.*torch\.autocast"):
            module.to(dtype)(x, pos, edge_index, edge_attr)
    with pytest.raises(ValueError, match=rf"{dtype}.*torch\.autocast"):
        iterative().to(dtype)(x, pos)


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e37])
def test_positions_whose_squared_distances_overflow_are_named(scale):
    x, pos, edge_index, edge_attr = inputs()
    pos = pos * scale
    for module in [transformer(), *layers()]:
        with pytest.raises(ValueError, match=r"^pos: coordinates must lie within .*overflow"):
            module(x, pos, edge_index, edge_attr)
    with pytest.raises(ValueError, match=r"^pos: coordinates must lie within .*overflow"):
        iterative()(x, pos)
    with pytest.raises(ValueError, match=r"^pos: coordinates must lie within .*overflow"):
        compute_basis(pos, edge_index, 1)


def test_positions_within_the_bound_give_finite_outputs():
    x, pos, edge_index, edge_attr = inputs()
    pos = pos / pos.abs().max() * torch.finfo(torch.float32).max ** 0.5 / 4
    assert torch.isfinite(transformer()(x, pos, edge_index, edge_attr)).all()


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e37])
def test_unchecked_huge_finite_positions_give_finite_lengths_and_directions(scale):
    """Without the value check (as under torch.compile) the basis of representable positions stays finite."""
    _, pos, edge_index, _ = inputs()
    pos = (pos * scale).requires_grad_(True)
    basis = compute_basis(pos, edge_index, 2, check_values=False)
    for field in [basis.dist, *basis.pairs.values()]:
        assert torch.isfinite(field).all()
    # directions do not depend on the scale: the basis is that of the unscaled points
    reference = compute_basis(pos.detach().double() / scale, edge_index, 2)
    for pair in basis.pairs:
        torch.testing.assert_close(basis[pair].double(), reference[pair], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(basis.dist.double() / scale, reference.dist, rtol=1e-5, atol=0)
    (grad,) = torch.autograd.grad(basis.pairs[(2, 2)].sum() + basis.pairs[(1, 1)].sum(), pos)
    assert torch.isfinite(grad).all()


def test_processed_file_made_with_another_pre_filter_is_rebuilt(tmp_path):
    def keep_three(data) -> bool:
        keep_three.count += 1
        return keep_three.count <= 3

    keep_three.count = 0
    assert len(EnergyMinimisation(tmp_path, "train", num_samples=10, pre_filter=keep_three, progress=False)) == 3
    assert len(EnergyMinimisation(tmp_path, "val", num_samples=10, progress=False)) == 10
    with pytest.warns(UserWarning, match="pre_filter"):
        again = EnergyMinimisation(tmp_path, "train", num_samples=10, progress=False)
    assert len(again) == 10
    # the rebuilt file records that it was made without a filter: it loads silently now
    assert len(EnergyMinimisation(tmp_path, "train", num_samples=10, progress=False)) == 10


def test_processed_file_made_with_another_pre_transform_is_rebuilt(tmp_path):
    def shift(data):
        data.pos = data.pos + 1
        return data

    plain = EnergyMinimisation(tmp_path, "train", num_samples=10, progress=False)
    with pytest.warns(UserWarning, match="pre_transform"):
        shifted = EnergyMinimisation(tmp_path, "train", num_samples=10, pre_transform=shift, progress=False)
    torch.testing.assert_close(shifted[0].pos, plain[0].pos + 1)
