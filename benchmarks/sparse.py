"""Sparse vs dense recurrent cells: time and compiled memory of forward+backward, side by side.

    python benchmarks/sparse.py                 # GRU, D=64, T=256, batch 2 (a few minutes on CPU)
    python benchmarks/sparse.py --kinds gru lstm elman --hidden 128

Three layouts of the same cell at recurrent-weight density ρ:

- dense:  the plain cell (ρ = 1), the baseline of every ratio;
- masked: ``Masked*Cell`` with a random Erdős–Rényi mask of density ρ — the weights are
  sparse but every array and the Jacobian are dense, so no work is saved (the control);
- block:  ``BlockCell`` with B = 1/ρ diagonal blocks — the solver's "block" structure
  ((B, s, s) Jacobians, s = D/B), i.e. what a mask that permutes to blocks buys.

Each with the three solve methods (sequential lax.scan, quasi-Newton, Newton). Time is the
minimum (and median) of jitted value_and_grad calls, timed round-robin across layouts; memory is XLA's compiled estimate
(arguments + outputs + temporaries). Ratios are dense time / layout time, same method.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp

import pararnn
from pararnn.cells import ElmanCell, GRUCell, LSTMCell
from pararnn.sparse import BlockCell, graph_mask, masked_cell_type
from common import environment, markdown_table, write_json

DENSE = {"gru": GRUCell, "lstm": LSTMCell, "elman": ElmanCell}
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "sparse")
COLUMNS = [("kind", "cell"), ("layout", "layout"), ("density", "density ρ"), ("method", "method"),
           ("ms_min", "fwd+bwd min (ms)"), ("ms", "median (ms)"),
           ("speedup", "dense/this time"), ("peak_mb", "memory (MB)"),
           ("memory_ratio", "this/dense memory"), ("iterations", "Newton iters")]


def make_fn(cell, method: str):
    """jit(value_and_grad) of a squared-output loss over a batch, and the solver info."""
    structure_jac = cell.jacobian

    def run(params, x):
        u = cell.project(params, x)
        h0 = cell.initial_state(x.dtype)
        if method == "sequential":
            def body(h, u_t):
                h = jax.vmap(cell.step, in_axes=(0, 0, None))(h, u_t, params)
                return h, h
            hb = jnp.broadcast_to(h0, (x.shape[0],) + h0.shape)
            hs = jnp.swapaxes(jax.lax.scan(body, hb, jnp.swapaxes(u, 0, 1))[1], 0, 1)
            return cell.output(hs), jnp.zeros((x.shape[0],), jnp.int32)
        hs, info = jax.vmap(lambda u_b: pararnn.solve(
            cell.step, h0, u_b, params, jacobian=structure_jac, method=method, return_info=True,
            jacobian_diagonal=cell.jacobian_diagonal))(u)
        return cell.output(hs), info.iterations

    def loss(params, x):
        y, iters = run(params, x)
        return jnp.mean(y * y), iters

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def peak_mb(fn, *args) -> float | None:
    try:
        m = fn.lower(*args).compile().memory_analysis()
        return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2 ** 20
    except Exception:  # not every backend reports it
        return None


def interleaved(fns_args: list, rounds: int) -> list[dict]:
    """Time several compiled functions round-robin (one call of each per round) and keep each
    one's minimum and median: on a shared, loaded CPU the load drifts over seconds, and
    interleaving exposes every variant to the same drift, so their ratios stay meaningful."""
    for fn, args in fns_args:  # compile + warm up
        jax.block_until_ready(fn(*args))
    times = [[] for _ in fns_args]
    for _ in range(rounds):
        for i, (fn, args) in enumerate(fns_args):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[i].append(time.perf_counter() - start)
    return [{"ms_min": 1e3 * min(t), "ms": 1e3 * statistics.median(t), "runs": len(t)} for t in times]


def matvec_rows(sizes, densities, length, batch, rounds):
    """Unstructured sparsity where it could pay: the recurrent matvec of a sequential Elman
    scan, ``h ← tanh(h W + u_t)``, with W dense vs a BCOO sparse matrix (jax.experimental.sparse)
    of the same random mask. Forward only (BCOO's backward adds more gathers)."""
    from jax.experimental import sparse as jsparse

    def scan_dense(w, u):
        return jax.lax.scan(lambda h, ut: (jnp.tanh(h @ w + ut),) * 2, jnp.zeros_like(u[0]), u)[1]

    def scan_sparse(wt, u):  # wt: (out, in) BCOO, y = (Wᵀ hᵀ)ᵀ
        return jax.lax.scan(lambda h, ut: (jnp.tanh((wt @ h.T).T + ut),) * 2, jnp.zeros_like(u[0]), u)[1]

    rows = []
    for d in sizes:
        u = jax.random.normal(jax.random.key(0), (length, batch, d), jnp.float32)
        w = jax.random.normal(jax.random.key(1), (d, d), jnp.float32) / np.sqrt(d)
        runs = [(jax.jit(scan_dense), (w, u))]
        shown = [1.0]
        for rho in densities:
            mask = np.random.default_rng(0).random((d, d)) < rho
            runs.append((jax.jit(scan_sparse), (jsparse.BCOO.fromdense((w * jnp.asarray(mask, w.dtype)).T), u)))
            shown.append(float(mask.mean()))
        timings = interleaved(runs, rounds)
        for rho, t in zip(shown, timings):
            rows.append(dict(t, hidden=d, density=rho, format="dense" if rho == 1.0 else "bcoo",
                             speedup=timings[0]["ms_min"] / t["ms_min"]))
            print(f"matvec D={d} ρ={rho:.3f} {rows[-1]['format']}: {t['ms_min']:.2f} ms "
                  f"(×{rows[-1]['speedup']:.2f})", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kinds", nargs="+", default=["gru"], choices=sorted(DENSE))
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--masked-blocks", type=int, nargs="+", default=[4, 16],
                    help="densities 1/B at which to run the masked (control) layout")
    ap.add_argument("--methods", nargs="+", default=["sequential", "quasi", "newton"])
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds per method")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--matvec-only", action="store_true",
                    help="only the dense vs BCOO sequential-scan comparison (sparse_matvec.{json,md})")
    ap.add_argument("--matvec-sizes", type=int, nargs="+", default=[256, 1024])
    ap.add_argument("--matvec-densities", type=float, nargs="+", default=[0.25, 0.1, 0.03, 0.01])
    args = ap.parse_args(argv)
    if args.matvec_only:
        rows = matvec_rows(args.matvec_sizes, args.matvec_densities, args.length, args.batch, args.rounds)
        env = environment()
        table = markdown_table(rows, [("hidden", "hidden"), ("density", "density ρ"), ("format", "W format"),
                                      ("ms_min", "sequential Elman fwd, min (ms)"), ("ms", "median (ms)"), ("speedup", "dense/this time")])
        print(table)
        os.makedirs(args.out, exist_ok=True)
        write_json(os.path.join(args.out, "sparse_matvec.json"), {"environment": env, "args": vars(args), "rows": rows})
        with open(os.path.join(args.out, "sparse_matvec.md"), "w") as f:
            f.write(f"T={args.length}, batch={args.batch}, float32, jax {env['jax']}, {env['backend']} "
                    f"({env['cpu_count']} cores), {env['date']}\n\n{table}\n")
        return
    d, t, b = args.hidden, args.length, args.batch
    x = jax.random.normal(jax.random.key(0), (b, t, d), jnp.float32)
    rows = []
    for kind in args.kinds:
        configs = [("dense", 1, DENSE[kind](d, d), None)]
        for nb in args.masked_blocks:
            mask = graph_mask("erdos_renyi", d, p=1.0 / nb, seed=0) | np.eye(d, dtype=bool)
            configs.append(("masked", nb, masked_cell_type(kind)(d, d), mask))
        for nb in args.blocks:
            configs.append(("block", nb, BlockCell(d, d, kind=kind, blocks=nb), None))
        prepared = []
        for layout, nb, cell, mask in configs:
            key = jax.random.key(1)
            params = cell.init(key) if mask is None else cell.init(key, mask_h=mask)
            density = float(np.mean(np.asarray(params["mask_h"]))) if layout == "masked" else 1.0 / nb
            prepared.append((layout, nb, cell, params, density))
        for method in args.methods:
            fns = [make_fn(cell, method) for _, _, cell, _, _ in prepared]
            timings = interleaved([(fn, (params, x)) for fn, (_, _, _, params, _) in zip(fns, prepared)],
                                  args.rounds)
            for fn, (layout, nb, cell, params, density), timing in zip(fns, prepared, timings):
                (_, iters), _ = fn(params, x)
                rows.append(dict(timing, kind=kind, layout=layout, density=density, method=method, blocks=nb,
                                 peak_mb=peak_mb(fn, params, x), iterations=int(np.max(iters))))
            base = rows[-len(prepared)]  # the dense layout comes first
            for r in rows[-len(prepared):]:
                # min over the interleaved rounds: the least disturbed call of each (median kept)
                r["speedup"] = base["ms_min"] / r["ms_min"]
                r["memory_ratio"] = (r["peak_mb"] / base["peak_mb"]) if r["peak_mb"] else None
                print(f"{kind:5s} {r['layout']:6s} ρ={r['density']:.3f} {method:10s} {r['ms_min']:9.2f} ms "
                      f"×{r['speedup']:.2f}  {r['peak_mb']:.2f} MB  iters {r['iterations']}", flush=True)
    env = environment()
    table = markdown_table(rows, COLUMNS)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "sparse_benchmark.json"),
               {"environment": env, "args": vars(args), "rows": rows})
    with open(os.path.join(args.out, "sparse_benchmark.md"), "w") as f:
        f.write(f"hidden={d}, T={t}, batch={b}, float32, jax {env['jax']}, {env['backend']} "
                f"({env['cpu_count']} cores), {env['date']}\n\n{table}\n")


if __name__ == "__main__":
    main()
