"""The encoder metric against a loop by hand and its limits, and the Riemannian uniform
sampler against a metric whose volume element is a known Gaussian density."""

import math

import numpy as np
import pytest
import torch

import aetk
from aetk.geometry import EncoderMetric, Metric, riemannian_uniform, volume_grid

import fake_cuda
from helpers import digits

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def exact_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise distances without cdist's matrix-product shortcut, which above 25 rows puts
    rounding of about sqrt(eps) |x| (5e-4 in float32) between identical points."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _codes(n: int = 30, d: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, d, dtype=F64), 0.1 + torch.rand(n, d, dtype=F64)


def test_metric_equals_the_sum_by_hand() -> None:
    loc, scale = _codes()
    metric = EncoderMetric(loc, scale, regularization=1e-2, tau=0.05)
    z = torch.randn(7, 3, dtype=F64)
    mu, sd, pts = loc.numpy(), scale.numpy(), z.numpy()
    dist = np.sqrt(((mu[:, None] - mu[None]) ** 2).sum(-1)) + np.diag(np.full(30, np.inf))
    rho = dist.min(1).max()
    assert metric.rho == pytest.approx(rho)
    expected = np.zeros((7, 3, 3))
    for b in range(7):
        for i in range(30):
            prec = 1 / sd[i] ** 2
            w = np.exp(-(prec * (pts[b] - mu[i]) ** 2).sum() / rho**2)
            expected[b] += np.diag(prec) * w
        expected[b] += 1e-2 * np.exp(-0.05 * (pts[b] ** 2).sum()) * np.eye(3)
    np.testing.assert_allclose(metric.metric(z).numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(metric.log_volume(z).numpy(),
                               0.5 * np.log(np.linalg.det(expected)), rtol=1e-10)
    v = torch.randn(7, 2, 3, dtype=F64)
    np.testing.assert_allclose(metric.quad(z, v).numpy(),
                               np.einsum("bki,bij,bkj->bk", v.numpy(), expected, v.numpy()),
                               rtol=1e-10)


def test_float32_keeps_narrow_posteriors_accurate() -> None:
    """Posterior scales of 0.005-0.025 (precisions up to 4e4), as a 2-D MNIST VAE has: the
    float32 metric within 1e-4 of float64's."""
    loc, scale = 1.5 * torch.randn(1000, 2, dtype=F64), 0.005 + 0.02 * torch.rand(1000, 2,
                                                                                  dtype=F64)
    z = loc[:200] + 0.05 * torch.randn(200, 2, dtype=F64)  # near the codes, where it matters
    exact = EncoderMetric(loc, scale).diagonal(z)
    single = EncoderMetric(loc.float(), scale.float()).diagonal(z.float())
    torch.testing.assert_close(single.double(), exact, rtol=1e-4, atol=0)



def test_closed_form_volume_gradient_equals_autograd() -> None:
    """The sampler's force: the closed-form gradient of log sqrt(det G) against autograd
    through the float64 metric (the base class's route), near narrow posteriors (precisions
    up to 4e4) and far out where the floor's tau term pulls; float32 within 1e-4."""
    loc, scale = 1.5 * torch.randn(500, 2, dtype=F64), 0.005 + 0.02 * torch.rand(500, 2,
                                                                                 dtype=F64)
    z = torch.cat([loc[:50] + 0.02 * torch.randn(50, 2, dtype=F64),
                   8 * torch.randn(20, 2, dtype=F64)])
    metric = EncoderMetric(loc, scale, tau=0.05)
    value, grad = metric.log_volume_and_grad(z)
    want_value, want_grad = Metric._log_volume_and_grad(metric, z)
    torch.testing.assert_close(value, want_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-9, atol=1e-9)
    assert want_grad[:50].abs().max() > 10 and want_grad[50:].abs().min() > 1e-3
    single = EncoderMetric(loc.float(), scale.float(), tau=0.05)
    _, grad32 = single.log_volume_and_grad(z.float())
    torch.testing.assert_close(grad32.double(), want_grad, rtol=1e-4, atol=1e-4)

def test_default_step_moves_every_chain_of_narrow_posteriors() -> None:
    """The step scales with the kernels' width: every chain accepts moves, where a step ten
    times the width leaves most where they started."""
    loc, scale = 1.5 * torch.randn(500, 2, dtype=F64), 0.005 + 0.02 * torch.rand(500, 2,
                                                                                 dtype=F64)
    metric = EncoderMetric(loc, scale)
    width = float((metric.rho * metric.precision.rsqrt()).median())
    torch.manual_seed(1)
    z = metric.sample(300, n_steps=20)
    moved = exact_distances(z, loc).min(1).values > 0  # a chain that never moved sits on a code
    assert bool(moved.all())
    torch.manual_seed(1)
    stuck = ~(exact_distances(metric.sample(300, n_steps=20, step_size=10 * width), loc)
              .min(1).values > 0)
    assert stuck.float().mean() > 0.5


def test_precision_at_an_isolated_code_and_lambda_far_away() -> None:
    loc = torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]], dtype=F64)
    scale = torch.tensor([[0.5, 0.25], [1.0, 1.0], [1.0, 1.0]], dtype=F64)
    metric = EncoderMetric(loc, scale, rho=1.0, tau=0.0)
    expected = torch.diag(torch.tensor([4.0, 16.0], dtype=F64)) + 1e-4 * torch.eye(2, dtype=F64)
    torch.testing.assert_close(metric.metric(loc[:1])[0], expected)
    far = torch.tensor([[-40.0, -40.0]], dtype=F64)
    torch.testing.assert_close(metric.metric(far)[0], 1e-4 * torch.eye(2, dtype=F64))


