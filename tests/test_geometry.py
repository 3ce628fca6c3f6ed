"""aetk.geometry against known answers: flat and hyperbolic metrics, a sphere embedding,
an RHVAE far from its centroids, finite-difference Jacobians and hand-made Fisher metrics."""

import math
import re
from functools import partial

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk
from aetk.geometry import (
    Metric,
    NeuralGeodesic,
    PullbackMetric,
    RHVAEMetric,
    curve_energy,
    curve_length,
    distance_matrix,
    fit_geodesics,
    graph_curves,
    interpolate,
    metric_for,
    volume_grid,
)

from helpers import SphereDecoder, half_plane_pairs, hyperbolic_distance, poincare, sphere

torch.set_num_threads(1)
f64 = torch.float64


def constant(A: torch.Tensor) -> Metric:
    return Metric(lambda z: A.expand(len(z), -1, -1))


def tiny_decoder(cls: type, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    dec = cls(latent_dim=2, out_features=5, hidden=(8,), activation="tanh", **kwargs)
    return dec.double().eval()


def fd_jacobian(f, z: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of `f: (N, d) -> (N, m)`, `(N, m, d)`."""
    cols = []
    for j in range(z.shape[1]):
        e = torch.zeros_like(z)
        e[:, j] = h
        cols.append((f(z + e) - f(z - e)) / (2 * h))
    return torch.stack(cols, -1)


# --- curves ------------------------------------------------------------------------------


def test_half_circle_length_and_energy_on_a_non_uniform_grid():
    euclid = constant(torch.eye(2, dtype=f64))
    t = torch.linspace(0, 1, 401, dtype=f64).square()  # dense near 0, sparse near 1
    angle = math.pi * t
    points = torch.stack([angle.cos(), angle.sin()], -1)[None]
    velocity = (math.pi * torch.stack([-angle.sin(), angle.cos()], -1))[None]
    # exact velocities: the speed is constant, so the trapezoid rule is exact
    assert curve_length(euclid, points, t, velocity).item() == pytest.approx(math.pi, rel=1e-12)
    assert curve_energy(euclid, points, t, velocity).item() == pytest.approx(
        math.pi**2 / 2, rel=1e-12
    )
    # the discrete curve: chords, second order in the largest step
    assert curve_length(euclid, points).item() == pytest.approx(math.pi, rel=1e-4)
    # speed 2 pi s along gamma(s) = half circle at s^2: energy 1/2 int (2 pi s)^2 ds = 2 pi^2/3
    s = torch.linspace(0, 1, 401, dtype=f64) ** 0.5  # a non-uniform grid for s
    pts = torch.stack([(math.pi * s**2).cos(), (math.pi * s**2).sin()], -1)[None]
    vel = (2 * math.pi * s)[:, None] * torch.stack(
        [-(math.pi * s**2).sin(), (math.pi * s**2).cos()], -1
    )
    assert curve_length(euclid, pts, s, vel[None]).item() == pytest.approx(math.pi, rel=1e-5)
    assert curve_energy(euclid, pts, s, vel[None]).item() == pytest.approx(
        2 * math.pi**2 / 3, rel=1e-4
    )
    assert curve_energy(euclid, pts, s).item() == pytest.approx(2 * math.pi**2 / 3, rel=1e-4)


def test_straight_line_length_in_a_constant_metric():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    z0, z1 = torch.randn(3, 2, dtype=f64), torch.randn(3, 2, dtype=f64)
    t = torch.linspace(0, 1, 7, dtype=f64) ** 3
    pts = z0[:, None] + t[None, :, None] * (z1 - z0)[:, None]
    dz = z1 - z0
    exact = torch.einsum("bi,ij,bj->b", dz, A, dz)
    torch.testing.assert_close(curve_length(constant(A), pts, t), exact.sqrt())
    # energy of gamma(s) = z0 + s^3 dz: 1/2 int 9 s^4 ds |dz|_A^2 = 9/10 |dz|_A^2, here from
    # 7 chords: 1/2 sum (s_{k+1}^3 - s_k^3)^2 / (s_{k+1} - s_k)
    s = torch.linspace(0, 1, 7, dtype=f64)
    chord = 0.5 * ((s[1:] ** 3 - s[:-1] ** 3).square() / s.diff()).sum()
    torch.testing.assert_close(curve_energy(constant(A), pts, s), chord * exact)


def test_neural_geodesic_keeps_endpoints_and_has_exact_velocities():
    z0, z1 = torch.randn(4, 3, dtype=f64), torch.randn(4, 3, dtype=f64)
    curve = NeuralGeodesic(z0, z1, hidden=(8, 8), seed=1)
    with torch.no_grad():
        curve.params.normal_()  # a bent curve
    t = torch.linspace(0, 1, 11, dtype=f64)
    pts, vel = curve.points_and_velocities(t)
    torch.testing.assert_close(pts[:, 0], z0, rtol=0, atol=1e-14)
    torch.testing.assert_close(pts[:, -1], z1, rtol=0, atol=1e-14)
    h = 1e-6
    fd = (curve(t + h) - curve(t - h)) / (2 * h)
    torch.testing.assert_close(vel, fd, rtol=1e-6, atol=1e-8)
    assert (pts[:, 1:-1] - (z0[:, None] + t[1:-1, None] * (z1 - z0)[:, None])).abs().max() > 0.01


def test_neural_geodesic_refuses_endpoints_that_do_not_pair():
    """z_start (2, d) and z_end (3, d), or of another d, failed at the first evaluation in
    torch's broadcasting ("The size of tensor a (2) must match the size of tensor b (3)")."""
    for end in (torch.ones(3, 2), torch.ones(2, 3)):
        with pytest.raises(ValueError, match=r"z_start \(2, 2\) and z_end .* must be the same "
                                             "shape"):
            NeuralGeodesic(torch.zeros(2, 2), end)
    assert NeuralGeodesic(torch.zeros(2), torch.ones(2))(torch.linspace(0, 1, 4)).shape == (
        1, 4, 2)


def test_discrete_length_and_energy_are_trapezoid_rules_on_the_half_plane():
    """On G = I / y^2 the straight segments have speeds that differ at their two ends: the
    length is the trapezoid rule on the speed |dz/dt|_G and the energy 1/2 the trapezoid rule
    on its square, both with dz/dt constant per segment. (0, 1) -> (0, 2) in t in [0, 1]:
    speeds 1 and 1/2, length 1/2 (1 + 1/2) = 0.75 (not the exact log 2, nor
    sqrt(1/2 (1 + 1/4)) = 0.79), energy 1/4 (1 + 1/4) = 0.3125."""
    pts = torch.tensor([[[0.0, 1.0], [0.0, 2.0]]], dtype=f64)
    assert curve_length(poincare(), pts).item() == pytest.approx(0.75, rel=1e-14)
    assert curve_energy(poincare(), pts).item() == pytest.approx(0.3125, rel=1e-14)
    # then (0, 2) -> (1, 2), speed 1/2 at both ends, at t = 0, 1/4, 1: dz/dt is 4 dz on the
    # first segment and 4/3 dz on the second
    pts = torch.tensor([[[0.0, 1.0], [0.0, 2.0], [1.0, 2.0]]], dtype=f64)
    t = torch.tensor([0.0, 0.25, 1.0], dtype=f64)
    assert curve_length(poincare(), pts, t).item() == pytest.approx(0.75 + 0.5, rel=1e-14)
    energy = 0.5 * (0.25 * (16 + 4) / 2 + 0.75 * (4 / 9 + 4 / 9) / 2)  # dt (q0 + q1) / 2
    assert curve_energy(poincare(), pts, t).item() == pytest.approx(energy, rel=1e-14)


def test_the_default_grid_is_uniform_on_zero_one():
    """Without `t` a curve is taken at T evenly spaced times from 0 to 1: the straight line
    z0 + t dz at 7 such points has energy 1/2 |dz|_A^2 and length |dz|_A in a constant
    metric A, from chords and from exact velocities dz alike."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    z0, z1 = torch.randn(3, 2, dtype=f64), torch.randn(3, 2, dtype=f64)
    dz = z1 - z0
    s = torch.arange(7, dtype=f64) / 6
    pts = z0[:, None] + s[None, :, None] * dz[:, None]
    vel = dz[:, None].expand(-1, 7, -1)
    exact = torch.einsum("bi,ij,bj->b", dz, A, dz)
    for velocities in (None, vel):
        torch.testing.assert_close(curve_energy(constant(A), pts, velocities=velocities),
                                   0.5 * exact, rtol=1e-12, atol=0)
        torch.testing.assert_close(curve_length(constant(A), pts, velocities=velocities),
                                   exact.sqrt(), rtol=1e-12, atol=0)


def test_times_that_do_not_fit_the_points_are_refused():
    """t of another length than the points broadcast against the segments: 2 times for 3
    points on a line of unit steps gave the energy 1 (every step taking the time 1)
    instead of refusing; decreasing times gave a negative energy, repeated ones an infinite
    one, and velocities of another shape an error from inside torch's forward mode. Two
    rows of times for one curve (T, d) gave it two energies, without a word."""
    euclid = constant(torch.eye(2, dtype=f64))
    pts = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]], dtype=f64)
    assert curve_energy(euclid, pts, torch.tensor([0.0, 0.5, 1.0])).item() == pytest.approx(2.0)
    for fn in (curve_energy, curve_length):
        for t in (torch.tensor([0.0, 1.0]), torch.linspace(0, 1, 7), torch.zeros(2, 2, 3)):
            with pytest.raises(ValueError, match="times of the curves' 3 points"):
                fn(euclid, pts, t)
        for t in (torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.0, 0.0, 1.0]),
                  torch.tensor([0.0, float("nan"), 1.0])):
            with pytest.raises(ValueError, match="strictly increasing"):
                fn(euclid, pts, t)
        with pytest.raises(ValueError, match="times of the curves' 3 points"):  # 2 curves' t
            fn(euclid, pts.expand(3, -1, -1), torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.2, 1.0]]))
        with pytest.raises(ValueError, match="times of the curves' 3 points"):  # one curve's
            fn(euclid, pts[0], torch.tensor([[0.0, 0.5, 1.0], [0.0, 0.2, 1.0]]))
        with pytest.raises(ValueError, match="velocities must have the points' shape"):
            fn(euclid, pts, velocities=torch.ones(1, 2, 2))
        with pytest.raises(ValueError, match="at least 2 points"):
            fn(euclid, pts[:, :1])


# --- metrics -----------------------------------------------------------------------------


def test_pullback_mean_metric_matches_finite_differences_with_learned_sigma():
    dec = tiny_decoder(aetk.LearnedGaussianDecoder)
    z = torch.randn(6, 2, dtype=f64)
    Jm = fd_jacobian(lambda z: dec(z).mean, z)
    Js = fd_jacobian(lambda z: dec(z).stddev, z)
    expected = Jm.mT @ Jm + Js.mT @ Js
    metric = PullbackMetric(dec)
    torch.testing.assert_close(metric(z), expected, rtol=1e-7, atol=1e-10)
    assert (Js.mT @ Js).abs().max() > 1e-3  # the sigma term is really there
    v = torch.randn(6, 1, 2, dtype=f64)
    torch.testing.assert_close(
        metric.quad(z, v)[:, 0], torch.einsum("ni,nij,nj->n", v[:, 0], expected, v[:, 0])
    )
    torch.testing.assert_close(metric.log_volume(z), 0.5 * torch.logdet(expected))


@pytest.mark.parametrize(
    ("cls", "kwargs", "mean"),
    [
        (aetk.BernoulliDecoder, {}, lambda d: d.base_dist.probs),
        (aetk.PoissonDecoder, {}, lambda d: d.base_dist.rate),
        (aetk.NegativeBinomialDecoder, {"dispersion": "sample"}, lambda d: d.mean),
        (aetk.CategoricalDecoder, {"n_classes": 3}, lambda d: d.base_dist.probs.flatten(1)),
    ],
)
def test_pullback_mean_metric_of_other_likelihoods_uses_their_means(cls, kwargs, mean):
    dec = tiny_decoder(cls, **kwargs)
    z = torch.randn(6, 2, dtype=f64)
    J = fd_jacobian(lambda z: mean(dec(z)), z)
    torch.testing.assert_close(PullbackMetric(dec)(z), J.mT @ J, rtol=1e-7, atol=1e-10)


def test_fisher_metrics_match_hand_formulas():
    z = torch.randn(5, 2, dtype=f64)
    # Bernoulli: J_logits^T diag(p (1-p)) J_logits
    dec = tiny_decoder(aetk.BernoulliDecoder)
    J = fd_jacobian(lambda z: dec(z).base_dist.logits, z)
    p = dec(z).mean
    expected = torch.einsum("nmi,nm,nmj->nij", J, p * (1 - p), J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-7, atol=1e-10)
    # Poisson: natural parameter log rate, F = rate
    dec = tiny_decoder(aetk.PoissonDecoder, seed=1)
    J = fd_jacobian(lambda z: dec(z).mean.log(), z)
    expected = torch.einsum("nmi,nm,nmj->nij", J, dec(z).mean, J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-7, atol=1e-10)
    # categorical: per element J^T (diag p - p p^T) J over the class axis
    dec = tiny_decoder(aetk.CategoricalDecoder, seed=2, n_classes=3)
    J = fd_jacobian(lambda z: dec(z).base_dist.logits.flatten(1), z).reshape(5, 5, 3, 2)
    p = dec(z).base_dist.probs
    F = torch.diag_embed(p) - p[..., :, None] * p[..., None, :]
    expected = torch.einsum("nmki,nmkl,nmlj->nij", J, F, J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-7, atol=1e-10)
    # a distribution without a KL divergence registered with torch has no Fisher metric
    with pytest.raises(ValueError, match=r"no Fisher metric for StudentT.*kind='mean'"):
        PullbackMetric(lambda z: D.Independent(D.StudentT(3.0, z, 1.0), 1), "fisher")(z)
    # nor one whose KL's Hessian is not its Fisher metric: Laplace's loc term came out 0,
    # Uniform's and Pareto's G indefinite, Wishart's failed inside torch.autograd
    for dec in (lambda z: D.Independent(D.Laplace(z, 1.0), 1),
                lambda z: D.Independent(D.Uniform(z, z + 1), 1),
                lambda z: D.Independent(D.Pareto(z.exp(), 2.0), 1),
                lambda z: D.Wishart(4.0, scale_tril=torch.diag_embed(z.exp()))):
        with pytest.raises(ValueError, match=r"no Fisher metric for \w+: .*kind='mean'"):
            PullbackMetric(dec, "fisher")(z)


def test_kl_hessian_fisher_metric_equals_the_closed_forms(monkeypatch):
    """The Hessian of KL(p_z || p_z') at z' = z, the fallback for families without a
    closed form, gives the closed-form Fisher metric of a Gaussian with fixed sigma and
    of a Bernoulli; those families keep their closed form (never the KL path)."""
    from aetk.geometry import metrics

    z = torch.randn(5, 2, dtype=f64)
    eye = torch.eye(2, dtype=f64).expand(5, 2, 2)
    decoders = (tiny_decoder(aetk.GaussianDecoder, seed=6, sigma=0.7),
                tiny_decoder(aetk.BernoulliDecoder, seed=7))
    for dec in decoders:
        closed = PullbackMetric(dec, "fisher")(z)
        assert closed.diagonal(dim1=-2, dim2=-1).min() > 1e-3
        torch.testing.assert_close(metrics._kl_gram(dec, z, eye), closed, rtol=0, atol=1e-10)
    monkeypatch.setattr(metrics, "_kl_gram", None)  # calling it now fails
    for dec in decoders:
        PullbackMetric(dec, "fisher")(z)


def test_gamma_decoder_fisher_metric_from_the_kl_hessian():
    """Independent(Gamma(alpha(z), beta(z))) has no closed form in PullbackMetric: its
    KL-Hessian metric equals J^T F J with Gamma's Fisher information in (alpha, beta),
    F = [[trigamma(alpha), -1/beta], [-1/beta, alpha/beta^2]], and Jacobians by jacrev;
    its quadratic form, log volume gradient and connection agree with those of the hand
    metric."""
    from aetk.geometry.connection import christoffel_contract

    torch.manual_seed(8)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 10)).double()

    def params(z):
        h = nn.functional.softplus(net(z)) + 0.5
        return h[..., :5], h[..., 5:]

    def hand(z):
        J = torch.func.vmap(torch.func.jacrev(lambda y: torch.stack(params(y), -1)))(z)
        a, b = params(z)
        F = torch.stack([torch.stack([torch.special.polygamma(1, a), -1 / b], -1),
                         torch.stack([-1 / b, a / b.square()], -1)], -2)
        return torch.einsum("nmpi,nmpq,nmqj->nij", J, F, J)

    metric = PullbackMetric(lambda z: D.Independent(D.Gamma(*params(z)), 1), "fisher")
    z = torch.randn(6, 3, dtype=f64)
    G, expected = metric(z), hand(z)
    assert torch.equal(G, G.mT) and torch.linalg.eigvalsh(G).min() > 0
    torch.testing.assert_close(G, expected, rtol=0, atol=1e-8)
    v = torch.randn(6, 2, 3, dtype=f64)
    torch.testing.assert_close(metric.quad(z, v),
                               torch.einsum("nki,nij,nkj->nk", v, expected, v))
    value, grad = metric.log_volume_and_grad(z)
    reference = Metric(hand).log_volume_and_grad(z)
    torch.testing.assert_close(value, reference[0])
    torch.testing.assert_close(grad, reference[1])
    u = torch.randn(6, 3, dtype=f64)
    torch.testing.assert_close(christoffel_contract(metric, z, u),
                               christoffel_contract(Metric(hand), z, u))



def test_learned_gaussian_fisher_metric_against_quadrature_of_the_score():
    """F of N(mu, sigma) in (mu, sigma) is E[score score^T]: here with the score by autograd
    through torch's density at 20 Gauss-Hermite nodes (exact for its degree-4 polynomials),
    not the closed form diag(1/sigma^2, 2/sigma^2) the metric uses, pulled back through
    finite-difference Jacobians of the mean and of sigma itself (the decoder outputs log
    sigma)."""
    dec = tiny_decoder(aetk.LearnedGaussianDecoder, seed=5)
    z = torch.randn(4, 2, dtype=f64)
    out = dec(z)
    mu, sigma = out.mean.detach(), out.stddev.detach()
    nodes, weights = np.polynomial.hermite.hermgauss(20)
    x = mu + math.sqrt(2) * sigma * torch.from_numpy(nodes)[:, None, None]  # (20, n, m)
    loc = mu.expand_as(x).clone().requires_grad_()
    scale = sigma.expand_as(x).clone().requires_grad_()
    score = torch.stack(torch.autograd.grad(D.Normal(loc, scale).log_prob(x).sum(),
                                            (loc, scale)), -1)  # (20, n, m, 2)
    fisher = torch.einsum("q,qnma,qnmb->nmab", torch.from_numpy(weights / math.sqrt(math.pi)),
                          score, score)
    Jm = fd_jacobian(lambda z: dec(z).mean, z)
    Js = fd_jacobian(lambda z: dec(z).stddev, z)
    J = torch.stack([Jm, Js], 2)  # (n, m, (mu, sigma), d)
    expected = torch.einsum("nmai,nmab,nmbj->nij", J, fisher, J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-7, atol=1e-10)
    assert (Js.mT @ Js).abs().max() > 1e-2 * expected.abs().max()  # sigma's term matters


def test_multinomial_fisher_metric_is_total_count_categorical_draws():
    """Fisher of Mult(n, softmax(eta)) in eta: n (diag p - p p^T), pulled back through the
    logits; the mean metric pulls back n p."""
    dec = tiny_decoder(aetk.MultinomialDecoder, seed=4, total_count=7)
    z = torch.randn(5, 2, dtype=f64)
    J = fd_jacobian(lambda z: dec(z).logits, z)
    p = dec(z).probs
    F = 7 * (torch.diag_embed(p) - p[..., :, None] * p[..., None, :])
    expected = torch.einsum("nki,nkl,nlj->nij", J, F, J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-7, atol=1e-10)
    Jm = fd_jacobian(lambda z: 7 * dec(z).probs, z)
    torch.testing.assert_close(PullbackMetric(dec)(z), Jm.mT @ Jm, rtol=1e-7, atol=1e-10)

def test_negative_binomial_fisher_metric_against_the_summed_score():
    """F(mu) = E[(d/dmu log NB(x; mu, r))^2], summed over x = 0..3999 with the score by
    forward mode through torch's density (not the closed form r / (mu (mu + r)) the
    metric uses), pulled back through the decoder's mean; a z-dependent dispersion is
    refused."""
    dec = tiny_decoder(aetk.NegativeBinomialDecoder, seed=3)
    with torch.no_grad():
        dec.log_r.copy_(torch.linspace(-1.0, 2.0, 5, dtype=f64))
    z = torch.randn(4, 2, dtype=f64)
    mu, r = dec(z).mean.detach(), dec.log_r.exp().detach()
    x = torch.arange(4000, dtype=f64)[:, None, None]

    def log_p(m: torch.Tensor) -> torch.Tensor:
        return D.NegativeBinomial(r, logits=m.log() - r.log()).log_prob(x)

    # each log p(x; mu_nm) depends on its own mu_nm: a tangent of ones gives every score
    value, score = torch.func.jvp(log_p, (mu,), (torch.ones_like(mu),))
    fisher = (value.exp() * score.square()).sum(0)
    J = fd_jacobian(lambda z: dec(z).mean, z)
    expected = torch.einsum("nmi,nm,nmj->nij", J, fisher, J)
    torch.testing.assert_close(PullbackMetric(dec, "fisher")(z), expected, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="dispersion"):
        PullbackMetric(tiny_decoder(aetk.NegativeBinomialDecoder, dispersion="sample"), "fisher")


def test_log_volume_and_volume_grid_of_the_half_plane():
    z = torch.rand(4, 2, dtype=f64) + 0.1
    torch.testing.assert_close(poincare().log_volume(z), -2 * z[:, 1].log())
    ds = volume_grid(poincare(), ((-1.0, 1.0), (0.5, 2.0)), (3, 4))
    assert ds.log_volume.dims == ("z1", "z2")
    expected = -2 * torch.log(torch.linspace(0.5, 2.0, 4, dtype=f64))
    torch.testing.assert_close(torch.from_numpy(ds.log_volume.values[1]), expected, rtol=1e-6,
                               atol=0)



def test_log_volume_is_nan_where_the_metric_is_singular():
    """G = diag(z1^2, 1): log sqrt(det G) = log |z1|, undefined (NaN, not an error) on the
    line z1 = 0, where a grid through it used to stop at the Cholesky factorisation."""
    metric = Metric(lambda z: torch.diag_embed(torch.stack([z[:, 0] ** 2, torch.ones_like(z[:, 0])],
                                                           -1)))
    v = metric.log_volume(torch.tensor([[0.0, 1.0], [2.0, 0.0]], dtype=f64))
    assert torch.isnan(v[0]) and v[1].item() == pytest.approx(math.log(2.0))
    grid = volume_grid(metric, ((-1.0, 1.0), (0.0, 1.0)), (3, 2)).log_volume.values
    assert np.isnan(grid[1]).all() and (grid[[0, 2]] == 0).all()


def test_no_pairs_of_endpoints_is_a_clear_error():
    """fit_geodesics (and log_map, which starts from it) without a pair of endpoints says
    so, as graph_curves does; it failed in a reshape ("cannot reshape tensor of 0
    elements")."""
    from aetk.geometry import log_map

    metric = constant(torch.eye(2, dtype=f64))
    none = torch.zeros(0, 2, dtype=f64)
    for fn in (fit_geodesics, log_map):
        with pytest.raises(ValueError, match="at least one pair of endpoints"):
            fn(metric, none, none)
    assert distance_matrix(metric, none).shape == (0, 0)  # no pairs to fit there


def test_rhvae_quadratic_form_is_nan_at_a_non_finite_point():
    """A curve with a NaN point has a NaN length in the RHVAE metric, as in any other (one
    through an infinite point an infinite length), and the other curves of the batch keep
    theirs: its quadratic form used to raise torch's Cholesky error for the whole batch."""
    from helpers import small_rhvae_metric

    metric = small_rhvae_metric()
    curves = torch.stack([torch.linspace(-1, 1, 5)[:, None].expand(5, 2)] * 3).clone()
    curves[1, 2, 0] = math.nan
    curves[2, 3, 1] = math.inf
    length = curve_length(metric, curves)
    assert torch.isnan(length[1]) and length[2] == math.inf and torch.isfinite(length[0])
    torch.testing.assert_close(length[0], curve_length(metric, curves[:1])[0])
    torch.testing.assert_close(length[0], curve_length(Metric(metric.metric), curves[:1])[0])

# --- geodesics ---------------------------------------------------------------------------


def test_constant_metric_geodesic_is_the_straight_line():
    A = torch.tensor([[3.0, 1.0], [1.0, 0.5]], dtype=f64)
    torch.manual_seed(0)
    z0, z1 = torch.randn(8, 2, dtype=f64), torch.randn(8, 2, dtype=f64)
    res = fit_geodesics(constant(A), z0, z1, n_points=20)
    dz = z1 - z0
    torch.testing.assert_close(res.length, torch.einsum("bi,ij,bj->b", dz, A, dz).sqrt(),
                               rtol=1e-10, atol=0)
    line = z0[:, None] + res.t[None, :, None] * dz[:, None]
    torch.testing.assert_close(res.points, line, rtol=0, atol=1e-9)
    torch.testing.assert_close(res.euclidean_length, dz.norm(dim=-1))
    assert res.converged.all()


@pytest.mark.parametrize("curve", ["discrete", "neural"])
def test_equal_and_nearly_equal_endpoints_have_the_lengths_of_their_segment(curve):
    """The straight line was (1 - t) z0 + t z1, whose float32 rounding strays by 2e-6 at
    z = -30: in a constant metric two equal endpoints there had a line of length 2.3e-5
    (a neural fit's points 1.9e-6 off the point), endpoints 4e-6 apart a line 17x and a
    discrete fit 3x the length of their segment, and endpoints 1e-7 apart a line 5x as
    long. The line is now exact at its ends and constant between equal ones."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    metric = constant(A)
    z0 = torch.tensor([[-30.0, -30.0], [-30.0, -30.0], [0.3, 0.3]])
    z1 = torch.tensor([[-30.0, -30.0], [-30.0, -30.0 + 4e-6], [0.3, 0.3 + 1e-7]])
    fit = fit_geodesics(metric, z0, z1, curve=curve, max_iter=50)
    dz = (z1 - z0).double()  # the float32 differences, exactly
    segment = torch.einsum("ni,ij,nj->n", dz, A.double(), dz).sqrt()
    assert fit.length[0] == 0 and fit.line_length[0] == 0
    assert torch.equal(fit.points[0], z0[0].expand_as(fit.points[0]))  # the constant curve
    torch.testing.assert_close(fit.line_length.double(), segment, rtol=1e-5, atol=0)
    torch.testing.assert_close(fit.length.double(), segment, rtol=1e-5, atol=0)
    assert torch.equal(distance_matrix(metric, z0[[0, 0]], curve=curve, max_iter=50),
                       torch.zeros(2, 2))


@pytest.mark.parametrize("curve", ["discrete", "neural"])
def test_poincare_half_plane_distances(curve):
    z0, z1 = half_plane_pairs()
    res = fit_geodesics(poincare(), z0, z1, curve=curve)
    torch.testing.assert_close(res.length, hyperbolic_distance(z0, z1), rtol=1e-2, atol=0)
    assert res.converged.all()
    assert (res.length < res.line_length).all()


def test_discrete_geodesic_is_accurate_and_fast_to_converge():
    z0, z1 = half_plane_pairs()
    res = fit_geodesics(poincare(), z0, z1)
    torch.testing.assert_close(res.length, hyperbolic_distance(z0, z1), rtol=2e-3, atol=0)
    assert res.iterations.max() < 50


def test_discrete_fit_minimises_the_trapezoid_energy_by_hand():
    """With 6 points the discrete curve is far from the smooth geodesic, so the fit must
    find the minimiser of the discrete energy itself: `1/4 sum_k |dz_k|^2 (1/y_k^2 +
    1/y_{k+1}^2) / dt_k` on the half-plane, written here in numpy and minimised by scipy's
    BFGS from the straight line. An optimiser fed the metric at segment starts only
    reached these points 0.01 to 2 off, at energies up to 5.7 times the minimum, while
    its lengths on 50 points stayed within 0.2% of the arccosh distances."""
    from scipy.optimize import minimize

    z0, z1 = half_plane_pairs()
    t = np.linspace(0, 1, 6)

    def energy(inner, a, b):
        pts = np.vstack([a, inner.reshape(-1, 2), b])
        dz2 = np.square(np.diff(pts, axis=0)).sum(1)
        y2 = pts[:, 1] ** 2
        return 0.25 * ((dz2 / y2[:-1] + dz2 / y2[1:]) / np.diff(t)).sum()

    res = fit_geodesics(poincare(), z0, z1, n_points=6)
    for i, (a, b) in enumerate(zip(z0.numpy(), z1.numpy(), strict=True)):
        ref = minimize(energy, (a + np.outer(t[1:-1], b - a)).ravel(), args=(a, b),
                       method="BFGS", options={"gtol": 1e-12})
        assert res.energy[i].item() == pytest.approx(ref.fun, rel=1e-8)
        np.testing.assert_allclose(res.points[i, 1:-1].numpy().ravel(), ref.x, atol=1e-4)

def test_great_circles_on_a_sphere_decoder():
    torch.manual_seed(0)
    n = 6
    z0 = torch.stack([torch.rand(n) * 1.6 + 0.8, torch.rand(n) * 2 - 1], -1).double()
    z1 = torch.stack([torch.rand(n) * 1.6 + 0.8, torch.rand(n) * 2 - 1], -1).double()
    res = fit_geodesics(PullbackMetric(SphereDecoder()), z0, z1)
    great_circle = torch.arccos((sphere(z0) * sphere(z1)).sum(-1))
    torch.testing.assert_close(res.length, great_circle, rtol=1e-2, atol=0)
    assert res.converged.all()
    # the decoded midpoint lies on the great circle: the plane through 0, x0 and x1
    normal = torch.linalg.cross(sphere(z0), sphere(z1))
    mid = sphere(res.points[:, res.points.shape[1] // 2])
    assert (mid * normal).sum(-1).abs().max() < 1e-2 * normal.norm(dim=-1).min()


def test_rhvae_metric_far_from_centroids_is_flat():
    torch.manual_seed(0)
    model = aetk.build_model("rhvae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             centroids=4)
    model.on_fit_start(torch.rand(32, 6))
    model.update_metric()
    model = model.double().eval()
    lam = model.regularization
    metric = metric_for(model)
    assert isinstance(metric, RHVAEMetric)
    far = model.centroid_latent.abs().max() + 30.0  # exp(-30^2 / T^2) underflows
    z0 = torch.tensor([[far, 0.0], [far, -2.0], [far + 5, 3.0]], dtype=f64)
    z1 = torch.tensor([[far + 3.0, 4.0], [far + 1, 1.0], [far + 5, -3.0]], dtype=f64)
    torch.testing.assert_close(metric(z0), torch.eye(2, dtype=f64).expand(3, 2, 2) / lam)
    res = fit_geodesics(metric, z0, z1)
    torch.testing.assert_close(res.length, (z1 - z0).norm(dim=-1) / math.sqrt(lam), rtol=1e-9,
                               atol=0)
    assert res.converged.all()
    # near the centroids the metric is not flat, and the quadratic form matches G
    z = model.centroid_latent + 0.1
    v = torch.randn(len(z), 2, 2, dtype=f64)
    torch.testing.assert_close(metric.quad(z, v), torch.einsum("nki,nij,nkj->nk", v, metric(z), v))
    torch.testing.assert_close(metric.log_volume(z), 0.5 * torch.logdet(metric(z)))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_convergence_takes_window_plus_one_energies(window):
    """The straight line is the geodesic of a constant metric, so its energy never changes:
    every pair stops as soon as it has `window + 1` energies, after exactly `window + 1`
    iterations."""
    A = torch.tensor([[3.0, 1.0], [1.0, 0.5]], dtype=f64)
    z0, z1 = torch.randn(4, 2, dtype=f64), torch.randn(4, 2, dtype=f64)
    res = fit_geodesics(constant(A), z0, z1, n_points=10, window=window)
    assert res.converged.all()
    assert res.iterations.tolist() == [window + 1] * 4


def test_a_neural_fit_starts_each_pair_alike_alone_or_in_a_batch():
    """Each pair's network was drawn from the seed after the pairs before it, so a pair's
    start, and its fit, depended on its place in the batch: on the half-plane four pairs'
    lengths alone and in a batch differed by 1e-7 to 2e-5 and their points by up to 8e-3.
    Every pair now starts from the same draw, and alone they come out as in the batch
    (up to the batched arithmetic's rounding)."""
    metric = poincare()
    z0, z1 = half_plane_pairs()
    z0, z1 = z0[:4], z1[:4]
    batch = fit_geodesics(metric, z0, z1, curve="neural", n_points=20)
    for i in range(4):
        one = fit_geodesics(metric, z0[i:i + 1], z1[i:i + 1], curve="neural", n_points=20)
        torch.testing.assert_close(one.length[0], batch.length[i], rtol=1e-8, atol=0)
        torch.testing.assert_close(one.points[0], batch.points[i], rtol=0, atol=1e-5)


def test_a_neural_fit_returns_its_curve_at_t():
    """The neural curves' returned points are the curves at `res.t` (from the finer grid
    their lengths are measured on): they run from z_start to z_end, and their chords have
    the returned length to 1 %."""
    z0, z1 = half_plane_pairs()
    res = fit_geodesics(poincare(), z0[:3], z1[:3], curve="neural", n_points=20, max_iter=40,
                        hidden=(8,))
    assert res.points.shape == (3, 20, 2)
    torch.testing.assert_close(res.points[:, 0], z0[:3], rtol=0, atol=1e-14)
    torch.testing.assert_close(res.points[:, -1], z1[:3], rtol=0, atol=1e-14)
    torch.testing.assert_close(curve_length(poincare(), res.points, res.t), res.length,
                               rtol=1e-2, atol=0)


@pytest.mark.parametrize("n_points", [3, 4])
def test_neural_fits_with_few_points_stop_at_the_geodesic(n_points):
    """On 3 or 4 quadrature nodes the MLP learnt to slow down at each node and speed up
    between them: on a constant metric its fits ran for dozens of L-BFGS iterations (Adam:
    all 500), and on the half-plane they fell back to the line, 31 % longer than the
    geodesic. The energy now has at least 50 nodes: the line at once, the hyperbolic
    distance to 1e-4."""
    A = torch.tensor([[3.0, 1.0], [1.0, 0.5]], dtype=f64)
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 8, 2, generator=gen, dtype=f64)
    for optimizer in ("lbfgs", "adam"):
        res = fit_geodesics(constant(A), z0, z1, n_points=n_points, curve="neural",
                            optimizer=optimizer)
        assert res.converged.all() and res.iterations.max() <= 10
    a, b = torch.tensor([[-1.0, 1.0]], dtype=f64), torch.tensor([[1.5, 0.5]], dtype=f64)
    res = fit_geodesics(poincare(), a, b, n_points=n_points, curve="neural")
    assert res.points.shape == (1, n_points, 2) and not res.fell_back.any()
    torch.testing.assert_close(res.length, hyperbolic_distance(a, b), rtol=1e-4, atol=0)


def test_budget_exhausted_is_not_converged():
    z0, z1 = half_plane_pairs()
    res = fit_geodesics(poincare(), z0, z1, max_iter=2)
    assert not res.converged.any()
    assert (res.iterations == 2).all()


def test_a_fit_longer_than_the_line_falls_back_to_the_line():
    z0, z1 = half_plane_pairs()
    # Adam with a huge step zigzags the curve: longer than the straight line
    res = fit_geodesics(poincare(), z0, z1, optimizer="adam", lr=10.0, max_iter=2)
    assert res.fell_back.all()
    assert not res.converged.any()
    torch.testing.assert_close(res.length, res.line_length)
    line = z0[:, None] + res.t[None, :, None] * (z1 - z0)[:, None]
    torch.testing.assert_close(res.points, line)


def test_returned_length_never_exceeds_the_straight_line():
    dec = tiny_decoder(aetk.BernoulliDecoder, seed=3)
    dec.network[1] = nn.ReLU()  # a rough metric: it jumps between the linear regions
    torch.manual_seed(1)
    z0, z1 = 3 * torch.randn(20, 2, dtype=f64), 3 * torch.randn(20, 2, dtype=f64)
    for kwargs in ({}, {"max_iter": 3}, {"curve": "neural", "max_iter": 20}):
        res = fit_geodesics(PullbackMetric(dec), z0, z1, **kwargs)
        assert (res.length <= res.line_length).all()


def test_distance_matrix_of_the_half_plane():
    z = torch.tensor([[0.0, 1.0], [1.0, 2.0], [-1.0, 0.5], [2.0, 1.0]], dtype=f64)
    dist = distance_matrix(poincare(), z)
    i, j = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    exact = hyperbolic_distance(z[i.flatten()], z[j.flatten()]).reshape(4, 4)
    torch.testing.assert_close(dist, dist.T, rtol=0, atol=0)
    assert (dist.diagonal() == 0).all()
    torch.testing.assert_close(dist, exact, rtol=1e-2, atol=1e-12)
    assert torch.equal(distance_matrix(poincare(), z[:1]), torch.zeros(1, 1, dtype=f64))


def test_distance_matrix_between_two_sets_of_the_half_plane():
    z = torch.tensor([[0.0, 1.0], [1.0, 2.0], [-1.0, 0.5]], dtype=f64)
    other = np.array([[2.0, 1.0], [0.5, 0.25]])  # numpy float64: cast like z
    dist = distance_matrix(poincare(), z, other)
    i, j = torch.meshgrid(torch.arange(3), torch.arange(2), indexing="ij")
    exact = hyperbolic_distance(z[i.flatten()], torch.from_numpy(other)[j.flatten()])
    torch.testing.assert_close(dist, exact.reshape(3, 2), rtol=1e-2, atol=0)
    assert distance_matrix(poincare(), z, other[:0]).shape == (3, 0)
    with pytest.raises(ValueError, match="same dimension, got 2 and 3"):
        distance_matrix(poincare(), z, np.ones((2, 3)))


def test_interpolate_decodes_the_geodesic():
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=5, latent_dim=2, hidden=(8,),
                             activation="tanh").double().eval()
    z0, z1 = torch.tensor([-2.0, 0.0], dtype=f64), torch.tensor([2.0, 1.0], dtype=f64)
    points, decoded = interpolate(model, z0, z1, n_points=7)
    assert points.shape == (1, 7, 2) and decoded.shape == (1, 7, 5)
    torch.testing.assert_close(points[0, 0], z0)
    torch.testing.assert_close(points[0, -1], z1)
    torch.testing.assert_close(decoded[0], model.decode(points[0]).mean)
    fit = fit_geodesics(PullbackMetric(model.decoder), z0, z1, n_points=7)
    torch.testing.assert_close(points, fit.points)


def test_metric_for_picks_the_pullback_for_other_models():
    model = aetk.build_model("vae", "gaussian", in_features=5, latent_dim=2, hidden=(8,))
    metric = metric_for(model)
    assert isinstance(metric, PullbackMetric) and metric.decoder is model.decoder
    assert metric_for(model, kind="fisher").kind == "fisher"


def test_metric_for_moves_the_whole_model_to_float64():
    """`metric_for(vae).to(torch.float64)`, the documented way to float64 results, moved
    the decoder alone: the model's decode, loss and fit then failed on a float32 encoder
    beside a float64 decoder ("mat1 and mat2 must have the same dtype")."""
    def build():
        torch.manual_seed(0)
        return aetk.build_model("vae", "gaussian", in_features=5, latent_dim=2, hidden=(8,))

    model, want = build(), PullbackMetric(build().decoder)  # the same weights, float32
    z = torch.randn(4, 2, dtype=torch.float64)
    metric = metric_for(model).to(torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    x = torch.rand(3, 5, dtype=torch.float64)
    assert model.loss(x).loss.dtype == torch.float64
    assert metric(z).dtype == torch.float64
    torch.testing.assert_close(metric(z), want(z.float()).double(), rtol=1e-5, atol=1e-6)


def test_metric_for_an_rhvae_refuses_a_kind_it_would_ignore():
    """`metric_for(rhvae, kind="fisher")` (or any kind, "nonsense" too) returned the RHVAE's
    own metric, silently."""
    rhvae = aetk.build_model("rhvae", "bernoulli", in_features=5, latent_dim=2, hidden=(8,),
                             centroids=3)
    rhvae.on_fit_start(torch.rand(6, 5))
    assert isinstance(metric_for(rhvae), RHVAEMetric)
    for kind in ("fisher", "nonsense"):
        with pytest.raises(ValueError, match=rf"kind={kind!r}: an RHVAE's natural metric is "
                                             rf"its own, G\(z\), of no kind; for a pull-back "
                                             rf"through its decoder use PullbackMetric\("
                                             rf"model.decoder, kind={kind!r}\)"):
            metric_for(rhvae, kind=kind)


def test_decoders_that_return_no_distribution_or_pool_their_batch_are_named():
    """A decoder returning a tuple (mean, sigma) failed with "'tuple' object has no attribute
    'mean'", one whose output pools the batch (a sum over the points: (1, 5) for 4 points)
    in a reshape ("shape '[2, 4, -1]' is invalid"), and a distribution without a mean in
    torch (RelaxedBernoulli) with torch's NotImplementedError, which has no message; each
    is now a TypeError or ValueError saying what PullbackMetric needs."""
    net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 5)).double()
    z = torch.randn(4, 2, dtype=f64)
    for kind in ("mean", "fisher"):
        with pytest.raises(TypeError, match=r"the decoder returned tuple: PullbackMetric needs "
                                            r"a torch distribution or a tensor of means"):
            PullbackMetric(lambda y: (net(y), net(y).exp()), kind=kind).metric(z)
    with pytest.raises(ValueError, match=r"the decoder gave its output of shape \(1, 5\) for 4 "
                                         r"points: PullbackMetric needs one row per point"):
        PullbackMetric(lambda y: net(y).sum(0, keepdim=True)).metric(z)
    with pytest.raises(ValueError, match=r"the decoder gave its mean of shape \(5,\) for 4"):
        PullbackMetric(lambda y: D.Normal(net(y).sum(0), 1.0)).metric(z)
    relaxed = PullbackMetric(lambda y: D.Independent(
        D.RelaxedBernoulli(torch.tensor(0.5, dtype=f64), logits=net(y)), 1))
    with pytest.raises(ValueError, match=r"the decoder's RelaxedBernoulli has no mean in torch"):
        relaxed.metric(z)
    # the same decoder's mean as a tensor, and as a distribution, give J^T J
    J = fd_jacobian(lambda y: net(y).detach(), z)
    expected = J.mT @ J
    for decoder in (net, lambda y: D.Independent(D.Normal(net(y), 1.0), 1)):
        torch.testing.assert_close(PullbackMetric(decoder).metric(z).detach(), expected,
                                   rtol=1e-6, atol=1e-8)


def test_a_decoder_with_dropout_or_batch_norm_in_training_mode_is_named():
    """A decoder with dropout or batch norm left in training mode failed inside torch.func
    ("called random operation while in randomness error mode", "attempted to call in-place
    operation"); it is now a ValueError naming the layer and saying to call .eval(), and in
    evaluation mode the metric is J^T J of the network as it then is."""
    torch.manual_seed(0)
    z = torch.randn(4, 2, dtype=f64)
    for layer, name in ((nn.Dropout(0.5), "Dropout"), (nn.BatchNorm1d(8), "BatchNorm1d")):
        net = nn.Sequential(nn.Linear(2, 8), layer, nn.Tanh(), nn.Linear(8, 5)).double()
        metric = PullbackMetric(net)
        for call, points in ((metric.metric, z), (partial(curve_length, metric), z[None])):
            with pytest.raises(ValueError, match=rf"the decoder's {name} \(1\) is in training "
                                                 r"mode: call \.eval\(\)"):
                call(points)
        net.eval()
        J = fd_jacobian(lambda y, net=net: net(y).detach(), z)
        torch.testing.assert_close(metric.metric(z).detach(), J.mT @ J, rtol=1e-6, atol=1e-8)


def test_a_mean_that_torch_leaves_undefined_gives_a_nan_metric():
    """A Cauchy decoder (StudentT with df = 1) has no mean: torch writes NaN for it, whose
    Jacobian came out 0, so the pull-back was the zero matrix (a flat space without a
    word, geodesics of length 0). It is NaN now, as at other points where the metric is not
    defined; with df = 3 the mean is the location and G = W^T W of a linear decoder."""
    net = nn.Linear(2, 5).double()
    z = torch.randn(3, 2, dtype=f64)

    def decoder(df: float):
        return lambda y: D.Independent(D.StudentT(df, net(y), 1.0), 1)

    assert PullbackMetric(decoder(1.0)).metric(z).isnan().all()
    W = net.weight.detach()
    torch.testing.assert_close(PullbackMetric(decoder(3.0)).metric(z).detach(),
                               (W.T @ W).expand(3, 2, 2))


def test_interpolate_refuses_what_cannot_decode_before_fitting():
    """interpolate(decoder_function, ...) fitted the geodesics and then failed with
    "'function' object has no attribute 'decode'"; it is now a TypeError, before the fit."""
    z0, z1 = half_plane_pairs()
    with pytest.raises(TypeError, match=r"interpolate decodes with model\.decode; function "
                                        r"has none"):
        interpolate(sphere, z0, z1, metric=poincare())


def test_metric_for_refuses_a_module_without_a_decoder():
    """metric_for(nn.Linear(2, 3)), a decoder network given for the model, failed in
    nn.Module's __getattr__ ("'Linear' object has no attribute 'decoder'"); it is now a
    TypeError that names what metric_for takes and what to use instead."""
    for module in (nn.Linear(2, 3), nn.Sequential()):
        with pytest.raises(TypeError, match=rf"{type(module).__name__} has neither\. For a "
                                            r"decoder of your own use PullbackMetric"):
            metric_for(module)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_endpoints_outside_the_latent_space_are_refused(kind):
    extra = {"centroids": 4} if kind == "rhvae" else {}
    model = aetk.build_model(kind, "bernoulli", in_features=5, latent_dim=2, hidden=(8,),
                             **extra)
    model.on_fit_start(torch.rand(20, 5))
    with pytest.raises(ValueError, match="have 5 coordinates but the metric's latent space has 2"):
        fit_geodesics(metric_for(model), torch.rand(3, 5), torch.rand(3, 5))


def test_volume_grid_needs_a_two_dimensional_latent_space():
    model = aetk.build_model("vae", "bernoulli", in_features=5, latent_dim=3, hidden=(8,))
    with pytest.raises(ValueError, match="needs a 2-D latent space; this metric's has 3"):
        volume_grid(metric_for(model), ((-1, 1), (-1, 1)), n=5)


# --- what the public functions take: dtypes, non-finite points, devices, grid bounds ----


def float32_metric(kind: str) -> Metric:
    """A float32 model's metric: a tanh VAE's pull-back or an RHVAE's own."""
    torch.manual_seed(0)
    extra = {"centroids": 4} if kind == "rhvae" else {"activation": "tanh"}
    model = aetk.build_model(kind, "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             **extra)
    model.on_fit_start(torch.rand(32, 6))
    if kind == "rhvae":
        model.update_metric()
    return metric_for(model.eval())


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_endpoints_of_any_dtype_are_cast_to_the_metrics(kind):
    """float64 tensors, numpy's default float64 and integer arrays give a float32 model's
    metric the same geodesics as float32 tensors, in float32 (they failed in the model's
    matrix products: double != float)."""
    metric = float32_metric(kind)
    z0 = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    z1 = torch.tensor([[0.1, 0.1], [-1.0, 2.0]])
    want = fit_geodesics(metric, z0, z1, n_points=8, max_iter=10)
    whole = fit_geodesics(metric, z0.round(), z1.round(), n_points=8, max_iter=10)
    for a, b, ref in ((z0.double(), z1.double(), want),
                      (z0.numpy().astype(np.float64), z1.numpy(), want),
                      (z0.numpy().astype(np.int64), z1.round().numpy().astype(np.int32), whole)):
        got = fit_geodesics(metric, a, b, n_points=8, max_iter=10)
        assert got.length.dtype == got.points.dtype == torch.float32
        torch.testing.assert_close(got.length, ref.length)
    assert whole.length[1] > 0
    dist = distance_matrix(metric, torch.cat([z0, z1]).numpy().astype(np.float64), n_points=8,
                           max_iter=10)
    assert dist.dtype == torch.float32
    torch.testing.assert_close(dist[[0, 1], [2, 3]], want.length)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_the_metrics_own_methods_take_points_as_the_functions_do(kind):
    """metric(z), quad and log_volume cast float64 or numpy points to a float32 model's
    dtype (the pull-back failed in its matrix products: double != float), refuse points of
    another dimension by name (a raw matmul error before), and take no points."""
    metric = float32_metric(kind)
    z = torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    v = torch.tensor([[[1.0, 0.0], [0.5, 2.0]]] * 2)
    for points in (z.double(), z.numpy().astype(np.float64)):
        G = metric.metric(points)
        assert G.dtype == torch.float32
        torch.testing.assert_close(G, metric.metric(z))
        torch.testing.assert_close(metric.quad(points, v.double()), metric.quad(z, v))
        torch.testing.assert_close(metric.log_volume(points), metric.log_volume(z))
    # quad is v^T G v, by hand
    want = torch.einsum("nki,nij,nkj->nk", v, metric.metric(z), v)
    torch.testing.assert_close(metric.quad(z, v), want)
    for call in (lambda: metric.metric(torch.rand(4, 3)), lambda: metric.log_volume(
            torch.rand(4, 3)), lambda: metric.log_volume_and_grad(torch.rand(4, 3))):
        with pytest.raises(ValueError, match="points have 3 coordinates but the metric's "
                                             "latent space has 2"):
            call()
    with pytest.raises(ValueError, match=r"the vectors \(2, 2, 3\) must be \(..., k, 2\)"):
        metric.quad(z, torch.rand(2, 2, 3))
    # one vector per point without its k axis, or vectors at other points, failed in a
    # reshape or an einsum inside torch
    for vectors in (torch.rand(2, 2), torch.rand(3, 1, 2)):
        shape = re.escape(str(tuple(vectors.shape)))
        with pytest.raises(ValueError, match=rf"the vectors {shape} must be \(..., k, 2\), as "
                                             r"the points, with the points' leading shape "
                                             r"\(2,\)"):
            metric.quad(z, vectors)
    assert metric.metric(torch.zeros(0, 2)).shape == (0, 2, 2)
    assert metric.log_volume(torch.zeros(0, 2)).shape == (0,)
    assert metric.quad(torch.zeros(0, 2), torch.zeros(0, 3, 2)).shape == (0, 3)


def test_a_float64_metric_keeps_float64():
    """The cast goes to the metric's dtype, not float32: a float64 decoder's pull-back gives
    float32 endpoints float64 results, and a plain metric (no dtype of its own) keeps
    float64 endpoints in float64."""
    metric = PullbackMetric(tiny_decoder(aetk.BernoulliDecoder))
    z0, z1 = torch.tensor([[-1.0, 0.0]]), torch.tensor([[1.0, 0.5]])
    got = fit_geodesics(metric, z0, z1, n_points=8, max_iter=10)
    want = fit_geodesics(metric, z0.double(), z1.double(), n_points=8, max_iter=10)
    assert got.length.dtype == torch.float64
    torch.testing.assert_close(got.length, want.length, rtol=0, atol=0)
    plain = fit_geodesics(poincare(), np.array([[0.0, 1.0]]), np.array([[1.0, 2.0]]))
    assert plain.length.dtype == torch.float64


def test_non_finite_endpoints_are_refused_by_name():
    """NaN or infinite endpoints are a ValueError naming them, before any fitting (a VAE's
    pull-back spent 72 s on NaN endpoints and returned NaN lengths, an RHVAE failed in a
    Cholesky factorisation)."""
    z0, z1 = half_plane_pairs()
    bad = z0.clone()
    bad[1, 0], bad[3, 1] = float("nan"), float("inf")
    with pytest.raises(ValueError, match=r"^z_start has NaN or infinite coordinates: 2 of "
                                         rf"{len(z0)} point\(s\), at row\(s\) 1, 3 \(counting"):
        fit_geodesics(poincare(), bad, z1)
    with pytest.raises(ValueError, match=r"^z_end has NaN or infinite coordinates: 1 of 1 "
                                         r"point\(s\), \(its only point\)"):
        fit_geodesics(float32_metric("vae"), torch.zeros(2), torch.tensor([0.0, -math.inf]))
    z = torch.tensor([[0.0, 1.0], [1.0, 2.0], [math.nan, 0.5]], dtype=f64)
    with pytest.raises(ValueError, match=r"^z has NaN or infinite coordinates: 1 of 3 "
                                         r"point\(s\), at row\(s\) 2 "):
        distance_matrix(poincare(), z)


def test_an_unavailable_device_is_a_clear_error(monkeypatch):
    """`device` goes through aetk.train.resolve_device: a ValueError saying CUDA is not
    available, not torch's AssertionError from deep in its CUDA setup."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    z0, z1 = half_plane_pairs()
    with pytest.raises(ValueError, match="device 'cuda': CUDA is not available on this machine"):
        fit_geodesics(poincare(), z0, z1, device="cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        distance_matrix(poincare(), z0, device="gpu")
    res = fit_geodesics(poincare(), z0, z1, device="cpu", max_iter=2)
    assert res.points.device.type == "cpu"


@pytest.mark.parametrize(("bounds", "message"), [
    ((-3, 3), r"needs bounds \(\(z1_min, z1_max\), \(z2_min, z2_max\)\) for a 2-D latent "
              r"space, got \(-3, 3\)"),
    (((-1, 1), (-1, 1), (-1, 1)), r"for a 2-D latent space, got 3 pair\(s\)"),
    (((-1, 1, 2), (-1, 1)), r"got 2 pair\(s\) of lengths \[3, 2\]"),
    (((1, -1), (-1, 1)), r"the bounds of z1 must be finite with low < high, got \(1.0, -1.0\)"),
    (((-1, 1), (0, 0)), r"the bounds of z2 must be finite with low < high, got \(0.0, 0.0\)"),
    (((-1, math.nan), (0, 1)), r"the bounds of z1 must be finite"),
])
def test_volume_grid_refuses_malformed_bounds(bounds, message):
    with pytest.raises(ValueError, match="^volume_grid" + (":" if "the bounds" in message
                                                           else " ") + ".*" + message):
        volume_grid(poincare(), bounds, n=3)


def test_volume_grid_refuses_malformed_sizes():
    for n in (0, (3,), (3, 2.5), (3, 3, 3)):
        with pytest.raises(ValueError, match=r"volume_grid: n must be an integer >= 1 or two "
                                             r"of them \(n1, n2\)"):
            volume_grid(poincare(), ((0, 1), (1, 2)), n=n)
    grid = volume_grid(poincare(), np.array([[0.0, 1.0], [1.0, 2.0]]), n=np.int64(3))
    assert grid.sizes == {"z1": 3, "z2": 3}


# --- .to ---------------------------------------------------------------------------------


def test_metrics_move_what_they_hold_with_to():
    """`metric.to(...)` moves the model, decoder, module or tensors behind a metric and
    returns the metric, as nn.Module.to: float32 -> float64 gives float64 results, equal
    to the float32 ones to float32's precision (no GPU here: dtypes only)."""
    from aetk.geometry import EncoderMetric
    from aetk.geometry.metrics import as_points

    from helpers import small_rhvae_metric

    z = torch.tensor([[0.3, -0.2], [1.0, 0.5], [-0.7, 0.1]])
    torch.manual_seed(0)
    decoder = aetk.BernoulliDecoder(latent_dim=2, out_features=6, hidden=(8,)).eval()
    torch.manual_seed(1)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,))

    class Quadratic(nn.Module):  # G(z) = W^T W + I from a module's weight: Metric(module)
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 4)

        def forward(self, z):
            w = self.lin.weight
            return (w.T @ w + torch.eye(2, dtype=w.dtype)).expand(len(z), -1, -1)

    held = torch.tensor([[2.0, 0.0], [0.0, 3.0]])

    class HoldsATensor(Metric):
        def __init__(self):
            super().__init__()
            self.A = held

        def _metric(self, z):
            return self.A.expand(len(z), -1, -1)

    metrics = {
        "rhvae": small_rhvae_metric(),
        "pullback of a decoder": PullbackMetric(decoder),
        "pullback of model.decode": PullbackMetric(model.decode),
        "module": Metric(Quadratic()),
        "tensor": HoldsATensor(),
        "encoder": EncoderMetric(torch.randn(10, 2), torch.rand(10, 2) + 0.5),
    }
    for name, metric in metrics.items():
        before = metric.metric(z).detach()
        assert before.dtype == torch.float32, name
        assert metric.to(torch.float64) is metric, name
        after = metric.metric(z.double())
        assert after.dtype == f64, name
        assert metric.log_volume(z.double()).dtype == f64, name
        torch.testing.assert_close(after.float(), before, rtol=1e-4, atol=1e-5)
        assert metric.to("cpu", torch.float32) is metric and metric.metric(z).dtype == torch.float32
    assert metrics["rhvae"].model.centroid_M.dtype == torch.float32
    metrics["rhvae"].to(dtype=torch.float64)
    assert metrics["rhvae"].model.centroid_M.dtype == f64
    assert as_points(metrics["rhvae"], z).dtype == f64  # what every geometry function takes
    assert next(model.parameters()).dtype == torch.float32
    metrics["pullback of model.decode"].to(torch.float64)
    assert next(model.parameters()).dtype == f64  # the bound method's model
    assert metrics["tensor"].A.dtype == torch.float32  # back from the second .to
    assert metrics["encoder"].to(torch.float64).loc.dtype == f64  # still nn.Module.to
    plain = constant(torch.eye(2))  # a plain function: nothing to move
    assert plain.to(torch.float64) is plain


