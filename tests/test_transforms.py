"""RandomRotation, RandomReflection, RandomTimeReversal and RandomTranslation: every geometric field moves
consistently, rotations are Haar-uniform, reflections and time reversals act on each graph of a batch on its own."""

import math

import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

from pyg_se3 import Fiber
from pyg_se3.datasets import NBodyCharged, ParticleDynamics
from pyg_se3.datasets.simulate import velocity_verlet
from pyg_se3.transforms import RandomReflection, RandomRotation, RandomTimeReversal, RandomTranslation

F64 = torch.float64


def _sample(n: int = 6, fiber: Fiber | None = None) -> Data:
    fiber = fiber or Fiber({0: 1, 1: 1})
    g = torch.Generator().manual_seed(n)
    return Data(
        pos=torch.randn(n, 3, generator=g, dtype=F64),
        vel=torch.randn(n, 3, generator=g, dtype=F64),
        y=torch.randn(n, 3, generator=g, dtype=F64),
        x=torch.randn(n, fiber.dim, generator=g, dtype=F64),
        mass=torch.rand(n, 1, generator=g, dtype=F64),
        edge_attr=torch.randn(4, 1, generator=g, dtype=F64),
    )


def _recover_rotation(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """``R`` with ``after = before @ R.T`` (least squares; exact for >= 3 independent points)."""
    return torch.linalg.lstsq(before, after).solution.T


def test_rotates_every_vector_field_consistently():
    data = _sample()
    out = RandomRotation()(data)
    R = _recover_rotation(data.pos, out.pos)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=F64), atol=1e-12, rtol=0)
    assert abs(float(torch.linalg.det(R)) - 1.0) < 1e-12  # proper: no reflection
    assert float((R - torch.eye(3, dtype=F64)).abs().max()) > 1e-3  # it did rotate
    torch.testing.assert_close(out.vel, data.vel @ R.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.y, data.y @ R.T, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.x[:, 1:], data.x[:, 1:] @ R.T, atol=1e-12, rtol=0)  # type-1 part of x
    torch.testing.assert_close(out.x[:, :1], data.x[:, :1], atol=0, rtol=0)  # type-0 part untouched
    assert torch.equal(out.mass, data.mass) and torch.equal(out.edge_attr, data.edge_attr)
    # the input is not modified
    assert torch.equal(data.pos, _sample().pos)


def test_rotates_higher_degree_features_with_the_wigner_matrix():
    fiber = Fiber({0: 2, 1: 2, 2: 1})
    data = _sample(fiber=fiber)
    transform = RandomRotation(fiber=fiber)
    out = transform(data)
    R = _recover_rotation(data.pos, out.pos)
    torch.testing.assert_close(out.x, data.x @ fiber.D_from_matrix(R).T, atol=1e-10, rtol=0)
    degree2 = fiber.offsets()[2]
    # independently: the degree-2 block by e3nn's Wigner D (which e3nn evaluates at float32 precision)
    torch.testing.assert_close(
        out.x[:, degree2], data.x[:, degree2] @ o3.Irrep(2, 1).D_from_matrix(R).T, atol=1e-5, rtol=0
    )
    assert float((out.x[:, degree2] - data.x[:, degree2]).abs().max()) > 1e-3


def test_rotations_are_uniform_on_so3():
    """Haar measure on SO(3): the rotation angle has CDF (t - sin t) / pi, E[R] = 0, E[tr(R)^2] = 1."""
    transform = RandomRotation(vector_keys=("pos",), fiber_keys=())
    basis = Data(pos=torch.eye(3, dtype=F64))
    n = 3000
    rotations = torch.stack([transform(basis).pos.T for _ in range(n)])  # pos' = I R^T = R^T
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(n, dtype=F64), atol=1e-12)
    trace = rotations.diagonal(dim1=-2, dim2=-1).sum(-1)
    angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1)).sort().values
    cdf = (angle - torch.sin(angle)) / math.pi
    empirical = torch.arange(1, n + 1, dtype=F64) / n
    ks = float(torch.maximum((empirical - cdf).abs(), (empirical - 1 / n - cdf).abs()).max())
    assert ks < 1.95 / math.sqrt(n)  # Kolmogorov-Smirnov, 0.1% level
    # each entry has mean 0 and variance 1/3: 5 standard errors
    assert float(rotations.mean(0).abs().max()) < 5 * math.sqrt(1 / 3 / n)
    assert abs(float((trace**2).mean()) - 1.0) < 0.1
    # a uniform-Euler-angle sampler (not Haar) fails the same KS test
    euler = o3.angles_to_matrix(
        *(torch.rand(3, n, dtype=F64) * torch.tensor([[2 * math.pi], [math.pi], [2 * math.pi]]))
    )
    trace = euler.diagonal(dim1=-2, dim2=-1).sum(-1)
    angle = torch.arccos(((trace - 1) / 2).clamp(-1, 1)).sort().values
    bad_ks = float(((angle - torch.sin(angle)) / math.pi - empirical).abs().max())
    assert bad_ks > 1.95 / math.sqrt(n)


