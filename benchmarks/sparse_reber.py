"""Sparse RNNs on the Reber grammar: the shape of Darji's results at CPU scale.

    python benchmarks/sparse_reber.py                      # configs/experiments/sparse_reber.yaml
    python benchmarks/sparse_reber.py --set pruning.steps=100 --set graphs.seeds=[0]

1. Pruning: train dense Elman/GRU/LSTM classifiers (valid vs invalid strings), prune the
   input and recurrent matrices by global magnitude to each level, measure test accuracy,
   retrain briefly with the masks held (``magnitude_pruning`` chained after Adam), measure
   again.
2. Random structure: for Barabási–Albert and Watts–Strogatz graphs, build the layered DAG
   network (:class:`pararnn.sparse.GraphRNN`, one unit per node), train, and relate test
   accuracy to the graph's properties (sources, layers, edges, skip edges, ...).

Writes ``benchmarks/results/sparse/reber.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from typing import Literal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import jax
import jax.numpy as jnp
import optax
import yaml
from flax import nnx

import pararnn.nn as pnn
from pararnn.sparse import (GraphRNN, graph_properties, layer_dag, magnitude_prune, magnitude_pruning,
                            random_dag, sparsity, where_names)
from pararnn.sparse.reber import SYMBOLS, reber_dataset
from pararnn.config import ConfigError, build_config  # strict YAML → dataclass (unknown keys are errors)
from common import environment, markdown_table, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "benchmarks", "results", "sparse")
LAYERS = {"elman": pnn.Elman, "gru": pnn.GRU, "lstm": pnn.LSTM}


# ---- config ----------------------------------------------------------------------------------
@dataclasses.dataclass
class DataConfig:
    train_size: int = 2000
    test_size: int = 1000
    max_length: int = 16
    embedded: bool = False


@dataclasses.dataclass
class TrainConfig:
    batch_size: int = 64
    learning_rate: float = 0.01
    mode: Literal["auto", "parallel", "sequential"] = "auto"
    eval_mode: Literal["auto", "parallel", "sequential"] = "parallel"


@dataclasses.dataclass
class PruningConfig:
    cells: list[Literal["elman", "gru", "lstm"]] = dataclasses.field(default_factory=lambda: ["elman", "gru", "lstm"])
    hidden: int = 24
    steps: int = 400
    levels: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5, 0.9])
    retrain_steps: int = 100
    retrain_learning_rate: float = 0.003
    prune: Literal["both", "recurrent"] = "both"


@dataclasses.dataclass
class GraphsConfig:
    cell: Literal["elman", "gru", "lstm"] = "elman"
    steps: int = 400
    nodes: list[int] = dataclasses.field(default_factory=lambda: [16])
    barabasi_albert_m: list[int] = dataclasses.field(default_factory=lambda: [1, 2])
    watts_strogatz_k: list[int] = dataclasses.field(default_factory=lambda: [2, 4])
    watts_strogatz_p: float = 1.0
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])


@dataclasses.dataclass
class ExperimentConfig:
    seed: int = 0
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    pruning: PruningConfig = dataclasses.field(default_factory=PruningConfig)
    graphs: GraphsConfig = dataclasses.field(default_factory=GraphsConfig)


def load(path: str, overrides: list[str]) -> ExperimentConfig:
    """YAML → :class:`ExperimentConfig`; unknown keys and wrong types are errors naming the key."""
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects key=value, got {item!r}.")
        node = values
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(raw)
    return build_config(ExperimentConfig, values)


# ---- models and training ---------------------------------------------------------------------
class Classifier(nnx.Module):
    """A recurrent body and a linear readout of its last time step: 2 logits."""

    def __init__(self, body: nnx.Module, features: int, *, rngs: nnx.Rngs):
        self.body = body
        self.head = nnx.Linear(features, 2, rngs=rngs)

    def __call__(self, x, mode=None):
        return self.head(self.body(x, mode=mode)[:, -1])


def make_steps(model: Classifier, where, mode: str, eval_mode: str | None = None):
    """Jitted (train_step, accuracy). ``train_step(params, opt_state, x, y, lr, level)``: the
    optimiser is Adam chained with one-shot magnitude pruning to ``level`` at the first
    update — ``level`` is traced, so one compilation serves every pruning level (level 0 is
    plain training: nothing is pruned)."""
    graphdef, params0, rest = nnx.split(model, nnx.Param, ...)

    def tx(lr, level):
        return optax.chain(optax.adam(lr), magnitude_pruning(level, where=where))

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params, rest)(x, mode=mode)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(params, opt_state, x, y, lr, level):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = tx(lr, level).update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def accuracy(params, x, y):
        logits = nnx.merge(graphdef, params, rest)(x, mode=eval_mode or mode)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    return params0, (lambda params: tx(0.0, 0.0).init(params)), train_step, accuracy


def train(params, init_opt, train_step, data, steps, lr, level, batch, seed):
    x, y = data
    opt_state = init_opt(params)
    rng = np.random.default_rng(seed)
    loss = np.nan
    for _ in range(steps):
        idx = rng.integers(0, x.shape[0], batch)
        params, opt_state, loss = train_step(params, opt_state, x[idx], y[idx], lr, level)
    return params, float(loss)


def pruning_experiment(cfg: ExperimentConfig, train_data, test_data):
    pc, tc = cfg.pruning, cfg.train
    where = where_names("W_i", "W_h") if pc.prune == "both" else where_names("W_h")
    rows = []
    for kind in pc.cells:
        t0 = time.perf_counter()
        body = LAYERS[kind](len(SYMBOLS), pc.hidden, mode=tc.mode, rngs=nnx.Rngs(cfg.seed))
        model = Classifier(body, pc.hidden, rngs=nnx.Rngs(cfg.seed + 1))
        params, init_opt, step, acc = make_steps(model, where, tc.mode, tc.eval_mode)
        dense, loss = train(params, init_opt, step, train_data, pc.steps, tc.learning_rate, 0.0,
                            tc.batch_size, cfg.seed)
        dense_acc = float(acc(dense, *test_data))
        for level in pc.levels:
            pruned, _ = magnitude_prune(dense, level, where=where)
            before = float(acc(pruned, *test_data))
            retrained, _ = train(pruned, init_opt, step, train_data, pc.retrain_steps,
                                 pc.retrain_learning_rate, level, tc.batch_size, cfg.seed + 7)
            after = float(acc(retrained, *test_data))
            rows.append({"cell": kind, "level": level, "sparsity": sparsity(retrained, where),
                         "dense_acc": dense_acc, "acc_pruned": before, "acc_retrained": after})
            print(f"{kind:5s} prune {level:.2f}: sparsity {rows[-1]['sparsity']:.3f}  "
                  f"acc {before:.3f} → retrained {after:.3f}  (dense {dense_acc:.3f})", flush=True)
        print(f"  {kind}: {time.perf_counter() - t0:.1f}s, final train loss {loss:.3f}", flush=True)
    return rows


def graph_experiment(cfg: ExperimentConfig, train_data, test_data):
    gc, tc = cfg.graphs, cfg.train
    specs = []
    for n in gc.nodes:
        for m in gc.barabasi_albert_m:
            if m < n:
                specs.append(("barabasi_albert", n, {"m": m}))
        for k in gc.watts_strogatz_k:
            if k < n:
                specs.append(("watts_strogatz", n, {"k": k, "p": gc.watts_strogatz_p}))
    rows = []
    for kind, n, params in specs:
        for seed in gc.seeds:
            t0 = time.perf_counter()
            dag = random_dag(kind, n, seed=seed, **params)
            layout = layer_dag(dag)
            body = GraphRNN(len(SYMBOLS), layout, kind=gc.cell, mode=tc.mode, rngs=nnx.Rngs(seed))
            model = Classifier(body, body.out_features, rngs=nnx.Rngs(seed + 1))
            # evaluated in the training mode: a parallel solve per DAG layer is a long compile
            # for each of the many small networks (parallel = sequential is tested).
            p0, init_opt, step, acc = make_steps(model, where_names("W_h"), tc.mode)
            trained, loss = train(p0, init_opt, step, train_data, gc.steps, tc.learning_rate, 0.0,
                                  tc.batch_size, cfg.seed)
            row = {"graph": kind, "params": params, "seed": seed, **graph_properties(dag),
                   "acc": float(acc(trained, *test_data)), "train_loss": loss}
            rows.append(row)
            print(f"{kind:15s} n={n} {params} seed {seed}: sources {row['sources']:2d} layers "
                  f"{row['layers']:2d} edges {row['edges']:3d} → acc {row['acc']:.3f} "
                  f"({time.perf_counter() - t0:.1f}s)", flush=True)
    return rows


def correlations(rows):
    keys = ["sources", "sinks", "layers", "edges", "skip_edges", "mean_degree", "clustering"]
    acc = np.array([r["acc"] for r in rows])
    out = {}
    for k in keys:
        v = np.array([r[k] for r in rows], float)
        out[k] = float(np.corrcoef(v, acc)[0, 1]) if v.std() > 0 and acc.std() > 0 else None
    return out


def plot(prune_rows, graph_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, kind in enumerate(sorted({r["cell"] for r in prune_rows})):
        rs = [r for r in prune_rows if r["cell"] == kind]
        lv = [r["level"] for r in rs]
        axes[0].plot(lv, [r["acc_pruned"] for r in rs], "--", color=f"C{i}", label=f"{kind} pruned")
        axes[0].plot(lv, [r["acc_retrained"] for r in rs], "-o", color=f"C{i}", label=f"{kind} retrained")
    axes[0].set(xlabel="pruned fraction of W_i, W_h", ylabel="test accuracy", title="Magnitude pruning (Reber)")
    axes[0].legend(fontsize=7)
    for j, prop in enumerate(["sources", "layers"]):
        ax = axes[1 + j]
        for i, g in enumerate(sorted({r["graph"] for r in graph_rows})):
            rs = [r for r in graph_rows if r["graph"] == g]
            ax.scatter([r[prop] for r in rs], [r["acc"] for r in rs], color=f"C{i}", label=g)
        ax.set(xlabel=f"{prop} of the DAG", ylabel="test accuracy", title=f"Random-graph RNNs: accuracy vs {prop}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "experiments", "sparse_reber.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--skip", choices=["pruning", "graphs"], action="append", default=[])
    args = ap.parse_args(argv)
    try:
        cfg = load(args.config, args.set)
    except ConfigError as e:
        ap.error(str(e))
    dc = cfg.data
    xtr, ytr, _ = reber_dataset(dc.train_size, seed=cfg.seed, max_length=dc.max_length, embedded=dc.embedded)
    xte, yte, _ = reber_dataset(dc.test_size, seed=cfg.seed + 1000, max_length=dc.max_length, embedded=dc.embedded)
    train_data, test_data = (jnp.asarray(xtr), jnp.asarray(ytr)), (jnp.asarray(xte), jnp.asarray(yte))
    t0 = time.perf_counter()
    prune_rows = [] if "pruning" in args.skip else pruning_experiment(cfg, train_data, test_data)
    graph_rows = [] if "graphs" in args.skip else graph_experiment(cfg, train_data, test_data)
    corr = correlations(graph_rows) if len(graph_rows) > 2 else {}
    env = environment()
    os.makedirs(args.out, exist_ok=True)
    write_json(os.path.join(args.out, "reber.json"), {
        "environment": env, "config": dataclasses.asdict(cfg), "pruning": prune_rows, "graphs": graph_rows,
        "accuracy_correlation": corr, "wall_s": time.perf_counter() - t0})
    t1 = markdown_table(prune_rows, [("cell", "cell"), ("level", "pruned"), ("sparsity", "measured sparsity"),
                                     ("dense_acc", "dense acc"), ("acc_pruned", "acc after pruning"),
                                     ("acc_retrained", "acc after retrain")])
    t2 = markdown_table(graph_rows, [("graph", "graph"), ("nodes", "n"), ("params", "params"), ("seed", "seed"),
                                     ("sources", "sources"), ("sinks", "sinks"), ("layers", "layers"),
                                     ("edges", "edges"), ("skip_edges", "skip edges"), ("acc", "test acc")])
    t3 = markdown_table([{"property": k, "r": v} for k, v in corr.items()],
                        [("property", "graph property"), ("r", "Pearson r with accuracy")])
    md = (f"Reber grammar, {dc.train_size} train / {dc.test_size} test strings (max length {dc.max_length}); "
          f"jax {env['jax']}, {env['backend']} ({env['cpu_count']} cores), {env['date']}; "
          f"wall {time.perf_counter() - t0:.0f}s.\n\n## Magnitude pruning\n\n{t1}\n\n"
          f"## Random-graph RNNs ({cfg.graphs.cell}, one unit per node)\n\n{t2}\n\n{t3}\n")
    with open(os.path.join(args.out, "reber.md"), "w") as f:
        f.write(md)
    print(md)
    if prune_rows or graph_rows:
        plot(prune_rows, graph_rows, os.path.join(args.out, "reber.png"))


if __name__ == "__main__":
    main()
