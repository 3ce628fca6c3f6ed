"""VAE with the VampPrior (Tomczak & Welling 2018)."""

from __future__ import annotations

import math

import torch
from torch import distributions as D
from torch import nn

from ..distributions import check_diagonal, generate, log_prob
from ..nets import MaskingNoise
from ..validate import positive_int
from .base import LossOutput, Model


class VampPrior(Model):
    """A VAE whose prior is the variational mixture of posteriors at `K = n_components`
    learned pseudo-inputs `u_k`: `p(z) = 1/K sum_k q(z|u_k)`.

    `L = -<log p(x|z)> + beta <log q(z|x) - log p(z)>` with one reparameterised
    `z ~ q(z|x)`: the KL to a mixture has no closed form. Terms (batch means):
    `reconstruction = -log p(x|z)`, `kl = log q(z|x) - log p(z)` (its Monte Carlo estimate).

    The pseudo-inputs start as `K` distinct training points, drawn by `aetk.fit` (seeded),
    and are then trained with the model; they have the data's shape. A conditional
    VampPrior (networks with `n_conditions`) has the prior `p(z|c) = 1/K sum_k q(z|u_k, c)`:
    the same pseudo-inputs, encoded under each sample's conditions.
    """

    point_codes = False

    def __init__(self, encoder: nn.Module, decoder: nn.Module, n_components: int = 50,
                 beta: float = 1.0) -> None:
        super().__init__(encoder, decoder)
        positive_int(n_components, "n_components")
        if not 0 <= beta < math.inf:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if any(isinstance(m, MaskingNoise) for m in encoder.modules()):
            raise ValueError("an encoder with input noise would mask the VampPrior's "
                             "pseudo-inputs too, making its prior random while training")
        if self.input_shape is None:
            raise ValueError("the VampPrior needs the encoder's input shape for its "
                             "pseudo-inputs: build the encoder with in_features or input_shape")
        self.beta = float(beta)
        self.pseudo_inputs = nn.Parameter(torch.zeros(int(n_components), *self.input_shape))
        self.register_buffer("has_pseudo_inputs", torch.tensor(False))

    def on_fit_start(self, train: torch.Tensor, n_train: int | None = None) -> None:
        """Start the pseudo-inputs at distinct training points (unless already set)."""
        if bool(self.has_pseudo_inputs):
            return
        k = len(self.pseudo_inputs)
        if k > len(train):
            raise ValueError(f"cannot start {k} pseudo-inputs from {len(train)} training points:"
                             " lower n_components")
        idx = torch.randperm(len(train))[:k].to(train.device)  # fit seeds torch
        with torch.no_grad():
            self.pseudo_inputs.copy_(train[idx].reshape(self.pseudo_inputs.shape))
        self.has_pseudo_inputs.fill_(True)

    def components(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prior's components `q(z|u_k)`: their means and standard deviations, each
        `(R, K, d)`. Inside `given(c)` (a conditional VampPrior) row r holds those of
        `q(z|u_k, c_r)`, the pseudo-inputs encoded under the r-th row of c (once per
        distinct row); otherwise R = 1, shared by every row."""
        c = self.conditions()
        if c is None:
            q = self.posterior(self.pseudo_inputs)
            check_diagonal(q, "VampPrior")
            return q.mean[None], q.stddev[None]
        k = len(self.pseudo_inputs)
        distinct, row = torch.unique(c, dim=0, return_inverse=True)
        with self.given(distinct.repeat_interleave(k, 0)):
            q = self.posterior(self.pseudo_inputs.repeat(len(distinct),
                                                       *[1] * len(self.input_shape)))
        check_diagonal(q, "VampPrior")
        d = q.mean.shape[-1]
        return q.mean.view(-1, k, d)[row], q.stddev.view(-1, k, d)[row]

    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """`log p(z) = logsumexp_k log q(z|u_k) - log K` over the last axis of `z (..., B, d)`
        (`log p(z|c)` per row inside `given(c)`)."""
        loc, scale = self.components()
        # unchecked, as the encoder's: a diverged scale is fit's TrainingDiverged to report
        normal = D.Normal(loc, scale, validate_args=False)
        log_q = normal.log_prob(z.unsqueeze(-2)).sum(-1)  # (..., B, K)
        out = torch.logsumexp(log_q, -1) - math.log(loc.shape[1])
        return out[0] if z.dim() == 1 else out

    def kl(self, q: D.Distribution) -> torch.Tensor:
        """`log q(z|x) - log p(z)` at one draw `z ~ q(z|x)`, `(B,)`."""
        z = q.sample()
        return q.log_prob(z) - self.prior_log_prob(z)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        z = q.rsample()
        rec = -log_prob(self.decoder(z), x if target is None else target).mean()
        kl = (q.log_prob(z) - self.prior_log_prob(z)).mean()
        return LossOutput(rec + self.beta * kl, {"reconstruction": rec, "kl": kl})

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True,
               total_count: torch.Tensor | float | None = None) -> torch.Tensor:
        """`n` new data points decoded from `z ~ p(z)` (a random component, then its
        posterior; inside `given(c)`, row i of c conditions draw i, or one row all):
        the decoder's point prediction, or a draw with `mean_only=False`; a multinomial
        decoder's at the totals `total_count`, one per sample or one for all."""
        n = positive_int(n, "n")
        loc, scale = self.components()
        if len(loc) not in (1, n):
            raise ValueError(f"{n} samples under conditions of {len(loc)} rows: give one row, "
                             f"or one per sample")
        rows = torch.arange(n, device=loc.device) % len(loc)
        pick = torch.randint(loc.shape[1], (n,), device=loc.device)
        z = loc[rows, pick] + scale[rows, pick] * torch.randn_like(loc[rows, pick])
        p = self.decoder(z)
        return generate(p, mean_only, total_count)
