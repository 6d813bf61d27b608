"""Does the recurrent-weight soft clamp (``max_recurrent_norm``) matter in training?

Trains the tiny byte-level language model (configs/tiny.yaml) with ParaGRU and ParaLSTM
cells, with the clamp (|a| < 0.5, pararnn's default) and without it (ParaRNN's reference
code has none), at two learning rates, and reports the final training / eval loss, the
largest Newton iteration count seen in any step, and how large the effective recurrent
weights grew (``max |a_eff|`` and the share of entries beyond 0.5).

    python benchmarks/recurrent_clamp.py                      # 300 steps, lr 3e-3 and 1e-2
    python benchmarks/recurrent_clamp.py --steps 50 --lrs 3e-3 --cells paragru   # quick

Writes benchmarks/results/recurrent_clamp.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax
import numpy as np
from flax import nnx

from common import environment, markdown_table, write_json
from pararnn.train.config import load_config
from pararnn.train.restore import load_trained
from pararnn.train.trainer import train

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def effective_recurrence(model, bound) -> np.ndarray:
    """All diagonal recurrent weights (a, and ParaLSTM's peepholes p) as the cells use them."""
    values = []
    for path, leaf in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name = str(path[-1])
        if "cell" in [str(p) for p in path] and name in ("a", "p"):
            w = np.asarray(leaf[...], np.float64)
            values.append((w if bound is None else bound * np.tanh(w / bound)).ravel())
    return np.concatenate(values)


def run(cell: str, clamp: float | None, lr: float, steps: int, seed: int) -> dict:
    workdir = tempfile.mkdtemp(prefix="clamp_")
    overrides = [f"model.cell={cell}", f"model.max_recurrent_norm={'null' if clamp is None else clamp}",
                 f"optim.lr={lr}", f"train.steps={steps}", f"train.seed={seed}", "train.log_every=1",
                 "train.progress=false", f"train.eval_every={steps}", f"train.checkpoint_every={steps}"]
    cfg = load_config("tiny", overrides)
    start = time.perf_counter()
    with jax.numpy_dtype_promotion("standard"):
        train(cfg, workdir)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    _, model, _ = load_trained(workdir)
    a = np.abs(effective_recurrence(model, clamp))
    last = [r["loss"] for r in records if r["step"] > steps - 20]
    return {"cell": cell, "max_recurrent_norm": clamp, "lr": lr, "seed": seed, "steps": steps,
            "final_loss": float(np.mean(last)), "eval_loss": records[-1].get("eval_loss"),
            "max_newton_iterations": int(max(r["newton_iterations"] for r in records)),
            "max_abs_a": float(a.max()), "share_abs_a_over_0.5": float(np.mean(a > 0.5)),
            "seconds": seconds}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", nargs="+", default=["paragru", "paralstm"])
    p.add_argument("--lrs", nargs="+", type=float, default=[3e-3, 1e-2])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    rows = []
    for cell in args.cells:
        for lr in args.lrs:
            for clamp in (0.5, None):  # interleaved: both settings of a pair run back to back
                rows.append(run(cell, clamp, lr, args.steps, args.seed))
                r = rows[-1]
                print(f"{cell} lr={lr} clamp={clamp}: loss {r['final_loss']:.3f} eval {r['eval_loss']:.3f} "
                      f"newton ≤ {r['max_newton_iterations']} max|a| {r['max_abs_a']:.3f} "
                      f"({r['seconds']:.0f} s)", flush=True)
    write_json(os.path.join(args.out, "recurrent_clamp.json"), {"args": vars(args), "runs": rows,
                                                                 "environment": environment()})
    shown = [dict(r, max_recurrent_norm="none" if r["max_recurrent_norm"] is None else r["max_recurrent_norm"])
             for r in rows]
    table = markdown_table(shown, [("cell", "cell"), ("lr", "lr"), ("max_recurrent_norm", "max_recurrent_norm"),
                                   ("final_loss", "train loss (last 20)"), ("eval_loss", "eval loss"),
                                   ("max_newton_iterations", "max Newton iterations"),
                                   ("max_abs_a", "max abs(a_eff)"), ("share_abs_a_over_0.5", "share abs(a_eff) > 0.5")])
    with open(os.path.join(args.out, "recurrent_clamp.md"), "w") as f:
        f.write(f"Tiny LM, {args.steps} steps, seed {args.seed}; {time.strftime('%Y-%m-%d')}, "
                f"JAX {jax.__version__}, {jax.default_backend()}\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
