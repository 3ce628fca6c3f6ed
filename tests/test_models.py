"""Every model's loss on a tiny network with fixed weights against the formula in
models.md, computed by hand in numpy float64 with the same noise; build_model's errors."""

import copy
import math
import re

import numpy as np
import pytest
import torch
from scipy import special
from torch import distributions as D
from torch import nn
from torch.utils.data import StackDataset

import aetk
from aetk import decoders as dec
from aetk.encoders import DeterministicEncoder, GaussianEncoder
from aetk.models import Critic

from helpers import central_differences, fix_normal_noise, mmd_by_hand

B, X_DIM, Z_DIM, HID = 4, 3, 2, 5
RNG = np.random.default_rng(42)
X01 = RNG.random((B, X_DIM))  # data in [0, 1]
EPS = {1: RNG.standard_normal((B, Z_DIM)), 3: RNG.standard_normal((3, B, Z_DIM))}
EPS[6] = np.random.default_rng(7).standard_normal((6, B, Z_DIM))  # MIWAE's 2 x 3


def _linear(n_in, n_out, rng):
    lin = nn.Linear(n_in, n_out).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(rng.standard_normal((n_out, n_in))))
        lin.bias.copy_(torch.from_numpy(0.5 * rng.standard_normal(n_out)))
    return lin


class NumpyMLP:
    """A `Linear -> tanh -> Linear` network built with fixed weights, evaluated twice:
    as the torch module (`.module`) and by hand in numpy (`__call__`)."""

    def __init__(self, n_in, n_out, seed):
        rng = np.random.default_rng(seed)
        self.module = nn.Sequential(_linear(n_in, HID, rng), nn.Tanh(), _linear(HID, n_out, rng))
        w = [p.detach().numpy().copy() for p in self.module.parameters()]
        self.w1, self.b1, self.w2, self.b2 = w

    def __call__(self, x):
        return np.tanh(x @ self.w1.T + self.b1) @ self.w2.T + self.b2


@pytest.fixture
def fixed_eps(monkeypatch):
    """z = mu + sigma * eps with the eps of `EPS`, so the hand computation uses the same."""

    def rsample(self, sample_shape=()):
        eps = EPS[sample_shape[0] if sample_shape else 1]
        eps = eps.reshape(*sample_shape, *self.loc.shape)
        return self.loc + self.scale * torch.from_numpy(eps)

    monkeypatch.setattr(D.Normal, "rsample", rsample)


def _gaussian_encoder(seed=1):
    net = NumpyMLP(X_DIM, 2 * Z_DIM, seed)
    return GaussianEncoder(net.module, latent_dim=Z_DIM), net


def _hand_posterior(enc_net, x):
    out = enc_net(x)
    mu, sigma = out[:, :Z_DIM], np.exp(out[:, Z_DIM:])
    kl = 0.5 * (sigma**2 + mu**2 - 1 - 2 * np.log(sigma)).sum(-1)
    return mu, sigma, kl


def _bce_log_lik(logits, x):
    return (x * logits - np.logaddexp(0, logits)).sum(-1)


def _x():
    return torch.from_numpy(X01)


def test_ae_mse():
    enc_net, dec_net = NumpyMLP(X_DIM, Z_DIM, 1), NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.AE(DeterministicEncoder(enc_net.module, latent_dim=Z_DIM),
                    dec.DeterministicDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM))
    hand = np.mean((dec_net(enc_net(X01)) - X01) ** 2)
    assert model.loss(_x()).loss.item() == pytest.approx(hand, rel=1e-12)


def test_build_model_mse_is_the_autoencoders_mean_squared_error(tmp_path):
    """`build_model(..., "mse")` gives the deterministic decoder of the spec's AE: the loss
    is the mean squared error of its output, also after a reload; models that need a
    likelihood refuse it, naming those that take it."""
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    for kind in aetk.build.MSE_MODELS:
        model = aetk.build_model(kind, "mse", in_features=6, latent_dim=2, hidden=(5,))
        assert isinstance(model.decoder, dec.DeterministicDecoder)
    model = aetk.build_model("ae", "mse", in_features=6, latent_dim=2, hidden=(5,))
    x_hat = model.decoder.network(model.encoder.network(x))
    assert model.loss(x).loss.item() == pytest.approx(((x_hat - x) ** 2).mean().item(),
                                                      rel=1e-6)
    model.save(tmp_path / "ae")
    assert aetk.load(tmp_path / "ae").loss(x).loss.item() == model.loss(x).loss.item()
    assert aetk.build.MSE_MODELS == ("ae", "irmae", "wae", "vqvae")
    with pytest.raises(ValueError, match=r"model 'hvae' needs a likelihood: 'mse' .* is for "
                                         r"ae, irmae, wae, vqvae"):
        aetk.build_model("hvae", "mse", in_features=6)


def test_ae_with_a_bernoulli_decoder_is_minus_the_mean_log_likelihood():
    enc_net, dec_net = NumpyMLP(X_DIM, Z_DIM, 1), NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.AE(DeterministicEncoder(enc_net.module, latent_dim=Z_DIM),
                    dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM))
    hand = -_bce_log_lik(dec_net(enc_net(X01)), X01).mean()
    out = model.loss(_x())
    assert out.loss.item() == pytest.approx(hand, rel=1e-12)
    assert out.terms["reconstruction"].item() == pytest.approx(hand, rel=1e-12)


@pytest.mark.parametrize("beta", [1.0, 4.0])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_vae_and_beta_vae(fixed_eps, beta, n_samples):
    """L = -<log p(x|z)> + beta <KL>, the likelihood averaged over n_samples z per x."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM), beta=beta, n_samples=n_samples)
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    eps = EPS[n_samples].reshape(n_samples, B, Z_DIM)
    rec = -np.mean([_bce_log_lik(dec_net(mu + sigma * e), X01) for e in eps])
    out = model.loss(_x())
    assert out.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)
    assert out.loss.item() == pytest.approx(rec + beta * kl.mean(), rel=1e-12)


@pytest.mark.parametrize("capacity", [0.0, 0.5, 50.0])
def test_capacity_charges_the_distance_of_the_kl_from_it(fixed_eps, capacity):
    """L = rec + beta |<KL> - C| (Burgess et al. 2018): below and above the KL."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM), beta=3.0)
    model.capacity = capacity
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    rec = -_bce_log_lik(dec_net(mu + sigma * EPS[1]), X01).mean()
    out = model.loss(_x())
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)
    assert out.terms["kl_charged"].item() == pytest.approx(abs(kl.mean() - capacity), rel=1e-12)
    assert out.loss.item() == pytest.approx(rec + 3.0 * abs(kl.mean() - capacity), rel=1e-12)


def test_free_bits_charge_each_dimension_at_least_lambda(fixed_eps):
    """L = rec + beta sum_j max(lambda, <KL_j>), <.> the batch mean of dimension j's KL;
    lambda is put between the two dimensions' KLs, so one is charged at lambda and the
    other at its own KL (a clamp of the total, or of each row's KL, gives other numbers)."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    per_dim = (0.5 * (sigma**2 + mu**2 - 1 - 2 * np.log(sigma))).mean(0)
    lam = float(per_dim.mean())
    assert per_dim.min() < lam < per_dim.max()
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM), beta=2.0, free_bits=lam)
    rec = -_bce_log_lik(dec_net(mu + sigma * EPS[1]), X01).mean()
    charged = np.maximum(lam, per_dim).sum()
    out = model.loss(_x())
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)
    assert out.terms["kl_charged"].item() == pytest.approx(charged, rel=1e-12)
    assert out.loss.item() == pytest.approx(rec + 2.0 * charged, rel=1e-12)
    # no gradient reaches a dimension below lambda through the KL
    (grad,) = torch.autograd.grad(out.terms["kl_charged"], enc.network[-1].bias)
    low, high = int(np.argmin(per_dim)), int(np.argmax(per_dim))
    assert grad[low].item() == 0.0 and grad[Z_DIM + low].item() == 0.0  # mu_j, log sigma_j
    assert grad[high].item() != 0.0
    with pytest.raises(ValueError, match=r"free_bits must be >= 0, got -1\.0"):
        aetk.VAE(enc, model.decoder, free_bits=-1.0)


def test_free_bits_and_capacity_together_charge_the_distance_of_the_clamped_kl(fixed_eps):
    """Both set: `kl_charged = |sum_j max(lambda, <KL_j>) - C|`, the capacity measured from
    the free-bits charge (with C at the true KL, the distance from the true KL would be 0)."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    per_dim = (0.5 * (sigma**2 + mu**2 - 1 - 2 * np.log(sigma))).mean(0)
    lam = float(per_dim.mean())
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM), beta=2.0, free_bits=lam)
    model.capacity = float(kl.mean())
    charged = abs(np.maximum(lam, per_dim).sum() - kl.mean())
    assert charged > 0.01
    rec = -_bce_log_lik(dec_net(mu + sigma * EPS[1]), X01).mean()
    out = model.loss(_x())
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)
    assert out.terms["kl_charged"].item() == pytest.approx(charged, rel=1e-10)
    assert out.loss.item() == pytest.approx(rec + 2.0 * charged, rel=1e-12)


def _iwae_by_hand(enc_net, dec_net, n_draws):
    """log p(x|z) and log w of the `n_draws` fixed draws, `(S, B)`, and the closed KL."""
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    eps = EPS[n_draws].reshape(n_draws, B, Z_DIM)
    z = mu + sigma * eps
    log_lik = np.stack([_bce_log_lik(dec_net(zk), X01) for zk in z])  # (S, B)
    log_prior = (-0.5 * z**2 - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_q = (-0.5 * eps**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(-1)
    return log_lik, log_lik + log_prior - log_q, kl


def _iwae_nets(cls, **kw):
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = cls(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM),
                **kw)
    return model, enc_net, dec_net


@pytest.mark.parametrize(("n_samples", "n_groups"), [(1, 1), (3, 1), (3, 2), (1, 3)])
def test_iwae_and_miwae(fixed_eps, n_samples, n_groups):
    """L = -<1/M sum_m [logsumexp_k log w_mk - log K]>, log w = log p(x|z) + log N(z; 0, I)
    - log q(z|x): the IWAE for M = 1, MIWAE for M > 1 (K = 1: the ELBO of M draws)."""
    model, enc_net, dec_net = _iwae_nets(aetk.IWAE, n_samples=n_samples, n_groups=n_groups)
    log_lik, log_w, kl = _iwae_by_hand(enc_net, dec_net, n_samples * n_groups)
    log_w = log_w.reshape(n_groups, n_samples, B)
    bound = (special.logsumexp(log_w, axis=1) - np.log(n_samples)).mean(0)
    out = model.loss(_x())
    assert out.loss.item() == pytest.approx(-bound.mean(), rel=1e-12)
    assert out.terms["reconstruction"].item() == pytest.approx(-log_lik.mean(), rel=1e-12)
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)


