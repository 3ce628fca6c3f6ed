"""Starting curves for geodesics from shortest paths in a neighbourhood graph of latent
points whose edges are weighted by their length in the metric (the idea of stochman's
`DiscretizedManifold`): they go around high-metric ridges that energy minimisation from
the straight line cannot cross."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..validate import as_tensor, positive_int
from .curves import curve_length
from .metrics import Metric, as_points, latent_dim

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
) -> GraphCurves:
    """Shortest paths from `z_start (B, d)` to `z_end (B, d)` (or `(d,)`) through a graph on
    `nodes (M, d)` and the endpoints.

    Every vertex is joined to its `k` Euclidean nearest neighbours (and they to it); an
    edge weighs the metric length of the straight segment between its vertices, split into
    `subdivisions` pieces (`curve_length`), `chunk_size` edges at a time; edges of
    non-finite length are left out. Paths are Dijkstra's, resampled linearly inside edges
    at `n_points` points equally spaced in the mean of the metric and the Euclidean arc
    length fractions: metric arc length alone, the constant speed that energy minimisation
    converges to, leaves low-metric stretches with few points, whose long chords can cut
    across the ridge the path went around (and a zero metric collapses them to one
    chord). Nodes are, e.g., training codes or the 2-D grid of
    `metrics.grid_points`; their kNN graph need not be connected (pairs it does not join
    get the straight line and `found=False`). Points are cast to the metric's dtype and
    device (`metrics.as_points`), and the results come in that dtype.
    """
    from scipy.sparse import coo_matrix  # here: scipy adds to `import aetk`'s time
    from scipy.sparse.csgraph import dijkstra
    from scipy.spatial import KDTree

    k, n_points = positive_int(k, "k"), positive_int(n_points, "n_points", 2)
    subdivisions = positive_int(subdivisions, "subdivisions")
    chunk_size = positive_int(chunk_size, "chunk_size")
    z_start = as_points(metric, z_start, "z_start")
    z_start = z_start.reshape(-1, z_start.shape[-1])
    z_end = as_points(metric, z_end, "z_end").to(dtype=z_start.dtype, device=z_start.device)
    z_end = z_end.reshape(-1, z_end.shape[-1])
    if z_start.shape != z_end.shape:
        raise ValueError(f"z_start {tuple(z_start.shape)} and z_end {tuple(z_end.shape)} differ")
    b, d = z_start.shape
    if b == 0:
        raise ValueError("give at least one pair of endpoints")
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

    # vertices: the distinct points among nodes and endpoints (copies of a point would
    # spend each other's neighbour slots on edges of length zero)
    vertices, inverse = torch.unique(torch.cat([nodes, z_start, z_end]), dim=0,
                                     return_inverse=True)
    n_vertices = len(vertices)
    source, target = inverse[len(nodes):].cpu().numpy().reshape(2, b)

    coords = vertices.detach().cpu().double().numpy()
    # ranks 1 .. k + 1: the nearest is the vertex itself, left out below
    _, neighbours = KDTree(coords).query(coords, k=np.arange(1, min(k + 1, n_vertices) + 1))
    rows = np.repeat(np.arange(n_vertices), neighbours.shape[1])
    cols = neighbours.reshape(-1)
    edges = np.unique(np.sort(np.stack([rows, cols], 1)[rows != cols], 1), axis=0)
    weight = _edge_lengths(metric, vertices, torch.as_tensor(edges, device=vertices.device),
                           subdivisions, chunk_size)
    keep = np.isfinite(weight)
    graph = coo_matrix((weight[keep], (edges[keep, 0], edges[keep, 1])),
                       shape=(n_vertices, n_vertices)).tocsr()

    points = np.empty((b, n_points, d))
    length = np.empty(b)
    sources = np.unique(source)
    for batch in np.array_split(sources, -(-len(sources) // _SOURCES_PER_CALL)):
        dist, pred = dijkstra(graph, directed=False, indices=batch, return_predecessors=True)
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
    length = torch.as_tensor(length, dtype=z_start.dtype, device=z_start.device)
    return GraphCurves(points=points, length=length, found=torch.isfinite(length))


def _fraction(arc: np.ndarray) -> np.ndarray:
    """A cumulative arc length as a fraction of its total (zeros for a total of zero)."""
    return arc / arc[-1] if arc[-1] > 0 else np.zeros_like(arc)


def _edge_lengths(metric: Metric, vertices: Tensor, edges: Tensor, subdivisions: int,
                  chunk_size: int) -> np.ndarray:
    """Metric lengths (float64) of the straight segments between the vertex pairs
    `edges (E, 2)`, each split into `subdivisions` pieces."""
    s = torch.linspace(0, 1, subdivisions + 1, dtype=vertices.dtype, device=vertices.device)
    s = s.reshape(1, -1, 1)
    parts = []
    with torch.no_grad():
        for chunk in edges.split(chunk_size):
            u, v = vertices[chunk[:, 0]].unsqueeze(1), vertices[chunk[:, 1]].unsqueeze(1)
            parts.append(curve_length(metric, u + s * (v - u)).double().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros(0)
