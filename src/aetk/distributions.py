"""Helpers on torch distributions used by every model: per-sample densities, point
predictions, the Gaussian KL to the prior and importance weights."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import distributions as D


class Normal(D.Normal):
    """`torch.distributions.Normal` whose log density standardises first,
    `-((x - mu) / sigma)^2 / 2`: torch's `(x - mu)^2 / (2 sigma^2)` is 0/0 = NaN once sigma^2
    underflows (sigma < 4e-23 in float32: a posterior collapsed to log sigma < -52)."""

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return (-0.5 * ((value - self.loc) / self.scale).square() - self.scale.log()
                - 0.5 * math.log(2 * math.pi))


def log_prob(dist: D.Distribution, x: torch.Tensor) -> torch.Tensor:
    """`dist.log_prob(x)` summed over all but the batch dimension: shape `(B,)`.

    Decoders should return `Independent` distributions, but a user's decoder returning, say,
    a plain `Normal` with batch shape `(B, D)` works too.
    """
    if not isinstance(dist, D.Distribution):  # else "'Tensor' object has no attribute ..."
        raise TypeError(
            f"the decoder returned a {type(dist).__name__}, not a torch distribution, but this "
            "model scores the data by their likelihood log p(x|z): return one from its "
            "forward (e.g. Independent(Normal(mu, sigma), 1)); a point prediction scored by "
            "its mean squared error is for the autoencoders AE, IRMAE, WAE and VQVAE")
    shape = (*dist.batch_shape, *dist.event_shape)
    if (x.dim() != len(shape) and len(shape) > 1 and x.dim() > 1 and len(x) == shape[0]
            and x[0].numel() == math.prod(shape[1:])):
        # rows in another layout of as many values (flat targets for a user decoder of
        # images, whose shape the model cannot know before it decodes): as the model's
        # methods reshape inputs (`Model.checked_input`)
        x = x.reshape(shape)
    if x.dim() == len(shape) and tuple(x.shape) != shape:  # (a one-hot x has a class axis more)
        # parameters of another shape broadcast against the data: a decoder of one output
        # scored every feature of the rows against it
        raise ValueError(f"the decoder's {type(dist).__name__} is of shape {shape} (batch "
                         f"{tuple(dist.batch_shape)}, event {tuple(dist.event_shape)}) but the "
                         f"data of shape {tuple(x.shape)}: give one parameter per value")
    lp = dist.log_prob(x)
    if x.dim() and (lp.dim() == 0 or lp.shape[0] != x.shape[0]):
        # an event over the batch axis too (Independent(Normal(mu, s), 2) for rows (B, D))
        # summed the rows: a loss B times the likelihood's weight against the KL
        raise ValueError(
            f"the decoder's {type(dist).__name__} of batch shape {tuple(dist.batch_shape)} "
            f"and event shape {tuple(dist.event_shape)} gave log-probabilities of shape "
            f"{tuple(lp.shape)} for {x.shape[0]} rows: keep the batch axis out of its event, "
            f"e.g. Independent(base, {x.dim() - 1}) for rows of shape {tuple(x.shape[1:])}")
    return lp.reshape(lp.shape[0], -1).sum(-1) if lp.dim() > 1 else lp


def one_event(q: object) -> object:
    """A posterior as the models read it: a user's plain univariate distribution of batch
    shape `(B, d)` (a `Normal(mu, sigma)`) as one d-dimensional event, `Independent(q, 1)`,
    so that `log_prob(z)` is per sample, `(B,)`; any other output as it is."""
    if isinstance(q, D.Distribution) and q.event_shape == () and len(q.batch_shape) > 1:
        return D.Independent(q, 1)
    return q


def mean(dist: D.Distribution | torch.Tensor, like: torch.Tensor | None = None,
         total_count: torch.Tensor | float | None = None, *, checked: bool = True
         ) -> torch.Tensor:
    """The decoder's point prediction: the mean, or the mode for a categorical; a
    deterministic decoder's output tensor is its own. `like`: the data it predicts, for a
    distribution whose scale comes from them (`mean_for(x)`: a multinomial's expected
    counts at the observed totals; a user's torch `Multinomial` of x's shape too).
    `total_count`: a multinomial decoder's expected counts
    at these totals, one per row `(B,)` or one for all (`mean_at`), for new points with no
    data to take the totals from; other distributions refuse it. A distribution's mean
    that is not finite (undefined: a Cauchy's, a Student-t's of df <= 1) is a ValueError;
    `checked=False` leaves that test (one device sync) to a caller inside a training step."""
    if total_count is not None:
        _check_total_count(dist)
        return dist.mean_at(total_count)
    if isinstance(dist, torch.Tensor):
        return dist
    base = dist.base_dist if isinstance(dist, D.Independent) else dist
    if isinstance(base, D.Categorical):
        return base.logits.argmax(-1)
    if like is not None and hasattr(dist, "mean_for"):
        return dist.mean_for(like)
    if like is not None and isinstance(base, D.Multinomial) and like.shape == base.probs.shape:
        # a user's multinomial: its log_prob scores each row at the row's own total, not
        # at total_count (whose mean, total_count * probs, was proportions for counts)
        return base.probs * like.sum(-1, keepdim=True)
    try:
        m = dist.mean
    except NotImplementedError:  # torch's bare error for, e.g., a TransformedDistribution
        raise ValueError(
            f"the decoder's {type(base).__name__} distribution has no closed-form mean, which "
            "a point prediction (reconstruct, sample, the reports) needs: return a "
            "distribution with a `mean` (a subclass defining it), or average draws yourself, "
            "model.decode(z).sample((100,)).mean(0)") from None
    if checked and m.is_floating_point() and not bool(torch.isfinite(m).all()):
        # torch's NaN (Cauchy, Student-t of df <= 1) or inf (half-Cauchy, Pareto of
        # alpha <= 1) for a mean that does not exist: reconstructions of NaN, in silence
        raise ValueError(
            f"the decoder's {type(base).__name__} distribution has no finite mean at some "
            f"points (its mean holds {'NaN' if bool(m.isnan().any()) else 'inf'}: the mean of "
            "a Cauchy, a Student-t of df <= 1 or a Pareto of alpha <= 1 does not exist, or "
            "the decoder's parameters are not finite), which a point prediction "
            "(reconstruct, sample, the reports) needs: give it a family whose mean exists "
            "(a Student-t of df = 1 + softplus(...) > 1), or take another point yourself, "
            "model.decode(z).base_dist.loc")
    return m


def generate(dist: D.Distribution | torch.Tensor, mean_only: bool = True,
             total_count: torch.Tensor | float | None = None) -> torch.Tensor:
    """What a model's `sample` returns from p(x|z) at new points z: the point prediction
    (`mean`), or a draw with `mean_only=False`; with `total_count`, a multinomial's expected
    counts, or counts drawn, at these totals (integers for draws). A deterministic
    decoder's output (a tensor: the `mse` likelihood's) is its own draw, its p(x|z) a point
    mass."""
    if mean_only or isinstance(dist, torch.Tensor):
        return mean(dist, total_count=total_count)
    if total_count is None:
        try:
            return dist.sample()
        except NotImplementedError:  # torch's bare error: a user's class without a sampler
            name = type(getattr(dist, "base_dist", dist)).__name__
            raise ValueError(
                f"the decoder's {name} distribution cannot draw samples (it defines neither "
                "`sample` nor `rsample`), which mean_only=False needs: give its class a "
                "`sample(sample_shape=torch.Size())`, or take the point prediction, "
                "mean_only=True") from None
    _check_total_count(dist)
    return dist.sample_at(total_count)


def _check_total_count(dist: D.Distribution | torch.Tensor) -> None:
    if not hasattr(dist, "mean_at"):
        name = type(getattr(dist, "base_dist", dist)).__name__.lstrip("_")
        raise ValueError(f"total_count is for a multinomial decoder's counts, not for this "
                         f"decoder's {name} distribution")


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """`log N(z; 0, I)` per sample, `(B,)`."""
    d = z.shape[-1]
    return -0.5 * (z * z).sum(-1) - 0.5 * d * math.log(2 * math.pi)


FULL_COVARIANCE = (D.MultivariateNormal, D.LowRankMultivariateNormal)
"""Gaussians whose covariance is not diagonal: their KL does not split by dimension."""


def check_diagonal(q: D.Distribution, model: str) -> None:
    """ValueError for a full-covariance posterior `q(z|x)` given to a model whose loss
    needs a diagonal one (its per-dimension densities or precisions)."""
    if isinstance(q, FULL_COVARIANCE):
        raise ValueError(
            f"the {model} needs a diagonal Gaussian q(z|x) (it uses the densities of each "
            f"latent dimension), but the encoder returned a {type(q).__name__} with a full "
            "covariance: return D.Independent(D.Normal(mu, sigma), 1), or use a model that "
            "takes full covariances (vae, beta_vae, dipvae, iwae, infovae, factorvae)")


def kl_per_dimension(q: D.Distribution) -> torch.Tensor:
    """Closed-form `KL(q_j || N(0, 1))` of each latent dimension of a diagonal q, `(B, d)`:
    `1/2 (sigma^2 + mu^2 - 1 - 2 log sigma)` for a Gaussian; for another distribution
    (a user's encoder), torch's registered KL to `N(0, 1)` (Laplace, uniform, ...) or a
    ValueError where torch has none. A full-covariance q's KL does not split so: ValueError."""
    if isinstance(q, FULL_COVARIANCE):
        raise ValueError(f"the KL of a {type(q).__name__} with a full covariance does not "
                         "split into latent dimensions (free_bits charges each dimension): "
                         "use a diagonal encoder, or free_bits=0")
    base = q.base_dist if isinstance(q, D.Independent) else q
    if not isinstance(base, D.Normal):
        # the Gaussian formula from its mean and standard deviation was silently wrong
        # (a Laplace q: 1.09 for a true KL of 1.23)
        standard = D.Normal(torch.zeros_like(base.mean), torch.ones_like(base.mean))
        try:
            return D.kl_divergence(base, standard)
        except NotImplementedError:
            raise ValueError(
                f"the encoder returned a {type(base).__name__}, whose KL to the prior "
                "N(0, I) has no closed form in torch.distributions: return a Gaussian "
                "(D.Independent(D.Normal(mu, sigma), 1)), a distribution with a registered "
                "KL to a Normal (Laplace, Uniform, ...), or register one with "
                "torch.distributions.kl.register_kl") from None
    # an Independent's stddev is its variance's root, 0 once sigma^2 underflows (log 0)
    mu, sigma = q.mean, base.stddev
    return 0.5 * (sigma.square() + mu.square() - 1 - 2 * sigma.log())


def kl_to_standard_normal(q: D.Distribution) -> torch.Tensor:
    """Closed-form `KL(q || N(0, I))`, `(B,)`: the sum of `kl_per_dimension` for a diagonal
    q; for a full covariance `Sigma = L L^T`, `1/2 (tr Sigma + |mu|^2 - d - log det Sigma)`."""
    if not isinstance(q, FULL_COVARIANCE):
        return kl_per_dimension(q).sum(-1)
    tril = q.scale_tril
    log_det = 2 * tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (tril.square().sum((-2, -1)) + q.mean.square().sum(-1) - q.mean.shape[-1]
                  - log_det)


def log_lik_of_draws(decoder: Callable[[torch.Tensor], D.Distribution], x: torch.Tensor,
                     z: torch.Tensor) -> torch.Tensor:
    """`log p(x|z_s)` for `S` draws `z (S, B, d)` per row of `x`: `(S, B)`. The decoder sees
    them as one batch of `S * B` points, sample-major."""
    s = z.shape[0]
    xs = x.expand(s, *x.shape).reshape(-1, *x.shape[1:])
    return log_prob(decoder(z.flatten(0, 1)), xs).view(s, -1)


def log_importance_weights(
    q: D.Distribution, decoder: Callable[[torch.Tensor], D.Distribution], x: torch.Tensor,
    z: torch.Tensor,
    log_prior: Callable[[torch.Tensor], torch.Tensor] = standard_normal_log_prob,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For `S` draws `z (S, B, d)` from `q(z|x)`: `log p(x|z_s)` and the log importance
    weights `log p(x|z_s) + log p(z_s) - log q(z_s|x)` (prior `N(0, I)` by default), both
    `(S, B)`."""
    log_lik = log_lik_of_draws(decoder, x, z)
    return log_lik, log_lik + log_prior(z) - q.log_prob(z)