@pytest.mark.parametrize("beta", [0.0, 0.3, 1.0])
def test_ciwae(fixed_eps, beta):
    """L = -<beta 1/K sum_k log w_k + (1 - beta) (logsumexp_k log w_k - log K)>."""
    model, enc_net, dec_net = _iwae_nets(aetk.CIWAE, n_samples=3, beta=beta)
    _, log_w, _ = _iwae_by_hand(enc_net, dec_net, 3)
    bound = beta * log_w.mean(0) + (1 - beta) * (special.logsumexp(log_w, axis=0) - np.log(3))
    assert model.loss(_x()).loss.item() == pytest.approx(-bound.mean(), rel=1e-12)


def test_piwae_trains_its_decoder_on_the_iwae_bound_and_its_encoder_on_miwae(fixed_eps):
    """On the same six draws: the decoder's gradient is the IWAE bound's of all six (its
    loss), the encoder's the MIWAE bound's of 2 x 3 (checked by hand above), plus a
    penalty's in both; the loss is the IWAE's, the term miwae the MIWAE's."""
    model, enc_net, dec_net = _iwae_nets(aetk.PIWAE, n_samples=3, n_groups=2)
    iwae = aetk.IWAE(model.encoder, model.decoder, n_samples=6)
    miwae = aetk.IWAE(model.encoder, model.decoder, n_samples=3, n_groups=2)
    penalty = aetk.LatentL2(weight=0.7)

    def grads(loss, params):
        return torch.autograd.grad(loss + penalty(model, _x()), list(params))

    dec_ref = grads(iwae.loss(_x()).loss, model.decoder.parameters())
    enc_ref = grads(miwae.loss(_x()).loss, model.encoder.parameters())
    frozen = {k: torch.optim.SGD(p.parameters(), lr=0.0)
              for k, p in (("decoder", model.decoder), ("encoder", model.encoder))}
    with aetk.penalized(model, [penalty]):
        out = model.training_step(_x(), frozen)
    for p, g in zip(model.decoder.parameters(), dec_ref, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    for p, g in zip(model.encoder.parameters(), enc_ref, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)
    _, log_w, _ = _iwae_by_hand(enc_net, dec_net, 6)
    assert out.terms["miwae"].item() == pytest.approx(-(special.logsumexp(
        log_w.reshape(2, 3, B), axis=1) - np.log(3)).mean(), rel=1e-12)
    assert out.loss.item() == pytest.approx(-(special.logsumexp(log_w, axis=0) - np.log(6)
                                              ).mean() + out.terms["penalty_latent_l2"].item(),
                                            rel=1e-12)
    assert model.configure_optimizers(1e-3).keys() == {"decoder", "encoder"}


def test_piwae_refuses_an_encoder_and_decoder_that_share_parameters():
    model, _, _ = _iwae_nets(aetk.PIWAE, n_samples=2, n_groups=2)
    model.decoder.tied = model.encoder.network  # the decoder's parameters now include them
    with pytest.raises(ValueError, match="must not share parameters"):
        model.configure_optimizers(1e-3)


class _KnownLinearGaussian(torch.nn.Module):
    """A user's fixed likelihood, `p(x|z) = N(A z, 1/4 I)` with a known `A` (a buffer): no
    parameters, only the encoder learns (amortised inference in a known model)."""

    latent_dim = Z_DIM

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("A", torch.randn(X_DIM, Z_DIM, dtype=torch.float64))

    def forward(self, z):
        return D.Independent(D.Normal(z @ self.A.T, 0.5), 1)


@pytest.mark.parametrize("frozen", [False, True])
def test_piwae_trains_its_encoder_under_a_fixed_or_frozen_decoder(frozen):
    """A PIWAE whose decoder has nothing to learn failed in fit: a fixed likelihood of no
    parameters with torch's "optimizer got an empty parameter list", a frozen decoder
    (requires_grad False) with "One of the differentiated Tensors does not require grad".
    Now only the parts that learn get an optimiser and a gradient: the encoder's moves,
    the decoder stays, and the MIWAE bound improves."""
    torch.manual_seed(0)
    enc = GaussianEncoder(in_features=X_DIM, latent_dim=Z_DIM, hidden=(16,)).double()
    if frozen:
        decoder = dec.GaussianDecoder(latent_dim=Z_DIM, out_features=X_DIM, hidden=(8,),
                                      sigma=0.5).double().requires_grad_(False)
    else:
        decoder = _KnownLinearGaussian()
    model = aetk.PIWAE(enc, decoder, n_samples=3, n_groups=2)
    assert model.configure_optimizers(1e-3).keys() == {"encoder"}
    x = decoder(torch.randn(256, Z_DIM, dtype=torch.float64)).sample()
    fixed = copy.deepcopy(model.decoder.state_dict())
    before = copy.deepcopy(model.encoder.state_dict())
    hist = aetk.fit(model, x, epochs=8, batch_size=64, lr=3e-3, progress=False)
    assert hist["train_miwae"].iloc[-1] < hist["train_miwae"].iloc[0]
    for name, value in model.decoder.state_dict().items():
        assert torch.equal(value, fixed[name])
    assert any(not torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())


def _vampprior(beta=1.0):
    """A float64 VampPrior of fixed networks with K = 3 pseudo-inputs `u`."""
    enc_net = NumpyMLP(X_DIM, 2 * Z_DIM, 1)
    enc = GaussianEncoder(enc_net.module, in_features=X_DIM, latent_dim=Z_DIM)
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.VampPrior(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                     out_features=X_DIM), n_components=3,
                           beta=beta).double()
    u = np.random.default_rng(3).random((3, X_DIM))
    with torch.no_grad():
        model.pseudo_inputs.copy_(torch.from_numpy(u))
    return model, enc_net, dec_net, u


