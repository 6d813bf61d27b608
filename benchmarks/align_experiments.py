"""Width sweep of the Align learning rules against backprop, FA, DFA and readout-only.

    python benchmarks/align_experiments.py --config align_images [--set steps=100 ...]
    python benchmarks/align_experiments.py --config align_add

For every (width, rule): train from the same NTK initialisation with plain SGD
(``optax.sgd``) on the rule's pseudo-gradients, and every ``align_every`` steps measure the
cosine between the rule's update and backprop's gradient at the rule's current parameters
on a fixed probe batch — over all parameters and over the hidden layers only (the readout
update of align_ada, fa, dfa and readout is the exact local gradient, which would dominate
the all-parameter cosine). Writes ``benchmarks/results/align/<config>.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time

import numpy as np
import yaml
import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, markdown_table, write_json  # noqa: E402

import pararnn.align as al  # noqa: E402
from pararnn.align.config import load_align_config  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "align")


def make_task(cfg):
    """Train/test arrays, the probe batch and the model builder for the config's task."""
    if cfg.task == "images":
        size, classes = 12, 10
        x_tr, l_tr = al.synthetic_images(cfg.n_train, seed=cfg.seed + 1, size=size, classes=classes)
        x_te, l_te = al.synthetic_images(cfg.n_test, seed=cfg.seed + 2, size=size, classes=classes)
        y_tr, y_te = al.onehot_targets(l_tr, classes), al.onehot_targets(l_te, classes)
        if cfg.model == "mlp":
            build = lambda w: al.mlp(size * size, [w] * cfg.depth, classes,
                                     activation=cfg.activation, parameterization=cfg.parameterization)
        else:
            build = lambda w: al.conv_net((size, size, 1), [w] * cfg.depth, classes,
                                          activation=cfg.activation,
                                          parameterization=cfg.parameterization)
        labels = (jnp.asarray(l_tr), jnp.asarray(l_te))
    else:
        x_tr, y_tr = al.add_task(cfg.n_train, cfg.seq_len, seed=cfg.seed + 1)
        x_te, y_te = al.add_task(cfg.n_test, cfg.seq_len, seed=cfg.seed + 2)
        build = lambda w: al.rnn(1, w, 1, activation=cfg.activation, recurrence=cfg.recurrence,
                                 parameterization=cfg.parameterization, gain=cfg.gain,
                                 mode=cfg.rnn_mode)
        labels = None
    data = tuple(jnp.asarray(a) for a in (x_tr, y_tr, x_te, y_te))
    return data, labels, build


def hidden(tree):
    return tree[:-1]


def run_one(cfg, rule, width, data, labels, build, batches):
    x_tr, y_tr, x_te, y_te = data
    stack = build(width)
    p0 = stack.init(jax.random.key(cfg.seed))  # the same init for every rule
    fb_key = jax.random.key(cfg.seed + 1000)  # fixed feedback (FA/DFA) for the whole run
    opt = optax.sgd(cfg.lr)
    probe = (x_tr[:256], y_tr[:256])
    loss_fn = functools.partial(al.mse_loss, convention=cfg.loss)  # its scale sets the update's

    @jax.jit
    def chunk(p, s, idx):
        def body(carry, i):
            p, s = carry
            batch = (x_tr[i], y_tr[i])
            g = al.pseudo_grads(rule, stack, p, p0, batch, loss_fn, key=fb_key)
            upd, s = opt.update(g, s, p)
            return (optax.apply_updates(p, upd), s), None
        return jax.lax.scan(body, (p, s), idx)[0]

    @jax.jit
    def measure(p):
        g = al.pseudo_grads(rule, stack, p, p0, probe, loss_fn, key=fb_key)
        gb = al.pseudo_grads("backprop", stack, p, p0, probe, loss_fn)
        out_te = stack(p, x_te)
        m = {"cos_all": al.alignment(g, gb), "cos_hidden": al.alignment(hidden(g), hidden(gb)),
             "train_loss": loss_fn(stack(p, x_tr), y_tr), "test_loss": loss_fn(out_te, y_te)}
        if labels is not None:
            m["test_acc"] = jnp.mean(jnp.argmax(out_te, -1) == labels[1])
        return m

    start = time.perf_counter()
    p, s, curve = p0, opt.init(p0), []
    for c0 in range(0, cfg.steps + 1, cfg.align_every):
        if c0:
            p, s = chunk(p, s, batches[c0 - cfg.align_every:c0])
        m = {k: float(v) for k, v in measure(p).items()}
        curve.append({"step": c0, **m})
    final = curve[-1]
    measured = curve[1:] if len(curve) > 1 else curve  # along training, after step 0
    return {"rule": rule, "width": width, "params": sum(int(np.prod(l.shape)) for l in
                                                       jax.tree_util.tree_leaves(p0)),
            "final_train_loss": final["train_loss"], "test_loss": final["test_loss"],
            "test_acc": final.get("test_acc"),
            "cos_all_init": curve[0]["cos_all"], "cos_hidden_init": curve[0]["cos_hidden"],
            "cos_all_mean": float(np.mean([c["cos_all"] for c in measured])),
            "cos_hidden_mean": float(np.mean([c["cos_hidden"] for c in measured])),
            "seconds": time.perf_counter() - start, "curve": curve}


