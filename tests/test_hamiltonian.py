"""HVAE and RHVAE against independent float64 references: the forces (decoder inside U,
autograd of hand-written Hamiltonians), the closed-form metric gradients (gradcheck), the
integrators (reversibility, O(eps^2) energy error, fixed points), whole losses and their
parameter gradients against a naive autograd-everywhere flow, the metric's properties,
save/load, divergence errors, sampling, and training on digits."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk
from aetk import hamiltonian as ham
from aetk.centroids import _snap, select_centroids
from aetk.decoders import Decoder
from aetk.encoders import GaussianEncoder
from aetk.models.rhvae import LOG_DIAG_BOUND
from aetk.train import evaluate

from helpers import OnceDifferentiableTanh, digits

F, LATENT, B, N_CENTROIDS = 6, 2, 5, 4
f64 = torch.float64


def close(actual, desired, **kw) -> None:
    """assert_allclose on tensors that may carry a graph."""
    as_np = [v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v
             for v in (actual, desired)]
    np.testing.assert_allclose(*as_np, **kw)


def _scaled(model: nn.Module, factor: float) -> nn.Module:
    """Weights scaled up so that forces and the metric vary visibly over the latent space."""
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


def _data(n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, F, generator=torch.Generator().manual_seed(seed), dtype=f64)


def hvae(**kw) -> aetk.HVAE:
    torch.manual_seed(1)
    m = aetk.build_model("hvae", "bernoulli", in_features=F, latent_dim=LATENT, hidden=(8,),
                         activation="tanh", **kw)
    return _scaled(m, 2.0).double()


def rhvae(d: int = LATENT, **kw) -> aetk.RHVAE:
    torch.manual_seed(1)
    m = aetk.build_model("rhvae", "bernoulli", in_features=F, latent_dim=d, hidden=(8,),
                         activation="tanh", centroids=N_CENTROIDS, **kw)
    m = _scaled(m, 2.0).double()
    m.on_fit_start(_data(40, seed=9))
    return m


# Independent references --------------------------------------------------------------------


def ref_log_lik(model, x, z):
    """Bernoulli log-likelihood by hand from the decoder network's logits."""
    logits = model.decoder.network(z)
    return (x * logits - nn.functional.softplus(logits)).sum(-1)


def ref_log_normal(z):
    return D.MultivariateNormal(torch.zeros_like(z), torch.eye(z.shape[-1], dtype=z.dtype)
                                ).log_prob(z)


def ref_G_inv(z, c, M, model):
    """The inverse metric with an explicit (B, N, d) broadcast and sum over centroids."""
    a = 1.0 / len(c) if model.centroid_reduction == "mean" else 1.0
    w = torch.exp(-((z[:, None, :] - c[None]) ** 2).sum(-1) / model.temperature**2)
    eye = torch.eye(z.shape[-1], dtype=z.dtype)
    return a * (w[:, :, None, None] * M[None]).sum(1) + model.regularization * eye


def ref_U_hvae(model, x, z):
    return -ref_log_lik(model, x, z) - ref_log_normal(z)


def ref_H_rhvae(model, x, z, rho, c, M):
    G_inv = ref_G_inv(z, c, M, model)
    log_det_G = torch.logdet(torch.linalg.inv(G_inv))
    kinetic = 0.5 * torch.einsum("bi,bij,bj->b", rho, G_inv, rho)
    return -ref_log_lik(model, x, z) - ref_log_normal(z) + 0.5 * log_det_G + kinetic


def grad(fn, z):
    z = z.detach().requires_grad_()
    return torch.autograd.grad(fn(z).sum(), z)[0]


def ref_inv_sqrt_beta(beta0, k, K):
    return (1 - 1 / math.sqrt(beta0)) * (k / K) ** 2 + 1 / math.sqrt(beta0)


def ref_hvae_loss(model, x, seed, eps=None):
    """The HVAE ELBO with hand leapfrog steps and autograd of the hand potential (step size
    `eps`, by default the model's)."""
    torch.manual_seed(seed)
    q = model.encoder(x)
    z = q.rsample()
    z0 = z
    gamma = torch.randn_like(z)
    beta0, K = float(model.beta0), model.n_leapfrog
    eps = model.step_size if eps is None else eps
    rho = gamma / math.sqrt(beta0)

    def dU(z):
        return torch.autograd.grad(ref_U_hvae(model, x, z).sum(), z, create_graph=True)[0]

    for k in range(1, K + 1):
        rho = rho - eps / 2 * dU(z)
        z = z + eps * rho
        rho = rho - eps / 2 * dU(z)
        rho = rho * ref_inv_sqrt_beta(beta0, k, K) / ref_inv_sqrt_beta(beta0, k - 1, K)
    elbo = (ref_log_lik(model, x, z) + ref_log_normal(z) + ref_log_normal(rho)
            - q.log_prob(z0) - ref_log_normal(gamma))
    return -elbo.mean()


def ref_rhvae_loss(model, x, seed):
    """The RHVAE ELBO the naive way: autograd of the whole hand Hamiltonian at every
    fixed-point iterate, densities from torch.distributions.MultivariateNormal."""
    c = model.latent_mean(model.centroid_data)
    L = model.lower_factor(model.centroid_data)
    M = L @ L.mT
    torch.manual_seed(seed)
    q = model.encoder(x)
    z = q.rsample()
    z0 = z
    eps_n = torch.randn_like(z)
    chol = torch.linalg.cholesky(ref_G_inv(z, c, M, model))
    gamma = torch.linalg.solve_triangular(chol.mT, eps_n[..., None], upper=True)[..., 0]
    beta0, K, eps = model.beta0, model.n_leapfrog, model.step_size
    rho = gamma / math.sqrt(beta0)

    def dH(z, rho):
        # rho depends on z through gamma: differentiate a fresh node, so that only H's
        # z-argument counts (the partial derivative at fixed rho).
        z = z.clone()
        return torch.autograd.grad(ref_H_rhvae(model, x, z, rho, c, M).sum(), z,
                                   create_graph=True)[0]

    def Gv(z, v):
        return torch.einsum("bij,bj->bi", ref_G_inv(z, c, M, model), v)

    for k in range(1, K + 1):
        rho_h = rho
        for _ in range(model.n_fixed_point):
            rho_h = rho - eps / 2 * dH(z, rho_h)
        z_new = z
        for _ in range(model.n_fixed_point):
            z_new = z + eps / 2 * (Gv(z, rho_h) + Gv(z_new, rho_h))
        z = z_new
        rho = rho_h - eps / 2 * dH(z, rho_h)
        rho = rho * ref_inv_sqrt_beta(beta0, k, K) / ref_inv_sqrt_beta(beta0, k - 1, K)

    def log_n(v, z):
        cov = torch.linalg.inv(ref_G_inv(z, c, M, model))
        return D.MultivariateNormal(torch.zeros_like(v), covariance_matrix=cov).log_prob(v)

    elbo = (ref_log_lik(model, x, z) + ref_log_normal(z) + log_n(rho, z)
            - q.log_prob(z0) - log_n(gamma, z0))
    return -elbo.mean()


# Tempering --------------------------------------------------------------------------------


def test_quadratic_tempering_schedule():
    beta0, K = 0.3, 3
    betas = [ham.inv_sqrt_beta(beta0, k, K) ** -2 for k in range(K + 1)]
    close(betas[0], beta0, rtol=1e-14)
    close(betas[-1], 1.0, rtol=1e-14)
    close(betas[1], ((1 - 1 / math.sqrt(0.3)) / 9 + 1 / math.sqrt(0.3)) ** -2)
    factors = [ham.tempering(beta0, k, K) for k in range(1, K + 1)]
    close(np.prod(factors), math.sqrt(beta0), rtol=1e-14)


# Forces -----------------------------------------------------------------------------------