def _vampprior_kl_by_hand(enc_net, u, eps):
    """z = mu + sigma eps and `log q(z|x) - log p(z)`, p(z) = 1/K sum_k q(z|u_k), per row."""
    mu, sigma, _ = _hand_posterior(enc_net, X01)
    z = mu + sigma * eps
    mu_k, sigma_k, _ = _hand_posterior(enc_net, u)
    log_q = (-0.5 * eps**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(-1)
    log_comp = (-0.5 * ((z[:, None] - mu_k) / sigma_k) ** 2 - np.log(sigma_k)
                - 0.5 * np.log(2 * np.pi)).sum(-1)  # (B, K)
    return z, log_q - (special.logsumexp(log_comp, axis=1) - np.log(len(u)))


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_vampprior(fixed_eps, beta):
    """L = -log p(x|z) + beta (log q(z|x) - log p(z)), p(z) = 1/K sum_k q(z|u_k)."""
    model, enc_net, dec_net, u = _vampprior(beta)
    z, kl = _vampprior_kl_by_hand(enc_net, u, EPS[1])
    rec = -_bce_log_lik(dec_net(z), X01).mean()
    out = model.loss(_x())
    assert out.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert out.terms["kl"].item() == pytest.approx(kl.mean(), rel=1e-12)
    assert out.loss.item() == pytest.approx(rec + beta * kl.mean(), rel=1e-12)


def test_vampprior_samples_are_draws_of_its_mixture_prior():
    """`sample` decodes z ~ p(z) = 1/K sum_k N(mu_k, diag sigma_k^2), the components
    `q(z|u_k)` by hand: through an identity decoder, 20,000 draws have the mixture's mean
    (within 5 standard errors) and variance `<sigma_k^2 + mu_k^2> - <mu_k>^2` (within 5%);
    a scale used as the variance gave 225 for 13."""
    model, enc_net, _, u = _vampprior()
    model.decoder = dec.GaussianDecoder(nn.Identity(), latent_dim=Z_DIM, out_features=Z_DIM)
    mu_k, sigma_k, _ = _hand_posterior(enc_net, u)
    mean = mu_k.mean(0)
    var = (sigma_k**2 + mu_k**2).mean(0) - mean**2
    torch.manual_seed(5)
    n = 20_000
    z = model.sample(n).numpy()
    assert (np.abs(z.mean(0) - mean) < 5 * np.sqrt(var / n)).all()
    np.testing.assert_allclose(z.var(0), var, rtol=0.05)

def test_vampprior_kl_per_row_is_the_monte_carlo_kl_at_one_draw(monkeypatch):
    """`model.kl(q)` (what `aetk encode` stores) is `log q(z|x) - log p(z)` per row at one
    draw `z ~ q(z|x)`, by hand: positive on average, not its negative."""
    model, enc_net, _, u = _vampprior()
    monkeypatch.setattr(D.Normal, "sample",
                        lambda self, shape=(): self.loc + self.scale * torch.from_numpy(EPS[1]))
    _, kl = _vampprior_kl_by_hand(enc_net, u, EPS[1])
    got = model.kl(model.encode(_x())).detach().numpy()
    np.testing.assert_allclose(got, kl, rtol=1e-12)
    assert kl.mean() > 0.1


@pytest.mark.parametrize(("alpha", "beta", "gamma"), [(1.0, 6.0, 1.0), (0.5, 2.0, 3.0)])
def test_beta_tcvae(fixed_eps, alpha, beta, gamma):
    """MI, TC and dimension-wise KL with the stratified estimate of q(z), by hand with
    loops: weight 1/N for the row's own posterior, (N - 1) / (N (M - 1)) for the others."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    n = 50
    model = aetk.BetaTCVAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                     out_features=X_DIM),
                           alpha=alpha, beta=beta, gamma=gamma, dataset_size=n)
    mu, sigma, _ = _hand_posterior(enc_net, X01)
    z = mu + sigma * EPS[1]

    def log_normal(v, m, s):
        return -0.5 * ((v - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)

    mi = tc = dwkl = 0.0
    for i in range(B):
        per_dim = np.array([[log_normal(z[i, j], mu[m, j], sigma[m, j]) for j in range(Z_DIM)]
                            for m in range(B)])  # (M, d)
        weight = np.array([1 / n if m == i else (n - 1) / (n * (B - 1)) for m in range(B)])
        log_qz = np.log((weight * np.exp(per_dim.sum(1))).sum())
        log_qzj = np.log((weight[:, None] * np.exp(per_dim)).sum(0))
        mi += log_normal(z[i], mu[i], sigma[i]).sum() - log_qz
        tc += log_qz - log_qzj.sum()
        dwkl += (log_qzj - log_normal(z[i], 0.0, 1.0)).sum()
    mi, tc, dwkl = mi / B, tc / B, dwkl / B
    rec = -_bce_log_lik(dec_net(z), X01).mean()
    out = model.loss(_x())
    for name, value in [("reconstruction", rec), ("mutual_information", mi),
                        ("total_correlation", tc), ("dimensionwise_kl", dwkl)]:
        assert out.terms[name].item() == pytest.approx(value, rel=1e-12), name
    want = rec + alpha * mi + beta * tc + gamma * dwkl
    assert out.loss.item() == pytest.approx(want, rel=1e-12)


def test_beta_tcvae_on_the_whole_data_set_uses_the_exact_aggregate_posterior():
    """With the batch the whole training set (M = N) the estimates are exact: q(z) is the
    mixture of all posteriors, q(z_j) that of their marginals."""
    torch.manual_seed(0)
    model = aetk.build_model("beta_tcvae", "bernoulli", in_features=5, latent_dim=3,
                             hidden=(8,), dataset_size=12).double()
    x = torch.rand(12, 5, dtype=torch.float64)
    torch.manual_seed(1)
    out = model.loss(x)
    torch.manual_seed(1)
    q = model.encode(x)
    z = q.rsample()
    uniform = D.Categorical(logits=torch.zeros(12, dtype=torch.float64))
    log_qz = D.MixtureSameFamily(uniform, q).log_prob(z)
    marginals = D.MixtureSameFamily(uniform.expand((3,)), D.Normal(q.mean.T, q.stddev.T))
    log_qzj = marginals.log_prob(z).sum(-1)
    torch.testing.assert_close(out.terms["mutual_information"], (q.log_prob(z) - log_qz).mean())
    torch.testing.assert_close(out.terms["total_correlation"], (log_qz - log_qzj).mean())


def test_beta_tcvae_with_unit_weights_is_the_vae_with_a_monte_carlo_kl(fixed_eps):
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    decoder = dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM)
    model = aetk.BetaTCVAE(enc, decoder, beta=1.0, dataset_size=1000)
    mu, sigma, _ = _hand_posterior(enc_net, X01)
    z = mu + sigma * EPS[1]
    log_q = (-0.5 * EPS[1] ** 2 - np.log(sigma)).sum(-1)
    log_p = (-0.5 * z**2).sum(-1)
    elbo = _bce_log_lik(dec_net(z), X01) - log_q + log_p
    assert model.loss(_x()).loss.item() == pytest.approx(-elbo.mean(), rel=1e-12)


def test_beta_tcvae_takes_the_training_set_size_from_fit(tmp_path):
    x = torch.rand(60, 6)
    torch.manual_seed(0)
    model = aetk.build_model("beta_tcvae", "bernoulli", in_features=6, hidden=(8,))
    with pytest.raises(RuntimeError, match="needs the training set size"):
        model.loss(x)
    aetk.fit(model, x, epochs=1, batch_size=20, progress=False)
    assert int(model.dataset_size) == 60
    model.save(tmp_path / "m")
    assert int(aetk.load(tmp_path / "m").dataset_size) == 60
    # a Dataset shows on_fit_start only its first batches (40 rows here), but the true size
    streamed = aetk.build_model("beta_tcvae", "bernoulli", in_features=6, hidden=(8,))
    aetk.fit(streamed, StackDataset(x), epochs=1, batch_size=5, progress=False)
    assert int(streamed.dataset_size) == 60
    # each fit sets its own N: fitted again on more rows, the model does not keep 60
    aetk.fit(model, torch.rand(90, 6), epochs=1, batch_size=30, progress=False)
    assert int(model.dataset_size) == 90


def test_beta_tcvae_keeps_a_given_dataset_size():
    """`on_fit_start` sets N only when it was not given (a model trained on a subset, or
    fitted again, keeps the N it was built with)."""
    enc, _ = _gaussian_encoder()
    decoder = dec.BernoulliDecoder(NumpyMLP(Z_DIM, X_DIM, 2).module, latent_dim=Z_DIM,
                                   out_features=X_DIM)
    model = aetk.BetaTCVAE(enc, decoder, dataset_size=500)
    model.on_fit_start(torch.rand(60, X_DIM))
    model.on_fit_start(torch.rand(60, X_DIM), 80)
    assert int(model.dataset_size) == 500


def test_beta_tcvae_one_row_batch_weighs_its_own_posterior_by_one_over_n(monkeypatch):
    """M = 1: `q(z) ~ q(z|x) / N` and `q(z_j) ~ q(z_j|x) / N`, so MI = log N,
    TC = (d - 1) log N and DWKL = sum_j log q(z_j|x) - d log N - log N(z; 0, I), by hand."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    n = 50
    model = aetk.BetaTCVAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                     out_features=X_DIM), dataset_size=n)
    eps = EPS[1][:1]
    fix_normal_noise(monkeypatch, eps)
    mu, sigma, _ = _hand_posterior(enc_net, X01[:1])
    z = mu + sigma * eps
    log_qj = -0.5 * eps**2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    log_p = -0.5 * z**2 - 0.5 * np.log(2 * np.pi)
    out = model.loss(_x()[:1])
    assert out.terms["mutual_information"].item() == pytest.approx(np.log(n), rel=1e-12)
    assert out.terms["total_correlation"].item() == pytest.approx((Z_DIM - 1) * np.log(n),
                                                                  rel=1e-12)
    dwkl = (log_qj - np.log(n) - log_p).sum()
    assert out.terms["dimensionwise_kl"].item() == pytest.approx(dwkl, rel=1e-12)


def test_vampprior_pseudo_inputs_start_at_training_points_and_are_saved(tmp_path):
    x = torch.rand(40, 6)
    torch.manual_seed(0)
    model = aetk.build_model("vampprior", "gaussian", in_features=6, hidden=(8,),
                             n_components=5)
    hist = aetk.fit(model, x, epochs=1, batch_size=20, progress=False, lr=0.0)
    assert len(hist) == 1
    rows = (model.pseudo_inputs[:, None, :] == x[None]).all(-1)  # lr 0: still the data
    assert rows.any(1).all() and len(set(rows.float().argmax(1).tolist())) == 5
    start = model.pseudo_inputs.detach().clone()
    aetk.fit(model, x, epochs=1, batch_size=20, progress=False, lr=1e-2)
    moved = model.pseudo_inputs.detach()
    assert not torch.equal(moved, start)  # learned, and not re-drawn by the second fit
    assert (moved - start).abs().max() < 0.2
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert torch.equal(again.pseudo_inputs, moved) and bool(again.has_pseudo_inputs)
    assert again.sample(7).shape == (7, 6)
    with pytest.raises(ValueError, match="cannot start 5 pseudo-inputs from 3"):
        aetk.build_model("vampprior", "gaussian", in_features=6, n_components=5).on_fit_start(
            x[:3])


def test_vampprior_pseudo_inputs_are_drawn_without_replacement():
    """K = N pseudo-inputs from N training rows (fit at lr 0, so still the start): each is
    one row, and together they are the rows permuted, none twice. Drawn with replacement,
    12 draws from 12 rows all differ with probability 12! / 12^12 ~ 5e-5."""
    n = 12
    x = torch.rand(n, 6)
    model = aetk.build_model("vampprior", "gaussian", in_features=6, hidden=(8,),
                             n_components=n)
    aetk.fit(model, x, epochs=1, batch_size=n, progress=False, lr=0.0)
    match = (model.pseudo_inputs[:, None, :] == x[None]).all(-1)  # (K, N)
    assert match.sum(1).tolist() == [1] * n  # every pseudo-input is one data row
    assert sorted(match.float().argmax(1).tolist()) == list(range(n))


