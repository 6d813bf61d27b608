"""What a fused kernel needs to know about a step: its traced programs and its operands.

:class:`StepPlan` traces the user's ``step(h, x, params, *consts)`` once (and its forward-mode
linearisation), decides for every leaf of ``xs``, ``params`` and of the closed-over arrays
whether its last axis is the channel axis, drops leaves the step never reads, and validates
the layout with errors that name the leaf. The kernels then evaluate the traced programs on
register tiles with :mod:`pararnn.kernels.lanes`.

Layout rules (checked here, at trace time):

- the state ``h0`` has at least one axis; its last axis (size D) is the channel axis.
  ``jacobian="diagonal"``: any shape ``(*lead, D)``; ``"block"``: ``(K, D)``.
- a leaf whose last axis has size D is *per channel* (each program reads its own channels);
  any other leaf is *shared* by all channels (a scalar, a per-gate constant, a scalar per
  time step) and must be small: its elements are loaded one by one.
- the step must be elementwise over the channel axis (see :mod:`pararnn.kernels.lanes`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import numpy as np
import jax
import jax.numpy as jnp

from ..structure import BLOCK, DIAGONAL, Structure
from .lanes import CALLS, ELEMENTWISE, FusedStepError, LaneValue, concrete, evaluate, is_concrete

__all__ = ["StepPlan", "FusedStepError", "MAX_SHARED_ELEMENTS", "MAX_STEP_TILES",
           "fits_registers"]

# A shared (channel-free) leaf is loaded element by element: keep them few.
MAX_SHARED_ELEMENTS = 256
# Tiles loaded per time step (sum over xs leaves of their leading sizes): each is a register
# tile of the kernel, live across the step's evaluation.
MAX_STEP_TILES = 32
# Tiles of one state (its leading size; K for K×K blocks, whose Jacobians take K² tiles).
MAX_STATE_TILES = 16
MAX_BLOCK = 4


def fits_registers(structure: Structure, state_shape: tuple[int, ...]) -> bool:
    """Whether a state of this shape fits the fused kernels' register budget."""
    if structure is BLOCK:
        return len(state_shape) == 2 and state_shape[0] <= MAX_BLOCK
    return math.prod(state_shape[:-1]) <= MAX_STATE_TILES


@dataclasses.dataclass(frozen=True)
class Operand:
    """One kernel input.

    Attributes:
      name: the leaf's path for messages (``xs[0]``, ``params['a']``, ``closure constant #0``).
      per_step: True for a leaf of ``xs`` (leading time axis), False for a static one.
      channel: whether the (per-step) shape's last axis is the channel axis.
      shape: the per-step shape for ``xs`` leaves, the whole shape for static ones.
      dtype: the leaf's dtype.
    """

    name: str
    per_step: bool
    channel: bool
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def lead(self) -> tuple[int, ...]:
        return self.shape[:-1] if self.channel else self.shape


def _flat_with_names(tree, prefix: str):
    leaves = jax.tree_util.tree_leaves_with_path(tree)
    return [(prefix + jax.tree_util.keystr(p), l) for p, l in leaves], jax.tree_util.tree_structure(tree)


def _fmt(shape, dtype) -> str:
    return f"{np.dtype(dtype).name}{list(shape)}"


