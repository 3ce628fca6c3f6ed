"""Calibrated decoder variance: the RBF precision by hand, its limits, what calibration
keeps and fits, and geodesics that follow a ring of codes instead of crossing its hole."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits
from torch import nn

import aetk
from aetk.decoders import GaussianDecoder, RBFVarianceDecoder
from aetk.geometry import PullbackMetric, calibrate_variance, fit_geodesics, rbf_centres

from helpers import digits

F64 = torch.float64


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def _linear_decoder(d: int = 2, n: int = 3) -> GaussianDecoder:
    """Mean (z1, z2, 0): the mean part of the pull-back is the identity."""
    net = nn.Linear(d, n, bias=False).double()
    with torch.no_grad():
        net.weight.copy_(torch.eye(n, d, dtype=F64))
    return GaussianDecoder(net, latent_dim=d, out_features=n)


def test_precision_by_hand_and_far_from_the_centres() -> None:
    centres, bandwidths = torch.randn(5, 2, dtype=F64), torch.rand(5, dtype=F64) + 0.5
    dec = RBFVarianceDecoder(_linear_decoder(), centres, bandwidths, 3, zeta=0.05)
    with torch.no_grad():
        dec.log_weight.copy_(torch.randn(5, 3, dtype=F64))
    z = torch.randn(4, 2, dtype=F64)
    c, lam = centres.numpy(), bandwidths.numpy()
    w = np.exp(dec.log_weight.detach().numpy())
    expected = np.zeros((4, 3))
    for b in range(4):
        for k in range(5):
            expected[b] += w[k] * np.exp(-lam[k] * ((z[b].numpy() - c[k]) ** 2).sum())
    np.testing.assert_allclose(dec.precision(z).detach().numpy(), expected + 0.05, rtol=1e-10)
    p = dec(z)
    torch.testing.assert_close(p.mean, torch.cat([z, torch.zeros(4, 1, dtype=F64)], 1))
    far = dec(torch.full((1, 2), 1e3, dtype=F64))
    torch.testing.assert_close(far.stddev, torch.full((1, 3), 0.05**-0.5, dtype=F64))


def test_the_weights_start_on_the_centres_device_and_dtype() -> None:
    """W is created beside its centres (here on torch's "meta" device, which stands in for a
    GPU on any machine), so a decoder built on the GPU computes its precision there."""
    centres = torch.zeros(5, 2, dtype=F64, device="meta")
    dec = RBFVarianceDecoder(_linear_decoder(), centres, torch.ones(5, dtype=F64,
                                                                    device="meta"), 3)
    assert (dec.log_weight.device.type, dec.log_weight.dtype) == ("meta", F64)
    assert dec.precision(torch.zeros(4, 2, dtype=F64, device="meta")).shape == (4, 3)


def test_centres_and_bandwidths_from_the_clusters() -> None:
    """Two tight clusters: centres at their means, lambda from their mean radius."""
    a = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    codes = torch.cat([a * 0.1, a * 0.3 + 10])
    centres, lam = rbf_centres(codes, 2, bandwidth_scale=2.0)
    order = centres[:, 0].argsort()
    torch.testing.assert_close(centres[order], torch.tensor([[0.0, 0.0], [10.0, 10.0]],
                                                            dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(lam[order], 0.5 / (2.0 * torch.tensor([0.1, 0.3], dtype=F64))**2)


def test_geodesics_go_round_a_ring_of_codes() -> None:
    """Codes on the unit circle: the calibrated metric is high in the hole (where the
    variance climbs to 1/zeta), so the geodesic between opposite codes bends round the
    ring; with the mean alone (identity metric) it would be the straight line."""
    angles = torch.linspace(0, 2 * math.pi, 33, dtype=F64)[:-1]
    ring = torch.stack([angles.cos(), angles.sin()], 1)
    centres, lam = rbf_centres(ring, 16)
    dec = RBFVarianceDecoder(_linear_decoder(), centres, lam, 3, zeta=1e-2)
    with torch.no_grad():
        dec.log_weight.fill_(math.log(50.0))
    z0, z1 = torch.tensor([[-1.0, 0.0]], dtype=F64), torch.tensor([[1.0, 0.0]], dtype=F64)
    res = fit_geodesics(PullbackMetric(dec), z0, z1, n_points=40, max_iter=1000)
    assert not bool(res.fell_back.any())
    assert res.length.item() < 0.5 * res.line_length.item()
    radius = res.points[0].norm(dim=-1)
    assert radius.min() > 0.6  # never through the hole's centre, where the line goes


@pytest.fixture(scope="module")
def gaussian_vae() -> tuple[aetk.Model, torch.Tensor]:
    torch.manual_seed(0)
    x, _ = digits("gaussian_learned", 400)
    model = aetk.build_model("vae", "gaussian_learned", in_features=64, latent_dim=2,
                             hidden=(32,))
    aetk.fit(model, x, epochs=10, batch_size=50, progress=False)
    return model.eval(), x


def test_calibration_keeps_the_mean_and_fits_the_variance(gaussian_vae) -> None:
    model, x = gaussian_vae
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cal = calibrate_variance(model, x, n_centres=16, epochs=30, zeta=1e-2)
    for k, v in model.state_dict().items():  # the original is untouched
        assert torch.equal(v, before[k])
    assert isinstance(cal.decoder, RBFVarianceDecoder)
    z = model.encode(x).mean.detach()
    torch.testing.assert_close(cal.decode(z).mean, model.decode(z).mean)
    start = calibrate_variance(model, x, n_centres=16, epochs=0)
    with torch.no_grad():
        own = model.decode(z).log_prob(x).mean()
        begun, fitted = start.decode(z).log_prob(x).mean(), cal.decode(z).log_prob(x).mean()
    assert abs(begun - own) < 3  # started at the decoder's own precision, on average
    assert fitted > begun + 10  # and the fit moved the likelihood
    far = cal.decode(torch.full((1, 2), 100.0)).stddev
    assert far.min().item() == pytest.approx(10.0, rel=1e-4)  # 1 / sqrt(zeta)


def test_calibration_refuses_other_likelihoods_and_says_how_to_save(gaussian_vae, tmp_path):
    model, x = gaussian_vae
    bern = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="Fisher"):
        calibrate_variance(bern, (x > 0.5).float())
    cal = calibrate_variance(model, x, n_centres=4, epochs=1)
    cal.save(tmp_path / "cal")
    with pytest.raises(ValueError, match=r"not made by aetk\.build_model"):
        aetk.load(tmp_path / "cal")


def test_a_likelihood_without_a_fisher_metric_is_pointed_to_the_mean_metric() -> None:
    """A user's Student-t decoder: the refusal said the Fisher pull-back accounts for the
    noise, but PullbackMetric(kind='fisher') refuses a Student-t (no KL in torch)."""

    class StudentT(aetk.decoders.Decoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 4)

        def forward(self, z: torch.Tensor) -> torch.distributions.Distribution:
            return torch.distributions.Independent(
                torch.distributions.StudentT(4.0, self.net(z), 1.0), 1)

    model = aetk.VAE(aetk.build_model("vae", "gaussian", in_features=4, latent_dim=2,
                                      hidden=(8,)).encoder, StudentT())
    x = torch.randn(20, 4)
    with pytest.raises(ValueError, match=r"not a StudentT's; a StudentT has no Fisher "
                                         r"pull-back either \(torch has no KL.*kind='mean'"):
        calibrate_variance(model, x)
    with pytest.raises(ValueError, match="no Fisher metric for StudentT"):  # as it said
        PullbackMetric(model.decoder, kind="fisher").metric(torch.zeros(1, 2))
    bern = aetk.build_model("vae", "bernoulli", in_features=4, latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"for a Bernoulli decoder the Fisher pull-back"):
        calibrate_variance(bern, (x > 0).float())


def test_the_variance_is_fitted_at_codes_drawn_from_the_encoder(monkeypatch) -> None:
    """Every z the RBF precision is trained on is a draw from q(z|x) of the x it is scored
    against: recorded with that x during the fit, (z - mean) / stddev of q(z|x) (encoded
    here again) is standard normal, not 0 (the codes' means)."""
    model = aetk.build_model("vae", "gaussian_learned", in_features=6, latent_dim=2,
                             hidden=(8,)).eval()
    x = torch.rand(120, 6)
    seen = []
    forward = RBFVarianceDecoder.forward

    def recording(self, z):
        p = forward(self, z)
        log_prob = p.log_prob

        def scored(value):
            seen.append((z.detach().clone(), value.detach().clone()))
            return log_prob(value)

        p.log_prob = scored
        return p

    monkeypatch.setattr(RBFVarianceDecoder, "forward", recording)
    calibrate_variance(model, x, n_centres=4, epochs=3, batch_size=50)
    assert len(seen) == 3 * 3  # batches of 50, 50 and 20 in each of 3 epochs
    z, xs = (torch.cat(v) for v in zip(*seen, strict=True))
    with torch.no_grad():
        q = model.encode(xs)
        u = (z - q.mean) / q.stddev
    assert u.shape == (360, 2)
    assert u.mean().abs().item() < 0.15
    assert u.std().item() == pytest.approx(1.0, abs=0.1)


def test_image_shaped_data_score_one_log_density_per_sample() -> None:
    """A mean decoder of (2, 3) images: the density sums every element, N(mean, 1/beta)
    against scipy, one value per sample; zeta must be positive (beta >= zeta > 0)."""
    net = nn.Linear(2, 6).double()
    mean_decoder = GaussianDecoder(net, latent_dim=2, output_shape=(2, 3))
    centres, bandwidths = torch.randn(4, 2, dtype=F64), torch.rand(4, dtype=F64) + 0.5
    dec = RBFVarianceDecoder(mean_decoder, centres, bandwidths, 6, zeta=0.05)
    with torch.no_grad():
        dec.log_weight.copy_(torch.randn(4, 6, dtype=F64))
    z, x = torch.randn(5, 2, dtype=F64), torch.randn(5, 2, 3, dtype=F64)
    loc = net(z).detach().numpy()
    v = np.exp(-bandwidths.numpy() * ((z.numpy()[:, None] - centres.numpy()) ** 2).sum(-1))
    beta = v @ np.exp(dec.log_weight.detach().numpy()) + 0.05
    ref = stats.norm(loc, beta**-0.5).logpdf(x.reshape(5, 6).numpy()).sum(-1)
    lp = dec(z).log_prob(x)
    assert lp.shape == (5,)
    np.testing.assert_allclose(lp.detach().numpy(), ref, rtol=1e-10)
    with pytest.raises(ValueError, match="zeta must be positive"):
        RBFVarianceDecoder(mean_decoder, centres, bandwidths, 6, zeta=0.0)


def test_a_centre_of_one_code_takes_the_median_spread() -> None:
    """Clusters of mean radius 0.1, 0.2 and 0.4, and one lone code: the lone centre, which
    has no spread of its own, gets the median one (0.2), so lambda = 1 / (2 (a 0.2)^2)."""
    a = torch.tensor([[0.0, 1.0], [0.0, -1.0], [1.0, 0.0], [-1.0, 0.0]], dtype=F64)
    codes = torch.cat([a * 0.1, a * 0.2 + 10, a * 0.4 - 10,
                       torch.tensor([[10.0, -10.0]], dtype=F64)])
    centres, lam = rbf_centres(codes, 4, bandwidth_scale=1.5)
    order = (centres[:, 0] + 0.1 * centres[:, 1]).argsort()  # -10, 0, (10, -10), 10
    torch.testing.assert_close(lam[order], 0.5 / (1.5 * torch.tensor([0.4, 0.1, 0.2, 0.2],
                                                                     dtype=F64)) ** 2)


def test_calibration_casts_the_data_and_checks_the_number_of_centres() -> None:
    """float32 data for a float64 model is cast to the model's dtype; n_centres must lie in
    [1, len(x)]."""
    model = aetk.build_model("vae", "gaussian_learned", in_features=6, latent_dim=2,
                             hidden=(8,)).double().eval()
    x = torch.rand(20, 6)
    cal = calibrate_variance(model, x, n_centres=3, epochs=1)
    assert cal.decoder.log_weight.dtype == F64
    for n in (0, 21, 2.5):
        with pytest.raises(ValueError, match=rf"n_centres must be an integer in \[1, 20\], "
                                             rf"got {n}"):
            calibrate_variance(model, x, n_centres=n, epochs=1)


def test_calibration_options_out_of_range_are_refused_by_name() -> None:
    """bandwidth_scale=0 gave a NaN metric without a word, epochs=-1 returned the
    unfitted start weights, batch_size=0 failed in torch's split, lr=0 fitted nothing,
    n_centres=8.0 failed in scikit-learn's KMeans and NaN data in its check of the codes;
    each is now a ValueError naming the option (or the data), and n_centres=3.0 is 3."""
    model = aetk.build_model("vae", "gaussian_learned", in_features=6, latent_dim=2,
                             hidden=(8,)).double().eval()
    x = torch.rand(20, 6)
    refusals = [({"bandwidth_scale": 0.0}, r"bandwidth_scale must be a finite number > 0"),
                ({"bandwidth_scale": -1.0}, r"bandwidth_scale must be a finite number > 0"),
                ({"epochs": -1}, r"epochs must be an integer >= 0, got -1"),
                ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
                ({"lr": 0.0}, r"lr must be a finite number > 0, got 0.0")]
    for options, message in refusals:
        with pytest.raises(ValueError, match=message):
            calibrate_variance(model, x, **{"n_centres": 3, "epochs": 1, **options})
    bad = x.clone()
    bad[4, 2] = math.nan
    with pytest.raises(ValueError, match=r"calibration data has 1 NaN or infinite values"):
        calibrate_variance(model, bad, n_centres=3, epochs=1)
    whole = calibrate_variance(model, x, n_centres=3.0, epochs=1)
    torch.testing.assert_close(whole.decoder.log_weight,
                               calibrate_variance(model, x, n_centres=3, epochs=1
                                                  ).decoder.log_weight, rtol=0, atol=0)


def test_centres_on_every_code_are_refused_instead_of_nan_bandwidths() -> None:
    """As many centres as codes (calibrate_variance's default 64 for 64 points), or as
    distinct codes: no cluster has a spread, and the bandwidths, the weights and the metric
    were NaN."""
    model = aetk.build_model("vae", "gaussian_learned", in_features=5, latent_dim=2,
                             hidden=(8,)).eval()
    x = torch.rand(10, 5, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="each of the 10 RBF centres sits on its codes"):
        calibrate_variance(model, x, n_centres=10, epochs=1)
    codes = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match="as many centres as distinct codes among 4"):
        rbf_centres(codes, 2)


