"""Linear mode connectivity (LMC) and layerwise linear feature connectivity (LLFC) of pairs of
trained networks: spawned pairs, independent pairs, and independent pairs aligned by weight
or activation matching (Zhou et al. 2023; Ainsworth et al. 2023).

    python benchmarks/lmc_llfc.py                 # MLP and tiny language model (a few minutes on 2 CPU cores)
    python benchmarks/lmc_llfc.py --parts mlp     # MLP only (~1 min)

MLP: 16 → w → w → 4 ReLU (w = 128 and 512), SGD with momentum, on an offline classification set labelled by
a random teacher network (generated here; no download). Language model: pararnn/configs/tiny.yaml,
shortened (train.steps=--lm-steps), trained with train.py's trainer; spawned children start
from the parent's checkpoint with data.order_seed 1 and 2.

For every pair: the loss barrier along θ_α = α θ_a + (1 − α) θ_b (11 alphas), and per layer
at α = 0.5 the LLFC distance 1 − |cos(f(θ_α), mix)| (mean over samples) against the endpoint
baseline 1 − |cos(f(θ_a), f(θ_b))|; for the MLP also weak additivity and commutativity.
Writes benchmarks/results/analysis/lmc_llfc.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
import optax

from common import environment, markdown_table, write_json
from pararnn.analysis import (activation_matching, commutativity, llfc, loss_barrier, mlp_features, mlp_forward,
                              mlp_spec, weak_additivity, weight_matching)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "analysis")
LAYERS = ["Dense_0", "Dense_1", "Dense_2"]

# ---- MLP ---------------------------------------------------------------------------------------


def make_dataset(seed=0, n_train=20000, n_test=2000, dim=16, classes=4):
    """Gaussian inputs labelled by the argmax of a random tanh teacher 16 → 32 → 4."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train + n_test, dim)).astype(np.float32)
    w1, w2 = rng.normal(size=(dim, 32)) / np.sqrt(dim), rng.normal(size=(32, classes)) / np.sqrt(32)
    y = np.argmax(np.tanh(x @ w1 * 2.0) @ w2, axis=1).astype(np.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def init_mlp(seed, widths):
    keys = jax.random.split(jax.random.key(seed), len(widths) - 1)
    return {name: {"kernel": jax.random.normal(k, (widths[i], widths[i + 1])) * np.sqrt(2.0 / widths[i]),
                   "bias": jnp.zeros(widths[i + 1])} for i, (name, k) in enumerate(zip(LAYERS, keys))}


def ce_loss(params, x, y):
    logits = mlp_forward(params, x, LAYERS)[0]
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))


def accuracy(params, x, y):
    return float(jnp.mean(jnp.argmax(mlp_forward(params, x, LAYERS)[0], -1) == y))


OPT = optax.sgd(0.02, momentum=0.9)


@jax.jit
def _epoch(params, opt_state, xb, yb):
    def step(carry, batch):
        p, s = carry
        g = jax.grad(ce_loss)(p, *batch)
        u, s = OPT.update(g, s, p)
        return (optax.apply_updates(p, u), s), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (xb, yb))
    return params, opt_state


def train_mlp(params, opt_state, data, epochs, order_seed, first_epoch=0, batch=100):
    x, y = data
    for e in range(first_epoch, first_epoch + epochs):
        idx = np.random.default_rng([order_seed, e]).permutation(len(x))
        n = len(x) // batch * batch
        params, opt_state = _epoch(params, opt_state, x[idx[:n]].reshape(-1, batch, x.shape[1]),
                                   y[idx[:n]].reshape(-1, batch))
    return params, opt_state


