"""pLSTM on a general DAG (static :class:`~pararnn.plstm.graph.Graph`).

``C_e = Σ_{e'→e} T_{(e',e)}·C_{e'} + S_e·k_{src(e)}⊗v_{src(e)}``;
``H_n = Σ_{dst(e)=n} M_e·(q_n·C_e) + D_n·(q_n·k_n)·v_n``.

Two exact schemes, chosen by ``method``:
- ``"levels"``: edges grouped by level (longest path to their source node). A ``lax.scan``
  over levels adds, for all line edges into one level at once, ``T·C[e_in]`` into
  ``C[e_out]`` (gather + scatter-add). Depth = number of levels, work O(P·H·dk·dv).
- ``"dense"``: the closed form ``C = (I − A)⁻¹ B`` with the nilpotent line-graph matrix
  ``A[e_out, e_in] = T``, evaluated as ``(I + A)(I + A²)(I + A⁴)…B`` — ⌈log₂ L⌉ rounds of
  batched matmuls (log depth; no triangular solve, which is slow on CPU for small matrices).
  O(E²·H) memory and O(E³·H·log L) work: for small graphs (molecules).
- ``"auto"``: levels on CPU (measured faster there at every size, benchmarks/plstm.py);
  dense for E ≤ 256 on GPU/TPU (matmul-friendly; not measured yet), else levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_kernel_args, einsum
from .graph import Graph

__all__ = ["plstm_dag"]

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32/bf16 passes on GPU/TPU: the kernels are exact


def _edge_states_levels(graph: Graph, transition, C0):
    p, ein, eout = graph.level_schedule()
    if p.shape[0] == 0:
        return C0
    E = graph.num_edges
    Cp = jnp.concatenate([C0, jnp.zeros_like(C0[:1])])  # row E: dummy, stays zero
    Tp = jnp.concatenate([transition, jnp.zeros_like(transition[:1])])  # row P: dummy

    def step(C, idx):
        pi, ei, eo = idx
        contrib = Tp[pi][..., None, None] * C[ei]
        return C.at[eo].add(contrib), None

    Cp, _ = jax.lax.scan(step, Cp, (jnp.asarray(p), jnp.asarray(ein), jnp.asarray(eout)))
    return Cp[:E]


def _edge_states_dense(graph: Graph, transition, C0):
    E, H = C0.shape[:2]
    A = jnp.zeros((H, E, E), C0.dtype).at[:, graph.line_edges[:, 1], graph.line_edges[:, 0]].add(
        transition.T)
    X = jnp.moveaxis(C0.reshape(E, H, -1), 1, 0)  # (H, E, dk·dv)
    # A is nilpotent: a path of i line edges visits i+1 edge levels, so A^i = 0 for
    # i ≥ L (levels). (I − A)⁻¹ = Σ_{i<L} A^i = (I + A)(I + A²)(I + A⁴)…: ⌈log₂ L⌉ doublings
    steps = int(np.ceil(np.log2(graph.num_levels))) if graph.num_levels > 1 else 0
    for s in range(steps):
        X = X + jnp.matmul(A, X, precision=_HIGHEST)
        if s + 1 < steps:
            A = jnp.matmul(A, A, precision=_HIGHEST)
    return jnp.moveaxis(X, 0, 1).reshape(C0.shape)


def plstm_dag(graph: Graph, q: jax.Array, k: jax.Array, v: jax.Array, source: jax.Array,
              transition: jax.Array, mark: jax.Array, direct: jax.Array, *,
              method: str = "auto") -> jax.Array:
    """pLSTM over a DAG.

    q, k (N, H, dk); v (N, H, dv); source (E, H) = S_e; transition (P, H) indexed by
    ``graph.line_edges``; mark (E, H) = M_e; direct (N, H). Returns (N, H, dv).
    ``method``: "levels", "dense" or "auto" (see the module docstring).
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"plstm_dag: graph must be a pararnn.plstm.Graph, got {type(graph).__name__}.")
    if method not in ("auto", "levels", "dense"):
        raise ValueError(f"plstm_dag: method must be 'auto', 'levels' or 'dense', got {method!r}.")
    N, E, P = graph.num_nodes, graph.num_edges, graph.num_line_edges
    gates = dict(source=source, transition=transition, mark=mark, direct=direct)
    _, H, dk, dv, dtype = check_kernel_args(
        "plstm_dag", (N,), q, k, v, gates,
        dict(source=(E, "H"), transition=(P, "H"), mark=(E, "H"), direct=(N, "H")))
    out = (direct * einsum("nhd,nhd->nh", q, k))[..., None] * v
    if E == 0:
        return out
    src, dst = graph.edges[:, 0], graph.edges[:, 1]
    C0 = source[..., None, None] * einsum("ehd,ehv->ehdv", k[src], v[src])
    if method == "auto":
        method = "dense" if E <= 256 and jax.default_backend() != "cpu" else "levels"
    C = (_edge_states_dense if method == "dense" else _edge_states_levels)(graph, transition, C0)
    read = mark[..., None] * einsum("ehd,ehdv->ehv", q[dst], C)
    return out + jax.ops.segment_sum(read, jnp.asarray(dst), num_segments=N)
