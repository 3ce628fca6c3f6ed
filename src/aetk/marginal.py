"""The marginal log-likelihood `log p(x)` by importance sampling: the number that compares
generative models trained with different objectives (Burda, Grosse & Salakhutdinov 2016).

Every probabilistic model of aetk has the generative model `z ~ p(z)` (`N(0, I)`, or the
VampPrior's mixture: `model.prior_log_prob`), `x ~ p(x|z)` (the decoder); the encoder's
`q(z|x)` is the proposal:

    log p(x) ~= logsumexp_s [log p(x|z_s) + log p(z_s) - log q(z_s|x)] - log S,
    z_s ~ q(z|x), s = 1..S.

The estimate is the importance-weighted bound: below `log p(x)` on average, tightening as S
grows, and exact for any S when `q(z|x)` is the true posterior. The HVAE and RHVAE propose
with their flow (`Model.importance_log_weights`): `z_0 ~ q(z|x)` and a momentum draw, moved
by the tempered leapfrog flow,

    log w = log p(x|z_K) + log p(z_K) + log N(rho_K) - log q(z_0|x) - log N(gamma_0),

the per-draw ELBO they train on; the flow preserves volume (the generalised leapfrog up to
its fixed-point residual), so these weights average to p(x) as well. Where the RHVAE's
fixed-point iterations leave that residual large (a large step size for `n_fixed_point`),
the estimate is biased and can exceed log p(x): `aetk.hamiltonian.FixedPointWarning` says so.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import distributions as D

from . import validate
from .models.base import Model
from .nets import evaluating
from .validate import positive_int


@torch.no_grad()
def log_marginal(model: Model, x: Any, n_samples: int = 100, chunk: int = 8192,
                 target: Any = None) -> torch.Tensor:
    """The importance-sampled estimate of `log p(x)` per row of `x`, shape `(B,)`; `x` and
    `target` as `fit` takes them (tensors, arrays, DataFrames), cast to the model's dtype.

    `n_samples` proposals per row (`z_s ~ q(z|x)`, moved by the flow for the HVAE and
    RHVAE; seed them with `torch.manual_seed`); the decoder sees at most `chunk` latent
    points at a time, so memory does not grow with `n_samples` (but at least one draw per
    row: an `x` of more than `chunk` rows is decoded whole, pass it in parts). For a
    conditional model, call it inside `with model.given(c):`: the estimate is then
    `log p(x|c)`. For a model trained on paired data, `target` is the x_out scored: the
    estimate of `log p(x_out)` with `q(z|x_in)` as the proposal. The model runs in
    evaluation mode (no input noise or dropout; its mode is put back).
    """
    n_samples, chunk = positive_int(n_samples, "n_samples"), positive_int(chunk, "chunk")
    if model.n_conditions and model.conditions() is None:
        raise ValueError(f"this {type(model).__name__} is conditional: call log_marginal "
                         "inside `with model.given(c):`, with c the conditions (rows, "
                         f"{model.n_conditions}) of x's rows")
    frames = x, target
    # as fit and encode take it: integers too
    x = model.checked_input(model.as_data(x), "log_marginal")
    model.check_condition_rows(x, "log_marginal")
    target = None if target is None else model.as_target(target)
    # as fit checks it: data outside the likelihood's support gets a finite, wrong score
    with validate.labelled(*frames):
        model.check_data(x, "log_marginal", target)
    with evaluating(model):
        q = model.encode(x)
        if not (isinstance(q, D.Distribution)
                and isinstance(model.decode(q.sample()), D.Distribution)):
            raise ValueError(f"log p(x) needs a probabilistic encoder and decoder; "
                             f"{type(model).__name__} has a deterministic one")
        per_chunk = max(1, chunk // len(x))
        scored = x if target is None else target
        log_w = [model.importance_log_weights(q, scored, min(per_chunk, n_samples - i))
                 for i in range(0, n_samples, per_chunk)]
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(n_samples)
