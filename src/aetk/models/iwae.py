"""Importance-weighted autoencoder (Burda, Grosse & Salakhutdinov 2016), and the bounds of
Rainforth et al. 2018 ("Tighter variational bounds are not necessarily better") that give
its encoder back the gradient signal a tight bound takes away: MIWAE, CIWAE and PIWAE."""

from __future__ import annotations

import math

import torch

from ..distributions import kl_to_standard_normal, log_importance_weights
from ..validate import positive_int
from .base import LossOutput, Model, adam
from .vae import VAE


class IWAE(Model):
    """`L = -< 1/M sum_m [logsumexp_k log w_mk - log K] >` with `K = n_samples` and
    `M = n_groups`: M K reparameterised draws `z_mk ~ q(z|x)` and
    `log w = log p(x|z) + log N(z; 0, I) - log q(z|x)`.

    With M = 1 (the default) the importance-weighted bound: in expectation at least the
    ELBO, tightening towards `log p(x)` as K grows; K = 1 is the ELBO with a Monte Carlo KL.
    With M > 1, MIWAE: the mean of M independent bounds of K draws each, looser than one
    bound of M K draws but with less noise in the encoder's gradient (Rainforth et al.
    2018: for the IWAE bound its signal-to-noise ratio falls as `1/sqrt(K)` for large K).
    On MNIST at latent 10 (`bench/iwae_snr.py`, the same 64 draws per image) it was 1.50
    for MIWAE's 8 x 8 against 0.58 for the IWAE bound of all 64. Reported terms
    (batch means, not optimised separately): `reconstruction = -log p(x|z)` over all draws,
    and the closed-form `kl` of q(z|x) to N(0, I).
    """

    point_codes = False

    def __init__(self, encoder, decoder, n_samples: int = 5, n_groups: int = 1) -> None:
        super().__init__(encoder, decoder)
        self.n_samples = positive_int(n_samples, "n_samples")
        self.n_groups = positive_int(n_groups, "n_groups")

    def log_weights(self, x: torch.Tensor, target: torch.Tensor | None
                    ) -> tuple[torch.Tensor, LossOutput]:
        """`q(z|x)`'s `n_groups x n_samples` draws: their log weights `(M, K, B)`, and a
        `LossOutput` with the terms (its loss still to be set)."""
        q = self.posterior(x)
        m, k = self.n_groups, self.n_samples
        log_lik, log_w = log_importance_weights(q, self.decoder, x if target is None else target,
                                                q.rsample((m * k,)))
        terms = {"reconstruction": -log_lik.mean(), "kl": kl_to_standard_normal(q).mean()}
        return log_w.reshape(m, k, -1), LossOutput(log_w.new_zeros(()), terms)

    @staticmethod
    def bound(log_w: torch.Tensor) -> torch.Tensor:
        """Per data point, the mean over groups of `logsumexp_k log w - log K`: `(B,)` from
        `(M, K, B)`."""
        return (torch.logsumexp(log_w, dim=1) - math.log(log_w.shape[1])).mean(0)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        log_w, out = self.log_weights(x, target)
        out.loss = -self.bound(log_w).mean()
        return out

    sample = VAE.sample  # the generative model is the VAE's: z ~ N(0, I), x ~ p(x|z)


class CIWAE(IWAE):
    """`L = -< beta ELBO + (1 - beta) IWAE >` on the same K draws (Rainforth et al. 2018):
    the ELBO's Monte Carlo estimate `1/K sum_k log w_k` and the importance-weighted bound,
    so that beta = 1 is the VAE with K draws and beta = 0 the IWAE. Terms as the IWAE's."""

    def __init__(self, encoder, decoder, n_samples: int = 5, beta: float = 0.5) -> None:
        super().__init__(encoder, decoder, n_samples)
        if not 0 <= beta <= 1:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        self.beta = float(beta)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        log_w, out = self.log_weights(x, target)
        elbo = log_w.mean((0, 1))
        out.loss = -(self.beta * elbo + (1 - self.beta) * self.bound(log_w)).mean()
        return out


class PIWAE(IWAE):
    """Two objectives on the same `M K` draws (Rainforth et al. 2018): the decoder
    maximises the IWAE bound of all `M K` draws, the tighter one for a generative model,
    and the encoder the MIWAE bound of M groups of K, whose gradient keeps its signal.
    Two optimisers (`decoder`, `encoder`); `loss` is the decoder's objective, and its
    `aux` holds both bounds as losses (`iwae`, `miwae`) for the training step; the term
    `miwae` reports the encoder's."""

    def __init__(self, encoder, decoder, n_samples: int = 5, n_groups: int = 4) -> None:
        super().__init__(encoder, decoder, n_samples, n_groups)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        log_w, out = self.log_weights(x, target)
        out.loss = -self.bound(log_w.reshape(1, -1, log_w.shape[-1])).mean()
        out.aux = {"iwae": out.loss, "miwae": -self.bound(log_w).mean()}
        out.terms["miwae"] = out.aux["miwae"].detach()
        return out

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        shared = {id(p) for p in self.encoder.parameters()} & {
            id(p) for p in self.decoder.parameters()}
        if shared:  # tied weights would get the decoder's gradient only
            raise ValueError("a PIWAE's encoder and decoder must not share parameters: each "
                             "follows its own bound")
        # a part with nothing to learn (a fixed or frozen likelihood) has no optimiser:
        # torch's Adam refuses an empty parameter list
        parts = {"decoder": _trained(self.decoder), "encoder": _trained(self.encoder)}
        return {name: adam(params, lr) for name, params in parts.items() if params}

    def training_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                      target: torch.Tensor | None = None) -> LossOutput:
        """The decoder's gradient from `loss` (with any penalties `aetk.fit` adds to it),
        the encoder's from the MIWAE bound plus the same penalties."""
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        out = self.loss(x) if target is None else self.loss(x, target)
        # the IWAE bound swapped for the MIWAE's: whatever fit added to the loss stays
        encoder_loss = out.loss - out.aux["iwae"] + out.aux["miwae"]
        enc, dec = _trained(self.encoder), _trained(self.decoder)
        if enc:
            grads = torch.autograd.grad(encoder_loss, enc, retain_graph=bool(dec),
                                        allow_unused=True)
            for p, g in zip(enc, grads, strict=True):
                p.grad = g
        if dec:
            dec_grads = torch.autograd.grad(out.loss, dec, allow_unused=True)
            for p, g in zip(dec, dec_grads, strict=True):
                p.grad = g
        for opt in optimizers.values():
            opt.step()
        return out


def _trained(part: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of `part` that learn (autograd refuses a gradient for the others)."""
    return [p for p in part.parameters() if p.requires_grad]