def test_points_take_the_dtype_of_a_bound_method_or_module_metric():
    """A metric through a bound method (`PullbackMetric(model.decode)`, `Metric(net.forward)`)
    or a module given as the function (`Metric(net)`) casts its points to that module's
    dtype, as a metric holding the module does: after `metric.to(torch.float64)` float32
    endpoints give float64 geodesics (they failed, 'expected scalar type Float but found
    Double'), and the latent dimension is checked."""
    from aetk.geometry.metrics import as_points, latent_dim

    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=6, latent_dim=2, hidden=(8,),
                             activation="tanh").eval()
    net = nn.Linear(2, 3)

    def gram(z):
        return (net.weight.T @ net.weight + torch.eye(2, dtype=net.weight.dtype)).expand(
            len(z), -1, -1)

    net.forward = gram  # the module's own call gives the metric
    z0, z1 = torch.tensor([[0.3, -0.2]]), torch.tensor([[1.0, 0.5]])
    metrics = {"model.decode": PullbackMetric(model.decode), "module": Metric(net)}
    for name, metric in metrics.items():
        metric.to(f64)
        assert as_points(metric, z0).dtype == f64, name
        fit = fit_geodesics(metric, z0, z1, n_points=8)
        assert fit.length.dtype == f64 and bool(fit.length.isfinite().all()), name
    assert latent_dim(metrics["model.decode"]) == 2
    with pytest.raises(ValueError, match="latent space has 2"):
        fit_geodesics(metrics["model.decode"], torch.zeros(1, 3), torch.ones(1, 3))


