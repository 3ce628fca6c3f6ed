"""Starting curves for geodesics from shortest paths in a neighbourhood graph of latent
points whose edges are weighted by their length in the metric (the idea of stochman's
`DiscretizedManifold`): they go around high-metric ridges that energy minimisation from
the straight line cannot cross."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..validate import as_tensor, positive_int
from .curves import curve_length
from .metrics import Metric, as_points, check_user_metric, latent_dim, pair_rows

# shortest-path sources per Dijkstra call: its distance and predecessor rows are
# (sources, vertices), so this bounds their memory (30 MB for 10k vertices)
_SOURCES_PER_CALL = 256


@dataclass
class GraphCurves:
    """Shortest graph paths between pairs of endpoints, one row per pair.

    `points` are the paths resampled at `n_points` points equally spaced in the mean of
    their metric and Euclidean arc lengths, each a fraction of its total (the straight line
    where `found` is False); `length` is a path's metric length, the sum of its edge
    weights (inf where no path joins the endpoints).
    """

    points: Tensor  # (B, n_points, d)
    length: Tensor  # (B,)
    found: Tensor  # (B,) bool


def graph_curves(
    metric: Metric,
    z_start: Tensor,
    z_end: Tensor,
    nodes: Tensor,
    *,
    k: int = 10,
    n_points: int = 50,
    subdivisions: int = 4,
    chunk_size: int = 4096,
    progress: bool = False,
) -> GraphCurves:
    """Shortest paths from `z_start (B, d)` to `z_end (B, d)` (or `(d,)`) through a graph on
    `nodes (M, d)` and the endpoints.

    Every node is joined to its `k` Euclidean nearest nodes (and they to it), every endpoint
    to its `k` nearest nodes, and a pair's endpoints to each other where no farther apart
    than the max of their distances to their `k`-th nearest node (`_graph_edges`): paths
    pass through no other pair's endpoint, so a pair's path is the same alone as in any
    batch. An edge weighs the metric length of the straight segment between its vertices,
    split into `subdivisions` pieces (`curve_length`), `chunk_size` edges at a time; edges
    of non-finite length are left out. Paths are Dijkstra's, resampled linearly inside edges
    at `n_points` points equally spaced in the mean of the metric and the Euclidean arc
    length fractions: metric arc length alone, the constant speed that energy minimisation
    converges to, leaves low-metric stretches with few points, whose long chords can cut
    across the ridge the path went around (and a zero metric collapses them to one chord).
    Nodes are, e.g., training codes or the 2-D grid of `metrics.grid_points`; their kNN
    graph need not be connected (pairs it does not join get the straight line and
    `found=False`). Points are cast to the metric's dtype and device (`metrics.as_points`),
    and the results come in that dtype. `progress` shows a bar over the edges' lengths, the
    metric's share of the work (the graph of 4,000 codes of a VAE's pull-back took 7 s in
    bench/graph_geodesics.py).
    """
    from scipy.sparse import coo_matrix  # here: scipy adds to `import aetk`'s time
    from scipy.sparse.csgraph import dijkstra

    k, n_points = positive_int(k, "k"), positive_int(n_points, "n_points", 2)
    subdivisions = positive_int(subdivisions, "subdivisions")
    chunk_size = positive_int(chunk_size, "chunk_size")
    z_start = as_points(metric, z_start, "z_start")
    z_end = as_points(metric, z_end, "z_end").to(dtype=z_start.dtype, device=z_start.device)
    z_start, z_end = pair_rows(z_start, z_end)
    b, d = z_start.shape
    nodes = as_tensor(nodes, z_start.dtype, z_start.device)
    if nodes.dim() != 2 or nodes.shape[1] != d:
        raise ValueError(f"nodes must be (M, {d}) like the endpoints, got {tuple(nodes.shape)}")
    expected = latent_dim(metric)
    if expected is not None and d != expected:
        raise ValueError(f"the points have {d} coordinates but the metric's latent space "
                         f"has {expected}")
    for name, value in (("nodes", nodes), ("z_start", z_start), ("z_end", z_end)):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite")

    # vertices: the distinct nodes (copies of a point would spend each other's neighbour
    # slots on edges of length zero), then the distinct starts and the distinct ends
    unique = [torch.unique(p, dim=0, return_inverse=True) for p in (nodes, z_start, z_end)]
    vertices = torch.cat([u for u, _ in unique])
    m, n_starts = len(unique[0][0]), len(unique[1][0])
    source = m + unique[1][1].cpu().numpy()
    target = m + n_starts + unique[2][1].cpu().numpy()
    coords = vertices.detach().cpu().double().numpy()
    edges, both = _graph_edges(coords, m, n_starts, source, target, k)
    weight = _edge_lengths(metric, vertices, torch.as_tensor(edges, device=vertices.device),
                           subdivisions, chunk_size, progress)
    edges, weight = np.concatenate([edges, edges[:both, ::-1]]), np.concatenate(
        [weight, weight[:both]])
    keep = np.isfinite(weight)
    graph = coo_matrix((weight[keep], (edges[keep, 0], edges[keep, 1])),
                       shape=(len(coords), len(coords))).tocsr()

    points = np.empty((b, n_points, d))
    length = np.empty(b)
    sources = np.unique(source)
    for batch in np.array_split(sources, -(-len(sources) // _SOURCES_PER_CALL)):
        dist, pred = dijkstra(graph, directed=True, indices=batch, return_predecessors=True)
        row_of = {int(s): r for r, s in enumerate(batch)}
        for p in np.flatnonzero(np.isin(source, batch)):
            r, path = row_of[int(source[p])], [int(target[p])]
            length[p] = dist[r, path[0]]
            if np.isfinite(length[p]):
                while path[-1] != source[p]:
                    path.append(int(pred[r, path[-1]]))
                path.reverse()
                polyline = coords[path]
                arc = _fraction(dist[r, path]) + _fraction(
                    np.concatenate([[0.0], np.linalg.norm(np.diff(polyline, axis=0), axis=1)
                                    .cumsum()]))
            else:  # no path: the straight line, as a two-vertex polyline
                arc, polyline = np.array([0.0, 1.0]), coords[[source[p], target[p]]]
            at = np.linspace(0.0, arc[-1], n_points)
            points[p] = np.stack([np.interp(at, arc, polyline[:, j]) for j in range(d)], 1)

    points = torch.as_tensor(points, dtype=z_start.dtype, device=z_start.device)
    points[:, 0], points[:, -1] = z_start, z_end  # exactly, whatever the rounding
    # the edges' lengths took negative squared speeds as 0
    check_user_metric(metric, points, " of a shortest graph path")
    length = torch.as_tensor(length, dtype=z_start.dtype, device=z_start.device)
    return GraphCurves(points=points, length=length, found=torch.isfinite(length))


def _graph_edges(coords: np.ndarray, m: int, n_starts: int, source: np.ndarray,
                 target: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The directed edges `(E, 2)` of the graph on the vertices `coords`: the `m` nodes, then
    the starts and the ends, and how many of them (the first) go both ways. Each node is
    joined both ways to its `k` nearest nodes, each start to its `k` nearest nodes by edges
    out of it and each end by edges into it, and a pair's start to its end where they are
    no farther apart than the max of the two endpoints' reaches (each one's distance to its
    `k`-th nearest node). No path passes through another pair's endpoint, so a pair's
    path does not depend on the other pairs (joined to the endpoints as vertices, the
    other pairs' endpoints took neighbour slots and bridged gaps: alone, a pair's graph
    path was up to 16 % longer on a ReLU pull-back)."""
    from scipy.spatial import KDTree

    reach = np.full(len(coords), np.inf)  # an endpoint's distance to its k-th nearest node
    node_edges, out_edges = np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
    if m:
        tree = KDTree(coords[:m])
        # ranks 1 .. k + 1: the nearest is the node itself, left out below
        _, near = tree.query(coords[:m], k=np.arange(1, min(k + 1, m) + 1))
        rows, cols = np.repeat(np.arange(m), near.shape[1]), near.reshape(-1)
        node_edges = np.unique(np.sort(np.stack([rows, cols], 1)[rows != cols], 1), axis=0)
        dist, near = tree.query(coords[m:], k=np.arange(1, min(k, m) + 1))
        reach[m:] = dist[:, -1]
        ends = np.arange(m, len(coords)) >= m + n_starts
        rows, cols = np.repeat(np.arange(m, len(coords)), near.shape[1]), near.reshape(-1)
        flip = np.repeat(ends, near.shape[1])
        out_edges = np.stack([np.where(flip, cols, rows), np.where(flip, rows, cols)], 1)
    pairs = np.unique(np.stack([source, target], 1), axis=0)
    gap = np.linalg.norm(coords[pairs[:, 0]] - coords[pairs[:, 1]], axis=1)
    pairs = pairs[gap <= np.maximum(reach[pairs[:, 0]], reach[pairs[:, 1]])]
    return np.concatenate([node_edges, out_edges, pairs]).astype(np.int64), len(node_edges)


def _fraction(arc: np.ndarray) -> np.ndarray:
    """A cumulative arc length as a fraction of its total (zeros for a total of zero)."""
    return arc / arc[-1] if arc[-1] > 0 else np.zeros_like(arc)


def _edge_lengths(metric: Metric, vertices: Tensor, edges: Tensor, subdivisions: int,
                  chunk_size: int, progress: bool = False) -> np.ndarray:
    """Metric lengths (float64) of the straight segments between the vertex pairs
    `edges (E, 2)`, each split into `subdivisions` pieces."""
    s = torch.linspace(0, 1, subdivisions + 1, dtype=vertices.dtype, device=vertices.device)
    s = s.reshape(1, -1, 1)
    parts = []
    with torch.no_grad(), tqdm(total=len(edges), disable=not progress, desc="graph edges",
                               unit="edge") as bar:
        for chunk in edges.split(chunk_size):
            u, v = vertices[chunk[:, 0]].unsqueeze(1), vertices[chunk[:, 1]].unsqueeze(1)
            parts.append(curve_length(metric, u + s * (v - u)).double().cpu())
            bar.update(len(chunk))
    return torch.cat(parts).numpy() if parts else np.zeros(0)
