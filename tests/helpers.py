"""Data and geometry fixtures shared by several test modules."""

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import distributions as D
from torch import nn

import aetk
from aetk.decoders import Decoder
from aetk.geometry import Metric, metric_for


def digits(likelihood: str = "bernoulli", n: int = 600) -> tuple[torch.Tensor, dict]:
    """The first `n` scikit-learn digits (8 x 8, values 0..16) in the range a likelihood
    takes, with the options it needs: [0, 1] for Bernoulli, Gaussians and the mean squared
    error, five classes for the categorical, raw counts otherwise."""
    x = torch.as_tensor(load_digits().data, dtype=torch.float32)[:n]
    if likelihood in ("bernoulli", "gaussian", "gaussian_learned", "mse"):
        return x / 16.0, {}
    if likelihood == "categorical":
        return (x / 4).floor(), {"n_classes": 5}
    return x, {}


def mmd_by_hand(x: np.ndarray, y: np.ndarray, gram, unbiased: bool) -> float:
    """MMD^2 of samples `x`, `y` with the kernel matrix function `gram(a, b)`: the
    U-statistic (diagonals left out) or the V-statistic."""
    kxx, kyy, kxy = gram(x, x), gram(y, y), gram(x, y)
    n, m = len(x), len(y)
    if unbiased:
        xx = (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    else:
        xx, yy = kxx.mean(), kyy.mean()
    return xx + yy - 2 * kxy.mean()


class FixedMLP:
    """`Linear -> tanh -> Linear` with seeded float64 weights, as a torch module (`.module`)
    and by hand in numpy (`__call__`)."""

    def __init__(self, n_in: int, n_out: int, seed: int, hidden: int = 5) -> None:
        rng = np.random.default_rng(seed)
        self.w1, self.w2 = rng.standard_normal((hidden, n_in)), rng.standard_normal((n_out, hidden))
        self.b1, self.b2 = 0.5 * rng.standard_normal(hidden), 0.5 * rng.standard_normal(n_out)
        self.module = nn.Sequential(nn.Linear(n_in, hidden), nn.Tanh(),
                                    nn.Linear(hidden, n_out)).double()
        with torch.no_grad():
            for p, w in zip(self.module.parameters(), (self.w1, self.b1, self.w2, self.b2),
                            strict=True):
                p.copy_(torch.from_numpy(w))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.tanh(x @ self.w1.T + self.b1) @ self.w2.T + self.b2


def central_differences(loss, param: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of the scalar `loss()` in every entry of `param` (float64)."""
    out = torch.zeros_like(param)
    with torch.no_grad():
        for idx in np.ndindex(*param.shape):
            param[idx] += h
            up = loss().item()
            param[idx] -= 2 * h
            down = loss().item()
            param[idx] += h
            out[idx] = (up - down) / (2 * h)
    return out


def fix_normal_noise(monkeypatch, eps: np.ndarray) -> None:
    """`Normal.rsample` returns `loc + scale * eps`, so that a hand computation can use the
    same noise."""
    monkeypatch.setattr(D.Normal, "rsample",
                        lambda self, shape=(): self.loc + self.scale * torch.from_numpy(eps))


def poincare() -> Metric:
    """Upper half-plane: G(z) = I / z_2^2."""
    return Metric(lambda z: torch.eye(2, dtype=z.dtype) / z[:, 1, None, None] ** 2)


def hyperbolic_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.arccosh(1 + (a - b).square().sum(-1) / (2 * a[:, 1] * b[:, 1]))


def half_plane_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    z0 = torch.tensor([[-1.0, 1.0], [0.0, 0.5], [-2.0, 1.0], [0.0, 1.0], [0.3, 0.2]],
                      dtype=torch.float64)
    z1 = torch.tensor([[1.0, 1.0], [1.0, 2.0], [2.0, 0.5], [0.0, 3.0], [1.5, 0.4]],
                      dtype=torch.float64)
    return z0, z1


class SphereDecoder(Decoder):
    """Latent angles (polar theta, azimuth phi) onto the unit sphere in R^3."""

    def forward(self, z: torch.Tensor) -> D.Distribution:
        theta, phi = z[:, 0], z[:, 1]
        x = torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)
        return D.Independent(D.Normal(x, 1.0), 1)


def sphere(z: torch.Tensor) -> torch.Tensor:
    return SphereDecoder()(z).mean


def small_rhvae_metric() -> Metric:
    """The metric of a small untrained float32 RHVAE (6 features, latent 2, 4 centroids),
    seeded: for dtype and device handling, not for numbers."""
    torch.manual_seed(0)
    model = aetk.build_model("rhvae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             centroids=4)
    model.on_fit_start(torch.rand(32, 6))
    model.update_metric()
    return metric_for(model.eval())


class OnceDifferentiableTanh(nn.Module):
    """tanh through an autograd Function whose backward autograd cannot differentiate
    again (`@once_differentiable`, as in some third-party layers)."""

    class _Function(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            (y,) = ctx.saved_tensors
            return grad * (1 - y * y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._Function.apply(x)