def test_sampler_targets_the_volume_element() -> None:
    """G = exp(-|z|^2) I in 2-D: sqrt(det G) = exp(-|z|^2), the density of N(0, I/2)."""
    metric = Metric(lambda z: torch.exp(-(z * z).sum(-1))[:, None, None]
                    * torch.eye(2, dtype=z.dtype))
    # trajectories of length 1, well short of the half period pi / sqrt(2), so that the
    # chains do not oscillate about the mode
    z = riemannian_uniform(metric, torch.full((2000, 2), 1.5, dtype=F64), n_steps=40,
                           n_leapfrog=10, step_size=0.1)
    assert z.mean(0).abs().max() < 0.05
    torch.testing.assert_close(z.var(0), torch.full((2,), 0.5, dtype=F64), atol=0.05, rtol=0)


@pytest.fixture(scope="module")
def vae() -> tuple[aetk.Model, torch.Tensor]:
    torch.manual_seed(0)
    x, _ = digits("bernoulli", 500)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
    aetk.fit(model, x, epochs=15, batch_size=50, progress=False)
    return model.eval(), x


def test_samples_stay_where_the_codes_are(vae) -> None:
    """Prior draws fall into holes between the codes; the Riemannian uniform ones do not."""
    model, x = vae
    metric = EncoderMetric.from_model(model, x, n_centroids=200)
    assert metric.loc.shape == (200, 2) and metric.latent_dim == 2
    codes = model.encode(x).mean.detach()
    # the chosen centroids are codes of the data
    assert exact_distances(metric.loc, codes).min(1).values.max() < 1e-6
    torch.manual_seed(1)
    geometric, prior = metric.sample(300), torch.randn(300, 2)
    assert bool(geometric.isfinite().all())
    near = torch.cdist(geometric, codes).min(1).values.median()
    far = torch.cdist(prior, codes).min(1).values.median()
    assert near < 0.5 * far
    assert model.decode(geometric).mean.shape == (300, 64)
    grid = volume_grid(metric, ((-3, 3), (-3, 3)), 5)  # dtype and dimension from the buffers
    assert np.isfinite(grid["log_volume"].values).all()