def test_geometry_takes_codes_as_the_pipeline_writes_them():
    """A pandas DataFrame of codes (z.tsv read back) failed in every geometry function
    with torch's "could not determine the shape of object type 'DataFrame'"; it is now
    taken as its values, with the same results as the tensor."""
    import pandas as pd

    from aetk.geometry import christoffel, christoffel_contract, exp_map, scalar_curvature

    metric = poincare()
    z0, z1 = half_plane_pairs()
    f0, f1 = (pd.DataFrame(z.numpy(), columns=["z1", "z2"]) for z in (z0, z1))
    torch.testing.assert_close(metric.metric(f0), metric.metric(z0), rtol=0, atol=0)
    torch.testing.assert_close(christoffel(metric, f0), christoffel(metric, z0))
    torch.testing.assert_close(christoffel_contract(metric, f0, f1),
                               christoffel_contract(metric, z0, z1))
    torch.testing.assert_close(exp_map(metric, f0, 0.1 * f1), exp_map(metric, z0, 0.1 * z1))
    torch.testing.assert_close(scalar_curvature(metric, f0), scalar_curvature(metric, z0))
    fitted = fit_geodesics(metric, f0, f1, n_points=9)
    torch.testing.assert_close(fitted.length, fit_geodesics(metric, z0, z1, n_points=9).length)
    torch.testing.assert_close(distance_matrix(metric, f0, n_points=9),
                               distance_matrix(metric, z0, n_points=9))
    text = f0.assign(cell=list("abcde"))
    with pytest.raises(TypeError, match="not a DataFrame of object"):
        fit_geodesics(metric, text, f1)


