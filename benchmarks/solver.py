"""Benchmark pararnn.solve: newton vs quasi vs sequential vs auto, forward and forward+backward.

    python benchmarks/solver.py                 # the full sweep (T 2^8…2^16, batch 1/16, D 64/1024)
    python benchmarks/solver.py --quick         # a small grid, a couple of minutes on a laptop
    python benchmarks/solver.py --only-fallback # only the vmap fallback-overhead measurement
    python benchmarks/solver.py --profile       # where one solve's time goes (solve_profile.py)

For every structure (diagonal: ParaGRU, block: ParaLSTM 2×2, dense: GRU), state size D,
batch and length T it prints a markdown table — median time, speedup over the sequential
solve (``t_sequential / t_method``, > 1 means faster), Newton iterations, max error against
the sequential solve — and writes everything to JSON. Configurations whose rough working set
exceeds ``--max-gb`` are listed as skipped, not run.

It also measures what the non-convergence fallback costs a converged, vmapped solve:
``fallback="sequential"`` vs ``fallback="none"`` vs a naive ``lax.cond`` fallback (which vmap
turns into a select that always runs the sequential branch).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
from jax import lax

import pararnn
from pararnn.auto import choose_method
from pararnn.scan import default_algorithm
from pararnn.structure import get_structure
from common import environment, make_cell_problem, markdown_table, time_fn, working_set_bytes, write_json

COLUMNS = [("structure", "structure"), ("D", "D"), ("batch", "batch"), ("T", "T"), ("mode", "mode"),
           ("method", "method"), ("ms", "time (ms)"), ("speedup", "speedup vs seq"),
           ("iterations", "Newton iters"), ("max_err", "max err vs seq"), ("note", "note")]


def _solver(step, h0, structure, method):
    def solve_one(u, p):
        return pararnn.solve(step, h0, u, p, jacobian=structure, method=method, return_info=True)
    return solve_one


def run_config(structure, hidden, batch, length, methods, modes, repeats, dtype):
    step, u, p, h0 = make_cell_problem(structure, length, hidden, batch, dtype)
    weights = jax.random.normal(jax.random.key(7), (batch, length) + h0.shape, dtype)
    rows, reference, t_seq = [], None, {}
    ordered = ["sequential"] + [m for m in methods if m != "sequential"]
    for method in ordered:
        if method == "quasi" and structure == "diagonal":
            continue  # identical to newton for a diagonal Jacobian
        solve_one = _solver(step, h0, structure, method)
        fwd = jax.jit(jax.vmap(solve_one, in_axes=(0, None)))

        def loss(p, u, solve_one=solve_one):
            hs, _ = jax.vmap(solve_one, in_axes=(0, None))(u, p)
            return jnp.sum(weights * hs) / batch

        fwdbwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
        hs, info = fwd(u, p)
        if method == "sequential":
            reference = hs
        resolved = choose_method(get_structure(structure), length, h0.shape) if method == "auto" else method
        for mode in modes:
            fn = (lambda u, p: fwd(u, p)[0]) if mode == "fwd" else (lambda u, p: fwdbwd(p, u))
            timing = time_fn(fn, u, p, repeats=repeats)
            if method == "sequential":
                t_seq[mode] = timing["median_s"]
            rows.append({
                "structure": structure, "D": hidden, "batch": batch, "T": length, "mode": mode,
                "method": method if method != "auto" else f"auto→{resolved}",
                "ms": timing["median_s"] * 1e3, "compile_s": timing["compile_s"],
                "speedup": t_seq[mode] / timing["median_s"],
                "iterations": int(np.max(info.iterations)),
                "max_err": float(jnp.max(jnp.abs(hs.astype(jnp.float32) - reference.astype(jnp.float32)))),
                "converged": bool(np.all(info.converged)), "fell_back": bool(np.any(info.fell_back)),
                "note": "fell back" if bool(np.any(info.fell_back)) else "",
                "scan_algorithm": default_algorithm(structure),
            })
    return rows


def fallback_overhead(repeats, dtype, batch=16, length=4096, hidden=64):
    """Converged vmapped solves with and without the fallback, and with a naive lax.cond one."""
    step, u, p, h0 = make_cell_problem("diagonal", length, hidden, batch, dtype)

    def with_fallback(fallback):
        return jax.jit(jax.vmap(lambda ub: pararnn.solve(step, h0, ub, p, fallback=fallback)))

    def naive_cond_one(ub):
        hs, info = pararnn.solve(step, h0, ub, p, fallback="none", return_info=True)
        sequential = lambda: pararnn.solve(step, h0, ub, p, method="sequential")
        return lax.cond(info.converged, lambda: hs, sequential)  # vmap: a select, both branches run

    variants = {"fallback='none'": with_fallback("none"),
                "fallback='sequential' (run_if)": with_fallback("sequential"),
                "naive lax.cond fallback": jax.jit(jax.vmap(naive_cond_one))}
    rows, base = [], None
    for name, fn in variants.items():
        t = time_fn(fn, u, repeats=repeats, min_seconds=1.0)["median_s"]
        base = base or t
        rows.append({"variant": name, "ms": t * 1e3, "relative": t / base})
    return {"batch": batch, "T": length, "D": hidden, "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[2 ** k for k in range(8, 17)])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--structures", nargs="+", default=["diagonal", "block", "dense"],
                    choices=["diagonal", "block", "dense"])
    ap.add_argument("--methods", nargs="+", default=["newton", "quasi", "sequential", "auto"],
                    choices=["newton", "quasi", "sequential", "auto"])
    ap.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-gb", type=float, default=3.0, help="skip configs whose working set exceeds this")
    ap.add_argument("--budget-minutes", type=float, default=None, help="stop starting new configs after this")
    ap.add_argument("--quick", action="store_true", help="T in {256, 4096}, batch 1/16, D 64")
    ap.add_argument("--only-fallback", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="time breakdown of one solve per structure (benchmarks/solve_profile.py)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/solver_<backend>.json)")
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths, args.hidden = [256, 4096], [64]
    dtype = jnp.dtype(args.dtype)
    env = environment()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"solver_{env['backend']}.json")
    print(f"# pararnn.solve benchmark — {env['date']}, JAX {env['jax']}, {env['backend']} "
          f"({env['device']}), {env['cpu_count']} CPU cores, {args.dtype}\n")
    payload = {"environment": env, "command": " ".join(["python", "benchmarks/solver.py"] + (argv or sys.argv[1:])),
               "results": [], "skipped": [], "partial": False}

    if args.profile:
        from solve_profile import COLUMNS as PROFILE_COLUMNS, PROFILE_GRID, profile

        rows = []
        for cfg in PROFILE_GRID:
            rows.append(profile(*cfg, repeats=args.repeats))
            print(markdown_table(rows[-1:], PROFILE_COLUMNS).splitlines()[-1], flush=True)
        text = markdown_table(rows, PROFILE_COLUMNS)
        print("\n" + text)
        path = os.path.join(os.path.dirname(out), f"solver_profile_{env['backend']}.json")
        write_json(path, {"environment": env, "command": "python benchmarks/solver.py --profile",
                          "rows": rows})
        with open(os.path.splitext(path)[0] + ".md", "w") as f:
            f.write(text + "\n")
        print(f"\nwrote {path}")
        return 0
    fb = fallback_overhead(args.repeats, dtype)
    payload["fallback_overhead"] = fb
    print(f"## Fallback cost on a converged vmapped solve (diagonal, batch {fb['batch']}, "
          f"T {fb['T']}, D {fb['D']})\n")
    print(markdown_table(fb["rows"], [("variant", "variant"), ("ms", "time (ms)"), ("relative", "relative")]))
    print()
    write_json(out, payload)
    if args.only_fallback:
        return 0

    started = time.time()
    for structure in args.structures:
        rows = []
        for hidden in args.hidden:
            for batch in args.batches:
                for length in args.lengths:
                    need = working_set_bytes(structure, length, hidden, batch, dtype.itemsize)
                    if need > args.max_gb * 2 ** 30:
                        payload["skipped"].append({"structure": structure, "D": hidden, "batch": batch,
                                                   "T": length, "working_set_gb": need / 2 ** 30})
                        continue
                    if args.budget_minutes and time.time() - started > 60 * args.budget_minutes:
                        payload["partial"] = True
                        continue
                    new = run_config(structure, hidden, batch, length, args.methods, args.modes,
                                     args.repeats, dtype)
                    rows += new
                    payload["results"] += new
                    write_json(out, payload)
                    print(f"  done {structure} D={hidden} batch={batch} T={length}", file=sys.stderr, flush=True)
        if rows:
            print(f"## {structure}\n")
            print(markdown_table(rows, COLUMNS))
            print()
    if payload["skipped"]:
        print(f"Skipped {len(payload['skipped'])} configurations over --max-gb {args.max_gb} "
              f"(largest needs ~{max(s['working_set_gb'] for s in payload['skipped']):.0f} GB).")
    if payload["partial"]:
        print("Stopped early: --budget-minutes reached; results are partial.")
    write_json(out, payload)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