def test_hvae_force_is_autograd_of_the_hand_potential_and_has_the_likelihood():
    m, x = hvae(), _data()
    z = torch.randn(B, LATENT, dtype=f64)
    pos = m.position_fn(x, create_graph=False)(z)
    ref = grad(lambda z: ref_U_hvae(m, x, z), z)
    close(pos.grad, ref, rtol=1e-12, atol=1e-12)
    close(pos.potential, ref_U_hvae(m, x, z), rtol=1e-12)
    # The likelihood force is there: not the Julia package's grad U = z, and it moves with x.
    other = m.position_fn(1 - x, create_graph=False)(z)
    assert (pos.grad - z).abs().max() > 0.1
    assert (pos.grad - other.grad).abs().max() > 0.1


def test_rhvae_force_is_autograd_of_the_hand_hamiltonian_and_has_the_likelihood():
    m, x = rhvae(), _data()
    metric = m.live_metric()
    L = m.lower_factor(m.centroid_data)
    c, M = metric.c, L @ L.mT
    z = torch.randn(B, LATENT, dtype=f64) * 0.5
    rho = torch.randn(B, LATENT, dtype=f64) * 3
    pos = m.position_fn(x, metric, create_graph=False)(z)
    grad_H = pos.grad + metric.kinetic_grad(pos, rho)
    ref = grad(lambda z: ref_H_rhvae(m, x, z, rho, c, M), z)
    close(grad_H, ref, rtol=1e-10, atol=1e-12)
    H = pos.potential + metric.kinetic(pos, rho)
    close(H, ref_H_rhvae(m, x, z, rho, c, M), rtol=1e-12)
    other = m.position_fn(1 - x, metric, create_graph=False)(z)
    assert (pos.grad - other.grad).abs().max() > 0.1


def _metric(d=3, n=7, reduction_scale=1.0):
    g = torch.Generator().manual_seed(4)
    c = torch.randn(n, d, generator=g, dtype=f64)
    A = torch.randn(n, d, d, generator=g, dtype=f64)
    return ham.CentroidMetric(c, A @ A.mT, 0.8, 0.01, reduction_scale), c, A @ A.mT


def test_closed_form_metric_gradients_match_autograd_and_gradcheck():
    metric, c, M = _metric()
    z = torch.randn(4, 3, dtype=f64) * 0.7
    rho = torch.randn(4, 3, dtype=f64)

    class Ref:
        centroid_reduction, temperature, regularization = "sum", 0.8, 0.01

    def kinetic(z):
        return 0.5 * torch.einsum("bi,bij,bj->b", rho, ref_G_inv(z, c, M, Ref), rho)

    def half_log_det_G(z):
        return -0.5 * torch.logdet(ref_G_inv(z, c, M, Ref))

    at = metric.at(z)
    pos = ham.Position(z, None, None, metric=at)
    close(metric.kinetic_grad(pos, rho), grad(kinetic, z), rtol=1e-11)
    close(metric.force(z, at.weights, at.G), grad(half_log_det_G, z),
                               rtol=1e-11)
    zr = z.clone().requires_grad_()
    assert torch.autograd.gradcheck(kinetic, (zr,))
    assert torch.autograd.gradcheck(half_log_det_G, (zr,))

    # The closed forms are themselves differentiable (the outer gradient flows through them).
    def closed(z, c, M):
        met = ham.CentroidMetric(c, M @ M.mT, 0.8, 0.01, 1.0)
        a = met.at(z)
        p = ham.Position(z, None, None, metric=a)
        return met.kinetic_grad(p, rho) + met.force(z, a.weights, a.G)

    args = (zr, c.clone().requires_grad_(), M.clone().requires_grad_())
    assert torch.autograd.gradcheck(closed, args)


def test_metric_is_spd_tends_to_identity_over_lambda_and_reductions_differ_by_n():
    metric, c, M = _metric(n=7)
    z = torch.randn(6, 3, dtype=f64)
    at = metric.at(z)
    close(at.G, at.G.mT, atol=1e-13)
    assert torch.linalg.eigvalsh(at.G).min() > 0
    close(at.G @ at.G_inv, torch.eye(3, dtype=f64).expand(6, 3, 3),
                               atol=1e-9)
    close(at.log_det_G, torch.logdet(at.G), rtol=1e-10)
    far = metric.at(torch.full((2, 3), 50.0, dtype=f64))
    close(far.G, torch.eye(3, dtype=f64).expand(2, 3, 3) / 0.01, rtol=1e-12)
    mean = ham.CentroidMetric(c, M, 0.8, 0.01, 1.0 / 7)
    lam = 0.01 * torch.eye(3, dtype=f64)
    close(metric.inverse(z) - lam, 7 * (mean.inverse(z) - lam), rtol=1e-12)


def test_an_indefinite_inverse_metric_is_reported_not_used():
    """With M = -I (not a Gram matrix) G^{-1} = -w I + 0.01 I is indefinite near the
    centroid: `at` reports the failed Cholesky factorisation there (info != 0) and
    `christoffel_contract` gives NaN; far away both are fine."""
    c, M = torch.zeros(1, 2, dtype=f64), -torch.eye(2, dtype=f64).expand(1, 2, 2)
    metric = ham.CentroidMetric(c, M, 0.8, 0.01, 1.0)
    z = torch.tensor([[0.1, 0.0], [20.0, 0.0]], dtype=f64)
    assert metric.at(z).info.tolist()[0] != 0 and metric.at(z).info.tolist()[1] == 0
    gamma = metric.christoffel_contract(z, torch.ones_like(z))
    assert torch.isnan(gamma[0]).all() and torch.isfinite(gamma[1]).all()


def test_rhvae_reductions_differ_by_the_number_of_centroids():
    z = torch.randn(3, LATENT, dtype=f64)
    g_mean = rhvae(centroid_reduction="mean").G_inv(z) - 0.01 * torch.eye(LATENT, dtype=f64)
    g_sum = rhvae(centroid_reduction="sum").G_inv(z) - 0.01 * torch.eye(LATENT, dtype=f64)
    close(g_sum, N_CENTROIDS * g_mean, rtol=1e-12)


def test_value_and_grad_detaches_unless_asked_for_a_graph():
    """Without create_graph the value and gradient carry no graph (importance weights and
    validation hold none), also for z that requires grad; with it, the gradient is itself
    differentiable: d/dz sum(z^3) = 3 z^2, and its own gradient 6 z."""
    z = torch.randn(B, LATENT, dtype=f64).requires_grad_()
    value, g = ham.value_and_grad(lambda z: (z**3).sum(-1), z, create_graph=False)
    assert not value.requires_grad and not g.requires_grad
    close(value, (z**3).sum(-1), rtol=1e-14)
    close(g, 3 * z**2, rtol=1e-14)
    value, g = ham.value_and_grad(lambda z: (z**3).sum(-1), z, create_graph=True)
    assert value.requires_grad
    close(torch.autograd.grad(g.sum(), z)[0], 6 * z, rtol=1e-14)