def test_vae_with_a_learned_gaussian_decoder(fixed_eps):
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, 2 * X_DIM, 2)
    model = aetk.VAE(enc, dec.LearnedGaussianDecoder(dec_net.module, latent_dim=Z_DIM,
                                                     out_features=X_DIM))
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    out = dec_net(mu + sigma * EPS[1])
    m, s = out[:, :X_DIM], np.exp(np.clip(out[:, X_DIM:], -6, 4))
    log_lik = (-0.5 * ((X01 - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)).sum(-1)
    assert model.loss(_x()).loss.item() == pytest.approx(-log_lik.mean() + kl.mean(), rel=1e-12)


def _mmd_hand(zq, zp, kernel, scales, unbiased):
    d = zq.shape[1]

    def gram(a, b):
        sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        if kernel == "gaussian":
            return sum(np.exp(-sq / (s**2 * d)) for s in scales)
        return sum(2 * d * s**2 / (2 * d * s**2 + sq) for s in scales)

    return mmd_by_hand(zq, zp, gram, unbiased)


@pytest.mark.parametrize("kernel", ["gaussian", "imq"])
@pytest.mark.parametrize("unbiased", [True, False])
def test_infovae(fixed_eps, kernel, unbiased):
    """L = -<log p(x|z)> + (1 - alpha) <KL> + (alpha + lam - 1) MMD; alpha=0.3, lam=5:
    KL weight 0.7, MMD weight 4.3. The prior sample is drawn with the model's dtype."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    scales = (0.5, 2.0)
    model = aetk.InfoVAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                   out_features=X_DIM),
                         alpha=0.3, lam=5.0, kernel=kernel, scales=scales, n_prior_samples=6,
                         unbiased=unbiased)
    torch.manual_seed(7)
    out = model.loss(_x())
    torch.manual_seed(7)
    prior = torch.randn(6, Z_DIM, dtype=torch.float64).numpy()
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    z = mu + sigma * EPS[1]
    rec = -_bce_log_lik(dec_net(z), X01).mean()
    mmd = _mmd_hand(z, prior, kernel, scales, unbiased)
    assert out.terms["mmd"].item() == pytest.approx(mmd, rel=1e-10)
    assert out.loss.item() == pytest.approx(rec + 0.7 * kl.mean() + 4.3 * mmd, rel=1e-12)


def _gradient_model(name):
    """The model called `name` of the gradient test."""
    if name == "vampprior":
        return _vampprior(beta=0.5)[0]
    enc, _ = _gaussian_encoder()
    decoder = dec.BernoulliDecoder(NumpyMLP(Z_DIM, X_DIM, 2).module, latent_dim=Z_DIM,
                                   out_features=X_DIM)
    build = {
        "vae_3_draws": lambda: aetk.VAE(enc, decoder, beta=2.0, n_samples=3),
        "miwae": lambda: aetk.IWAE(enc, decoder, n_samples=3, n_groups=2),
        "ciwae": lambda: aetk.CIWAE(enc, decoder, n_samples=3, beta=0.3),
        "beta_tcvae": lambda: aetk.BetaTCVAE(enc, decoder, alpha=0.5, beta=2.0, gamma=3.0,
                                             dataset_size=50),
        "infovae": lambda: aetk.InfoVAE(enc, decoder, alpha=0.3, lam=5.0, n_prior_samples=6),
        "dipvae_i": lambda: aetk.DIPVAE(enc, decoder, lambda_od=3.0, lambda_d=7.0, type="i"),
        "dipvae_ii": lambda: aetk.DIPVAE(enc, decoder, lambda_od=3.0, lambda_d=7.0,
                                         type="ii"),
    }
    return build[name]()


@pytest.mark.parametrize("name", ["vae_3_draws", "miwae", "ciwae", "vampprior", "beta_tcvae",
                                  "infovae", "dipvae_i", "dipvae_ii"])
def test_loss_gradients_follow_the_reparameterised_draws(fixed_eps, name):
    """With the noise fixed the loss is a smooth function of the weights: autograd's
    gradient in the encoder's first layer (and the VampPrior's pseudo-inputs) equals central
    differences, so every term sees z = mu + sigma eps with its gradient (a z detached
    anywhere, or sigma detached in log q(z|x), leaves the values but not the gradient).
    The DIP-VAE's covariance penalty (both types, lambda_od 3, lambda_d 7) is
    differentiated too: C detached, wholly or in its <diag sigma^2>, leaves the penalty's
    value but not its gradient."""
    model = _gradient_model(name)
    params = [model.encoder.network[0].weight]
    if name == "vampprior":
        params.append(model.pseudo_inputs)

    def loss():
        torch.manual_seed(7)  # the InfoVAE's prior draws
        return model.loss(_x()).loss

    grads = torch.autograd.grad(loss(), params)
    for p, g in zip(params, grads, strict=True):
        torch.testing.assert_close(g, central_differences(loss, p), rtol=1e-6, atol=1e-8)


def test_infovae_defaults_give_the_mmd_weight():
    model = aetk.build_model("infovae", "bernoulli", in_features=3, hidden=(4,))
    assert model.alpha + model.lam - 1 > 0
    assert model.unbiased  # the spec's default estimator, the U-statistic


def test_mmd_defaults_to_the_u_statistic():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(9, 2))

    def gram(a, b):  # the Gaussian kernel exp(-|a - b|^2 / (rho^2 d)), rho = 1, d = 2
        return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / 2)

    got = aetk.kernels.mmd(torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(mmd_by_hand(x, y, gram, unbiased=True), rel=1e-12)
    assert got != pytest.approx(mmd_by_hand(x, y, gram, unbiased=False), rel=1e-3)


def test_built_models_take_the_specs_defaults():
    """models.md's defaults, through build_model as users and the pipeline build them."""
    opts = {"in_features": 3, "hidden": (4,)}
    vae = aetk.build_model("vae", "gaussian", **opts)
    assert (vae.beta, vae.decoder.sigma) == (1.0, 1.0)
    infomax = aetk.build_model("infomaxvae", "bernoulli", **opts)
    assert (infomax.alpha, infomax.beta) == (1.0, 1.0)
    hvae = aetk.build_model("hvae", "bernoulli", **opts)
    assert hvae.n_leapfrog == 3
    assert hvae.step_size.item() == pytest.approx(1e-3, rel=1e-6)
    assert hvae.beta0.item() == pytest.approx(0.3, rel=1e-6)
    assert not any(p.requires_grad for p in (hvae.log_step_size, hvae.beta0_logit))
    rhvae = aetk.build_model("rhvae", "bernoulli", **opts)
    assert (len(rhvae.centroid_data), rhvae.temperature, rhvae.regularization,
            rhvae.n_leapfrog, rhvae.step_size, rhvae.beta0, rhvae.n_fixed_point,
            rhvae.centroid_reduction) == (64, 0.8, 0.01, 3, 1e-3, 0.3, 3, "mean")
    for m in (hvae, rhvae):
        assert tuple(m.logp_prefactor) == (1.0, 1.0, 1.0)
        assert tuple(m.logq_prefactor) == (1.0, 1.0)


def test_constructors_take_the_documented_defaults():
    """docs/core-api.md's signatures (and the InfoVAE docstring's lam = 100), through
    build_model as users and the pipeline build the models."""
    opts = {"in_features": 3, "hidden": (4,)}

    def built(name, likelihood="bernoulli"):
        return aetk.build_model(name, likelihood, **opts)

    info = built("infovae")
    assert (info.alpha, info.lam, info.kernel, info.scales, info.n_prior_samples,
            info.unbiased, info.beta) == (0.0, 100.0, "gaussian", (1.0,), None, True, 1.0)
    wae = built("wae")
    assert (wae.lam, wae.kernel, wae.scales, wae.n_prior_samples, wae.unbiased) == (
        10.0, "imq", aetk.models.wae.PAPER_SCALES, None, True)
    assert len(built("irmae").linear) == 4
    vq = built("vqvae")
    assert (vq.n_codes, vq.beta, vq.codebook_update, vq.decay, vq.epsilon,
            vq.restart_after) == (128, 0.25, "ema", 0.99, 1e-5, 4.0)
    dip = built("dipvae")
    assert (dip.lambda_od, dip.lambda_d, dip.type, dip.beta) == (10.0, 100.0, "i", 1.0)
    assert built("factorvae").gamma == 6.0
    tc = built("beta_tcvae")
    assert (tc.alpha, tc.beta, tc.gamma, int(tc.dataset_size)) == (1.0, 6.0, 1.0, 0)
    iwae, ciwae, piwae = built("iwae"), built("ciwae"), built("piwae")
    assert (iwae.n_samples, iwae.n_groups) == (5, 1)
    assert (ciwae.n_samples, ciwae.n_groups, ciwae.beta) == (5, 1, 0.5)
    assert (piwae.n_samples, piwae.n_groups) == (5, 4)
    vamp = built("vampprior")
    assert (len(vamp.pseudo_inputs), vamp.beta) == (50, 1.0)
    vae = built("vae")
    assert (vae.beta, vae.n_samples, vae.free_bits, vae.capacity) == (1.0, 1, 0.0, None)


def test_weights_of_zero_are_accepted_and_leave_the_reconstruction(fixed_eps):
    """The weights' documented ranges include their ends: a VAE with beta = 0, an InfoVAE
    with alpha = 1 and lam = 0 (KL and MMD weights both 0) and a WAE with lam = 0 are built
    and their loss is the reconstruction; alpha = 0, lam = 1 (MMD weight 0) is the VAE's."""
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    decoder = dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM)
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    rec = -_bce_log_lik(dec_net(mu + sigma * EPS[1]), X01).mean()
    for model, kl_weight in ((aetk.VAE(enc, decoder, beta=0.0), 0.0),
                             (aetk.InfoVAE(enc, decoder, alpha=1.0, lam=0.0), 0.0),
                             (aetk.InfoVAE(enc, decoder, alpha=0.0, lam=1.0), 1.0)):
        out = model.loss(_x())
        want = rec + kl_weight * kl.mean()
        assert out.loss.item() == pytest.approx(want, rel=1e-12), type(model).__name__
    det, det_net = NumpyMLP(X_DIM, Z_DIM, 1), NumpyMLP(Z_DIM, X_DIM, 2)
    wae = aetk.WAE(DeterministicEncoder(det.module, latent_dim=Z_DIM),
                   dec.BernoulliDecoder(det_net.module, latent_dim=Z_DIM, out_features=X_DIM),
                   lam=0.0)
    out = wae.loss(_x())
    hand = -_bce_log_lik(det_net(det(X01)), X01).mean()
    assert out.loss.item() == pytest.approx(hand, rel=1e-12) and out.terms["mmd"].item() > 0.01


def _infomax(critic_seed=3, alpha=0.7, beta=2.0):
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    crit_net = NumpyMLP(X_DIM + Z_DIM, 1, critic_seed)
    critic = Critic(X_DIM, Z_DIM, (HID,), "tanh")
    critic.network = crit_net.module
    model = aetk.InfoMaxVAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                      out_features=X_DIM),
                            critic, alpha=alpha, beta=beta)
    return model, enc_net, dec_net, crit_net


def _nwj(crit_net, x, z, perm):
    t = crit_net(np.concatenate([x, z], 1))[:, 0]
    t_shuffled = crit_net(np.concatenate([x, z[perm]], 1))[:, 0]
    return t.mean() - np.exp(t_shuffled - 1).mean()


