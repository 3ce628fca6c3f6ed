"""Densities, the Gaussian KL, the kernels and the MMD estimator against independent
references (scipy, Monte Carlo, closed forms) in float64."""

import math
from types import MappingProxyType

import numpy as np
import pytest
import torch
from scipy import stats
from torch import distributions as D

import aetk
from aetk import distributions as dist
from aetk.encoders import GaussianEncoder
from aetk.kernels import gaussian_kernel, imq_kernel, mmd


def _diag_gaussian(b=4, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(b, d, generator=g, dtype=torch.float64)
    sigma = torch.rand(b, d, generator=g, dtype=torch.float64) * 1.5 + 0.2
    return mu, sigma, D.Independent(D.Normal(mu, sigma), 1)


def test_kl_closed_form_matches_formula_and_torch():
    mu, sigma, q = _diag_gaussian()
    kl = dist.kl_to_standard_normal(q)
    m, s = mu.numpy(), sigma.numpy()
    hand = 0.5 * (s**2 + m**2 - 1 - 2 * np.log(s)).sum(-1)
    np.testing.assert_allclose(kl.numpy(), hand, rtol=1e-12)
    prior = D.Independent(D.Normal(torch.zeros_like(mu), torch.ones_like(sigma)), 1)
    np.testing.assert_allclose(kl.numpy(), D.kl_divergence(q, prior).numpy(), rtol=1e-12)


def test_kl_closed_form_matches_monte_carlo():
    *_, q = _diag_gaussian()
    z = q.sample((100_000,))  # (S, B, d)
    log_ratio = q.log_prob(z) - dist.standard_normal_log_prob(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    kl = dist.kl_to_standard_normal(q)
    assert torch.all((mc - kl).abs() < 4 * se), (mc, kl, se)


def test_standard_normal_log_prob_vs_scipy():
    z = torch.randn(5, 3, dtype=torch.float64)
    ref = stats.multivariate_normal(np.zeros(3), np.eye(3)).logpdf(z.numpy())
    np.testing.assert_allclose(dist.standard_normal_log_prob(z).numpy(), ref, rtol=1e-12)


def test_encoder_density_is_the_models_md_formula():
    """log q(z|x) = -1/2 sum (z-mu)^2/sigma^2 - sum log sigma - d/2 log 2 pi, sigma = exp(head)."""
    enc = GaussianEncoder(in_features=4, latent_dim=3, hidden=(5,)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    q = enc(x)
    out = enc.network(x).detach().numpy()
    mu, sigma = out[:, :3], np.exp(out[:, 3:])
    np.testing.assert_allclose(q.mean.detach().numpy(), mu, rtol=1e-12)
    np.testing.assert_allclose(q.stddev.detach().numpy(), sigma, rtol=1e-12)
    z = q.rsample().detach()
    ref = stats.norm(mu, sigma).logpdf(z.numpy()).sum(-1)
    hand = (-0.5 * ((z.numpy() - mu) / sigma) ** 2 - np.log(sigma)).sum(-1) - 1.5 * np.log(
        2 * np.pi
    )
    np.testing.assert_allclose(q.log_prob(z).detach().numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(hand, ref, rtol=1e-12)


def test_log_prob_sums_event_dims_of_plain_distributions():
    rate = torch.rand(4, 2, 3, dtype=torch.float64) + 0.5
    x = torch.poisson(rate)
    ref = stats.poisson(rate.numpy()).logpmf(x.numpy()).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(dist.log_prob(D.Poisson(rate), x).numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(
        dist.log_prob(D.Independent(D.Poisson(rate), 2), x).numpy(), ref, rtol=1e-12
    )


def test_mean_is_the_point_prediction():
    logits = torch.tensor([[[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]]])
    assert dist.mean(D.Independent(D.Categorical(logits=logits), 1)).tolist() == [[1, 0]]
    p = D.Independent(D.Bernoulli(logits=torch.tensor([[0.0, math.log(3.0)]])), 1)
    np.testing.assert_allclose(dist.mean(p).numpy(), [[0.5, 0.75]], rtol=1e-6)


# Kernels and MMD -------------------------------------------------------------------

A = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=torch.float64)
B = torch.tensor([[1.0, 0.0], [3.0, -1.0], [0.5, 0.5]], dtype=torch.float64)


@pytest.mark.parametrize("rho", [1.0, 0.5, 2.0])
def test_kernel_values_by_hand(rho):
    sq = np.array([[1.0, 10.0, 0.5], [4.0, 13.0, 2.5]])  # ||a - b||^2 worked out by hand
    d = 2
    np.testing.assert_allclose(
        gaussian_kernel(A, B, rho).numpy(), np.exp(-sq / (rho**2 * d)), rtol=1e-12
    )
    c = 2 * d * rho**2
    np.testing.assert_allclose(imq_kernel(A, B, rho).numpy(), c / (c + sq), rtol=1e-12)


def _mmd_by_loops(x, y, k, unbiased):
    x, y = x.numpy(), y.numpy()
    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j or not unbiased)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j or not unbiased)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    dn, dm = (n * (n - 1), m * (m - 1)) if unbiased else (n * n, m * m)
    return kxx / dn + kyy / dm - 2 * kxy / (n * m)


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd_estimator_by_hand(kernel, unbiased):
    """Kernel summed over two scales; U-statistic drops i == j, the V-statistic keeps it."""
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 1
    scales = (0.5, 2.0)

    def k(a, b):
        sq, d = float(((a - b) ** 2).sum()), len(a)
        if kernel == "gaussian":
            return sum(math.exp(-sq / (s**2 * d)) for s in scales)
        return sum(2 * d * s**2 / (2 * d * s**2 + sq) for s in scales)

    got = mmd(x, y, kernel, scales, unbiased).item()
    assert got == pytest.approx(_mmd_by_loops(x, y, k, unbiased), rel=1e-10)


def test_mmd_unknown_kernel_lists_valid_ones():
    with pytest.raises(ValueError, match=r"unknown kernel 'rbf'.*gaussian, imq"):
        mmd(A, B, "rbf")


def _mmd_draws(shift, unbiased, kernel="gaussian", draws=400, n=16, d=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    vals = [
        mmd(
            torch.randn(n, d, generator=g, dtype=torch.float64),
            torch.randn(n, d, generator=g, dtype=torch.float64) + shift,
            kernel,
            unbiased=unbiased,
        ).item()
        for _ in range(draws)
    ]
    v = np.array(vals)
    return v.mean(), v.std(ddof=1) / np.sqrt(len(v))


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
def test_mmd_unbiased_is_zero_in_expectation_biased_is_positive(kernel):
    """Identical distributions, 400 draws of n = 16: the U-statistic's mean is within 4
    standard errors of zero; the V-statistic's mean is more than 10 standard errors above."""
    mean_u, se_u = _mmd_draws(0.0, True, kernel)
    assert abs(mean_u) < 4 * se_u
    mean_v, se_v = _mmd_draws(0.0, False, kernel)
    assert mean_v > 10 * se_v > 0


def test_mmd_of_shifted_gaussians_matches_population_value():
    """For N(0, I) vs N(delta, I), k = exp(-|u|^2 / (2 s^2)) with s^2 = rho^2 d / 2:
    MMD^2 = 2 (s^2 / (s^2 + 2))^(d/2) (1 - exp(-|delta|^2 / (2 (s^2 + 2))))."""
    d, shift = 2, 1.0
    s2 = d / 2
    delta2 = d * shift**2
    truth = 2 * (s2 / (s2 + 2)) ** (d / 2) * (1 - math.exp(-delta2 / (2 * (s2 + 2))))
    mean_u, se_u = _mmd_draws(shift, True)
    assert mean_u > 0
    assert abs(mean_u - truth) < 4 * se_u, (mean_u, truth, se_u)


def test_encoder_scale_is_exp_of_the_log_sigma_head_unclamped():
    """sigma = exp(log sigma head) exactly, also for heads far from 0 (-12 .. 12): the spec's
    encoder has no clamp, so its density matches scipy's there too."""
    head = torch.from_numpy(np.random.default_rng(3).uniform(-1, 1, (4, 6)))
    head[:, 3:] = torch.tensor([-12.0, 0.0, 12.0]) * torch.tensor([[1.0], [0.5], [-0.5], [-1.0]])
    q = GaussianEncoder(torch.nn.Identity(), latent_dim=3)(head)
    mu, sigma = head[:, :3].numpy(), np.exp(head[:, 3:].numpy())
    np.testing.assert_allclose(q.stddev.numpy(), sigma, rtol=1e-12)
    z = mu + sigma * np.random.default_rng(4).standard_normal(mu.shape)
    ref = stats.norm(mu, sigma).logpdf(z).sum(-1)
    np.testing.assert_allclose(q.log_prob(torch.from_numpy(z)).numpy(), ref, rtol=1e-10)


def test_a_collapsed_posterior_keeps_a_finite_kl_and_log_marginal():
    """log sigma = -60 in float32, where sigma^2 underflows to 0: the KL was inf (torch's
    Independent takes stddev as the root of the variance) and log_marginal NaN (log q of
    (z - mu)^2 / sigma^2 = 0/0). Both against float64 hand values; z is mu to float32."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=5, latent_dim=2, hidden=(8,))
    head = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[2:] = -60.0
        head.weight[2:] = 0.0
    x = torch.randn(4, 5)
    with torch.no_grad():
        mu = model.encoder(x).mean
        mean_x = model.decoder(mu).mean.double()
    mu = mu.double()
    log_lik = -0.5 * (x.double() - mean_x).square().sum(-1) - 2.5 * math.log(2 * math.pi)
    kl = 0.5 * (mu.square() - 1).sum(-1) + 2 * 60.0
    log_prior = -0.5 * mu.square().sum(-1) - math.log(2 * math.pi)
    log_q = 2 * 60.0 - math.log(2 * math.pi)
    np.testing.assert_allclose(model.loss(x).terms["kl"].item(), kl.mean().item(), rtol=1e-6)
    np.testing.assert_allclose(aetk.log_marginal(model, x, n_samples=8).numpy(),
                               (log_lik + log_prior - log_q).numpy(), rtol=1e-5)


def test_importance_weights_vs_scipy_and_their_gradient_vs_finite_differences():
    """log w = log p(x|z) + log N(z; 0, I) - log q(z|x) for S draws against scipy, and its
    gradient in q's parameters (through z = mu + sigma eps and through q's own density)
    against finite differences: IWAE's encoder gradient needs both paths."""
    rng = np.random.default_rng(5)
    s, b, d, f = 3, 4, 2, 3
    eps, x = torch.from_numpy(rng.standard_normal((s, b, d))), rng.standard_normal((b, f))
    w = torch.from_numpy(rng.standard_normal((d, f)))

    def decoder(z):  # a linear Gaussian decoder, x ~ N(z W, 0.7^2 I)
        return D.Independent(D.Normal(z @ w, 0.7), 1)

    def log_w(mu, log_sigma):
        q = D.Independent(D.Normal(mu, log_sigma.exp()), 1)
        return dist.log_importance_weights(q, decoder, torch.from_numpy(x),
                                           mu + log_sigma.exp() * eps)

    mu = torch.from_numpy(rng.standard_normal((b, d))).requires_grad_()
    log_sigma = torch.from_numpy(0.3 * rng.standard_normal((b, d))).requires_grad_()
    log_lik, lw = log_w(mu, log_sigma)
    m, sd = mu.detach().numpy(), np.exp(log_sigma.detach().numpy())
    z = m + sd * eps.numpy()
    lik = stats.norm(z @ w.numpy(), 0.7).logpdf(x).sum(-1)
    ref = lik + stats.norm.logpdf(z).sum(-1) - stats.norm(m, sd).logpdf(z).sum(-1)
    np.testing.assert_allclose(log_lik.detach().numpy(), lik, rtol=1e-12)
    np.testing.assert_allclose(lw.detach().numpy(), ref, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda a, c: log_w(a, c)[1], (mu, log_sigma))


def test_a_draw_from_a_deterministic_decoder_is_its_output():
    """A deterministic decoder's p(x|z) is a point mass at its output: `generate` with
    `mean_only=False` returns that output, so `model.sample(n, mean_only=False)` of an MSE
    WAE is `model.sample(n)` at the same prior draws (it raised AttributeError before);
    totals stay refused."""
    model = aetk.build_model("wae", "mse", in_features=4, latent_dim=2, hidden=(8,))
    x_hat = torch.randn(3, 4)
    assert torch.equal(dist.generate(x_hat, mean_only=False), x_hat)
    torch.manual_seed(1)
    sampled = model.sample(3, mean_only=False)
    torch.manual_seed(1)
    torch.testing.assert_close(sampled, model.sample(3))
    with pytest.raises(ValueError, match="total_count"):
        dist.generate(x_hat, mean_only=False, total_count=5.0)


class _LogNormalDecoder(aetk.Decoder):
    """exp of a Gaussian: a TransformedDistribution, which torch gives no mean."""

    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.TransformedDistribution(D.Normal(self.lin(z), 1.0),
                                                       [D.transforms.ExpTransform()]), 1)


def test_a_decoder_without_a_closed_form_mean_is_a_value_error_saying_so():
    """reconstruct and sample need the decoder's mean: before, torch's bare
    NotImplementedError (no message) from deep inside."""
    model = aetk.VAE(GaussianEncoder(in_features=3, latent_dim=2, hidden=(4,)),
                     _LogNormalDecoder())
    match = (r"decoder's TransformedDistribution distribution has no closed-form mean, .*"
             r"\.sample\(\(100,\)\)\.mean\(0\)")
    with pytest.raises(ValueError, match=match):
        model.reconstruct(torch.rand(5, 3))
    with pytest.raises(ValueError, match=match):
        model.sample(4)
    assert model.sample(4, mean_only=False).shape == (4, 3)  # draws need no mean


class _StudentTDecoder(torch.nn.Module):
    """A user's Student-t likelihood of a given number of degrees of freedom."""

    latent_dim = 2

    def __init__(self, df: float) -> None:
        super().__init__()
        self.lin, self.df = torch.nn.Linear(2, 3), df

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.StudentT(self.df, self.lin(z), 1.0), 1)


