"""Flax NNX pLSTM layers: :class:`pLSTM1D` (sequences), :class:`pLSTM2D` (images, four
orientations) and :class:`pLSTMGraph` (a static DAG).

Every layer: multi-head projections q, k (H·dk), v (H·dv) of its input; Source, Mark and
Direct gates sigmoid-activated with negative bias init (they start almost closed, so the
layer starts close to zero and opens up during training); transitions tanh-activated, then
stabilised by P-mode or D-mode (see :mod:`pararnn.plstm.stabilize`); per-head RMS norm of the
kernel's output, then an output projection. Computation runs in the input's dtype (parameters
are cast), so the layers work under strict dtype promotion.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .chain import plstm_1d
from .dag import plstm_dag
from .graph import Graph
from .grid import plstm_2d
from .stabilize import d_mode_grid_mask, d_mode_transitions, p_mode_grid, p_mode_transitions

__all__ = ["pLSTM1D", "pLSTM2D", "pLSTMGraph", "Dense"]

_MODES = ("P", "D")


class Dense(nnx.Module):
    """``x @ W + b`` computed in x's dtype. x (..., d_in) → (..., d_out)."""

    def __init__(self, d_in: int, d_out: int, *, rngs: nnx.Rngs, bias_init: float | np.ndarray = 0.0,
                 use_bias: bool = True, scale: float = 1.0, param_dtype=jnp.float32):
        std = scale / math.sqrt(d_in)
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (d_in, d_out), param_dtype))
        self.bias = (nnx.Param(jnp.broadcast_to(jnp.asarray(bias_init, param_dtype), (d_out,)))
                     if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ self.kernel[...].astype(x.dtype)
        return y + self.bias[...].astype(x.dtype) if self.bias is not None else y


def _check(name: str, x, ndim: int, features: int, shape_doc: str):
    if x.ndim != ndim or x.shape[-1] != features:
        raise ValueError(f"{name}: x must have shape {shape_doc} with {features} features, got "
                         f"{x.shape}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name}: x must be floating point, got {x.dtype}.")


class _Base(nnx.Module):
    """Shared projections and output path. ``n_src``, ``n_mark``, ``n_trans``: gate values per
    head and position (2D: 2, 2, 4; 1D: 1, 1, 1)."""

    def __init__(self, in_features: int, out_features: int | None, *, num_heads: int,
                 qk_dim: int | None, v_dim: int | None, groups: int, gate_sizes: tuple[int, int, int],
                 source_bias: float, mark_bias: float, direct_bias: float, transition_bias: float,
                 rngs: nnx.Rngs, param_dtype):
        if num_heads < 1 or in_features < 1:
            raise ValueError(f"num_heads and in_features must be positive, got {num_heads}, "
                             f"{in_features}.")
        self.in_features, self.num_heads, self.groups = in_features, num_heads, groups
        self.out_features = out_features or in_features
        self.qk_dim = qk_dim or max(1, in_features // num_heads)
        self.v_dim = v_dim or max(1, in_features // num_heads)
        R, H = groups, num_heads
        kw = dict(rngs=rngs, param_dtype=param_dtype)
        self.q = Dense(in_features, R * H * self.qk_dim, use_bias=False, **kw)
        self.k = Dense(in_features, R * H * self.qk_dim, use_bias=False, **kw)
        self.v = Dense(in_features, R * H * self.v_dim, use_bias=False, **kw)
        ns, nm, nt = gate_sizes
        self.gate_sizes = gate_sizes
        bias = np.concatenate([np.full(R * H * ns, source_bias), np.full(R * H * nm, mark_bias),
                               np.full(R * H, direct_bias), np.full(R * H * nt, transition_bias)])
        self.gates = Dense(in_features, bias.size, bias_init=bias, scale=0.1, **kw)
        self.norm_scale = nnx.Param(jnp.ones((R * H, self.v_dim), param_dtype))
        self.out = Dense(R * H * self.v_dim, self.out_features, **kw)

    def _project(self, x):
        """x (..., F) → q, k (..., R, H, dk), v (..., R, H, dv), source (..., R, ns, H),
        mark (..., R, nm, H), direct (..., R, H), raw transition logits (..., R, nt, H)."""
        R, H = self.groups, self.num_heads
        ns, nm, nt = self.gate_sizes
        lead = x.shape[:-1]
        q = self.q(x).reshape(*lead, R, H, self.qk_dim)
        k = self.k(x).reshape(*lead, R, H, self.qk_dim) / math.sqrt(self.qk_dim)
        v = self.v(x).reshape(*lead, R, H, self.v_dim)
        g = self.gates(x)
        cuts = np.cumsum([R * H * ns, R * H * nm, R * H])
        s, m, d, t = jnp.split(g, cuts, axis=-1)
        source = jax.nn.sigmoid(s.reshape(*lead, R, ns, H))
        mark = jax.nn.sigmoid(m.reshape(*lead, R, nm, H))
        direct = jax.nn.sigmoid(d.reshape(*lead, R, H))
        return q, k, v, source, mark, direct, t.reshape(*lead, R, nt, H)

    def _finish(self, h):
        """h (..., R, H, dv) → per-head RMS norm → (..., out_features)."""
        eps = jnp.asarray(1e-6, h.dtype)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
        h = h * self.norm_scale[...].astype(h.dtype).reshape(self.groups, self.num_heads, self.v_dim)
        return self.out(h.reshape(*h.shape[:-3], -1))


class pLSTM1D(_Base):
    """pLSTM over sequences: x (batch, time, in_features) → (batch, time, out_features).
    On a chain P- and D-mode coincide (one edge in, one out): transitions are tanh, |T| < 1."""

    def __init__(self, in_features: int, out_features: int | None = None, *, num_heads: int = 4,
                 qk_dim: int | None = None, v_dim: int | None = None, chunk_size: int = 64,
                 source_bias: float = -4.0, mark_bias: float = -4.0, direct_bias: float = -6.0,
                 transition_bias: float = 2.0, rngs: nnx.Rngs, param_dtype=jnp.float32):
        super().__init__(in_features, out_features, num_heads=num_heads, qk_dim=qk_dim, v_dim=v_dim,
                         groups=1, gate_sizes=(1, 1, 1), source_bias=source_bias,
                         mark_bias=mark_bias, direct_bias=direct_bias,
                         transition_bias=transition_bias, rngs=rngs, param_dtype=param_dtype)
        self.chunk_size = chunk_size

    def __call__(self, x: jax.Array) -> jax.Array:
        _check("pLSTM1D", x, 3, self.in_features, "(batch, time, in_features)")
        q, k, v, s, m, d, t = self._project(x)
        kern = jax.vmap(lambda *a: plstm_1d(*a, chunk_size=self.chunk_size))
        h = kern(q[:, :, 0], k[:, :, 0], v[:, :, 0], s[:, :, 0, 0], jnp.tanh(t[:, :, 0, 0]),
                 m[:, :, 0, 0], d[:, :, 0])
        return self._finish(h[:, :, None])


_FLIPS = ((), (0,), (1,), (0, 1))  # the four orientations: flips of (X, Y)


class pLSTM2D(_Base):
    """pLSTM over images: x (batch, X, Y, in_features) → (batch, X, Y, out_features).

    ``mode``: "P" (transitions normalised per incoming direction, Σ_o |T| ≤ 1) or "D"
    (multitree: straight-line transitions, turning only on the first row/column, |T| ≤ 1).
    ``orientations``: 4 (default: the grid scanned from each corner — flips of X and/or Y — each
    with its own heads, outputs concatenated before the output projection) or 1.
    """

    def __init__(self, in_features: int, out_features: int | None = None, *, num_heads: int = 4,
                 mode: str = "P", orientations: int = 4, qk_dim: int | None = None,
                 v_dim: int | None = None, source_bias: float = -4.0, mark_bias: float = -4.0,
                 direct_bias: float = -6.0, transition_bias: float = 2.0, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        if mode not in _MODES:
            raise ValueError(f"pLSTM2D: mode must be 'P' or 'D', got {mode!r}.")
        if orientations not in (1, 4):
            raise ValueError(f"pLSTM2D: orientations must be 1 or 4, got {orientations!r}.")
        super().__init__(in_features, out_features, num_heads=num_heads, qk_dim=qk_dim, v_dim=v_dim,
                         groups=orientations, gate_sizes=(2, 2, 4), source_bias=source_bias,
                         mark_bias=mark_bias, direct_bias=direct_bias,
                         transition_bias=transition_bias, rngs=rngs, param_dtype=param_dtype)
        self.mode = mode

    def __call__(self, x: jax.Array) -> jax.Array:
        _check("pLSTM2D", x, 4, self.in_features, "(batch, X, Y, in_features)")
        B, X, Y, _ = x.shape
        q, k, v, s, m, d, t = self._project(x)
        t = jnp.tanh(t.reshape(B, X, Y, self.groups, 2, 2, self.num_heads))

        def oriented(a, back=False):
            """(B, X, Y, R, ...) → (R, B, X, Y, ...), orientation r flipped into the kernel's
            frame (flips are their own inverse; ``back`` undoes the axis move)."""
            if back:
                a = jnp.moveaxis(a, 0, 3)
            parts = [jnp.flip(a[:, :, :, r], tuple(ax + 1 for ax in _FLIPS[r])) if _FLIPS[r]
                     else a[:, :, :, r] for r in range(self.groups)]
            return jnp.stack(parts, axis=3) if back else jnp.stack(parts)

        tr = oriented(t)
        if self.mode == "P":
            tr = p_mode_grid(tr)
        else:  # the mask lives in the kernel's frame, the same for every orientation
            tr = tr * jnp.asarray(d_mode_grid_mask(X, Y), x.dtype)[..., None]
        # one kernel call for all orientations and the batch (a single scan in the program),
        # vmapped once over the merged (orientation, batch) axis: with jax 0.10.2 the gradient
        # of a *nested* vmap of plstm_2d segfaults on CPU (docs/plstm.md, "Known issue")
        R = self.groups
        merge = lambda a: a.reshape(R * B, *a.shape[2:])
        h = jax.vmap(plstm_2d)(*(merge(oriented(a)) for a in (q, k, v, s)), merge(tr),
                               merge(oriented(m)), merge(oriented(d)))
        return self._finish(oriented(h.reshape(R, B, *h.shape[1:]), back=True))


class pLSTMGraph(_Base):
    """pLSTM over a static DAG: x (num_nodes, in_features) or (batch, num_nodes, in_features)
    for one shared graph → same leading shape with out_features.

    Source gate of edge e from x[src(e)], mark from x[dst(e)], direct from x[n]; the transition
    of line edge (e_in → e_out) through node n from x[n] + x[src(e_in)] + x[dst(e_out)] (three
    projections), tanh, then P-mode (per incoming edge Σ|T| ≤ 1) or D-mode (multitree pruning).
    Batch graphs of different sizes with :func:`pararnn.plstm.disjoint_union`.
    """

    def __init__(self, in_features: int, out_features: int | None = None, *, num_heads: int = 4,
                 mode: str = "P", qk_dim: int | None = None, v_dim: int | None = None,
                 source_bias: float = -4.0, mark_bias: float = -4.0, direct_bias: float = -6.0,
                 transition_bias: float = 2.0, method: str = "auto", rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        if mode not in _MODES:
            raise ValueError(f"pLSTMGraph: mode must be 'P' or 'D', got {mode!r}.")
        super().__init__(in_features, out_features, num_heads=num_heads, qk_dim=qk_dim, v_dim=v_dim,
                         groups=1, gate_sizes=(1, 1, 1), source_bias=source_bias,
                         mark_bias=mark_bias, direct_bias=direct_bias,
                         transition_bias=transition_bias, rngs=rngs, param_dtype=param_dtype)
        self.trans_in = Dense(in_features, num_heads, use_bias=False, scale=0.1, rngs=rngs,
                              param_dtype=param_dtype)
        self.trans_out = Dense(in_features, num_heads, use_bias=False, scale=0.1, rngs=rngs,
                               param_dtype=param_dtype)
        self.mode, self.method = mode, method

    def _one(self, graph: Graph, x):
        q, k, v, s, m, d, t = self._project(x)  # per node
        src, dst = graph.edges[:, 0], graph.edges[:, 1]
        ein, eout = graph.line_edges[:, 0], graph.line_edges[:, 1]
        mid = graph.edges[eout, 0]
        logits = t[mid, 0, 0] + self.trans_in(x)[src[ein]] + self.trans_out(x)[dst[eout]]
        tr = jnp.tanh(logits)
        tr = p_mode_transitions(graph, tr) if self.mode == "P" else d_mode_transitions(graph, tr)
        h = plstm_dag(graph, q[:, 0], k[:, 0], v[:, 0], s[src, 0, 0], tr, m[dst, 0, 0], d[:, 0],
                      method=self.method)
        return self._finish(h[:, None])

    def __call__(self, x: jax.Array, graph: Graph) -> jax.Array:
        if not isinstance(graph, Graph):
            raise TypeError(f"pLSTMGraph: graph must be a pararnn.plstm.Graph, got "
                            f"{type(graph).__name__}.")
        if x.ndim not in (2, 3) or x.shape[-2:] != (graph.num_nodes, self.in_features):
            raise ValueError(f"pLSTMGraph: x must have shape ([batch,] {graph.num_nodes}, "
                             f"{self.in_features}) for this graph, got {x.shape}.")
        if x.ndim == 3:
            return jax.vmap(lambda xi: self._one(graph, xi))(x)
        return self._one(graph, x)
