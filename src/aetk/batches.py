"""Mini-batches of local neighbourhoods (Skafte, Jorgensen & Hauberg 2019, "Reliable
training and estimation of variance networks"; AETK's `locality_sampler`).

A variance network fitted on uniformly drawn batches sees each region of the data a few
points at a time, too few to estimate a local variance. Locality sampling draws
`n_primary` points uniformly without replacement, then for each of them `n_secondary` of
its `k_neighbors` nearest neighbours (the point itself among them) without replacement:
every batch holds `n_primary` small neighbourhoods, `n_primary * (1 + n_secondary)`
indices in all (a point may appear more than once). Give it to `aetk.fit` as
`batch_sampler`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from .validate import as_tensor


class LocalityBatches:
    """Index batches of local neighbourhoods of the rows of `x (N, ...)`, Euclidean on
    the flattened rows; the neighbours are found once, here. An epoch has
    `batches_per_epoch` batches (default: as many as cover N points once). Called with a
    `torch.Generator` (fit passes its seeded one), it yields `(n_primary * (1 +
    n_secondary),)` index tensors."""

    def __init__(self, x: torch.Tensor | np.ndarray, *, n_primary: int, n_secondary: int,
                 k_neighbors: int, batches_per_epoch: int | None = None) -> None:
        from sklearn.neighbors import NearestNeighbors  # here: sklearn takes 1.2 s to import

        x = as_tensor(x, None).detach()  # an array, DataFrame or list of rows too
        data = np.asarray(x.cpu().reshape(len(x), -1), np.float64)
        n = len(data)
        for name, value in (("n_primary", n_primary), ("n_secondary", n_secondary),
                            ("k_neighbors", k_neighbors), ("batches_per_epoch",
                                                          batches_per_epoch)):
            if value is not None and (isinstance(value, bool) or int(value) != value):
                # 2.5 was truncated to 2 without a word
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 1 <= n_primary <= n:
            raise ValueError(f"n_primary must be in [1, {n}] (the data's rows), got {n_primary}")
        if not 1 <= k_neighbors <= n:
            raise ValueError(f"k_neighbors must be in [1, {n}], got {k_neighbors}")
        if not 0 <= n_secondary <= k_neighbors:
            raise ValueError(f"n_secondary must be in [0, k_neighbors = {k_neighbors}], got "
                             f"{n_secondary}")
        self.n_primary, self.n_secondary = int(n_primary), int(n_secondary)
        self.batch_size = self.n_primary * (1 + self.n_secondary)
        self.n_batches = (math.ceil(n / self.batch_size) if batches_per_epoch is None
                          else int(batches_per_epoch))
        if self.n_batches < 1:
            raise ValueError(f"batches_per_epoch must be positive, got {batches_per_epoch}")
        self.n, self.k_neighbors = n, int(k_neighbors)
        _, neighbours = NearestNeighbors(n_neighbors=self.k_neighbors).fit(data).kneighbors(data)
        self.neighbours = torch.as_tensor(neighbours)  # (N, k), each row's own index among them

    def __len__(self) -> int:
        return self.n_batches

    def __repr__(self) -> str:
        """Its settings: what a checkpoint's fingerprint records of it."""
        return (f"LocalityBatches(n_primary={self.n_primary}, n_secondary={self.n_secondary}, "
                f"k_neighbors={self.k_neighbors}, batches_per_epoch={self.n_batches})")

    def __call__(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        k = self.neighbours.shape[1]
        for _ in range(self.n_batches):
            primary = torch.randperm(self.n, generator=generator)[:self.n_primary]
            # n_secondary of each primary's k neighbours without replacement: the first
            # columns of a random permutation per row (argsort of uniform keys)
            keys = torch.rand(self.n_primary, k, generator=generator)
            pick = keys.argsort(dim=1)[:, :self.n_secondary]
            secondary = self.neighbours[primary].gather(1, pick).flatten()
            yield torch.cat([primary, secondary])
