"""pLSTM kernels against plain float64 loops written here (the issue's semantics, one edge at
a time), 1D/2D against plstm_dag on chain/grid graphs, gradients against jax.grad of a naive
recursion, graphs (line edges, cycles, dagify, multitree) and the P-mode bound.

Tolerances: float64 paths agree to ~1e-15 relative (sums of a few dozen products of numbers
in [−1, 1]); we allow 1e-12. float32 vs a float64 reference: 2e-5 (dozens of fp32 ops of
values O(1), error ~ few × 6e-8 × terms)."""


import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import pytest

from pararnn.plstm import (Graph, chain_graph, d_mode_grid_mask, dagify, disjoint_union,
                           grid_graph, p_mode_grid, p_mode_transitions, plstm_1d, plstm_2d,
                           plstm_dag)

H, DK, DV = 2, 3, 2
F64 = 1e-12

# one compiled function per shape (eager op-by-op dispatch compiles every primitive separately
# and is much slower here); graphs are static pytrees without leaves
plstm_1d = jax.jit(plstm_1d, static_argnames="chunk_size")
plstm_2d = jax.jit(plstm_2d)
plstm_dag = jax.jit(plstm_dag, static_argnames="method")


def uni(rng, *shape):
    return rng.uniform(-1, 1, shape)


# ---- naive references (NumPy, float64, one edge / one cell at a time) ------------------


def naive_dag(g, q, k, v, S, T, M, D, xp=np):
    """Edge states in topological order of edges, straight from the definition."""
    order = sorted(range(g.num_edges), key=lambda e: g.node_depth[g.edges[e, 0]])
    C = {}
    for e in order:
        s = g.edges[e, 0]
        c = S[e][:, None, None] * xp.einsum("hd,hv->hdv", k[s], v[s])
        for p, (ei, eo) in enumerate(g.line_edges.tolist()):
            if eo == e:
                c = c + T[p][:, None, None] * C[ei]
        C[e] = c
    out = [D[n][:, None] * xp.einsum("hd,hd->h", q[n], k[n])[:, None] * v[n]
           for n in range(g.num_nodes)]
    for e in range(g.num_edges):
        n = g.edges[e, 1]
        out[n] = out[n] + M[e][:, None] * xp.einsum("hd,hdv->hv", q[n], C[e])
    return xp.stack(out)


def naive_1d(q, k, v, S, T, M, D, xp=np):
    C = xp.zeros((q.shape[1], q.shape[2], v.shape[2]))
    out = []
    for t in range(q.shape[0]):
        qk = xp.einsum("hd,hd->h", q[t], k[t])
        out.append(M[t][:, None] * xp.einsum("hd,hdv->hv", q[t], C) + (D[t] * qk)[:, None] * v[t])
        C = T[t][:, None, None] * C + S[t][:, None, None] * xp.einsum("hd,hv->hdv", k[t], v[t])
    return xp.stack(out)


def naive_2d(q, k, v, S, T, M, D, xp=np):
    X, Y = q.shape[:2]
    zero = xp.zeros((q.shape[2], q.shape[3], v.shape[3]))
    C = {}
    rows = []
    for i in range(X):
        row = []
        for j in range(Y):
            cin = [C[(i - 1, j)][0] if i > 0 else zero, C[(i, j - 1)][1] if j > 0 else zero]
            h = (D[i, j] * xp.einsum("hd,hd->h", q[i, j], k[i, j]))[:, None] * v[i, j]
            for a in range(2):
                h = h + M[i, j, a][:, None] * xp.einsum("hd,hdv->hv", q[i, j], cin[a])
            kv = xp.einsum("hd,hv->hdv", k[i, j], v[i, j])
            C[(i, j)] = [sum(T[i, j, o, a][:, None, None] * cin[a] for a in range(2))
                         + S[i, j, o][:, None, None] * kv for o in range(2)]
            row.append(h)
        rows.append(xp.stack(row))
    return xp.stack(rows)


