"""Ladder variational autoencoder (Sønderby et al. 2016), with two stochastic levels."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import distributions as D
from torch import nn

from ..distributions import (
    check_diagonal,
    generate,
    kl_to_standard_normal,
    log_lik_of_draws,
    log_prob,
    standard_normal_log_prob,
)
from ..nets import Conditioned, mlp
from ..validate import positive_int
from .base import LossOutput, Model


def diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> D.Independent:
    """`N(loc, diag scale^2)` over the last axis, unchecked as the encoder's (a diverged
    scale is fit's TrainingDiverged to report)."""
    return D.Independent(D.Normal(loc, scale, validate_args=False), 1)


def gaussian_head(out: torch.Tensor) -> D.Independent:
    """A network's output `(..., 2 k)`, the mean then log sigma, as `N(mu, diag sigma^2)`."""
    loc, log_scale = out.chunk(2, dim=-1)
    return diagonal_normal(loc, log_scale.exp())


def precision_weighted(a: D.Distribution, b: D.Distribution) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and standard deviation of the normalised product of two diagonal Gaussian
    densities: `sigma^-2 = sigma_a^-2 + sigma_b^-2`, `mu = (mu_a sigma_a^-2 + mu_b
    sigma_b^-2) sigma^2`. The mean is written with the variances' weights, the precision
    as their sum: in float32 both hold for standard deviations down to about 1e-19, where
    the product of two variances underflows below 3e-10."""
    var_a, var_b = a.variance, b.variance
    return ((a.mean * var_b + b.mean * var_a) / (var_a + var_b),
            (var_a.reciprocal() + var_b.reciprocal()).rsqrt())


class LadderPosterior(D.Independent):
    """`q(z1|x, z2)`, the precision-weighted combination of the bottom-up estimate
    `N(mu_hat_1, sigma_hat_1^2)` (`estimate`) and the top-down `p(z1|z2)` (`prior`), with
    `q(z2|x)` (`top`), which the ladder VAE's `kl` and importance weights need too."""

    def __init__(self, estimate: D.Independent, prior: D.Independent,
                 top: D.Independent) -> None:
        super().__init__(D.Normal(*precision_weighted(estimate, prior), validate_args=False), 1)
        self.estimate, self.top = estimate, top



def _check_coordinates(points: torch.Tensor, name: str, has: str, size: int) -> None:
    """ValueError unless `points` are `(..., size)`; `has` says whose size it is."""
    if points.dim() == 0 or points.shape[-1] != size:
        raise ValueError(f"{name} has shape {tuple(points.shape)}, but the ladder VAE's "
                         f"{has}={size} coordinates: give (..., {size})")

