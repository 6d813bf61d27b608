"""Speed of Align-zero's temporal credit on an Elman RNN: the parallel adjoint (pararnn.solve
forward by Newton, its custom VJP = a parallel reverse scan) against BPTT (plain
``lax.scan`` + autodiff), side by side in one run.

    python benchmarks/align_speed.py [--quick]

Both compute the same update (tests/test_align_rnn.py); the table gives the median time of
one jitted ``pseudo_grads("align_zero", ...)`` call (current forward + frozen forward +
frozen adjoint) and of backprop, and the ratio parallel / BPTT (> 1: BPTT is faster).
On a 2-core CPU a parallel scan does ~3× the work of a sequential one with no parallel
hardware to spend it on, and a dense Newton step combines D×D matrices (O(T·D³)):
expect ratios > 1 here; the parallel form is meant for accelerators.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, markdown_table, time_fn, write_json  # noqa: E402

import pararnn  # noqa: E402
import pararnn.align as al  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "align")

CASES = [  # (recurrence, hidden D, length T)
    ("dense", 16, 100), ("dense", 16, 1000), ("dense", 64, 100),
    ("diagonal", 64, 100), ("diagonal", 64, 1000), ("diagonal", 256, 4096),
]
QUICK = [("dense", 16, 100), ("diagonal", 64, 1000)]


def newton_iterations(stack, params, x) -> int:
    """Newton iterations of the frozen forward solve (max over the batch)."""
    layer, p = stack.layers[0], params[0]
    u = layer.cell.project(p, x)
    z0 = jnp.zeros((layer.cell.hidden_features,), u.dtype)
    _, info = jax.vmap(lambda u1: pararnn.solve(layer.cell.step, z0, u1, {"w_h": p["w_h"]},
                                                jacobian=layer.cell.jacobian,
                                                return_info=True))(u)
    return int(info.iterations.max()), bool(info.fell_back.any())


def run_case(recurrence, d, t, batch):
    x, y = al.add_task(batch, t, seed=0)
    x, y = jnp.asarray(x), jnp.asarray(y)
    row = {"recurrence": recurrence, "D": d, "T": t, "batch": batch}
    grads = {}
    for mode in ("parallel", "sequential"):
        stack = al.rnn(1, d, 1, recurrence=recurrence, mode=mode,
                       gain=1.0 if recurrence == "dense" else 0.9)
        p0 = stack.init(jax.random.key(0))
        p = jax.tree_util.tree_map(lambda a: a * 1.01, p0)
        for rule in ("align_zero", "backprop"):
            fn = jax.jit(lambda q, q0, r=rule, s=stack: al.pseudo_grads(r, s, q, q0, (x, y),
                                                                        al.mse_loss))
            res = time_fn(fn, p, p0, repeats=3)
            row[f"{rule}_{mode}_s"] = res["median_s"]
            grads[(rule, mode)] = fn(p, p0)
        if mode == "parallel":
            row["newton_iters"], row["fell_back"] = newton_iterations(stack, p0, x)
    row["align_zero_ratio"] = row["align_zero_parallel_s"] / row["align_zero_sequential_s"]
    row["backprop_ratio"] = row["backprop_parallel_s"] / row["backprop_sequential_s"]
    a = jax.tree_util.tree_leaves(grads[("align_zero", "parallel")])
    b = jax.tree_util.tree_leaves(grads[("align_zero", "sequential")])
    row["max_rel_diff"] = max(float(jnp.max(jnp.abs(u - v)) / (jnp.max(jnp.abs(v)) + 1e-30))
                              for u, v in zip(a, b))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two small cases")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    rows = []
    for case in (QUICK if args.quick else CASES):
        rows.append(run_case(*case, args.batch))
        r = rows[-1]
        print(f"{r['recurrence']:8s} D={r['D']:4d} T={r['T']:5d}: align_zero parallel/BPTT "
              f"{r['align_zero_ratio']:.2f}x, backprop {r['backprop_ratio']:.2f}x, newton "
              f"{r['newton_iters']}, rel diff {r['max_rel_diff']:.1e}", flush=True)
    cols = [("recurrence", "recurrence"), ("D", "D"), ("T", "T"), ("batch", "batch"),
            ("align_zero_parallel_s", "align_zero parallel s"),
            ("align_zero_sequential_s", "align_zero BPTT s"), ("align_zero_ratio", "ratio"),
            ("backprop_parallel_s", "backprop parallel s"),
            ("backprop_sequential_s", "backprop BPTT s"), ("backprop_ratio", "ratio "),
            ("newton_iters", "Newton iters"), ("fell_back", "fell back"),
            ("max_rel_diff", "max rel diff")]
    table = markdown_table(rows, cols)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    name = "speed_quick" if args.quick else "speed"
    write_json(os.path.join(args.out, name + ".json"),
               {"environment": environment(), "rows": rows,
                "command": "python benchmarks/align_speed.py" + (" --quick" if args.quick else "")})
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(f"# Align-zero temporal credit: parallel adjoint vs BPTT (CPU)\n\n{table}\n")


if __name__ == "__main__":
    main()
