"""Mamba2's SSD recurrence three ways: chunked matrix form vs pararnn.linear_recurrence vs lax.scan.

    python benchmarks/ssd_algorithms.py            # the default grid
    python benchmarks/ssd_algorithms.py --quick

For each shape (batch, T, heads H, head_dim P, state N) and each algorithm of
:mod:`pararnn.models.ssd` — ``sequential`` (``lax.scan``), ``scan`` (every state entry through
``pararnn.linear_recurrence``) and ``chunked`` (the SSD matrix form, chunk lengths Q) — the
forward and the forward + backward (``jax.grad`` of a weighted sum of the outputs) are
compiled, then timed in interleaved rounds (every variant once per round; medians), with
the compiled peak memory (arguments + outputs + temporaries, XLA's ``memory_analysis``).
Variants whose estimated working set exceeds ``--max-gib`` are skipped. Prints a markdown
table (speedups over the sequential scan, > 1 = faster) and writes JSON + markdown.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

from common import environment, markdown_table, write_json
from pararnn.models.ssd import ssd_chunked, ssd_scan, ssd_sequential


def problem(batch, length, heads, p, n, seed=0):
    ks = jax.random.split(jax.random.key(seed), 5)
    x = jax.random.normal(ks[0], (batch, length, heads, p))
    dt = jax.nn.softplus(jax.random.normal(ks[1], (batch, length, heads)) - 3.0)
    a = -jax.random.uniform(ks[2], (heads,), minval=1.0, maxval=16.0)
    b = jax.random.normal(ks[3], (batch, length, n))
    c = jax.random.normal(ks[4], (batch, length, n))
    return x, dt, a, b, c


def variants(chunks):
    out = {"sequential": ssd_sequential, "scan": ssd_scan}
    for q in chunks:
        out[f"chunked Q={q}"] = lambda *args, q=q: ssd_chunked(*args, chunk=q)
    return out


def compiled(fn, args, backward: bool):
    if backward:
        w = jax.random.normal(jax.random.key(9), args[0].shape)
        f = jax.jit(jax.grad(lambda x, dt, a, b, c: jnp.sum(fn(x, dt, a, b, c)[0] * w), argnums=(0, 1, 2, 3, 4)))
    else:
        f = jax.jit(lambda *a: fn(*a)[0])
    c = f.lower(*args).compile()
    m = c.memory_analysis()
    peak = None if m is None else m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
    return c, peak


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", default=["8:256:4:16:16", "8:1024:4:16:16", "4:1024:8:32:64",
                                                     "1:2048:24:64:128"], help="batch:T:H:P:N")
    ap.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-gib", type=float, default=3.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.chunks, args.rounds = ["8:256:4:16:16"], [32, 64], 3
    env = environment()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"ssd_{env['backend']}")
    rows = []
    for shape in args.shapes:
        batch, length, heads, p, n = map(int, shape.split(":"))
        data = problem(batch, length, heads, p, n)
        for backward in (False, True):
            fns, peaks = {}, {}
            for name, fn in variants(args.chunks).items():
                states = batch * length * heads * p * n * 4
                if name == "scan" and (3 if backward else 2) * states > args.max_gib * 2 ** 30:
                    print(f"  skip {name} {shape} (states alone {states / 2 ** 30:.1f} GiB)", file=sys.stderr)
                    continue
                fns[name], peaks[name] = compiled(fn, data, backward)
            times = {k: [] for k in fns}
            for _ in range(args.rounds):
                for name, f in fns.items():
                    start = time.perf_counter()
                    jax.block_until_ready(f(*data))
                    times[name].append(time.perf_counter() - start)
            seq = statistics.median(times["sequential"])
            for name in fns:
                med = statistics.median(times[name])
                rows.append({"shape": shape, "pass": "fwd+bwd" if backward else "fwd", "algorithm": name,
                             "ms": med * 1e3, "speedup": seq / med,
                             "peak_mib": None if peaks[name] is None else peaks[name] / 2 ** 20})
            print(f"  done {shape} {'fwd+bwd' if backward else 'fwd'}", file=sys.stderr, flush=True)
    header = (f"# SSD algorithms — {env['date']}, JAX {env['jax']}, {env['backend']} ({env['device']}), "
              f"{env['cpu_count']} CPU cores, float32, median of {args.rounds} interleaved rounds\n\n"
              f"`python benchmarks/ssd_algorithms.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    table = markdown_table(rows, [("shape", "batch:T:H:P:N"), ("pass", "pass"), ("algorithm", "algorithm"),
                                  ("ms", "median (ms)"), ("speedup", "vs sequential"),
                                  ("peak_mib", "compiled peak (MiB)")])
    print(header + "\n\n" + table)
    write_json(out + ".json", {"environment": env, "argv": sys.argv, "rows": rows})
    with open(out + ".md", "w") as f:
        f.write(header + "\n\n" + table + "\n")
    print(f"\nwrote {out}.json and {out}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
