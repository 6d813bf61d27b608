"""Synthetic tasks where nonlinear recurrences beat linear ones: held-out accuracy of the
same language model with a nonlinear cell (ParaGRU, ParaLSTM) vs the linear MinGRU baseline.

    python benchmarks/synthetic_tasks.py                     # parity and mqar, 3 cells
    python benchmarks/synthetic_tasks.py --tasks parity --cells paragru mingru --steps 200
    python benchmarks/synthetic_tasks.py --cells paragru paragru:max_recurrent_norm=null gru \
        --set data.task_length=16             # a cell spec NAME[:model_key=value,...]

Each run is ``train.py --config TASK --set model.cell=CELL`` (its workdir under --workdir);
accuracy is measured on held-out examples (parity: every position; mqar: the query
positions only).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax

from common import environment, markdown_table, write_json
from pararnn.train.config import load_config
from pararnn.train.trainer import train

COLUMNS = [("task", "task"), ("length", "length"), ("cell", "cell"), ("steps", "steps"), ("params", "params"),
           ("eval_loss", "eval loss"), ("eval_accuracy", "eval accuracy")]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=["parity", "mqar"])
    p.add_argument("--cells", nargs="+", default=["paragru", "paralstm", "mingru"])
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where runs go (default: a temporary directory)")
    p.add_argument("--out", default="benchmarks/results/synthetic_tasks")
    p.add_argument("--append", action="store_true", help="append to --out.md instead of replacing it")
    args = p.parse_args(argv)
    root = args.workdir or tempfile.mkdtemp(prefix="pararnn_synthetic_")
    rows = []
    with jax.numpy_dtype_promotion("standard"):
        for task in args.tasks:
            for spec in args.cells:
                cell, _, extra = spec.partition(":")
                overrides = [f"model.cell={cell}", f"train.seed={args.seed}", "train.progress=false",
                             "mesh.devices=1"] + [f"model.{kv}" for kv in extra.split(",") if kv]
                overrides += args.overrides
                if args.steps:
                    overrides.append(f"train.steps={args.steps}")
                cfg = load_config(task, overrides)
                tag = spec.replace(":", "_").replace(",", "_").replace("=", "-")
                summary = train(cfg, os.path.join(root, f"{task}_{cfg.data.task_length}_{tag}"))
                last = summary["last"]
                rows.append({"task": task, "length": cfg.data.task_length, "cell": spec, "steps": summary["final_step"], "params": summary["params"],
                             "eval_loss": last.get("eval_loss"), "eval_accuracy": last.get("eval_accuracy")})
                print(f"{task:<8} {spec:<9} eval accuracy {rows[-1]['eval_accuracy']:.4f}", flush=True)
    env = environment()
    table = markdown_table(rows, COLUMNS)
    header = (f"## Synthetic tasks — {env['date']}, JAX {env['jax']}, {env['backend']}, seed {args.seed}\n\n"
              f"`python {' '.join(sys.argv)}`")
    print("\n" + header + "\n\n" + table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".md", "a" if args.append else "w") as f:
        f.write(header + "\n\n" + table + "\n\n")
    previous = []
    if args.append and os.path.exists(args.out + ".json"):
        import json
        with open(args.out + ".json") as f:
            previous = json.load(f).get("runs", [])
    write_json(args.out + ".json", {"runs": previous + [{"environment": env, "argv": sys.argv, "rows": rows}]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
