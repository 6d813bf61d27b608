"""HyperGRU / HyperLSTM: how to solve the hyper + main recurrences in parallel.

    python benchmarks/hyper_solve.py            # T = 512 (~10 minutes on a loaded 2-core CPU, mostly compiling)
    python benchmarks/hyper_solve.py --lengths 256 1024 --hidden 64 --batch 4

Per layer and variant — ``decoupled`` (hyper solve, then main solve, both diagonal/block
Newton), ``coupled`` with quasi-Newton (joint state, the two cells' own diagonals) and
``coupled`` with dense Newton — the Newton iterations at init, the forward+backward and
forward-only times of the parallel mode and of the same layer's sequential mode
(``lax.scan``) measured side by side, and max |parallel − sequential|. The plain ParaGRU/ParaLSTM of the same width is the
baseline. Writes benchmarks/results/hyper/solve_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn
from pararnn.hyper import HyperGRU, HyperLSTM
from common import environment, markdown_table, time_fn, write_json

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "hyper")
VARIANTS = {  # name: (layer class, constructor options)
    "ParaGRU (baseline)": (pnn.ParaGRU, {}),
    "HyperGRU decoupled": (HyperGRU, {"coupling": "decoupled"}),
    "HyperGRU coupled quasi": (HyperGRU, {"coupling": "coupled", "method": "quasi"}),
    "HyperGRU coupled newton": (HyperGRU, {"coupling": "coupled", "method": "newton"}),
    "ParaLSTM (baseline)": (pnn.ParaLSTM, {}),
    "HyperLSTM decoupled": (HyperLSTM, {"coupling": "decoupled"}),
    "HyperLSTM coupled quasi": (HyperLSTM, {"coupling": "coupled", "method": "quasi"}),
    "HyperLSTM coupled newton": (HyperLSTM, {"coupling": "coupled", "method": "newton"}),
}
COLUMNS = [("variant", "variant"), ("T", "T"), ("state", "state size"), ("iterations", "Newton iters"),
           ("parallel_ms", "parallel fwd+bwd (ms)"), ("sequential_ms", "sequential fwd+bwd (ms)"),
           ("speedup", "speedup fwd+bwd"), ("fwd_parallel_ms", "parallel fwd (ms)"),
           ("fwd_sequential_ms", "sequential fwd (ms)"), ("fwd_speedup", "speedup fwd"),
           ("max_err", "max abs(par − seq)")]


def run(variant: str, hidden: int, hyper: int, batch: int, length: int, repeats: int) -> dict:
    cls, opts = VARIANTS[variant]
    if cls in (HyperGRU, HyperLSTM):
        opts = {"hyper_features": hyper, **opts}
    layer = cls(hidden, hidden, rngs=nnx.Rngs(0), **opts)
    # a twin that records solver statistics (sowing changes the module's state on every
    # call, which would retrace a jitted function: keep it out of the timed one)
    probe = cls(hidden, hidden, sow_info=True, rngs=nnx.Rngs(0), **opts)
    x = jax.random.normal(jax.random.key(1), (batch, length, hidden), jnp.float32)

    @nnx.jit(static_argnums=2)
    def fwd_bwd(layer, x, mode):
        def loss(layer, x):
            return jnp.sum(jnp.sin(layer(x, mode=mode)))
        return nnx.grad(loss, argnums=(0, 1))(layer, x)

    @nnx.jit(static_argnums=2)
    def forward(layer, x, mode):
        return layer(x, mode=mode)

    @nnx.jit
    def forward_info(layer, x):
        y, inter = nnx.capture(layer, nnx.Intermediate)(x)
        return y, layer(x, mode="sequential"), inter["solver_info"][0]["iterations"]

    y_par, y_seq, iters = forward_info(probe, x)
    par = time_fn(fwd_bwd, layer, x, "parallel", repeats=repeats)
    seq = time_fn(fwd_bwd, layer, x, "sequential", repeats=repeats)
    fpar = time_fn(forward, layer, x, "parallel", repeats=repeats)
    fseq = time_fn(forward, layer, x, "sequential", repeats=repeats)
    row = {"variant": variant, "T": length, "batch": batch, "hidden": hidden, "hyper": hyper,
           "state": int(np.prod(layer.state_shape)), "iterations": int(iters),
           "parallel_ms": 1e3 * par["median_s"], "sequential_ms": 1e3 * seq["median_s"],
           "speedup": seq["median_s"] / par["median_s"],
           "fwd_parallel_ms": 1e3 * fpar["median_s"], "fwd_sequential_ms": 1e3 * fseq["median_s"],
           "fwd_speedup": fseq["median_s"] / fpar["median_s"],
           "max_err": float(jnp.max(jnp.abs(y_par - y_seq))),
           "parallel_compile_s": par["compile_s"], "sequential_compile_s": seq["compile_s"]}
    print(" | ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
          flush=True)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512])
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--hyper", type=int, default=16)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    rows = [run(v, args.hidden, args.hyper, args.batch, t, args.repeats)
            for t in args.lengths for v in args.variants]
    env = environment()
    write_json(os.path.join(args.out, "solve_cpu.json"), {"environment": env, "args": vars(args), "rows": rows})
    table = markdown_table(rows, COLUMNS)
    with open(os.path.join(args.out, "solve_cpu.md"), "w") as f:
        f.write(f"HyperGRU/HyperLSTM solve variants, float32, batch {args.batch}, hidden {args.hidden}, "
                f"hyper {args.hyper}; {env['date']}, JAX {env['jax']}, {env['backend']} "
                f"({env['cpu_count']} cores).\n\n{table}\n")
    print(table)


if __name__ == "__main__":
    main()
