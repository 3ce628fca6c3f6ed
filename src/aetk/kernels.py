"""Kernels and the maximum mean discrepancy (MMD) between two samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def gaussian_kernel(a: torch.Tensor, b: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """`k(a, b) = exp(-||a - b||^2 / (rho^2 d))` for all pairs: `(n, m)`."""
    d = a.shape[-1]
    return torch.exp(-torch.cdist(a, b).square() / (rho**2 * d))


def imq_kernel(a: torch.Tensor, b: torch.Tensor, rho: float = 1.0) -> torch.Tensor:
    """Inverse multiquadric `k(a, b) = C / (C + ||a - b||^2)`, `C = 2 d rho^2`: `(n, m)`."""
    c = 2 * a.shape[-1] * rho**2
    return c / (c + torch.cdist(a, b).square())


KERNELS = {"gaussian": gaussian_kernel, "imq": imq_kernel}


def get_kernel(name: str) -> Callable[..., torch.Tensor]:
    """The kernel called `name`; ValueError listing the valid names."""
    try:
        return KERNELS[name]
    except KeyError:
        raise ValueError(f"unknown kernel {name!r}; valid: {', '.join(KERNELS)}") from None


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "gaussian",
    scales: Sequence[float] = (1.0,),
    unbiased: bool = True,
) -> torch.Tensor:
    """Squared MMD between samples `x (n, d)` and `y (m, d)`, the kernel summed over `scales`.

    The unbiased U-statistic drops the diagonal of the within-sample terms, so its mean is
    zero when `x` and `y` come from the same distribution; the biased V-statistic keeps it.
    """
    k = get_kernel(kernel)
    kxx = sum(k(x, x, s) for s in scales)
    kyy = sum(k(y, y, s) for s in scales)
    kxy = sum(k(x, y, s) for s in scales)
    n, m = x.shape[0], y.shape[0]
    if unbiased:
        xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return xx + yy - 2 * kxy.mean()


def check_mmd_options(kernel: str, scales: Sequence[float], n_samples: int | None) -> None:
    """Raise ValueError for options `mmd_to_standard_normal` cannot use: an unknown kernel,
    a bandwidth <= 0, or fewer than 2 prior draws (the U-statistic pairs them)."""
    get_kernel(kernel)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive kernel bandwidths, got {list(scales)}")
    if n_samples is not None and (int(n_samples) != n_samples or n_samples < 2):
        raise ValueError(f"n_prior_samples must be an integer >= 2, got {n_samples}")


def mmd_to_standard_normal(
    z: torch.Tensor,
    kernel: str = "gaussian",
    scales: Sequence[float] = (1.0,),
    unbiased: bool = True,
    n_samples: int | None = None,
) -> torch.Tensor:
    """`mmd` between codes `z (n, d)` and a fresh draw of `n_samples` (default n) points of
    the prior `N(0, I)`, in z's dtype and on its device.

    One code has no pair for the U-statistic: a one-row batch takes the V-statistic, whose
    within-codes term is the constant `k(z, z)` (a NaN would stop training)."""
    prior = torch.randn(n_samples or z.shape[0], z.shape[1], dtype=z.dtype, device=z.device)
    return mmd(z, prior, kernel, scales, unbiased and len(z) > 1)
