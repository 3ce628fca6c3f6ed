"""Curvature against closed forms: spheres (+1/r^2), hyperbolic spaces (-1), flat polar
coordinates (0), a conformal metric (K = -exp(-2 phi) Laplacian phi), a general 2-D metric
(Brioschi's formula by autograd), and the Riemann tensor's symmetries on an RHVAE metric."""

import math
import warnings

import numpy as np
import pytest
import torch

import aetk
from aetk.geometry import (
    Metric,
    PullbackMetric,
    curvature_grid,
    metric_for,
    ricci,
    riemann,
    scalar_curvature,
    sectional_curvature,
    volume_grid,
)

from helpers import SphereDecoder, poincare, small_rhvae_metric

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _diag(fn):
    """A metric `diag(fn(z))`."""
    return Metric(lambda z: torch.diag_embed(fn(z)))


def sphere_angles(r: float) -> Metric:
    """Sphere of radius r in (polar, azimuth) angles: diag(r^2, r^2 sin^2 theta)."""
    return _diag(lambda z: r**2 * torch.stack([torch.ones_like(z[:, 0]), z[:, 0].sin() ** 2], -1))


def _points(d: int, n: int = 6, low: float = 0.3, high: float = 1.5) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, d, dtype=F64)


@pytest.mark.parametrize("r", [1.0, 2.0])
def test_sphere_has_curvature_one_over_r_squared(r: float) -> None:
    z = _points(2)
    u, v = torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)
    torch.testing.assert_close(scalar_curvature(sphere_angles(r), z),
                               torch.full((6,), 2 / r**2, dtype=F64))
    torch.testing.assert_close(sectional_curvature(sphere_angles(r), z, u, v),
                               torch.full((6,), 1 / r**2, dtype=F64))


def test_sectional_curvature_broadcasts_one_plane_over_points() -> None:
    """One plane `(d,)` for many points, or one point for many planes, as the shapes
    broadcast (a plane `(d,)` for points `(N, d)` raised torch's "shape '[N, 2]' is
    invalid for input of size 2"); shapes that do not broadcast are a ValueError."""
    z = _points(2)
    e1, e2 = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([1.0, 1.0], dtype=F64)
    sphere = sphere_angles(2.0)
    torch.testing.assert_close(sectional_curvature(sphere, z, e1, e2),
                               torch.full((6,), 0.25, dtype=F64))
    u, v = torch.randn(6, 2, dtype=F64), torch.randn(6, 2, dtype=F64)
    torch.testing.assert_close(sectional_curvature(sphere, z[0], u, v),
                               torch.full((6,), 0.25, dtype=F64))
    with pytest.raises(ValueError, match="broadcast together"):
        sectional_curvature(sphere, z, u[:4], v[:4])


def test_sphere_through_a_decoder_has_curvature_one() -> None:
    """The pull-back through the embedding of the unit sphere: curvature from the decoder's
    third derivatives."""
    z = _points(2)
    torch.testing.assert_close(scalar_curvature(PullbackMetric(SphereDecoder()), z),
                               torch.full((6,), 2.0, dtype=F64))


def test_half_plane_has_curvature_minus_one() -> None:
    z = _points(2) * torch.tensor([4.0, 1.0], dtype=F64) - torch.tensor([2.0, 0.0], dtype=F64)
    torch.testing.assert_close(scalar_curvature(poincare(), z), torch.full((6,), -2.0, dtype=F64))


def test_hyperbolic_three_space_ricci_and_every_plane() -> None:
    """Upper half-space G = I / z_3^2: every sectional curvature -1, Ric = -2 G, scalar -6."""
    H3 = Metric(lambda z: torch.eye(3, dtype=z.dtype) / z[:, 2, None, None] ** 2)
    z = _points(3)
    u, v = torch.randn(6, 3, dtype=F64), torch.randn(6, 3, dtype=F64)
    torch.testing.assert_close(sectional_curvature(H3, z, u, v), torch.full((6,), -1.0, dtype=F64))
    torch.testing.assert_close(ricci(H3, z), -2 * H3.metric(z))
    torch.testing.assert_close(scalar_curvature(H3, z), torch.full((6,), -6.0, dtype=F64))


