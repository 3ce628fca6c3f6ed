"""beta-TCVAE (Chen, Li, Grosse & Duvenaud 2018)."""

from __future__ import annotations

import math

import torch
from torch import distributions as D
from torch import nn

from ..distributions import check_diagonal, log_prob, standard_normal_log_prob
from .base import LossOutput, Model
from .vae import VAE


def _log_weights(m: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """`(M, M)` log weights of `q(z_i|x_m)` in the estimate of `q(z_i)`: `1/N` for the row's
    own posterior, `(N - 1) / (N (M - 1))` for the others."""
    if m == 1:
        return like.new_full((1, 1), -math.log(n))
    w = like.new_full((m, m), math.log(n - 1) - math.log(n * (m - 1)) if n > 1 else -math.inf)
    return w.fill_diagonal_(-math.log(n))


class BetaTCVAE(Model):
    """`L = -<log p(x|z)> + alpha MI + beta TC + gamma DWKL`, the average KL of the ELBO
    split into the mutual information between x and z, the total correlation of the
    aggregate posterior `q(z) = 1/N sum_n q(z|x_n)` and its dimension-wise KL to the prior:

    - `MI = <log q(z|x) - log q(z)>`, `TC = <log q(z) - sum_j log q(z_j)>`,
    - `DWKL = <sum_j log q(z_j) - log N(z_j; 0, 1)>`,

    with one reparameterised `z ~ q(z|x)` per row and `q(z)`, `q(z_j)` estimated on the batch
    by stratified sampling: for the `M` rows of a shuffled batch from `N` training points,
    `q(z_i) ~ q(z_i|x_i) / N + (N - 1) / (N (M - 1)) sum_{m != i} q(z_i|x_m)`, the other rows
    standing for the other `N - 1` points. (The minibatch-weighted estimate of the paper,
    `1/(N M) sum_m q(z_i|x_m)`, is off by about `-log M` per factor once posteriors are
    narrow, which shifts TC and DWKL by `(d - 1) log M` in opposite directions.) With
    `alpha = beta = gamma = 1` the three sum to
    `log q(z|x) - log N(z; 0, I)`: the VAE's loss with a Monte Carlo KL. `beta > 1` presses
    the latent dimensions towards independence. Terms (batch means): `reconstruction`,
    `mutual_information`, `total_correlation`, `dimensionwise_kl`.

    `dataset_size` is N; when not given, every `aetk.fit` sets it from its training data.
    """

    point_codes = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module, alpha: float = 1.0,
                 beta: float = 6.0, gamma: float = 1.0, dataset_size: int | None = None) -> None:
        super().__init__(encoder, decoder)
        if not all(0 <= w < math.inf for w in (alpha, beta, gamma)):
            raise ValueError(f"alpha, beta and gamma must be >= 0, got {alpha}, {beta}, {gamma}")
        if dataset_size is not None and (int(dataset_size) != dataset_size or dataset_size < 1):
            raise ValueError(f"dataset_size must be a positive integer, got {dataset_size}")
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.register_buffer("dataset_size", torch.tensor(int(dataset_size or 0)))
        self._size_from_fit = dataset_size is None  # else fits on subsets keep the given N

    def on_fit_start(self, train: torch.Tensor, n_train: int | None = None) -> None:
        if self._size_from_fit:  # each fit's own: a second fit on more rows has another N
            self.dataset_size.fill_(len(train) if n_train is None else n_train)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        n = int(self.dataset_size)
        if n == 0:
            raise RuntimeError("the BetaTCVAE needs the training set size: train it with "
                               "aetk.fit, or give dataset_size")
        q = self.posterior(x)
        check_diagonal(q, "beta-TCVAE")
        z = q.rsample()
        rec = -log_prob(self.decoder(z), x if target is None else target).mean()
        base = q.base_dist if isinstance(q, D.Independent) else q
        # log q(z_i,j | x_m): every row's sample under every row's posterior, (M, M, d)
        log_qj = D.Normal(base.loc, base.scale).log_prob(z.unsqueeze(1))
        w = _log_weights(len(x), n, z)
        log_qz = torch.logsumexp(log_qj.sum(-1) + w, 1)
        log_prod_qzj = torch.logsumexp(log_qj + w.unsqueeze(-1), 1).sum(-1)
        mi = (q.log_prob(z) - log_qz).mean()
        tc = (log_qz - log_prod_qzj).mean()
        dwkl = (log_prod_qzj - standard_normal_log_prob(z)).mean()
        return LossOutput(rec + self.alpha * mi + self.beta * tc + self.gamma * dwkl, {
            "reconstruction": rec, "mutual_information": mi, "total_correlation": tc,
            "dimensionwise_kl": dwkl})

    sample = VAE.sample  # the generative model is the VAE's: z ~ N(0, I), x ~ p(x|z)