class StepPlan:
    """The traced step and its operand layout for one solve.

    Args:
      step: ``step(h, x, params, *consts) -> h_next``.
      h0: the initial state (its shape and dtype are used).
      xs: the inputs, leading axis T (only shapes and dtypes are used).
      params: the parameters (only shapes and dtypes are used).
      consts: arrays the step closes over, passed as trailing arguments.
      structure: DIAGONAL or BLOCK.
      quasi: linearise with only the diagonal of each block (quasi-Newton).
      jacobians: False to trace only the step (the linear-recurrence kernels do not need it).
    """

    def __init__(self, step: Callable, h0, xs, params, consts: Sequence = (), *,
                 structure: Structure, quasi: bool = False, jacobians: bool = True):
        if structure is not DIAGONAL and structure is not BLOCK:
            raise FusedStepError(
                f"algorithm='fused' supports jacobian='diagonal' and 'block', got "
                f"{structure.name!r}; use algorithm='tree' or 'chunked' for dense Jacobians.")
        h_shape = tuple(np.shape(h0))
        if not h_shape:
            raise FusedStepError(
                "algorithm='fused' needs a state h0 with at least one (channel) axis, got a "
                "scalar; reshape it to (1,).")
        if not fits_registers(structure, h_shape):
            limit = (f"K <= {MAX_BLOCK} for K×K blocks" if structure is BLOCK else
                     f"at most {MAX_STATE_TILES} elements per channel")
            raise FusedStepError(
                f"algorithm='fused': a state of shape {list(h_shape)} does not fit the kernel's "
                f"registers ({limit}); use algorithm='tree' or 'chunked'.")
        self.structure = structure
        self.quasi = quasi
        self.state_shape = h_shape
        self.state_dtype = np.dtype(jnp.result_type(h0))
        self.channels = h_shape[-1]
        self.state_lead = h_shape[:-1]
        self.block_size = h_shape[0] if structure is BLOCK else None
        x_named, self.xs_tree = _flat_with_names(xs, "xs")
        s_named, _ = _flat_with_names((params, tuple(consts)), "")
        s_named = [(_static_name(n, len(jax.tree_util.tree_leaves(params))), l)
                   for n, l in s_named]
        self.params_tree = jax.tree_util.tree_structure(params)
        self.n_params = len(jax.tree_util.tree_leaves(params))
        x_specs = [jax.ShapeDtypeStruct(np.shape(l)[1:], jnp.result_type(l)) for _, l in x_named]
        s_specs = [jax.ShapeDtypeStruct(np.shape(l), jnp.result_type(l)) for _, l in s_named]
        h_spec = jax.ShapeDtypeStruct(h_shape, self.state_dtype)
        n_x = len(x_specs)
        xs_tree, params_tree, n_params = self.xs_tree, self.params_tree, self.n_params

        def call(h, *flat):
            x = jax.tree_util.tree_unflatten(xs_tree, flat[:n_x])
            statics = flat[n_x:]
            p = jax.tree_util.tree_unflatten(params_tree, statics[:n_params])
            return step(h, x, p, *statics[n_params:])

        def lin(h, *flat):
            f = lambda h: call(h, *flat)
            if structure is DIAGONAL:
                fh, jac = jax.jvp(f, (h,), (jnp.ones_like(h),))
                return (fh, jac)
            k = h.shape[0]
            outs = []
            for col in range(k):
                # unit tangent of block entry `col` of every channel, built from broadcasts
                # (no scatter: the kernel evaluates this jaxpr on tiles)
                tangent = jnp.stack([jnp.full(h.shape[1:], 1 if i == col else 0, h.dtype)
                                     for i in range(k)])
                fh, jcol = jax.jvp(f, (h,), (tangent,))
                outs.append(jcol)
            return (fh, *outs)

        try:
            self._step = jax.make_jaxpr(call)(h_spec, *x_specs, *s_specs)
            self._lin = jax.make_jaxpr(lin)(h_spec, *x_specs, *s_specs) if jacobians else None
        except FusedStepError:
            raise
        except Exception as e:  # pragma: no cover - solve() has validated the step already
            raise FusedStepError(f"tracing the step for the fused kernel failed: {e}") from e

        # Which flat inputs (after h) do the programs read?
        used = _used_invars(self._step.jaxpr)
        if self._lin is not None:
            used |= _used_invars(self._lin.jaxpr)
        d = self.channels
        self.x_operands: list[Operand] = []
        self.x_index: list[int] = []  # position in the flat xs leaves
        for i, ((name, leaf), spec) in enumerate(zip(x_named, x_specs)):
            if 1 + i in used:
                self.x_operands.append(self._operand(name, spec, per_step=True))
                self.x_index.append(i)
        self.s_operands: list[Operand] = []
        self.s_index: list[int] = []
        for i, ((name, leaf), spec) in enumerate(zip(s_named, s_specs)):
            if 1 + n_x + i in used:
                self.s_operands.append(self._operand(name, spec, per_step=False))
                self.s_index.append(i)
        # Constants of the traced programs: small channel-free ones are folded into the
        # kernel; others (a closed-over (D,) array, a traced value) become static inputs.
        self.const_inputs: list[Any] = []
        self._const_slots = {}
        for prog in (self._step, self._lin):
            if prog is None:
                continue
            for c in prog.consts:
                if id(c) in self._const_slots:
                    continue
                arr_shape = tuple(np.shape(c))
                channel = bool(arr_shape) and arr_shape[-1] == d
                if is_concrete(c) or isinstance(c, jax.Array) and not isinstance(c, jax.core.Tracer):
                    if not channel:
                        if math.prod(arr_shape) > MAX_SHARED_ELEMENTS:
                            raise FusedStepError(
                                f"the step closes over an array of shape {arr_shape} without a "
                                f"channel axis of size {d}: too large to fold into a fused "
                                f"kernel (at most {MAX_SHARED_ELEMENTS} elements); pass it "
                                f"through params with a trailing channel axis.")
                        self._const_slots[id(c)] = ("inline", np.asarray(c))
                        continue
                name = f"closure constant #{len(self.const_inputs)}"
                spec = jax.ShapeDtypeStruct(arr_shape, jnp.result_type(c))
                self._const_slots[id(c)] = ("input", len(self.s_operands))
                self.s_operands.append(self._operand(name, spec, per_step=False))
                self.s_index.append(None)
                self.const_inputs.append(c)
        self._dry_run()
        n_tiles = sum(math.prod(op.lead) for op in self.x_operands)
        if n_tiles > MAX_STEP_TILES:
            desc = ", ".join(f"{op.name} {list(op.shape)}" for op in self.x_operands)
            raise FusedStepError(
                f"the fused kernel loads {n_tiles} register tiles per time step ({desc}); at "
                f"most {MAX_STEP_TILES} fit. Fold leading axes of xs into fewer leaves or use "
                f"algorithm='tree'/'chunked'.")

    def _dry_run(self) -> None:
        """Evaluate the programs on abstract 1×1 tiles: a step that mixes channels or uses
        an unsupported primitive fails here, at solve() time, not inside the kernel."""
        def lanes(op: Operand):
            tiles = tuple(jnp.zeros((1, 1), op.dtype) for _ in range(math.prod(op.lead)))
            return LaneValue(op.lead, tiles, op.channel, op.dtype)

        def run():
            h = LaneValue(self.state_lead, tuple(jnp.zeros((1, 1), self.state_dtype)
                                                 for _ in range(math.prod(self.state_lead))),
                          True, self.state_dtype)
            xv = [lanes(op) for op in self.x_operands]
            sv = [lanes(op) for op in self.s_operands]
            self.step(h, xv, sv)
            if self._lin is not None:
                self.linearize(h, xv, sv)
            return 0

        jax.eval_shape(run)

    def _operand(self, name: str, spec, *, per_step: bool) -> Operand:
        shape, d = tuple(spec.shape), self.channels
        channel = bool(shape) and shape[-1] == d
        if not channel and math.prod(shape) > MAX_SHARED_ELEMENTS:
            where = "per time step" if per_step else "in total"
            raise FusedStepError(
                f"algorithm='fused': {name} has shape {list(shape)}{' per time step' if per_step else ''}, "
                f"which has no trailing channel axis of size D={d} (h0's last axis) and "
                f"{math.prod(shape)} elements {where}; a fused kernel loads such shared leaves "
                f"element by element (at most {MAX_SHARED_ELEMENTS}). Give it a trailing "
                f"channel axis (xs leaves (T, ..., {d}), params leaves (..., {d})), or use "
                f"algorithm='tree'/'chunked'.")
        if not jnp.issubdtype(spec.dtype, jnp.number) and spec.dtype != np.dtype(bool):
            raise FusedStepError(f"algorithm='fused': {name} has dtype {spec.dtype}; expected numbers.")
        return Operand(name, per_step, channel, shape, np.dtype(spec.dtype))

    # ---- operands ---------------------------------------------------------------------------
    def x_arrays(self, xs) -> list[jax.Array]:
        """The used leaves of ``xs`` (each ``(T, *shape)``), in kernel-input order."""
        leaves = jax.tree_util.tree_leaves(xs)
        return [jnp.asarray(leaves[i]) for i in self.x_index]

    def static_arrays(self, params, consts: Sequence) -> list[jax.Array]:
        """The used static leaves (params, closed-over arrays, program constants); scalars
        as shape (1,) (a kernel input needs an axis)."""
        leaves = jax.tree_util.tree_leaves(params) + list(consts)
        out, k = [], 0
        for i, op in zip(self.s_index, self.s_operands):
            if i is None:
                arr = self.const_inputs[k]
                k += 1
            else:
                arr = leaves[i]
            arr = jnp.asarray(arr, op.dtype)
            out.append(arr.reshape(1) if arr.ndim == 0 else arr)
        return out

    # ---- programs on tiles -----------------------------------------------------------------
    def _const_values(self, prog, statics: Sequence[LaneValue]) -> list[LaneValue]:
        vals = []
        for c in prog.consts:
            kind, what = self._const_slots[id(c)]
            if kind == "inline":
                arr = what
                vals.append(LaneValue(arr.shape, tuple(concrete(x, arr.dtype) for x in arr.reshape(-1)),
                                      False, arr.dtype))
            else:
                vals.append(statics[what])
        return vals

    def _args(self, h: LaneValue, xvals: Sequence[LaneValue], statics: Sequence[LaneValue],
              prog) -> list[LaneValue]:
        invars = prog.jaxpr.invars
        args: list[Any] = [h] + [None] * (len(invars) - 1)
        x_pos = {1 + i: v for i, v in zip(self.x_index, xvals)}
        n_xs = self.xs_tree.num_leaves
        s_pos = {1 + n_xs + i: v for i, v in zip(self.s_index, statics) if i is not None}
        for pos in range(1, len(invars)):
            args[pos] = x_pos.get(pos, s_pos.get(pos))
            if args[pos] is None:  # unused input: any placeholder
                args[pos] = LaneValue((), (concrete(0, np.float32),), False, np.dtype(np.float32))
        return args

    def step(self, h: LaneValue, xvals: Sequence[LaneValue], statics: Sequence[LaneValue]) -> LaneValue:
        """``step(h, x, params)`` on tiles."""
        consts = self._const_values(self._step, statics)
        (out,) = evaluate(self._step.jaxpr, consts, self._args(h, xvals, statics, self._step),
                          channels=self.channels, where="step (fused kernel)")
        return out

    def linearize(self, h: LaneValue, xvals, statics) -> tuple[LaneValue, list[LaneValue]]:
        """``(step(h), [J columns])``: one tangent of ones for diagonal steps, K unit
        tangents for block steps."""
        consts = self._const_values(self._lin, statics)
        out = evaluate(self._lin.jaxpr, consts, self._args(h, xvals, statics, self._lin),
                       channels=self.channels, where="step (fused kernel)")
        return out[0], out[1:]

    # ---- accounting -------------------------------------------------------------------------
    def op_counts(self) -> dict[str, int]:
        """Elementwise operations per channel of one step evaluation and of one
        linearisation (for the cost model): ``{"step": n, "linearize": n}``."""
        return {"step": _count_ops(self._step.jaxpr, self.channels),
                "linearize": _count_ops(self._lin.jaxpr, self.channels) if self._lin else 0}


def _static_name(name: str, n_params: int) -> str:
    # name looks like "[0]['a']" (params) or "[1][2]" (consts)
    if name.startswith("[0]"):
        return "params" + name[3:]
    if name.startswith("[1]"):
        return "closed-over array " + name[3:]
    return name


def _used_invars(jaxpr) -> set[int]:
    """Positions of ``jaxpr.invars`` that any equation or output reads."""
    used_vars = set()
    for eqn in jaxpr.eqns:
        for v in eqn.invars:
            used_vars.add(id(v))
    for v in jaxpr.outvars:
        used_vars.add(id(v))
    return {i for i, v in enumerate(jaxpr.invars) if id(v) in used_vars}


def _count_ops(jaxpr, channels: int) -> int:
    n = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name in CALLS:
            inner = eqn.params[CALLS[name]]
            n += _count_ops(getattr(inner, "jaxpr", inner), channels)
        elif name in ELEMENTWISE and name not in ("convert_element_type", "copy", "copy_p"):
            shape = eqn.outvars[0].aval.shape
            n += max(1, math.prod(shape) // channels) if shape and shape[-1] == channels else 1
    return n
