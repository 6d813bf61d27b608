"""Static directed acyclic graphs for pLSTM: edges, line graph, levels, helpers.

A :class:`Graph` is plain NumPy data fixed at trace time: the kernels read its index arrays
while tracing, so a graph is hashable and registered as a pytree *without leaves* (it can be
passed straight into ``jax.jit``/``jax.vmap``'d functions and is treated as static).

Conventions
- ``edges`` (E, 2) int64: ``edges[e] = (src, dst)``, in the order given.
- ``line_edges`` (P, 2) int64: every pair ``(e_in, e_out)`` with ``dst(e_in) == src(e_out)``,
  sorted lexicographically by ``(e_in, e_out)``. Transitions of ``plstm_dag`` are indexed by
  this order.
- ``node_depth`` (N,): longest path from any root to the node; ``edge_level[e] =
  node_depth[src(e)]``. A line edge always goes from a lower to a higher level, so processing
  edges level by level respects every dependency.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import jax
import networkx as nx
import numpy as np

__all__ = ["Graph", "chain_graph", "grid_graph", "dagify", "disjoint_union"]


def _as_edges(num_nodes: int, edges) -> np.ndarray:
    if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 1:
        raise ValueError(f"num_nodes: expected a positive int, got {num_nodes!r}.")
    arr = np.asarray(edges)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"edges: expected an int array of shape (E, 2) of (src, dst), got shape "
                         f"{arr.shape}.")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"edges: expected integer node indices, got dtype {arr.dtype}.")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr >= num_nodes)
    if bad.any():
        e = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"edges: edge {e} = {tuple(arr[e].tolist())} has a node outside [0, {num_nodes}).")
    return arr


@dataclasses.dataclass(frozen=True, eq=False)
class Graph:
    """A DAG with its line graph. Build with :meth:`from_edges`, :meth:`from_networkx`,
    :func:`dagify`, :func:`chain_graph`, :func:`grid_graph` or :func:`disjoint_union`."""

    num_nodes: int
    edges: np.ndarray  # (E, 2) int64
    line_edges: np.ndarray  # (P, 2) int64
    node_depth: np.ndarray  # (N,) int64
    edge_level: np.ndarray  # (E,) int64

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def from_edges(cls, num_nodes: int, edges) -> "Graph":
        """``edges``: int array (E, 2) of (src, dst). Raises ValueError naming a cycle if the
        graph is not acyclic (self loops and repeated edges are allowed only if acyclic:
        repeated edges are kept as parallel edges)."""
        e = _as_edges(num_nodes, edges)
        g = nx.MultiDiGraph()
        g.add_nodes_from(range(num_nodes))
        g.add_edges_from(map(tuple, e.tolist()))
        if not nx.is_directed_acyclic_graph(g):
            cycle = [u for u, _, *_ in nx.find_cycle(g)]
            raise ValueError(f"edges: the graph has a cycle {' -> '.join(map(str, cycle + cycle[:1]))}"
                             "; pLSTM needs a DAG (use dagify() to orient an undirected graph).")
        depth = np.zeros(num_nodes, np.int64)
        for n in nx.topological_sort(g):
            for _, m in g.out_edges(n):
                depth[m] = max(depth[m], depth[n] + 1)
        # line edges: for every node, incoming × outgoing edge indices
        pairs = []
        out_by_node = [[] for _ in range(num_nodes)]
        for idx, (s, _) in enumerate(e.tolist()):
            out_by_node[s].append(idx)
        for e_in in range(len(e)):
            for e_out in out_by_node[e[e_in, 1]]:
                pairs.append((e_in, e_out))
        line = np.asarray(pairs, np.int64).reshape(-1, 2)
        return cls(int(num_nodes), e, line, depth, depth[e[:, 0]] if len(e) else np.zeros(0, np.int64))

    @classmethod
    def from_networkx(cls, g: nx.DiGraph) -> "Graph":
        """A directed networkx graph; nodes are numbered in ``g.nodes`` order. Undirected
        graphs need an orientation first: use :func:`dagify`."""
        if not g.is_directed():
            raise ValueError("g: expected a directed networkx graph, got an undirected one; "
                             "use pararnn.plstm.dagify(g) to orient it by node order.")
        index = {n: i for i, n in enumerate(g.nodes)}
        return cls.from_edges(len(index), [(index[u], index[v]) for u, v, *_ in g.edges])

    # ---- derived structure -------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        return int(self.edges.shape[0])

    @property
    def num_line_edges(self) -> int:
        return int(self.line_edges.shape[0])

    @property
    def num_levels(self) -> int:
        """Number of edge levels (0 for a graph without edges)."""
        return int(self.edge_level.max()) + 1 if self.num_edges else 0

    def level_schedule(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Line edges grouped by the level of ``e_out`` (levels 1 … L−1), padded:
        (p, e_in, e_out) each (L−1, Pmax) with padding p = P, e_in = e_out = E (dummies)."""
        lv = self.edge_level[self.line_edges[:, 1]] if self.num_line_edges else np.zeros(0, np.int64)
        L = self.num_levels
        groups = [np.nonzero(lv == l)[0] for l in range(1, L)]
        width = max([len(g) for g in groups] + [1])
        p = np.full((max(L - 1, 0), width), self.num_line_edges, np.int64)
        ein = np.full_like(p, self.num_edges)
        eout = np.full_like(p, self.num_edges)
        for r, g in enumerate(groups):
            p[r, :len(g)] = g
            ein[r, :len(g)] = self.line_edges[g, 0]
            eout[r, :len(g)] = self.line_edges[g, 1]
        return p, ein, eout

    def multitree_mask(self) -> np.ndarray:
        """(P,) bool: the line edges kept by D-mode pruning. Every edge keeps at most one
        incoming line edge — the one from the predecessor edge of highest level (ties: lowest
        index) — so the pruned line graph is an in-forest, hence a multitree (at most one
        directed path between any two edges)."""
        keep = np.zeros(self.num_line_edges, bool)
        best: dict[int, int] = {}
        for p, (e_in, e_out) in enumerate(self.line_edges.tolist()):
            b = best.get(e_out)
            if b is None or self.edge_level[e_in] > self.edge_level[self.line_edges[b, 0]]:
                best[e_out] = p
        keep[list(best.values())] = True
        return keep

    def to_networkx(self) -> nx.MultiDiGraph:
        g = nx.MultiDiGraph()
        g.add_nodes_from(range(self.num_nodes))
        g.add_edges_from(map(tuple, self.edges.tolist()))
        return g

    # ---- static-ness: hash/eq by content, pytree without leaves ------------------------
    def _key(self):
        return (self.num_nodes, self.edges.tobytes())

    def __hash__(self) -> int:
        return hash(self._key())

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self._key() == other._key()

    def __repr__(self) -> str:
        return (f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"num_line_edges={self.num_line_edges}, num_levels={self.num_levels})")


