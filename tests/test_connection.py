"""The Levi-Civita connection against closed forms: Christoffel symbols of polar
coordinates, the hyperbolic half-plane and the sphere, exponential maps along known
geodesics, logarithm maps against the hyperbolic and great-circle distances, the holonomy
of parallel transport around a circle of latitude, and Frechet means that the closed-form
distances say are optimal."""

import copy
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import aetk
from aetk.geometry import (
    Metric,
    NeuralGeodesic,
    PullbackMetric,
    christoffel,
    christoffel_contract,
    connection,
    exp_map,
    frechet_mean,
    geodesic_spray,
    integrate_geodesic,
    log_map,
    metric_for,
    parallel_transport,
)

from helpers import (
    SphereDecoder,
    half_plane_pairs,
    hyperbolic_distance,
    poincare,
    small_rhvae_metric,
    sphere,
)

torch.set_num_threads(1)
f64 = torch.float64


def polar() -> Metric:
    """The Euclidean plane in polar coordinates (r, phi): G = diag(1, r^2)."""
    return Metric(lambda z: torch.diag_embed(torch.stack([torch.ones_like(z[:, 0]),
                                                          z[:, 0] ** 2], -1)))


def symbols(entries: dict[tuple[int, int, int], torch.Tensor], n: int) -> torch.Tensor:
    """`(n, 2, 2, 2)` symbols `Gamma^k_ij` from the nonzero `(k, i, j)` entries, symmetrised."""
    out = torch.zeros(n, 2, 2, 2, dtype=f64)
    for (k, i, j), value in entries.items():
        out[:, k, i, j] = out[:, k, j, i] = value
    return out


