"""Latent traversals: what each latent dimension does to the decoder's output.

A traversal holds every coordinate of a reference code fixed and sweeps one, decoding the
decoder's point prediction at each step. The sweep spans the codes' own spread along that
dimension (a quantile range), not the prior's: an AE's, a WAE's or a VQ-VAE's codes need
not follow N(0, I), and a collapsed dimension then shows as a row that does not change.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .distributions import mean
from .models.base import Model
from .nets import evaluating
from .validate import as_tensor, positive_int


class Traversal(NamedTuple):
    """`decoded (k, n_steps, *features)`: the point predictions along each of the `k`
    traversed dimensions `dims (k,)` at the values `values (k, n_steps)`, all other
    coordinates at `reference (d,)`."""

    decoded: Tensor
    values: Tensor
    dims: Tensor
    reference: Tensor


def _check(codes: Tensor, quantiles: tuple[float, float], latent_dim: int) -> Tensor:
    codes = as_tensor(codes, None).detach()  # a reference without the encoder's graph
    if codes.dim() != 2 or len(codes) < 2:
        raise ValueError(f"codes must be (N, d) with N >= 2, got {tuple(codes.shape)}")
    if codes.shape[1] != latent_dim:
        raise ValueError(f"codes have {codes.shape[1]} dimensions, but the model's latent "
                         f"space has {latent_dim}")
    if not torch.isfinite(codes).all():
        raise ValueError("the codes contain NaN or infinite values")
    lo, hi = quantiles
    if not 0 <= lo < hi <= 1:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles}")
    return codes


def _steps(n_steps: float) -> int:
    return positive_int(n_steps, "n_steps", 2)


def _sweep(codes: Tensor, n_steps: int, quantiles: tuple[float, float]) -> Tensor:
    """`(d, n_steps)`: evenly spaced values from each dimension's low to high quantile."""
    q = torch.tensor(quantiles, dtype=codes.dtype, device=codes.device)
    lo, hi = torch.quantile(codes, q, dim=0)
    t = torch.linspace(0, 1, n_steps, dtype=codes.dtype, device=codes.device)
    return lo[:, None] + (hi - lo)[:, None] * t


@torch.no_grad()
def _decode(model: Model, z: Tensor, total_count: float | None) -> Tensor:
    param = next(model.parameters())
    with evaluating(model):
        p = model.decode(z.to(param.device, param.dtype))
    return mean(p, total_count=total_count).to(z.device)


def latent_traversal(model: Model, codes: Tensor, *, n_steps: int = 9, max_dims: int = 10,
                     quantiles: tuple[float, float] = (0.02, 0.98),
                     total_count: float | None = None) -> Traversal:
    """Traverse the `max_dims` dimensions along which the codes `(N, d)` (e.g. the encoder's
    means on the validation data) vary most, most varied first, from the codes' low to high
    quantile in `n_steps` steps, around their coordinate-wise median. Call it inside
    `model.given(c)` for a conditional model. `total_count`: a multinomial decoder's
    expected counts at this one total (e.g. the data's median), not its proportions."""
    n_steps, max_dims = _steps(n_steps), positive_int(max_dims, "max_dims")
    codes = _check(codes, quantiles, model.latent_dim)
    d = codes.shape[1]
    dims = codes.var(0).argsort(descending=True)[:max_dims]
    values = _sweep(codes, n_steps, quantiles)[dims]
    reference = torch.quantile(codes, 0.5, dim=0)
    z = reference.repeat(len(dims), n_steps, 1)  # (k, n_steps, d)
    z[torch.arange(len(dims)), :, dims] = values
    decoded = _decode(model, z.reshape(-1, d), total_count)
    return Traversal(decoded.reshape(len(dims), n_steps, *decoded.shape[1:]), values, dims,
                     reference)


def latent_grid(model: Model, codes: Tensor, *, n_steps: int = 12,
                quantiles: tuple[float, float] = (0.02, 0.98),
                total_count: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """For a 2-D latent space, the decoder's point predictions on an `n_steps x n_steps`
    grid over the codes' quantile range: `decoded (n_steps, n_steps, *features)` with row
    `i` at `z2[i]` (decreasing, as an image is read) and column `j` at `z1[j]`, and the
    axes `z1`, `z2 (n_steps,)`. `total_count` as for `latent_traversal`."""
    n_steps = _steps(n_steps)
    codes = _check(codes, quantiles, model.latent_dim)
    if codes.shape[1] != 2:
        raise ValueError(f"a latent grid needs a 2-D latent space, got {codes.shape[1]}")
    z1, z2 = _sweep(codes, n_steps, quantiles)
    z2 = z2.flip(0)
    grid = torch.stack(torch.meshgrid(z1, z2, indexing="xy"), -1)  # (row: z2, col: z1, 2)
    decoded = _decode(model, grid.reshape(-1, 2), total_count)
    return decoded.reshape(n_steps, n_steps, *decoded.shape[1:]), z1, z2