def test_numpy_data_of_another_dtype(vae) -> None:
    model, x = vae
    from_array = EncoderMetric.from_model(model, x.numpy().astype(np.float64))
    torch.testing.assert_close(from_array.loc, EncoderMetric.from_model(model, x).loc)


def test_bad_input_is_refused(vae) -> None:
    _, x = vae
    loc, scale = _codes()
    with pytest.raises(ValueError, match="stochastic encoder"):
        EncoderMetric(loc, torch.zeros_like(scale))
    with pytest.raises(ValueError, match="must both be"):
        EncoderMetric(loc, scale[:, :2])
    with pytest.raises(ValueError, match="regularization"):
        EncoderMetric(loc, scale, regularization=0.0)
    with pytest.raises(ValueError, match="rho must be positive"):
        EncoderMetric(torch.zeros(4, 2), torch.ones(4, 2))
    ae = aetk.build_model("ae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="deterministic"):
        EncoderMetric.from_model(ae, x)
    with pytest.raises(ValueError, match="step_size"):
        riemannian_uniform(EncoderMetric(loc, scale), loc[:3], step_size=0.0)


def test_options_out_of_range_are_refused_by_name(vae) -> None:
    """regularization=NaN or tau=NaN gave a NaN metric and rho=inf a constant one without a
    word, regularization="a" failed comparing a str with an int, from_model(batch_size=0)
    in torch's split and riemannian_uniform from one point (d,) with an IndexError inside
    the sampler; each is now a ValueError naming the option."""
    _, x = vae
    loc, scale = _codes()
    refusals = [({"regularization": math.nan}, r"regularization must be a finite number > 0"),
                ({"regularization": "a"}, r"regularization must be a finite number > 0, "
                                          r"got 'a'"),
                ({"tau": math.nan}, r"tau must be a finite number >= 0, got nan"),
                ({"rho": math.inf}, r"rho must be a finite number > 0, got inf"),
                ({"rho": -1.0}, r"rho must be a finite number > 0")]
    for options, message in refusals:
        with pytest.raises(ValueError, match=message):
            EncoderMetric(loc, scale, **options)
    model, _ = vae
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 0"):
        EncoderMetric.from_model(model, x, batch_size=0)
    with pytest.raises(ValueError, match=r"start must hold the chains' first points, \(n, d\), "
                                         r"got shape \(3,\)"):
        riemannian_uniform(EncoderMetric(loc, scale), loc[0])


def test_rho_is_the_largest_nearest_neighbour_distance_beyond_one_chunk() -> None:
    """1100 codes, more than the 1024 rows of a distance chunk: rho is the isolated last
    code's distance to its nearest neighbour (scipy's KD-tree), which the second chunk
    finds only if it leaves out each of its rows' own distance, not the first rows'."""
    from scipy.spatial import cKDTree

    loc = torch.rand(1100, 2, dtype=F64)
    loc[-1] = torch.tensor([3.0, 3.0], dtype=F64)
    scale = torch.full_like(loc, 0.1)
    nearest = cKDTree(loc.numpy()).query(loc.numpy(), k=2)[0][:, 1]
    assert nearest.argmax() == 1099 and nearest.max() > 2.5
    assert EncoderMetric(loc, scale).rho == pytest.approx(nearest.max(), rel=1e-12)


def test_conditional_codes_are_encoded_with_their_own_rows_conditions() -> None:
    """`from_model` on a conditional VAE in batches of 7 rows: each code is q(z|x_i, c_i),
    as encoding every row alone under its own condition gives."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,),
                             n_conditions=3).double().eval()
    x = torch.rand(20, 64, dtype=F64)
    c = torch.nn.functional.one_hot(torch.arange(20) % 3, 3).double()
    metric = EncoderMetric.from_model(model, x, conditions=c, batch_size=7)
    with torch.no_grad():
        rows = []
        for i in range(20):
            with model.given(c[i]):
                rows.append(model.encode(x[i:i + 1]))
    torch.testing.assert_close(metric.loc, torch.cat([q.mean for q in rows]))
    torch.testing.assert_close(metric.precision, torch.cat([q.stddev for q in rows]) ** -2)
    with torch.no_grad(), model.given(c.flip(0)):  # another condition, another code
        assert (model.encode(x).mean - metric.loc).abs().max() > 1e-3


def test_chains_start_at_random_codes_and_cover_separated_clusters() -> None:
    """Two clusters of narrow codes 20 apart, the second with 3 of 12 codes: chains start
    at random codes, so about a quarter of them end in the second cluster (HMC with the
    default step cannot cross the gap, where the volume is lambda's)."""
    loc = torch.cat([0.3 * torch.randn(9, 2, dtype=F64),
                     torch.tensor([20.0, 0.0], dtype=F64) + 0.3 * torch.randn(3, 2, dtype=F64)])
    metric = EncoderMetric(loc, torch.full_like(loc, 0.05))
    torch.manual_seed(2)
    z = metric.sample(400, n_steps=5, n_leapfrog=5)
    second = (z[:, 0] > 10).double().mean()
    assert 0.15 < second < 0.35


class _FullCovarianceEncoder(torch.nn.Module):
    """`N(mu(x), L L^T)` with a strong correlation, for a user's model."""

    latent_dim, input_shape = 2, (3,)

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.distributions.MultivariateNormal:
        tril = torch.tensor([[0.1, 0.0], [0.5, 0.1]]).expand(len(x), 2, 2)
        return torch.distributions.MultivariateNormal(self.lin(x), scale_tril=tril)


def test_a_full_covariance_encoder_is_refused_not_read_as_diagonal() -> None:
    """Before, its stddev (the marginal scales) made the metric, the posteriors'
    correlations dropped in silence."""
    model = aetk.VAE(_FullCovarianceEncoder(),
                     aetk.decoders.GaussianDecoder(latent_dim=2, out_features=3, hidden=(4,)))
    with pytest.raises(ValueError, match=r"diagonal posteriors, but VAE's encoder returns a "
                                         r"MultivariateNormal with a full covariance"):
        EncoderMetric.from_model(model, torch.rand(10, 3))


def test_dataframes_of_data_and_codes(vae) -> None:
    """from_model(DataFrame) failed ("expected sequence of length ..."), from_codes of the
    pipeline's code tables with torch's "could not determine the shape"."""
    import pandas as pd

    model, x = vae
    expected = EncoderMetric.from_model(model, x[:40])
    torch.testing.assert_close(EncoderMetric.from_model(model, pd.DataFrame(x[:40].numpy())).loc,
                               expected.loc)
    loc, scale = (pd.DataFrame(t.numpy()) for t in (expected.loc, expected.precision.rsqrt()))
    torch.testing.assert_close(EncoderMetric.from_codes(loc, scale).precision,
                               expected.precision)


@pytest.mark.parametrize("given", ["tensor", "numpy"])
def test_from_codes_of_device_codes_and_cpu_scales_keeps_centroids(given, monkeypatch):
    """Codes on a GPU (simulated, tests/fake_cuda.py) and scales on the CPU or in numpy:
    with n_centroids the scales were indexed by the kept rows' indices on the GPU (torch:
    "indices should be either on cpu or on the same device"), while all N codes took them.
    The metric is the CPU's, on the device."""
    loc, scale = _codes()
    want = EncoderMetric.from_codes(loc, scale, n_centroids=10)
    with fake_cuda.install(monkeypatch):
        got = EncoderMetric.from_codes(loc.to("cuda"), scale if given == "tensor"
                                       else scale.numpy(), n_centroids=10)
        assert got.loc.is_cuda and got.precision.is_cuda
        torch.testing.assert_close(got.loc.cpu(), want.loc, rtol=0, atol=0)
        torch.testing.assert_close(got.precision.cpu(), want.precision, rtol=0, atol=0)