def test_infomaxvae_loss_with_a_known_critic(fixed_eps):
    """L = -<log p(x|z)> + beta <KL> - alpha I_hat, I_hat = <T(x,z)> - <exp(T(x,z~) - 1)>."""
    model, enc_net, dec_net, crit_net = _infomax()
    torch.manual_seed(11)
    out = model.loss(_x())
    torch.manual_seed(11)
    perm = torch.randperm(B).numpy()
    assert not np.array_equal(perm, np.arange(B))
    mu, sigma, kl = _hand_posterior(enc_net, X01)
    z = mu + sigma * EPS[1]
    rec = -_bce_log_lik(dec_net(z), X01).mean()
    mi = _nwj(crit_net, X01, z, perm)
    assert out.terms["mutual_info"].item() == pytest.approx(mi, rel=1e-12)
    assert out.loss.item() == pytest.approx(rec + 2.0 * kl.mean() - 0.7 * mi, rel=1e-12)


def test_infomaxvae_training_step_sends_each_gradient_to_its_own_networks(fixed_eps):
    """With SGD (lr 0.1): encoder and decoder move by -lr grad L, the critic by
    -lr grad(-I_hat) on a fresh z ~ q(z|x) from the updated encoder, nothing else."""
    model, *_ = _infomax()
    x, lr = _x(), 0.1
    ref = copy.deepcopy(model)
    opts = {"vae": torch.optim.SGD(model.vae_parameters(), lr=lr),
            "critic": torch.optim.SGD(model.critic.parameters(), lr=lr)}
    torch.manual_seed(5)
    model.training_step(x, opts)

    torch.manual_seed(5)
    vae_params = ref.vae_parameters()
    grads = torch.autograd.grad(ref.loss(x).loss, vae_params)
    with torch.no_grad():
        for p, g in zip(vae_params, grads, strict=True):
            p -= lr * g
        z = ref.encoder(x).sample()
    crit_params = list(ref.critic.parameters())
    crit_grads = torch.autograd.grad(-ref.mutual_info(x, z), crit_params)
    with torch.no_grad():
        for p, g in zip(crit_params, crit_grads, strict=True):
            p -= lr * g
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)


def test_infomaxvae_loss_gradient_reaches_the_encoder_through_the_mutual_information(
        fixed_eps):
    """The encoder's gradient of L includes -alpha grad I_hat through z = mu + sigma eps
    (models.md: the VAE loss's gradient goes to encoder and decoder): autograd against
    central differences of the loss (fixed eps, the same permutation), float64."""
    model, *_ = _infomax(alpha=5.0)
    x = _x()
    weight = model.encoder.network[0].weight

    def loss():
        torch.manual_seed(11)
        return model.loss(x).loss

    (got,) = torch.autograd.grad(loss(), weight)
    h = 1e-6
    for i, j in [(0, 0), (1, 2), (3, 1), (4, 0)]:
        with torch.no_grad():
            weight[i, j] += h
            up = loss().item()
            weight[i, j] -= 2 * h
            down = loss().item()
            weight[i, j] += h
        assert got[i, j].item() == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-9)


def test_infomax_critic_training_improves_the_mutual_information_estimate():
    """x ~ N(0, I_2), z = x + 0.5 noise: I(x; z) = 2 * 1/2 log(1 + 1/0.25) = log 5 = 1.61.
    300 critic steps raise the NWJ estimate (a lower bound) from below 0.3 to above 1.2,
    and it stays below the truth (within 0.1 sampling error)."""
    torch.manual_seed(0)
    model = aetk.build_model("infomaxvae", "gaussian", in_features=2, latent_dim=2, hidden=(32,))
    opt = model.configure_optimizers(3e-3)["critic"]
    x_val = torch.randn(8192, 2)
    z_val = x_val + 0.5 * torch.randn(8192, 2)

    def estimate():
        with torch.no_grad():
            return model.mutual_info(x_val, z_val).item()

    before = estimate()
    for _ in range(300):
        x = torch.randn(256, 2)
        opt.zero_grad()
        (-model.mutual_info(x, x + 0.5 * torch.randn(256, 2))).backward()
        opt.step()
    after = estimate()
    assert before < 0.3
    assert 1.2 < after < math.log(5) + 0.1


def test_reconstruct_and_sample_use_the_decoder_mean():
    enc, enc_net = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM))
    mu, _, _ = _hand_posterior(enc_net, X01)
    np.testing.assert_allclose(model.reconstruct(_x()).numpy(), special.expit(dec_net(mu)),
                               rtol=1e-12)
    torch.manual_seed(9)
    sample = model.sample(5)
    torch.manual_seed(9)
    z = torch.randn(5, Z_DIM, dtype=torch.float64).numpy()
    np.testing.assert_allclose(sample.numpy(), special.expit(dec_net(z)), rtol=1e-12)



def test_sample_draws_from_the_decoder_with_mean_only_false():
    """`sample(n, mean_only=False)` draws x ~ p(x|z) at z ~ N(0, I): Bernoulli draws are 0
    or 1, with frequencies E_z[sigmoid(logits(z))] (by hand over 200,000 numpy draws of z)
    within 5 standard errors; returning the probabilities instead passed every other test."""
    enc, _ = _gaussian_encoder()
    dec_net = NumpyMLP(Z_DIM, X_DIM, 2)
    model = aetk.VAE(enc, dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                               out_features=X_DIM))
    torch.manual_seed(4)
    n = 20_000
    x = model.sample(n, mean_only=False).numpy()
    assert set(np.unique(x)) <= {0.0, 1.0}
    p = special.expit(dec_net(np.random.default_rng(0).standard_normal((200_000, Z_DIM))))
    p = p.mean(0)
    assert (np.abs(x.mean(0) - p) < 5 * np.sqrt(p * (1 - p) / n)).all()

# build_model ---------------------------------------------------------------------------