def test_float64_metric_algebra_for_float32_points():
    """An ill-conditioned G^{-1} = 1e4 w v v^T + 1e-3 I (condition ~1e7) at float32 points:
    with float64 algebra (the default) log det G, G and G^{-1} match a float64 reference from
    the same float32 weights; float32 algebra (`float64=False`, as
    `RHVAE(float64_metric=False)` asks) loses the small eigenvalue. The weights stay in
    (0, 1] near centroids far from the origin, where |z|^2 - 2 z c + |c|^2 rounds below 0."""
    torch.manual_seed(0)
    c = torch.randn(50, 2) * 30
    M = 1e4 * torch.tensor([[1.0, 1.0], [1.0, 1.0]]).expand(50, 2, 2) / 2
    z = c + 1e-3 * torch.randn(50, 2)
    exact = ham.CentroidMetric(c, M, 0.8, 1e-3, 1.0)
    at = exact.at(z)
    assert at.G.dtype == at.log_det_G.dtype == torch.float32
    w = at.weights.double()
    assert w.min() >= 0 and w.max() <= 1 and w.diagonal().min() > 0.99
    G_inv = torch.einsum("bn,nij->bij", w, M.double()) + 1e-3 * torch.eye(2, dtype=f64)
    close(at.log_det_G, -torch.logdet(G_inv), rtol=1e-6)
    close(at.G, torch.linalg.inv(G_inv), rtol=1e-5)
    close(exact.inverse(z), G_inv, rtol=1e-6)
    rough = ham.CentroidMetric(c, M, 0.8, 1e-3, 1.0, float64=False).at(z)
    assert (rough.log_det_G.double() + torch.logdet(G_inv)).abs().max() > 0.01
    m = rhvae(float64_metric=False).float()
    assert m.frozen_metric().exact == torch.float32
    assert rhvae().float().frozen_metric().exact == f64


def test_weights_near_centroids_far_from_the_origin_relative_to_the_temperature():
    """Float32 points 1e-2 from centroids of norm 25 in d = 64 with T = 0.02: the GEMM
    |z|^2 - 2 z c + |c|^2 cancelled to distances of 0 or 4e-4 instead of 1e-4 (weights 1 or
    0.4 instead of 0.78); they now match float64 differences of the same float32 numbers.
    The usual scale (T = 0.8, standard normal centroids, d = 10) keeps the fast GEMM."""
    g = torch.Generator().manual_seed(0)
    c = torch.randn(256, 64, generator=g)
    c = 25 * c / c.norm(dim=-1, keepdim=True)
    z = c[:8] + 1e-2 * torch.randn(8, 64, generator=g) / 8
    metric = ham.CentroidMetric(c, torch.eye(64).expand(256, 64, 64), 0.02, 0.01, 1 / 256)
    ref = torch.exp(-(z.double()[:, None] - c.double()).square().sum(-1) / 0.02**2)
    assert ref.diagonal().min() > 0.7
    close(metric.weights(z), ref, atol=1e-5, rtol=0)
    assert not ham.CentroidMetric(torch.randn(256, 10, generator=g), torch.eye(10).expand(
        256, 10, 10), 0.8, 0.01, 1.0).direct


def test_float64_rhvae_keeps_given_float64_centroids_and_matches_the_formula():
    # given centroids were cast to float32: a float64 model failed in update_metric
    torch.manual_seed(0)
    enc = GaussianEncoder(in_features=F, latent_dim=LATENT, hidden=(8,)).double()
    dec = aetk.BernoulliDecoder(latent_dim=LATENT, out_features=F, hidden=(8,)).double()
    points = torch.rand(5, F, dtype=f64) * (1 + 1e-9)  # not representable in float32
    m = aetk.RHVAE(enc, dec, centroids=points)
    assert m.centroid_data.dtype == m.centroid_M.dtype == f64
    assert torch.equal(m.centroid_data, points)
    c, L = m.latent_mean(points), m.lower_factor(points)
    z = torch.randn(4, LATENT, dtype=f64)
    w = torch.exp(-torch.cdist(z, c) ** 2 / 0.8**2)  # (B, N), temperature 0.8
    ref = torch.einsum("bn,nij->bij", w, L @ L.mT) / 5 + 0.01 * torch.eye(LATENT, dtype=f64)
    close(m.G_inv(z), ref, rtol=1e-12)


def test_rhvae_metric_methods_agree_at_points_of_any_shape():
    """RHVAE.G is the inverse of RHVAE.G_inv (the explicit-broadcast reference) and log_det_G
    its log-determinant, at one point, at rows and at a (2, 3, d) array of points."""
    m = rhvae()
    z = torch.randn(2, 3, LATENT, dtype=f64)
    ref = ref_G_inv(z.reshape(-1, LATENT), m.centroid_latent, m.centroid_M, m).view(2, 3, 2, 2)
    close(m.G_inv(z), ref, rtol=1e-12)
    close(m.G(z), torch.linalg.inv(ref), rtol=1e-10)
    close(m.log_det_G(z), -torch.logdet(ref), rtol=1e-10)
    close(m.G(z[1]), m.G(z)[1], rtol=1e-14)
    close(m.log_det_G(z[0, 2].numpy()), -torch.logdet(ref[0, 2]), rtol=1e-10)


def test_lower_factor_layout_and_bounds():
    out = torch.tensor([[0.5, -1.0, 100.0, 2.0, -3.0, 0.25]], dtype=f64)  # d = 3
    m = aetk.RHVAE(GaussianEncoder(in_features=F, latent_dim=3, hidden=(4,)),
                   aetk.BernoulliDecoder(latent_dim=3, out_features=F, hidden=(4,)),
                   metric_net=lambda x: out.expand(len(x), -1), centroids=1).double()
    L = m.lower_factor(torch.zeros(1, F, dtype=f64))[0]
    b = LOG_DIAG_BOUND
    diag = np.exp(b * np.tanh(np.array([0.5, -1.0, 100.0]) / b))
    lower = np.exp(b) * np.tanh(np.array([2.0, -3.0, 0.25]) / np.exp(b))
    ref = np.array([[diag[0], 0, 0], [lower[0], diag[1], 0], [lower[1], lower[2], diag[2]]])
    close(L, ref, rtol=1e-13)
    assert L[2, 2] <= math.exp(b)


def test_lower_factor_entries_are_capped_at_e_squared():
    """The documented cap (rhvae.LOG_DIAG_BOUND's docstring: entries of L within e^2 ~ 7.4;
    e^6 diverged on MNIST), stated as a literal: saturated outputs give +-e^2 on and below
    the diagonal, and e^-2 for a very negative log-diagonal."""
    out = torch.tensor([[100.0, -100.0, 100.0, 1e3, -1e3, 0.25]], dtype=f64)  # d = 3
    m = aetk.RHVAE(GaussianEncoder(in_features=F, latent_dim=3, hidden=(4,)),
                   aetk.BernoulliDecoder(latent_dim=3, out_features=F, hidden=(4,)),
                   metric_net=lambda x: out.expand(len(x), -1), centroids=1).double()
    L = m.lower_factor(torch.zeros(1, F, dtype=f64))[0]
    e2 = math.exp(2.0)
    ref = np.array([[e2, 0, 0], [e2, 1 / e2, 0], [-e2, e2 * math.tanh(0.25 / e2), e2]])
    close(L, ref, rtol=1e-13)


# Integrators ------------------------------------------------------------------------------


def _hvae_run(m, x, z, rho, eps, n):
    position = m.position_fn(x, create_graph=False)
    pos = position(z)
    energies = [pos.potential + 0.5 * (rho * rho).sum(-1)]
    for _ in range(n):
        pos, rho = ham.leapfrog(pos, rho, eps, position)
        energies.append(pos.potential + 0.5 * (rho * rho).sum(-1))
    return pos.z, rho, torch.stack(energies)