def args_1d(rng, T):
    return (uni(rng, T, H, DK), uni(rng, T, H, DK), uni(rng, T, H, DV)) + tuple(
        uni(rng, T, H) for _ in range(4))


def args_2d(rng, X, Y):
    return (uni(rng, X, Y, H, DK), uni(rng, X, Y, H, DK), uni(rng, X, Y, H, DV),
            uni(rng, X, Y, 2, H), uni(rng, X, Y, 2, 2, H), uni(rng, X, Y, 2, H), uni(rng, X, Y, H))


def args_dag(rng, g):
    N, E, P = g.num_nodes, g.num_edges, g.num_line_edges
    return (uni(rng, N, H, DK), uni(rng, N, H, DK), uni(rng, N, H, DV), uni(rng, E, H),
            uni(rng, P, H), uni(rng, E, H), uni(rng, N, H))


def grid_to_dag(X, Y, S, T, M):
    """2D gates → per-edge/per-line-edge gates of grid_graph(X, Y) (written independently of
    the library: directions read off the node indices)."""
    g = grid_graph(X, Y)
    direction = np.array([0 if d == s + Y and s // Y + 1 == d // Y else 1 for s, d in g.edges])
    Se = np.array([S[s // Y, s % Y, direction[e]] for e, (s, _) in enumerate(g.edges)]).reshape(-1, H)
    Me = np.array([M[d // Y, d % Y, direction[e]] for e, (_, d) in enumerate(g.edges)]).reshape(-1, H)
    Tp = np.array([T[n // Y, n % Y, direction[eo], direction[ei]]
                   for ei, eo in g.line_edges for n in [g.edges[eo, 0]]]).reshape(-1, H)
    return g, Se, Tp, Me


def random_dag(seed, n=9, e=20):
    return dagify(num_nodes=n, edges=np.random.default_rng(seed).integers(0, n, (e, 2)))


# ---- graphs ------------------------------------------------------------------------------


def test_graph_line_edges_levels_and_helpers():
    edges = np.array([[0, 1], [1, 2], [0, 2], [2, 3], [1, 3]])
    g = Graph.from_edges(4, edges)
    brute = sorted((a, b) for a in range(5) for b in range(5) if edges[a, 1] == edges[b, 0])
    assert g.line_edges.tolist() == [list(p) for p in brute]
    assert g.node_depth.tolist() == [0, 1, 2, 3]
    assert g.edge_level.tolist() == [0, 1, 0, 2, 1]
    # networkx round trip, dagify orients by node order
    assert Graph.from_networkx(nx.DiGraph([(0, 1), (1, 2)])) == chain_graph(3)
    d = dagify(nx.cycle_graph(5))
    assert all(u < v for u, v in d.edges) and d.num_edges == 5
    # disjoint union keeps edge order, offsets nodes
    u, off = disjoint_union([g, chain_graph(2)])
    assert off.tolist() == [0, 4, 6] and u.edges[-1].tolist() == [4, 5]
    # empty and single-node graphs
    assert Graph.from_edges(1, np.zeros((0, 2), int)).num_levels == 0


def test_graph_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"cycle 1 -> 2 -> 3 -> 1|cycle 2 -> 3 -> 1 -> 2|cycle 3 -> 1 -> 2 -> 3"):
        Graph.from_edges(4, [[0, 1], [1, 2], [2, 3], [3, 1]])
    with pytest.raises(ValueError, match="cycle 0 -> 0"):
        Graph.from_edges(2, [[0, 0]])
    with pytest.raises(ValueError, match=r"edges: .*shape \(E, 2\).*\(3,\)"):
        Graph.from_edges(3, [0, 1, 2])
    with pytest.raises(ValueError, match=r"edge 1 = \(1, 5\)"):
        Graph.from_edges(3, [[0, 1], [1, 5]])
    with pytest.raises(ValueError, match="dagify"):
        Graph.from_networkx(nx.path_graph(3))


def test_multitree_pruning_leaves_at_most_one_path():
    for g in (random_dag(0, 10, 30), grid_graph(4, 5)):
        keep = g.multitree_mask()
        line = g.line_edges[keep]
        assert np.bincount(line[:, 1], minlength=g.num_edges).max() <= 1
        # path counts between every pair of edges in the pruned line graph (DP in level order)
        lg = nx.DiGraph(list(map(tuple, line)))
        lg.add_nodes_from(range(g.num_edges))
        for s in range(g.num_edges):
            paths = dict.fromkeys(lg.nodes, 0)
            paths[s] = 1
            for n in nx.topological_sort(lg):
                for m in lg.successors(n):
                    paths[m] += paths[n]
            assert max(paths.values()) <= 1
    # the 2D D-mode mask: at most one incoming transition per edge, only from edges that exist
    m = d_mode_grid_mask(4, 5)
    assert m.sum(-1).max() == 1
    assert m[0, :, :, 0].sum() == 0 and m[:, 0, :, 1].sum() == 0  # [i, j, o, a]: a missing


@pytest.mark.parametrize("size,differ", [(3, 4), (4, 12), (8, 84)])
def test_general_multitree_differs_from_the_grid_d_mode_mask(size, differ):
    """docs/plstm.md: on a grid both are multitrees keeping one transition per edge that has a
    predecessor, but the general rule (highest-level predecessor, ties by edge index) turns
    down → right in the interior where d_mode_grid_mask goes straight."""
    g = grid_graph(size, size)
    down = g.edges[:, 1] - g.edges[:, 0] == size  # grid_graph: node (i, j) = i·Y + j
    m = d_mode_grid_mask(size, size)
    e_in, e_out = g.line_edges[:, 0], g.line_edges[:, 1]
    i, j = np.divmod(g.edges[e_out, 0], size)  # the node where the line edge turns or not
    grid_keep = m[i, j, np.where(down[e_out], 0, 1), np.where(down[e_in], 0, 1)] == 1
    keep = g.multitree_mask()
    assert keep.sum() == grid_keep.sum() and int(np.sum(keep != grid_keep)) == differ
    interior = (i > 0) & (j > 0)
    assert np.all(keep[interior] == down[e_in][interior])  # the general rule: continue from the down edge
    assert np.all(grid_keep[interior] == (down[e_in] == down[e_out])[interior])  # the grid rule: straight


# ---- kernels vs naive loops ------------------------------------------------------------


@pytest.mark.parametrize("method", ["levels", "dense"])
def test_dag_matches_naive_loop(method):
    """One call on a disjoint union (a random DAG, a star — edges but no line edges — and
    isolated nodes: one compile), then the single-node and edge-free graphs on their own."""
    rng = np.random.default_rng(1)
    star = Graph.from_edges(4, [[0, 1], [0, 2], [0, 3]])
    u, _ = disjoint_union([random_dag(1), star, Graph.from_edges(3, np.zeros((0, 2), int))])
    for g in (u, Graph.from_edges(1, np.zeros((0, 2), int)), Graph.from_edges(3, np.zeros((0, 2), int))):
        a = args_dag(rng, g)
        out = plstm_dag(g, *map(jnp.asarray, a), method=method)
        np.testing.assert_allclose(out, naive_dag(g, *a), atol=F64, rtol=0)


@pytest.mark.parametrize("T,chunks", [(1, (64,)), (7, (1,)), (13, (4, 64))])
def test_1d_matches_naive_loop_and_chain_dag(T, chunks):
    rng = np.random.default_rng(T)
    a = args_1d(rng, T)
    ref = naive_1d(*a)
    for L in chunks:  # 13 = 3·4 + 1: a padded last chunk
        np.testing.assert_allclose(plstm_1d(*map(jnp.asarray, a), chunk_size=L), ref, atol=F64, rtol=0)
    q, k, v, S, Tr, M, D = a
    dag = plstm_dag(chain_graph(T), *map(jnp.asarray, (q, k, v, S[:-1], Tr[1:-1], M[1:], D)))
    np.testing.assert_allclose(dag, ref, atol=F64, rtol=0)


@pytest.mark.parametrize("X,Y", [(1, 1), (3, 5), (4, 1)])
def test_2d_matches_naive_loop_and_grid_dag(X, Y):
    rng = np.random.default_rng(X * 10 + Y)
    a = args_2d(rng, X, Y)
    ref = naive_2d(*a)
    np.testing.assert_allclose(plstm_2d(*map(jnp.asarray, a)), ref, atol=F64, rtol=0)
    q, k, v, S, T, M, D = a
    g, Se, Tp, Me = grid_to_dag(X, Y, S, T, M)
    flat = lambda x: x.reshape(X * Y, *x.shape[2:])
    dag = plstm_dag(g, *map(jnp.asarray, (flat(q), flat(k), flat(v), Se, Tp, Me, flat(D))))
    np.testing.assert_allclose(np.asarray(dag).reshape(ref.shape), ref, atol=F64, rtol=0)


def _batch(rng, make, n=2):
    a = [make(rng) for _ in range(n)]
    return a, [jnp.asarray(np.stack(x), jnp.float32) for x in zip(*a)]


def test_float32_jit_and_vmap_1d_2d():
    rng = np.random.default_rng(5)
    a1, b1 = _batch(rng, lambda r: args_1d(r, 9))
    out = jax.vmap(lambda *x: plstm_1d(*x, chunk_size=4))(*b1)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, np.stack([naive_1d(*x) for x in a1]), atol=2e-5, rtol=0)
    a2, b2 = _batch(rng, lambda r: args_2d(r, 3, 4))
    out = jax.vmap(plstm_2d)(*b2)
    np.testing.assert_allclose(out, np.stack([naive_2d(*x) for x in a2]), atol=2e-5, rtol=0)


@pytest.mark.slow
def test_float32_jit_and_vmap_dag():
    rng = np.random.default_rng(6)
    g = random_dag(3)
    ad, bd = _batch(rng, lambda r: args_dag(r, g))
    for method in ("levels", "dense"):
        out = jax.vmap(lambda *x: plstm_dag(g, *x, method=method))(*bd)
        np.testing.assert_allclose(out, np.stack([naive_dag(g, *x) for x in ad]), atol=2e-5, rtol=0)


# ---- gradients vs jax.grad of the naive recursion --------------------------------------


def _grad_check(kernel, naive, args):
    w = np.random.default_rng(0).normal(size=naive(*args).shape)
    xs = [jnp.asarray(x) for x in args]
    fast = jax.jit(jax.grad(lambda xs: jnp.sum(kernel(*xs) * w)))(xs)
    slow = jax.jit(jax.grad(lambda xs: jnp.sum(naive(*xs, xp=jnp) * w)))(xs)  # unrolled loop
    for name, a, b in zip("q k v source transition mark direct".split(), fast, slow):
        np.testing.assert_allclose(a, b, atol=F64, rtol=0, err_msg=name)


@pytest.mark.parametrize("kind", ["1d", "2d", "dag-levels",
                                  pytest.param("dag-dense", marks=pytest.mark.slow)])
def test_gradients_match_naive_recursion(kind):
    rng = np.random.default_rng(7)
    if kind == "1d":
        _grad_check(lambda *x: plstm_1d(*x, chunk_size=2), naive_1d, args_1d(rng, 5))
    elif kind == "2d":
        _grad_check(plstm_2d, naive_2d, args_2d(rng, 2, 3))
    else:
        g = random_dag(4, 6, 10)
        _grad_check(lambda *x: plstm_dag(g, *x, method=kind[4:]),
                    lambda *x, xp=np: naive_dag(g, *x, xp=xp), args_dag(rng, g))


# ---- stabilisation -----------------------------------------------------------------------


def test_p_mode_keeps_states_bounded_on_a_large_grid_and_a_wide_dag():
    """P-mode splits a source's contribution among paths: the states on the edges leaving
    anti-diagonal d sum (in |·|) to at most the number of sources up to d. Raw transitions in
    [0.5, 1] without normalisation grow like 2^d — the check must fail for them."""
    X = Y = 40
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.uniform(0.5, 1.0, (X, Y, 2, 2, 1)))
    ones = lambda *s: jnp.ones(s)
    total = {}
    for name, tr in (("p", p_mode_grid(raw)), ("raw", raw)):
        # mark 1, q = k = v = 1: H[i, j] = Σ_a C_in[a] + direct(=0)
        h = plstm_2d(ones(X, Y, 1, 1), ones(X, Y, 1, 1), ones(X, Y, 1, 1), ones(X, Y, 2, 1), tr,
                     ones(X, Y, 2, 1), jnp.zeros((X, Y, 1)))[..., 0, 0]
        i, j = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
        total[name] = np.bincount((i + j).ravel(), np.abs(np.asarray(h)).ravel())
    sources_before = np.cumsum(np.bincount((i + j).ravel()))[:-1]  # cells on diagonals < d
    assert np.all(total["p"][1:] <= 2 * sources_before + 1e-9)  # 2 outgoing edges per source
    assert np.any(total["raw"][1:] > 2 * sources_before)
    # a layered DAG, 6 nodes per layer fully connected to the next, 12 layers
    W, L = 6, 12
    edges = [(l * W + a, (l + 1) * W + b) for l in range(L - 1) for a in range(W) for b in range(W)]
    g = Graph.from_edges(W * L, edges)
    tr = p_mode_transitions(g, jnp.asarray(rng.uniform(-1, 1, (g.num_line_edges, 1))))
    sums = jax.ops.segment_sum(jnp.abs(tr), jnp.asarray(g.line_edges[:, 0]), num_segments=g.num_edges)
    assert float(sums.max()) <= 1 + 1e-12
    N = g.num_nodes
    h = plstm_dag(g, jnp.ones((N, 1, 1)), jnp.ones((N, 1, 1)), jnp.ones((N, 1, 1)),
                  jnp.ones((g.num_edges, 1)), tr, jnp.ones((g.num_edges, 1)), jnp.zeros((N, 1)))
    # each node's incoming states come from at most N·W sources of weight ≤ 1 per path length
    assert float(jnp.abs(h).max()) <= W * N


# ---- errors ------------------------------------------------------------------------------


def test_kernel_errors_name_argument_and_shapes():
    rng = np.random.default_rng(0)
    a = [jnp.asarray(x) for x in args_1d(rng, 4)]
    with pytest.raises(ValueError, match=r"transition must have shape \(4, 2\), got \(3, 2\)"):
        plstm_1d(*a[:4], a[4][:3], *a[5:])
    with pytest.raises(TypeError, match="v has float32"):
        plstm_1d(a[0], a[1], a[2].astype(jnp.float32), *a[3:])
    with pytest.raises(ValueError, match="chunk_size"):
        plstm_1d(*a, chunk_size=0)
    g = random_dag(0)
    ad = [jnp.asarray(x) for x in args_dag(rng, g)]
    with pytest.raises(ValueError, match=rf"source must have shape \({g.num_edges}, 2\)"):
        plstm_dag(g, *ad[:3], ad[3][:-1], *ad[4:])
    with pytest.raises(TypeError, match="graph must be a pararnn.plstm.Graph"):
        plstm_dag(np.zeros((3, 2)), *ad)
    with pytest.raises(ValueError, match=r"mark must have shape \(2, 3, 2, 2\)"):
        b = [jnp.asarray(x) for x in args_2d(rng, 2, 3)]
        plstm_2d(*b[:5], b[5][:, :, :1], b[6])
