"""Wasserstein autoencoder with the MMD penalty, WAE-MMD (Tolstikhin, Bousquet, Gelly &
Schölkopf 2018, "Wasserstein Auto-Encoders")."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..kernels import check_mmd_options, mmd_to_standard_normal
from .ae import AE
from .base import LossOutput
from .vae import VAE

PAPER_SCALES = tuple(math.sqrt(c) for c in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0))
"""The paper's code sums the IMQ kernel over `C = c * 2 d sigma_z^2` for these `c`;
`kernels.imq_kernel` has `C = 2 d rho^2`, so with `sigma_z = 1` they are `rho = sqrt(c)`."""


class WAE(AE):
    """`L = c(x, g(f(x))) + lam MMD(q(z), p(z))`: a deterministic autoencoder whose codes
    `z = f(x)` are pulled, as a whole, towards the prior `p(z) = N(0, I)`.

    The cost `c` is `AE`'s reconstruction: `-log p(x|z)` of the decoder's distribution, or
    the mean squared error of a deterministic decoder. The penalty is `kernels.mmd` between
    the batch's codes and as many fresh prior draws (`n_prior_samples` to change that), by
    default the paper's: the inverse multiquadric kernel `k(a, b) = C / (C + ||a - b||^2)`,
    whose heavy tails still pull distant codes, summed over the scales `C = c 2 d` for
    `c` in {0.1, 0.2, 0.5, 1, 2, 5, 10} (`2 d sigma_z^2`, the expected squared distance of
    two prior draws, times c; `scales` are the kernels' `rho = sqrt(c)`, `PAPER_SCALES`),
    and the unbiased U-statistic. Terms: `reconstruction`, `mmd`.

    `lam = 10` is the paper's for MNIST, where its cost was `0.05 ||x - x_hat||^2` per
    image (its code): a log-likelihood summed over pixels is some hundred times larger, so
    the same weight pulls the codes less. `sample` decodes prior draws, as the VAE's.
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        lam: float = 10.0,
        kernel: str = "imq",
        scales: Sequence[float] = PAPER_SCALES,
        n_prior_samples: int | None = None,
        unbiased: bool = True,
    ) -> None:
        super().__init__(encoder, decoder)
        check_mmd_options(kernel, scales, n_prior_samples)
        if not 0 <= lam < math.inf:
            raise ValueError(f"the MMD weight lam must be >= 0, got {lam}")
        self.lam, self.kernel = float(lam), kernel
        self.scales = tuple(float(s) for s in scales)
        self.n_prior_samples = None if n_prior_samples is None else int(n_prior_samples)
        self.unbiased = unbiased

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        z = self.encoder(x)
        rec = self.reconstruction(z, x if target is None else target)
        d = mmd_to_standard_normal(z, self.kernel, self.scales, self.unbiased,
                                   self.n_prior_samples)
        return LossOutput(rec + self.lam * d, {"reconstruction": rec, "mmd": d})

    sample = VAE.sample  # decoded draws of N(0, I), the prior the codes are matched to
