"""The aggregate posterior `q(z) = 1/N sum_n q(z|x_n)` of a data set, and the average KL of
the ELBO split by it ("ELBO surgery", Hoffman & Johnson 2016; Chen et al. 2018):

    <KL(q(z|x) || p(z))> = I(x; z) + KL(q(z) || p(z)),
    KL(q(z) || N(0, I)) = TC + DWKL.

`I(x; z)` is the mutual information between a data point's index and its code (at most
`log N`): how much the codes tell the points apart. `TC`, the total correlation of `q(z)`,
measures the dependence between latent dimensions, and `DWKL`, the KL of its marginals to
`N(0, 1)`, how far each dimension's spread is from the prior's. A large `KL(q(z) || p(z))`
means holes: prior draws land where no data point's posterior is.

The estimates use the exact mixture over all N points (no minibatch approximation) and one
code `z_n ~ q(z|x_n)` per point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor
from torch import distributions as D

from .validate import as_tensor, check_posteriors, positive_int


@dataclass(frozen=True)
class KLDecomposition:
    """Terms of the average KL in nats (means over the N points)."""

    mutual_information: float  # <log q(z|x) - log q(z)>, in [0, log N]
    total_correlation: float  # <log q(z) - sum_j log q(z_j)>
    dimensionwise_kl: float  # <sum_j log q(z_j) - log N(z_j; 0, 1)>
    n: int

    @property
    def marginal_kl(self) -> float:
        """`KL(q(z) || N(0, I)) = TC + DWKL`."""
        return self.total_correlation + self.dimensionwise_kl

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "marginal_kl": self.marginal_kl}


def kl_decomposition(loc: Tensor | np.ndarray, scale: Tensor | np.ndarray,
                     z: Tensor | np.ndarray | None = None, *, n_draws: int = 1,
                     chunk_size: int = 1024) -> KLDecomposition:
    """Mutual information, total correlation and dimension-wise KL of the aggregate of the
    diagonal Gaussian posteriors `N(loc_n, diag(scale_n^2))` (`(N, d)` each), at the codes
    `z`: `(N, d)`, one per point, or `(S, N, d)`, S per point; drawn here when None,
    `n_draws` per point (seed torch).

    The terms are Monte Carlo estimates over the codes, and their sum is the Monte Carlo
    KL of those codes: on 200 points of 2 dimensions (scales 0.3-0.8) the sum scattered by
    0.19 nats from seed to seed with one draw per point, 0.03 with ten (40 seeds; the
    closed-form mean KL 1.562, the means 1.571 and 1.565).

    For a trained model: `q = model.encode(x); kl_decomposition(q.mean, q.stddev)`.
    Computed in float64, `chunk_size` codes at a time against all N posteriors.
    """
    loc, scale = (t.double() for t in check_posteriors(loc, scale, "the decomposition"))
    n_draws = positive_int(n_draws, "n_draws")
    chunk_size = positive_int(chunk_size, "chunk_size")  # 0 failed in torch's split
    posterior = D.Normal(loc, scale)
    z = (posterior.sample((n_draws,)) if z is None
         else as_tensor(z, torch.float64, loc.device).detach())
    if z.shape[-2:] != loc.shape or z.dim() not in (2, 3):
        raise ValueError(f"z must have the shape of loc, {tuple(loc.shape)}, or (S, "
                         f"*{tuple(loc.shape)}), got {tuple(z.shape)}")
    n = len(loc)
    log_qzj, log_qz = [], []
    for part in z.reshape(-1, z.shape[-1]).split(chunk_size):
        lp = posterior.log_prob(part.unsqueeze(1))  # (c, N, d): each code under each posterior
        log_qzj.append(torch.logsumexp(lp, 1) - math.log(n))
        log_qz.append(torch.logsumexp(lp.sum(-1), 1) - math.log(n))
    qzj, qz = torch.cat(log_qzj), torch.cat(log_qz)
    own = posterior.log_prob(z).sum(-1).reshape(-1)  # each code under its own posterior
    prior = D.Normal(0.0, 1.0).log_prob(z).reshape(qzj.shape)
    return KLDecomposition(
        mutual_information=float((own - qz).mean()),
        total_correlation=float((qz - qzj.sum(-1)).mean()),
        dimensionwise_kl=float((qzj - prior).sum(-1).mean()),
        n=n,
    )