def test_a_rotated_sample_is_still_a_physical_sample():
    """Rotating a ParticleDynamics sample and integrating it gives the rotated target: the transform keeps
    pos, vel, mass and y consistent with the physics (unlike rotating pos alone)."""
    config = ParticleDynamics.make_config(split="val", num_simulations=1)
    state = ParticleDynamics.initial_conditions(config)[0]
    mass = state["mass"]
    potential = ParticleDynamics.pair_potential(config, mass[None])

    def target(pos, vel):
        return velocity_verlet(pos[None], vel[None], mass[None], potential.forces, 0.01, 10, 10).pos[0, -1]

    data = Data(
        pos=state["pos"],
        vel=state["vel"],
        mass=mass[:, None],
        x=torch.cat([mass[:, None], state["vel"]], -1),
        y=target(state["pos"], state["vel"]),
    )
    for _ in range(3):
        out = RandomRotation(fiber=ParticleDynamics.fiber)(data)
        torch.testing.assert_close(target(out.pos, out.vel), out.y, atol=1e-12, rtol=0)
        # the same rotation through two matrix products of different shapes: equal to float64 rounding (MKL may
        # round them differently)
        torch.testing.assert_close(out.x[:, 1:], out.vel, atol=1e-14, rtol=0)
        moved = RandomTranslation(std=3.0)(out)
        torch.testing.assert_close(target(moved.pos, moved.vel), moved.y, atol=1e-12, rtol=0)
    # rotating positions only (PyG's RandomRotate does that) breaks the sample
    R = o3.rand_matrix(dtype=F64)
    assert float((target(data.pos @ R.T, data.vel) - data.y @ R.T).abs().max()) > 1e-3


def test_reflection_inverts_vectors_and_odd_degrees_only():
    fiber = Fiber({0: 2, 1: 1, 2: 1, 3: 1})
    data = _sample(fiber=fiber)
    out = RandomReflection(fiber, p=1.0)(data)
    for key in ("pos", "vel", "y"):
        assert torch.equal(out[key], -data[key]), key
    blocks, before = fiber.split(out.x), fiber.split(data.x)
    for degree in fiber.degrees:
        assert torch.equal(blocks[degree], (-1) ** degree * before[degree]), degree
    for key in ("mass", "edge_attr"):
        assert torch.equal(out[key], data[key]), key
    assert torch.equal(data.pos, _sample(fiber=fiber).pos)  # the input is left alone
    unchanged = RandomReflection(fiber, p=0.0)(data)
    assert all(torch.equal(unchanged[key], data[key]) for key in ("pos", "vel", "y", "x"))


def test_reflection_of_a_batch_inverts_each_graph_on_its_own():
    graphs = [_sample(n) for n in (3, 5, 4, 6)]
    batch = Batch.from_data_list(graphs)
    flip = torch.tensor([True, False, False, True])
    out = RandomReflection().reflect(batch, flip)
    assert isinstance(out, Batch) and torch.equal(out.batch, batch.batch)
    for graph, flipped, reflected in zip(graphs, flip.tolist(), out.to_data_list(), strict=True):
        sign = -1.0 if flipped else 1.0
        for key in ("pos", "vel", "y"):
            assert torch.equal(reflected[key], sign * graph[key]), key
        assert torch.equal(reflected.x, torch.cat([graph.x[:, :1], sign * graph.x[:, 1:]], -1))
    # drawn: each graph with probability p, independently
    torch.manual_seed(0)
    big = Batch.from_data_list([_sample(2) for _ in range(2000)])
    for p in (0.5, 0.2):
        flipped = (RandomReflection(p=p)(big).pos[::2, 0] != big.pos[::2, 0]).double()
        assert abs(float(flipped.mean()) - p) < 4 * math.sqrt(p * (1 - p) / 2000), p