def test_a_decoder_whose_mean_does_not_exist_is_a_value_error_saying_so():
    """A Student-t of df = 1 (a Cauchy) has no mean, which torch gives as NaN: reconstruct
    and sample returned rows of NaN in silence. Now a ValueError says why; df = 3 keeps
    its mean, the location, and draws need none."""
    torch.manual_seed(0)
    model = aetk.VAE(GaussianEncoder(in_features=3, latent_dim=2, hidden=(4,)),
                     _StudentTDecoder(1.0))
    match = (r"decoder's StudentT distribution has no finite mean at some points \(its mean "
             r"holds NaN")
    with pytest.raises(ValueError, match=match):
        model.reconstruct(torch.rand(5, 3))
    with pytest.raises(ValueError, match=match):
        model.sample(4)
    assert model.sample(4, mean_only=False).isfinite().all()
    z = torch.randn(5, 2)
    assert dist.mean(model.decode(z), checked=False).isnan().all()  # left to the caller
    model.decoder.df = 3.0
    torch.testing.assert_close(dist.mean(model.decode(z)), model.decoder.lin(z))
    assert model.reconstruct(torch.rand(5, 3)).isfinite().all()


class _NoSamplerDecoder(torch.nn.Module):
    """A user's likelihood of its own class: a log_prob and a mean, no sampler."""

    latent_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 3)

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return _Scored(self.lin(z))