def _rhvae_run(m, x, z, rho, eps, n, n_fp):
    metric = m.live_metric()
    position = m.position_fn(x, metric, create_graph=False)
    pos = position(z)
    energies = [pos.potential + metric.kinetic(pos, rho)]
    for _ in range(n):
        pos, rho, _, _ = ham.generalized_leapfrog(pos, rho, eps, n_fp, metric, position)
        energies.append(pos.potential + metric.kinetic(pos, rho))
    return pos.z, rho, torch.stack(energies)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_leapfrog_is_reversible(kind):
    x = _data()
    z0, rho0 = torch.randn(B, LATENT, dtype=f64), torch.randn(B, LATENT, dtype=f64)
    if kind == "hvae":
        m = hvae()
        z, rho, _ = _hvae_run(m, x, z0, rho0, 0.05, 10)
        z_back, rho_back, _ = _hvae_run(m, x, z, -rho, 0.05, 10)
    else:
        m = rhvae()
        z, rho, _ = _rhvae_run(m, x, z0, rho0, 0.05, 10, 60)
        z_back, rho_back, _ = _rhvae_run(m, x, z, -rho, 0.05, 10, 60)
    assert (z - z0).abs().max() > 0.1  # it moved
    close(z_back, z0, atol=1e-9)
    close(-rho_back, rho0, atol=1e-9)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_energy_error_is_second_order(kind):
    """Over a fixed time, halving eps divides the energy error by about 4."""
    x = _data()
    z0, rho0 = torch.randn(B, LATENT, dtype=f64), torch.randn(B, LATENT, dtype=f64)
    errors = []
    for eps in (0.04, 0.02, 0.01):
        n = round(0.4 / eps)
        if kind == "hvae":
            _, _, e = _hvae_run(hvae(), x, z0, rho0, eps, n)
        else:
            _, _, e = _rhvae_run(rhvae(), x, z0, rho0, eps, n, 40)
        errors.append((e - e[0]).abs().max().item())
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    close(orders, 2.0, atol=0.25)
    assert errors[-1] < 1e-3


def test_generalized_leapfrog_reaches_its_fixed_point():
    m, x = rhvae(), _data()
    metric = m.live_metric()
    position = m.position_fn(x, metric, create_graph=False)
    pos = position(torch.randn(B, LATENT, dtype=f64))
    rho, eps = torch.randn(B, LATENT, dtype=f64) * 2, 0.1

    def residuals(n_fp):
        new, _, rho_h, moved = ham.generalized_leapfrog(pos, rho, eps, n_fp, metric, position)
        r_rho = rho_h - (rho - eps / 2 * (pos.grad + metric.kinetic_grad(pos, rho_h)))
        z_fix = pos.z + eps / 2 * ham.mv(pos.metric.G_inv + metric.inverse(new.z), rho_h)
        return r_rho.abs().max().item(), (new.z - z_fix).abs().max().item(), moved

    few, many = residuals(1), residuals(30)
    # one iteration: measured by the second it leaves out
    assert min(few[:2]) > 1e-5 and few[2].max() > 1e-3
    assert max(many[:2]) < 1e-6
    # the last iteration's move, the convergence measure FlowMonitor checks, shrinks with it
    assert residuals(2)[2].max() > 1e-3 and many[2].max() < 1e-5


@pytest.mark.parametrize(("step", "n_fp", "warns"), [
    (1e-3, 3, False), (0.1, 3, False), (0.2, 3, True), (0.2, 6, False), (0.2, 1, True),
    (1e-3, 1, False)])
def test_unconverged_fixed_point_iterations_are_said(step, n_fp, warns):
    """A step too large for `n_fixed_point` leaves the implicit steps unconverged: the flow
    then does not preserve volume and `log_marginal` came out 0.03-0.06 nats above the exact
    log p(x) (step 0.2, 3 iterations, 20,000 draws, the auditing helper's quadrature,
    2026-12-03); where it stayed within its Monte Carlo error nothing is said. One
    iteration (the explicit step) is measured by the second iteration it leaves out: it
    was never warned of, the worst case (a reviewer's: +0.25 nats at step 0.5)."""
    import warnings

    x = torch.from_numpy(np.random.default_rng(5).integers(0, 2, (3, 4)).astype(float))
    torch.manual_seed(2)
    m = aetk.build_model("rhvae", "bernoulli", in_features=4, latent_dim=1, hidden=(6,),
                         centroids=5, step_size=step, n_fixed_point=n_fp).double()
    m.on_fit_start(torch.from_numpy(np.random.default_rng(9).random((5, 4))))
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aetk.log_marginal(m, x, n_samples=2000)
    said = [w for w in caught if issubclass(w.category, ham.FixedPointWarning)]
    assert bool(said) == warns
    assert all("raise n_fixed_point or lower step_size" in str(w.message) for w in said)


# Whole losses and their gradients -----------------------------------------------------------


def _param_grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


@pytest.mark.parametrize("n_in", [3, aetk.nets.NARROW + 1])
def test_linear_shares_its_transpose_inside_the_scope_only(n_in):
    """`nets.Linear` computes what `nn.Linear` does; inside `shared_transposes()` its calls
    hang off one transposed-weight node per grad mode (the flows' exact forces sum their
    weight gradients there in place), outside each call makes its own, and the weight
    gradient is the same either way (the reference test above checks whole flows). A narrow
    layer multiplies a contiguous copy of the transpose (MKL's backward products are faster
    with it), a wider one the view."""
    torch.manual_seed(0)
    lin, x1, x2 = aetk.nets.Linear(n_in, 4).double(), torch.randn(5, n_in, dtype=f64), \
        torch.randn(2, n_in, dtype=f64)
    plain = nn.Linear(n_in, 4).double()
    plain.load_state_dict(lin.state_dict())

    def node(y: torch.Tensor):  # addmm's mat2 input: the transposed weight
        return y.grad_fn.next_functions[2][0]

    with aetk.nets.shared_transposes():
        y1, y2 = lin(x1), lin(x2)
        with torch.no_grad():
            y3 = lin(x1)
        y4 = lin(x1)
    assert node(y1) is node(y2) is node(y4) and y3.grad_fn is None
    assert node(y1).name() == ("CloneBackward0" if n_in <= aetk.nets.NARROW else "TBackward0")
    assert node(lin(x1)) is not node(lin(x1))  # outside the scope: a node per call
    close(y1, plain(x1), rtol=1e-14)  # the copy may change the summation order
    close(y3, y1, rtol=1e-15)
    (y1.square().sum() + y2.sum() + y4.sum()).backward()
    (plain(x1).square().sum() + plain(x2).sum() + plain(x1).sum()).backward()
    close(lin.weight.grad, plain.weight.grad, rtol=1e-14, atol=1e-14)
    close(lin.bias.grad, plain.bias.grad, rtol=1e-14, atol=1e-14)
    no_bias = aetk.nets.Linear(n_in, 4, bias=False).double()
    with aetk.nets.shared_transposes():
        close(no_bias(x1), x1 @ no_bias.weight.T, rtol=1e-15)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_loss_and_gradients_match_the_naive_reference_flow(kind):
    """The split evaluation (each position once, closed-form metric forces) against autograd
    of the whole Hamiltonian at every iterate."""
    if kind == "hvae":
        m, ref, rtol = hvae(n_leapfrog=3, step_size=0.05, beta0=0.5), ref_hvae_loss, 1e-12
    else:
        m = rhvae(n_leapfrog=2, step_size=0.05, beta0=0.5, centroid_reduction="sum")
        ref, rtol = ref_rhvae_loss, 1e-11
    x = _data()
    torch.manual_seed(5)
    out = m.loss(x)
    close(out.loss.item(), ref(m, x, 5).item(), rtol=rtol)
    t = out.terms
    close(out.loss, t["reconstruction"] - t["log_prior"] - t["momentum"] - t["entropy"])
    torch.manual_seed(5)
    got = _param_grads(m, m.loss(x).loss)
    want = _param_grads(m, ref(m, x, 5))
    assert set(got) == set(want)
    assert kind == "hvae" or any(k.startswith("metric_net") for k in got)
    for k in want:
        close(got[k], want[k], rtol=1e3 * rtol, atol=10 * rtol, err_msg=k)


