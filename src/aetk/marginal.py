"""The marginal log-likelihood `log p(x)` by importance sampling: the number that compares
generative models trained with different objectives (Burda, Grosse & Salakhutdinov 2016).

Every probabilistic model of aetk has the generative model `z ~ p(z)` (`N(0, I)`, or the
VampPrior's mixture: `model.prior_log_prob`), `x ~ p(x|z)` (the decoder); the encoder's
`q(z|x)` is the proposal:

    log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,
    z_s ~ q(z|x), s = 1..S.

The estimate is the importance-weighted bound: below `log p(x)` on average, tightening as S
grows, and exact for any S when `q(z|x)` is the true posterior. For the HVAE and RHVAE the
proposal is the encoder's, not the flow's.
"""

from __future__ import annotations

import math

import torch
from torch import distributions as D

from .distributions import log_importance_weights
from .models.base import Model


@torch.no_grad()
def log_marginal(model: Model, x: torch.Tensor, n_samples: int = 100, chunk: int = 8192,
                 target: torch.Tensor | None = None) -> torch.Tensor:
    """The importance-sampled estimate of `log p(x)` per row of `x`, shape `(B,)`.

    `n_samples` proposals `z_s ~ q(z|x)` per row (seed them with `torch.manual_seed`); the
    decoder sees at most `chunk` latent points at a time, so memory does not grow with
    `n_samples`. For a conditional model, call it inside `with model.given(c):`: the
    estimate is then `log p(x|c)`. For a model trained on paired data, `target` is the
    x_out scored: the estimate of `log p(x_out)` with `q(z|x_in)` as the proposal.
    """
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
    q = model.encode(x)
    if not (isinstance(q, D.Distribution)
            and isinstance(model.decode(q.sample()), D.Distribution)):
        raise ValueError(f"log p(x) needs a probabilistic encoder and decoder; "
                         f"{type(model).__name__} has a deterministic one")
    per_chunk = max(1, chunk // len(x))
    draws = (q.sample((min(per_chunk, n_samples - i),)) for i in range(0, n_samples, per_chunk))
    scored = x if target is None else target
    log_w = [log_importance_weights(q, model.decode, scored, z, model.prior_log_prob)[1]
             for z in draws]
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(n_samples)
