"""Random-graph masks, DAG layering, block layouts and the Reber data: numbers checked
against networkx-independent counts written here."""

import networkx as nx
import numpy as np
import pytest

from pararnn.sparse import block_diagonal_mask, block_layout, graph_mask, layer_dag, random_dag
from pararnn.sparse.reber import SYMBOLS, is_embedded_reber, is_reber, reber_dataset


def test_graph_mask_density_and_shape():
    n = 200
    m = graph_mask("erdos_renyi", n, p=0.1, seed=3)
    assert m.shape == (n, n) and m.dtype == bool
    assert np.array_equal(m, m.T) and not m.diagonal().any()
    # Edge count ~ Binomial(n(n-1)/2, p): mean 1990, std ~42; 5 std is a safe bound.
    edges = m.sum() / 2
    assert abs(edges - 0.1 * n * (n - 1) / 2) < 5 * np.sqrt(0.1 * 0.9 * n * (n - 1) / 2)
    # Watts-Strogatz without rewiring is the ring lattice: every node has degree k.
    ring = graph_mask("watts_strogatz", 20, k=4, p=0.0)
    assert np.all(ring.sum(axis=1) == 4) and ring[0, 1] and ring[0, 2] and not ring[0, 3]
    # Barabasi-Albert: m edges per node added after the first m: m·(n − m) edges.
    ba = graph_mask("barabasi_albert", 30, m=3, seed=1)
    assert ba.sum() / 2 == 3 * (30 - 3)


def test_graph_mask_reproducible_by_seed():
    for kind, params in [("erdos_renyi", {"p": 0.3}), ("watts_strogatz", {"k": 4, "p": 0.5}),
                         ("barabasi_albert", {"m": 2})]:
        a = graph_mask(kind, 40, seed=7, **params)
        assert np.array_equal(a, graph_mask(kind, 40, seed=7, **params))
        assert not np.array_equal(a, graph_mask(kind, 40, seed=8, **params))


@pytest.mark.parametrize("args, kwargs, match", [
    (("small_world", 10), {"p": 0.1}, "unknown kind 'small_world'"),
    (("erdos_renyi", 10), {}, r"missing parameter\(s\) \['p'\]"),
    (("erdos_renyi", 10), {"p": 0.1, "k": 2}, r"unknown parameter\(s\) \['k'\]"),
    (("erdos_renyi", 10), {"p": 1.5}, "p must be a probability"),
    (("watts_strogatz", 10), {"k": 12, "p": 0.1}, r"k must be an int in \[0, 9\], got 12"),
    (("watts_strogatz", 10), {"k": 3, "p": 0.1}, "k .* must be even, got 3"),
    (("barabasi_albert", 10), {"m": 0}, "m must be an int"),
    (("barabasi_albert", 0), {"m": 1}, "n must be a positive int"),
])
def test_graph_mask_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        graph_mask(*args, **kwargs)


def test_layer_dag_longest_path_layers_and_skip_masks():
    dag = random_dag("watts_strogatz", 16, k=4, p=0.5, seed=2)
    assert nx.is_directed_acyclic_graph(dag)
    layout = layer_dag(dag)
    layer_of = {v: l for l, nodes in enumerate(layout.layers) for v in nodes}
    assert sorted(layer_of) == list(range(16))
    for v, l in layer_of.items():
        preds = list(dag.predecessors(v))
        # longest path: a node sits one layer below its deepest predecessor
        assert l == (0 if not preds else 1 + max(layer_of[u] for u in preds))
    # every edge appears exactly once in the input masks, at the right place
    n_mask_edges = 0
    for l, masks in enumerate(layout.input_masks):
        for j, m in masks.items():
            assert j < l and m.shape == (len(layout.layers[j]), len(layout.layers[l]))
            for a, b in zip(*np.nonzero(m)):
                assert dag.has_edge(layout.layers[j][a], layout.layers[l][b])
            n_mask_edges += int(m.sum())
    assert n_mask_edges == dag.number_of_edges()
    assert {layout.layers[l][i] for l, i in layout.outputs} == {v for v in dag if dag.out_degree(v) == 0}
    with pytest.raises(ValueError, match="cycle"):
        layer_dag(nx.DiGraph([(0, 1), (1, 0)]))


def test_block_layout_recovers_scrambled_blocks():
    mask = block_diagonal_mask(3, 4) & (np.random.default_rng(0).random((12, 12)) < 0.7)
    mask |= np.eye(12, dtype=bool)  # keep each block connected
    perm = np.random.default_rng(1).permutation(12)
    scrambled = mask[perm][:, perm]
    p, sizes = block_layout(scrambled)
    assert sizes == (4, 4, 4)
    back = scrambled[p][:, p]
    assert not (back & ~block_diagonal_mask(3, 4)).any()


def test_reber_dataset_labels_and_determinism():
    x, y, strings = reber_dataset(40, seed=5, max_length=15)
    x2, y2, _ = reber_dataset(40, seed=5, max_length=15)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    assert y.sum() == 20 and x.shape == (40, 15, len(SYMBOLS))
    for s, label, row in zip(strings, y, x):
        assert is_reber(s) == bool(label) and len(s) <= 15
        # left padding: zero rows then one-hot rows spelling s
        assert np.all(row[:15 - len(s)] == 0)
        assert "".join(SYMBOLS[i] for i in row[15 - len(s):].argmax(-1)) == s
    assert is_reber("BTSSXXTVVE") and not is_reber("BTSSXXTVPE")
    _, ye, se = reber_dataset(10, seed=0, max_length=20, embedded=True)
    assert all(is_embedded_reber(s) == bool(l) for s, l in zip(se, ye))


def test_reber_acceptor_equals_the_grammar_regex_exhaustively():
    """Independent reference: the Reber grammar as a regular expression, derived by hand from
    its diagram (B, then TS*X or PT*V; from the X-node: S ends, X enters the T*-V loop; from
    the V-node: V ends, P returns to the X-node). Every string B…E with up to 7 inner symbols."""
    import itertools
    import re
    grammar = re.compile(r"^B(?:(?:TS*X|PT*VP)(?:XT*VP)*(?:S|XT*VV)|PT*VV)E$")
    checked = accepted = 0
    for n in range(8):
        for inner in itertools.product("TSXPV", repeat=n):
            s = "B" + "".join(inner) + "E"
            assert is_reber(s) == bool(grammar.match(s)), s
            checked, accepted = checked + 1, accepted + bool(grammar.match(s))
    assert accepted > 10 and checked == sum(5 ** n for n in range(8))
    for s in ["BTXSE", "BPVVE", "BTSXXTVVE", "BPTVPXVVE", "BTXXVPSE"]:  # hand-listed valid
        assert is_reber(s), s
    for s in ["BTSE", "BPTE", "BTXXVVE" + "E", "TXSE", "BTXS", "BPVPSE" + "X"]:  # invalid
        assert not is_reber(s), s
    # embedded: the second and the second-to-last symbols must agree
    assert is_embedded_reber("BTBTXSETE") and not is_embedded_reber("BTBTXSEPE")