def test_the_seed_reaches_k_means() -> None:
    """On 40 random 2-D codes, where k-means has several local optima, the centres for each
    seed are scikit-learn's KMeans(n_init=3) with that random_state, and seeds differ."""
    from sklearn.cluster import KMeans

    codes = torch.as_tensor(np.random.default_rng(0).normal(size=(40, 2)))
    found = []
    for seed in (0, 1, 2, 3):
        centres, _ = rbf_centres(codes, 6, seed=seed)
        ref = KMeans(6, n_init=3, random_state=seed).fit(codes.numpy()).cluster_centers_
        np.testing.assert_allclose(centres.numpy(), ref, rtol=0, atol=1e-12)
        found.append(centres)
    assert any(not torch.allclose(found[0], c) for c in found[1:])


def test_a_conditional_model_calibrates_with_its_conditions() -> None:
    """Each code is decoded under its own point's conditions, given as `conditions` or by
    a `model.given` around the call (which raised: all N rows' conditions met the mean
    check's first two codes); the copy keeps none of them, as a model outside `given`."""
    x, _ = digits("gaussian", n=120)
    c = torch.nn.functional.one_hot(torch.as_tensor(load_digits().target[:120]), 10).float()
    model = aetk.build_model("vae", "gaussian", in_features=64, latent_dim=2, hidden=(16,),
                             n_conditions=10).eval()
    with pytest.raises(ValueError, match="give conditions=c"):
        calibrate_variance(model, x, n_centres=4, epochs=1)
    with pytest.raises(ValueError, match="takes no conditions"):
        calibrate_variance(aetk.build_model("vae", "gaussian", in_features=64, hidden=(8,)),
                           x, n_centres=4, epochs=1, conditions=c)
    cal = calibrate_variance(model, x, n_centres=8, epochs=3, conditions=c)
    with model.given(c):
        around = calibrate_variance(model, x, n_centres=8, epochs=3)
    torch.testing.assert_close(cal.decoder.log_weight, around.decoder.log_weight)
    # the fit saw each point's conditions: a shuffled pairing fits another precision
    shuffled = calibrate_variance(model, x, n_centres=8, epochs=3, conditions=c.roll(1, 0))
    assert not torch.allclose(cal.decoder.log_weight, shuffled.decoder.log_weight)
    z = torch.zeros(3, 2)
    with pytest.raises(RuntimeError, match="given"):
        around.decode(z)
    with model.given(c[:3]), around.given(c[:3]), torch.no_grad():
        torch.testing.assert_close(around.decode(z).mean, model.decode(z).mean)
