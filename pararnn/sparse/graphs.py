"""Random-graph connectivity for recurrent networks.

:func:`graph_mask` draws the adjacency of a random graph (networkx generators) as a boolean
``(n, n)`` mask — usable as the recurrent mask of one sparse layer. :func:`random_dag` and
:func:`layer_dag` turn a random graph into a layered network the way Darji's thesis does:
orient every edge from the lower to the higher node index (acyclic by construction), put each
node in the layer given by its longest path from a source, and make each layer a recurrent
layer whose inputs are masked by the DAG's edges — edges between adjacent layers feed the
next layer, longer edges become skip connections.

:func:`block_layout` finds a permutation that makes a mask block diagonal (its weakly
connected components), which the block-sparse cells (:mod:`pararnn.sparse.cells`) exploit.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import networkx as nx
import numpy as np

__all__ = ["GRAPH_KINDS", "graph_mask", "random_graph", "random_dag", "DagLayout", "layer_dag",
           "graph_properties", "block_layout", "block_diagonal_mask"]

#: Kind → (required parameters, description of valid values).
GRAPH_KINDS: dict[str, tuple[str, ...]] = {
    "erdos_renyi": ("p",),
    "watts_strogatz": ("k", "p"),
    "barabasi_albert": ("m",),
}


def _check_probability(kind: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"graph_mask({kind!r}): {name} must be a probability in [0, 1], got {value!r}.")
    return float(value)


def _check_int(kind: str, name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"graph_mask({kind!r}): {name} must be an int in [{low}, {high}], got {value!r}.")
    return int(value)


def random_graph(kind: str, n: int, *, seed: int = 0, **params) -> nx.Graph:
    """The undirected networkx graph behind :func:`graph_mask` (same arguments)."""
    if kind not in GRAPH_KINDS:
        raise ValueError(f"graph_mask: unknown kind {kind!r}; expected one of {sorted(GRAPH_KINDS)}.")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"graph_mask({kind!r}): n must be a positive int, got {n!r}.")
    n = int(n)
    needed = GRAPH_KINDS[kind]
    unknown = sorted(set(params) - set(needed))
    if unknown:
        raise ValueError(f"graph_mask({kind!r}): unknown parameter(s) {unknown}; it takes {list(needed)}.")
    missing = [p for p in needed if p not in params]
    if missing:
        raise ValueError(f"graph_mask({kind!r}): missing parameter(s) {missing}; it takes {list(needed)}.")
    if kind == "erdos_renyi":
        p = _check_probability(kind, "p", params["p"])
        return nx.gnp_random_graph(n, p, seed=seed)
    if kind == "watts_strogatz":
        k = _check_int(kind, "k", params["k"], 0, n - 1)
        if k % 2:  # networkx silently uses k − 1 neighbours for odd k
            raise ValueError(f"graph_mask('watts_strogatz'): k (ring neighbours, k/2 on each side) "
                             f"must be even, got {k}.")
        p = _check_probability(kind, "p", params["p"])
        return nx.watts_strogatz_graph(n, k, p, seed=seed)
    m = _check_int(kind, "m", params["m"], 1, n - 1)
    return nx.barabasi_albert_graph(n, m, seed=seed)


def graph_mask(kind: str, n: int, *, seed: int = 0, **params) -> np.ndarray:
    """Adjacency of a random graph as a boolean ``(n, n)`` array (symmetric, no self-loops).

    Args:
      kind: ``"erdos_renyi"`` (param ``p``: edge probability), ``"watts_strogatz"``
        (``k``: each node joined to its k nearest ring neighbours, k // 2 on each side;
        ``p``: rewiring probability) or ``"barabasi_albert"`` (``m``: edges per new node).
      n: number of nodes (hidden units).
      seed: the same seed gives the same mask.

    Raises:
      ValueError: an unknown ``kind``, a missing or unknown parameter, or a value out of range.

    >>> int(graph_mask("erdos_renyi", 4, p=1.0).sum())  # complete graph: 4·3 directed pairs
    12
    """
    g = random_graph(kind, n, seed=seed, **params)
    return nx.to_numpy_array(g, nodelist=range(int(n)), dtype=bool)


def random_dag(kind: str, n: int, *, seed: int = 0, order: str = "random", **params) -> nx.DiGraph:
    """A random graph (as :func:`graph_mask`) made acyclic by orienting every edge along a
    node order: ``"random"`` (a permutation drawn from ``seed``; sources and depth vary from
    graph to graph) or ``"index"`` (lower → higher node id; for Barabási–Albert the oldest
    hub then becomes the single source)."""
    if order not in ("random", "index"):
        raise ValueError(f"random_dag: order must be 'random' or 'index', got {order!r}.")
    g = random_graph(kind, n, seed=seed, **params)
    rank = np.arange(int(n)) if order == "index" else np.random.default_rng(seed).permutation(int(n))
    dag = nx.DiGraph()
    dag.add_nodes_from(range(int(n)))
    dag.add_edges_from((u, v) if rank[u] < rank[v] else (v, u) for u, v in g.edges())
    return dag


@dataclasses.dataclass(frozen=True)
class DagLayout:
    """A DAG layered by longest path, as masked recurrent layers.

    Attributes:
      layers: node ids of each layer; ``layers[0]`` are the source nodes (no in-edges), which
        read the network input. Node ``v`` is in layer ``longest path from a source to v``.
      input_masks: for every layer ``l >= 1``, a dict ``{j: mask}`` with one boolean mask
        ``(len(layers[j]), len(layers[l]))`` per earlier layer ``j`` that has an edge into
        layer ``l``; ``j == l − 1`` is the ordinary feed-forward input, ``j < l − 1`` a skip
        connection. ``input_masks[0]`` is empty (sources read the whole network input).
      outputs: ``(layer, position)`` of every sink node (no out-edges): what a readout sees.
    """

    layers: tuple[tuple[int, ...], ...]
    input_masks: tuple[dict[int, np.ndarray], ...]
    outputs: tuple[tuple[int, int], ...]

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(len(layer) for layer in self.layers)


def layer_dag(dag: nx.DiGraph) -> DagLayout:
    """Layer a DAG by longest path from the sources (see :class:`DagLayout`).

    Raises:
      ValueError: ``dag`` has a cycle or no nodes.
    """
    if dag.number_of_nodes() == 0:
        raise ValueError("layer_dag: the graph has no nodes.")
    if not nx.is_directed_acyclic_graph(dag):
        raise ValueError("layer_dag: the graph must be a directed acyclic graph (it has a cycle).")
    depth: dict[Any, int] = {}
    for v in nx.topological_sort(dag):
        depth[v] = max((depth[u] + 1 for u in dag.predecessors(v)), default=0)
    n_layers = max(depth.values()) + 1
    layers = tuple(tuple(sorted(v for v in dag if depth[v] == l)) for l in range(n_layers))
    position = {v: (l, layer.index(v)) for l, layer in enumerate(layers) for v in layer}
    masks: list[dict[int, np.ndarray]] = [{} for _ in range(n_layers)]
    for u, v in dag.edges():
        (lu, iu), (lv, iv) = position[u], position[v]
        m = masks[lv].setdefault(lu, np.zeros((len(layers[lu]), len(layers[lv])), bool))
        m[iu, iv] = True
    masks = [dict(sorted(m.items())) for m in masks]
    outputs = tuple(sorted(position[v] for v in dag if dag.out_degree(v) == 0))
    return DagLayout(layers, tuple(masks), outputs)


def graph_properties(dag: nx.DiGraph) -> dict[str, float]:
    """Properties that the thesis relates to accuracy: node/edge counts, sources, sinks,
    layers (longest path + 1), skip edges (spanning more than one layer), mean degree,
    and the clustering coefficient of the undirected graph."""
    layout = layer_dag(dag)
    depth = {v: l for l, layer in enumerate(layout.layers) for v in layer}
    n = dag.number_of_nodes()
    return {
        "nodes": n,
        "edges": dag.number_of_edges(),
        "sources": sum(1 for v in dag if dag.in_degree(v) == 0),
        "sinks": len(layout.outputs),
        "layers": len(layout.layers),
        "skip_edges": sum(1 for u, v in dag.edges() if depth[v] - depth[u] > 1),
        "mean_degree": 2.0 * dag.number_of_edges() / n,
        "clustering": float(nx.average_clustering(dag.to_undirected())),
    }


def block_layout(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
    """A permutation making ``mask`` block diagonal, and the block sizes.

    The blocks are the weakly connected components of the directed graph with an edge
    i → j where ``mask[i, j]``; ``mask[perm][:, perm]`` is block diagonal with blocks of
    ``sizes`` in order (largest first, ties by smallest node). One giant component — the
    usual case for Erdős–Rényi above p ≈ 1/n — means there is no block structure to exploit.

    Args:
      mask: boolean ``(D, D)``.

    Returns:
      ``(perm (D,) int, sizes)`` with ``sum(sizes) == D``.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"block_layout: mask must be square (D, D), got shape {mask.shape}.")
    g = nx.DiGraph()
    g.add_nodes_from(range(mask.shape[0]))
    g.add_edges_from(zip(*np.nonzero(mask)))
    comps = sorted((sorted(c) for c in nx.weakly_connected_components(g)), key=lambda c: (-len(c), c[0]))
    perm = np.array([v for c in comps for v in c], dtype=np.int64)
    return perm, tuple(len(c) for c in comps)


def block_diagonal_mask(blocks: int, block_size: int) -> np.ndarray:
    """``(blocks·block_size,)²`` boolean mask with ``blocks`` dense diagonal blocks."""
    return np.kron(np.eye(blocks, dtype=bool), np.ones((block_size, block_size), bool))
