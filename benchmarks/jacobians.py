"""Hand-written vs autodiff Jacobians in the parallel solve, per cell; and how fast the
autodiff routes build dense Jacobians.

    python benchmarks/jacobians.py [--quick]        # hand-written vs autodiff, whole solves
    python benchmarks/jacobians.py --build           # dense: "dense" vs vmap(jacfwd) vs hand

Default: for each cell, the forward and forward+backward time of the layer's parallel solve
with the cell's hand-written Jacobian (``jacobian=cell.jacobian``, ``jacobian_diagonal=...``)
against autodiff of the declared structure (``jacobian=cell.structure``): one JVP for
diagonal, K JVPs for block, D JVPs for dense.

``--build``: for the dense cells (GRU, LSTM, Elman) at hidden 4, 32, 128, the time to build
the step outputs and Jacobians of T steps by ``jacobian="dense"`` (pararnn's autodiff route:
forward mode on one step, vmapped over time), by ``jax.vmap(jax.jacfwd(step))`` plus a
vmapped step, by the route pararnn used before (linearise the whole vmapped sequence, push D
sequence-long tangents, transpose), and by the hand-written Jacobian; then whole solves
(newton and quasi) with ``jacobian="dense"`` against ``jacobian=<jacfwd callable>``. Timings
are interleaved, so a busy machine slows every variant alike. Prints tables, writes JSON.
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
from pararnn.jacobians import JacobianSpec, linearize
from pararnn.structure import DENSE
from common import environment, markdown_table, time_fn, time_interleaved, write_json

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


def interleaved(fns: dict, args, repeats: int) -> dict:
    """Median ms of each jitted fn on the same ``args`` (common.time_interleaved)."""
    return {k: v * 1e3 for k, v in time_interleaved(fns, {k: args for k in fns}, repeats).items()}


def whole_sequence_linearize(step, hprev, u, p):
    """The route pararnn used before: linearise the vmapped step over the whole sequence, push
    D tangents of shape (T, D) through it, transpose (D, T, D) → (T, D, D)."""
    f_all = jax.vmap(step, in_axes=(0, 0, None))
    fh, lin = jax.linearize(lambda h: f_all(h, u, p), hprev)
    d = hprev.shape[1]
    tangents = jnp.broadcast_to(jnp.eye(d, dtype=hprev.dtype)[:, None, :], (d,) + hprev.shape)
    return fh, jnp.transpose(jax.vmap(lin)(tangents), (1, 2, 0))


def build(name, hidden, length, repeats):
    cell = CELLS[name](hidden, hidden)
    params = cell.init(jax.random.key(0))
    u = cell.project(params, jax.random.normal(jax.random.key(1), (length, hidden)))
    hprev = 0.1 * jax.random.normal(jax.random.key(2), (length,) + cell.state_shape)
    jacfwd = jax.vmap(jax.jacfwd(cell.step), in_axes=(0, 0, None))
    step_all = jax.vmap(cell.step, in_axes=(0, 0, None))
    fns = {
        "dense": jax.jit(lambda h, u, p: linearize(cell.step, JacobianSpec(DENSE), h, u, p)),
        "jacfwd": jax.jit(lambda h, u, p: (step_all(h, u, p), jacfwd(h, u, p))),
        "before": jax.jit(lambda h, u, p: whole_sequence_linearize(cell.step, h, u, p)),
        "hand": jax.jit(lambda h, u, p: linearize(cell.step, JacobianSpec(DENSE, cell.jacobian), h, u, p)),
    }
    ref = fns["jacfwd"](hprev, u, params)[1]
    for k, f in fns.items():  # all routes compute the same Jacobians
        err = float(jnp.max(jnp.abs(f(hprev, u, params)[1] - ref)))
        assert err <= 1e-4 * max(1.0, float(jnp.max(jnp.abs(ref)))), (k, err)
    t = interleaved(fns, (hprev, u, params), repeats)
    row = {"cell": name, "hidden": hidden, "T": length, **{f"{k}_build_ms": v for k, v in t.items()}}
    h0 = cell.initial_state()
    jac_callable = lambda h, x, p: jax.jacfwd(cell.step)(h, x, p)
    for method in ("newton", "quasi"):
        solves = {k: jax.jit(lambda u, p, j=j: pararnn.solve(cell.step, h0, u, p, jacobian=j,
                                                              method=method, fallback="none"))
                  for k, j in (("dense", "dense"), ("jacfwd", jac_callable))}
        ts = interleaved(solves, (u, params), repeats)
        row[f"{method}_dense_ms"], row[f"{method}_jacfwd_ms"] = ts["dense"], ts["jacfwd"]
        row[f"{method}_dense_vs_jacfwd"] = ts["dense"] / ts["jacfwd"]
    row["build_dense_vs_jacfwd"] = t["dense"] / t["jacfwd"]
    row["build_before_vs_dense"] = t["before"] / t["dense"]
    print(f"{name:<6} D {hidden:<4} build dense/jacfwd {row['build_dense_vs_jacfwd']:.2f} "
          f"before/dense {row['build_before_vs_dense']:.2f}  newton solve dense/jacfwd "
          f"{row['newton_dense_vs_jacfwd']:.2f}  quasi {row['quasi_dense_vs_jacfwd']:.2f}", flush=True)
    return row


BUILD_COLUMNS = [("cell", "cell"), ("hidden", "D"), ("dense_build_ms", "dense (ms)"),
                 ("jacfwd_build_ms", "vmap(jacfwd) (ms)"), ("hand_build_ms", "hand (ms)"),
                 ("before_build_ms", "before (ms)"), ("build_dense_vs_jacfwd", "dense / jacfwd"),
                 ("build_before_vs_dense", "before / dense"),
                 ("newton_dense_vs_jacfwd", "newton solve: dense / jacfwd"),
                 ("quasi_dense_vs_jacfwd", "quasi solve: dense / jacfwd")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--build", action="store_true", help="dense Jacobian routes (see above)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    env = environment()
    if args.build:
        hidden = [4, 32] if args.quick else [4, 32, 128]
        cells = [c for c in args.cells if c in ("GRU", "LSTM", "Elman")] or ["GRU", "LSTM", "Elman"]
        length = 256 if args.quick else 1024
        rows = [build(name, h, length, args.repeats) for name in cells for h in hidden]
        print(f"\n# dense Jacobian routes — {env['date']}, JAX {env['jax']}, {env['backend']}, "
              f"T {length}, float32\n")
        text = markdown_table(rows, BUILD_COLUMNS)
        print(text)
        out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                       f"jacobian_build_{env['backend']}.json")
        write_json(out, {"environment": env, "command": "python benchmarks/jacobians.py "
                         + " ".join(argv or sys.argv[1:]), "results": rows})
        with open(os.path.splitext(out)[0] + ".md", "w") as f:
            f.write(text + "\n")
        print(f"\nwrote {out}")
        return 0
    if args.quick:
        args.hidden, args.length = [64], 512
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
