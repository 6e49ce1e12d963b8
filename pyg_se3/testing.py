"""Testing utilities: check that a module is SE(3)- (or E(3)-) and permutation-equivariant.

:func:`assert_equivariant` is the counterpart, for graph modules over point clouds, of e3nn's
``e3nn.util.test.assert_equivariant``: it draws random features, positions, a neighbour graph, rotations and
translations, and compares the module's outputs on transformed inputs with the transformed outputs, using the exact
Wigner matrices of :meth:`~pyg_se3.fiber.Fiber.rotate`.

Import it as ``from pyg_se3.testing import assert_equivariant`` (it is not re-exported by :mod:`pyg_se3`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from e3nn import o3
from torch import Tensor, nn

from pyg_se3.fiber import Fiber
from pyg_se3.graph import KNN

__all__ = ["POSITIONS", "EquivarianceErrors", "assert_equivariant", "default_tolerances"]

#: The kind of an output that transforms like positions, ``p -> R p + t`` (rather than as a fiber, which
#: translations leave unchanged); e.g. ``fiber_out={"x": Fiber({0: 4}), "pos": POSITIONS}``.
POSITIONS = "positions"

# (rtol, atol) per dtype; atol is in the units of the outputs' Frobenius norm.
_TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-6),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (5e-2, 1e-2),
}

Call = Callable[[nn.Module, Tensor, Tensor, Tensor], Any]
OutputKind = Fiber | str


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    """``(rtol, atol)`` that :func:`assert_equivariant` uses for ``dtype`` when none are given.

    float64: ``(1e-10, 1e-12)``; float32: ``(1e-4, 1e-6)``; float16: ``(1e-2, 1e-3)``; bfloat16: ``(5e-2, 1e-2)``.
    """
    if dtype not in _TOLERANCES:
        raise ValueError(f"dtype: expected a floating-point dtype among {list(_TOLERANCES)}, got {dtype}")
    return _TOLERANCES[dtype]


@dataclass(frozen=True)
class EquivarianceErrors:
    """The errors :func:`assert_equivariant` measured: relative errors ``|f(g x) - g f(x)| / |g f(x)|`` (Frobenius
    norms), the largest over all outputs.

    Attributes
    ----------
    rotation
        The largest error over the rotations (each combined with a translation when ``translate=True``).
    rotations
        The error of each rotation, in order (the index an assertion names).
    reflection
        With ``parity=True``: the largest error over the improper rotations ``-R`` (one per rotation ``R``, with
        the same translation); else ``None``.
    translation
        The error under a pure translation; ``None`` when ``translate=False``.
    permutation
        The error under a permutation of the nodes; ``None`` when ``permute=False``.
    rtol, atol
        The tolerances the errors were checked against.
    """

    rotation: float
    rotations: tuple[float, ...]
    translation: float | None
    permutation: float | None
    rtol: float
    atol: float
    reflection: float | None = None


def assert_equivariant(
    module: nn.Module,
    fiber_in: Fiber,
    fiber_out: Fiber | Mapping[str, OutputKind],
    *,
    num_nodes: int = 8,
    num_rotations: int = 3,
    rotations: Tensor | None = None,
    translate: bool = True,
    permute: bool = True,
    parity: bool = False,
    graph: Callable[..., Tensor] | Tensor | None = None,
    call: Call | None = None,
    x: Tensor | None = None,
    pos: Tensor | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
) -> EquivarianceErrors:
    r"""Assert that ``module`` is equivariant under rotations, translations, permutations of the nodes and, with
    ``parity=True``, reflections.

    With random node features ``x`` (``[N, fiber_in.dim]``), positions ``pos`` (``[N, 3]``) and an ``edge_index``
    built from them, and for each random rotation ``R`` (e3nn's ``o3.rand_matrix``, uniform on SO(3)) and
    translation ``t``, it checks, for every output ``y = f(x, pos, edge_index)``:

    * **translation** (``translate=True``): ``f(x, pos + t, E) = y`` for fiber outputs, ``= y + t`` for position
      outputs;
    * **rotation** (with a translation when ``translate=True``): ``f(D_in(R) x, R pos + t, E) = D_out(R) y``
      (``y R^T + t`` for position outputs), where ``D(R)`` are the exact block-diagonal Wigner matrices of
      :meth:`~pyg_se3.fiber.Fiber.D_from_matrix` (applied by :meth:`~pyg_se3.fiber.Fiber.rotate`);
    * **reflection** (``parity=True``): the same for the improper rotation ``-R`` of each rotation ``R`` (the
      inversion through the origin after ``R``), under which a type-``l`` feature of natural parity (a true scalar,
      vector, ...: the parity :attr:`Fiber.irreps <pyg_se3.fiber.Fiber.irreps>` names) transforms by
      ``D^l(-R) = (-1)^l D^l(R)`` and positions by ``-R``;
    * **permutation** (``permute=True``): permuting the nodes (``x[p]``, ``pos[p]``, and ``edge_index`` relabelled
      to match) permutes the node-wise outputs, ``y[p]``, and leaves the others unchanged.

    The checks run in this order, under ``torch.no_grad()``, and the first that fails raises an
    ``AssertionError`` naming the check, the output, the rotation index and the measured relative error. The
    graph is built once, from the untransformed positions, and reused (relabelled for the permutation), so a
    module whose graph is its own concern is tested on the same edges each time.

    By default the check is **SE(3)**: the layers are equivariant under proper rotations only, unless built with
    ``parity=True`` (:class:`~pyg_se3.nn.SE3Conv`), which makes them E(3)-equivariant; check those with
    ``parity=True`` here. e3nn's own ``assert_equivariant`` applied to a default pyg_se3 module needs
    ``do_parity=False`` (and knows nothing of positions, translations or graphs).

    Parameters
    ----------
    module
        The module under test, its parameters already in ``dtype`` and on ``device`` (e.g. ``module.double()``),
        and deterministic (no dropout in training mode). It is not modified.
    fiber_in
        The fiber of the input features ``x``.
    fiber_out
        How the outputs transform. A :class:`~pyg_se3.fiber.Fiber` for a tensor output, or for the ``.x`` of an
        output object with ``.x`` and ``.pos`` (such as :class:`~pyg_se3.models.IterativeOutput`; ``.pos`` is then
        checked as positions, and so is every step of its ``.trajectory``, a sequence of position tensors, when
        it has a non-empty one). For a dict output, a mapping from each of its keys to a ``Fiber`` or to
        :data:`POSITIONS` (transforms as ``R p + t``); a value of the dict may also be a list or tuple of tensors
        (e.g. per-layer features, a trajectory), each of which transforms as its key says (named ``key[i]`` in
        errors). For an output object, a mapping selects its outputs: ``{"x": fiber, "pos": POSITIONS}`` leaves
        out the trajectory, adding ``"trajectory": POSITIONS`` checks it.
    num_nodes
        ``N``, the number of random nodes (ignored when ``x`` and ``pos`` are given).
    num_rotations
        How many random rotations to check (ignored when ``rotations`` is given).
    rotations
        Rotation matrices to check instead of random ones: ``[K, 3, 3]`` (or one ``[3, 3]``), proper and
        orthogonal (``det R = +1``), e.g. to reproduce a failure, or to test a rotation known to be hard. Each
        is still combined with a random translation when ``translate=True``.
    translate
        Check translation invariance (and add a random translation to each rotation).
    permute
        Check permutation equivariance. An output is node-wise if its first dimension is ``N``; other outputs (e.g.
        pooled, per-graph ones) must not change.
    parity
        Also check reflections: every rotation ``R`` again as the improper ``-R`` (default ``False``).
    graph
        How to build ``edge_index``: a graph builder ``(pos, batch) -> edge_index`` such as
        :class:`~pyg_se3.graph.KNN` (default ``KNN(3)``) or :class:`~pyg_se3.graph.Radius`, or a fixed
        ``[2, E]`` tensor.
    call
        ``(module, x, pos, edge_index) -> outputs``: how to run the module. Outputs are a tensor, a dict of tensors
        (or of lists of tensors) or an object with tensor attributes ``.x`` and ``.pos``. It runs under
        ``torch.no_grad()``: an output that needs autograd, such as forces ``-dE/dpos`` (which transform as a
        ``Fiber({1: 1})``), is computed inside ``with torch.enable_grad():`` in ``call``. Default:
        ``module(x, pos, edge_index)`` when ``module.forward`` has a parameter named ``edge_index``
        (:class:`~pyg_se3.nn.SE3Conv`, :class:`~pyg_se3.nn.SE3Attention`, :class:`~pyg_se3.models.SE3Transformer`),
        else ``module(x, pos)`` (:class:`~pyg_se3.models.IterativeSE3Transformer`, which builds its own graphs). Use
        it to pass more arguments, e.g. ``call=lambda m, x, pos, e: m(x, pos, e, edge_attr=...)`` with invariant
        edge features.
    x, pos
        Inputs to use instead of random ones (``[N, fiber_in.dim]`` and ``[N, 3]``; cast to ``dtype``).
    dtype
        The dtype of the inputs; it selects the default tolerances (:func:`default_tolerances`).
    device
        Where the inputs live; default: the device of the module's first parameter or buffer, else the CPU.
    atol, rtol
        A check passes when ``|f(g x) - g f(x)| <= atol + rtol |g f(x)|`` (Frobenius norms, output by output).
        Defaults per dtype: float64 ``rtol=1e-10, atol=1e-12``; float32 ``rtol=1e-4, atol=1e-6``.
    seed
        Seeds the random inputs, rotations, translations and permutation (the global RNG is left as it was).

    Returns
    -------
    EquivarianceErrors
        The measured relative errors (the largest over the outputs), per check.

    Raises
    ------
    AssertionError
        When a check fails, with the check (``rotation``, ``reflection``, ``translation`` or ``permutation``), the
        output, the rotation index and the measured maximum relative error.
    ValueError
        When ``rotations`` are not proper rotation matrices, or the outputs do not match ``fiber_out``.

    Examples
    --------
    >>> import torch
    >>> from pyg_se3 import Fiber
    >>> from pyg_se3.nn import SE3Conv
    >>> from pyg_se3.testing import assert_equivariant
    >>> fiber_in, fiber_out = Fiber({0: 2, 1: 1}), Fiber({0: 2, 1: 2})
    >>> conv = SE3Conv(fiber_in, fiber_out).double()
    >>> errors = assert_equivariant(conv, fiber_in, fiber_out)
    >>> errors.rotation < 1e-10 and errors.translation < 1e-10 and errors.permutation < 1e-10
    True

    A module that is not equivariant fails, naming the check:

    >>> class Broken(torch.nn.Module):
    ...     def forward(self, x, pos, edge_index):
    ...         return conv(x, pos, edge_index) + pos[:, :1]  # a raw coordinate added to every component
    >>> assert_equivariant(Broken(), fiber_in, fiber_out)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: translation equivariance failed for output 'out': ...
    """
    if not isinstance(fiber_in, Fiber):
        raise TypeError(f"fiber_in: expected a Fiber, got {type(fiber_in).__name__}")
    kinds = _output_kinds(fiber_out)
    if rotations is not None:
        rotations = _check_rotations(rotations)
        num_rotations = rotations.shape[0]
    if num_rotations < 1:
        raise ValueError(f"num_rotations: expected at least 1, got {num_rotations}")
    default_rtol, default_atol = default_tolerances(dtype)
    rtol = default_rtol if rtol is None else float(rtol)
    atol = default_atol if atol is None else float(atol)
    if device is None:
        tensor = next(iter(module.parameters()), None)
        tensor = next(iter(module.buffers()), None) if tensor is None else tensor
        device = tensor.device if tensor is not None else torch.device("cpu")
    device = torch.device(device)
    call = _default_call(module) if call is None else call

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        num_nodes = num_nodes if x is None else x.shape[0]
        x = torch.randn(num_nodes, fiber_in.dim, dtype=torch.float64) if x is None else x
        pos = torch.randn(num_nodes, 3, dtype=torch.float64) if pos is None else pos
        if rotations is None:
            rotations = o3.rand_matrix(num_rotations, dtype=torch.float64)
        shifts = 2.0 * torch.randn(num_rotations + 1, 3, dtype=torch.float64)
        perm = torch.randperm(num_nodes)
    x, pos = x.to(device, dtype), pos.to(device, dtype)
    fiber_in.check(x, "x")
    if pos.shape != (num_nodes, 3):
        raise ValueError(f"pos: expected shape ({num_nodes}, 3), got {tuple(pos.shape)}")
    rotations, shifts, perm = rotations.to(device, dtype), shifts.to(device, dtype), perm.to(device)
    if isinstance(graph, Tensor):
        edge_index = graph.to(device)
    else:
        edge_index = (KNN(min(3, num_nodes - 1)) if graph is None else graph)(pos)

    flat_kinds: dict[str, OutputKind] = {}  # the kind of each output, lists flattened (name[i])

    def run(x_: Tensor, pos_: Tensor, edge_index_: Tensor) -> dict[str, Tensor]:
        outputs = _outputs(call(module, x_, pos_, edge_index_), kinds)
        flat_kinds.update({name: kind for name, (_, kind) in outputs.items()})
        return {name: y for name, (y, _) in outputs.items()}

    with torch.no_grad():
        reference = run(x, pos, edge_index)
        translation = None
        if translate:
            shift = shifts[-1]
            actual = run(x, pos + shift, edge_index)
            expected = {name: _transform(y, flat_kinds[name], None, shift) for name, y in reference.items()}
            translation = _compare("translation", actual, expected, rtol, atol, "")

        def transformed(check: str, matrices: Tensor) -> list[float]:
            """The error of each (proper or improper) orthogonal matrix, with its translation."""
            errors = []
            for index, R in enumerate(matrices):
                shift = shifts[index] if translate else None
                moved = pos @ R.T if shift is None else pos @ R.T + shift
                actual = run(fiber_in.rotate(x, R), moved, edge_index)
                expected = {name: _transform(y, flat_kinds[name], R, shift) for name, y in reference.items()}
                name = check if shift is None else f"{check} (with translation)"
                errors.append(_compare(name, actual, expected, rtol, atol, f" (rotation {index} of {num_rotations})"))
            return errors

        errors = transformed("rotation", rotations)
        reflection = max(transformed("reflection", -rotations)) if parity else None

        permutation = None
        if permute:
            inverse = torch.argsort(perm)
            actual = run(x[perm], pos[perm], inverse[edge_index])
            expected = {name: y[perm] if y.dim() and y.shape[0] == num_nodes else y for name, y in reference.items()}
            permutation = _compare("permutation", actual, expected, rtol, atol, "")

    return EquivarianceErrors(max(errors), tuple(errors), translation, permutation, rtol, atol, reflection)


def _check_rotations(rotations: Tensor) -> Tensor:
    """``rotations`` as a float64 ``[K, 3, 3]`` tensor on the CPU, after checking that they are proper rotations."""
    if not isinstance(rotations, Tensor) or not rotations.is_floating_point():
        raise ValueError(f"rotations: expected a floating-point tensor, got {type(rotations).__name__}")
    R = rotations.detach().to("cpu", torch.float64)
    R = R.unsqueeze(0) if R.dim() == 2 else R
    if R.dim() != 3 or R.shape[1:] != (3, 3) or R.shape[0] < 1:
        raise ValueError(f"rotations: expected shape [K, 3, 3] or [3, 3], got {tuple(rotations.shape)}")
    eye = torch.eye(3, dtype=torch.float64).expand_as(R)
    tol = max(1e-5, 10 * torch.finfo(rotations.dtype).eps)
    if not bool(((R @ R.transpose(1, 2) - eye).abs().amax() <= tol) & ((torch.linalg.det(R) - 1).abs().amax() <= tol)):
        raise ValueError("rotations: expected proper rotation matrices (R R^T = I, det R = +1)")
    return R


def _output_kinds(fiber_out: Fiber | Mapping[str, OutputKind]) -> dict[str, OutputKind]:
    if isinstance(fiber_out, Fiber):
        return {"out": fiber_out, "x": fiber_out, "pos": POSITIONS, "trajectory": POSITIONS}
    if not isinstance(fiber_out, Mapping):
        raise TypeError(f"fiber_out: expected a Fiber or a mapping of them, got {type(fiber_out).__name__}")
    for name, kind in fiber_out.items():
        if not (isinstance(kind, Fiber) or kind == POSITIONS):
            raise TypeError(f"fiber_out[{name!r}]: expected a Fiber or {POSITIONS!r}, got {kind!r}")
    return dict(fiber_out)


def _default_call(module: nn.Module) -> Call:
    try:
        parameters = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume a layer over a graph
        parameters = {"edge_index": None}
    if "edge_index" in parameters:
        return lambda m, x, pos, edge_index: m(x, pos, edge_index)
    return lambda m, x, pos, edge_index: m(x, pos)


def _outputs(result: Any, kinds: dict[str, OutputKind]) -> dict[str, tuple[Tensor, OutputKind]]:
    """The module's outputs as ``{name: (tensor, kind)}``, each checked against its kind; a list or tuple of
    tensors is flattened into ``name[0]``, ``name[1]``, ..."""
    if isinstance(result, Tensor):
        outputs: dict[str, Any] = {"out": result}
    elif isinstance(result, Mapping):
        outputs = dict(result)
    elif isinstance(getattr(result, "x", None), Tensor) and isinstance(getattr(result, "pos", None), Tensor):
        outputs = {"x": result.x, "pos": result.pos}
        trajectory = getattr(result, "trajectory", None)
        if "trajectory" in kinds and isinstance(trajectory, Sequence) and len(trajectory) > 0:
            outputs["trajectory"] = list(trajectory)
    else:
        raise TypeError(
            f"outputs: expected a tensor, a dict of tensors or an object with tensors .x and .pos, "
            f"got {type(result).__name__}"
        )
    if not set(outputs) <= set(kinds) or (isinstance(result, Mapping) and set(outputs) != set(kinds)):
        raise ValueError(
            f"fiber_out: the module's outputs are {sorted(outputs)}; give a mapping with exactly these keys"
        )
    flat = {}
    for name, value in outputs.items():
        kind = kinds[name]
        if isinstance(value, list | tuple):
            flat.update({f"{name}[{i}]": (y, kind) for i, y in enumerate(value)})
        else:
            flat[name] = (value, kind)
    for name, (y, kind) in flat.items():
        if not isinstance(y, Tensor):
            raise TypeError(f"output {name!r}: expected a tensor, got {type(y).__name__}")
        if isinstance(kind, Fiber):
            kind.check(y, f"output {name!r}")
        elif y.shape[-1:] != (3,):
            raise ValueError(f"output {name!r}: positions need a last dimension of 3, got shape {tuple(y.shape)}")
    return flat


def _transform(y: Tensor, kind: OutputKind, R: Tensor | None, shift: Tensor | None) -> Tensor:
    """``y`` as it should be after rotating by ``R`` (``None``: no rotation), then translating by ``shift``."""
    if isinstance(kind, Fiber):
        return y if R is None else kind.rotate(y, R)
    y = y if R is None else y @ R.T.to(y.dtype)
    return y if shift is None else y + shift.to(y.dtype)


def _compare(
    check: str, actual: dict[str, Tensor], expected: dict[str, Tensor], rtol: float, atol: float, where: str
) -> float:
    """The largest relative error over the outputs; raise if one is above tolerance."""
    worst = 0.0
    if set(actual) != set(expected):
        raise AssertionError(
            f"{check} equivariance failed{where}: the outputs are {sorted(actual)}, expected {sorted(expected)}"
        )
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape:
            raise AssertionError(
                f"{check} equivariance failed for output {name!r}{where}: shape {tuple(got.shape)} != "
                f"{tuple(want.shape)}"
            )
        difference = float((got - want).double().norm())
        scale = float(want.double().norm())
        error = difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))
        if not difference <= atol + rtol * scale:  # also catches NaN
            raise AssertionError(
                f"{check} equivariance failed for output {name!r}{where}: max relative error {error:.3e} "
                f"(|difference| {difference:.3e}, |expected| {scale:.3e}) > rtol={rtol:.1e}, atol={atol:.1e}"
            )
        worst = max(worst, error)
    return worst
