"""Every decoder's log_prob against scipy.stats (or the textbook formula) in float64, and
user-made decoders working in every model with no other code."""

import math
import warnings
from types import MappingProxyType

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import special, stats
from sklearn.datasets import load_digits
from torch import distributions as D
from torch import nn

import aetk
from aetk import decoders as dec
from aetk.distributions import log_prob, mean
from aetk.encoders import DeterministicEncoder, GaussianEncoder
from aetk.models import Critic, Discriminator
from aetk.train import evaluate

B, LATENT, FEATURES = 5, 2, 4


def _decoder(cls, **kw):
    """A decoder on a tiny float64 MLP with weights scaled up (so parameters spread widely)."""
    torch.manual_seed(3)
    d = cls(latent_dim=LATENT, out_features=FEATURES, hidden=(6,), **kw).double()
    with torch.no_grad():
        for p in d.parameters():
            p.mul_(3.0)
    return d


def _z():
    return torch.randn(B, LATENT, dtype=torch.float64)


def _raw(d, z):
    """The network's raw output, split into parameter blocks, as numpy."""
    return [b.detach().numpy() for b in d.params(z)]


def test_bernoulli_binary_targets_vs_scipy():
    d, z = _decoder(dec.BernoulliDecoder), _z()
    (logits,) = _raw(d, z)
    x = torch.randint(0, 2, (B, FEATURES)).double()
    ref = stats.bernoulli(special.expit(logits)).logpmf(x.numpy()).sum(-1)
    np.testing.assert_allclose(d(z).log_prob(x).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(mean(d(z)).detach().numpy(), special.expit(logits), rtol=1e-12)


def test_bernoulli_fractional_targets_give_the_bce():
    d, z = _decoder(dec.BernoulliDecoder), _z()
    (logits,) = _raw(d, z)
    x = torch.rand(B, FEATURES, dtype=torch.float64)
    p, xn = special.expit(logits), x.numpy()
    bce = (xn * np.log(p) + (1 - xn) * np.log1p(-p)).sum(-1)
    np.testing.assert_allclose(d(z).log_prob(x).detach().numpy(), bce, rtol=1e-10)


def test_bernoulli_is_stable_for_extreme_logits():
    d = dec.BernoulliDecoder(nn.Identity(), latent_dim=2, out_features=2)
    lp = d(torch.tensor([[200.0, -200.0]])).log_prob(torch.tensor([[0.0, 1.0]]))
    assert lp.item() == pytest.approx(-400.0)


@pytest.mark.parametrize("sigma", [1.0, 0.3])
def test_gaussian_fixed_sigma_vs_scipy(sigma):
    d, z = _decoder(dec.GaussianDecoder, sigma=sigma), _z()
    (mu,) = _raw(d, z)
    x = torch.randn(B, FEATURES, dtype=torch.float64)
    ref = stats.norm(mu, sigma).logpdf(x.numpy()).sum(-1)
    np.testing.assert_allclose(d(z).log_prob(x).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(mean(d(z)).detach().numpy(), mu, rtol=1e-12)


def test_gaussian_sigma_must_be_positive():
    with pytest.raises(ValueError, match="sigma must be positive"):
        dec.GaussianDecoder(latent_dim=2, out_features=3, sigma=0.0)


@pytest.mark.parametrize("split", [False, True])
def test_learned_gaussian_vs_scipy_with_the_clamp(split):
    d, z = _decoder(dec.LearnedGaussianDecoder, split=split), _z()
    with torch.no_grad():  # push some log sigmas beyond both ends of the clamp
        last = (d.network.log_sigma if split else d.network)[-1]
        last.bias[-FEATURES:] = torch.tensor([-30.0, 30.0, 0.0, 0.0], dtype=torch.float64)
    mu, log_sigma = _raw(d, z)
    assert (log_sigma < -6).any() and (log_sigma > 4).any()
    sigma = np.exp(np.clip(log_sigma, -6.0, 4.0))
    x = torch.from_numpy(mu + sigma * np.random.default_rng(0).standard_normal(mu.shape))
    ref = stats.norm(mu, sigma).logpdf(x.numpy()).sum(-1)
    p = d(z)
    np.testing.assert_allclose(p.log_prob(x).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(p.stddev.detach().numpy(), sigma, rtol=1e-12)


def test_learned_gaussian_split_uses_two_networks():
    d = dec.LearnedGaussianDecoder(latent_dim=2, out_features=3, hidden=(4,), split=True)
    assert isinstance(d.network.mean, nn.Sequential)
    assert isinstance(d.network.log_sigma, nn.Sequential)
    assert d.network.mean[0].weight.data_ptr() != d.network.log_sigma[0].weight.data_ptr()


def test_categorical_integer_and_one_hot_targets_vs_scipy():
    k = 3
    d, z = _decoder(dec.CategoricalDecoder, n_classes=k), _z()
    (logits,) = _raw(d, z)  # (B, FEATURES, k)
    assert logits.shape == (B, FEATURES, k)
    probs = special.softmax(logits, axis=-1)
    x = torch.randint(0, k, (B, FEATURES))
    one_hot = nn.functional.one_hot(x, k).double()
    ref = stats.multinomial.logpmf(one_hot.numpy(), n=1, p=probs).sum(-1)
    p = d(z)
    np.testing.assert_allclose(p.log_prob(x.double()).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(p.log_prob(one_hot).detach().numpy(), ref, rtol=1e-10)
    weights = torch.softmax(torch.randn(B, FEATURES, k, dtype=torch.float64), -1)
    soft = (weights.numpy() * np.log(probs)).sum((-2, -1))  # rows of class weights
    np.testing.assert_allclose(p.log_prob(weights).detach().numpy(), soft, rtol=1e-10)
    np.testing.assert_array_equal(mean(p).numpy(), logits.argmax(-1))


def test_categorical_one_hot_lookalike_indices_warn_and_genuine_ones_do_not():
    """A model built with `input_shape=(5, 3), n_classes=3` took one-hot data of 5 variables
    as 15 variables of 3 classes, each 0 or 1, and trained in silence; its check now warns
    (naming the model that takes them), and index data that are not all one-hot stay quiet:
    a class 2 anywhere, or one vector without its single 1."""
    d = dec.CategoricalDecoder(latent_dim=2, output_shape=(5, 3), n_classes=3, hidden=(4,))
    g = torch.Generator().manual_seed(0)
    one_hot = nn.functional.one_hot(torch.randint(0, 3, (6, 5), generator=g), 3).float()
    with pytest.warns(dec.OneHotLookalikeWarning,
                      match=r"train data look one-hot: .* one 1 in each of their 30 vectors, "
                            r".*aetk\.build_model\(\.\.\., input_shape=\(5,\), n_classes=3\)"):
        d.check_data(one_hot, "train")
    model = aetk.build_model("vae", "categorical", input_shape=(5, 3), n_classes=3,
                             hidden=(4,))
    with pytest.warns(dec.OneHotLookalikeWarning):
        aetk.fit(model, one_hot, epochs=1, batch_size=6, progress=False)
    genuine = torch.randint(0, 3, (6, 5, 3), generator=g).float()
    no_single_one = one_hot.clone()
    no_single_one[2, 1] = 0
    other_axis = dec.CategoricalDecoder(latent_dim=2, output_shape=(5, 2), n_classes=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.check_data(genuine, "train")
        d.check_data(no_single_one, "train")
        other_axis.check_data(one_hot[..., :2], "train")  # a last axis of 2 for 3 classes
        d.check_data(nn.functional.one_hot(genuine.long(), 3), "train")  # one-hot already


def test_categorical_needs_two_classes():
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        dec.CategoricalDecoder(latent_dim=2, out_features=3, n_classes=1)


def test_poisson_vs_scipy():
    d, z = _decoder(dec.PoissonDecoder), _z()
    (out,) = _raw(d, z)
    rate = np.logaddexp(0, out) + 1e-8  # softplus, and the documented floor
    x = torch.poisson(torch.from_numpy(rate))
    ref = stats.poisson(rate).logpmf(x.numpy()).sum(-1)
    np.testing.assert_allclose(d(z).log_prob(x).detach().numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(mean(d(z)).detach().numpy(), rate, rtol=1e-12)


def test_poisson_gradient_stays_finite_when_the_rate_underflows():
    d = dec.PoissonDecoder(latent_dim=2, out_features=3, hidden=(8,))
    with torch.no_grad():
        d.network[-1].bias.fill_(-200.0)  # softplus(-200) underflows to 0 in float32
    z = torch.randn(4, 2, requires_grad=True)
    d(z).log_prob(torch.zeros(4, 3)).sum().backward()
    assert torch.isfinite(z.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in d.parameters())


@pytest.mark.parametrize("dispersion", ["feature", "sample"])
def test_negative_binomial_vs_scipy(dispersion):
    """Mean mu, inverse dispersion r: scipy's nbinom(n=r, p=r/(r+mu)), variance mu + mu^2/r."""
    d, z = _decoder(dec.NegativeBinomialDecoder, dispersion=dispersion), _z()
    if dispersion == "feature":
        with torch.no_grad():
            d.log_r.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        (out,) = _raw(d, z)
        r = np.broadcast_to(np.exp(d.log_r.detach().numpy()), out.shape)
    else:
        out, log_r = _raw(d, z)
        r = np.exp(log_r)
    mu = np.logaddexp(0, out) + 1e-8
    x = np.random.default_rng(1).negative_binomial(r, r / (r + mu)).astype(float)
    ref = stats.nbinom(r, r / (r + mu)).logpmf(x).sum(-1)
    p = d(z)
    np.testing.assert_allclose(p.log_prob(torch.from_numpy(x)).detach().numpy(), ref, rtol=1e-9)
    np.testing.assert_allclose(p.mean.detach().numpy(), mu, rtol=1e-9)
    np.testing.assert_allclose(p.variance.detach().numpy(), mu + mu**2 / r, rtol=1e-9)


@pytest.mark.parametrize("log_r", [10.0, 14.0, 16.0])
def test_float32_negative_binomial_of_large_dispersion_matches_scipy(log_r):
    """A nearly Poisson feature (a learned log_r grows on one): torch's float32 NB took
    lgamma(x + r) - lgamma(r), which cancels, 0.01 nats off at r = e^10, 0.3 at e^14 and a
    positive log-probability at e^16; Stirling's series keeps it to float32's rounding."""
    d = dec.NegativeBinomialDecoder(latent_dim=1, out_features=4, hidden=())
    out = torch.tensor([50.0, 2.0, 0.3, 900.0])
    x = torch.tensor([[40.0, 3.0, 0.0, 1000.0], [55.0, 0.0, 1.0, 870.0]])
    with torch.no_grad():
        d.network[-1].weight.zero_()
        d.network[-1].bias.copy_(out)
        d.log_r.fill_(log_r)
        lp = d(torch.zeros(2, 1)).base_dist.log_prob(x)
    mu, r = np.logaddexp(0, out.double().numpy()) + 1e-8, np.exp(log_r)
    ref = stats.nbinom(r, r / (r + mu)).logpmf(x.double().numpy())
    assert lp.dtype == torch.float32
    # lgamma(1001) ~ 5912 alone rounds by 5e-4 in float32; the old errors were 0.01 to 2
    np.testing.assert_allclose(lp.numpy(), ref, rtol=0, atol=5e-4)


def test_negative_binomial_of_huge_dispersion_is_the_poisson() -> None:
    """A float64 NB with r = e^40 or e^100 scores counts as the Poisson of its mean, to the
    x^2 / 2r they differ by: torch's lgamma difference was about 1e3 nats off at e^40 and
    NaN past r = 3e38. Gradients stay exact across the series' threshold r = 100."""
    d = dec.NegativeBinomialDecoder(latent_dim=1, out_features=4, hidden=()).double()
    out = torch.tensor([1e5, 5.0, 50.0, 0.3], dtype=torch.float64)
    x = torch.tensor([[1e5, 5.0, 40.0, 0.0], [99e3, 0.0, 3.0, 2.0]], dtype=torch.float64)
    poisson = stats.poisson(np.logaddexp(0, out.numpy()) + 1e-8).logpmf(x.numpy())
    for log_r in (40.0, 100.0):
        with torch.no_grad():
            d.network[-1].weight.zero_()
            d.network[-1].bias.copy_(out)
            d.log_r.fill_(log_r)
            lp = d(torch.zeros(2, 1, dtype=torch.float64)).base_dist.log_prob(x)
        np.testing.assert_allclose(lp.numpy(), poisson, rtol=1e-9, atol=1e-7)
    counts = torch.tensor([0.0, 3.0, 40.0, 1000.0], dtype=torch.float64)
    mu = torch.tensor([0.3, 2.0, 50.0, 900.0], dtype=torch.float64, requires_grad=True)
    log_r = torch.tensor([1.0, 4.5, 4.7, 20.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, lr: dec.nb_log_prob(counts, m, lr), (mu, log_r))


@pytest.mark.parametrize("dtype, log_r", [(torch.float32, 89.0), (torch.float32, 1e4),
                                          (torch.float64, 710.0)])
def test_negative_binomial_past_exp_overflow_is_the_poisson(dtype, log_r) -> None:
    """log_r past exp's overflow (88.7 in float32, 709.8 in float64), which a learned
    dispersion reaches on a Poisson-like feature: the mean r exp(logits) was inf (NaN at
    1e4), the log-probabilities and gradients NaN, and sampling raised. Now the mean is mu,
    the variance mu, and log-probabilities the Poisson's, with finite gradients."""
    d = dec.NegativeBinomialDecoder(latent_dim=1, out_features=4, hidden=()).to(dtype)
    out = torch.tensor([40.0, 2.0, 0.3, 900.0], dtype=dtype)
    x = torch.tensor([[40.0, 3.0, 0.0, 1000.0], [55.0, 0.0, 1.0, 870.0]], dtype=dtype)
    with torch.no_grad():
        d.network[-1].weight.zero_()
        d.network[-1].bias.copy_(out)
        d.log_r.fill_(log_r)
    p = d(torch.zeros(2, 1, dtype=dtype)).base_dist
    mu = np.logaddexp(0, out.double().numpy()) + 1e-8
    rtol, atol = (1e-6, 5e-4) if dtype == torch.float32 else (1e-12, 1e-9)
    np.testing.assert_allclose(p.mean.detach().numpy()[0], mu, rtol=rtol)
    np.testing.assert_allclose(p.variance.detach().numpy()[0], mu, rtol=rtol)
    lp = p.log_prob(x)
    np.testing.assert_allclose(lp.detach().numpy(), stats.poisson(mu).logpmf(x.double().numpy()),
                               rtol=0, atol=atol)
    lp.sum().backward()
    assert all(torch.isfinite(q.grad).all() for q in d.parameters())
    assert torch.isfinite(p.sample()).all()


def test_stirling_tail_is_lgammas_remainder_to_float64() -> None:
    """`_stirling_tail(y)`, the remainder of lgamma after Stirling's leading terms, against
    mpmath's log-gamma at 40 digits for y >= 100 (where nb_log_prob uses it): its docstring
    promises 1e-17; a series cut one term short (y^-3) is 8e-14 off at y = 100."""
    import mpmath

    ys = [100.0, 101.5, 150.0, 1e3, 1e6]
    with mpmath.workdps(40):
        ref = [float(mpmath.loggamma(y) - ((y - mpmath.mpf(0.5)) * mpmath.log(y) - y
                                            + mpmath.log(2 * mpmath.pi) / 2)) for y in ys]
    got = dec._stirling_tail(torch.tensor(ys, dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-12, atol=1e-17)


def test_negative_binomial_draws_have_the_mean_and_variance_it_states() -> None:
    """Draws of the decoder's NB (torch's sampler, fed r and the logits log(mu / r)) against
    the mean mu and variance mu + mu^2 / r that it states, and scipy's P(x = 0): logits of
    another sign would draw counts of mean mu r^2 while log_prob and mean still said mu."""
    torch.manual_seed(0)
    mu = torch.tensor([0.4, 3.0, 20.0, 7.0], dtype=torch.float64)
    r = torch.tensor([0.7, 0.5, 2.0, 5.0], dtype=torch.float64)
    log_r = r.log()
    p = dec._NegativeBinomial(mu, log_r)
    n = 200_000
    x = p.sample((n,))
    var = mu + mu**2 / r
    np.testing.assert_allclose(p.variance.numpy(), var.numpy(), rtol=1e-12)
    # the sample mean within 5 standard errors, the variance within 5% (n = 2e5)
    assert ((x.mean(0) - mu).abs() < 5 * (var / n).sqrt()).all()
    np.testing.assert_allclose(x.var(0).numpy(), var.numpy(), rtol=0.05)
    zero = stats.nbinom(r.numpy(), (r / (r + mu)).numpy()).pmf(0)
    np.testing.assert_allclose((x == 0).double().mean(0).numpy(), zero, atol=5e-3)


def test_negative_binomial_rejects_unknown_dispersion():
    with pytest.raises(ValueError, match="dispersion must be 'feature' or 'sample'"):
        dec.NegativeBinomialDecoder(latent_dim=2, out_features=3, dispersion="gene")



def test_multinomial_scores_each_row_with_its_own_total_vs_scipy():
    """log Mult(x; sum_i x_i, softmax(logits)) per row, rows of very different totals; the
    point prediction for data x is the proportions at x's totals, the mean `total_count`
    times the proportions, and a draw has `total_count` counts."""
    d, z = _decoder(dec.MultinomialDecoder, total_count=50), _z()
    (out,) = _raw(d, z)
    prob = special.softmax(out, -1)
    x = np.stack([np.random.default_rng(i).multinomial(n, prob[i])
                  for i, n in enumerate([0, 1, 30, 1000, 100_000])]).astype(float)
    ref = [stats.multinomial(int(row.sum()), prob[i]).logpmf(row) for i, row in enumerate(x)]
    p = d(z)
    np.testing.assert_allclose(log_prob(p, torch.from_numpy(x)).detach().numpy(), ref,
                               rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mean(p, like=torch.from_numpy(x)).detach().numpy(),
                               prob * x.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(mean(p).detach().numpy(), 50 * prob, rtol=1e-12)
    assert (p.sample().sum(-1) == 50).all()
    with pytest.raises(ValueError, match="needs counts"):
        d.check_data(torch.tensor([[0.5, 1.0, 0.0, 2.0]]), "train")
    with pytest.raises(ValueError, match="one vector of counts"):
        dec.MultinomialDecoder(latent_dim=2, output_shape=(4, 4))
    with pytest.raises(ValueError, match="total_count"):
        dec.MultinomialDecoder(latent_dim=2, out_features=4, total_count=0)


def test_a_multinomial_latent_space_ignores_the_depth_that_a_poisson_one_encodes():
    """Two compositions of 30 features, each sample at a depth from 50 to 2,000 counts
    (log-uniform): a 1-D Poisson VAE spends its code on the depth (rank correlation 1.0
    with log depth, 0.07 with the type, when written), a multinomial one on the composition
    (0.01 and 0.87)."""
    g = torch.Generator().manual_seed(0)
    kinds = torch.randint(0, 2, (600,), generator=g)
    profiles = torch.softmax(torch.randn(2, 30, generator=g) * 1.5, -1)
    depth = (10 ** (1.7 + 1.6 * torch.rand(600, generator=g))).round()
    x = torch.stack([torch.multinomial(profiles[k], int(n), replacement=True,
                                       generator=g).bincount(minlength=30)
                     for k, n in zip(kinds, depth, strict=True)]).float()
    corr = {}
    for likelihood in ("poisson", "multinomial"):
        torch.manual_seed(0)
        model = aetk.build_model("vae", likelihood, in_features=30, latent_dim=1, hidden=(32,))
        aetk.fit(model, x, epochs=30, batch_size=64, lr=1e-3, progress=False, device="cpu")
        code = model.latent_mean(x).detach().squeeze(-1).numpy()
        corr[likelihood] = (abs(stats.spearmanr(code, depth.log()).statistic),
                            abs(stats.spearmanr(code, kinds).statistic))
    assert corr["poisson"][0] > 0.9 and corr["poisson"][1] < 0.3, corr
    assert corr["multinomial"][0] < 0.2 and corr["multinomial"][1] > 0.8, corr


def test_count_likelihoods_encode_log_counts_by_default(tmp_path):
    """The encoder of a count likelihood sees log(1 + x) unless told otherwise; the choice is
    saved, and a model saved without the key (before this default) loads without it."""
    from aetk.nets import LogInputs

    def logs(model):
        return any(isinstance(m, LogInputs) for m in model.encoder.modules())

    for likelihood, expected in [("poisson", True), ("negative_binomial", True),
                                 ("multinomial", True), ("bernoulli", False),
                                 ("categorical", False)]:
        extra = {"n_classes": 3} if likelihood == "categorical" else {}
        model = aetk.build_model("vae", likelihood, in_features=4, hidden=(8,), **extra)
        assert logs(model) is expected, likelihood
        assert model.build_spec.get("log_inputs", False) is expected
    on = aetk.build_model("vae", "bernoulli", in_features=4, hidden=(8,), log_inputs=True)
    off = aetk.build_model("vae", "poisson", in_features=4, hidden=(8,), log_inputs=False)
    assert logs(on) and not logs(off) and "log_inputs" not in off.build_spec
    x = torch.tensor([[0.0, 3.0, 20.0, -1.0]])
    torch.testing.assert_close(LogInputs()(x), torch.tensor([[1.0, 4.0, 21.0, 2.0]]).log())
    zeros = torch.zeros(3, requires_grad=True)  # sparse pseudo-inputs start at 0: not frozen
    LogInputs()(zeros).sum().backward()
    assert torch.equal(zeros.grad, torch.ones(3))
    with pytest.raises(ValueError, match="negative values, but the encoder takes log"):
        aetk.fit(aetk.build_model("vae", "gaussian", in_features=4, hidden=(8,),
                                  log_inputs=True),
                 torch.tensor([[1.0, 2.0, -1.0, 0.0]] * 4), epochs=1, batch_size=2,
                 progress=False)
    # embed too: standardised counts (a plausible slip) gave the codes of |x| in silence
    counts = torch.poisson(torch.full((6, 4), 3.0, dtype=torch.float64).exp()).float()
    standardised = (counts - counts.mean(0)) / counts.std(0)
    model = aetk.build_model("vae", "poisson", in_features=4, hidden=(8,))
    assert model.embed(counts).shape == (6, 2) and model.embed(counts.long()).shape == (6, 2)
    with pytest.raises(ValueError, match="embed data has negative values, but the encoder"):
        model.embed(standardised)
    assert off.embed(standardised).shape == (6, 2)  # without log_inputs: any values
    # a paired model's inputs need not be counts: no log by default
    paired = aetk.build_model("vae", "multinomial", in_features=4, out_features=3,
                              hidden=(8,))
    assert not logs(paired)
    counts = torch.tensor([[100.0, 100.0, 100.0, 100.0]])
    assert paired.reconstruct(counts).sum().item() == pytest.approx(1.0)  # not x_in's total
    on.save(tmp_path / "on")
    off.save(tmp_path / "off")  # as an older aetk saved every model
    assert logs(aetk.load(tmp_path / "on")) and not logs(aetk.load(tmp_path / "off"))


def test_deep_count_samples_train_with_log_inputs():
    """Totals from 500 to 50,000 counts: with the encoder on raw counts the loss is NaN in
    the first batch (when written); on log counts the Poisson VAE trains."""
    g = torch.Generator().manual_seed(0)
    depth = 10 ** (2.7 + 2 * torch.rand(256, 1, generator=g))
    x = torch.poisson(depth * torch.softmax(torch.randn(256, 50, generator=g), -1),
                      generator=g)
    history = {}
    for log_inputs in (False, True):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "poisson", in_features=50, hidden=(64,),
                                 log_inputs=log_inputs)
        try:
            history[log_inputs] = aetk.fit(model, x, epochs=5, batch_size=32, progress=False,
                                           device="cpu")["train_loss"]
        except aetk.TrainingDiverged:
            history[log_inputs] = None
    assert history[True] is not None and np.isfinite(history[True]).all()
    assert history[True].iloc[-1] < history[True].iloc[0]
    assert history[False] is None or history[False].iloc[-1] > 10 * history[True].iloc[-1]

def test_multidimensional_event_shape_sums_every_element():
    d = dec.PoissonDecoder(latent_dim=2, output_shape=(2, 3), hidden=(4,)).double()
    z = _z()
    p = d(z)
    x = torch.poisson(p.mean.detach())
    assert p.log_prob(x).shape == (B,)
    ref = stats.poisson(p.mean.detach().numpy()).logpmf(x.numpy()).reshape(B, -1).sum(-1)
    np.testing.assert_allclose(p.log_prob(x).detach().numpy(), ref, rtol=1e-10)


def test_deterministic_decoder_reshapes_the_network_output():
    d = dec.DeterministicDecoder(nn.Identity(), latent_dim=6, output_shape=(2, 3))
    z = torch.arange(12.0).reshape(2, 6)
    np.testing.assert_array_equal(d(z).numpy(), z.reshape(2, 2, 3).numpy())


# User-made decoders ------------------------------------------------------------------


class SeedPoissonDecoder(aetk.Decoder):
    """The seed paper's example: the network returns lambda > 0 directly; forward returns a
    plain (not Independent) Poisson."""

    def __init__(self, latent_dim: int, out_features: int) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(),
                                     nn.Linear(16, out_features), nn.Softplus())

    def forward(self, z):
        return D.Poisson(self.network(z))


class UserNormalDecoder(aetk.Decoder):
    """Independent(Normal) with a per-feature learned scale: no check_data, nothing else."""

    def __init__(self, latent_dim: int, out_features: int) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Linear(latent_dim, 16), nn.Tanh(),
                                     nn.Linear(16, out_features))
        self.log_scale = nn.Parameter(torch.zeros(out_features))

    def forward(self, z):
        return D.Independent(D.Normal(self.network(z), self.log_scale.exp()), 1)


def test_seed_paper_poisson_equation_2():
    """ln p(x|lambda) = sum_i x_i log lambda_i - lambda_i - log Gamma(x_i + 1)."""
    d = SeedPoissonDecoder(2, 4).double()
    z = _z()
    lam = d.network(z).detach().numpy()
    x = np.random.default_rng(2).poisson(lam).astype(float)
    eq2 = (x * np.log(lam) - lam - special.gammaln(x + 1)).sum(-1)
    np.testing.assert_allclose(log_prob(d(z), torch.from_numpy(x)).detach().numpy(), eq2,
                               rtol=1e-10)


def test_user_decoder_in_an_ae_is_minus_the_mean_log_likelihood():
    d = SeedPoissonDecoder(2, 4).double()
    enc = DeterministicEncoder(nn.Linear(4, 2), latent_dim=2).double()
    model = aetk.AE(enc, d)
    x = torch.poisson(torch.full((B, 4), 3.0, dtype=torch.float64))
    lam = d.network(enc(x)).detach().numpy()
    xn = x.numpy()
    eq2 = (xn * np.log(lam) - lam - special.gammaln(xn + 1)).sum(-1)
    assert model.loss(x).loss.item() == pytest.approx(-eq2.mean(), rel=1e-10)


def _digit_counts():
    x = torch.tensor(load_digits().data, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(x), generator=g)
    return x[idx[:600]], x[idx[600:900]]


def _user_model(name, decoder):
    torch.manual_seed(0)
    enc_cls = DeterministicEncoder if name == "ae" else GaussianEncoder
    enc = enc_cls(in_features=64, latent_dim=2, hidden=(32,))
    if name == "ae":
        return aetk.AE(enc, decoder)
    if name == "vae":
        return aetk.VAE(enc, decoder)
    if name == "beta_vae":
        return aetk.VAE(enc, decoder, beta=4.0)
    if name == "infovae":
        return aetk.InfoVAE(enc, decoder)
    if name == "iwae":
        return aetk.IWAE(enc, decoder)
    if name == "vampprior":
        return aetk.VampPrior(enc, decoder, n_components=10)
    if name == "beta_tcvae":
        return aetk.BetaTCVAE(enc, decoder)
    if name == "factorvae":
        return aetk.FactorVAE(enc, decoder, Discriminator(2, (16,)))
    if name == "dipvae":
        return aetk.DIPVAE(enc, decoder)
    return aetk.InfoMaxVAE(enc, decoder, Critic(64, 2, (16,), "relu"))


@pytest.mark.parametrize("decoder_cls", [SeedPoissonDecoder, UserNormalDecoder])
@pytest.mark.parametrize("name", ["ae", "vae", "beta_vae", "beta_tcvae", "infovae",
                                  "infomaxvae", "factorvae", "dipvae", "iwae", "vampprior"])
def test_user_decoder_trains_in_every_model(name, decoder_cls):
    """Three epochs on digit pixel counts lower the validation reconstruction term by at
    least 20% (measured: Poisson ~678 -> ~340 nats per image, Normal ~1990 -> ~1000)."""
    train, val = _digit_counts()
    torch.manual_seed(0)
    model = _user_model(name, decoder_cls(2, 64))
    model.on_fit_start(train)  # what fit does first: e.g. the beta-TCVAE learns N here
    before = evaluate(model, val.split(100))["val_reconstruction"]
    hist = aetk.fit(model, train, val, epochs=3, batch_size=32, lr=3e-3, progress=False,
                    device="cpu")
    assert np.isfinite(hist.to_numpy(dtype=float)).all()
    assert hist["val_reconstruction"].iloc[-1] < 0.8 * before


class _UserBernoulli(torch.nn.Module):
    """A user's Bernoulli likelihood, no check_data of its own; `validate_args=False` as
    for the cross-entropy of grey levels."""

    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 4)

    def forward(self, z):
        return D.Independent(D.Bernoulli(logits=self.lin(z), validate_args=False), 1)


def test_a_user_decoder_refuses_data_outside_its_support_before_training():
    """Counts for a user's Bernoulli decoder: before, a finite, meaningless loss (or, with
    torch's argument checks on, its error inside the first step); now a ValueError naming
    the row before training. Grey levels in [0, 1] stay accepted, as the built-in
    Bernoulli takes them."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _UserBernoulli())
    counts = torch.tensor([[0.0, 1.0, 1.0, 0.0], [3.0, 0.0, 7.0, 1.0]])
    with pytest.raises(ValueError, match=r"train data has 2 values outside the support of the "
                                         r"decoder's Bernoulli distribution \(Interval\(lower_"
                                         r"bound=0.0, upper_bound=1.0\)\); first at row 1, "
                                         r"column 0: 3.0; give data"):
        aetk.fit(model, counts, epochs=1, batch_size=2, progress=False)
    grey = torch.rand(8, 4)
    aetk.fit(model, grey, epochs=1, batch_size=4, progress=False)


class _ValidatingUserBernoulli(_UserBernoulli):
    """A user's Bernoulli with torch's argument checks on, its default."""

    def forward(self, z):
        return D.Independent(D.Bernoulli(logits=self.lin(z)), 1)


def test_grey_levels_for_a_validating_user_bernoulli_are_refused_before_training():
    """The support check took grey levels for a user's Bernoulli, as the built-in takes
    them, but torch's Bernoulli validates its arguments by default and refused them inside
    the first step ("Expected value argument ... within the support (Boolean())"). Now they
    are refused before training, saying that validate_args=False scores them; 0/1 data
    train."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _ValidatingUserBernoulli())
    with pytest.raises(ValueError, match=r"train data has 32 values outside the support of the "
                                         r"decoder's Bernoulli distribution \(Boolean\(\)\) "
                                         r"\(.*build it with validate_args=False.*\); first at "
                                         r"row 0, column 0: 0\.\d+; give data"):
        aetk.fit(model, torch.rand(8, 4), epochs=1, batch_size=4, progress=False)
    hist = aetk.fit(model, torch.rand(8, 4).round(), epochs=1, batch_size=4, progress=False)
    assert np.isfinite(hist["train_loss"]).all()


class _UserConditionalPoisson(torch.nn.Module):
    """A user's conditional Poisson likelihood, its network wrapped in `nets.Conditioned` as
    core-api.md says, no check_data of its own."""

    latent_dim, n_conditions = 2, 2

    def __init__(self) -> None:
        super().__init__()
        self.net = aetk.nets.Conditioned(torch.nn.Linear(4, 4), 2)

    def forward(self, z):
        rate = torch.nn.functional.softplus(self.net(z)) + 1e-6
        return D.Independent(D.Poisson(rate, validate_args=False), 1)


def test_a_user_conditional_decoder_refuses_data_outside_its_support_too():
    """Fractions for a user's conditional Poisson decoder trained in silence (a finite,
    meaningless loss; torch's own error inside the first step where it validates): the
    support check skipped every conditional model. Now they are refused before training,
    as for a decoder without conditions, and counts train, also checked inside a
    `given` block of several rows (log_marginal's)."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,),
                                          n_conditions=2), _UserConditionalPoisson())
    c = torch.nn.functional.one_hot(torch.arange(8) % 2, 2).float()
    fractions = torch.rand(8, 4) * 3
    with pytest.raises(ValueError, match=r"train data has \d+ values outside the support of the "
                                         r"decoder's Poisson distribution \(IntegerGreater.*\); "
                                         r"first at row 0, column \d: \d\.\d+; give data"):
        aetk.fit(model, (fractions, c), epochs=1, batch_size=4, progress=False)
    counts = fractions.floor()
    hist = aetk.fit(model, (counts, c), epochs=1, batch_size=4, progress=False)
    assert np.isfinite(hist["train_loss"]).all()
    with model.given(c):
        assert aetk.log_marginal(model, counts, n_samples=3).isfinite().all()
        with pytest.raises(ValueError, match="outside the support"):
            aetk.log_marginal(model, fractions, n_samples=3)
        assert model.conditions() is not None and len(model.conditions()) == 8  # kept


class _LogNormalFromGaussianBlocks(dec.LearnedGaussianDecoder):
    """A user's log-normal likelihood that reuses the learned Gaussian's network and
    parameter blocks (`params`), with a `forward` of its own."""

    def forward(self, z):
        mu, log_sigma = self.params(z)
        return D.Independent(D.LogNormal(mu, log_sigma.clamp(-6, 4).exp()), 1)


def test_a_subclass_of_a_builtin_with_its_own_distribution_is_checked_as_a_users():
    """A subclass of LearnedGaussianDecoder returning a LogNormal was taken for the
    built-in Gaussian: negative data skipped the support check and failed inside torch's
    validation in the first step ("Expected value argument ... to be within the support"),
    and positive data far from unit scale got the warning about "the Gaussian
    likelihood". Now its support is checked before training and no Gaussian advice is
    given; the built-ins keep their own checks and warning."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=5, latent_dim=2, hidden=(8,)),
                     _LogNormalFromGaussianBlocks(latent_dim=2, out_features=5, hidden=(8,)))
    with pytest.raises(ValueError, match=r"train data has \d+ values outside the support of the "
                                         r"decoder's LogNormal distribution \(GreaterThan\(lower_"
                                         r"bound=0.0\)\); first at row \d+, column \d: -"):
        aetk.fit(model, torch.randn(16, 5), epochs=1, batch_size=8, progress=False)
    positive = 50 * torch.rand(16, 5) + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", aetk.DataScaleWarning)
        aetk.fit(model, positive, epochs=1, batch_size=8, progress=False)
    assert dec.builtin_likelihood(dec.LearnedGaussianDecoder(latent_dim=2, out_features=5))
    assert not dec.builtin_likelihood(model.decoder)
    gaussian = aetk.VAE(aetk.GaussianEncoder(in_features=5, latent_dim=2, hidden=(8,)),
                        dec.LearnedGaussianDecoder(latent_dim=2, out_features=5, hidden=(8,)))
    with pytest.warns(aetk.DataScaleWarning, match="the Gaussian likelihood"):
        aetk.fit(gaussian, positive, epochs=1, batch_size=8, progress=False)


class _UserMultinomial(_UserBernoulli):
    """A user's multinomial of any total: torch's log_prob ignores total_count."""

    def forward(self, z):
        return D.Multinomial(logits=self.lin(z), validate_args=False)


def test_a_user_multinomial_takes_counts_of_any_total():
    """Counts of totals 2 and 11 for a user's Multinomial(logits=...) (total_count 1, which
    its log_prob does not read) were refused as outside its support; negative or
    fractional counts still are."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _UserMultinomial())
    model.check_data(torch.tensor([[0.0, 1.0, 1.0, 0.0], [3.0, 0.0, 7.0, 1.0]]), "train")
    with pytest.raises(ValueError, match=r"train data has 1 values outside the support .*; "
                                         r"first at row 1, column 1: 0.5; give data"):
        model.check_data(torch.tensor([[0.0, 1.0, 1.0, 0.0], [3.0, 0.5, 7.0, 1.0]]), "train")


class _SquaredError(D.Distribution):
    """A user's distribution of its own: a log_prob and a mean, no declared support (torch's
    base class raises NotImplementedError for it)."""

    arg_constraints = MappingProxyType({})

    def __init__(self, loc):
        self.loc = loc
        super().__init__(loc.shape[:1], validate_args=False)

    def log_prob(self, value):
        return -0.5 * (value - self.loc).square().sum(-1)

    @property
    def mean(self):
        return self.loc


class _DependentSquaredError(_SquaredError):
    support = D.constraints.dependent


class _UserSquaredError(_UserBernoulli):
    def __init__(self, family) -> None:
        super().__init__()
        self.family = family

    def forward(self, z):
        return self.family(self.lin(z))


@pytest.mark.parametrize("family", [_SquaredError, _DependentSquaredError])
def test_a_user_distribution_without_a_checkable_support_trains(family):
    """A user's distribution that declares no support failed fit with torch's bare
    NotImplementedError, one whose support is `constraints.dependent` with "Cannot
    determine validity of dependent constraint": the support check had nothing to read.
    Now the data are left unchecked and the model trains."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _UserSquaredError(family))
    hist = aetk.fit(model, torch.randn(16, 4), epochs=2, batch_size=8, progress=False)
    assert np.isfinite(hist["train_loss"]).all()
    assert aetk.log_marginal(model, torch.randn(3, 4), n_samples=4).isfinite().all()


class _ValidatingUserMultinomial(_UserBernoulli):
    """A user's multinomial of 5 trials with torch's argument checks on, its default."""

    def forward(self, z):
        return D.Multinomial(5, logits=self.lin(z))


def test_counts_past_a_validating_user_multinomials_total_are_refused_before_training():
    """The support check took counts of any total for a user's Multinomial, whose
    log_prob scores them, but torch validates its arguments by default and refused totals
    above total_count inside the first step ("Expected value argument ... within the
    support (Multinomial())"). Now they are refused before training, saying why; totals
    up to 5 train."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _ValidatingUserMultinomial())
    counts = torch.tensor([[0.0, 1.0, 1.0, 0.0], [3.0, 0.0, 2.0, 1.0]])
    with pytest.raises(ValueError, match=r"train data has 1 vectors outside the support of the "
                                         r"decoder's Multinomial distribution .* takes "
                                         r"totals up to its total_count 5: build it with "
                                         r"validate_args=False.*; first at row 1: the vector "
                                         r"\[3.0, 0.0, 2.0, 1.0\]; give data"):
        aetk.fit(model, counts, epochs=1, batch_size=2, progress=False)
    counts[1, 0] = 2.0
    hist = aetk.fit(model, counts, epochs=1, batch_size=2, progress=False)
    assert np.isfinite(hist["train_loss"]).all()


@pytest.mark.parametrize("constraint", [
    D.constraints.unit_interval, D.constraints.positive, D.constraints.nonnegative,
    D.constraints.nonnegative_integer, D.constraints.positive_integer,
    D.constraints.interval(-1.0, 2.0), D.constraints.half_open_interval(0.0, 1.0),
    D.constraints.less_than(1.0), D.constraints.integer_interval(0, 3)])
def test_the_support_checks_fast_path_agrees_with_torchs_check(constraint) -> None:
    """The extremes-only test of an interval (14x faster than `check` on a batch) says
    "inside" exactly where torch's own check of every value does, at the bounds too."""
    from aetk.decoders import _within_bounds

    torch.manual_seed(0)
    values = [torch.rand(64, 30).round(), torch.rand(64, 30), 3 * torch.rand(64, 30),
              torch.randint(0, 4, (64, 30)).float(), torch.ones(5, 3), torch.zeros(5, 3),
              -torch.rand(4, 2), torch.full((3, 3), 2.0), torch.full((3, 3), 3.5)]
    for y in values:
        assert _within_bounds(constraint, y) == bool(constraint.check(y).all()), (constraint, y)


class _UserBeta(aetk.Decoder):
    """The reviewer's user Beta likelihood: softplus concentrations, torch's argument
    checks on (its default), no check_data of its own."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2 * n)

    def forward(self, z: torch.Tensor) -> D.Independent:
        a, b = nn.functional.softplus(self.net(z)).chunk(2, -1)
        return D.Independent(D.Beta(a + 1e-3, b + 1e-3), 1)


@pytest.mark.parametrize("model_cls", [aetk.VAE, aetk.HVAE])
@pytest.mark.parametrize(("row", "col", "value", "side"),
                         [(150, 3, 0.0, "lower"), (7, 8, 1.0, "upper")])
def test_an_exact_end_of_a_user_betas_support_is_refused_before_training(
        model_cls, row: int, col: int, value: float, side: str) -> None:
    """An exact 0 or 1 is inside torch's Beta support [0, 1] and passed the check, but has
    no finite Beta log-density: as a VAE a later batch's loss became -inf ("try a smaller
    learning rate"), as an HVAE torch's ValueError, with a 550-line tensor dump, came from
    the leapfrog step. Now a ValueError before training names the row, the column and the
    value, and says why; the squeezed data train."""
    torch.manual_seed(0)
    x = torch.rand(300, 10) * 0.98 + 0.01
    x[row, col] = value
    model = model_cls(aetk.GaussianEncoder(in_features=10, latent_dim=2, hidden=(32,)),
                      _UserBeta(10))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=(
            rf"^train data has 1 values at {value:g}, the {side} end of the support "
            r"Interval\(lower_bound=0.0, upper_bound=1.0\) of the decoder's Beta distribution, "
            r"where its density is infinite or zero \(as a Beta's at exactly 0 or 1, a Gamma's "
            rf"at 0\), so the loss would be infinite; first at row {row}, column {col}: "
            rf"{value}; move the data off the ends \(e.g. x \* \(1 - 2e-3\) \+ 1e-3 squeezes "
            r"\[0, 1\] into \[0.001, 0.999\]\), or choose a likelihood that scores them$")):
        aetk.fit(model, x, epochs=2, batch_size=50, progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))
    hist = aetk.fit(model, x * (1 - 2e-3) + 1e-3, epochs=1, batch_size=50, progress=False)
    assert np.isfinite(hist["train_loss"]).all()


class _ConstantBeta(_UserBeta):
    """A user Beta whose first concentration is the constant 1: a density of finite value
    at 0 whatever the parameters."""

    def forward(self, z: torch.Tensor) -> D.Independent:
        b = nn.functional.softplus(self.net(z)[..., :self.net.out_features // 2]) + 1e-3
        return D.Independent(D.Beta(torch.ones_like(b), b), 1)


class _UserExponential(_UserBeta):
    def forward(self, z: torch.Tensor) -> D.Independent:
        rate = nn.functional.softplus(self.net(z)[..., :self.net.out_features // 2]) + 1e-3
        return D.Independent(D.Exponential(rate), 1)


class _UserGamma(_UserBeta):
    def forward(self, z: torch.Tensor) -> D.Independent:
        a, b = nn.functional.softplus(self.net(z)).chunk(2, -1)
        return D.Independent(D.Gamma(a + 1e-3, b + 1e-3), 1)


def test_an_end_of_the_support_is_judged_by_its_density_not_by_the_support_alone() -> None:
    """Not for the Beta only, and not for every end of a support: an exact 0 is refused
    where its density is infinite (a Gamma's), and passes and trains where it is finite
    (a Beta whose first concentration is the constant 1, an exponential, a user
    Bernoulli's grey levels 0 and 1)."""
    torch.manual_seed(0)
    x = torch.rand(40, 6) * 0.9 + 0.05
    x[7, 4] = x[9, 4] = 0.0

    def fit(decoder: nn.Module, data: torch.Tensor) -> pd.DataFrame:
        model = aetk.VAE(aetk.GaussianEncoder(in_features=data.shape[1], latent_dim=2,
                                              hidden=(8,)), decoder)
        return aetk.fit(model, data, epochs=3, batch_size=10, progress=False)

    with pytest.raises(ValueError, match=r"^train data has 2 values at 0, the lower end of "
                                         r"the support GreaterThanEq\(lower_bound=0.0\) of "
                                         r"the decoder's Gamma distribution, .* first at row 7, "
                                         r"column 4: 0.0; move the data off the ends, or"):
        fit(_UserGamma(6), x)
    for decoder in (_ConstantBeta(6), _UserExponential(6), _UserBernoulli()):
        data = x[:, :4].clone() if isinstance(decoder, _UserBernoulli) else x
        if isinstance(decoder, _UserBernoulli):
            data[3, 1], data[5, 0] = 1.0, 0.0
        assert np.isfinite(fit(decoder, data)["train_loss"]).all(), decoder


class _UserSphereBernoulli(_UserBernoulli):
    """A user Bernoulli of z / |z| without argument checks: NaN logits at z = 0 only."""

    def forward(self, z: torch.Tensor) -> D.Independent:
        return super().forward(z / z.norm(dim=-1, keepdim=True))


def test_a_decoder_undefined_at_the_origin_is_not_judged_by_its_density_there() -> None:
    """The check of the support's ends reads the decoder at z = 0, where a decoder of
    z / |z| has NaN parameters and so NaN densities at the ends 0 and 1, which say nothing
    of the data: they are left to training (it never meets z = 0), as a decoder that fails
    there is."""
    torch.manual_seed(0)
    x = torch.rand(40, 4).round()
    model = aetk.VAE(aetk.GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     _UserSphereBernoulli())
    assert model.decoder(torch.zeros(1, 2)).base_dist.logits.isnan().all()
    hist = aetk.fit(model, x, epochs=2, batch_size=10, progress=False)
    assert np.isfinite(hist["train_loss"]).all()
    x[2, 1] = 3.0  # the support is still checked
    with pytest.raises(ValueError, match=r"first at row 2, column 1: 3.0; give data"):
        model.check_data(x, "train")


class _UserPoisson(_UserBeta):
    """A user Poisson likelihood of rows of any shape (`shape`)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__(math.prod(shape))
        self.shape = shape

    def forward(self, z: torch.Tensor) -> D.Independent:
        rate = nn.functional.softplus(self.net(z)[..., :math.prod(self.shape)]) + 1e-3
        return D.Independent(D.Poisson(rate.reshape(len(z), *self.shape),
                                       validate_args=False), len(self.shape))


def test_a_user_decoders_support_error_names_the_row_the_column_and_the_value() -> None:
    """A fraction among a user Poisson decoder's counts was named by its row alone, with
    the row's first five values, which need not hold it ("train data row 42 ... the row
    begins [0.0, 0.0, 1.0, 2.0, 9.0]"); README promises the row and the column, as the
    built-in decoders' errors give them. Now: the row, the column (and the index in a row
    of several axes) and the value, and a DataFrame's labels of them."""
    torch.manual_seed(0)
    x = torch.poisson(torch.full((100, 20), 3.0))
    x[42, 17] = 2.5
    model = aetk.VAE(aetk.GaussianEncoder(in_features=20, latent_dim=2, hidden=(8,)),
                     _UserPoisson((20,)))
    with pytest.raises(ValueError, match=r"^train data has 1 values outside the support of the "
                                         r"decoder's Poisson distribution \(IntegerGreaterThan\("
                                         r"lower_bound=0\)\); first at row 42, column 17: 2.5; "
                                         r"give data"):
        aetk.fit(model, x, epochs=1, batch_size=50, progress=False)
    frame = pd.DataFrame(x.numpy(), index=[f"cell{i}" for i in range(100)],
                         columns=[f"gene{j}" for j in range(20)])
    with pytest.raises(ValueError, match=r"first at row 42, column 17: 2.5; give data .*"
                                         r"\(the DataFrame's row 'cell42', column 'gene17'\)$"):
        aetk.fit(model, frame, epochs=1, batch_size=50, progress=False)
    images = torch.poisson(torch.full((10, 2, 3, 4), 3.0))
    images[6, 1, 2, 1] = -1.0
    with pytest.raises(ValueError, match=r"^train data has 1 values outside .*; first at row 6, "
                                         r"column 21 \(index \(1, 2, 1\) in a row of shape "
                                         r"\(2, 3, 4\)\): -1.0; give data"):
        dec.check_support(_UserPoisson((2, 3, 4)), images, "train", 2)


def test_a_decoder_network_of_the_wrong_width_is_named():
    """A built-in decoder given a network of another output width failed in torch's reshape
    ("shape '[4, 2, 5]' is invalid for input of size 20"): a learned-variance Gaussian's
    network must give mean and log sigma, a categorical's every class's logit."""
    z = torch.randn(4, 2)
    for cls, kw, width, needs in [
            (dec.BernoulliDecoder, {}, 6, r"needs 5: the data shape \(5,\)$"),
            (dec.LearnedGaussianDecoder, {}, 5, r"needs 10: 2 parameter blocks of the data"),
            (dec.CategoricalDecoder, {"n_classes": 3}, 5, r"needs 15: .*, times 3 classes")]:
        with pytest.raises(ValueError, match=rf"{cls.__name__}'s network returned {width} "
                                             rf"values per row, but it {needs}"):
            cls(nn.Linear(2, width), latent_dim=2, out_features=5, **kw)(z)
    assert dec.LearnedGaussianDecoder(nn.Linear(2, 10), latent_dim=2, out_features=5)(
        z).batch_shape == (4,)
