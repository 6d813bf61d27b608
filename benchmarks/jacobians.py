"""Hand-written vs autodiff Jacobians in the parallel solve, per cell.

    python benchmarks/jacobians.py [--quick]

For each cell, the forward and forward+backward time of the layer's parallel solve with the
cell's hand-written Jacobian (``jacobian=cell.jacobian``, ``jacobian_diagonal=...``) against
autodiff of the declared structure (``jacobian=cell.structure``): one JVP for diagonal, K
JVPs for block, D JVPs for dense. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp

import pararnn
from pararnn.cells import ElmanCell, GRUCell, LSTMCell, ParaGRUCell, ParaLSTMCell
from common import environment, markdown_table, time_fn, write_json

CELLS = {"ParaGRU": ParaGRUCell, "ParaLSTM": ParaLSTMCell, "GRU": GRUCell, "LSTM": LSTMCell,
         "Elman": ElmanCell}


def run(name, hidden, batch, length, repeats):
    cell = CELLS[name](hidden, hidden)
    params = cell.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (batch, length, hidden))
    u = cell.project(params, x)
    h0 = cell.initial_state()
    method = "newton" if cell.structure != "dense" else "quasi"

    def solver(hand):
        kw = (dict(jacobian=cell.jacobian, jacobian_diagonal=cell.jacobian_diagonal) if hand
              else dict(jacobian=cell.structure))
        fwd = jax.vmap(lambda ub, p: pararnn.solve(cell.step, h0, ub, p, method=method, **kw), (0, None))
        return fwd

    row = {"cell": name, "hidden": hidden, "batch": batch, "T": length, "method": method}
    for hand in (True, False):
        fwd = solver(hand)
        loss = jax.grad(lambda p, u: jnp.mean(fwd(u, p) ** 2))
        tag = "hand" if hand else "autodiff"
        row[f"{tag}_fwd_ms"] = time_fn(jax.jit(fwd), u, params, repeats=repeats)["median_s"] * 1e3
        row[f"{tag}_fwdbwd_ms"] = time_fn(jax.jit(loss), params, u, repeats=repeats)["median_s"] * 1e3
    row["fwd_gain"] = row["autodiff_fwd_ms"] / row["hand_fwd_ms"]
    row["fwdbwd_gain"] = row["autodiff_fwdbwd_ms"] / row["hand_fwdbwd_ms"]
    print(f"{name:<9} hidden {hidden:<5} fwd gain {row['fwd_gain']:.2f}  fwd+bwd gain {row['fwdbwd_gain']:.2f}",
          flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.quick:
        args.hidden, args.length = [64], 512
    env = environment()
    rows = [run(name, h, args.batch, args.length, args.repeats) for name in args.cells for h in args.hidden]
    print(f"# hand-written vs autodiff Jacobians — {env['date']}, JAX {env['jax']}, {env['backend']} "
          f"({env['device']}), batch {args.batch}, T {args.length}, float32\n")
    print(markdown_table(rows, [("cell", "cell"), ("hidden", "hidden"), ("method", "method"),
                                ("hand_fwd_ms", "hand fwd (ms)"), ("autodiff_fwd_ms", "autodiff fwd (ms)"),
                                ("fwd_gain", "fwd gain"), ("hand_fwdbwd_ms", "hand fwd+bwd (ms)"),
                                ("autodiff_fwdbwd_ms", "autodiff fwd+bwd (ms)"), ("fwdbwd_gain", "fwd+bwd gain")]))
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"jacobians_{env['backend']}.json")
    write_json(out, {"environment": env, "command": "python benchmarks/jacobians.py " + " ".join(argv or sys.argv[1:]),
                     "results": rows})
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