def test_build_model_passes_options_to_decoder_and_model():
    m = aetk.build_model("infovae", "gaussian", in_features=5, latent_dim=3, hidden=(7,),
                         sigma=0.5, kernel="imq", scales=(1.0, 2.0), lam=10.0)
    assert m.decoder.sigma == 0.5
    assert (m.kernel, m.scales, m.lam) == ("imq", (1.0, 2.0), 10.0)
    assert m.build_spec["sigma"] == 0.5 and m.build_spec["kernel"] == "imq"
    assert m.encoder.network[1][0].weight.shape == (7, 5)
    assert aetk.build_model("beta_vae", "bernoulli", in_features=2, hidden=(3,)).beta == 4.0
    nb = aetk.build_model("vae", "negative_binomial", in_features=2, dispersion="sample")
    assert nb.decoder.dispersion == "sample"


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        (("vea", "bernoulli"), {}, r"unknown model 'vea'; valid: ae, irmae, vae, beta_vae, "
                                     r"beta_tcvae"),
        (("vae", "gauss"), {}, r"unknown likelihood 'gauss'; valid: bernoulli, gaussian, "
                               r"gaussian_learned, categorical, poisson, negative_binomial"),
        (("vae", "gaussian"), {"sigmaa": 1.0},
         r"unknown option\(s\) \['sigmaa'\] .*\(did you mean 'sigma' for 'sigmaa'\?\); "
         r"its options: \['beta', 'free_bits', 'n_samples', 'sigma'\]"),
        (("infovae", "bernoulli"), {"kernal": "imq"},
         r"\['kernal'\].*'alpha', 'kernel', 'lam', 'n_prior_samples', 'scales', 'unbiased'"),
        (("ae", "poisson"), {"beta": 2.0},
         r"unknown option\(s\) \['beta'\].*its options: \[\]; build_model's own: "
         r"\['in_features'"),
        (("vae", "bernoulli"), {"latent_dims": 2},
         r"\['latent_dims'\] .*\(did you mean 'latent_dim' for 'latent_dims'\?\)"),
        (("vae", "categorical"), {}, r"likelihood 'categorical' needs the option\(s\) "
                                     r"\['n_classes'\]"),
        (("vae", "bernoulli"), {"activation": "swish"}, r"unknown activation 'swish'; valid:"),
        (("infovae", "bernoulli"), {"kernel": "rbf"}, r"unknown kernel 'rbf'; valid:"),
        (("rhvae", "bernoulli"), {"centroids": torch.zeros(4, 3)},
         r"saved as JSON.*aetk.RHVAE\(encoder, decoder, centroids=<tensor"),
        (("vae", "bernoulli"), {"one_hot_inputs": True},
         r"one_hot_inputs=True is for the categorical likelihood of the inputs themselves, "
         r"not the 'bernoulli' likelihood"),
        (("vae", "categorical"), {"one_hot_inputs": True, "n_classes": 3, "out_features": 2},
         r"one_hot_inputs=True .* not a paired model, whose inputs are other data"),
        (("vae", "categorical"), {"one_hot_inputs": 1, "n_classes": 3},
         r"one_hot_inputs must be True, False or None, got 1"),
        # switches given as strings counted as true ("false" turned the float64 metric on)
        (("rhvae", "bernoulli"), {"float64_metric": "false"},
         r"float64_metric must be True or False, got 'false'"),
        (("hvae", "bernoulli"), {"learn_step_size": "no"},
         r"learn_step_size must be True or False, got 'no'"),
        (("vae", "gaussian_learned"), {"split": 0},
         r"split must be True or False, got 0"),
        # numbers given as strings or None failed deep inside ("'<' not supported between
        # instances of 'int' and 'str'"), from `aetk train --options` too
        (("vae", "gaussian"), {"sigma": "0.1"}, r"sigma must be a number, got '0.1'"),
        (("vae", "gaussian"), {"beta": None}, r"beta must be a number, got None"),
        (("vae", "gaussian"), {"free_bits": "x"}, r"free_bits must be a number, got 'x'"),
        (("vae", "categorical"), {"n_classes": "3"}, r"n_classes must be a number, got '3'"),
        (("vae", "gaussian"), {"n_samples": True}, r"n_samples must be a number, got True"),
    ],
)
def test_build_model_rejects_unknown_names(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model(*args, in_features=3, hidden=(4,), **kwargs)


@pytest.mark.parametrize(
    ("model", "kwargs", "pattern"),
    [
        ("vae", {"latent_dim": 0}, r"latent_dim must be a positive integer, got 0"),
        ("vae", {"hidden": (8, -3)}, r"layer widths must be positive integers, got 3 -> 8 -> -3"),
        ("beta_vae", {"beta": -1.0}, r"beta must be >= 0"),
        ("vae", {"n_samples": 0}, r"n_samples >= 1, got 1.0 and 0"),
        ("infovae", {"alpha": 1.5}, r"KL weight 1 - alpha and the MMD weight .* alpha=1.5"),
        ("infovae", {"lam": 0.5}, r"MMD weight alpha \+ lam - 1 must be >= 0.*lam=0.5"),
        ("infomaxvae", {"alpha": -1.0}, r"mutual-information weight alpha must be >= 0"),
        ("iwae", {"n_samples": 0}, r"n_samples must be an integer >= 1, got 0"),
        ("iwae", {"n_groups": 1.5}, r"n_groups must be an integer >= 1, got 1.5"),
        ("iwae", {"n_samples": float("inf")}, r"n_samples must be an integer >= 1, got inf"),
        ("ciwae", {"beta": 1.5}, r"beta must be in \[0, 1\], got 1.5"),
        ("beta_tcvae", {"gamma": -1}, r"alpha, beta and gamma must be >= 0"),
        ("beta_tcvae", {"dataset_size": 0}, r"dataset_size must be a positive integer, got 0"),
        ("vampprior", {"n_components": 0}, r"n_components must be an integer >= 1, got 0"),
        ("vampprior", {"beta": -1}, r"beta must be >= 0, got -1"),
        ("hvae", {"n_leapfrog": 2.5}, r"n_leapfrog must be an integer >= 0"),
        ("hvae", {"beta0": 1.0, "learn_beta0": True}, r"below 1 when learned\), got 1.0"),
        ("hvae", {"step_size": 0.0}, r"step_size must be positive, got 0.0"),
        ("hvae", {"step_size": [0.1, 0.2, 0.3], "latent_dim": 2},
         r"step_size must be a scalar or 2 values"),
        ("hvae", {"n_leapfrog": 0}, r"n_leapfrog=0 needs beta0=1"),
        ("rhvae", {"step_size": 0.0}, r"step_size must be a positive finite number"),
        ("rhvae", {"n_leapfrog": 2.5}, r"n_leapfrog must be an integer, got 2.5"),
        ("rhvae", {"n_fixed_point": 1.5}, r"n_fixed_point must be an integer >= 1, got 1.5"),
    ],
)
def test_build_model_rejects_meaningless_values(model, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model(model, "bernoulli", in_features=3, **kwargs)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("model", "likelihood", "kwargs"),
    [
        ("vae", "bernoulli", {"beta": NAN}),
        ("beta_vae", "bernoulli", {"beta": INF}),
        ("vae", "bernoulli", {"free_bits": NAN}),
        ("vae", "bernoulli", {"n_samples": 2.5}),
        ("lvae", "bernoulli", {"beta": NAN}),
        ("vampprior", "bernoulli", {"beta": NAN}),
        ("beta_tcvae", "bernoulli", {"beta": NAN}),
        ("dipvae", "bernoulli", {"lambda_od": NAN}),
        ("dipvae", "bernoulli", {"lambda_d": INF}),
        ("infovae", "bernoulli", {"lam": NAN}),
        ("infovae", "bernoulli", {"alpha": NAN}),
        ("infomaxvae", "bernoulli", {"alpha": NAN}),
        ("factorvae", "bernoulli", {"gamma": NAN}),
        ("wae", "bernoulli", {"lam": NAN}),
        ("vqvae", "bernoulli", {"beta": NAN}),
        ("vqvae", "bernoulli", {"restart_after": NAN}),
        ("rhvae", "bernoulli", {"centroids": 2.5}),
        ("vae", "gaussian", {"sigma": NAN}),
        ("vae", "gaussian", {"sigma": INF}),
        ("vae", "categorical", {"n_classes": 3.5}),
    ],
)
def test_build_model_rejects_nan_weights_and_fractional_counts(model, likelihood, kwargs):
    """These were taken: a NaN or infinite weight or sigma made fit's first loss NaN, with
    advice about the data's scale; n_samples=2.5, centroids=2.5 and n_classes=3.5 were
    truncated to 2, 2 and 3 without a word."""
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        aetk.build_model(model, likelihood, in_features=3, hidden=(4,), **kwargs)


@pytest.mark.filterwarnings("ignore::aetk.hamiltonian.FixedPointWarning")  # large steps
def test_forward_decodes_a_posterior_sample_and_the_flow_moves_it():
    """`model(x)` is p(x|z) at `posterior_sample(x)`: a draw of q(z|x) for a VAE, the code
    of an AE, and z_K of the Hamiltonian models' flow, which is the encoder's draw when
    the flow has no steps (K = 0, beta0 = 1) and moves it otherwise (with the decoder's
    force: it depends on the decoder's weights)."""
    x = torch.rand(6, 8)
    vae = aetk.build_model("vae", "bernoulli", in_features=8, latent_dim=2, hidden=(8,))
    torch.manual_seed(0)
    p = vae(x)
    torch.manual_seed(0)
    torch.testing.assert_close(p.mean, vae.decode(vae.encode(x).rsample()).mean)
    ae = aetk.build_model("ae", "bernoulli", in_features=8, latent_dim=2, hidden=(8,))
    torch.testing.assert_close(ae(x).mean, ae.decode(ae.encode(x)).mean)
    for name in ("hvae", "rhvae"):
        extra = {"centroids": 4} if name == "rhvae" else {}
        models = []
        for flow in ({"n_leapfrog": 0, "beta0": 1.0}, {"n_leapfrog": 3, "step_size": 0.3}):
            torch.manual_seed(0)  # the same networks (and centroids)
            models.append(aetk.build_model(name, "bernoulli", in_features=8, latent_dim=2,
                                           hidden=(8,), **flow, **extra))
            if name == "rhvae":
                models[-1].on_fit_start(x)
        still, moving = models
        torch.manual_seed(1)
        encoder_draw = still.encoder(x).rsample()
        torch.manual_seed(1)
        torch.testing.assert_close(still.posterior_sample(x), encoder_draw)
        torch.manual_seed(1)
        z_k = moving.posterior_sample(x)
        assert (z_k - encoder_draw).norm(dim=-1).min() > 1e-3
        last = [m for m in moving.decoder.modules() if isinstance(m, nn.Linear)][-1]
        (grad,) = torch.autograd.grad(z_k.sum(), last.weight)
        assert grad.abs().max() > 0


def test_embed_gives_the_point_codes_as_numpy_from_any_array():
    """model.embed: latent_mean in evaluation mode, in batches, from numpy of any number
    type, each row of a conditional model under its own condition; the mode is kept."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             input_noise=0.5)
    x = np.random.default_rng(0).random((10, 6))
    with torch.no_grad():
        expected = model.eval().latent_mean(torch.tensor(x, dtype=torch.float32)).numpy()
    model.train()
    got = model.embed(x, batch_size=3)  # float64 numpy, in four batches, without noise
    assert got.dtype == np.float32 and got.shape == (10, 2) and model.training
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(model.embed(torch.tensor(x)), model.embed(x))
    np.testing.assert_array_equal(model.embed((x > 0.5).astype(np.int64)),
                                  model.embed((x > 0.5).astype(np.float32)))
    assert model.embed(x[:0]).shape == (0, 2)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        model.embed(x, batch_size=0)

    cvae = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                            n_conditions=3).eval()
    c = np.eye(3)[np.arange(10) % 3]
    with torch.no_grad(), cvae.given(torch.tensor(c, dtype=torch.float32)):
        expected = cvae.latent_mean(torch.tensor(x, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(cvae.embed(x, c, batch_size=4), expected, rtol=1e-6,
                               atol=1e-6)
    # too few rows; and 3 labels for 3 classes, which given() would take as one row for all
    for rows, bad, shape in ((10, c[:9], r"\(10, 3\), got \(9, 3\)"),
                             (3, np.arange(3), r"\(3, 3\), got \(3,\)")):
        with pytest.raises(ValueError, match="give one row of conditions per sample, " + shape):
            cvae.embed(x[:rows], bad)


def test_after_training_the_data_is_checked_as_fit_checks_it():
    """log_marginal scores only data in the likelihood's support (pixel counts under a
    Bernoulli decoder got a positive log p(x)); embed refuses other feature sizes and NaN;
    class labels as conditions get a hint to one-hot them; hidden may be one int."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=8)
    assert model.build_spec["hidden"] == [8] and model.decoder.network[0].out_features == 8
    x = torch.rand(5, 6)
    assert bool((aetk.log_marginal(model, x, 4) < 0).all())
    with pytest.raises(ValueError, match="log_marginal data"):
        aetk.log_marginal(model, x * 16, 4)
    with pytest.raises(ValueError, match=r"embed data has feature shape \(3,\) but the model "
                                         r"expects \(6,\)"):
        model.embed(x[:, :3])
    with pytest.raises(ValueError, match="embed data has 5 NaN or infinite values; first at "
                                         "row 0, column 2"):
        model.embed(torch.where(torch.arange(6) == 2, float("nan"), x))
    cvae = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                            n_conditions=3)
    with pytest.raises(ValueError, match=r"conditions of shape \(5,\): give \(rows, 3\), or "
                                         r"\(3,\) for every row; class labels one-hot"):
        cvae.given(torch.tensor([0, 1, 2, 0, 1])).__enter__()


@pytest.mark.parametrize("name", ["vae", "lvae", "vampprior", "vqvae", "rhvae"])
def test_sample_sizes_are_checked(name):
    """sample(n) takes a whole number of samples (torch said 'negative dimension -1')."""
    model = aetk.build_model(name, "bernoulli", in_features=6, latent_dim=2, hidden=(4,))
    for n in (-1, 0, 2.5):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n}"):
            model.sample(n)


