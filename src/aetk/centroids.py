"""Choosing RHVAE centroids: a few training points that cover the data."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans, kmeans_plusplus

METHODS = ("kmeans", "kmeans++")
MAX_POINTS = 10_000
"""Larger training sets are subsampled (seeded) to this many points before clustering."""


def select_centroids(x: torch.Tensor, n: int, method: str = "kmeans", seed: int = 0
                     ) -> torch.Tensor:
    """Indices of `n` distinct rows of `x` (flattened per row) to serve as centroids.

    `"kmeans"`: k-means (k-means++ initialised) cluster centres, each snapped to its nearest
    unused data point. `"kmeans++"`: the k-means++ seeding itself (data points already).
    """
    if method not in METHODS:
        raise ValueError(f"unknown centroid method {method!r}; valid: {', '.join(METHODS)}")
    if not 0 < n <= len(x):
        raise ValueError(f"cannot choose {n} centroids from {len(x)} training points")
    rng = np.random.default_rng(seed)
    pool = np.arange(len(x))
    if len(x) > MAX_POINTS:
        pool = np.sort(rng.choice(len(x), MAX_POINTS, replace=False))
    data = x.detach()[torch.as_tensor(pool, device=x.device)].flatten(1).double().cpu().numpy()
    if method == "kmeans++":
        _, idx = kmeans_plusplus(data, n, random_state=seed)
        return torch.as_tensor(pool[idx])
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