def test_counts_given_as_whole_floats_are_taken():
    """fit_geodesics(..., n_points=5.0) failed in torch.linspace ("received an invalid
    combination of arguments"), and alike n_steps=20.0 of the integrators, traversals and
    samplers, max_iter, window, chunk_size, graph_k and n_directions (a count read from a
    YAML file or computed comes as a float); they now give the integer's results, and a
    count with a fraction is a ValueError naming it."""
    from aetk.geometry import EncoderMetric, exp_map, geodesic_spray

    metric = poincare()
    z0, z1 = half_plane_pairs()
    options = {"max_iter": 40, "window": 3, "chunk_size": 2}
    expected = fit_geodesics(metric, z0, z1, n_points=7, **options)
    floats = {k: float(v) for k, v in options.items()}
    torch.testing.assert_close(fit_geodesics(metric, z0, z1, n_points=7.0, **floats).points,
                               expected.points, rtol=0, atol=0)
    torch.testing.assert_close(exp_map(metric, z0, 0.1 * z1, n_steps=8.0),
                               exp_map(metric, z0, 0.1 * z1, n_steps=8), rtol=0, atol=0)
    assert geodesic_spray(metric, z0[0], n_directions=3.0).points.shape[0] == 3
    model = aetk.build_model("vae", "gaussian", in_features=5, latent_dim=2, hidden=(8,))
    codes = torch.randn(20, 2)
    assert aetk.latent_traversal(model, codes, n_steps=4.0, max_dims=1.0).values.shape == (1, 4)
    encoder_metric = EncoderMetric.from_codes(codes, torch.full((20, 2), 0.5), n_centroids=6.0)
    assert encoder_metric.sample(3.0, n_steps=2.0, n_leapfrog=2.0).shape == (3, 2)
    refusals = (
        (lambda: fit_geodesics(metric, z0, z1, n_points=5.5),
         r"n_points must be an integer >= 3, got 5.5"),
        (lambda: fit_geodesics(metric, z0, z1, window=2.5), r"window must be an integer >= 1"),
        (lambda: exp_map(metric, z0, z1, n_steps=2.5),
         r"n_steps must be an integer >= 1, got 2.5"),
        (lambda: aetk.latent_traversal(model, codes, n_steps=3.5),
         r"n_steps must be an integer >= 2"),
        (lambda: encoder_metric.sample(2.5), r"n must be an integer >= 1, got 2.5"),
    )
    for call, message in refusals:
        with pytest.raises(ValueError, match=message):
            call()


