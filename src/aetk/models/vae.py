"""Variational autoencoder and beta-VAE."""

from __future__ import annotations

import torch

from ..distributions import kl_to_standard_normal, log_lik_of_draws, log_prob, mean
from .base import LossOutput, Model


class VAE(Model):
    """`L = -<log p(x|z)> + beta <KL(q(z|x) || N(0, I))>`, z reparameterised.

    `n_samples > 1` averages the reconstruction term over that many z per data point.
    """

    def __init__(self, encoder, decoder, beta: float = 1.0, n_samples: int = 1) -> None:
        super().__init__(encoder, decoder)
        if beta < 0 or n_samples < 1:
            raise ValueError(f"beta must be >= 0 and n_samples >= 1, got {beta} and {n_samples}")
        self.beta = float(beta)
        self.n_samples = int(n_samples)

    def reconstruction(self, q, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`-<log p(x|z)>` with `z ~ q` reparameterised, and the first sample of z."""
        if self.n_samples == 1:
            z = q.rsample()
            return -log_prob(self.decoder(z), x).mean(), z
        z = q.rsample((self.n_samples,))
        return -log_lik_of_draws(self.decoder, x, z).mean(), z[0]

    def loss(self, x: torch.Tensor) -> LossOutput:
        q = self.encoder(x)
        rec, _ = self.reconstruction(q, x)
        kl = kl_to_standard_normal(q).mean()
        return LossOutput(rec + self.beta * kl, {"reconstruction": rec, "kl": kl})

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True) -> torch.Tensor:
        """`n` new data points decoded from `z ~ N(0, I)`: the decoder's point prediction,
        or a draw from p(x|z) with `mean_only=False`."""
        param = next(self.parameters())
        p = self.decoder(torch.randn(n, self.latent_dim, dtype=param.dtype, device=param.device))
        return mean(p) if mean_only else p.sample()