def test_polar_coordinates_are_flat() -> None:
    """diag(1, r^2): Christoffel symbols nonzero, every Riemann component zero."""
    polar = _diag(lambda z: torch.stack([torch.ones_like(z[:, 0]), z[:, 0] ** 2], -1))
    R = riemann(polar, _points(2))
    assert R.shape == (6, 2, 2, 2, 2)
    torch.testing.assert_close(R, torch.zeros_like(R))


def test_conformal_metric_against_the_laplacian() -> None:
    """G = exp(2 phi) I in 2-D has K = -exp(-2 phi) Laplacian(phi); with
    phi = 0.3 sin(x) cos(2y), Laplacian(phi) = -5 phi."""

    def phi(z: torch.Tensor) -> torch.Tensor:
        return 0.3 * z[:, 0].sin() * (2 * z[:, 1]).cos()

    metric = Metric(lambda z: torch.exp(2 * phi(z))[:, None, None] * torch.eye(2, dtype=z.dtype))
    z = torch.randn(8, 2, dtype=F64)
    expected = -torch.exp(-2 * phi(z)) * (-5 * phi(z))
    torch.testing.assert_close(0.5 * scalar_curvature(metric, z), expected)
    assert expected.abs().max() > 0.3  # a curved case, not a flat one


def _brioschi(metric_fn, z: torch.Tensor) -> torch.Tensor:
    """Gaussian curvature by Brioschi's formula from E, F, G and their first and second
    derivatives (autograd, one point)."""

    def efg(p: torch.Tensor) -> torch.Tensor:
        g = metric_fn(p[None])[0]
        return torch.stack([g[0, 0], g[0, 1], g[1, 1]])

    (E, F, G) = efg(z)
    J = torch.autograd.functional.jacobian(efg, z)  # (3, 2): d/du, d/dv
    H = torch.autograd.functional.hessian(lambda p: efg(p)[0], z), \
        torch.autograd.functional.hessian(lambda p: efg(p)[1], z), \
        torch.autograd.functional.hessian(lambda p: efg(p)[2], z)
    Eu, Ev = J[0]
    Fu, Fv = J[1]
    Gu, Gv = J[2]
    Evv, Fuv, Guu = H[0][1, 1], H[1][0, 1], H[2][0, 0]
    A = torch.stack([
        torch.stack([-Evv / 2 + Fuv - Guu / 2, Eu / 2, Fu - Ev / 2]),
        torch.stack([Fv - Gu / 2, E, F]),
        torch.stack([Gv / 2, F, G]),
    ])
    B = torch.stack([
        torch.stack([torch.zeros_like(E), Ev / 2, Gu / 2]),
        torch.stack([Ev / 2, E, F]),
        torch.stack([Gu / 2, F, G]),
    ])
    return (torch.linalg.det(A) - torch.linalg.det(B)) / (E * G - F * F) ** 2


def test_general_two_d_metric_against_brioschi() -> None:
    """A metric with off-diagonal terms and no symmetry, J^T J + I of a smooth map."""

    def fn(z: torch.Tensor) -> torch.Tensor:
        u, v = z[:, 0], z[:, 1]
        # rows of the Jacobian of (u, v) -> (sin(u v), u^2 - cos v, exp(0.3 u) v)
        J = torch.stack([
            torch.stack([v * (u * v).cos(), u * (u * v).cos()], -1),
            torch.stack([2 * u, v.sin()], -1),
            torch.stack([0.3 * (0.3 * u).exp() * v, (0.3 * u).exp()], -1),
        ], -2)
        return J.transpose(-1, -2) @ J + torch.eye(2, dtype=z.dtype)

    z = torch.randn(5, 2, dtype=F64)
    ours = 0.5 * scalar_curvature(Metric(fn), z)
    reference = torch.stack([_brioschi(fn, p) for p in z])
    torch.testing.assert_close(ours, reference)
    assert reference.abs().max() > 0.05  # curved, not flat


