"""Importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016)."""

from __future__ import annotations

import math

import torch

from ..distributions import kl_to_standard_normal, log_importance_weights
from .base import LossOutput, Model
from .vae import VAE


class IWAE(Model):
    """`L = -< logsumexp_k log w_k - log K >` with `K = n_samples` reparameterised draws
    `z_k ~ q(z|x)` and `log w_k = log p(x|z_k) + log N(z_k; 0, I) - log q(z_k|x)`.

    The importance-weighted bound: in expectation at least the ELBO, tightening towards
    `log p(x)` as K grows; K = 1 is the ELBO with a Monte Carlo KL. Reported terms (batch
    means, not optimised separately): `reconstruction = -log p(x|z_k)` over all k, and the
    closed-form `kl` of q(z|x) to N(0, I).
    """

    def __init__(self, encoder, decoder, n_samples: int = 5) -> None:
        super().__init__(encoder, decoder)
        if int(n_samples) != n_samples or n_samples < 1:
            raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
        self.n_samples = int(n_samples)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.encoder(x)
        log_lik, log_w = log_importance_weights(q, self.decoder, x if target is None else target,
                                            q.rsample((self.n_samples,)))
        bound = torch.logsumexp(log_w, dim=0) - math.log(self.n_samples)
        return LossOutput(-bound.mean(), {"reconstruction": -log_lik.mean(),
                                          "kl": kl_to_standard_normal(q).mean()})

    sample = VAE.sample  # the generative model is the VAE's: z ~ N(0, I), x ~ p(x|z)