@pytest.mark.parametrize("name", ["ae", "irmae"])
def test_sample_without_a_prior_says_what_to_use(name):
    """An autoencoder has no prior: model.sample is a clear error pointing to the code
    mixture, not torch's "'AE' object has no attribute 'sample'"; hasattr stays False (the
    CLI's test for a sampler), and the recipe in the message works."""
    x = torch.rand(40, X_DIM)
    torch.manual_seed(0)
    model = aetk.build_model(name, "bernoulli", in_features=X_DIM, latent_dim=Z_DIM,
                             hidden=(HID,))
    with pytest.raises(aetk.NoPriorSampler, match="has no prior to sample from") as exc:
        model.sample(4)
    assert isinstance(exc.value, AttributeError)
    assert type(model).__name__ in str(exc.value) and "aetk.CodeMixture" in str(exc.value)
    assert not hasattr(model, "sample") and getattr(model, "sample", None) is None
    with pytest.raises(AttributeError, match="object has no attribute 'samples'"):
        model.samples  # noqa: B018  (other missing attributes: torch's message, unchanged)
    mixture = aetk.CodeMixture(model.embed(x))  # the message's recipe
    new = aetk.distributions.mean(model.decode(mixture.sample(4)))
    assert new.shape == (4, X_DIM)
    for other in ("vae", "wae", "vqvae", "hvae", "iwae", "lvae", "vampprior", "beta_tcvae"):
        built = aetk.build_model(other, "bernoulli", in_features=X_DIM, latent_dim=Z_DIM,
                                 hidden=(HID,))
        assert callable(built.sample), other

    class Failing(aetk.AE):
        @property
        def sample(self):
            return self.not_there  # a bug inside a model's own sampler

    failing = Failing(model.encoder, model.decoder)
    with pytest.raises(AttributeError, match="no attribute 'sample'") as exc:
        failing.sample  # noqa: B018
    assert not isinstance(exc.value, aetk.NoPriorSampler)  # it has one: no "no prior"


def test_build_model_takes_one_hidden_width_and_a_whole_float_latent_dim(tmp_path):
    """`hidden=8` is one layer of 8 and `latent_dim=2.0` is 2: the spec saves them as
    `[8]` and the int 2 (JSON `2`, not `2.0`), and the model reloads from it."""
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2.0, hidden=8)
    assert model.build_spec["hidden"] == [8]
    assert type(model.build_spec["latent_dim"]) is int and model.build_spec["latent_dim"] == 2
    model.save(tmp_path / "m")
    assert '"latent_dim": 2,' in (tmp_path / "m" / "config.json").read_text()
    assert aetk.load(tmp_path / "m").encode(torch.rand(3, 6)).mean.shape == (3, 2)


def test_embed_leaves_a_model_in_evaluation_mode_there():
    """embed puts back the mode it found, evaluation mode included: after it, every module
    of an eval-mode model with input noise is still in eval mode, so latent_mean stays
    noise-free and equals embed's codes."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             input_noise=0.5).eval()
    x = np.random.default_rng(1).random((5, 6)).astype(np.float32)
    codes = model.embed(x, batch_size=2)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        np.testing.assert_allclose(model.latent_mean(torch.from_numpy(x)).numpy(), codes,
                                   rtol=1e-6, atol=1e-6)


def test_embed_of_a_float64_model_gives_float64_codes_even_for_no_rows():
    """A float64 model's codes are float64, (N, d), and so is the empty result of no rows."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2,
                             hidden=(8,)).double()
    x = np.random.default_rng(0).random((4, 6))
    assert model.embed(x).dtype == np.float64
    empty = model.embed(x[:0])
    assert empty.dtype == np.float64 and empty.shape == (0, 2)


class FullCovarianceEncoder(nn.Module):
    """A user's encoder of full-covariance Gaussians, `N(mu(x), L(x) L(x)^T)`."""

    latent_dim, input_shape = Z_DIM, (X_DIM,)

    def __init__(self) -> None:
        super().__init__()
        self.net = _linear(X_DIM, 2 * Z_DIM + 1, np.random.default_rng(3))

    def forward(self, x: torch.Tensor) -> D.MultivariateNormal:
        out = self.net(x)
        tril = torch.diag_embed(out[:, Z_DIM:2 * Z_DIM].exp())
        tril = tril + 3 * out[:, -1, None, None] * torch.tensor([[0.0, 0.0], [1.0, 0.0]],
                                                            dtype=x.dtype)
        return D.MultivariateNormal(out[:, :Z_DIM], scale_tril=tril)


def _gaussian_decoder() -> nn.Module:
    return dec.GaussianDecoder(latent_dim=Z_DIM, output_shape=(X_DIM,), hidden=(HID,)).double()


def test_a_full_covariance_posterior_has_its_exact_kl() -> None:
    """The VAE's KL (and model.kl) of a full-covariance q(z|x) is torch's closed form for
    two multivariate Gaussians, not that of q's diagonal (0.23 nats lower in one row before)."""
    model = aetk.VAE(FullCovarianceEncoder(), _gaussian_decoder())
    x = torch.from_numpy(X01)
    q = model.encode(x)
    prior = D.MultivariateNormal(torch.zeros(Z_DIM, dtype=x.dtype),
                                 torch.eye(Z_DIM, dtype=x.dtype))
    exact = D.kl_divergence(q, prior)
    diagonal = D.kl_divergence(D.Normal(q.mean, q.stddev), D.Normal(0.0, 1.0)).sum(-1)
    assert (exact - diagonal).abs().max() > 0.2  # the test tells them apart
    torch.testing.assert_close(model.kl(q), exact)
    torch.testing.assert_close(model.loss(x).terms["kl"], exact.mean())
    with pytest.raises(ValueError, match="free_bits"):
        aetk.VAE(FullCovarianceEncoder(), _gaussian_decoder(), free_bits=0.1).loss(x)


class OtherPosteriorEncoder(nn.Module):
    """A user's encoder returning a non-Gaussian q(z|x): a Laplace (its KL to N(0, 1) is
    registered in torch) or a Student-t (none is)."""

    latent_dim, input_shape = Z_DIM, (X_DIM,)

    def __init__(self, family: str) -> None:
        super().__init__()
        self.net = _linear(X_DIM, 2 * Z_DIM, np.random.default_rng(6))
        self.family = family

    def forward(self, x: torch.Tensor) -> D.Distribution:
        loc, log_scale = self.net(x).chunk(2, -1)
        base = (D.Laplace(loc, log_scale.exp()) if self.family == "laplace"
                else D.StudentT(5.0, loc, log_scale.exp()))
        return D.Independent(base, 1)


def test_a_laplace_posterior_has_its_exact_kl_and_one_without_a_closed_form_is_refused():
    """The KL of a user's Laplace q(z|x) was the Gaussian formula at its mean and standard
    deviation (1.09 for a true 1.23 in the helper's case); it is now the Laplace's own:
    `-log(2b) - 1 + 1/2 log(2 pi) + 1/2 (m^2 + 2 b^2)` per dimension. A Student-t, whose KL
    to N(0, 1) torch does not know, is a ValueError instead of the same wrong formula."""
    x = torch.from_numpy(X01)
    model = aetk.VAE(OtherPosteriorEncoder("laplace"), _gaussian_decoder())
    q = model.encode(x)
    m, b = q.base_dist.loc, q.base_dist.scale
    exact = (-torch.log(2 * b) - 1 + 0.5 * math.log(2 * math.pi)
             + 0.5 * (m.square() + 2 * b.square())).sum(-1)
    gaussian = 0.5 * (q.variance + m.square() - 1 - q.variance.log()).sum(-1)
    assert (exact - gaussian).abs().max() > 0.05  # the test tells them apart
    torch.testing.assert_close(model.kl(q), exact)
    torch.testing.assert_close(model.loss(x).terms["kl"], exact.mean())
    with pytest.raises(ValueError, match="StudentT, whose KL to the prior"):
        aetk.VAE(OtherPosteriorEncoder("student"), _gaussian_decoder()).loss(x)


@pytest.mark.parametrize("make", [
    lambda e, d: aetk.BetaTCVAE(e, d, dataset_size=10),
    lambda e, d: aetk.VampPrior(e, d, n_components=2).double(),
    lambda e, d: aetk.LadderVAE(e, d, hidden=(HID,)).double(),
])
def test_models_of_diagonal_posteriors_refuse_a_full_covariance(make) -> None:
    model = make(FullCovarianceEncoder(), _gaussian_decoder())
    with pytest.raises(ValueError, match=r"diagonal Gaussian q\(z\|x\).*MultivariateNormal"):
        model.loss(torch.from_numpy(X01))


class PlainNormalEncoder(nn.Module):
    """A user's encoder returning `Normal(mu, sigma)` of batch shape (B, d), not an
    Independent one (`independent=True`: the same, wrapped)."""

    latent_dim, input_shape = Z_DIM, (X_DIM,)

    def __init__(self, independent: bool = False) -> None:
        super().__init__()
        self.net = _linear(X_DIM, 2 * Z_DIM, np.random.default_rng(5))
        self.independent = independent

    def forward(self, x: torch.Tensor) -> D.Distribution:
        mu, log_sigma = self.net(x).chunk(2, -1)
        q = D.Normal(mu, log_sigma.exp())
        return D.Independent(q, 1) if self.independent else q


def test_a_plain_normal_encoder_is_one_event_per_sample() -> None:
    """log q(z|x) of a user's plain Normal is per sample: importance weights and the
    VampPrior's KL failed with a shape error (a (B, d) log-density) before."""
    x = torch.from_numpy(X01)
    plain, wrapped = (aetk.VAE(PlainNormalEncoder(i), _gaussian_decoder()) for i in (False, True))
    wrapped.decoder.load_state_dict(plain.decoder.state_dict())
    z = torch.zeros(B, Z_DIM, dtype=x.dtype)
    assert plain.encode(x).log_prob(z).shape == (B,)
    torch.testing.assert_close(plain.encode(x).log_prob(z), wrapped.encode(x).log_prob(z))
    for model in (plain, wrapped):
        torch.manual_seed(0)
        model.result = aetk.log_marginal(model, x, n_samples=5)
    torch.testing.assert_close(plain.result, wrapped.result)
    vamp = aetk.VampPrior(PlainNormalEncoder(), _gaussian_decoder(), n_components=2).double()
    assert torch.isfinite(vamp.loss(x).loss)


