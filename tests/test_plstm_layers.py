"""pLSTM layers and models: causality/reach of each layer (which outputs an input can change is
fixed by the graph and the mode), batching, the two DAG methods, the models, the arrow data
and its config. Kernels themselves are checked against naive loops in test_plstm.py."""

import os

import jax
import networkx as nx
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pararnn.plstm import (PLSTMGraphClassifier, PLSTMVisionClassifier, chain_graph, dagify,
                           disjoint_union, pLSTM1D, pLSTM2D, pLSTMGraph)
from pararnn.plstm.arrows import arrow_geometry, make_arrow_dataset, points_at
from pararnn.plstm.config import PLSTMConfigError, load_arrow_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = 1e-12  # float64 layer outputs of identical math in different order


def _changed(layer, x, where, *call_args):
    """Boolean map of outputs that change when x is perturbed at index ``where`` (both inputs
    in one jitted call: eager NNX dispatch is slow)."""
    both = nnx.jit(lambda m, a, b: (m(a, *call_args), m(b, *call_args)))
    y0, y1 = both(layer, x, x.at[where].add(1.0))
    return np.asarray(jnp.max(jnp.abs(y1 - y0), axis=-1) > 1e-12)


def test_plstm1d_is_causal_batched_and_differentiable():
    layer = pLSTM1D(6, 5, num_heads=2, chunk_size=4, rngs=nnx.Rngs(0), param_dtype=jnp.float64,
                    source_bias=0.0, mark_bias=0.0)  # open gates: influence is visible
    x = jax.random.normal(jax.random.key(1), (2, 11, 6), jnp.float64)
    ch = _changed(layer, x, (0, 5))  # (2, 11): other batch member and the past unchanged
    assert not ch[1].any() and not ch[0, :5].any() and ch[0, 5:].all()
    grads = nnx.jit(nnx.grad(lambda m: jnp.sum(m(x) ** 2)))(layer)
    assert all(jnp.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_plstm2d_reach_by_mode_and_orientation():
    """A bump at (2, 2) of a 6×5 image changes: orientation 1, P-mode → the quadrant
    i ≥ 2, j ≥ 2; D-mode → only the row and column rays from (2, 2) (multitree); four
    orientations → every cell (for P-mode)."""
    x = jax.random.normal(jax.random.key(0), (1, 6, 5, 4))
    i, j = np.meshgrid(np.arange(6), np.arange(5), indexing="ij")
    kw = dict(num_heads=2, source_bias=0.0, mark_bias=0.0, param_dtype=jnp.float64)
    ch = _changed(pLSTM2D(4, mode="P", orientations=1, rngs=nnx.Rngs(0), **kw), x, (0, 2, 2))[0]
    np.testing.assert_array_equal(ch, (i >= 2) & (j >= 2))
    ch = _changed(pLSTM2D(4, mode="D", orientations=1, rngs=nnx.Rngs(0), **kw), x, (0, 2, 2))[0]
    np.testing.assert_array_equal(ch, ((i >= 2) & (j == 2)) | ((i == 2) & (j >= 2)))
    ch = _changed(pLSTM2D(4, mode="P", orientations=4, rngs=nnx.Rngs(0), **kw), x, (0, 2, 2))[0]
    assert ch.all()
    with pytest.raises(ValueError, match="mode must be 'P' or 'D', got 'X'"):
        pLSTM2D(4, mode="X", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, X, Y, in_features\) with 4"):
        pLSTM2D(4, rngs=nnx.Rngs(0))(jnp.ones((1, 3, 3, 5)))


def test_plstm_graph_layer_reach_batching_and_methods():
    g = dagify(num_nodes=8, edges=np.random.default_rng(3).integers(0, 8, (14, 2)))
    x = jax.random.normal(jax.random.key(0), (3, 8, 4))
    run = nnx.jit(lambda m, x: m(x, g))
    kw = dict(num_heads=2, source_bias=0.0, mark_bias=0.0, param_dtype=jnp.float64)
    dense = pLSTMGraph(4, mode="P", method="dense", rngs=nnx.Rngs(0), **kw)
    levels = pLSTMGraph(4, mode="P", method="levels", rngs=nnx.Rngs(0), **kw)  # same parameters
    yb = run(dense, x)
    np.testing.assert_allclose(yb, run(levels, x), atol=F64, rtol=0)
    np.testing.assert_allclose(yb[1], run(dense, x[1]), atol=F64, rtol=0)
    # P-mode: a node's input reaches exactly itself and its descendants; D-mode (multitree)
    # a subset of them
    desc = nx.descendants(g.to_networkx(), 0) | {0}
    assert set(np.nonzero(_changed(dense, x[0], 0, g))[0]) == desc
    d_layer = pLSTMGraph(4, mode="D", rngs=nnx.Rngs(0), **kw)
    assert set(np.nonzero(_changed(d_layer, x[0], 0, g))[0]) <= desc


@pytest.mark.slow
def test_models_run_at_any_size_and_graph_batching_is_exact():
    vis = PLSTMVisionClassifier(channels=1, num_classes=2, d_model=8, depth=2, num_heads=1,
                                rngs=nnx.Rngs(0))
    fwd = nnx.jit(lambda m, x: m(x))
    for size in (6, 10):
        assert fwd(vis, jnp.ones((2, size, size, 1), jnp.float32)).shape == (2, 2)
    with pytest.raises(ValueError, match="multiples of patch=2"):
        vis(jnp.ones((1, 5, 6, 1), jnp.float32))
    # graph classifier: a disjoint-union batch equals each graph on its own
    gs = [dagify(num_nodes=5, edges=[[0, 1], [1, 2], [2, 3], [1, 4]]), chain_graph(3)]
    u, off = disjoint_union(gs)
    model = PLSTMGraphClassifier(in_features=3, num_classes=4, d_model=8, depth=4, num_heads=2,
                                 rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(2), (int(off[-1]), 3))
    run = nnx.jit(lambda m, x, g, gi, n: m(x, g, gi, n), static_argnums=(2, 4))
    batched = run(model, x, u, np.repeat(np.arange(2), np.diff(off)), 2)
    for b, g in enumerate(gs):
        alone = run(model, x[off[b]:off[b + 1]], g, np.zeros(g.num_nodes, int), 1)
        np.testing.assert_allclose(batched[b], alone[0], atol=F64, rtol=0)


def test_arrow_dataset_is_deterministic_balanced_and_labelled_by_geometry():
    x1, y1 = make_arrow_dataset(40, 12, seed=3)
    x2, y2 = make_arrow_dataset(40, 12, seed=3)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    assert x1.shape == (40, 12, 12, 1) and x1.dtype == np.float32 and y1.mean() == 0.5
    assert not np.array_equal(make_arrow_dataset(40, 12, seed=4)[1], y1)
    g = arrow_geometry(40, 3)
    np.testing.assert_array_equal(g["label"], y1)
    # independent check of the label: walk along the ray and test hitting the disc
    t = np.linspace(0, 2, 4001)[None, :, None]
    pts = g["tail"][:, None] + t * g["direction"][:, None]
    hit = (np.linalg.norm(pts - g["center"][:, None], axis=-1) < g["radius"][:, None]).any(1)
    np.testing.assert_array_equal(hit.astype(int), y1)
    assert (points_at(g["tail"], g["direction"], g["center"], g["radius"]) == hit).all()


def test_arrow_config_loads_and_rejects_bad_keys(tmp_path):
    cfg = load_arrow_config(os.path.join(ROOT, "configs", "experiments", "plstm_arrow.yaml"), ["train.steps=7"])
    assert cfg.train.steps == 7 and cfg.data.eval_sizes[-1] > cfg.data.train_size
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  d_modle: 3\n")
    with pytest.raises(PLSTMConfigError, match="unknown config key 'model.d_modle'. Did you mean 'model.d_model'"):
        load_arrow_config(str(bad))
    with pytest.raises(PLSTMConfigError, match="train.steps: expected an int"):
        load_arrow_config(os.path.join(ROOT, "configs", "experiments", "plstm_arrow.yaml"), ["train.steps=x"])


@pytest.mark.slow
def test_arrow_script_trains_and_reports_both_sizes(tmp_path):
    """The reported accuracy at each size is the trained model's, on that size's evaluation
    scenes with labels from the geometry (recomputed here), and the outputs are written."""
    import json
    import sys
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import plstm_arrow
    cfg = load_arrow_config(os.path.join(ROOT, "configs", "experiments", "plstm_arrow.yaml"),
                            ["train.steps=3", "data.num_train=64", "data.num_eval=20", "model.d_model=8"])
    with jax.numpy_dtype_promotion("standard"):  # optax internals
        res, model, evals = plstm_arrow.train_and_evaluate(cfg, return_model=True)
    plstm_arrow.write_outputs(res, cfg, str(tmp_path))
    assert json.load(open(tmp_path / "arrow.json"))["eval"] == res["eval"]
    assert [r["image_size"] for r in res["eval"]] == [16, 32] and len(res["curve"]) >= 1
    labels = arrow_geometry(cfg.data.num_eval, cfg.data.seed + 1)["label"]
    forward = nnx.jit(lambda m, x: jnp.argmax(m(x), -1))
    for r in res["eval"]:
        x, y = evals[r["image_size"]]  # what the script evaluated: the scenes at that size
        np.testing.assert_array_equal(x, make_arrow_dataset(cfg.data.num_eval, r["image_size"], cfg.data.seed + 1)[0])
        np.testing.assert_array_equal(y, labels)
        assert r["accuracy"] == np.mean(np.asarray(forward(model, jnp.asarray(x))) == labels), r