def trained_models() -> dict[str, Metric]:
    """The metric of a small RHVAE (closed form) and the pull-backs of tanh VAEs' decoders
    (a smooth metric needs smooth activations: a ReLU decoder's jumps between regions)."""
    torch.manual_seed(0)
    rhvae = aetk.build_model("rhvae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             centroids=4)
    rhvae.on_fit_start(torch.rand(32, 6))
    rhvae.update_metric()
    vae = {lik: aetk.build_model("vae", lik, in_features=6, latent_dim=2, hidden=(8,),
                                 activation="tanh").double().eval()
           for lik in ("gaussian_learned", "bernoulli", "poisson")}
    return {"rhvae": metric_for(rhvae.double().eval()), "mean": metric_for(vae["gaussian_learned"]),
            "fisher": PullbackMetric(vae["bernoulli"].decoder, kind="fisher"),
            "fisher_poisson": PullbackMetric(vae["poisson"].decoder, kind="fisher")}


MODELS = trained_models()
POINTS = torch.tensor([[0.4, 0.3], [1.2, -0.7], [2.5, 1.9]], dtype=f64)


# --- Christoffel symbols ---------------------------------------------------------------

def test_christoffel_symbols_of_polar_coordinates():
    r = POINTS[:, 0]
    want = symbols({(0, 1, 1): -r, (1, 0, 1): 1 / r}, len(r))
    torch.testing.assert_close(christoffel(polar(), POINTS), want)


def test_christoffel_symbols_of_the_half_plane():
    y = POINTS[:, 1].abs()
    z = torch.stack([POINTS[:, 0], y], -1)
    want = symbols({(0, 0, 1): -1 / y, (1, 0, 0): 1 / y, (1, 1, 1): -1 / y}, len(y))
    torch.testing.assert_close(christoffel(poincare(), z), want)


def test_christoffel_symbols_of_the_sphere_through_a_decoder():
    """The pull-back of the unit sphere's embedding (nested forward mode through the
    decoder's Jacobian): Gamma^theta_phiphi = -sin cos, Gamma^phi_thetaphi = cot theta."""
    theta = torch.tensor([0.3, 1.0, 2.2], dtype=f64)
    z = torch.stack([theta, torch.tensor([0.0, -1.0, 2.0], dtype=f64)], -1)
    want = symbols({(0, 1, 1): -theta.sin() * theta.cos(), (1, 0, 1): 1 / theta.tan()}, 3)
    got = christoffel(PullbackMetric(SphereDecoder()), z)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_christoffel_symbols_keep_leading_dimensions():
    z = POINTS.reshape(3, 1, 2).expand(3, 4, 2)
    got = christoffel(polar(), z)
    assert got.shape == (3, 4, 2, 2, 2)
    torch.testing.assert_close(got[:, 2], christoffel(polar(), POINTS))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_metric_derivatives_in_both_modes_match_central_differences(name):
    """Forward mode (the symbols) and reverse mode (the contraction) against differences;
    the RHVAE's G avoids torch 2.13's wrong `cholesky_inverse` JVP (pytorch#196682)."""
    metric = MODELS[name]
    gen = torch.Generator().manual_seed(4)
    z, u = (torch.randn(5, 2, generator=gen, dtype=f64) for _ in range(2))
    h = 1e-5
    diff = (metric(z + h * u) - metric(z - h * u)) / (2 * h)
    _, forward = torch.func.jvp(metric.metric, (z,), (u,))
    torch.testing.assert_close(forward, diff, rtol=1e-6, atol=1e-9)
    weights = torch.randn(5, 2, 2, generator=gen, dtype=f64)
    _, pull = torch.func.vjp(metric.metric, z)
    torch.testing.assert_close((pull(weights)[0] * u).sum(-1), (diff * weights).sum((-2, -1)),
                               rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_contraction_equals_the_full_symbols(name):
    """`Gamma[u, w]` without the symbols (one reverse pass) equals contracting them, for the
    closed-form RHVAE metric and decoder pull-backs, with `u = w` and `u != w`."""
    metric = MODELS[name]
    gen = torch.Generator().manual_seed(1)
    z, u, w = (torch.randn(5, 2, generator=gen, dtype=f64) for _ in range(3))
    gamma = christoffel(metric, z)
    assert gamma.abs().max() > 1e-3  # curved: the check is not vacuous
    torch.testing.assert_close(christoffel_contract(metric, z, u, w),
                               torch.einsum("nkij,ni,nj->nk", gamma, u, w))
    torch.testing.assert_close(christoffel_contract(metric, z, u),
                               torch.einsum("nkij,ni,nj->nk", gamma, u, u))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_the_rhvae_closed_form_contraction_equals_differentiating_its_metric(reduction):
    """The RHVAE's closed-form `Gamma[u, w]` (from `dG^{-1}`) against the generic route,
    forward and reverse mode through `G(z)`, on a float32 model in 3 dimensions whose metric
    algebra runs in float64, at points among the centroids (where the metric bends)."""
    torch.manual_seed(3)
    model = aetk.build_model("rhvae", "bernoulli", in_features=6, latent_dim=3, hidden=(8,),
                             centroids=12, temperature=0.5, centroid_reduction=reduction)
    model.on_fit_start(torch.rand(40, 6))
    model.update_metric()
    model.eval()
    z = model.centroid_latent[:6] + 0.3 * torch.randn(6, 3)
    u, w = torch.randn(6, 3), torch.randn(6, 3)
    closed = metric_for(model)
    generic = Metric(copy.deepcopy(model).double().G)
    assert closed.model is model and not hasattr(generic, "model")
    want = generic._contract(z.double(), u.double(), w.double())
    assert want.abs().max() > 1e-2
    got = christoffel_contract(closed, z, u, w)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(christoffel_contract(closed, z, u).double(),
                               generic._contract(z.double(), u.double(), None),
                               rtol=1e-5, atol=1e-6)


def test_a_singular_metric_gives_nan_where_it_is_singular_and_numbers_elsewhere():
    """G = diag(x^2, 1): singular on x = 0, where a batch must not stop; Gamma^x_xx = 1/x."""
    metric = Metric(lambda z: torch.diag_embed(torch.stack([z[:, 0] ** 2,
                                                            torch.ones_like(z[:, 0])], -1)))
    z = torch.tensor([[0.0, 1.0], [2.0, 1.0]], dtype=f64)
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=f64)
    got = christoffel_contract(metric, z, u)
    assert torch.isnan(got[0]).all()
    torch.testing.assert_close(got[1], torch.tensor([0.5, 0.0], dtype=f64))
    assert torch.isnan(christoffel(metric, z)[0]).all()


# --- exponential map -------------------------------------------------------------------

def test_exp_map_of_a_constant_metric_is_the_straight_line():
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    metric = Metric(lambda z: A.expand(len(z), 2, 2))
    z, v = POINTS, torch.tensor([[1.0, -2.0], [0.0, 3.0], [-0.5, 0.2]], dtype=f64)
    torch.testing.assert_close(exp_map(metric, z, v), z + v)
    torch.testing.assert_close(log_map(metric, z, z + v).velocity, v)


def test_exp_map_of_the_half_plane_follows_its_closed_form_geodesics():
    """Vertical geodesics `y = y0 exp(c t / y0)`; the others are half-circles centred on the
    boundary, traversed at constant speed `|v| / y0`, which is the distance travelled."""
    z = torch.tensor([[0.0, 1.0], [-1.0, 0.5], [2.0, 2.0]], dtype=f64)
    v = torch.tensor([[0.0, 0.8], [1.0, 0.5], [-0.7, -1.5]], dtype=f64)
    path = integrate_geodesic(poincare(), z, v, n_steps=40)
    torch.testing.assert_close(path.points[0, -1], torch.tensor([0.0, math.exp(0.8)], dtype=f64))
    centre = z[1:, 0] + z[1:, 1] * v[1:, 1] / v[1:, 0]
    radius = torch.hypot(z[1:, 0] - centre, z[1:, 1])
    on_circle = torch.hypot(path.points[1:, :, 0] - centre[:, None], path.points[1:, :, 1])
    torch.testing.assert_close(on_circle, radius[:, None].expand_as(on_circle), rtol=1e-6,
                               atol=0)
    speed = path.velocities.norm(dim=-1) / path.points[..., 1]
    torch.testing.assert_close(speed, speed[:, :1].expand_as(speed), rtol=1e-6, atol=0)
    end = path.points[:, -1]
    torch.testing.assert_close(hyperbolic_distance(z, end), v.norm(dim=-1) / z[:, 1], rtol=1e-6,
                               atol=0)
    torch.testing.assert_close(exp_map(poincare(), z, v, n_steps=40), end)


def test_exp_map_on_the_sphere_runs_along_great_circles():
    z = torch.tensor([[1.0, 0.3], [0.6, -1.0]], dtype=f64)
    v = torch.tensor([[0.3, 0.8], [-0.2, 1.5]], dtype=f64)
    metric = PullbackMetric(SphereDecoder())
    path = integrate_geodesic(metric, z, v, n_steps=30)
    speed = metric.quad(z, v.unsqueeze(-2))[:, 0].sqrt()  # below pi: minimising arcs
    x0, x1 = sphere(z), sphere(path.points[:, -1])
    torch.testing.assert_close(torch.arccos((x0 * x1).sum(-1)), speed, rtol=1e-6, atol=0)
    normal = torch.linalg.cross(x0, torch.func.jvp(sphere, (z,), (v,))[1])
    off_plane = torch.einsum("nd,ntd->nt", normal, sphere(path.points.reshape(-1, 2)).reshape(
        2, -1, 3))
    assert off_plane.abs().max() < 1e-6 * normal.norm(dim=-1).min()


def test_exp_map_refuses_bad_input():
    with pytest.raises(ValueError, match="n_steps"):
        exp_map(polar(), POINTS, POINTS, n_steps=0)
    with pytest.raises(ValueError, match="same d"):
        exp_map(polar(), POINTS, torch.zeros(3, 3, dtype=f64))
    with pytest.raises(ValueError, match="latent space has 2"):
        exp_map(MODELS["mean"], torch.zeros(1, 3, dtype=f64), torch.zeros(1, 3, dtype=f64))


def test_unpaired_rows_are_refused_by_name():
    """Points and velocities (or log_map's ends) of 2 and 3 rows failed in torch's
    broadcasting ("The size of tensor a (2) must match the size of tensor b (3)"); one row
    for all still pairs with every row."""
    z, v = POINTS[:2], 0.1 * torch.ones(3, POINTS.shape[1], dtype=f64)
    with pytest.raises(ValueError, match=r"points \(2, 2\) and vectors \(3, 2\) must have as "
                                         "many rows"):
        exp_map(polar(), z, v)
    with pytest.raises(ValueError, match=r"z_start \(2, 2\) and z_end \(3, 2\) must have as "
                                         "many rows"):
        log_map(polar(), z, z[:1] + v)
    torch.testing.assert_close(exp_map(polar(), z, v[:1]), exp_map(polar(), z, v[:2]))


# --- logarithm map ---------------------------------------------------------------------

def test_log_map_of_the_half_plane_gives_the_hyperbolic_distance():
    z0, z1 = half_plane_pairs()
    res = log_map(poincare(), z0, z1, n_steps=40)
    assert res.converged.all()
    torch.testing.assert_close(exp_map(poincare(), z0, res.velocity, n_steps=40), z1, rtol=0,
                               atol=1e-5)
    # tighter than the 1% of the fitted curves: shooting makes the endpoint exact
    torch.testing.assert_close(res.length, hyperbolic_distance(z0, z1), rtol=1e-5, atol=0)


def test_log_map_estimates_its_integration_error():
    """With 4 Runge-Kutta steps on the half-plane, the Richardson estimate is within a
    factor 1.5 of the end point's actual distance from the exact geodesic's (400 steps),
    and it shrinks about 16-fold when the steps double."""
    z0, z1 = half_plane_pairs()
    coarse = log_map(poincare(), z0, z1, n_steps=4)
    actual = (exp_map(poincare(), z0, coarse.velocity, n_steps=4)
              - exp_map(poincare(), z0, coarse.velocity, n_steps=400)).norm(dim=-1)
    assert (actual > 1e-5).all()
    ratio = coarse.integration_error / actual
    assert ((ratio > 1 / 1.5) & (ratio < 1.5)).all(), ratio
    finer = log_map(poincare(), z0, z1, n_steps=8)
    shrink = coarse.integration_error / finer.integration_error
    assert ((shrink > 8) & (shrink < 32)).all(), shrink


def test_richardson_estimates_are_the_end_points_errors_at_eight_steps():
    """Richardson's `16/15 |exp_n(v) - exp_2n(v)|` is the end point's actual error within
    3 % on the half-plane with 8 steps, as `log_map` reports it for shot velocities
    (`_integration_errors`) and for collocated ones (`_end_error`) alike: without the 16/15
    it is 6 % short. At the closed-form log maps, whose exact geodesics end at `z1`."""
    z0, z1 = half_plane_pairs()
    v = half_plane_log(z0, z1)
    actual = (exp_map(poincare(), z0, v, n_steps=8) - z1).norm(dim=-1)
    for estimate in (connection._integration_errors(poincare(), z0, v, 8).end,
                     connection._end_error(poincare(), z0, v, 8)):
        ratio = estimate / actual
        assert ((ratio > 0.97) & (ratio < 1.03)).all(), ratio


def test_log_map_estimates_its_velocity_error():
    """The estimate `|J^{-1} e|` of the shot velocity's error (Richardson's end-point error
    `e`, `J = d exp/dv`) is within a factor 1.5 of its actual distance from the closed-form
    log map, with 4 to 16 steps on the half-plane (shooting converged far below it)."""
    z0, z1 = half_plane_pairs()
    exact = half_plane_log(z0, z1)
    torch.testing.assert_close(exp_map(poincare(), z0, exact, n_steps=400), z1, rtol=0,
                               atol=1e-8)
    for n in (4, 8, 16):
        res = log_map(poincare(), z0, z1, n_steps=n, tol=1e-12, collocate=False)
        actual = (res.velocity - exact).norm(dim=-1)
        assert res.converged.all() and (actual > 1e-8).all()
        ratio = res.velocity_error / actual
        assert ((ratio > 1 / 1.5) & (ratio < 1.5)).all(), (n, ratio)


def test_shots_that_missed_their_points_do_not_double_the_steps():
    """Without Newton steps the shots miss their points: those velocities are no log maps
    (collocation's business), so their accuracy must not double the steps (it did, to the
    cap of 128, at a tolerance no velocity meets)."""
    z0, z1 = half_plane_pairs()
    res = log_map(poincare(), z0, z1, n_steps=8, max_iter=0, integration_tol=1e-10,
                  collocate=False)
    assert not res.converged.any() and res.n_steps == 8


def test_log_map_doubles_its_steps_to_an_integration_tolerance():
    """From 4 steps, integration_tol=1e-5 doubles them until the estimated velocity error
    is within it for every pair: to 32 steps, where the velocities' actual errors (against
    the closed form) are within 1e-5 of their length, and not further (with 16, up to
    5e-5); the lengths then match the hyperbolic distance 100 times closer than with 4
    steps alone. With the doublings capped too early, converged says so; collocation,
    which does not integrate, then gives the distances all the same."""
    z0, z1 = half_plane_pairs()
    exact, velocity = hyperbolic_distance(z0, z1), half_plane_log(z0, z1)
    coarse = log_map(poincare(), z0, z1, n_steps=4)
    fine = log_map(poincare(), z0, z1, n_steps=4, tol=1e-12, integration_tol=1e-5)
    assert coarse.n_steps == 4 and fine.n_steps == 32 and fine.converged.all()
    assert (fine.velocity_error <= 1e-5 * fine.velocity.norm(dim=-1)).all()
    assert ((fine.velocity - velocity).norm(dim=-1) <= 1e-5 * velocity.norm(dim=-1)).all()
    half = log_map(poincare(), z0, z1, n_steps=16, tol=1e-12, collocate=False)
    assert ((half.velocity - velocity).norm(dim=-1) > 1e-5 * velocity.norm(dim=-1)).any()
    assert (fine.length - exact).abs().max() < 0.01 * (coarse.length - exact).abs().max()
    capped = log_map(poincare(), z0, z1, n_steps=4, integration_tol=1e-5, max_doublings=0,
                     collocate=False)
    assert capped.n_steps == 4 and not capped.converged.any() and not capped.collocated.any()
    mended = log_map(poincare(), z0, z1, n_steps=4, integration_tol=1e-5, max_doublings=0)
    assert mended.converged.all() and mended.collocated.all()
    torch.testing.assert_close(mended.length, exact, rtol=1e-5, atol=0)
    with pytest.raises(ValueError, match="integration_tol"):
        log_map(poincare(), z0, z1, integration_tol=0.0)
    with pytest.raises(ValueError, match="max_doublings"):
        log_map(poincare(), z0, z1, max_doublings=-1)


# points near the half-plane's boundary, 9 and 11 apart: geodesics spread like e^d, and
# |d exp/dv| reaches 500 and 1900
NEAR_THE_BOUNDARY = (torch.tensor([[-0.5, 0.01], [0.0, 0.01]], dtype=f64),
                     torch.tensor([[0.5, 0.01], [2.0, 0.01]], dtype=f64))


def test_an_ill_conditioned_exponential_map_needs_no_more_steps_than_the_velocity():
    """Near the boundary of the half-plane a velocity error shows 500-1900x larger at the
    end point. With 40 steps the velocities are within 3.4e-5 of the closed-form log maps,
    but the end points' errors are 1.5e-3 and 3e-3 of the distances (20 steps: 4e-4 and
    5e-4 against 1.6e-2 and 3.1e-2): integration_tol=1e-4 on the end point, as before,
    doubled to 160 steps (with one doubling allowed it was not converged); on the
    velocity, once."""
    z0, z1 = NEAR_THE_BOUNDARY
    velocity = half_plane_log(z0, z1)
    res = log_map(poincare(), z0, z1, n_steps=20, tol=1e-12, integration_tol=1e-4,
                  max_doublings=1, collocate=False, n_points=32)
    assert res.n_steps == 40 and res.converged.all()
    assert ((res.velocity - velocity).norm(dim=-1) <= 0.4e-4 * velocity.norm(dim=-1)).all()
    assert (res.integration_error > 10 * 1e-4 * (z1 - z0).norm(dim=-1)).all()
    jac = connection._exp_jacobians(poincare(), z0, res.velocity, 40)[1]
    assert (torch.linalg.matrix_norm(jac, 2) > 500).all()


@pytest.mark.parametrize("singular", [0.0, math.nan])
def test_a_singular_exponential_map_is_never_accurate(singular, monkeypatch):
    """Where `d exp/dv` is singular (a conjugate point), or its solve fails, the velocity
    error is infinite: the steps double to the cap and the pair is not converged (its
    rounding allowance, divided by the Jacobian's smallest singular value, would be
    infinite too). The shooting's own Jacobians stay exact."""
    z0, z1 = half_plane_pairs()
    kwargs = {"n_steps": 4, "tol": 1e-10, "integration_tol": 1e-2, "max_doublings": 1,
              "collocate": False, "n_points": 8}
    plain = log_map(poincare(), z0[:1], z1[:1], **kwargs)
    assert plain.n_steps == 4 and plain.converged.all()

    exp_jacobians, integration_errors = connection._exp_jacobians, connection._integration_errors

    def singular_jacobians(*args, **kw):
        out, *jacs = exp_jacobians(*args, **kw)
        return (out, *(torch.full_like(j, singular) for j in jacs))

    def errors_of_singular_maps(*args):
        with monkeypatch.context() as patch:
            patch.setattr(connection, "_exp_jacobians", singular_jacobians)
            return integration_errors(*args)

    monkeypatch.setattr(connection, "_integration_errors", errors_of_singular_maps)
    errors = connection._integration_errors(poincare(), z0, half_plane_log(z0, z1), 8)
    assert errors.velocity.isinf().all() and (errors.end > 0).all()
    assert not connection._accurate(errors, z1 - z0, 1.0).any()
    res = log_map(poincare(), z0[:1], z1[:1], **kwargs)
    assert res.n_steps == 8 and not res.converged.any() and res.velocity_error.isinf().all()


def test_log_map_on_the_sphere_gives_great_circle_distances():
    gen = torch.Generator().manual_seed(0)
    z0 = torch.stack([torch.rand(5, generator=gen) * 1.6 + 0.8,
                      torch.rand(5, generator=gen) * 2 - 1], -1).double()
    z1 = torch.stack([torch.rand(5, generator=gen) * 1.6 + 0.8,
                      torch.rand(5, generator=gen) * 2 - 1], -1).double()
    res = log_map(PullbackMetric(SphereDecoder()), z0, z1, n_steps=30)
    assert res.converged.all()
    torch.testing.assert_close(res.length, torch.arccos((sphere(z0) * sphere(z1)).sum(-1)),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_log_map_inverts_the_exp_map_of_trained_models(name):
    metric = MODELS[name]
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(4, 2, generator=gen, dtype=f64)
    v = 0.5 * torch.randn(4, 2, generator=gen, dtype=f64)
    res = log_map(metric, z, exp_map(metric, z, v))
    assert res.converged.all()
    assert (res.residual <= 1e-6 * v.norm(dim=-1)).all()
    torch.testing.assert_close(res.velocity, v, rtol=1e-4, atol=1e-6)


def test_log_map_says_when_it_did_not_converge():
    z0, z1 = half_plane_pairs()
    # the fitted curve's velocity, no shooting, no collocation
    res = log_map(poincare(), z0, z1, max_iter=0, collocate=False)
    assert not res.converged.any()
    assert (res.iterations == 0).all()
    assert (res.residual > 0).all()
    same = log_map(poincare(), z0, z0)
    assert same.converged.all()
    torch.testing.assert_close(same.velocity, torch.zeros_like(z0))


def half_plane_log(z0: torch.Tensor, z1: torch.Tensor) -> torch.Tensor:
    """Closed-form log maps in H^2: along the circle centred on the x axis through both
    points (or the vertical line), with Euclidean speed `y0 d(z0, z1)`."""
    (x0, y0), (x1, y1) = z0.unbind(-1), z1.unbind(-1)
    vertical = x0 == x1
    centre = (x1 ** 2 + y1 ** 2 - x0 ** 2 - y0 ** 2) / torch.where(vertical, 1.0, 2 * (x1 - x0))
    tangent = torch.where(vertical[:, None], torch.stack([0 * y0, torch.sign(y1 - y0)], -1),
                          torch.stack([y0, centre - x0], -1) * torch.sign(x1 - x0)[:, None])
    speed = hyperbolic_distance(z0, z1) * y0
    return tangent / tangent.norm(dim=-1, keepdim=True) * speed[:, None]


def test_shooting_halves_overshooting_steps_and_stops_pairs_it_cannot_improve(monkeypatch):
    """From three times the closed-form log maps in H^2 a full Newton step overshoots for
    three of five pairs (a larger residual, or NaN). Two of them still reach the
    hyperbolic distance by halved steps; the third improves with no step down to 1/128
    and stops after that try (the old loop retried it at every other pair's iteration, 73
    integrations in all)."""
    metric, (z0, z1) = poincare(), half_plane_pairs()
    v = 3 * half_plane_log(z0, z1)
    # full Newton steps, with Jacobians by central differences
    h, eye = 1e-6, torch.eye(2, dtype=f64)
    shifted = v[:, None, None] + h * torch.stack([eye, -eye])  # (pair, +-, direction, 2)
    ends = exp_map(metric, z0.repeat_interleave(4, 0), shifted.reshape(-1, 2)).reshape(5, 2, 2, 2)
    jac = ((ends[:, 0] - ends[:, 1]) / (2 * h)).mT
    end = exp_map(metric, z0, v)
    stepped = exp_map(metric, z0, v - torch.linalg.solve(jac, end - z1))
    assert ((stepped - z1).norm(dim=-1) < (end - z1).norm(dim=-1)).tolist() == [
        False, True, False, True, False]
    integrations = []
    rk4 = connection._rk4
    monkeypatch.setattr(connection, "_rk4", lambda *a: integrations.append(1) or rk4(*a))
    res = connection._shoot(metric, z0, z1, v, 20, 1e-6, 20)
    assert res.converged.tolist() == [True, True, False, True, True]
    reached = res.converged
    torch.testing.assert_close(res.length[reached], hyperbolic_distance(z0, z1)[reached],
                               rtol=1e-4, atol=0)
    assert res.iterations[2] == 1 and len(integrations) <= 20


def test_log_map_in_float32_stops_at_the_dtype_resolution():
    """Close points in float32: `tol |z1 - z0|` is below what float32 resolves at z1, so
    convergence is judged at that resolution, in a step or two, not after max_iter."""
    z0, z1 = (t.float() for t in half_plane_pairs())
    res = log_map(poincare(), z0, z0 + 0.01 * (z1 - z0))
    assert res.converged.all() and (res.iterations <= 2).all()
    assert (res.residual < 1e-5).all()


def test_log_map_collocates_where_shooting_fails(monkeypatch):
    """Without shooting (`max_iter=0`) every pair is collocated from its fitted curve; a
    shot made wrong (on a geodesic three times too long, though it says converged) is
    replaced the same way. Lengths: the hyperbolic distances to 1e-5 (the 16-point fitted
    curves: to 6e-3); velocities: the closed-form log maps."""
    z0, z1 = half_plane_pairs()
    exact = hyperbolic_distance(z0, z1)
    res = log_map(poincare(), z0, z1, max_iter=0, n_points=16)
    assert res.converged.all() and res.collocated.all() and (res.iterations == 0).all()
    torch.testing.assert_close(res.length, exact, rtol=1e-5, atol=0)
    torch.testing.assert_close(res.velocity, half_plane_log(z0, z1), rtol=1e-5, atol=1e-8)

    def wrong(*args, **kwargs):
        res = shoot(*args, **kwargs)
        scale = torch.tensor([1.0, 3.0], dtype=f64)
        return replace(res, velocity=res.velocity * scale[:, None], length=res.length * scale)

    shoot = connection._shoot
    monkeypatch.setattr(connection, "_shoot", wrong)
    res = log_map(poincare(), z0[:2], z1[:2], n_points=16)
    assert res.collocated.tolist() == [False, True] and res.converged.all()
    torch.testing.assert_close(res.length[1], exact[1], rtol=1e-5, atol=0)
    torch.testing.assert_close(res.length[0], exact[0], rtol=1e-4, atol=0)  # the shot's


def test_log_map_collocates_on_a_stiff_metric_where_shooting_fails(monkeypatch):
    """Points 10 and 8 apart at heights 0.01 and 0.02 in H^2: G spans 1e4 I to 0.04 I
    along the geodesic, and shooting from the fitted curve's velocity ends 8 to 10 from
    the point. Collocation from that curve gives the arccosh distance to 1e-6 and the
    closed-form log map."""
    z0 = torch.tensor([[-5.0, 0.01], [0.0, 0.02]], dtype=f64)
    z1 = torch.tensor([[5.0, 0.01], [8.0, 0.02]], dtype=f64)
    shots = []
    mend = connection._mend
    monkeypatch.setattr(connection, "_mend", lambda metric, z0, z1, res, *args, **kwargs: (
        shots.append(res) or mend(metric, z0, z1, res, *args, **kwargs)))
    res = log_map(poincare(), z0, z1, n_points=16)
    assert not shots[0].converged.any() and (shots[0].residual > 5).all()
    assert res.converged.all() and res.collocated.all()
    torch.testing.assert_close(res.length, hyperbolic_distance(z0, z1), rtol=1e-6, atol=0)
    torch.testing.assert_close(res.velocity, half_plane_log(z0, z1), rtol=1e-5, atol=0)


def test_a_shot_that_misses_is_not_converged_however_ill_conditioned(monkeypatch):
    """The dtype's allowance for an ill-conditioned exponential map stops Newton but does
    not make a miss a log map: with |d exp/dv| reported 1e9 times too large (a stiff
    metric's 1e7 in float32), Newton stops at once at a wrong shot, whose miss of 0.4 is
    within 8 eps |d exp/dv| |v| but far beyond sqrt(eps) of the distance."""
    jacobians = connection._exp_jacobians
    monkeypatch.setattr(connection, "_exp_jacobians", lambda *args, **kwargs: tuple(
        j * 1e9 if i else j for i, j in enumerate(jacobians(*args, **kwargs))))
    metric = poincare()
    z0, z1 = torch.tensor([[-1.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    wrong = 0.8 * half_plane_log(z0.double(), z1.double()).float()
    res = connection._shoot(metric, z0, z1, wrong, 20, 1e-6, 5)
    assert res.residual.item() > 0.1 and not res.converged.item()


def test_collocation_tries_again_from_a_finer_fit(monkeypatch):
    """Where collocation from the fitted curve fails (a coarse curve far from the geodesic),
    it tries again from a fit with 4x the segments started from that curve."""
    guesses = []
    collocate = connection._collocate

    def coarse_fails(metric, z0, z1, curves, tol, progress=False):
        guesses.append(curves.shape[1])
        v, paths, solved = collocate(metric, z0, z1, curves, tol, progress)
        return v, paths, solved & (curves.shape[1] > 16)

    monkeypatch.setattr(connection, "_collocate", coarse_fails)
    z0, z1 = half_plane_pairs()
    res = log_map(poincare(), z0[:2], z1[:2], max_iter=0, n_points=16)
    assert guesses == [16, 61] and res.collocated.all()
    torch.testing.assert_close(res.length, hyperbolic_distance(z0[:2], z1[:2]), rtol=1e-5,
                               atol=0)


# --- parallel transport ----------------------------------------------------------------

def test_parallel_transport_around_a_circle_of_latitude():
    """Around the circle theta = theta0 a vector comes back rotated by 2 pi cos(theta0) in the
    orthonormal frame (e_theta, e_phi / sin theta): the holonomy of the sphere."""
    theta0 = 1.0

    def latitude(t: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.full_like(t, theta0), 2 * math.pi * t], -1).unsqueeze(0)

    w0 = torch.tensor([[1.0, 0.0]], dtype=f64)
    w = parallel_transport(PullbackMetric(SphereDecoder()), latitude, w0, n_steps=60)
    assert w.shape == (1, 61, 2)
    angle = 2 * math.pi * math.cos(theta0)
    got = torch.stack([w[0, -1, 0], w[0, -1, 1] * math.sin(theta0)])
    want = torch.tensor([math.cos(angle), -math.sin(angle)], dtype=f64)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-7)


def test_a_curve_is_called_in_its_own_dtype():
    """parallel_transport made the times in the metric's dtype (and device): a float32
    NeuralGeodesic under a float64 metric failed in its first layer. Its points now come
    back in the metric's dtype, transported as along the same curve in float64."""
    metric = PullbackMetric(SphereDecoder())
    z0, z1 = torch.tensor([[0.5, 0.0], [1.0, 1.0]]), torch.tensor([[1.2, 2.0], [2.0, -1.0]])
    curve = NeuralGeodesic(z0, z1, hidden=(4,))
    with torch.no_grad():  # a bent curve, not the initial straight line
        curve.params.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
    w0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=f64)
    w = parallel_transport(metric, curve, w0, n_steps=20)
    want = parallel_transport(metric, copy.deepcopy(curve).double(), w0, n_steps=20)
    assert w.dtype == f64 and (want[:, -1] - w0).abs().max() > 0.1
    torch.testing.assert_close(w, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_parallel_transport_preserves_lengths_and_angles(name):
    metric = MODELS[name]

    def curve(t: torch.Tensor) -> torch.Tensor:
        s = t.reshape(1, -1, 1)
        return torch.stack([s.cos() - 0.5, 2 * s.sin() * s], -1).squeeze(-2).expand(2, -1, 2)

    w0 = torch.tensor([[[1.0, 0.0], [0.3, 1.0]], [[0.0, 2.0], [1.0, 1.0]]], dtype=f64)
    w = parallel_transport(metric, curve, w0, n_steps=60)
    points = curve(torch.linspace(0, 1, 61, dtype=f64))
    gram = torch.einsum("ntai,ntij,ntbj->ntab", w, metric(points), w)
    torch.testing.assert_close(gram, gram[:, :1].expand_as(gram), rtol=1e-6, atol=1e-8)
    assert (w[:, -1] - w0).abs().max() > 1e-2  # the vectors did turn


def test_a_geodesic_transports_its_own_velocity():
    metric = MODELS["rhvae"]
    z = torch.tensor([[0.2, -0.4], [1.0, 0.5]], dtype=f64)
    v = torch.tensor([[0.6, 0.3], [-0.4, 0.9]], dtype=f64)
    path = integrate_geodesic(metric, z, v, transport=v)
    assert path.transported.shape == (2, 21, 2)
    torch.testing.assert_close(path.transported, path.velocities)
    both = integrate_geodesic(metric, z, v, transport=torch.stack([v, -2 * v], 1))
    assert both.transported.shape == (2, 21, 2, 2)
    torch.testing.assert_close(both.transported[:, :, 1], -2 * path.velocities)
    assert (path.velocities[:, -1] - v).abs().max() > 1e-2


# --- Frechet means ---------------------------------------------------------------------

def test_frechet_mean_of_two_points_is_the_geodesic_midpoint():
    a = torch.tensor([[-1.0, 1.0], [1.5, 0.5]], dtype=f64)
    res = frechet_mean(poincare(), a, n_points=16, n_steps=10)
    assert res.converged and res.iterations > 1
    half = hyperbolic_distance(a[:1], a[1:]) / 2
    torch.testing.assert_close(hyperbolic_distance(a, res.mean.expand(2, 2)), half.expand(2),
                               rtol=1e-4, atol=0)
    torch.testing.assert_close(res.variance, half[0] ** 2, rtol=1e-4, atol=0)


@pytest.mark.parametrize("space", ["half-plane", "sphere"])
def test_frechet_mean_minimises_the_closed_form_variance(space):
    """The gradient of the weighted sum of squared distances, by central differences of the
    arccosh or great-circle formula, vanishes at the mean; the Euclidean mean is worse."""
    gen = torch.Generator().manual_seed(0)
    z = torch.stack([torch.rand(5, generator=gen) * 2 - 1,
                     torch.rand(5, generator=gen) + 0.5], -1).double()
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 3.0], dtype=f64)
    if space == "half-plane":
        metric = poincare()

        def distance(m):
            return hyperbolic_distance(m.expand_as(z), z)
    else:
        metric = PullbackMetric(SphereDecoder())
        z = z.flip(-1) + torch.tensor([0.3, 0.0], dtype=f64)  # polar angles in [0.8, 1.8]

        def distance(m):
            return torch.arccos((sphere(m.expand_as(z)) * sphere(z)).sum(-1).clamp(-1, 1))

    def variance(m):
        return (weights * distance(m) ** 2).sum() / weights.sum()

    res = frechet_mean(metric, z, weights, tol=1e-5, n_points=16, n_steps=10)
    assert res.converged
    h = 1e-5
    grad = torch.stack([(variance(res.mean + h * e) - variance(res.mean - h * e)) / (2 * h)
                        for e in torch.eye(2, dtype=f64)])
    assert grad.abs().max() < 1e-4
    torch.testing.assert_close(res.variance, variance(res.mean), rtol=1e-5, atol=0)
    assert variance((weights[:, None] * z).sum(0) / weights.sum()) > res.variance


def test_frechet_mean_converges_relative_to_the_spread_of_its_points():
    """The convergence test is relative: the mean log map's length at most `tol` times the
    rms distance. Five points 1e-2 around (0, 1) in H^2 (rms distance 7e-3): at the mean,
    the mean log map, minus half the Riemannian gradient of the closed-form variance
    V(m) = mean_i d(m, z_i)^2 (G^-1 = m_2^2 I), has metric length (m_2 / 2) |grad V|; by
    central differences of V it is within 10 tol sqrt(V). An absolute test (length <= tol)
    called the fitted start converged with no Newton step, 130 tol sqrt(V) off."""
    gen = torch.Generator().manual_seed(0)
    z = torch.tensor([0.0, 1.0], dtype=f64) + 1e-2 * (
        torch.rand(5, 2, generator=gen, dtype=f64) * 2 - 1)
    tol = 1e-5

    def variance(m):
        return (hyperbolic_distance(m.expand_as(z), z) ** 2).mean()

    res = frechet_mean(poincare(), z, tol=tol, n_points=16, n_steps=10)
    assert res.converged
    m, h = res.mean, 1e-6
    grad = torch.stack([(variance(m + h * e) - variance(m - h * e)) / (2 * h)
                        for e in torch.eye(2, dtype=f64)])
    residual = 0.5 * m[1] * grad.norm()
    assert residual <= 10 * tol * variance(m).sqrt(), (residual, variance(m).sqrt())


FAR_APART = {"tall": [[0.0, 0.05], [0.0, 20.0], [0.5, 1.0]],
             "wide": [[-5.0, 0.1], [5.0, 0.1], [0.0, 6.0]]}


def closed_form_mean(z: torch.Tensor) -> torch.Tensor:
    """The minimiser of the mean squared arccosh distance in H^2, by Nelder-Mead in
    `(x, log y)`."""

    def variance(p: np.ndarray) -> float:
        m = torch.tensor([[p[0], math.exp(p[1])]], dtype=f64)
        return float((hyperbolic_distance(m.expand_as(z), z) ** 2).mean())

    best = minimize(variance, [0.0, 0.0], method="Nelder-Mead",
                    options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 5000}).x
    return torch.tensor([best[0], math.exp(best[1])], dtype=f64)