class LadderVAE(Model):
    """A two-level ladder VAE (Sønderby et al. 2016). Generative model `p(z2) = N(0, I)`,
    `p(z1|z2) = N(mu_p(z2), sigma_p(z2)^2)` (`top_down`, an MLP of the build's `hidden`
    and `activation`), `p(x|z1)` the decoder. Inference: the encoder's bottom-up estimate
    `N(mu_hat_1, sigma_hat_1^2)` of z1, and `q(z2|x) = N(mu_hat_2, sigma_hat_2^2)` from x
    through a network of its own (`top_encoder`, a re-initialised copy of the encoder,
    whose `2 latent_dim` outputs an MLP, `top_head`, maps to mu_hat_2 and log
    sigma_hat_2); then top-down, `z2 ~ q(z2|x)` and `q(z1|x, z2)` the precision-weighted
    combination of the estimate and `p(z1|z2)` (`LadderPosterior`).

    `L = -<log p(x|z1)> + beta <KL(q(z2|x) || N(0, I)) + KL(q(z1|x, z2) || p(z1|z2))>`,
    both KLs in closed form, the second at the drawn z2, all draws reparameterised. Terms
    (batch means): `reconstruction`, `kl_z2`, `kl_z1` and their sum `kl`.

    Why a network of its own for q(z2|x) (`bench/lvae_top_encoder.py`: digits in [0, 1],
    Bernoulli, 1,400 to train, 397 to validate, hidden (128,), 150 epochs, three seeds,
    top_dim = latent_dim): fed the encoder's outputs instead, the validation ELBO was
    lower, -24.82 +- 0.22 nats against -24.44 +- 0.09 at latent_dim 8 (and -25.18 +- 0.16
    against -24.96 +- 0.07 at 2), and at 8 the z1 level went unused in every run (`kl_z1`
    0.00: q(z1|x, z2) = p(z1|z2), z1 a function of z2; 1.1 to 1.2 nats with its own
    network). An MLP of x did as well as the copy (-24.44 +- 0.05; -25.03 +- 0.29), but
    the copy keeps the encoder's convolutions, recurrent layers, log inputs, input noise
    (with masks of its own) and conditions, for any encoder; it doubles the encoder's
    parameters. Its layers are re-initialised by their `reset_parameters` (torch's
    layers; `_reset_parameters` for attention); a parameter of a module without one starts
    as the encoder's. A VAE: -24.31 +- 0.03 and -24.63 +- 0.05; log p(x) -24.08 against the
    ladder's -24.14 at 8, -24.40 against -24.68 at 2.

    `latent_dim` is z1's size (the decoder's input: pull-back metrics, traversals and
    codes are of z1), `top_dim` z2's (default latent_dim). `encode(x)` is `q(z1|x, z2 =
    mu_hat_2)`, z2 at its posterior mean: a Gaussian whose mean is the point code (what
    penalties on q(z|x) see too). With `n_conditions = k > 0` (a conditional encoder and
    decoder) `q(z2|x, c)` and `p(z1|z2, c)` see the conditions as well; `p(z2)` stays
    `N(0, I)`.
    """

    point_codes = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module, top_dim: int | None = None,
                 beta: float = 1.0, *, hidden: Sequence[int] = (400, 400),
                 activation: str = "relu") -> None:
        super().__init__(encoder, decoder)
        if not 0 <= beta < math.inf:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta = float(beta)
        d, k = self.latent_dim, self.n_conditions
        self.top_dim = positive_int(d if top_dim is None else top_dim, "top_dim")
        self.top_encoder = copy.deepcopy(encoder)
        for module in self.top_encoder.modules():  # its own start, not the encoder's weights
            # public for torch's layers, private for MultiheadAttention
            reset = getattr(module, "reset_parameters", getattr(module, "_reset_parameters",
                                                                None))
            if callable(reset):
                reset()
        self.top_head = mlp(2 * d, hidden, 2 * self.top_dim, activation)
        top_down = mlp(self.top_dim + k, hidden, 2 * d, activation)
        self.top_down = Conditioned(top_down, k) if k else top_down

    def bottom_up(self, x: torch.Tensor) -> tuple[D.Independent, D.Independent]:
        """The bottom-up pass: the encoder's estimate `N(mu_hat_1, sigma_hat_1^2)` of z1,
        and `q(z2|x)`."""
        estimate = self.encoder(x)
        check_diagonal(estimate, "ladder VAE")  # combined with p(z1|z2) per dimension
        return estimate, gaussian_head(self.top_head(self._top_features(x)))

    def _top_features(self, x: torch.Tensor) -> torch.Tensor:
        """The top encoder's raw outputs (`2 latent_dim`): its network's, when it has one
        (an aetk encoder), not exp'ed and log'ed back, which overflows for outputs above 88
        in float32; else its distribution's mean and log standard deviation."""
        network = getattr(self.top_encoder, "network", None)
        if isinstance(network, nn.Module):
            return network(x)
        q = self.top_encoder(x)
        return torch.cat([q.mean, q.stddev.log()], dim=-1)

    def prior_z1(self, z2: Any) -> D.Independent:
        """`p(z1|z2)` for `z2 (..., top_dim)` (a tensor, array or DataFrame)."""
        return gaussian_head(self.top_down(self._top_points(z2)))

    def _top_points(self, z2: Any) -> torch.Tensor:
        """`z2` in the model's dtype and device, with `top_dim` coordinates per point."""
        if z2 is None:
            raise ValueError(f"give z2, points (..., {self.top_dim}) of the ladder VAE's top "
                             "level (e.g. torch.randn(n, model.top_dim) from its prior)")
        z2 = self.as_data(z2)
        _check_coordinates(z2, "z2", "top level has top_dim", self.top_dim)
        return z2

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        estimate, q2 = self.bottom_up(x)
        z2 = q2.rsample()
        p1 = self.prior_z1(z2)
        q1 = LadderPosterior(estimate, p1, q2)
        rec = -log_prob(self.decoder(q1.rsample()), x if target is None else target).mean()
        kl_z2 = kl_to_standard_normal(q2).mean()
        kl_z1 = D.kl_divergence(q1, p1).mean()
        kl = kl_z1 + kl_z2
        return LossOutput(rec + self.beta * kl, {
            "reconstruction": rec, "kl": kl, "kl_z1": kl_z1, "kl_z2": kl_z2})

    def encode(self, x: torch.Tensor) -> LadderPosterior:
        """`q(z1|x, z2 = mu_hat_2)`: the point code's posterior, z2 at its mean."""
        estimate, q2 = self.bottom_up(x)
        return LadderPosterior(estimate, self.prior_z1(q2.mean), q2)

    def posterior_sample(self, x: torch.Tensor) -> torch.Tensor:
        """z1 drawn as the loss draws it: `z2 ~ q(z2|x)`, then `z1 ~ q(z1|x, z2)`."""
        estimate, q2 = self.bottom_up(x)
        return LadderPosterior(estimate, self.prior_z1(q2.rsample()), q2).rsample()

    def prior_log_prob(self, z: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
        """The joint `log p(z1, z2) = log p(z1|z2) + log N(z2; 0, I)` over the last axes of
        `z (..., d)` and `z2 (..., top_dim)`. The prior of z1 alone, `p(z1) = E_{z2 ~ N(0,
        I)} p(z1|z2)`, has no closed form, and Monte Carlo estimates of its log go far
        wrong where p(z1|z2) is narrow, as it is where z1 follows z2 (on digits its scale
        fell to 0.01, and a KL to p(z1) estimated from 1,024 and 4,096 draws of z2 was 25
        and 14 nats, still falling): without z2, ValueError."""
        if z2 is None:
            raise ValueError("the ladder VAE's prior of z1 alone, p(z1) = E p(z1|z2) over "
                             "z2 ~ N(0, I), has no closed form: give z2 for the joint "
                             "log p(z1, z2); aetk.log_marginal estimates log p(x)")
        z2 = self._top_points(z2)  # z: checked by as_points
        try:
            torch.broadcast_shapes(z.shape[:-1], z2.shape[:-1])
        except RuntimeError:
            raise ValueError(f"z {tuple(z.shape)} and z2 {tuple(z2.shape)} are not pairs of "
                             "points: give one z2 per z (the same leading shape)") from None
        return self.prior_z1(z2).log_prob(z) + standard_normal_log_prob(z2)

    def kl(self, q: D.Distribution) -> torch.Tensor:
        """The model's KL term per row, `KL(q(z2|x) || N(0, I)) + KL(q(z1|x, z2) ||
        p(z1|z2))` at one draw `z2 ~ q(z2|x)`, for `encode(x)`'s q: with `z1 =
        posterior_sample(x)`, `log p(x|z1) - kl(q)` is a single-sample estimate of the
        ELBO. Not the KL of q itself (z2 at its mean) to a prior of z1 (see
        `prior_log_prob`)."""
        if not isinstance(q, LadderPosterior):
            raise ValueError("the ladder VAE's KL needs its bottom-up pass: pass the "
                             f"distribution of model.encode(x), not a {type(q).__name__}")
        p1 = self.prior_z1(q.top.sample())
        return (kl_to_standard_normal(q.top)
                + D.kl_divergence(LadderPosterior(q.estimate, p1, q.top), p1))

    def importance_log_weights(self, q: D.Distribution, target: torch.Tensor,
                               n: int) -> torch.Tensor:
        """`n` weights per row, `(n, B)`, over both levels: `z2 ~ q(z2|x)`, `z1 ~ q(z1|x,
        z2)`, `log p(x|z1) + log p(z1|z2) + log N(z2; 0, I) - log q(z1|x, z2) - log
        q(z2|x)`; `q` is `encode(x)`'s, which carries the bottom-up pass."""
        if not isinstance(q, LadderPosterior):
            raise ValueError("the ladder VAE's importance weights need its bottom-up pass: "
                             f"pass the distribution of model.encode(x), not a "
                             f"{type(q).__name__}")
        z2 = q.top.sample((n,))
        p1 = self.prior_z1(z2)
        q1 = LadderPosterior(q.estimate, p1, q.top)
        z1 = q1.sample()
        return (log_lik_of_draws(self.decoder, target, z1) + p1.log_prob(z1)
                + standard_normal_log_prob(z2) - q1.log_prob(z1) - q.top.log_prob(z2))

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True,
               total_count: torch.Tensor | float | None = None) -> torch.Tensor:
        """`n` new data points drawn ancestrally, `z2 ~ N(0, I)`, `z1 ~ p(z1|z2)` (inside
        `given(c)`, row i of c conditions draw i, or one row all), decoded: the decoder's
        point prediction, or a draw from p(x|z1) with `mean_only=False`; a multinomial
        decoder's at the totals `total_count`, one per sample or one for all."""
        n = positive_int(n, "n")
        param = next(self.parameters())
        z2 = torch.randn(n, self.top_dim, dtype=param.dtype, device=param.device)
        return generate(self.decoder(self.prior_z1(z2).sample()), mean_only, total_count)