class _PerCoordinateVAE(aetk.VAE):
    """A user's loss written for its encoder's plain Normal: log q per coordinate, summed."""

    def loss(self, x, target=None):
        q = self.encoder(x)
        z = q.rsample()
        log_q = q.log_prob(z).sum(-1)
        log_p = D.Normal(0.0, 1.0).log_prob(z).sum(-1)
        rec = -aetk.distributions.log_prob(self.decoder(z), x)
        kl = D.kl_divergence(q, D.Normal(torch.zeros_like(z), 1.0)).sum(-1)
        return aetk.LossOutput((rec + log_q - log_p).mean(), {"kl": kl.mean()})


def test_the_users_encoder_module_still_returns_its_own_distribution() -> None:
    """The models read a plain Normal as one event, but the user's module is not changed:
    a forward hook once made it return an Independent everywhere, so a user's loss that
    summed q.log_prob(z) over coordinates summed over the batch (6.15 became -8.67) and
    its KL to a plain Normal raised NotImplementedError."""
    x = torch.from_numpy(X01)
    encoder = PlainNormalEncoder()
    model = _PerCoordinateVAE(encoder, _gaussian_decoder())
    assert type(encoder(x)) is D.Normal and type(model.encoder(x)) is D.Normal
    torch.manual_seed(0)
    loss = model.loss(x)
    torch.manual_seed(0)
    q = encoder(x)
    z = q.rsample()
    expected = (-aetk.distributions.log_prob(model.decoder(z), x) + q.log_prob(z).sum(-1)
                - D.Normal(0.0, 1.0).log_prob(z).sum(-1)).mean()
    torch.testing.assert_close(loss.loss, expected)
    assert isinstance(model.encode(x), D.Independent)


def test_parts_of_another_model_kind_or_latent_size_are_refused_when_composed():
    """Composed by hand, a decoder of another latent size failed at the first batch in the
    decoder's matmul ("mat1 and mat2 shapes cannot be multiplied (10x2 and 3x8)"), a VAE
    with a DeterministicEncoder in "'Tensor' object has no attribute 'rsample'", an AE with
    a GaussianEncoder in linear() ("must be Tensor, not Independent") and a VAE with a
    DeterministicDecoder in "'Tensor' object has no attribute 'log_prob'"."""
    sizes = {"in_features": 5, "hidden": (4,)}
    gauss, det = GaussianEncoder(latent_dim=2, **sizes), DeterministicEncoder(latent_dim=2, **sizes)
    bern = dec.BernoulliDecoder(latent_dim=2, out_features=5, hidden=(4,))
    mse = dec.DeterministicDecoder(latent_dim=2, out_features=5, hidden=(4,))
    with pytest.raises(ValueError, match="the encoder's latent_dim is 2 but the decoder's 3"):
        aetk.VAE(gauss, dec.BernoulliDecoder(latent_dim=3, out_features=5, hidden=(4,)))
    for cls in (aetk.VAE, aetk.InfoVAE, aetk.IWAE, aetk.HVAE, aetk.RHVAE, aetk.BetaTCVAE,
                aetk.VampPrior, aetk.LadderVAE):
        with pytest.raises(ValueError, match=f"{cls.__name__} takes an encoder of a "
                                             "distribution q\\(z\\|x\\): give it a Gaussian"):
            cls(det, bern)
        with pytest.raises(ValueError, match=f"{cls.__name__} scores data by a likelihood"):
            cls(gauss, mse)
    for cls in (aetk.AE, aetk.IRMAE, aetk.WAE, aetk.VQVAE):
        with pytest.raises(ValueError, match=f"{cls.__name__} takes an encoder of codes"):
            cls(gauss, mse)
        cls(det, mse), cls(det, bern)  # a point prediction or any likelihood
    aetk.VAE(gauss, bern)


def test_an_encoder_network_of_the_wrong_width_is_refused():
    """A GaussianEncoder whose network gave 3 outputs for latent_dim 2 split them into mu
    (2) and one log sigma broadcast over both dimensions, and trained in silence; with 2
    outputs the latent space was 1-D and the decoder failed in its matmul."""
    x = torch.rand(6, 5)
    for width in (3, 2, 5):
        with pytest.raises(ValueError, match=rf"GaussianEncoder's network returned {width} "
                                             r"values per row, but latent_dim=2 needs 4"):
            GaussianEncoder(nn.Linear(5, width), latent_dim=2)(x)
    with pytest.raises(ValueError, match=r"DeterministicEncoder's network returned 4 values "
                                         r"per row, but latent_dim=2 needs 2$"):
        DeterministicEncoder(nn.Linear(5, 4), latent_dim=2)(x)
    q = GaussianEncoder(nn.Linear(5, 4), latent_dim=2)(x)
    assert q.mean.shape == q.stddev.shape == (6, 2)
    assert DeterministicEncoder(nn.Linear(5, 2), latent_dim=2)(x).shape == (6, 2)


def test_a_user_encoder_must_state_the_latent_dim_of_its_codes():
    """A user encoder whose codes had 2 coordinates under latent_dim 3 trained, then decode
    blamed the user's z and sample failed in a matmul; one without latent_dim failed with
    nn.Module's bare AttributeError (the helper's findings, 2026-12-03)."""
    x = torch.from_numpy(X01)

    class Wrong(PlainNormalEncoder):
        latent_dim = Z_DIM + 1

    class Codes(nn.Module):  # a deterministic encoder of the wrong width
        latent_dim, input_shape = Z_DIM + 1, (X_DIM,)

        def forward(self, x):
            return x[:, :Z_DIM]

    class Decoder(nn.Module):  # states no latent_dim, so only the codes can disagree
        def forward(self, z):
            return D.Independent(D.Normal(z.sum(-1, keepdim=True).expand(-1, X_DIM), 1.0), 1)

    for model in (aetk.VAE(Wrong(), Decoder()), aetk.AE(Codes(), Decoder())):
        with pytest.raises(ValueError, match=rf"the encoder's codes have {Z_DIM} coordinates, "
                                             rf"but its latent_dim is {Z_DIM + 1}"):
            model.encode(x)
    for latent_dim in (None, "2", 0, True):
        encoder = PlainNormalEncoder()
        encoder.latent_dim = latent_dim
        with pytest.raises(TypeError, match=rf"the encoder needs an attribute latent_dim, .* "
                                            rf"got {re.escape(repr(latent_dim))}"):
            aetk.VAE(encoder, _gaussian_decoder())
    assert aetk.VAE(PlainNormalEncoder(), _gaussian_decoder()).encode(x).event_shape == (Z_DIM,)


def test_an_encoder_distribution_whose_event_takes_the_batch_axis_is_refused():
    """A user encoder returning Independent(Normal(mu, sigma), 2) for a batch made one
    event of all rows: log q(z|x) summed them, so an HVAE's loss was -16.0 where the
    per-row encoder's is 3.76 (in silence), and the IWAE failed in torch's broadcasting."""

    class Encoder(nn.Module):
        latent_dim = 2

        def __init__(self, event_dims: int) -> None:
            super().__init__()
            self.net, self.event_dims = nn.Linear(5, 4), event_dims

        def forward(self, x):
            mu, log_sigma = self.net(x).chunk(2, -1)
            return D.Independent(D.Normal(mu, log_sigma.exp()), self.event_dims)

    torch.manual_seed(0)
    x = torch.rand(8, 5)
    for cls in (aetk.VAE, aetk.IWAE, aetk.HVAE):
        decoder = dec.BernoulliDecoder(latent_dim=2, out_features=5, hidden=(4,))
        assert torch.isfinite(cls(Encoder(1), decoder).loss(x).loss)
        with pytest.raises(ValueError, match=r"encoder's Independent has batch shape \(\) and "
                                             r"event shape \(8, 2\) for 8 rows"):
            cls(Encoder(2), decoder).loss(x)


def test_a_user_decoder_whose_event_shape_is_no_shape_is_named_when_the_model_is_built():
    """A user decoder that set `event_shape = 6` (an int, for rows of 6 values) was taken,
    and fit failed with "object of type 'int' has no len()"; now building the model is a
    TypeError naming it. Tuples, lists and torch.Size stay shapes."""

    class Laplace(aetk.Decoder):
        def __init__(self, event_shape) -> None:
            super().__init__()
            self.lin, self.event_shape = nn.Linear(2, 6), event_shape

        def forward(self, z):
            return D.Independent(D.Laplace(self.lin(z), 1.0), 1)

    def encoder():
        return GaussianEncoder(in_features=6, latent_dim=2, hidden=(4,))

    with pytest.raises(TypeError, match=r"decoder's event_shape must be the shape of one data "
                                        r"point, a tuple of ints .* got 6$"):
        aetk.VAE(encoder(), Laplace(6))
    torch.manual_seed(0)
    for shape in ((6,), [6], torch.Size([6]), None):
        model = aetk.VAE(encoder(), Laplace(shape))
        hist = aetk.fit(model, torch.randn(8, 6), epochs=1, batch_size=4, progress=False)
        assert np.isfinite(hist["train_loss"]).all()


@pytest.mark.parametrize("kind", ["hvae", "rhvae"])
def test_posterior_sample_refuses_data_outside_the_likelihoods_support(kind):
    """A Bernoulli HVAE's flow scored counts and diverged in one seed of five, with "try a
    smaller learning rate" though nothing trained: refused as log_marginal refuses them."""
    opts = {"centroids": 3} if kind == "rhvae" else {}
    model = aetk.build_model(kind, "bernoulli", in_features=4, latent_dim=2, hidden=(8,),
                             **opts)
    x = torch.rand(6, 4).round()
    if kind == "rhvae":
        model.on_fit_start(x)
    assert model.posterior_sample(x).shape == (6, 2)
    with pytest.raises(ValueError, match=r"^posterior_sample data has \d+ values outside "
                                         r"\[0.0, 1.0\] \(a Bernoulli decoder needs values"):
        model.posterior_sample(x * 7)