def test_a_metric_function_of_the_wrong_shape_is_named():
    """Metric(lambda z: 1 + z**2), a diagonal as (N, d), failed inside torch: a reshape in
    metric(), an einsum in curve_length and fit_geodesics, cholesky in log_volume."""
    diagonal = Metric(lambda z: 1 + z**2)
    z = torch.randn(4, 2, dtype=f64)
    for call in (diagonal.metric, diagonal.log_volume, lambda z: curve_length(diagonal, z[None]),
                 lambda z: fit_geodesics(diagonal, z[:2], z[2:])):
        with pytest.raises(ValueError, match=r"the metric's function returned \(\d+, 2\) for "
                                             r"points \(\d+, 2\): it must return the matrices G"):
            call(z)
    right = Metric(lambda z: torch.diag_embed(1 + z**2))
    torch.testing.assert_close(right.log_volume(z), 0.5 * torch.log1p(z**2).sum(-1))


def test_a_metric_function_that_is_no_metric_is_refused_by_the_fit():
    """Metric(fn) of an indefinite G = diag(1, -1): fit_geodesics returned lengths of about
    1 (curve_length takes negative squared speeds as 0) and called them converged; a G that
    is not symmetric was fitted by its symmetric part. Both are refused, at the endpoints."""
    z0, z1 = torch.zeros(2, 2, dtype=f64), torch.ones(2, 2, dtype=f64)
    indefinite = Metric(lambda z: torch.diag(torch.tensor([1.0, -1.0], dtype=z.dtype))
                        .expand(len(z), 2, 2))
    with pytest.raises(ValueError, match=r"not positive semi-definite at the point \[0\.0, "
                                         r"0\.0\] \(G there: \[\[1\.0, 0\.0\], \[0\.0, -1\.0\]\]"):
        fit_geodesics(indefinite, z0, z1)
    skew = Metric(lambda z: torch.tensor([[1.0, 0.5], [0.0, 1.0]], dtype=z.dtype)
                  .expand(len(z), 2, 2))
    with pytest.raises(ValueError, match="not symmetric"):
        fit_geodesics(skew, z0, z1)
    # rounding and a singular (semi-definite) G pass: a pull-back where the decoder is flat
    near = Metric(lambda z: (torch.eye(2, dtype=z.dtype) + 1e-12 * torch.tensor(
        [[0.0, 1.0], [0.0, 0.0]], dtype=z.dtype)).expand(len(z), 2, 2))
    torch.testing.assert_close(fit_geodesics(near, z0, z1).length,
                               torch.full((2,), math.sqrt(2), dtype=f64))
    flat = Metric(lambda z: torch.diag_embed(torch.stack([z[:, 0] ** 2, torch.ones_like(z[:, 0])],
                                                         -1)))
    assert fit_geodesics(flat, z0, z1).length.isfinite().all()


