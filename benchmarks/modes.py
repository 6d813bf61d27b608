"""Which forward and which backward is fastest for a layer? The crossovers behind
``mode="auto"`` / ``backward="auto"`` (:func:`pararnn.auto.choose_layer_paths`).

    python benchmarks/modes.py                                   # the default grid
    python benchmarks/modes.py --layers ParaGRU --hidden 64 --batches 1 --lengths 256 --quick

For each layer, hidden size, batch and length it times, side by side and interleaved (so a
busy machine slows every variant alike), the forward alone for each forward path and
forward + backward (``jax.grad`` of a mean-square loss w.r.t. parameters and inputs) for
each (forward, backward) pair:

- forward: ``sequential`` (``lax.scan``) or ``parallel`` (Newton; quasi for dense cells);
- backward: ``autodiff`` (backpropagation through the scan; sequential forward only),
  ``parallel`` (the adjoint by the parallel scan over exact Jacobians) or ``sequential``
  (the adjoint by a reverse scan of state-VJPs).

It also reports what ``mode="auto"`` picks and its time relative to the best fixed choice.
Configurations whose rough working set exceeds ``--max-gb`` are skipped (listed as such).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import jax.numpy as jnp
from flax import nnx

import pararnn.nn as pnn
from common import environment, markdown_table, time_interleaved, write_json

LAYERS = {"ParaGRU": pnn.ParaGRU, "ParaLSTM": pnn.ParaLSTM, "GRU": pnn.GRU, "LSTM": pnn.LSTM,
          "Elman": pnn.Elman}
DENSE = ("GRU", "LSTM", "Elman")
FWD_PATHS = ("sequential", "parallel")
TRAIN_PATHS = (("sequential", "autodiff"), ("sequential", "parallel"), ("sequential", "sequential"),
               ("parallel", "parallel"), ("parallel", "sequential"))


def working_set_gb(name: str, hidden: int, batch: int, length: int, fwd: str, bwd: str) -> float:
    """Rough peak: a dozen state-sized arrays, plus T dense Jacobians (and the tree scan's
    copies of them) when a dense cell's backward is the parallel adjoint."""
    state = batch * length * hidden * (2 if name == "LSTM" else 1) * 4
    total = 16 * state
    if name in DENSE and bwd == "parallel":
        total += 3 * state * hidden * (2 if name == "LSTM" else 1)
    return total / 2 ** 30


def measure(fns: dict, args, repeats: int) -> dict:
    """Median seconds per call of each fn on the same ``args``, jitted, timed interleaved
    (common.time_interleaved)."""
    return time_interleaved({k: jax.jit(f) for k, f in fns.items()}, {k: args for k in fns}, repeats)


def run_config(name, hidden, batch, length, repeats, max_gb):
    layer = LAYERS[name](hidden, hidden, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (batch, length, hidden), jnp.float32)
    graph, state, rest = nnx.split(layer, nnx.Param, ...)

    def forward(state, x, mode, backward):
        layer = nnx.merge(graph, state, rest)
        layer.solver = dataclasses.replace(layer.solver, backward=backward)
        return layer(x, mode=mode)

    def train(mode, backward):
        return jax.grad(lambda s, x: jnp.mean(forward(s, x, mode, backward) ** 2), argnums=(0, 1))

    auto_fwd, auto_bwd = layer.paths(batch, length)
    auto_pair = ("sequential" if auto_fwd == "sequential" else "parallel", auto_bwd)
    rows = []
    fwd_fns = {p: (lambda s, x, p=p: forward(s, x, p, "auto")) for p in FWD_PATHS}
    skipped = [p for p in TRAIN_PATHS if working_set_gb(name, hidden, batch, length, *p) > max_gb]
    train_fns = {p: train(*p) for p in TRAIN_PATHS if p not in skipped}
    t_fwd = measure(fwd_fns, (state, x), repeats)
    t_train = measure(train_fns, (state, x), repeats)
    base = dict(layer=name, hidden=hidden, batch=batch, T=length)
    best_fwd = min(t_fwd.values())
    rows.append({**base, "pass": "forward", **{f"{p}_ms": t_fwd[p] * 1e3 for p in FWD_PATHS},
                 "best": min(t_fwd, key=t_fwd.get), "auto": auto_pair[0],
                 "auto_vs_best": t_fwd[auto_pair[0]] / best_fwd})
    best = min(t_train.values())
    auto_t = t_train.get(auto_pair)
    rows.append({**base, "pass": "fwd+bwd",
                 **{f"{f}+{b}_ms": (t_train[(f, b)] * 1e3 if (f, b) in t_train else None)
                    for f, b in TRAIN_PATHS},
                 "best": "+".join(min(t_train, key=t_train.get)), "auto": "+".join(auto_pair),
                 "auto_vs_best": None if auto_t is None else auto_t / best,
                 "skipped": ["+".join(p) for p in skipped]})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", nargs="+", default=list(LAYERS), choices=list(LAYERS))
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 2048])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-gb", type=float, default=4.0)
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    ap.add_argument("--out", default="benchmarks/results/modes_cpu.json")
    args = ap.parse_args(argv)
    repeats = 2 if args.quick else args.repeats
    rows = []
    fwd_cols = [(f"{p}_ms", f"{p} (ms)") for p in FWD_PATHS]
    train_cols = [(f"{f}+{b}_ms", f"{f}+{b} (ms)") for f, b in TRAIN_PATHS]
    lead = [("layer", "layer"), ("hidden", "hidden"), ("batch", "batch"), ("T", "T")]
    tail = [("best", "best"), ("auto", "auto picks"), ("auto_vs_best", "auto / best")]
    for name, hidden, batch, length in itertools.product(args.layers, args.hidden, args.batches,
                                                         args.lengths):
        new = run_config(name, hidden, batch, length, repeats, args.max_gb)
        rows += new
        print(markdown_table(new[:1], lead + fwd_cols + tail).splitlines()[-1])
        print(markdown_table(new[1:], lead + train_cols + tail).splitlines()[-1], flush=True)
    fwd_rows = [r for r in rows if r["pass"] == "forward"]
    train_rows = [r for r in rows if r["pass"] == "fwd+bwd"]
    text = ("### forward\n\n" + markdown_table(fwd_rows, lead + fwd_cols + tail)
            + "\n\n### forward + backward\n\n" + markdown_table(train_rows, lead + train_cols + tail))
    print("\n" + text)
    write_json(args.out, {"environment": environment(), "command": " ".join(sys.argv), "rows": rows})
    with open(os.path.splitext(args.out)[0] + ".md", "w") as f:
        f.write(text + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
