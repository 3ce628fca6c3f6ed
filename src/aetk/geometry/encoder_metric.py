"""The encoder's metric of any VAE and sampling from its Riemannian uniform distribution
(Chadebec & Allassonnière 2022, "A Geometric Perspective on Variational Autoencoders").

From the posteriors `N(mu_i, diag sigma_i^2)` of N training points,

    G(z) = sum_i Sigma_i^{-1} exp(-|z - mu_i|^2_{Sigma_i^{-1}} / rho^2) + lambda exp(-tau |z|^2) I,

a smooth metric that equals the posterior precision near each code and fades to
`lambda I` away from them (`rho`: the largest distance from a code to its nearest
neighbour). Its volume element `sqrt(det G(z))` is large where the codes are, so the
Riemannian uniform distribution `p(z) ~ sqrt(det G(z))` generates from where the encoder
put the data instead of from the whole prior, holes included: a post-hoc sampler for a
trained VAE, drawn by Hamiltonian Monte Carlo. (For the same reason its geodesics cut
through the empty space between the codes, where G is about lambda I: interpolate with
the RHVAE's metric or a decoder's pull-back.) `Sigma_i^{-1} = diag(1 / sigma_i^2)`, the
precision (AutoEncoderToolkit.jl's unreleased version uses `1 / sigma_i`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch import distributions as D

from ..centroids import select_centroids
from ..distributions import FULL_COVARIANCE
from ..hamiltonian import Position, hmc
from ..nets import evaluating
from ..validate import as_tensor, check_posteriors, positive_int
from .metrics import Metric, latent_points, positive_number

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
EXPONENT_CAP = 80.0  # exp(-80) = 1.8e-35: a normal float32, unlike what lies beyond


def _nearest_neighbour_distances(points: Tensor, chunk_size: int = 1024) -> Tensor:
    """Distance from each row to its nearest other row, `(N,)`, in chunks of rows."""
    out = []
    for start in range(0, len(points), chunk_size):
        dist = torch.cdist(points[start:start + chunk_size], points)
        rows = torch.arange(dist.shape[0], device=points.device)
        dist[rows, rows + start] = float("inf")
        out.append(dist.min(1).values)
    return torch.cat(out)


class EncoderMetric(Metric, nn.Module):
    """`G(z)` above from the codes `loc (N, d)` and posterior scales `scale (N, d)`:
    diagonal, so `G`, its volume and `v^T G v` cost two GEMMs over the N codes.
    `rho=None` takes the largest nearest-neighbour distance between the codes; the defaults
    `regularization=1e-4` (lambda) and `tau` (float32's epsilon) are the paper's."""

    def __init__(self, loc: Tensor, scale: Tensor, *, rho: float | None = None,
                 regularization: float = 1e-4, tau: float = FLOAT32_EPS) -> None:
        nn.Module.__init__(self)
        Metric.__init__(self)
        loc, scale = check_posteriors(loc, scale, "the encoder metric")
        # NaN ones gave a NaN metric, rho = inf one constant metric, without a word
        regularization = positive_number(regularization, "regularization")
        tau = positive_number(tau, "tau", zero=True)
        if rho is None:
            rho = float(_nearest_neighbour_distances(loc).max())
            if not rho > 0:
                raise ValueError(f"rho must be positive (distinct codes), got {rho}")
        rho = positive_number(rho, "rho")
        precision = scale.pow(-2)
        self.latent_dim = loc.shape[1]
        self.rho, self.regularization, self.tau = rho, float(regularization), float(tau)
        self.register_buffer("loc", loc)
        self.register_buffer("precision", precision)

    @classmethod
    def from_model(cls, model: nn.Module, x: Tensor, *, n_centroids: int | None = None,
                   method: str = "kmeans", seed: int = 0, batch_size: int = 4096,
                   conditions: Tensor | None = None, **kwargs: float) -> EncoderMetric:
        """The metric of `model`'s encoder on the training data `x` (with their
        `conditions` for a conditional model): all N codes, or `n_centroids` of them chosen
        by `method` (as the RHVAE's centroids: "kmeans" snapped to codes, "kmeans++" or
        "kmedoids") to bound the cost of an evaluation. The encoder runs in evaluation
        mode (no input noise or dropout; the model's mode is put back)."""
        param = next(model.parameters())
        k = getattr(model, "n_conditions", 0)
        if conditions is None and k and model.conditions() is None:
            raise ValueError(f"this {type(model).__name__} is conditional: give conditions=c, "
                             f"the conditions ({len(x)}, {k}) of x's rows")
        x = as_tensor(x, param.dtype)
        rows = torch.arange(len(x)).split(positive_int(batch_size, "batch_size"))
        with torch.no_grad(), evaluating(model):
            if conditions is None:
                parts = [model.encode(x[r].to(param.device)) for r in rows]
            else:
                c = as_tensor(conditions, param.dtype)
                parts = []
                for r in rows:
                    with model.given(c[r]):
                        parts.append(model.encode(x[r].to(param.device)))
        if not all(isinstance(q, D.Distribution) for q in parts):
            raise ValueError(f"the encoder metric needs a distribution-valued encoder; "
                             f"{type(model).__name__} has a deterministic one")
        if isinstance(parts[0], FULL_COVARIANCE):  # its stddev would drop the correlations
            raise ValueError(
                f"the encoder metric is built from diagonal posteriors, but {type(model).__name__}"
                f"'s encoder returns a {type(parts[0]).__name__} with a full covariance: use a "
                "diagonal encoder, or build it knowingly from the marginal scales alone, "
                "EncoderMetric.from_codes(q.mean, q.stddev) with q = model.encode(x)")
        return cls.from_codes(torch.cat([q.mean for q in parts]),
                              torch.cat([q.stddev for q in parts]), n_centroids=n_centroids,
                              method=method, seed=seed, **kwargs)

    @classmethod
    def from_codes(cls, loc: Tensor, scale: Tensor, *, n_centroids: int | None = None,
                   method: str = "kmeans", seed: int = 0, **kwargs: float) -> EncoderMetric:
        """The metric of stored codes and scales `(N, d)`, keeping `n_centroids` of them
        as `from_model` does; the scales are taken to the codes' device."""
        # before the kept rows are taken: CUDA indices of CPU scales are refused
        loc = as_tensor(loc, None)
        scale = as_tensor(scale, None, loc.device)
        if n_centroids is not None:
            n_centroids = positive_int(n_centroids, "n_centroids")
        if n_centroids is not None and n_centroids < len(loc):
            keep = torch.as_tensor(select_centroids(loc, n_centroids, method, seed),
                                   device=loc.device)
            loc, scale = loc[keep], scale[keep]
        return cls(loc, scale, **kwargs)

    def _kernels(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`exp(-|z - mu_i|^2_{P_i} / rho^2)` `(B, N)`, the floor `lambda exp(-tau |z|^2)`
        `(B, 1)`, both in z's dtype, and z in float64."""
        # |z - mu_i|^2_P = z^2 . P_i - 2 z . (P_i mu_i) + mu_i^2 . P_i, two GEMMs, in float64:
        # with posterior precisions of 1e4, float32 loses up to 0.15 of the exponent to
        # cancellation. Exponents are capped at EXPONENT_CAP: exp's slow path for results
        # that underflow made it 6x slower, for kernel weights (< 2e-35) that no sum notices.
        y, mu, P = z.double(), self.loc.double(), self.precision.double()
        mahalanobis = ((y * y) @ P.T - 2 * y @ (P * mu).T + (P * mu * mu).sum(1)).clamp_min(0.0)
        exponent = (mahalanobis / self.rho**2).clamp_max(EXPONENT_CAP).to(z.dtype)
        floor = self.regularization * torch.exp(-self.tau * (z * z).sum(-1, keepdim=True))
        return torch.exp(-exponent), floor, y

    def diagonal(self, z: Tensor) -> Tensor:
        """The diagonal of `G(z)`, `(B, d)` for `z (B, d)`."""
        weights, floor, _ = self._kernels(z)
        return weights @ self.precision + floor

    def _log_volume_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        # With G = diag(D), D = sum_i w_i P_i + f and a = 1/D:
        # d/dz_j 1/2 sum_k log D_k = -(1/rho^2) sum_i c_i P_ij (z_j - mu_ij) - tau z_j f sum_k a_k,
        # c_i = w_i <a, P_i>: three GEMMs instead of a backward pass through the (B, N) kernels
        weights, floor, y = self._kernels(z)
        D = weights @ self.precision + floor
        a = D.reciprocal()
        P = self.precision.double()
        c = (weights * (a @ self.precision.T)).double()
        pull = (y * (c @ P) - c @ (P * self.loc.double())) / self.rho**2
        grad = -pull.to(z.dtype) - self.tau * z * floor * a.sum(-1, keepdim=True)
        return 0.5 * D.log().sum(-1), grad

    def _metric(self, z: Tensor) -> Tensor:
        return torch.diag_embed(self.diagonal(z))

    def _quad(self, z: Tensor, v: Tensor) -> Tensor:
        return (v * v * self.diagonal(z).unsqueeze(-2)).sum(-1)

    def _log_volume(self, z: Tensor) -> Tensor:
        return 0.5 * self.diagonal(z).log().sum(-1)

    def sample(self, n: int, *, n_steps: int = 50, n_leapfrog: int = 15,
               step_size: float | None = None) -> Tensor:
        """`n` latent points from the Riemannian uniform distribution, each chain started at
        a random code (seed torch). The default step is a quarter of the kernels' median
        width `rho sigma_i`: a fixed 0.05 left 2-7% of the chains of 2-D MNIST models
        without a single accepted move, a quarter width none (and 0.4 latent units
        travelled, median), with the same sample quality."""
        n = positive_int(n, "n")
        if step_size is None:
            step_size = 0.25 * float((self.rho * self.precision.rsqrt()).median())
        start = self.loc[torch.randint(len(self.loc), (n,), device=self.loc.device)]
        return riemannian_uniform(self, start, n_steps=n_steps, n_leapfrog=n_leapfrog,
                                  step_size=step_size)


def riemannian_uniform(metric: Metric, start: Tensor, *, n_steps: int = 50,
                       n_leapfrog: int = 15, step_size: float = 0.05) -> Tensor:
    """Hamiltonian Monte Carlo (unit mass, Metropolis-corrected) on the density
    proportional to `sqrt(det G(z))`, one chain per row of `start (n, d)`: the points after
    `n_steps` transitions of `n_leapfrog` leapfrog steps. The volume element must be
    integrable (`EncoderMetric`'s is, through `tau`)."""
    def position(z: Tensor) -> Position:
        log_volume, grad = metric.log_volume_and_grad(z)
        return Position(z, -log_volume, -grad)

    start = latent_points(metric, start, "start", finite=True).detach()
    if start.dim() != 2:  # else an IndexError inside the sampler
        raise ValueError(f"start must hold the chains' first points, (n, d), got shape "
                         f"{tuple(start.shape)}")
    with torch.no_grad():
        return hmc(position(start), position, n_steps, n_leapfrog, step_size)
