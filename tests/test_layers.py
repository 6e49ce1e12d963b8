"""Every layer: equivariance (20 random rotations + translations, float64 and float32), permutation
equivariance, and values against direct implementations of the formulas in their docstrings."""

import pytest
import torch
from helpers import random_features, random_graph, relative_error

from pyg_se3 import Fiber, compute_basis
from pyg_se3.basis import num_J
from pyg_se3.nn import DepthwiseEdgeKernel, EdgeKernel, SE3Attention, SE3Conv, SE3GlobalPool, SE3Linear, SE3Norm
from pyg_se3.nn.kernel import kernel_contraction
from pyg_se3.testing import assert_equivariant

FIBER_IN = Fiber({0: 3, 1: 2, 2: 2, 3: 1})
FIBER_OUT = Fiber({0: 4, 1: 4, 2: 4, 3: 4})
NUM_NODES, NUM_EDGES = 9, 40


def make_layer(name: str, edge_dim: int = 0):
    if name == "linear":
        return SE3Linear(FIBER_IN, Fiber({0: 2, 1: 3, 2: 1, 3: 2}), bias=True)
    if name == "norm":
        return SE3Norm(FIBER_IN)
    if name == "norm_rms":
        return SE3Norm(FIBER_IN, kind="rms")
    if name in ("conv", "conv_depthwise"):
        return SE3Conv(FIBER_IN, FIBER_OUT, edge_dim=edge_dim, kernel=_kernel_kind(name))
    if name in ("attention", "attention_depthwise"):
        return SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2, edge_dim=edge_dim, kernel=_kernel_kind(name))
    if name == "pool":
        return SE3GlobalPool(FIBER_IN, "mean")
    raise AssertionError(name)


def _kernel_kind(name: str) -> str:
    return "depthwise" if name.endswith("_depthwise") else "full"


def fiber_out_of(layer):
    return getattr(layer, "fiber_out", getattr(layer, "fiber", FIBER_IN))


def apply(layer, x, pos, edge_index, edge_attr=None):
    if isinstance(layer, SE3Conv | SE3Attention):
        return layer(x, pos, edge_index, edge_attr)
    if isinstance(layer, SE3GlobalPool):
        return layer(x, torch.tensor([0] * 4 + [1] * (x.shape[0] - 4), device=x.device))
    return layer(x)


LAYERS = ["linear", "norm", "norm_rms", "conv", "attention", "conv_depthwise", "attention_depthwise", "pool"]
GRAPH_LAYERS = ("conv", "attention", "conv_depthwise", "attention_depthwise")


@pytest.mark.parametrize("name", LAYERS)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_equivariance(name, dtype, tol, device, num_rotations):
    """Random rotations, each with a translation, a pure translation and a permutation of the nodes (not for the
    pool: its graphs are fixed sets of node indices), through :func:`pyg_se3.testing.assert_equivariant`."""
    layer = make_layer(name, edge_dim=2 if name in GRAPH_LAYERS else 0).to(device, dtype)
    pos, edge_index = random_graph(NUM_NODES, NUM_EDGES)
    x = random_features(FIBER_IN, NUM_NODES)
    edge_attr = torch.randn(NUM_EDGES, 2, dtype=dtype).to(device) if name in GRAPH_LAYERS else None
    with torch.no_grad():
        out = apply(layer, x.to(device, dtype), pos.to(device, dtype), edge_index.to(device), edge_attr)
    assert out.abs().max() > 1e-3  # a non-trivial output
    errors = assert_equivariant(
        layer,
        FIBER_IN,
        fiber_out_of(layer),
        x=x,
        pos=pos,
        graph=edge_index,
        call=lambda m, x, pos, edge_index: apply(m, x, pos, edge_index, edge_attr),
        num_rotations=num_rotations,
        permute=name != "pool",
        dtype=dtype,
        device=device,
        rtol=tol,
        atol=0.0,
    )
    assert len(errors.rotations) == num_rotations


