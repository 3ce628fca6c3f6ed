"""Choosing RHVAE centroids: a few training points that cover the data."""

from __future__ import annotations

import numpy as np
import torch

METHODS = ("kmeans", "kmeans++", "kmedoids")
MAX_POINTS = 10_000
"""Larger training sets are subsampled (seeded) to this many points before clustering."""


def select_centroids(x: torch.Tensor, n: int, method: str = "kmeans", seed: int = 0
                     ) -> torch.Tensor:
    """Indices of `n` distinct rows of `x` (flattened per row) to serve as centroids.

    `"kmeans"`: k-means (k-means++ initialised) cluster centres, each snapped to its nearest
    unused data point. `"kmeans++"`: the k-means++ seeding itself (data points already).
    `"kmedoids"`: Euclidean k-medoids (AETK's choice) by alternating updates from the
    k-means++ seeding.
    """
    from sklearn.cluster import KMeans, kmeans_plusplus  # here: 1.2 s of `import aetk`

    if method not in METHODS:
        raise ValueError(f"unknown centroid method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 < n <= len(x):
        raise ValueError(f"cannot choose {n} centroids from {len(x)} training points")
    rng = np.random.default_rng(seed)
    pool = np.arange(len(x))
    if len(x) > MAX_POINTS:
        pool = np.sort(rng.choice(len(x), MAX_POINTS, replace=False))
    data = x.detach()[torch.as_tensor(pool, device=x.device)].flatten(1).double().cpu().numpy()
    n_distinct = len(np.unique(data, axis=0))
    if n_distinct < n:
        raise ValueError(f"cannot choose {n} distinct centroids: the training data has only "
                         f"{n_distinct} distinct points")
    if method == "kmeans++":
        _, idx = kmeans_plusplus(data, n, random_state=seed)
        return torch.as_tensor(pool[idx])
    if method == "kmedoids":
        return torch.as_tensor(pool[kmedoids(data, n, seed)])
    centres = KMeans(n, n_init=1, random_state=seed).fit(data).cluster_centers_
    return torch.as_tensor(pool[_snap(centres, data)])


def _snap(centres: np.ndarray, data: np.ndarray) -> np.ndarray:
    """For each centre in turn, the nearest data point not taken by an earlier one."""
    dist = (centres**2).sum(1)[:, None] - 2 * centres @ data.T + (data**2).sum(1)[None]
    chosen = np.empty(len(centres), dtype=np.int64)
    for i, row in enumerate(dist):
        chosen[i] = int(np.argmin(row))
        dist[:, chosen[i]] = np.inf
    return chosen


def kmedoids(data: np.ndarray, n: int, seed: int = 0, max_iter: int = 100) -> np.ndarray:
    """Indices of `n` medoids of the rows of `data` (Euclidean distance) by the alternating
    algorithm (Park & Jun 2009): assign every point to its nearest medoid, move each medoid
    to the member with the least summed distance to its cluster, until none moves. Starts
    from the k-means++ seeding. Each medoid is kept in its own cluster, so no cluster is
    empty and the medoids stay distinct.

    O(n_points x n) memory, and the within-cluster distances in blocks of rows (PAM's swap
    phase would need all n_points^2 distances)."""
    from sklearn.cluster import kmeans_plusplus

    _, medoids = kmeans_plusplus(data, n, random_state=seed)
    sq = (data * data).sum(1)
    for _ in range(max_iter):
        labels = _distances(data, sq, medoids).argmin(1)
        labels[medoids] = np.arange(n)
        moved = medoids.copy()
        for j in range(n):
            members = np.flatnonzero(labels == j)
            cost = np.concatenate([_distances(data, sq, members, rows=members[i:i + 1024]).sum(1)
                                   for i in range(0, len(members), 1024)])
            moved[j] = members[np.argmin(cost)]
        if np.array_equal(moved, medoids):
            break
        medoids = moved
    return medoids


def _distances(data: np.ndarray, sq: np.ndarray, cols: np.ndarray,
               rows: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances between `data[rows]` (all rows by default) and `data[cols]`."""
    a, sa = (data, sq) if rows is None else (data[rows], sq[rows])
    d2 = sa[:, None] - 2.0 * a @ data[cols].T + sq[cols][None]
    return np.sqrt(np.maximum(d2, 0.0))
