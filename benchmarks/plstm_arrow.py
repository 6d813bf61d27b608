"""Arrow-pointing extrapolation with a pLSTM vision model: train at one image size, evaluate
at the same and at larger sizes (more patches than ever seen in training).

    python benchmarks/plstm_arrow.py                                   # configs/experiments/plstm_arrow.yaml
    python benchmarks/plstm_arrow.py --set train.steps=50 --set data.num_train=500

Writes benchmarks/results/plstm/arrow.json and arrow.md (accuracy per evaluation size, loss
curve, timings, environment).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common import environment, markdown_table, write_json
from pararnn.plstm import PLSTMVisionClassifier
from pararnn.plstm.arrows import make_arrow_dataset
from pararnn.plstm.config import load_arrow_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_and_evaluate(cfg, *, return_model: bool = False):
    """Train per ``cfg``, evaluate at every ``data.eval_sizes``; the results dict — with
    ``return_model`` also the trained model and the evaluation sets ``{size: (x, y)}``."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    start = time.perf_counter()
    x_train, y_train = make_arrow_dataset(d.num_train, d.train_size, d.seed)
    evals = {s: make_arrow_dataset(d.num_eval, s, d.seed + 1) for s in d.eval_sizes}
    data_s = time.perf_counter() - start

    model = PLSTMVisionClassifier(channels=1, num_classes=2, patch=m.patch, d_model=m.d_model,
                                  depth=m.depth, num_heads=m.num_heads,
                                  orientations=m.orientations, rngs=nnx.Rngs(t.seed))
    sched = optax.warmup_cosine_decay_schedule(0.0, o.lr, o.warmup_steps, max(t.steps, o.warmup_steps + 1),
                                               o.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(sched, weight_decay=o.weight_decay))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, x, y):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

    @nnx.jit
    def step(model, optimizer, x, y):
        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, x, y)
        optimizer.update(model, grads)
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    @nnx.jit
    def predict(model, x):
        return jnp.argmax(model(x), -1)

    rng = np.random.default_rng(t.seed)
    order, pos, curve = rng.permutation(d.num_train), 0, []
    start = time.perf_counter()
    for i in range(t.steps):
        if pos + t.batch_size > d.num_train:
            order, pos = rng.permutation(d.num_train), 0
        idx = order[pos:pos + t.batch_size]
        pos += t.batch_size
        loss, acc = step(model, optimizer, jnp.asarray(x_train[idx]), jnp.asarray(y_train[idx]))
        if (i + 1) % t.log_every == 0 or i == 0:
            curve.append({"step": i + 1, "loss": float(loss), "batch_accuracy": float(acc),
                          "elapsed_s": time.perf_counter() - start})
            print(f"step {i + 1:5d}  loss {float(loss):.4f}  batch acc {float(acc):.3f}", flush=True)
    train_s = time.perf_counter() - start

    results = []
    for size, (x, y) in evals.items():
        preds = np.concatenate([np.asarray(predict(model, jnp.asarray(x[s:s + 250])))
                                for s in range(0, len(x), 250)])
        results.append({"image_size": size, "patches": f"{size // m.patch}x{size // m.patch}",
                        "accuracy": float(np.mean(preds == y)),
                        "extrapolated": size > d.train_size})
        print(f"eval {size}x{size}: accuracy {results[-1]['accuracy']:.4f}", flush=True)
    params = sum(p.size for p in jax.tree_util.tree_leaves(nnx.state(model, nnx.Param)))
    res = {"config": dataclasses.asdict(cfg), "eval": results, "curve": curve, "params": int(params),
           "train_seconds": train_s, "data_seconds": data_s, "environment": environment()}
    return (res, model, evals) if return_model else res


def write_outputs(res: dict, cfg, out: str) -> str:
    """``arrow.json`` and ``arrow.md`` under ``out``; returns the markdown table."""
    write_json(os.path.join(out, "arrow.json"), res)
    table = markdown_table(res["eval"], [("image_size", "image size"), ("patches", "patch grid"),
                                         ("extrapolated", "extrapolated"), ("accuracy", "accuracy")])
    with open(os.path.join(out, "arrow.md"), "w") as f:
        f.write(f"Arrow pointing, trained at {cfg.data.train_size}x{cfg.data.train_size} "
                f"({cfg.data.num_train} images, {cfg.train.steps} steps, {res['params']} params, "
                f"{res['train_seconds']:.0f} s training)\n\n{table}\n")
    return table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "experiments", "plstm_arrow.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "plstm"))
    args = ap.parse_args(argv)
    cfg = load_arrow_config(args.config, args.set)
    res = train_and_evaluate(cfg)
    print(write_outputs(res, cfg, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