def _bump(sign: float, axis: int) -> Metric:
    """G = I + sign 4 exp(-|z|^2) on the diagonal entry `axis`: for sign -1 indefinite
    near the origin (-3 there), positive at (+-2, 0) (1 - 4 e^-4 = 0.93)."""
    def fn(z):
        diagonal = torch.ones_like(z)
        diagonal[:, axis] += sign * 4 * torch.exp(-z.square().sum(-1))
        return torch.diag_embed(diagonal)
    return Metric(fn)


def test_a_metric_function_indefinite_between_the_endpoints_is_refused_by_the_fit():
    """Metric(fn) of G = diag(1, 1 - 4 exp(-|z|^2)) between (-2, 0) and (2, 0): positive at
    both ends, indefinite on the straight line between them; fit_geodesics fitted it and
    reported it converged, as the endpoints were all it checked. Now the fitted curves' points
    are checked too, and the line or initial curve returned instead of a fit."""
    z0, z1 = torch.tensor([-2.0, 0.0], dtype=f64), torch.tensor([2.0, 0.0], dtype=f64)
    across = _bump(-1.0, axis=1)
    ends = across.metric(torch.stack([z0, z1]))
    assert (torch.linalg.eigvalsh(ends) > 0.9).all()
    assert across.metric(torch.zeros(1, 2, dtype=f64))[0, 1, 1] == -3.0  # the line's middle
    for curve in ("discrete", "neural"):
        with pytest.raises(ValueError, match=r"not positive semi-definite at the point \[-?\d.* "
                                             r"of a fitted curve \(G there"):
            fit_geodesics(across, z0, z1, curve=curve, n_points=20)
    # negative along the line's own direction: the line's length takes those squared speeds
    # as 0 (1.19 for a Euclidean 4), so it replaced the fit, which one tiny step from the
    # half-circle start stayed where G is positive
    along = _bump(-1.0, axis=0)
    angle = torch.linspace(math.pi, 0, 20, dtype=f64)
    half_circle = 2 * torch.stack([angle.cos(), angle.sin()], -1)
    half_circle[0], half_circle[-1] = z0, z1
    with pytest.raises(ValueError, match="of the line or initial curve returned for a longer fit"):
        fit_geodesics(along, z0, z1, init=half_circle, n_points=20, optimizer="adam", lr=1e-4,
                      max_iter=1)
    line_nodes = torch.stack([torch.linspace(-1.5, 1.5, 7, dtype=f64), torch.zeros(7, dtype=f64)],
                             -1)
    with pytest.raises(ValueError, match="of a shortest graph path"):
        graph_curves(along, z0, z1, line_nodes, k=2, n_points=20)
    # positive definite everywhere: fitted, and no curve beats the line, G11 = 1 along it
    ridge = _bump(1.0, axis=1)
    fit = fit_geodesics(ridge, z0, z1, init="graph", nodes=line_nodes, graph_k=2, n_points=20)
    assert bool(fit.converged.all())
    torch.testing.assert_close(fit.length, torch.full((1,), 4.0, dtype=f64))