def test_a_reflected_sample_is_still_a_physical_sample():
    """The charged simulation, its per-component force clipping included, is odd under the inversion: the
    inverted initial state gives the inverted trajectory, bit for bit."""
    config = NBodyCharged.make_config(split="val", num_samples=40)
    initial = NBodyCharged.initial_conditions(config)
    pos, vel = NBodyCharged.simulate(config, initial)
    inverted = dict(initial, pos=-initial["pos"], vel=-initial["vel"])
    pos_r, vel_r = NBodyCharged.simulate(config, inverted)
    clipped_pos, _ = NBodyCharged.simulate(config | {"clip": None}, initial)
    assert not torch.equal(clipped_pos, pos)  # clipping acts in these simulations
    assert torch.equal(pos_r, -pos) and torch.equal(vel_r, -vel)


def _reversed(graph: Data, sample_id: int) -> Data:
    """A stand-in counterpart: every node attribute changed, the rest kept."""
    out = graph.clone()
    for key in ("pos", "vel", "x", "y"):
        out[key] = graph[key] * 10 + 1
    out.sample_id = torch.tensor([sample_id])
    return out


def test_time_reversal_swaps_each_graph_of_a_batch_for_its_counterpart():
    graphs = [_sample(n) for n in (3, 5, 4, 6)]
    for k, graph in enumerate(graphs):
        graph.sample_id = torch.tensor([10 + k])
    counterparts = [_reversed(graph, 10 + k) for k, graph in reversed(list(enumerate(graphs)))]  # in any order
    swap = RandomTimeReversal(counterparts)
    batch = Batch.from_data_list(graphs)
    flip = torch.tensor([False, True, False, True])
    out = swap.swap(batch, flip)
    assert isinstance(out, Batch) and torch.equal(out.batch, batch.batch)
    for graph, flipped, swapped in zip(graphs, flip.tolist(), out.to_data_list(), strict=True):
        source = _reversed(graph, 0) if flipped else graph
        for key in ("pos", "vel", "x", "y"):
            assert torch.equal(swapped[key], source[key]), key
        for key in ("mass", "edge_attr", "sample_id"):
            assert torch.equal(swapped[key], graph[key]), key
    assert torch.equal(batch.pos, Batch.from_data_list([_sample(n) for n in (3, 5, 4, 6)]).pos)  # input left alone
    one = RandomTimeReversal(counterparts, keys=("y",), p=1.0)(graphs[2])  # a single sample; y only
    assert torch.equal(one.y, _reversed(graphs[2], 0).y) and torch.equal(one.pos, graphs[2].pos)
    # drawn: each graph with probability p, independently
    torch.manual_seed(0)
    many = [_sample(2) for _ in range(2000)]
    for k, graph in enumerate(many):
        graph.sample_id = torch.tensor([k])
    big = Batch.from_data_list(many)
    swap = RandomTimeReversal([_reversed(graph, k) for k, graph in enumerate(many)], p=0.5)
    for p in (0.5, 0.2):
        swap.p = p
        swapped = (swap(big).pos[::2, 0] != big.pos[::2, 0]).double()
        assert abs(float(swapped.mean()) - p) < 4 * math.sqrt(p * (1 - p) / 2000), p