@pytest.mark.parametrize("name", FAR_APART)
def test_frechet_mean_of_far_apart_points_takes_a_few_steps(name, monkeypatch):
    """Points 4 to 10 apart in H^2, where the variance curves far more than in a flat
    metric: Karcher steps of rate 1 overshoot. The old flow, its rate halved whenever a
    step reversed the last, ran to its 30 iterations (600 integrations) on "tall", and on
    "wide" called y = 1e146 converged. The mean must be the closed-form minimiser, within
    a few steps and integrations (fits of curves cost none)."""
    integrations = []
    rk4 = connection._rk4
    monkeypatch.setattr(connection, "_rk4", lambda *a: integrations.append(1) or rk4(*a))
    z = torch.tensor(FAR_APART[name], dtype=f64)
    res = frechet_mean(poincare(), z, n_points=16)
    assert res.converged and res.stopped == "converged"
    assert res.iterations <= 10 and len(integrations) <= 40
    rms = res.variance.sqrt()
    assert hyperbolic_distance(res.mean[None], closed_form_mean(z)[None]) < 1e-4 * rms


def test_frechet_mean_and_log_map_show_progress(capsys: pytest.CaptureFixture) -> None:
    """progress=True (none by default): the Frechet mean's bar counts its steps of
    max_iter, with the stage and the mean log map's length in units of its tolerance,
    ending at most 1 once converged, and shows its fits' bars; log_map's counts the pairs
    whose shots have settled, and the collocation's (when any) the pairs it has solved. The
    results are the same either way."""
    z = torch.tensor(FAR_APART["tall"], dtype=f64)
    quiet = frechet_mean(poincare(), z, n_points=16)
    quiet_logs = log_map(poincare(), z[:2], z[1:], n_points=16)
    assert capsys.readouterr().err == ""
    shown = frechet_mean(poincare(), z, n_points=16, progress=True)
    err = capsys.readouterr().err
    assert shown.converged and shown.iterations > 1
    assert "Frechet mean: " in err and f" {shown.iterations}/30 " in err, err
    assert "stage=start" in err and "stage=Newton" in err and "geodesics: " in err
    residuals = [float(r) for r in re.findall(r"residual=([-+.e0-9]+)", err)]
    assert residuals[0] > 1 >= residuals[-1], residuals
    torch.testing.assert_close(shown.mean, quiet.mean, rtol=0, atol=0)
    logs = log_map(poincare(), z[:2], z[1:], n_points=16, progress=True)
    err = capsys.readouterr().err
    assert "log maps: 100%" in err and " 2/2 " in err and "steps=20" in err, err
    assert "collocation" not in err  # both shots were log maps
    torch.testing.assert_close(logs.velocity, quiet_logs.velocity, rtol=0, atol=0)
    # without shooting, both pairs are collocated: a bar over them
    collocated = log_map(poincare(), z[:2], z[1:], n_points=16, max_iter=0, progress=True)
    err = capsys.readouterr().err
    assert collocated.collocated.all() and "collocation: 100%" in err and " 2/2 " in err, err