def mlp_pairs(epochs, spawn_epoch, width):
    train_set, test_set = make_dataset()
    widths = [16, width, width, 4]
    t0 = time.time()
    parent = init_mlp(0, widths)
    p_state = OPT.init(parent)
    parent, p_state = train_mlp(parent, p_state, train_set, spawn_epoch, order_seed=0)
    children = [train_mlp(parent, p_state, train_set, epochs - spawn_epoch, order_seed=s, first_epoch=spawn_epoch)[0]
                for s in (1, 2)]
    init0 = init_mlp(0, widths)
    same_init = [train_mlp(init0, OPT.init(init0), train_set, epochs, order_seed=s)[0] for s in (3, 4)]
    init1 = init_mlp(1, widths)
    indep = train_mlp(init1, OPT.init(init1), train_set, epochs, order_seed=5)[0]
    t_train = time.time() - t0
    spec = mlp_spec(LAYERS)
    wm = weight_matching(children[0], indep, spec, key=jax.random.key(0))
    am = activation_matching(mlp_features(LAYERS), children[0], indep, train_set[0][:2000], spec,
                             {"P0": "Dense_0", "P1": "Dense_1"})
    pairs = {f"spawn@{spawn_epoch} epochs": (children[0], children[1]),
             "spawn@0 (same init, other order)": tuple(same_init),
             "independent": (children[0], indep),
             "independent + weight matching": (children[0], wm),
             "independent + activation matching": (children[0], am)}
    return pairs, train_set, test_set, t_train


def analyse_mlp(pairs, train_set, test_set, label):
    x_test, y_test = test_set
    x_tr, y_tr = train_set[0][:5000], train_set[1][:5000]
    loss = jax.jit(lambda p: ce_loss(p, x_tr, y_tr))  # the barrier on the training loss, as LMC is defined
    error = lambda p: 1.0 - accuracy(p, x_test, y_test)  # noqa: E731
    feats = mlp_features(LAYERS)
    rows, curves = [], {}
    for name, (a, b) in pairs.items():
        bar = loss_barrier(loss, a, b)
        err = loss_barrier(error, a, b)
        mid = jax.tree.map(lambda u, v: 0.5 * u + 0.5 * v, a, b)
        res = llfc(feats, a, b, x_test)
        _, fa, ga = mlp_forward(a, x_test, LAYERS)
        _, fb, gb = mlp_forward(b, x_test, LAYERS)
        row = {"model": label, "pair": name, "barrier": bar.barrier, "loss_a": bar.loss_a, "loss_b": bar.loss_b,
               "error_barrier": err.barrier,
               "acc_a": accuracy(a, x_test, y_test), "acc_b": accuracy(b, x_test, y_test),
               "acc_mid": accuracy(mid, x_test, y_test), "layers": {}}
        for i, layer in enumerate(LAYERS):
            r = res[layer]
            entry = {"distance": r.distance, "baseline": r.baseline, "scale": r.scale}
            if i < len(LAYERS) - 1:
                entry["weak_additivity"] = weak_additivity(ga[layer], gb[layer]).distance
            if i > 0:
                prev = LAYERS[i - 1]
                c = commutativity(a[layer]["kernel"], b[layer]["kernel"], fa[prev], fb[prev])
                entry["commutativity_ratio"] = c.ratio
            row["layers"][layer] = entry
        rows.append(row)
        curves[f"{label}: {name}"] = (bar.alphas.tolist(), bar.losses.tolist())
    return rows, curves


# ---- tiny language model -----------------------------------------------------------------------


def lm_runs(steps, spawn_step, workdir):
    from pararnn.train.config import load_config
    from pararnn.train.trainer import train

    base = ["train.progress=false", "train.eval_every=0", f"train.checkpoint_every={spawn_step}",
            "mesh.devices=1", f"train.steps={steps}", "optim.warmup_steps=10"]
    dirs = {k: os.path.join(workdir, k) for k in ("parent", "child1", "child2", "independent")}
    t0 = time.time()
    with jax.numpy_dtype_promotion("standard"):
        train(load_config("tiny", base + [f"train.stop_after={spawn_step}"]), dirs["parent"])
        for i in (1, 2):
            train(load_config("tiny", base + [f"train.spawn_from={dirs['parent']}", f"train.spawn_step={spawn_step}",
                                              f"data.order_seed={i}"]), dirs[f"child{i}"])
        train(load_config("tiny", base + ["train.seed=1", "data.order_seed=3"]), dirs["independent"])
    return dirs, time.time() - t0