@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_permutation_equivariance(name, device):
    layer = make_layer(name).to(device, torch.float64)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x = random_features(FIBER_IN, NUM_NODES).to(device)
    perm = torch.randperm(NUM_NODES).to(device)
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(NUM_NODES, device=device)
    out = layer(x, pos, edge_index)
    out_perm = layer(x[perm], pos[perm], inverse[edge_index])
    torch.testing.assert_close(out_perm, out[perm], atol=1e-12, rtol=0)


def reference_messages(kernel: EdgeKernel, x_j, basis, edge_attr=None):
    """Build every per-edge kernel W^{lk} = sum_J phi_J B_J explicitly and apply it (slow, obvious)."""
    weights = kernel.radial_weights(basis, edge_attr)
    blocks_in = kernel.fiber_in.split(x_j)
    out = {}
    for (l, c_out), w in zip(kernel.fiber_out, weights, strict=True):
        total, offset = 0, 0
        for k, c_in in kernel.fiber_in:
            n_J = num_J(k, l, kernel.parity)
            phi = w[:, :, offset : offset + c_in * n_J].reshape(-1, c_out, n_J, c_in)  # K is (J, c), c fastest
            B = basis[(k, l)].reshape(-1, 2 * k + 1, n_J, 2 * l + 1)
            W = torch.einsum("eaJc,emJo->eaocm", phi, B)  # [E, C_out, 2l+1, C_in, 2k+1]
            total = total + torch.einsum("eaocm,ecm->eao", W, blocks_in[k])
            offset += c_in * n_J
        out[l] = total
    return kernel.fiber_out.join(out)


@pytest.mark.parametrize("parity", [False, True])
def test_kernel_matches_explicit_kernels(parity, device):
    kernel = EdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=3, parity=parity).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    basis = compute_basis(pos, edge_index, 3, parity=parity)
    x_j = random_features(FIBER_IN, NUM_EDGES).to(device)
    edge_attr = torch.randn(NUM_EDGES, 3, dtype=torch.float64).to(device)
    torch.testing.assert_close(kernel(x_j, basis, edge_attr), reference_messages(kernel, x_j, basis, edge_attr))


def reference_depthwise_messages(kernel: DepthwiseEdgeKernel, x_j, basis, edge_attr=None):
    """Per edge, input channel and path J: weight * (B_J x), summed over J, then the channel-mixing matrix."""
    weights = kernel.radial_weights(basis, edge_attr)
    blocks_in = kernel.fiber_in.split(x_j)
    out = {}
    for (l, _), w in zip(kernel.fiber_out, weights, strict=True):
        per_channel, offset = [], 0
        for k, c_in in kernel.fiber_in:
            n_J = num_J(k, l, kernel.parity)
            phi = w[:, offset : offset + c_in * n_J].reshape(-1, n_J, c_in)  # K is (J, c), c fastest
            B = basis[(k, l)].reshape(-1, 2 * k + 1, n_J, 2 * l + 1)
            per_channel.append(torch.einsum("eJc,emJo,ecm->eco", phi, B, blocks_in[k]))
            offset += c_in * n_J
        out[l] = torch.einsum("as,eso->eao", kernel.mix.weights[str(l)], torch.cat(per_channel, dim=1))
    return kernel.fiber_out.join(out)


@pytest.mark.parametrize("parity", [False, True])
def test_depthwise_kernel_matches_its_formula(parity, device):
    kernel = DepthwiseEdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=3, parity=parity).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    basis = compute_basis(pos, edge_index, 3, parity=parity)
    x_j = random_features(FIBER_IN, NUM_EDGES).to(device)
    edge_attr = torch.randn(NUM_EDGES, 3, dtype=torch.float64).to(device)
    expected = reference_depthwise_messages(kernel, x_j, basis, edge_attr)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(kernel(x_j, basis, edge_attr), expected)
    # 4 output channels from 8 input channels: far fewer radial weights than the full kernel's
    full = EdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=3, parity=parity)
    assert sum(kernel.radial.out_dims) * 4 == sum(full.radial.out_dims)


