"""pLSTM kernel benchmark (forward, jitted, float32).

- 2D grids: ``plstm_2d`` (wavefront over anti-diagonals) vs a naive cell-by-cell recursion
  (``lax.scan`` over the X·Y cells in raster order) vs ``plstm_dag`` on the grid graph
  (levels; dense for small grids); also forward+backward of ``plstm_2d``.
- DAGs: ``plstm_dag`` levels / dense vs a naive edge-by-edge recursion (``lax.scan`` over
  edges in topological order: the reference implementation's one-at-a-time scheme) on random
  DAGs (networkx G(n, p) graphs with mean degree 4, oriented by node order) of growing size.

    python benchmarks/plstm.py            # sizes for a few minutes on a small CPU
    python benchmarks/plstm.py --quick    # smoke run

Writes benchmarks/results/plstm/kernels.json and kernels.md. On CPU, compare the ratios
measured side by side in one run, not absolute times.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from common import environment, markdown_table, time_fn, write_json
from pararnn.plstm import dagify, grid_graph, plstm_2d, plstm_dag

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "plstm")
H, DK, DV = 2, 8, 8


def naive_grid(q, k, v, S, T, M, D):
    """Cell by cell in raster order: carry the row of downward states and the state coming
    from the left neighbour."""
    X, Y = q.shape[:2]
    zero = jnp.zeros((H, DK, DV), q.dtype)

    def cell(carry, idx):
        row, left = carry
        i, j = idx // Y, idx % Y
        cin = jnp.stack([row[j], jnp.where(j > 0, left, zero)])  # (2, H, dk, dv)
        qi, ki, vi = q[i, j], k[i, j], v[i, j]
        h = jnp.einsum("ah,hd,ahdv->hv", M[i, j], qi, cin) + (D[i, j] * jnp.sum(qi * ki, -1))[:, None] * vi
        kv = jnp.einsum("hd,hv->hdv", ki, vi)
        new = jnp.einsum("oah,ahdv->ohdv", T[i, j], cin) + S[i, j][..., None, None] * kv
        return (row.at[j].set(new[0]), new[1]), h

    init = (jnp.zeros((Y, H, DK, DV), q.dtype), zero)
    _, hs = jax.lax.scan(cell, init, jnp.arange(X * Y))
    return hs.reshape(X, Y, H, DV)


def naive_dag_fn(g):
    """Edge by edge in topological order, predecessors padded to the max in-degree."""
    order = np.argsort(g.edge_level, kind="stable")
    preds = [[] for _ in range(g.num_edges)]
    for p, (ei, eo) in enumerate(g.line_edges.tolist()):
        preds[eo].append(p)
    width = max([len(p) for p in preds] + [1])
    pidx = np.full((g.num_edges, width), g.num_line_edges)
    for e, p in enumerate(preds):
        pidx[e, :len(p)] = p
    e_in = np.concatenate([g.line_edges[:, 0], [g.num_edges]])
    src, dst = g.edges[:, 0], g.edges[:, 1]

    pidx_j, e_in_j, src_j = jnp.asarray(pidx), jnp.asarray(e_in), jnp.asarray(src)

    def run(q, k, v, S, T, M, D):
        Tp = jnp.concatenate([T, jnp.zeros_like(T[:1])])  # row P: padding, zero transition
        C = jnp.zeros((g.num_edges + 1, H, DK, DV), q.dtype)

        def edge(C, e):
            p = pidx_j[e]
            c = jnp.einsum("ph,phdv->hdv", Tp[p], C[e_in_j[p]])
            s = src_j[e]
            c = c + S[e][:, None, None] * jnp.einsum("hd,hv->hdv", k[s], v[s])
            return C.at[e].set(c), None

        C, _ = jax.lax.scan(edge, C, jnp.asarray(order))
        read = M[..., None] * jnp.einsum("ehd,ehdv->ehv", q[dst], C[:-1])
        out = (D * jnp.sum(q * k, -1))[..., None] * v
        return out + jax.ops.segment_sum(read, jnp.asarray(dst), num_segments=g.num_nodes)

    return run


def random_inputs(key, lead_nodes, E=None, P=None, grid=None):
    ks = jax.random.split(key, 7)
    u = lambda kk, s: jax.random.uniform(kk, s, jnp.float32, -1, 1)
    if grid:
        X, Y = grid
        return (u(ks[0], (X, Y, H, DK)), u(ks[1], (X, Y, H, DK)), u(ks[2], (X, Y, H, DV)),
                u(ks[3], (X, Y, 2, H)), 0.5 * u(ks[4], (X, Y, 2, 2, H)), u(ks[5], (X, Y, 2, H)),
                u(ks[6], (X, Y, H)))
    N = lead_nodes
    return (u(ks[0], (N, H, DK)), u(ks[1], (N, H, DK)), u(ks[2], (N, H, DV)), u(ks[3], (E, H)),
            0.5 * u(ks[4], (P, H)), u(ks[5], (E, H)), u(ks[6], (N, H)))


def grid_as_dag(args, X, Y, g):
    """2D inputs → plstm_dag inputs on grid_graph(X, Y) (directions from node indices)."""
    q, k, v, S, T, M, D = args
    src, dst = g.edges[:, 0], g.edges[:, 1]
    o = np.where((dst // Y) == (src // Y) + 1, 0, 1)
    mid = src[g.line_edges[:, 1]]
    flat = lambda a: a.reshape(X * Y, *a.shape[2:])
    Se = S[src // Y, src % Y, o]
    Me = M[dst // Y, dst % Y, o]
    Tp = T[mid // Y, mid % Y, o[g.line_edges[:, 1]], o[g.line_edges[:, 0]]]
    return flat(q), flat(k), flat(v), Se, Tp, Me, flat(D)


def bench_grid(sizes, repeats, min_s):
    rows = []
    for X, Y in sizes:
        args = random_inputs(jax.random.key(X * 1000 + Y), None, grid=(X, Y))
        g = grid_graph(X, Y)
        dargs = grid_as_dag(args, X, Y, g)
        wave = jax.jit(plstm_2d)
        ref = jax.jit(naive_grid)(*args)
        row = {"grid": f"{X}x{Y}", "cells": X * Y, "edges": g.num_edges}
        row["wavefront_ms"] = 1e3 * time_fn(wave, *args, repeats=repeats, min_seconds=min_s)["median_s"]
        row["naive_ms"] = 1e3 * time_fn(jax.jit(naive_grid), *args, repeats=repeats, min_seconds=min_s)["median_s"]
        lv = jax.jit(lambda *a: plstm_dag(g, *a, method="levels"))
        row["dag_levels_ms"] = 1e3 * time_fn(lv, *dargs, repeats=repeats, min_seconds=min_s)["median_s"]
        if g.num_edges <= 1200:
            dn = jax.jit(lambda *a: plstm_dag(g, *a, method="dense"))
            row["dag_dense_ms"] = 1e3 * time_fn(dn, *dargs, repeats=repeats, min_seconds=min_s)["median_s"]
        loss = jax.jit(jax.grad(lambda a: jnp.sum(plstm_2d(*a) ** 2)))
        row["wavefront_fwd_bwd_ms"] = 1e3 * time_fn(loss, args, repeats=repeats, min_seconds=min_s)["median_s"]
        row["speedup_vs_naive"] = row["naive_ms"] / row["wavefront_ms"]
        row["speedup_vs_dag_levels"] = row["dag_levels_ms"] / row["wavefront_ms"]
        row["max_err_wavefront"] = float(jnp.max(jnp.abs(wave(*args) - ref)))
        row["max_err_dag"] = float(jnp.max(jnp.abs(lv(*dargs).reshape(ref.shape) - ref)))
        rows.append(row)
        print(row, flush=True)
    return rows


def bench_dag(sizes, repeats, min_s):
    rows = []
    for n in sizes:
        und = nx.gnp_random_graph(n, 4.0 / max(n - 1, 1), seed=n)
        g = dagify(und)
        args = random_inputs(jax.random.key(n), n, g.num_edges, g.num_line_edges)
        row = {"nodes": n, "edges": g.num_edges, "line_edges": g.num_line_edges, "levels": g.num_levels}
        naive = jax.jit(naive_dag_fn(g))
        ref = naive(*args)
        row["naive_ms"] = 1e3 * time_fn(naive, *args, repeats=repeats, min_seconds=min_s)["median_s"]
        lv = jax.jit(lambda *a: plstm_dag(g, *a, method="levels"))
        row["levels_ms"] = 1e3 * time_fn(lv, *args, repeats=repeats, min_seconds=min_s)["median_s"]
        row["max_err_levels"] = float(jnp.max(jnp.abs(lv(*args) - ref)))
        if g.num_edges <= 1200:
            dn = jax.jit(lambda *a: plstm_dag(g, *a, method="dense"))
            row["dense_ms"] = 1e3 * time_fn(dn, *args, repeats=repeats, min_seconds=min_s)["median_s"]
            row["max_err_dense"] = float(jnp.max(jnp.abs(dn(*args) - ref)))
        row["speedup_levels_vs_naive"] = row["naive_ms"] / row["levels_ms"]
        rows.append(row)
        print(row, flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else 5
    grids = [(4, 6)] if args.quick else [(8, 8), (16, 16), (24, 40), (48, 48)]
    dags = [20] if args.quick else [16, 64, 256, 1024]
    min_s = 0.05 if args.quick else 0.3  # at least this much timed per entry (noise on a shared CPU)
    grid_rows, dag_rows = bench_grid(grids, repeats, min_s), bench_dag(dags, repeats, min_s)
    env = environment()
    write_json(os.path.join(args.out, "kernels.json"),
               {"environment": env, "heads": H, "dk": DK, "dv": DV, "dtype": "float32",
                "grid": grid_rows, "dag": dag_rows})
    t1 = markdown_table(grid_rows, [("grid", "grid"), ("wavefront_ms", "plstm_2d (ms)"),
                                    ("naive_ms", "naive cell loop (ms)"),
                                    ("dag_levels_ms", "plstm_dag levels (ms)"),
                                    ("dag_dense_ms", "plstm_dag dense (ms)"),
                                    ("wavefront_fwd_bwd_ms", "plstm_2d fwd+bwd (ms)"),
                                    ("speedup_vs_naive", "× vs naive"),
                                    ("speedup_vs_dag_levels", "× vs dag levels"),
                                    ("max_err_wavefront", "max err 2d"), ("max_err_dag", "max err dag")])
    t2 = markdown_table(dag_rows, [("nodes", "nodes"), ("edges", "edges"), ("line_edges", "line edges"),
                                   ("levels", "levels"), ("naive_ms", "naive edge loop (ms)"),
                                   ("levels_ms", "levels (ms)"), ("dense_ms", "dense (ms)"),
                                   ("speedup_levels_vs_naive", "levels × vs naive"),
                                   ("max_err_levels", "max err levels"),
                                   ("max_err_dense", "max err dense")])
    head = (f"pLSTM kernels, float32 forward, H={H}, dk={DK}, dv={DV}; {env['date']}, JAX "
            f"{env['jax']}, {env['backend']} ({env['cpu_count']} cores)\n\n")
    with open(os.path.join(args.out, "kernels.md"), "w") as f:
        f.write(head + "### 2D grids\n\n" + t1 + "\n\n### random DAGs (G(n, p), mean degree 4, "
                "oriented by node order)\n\n" + t2 + "\n")
    print(t1)
    print(t2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
