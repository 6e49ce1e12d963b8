import math

import pytest
import torch

from pyg_se3.graph import KNN, Complete, Radius, cosine_envelope, polynomial_envelope


def brute_force_edges(pos, batch, keep):
    """All (j, i), j != i, same graph, keep(dist) true; as a set."""
    edges = set()
    for i in range(len(pos)):
        for j in range(len(pos)):
            if i != j and batch[i] == batch[j] and keep(i, j):
                edges.add((j, i))
    return edges


def as_set(edge_index):
    return set(map(tuple, edge_index.T.tolist()))


def test_radius_matches_brute_force_and_respects_batch():
    pos = torch.randn(30, 3, dtype=torch.float64)
    batch = torch.tensor([0] * 12 + [1] * 18)
    edges = Radius(1.2, max_num_neighbors=64)(pos, batch)
    dist = torch.cdist(pos, pos)
    assert as_set(edges) == brute_force_edges(pos, batch, lambda i, j: dist[i, j] < 1.2)
    assert (batch[edges[0]] == batch[edges[1]]).all()


def test_knn_matches_brute_force():
    pos = torch.randn(20, 3, dtype=torch.float64)
    batch = torch.tensor([0] * 9 + [1] * 11)
    edges = KNN(4)(pos, batch)
    dist = torch.cdist(pos, pos) + torch.eye(20) * 1e9
    dist[batch[:, None] != batch[None, :]] = 1e9
    nearest = dist.topk(4, largest=False, dim=0).indices  # [4, N]: the 4 nearest j of each i
    expected = {(int(j), i) for i in range(20) for j in nearest[:, i]}
    assert as_set(edges) == expected


def test_complete_per_graph():
    batch = torch.tensor([0, 0, 0, 1, 2, 2])
    edges = Complete()(torch.randn(6, 3), batch)
    assert as_set(edges) == brute_force_edges(torch.zeros(6, 3), batch, lambda i, j: True)
    assert edges.shape[1] == 3 * 2 + 0 + 2 * 1
    with_loops = Complete(loop=True)(torch.randn(6, 3), batch)
    assert with_loops.shape[1] == 9 + 1 + 4


def test_radius_truncation_warns_once_and_keeps_nearest():
    pos = torch.randn(40, 3, dtype=torch.float64) * 0.3
    graph = Radius(5.0, max_num_neighbors=6)
    with pytest.warns(RuntimeWarning, match=r"40 node\(s\) have more than max_num_neighbors=6"):
        edges = graph(pos)
    dist = torch.cdist(pos, pos) + torch.eye(40) * 1e9
    nearest = dist.topk(6, largest=False, dim=0).indices
    assert as_set(edges) == {(int(j), i) for i in range(40) for j in nearest[:, i]}
    graph(pos)  # second call: no warning (warnings are errors in this suite)


def test_envelopes_are_smooth_at_the_cutoff():
    for envelope in (cosine_envelope, polynomial_envelope):
        d = torch.tensor([0.0, 1.0, 2.0 - 1e-6, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
        u = envelope(d, 2.0)
        (grad,) = torch.autograd.grad(u.sum(), d)
        u = u.detach()
        assert u[0] == pytest.approx(1.0) and u[3] == 0 and u[4] == 0
        assert 0 <= u[2] < 1e-10
        assert abs(grad[2]) < 1e-5 and abs(grad[3]) < 1e-15 and grad[4] == 0
    assert cosine_envelope(torch.tensor(1.0), 2.0) == pytest.approx(0.5)
    assert polynomial_envelope(torch.tensor(0.5), 1.0) == pytest.approx(1 - 28 * 0.5**6 + 48 * 0.5**7 - 21 * 0.5**8)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Radius(-1.0), "r: expected"),
        (lambda: Radius(math.inf), "r: expected"),
        (lambda: Radius(1.0, max_num_neighbors=0), "max_num_neighbors"),
        (lambda: Radius(1.0, envelope="gauss"), "envelope"),
        (lambda: KNN(0), "k: expected"),
    ],
)
def test_bad_parameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_call_arguments():
    with pytest.raises(ValueError, match="pos"):
        KNN(2)(torch.randn(5, 2))
    with pytest.raises(ValueError, match="batch: expected a sorted"):
        KNN(2)(torch.randn(5, 3), torch.tensor([1, 1, 0, 0, 0]))