def analyse_lm(dirs, spawn_step, steps, n_eval_batches=2):
    from flax import nnx

    from pararnn.analysis import language_model_features, language_model_spec
    from pararnn.train import data as data_lib
    from pararnn.train.restore import load_trained

    models = {k: load_trained(d)[:2] for k, d in dirs.items() if k != "parent"}
    cfg, model = models["child1"]
    params = {k: nnx.state(m, nnx.Param) for k, (_, m) in models.items()}
    data = data_lib.load_data(cfg.data)
    b = cfg.data.batch_size
    batches = [data_lib.get_batch(data.eval, i * b, b, seed=0) for i in range(n_eval_batches)]
    tokens = np.concatenate([bt["inputs"] for bt in batches])
    targets = np.concatenate([bt["targets"] for bt in batches]).reshape(-1)
    mask = np.concatenate([bt["mask"] for bt in batches]).reshape(-1).astype(np.float32)
    feats = language_model_features(model, mode="sequential")

    def loss(p):
        logits = feats(p, tokens)["logits"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        return float(np.sum(np.asarray(ce) * mask) / mask.sum())

    def features_subset(p, x):  # LLFC on the first 4 sequences (4·128 tokens)
        f = feats(p, x)
        return {k: v[: 4 * tokens.shape[1]] for k, v in f.items()}

    with jax.numpy_dtype_promotion("standard"):
        wm = weight_matching(params["child1"], params["independent"], language_model_spec(model),
                             key=jax.random.key(0))
        pairs = {f"spawn@{spawn_step} of {steps} steps": (params["child1"], params["child2"]),
                 "independent": (params["child1"], params["independent"]),
                 "independent + weight matching": (params["child1"], wm)}
        rows, curves = [], {}
        for name, (a, bb) in pairs.items():
            bar = loss_barrier(loss, a, bb)
            res = llfc(features_subset, a, bb, tokens)
            rows.append({"model": "tiny LM", "pair": name, "barrier": bar.barrier, "loss_a": bar.loss_a,
                         "loss_b": bar.loss_b, "layers": {k: {"distance": v.distance, "baseline": v.baseline,
                                                              "scale": v.scale} for k, v in res.layers.items()}})
            curves[f"tiny LM: {name}"] = (bar.alphas.tolist(), bar.losses.tolist())
    return rows, curves


# ---- report ------------------------------------------------------------------------------------


def plot(rows, curves, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(2, len(groups), figsize=(7 * len(groups), 8), squeeze=False)
    for j, model in enumerate(groups):
        ax = axes[0, j]
        for name, (alphas, losses) in curves.items():
            if name.startswith(model + ": "):
                ax.plot(alphas, losses, marker="o", ms=3, label=name.split(": ", 1)[1])
        ax.set_xlabel("α (weight of θ_a)")
        ax.set_ylabel("train loss" if model.startswith("MLP") else "eval loss")
        ax.set_title(f"{model}: loss along θ_α")
        ax.legend(fontsize=7)
        ax = axes[1, j]
        mrows = [r for r in rows if r["model"] == model]
        layers = list(mrows[0]["layers"])
        width = 0.8 / len(mrows)
        for i, r in enumerate(mrows):
            xs = np.arange(len(layers)) + i * width
            d = [max(r["layers"][l]["distance"], 1e-8) for l in layers]
            base = [max(r["layers"][l]["baseline"], 1e-8) for l in layers]
            bars = ax.bar(xs, d, width, label=f"{r['pair']}")
            ax.scatter(xs, base, marker="_", s=120, color=bars.patches[0].get_facecolor(), zorder=3)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(layers)) + 0.4 - width / 2)
        ax.set_xticklabels(layers, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("LLFC distance at α = 0.5 (bars); endpoint baseline (—)")
        ax.set_title(f"{model}: per-layer LLFC (floored at 1e-8)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(rows, env, args, timings):
    lines = [f"# LMC / LLFC of trained pairs\n",
             f"{env['date']}, JAX {env['jax']}, {env['backend']} ({env['cpu_count']} CPU cores, no GPU). "
             f"Command: `python benchmarks/lmc_llfc.py {' '.join(sys.argv[1:])}`. Training time: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".\n",
             "## Barriers\n"]
    lines.append(markdown_table(
        [{**r, "acc": (f"{r['acc_a']:.3f} / {r['acc_b']:.3f} / {r['acc_mid']:.3f}" if "acc_a" in r else "")}
         for r in rows],
        [("model", "model"), ("pair", "pair"), ("loss_a", "loss θ_a"), ("loss_b", "loss θ_b"),
         ("barrier", "loss barrier"), ("error_barrier", "test-error barrier"),
         ("acc", "test accuracy a / b / midpoint")]))
    lines.append("\n## Per-layer LLFC at α = 0.5 (mean over samples of 1 − |cos|)\n")
    flat = []
    for r in rows:
        for layer, v in r["layers"].items():
            flat.append({"model": r["model"], "pair": r["pair"], "layer": layer, **v,
                         "ratio": v["distance"] / v["baseline"] if v["baseline"] > 0 else None})
    lines.append(markdown_table(flat, [("model", "model"), ("pair", "pair"), ("layer", "layer"),
                                       ("distance", "LLFC distance"), ("baseline", "endpoint baseline"),
                                       ("ratio", "distance / baseline"), ("scale", "scale c"),
                                       ("weak_additivity", "weak additivity dist."),
                                       ("commutativity_ratio", "commutativity ratio")]))
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", nargs="+", default=["mlp", "lm"], choices=["mlp", "lm"])
    p.add_argument("--epochs", type=int, default=10, help="MLP epochs in total")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 512], help="MLP hidden widths")
    p.add_argument("--spawn-epoch", type=int, default=1, help="MLP: epochs before spawning")
    p.add_argument("--lm-steps", type=int, default=120, help="tiny LM: total steps")
    p.add_argument("--lm-spawn-step", type=int, default=40, help="tiny LM: spawn step")
    p.add_argument("--workdir", default=None, help="LM runs (default: a temporary directory)")
    p.add_argument("--out", default=OUT)
    args = p.parse_args()
    env = environment()
    rows, curves, timings = [], {}, {}
    if "mlp" in args.parts:
        for width in args.widths:
            label = f"MLP w={width}"
            pairs, train_set, test_set, t = mlp_pairs(args.epochs, args.spawn_epoch, width)
            timings[label] = t
            r, c = analyse_mlp(pairs, train_set, test_set, label)
            rows += r
            curves.update(c)
    if "lm" in args.parts:
        workdir = args.workdir or tempfile.mkdtemp(prefix="lmc_llfc_")
        dirs, t = lm_runs(args.lm_steps, args.lm_spawn_step, workdir)
        timings["tiny LM"] = t
        r, c = analyse_lm(dirs, args.lm_spawn_step, args.lm_steps)
        rows += r
        curves.update(c)
    for r in rows:
        print(f"{r['model']:<12} {r['pair']:<36} barrier {r['barrier']:.4f}")
        for layer, v in r["layers"].items():
            print(f"    {layer:<22} distance {v['distance']:.2e}  baseline {v['baseline']:.2e}  scale {v['scale']:.3f}")
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "lmc_llfc.json"), {"environment": env, "args": vars(args), "timings_s": timings,
                                                         "rows": rows, "curves": curves})
    with open(os.path.join(args.out, "lmc_llfc.md"), "w") as f:
        f.write(markdown(rows, env, args, timings))
    plot(rows, curves, os.path.join(args.out, "lmc_llfc.png"))
    print(f"wrote {args.out}/lmc_llfc.{{json,md,png}}")


if __name__ == "__main__":
    main()