def test_hvae_learned_step_size_and_beta0_get_exact_gradients():
    m = hvae(n_leapfrog=2, step_size=[0.05, 0.02], beta0=0.4, learn_step_size=True,
             learn_beta0=True)
    x = _data()
    torch.manual_seed(2)
    m.loss(x).loss.backward()
    g_eps, g_beta = m.log_step_size.grad.clone(), m.beta0_logit.grad.clone()

    def loss_at(log_eps, logit):
        with torch.no_grad():
            m.log_step_size.copy_(log_eps)
            m.beta0_logit.copy_(logit)
        torch.manual_seed(2)
        return m.loss(x).loss.item()

    log_eps, logit, h = m.log_step_size.detach().clone(), m.beta0_logit.detach().clone(), 1e-6
    num_beta = (loss_at(log_eps, logit + h) - loss_at(log_eps, logit - h)) / (2 * h)
    e0 = torch.tensor([h, 0.0], dtype=f64)
    num_eps0 = (loss_at(log_eps + e0, logit) - loss_at(log_eps - e0, logit)) / (2 * h)
    close(g_beta.item(), num_beta, rtol=1e-5)
    close(g_eps[0].item(), num_eps0, rtol=1e-5)


def test_hvae_per_dimension_step_sizes_match_the_hand_flow():
    """Step sizes (0.05, 0.02), one per latent dimension, given to the hand reference as
    numbers: the same loss, and the model reports them."""
    m, x = hvae(n_leapfrog=2, step_size=[0.05, 0.02], beta0=0.4), _data()
    close(m.step_size, [0.05, 0.02], rtol=1e-6)
    torch.manual_seed(6)
    loss = m.loss(x).loss
    eps = torch.tensor([0.05, 0.02], dtype=f64)  # the model keeps exp(float32 log eps)
    close(loss, ref_hvae_loss(m, x, 6, eps=eps), rtol=1e-7)


class LaplaceDecoder(Decoder):
    """A user-made likelihood: nothing but a subclass returning a distribution."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(LATENT, 8), nn.Tanh(), nn.Linear(8, F))

    def forward(self, z):
        return D.Independent(D.Laplace(self.net(z), 0.7), 1)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_no_leapfrog_and_beta0_one_give_the_vae_elbo(kind):
    torch.manual_seed(3)
    enc = GaussianEncoder(in_features=F, latent_dim=LATENT, hidden=(8,))
    dec = LaplaceDecoder()
    x = _data()
    if kind == "hvae":
        m = aetk.HVAE(enc, dec, n_leapfrog=0, beta0=1.0)
    else:
        m = aetk.RHVAE(enc, dec, centroids=_data(3, seed=4).float(), n_leapfrog=0, beta0=1.0)
    m = m.double()
    torch.manual_seed(8)
    out = m.loss(x)
    torch.manual_seed(8)
    q = enc(x)
    z0 = q.rsample()
    mu, sd = q.mean, q.stddev
    log_q = (-0.5 * ((z0 - mu) / sd) ** 2 - sd.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_lik = (-(x - dec.net(z0)).abs() / 0.7 - math.log(2 * 0.7)).sum(-1)
    log_p = -0.5 * (z0**2).sum(-1) - math.log(2 * math.pi)
    close(out.loss.item(), -(log_lik + log_p - log_q).mean().item(),
                               rtol=1e-12)
    close(out.terms["momentum"].item(), 0.0, atol=1e-12)
    # The same z_0 in the VAE gives the same reconstruction term.
    vae = aetk.VAE(enc, dec).double()
    torch.manual_seed(8)
    close(vae.loss(x).terms["reconstruction"].item(),
                               out.terms["reconstruction"].item(), rtol=1e-12)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_elbo_prefactors_weigh_each_term(kind):
    """AETK's prefactors: a1..a3 on log p(x|z_K), log N(rho_K), log p(z_K); b1, b2 on
    log q(z_0|x), log N(gamma_0); all ones is the ELBO."""
    make = hvae if kind == "hvae" else rhvae
    x = _data()

    def loss(a, b):
        m = make(logp_prefactor=a, logq_prefactor=b)
        torch.manual_seed(5)
        return m.loss(x).loss

    m = make()
    torch.manual_seed(5)
    elbo = m.loss(x)
    t = elbo.terms
    close(loss((1, 0, 0), (0, 0)), t["reconstruction"], rtol=1e-12)
    close(loss((0, 0, 1), (0, 0)), -t["log_prior"], rtol=1e-12)
    close(loss((0, 0, 0), (1, 0)), -t["entropy"], rtol=1e-12)
    log_rho, log_gamma = -loss((0, 1, 0), (0, 0)), loss((0, 0, 0), (0, 1))
    close(log_rho - log_gamma, t["momentum"], rtol=1e-10)
    close(loss((1, 1, 1), (1, 1)), elbo.loss, rtol=1e-12)
    close(loss((2, 0.5, 3), (0.25, 4)),
          2 * t["reconstruction"] - 0.5 * log_rho - 3 * t["log_prior"]
          - 0.25 * t["entropy"] + 4 * log_gamma, rtol=1e-10)
    if kind == "hvae":  # log N(gamma_0; 0, I) with gamma_0 replayed from the same seed
        torch.manual_seed(5)
        gamma = torch.randn_like(m.encoder(x).rsample())
        close(log_gamma, ref_log_normal(gamma).mean(), rtol=1e-12)
    with pytest.raises(ValueError, match="logq_prefactor must be 2 finite numbers"):
        make(logq_prefactor=(1, 1, 1))
    with pytest.raises(ValueError, match="logp_prefactor must be 3 finite numbers"):
        make(logp_prefactor=(1, float("nan"), 1))


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_validation_under_no_grad_gives_the_training_value(kind):
    m, x = (hvae() if kind == "hvae" else rhvae()), _data()
    torch.manual_seed(4)
    with_grad = m.loss(x).loss.item()
    torch.manual_seed(4)
    with torch.no_grad():
        without = m.eval().loss(x)
    assert not without.loss.requires_grad
    close(without.loss.item(), with_grad, rtol=1e-12)



@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_inference_mode_gives_the_no_grad_values(kind):
    # the flow differentiates the decoder at z: under torch.inference_mode() every call
    # through it failed with "element 0 of tensors does not require grad"
    m, x = (hvae() if kind == "hvae" else rhvae()), _data()
    results = []
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.manual_seed(4)
            loss = m.loss(x).loss
            torch.manual_seed(5)
            z = m.posterior_sample(x)
            torch.manual_seed(6)
            log_px = aetk.log_marginal(m, x, n_samples=7)
        results.append([t.clone() for t in (loss, z, log_px)])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_inference_mode_flow_of_a_conditional_model():
    torch.manual_seed(1)
    m = aetk.build_model("hvae", "bernoulli", in_features=F, latent_dim=LATENT, hidden=(8,),
                         n_conditions=2).double()
    x, c = _data(), torch.eye(2, dtype=f64)[[0, 1, 0, 1, 1]]
    with torch.inference_mode(), m.given(c):
        torch.manual_seed(6)
        inferred = aetk.log_marginal(m, x, n_samples=3)
    with torch.no_grad(), m.given(c):
        torch.manual_seed(6)
        assert torch.equal(inferred, aetk.log_marginal(m, x, n_samples=3))


# Divergence -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_a_huge_step_size_raises_flow_diverged(kind):
    m = hvae(step_size=50.0) if kind == "hvae" else rhvae(step_size=50.0)
    with pytest.raises(ham.FlowDiverged, match="smaller step_size"):
        m.loss(_data())
    x = _data(60).float()
    with pytest.raises(aetk.TrainingDiverged, match="Hamiltonian flow diverged"):
        aetk.fit(m.float(), x, epochs=1, batch_size=20, progress=False, device="cpu")


class ZeroRateDecoder(Decoder):
    """Poisson rates that underflow to exactly 0: log-likelihood gradients are 0/0."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(LATENT, F)

    def forward(self, z):
        return D.Independent(D.Poisson(nn.functional.softplus(self.net(z) - 200.0),
                                       validate_args=False), 1)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_failures_that_are_not_the_step_size_name_their_cause(kind):
    enc = GaussianEncoder(in_features=F, latent_dim=LATENT, hidden=(8,))
    x = torch.zeros(B, F)
    if kind == "hvae":
        m = aetk.HVAE(enc, ZeroRateDecoder())
    else:
        m = aetk.RHVAE(enc, ZeroRateDecoder(), centroids=torch.rand(3, F))
    with pytest.raises(aetk.TrainingDiverged, match="not finite at finite latent") as err:
        m.loss(x)
    assert not isinstance(err.value, ham.FlowDiverged)
    with torch.no_grad():
        enc.network[-1][-1].bias.fill_(2000.0)  # z_0 far beyond any prior mass
    with pytest.raises(aetk.TrainingDiverged, match="encoder's samples") as err:
        m.loss(x)
    assert not isinstance(err.value, ham.FlowDiverged)


