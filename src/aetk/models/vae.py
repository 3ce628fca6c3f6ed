"""Variational autoencoder and beta-VAE."""

from __future__ import annotations

import math

import torch

from ..distributions import (
    generate,
    kl_per_dimension,
    kl_to_standard_normal,
    log_lik_of_draws,
    log_prob,
)
from ..validate import positive_int
from .base import LossOutput, Model


class VAE(Model):
    """`L = -<log p(x|z)> + beta <KL(q(z|x) || N(0, I))>`, z reparameterised.

    `n_samples > 1` averages the reconstruction term over that many z per data point.
    `free_bits = lambda > 0` (Kingma et al. 2016) charges each latent dimension's
    batch-mean KL at least lambda nats, `beta sum_j max(lambda, <KL_j>)`: below that a
    dimension's KL costs nothing, so the optimiser has no reason to switch it off
    (posterior collapse). The `kl` term stays the true KL; `kl_charged` is what the loss
    takes. `capacity = C` (set per epoch by `aetk.CapacityAnnealing`; None by default)
    charges `beta |KL - C|` instead (Burgess et al. 2018): the KL is held near a capacity
    that rises through training, with beta as the paper's gamma. With both, the capacity
    is measured from the free-bits charge: `beta |sum_j max(lambda, <KL_j>) - C|`.
    """

    point_codes = False

    capacity: float | None = None

    def __init__(self, encoder, decoder, beta: float = 1.0, n_samples: int = 1,
                 free_bits: float = 0.0) -> None:
        super().__init__(encoder, decoder)
        if not 0 <= beta < math.inf or int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"beta must be >= 0 (and finite) and the integer n_samples >= 1, "
                             f"got {beta} and {n_samples}")
        if not 0 <= free_bits < math.inf:
            raise ValueError(f"free_bits must be >= 0, got {free_bits} (and finite)")
        self.beta, self.free_bits = float(beta), float(free_bits)
        self.n_samples = int(n_samples)

    def reconstruction(self, q, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`-<log p(x|z)>` with `z ~ q` reparameterised, and the first sample of z."""
        if self.n_samples == 1:
            z = q.rsample()
            return -log_prob(self.decoder(z), x).mean(), z
        z = q.rsample((self.n_samples,))
        return -log_lik_of_draws(self.decoder, x, z).mean(), z[0]

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        rec, _ = self.reconstruction(q, x if target is None else target)
        kl = kl_to_standard_normal(q).mean()  # exact for a full covariance too
        terms = {"reconstruction": rec, "kl": kl}
        charged = kl
        if self.free_bits:
            kl_dims = kl_per_dimension(q).mean(0)
            charged = terms["kl_charged"] = kl_dims.clamp(min=self.free_bits).sum()
        if self.capacity is not None:
            charged = terms["kl_charged"] = (charged - self.capacity).abs()
        return LossOutput(rec + self.beta * charged, terms)

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True,
               total_count: torch.Tensor | float | None = None) -> torch.Tensor:
        """`n` new data points decoded from `z ~ N(0, I)`: the decoder's point prediction,
        or a draw from p(x|z) with `mean_only=False`; a multinomial decoder's at the totals
        `total_count`, one per sample or one for all (`distributions.generate`)."""
        n = positive_int(n, "n")
        param = next(self.parameters())
        p = self.decoder(torch.randn(n, self.latent_dim, dtype=param.dtype, device=param.device))
        return generate(p, mean_only, total_count)