jax.tree_util.register_pytree_node(Graph, lambda g: ((), g), lambda g, _: g)


def chain_graph(length: int) -> Graph:
    """The chain 0 → 1 → … → length−1; edge t is (t, t+1), line edge t−1 is (t−1, t)."""
    return Graph.from_edges(length, np.stack([np.arange(length - 1), np.arange(1, length)], 1))


def grid_graph(x: int, y: int) -> Graph:
    """The X×Y grid, node (i, j) = i·Y + j. Edges: first all direction-0 edges (i, j)→(i+1, j)
    in row-major order of (i, j), then all direction-1 edges (i, j)→(i, j+1)."""
    node = np.arange(x * y).reshape(x, y)
    down = np.stack([node[:-1].ravel(), node[1:].ravel()], 1)
    right = np.stack([node[:, :-1].ravel(), node[:, 1:].ravel()], 1)
    return Graph.from_edges(x * y, np.concatenate([down, right]).reshape(-1, 2))


def dagify(graph: nx.Graph | None = None, *, num_nodes: int | None = None,
           edges: Iterable[Sequence[int]] | None = None) -> Graph:
    """Orient an undirected graph by node order (u → v for u < v), which is always acyclic.
    Pass a networkx graph (nodes numbered in ``graph.nodes`` order) or ``num_nodes`` and an
    (E, 2) ``edges`` array of undirected pairs. Self loops are dropped; duplicates merged."""
    if graph is not None:
        index = {n: i for i, n in enumerate(graph.nodes)}
        num_nodes = len(index)
        pairs = [(index[u], index[v]) for u, v, *_ in graph.edges]
    elif num_nodes is not None:
        pairs = _as_edges(num_nodes, edges if edges is not None else []).tolist()
    else:
        raise ValueError("dagify: pass a networkx graph or num_nodes= and edges=.")
    oriented = sorted({(min(u, v), max(u, v)) for u, v in pairs if u != v})
    return Graph.from_edges(num_nodes, np.asarray(oriented, np.int64).reshape(-1, 2))


def disjoint_union(graphs: Sequence[Graph]) -> tuple[Graph, np.ndarray]:
    """Batch graphs of different sizes into one graph. Returns (union, node_offsets (G+1,)):
    graph g's nodes are ``offsets[g]:offsets[g+1]`` and its edges keep their order, so stack
    node arrays with ``np.concatenate`` and per-edge gates likewise. Line edges of the union
    are those of the parts, each part's block in its own order."""
    if not graphs:
        raise ValueError("graphs: expected at least one Graph, got none.")
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs])
    edges = np.concatenate([g.edges + o for g, o in zip(graphs, offsets)]).reshape(-1, 2)
    return Graph.from_edges(int(offsets[-1]), edges), offsets
