"""Mixed precision (``torch.autocast``): where pyg_se3 keeps float32, and autocast in custom autograd functions.

Under ``torch.autocast(device, dtype=torch.bfloat16)`` (tested on the CPU; float16 follows the same code) the
matrix products of every layer (radial networks, kernel contractions, self-interactions) run in the low-precision
dtype, as autocast decides. pyg_se3 keeps float32 where rounding would cost accuracy for little speed:

- the kernel basis (:func:`~pyg_se3.basis.compute_basis`): edge vectors, lengths, spherical harmonics and their
  products with the Clebsch–Gordan coefficients, computed once per forward and shared by all layers;
- sums over edges: messages are aggregated, and attention logits and their softmax computed, in float32
  (:func:`upcast`); autocast would leave these scatter sums in 16 bits on the CPU.

The custom kernel contraction records the autocast state of its forward and runs its backward in it
(:func:`record_autocast`, :func:`backward_with_forward_autocast`). Float64 tensors are never cast by autocast, and
float32 and float64 computations outside autocast are unchanged by any of this. Measured errors: docs/precision.md.

A model cast to 16 bits (``model.half()``, ``model.bfloat16()``) is refused with a ``ValueError`` at call time
(:func:`~pyg_se3.checks.model_dtype`): the float32 sums above cannot meet its 16-bit weights, and 16-bit weights
would lose the small updates of training anyway. Keep the parameters in float32 and use autocast. Inputs ``x``,
``pos`` and ``edge_attr`` must have the parameters' dtype (float32 under autocast too; autocast casts inside).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "AMP_DTYPES",
    "LOW_PRECISION",
    "autocast_disabled",
    "autocast_on",
    "backward_with_forward_autocast",
    "record_autocast",
    "upcast",
]

LOW_PRECISION = (torch.float16, torch.bfloat16)

#: The autocast dtypes by the names that ``--amp`` options take.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_on(device_type: str) -> bool:
    """Whether autocast is on for ``device_type`` (``"cpu"``, ``"cuda"``, ...)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_disabled(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which autocast is off for ``device``'s type (a no-op where it is off already)."""
    if autocast_on(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def upcast(tensor: Tensor) -> Tensor:
    """``tensor`` in float32 if it is float16/bfloat16 (what autocast's matrix products return), else itself."""
    return tensor.float() if tensor.dtype in LOW_PRECISION else tensor


def record_autocast(ctx: Any, device: torch.device) -> None:
    """In an autograd ``Function``'s forward: remember the autocast state of ``device``'s type in ``ctx``.

    :func:`backward_with_forward_autocast` then runs the backward in the same state. This is what
    ``torch.amp.custom_fwd`` / ``custom_bwd`` do, for a device type fixed when the function is defined; pyg_se3's
    functions run on any device.
    """
    ctx.autocast = (device.type, torch.get_autocast_dtype(device.type)) if autocast_on(device.type) else None


def backward_with_forward_autocast(backward: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate an autograd ``Function``'s backward to run in the autocast state that :func:`record_autocast`
    recorded in its forward: with autocast as in the forward when it was on, with autocast off otherwise
    (``backward()`` is usually called outside the autocast region, where the saved low-precision and float32
    tensors would not mix)."""

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Tensor) -> Any:
        if ctx.autocast is None:
            context = autocast_disabled(grads[0].device)
        else:
            device_type, dtype = ctx.autocast
            context = torch.autocast(device_type, dtype=dtype)
        with context:
            return backward(ctx, *grads)

    return wrapper