def test_bad_arguments_and_data_for_time_reversal():
    graph = _sample(3)
    graph.sample_id = torch.tensor([4])
    good = [_reversed(graph, 4)]
    with pytest.raises(ValueError, match="reversed_samples: expected at least one sample"):
        RandomTimeReversal([])
    with pytest.raises(ValueError, match="unique sample_id"):
        RandomTimeReversal([*good, *good])
    with pytest.raises(ValueError, match=r"reversed_samples\[0\].sample_id: expected one integer >= 0"):
        RandomTimeReversal([_sample(3)])
    wide = _reversed(graph, 4)
    wide.vel = torch.zeros(4, 3, dtype=F64)
    with pytest.raises(ValueError, match=r"reversed_samples: vel expected one row per node \(3\)"):
        RandomTimeReversal([wide])
    with pytest.raises(ValueError, match="p: expected a probability"):
        RandomTimeReversal(good, p=-0.1)
    with pytest.raises(ValueError, match="keys"):
        RandomTimeReversal(good, keys="pos")
    swap = RandomTimeReversal(good)
    other = _sample(3)
    other.sample_id = torch.tensor([7])
    batch = Batch.from_data_list([graph, other])
    with pytest.raises(ValueError, match=r"flip: expected a boolean tensor of shape \(2,\)"):
        swap.swap(batch, torch.tensor([True]))
    with pytest.raises(ValueError, match=r"sample_id: no reversed counterpart for \[7\]"):
        swap.swap(batch, torch.tensor([True, True]))
    assert torch.equal(swap.swap(batch, torch.tensor([True, False])).pos[3:], other.pos)  # 7 not swapped: fine
    longer = _sample(4)
    longer.sample_id = torch.tensor([4])
    with pytest.raises(ValueError, match=r"sample_id: the counterparts of \[4\] have other numbers of nodes"):
        swap.swap(longer, torch.tensor([True]))
    with pytest.raises(ValueError, match=r"sample_id: expected one per graph \(1\), got None"):
        swap.swap(_sample(3), torch.tensor([True]))


def test_translation_moves_positions_only():
    data = _sample()
    out = RandomTranslation(std=2.0)(data)
    shift = out.pos - data.pos
    assert float(shift.norm(dim=-1).min()) > 1e-6
    torch.testing.assert_close(shift, shift[:1].expand_as(shift), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.y - data.y, shift, atol=1e-12, rtol=0)
    assert torch.equal(out.vel, data.vel) and torch.equal(out.x, data.x)


def test_dataset_transform_applies_on_access(tmp_path):
    dataset = ParticleDynamics(tmp_path, split="val", dtype=F64, transform=RandomRotation(), progress=False)
    raw = dataset._data
    data = dataset[0]
    n = data.num_nodes
    R = _recover_rotation(raw.pos[:n], data.pos)
    torch.testing.assert_close(data.y, raw.y[:n] @ R.T, atol=1e-10, rtol=0)
    torch.testing.assert_close(data.x[:, 1:], raw.vel[:n] @ R.T, atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RandomRotation(fiber={0: 1, 1: 1}), "fiber"),
        (lambda: RandomRotation(vector_keys="pos"), "vector_keys"),
        (lambda: RandomTranslation(std=0.0), "std"),
        (lambda: RandomReflection(fiber={0: 1}), "fiber"),
        (lambda: RandomReflection(p=1.5), "p: expected a probability"),
        (lambda: RandomReflection(p=True), "p: expected a probability"),
        (lambda: RandomReflection(fiber_keys="x"), "fiber_keys"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_data():
    data = _sample()
    with pytest.raises(ValueError, match="x"):
        RandomRotation(fiber=Fiber({0: 1}))(data)  # x has width 4, not 1
    data.vel = torch.randn(6, 2, dtype=F64)
    with pytest.raises(ValueError, match="vel"):
        RandomRotation()(data)
    with pytest.raises(ValueError, match="R"):
        RandomRotation().rotate(_sample(), torch.eye(2))


def test_bad_data_for_reflection():
    batch = Batch.from_data_list([_sample(3), _sample(4)])
    with pytest.raises(ValueError, match=r"flip: expected a boolean tensor of shape \(2,\)"):
        RandomReflection().reflect(batch, torch.tensor([True]))
    with pytest.raises(ValueError, match="flip"):
        RandomReflection().reflect(batch, torch.tensor([1, 0]))
    batch.y = torch.zeros(2, 3, dtype=F64)  # one row per graph, not per node
    with pytest.raises(ValueError, match=r"y: expected one row per node \(7\), got 2"):
        RandomReflection().reflect(batch, torch.tensor([True, False]))
    with pytest.raises(ValueError, match="x"):
        RandomReflection(fiber=Fiber({0: 1}))(_sample())