def _contraction_inputs(num_edges: int, degree: int, num_degrees: int = 3, device: torch.device | str = "cpu"):
    """Random inputs of :func:`kernel_contraction` for input degrees 0..num_degrees-1 with 2 channels each (drawn
    on the CPU, then moved to ``device``: the same values on every device)."""

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_(True)

    hidden = leaf(num_edges, 5)
    xs = [leaf(num_edges, 2, 2 * k + 1) for k in range(num_degrees)]
    bs = [leaf(num_edges, 2 * k + 1, num_J(k, degree) * (2 * degree + 1)) for k in range(num_degrees)]
    head = torch.nn.Linear(5, 3 * sum(2 * num_J(k, degree) for k in range(num_degrees))).double().to(device)
    return hidden, head, xs, bs


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_contraction_equals_whole(chunk, device):
    degree, num_edges = 2, 7
    hidden, head, xs, bs = _contraction_inputs(num_edges, degree, device=device)

    def whole(hidden, *blocks):
        # K is (k, J, c), c fastest: [E, C_k, nJ, m] -> [E, nJ C_k, m] per input degree
        per_degree = [torch.matmul(x, b).view(num_edges, 2, -1, 5) for x, b in zip(xs, bs, strict=True)]
        stacked = torch.cat([s.transpose(1, 2).flatten(1, 2) for s in per_degree], 1)
        return torch.bmm(head(hidden).view(num_edges, 3, -1), stacked)

    inputs = (hidden, *xs, *bs)
    out = kernel_contraction(hidden, head, xs, bs, degree, chunk=chunk)
    torch.testing.assert_close(out, whole(*inputs), atol=1e-12, rtol=0)
    grads = torch.autograd.grad(out.square().sum(), [*inputs, head.weight, head.bias])
    expected = torch.autograd.grad(whole(*inputs).square().sum(), [*inputs, head.weight, head.bias])
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


def test_chunked_contraction_double_backward(device):
    hidden, head, xs, bs = _contraction_inputs(3, degree=1, num_degrees=2, device=device)

    def chunked(hidden, *blocks):
        return kernel_contraction(hidden, head, blocks[:2], blocks[2:], 1, chunk=2)

    # CUDA's atomic scatter-adds may sum in another order on the second backward pass that gradcheck runs to check
    # reentrancy; the CPU's backward is deterministic (exact, as before)
    nondet_tol = 0.0 if device.type == "cpu" else 1e-10
    assert torch.autograd.gradgradcheck(chunked, (hidden, *xs, *bs), nondet_tol=nondet_tol)


@pytest.mark.parametrize("chunk", [1, 3, None])
def test_depthwise_kernel_gradients_match_its_formula(chunk, device):
    """The depthwise contraction's own backward (chunked, path features rebuilt) against plain autograd through
    :func:`reference_depthwise_messages`: gradients of the features, positions (through the basis), edge
    features and every parameter."""
    kernel = DepthwiseEdgeKernel(FIBER_IN, FIBER_OUT, edge_dim=3, chunk=chunk).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x_j = random_features(FIBER_IN, NUM_EDGES).to(device).requires_grad_(True)
    edge_attr = torch.randn(NUM_EDGES, 3, dtype=torch.float64).to(device).requires_grad_(True)
    target = torch.randn(NUM_EDGES, FIBER_OUT.dim, dtype=torch.float64).to(device)

    def grads(messages):
        pos_ = pos.clone().requires_grad_(True)
        out = messages(kernel, x_j, compute_basis(pos_, edge_index, 3), edge_attr)
        return torch.autograd.grad((out * target).sum(), [x_j, pos_, edge_attr, *kernel.parameters()])

    got = grads(lambda kernel, *inputs: kernel(*inputs))
    want = grads(reference_depthwise_messages)
    assert min(float(w.abs().max()) for w in want) > 1e-3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("kind", ["full", "depthwise"])