@pytest.fixture(scope="module")
def rhvae3() -> aetk.RHVAE:
    """An RHVAE with a 3-D latent space and a nontrivial metric (one epoch on noise)."""
    torch.manual_seed(0)
    x = (torch.rand(300, 16) > 0.5).float()
    model = aetk.build_model("rhvae", "bernoulli", in_features=16, latent_dim=3, hidden=(16,),
                             centroids=24, temperature=0.5)
    aetk.fit(model, x, epochs=1, batch_size=50, progress=False)
    return model.double()


def test_riemann_symmetries_on_an_rhvae_metric(rhvae3: aetk.RHVAE) -> None:
    """Lowered R_abce: antisymmetric in (a, b) (metric compatibility) and in (c, e), pair
    symmetric, and the first Bianchi identity."""
    metric = metric_for(rhvae3)
    z = 0.5 * torch.randn(4, 3, dtype=F64)
    R = riemann(metric, z)
    low = torch.einsum("naf,nfbce->nabce", metric.metric(z), R)
    scale = low.abs().max()
    assert scale > 1e-2
    tol = {"atol": 1e-9 * float(scale), "rtol": 0}
    torch.testing.assert_close(low, -low.transpose(1, 2), **tol)
    torch.testing.assert_close(low, -low.transpose(3, 4), **tol)
    torch.testing.assert_close(low, low.permute(0, 3, 4, 1, 2), **tol)
    torch.testing.assert_close(R + R.permute(0, 1, 3, 4, 2) + R.permute(0, 1, 4, 2, 3),
                               torch.zeros_like(R), **tol)
    ric = ricci(metric, z)
    torch.testing.assert_close(ric, ric.transpose(1, 2), **tol)


def test_rhvae_metric_is_flat_far_from_the_centroids(rhvae3: aetk.RHVAE) -> None:
    """G -> I / lambda away from the data: the curvature vanishes there, not near it."""
    metric = metric_for(rhvae3)
    far = torch.full((1, 3), 30.0, dtype=F64)
    near = rhvae3.centroid_latent[:4] + 0.1
    assert scalar_curvature(metric, far).abs().item() < 1e-12
    assert scalar_curvature(metric, near).abs().max() > 1e-2


def test_shapes_and_degenerate_planes() -> None:
    z = _points(2, n=6).reshape(2, 3, 2)
    assert scalar_curvature(poincare(), z).shape == (2, 3)
    assert riemann(poincare(), z).shape == (2, 3, 2, 2, 2, 2)
    u = torch.ones(2, 3, 2, dtype=F64)
    assert sectional_curvature(poincare(), z, u, 2 * u).isnan().all()


def test_curvature_grid_shows_progress_over_its_points(capsys: pytest.CaptureFixture) -> None:
    """progress=True: a bar over the grid's 49 points in chunks of 10 (none by default),
    the same values either way."""
    bounds = ((-1.0, 1.0), (0.5, 2.0))
    quiet = curvature_grid(poincare(), bounds, 7, chunk_size=10)
    assert capsys.readouterr().err == ""
    shown = curvature_grid(poincare(), bounds, 7, chunk_size=10, progress=True)
    err = capsys.readouterr().err
    assert "curvature: 100%" in err and "49/49" in err, err
    assert (shown["gaussian_curvature"] == quiet["gaussian_curvature"]).all()


def test_curvature_grid_matches_pointwise_values_on_the_volume_grid() -> None:
    bounds = ((-1.0, 1.0), (0.5, 2.0))
    grid = curvature_grid(sphere_angles(1.0), ((0.5, 1.0), (0.0, math.pi)), (4, 5))
    assert grid["gaussian_curvature"].dims == ("z1", "z2")
    # plain metrics are evaluated in the default dtype, float32
    torch.testing.assert_close(torch.from_numpy(grid["gaussian_curvature"].values),
                               torch.ones(4, 5, dtype=F64), rtol=1e-5, atol=1e-5)
    half = curvature_grid(poincare(), bounds, 7, chunk_size=10)
    vol = volume_grid(poincare(), bounds, 7)
    assert (half["z1"].values == vol["z1"].values).all()
    assert (half["z2"].values == vol["z2"].values).all()
    torch.testing.assert_close(torch.from_numpy(half["gaussian_curvature"].values),
                               torch.full((7, 7), -1.0, dtype=F64), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="curvature_grid needs a 2-D latent space"):
        curvature_grid(metric_for(aetk.build_model("rhvae", "bernoulli", in_features=4,
                                                   latent_dim=3, hidden=(4,))), bounds)


