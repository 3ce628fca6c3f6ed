"""InfoVAE / MMD-VAE (Zhao, Song & Ermon 2019)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..distributions import kl_to_standard_normal
from ..kernels import check_mmd_options, mmd_to_standard_normal
from .base import LossOutput
from .vae import VAE


class InfoVAE(VAE):
    """`L = -<log p(x|z)> + beta (1 - alpha) <KL> + (alpha + lam - 1) MMD(q(z), p(z))`, with
    `beta = 1` (the VAE's attribute, for `CyclicalBeta` to anneal).

    The defaults (`alpha=0`, `lam=100`) keep the KL at weight 1 and give the MMD weight 99.
    `kernel` is "gaussian" or "imq", summed over the bandwidths `scales`; the prior sample
    has `n_prior_samples` points (the batch size by default). AutoEncoderToolkit.jl's
    `logP_mmd_ratio`, its guide to choosing lam, is `|terms["reconstruction"] /
    terms["mmd"]|` of `model.loss(x)` (under `torch.no_grad()`): the weight at which the
    MMD term counts as much as the likelihood.
    """

    def __init__(
        self,
        encoder,
        decoder,
        alpha: float = 0.0,
        lam: float = 100.0,
        kernel: str = "gaussian",
        scales: Sequence[float] = (1.0,),
        n_prior_samples: int | None = None,
        unbiased: bool = True,
    ) -> None:
        super().__init__(encoder, decoder)
        if not (alpha <= 1 and 1 <= alpha + lam < math.inf):
            raise ValueError(f"the KL weight 1 - alpha and the MMD weight alpha + lam - 1 must be "
                             f">= 0, got alpha={alpha}, lam={lam}")
        self.alpha, self.lam = float(alpha), float(lam)
        self.kernel, self.scales = kernel, tuple(float(s) for s in scales)
        self.n_prior_samples = n_prior_samples
        self.unbiased = unbiased
        check_mmd_options(kernel, scales, n_prior_samples)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        rec, z = self.reconstruction(q, x if target is None else target)
        kl = kl_to_standard_normal(q).mean()
        d = mmd_to_standard_normal(z, self.kernel, self.scales, self.unbiased,
                                   self.n_prior_samples)
        loss = rec + self.beta * (1 - self.alpha) * kl + (self.alpha + self.lam - 1) * d
        return LossOutput(loss, {"reconstruction": rec, "kl": kl, "mmd": d})