def test_fit_options_out_of_range_are_refused_by_name():
    """lr=0 or lr=-1 left the curves on the line (lengths equal to line_length on the
    half-plane, where the geodesics are shorter) and reported them converged; tol=-1 or NaN
    ran every pair to max_iter; tol="a" failed in torch's indexing; hidden=(0,), (-3,) or 8
    of a neural fit failed inside torch. Each is now a ValueError naming the option."""
    metric = poincare()
    z0, z1 = half_plane_pairs()
    refusals = [({"lr": 0.0}, r"lr must be a finite number > 0, got 0.0"),
                ({"lr": -1.0}, r"lr must be a finite number > 0"),
                ({"lr": math.nan}, r"lr must be a finite number > 0"),
                ({"tol": -1}, r"tol must be a finite number >= 0, got -1"),
                ({"tol": math.nan}, r"tol must be a finite number >= 0"),
                ({"tol": "a"}, r"tol must be a finite number >= 0, got 'a'"),
                ({"curve": "neural", "hidden": (0,)}, r"every width in hidden must be an "
                                                      r"integer >= 1, got 0"),
                ({"curve": "neural", "hidden": (-3,)}, r"every width in hidden"),
                ({"curve": "neural", "hidden": 8}, r"hidden must be a sequence of layer "
                                                   r"widths, e.g. \(16, 16\), got 8")]
    for options, message in refusals:
        with pytest.raises(ValueError, match=message):
            fit_geodesics(metric, z0, z1, n_points=9, max_iter=20, **options)
    # the edges of the ranges still fit: tol 0 stops on an unchanged energy
    fit = fit_geodesics(metric, z0, z1, n_points=9, tol=0, lr=0.5, max_iter=200)
    assert bool((fit.length < 0.99 * fit.line_length).any())
    neural = fit_geodesics(metric, z0[:1], z1[:1], n_points=9, curve="neural", hidden=[4],
                           max_iter=5)
    assert neural.points.shape == (1, 9, 2)