def test_forces_can_be_trained_through_the_chunked_kernel(monkeypatch, kind, device):
    """Double backward through a whole layer: a loss on forces (-dE/dpos) gives the same parameter gradients
    as with the explicit per-edge kernels of :func:`reference_messages` (or :func:`reference_depthwise_messages`;
    plain autograd)."""
    conv = SE3Conv(FIBER_IN, Fiber({0: 1}), kernel=kind).double().to(device)
    conv.kernel.chunk = 3
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x = random_features(FIBER_IN, NUM_NODES).to(device)

    def force_loss_grads():
        pos_ = pos.clone().requires_grad_(True)
        energy = conv(x, pos_, edge_index).sum()
        forces = -torch.autograd.grad(energy, pos_, create_graph=True)[0]
        return torch.autograd.grad(forces.square().sum(), list(conv.kernel.parameters()))

    got = force_loss_grads()
    reference = reference_messages if kind == "full" else reference_depthwise_messages
    monkeypatch.setattr(
        conv.kernel, "forward", lambda x_j, basis, edge_attr=None: reference(conv.kernel, x_j, basis, edge_attr)
    )
    want = force_loss_grads()
    assert max(float(w.abs().max()) for w in want) > 1e-3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-11, rtol=1e-9)


def test_conv_sums_messages_and_self_interaction(device):
    conv = SE3Conv(FIBER_IN, FIBER_OUT).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x = random_features(FIBER_IN, NUM_NODES).to(device)
    basis = compute_basis(pos, edge_index, 3)
    messages = reference_messages(conv.kernel, x[edge_index[0]], basis)
    expected = torch.zeros(NUM_NODES, FIBER_OUT.dim, dtype=torch.float64, device=device).index_add_(
        0, edge_index[1], messages
    )
    expected = expected + conv.self_interaction(x)  # both fibers have degrees 0..3
    torch.testing.assert_close(conv(x, pos, edge_index), expected)


