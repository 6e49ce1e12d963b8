"""The Iterative SE(3)-Transformer: blocks that move the points, with the graph and basis rebuilt in between."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from pyg_se3.basis import compute_basis
from pyg_se3.checks import (
    check_edge_attr,
    check_graph_inputs,
    check_pos,
    check_vectors,
    model_dtype,
    no_value_checks,
)
from pyg_se3.fiber import Fiber
from pyg_se3.graph import KNN, GraphBuilder
from pyg_se3.models.se3_transformer import SE3Transformer
from pyg_se3.nn import SE3Linear

__all__ = ["IterativeOutput", "IterativeSE3Transformer"]

DISPLACEMENT = Fiber({1: 1})

EdgeAttrFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class IterativeOutput:
    """What :class:`IterativeSE3Transformer` returns.

    Attributes
    ----------
    pos
        ``[N, 3]`` final positions.
    x
        ``[N, fiber_hidden.dim]`` final hidden fiber.
    trajectory
        Positions before the first and after every iteration (``num_iterations + 1`` tensors;
        ``trajectory[0]`` is the input).
    edge_indices
        The graph each iteration ran on (rebuilt from that iteration's input positions; one tensor for all
        iterations of a :class:`~pyg_se3.graph.Complete` graph).
    num_iterations
        How many iterations ran (fewer than requested when ``tol`` stopped early).
    vel
        ``[N, 3]`` final velocities with ``integrator="velocity"``, else ``None``.
    """

    pos: Tensor
    x: Tensor
    trajectory: list[Tensor] = field(default_factory=list)
    edge_indices: list[Tensor] = field(default_factory=list)
    num_iterations: int = 0
    vel: Tensor | None = None


class IterativeSE3Transformer(nn.Module):
    r"""Iterative SE(3)-Transformer (Fuchs, Wagstaff, Dauparas, Posner 2021), as in AlphaFold 2's structure module.

    .. math::
        \text{for } t = 1..T: \quad E_t = \mathrm{graph}(x_t), \quad B_t = \mathrm{basis}(x_t, E_t), \quad
        (h_t, \Delta x_t) = \mathrm{Block}_t(h_{t-1}, x_t, E_t, B_t), \quad x_{t+1} = x_t + \Delta x_t

    Each block is an :class:`~pyg_se3.models.SE3Transformer` with ``layers_per_iteration`` equivariant layers
    (``layers_per_iteration - 1`` attention blocks and a final convolution). With ``displacement="head"``
    (default) its output fiber is ``fiber_hidden`` plus one type-1 channel, the displacement, whose weights start
    at zero, so an untrained model leaves the points where they are (and still learns: the gradients of zeroed
    weights are not zero); with ``displacement="hidden"`` (the original code's choice) the block outputs
    ``fiber_hidden`` only and the points move by its first type-1 channel.
    The **whole** hidden fiber is carried to the next iteration (no bottleneck to type-1). The neighbour graph is
    rebuilt from the updated positions (indices carry no gradient; a :class:`~pyg_se3.graph.Complete` graph, which
    does not depend on them, is built once per forward pass, and the positions are still checked at every
    iteration), and the basis is recomputed from them **inside the autograd graph**, so gradients reach block
    ``t``'s parameters through the geometry seen by blocks ``t+1 .. T``; ``detach_basis=True`` cuts that path (the
    original SE(3)-Transformer's behaviour) to compare, and ``detach_basis="harmonics"`` cuts only the angular part
    (the original code's ablation: distances, edge features and relative positions keep theirs).

    Parameters
    ----------
    fiber_in
        Fiber of the input node features.
    fiber_hidden
        Fiber carried between iterations (and returned as ``out.x``).
    num_iterations
        ``T``, the number of position updates.
    layers_per_iteration
        Equivariant layers per block (``>= 1``).
    num_heads, channels_div, radial_hidden, radial_layers, kernel, parity, checkpoint, checkpoint_edges, norm
        As in :class:`~pyg_se3.models.SE3Transformer`. With ``parity=True`` and inputs of natural parity the
        whole iterative model (positions, velocities, hidden fibers) is equivariant under reflections too.
    graph
        A :class:`~pyg_se3.graph.GraphBuilder`: ``Radius`` (envelope on by default), ``KNN`` or ``Complete``.
        Default ``KNN(k=16)``.
    share_weights
        One block for all iterations. The input is then first mapped into ``fiber_hidden`` by a
        self-interaction (degrees of ``fiber_hidden`` missing from ``fiber_in`` start at zero), and at inference
        ``forward(..., tol=..., max_iterations=...)`` may run a different number of iterations.
    edge_dim
        Number of invariant edge features; they must then come from ``edge_attr_fn`` (recomputed every
        iteration, since the graph changes).
    displacement_scale
        The displacement heads' outputs are multiplied by this length. Set it to the typical size of one
        iteration's update in your data (a target normalisation): the heads then work at unit scale, and the
        first optimiser steps do not throw the points far from where they start.
    displacement
        ``"head"`` (default): a separate type-1 output channel per block, zero at initialisation, times
        ``displacement_scale``. ``"hidden"``: the first type-1 channel of the hidden fiber the block returns
        (times ``displacement_scale``, default 1), as in the original code; needs a type-1 channel in
        ``fiber_hidden``.
    radial_scaling
        Where every radial network's fan-in factor acts, ``"init"`` (default) or ``"forward"`` (see
        :class:`~pyg_se3.models.SE3Transformer`).
    relative_position
        Every layer adds the edge's relative position to the first type-1 channel of its source features
        (see :class:`~pyg_se3.models.SE3Transformer`). Default ``False``.
    integrator
        What a block's type-1 output updates. ``"position"`` (default): the positions, ``x_{t+1} = x_t + s u_t``
        (``s = displacement_scale``). ``"velocity"``: a velocity carried between iterations as type-1 state
        (``forward(..., vel=...)`` gives its initial value), from which the positions follow, a semi-implicit
        Euler step of length ``dt``:

        .. math::
            v_{t+1} = v_t + s\, u_t, \qquad x_{t+1} = x_t + \Delta t\, v_{t+1}

        An untrained model (zero heads) then moves every point at its initial velocity: after ``T`` iterations
        ``x_T = x_0 + T \Delta t\, v_0``, linear extrapolation over ``T dt``. Still SE(3)-equivariant
        (velocities rotate with the positions and do not translate), and a uniform boost of the initial velocities
        shifts the output by the boost times ``T dt`` when the blocks' inputs do not see it.
    dt
        The time step of ``integrator="velocity"`` (``> 0``; default 1). Ignored by ``integrator="position"``.
    find_reverse_pairs
        As in :class:`~pyg_se3.models.SE3Transformer`: on a symmetric graph (``Radius``, ``Complete``) the full
        kernels compute their radial weights once per pair of an edge and its reverse, which costs a few host-device
        synchronisations per iteration on a GPU; ``False`` computes them per edge and makes none. Default ``True``.
    """

    def __init__(
        self,
        fiber_in: Fiber,
        fiber_hidden: Fiber,
        *,
        num_iterations: int = 4,
        layers_per_iteration: int = 2,
        graph: GraphBuilder | None = None,
        share_weights: bool = False,
        displacement: str = "head",
        displacement_scale: float = 1.0,
        num_heads: int = 4,
        edge_dim: int = 0,
        channels_div: int = 2,
        norm: bool | str = True,
        radial_hidden: int = 32,
        radial_layers: int = 2,
        kernel: str = "full",
        parity: bool = False,
        radial_scaling: str = "init",
        relative_position: bool = False,
        checkpoint: bool = False,
        checkpoint_edges: int = 2**15,
        integrator: str = "position",
        dt: float = 1.0,
        find_reverse_pairs: bool = True,
    ) -> None:
        super().__init__()
        if integrator not in ("position", "velocity"):
            raise ValueError(f"integrator: expected 'position' or 'velocity', got {integrator!r}")
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt: expected a finite number > 0, got {dt!r}")
        if displacement not in ("head", "hidden"):
            raise ValueError(f"displacement: expected 'head' or 'hidden', got {displacement!r}")
        if displacement == "hidden" and 1 not in fiber_hidden:
            raise ValueError(
                f"fiber_hidden: displacement='hidden' moves the points by a type-1 channel, {fiber_hidden}"
            )
        if not displacement_scale > 0:
            raise ValueError(f"displacement_scale: expected > 0, got {displacement_scale}")
        if num_iterations < 1:
            raise ValueError(f"num_iterations: expected >= 1, got {num_iterations}")
        if layers_per_iteration < 1:
            raise ValueError(f"layers_per_iteration: expected >= 1, got {layers_per_iteration}")
        if graph is not None and not isinstance(graph, GraphBuilder):
            raise ValueError(f"graph: expected a Radius, KNN or Complete graph builder, got {graph!r}")
        self.fiber_in, self.fiber_hidden = fiber_in, fiber_hidden
        self.num_iterations, self.layers_per_iteration = num_iterations, layers_per_iteration
        self.graph = graph if graph is not None else KNN(k=16)
        self.share_weights, self.edge_dim = share_weights, edge_dim
        self.displacement_scale = float(displacement_scale)
        self.displacement = displacement
        self.integrator, self.dt = integrator, float(dt)
        block_args = {
            "fiber_hidden": fiber_hidden,
            "fiber_out": fiber_hidden + DISPLACEMENT if displacement == "head" else fiber_hidden,
            "num_layers": layers_per_iteration - 1,
            "num_heads": num_heads,
            "edge_dim": edge_dim,
            "channels_div": channels_div,
            "radial_hidden": radial_hidden,
            "radial_layers": radial_layers,
            "kernel": kernel,
            "parity": parity,
            "radial_scaling": radial_scaling,
            "checkpoint": checkpoint,
            "checkpoint_edges": checkpoint_edges,
            "norm": norm,
            "relative_position": relative_position,
            "find_reverse_pairs": find_reverse_pairs,
        }
        if share_weights:
            lost = [d for d in fiber_in.degrees if d not in fiber_hidden]
            if lost:
                raise ValueError(
                    f"fiber_hidden: with share_weights=True the input is embedded into fiber_hidden, which lacks "
                    f"degrees {lost} of fiber_in {fiber_in}"
                )
            self.embed = SE3Linear(fiber_in, fiber_hidden & fiber_in)
            self.blocks = nn.ModuleList([SE3Transformer(fiber_hidden, **block_args)])
        else:
            self.embed = None
            self.blocks = nn.ModuleList(
                [SE3Transformer(fiber_in if t == 0 else fiber_hidden, **block_args) for t in range(num_iterations)]
            )
        self.max_degree = max(block.max_degree for block in self.blocks)
        self.parity = self.blocks[0].parity
        self._zero_displacements()

    def reset_parameters(self) -> None:
        for block in self.blocks:
            block.reset_parameters()
        if self.embed is not None:
            self.embed.reset_parameters()
        self._zero_displacements()

    def _zero_displacements(self) -> None:
        """Every block starts as the identity on positions (as AlphaFold zero-initialises its final layers):
        an untrained model does not throw points around, and training moves them from where they are."""
        if self.displacement != "head":
            return
        displacement = slice(self.fiber_hidden[1], self.fiber_hidden[1] + 1)  # after the hidden type-1 channels
        for block in self.blocks:
            block.output.zero_output_(1, displacement)

    def forward(
        self,
        x: Tensor,
        pos: Tensor,
        batch: Tensor | None = None,
        edge_attr_fn: EdgeAttrFn | None = None,
        detach_basis: bool | str = False,
        tol: float | None = None,
        max_iterations: int | None = None,
        vel: Tensor | None = None,
    ) -> IterativeOutput:
        """Run the iterations.

        Parameters
        ----------
        x
            ``[N, fiber_in.dim]`` input features.
        pos
            ``[N, 3]`` initial positions.
        batch
            ``[N]`` graph index of each node; graphs are never connected to each other.
        edge_attr_fn
            ``(pos, edge_index) -> [E, edge_dim]`` invariant edge features, called after every graph rebuild
            with the current positions (required iff ``edge_dim > 0``).
        detach_basis
            ``True`` (or ``"geometry"``): compute each iteration's basis, edge lengths, envelope and edge features
            from detached positions. ``"harmonics"``: detach only the basis (spherical harmonics times
            Clebsch-Gordan); lengths, relative positions and edge features keep their gradients.
        tol
            Shared weights, inference only: stop once the largest displacement of an iteration is below ``tol``.
        max_iterations
            Shared weights only: the number of iterations to run (default ``num_iterations``).
        vel
            ``[N, 3]`` initial velocities: required with ``integrator="velocity"``, refused otherwise.
        """
        num_steps = self._num_steps(tol, max_iterations)
        self._check_velocity(vel, pos, tol)
        if detach_basis not in (False, True, "geometry", "harmonics"):
            raise ValueError(f"detach_basis: expected False, True, 'geometry' or 'harmonics', got {detach_basis!r}")
        if (edge_attr_fn is None) != (self.edge_dim == 0):
            raise ValueError(
                f"edge_attr_fn: expected a function (pos, edge_index) -> [E, {self.edge_dim}] when edge_dim > 0, "
                f"and None when edge_dim == 0 (edge_dim={self.edge_dim})"
            )
        empty = torch.empty(2, 0, dtype=torch.long, device=pos.device if isinstance(pos, Tensor) else None)
        # values=False: the graph builder checks the positions (and batch) it gets, at every iteration
        check_graph_inputs(x, pos, empty, self.fiber_in, batch=batch, dtype=model_dtype(self), values=False)
        h = self.embed_input(x)
        out = IterativeOutput(pos=pos, x=h, trajectory=[pos])
        # a graph that does not depend on the positions (Complete) is built once, with its reverse pairs
        reuse = not self.graph.depends_on_positions and not torch.compiler.is_compiling()
        graph = None
        for t in range(num_steps):
            h, update, ran_on = self._step(
                self.blocks[0 if self.share_weights else t], h, pos, batch, edge_attr_fn, detach_basis, graph
            )
            edge_index, graph = ran_on[0], ran_on if reuse else None
            if self.integrator == "velocity":
                vel = vel + update
                pos = pos + self.dt * vel
            else:
                pos = pos + update
            out.trajectory.append(pos)
            out.edge_indices.append(edge_index)
            out.num_iterations = t + 1
            if tol is not None and float(_displacement_norm(out.trajectory)) < tol:
                break
        out.pos, out.x, out.vel = pos, h, vel
        return out

    def _check_velocity(self, vel: Tensor | None, pos: Tensor, tol: float | None) -> None:
        if self.integrator == "position":
            if vel is not None:
                raise ValueError("vel: only a model with integrator='velocity' carries velocities; pass vel=None")
            return
        if vel is None:
            raise ValueError("vel: expected the [N, 3] initial velocities (integrator='velocity')")
        if tol is not None:
            raise ValueError("tol: early stopping needs integrator='position' (a moving point never stops)")
        check_vectors(vel, pos.shape[0], "vel", "velocities")
        if vel.dtype != pos.dtype:
            raise ValueError(f"vel: expected the dtype of pos ({pos.dtype}), got {vel.dtype}")

    def embed_input(self, x: Tensor) -> Tensor:
        """The features the first block sees: ``x`` itself, or its embedding into ``fiber_hidden``."""
        if self.embed is None:
            return x
        return self.fiber_hidden.embed(self.embed(x), self.embed.fiber_out)

    def _step(self, block, h, pos, batch, edge_attr_fn, detach_basis, graph=None):
        """One iteration; ``graph`` is ``(edge_index, reverse_pairs)`` to reuse, or ``None`` to build them from
        ``pos``. Returns the new features, the update and the graph it ran on."""
        if graph is None:
            edge_index = self.graph(pos, batch)
        else:
            check_pos(pos)  # as the graph builder checks the positions at every iteration
            edge_index = graph[0]
        geometry = pos.detach() if detach_basis in (True, "geometry") else pos
        edge_attr = None
        if edge_attr_fn is not None:
            edge_attr = edge_attr_fn(geometry, edge_index)
            check_edge_attr(edge_attr, edge_index.shape[1], self.edge_dim, model_dtype(self))
        # pos checked by the graph builder
        basis = compute_basis(
            geometry,
            edge_index,
            block.max_degree,
            check_values=False,
            parity=self.parity,
            find_reverse_pairs=block.find_reverse_pairs and graph is None,
        )
        if graph is not None:
            basis.reverse_pairs = graph[1]
        if detach_basis == "harmonics":
            basis.pairs = {pair: b.detach() for pair, b in basis.pairs.items()}
        basis.edge_weight = self.graph.edge_weight(basis.dist.squeeze(-1))
        with no_value_checks():  # the graph builder has checked pos, and built edge_index in range
            out = block(h, geometry, edge_index, edge_attr, basis=basis)
        if self.displacement == "head":
            h, displacement = Fiber.uncat(out, self.fiber_hidden, DISPLACEMENT)
        else:
            h, first = out, self.fiber_hidden.offsets()[1].start
            displacement = h[:, first : first + 3]
        return h, self.displacement_scale * displacement, (edge_index, basis.reverse_pairs)

    def _num_steps(self, tol: float | None, max_iterations: int | None) -> int:
        if not self.share_weights and (tol is not None or max_iterations is not None):
            raise ValueError("tol/max_iterations: only a model with share_weights=True can change its iteration count")
        if tol is not None and self.training:
            raise ValueError("tol: early stopping is for inference; call model.eval() first")
        if tol is not None and not tol > 0:
            raise ValueError(f"tol: expected > 0, got {tol}")
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"max_iterations: expected >= 1, got {max_iterations}")
        return max_iterations if max_iterations is not None else self.num_iterations

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.fiber_in} -> {self.fiber_hidden}, num_iterations="
            f"{self.num_iterations}, layers_per_iteration={self.layers_per_iteration}, graph={self.graph}, "
            f"share_weights={self.share_weights}, edge_dim={self.edge_dim}, "
            f"displacement={self.displacement!r}, displacement_scale={self.displacement_scale:g}"
            + (", parity=True" if self.parity else "")
            + (", radial_scaling='forward'" if self.blocks[0].output.kernel.radial_scaling == "forward" else "")
            + ("" if self.blocks[0].find_reverse_pairs else ", find_reverse_pairs=False")
            + (f", integrator='velocity', dt={self.dt:g})" if self.integrator == "velocity" else ")")
        )


def _displacement_norm(trajectory: list[Tensor]) -> Tensor:
    """Largest per-node displacement of the last iteration."""
    return (trajectory[-1] - trajectory[-2]).norm(dim=-1).max() if trajectory[-1].numel() else torch.zeros(())