class _Scored(D.Distribution):
    arg_constraints = MappingProxyType({})
    support = D.constraints.real_vector

    def __init__(self, loc: torch.Tensor) -> None:
        self.loc = loc
        super().__init__(loc.shape[:1], loc.shape[1:], validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -0.5 * (value - self.loc).square().sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        return self.loc


def test_a_decoder_that_cannot_draw_says_so_for_draws_only():
    """sample(mean_only=False) of a user distribution without `sample` or `rsample` failed
    with torch's bare NotImplementedError (no message); now a ValueError says what to
    define. The point prediction and the likelihood need no sampler."""
    torch.manual_seed(0)
    model = aetk.VAE(GaussianEncoder(in_features=3, latent_dim=2, hidden=(4,)),
                     _NoSamplerDecoder())
    with pytest.raises(ValueError, match=r"decoder's _Scored distribution cannot draw samples "
                                         r"\(it defines neither `sample` nor `rsample`\)"):
        model.sample(4, mean_only=False)
    z = torch.randn(4, 2)
    torch.testing.assert_close(dist.generate(model.decode(z)), model.decoder.lin(z))
    assert model.sample(4).shape == (4, 3)
    assert aetk.log_marginal(model, torch.randn(5, 3), n_samples=3).isfinite().all()


def test_a_user_distribution_whose_event_takes_the_batch_axis_is_refused():
    """A user decoder returning Independent(Normal(mu, 1), 2) for rows (B, D) made one
    event of the whole batch: its log-probability was the sum over the rows, so a VAE's
    reconstruction term was B times the per-row mean (54.0 against 6.75 for 8 rows) and
    trained B times heavier than the KL, in silence; log_marginal failed in a reshape."""

    class Decoder(aetk.Decoder):
        def __init__(self, event_dims: int) -> None:
            super().__init__()
            self.net, self.event_dims = torch.nn.Linear(2, 5), event_dims

        def forward(self, z):
            return D.Independent(D.Normal(self.net(z), 1.0), self.event_dims)

    torch.manual_seed(0)
    x, z = torch.randn(8, 5), torch.randn(8, 2)
    right, wrong = Decoder(1), Decoder(2)
    wrong.load_state_dict(right.state_dict())
    per_row = dist.log_prob(right(z), x)
    torch.testing.assert_close(per_row, D.Normal(right.net(z), 1.0).log_prob(x).sum(-1))
    with pytest.raises(ValueError, match=r"gave log-probabilities of shape \(\) for 8 rows: "
                                         r"keep the batch axis out of its event, e\.g\. "
                                         r"Independent\(base, 1\)"):
        dist.log_prob(wrong(z), x)
    model = aetk.VAE(aetk.GaussianEncoder(in_features=5, latent_dim=2, hidden=(4,)), wrong)
    for call in (model.loss, lambda x: aetk.log_marginal(model, x, n_samples=2)):
        with pytest.raises(ValueError, match="keep the batch axis out of its event"):
            call(x)


def test_a_user_distribution_of_another_shape_than_the_data_is_refused():
    """A user decoder of one output for rows of 5 values scored every value against that
    one mean (torch broadcasts where its argument checks are off) and trained in silence;
    one-hot targets of a categorical keep their class axis."""
    torch.manual_seed(0)
    x = torch.randn(8, 5)
    with pytest.raises(ValueError, match=r"Independent is of shape \(8, 1\) \(batch \(8,\), "
                                         r"event \(1,\)\) but the data of shape \(8, 5\)"):
        dist.log_prob(D.Independent(D.Normal(torch.zeros(8, 1), 1.0), 1), x)
    with pytest.raises(ValueError, match=r"Normal is of shape \(1, 5\)"):
        dist.log_prob(D.Normal(torch.zeros(1, 5), 1.0), x)
    logits = torch.randn(8, 5, 3)
    classes = torch.randint(3, (8, 5))
    onehot = torch.nn.functional.one_hot(classes, 3).float()
    p = aetk.decoders._IndexOrOneHotCategorical(logits)
    torch.testing.assert_close(dist.log_prob(p, onehot), dist.log_prob(p, classes))
    torch.testing.assert_close(dist.log_prob(p, classes),
                               torch.log_softmax(logits, -1).gather(-1, classes[..., None])
                               .sum((1, 2)))


class _ImageDecoder(aetk.Decoder):
    """A user decoder of images (2, 3, 3): it declares no `event_shape`, so the model does
    not know the layout of its data before it decodes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 18)

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(self.lin(z).view(-1, 2, 3, 3), 1.0), 3)


def test_a_user_decoder_of_images_scores_flat_rows_of_as_many_values():
    """Targets (n, 18) for a user decoder of images (2, 3, 3), as the model's methods take
    rows of another layout of as many values: fit on aetk.Paired(x, flat images) and
    log_marginal(target=flat) failed inside torch ("Value is not broadcastable with
    batch_shape+event_shape: torch.Size([8, 18]) vs torch.Size([8, 2, 3, 3])"); now the
    rows are scored as the images they are."""
    torch.manual_seed(0)
    p = _ImageDecoder()(torch.randn(8, 2))
    y = torch.randn(8, 2, 3, 3)
    expected = torch.distributions.Normal(p.mean, 1.0).log_prob(y).sum((1, 2, 3))
    torch.testing.assert_close(dist.log_prob(p, y.flatten(1)), expected)
    torch.testing.assert_close(dist.log_prob(p, y), expected)
    model = aetk.VAE(GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)), _ImageDecoder())
    x = torch.randn(8, 4)
    hist = aetk.fit(model, aetk.Paired(x, y.flatten(1)), epochs=2, batch_size=4, progress=False)
    assert np.isfinite(hist["train_loss"]).all()
    torch.manual_seed(1)
    flat = aetk.log_marginal(model, x, n_samples=5, target=y.flatten(1))
    torch.manual_seed(1)
    torch.testing.assert_close(flat, aetk.log_marginal(model, x, n_samples=5, target=y))


def test_a_user_decoder_of_tensors_in_a_likelihood_model_is_a_type_error_saying_so():
    """A user's decoder returning its mean as a plain tensor, given to a VAE (or any model
    that scores by log p(x|z)), failed in training with "'Tensor' object has no attribute
    'batch_shape'"; now a TypeError says to return a distribution, or use an autoencoder,
    which scores the tensor by its mean squared error."""

    class Mean(torch.nn.Module):
        latent_dim = 2

        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 4)

        def forward(self, z):
            return self.lin(z)

    torch.manual_seed(0)
    x = torch.randn(8, 4)
    with pytest.raises(TypeError, match=r"the decoder returned a Tensor, not a torch "
                                        r"distribution, .* autoencoders AE, IRMAE, WAE and VQVAE"):
        dist.log_prob(Mean()(torch.randn(8, 2)), x)
    for model in (aetk.VAE(GaussianEncoder(in_features=4, latent_dim=2, hidden=(4,)), Mean()),
                  aetk.HVAE(GaussianEncoder(in_features=4, latent_dim=2, hidden=(4,)), Mean())):
        with pytest.raises(TypeError, match="not a torch distribution"):
            aetk.fit(model, x, epochs=1, batch_size=4, progress=False)
    ae = aetk.AE(aetk.DeterministicEncoder(in_features=4, latent_dim=2, hidden=(4,)), Mean())
    assert np.isfinite(aetk.fit(ae, x, epochs=1, batch_size=4, progress=False)["train_loss"]).all()


def test_a_user_multinomial_reconstructs_counts_at_the_rows_totals():
    """A user's torch Multinomial (total_count 1, validate_args=False: its log_prob scores
    each row at the row's own total, as aetk's multinomial does) reconstructed count rows
    of totals 24 and 46 as proportions summing to 1, its torch mean `total_count * probs`;
    now as the expected counts at each row's total, as the built-in MultinomialDecoder
    does. A point prediction with no data (sample) stays torch's mean."""

    class UserMultinomial(aetk.Decoder):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 4)

        def forward(self, z):
            return D.Multinomial(logits=self.lin(z), validate_args=False)

    torch.manual_seed(0)
    model = aetk.VAE(GaussianEncoder(in_features=4, latent_dim=2, hidden=(8,)),
                     UserMultinomial())
    x = torch.tensor([[10.0, 12.0, 0.0, 2.0], [6.0, 13.0, 7.0, 20.0]])
    probs = model.decode(model.latent_mean(x)).probs
    torch.testing.assert_close(model.reconstruct(x), probs * torch.tensor([[24.0], [46.0]]))
    torch.testing.assert_close(model.reconstruct(x).sum(-1), torch.tensor([24.0, 46.0]))
    torch.testing.assert_close(model.sample(3).sum(-1), torch.ones(3))
