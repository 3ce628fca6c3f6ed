"""DIP-VAE (Kumar, Sattigeri & Balakrishnan 2018, "Variational Inference of Disentangled
Latent Concepts from Unlabeled Observations")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..distributions import FULL_COVARIANCE, kl_to_standard_normal
from .base import LossOutput
from .vae import VAE


class DIPVAE(VAE):
    """`L = -<log p(x|z)> + beta <KL(q(z|x) || N(0, I))> + lambda_od sum_{i != j} C_ij^2
    + lambda_d sum_i (C_ii - 1)^2`: the VAE loss and a pull of the covariance C of the
    aggregate posterior's codes towards the prior's, the identity. Over the batch,

    - `type="i"`: `C = Cov[mu(x)]`, the covariance of the encoder means;
    - `type="ii"`: `C = Cov[mu(x)] + <diag sigma^2(x)>`, the covariance of q(z) itself
      (`+ <Sigma(x)>` for an encoder of full-covariance Gaussians).

    Cov is the batch's own (normalised by B, not B - 1): the covariance of the mixture
    `1/B sum_b q(z|x_b)` is then exactly the type-II C. `lambda_d` defaults to the paper's
    choices, `10 lambda_od` for type I and `lambda_od` for type II. Terms:
    `reconstruction`, `kl`, `off_diagonal` (`sum_{i != j} C_ij^2`), `diagonal`
    (`sum_i (C_ii - 1)^2`). `beta` is 1, the VAE's attribute, for `CyclicalBeta` to anneal.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, lambda_od: float = 10.0,
                 lambda_d: float | None = None, type: str = "i") -> None:
        super().__init__(encoder, decoder)
        if type not in ("i", "ii"):
            raise ValueError(f"type must be 'i' or 'ii', got {type!r}")
        if lambda_d is None:
            lambda_d = 10 * lambda_od if type == "i" else lambda_od
        if not 0 <= min(lambda_od, lambda_d) <= max(lambda_od, lambda_d) < math.inf:
            raise ValueError(f"lambda_od and lambda_d must be >= 0, got {lambda_od} and "
                             f"{lambda_d}")
        self.lambda_od, self.lambda_d, self.type = float(lambda_od), float(lambda_d), type

    def covariance(self, q) -> torch.Tensor:
        """C, `(d, d)`, from the batch's posteriors `q(z|x)`."""
        centred = q.mean - q.mean.mean(0)
        cov = centred.T @ centred / len(centred)
        if self.type == "i":
            return cov
        if isinstance(q, FULL_COVARIANCE):  # the posteriors' own covariances, not their diagonals
            return cov + q.covariance_matrix.mean(0)
        return cov + torch.diag(q.variance.mean(0))

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        rec, _ = self.reconstruction(q, x if target is None else target)
        kl = kl_to_standard_normal(q).mean()
        cov = self.covariance(q)
        diagonal = (cov.diagonal() - 1).square().sum()
        off_diagonal = (cov - torch.diag(cov.diagonal())).square().sum()
        loss = rec + self.beta * kl + self.lambda_od * off_diagonal + self.lambda_d * diagonal
        return LossOutput(loss, {"reconstruction": rec, "kl": kl, "off_diagonal": off_diagonal,
                                 "diagonal": diagonal})
