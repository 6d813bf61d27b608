"""Benchmark pararnn.linear_recurrence: tree vs chunked vs sequential, per structure.

    python benchmarks/scan.py            # the default grid
    python benchmarks/scan.py --quick

Prints a markdown table (median ms and the ratio to the sequential scan, > 1 = faster)
and writes JSON. The winner among the parallel algorithms is what
``pararnn.scan.default_algorithm`` picks for the backend.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

from pararnn import linear_recurrence
from common import environment, markdown_table, time_fn, write_json


def problem(structure, batch, length, hidden, dtype):
    ka, kb = jax.random.split(jax.random.key(0))
    if structure == "diagonal":
        a = jax.random.uniform(ka, (batch, length, hidden), dtype, 0.5, 0.99)
        h0 = jnp.zeros((hidden,), dtype)
    elif structure == "block":
        a = 0.45 * jax.random.uniform(ka, (batch, length, hidden // 2, 2, 2), dtype)
        h0 = jnp.zeros((2, hidden // 2), dtype)
    else:
        a = 0.5 * jax.random.normal(ka, (batch, length, hidden, hidden), dtype) / hidden ** 0.5
        h0 = jnp.zeros((hidden,), dtype)
    b = jax.random.normal(kb, (batch, length) + h0.shape, dtype)
    return a, b, h0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 16384, 65536])
    ap.add_argument("--configs", nargs="+", default=["diagonal:16:256", "diagonal:1:64", "block:16:256",
                                                     "dense:4:32"],
                    help="structure:batch:D")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.lengths = [1024, 16384]
    env = environment()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"scan_{env['backend']}.json")
    rows = []
    for cfg in args.configs:
        structure, batch, hidden = cfg.split(":")
        batch, hidden = int(batch), int(hidden)
        for length in args.lengths:
            a, b, h0 = problem(structure, batch, length, hidden, jnp.float32)
            t = {}
            for algorithm in ["sequential", "tree", "chunked"]:
                fn = jax.jit(jax.vmap(lambda a, b, alg=algorithm: linear_recurrence(
                    a, b, h0, structure=structure, algorithm=alg)))
                t[algorithm] = time_fn(fn, a, b, repeats=args.repeats)["median_s"]
            rows.append({"structure": structure, "batch": batch, "D": hidden, "T": length,
                         **{f"{k}_ms": v * 1e3 for k, v in t.items()},
                         "tree_vs_seq": t["sequential"] / t["tree"],
                         "chunked_vs_seq": t["sequential"] / t["chunked"]})
            print(f"  done {cfg} T={length}", file=sys.stderr, flush=True)
    print(f"# linear_recurrence — {env['date']}, JAX {env['jax']}, {env['backend']} ({env['device']}), "
          f"{env['cpu_count']} CPU cores, float32\n")
    print(markdown_table(rows, [("structure", "structure"), ("batch", "batch"), ("D", "D"), ("T", "T"),
                                ("sequential_ms", "sequential (ms)"), ("tree_ms", "tree (ms)"),
                                ("chunked_ms", "chunked (ms)"), ("tree_vs_seq", "tree speedup"),
                                ("chunked_vs_seq", "chunked speedup")]))
    write_json(out, {"environment": env, "command": "python benchmarks/scan.py " + " ".join(argv or sys.argv[1:]),
                     "results": rows})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