def test_attention_matches_loop_over_nodes(device):
    layer = SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x = random_features(FIBER_IN, NUM_NODES).to(device)
    basis = compute_basis(pos, edge_index, 3)
    kv = reference_messages(layer.to_key_value, x[edge_index[0]], basis)
    kv_blocks = (layer.key_fiber + layer.value_fiber).split(kv)
    q_blocks = layer.key_fiber.split(layer.to_query(x))
    H = layer.num_heads
    attended = torch.zeros(NUM_NODES, layer.value_fiber.dim, dtype=torch.float64, device=device)
    for i in range(NUM_NODES):
        incoming = (edge_index[1] == i).nonzero().flatten()
        if len(incoming) == 0:
            continue
        head_logits = []
        for h in range(H):
            s = 0
            for d, c in layer.key_fiber:
                ch = slice(h * c // H, (h + 1) * c // H)
                s = s + (kv_blocks[d][incoming][:, ch] * q_blocks[d][i, ch]).sum(dim=(1, 2))
            head_logits.append(s / layer.key_dim_per_head**0.5)
        alpha = torch.softmax(torch.stack(head_logits, dim=1), dim=0)  # [deg, H]
        out = {}
        for d, c in layer.value_fiber:
            v = kv_blocks[d][incoming][:, layer.key_fiber[d] :]  # [deg, c, 2d+1]
            v = v.reshape(len(incoming), H, c // H, 2 * d + 1) * alpha[:, :, None, None]
            out[d] = v.sum(0).reshape(c, 2 * d + 1)
        attended[i] = layer.value_fiber.join(out)
    expected = layer.project(Fiber.cat(attended, layer.value_fiber, x, FIBER_IN))
    torch.testing.assert_close(layer(x, pos, edge_index), expected)


def test_attention_envelope_weights_enter_before_normalisation(device):
    layer = SE3Attention(FIBER_IN, FIBER_OUT, num_heads=2).double().to(device)
    pos, edge_index = (t.to(device) for t in random_graph(NUM_NODES, NUM_EDGES))
    x = random_features(FIBER_IN, NUM_NODES).to(device)
    keep = (torch.rand(NUM_EDGES) > 0.3).to(device)
    ones = compute_basis(pos, edge_index, 3, edge_weight=torch.ones(NUM_EDGES, dtype=torch.float64, device=device))
    torch.testing.assert_close(layer(x, None, edge_index, basis=ones), layer(x, pos, edge_index))
    # weight 0 is the same as removing the edge
    zeroed = compute_basis(pos, edge_index, 3, edge_weight=keep.double())
    torch.testing.assert_close(
        layer(x, None, edge_index, basis=zeroed), layer(x, pos, edge_index[:, keep]), atol=1e-12, rtol=0
    )


def test_linear_values(device):
    layer = SE3Linear(FIBER_IN, Fiber({1: 5, 3: 2})).double().to(device)
    x = random_features(FIBER_IN, 4).to(device)
    blocks = FIBER_IN.split(x)
    out = Fiber({1: 5, 3: 2}).split(layer(x))
    torch.testing.assert_close(out[1], torch.einsum("oc,ncm->nom", layer.weights["1"], blocks[1]))
    torch.testing.assert_close(out[3], torch.einsum("oc,ncm->nom", layer.weights["3"], blocks[3]))
    with pytest.raises(ValueError, match="fiber_out: degrees \\[4\\]"):
        SE3Linear(FIBER_IN, Fiber({4: 1}))


def test_norm_values_and_zero_features(device):
    layer = SE3Norm(FIBER_IN).double()
    with torch.no_grad():  # drawn on the CPU: the same weights on every device
        for module in layer.norms.values():
            module.weight.uniform_(0.5, 1.5)
            module.bias.uniform_(-0.5, 0.5)
    layer = layer.to(device)
    x = random_features(FIBER_IN, 5).to(device)
    out = FIBER_IN.split(layer(x))
    for d, block in FIBER_IN.split(x).items():
        norm = (block.pow(2).sum(-1) + layer.eps**2).sqrt()
        ln = layer.norms[str(d)](norm)
        torch.testing.assert_close(out[d], torch.relu(ln).unsqueeze(-1) * block / norm.unsqueeze(-1))
    zero = torch.zeros(2, FIBER_IN.dim, dtype=torch.float64, device=device, requires_grad=True)
    layer(zero).sum().backward()
    assert torch.isfinite(zero.grad).all()


def test_rms_norm_values(device):
    """``kind="rms"``: channel norms divided by their root mean square over channels (not centred), then w, b."""
    layer = SE3Norm(FIBER_IN, kind="rms").double()
    with torch.no_grad():  # drawn on the CPU: the same weights on every device
        for name, p in layer.norms.named_parameters():
            p.uniform_(-0.5, 0.5) if name.endswith("bias") else p.uniform_(0.5, 1.5)
    layer = layer.to(device)
    x = random_features(FIBER_IN, 5).to(device)
    out = FIBER_IN.split(layer(x))
    for d, block in FIBER_IN.split(x).items():
        norm = (block.pow(2).sum(-1) + layer.eps**2).sqrt()
        module = layer.norms[str(d)]
        if FIBER_IN[d] > 1:
            rms = norm.pow(2).mean(-1, keepdim=True).add(torch.finfo(norm.dtype).eps).sqrt()
            scaled = norm / rms * module.rms.weight + module.bias
        else:
            scaled = norm * module.weight + module.bias
        torch.testing.assert_close(out[d], torch.relu(scaled).unsqueeze(-1) * block / norm.unsqueeze(-1))
    with pytest.raises(ValueError, match="kind"):
        SE3Norm(FIBER_IN, kind="batch")


def test_pool_values_and_max_restriction(device):
    x = random_features(FIBER_IN, 6).to(device)
    batch = torch.tensor([0, 0, 1, 1, 1, 1], device=device)
    out = SE3GlobalPool(FIBER_IN, "sum")(x, batch)
    torch.testing.assert_close(out, torch.stack([x[:2].sum(0), x[2:].sum(0)]))
    with pytest.raises(ValueError, match="reduce: 'max' is equivariant only for type-0"):
        SE3GlobalPool(FIBER_IN, "max")(x, batch)


@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_repr_and_reset(name):
    layer = make_layer(name)
    assert layer.__class__.__name__ in repr(layer) and "Fiber" in repr(layer)
    before = [p.clone() for p in layer.parameters()]
    layer.reset_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


def test_unknown_kernel_names_the_argument():
    with pytest.raises(ValueError, match="kernel: expected one of"):
        SE3Conv(FIBER_IN, FIBER_OUT, kernel="dense")


@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_bipartite_input_equals_the_targets_rows_of_the_joined_graph(name, device):
    # Sources 0..5 and targets 0..3 of a bipartite graph; the same graph with the targets numbered after the
    # sources (one node set) gives the same outputs at the targets.
    layer = make_layer(name, edge_dim=1).double().to(device)
    num_src, num_dst, num_edges = 6, 4, 15
    g = torch.Generator().manual_seed(3)  # a CPU generator: draw on the CPU, then move
    pos = torch.randn(num_src + num_dst, 3, generator=g, dtype=torch.float64).to(device)
    x = random_features(FIBER_IN, num_src + num_dst).to(device)
    edge_index = torch.stack(
        [torch.randint(num_src, (num_edges,), generator=g), torch.randint(num_dst, (num_edges,), generator=g)]
    ).to(device)
    joined = edge_index + torch.tensor([[0], [num_src]], device=device)
    edge_attr = torch.rand(num_edges, 1, dtype=torch.float64).to(device)
    basis = compute_basis(pos, joined, layer.max_degree)
    want = layer(x, pos, joined, edge_attr)[num_src:]
    got = layer((x[:num_src], x[num_src:]), None, edge_index, edge_attr, basis=basis)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # the same from the pair of positions (the basis computed inside)
    got = layer((x[:num_src], x[num_src:]), (pos[:num_src], pos[num_src:]), edge_index, edge_attr)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
    # the messages count: without the edges the targets' outputs are different
    no_edges = layer(x, pos, joined[:, :0], edge_attr[:0])[num_src:]
    assert relative_error(want, no_edges) > 0.1


@pytest.mark.parametrize("name", GRAPH_LAYERS)
def test_bipartite_input_errors_name_the_argument(name):
    layer = make_layer(name).double()
    pos, edge_index = random_graph(NUM_NODES, NUM_EDGES)
    basis = compute_basis(pos, edge_index, layer.max_degree)
    x = random_features(FIBER_IN, NUM_NODES)
    with pytest.raises(ValueError, match=r"pos: a bipartite x = \(x_src, x_dst\) needs pos = \(pos_src, pos_dst\)"):
        layer((x, x[:4]), pos, edge_index[:, edge_index[1] < 4])
    with pytest.raises(ValueError, match=r"pos\[1\]: expected 4 rows"):
        layer((x, x[:4]), (pos, pos), edge_index[:, edge_index[1] < 4])
    with pytest.raises(ValueError, match="target indices must lie in"):
        layer((x, x[:4]), None, edge_index, basis=basis)
    with pytest.raises(ValueError, match=r"x: expected a tensor or a pair"):
        layer((x, x, x), None, edge_index, basis=basis)
    with pytest.raises(ValueError, match=r"x\[1\]: expected last dimension"):
        layer((x, x[:, :-1]), None, edge_index, basis=basis)