def plot(rows, cfg, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    metric = "test_acc" if cfg.task == "images" else "test_loss"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = {r: f"C{i}" for i, r in enumerate(al.RULES)}  # the same colour in both panels
    for rule in cfg.rules:
        rr = sorted((r for r in rows if r["rule"] == rule), key=lambda r: r["width"])
        w = [r["width"] for r in rr]
        axes[0].plot(w, [r[metric] for r in rr], "o-", color=colors[rule], label=rule)
        if rule != "backprop":
            axes[1].plot(w, [r["cos_hidden_mean"] for r in rr], "o-", color=colors[rule],
                         label=rule)
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("width")
        ax.grid(alpha=0.3)
    if metric == "test_loss":
        axes[0].set_yscale("log")
    axes[0].set_ylabel(metric.replace("_", " "))
    axes[1].set_ylabel("cos(update, backprop), hidden layers")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{cfg.name}: {cfg.steps} SGD steps, lr {cfg.lr}, {cfg.parameterization}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="align_images")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--plot-only", action="store_true", help="redraw the plot from the JSON")
    args = ap.parse_args(argv)
    overrides = {}
    for item in args.set:
        k, _, v = item.partition("=")
        overrides[k.strip()] = yaml.safe_load(v)
    cfg = load_align_config(args.config, overrides)
    if args.plot_only:
        with open(os.path.join(args.out, cfg.name + ".json")) as f:
            plot(json.load(f)["rows"], cfg, os.path.join(args.out, cfg.name + ".png"))
        return
    data, labels, build = make_task(cfg)
    rng = np.random.default_rng(cfg.seed)
    batches = jnp.asarray(np.stack([rng.choice(cfg.n_train, cfg.batch_size, replace=False)
                                    for _ in range(cfg.steps)]).astype(np.int32))
    rows = []
    t0 = time.perf_counter()
    for width in cfg.widths:
        for rule in cfg.rules:
            r = run_one(cfg, rule, width, data, labels, build, batches)
            rows.append(r)
            acc = f" acc {r['test_acc']:.3f}" if r["test_acc"] is not None else ""
            print(f"width {width:5d} {rule:10s} test loss {r['test_loss']:.4f}{acc} "
                  f"cos(all) {r['cos_all_mean']:+.3f} cos(hidden) {r['cos_hidden_mean']:+.3f} "
                  f"[{r['seconds']:.1f}s]", flush=True)
    cols = [("width", "width"), ("rule", "rule"), ("final_train_loss", "train loss"),
            ("test_loss", "test loss")]
    if cfg.task == "images":
        cols.append(("test_acc", "test acc"))
    cols += [("cos_all_mean", "cos all"), ("cos_hidden_mean", "cos hidden"),
             ("cos_hidden_init", "cos hidden @0"), ("seconds", "s")]
    table = markdown_table(rows, cols)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, cfg.name)
    write_json(base + ".json", {"config": dataclasses.asdict(cfg), "environment": environment(),
                                "command": " ".join(["python", "benchmarks/align_experiments.py"]
                                                    + (argv if argv is not None else sys.argv[1:])),
                                "total_seconds": time.perf_counter() - t0, "rows": rows})
    with open(base + ".md", "w") as f:
        f.write(f"# {cfg.name}\n\n{table}\n")
    plot(rows, cfg, base + ".png")


if __name__ == "__main__":
    main()