class _Broken(nn.Module):
    def forward(self, x):
        raise RuntimeError("an unrelated failure")


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_fit_names_a_once_differentiable_decoder(kind):
    """The training gradient differentiates the decoder's force again: a decoder with a
    once-differentiable Function gets aetk's TypeError from fit (torch's bare RuntimeError
    from inside backward before), chained to torch's; other errors pass unchanged, and the
    same model with nn.Tanh trains."""
    m = hvae() if kind == "hvae" else rhvae()
    x = _data(40)
    fit = dict(epochs=1, batch_size=20, progress=False, device="cpu")
    m.decoder.network[1] = OnceDifferentiableTanh()
    with pytest.raises(TypeError, match=(
            rf"^training {kind.upper()} differentiates a gradient again \(the leapfrog force "
            r".*only once differentiable.*@once_differentiable.*differentiable torch "
            r"operations, or train without second derivatives")) as err:
        aetk.fit(m, x, **fit)
    assert "once_differentiable" in str(err.value.__cause__)
    m.decoder.network[1] = _Broken()
    with pytest.raises(RuntimeError, match=r"^an unrelated failure$") as err:
        aetk.fit(m, x, **fit)
    assert type(err.value) is RuntimeError
    m.decoder.network[1] = nn.Tanh()
    before = [p.detach().clone() for p in m.decoder.parameters()]
    history = aetk.fit(m, x, **fit)
    assert np.isfinite(history["train_loss"]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, m.decoder.parameters(), strict=True))


def _monitor(*points, step_size=0.1):
    """Feed a FlowMonitor points (z, rho, grad, Cholesky info or None) of two samples in
    2-d and check them."""
    mon = ham.FlowMonitor(step_size)
    for z, rho, g, info in points:
        met = None if info is None else ham.MetricAt(*[None] * 5, torch.tensor(info))
        as_t = [torch.tensor(v, dtype=f64) for v in (z, rho, g)]
        mon.point(ham.Position(as_t[0], None, as_t[2], metric=met), as_t[1])
    mon.check()