def test_curvature_of_float64_points_on_a_float32_model() -> None:
    """float64 tensors and numpy arrays are cast to a float32 model's dtype: scalar and
    sectional curvature answer in float32, as for float32 points (they failed in the
    model's matrix products: double != float)."""
    metric = small_rhvae_metric()
    z = 0.3 * torch.randn(4, 2)
    want = scalar_curvature(metric, z)
    for points in (z.double(), z.numpy().astype(np.float64)):
        got = scalar_curvature(metric, points)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want)
    u, v = torch.tensor([1.0, 0.0], dtype=F64), np.array([0.0, 1.0])
    sec = sectional_curvature(metric, z[0].double(), u, v)
    assert sec.dtype == torch.float32
    torch.testing.assert_close(sec, 0.5 * want[0])  # 2-D: K is half the scalar curvature


@pytest.mark.parametrize(("bounds", "message"), [
    ((-3, 3), r"^curvature_grid needs bounds \(\(z1_min, z1_max\), \(z2_min, z2_max\)\) "
              r"for a 2-D latent space, got \(-3, 3\)"),
    (((-1, 1), (-1, 1), (-1, 1)), r"for a 2-D latent space, got 3 pair\(s\)"),
    (((3, -3), (-1, 1)), r"^curvature_grid: the bounds of z1 must be finite with low < high, "
                         r"got \(3.0, -3.0\)"),
])
def test_curvature_grid_refuses_malformed_bounds(bounds, message) -> None:
    """A number, three pairs or reversed bounds: a ValueError that says what bounds are
    (they were a TypeError, an unpacking error, and a grid running backwards)."""
    with pytest.raises(ValueError, match=message):
        curvature_grid(poincare(), bounds, 3)


def test_curvature_grid_emits_no_deprecation_warning(monkeypatch) -> None:
    """torch's forward AD loads its jvp decompositions on a process's first forward-mode
    call, and they warn that torch.jit.script is deprecated (18 times): curvature_grid
    hides exactly that. The module is unloaded for the test, so that this call is the
    first (monkeypatch puts it back)."""
    import sys

    name = "torch._decomp.decompositions_for_jvp"
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.delattr(torch._decomp, "decompositions_for_jvp", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = curvature_grid(poincare(), ((-1.0, 1.0), (0.5, 2.0)), 3)
    assert name in sys.modules  # the decompositions were loaded in the call
    assert [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)] == []
    assert grid["gaussian_curvature"].values == pytest.approx(-1.0, abs=1e-5)


def test_curvature_grid_puts_each_value_at_its_own_point() -> None:
    """A curvature that varies along both axes on a 3 x 4 grid: `G = exp(2 phi) I` with
    `phi = 0.3 z1^2 + 0.2 z2` has `K = -exp(-2 phi) Laplacian phi = -0.6 exp(-2 phi)`, and
    `gaussian_curvature[i, j]` is K at `(z1[i], z2[j])`."""
    metric = Metric(lambda z: torch.exp(0.6 * z[:, 0] ** 2 + 0.4 * z[:, 1])[:, None, None]
                    * torch.eye(2, dtype=z.dtype))
    grid = curvature_grid(metric, ((-1.0, 0.5), (0.0, 2.0)), (3, 4))
    z1, z2 = np.meshgrid(grid["z1"].values, grid["z2"].values, indexing="ij")
    want = -0.6 * np.exp(-0.6 * z1**2 - 0.4 * z2)
    np.testing.assert_allclose(grid["gaussian_curvature"].values, want, rtol=1e-4, atol=1e-6)