def test_frechet_mean_keeps_the_point_reached_when_its_budget_runs_out():
    z = torch.tensor(FAR_APART["tall"], dtype=f64)
    res = frechet_mean(poincare(), z, max_iter=1, n_points=16)
    assert not res.converged and res.stopped == "max_iter" and res.iterations == 1
    euclidean = z.mean(0, keepdim=True).expand_as(z)
    # one step, and the variance it reports is the point's
    assert (hyperbolic_distance(res.mean.expand_as(z), z) ** 2).mean() < (
        hyperbolic_distance(euclidean, z) ** 2).mean()
    torch.testing.assert_close(res.variance,
                               (hyperbolic_distance(res.mean.expand_as(z), z) ** 2).mean(),
                               rtol=1e-4, atol=0)


def fail_collocation(monkeypatch):
    """Collocation solves nothing: where shooting fails, nothing replaces it."""
    monkeypatch.setattr(connection, "_collocate", lambda metric, z0, z1, curves, tol, progress: (
        torch.zeros_like(z0), curves, torch.zeros(len(z0), dtype=torch.bool)))


def exact_variance(mean: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return (hyperbolic_distance(mean.expand_as(z), z) ** 2).mean()


def too_long(shoot):
    """`_shoot`, its first pair's length doubled: not the minimising geodesic."""

    def shot(*args, **kwargs):
        res = shoot(*args, **kwargs)
        return replace(res, length=res.length * torch.tensor([2.0, 1, 1], dtype=f64))

    return shot


def missed(shoot):
    """`_shoot`, its first pair's velocity cut to 0.7x and not converged: it misses."""

    def shot(metric, z0, z1, v, n_steps, *args, **kwargs):
        res = shoot(metric, z0, z1, v, n_steps, *args, **kwargs)
        velocity = res.velocity.clone()
        velocity[0] *= 0.7
        end = connection.exp_map(metric, z0[:1], velocity[:1], n_steps=n_steps)
        residual, converged = res.residual.clone(), res.converged.clone()
        residual[0], converged[0] = (end - z1[:1]).norm(), False
        length = metric.quad(z0, velocity.unsqueeze(-2))[..., 0].sqrt()
        return replace(res, velocity=velocity, length=length, residual=residual,
                       converged=converged)

    return shot


@pytest.mark.parametrize("wrong", [too_long, missed])
def test_frechet_mean_collocates_the_log_maps_shooting_gets_wrong(wrong, monkeypatch):
    """A shot log map twice as long as the fitted curve (not the minimising geodesic) or one
    that misses its point (a stiff metric's shooting does both): collocation from the
    fitted curve replaces it, at the start and at every Newton step, and the mean is the
    closed-form one, where the mean used to stop at its start (`stopped="log_maps"`)."""
    collocations = []
    collocate = connection._collocate
    monkeypatch.setattr(connection, "_shoot", wrong(connection._shoot))
    monkeypatch.setattr(connection, "_collocate", lambda *args, **kwargs: (
        collocations.append(len(args[1])) or collocate(*args, **kwargs)))
    z = torch.tensor(FAR_APART["tall"], dtype=f64)
    res = frechet_mean(poincare(), z, n_points=16, n_steps=10)
    assert res.stopped == "converged" and res.iterations > 1
    assert len(collocations) > 1 and set(collocations) == {1}  # the wrong one alone
    exact = exact_variance(res.mean, z)
    assert hyperbolic_distance(res.mean[None], closed_form_mean(z)[None]) < 1e-4 * exact.sqrt()
    torch.testing.assert_close(res.variance, exact, rtol=1e-4, atol=0)


def test_frechet_mean_keeps_its_start_when_a_log_map_is_not_minimising(monkeypatch):
    """Where collocation fails too, no Newton step follows a log map twice as long as the
    fitted curve: the fitted start comes back (`stopped="log_maps"`), its variance that
    of the fitted curves, an upper bound of the exact one there."""
    shots = []
    shoot = too_long(connection._shoot)
    monkeypatch.setattr(connection, "_shoot", lambda *args, **kwargs: (
        shots.append(1) or shoot(*args, **kwargs)))
    fail_collocation(monkeypatch)
    z = torch.tensor(FAR_APART["tall"], dtype=f64)
    res = frechet_mean(poincare(), z, n_points=16)
    assert (res.stopped, res.converged, len(shots)) == ("log_maps", False, 1)
    exact = exact_variance(res.mean, z)
    assert exact <= res.variance <= 1.03 * exact  # 16-point curves: 1.3 % over here
    # a zero weight on that point: its log map does not matter, Newton goes on
    shots.clear()
    res = frechet_mean(poincare(), z, torch.tensor([0.0, 1, 1], dtype=f64), n_points=16)
    assert res.stopped == "converged" and len(shots) > 1


def test_frechet_mean_keeps_its_start_when_a_shot_misses_its_point(monkeypatch):
    """A shot that did not reach its point (a stiff metric's shooting can end 0.3 to 3.7
    from it, shorter than the fitted curve) is no log map: Newton on it reported
    "converged" here at a point 13 % of the rms distance from the closed-form mean, with a
    variance 31 % below the exact one there. Where collocation fails too, the fitted
    start comes back instead."""
    monkeypatch.setattr(connection, "_shoot", missed(connection._shoot))
    fail_collocation(monkeypatch)
    z = torch.tensor(FAR_APART["tall"], dtype=f64)
    res = frechet_mean(poincare(), z, n_points=16, n_steps=10)
    assert (res.stopped, res.converged) == ("log_maps", False)
    exact = exact_variance(res.mean, z)
    assert exact <= res.variance <= 1.03 * exact
    # the start is within its sqrt(tol) of the mean
    assert hyperbolic_distance(res.mean[None], closed_form_mean(z)[None]) < 1e-2 * exact.sqrt()
    # a zero weight on that point: Newton goes on, to the mean of the other two
    res = frechet_mean(poincare(), z, torch.tensor([0.0, 1, 1], dtype=f64), n_points=16,
                       n_steps=10)
    assert res.stopped == "converged"
    assert hyperbolic_distance(res.mean[None], closed_form_mean(z[1:])[None]) < (
        1e-4 * res.variance.sqrt())


def closed_form_shots(metric, z0, z1, v, n_steps, tol, max_iter, skip=None, bar=None):
    """`_shoot` in H^2 by the closed form: the exact log maps, converged."""
    length = hyperbolic_distance(z0, z1)
    return connection.LogMapResult(half_plane_log(z0, z1), length, torch.zeros_like(length),
                                   torch.ones_like(length, dtype=torch.bool),
                                   torch.zeros_like(length, dtype=torch.long))


def mean_log_size(m: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The metric length at `m` of the mean closed-form log map to `z` in H^2."""
    return half_plane_log(m.expand_as(z), z).mean(0).norm() / m[1]


def newton_from_far(monkeypatch) -> tuple[torch.Tensor, list[torch.Tensor], object]:
    """One `_newton_step` in H^2 from (8, 1), far to the side of the "wide" points, with
    closed-form log maps in place of the shooting: the points it tried and its result."""
    tried = []
    monkeypatch.setattr(connection, "_shoot", lambda metric, z0, *args, **kwargs: (
        tried.append(z0[0].clone()) or closed_form_shots(metric, z0, *args, **kwargs)))
    z, m = torch.tensor(FAR_APART["wide"], dtype=f64), torch.tensor([8.0, 1.0], dtype=f64)
    at = m.expand_as(z).contiguous()
    curves = connection._fitted_logs(poincare(), at, z, n_points=16)[2]
    logs = replace(closed_form_shots(None, at, z, None, 10, 1e-6, 20),
                   collocated=torch.zeros(3, dtype=torch.bool))
    out = connection._newton_step(poincare(), m, z, torch.full((3,), 1 / 3, dtype=f64), logs,
                                  curves, 10, 1e-6, 20)
    return z, tried, out


def test_a_newton_step_of_the_mean_that_overshoots_is_halved(monkeypatch):
    """From (8, 1), far from the "wide" points' mean, Newton's full step lands at (3.6,
    0.15), where the closed-form mean log map is longer (5.7 against 4.8 at the start):
    half of it, (5.8, 0.58), shortens it to 4.0 and is taken. Without the halving every
    try repeats the full step and the step fails."""
    z, tried, out = newton_from_far(monkeypatch)
    start = torch.tensor([8.0, 1.0], dtype=f64)
    assert len(tried) == 2 and mean_log_size(tried[0], z) > mean_log_size(start, z)
    torch.testing.assert_close(tried[1] - start, (tried[0] - start) / 2)
    assert out is not None
    torch.testing.assert_close(out[0], tried[1])
    assert mean_log_size(out[0], z) < 0.9 * mean_log_size(start, z)


def test_a_newton_step_of_the_mean_is_taken_only_where_it_shortens_the_log_map(monkeypatch):
    """The step `_newton_step` returns shortens the closed-form mean log map, and its log
    maps are the closed-form ones there; the full step from (8, 1), whose log maps all
    converged but whose mean log map is longer than the start's, is not taken."""
    z, tried, out = newton_from_far(monkeypatch)
    start = torch.tensor([8.0, 1.0], dtype=f64)
    assert out is not None
    mean, logs, _ = out
    assert mean_log_size(mean, z) < mean_log_size(start, z)
    assert not torch.allclose(mean, tried[0])  # the full step, longer
    torch.testing.assert_close(logs.velocity, half_plane_log(mean.expand_as(z), z))
    assert logs.converged.all() and not logs.collocated.any()


def test_a_shot_a_fifth_longer_than_the_fitted_curve_is_no_log_map(monkeypatch):
    """A shot 1.2x as long as the fitted curve (beyond its 5 % slack, though it says
    converged) is not the minimising geodesic: collocation (here the closed form) replaces
    it; one 1.02x as long stays (within the quadrature's error of the 16-point curves).
    The shots are the closed-form log maps, stretched."""
    z0, z1 = (z[:2] for z in half_plane_pairs())
    scale = torch.tensor([1.2, 1.02], dtype=f64)
    monkeypatch.setattr(connection, "_shoot", lambda *args, **kwargs: (lambda res: replace(
        res, velocity=res.velocity * scale[:, None], length=res.length * scale))(
            closed_form_shots(*args, **kwargs)))
    collocated = []

    def collocate(metric, a, b, curves, tol, progress):
        collocated.append(len(a))
        return half_plane_log(a, b), curves, torch.ones(len(a), dtype=torch.bool)

    monkeypatch.setattr(connection, "_collocate", collocate)
    res = log_map(poincare(), z0, z1, n_steps=8, n_points=16)
    assert collocated == [1] and res.collocated.tolist() == [True, False]
    assert res.converged.all()
    exact = hyperbolic_distance(z0, z1)
    torch.testing.assert_close(res.length, exact * torch.tensor([1.0, 1.02], dtype=f64))
    torch.testing.assert_close(res.velocity[0], half_plane_log(z0, z1)[0])


TWO_POINTS = [[-1.0, 1.0], [1.5, 0.5]]


@pytest.mark.parametrize("points", [TWO_POINTS, FAR_APART["tall"]])
def test_frechet_mean_doubles_its_steps_to_an_integration_tolerance(points):
    """From 4 steps the shots' integration error (3e-4 to 4e-3 of the distances) put the
    mean 2.4e-4 to 3.1e-4 of the rms distance from the closed-form one and its variance up
    to 3.2e-3 off; with integration_tol the steps double until Richardson's estimate of
    the log maps' velocity errors is within it (of the closed-form log maps' lengths), and
    both agree to 6e-5."""
    z = torch.tensor(points, dtype=f64)
    res = frechet_mean(poincare(), z, tol=1e-6, n_points=16, n_steps=4, integration_tol=1e-4)
    assert res.stopped == "converged" and res.n_steps in (8, 16)
    velocity = half_plane_log(res.mean.expand_as(z), z)
    assert (res.velocity_error <= 1e-4 * velocity.norm(dim=-1)).all()
    exact = exact_variance(closed_form_mean(z), z)
    assert hyperbolic_distance(res.mean[None], closed_form_mean(z)[None]) < 6e-5 * exact.sqrt()
    torch.testing.assert_close(res.variance, exact, rtol=6e-5, atol=0)


def test_frechet_mean_says_when_its_integration_is_not_accurate():
    """Without doublings left the mean log map still vanishes, but the mean is not called
    converged (`stopped="integration"`); without integration_tol it is, its error reported."""
    z = torch.tensor(TWO_POINTS, dtype=f64)
    res = frechet_mean(poincare(), z, n_points=16, n_steps=4, integration_tol=1e-4,
                       max_doublings=0)
    assert (res.stopped, res.converged, res.n_steps) == ("integration", False, 4)
    velocity = half_plane_log(res.mean.expand_as(z), z)
    assert (res.velocity_error > 1e-4 * velocity.norm(dim=-1)).any()
    plain = frechet_mean(poincare(), z, n_points=16, n_steps=4)
    assert (plain.stopped, plain.n_steps) == ("converged", 4)
    torch.testing.assert_close(plain.integration_error, res.integration_error)
    torch.testing.assert_close(plain.velocity_error, res.velocity_error)
    for bad in ({"integration_tol": 0.0}, {"max_doublings": -1}):
        with pytest.raises(ValueError, match=r"integration_tol|max_doublings"):
            frechet_mean(poincare(), z, **bad)


def test_frechet_mean_out_of_iterations_does_not_double_its_steps():
    """The budget spent (`max_iter`), no doubling follows however inaccurate the shots:
    the mean stops with the steps it had."""
    z = torch.tensor(TWO_POINTS, dtype=f64)
    res = frechet_mean(poincare(), z, max_iter=0, n_points=8, n_steps=4,
                       integration_tol=1e-8)
    assert (res.stopped, res.converged, res.n_steps) == ("max_iter", False, 4)


def test_an_integration_tolerance_stops_at_the_float32_rounding():
    """Pairs 1e-5 to 1e-3 apart on a float32 RHVAE: the estimate for n against 2n steps is
    rounding, growing with the steps, and the steps doubled to 320 without converging."""
    metric = small_rhvae_metric()
    z0 = torch.tensor([[0.1, 0.2], [0.5, -0.3], [2.0, 1.5]])
    for scale in (1e-3, 1e-4, 1e-5):
        z1 = z0 + scale * torch.tensor([[1.0, -2.0], [0.4, 0.3], [1.0, 1.0]])
        res = log_map(metric, z0, z1, n_points=8, integration_tol=1e-4, collocate=False)
        assert res.n_steps == 20 and res.converged.all()


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_frechet_mean_of_one_point_is_that_point(dtype):
    """One point, or the same point three times: the mean is that point exactly, converged,
    of variance 0. The zero-length fits' velocities, -3 p0 + 4 p1 - p2 of a curve at one
    point, rounded to 1e-15 (1e-6 in float32) instead of 0, so the float64 shots came out
    longer than the fits and the mean stopped at "log_maps", not converged; that fixed,
    the float32 start sum_i z_i / 3, 6e-8 off the point, stayed there."""
    p = torch.tensor([[0.1, 0.9]], dtype=dtype)
    for k in (1, 3):
        res = frechet_mean(poincare(), p.repeat(k, 1))
        assert res.converged and res.stopped == "converged"
        assert torch.equal(res.mean, p[0]) and res.variance == 0


def test_collocation_on_a_constant_metric_gives_the_line():
    """Collocation from bent guesses on a metric that does not depend on z: the
    acceleration's Jacobian is zero, where autograd raised ("appears to not have been used
    in the graph"); the geodesics are the straight lines."""
    A = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=f64)
    metric = Metric(lambda z: A.expand(len(z), 2, 2))
    z0, v = POINTS[:2], torch.tensor([[1.0, -2.0], [0.0, 3.0]], dtype=f64)
    t = torch.linspace(0, 1, 9, dtype=f64)[:, None]
    bent = z0[:, None] + t * v[:, None] + 0.1 * torch.sin(math.pi * t)
    velocity, paths, solved = connection._collocate(metric, z0, z0 + v, bent, 1e-8)
    assert solved.all()
    torch.testing.assert_close(velocity, v)
    torch.testing.assert_close(paths, z0[:, None] + t * v[:, None])


def test_frechet_mean_refuses_bad_weights():
    with pytest.raises(ValueError, match="non-negative weights"):
        frechet_mean(poincare(), POINTS, torch.tensor([1.0, -1.0, 1.0], dtype=f64))


def test_frechet_mean_passes_the_shooting_its_tolerance_and_budget(monkeypatch):
    """frechet_mean's docstring sent log_map's tol and max_iter through **log_kwargs, but
    its own tol and max_iter took those names, so the shooting always ran with 1e-6 and 20
    (and log_tol=1e-9 went on to fit_geodesics, a TypeError). log_tol and log_max_iter
    now reach every shot, and the mean's tol and max_iter stay its own."""
    seen = []
    shoot = connection._shoot

    def recording(metric, z0, z1, v, n_steps, tol, max_iter, **kwargs):
        seen.append((tol, max_iter))
        return shoot(metric, z0, z1, v, n_steps, tol, max_iter, **kwargs)

    monkeypatch.setattr(connection, "_shoot", recording)
    res = frechet_mean(poincare(), POINTS + torch.tensor([0.0, 1.0], dtype=f64), tol=1e-5,
                       max_iter=5, log_tol=1e-9, log_max_iter=7, n_points=16)
    assert seen and set(seen) == {(1e-9, 7)} and res.converged
    with pytest.raises(ValueError, match=r"log_max_iter must be an integer >= 0, got -1"):
        frechet_mean(poincare(), POINTS, log_max_iter=-1)


def test_tolerances_out_of_range_are_refused_by_name():
    """log_map(tol=-1) reported a small RHVAE's pairs converged (collocation took every shot that
    could never meet a negative tolerance), tol=NaN returned them unconverged without a
    word, and frechet_mean(tol=-1) failed in math.sqrt ("math domain error"); each is
    now a ValueError naming tol."""
    z0, z1 = half_plane_pairs()
    for call in (lambda tol: log_map(poincare(), z0[:2], z1[:2], tol=tol),
                 lambda tol: frechet_mean(poincare(), POINTS, tol=tol)):
        for tol in (-1.0, math.nan, "a"):
            with pytest.raises(ValueError, match=r"tol must be a finite number >= 0"):
                call(tol)


def test_a_spray_of_the_half_plane_ends_on_a_hyperbolic_circle():
    """Geodesics of H^2 minimise: every spoke of metric speed r ends at distance r."""
    centre = torch.tensor([0.3, 0.8], dtype=f64)
    spray = geodesic_spray(poincare(), centre, 12, radius=1.5)
    assert spray.points.shape == (12, 41, 2)
    ends = spray.points[:, -1]
    torch.testing.assert_close(hyperbolic_distance(centre.expand(12, 2), ends),
                               torch.full((12,), 1.5, dtype=f64), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="2-D latent space"):
        geodesic_spray(poincare(), torch.zeros(3, dtype=f64))


def test_a_spray_leaves_in_equal_angles_around_the_full_circle():
    """Spoke k leaves at the coordinate angle 2 pi k / n with metric speed `radius`."""
    centre = torch.tensor([0.3, 0.8], dtype=f64)
    spray = geodesic_spray(poincare(), centre, 6, radius=0.5, n_steps=2)
    angles = 2 * math.pi * torch.arange(6, dtype=f64) / 6
    v = spray.velocities[:, 0]
    torch.testing.assert_close(v / v.norm(dim=-1, keepdim=True),
                               torch.stack([angles.cos(), angles.sin()], -1))
    torch.testing.assert_close(v.norm(dim=-1) / 0.8, torch.full((6,), 0.5, dtype=f64))


def test_points_of_any_dtype_are_cast_to_the_metrics():
    """A float32 RHVAE's metric takes float64 tensors and numpy arrays (numpy's default
    float64) in exp_map, log_map, frechet_mean, christoffel and geodesic_spray and answers
    in float32, as for float32 points (they failed in its matrix products: double !=
    float)."""
    metric = small_rhvae_metric()
    z = torch.tensor([[0.1, 0.2], [0.5, -0.3], [-0.4, 0.1]])
    z64, v64 = z.numpy().astype(np.float64), np.full((3, 2), 0.2)
    for got, want in (
            (exp_map(metric, z64, v64), exp_map(metric, z, torch.full((3, 2), 0.2))),
            (christoffel(metric, torch.as_tensor(z64)), christoffel(metric, z)),
            (geodesic_spray(metric, z64[0], 4, radius=0.1, n_steps=10).points,
             geodesic_spray(metric, z[0], 4, radius=0.1, n_steps=10).points)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)
    log = log_map(metric, z64[:2], z64[1:], n_steps=10, collocate=False, n_points=8)
    assert log.velocity.dtype == torch.float32 and log.converged.all()
    torch.testing.assert_close(exp_map(metric, z[:2], log.velocity, n_steps=10), z[1:])
    mean = frechet_mean(metric, z64, np.ones(3), n_steps=10, n_points=8)
    assert mean.mean.dtype == torch.float32 and mean.stopped == "converged"


def test_non_finite_points_are_refused_by_name():
    """log_map and frechet_mean name NaN or infinite points up front, as fit_geodesics does,
    and frechet_mean refuses NaN weights."""
    z = POINTS.clone()
    z[1, 1] = math.nan
    with pytest.raises(ValueError, match=r"^z_end has NaN or infinite coordinates: 1 of 3 "
                                         r"point\(s\), at row\(s\) 1 \(counting from 0\)"):
        log_map(poincare(), POINTS, z)
    with pytest.raises(ValueError, match=r"^z_start has NaN or infinite coordinates: 1 of 1"):
        log_map(poincare(), torch.tensor([math.inf, 1.0], dtype=f64), POINTS[0])
    with pytest.raises(ValueError, match=r"^z has NaN or infinite coordinates: 1 of 3 "
                                         r"point\(s\), at row\(s\) 1 "):
        frechet_mean(poincare(), z)
    with pytest.raises(ValueError, match="N finite non-negative weights"):
        frechet_mean(poincare(), POINTS, torch.tensor([1.0, math.nan, 1.0], dtype=f64))


def test_christoffel_contract_refuses_vectors_of_another_shape():
    """Vectors u or w of another shape than the points failed in torch's forward-mode AD
    ("Trying to set a forward gradient that has a different size"); a single vector for
    all points and points with leading axes were refused alike. Now one vector is
    broadcast to every point, leading axes are kept, and other shapes are a ValueError."""
    metric = poincare()
    z = torch.tensor([[0.3, 0.5], [-1.0, 2.0], [0.0, 1.0], [2.0, 0.7]], dtype=f64)
    u = torch.tensor([[1.0, 0.0], [0.5, -1.0], [0.0, 2.0], [1.0, 1.0]], dtype=f64)
    w = torch.tensor([0.2, 1.0], dtype=f64)
    gamma = christoffel(metric, z)
    by_symbols = torch.einsum("nkij,ni,j->nk", gamma, u, w)
    torch.testing.assert_close(christoffel_contract(metric, z, u, w), by_symbols)
    torch.testing.assert_close(christoffel_contract(metric, z, u, w[None]), by_symbols)
    torch.testing.assert_close(christoffel_contract(metric, z.reshape(2, 2, 2),
                                                    u.reshape(2, 2, 2), w),
                               by_symbols.reshape(2, 2, 2))
    torch.testing.assert_close(christoffel_contract(metric, z[0], u[0]),
                               torch.einsum("kij,i,j->k", gamma[0], u[0], u[0]))
    for bad_u, bad_w, name, shape in ((u[:3], None, "u", (3, 2)),
                                      (u, torch.ones(4, 3, dtype=f64), "w", (4, 3)),
                                      (u.T, None, "u", (2, 4))):
        with pytest.raises(ValueError, match=rf"{name} has shape \({shape[0]}, {shape[1]}\), "
                                             r"but the points z have \(4, 2\)"):
            christoffel_contract(metric, z, bad_u, bad_w)


def test_transport_of_vectors_that_do_not_fit_the_curves_is_refused():
    """integrate_geodesic(transport=(3, 2)) for two geodesics failed in torch's expand,
    and parallel_transport of one vector (d,), of a curve giving one point per time (T, d)
    or of a tensor for the curve failed inside the Runge-Kutta steps ("not enough values
    to unpack", "'Tensor' object is not callable"); each is now an error that says what
    fits, and the shapes that do fit are transported as before."""
    metric = poincare()
    z0, z1 = half_plane_pairs()
    z0, z1 = z0[:2], z1[:2]
    for transport in (torch.ones(3, 2, dtype=f64), torch.ones(2, 3, dtype=f64),
                      torch.ones(2, 4, 3, dtype=f64)):
        shape = ", ".join(map(str, transport.shape))
        with pytest.raises(ValueError, match=rf"transport has shape \({shape}\), but the "
                                             r"geodesics start at z \(2, 2\)"):
            integrate_geodesic(metric, z0, z1 - z0, transport=transport)
    one = integrate_geodesic(metric, z0, z1 - z0, transport=torch.ones(2, dtype=f64))
    each = integrate_geodesic(metric, z0, z1 - z0, transport=torch.ones(2, 2, dtype=f64))
    torch.testing.assert_close(one.transported, each.transported, rtol=0, atol=0)

    def line(t):
        return z0[:, None] + t[:, None] * (z1 - z0)[:, None]

    for curve, w in ((line, torch.ones(2, dtype=f64)),
                     (lambda t: z0[0] + t[:, None] * (z1 - z0)[0], torch.ones(2, dtype=f64))):
        with pytest.raises(ValueError, match=r"parallel_transport needs a curve t \(T,\) -> "
                                             r"\(B, T, d\) and vectors w \(B, k, d\) or \(B, d\)"):
            parallel_transport(metric, curve, w)
    with pytest.raises(TypeError, match=r"curve must be a differentiable function of the "
                                        r"times.*got Tensor"):
        parallel_transport(metric, line(torch.linspace(0, 1, 5, dtype=f64)),
                           torch.ones(2, 2, dtype=f64))
    assert parallel_transport(metric, line, torch.ones(2, 2, dtype=f64), n_steps=4
                              ).shape == (2, 5, 2)


def test_transport_along_a_curve_that_is_not_differentiable_is_refused():
    """A curve that detaches its points (or goes through numpy) has zero forward-mode
    velocity, and parallel_transport returned the vectors unchanged, however curved the
    metric (the helper's finding, 2026-12-03); it is now an error that says why. A constant
    curve, whose velocity is zero because it does not move, still transports (to w)."""
    metric = poincare()
    z0, z1 = half_plane_pairs()
    z0, z1 = z0[:2], z1[:2]
    w = torch.tensor([[1.0, 0.5], [-0.3, 2.0]], dtype=f64)

    def line(t):
        return z0[:, None] + t[:, None] * (z1 - z0)[:, None]

    moved = parallel_transport(metric, line, w, n_steps=8)[:, -1]
    assert (moved - w).abs().max() > 0.1  # the hyperbolic plane turns vectors on the way
    with pytest.raises(ValueError, match=r"velocity \(forward mode\) is zero: it must be "
                                         r"differentiable in t"):
        parallel_transport(metric, lambda t: line(t).detach(), w)
    still = parallel_transport(metric, lambda t: z0[:, None] + 0 * t[None, :, None], w,
                               n_steps=4)
    torch.testing.assert_close(still[:, -1], w, rtol=0, atol=0)