def test_flow_monitor_names_the_first_bad_step_its_samples_and_its_cause():
    """Each cause of divergence at finite |z| (beyond 1e3, a non-finite momentum, a failed
    Cholesky factorisation) raises FlowDiverged naming the first bad step and its number of
    samples; a non-finite force at a finite z, or a bad point 0, raises TrainingDiverged."""
    inf, nan = math.inf, math.nan
    fine = ([[0.0, 0.0], [1e3, 0.0]], [[1.0, 1.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], [0, 0])
    _monitor(fine, fine)  # |z| = 1e3 is not beyond it
    z, rho, g, _ = fine
    for bad in ((z, rho, g, [0, 3]), (z, [[1.0, inf], [1.0, 1.0]], g, [0, 0]),
                ([[0.0, 0.0], [0.0, 1000.01]], rho, g, None),
                ([[nan, 0.0], [0.0, 0.0]], rho, [[nan, 1.0], [1.0, 1.0]], [0, 0])):
        worse = ([[2e3, 0.0], [0.0, 2e3]], rho, g, [0, 0])  # both samples, one step later
        with pytest.raises(ham.FlowDiverged,
                           match=r"leapfrog step 2 for 1 sample\(s\).*\(now 0\.1\)"):
            _monitor(fine, fine, bad, worse)
    no_force = (z, rho, [[1.0, 1.0], [nan, 1.0]], [0, 0])
    with pytest.raises(aetk.TrainingDiverged, match=r"step 1, 1 sample.*not help") as err:
        _monitor(fine, no_force, ([[inf, 0.0], [0.0, 0.0]], rho, g, None))
    assert not isinstance(err.value, ham.FlowDiverged)
    with pytest.raises(aetk.TrainingDiverged, match="encoder's samples") as err:
        _monitor((z, rho, g, [1, 0]), fine)
    assert not isinstance(err.value, ham.FlowDiverged)


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_a_flow_that_leaves_at_once_names_leapfrog_step_one(kind):
    """Steps of 1e4 send every sample beyond |z| = 1e3 in the first leapfrog step: the
    monitor counts z_0 as point 0, so the error names step 1 and all 5 samples."""
    m = hvae(step_size=1e4) if kind == "hvae" else rhvae(step_size=1e4)
    with pytest.raises(ham.FlowDiverged, match=r"leapfrog step 1 for 5 sample\(s\)"):
        m.loss(_data())


# Metric buffers, centroids, save/load, sampling -------------------------------------------


def test_centroids_are_distinct_training_points():
    x = torch.rand(300, 5, generator=torch.Generator().manual_seed(0))
    for method in ("kmeans", "kmeans++", "kmedoids"):
        idx = select_centroids(x, 20, method, seed=1)
        assert len(set(idx.tolist())) == 20 and idx.max() < 300
        np.testing.assert_array_equal(idx, select_centroids(x, 20, method, seed=1))
    with pytest.raises(ValueError, match="cannot choose"):
        select_centroids(x, 301)
    with pytest.raises(ValueError, match="only 3 distinct points"):
        select_centroids(torch.eye(3).repeat(5, 1), 4, "kmedoids")
    with pytest.raises(ValueError, match="centroid_method must be one of"):
        aetk.build_model("rhvae", "bernoulli", in_features=F, hidden=(8,), centroid_method="pam")


def test_kmedoids_against_brute_force_medoids():
    """Each k-medoids centroid is the member of its Voronoi cell with the least summed
    distance to the cell (scipy distances, exhaustive search); on four separated blobs the
    cells are the blobs."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(0)
    centres = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=float)
    labels = np.repeat(np.arange(4), 40)
    blobs = centres[labels] + rng.normal(size=(160, 3))
    for data, k in ((blobs, 4), (rng.random((300, 5)), 12)):
        idx = select_centroids(torch.from_numpy(data), k, "kmedoids", seed=3).numpy()
        cell = cdist(data, data[idx]).argmin(1)
        if k == 4:
            np.testing.assert_array_equal(np.sort(labels[idx]), np.arange(4))
        for j, medoid in enumerate(idx):
            members = np.flatnonzero(cell == j)
            assert medoid == members[cdist(data[members], data[members]).sum(1).argmin()]


def test_kmedoids_minimises_summed_distances_not_squared_ones():
    """One medoid of 0, 1, 2, 3, 20: summed distances are 22 at 2 and 23 at 1 and 3;
    summed squared distances would pick 3 (303 against 330 at 2)."""
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [20.0]], dtype=f64)
    for seed in range(3):
        assert select_centroids(x, 1, "kmedoids", seed=seed).tolist() == [2]


def test_kmeans_centres_that_share_a_nearest_point_get_distinct_points():
    """Each k-means centre in turn snaps to its nearest data point not yet taken: centres
    0 and 0.1 over the points 0 and 5 get 0 and 5. On data where k-means often ends with
    both centres nearest one point (+-e_1..e_5 in R^6, centre 0 for most of them, and
    0.6 e_6, e_6 +- 0.3 e_1 whose centre is nearest 0.6 e_6 too), the indices differ."""
    assert _snap(np.array([[0.0], [0.1]]), np.array([[0.0], [5.0]])).tolist() == [0, 1]
    eye = torch.eye(6, dtype=f64)
    near = torch.tensor([[0.0] * 5 + [0.6], [0.3] + [0.0] * 4 + [1.0],
                         [-0.3] + [0.0] * 4 + [1.0]], dtype=f64)
    x = torch.cat([eye[:5], -eye[:5], near])
    for seed in range(10):
        idx = select_centroids(x, 2, "kmeans", seed=seed).tolist()
        assert len(set(idx)) == 2, (seed, idx)


@pytest.mark.parametrize("method", ["kmeans", "kmeans++", "kmedoids"])
def test_centroids_of_a_subsampled_training_set_index_its_rows(method, monkeypatch):
    """Beyond MAX_POINTS rows the choice runs on a subsample: the indices returned are
    those of the training set's rows, so two clusters (rows 0-99 near 0, rows 100-199
    near 100) give one centroid in each (indices into the subsample are all below 50)."""
    monkeypatch.setattr(aetk.centroids, "MAX_POINTS", 50)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(100, 3, generator=g, dtype=f64),
                   100 + torch.rand(100, 3, generator=g, dtype=f64)])
    idx = select_centroids(x, 2, method, seed=1).tolist()
    assert sorted(i // 100 for i in idx) == [0, 1], idx


def test_metric_needs_centroids_then_freezes_and_round_trips(tmp_path):
    m = aetk.build_model("rhvae", "bernoulli", in_features=F, hidden=(8,), centroids=6)
    z = torch.randn(7, LATENT)
    with pytest.raises(RuntimeError, match="no centroids"):
        m.G(z)
    x = torch.rand(80, F)
    aetk.fit(m, x[:60], x[60:], epochs=2, batch_size=20, progress=False, device="cpu")
    assert any((m.centroid_data == row).all(-1).any() for row in x[:60])
    L = m.lower_factor(m.centroid_data)
    close(m.centroid_M, (L @ L.mT).detach(), rtol=1e-6)
    close(m.centroid_latent, m.latent_mean(m.centroid_data).detach())
    m.save(tmp_path / "model")
    back = aetk.load(tmp_path / "model")
    for fn in ("G", "G_inv", "log_det_G"):
        assert torch.equal(getattr(m, fn)(z), getattr(back, fn)(z)), fn
    torch.manual_seed(0)
    a = m.eval().loss(x[60:]).loss
    torch.manual_seed(0)
    close(back.loss(x[60:]).loss.item(), a.item(), rtol=1e-6)


def test_update_metric_freezes_clean_centroids_and_keeps_the_mode():
    """update_metric freezes c_i = mu(x_i) without the encoder's masking noise (evaluation
    mode) and leaves the model in the mode it found it in, training or evaluation."""
    torch.manual_seed(1)
    enc = GaussianEncoder(in_features=F, latent_dim=LATENT, hidden=(8,), input_noise=0.5)
    dec = aetk.BernoulliDecoder(latent_dim=LATENT, out_features=F, hidden=(8,))
    m = aetk.RHVAE(enc, dec, centroids=_data(N_CENTROIDS).float()).double()
    m.update_metric()
    assert m.training
    with torch.no_grad():
        clean = m.eval().latent_mean(m.centroid_data)
        assert (m.train().latent_mean(m.centroid_data) - clean).abs().max() > 0.1  # noisy
    close(m.centroid_latent, clean, rtol=1e-14)
    m.eval().update_metric()
    assert not m.training


@pytest.mark.filterwarnings("ignore::aetk.hamiltonian.FixedPointWarning")  # large steps
def test_posterior_samples_and_importance_weights_use_the_frozen_metric():
    """Once frozen, the metric of posterior_sample and importance_log_weights is that of
    the buffers: changing the metric network changes neither until update_metric."""
    m, x = rhvae(step_size=0.2), _data()

    @torch.no_grad()
    def both():
        torch.manual_seed(3)
        z = m.posterior_sample(x)
        return z, m.importance_log_weights(m.encoder(x), x, 3)

    before = both()
    _scaled(m.metric_net, 3.0)
    after = both()
    close(after[0], before[0], rtol=1e-14)
    close(after[1], before[1], rtol=1e-14)
    m.update_metric()
    changed = both()
    assert (changed[0] - before[0]).abs().max() > 1e-3
    assert (changed[1] - before[1]).abs().max() > 1e-3


def test_a_state_dict_gives_the_centroid_buffers_their_saved_shapes():
    """Loading the state dict of an RHVAE with 4 centroids into one built for 2: the centroid
    buffers take the saved shapes and give the same frozen metric."""
    src = rhvae()
    torch.manual_seed(1)
    dst = aetk.build_model("rhvae", "bernoulli", in_features=F, latent_dim=LATENT, hidden=(8,),
                           activation="tanh", centroids=2).double()
    dst.load_state_dict(src.state_dict())
    assert dst.centroid_M.shape == (N_CENTROIDS, LATENT, LATENT)
    z = torch.randn(B, LATENT, dtype=f64)
    assert torch.equal(dst.G_inv(z), src.G_inv(z))
    assert torch.equal(dst.centroid_data, src.centroid_data)


def test_a_conditional_rhvae_state_dict_resizes_the_centroid_conditions_too():
    """As for an unconditional RHVAE, a conditional one built for 2 centroids takes the state
    dict of one with 4: centroid_conditions takes its saved shape with the other centroid
    buffers (it raised torch's 'size mismatch' before)."""
    kw = {"in_features": F, "latent_dim": LATENT, "hidden": (8,), "n_conditions": 2}
    torch.manual_seed(1)
    src = aetk.build_model("rhvae", "bernoulli", centroids=N_CENTROIDS, **kw).double()
    conditions = torch.eye(2, dtype=f64)[torch.arange(40) % 2]
    with src.given(conditions):
        src.on_fit_start(_data(40, seed=9))
    dst = aetk.build_model("rhvae", "bernoulli", centroids=2, **kw).double()
    dst.load_state_dict(src.state_dict())
    assert torch.equal(dst.centroid_conditions, src.centroid_conditions)
    z = torch.randn(B, LATENT, dtype=f64)
    assert torch.equal(dst.G_inv(z), src.G_inv(z))


def standard_normal(z):
    """The position of N(0, I)'s potential |z|^2 / 2."""
    return ham.Position(z, 0.5 * (z * z).sum(-1), z)


def test_hmc_samples_a_known_density():
    """Standard normal potential: sample moments within Monte Carlo error."""
    torch.manual_seed(0)
    z = ham.hmc(standard_normal(torch.full((4000, 2), 3.0, dtype=f64)), standard_normal, 30, 10,
                0.2)
    close(z.mean(0), 0.0, atol=0.06)
    close(z.var(0), 1.0, atol=0.08)


def test_hmc_leaves_its_target_invariant_when_it_rejects():
    """Chains started at exact N(0, I) draws stay N(0, I) (exact HMC leaves its target
    invariant), also with large steps (1.5) whose energy errors make the Metropolis test
    reject about 40% of proposals: a test that accepted rises in H instead would inflate
    the spread (variance ~8)."""
    torch.manual_seed(0)
    start = torch.randn(20000, 2, dtype=f64)
    z = ham.hmc(standard_normal(start), standard_normal, 30, 1, 1.5, jitter=0.0)
    assert not torch.equal(z, start)
    close(z.mean(0), 0.0, atol=0.03)
    close(z.var(0), 1.0, atol=0.05)


def test_hmc_step_jitter_breaks_a_resonant_trajectory_length():
    """Potential |z|^2 (N(0, I/2)): 10 steps of 0.2 are about half its period pi/sqrt(2),
    so fixed steps carry the chains across the mode and back; jittered ones mix."""
    def position(z):
        return ham.Position(z, (z * z).sum(-1), 2 * z)

    start = torch.full((2000, 2), 1.5, dtype=f64)
    torch.manual_seed(0)
    fixed = ham.hmc(position(start), position, 10, 10, 0.2, jitter=0.0)
    torch.manual_seed(0)
    jittered = ham.hmc(position(start), position, 10, 10, 0.2)
    assert fixed.mean(0).min() > 0.5
    close(jittered.mean(0), 0.0, atol=0.06)
    close(jittered.var(0), 0.5, atol=0.05)
    with pytest.raises(ValueError, match="jitter"):
        ham.hmc(position(start), position, 1, 1, 0.2, jitter=1.0)


def test_rhvae_samples_favour_high_inverse_volume():
    m = rhvae(centroid_reduction="sum")
    torch.manual_seed(0)
    z = m.sample_latent(500, n_steps=20)
    x = m.sample(3, n_steps=2)
    assert x.shape == (3, F) and bool(((x >= 0) & (x <= 1)).all())
    # The target favours small log det G: samples sit lower than points spread uniformly
    # over the same box.
    box = torch.rand(500, LATENT, dtype=f64) * (z.max(0).values - z.min(0).values) + z.min(0).values
    assert m.log_det_G(z).mean() < m.log_det_G(box).mean() - 0.5


def test_rhvae_sampler_refuses_settings_that_never_move():
    """RHVAE.sample with n_steps=0, n_leapfrog=0 or a NaN step size returned its start
    points, the centroids' codes decoded, as samples (a NaN step's moves are all rejected);
    riemannian_uniform refused the same settings."""
    m = rhvae()
    for options, match in (({"n_steps": 0}, "n_steps must be an integer >= 1"),
                           ({"n_leapfrog": 0}, "n_leapfrog must be an integer >= 1"),
                           ({"step_size": float("nan")}, "step_size must be a positive finite"),
                           ({"step_size": -0.1}, "step_size must be a positive finite")):
        for draw in (m.sample, m.sample_latent):
            with pytest.raises(ValueError, match=match):
                draw(3, **options)
    torch.manual_seed(0)
    z = m.sample_latent(3, n_steps=2)
    assert bool(torch.cdist(z, m.centroid_latent).min(1).values.gt(0).all())  # they move


def test_rhvae_sampler_targets_the_square_root_of_det_g_inverse(monkeypatch):
    """sample_latent runs HMC on the density proportional to sqrt(det G^{-1}(z)): the
    potential it hands hmc is 1/2 log det G(z) of the frozen metric (from the explicit
    broadcast reference, float64) and its force is autograd of that."""
    m = rhvae(centroid_reduction="sum")
    seen = {}

    def fake_hmc(pos, position, n_steps, n_leapfrog, step_size, jitter=0.5):
        seen["position"] = position
        return pos.z

    monkeypatch.setattr(aetk.models.rhvae, "hmc", fake_hmc)
    m.sample_latent(3, n_steps=1)
    c, M = m.centroid_latent, m.centroid_M

    def half_log_det_G(z):
        return 0.5 * torch.logdet(torch.linalg.inv(ref_G_inv(z, c, M, m)))

    z = torch.randn(B, LATENT, dtype=f64)
    pos = seen["position"](z)
    close(pos.potential, half_log_det_G(z), rtol=1e-11)
    close(pos.grad, grad(half_log_det_G, z), rtol=1e-10, atol=1e-12)
    assert half_log_det_G(z).std() > 0.1  # the metric varies over these points


# Training on digits -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
@pytest.mark.parametrize("likelihood", sorted(set(aetk.LIKELIHOODS) - {"mse"}))
def test_training_on_digits_lowers_the_validation_loss(kind, likelihood):
    x, opts = digits(likelihood)
    torch.manual_seed(0)
    extra = {"centroids": 16} if kind == "rhvae" else {}
    m = aetk.build_model(kind, likelihood, in_features=64, hidden=(32,), **opts, **extra)
    train, val = x[:480], x[480:]
    m.on_fit_start(train)
    before = evaluate(m, [val])["val_loss"]
    hist = aetk.fit(m, train, val, epochs=4, batch_size=48, lr=3e-3, progress=False,
                    device="cpu")
    after = hist["val_loss"].iloc[-1]
    assert np.isfinite(hist["train_loss"]).all()
    assert after < before - 0.1 * abs(before), (before, after)


@pytest.mark.parametrize("option", ["step_size", "temperature", "regularization"])
@pytest.mark.parametrize("value", [math.nan, math.inf, [0.1, 0.1]])
def test_rhvae_refuses_non_finite_or_listed_flow_options(option, value):
    # NaN passed `<= 0` and surfaced mid-training as a diverged flow ("use a smaller
    # step_size (now nan)") or as non-finite encoder samples; a list as a TypeError
    with pytest.raises(ValueError, match=option):
        aetk.build_model("rhvae", "bernoulli", in_features=F, latent_dim=LATENT, hidden=(8,),
                         **{option: value})


def test_rhvae_takes_centroid_points_as_arrays_and_checks_them():
    enc = GaussianEncoder(in_features=F, latent_dim=LATENT, hidden=(8,))
    dec = aetk.decoders.BernoulliDecoder(latent_dim=LATENT, out_features=F, hidden=(8,))
    points = _data(4).float()
    from_array = aetk.RHVAE(enc, dec, centroids=points.numpy())
    from_tensor = aetk.RHVAE(enc, dec, centroids=points)
    assert torch.equal(from_array.centroid_data, from_tensor.centroid_data)
    assert torch.equal(from_array.centroid_latent, from_tensor.centroid_latent)
    with pytest.raises(ValueError, match=r"feature shape \(3,\) but the model expects \(6,\)"):
        aetk.RHVAE(enc, dec, centroids=points[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        aetk.RHVAE(enc, dec, centroids=points * math.nan)


@pytest.mark.parametrize("d", [1, 2, 4])
def test_metric_net_of_an_encoder_that_is_one_linear_layer(d):
    # the last linear layer was found at the name "" and "replaced" by setattr(net, "", head),
    # leaving the encoder's 2 d outputs: "metric_net must output d(d+1)/2 values"
    enc = GaussianEncoder(nn.Linear(F, 2 * d), in_features=F, latent_dim=d)
    dec = aetk.decoders.BernoulliDecoder(latent_dim=d, out_features=F, hidden=(8,))
    model = aetk.RHVAE(enc, dec, centroids=_data(3).float())
    assert model.lower_factor(_data(2).float()).shape == (2, d, d)
    assert model.metric_net is not enc.network


class _OwnEncoder(nn.Module):
    """A user's Gaussian encoder without a `network` attribute."""

    latent_dim, input_shape = 2, (F,)

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(F, 4)

    def forward(self, x: torch.Tensor) -> D.Independent:
        mu, log_sigma = self.body(x).chunk(2, -1)
        return D.Independent(D.Normal(mu, log_sigma.exp()), 1)


def test_an_rhvae_of_an_encoder_without_a_network_asks_for_metric_net():
    """Before, "'_OwnEncoder' object has no attribute 'network'"; with metric_net given it
    builds."""
    dec = aetk.decoders.BernoulliDecoder(latent_dim=2, out_features=F, hidden=(8,))
    with pytest.raises(ValueError, match=r"this _OwnEncoder does not have: give metric_net, a "
                                         r"network from x to d\(d\+1\)/2 = 3 outputs"):
        aetk.RHVAE(_OwnEncoder(), dec, centroids=4)
    model = aetk.RHVAE(_OwnEncoder(), dec, metric_net=nn.Linear(F, 3), centroids=4)
    assert isinstance(model.metric_net, nn.Linear)
