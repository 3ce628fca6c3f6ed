"""DIP-VAE: the covariance penalty of both types against numpy's biased covariance of the
hand-computed encoder outputs, the VAE loss when the weights are 0, training and
save/load."""

import numpy as np
import pytest
import torch

import aetk
from aetk import decoders as dec
from aetk.encoders import GaussianEncoder
from aetk.train import evaluate

from helpers import FixedMLP, digits, fix_normal_noise

B, X_DIM, Z_DIM = 7, 4, 3
RNG = np.random.default_rng(11)
X01 = RNG.random((B, X_DIM))
EPS = RNG.standard_normal((B, Z_DIM))


@pytest.fixture
def fixed_eps(monkeypatch):
    """z = mu + sigma * EPS."""
    fix_normal_noise(monkeypatch, EPS)


@pytest.mark.parametrize(("dip_type", "lambda_d", "want_lambda_d"),
                         [("i", None, 30.0), ("ii", None, 3.0), ("i", 0.5, 0.5),
                          ("ii", 7.0, 7.0)])
def test_loss_is_the_vae_loss_plus_the_covariance_penalty(fixed_eps, dip_type, lambda_d,
                                                          want_lambda_d):
    """C = Cov[mu] (type i) or Cov[mu] + <diag sigma^2> (type ii), np.cov with bias=True
    (normalised by B); L = rec + KL + lambda_od sum_{i != j} C_ij^2 + lambda_d sum (C_ii - 1)^2,
    lambda_d by default 10 lambda_od (i) or lambda_od (ii)."""
    enc, dec_net = FixedMLP(X_DIM, 2 * Z_DIM, 1), FixedMLP(Z_DIM, X_DIM, 2)
    model = aetk.DIPVAE(GaussianEncoder(enc.module, latent_dim=Z_DIM),
                        dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                             out_features=X_DIM),
                        lambda_od=3.0, lambda_d=lambda_d, type=dip_type)
    assert model.lambda_d == want_lambda_d
    out = enc(X01)
    mu, sigma = out[:, :Z_DIM], np.exp(out[:, Z_DIM:])
    cov = np.cov(mu, rowvar=False, bias=True)
    if dip_type == "ii":
        cov += np.diag((sigma**2).mean(0))
    off_diagonal = (cov[~np.eye(Z_DIM, dtype=bool)] ** 2).sum()
    diagonal = ((np.diag(cov) - 1) ** 2).sum()
    logits = dec_net(mu + sigma * EPS)
    rec = -(X01 * logits - np.logaddexp(0, logits)).sum(1).mean()
    kl = (0.5 * (sigma**2 + mu**2 - 1) - np.log(sigma)).sum(1).mean()
    got = model.loss(torch.from_numpy(X01))
    assert got.terms["off_diagonal"].item() == pytest.approx(off_diagonal, rel=1e-12)
    assert got.terms["diagonal"].item() == pytest.approx(diagonal, rel=1e-12)
    # normalised by B - 1 the penalty would be another number: the test tells them apart
    unbiased = np.cov(mu, rowvar=False)
    off_unbiased = (unbiased[~np.eye(Z_DIM, dtype=bool)] ** 2).sum()
    assert got.terms["off_diagonal"].item() != pytest.approx(off_unbiased, rel=1e-3)
    want = rec + kl + 3.0 * off_diagonal + want_lambda_d * diagonal
    assert got.loss.item() == pytest.approx(want, rel=1e-12)
    assert got.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)


@pytest.mark.parametrize("dip_type", ["i", "ii"])
def test_zero_weights_give_the_vae_loss(dip_type):
    torch.manual_seed(0)
    model = aetk.build_model("dipvae", "bernoulli", in_features=8, latent_dim=3, hidden=(16,),
                             lambda_od=0.0, lambda_d=0.0, type=dip_type)
    vae = aetk.VAE(model.encoder, model.decoder)
    x = torch.rand(32, 8)
    torch.manual_seed(3)
    out = model.loss(x)
    torch.manual_seed(3)
    assert out.loss.item() == vae.loss(x).loss.item()
    assert out.terms["diagonal"] > 0 and out.terms["off_diagonal"] > 0  # there, weighted by 0


@pytest.mark.parametrize(("likelihood", "dip_type"),
                         [("bernoulli", "i"), ("bernoulli", "ii"), ("gaussian", "i"),
                          ("poisson", "ii")])
def test_fit_lowers_the_validation_loss_on_digits(likelihood, dip_type):
    """Below the untrained model's after every epoch, and lower after the last than after
    the first. (Not every epoch: with type i's lambda_d = 100 the penalty on 64-row batch
    covariances moves the validation loss by a few per cent between epochs.)"""
    x, _ = digits(likelihood, n=900)
    torch.manual_seed(0)
    model = aetk.build_model("dipvae", likelihood, in_features=64, latent_dim=4, hidden=(32,),
                             type=dip_type)
    before = evaluate(model, x[700:].split(64))["val_loss"]
    hist = aetk.fit(model, x[:700], x[700:], epochs=4, batch_size=64, lr=3e-3,
                    progress=False, device="cpu")
    assert np.isfinite(hist.drop(columns="seconds").to_numpy(dtype=float)).all()
    assert (hist["val_loss"] < before).all()
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]


def test_save_and_load_give_the_same_loss(tmp_path):
    x, _ = digits("bernoulli", n=200)
    torch.manual_seed(0)
    model = aetk.build_model("dipvae", "bernoulli", in_features=64, latent_dim=3,
                             hidden=(16,), lambda_od=2.0, type="ii")
    aetk.fit(model, x, epochs=1, batch_size=50, progress=False, device="cpu")
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert (again.type, again.lambda_od, again.lambda_d) == ("ii", 2.0, 2.0)
    torch.manual_seed(4)
    want = model.loss(x)
    torch.manual_seed(4)
    got = again.loss(x)
    assert got.loss.item() == want.loss.item()
    assert got.terms["off_diagonal"].item() == want.terms["off_diagonal"].item()


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"type": "iii"}, r"type must be 'i' or 'ii', got 'iii'"),
    ({"lambda_od": -1.0}, r"lambda_od and lambda_d must be >= 0, got -1.0 and -10.0"),
    ({"lambda_d": -2.0}, r"lambda_od and lambda_d must be >= 0, got 10.0 and -2.0"),
    ({"gamma": 1.0}, r"unknown option\(s\) \['gamma'\].*'lambda_d', 'lambda_od', 'type'"),
])
def test_build_model_rejects_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model("dipvae", "bernoulli", in_features=5, latent_dim=3, **kwargs)


class _FullCovarianceEncoder(torch.nn.Module):
    """`N(mu, L L^T)` from a network's outputs: mu, log diag L, then L's lower entries."""

    latent_dim = Z_DIM

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.distributions.MultivariateNormal:
        out = self.net(x)
        rows, cols = torch.tril_indices(Z_DIM, Z_DIM, -1)
        tril = torch.diag_embed(out[:, Z_DIM:2 * Z_DIM].exp())
        tril[:, rows, cols] = out[:, 2 * Z_DIM:]
        return torch.distributions.MultivariateNormal(out[:, :Z_DIM], scale_tril=tril)


def test_type_ii_takes_the_full_covariances_of_the_posteriors():
    """For full-covariance posteriors C is the covariance of the mixture 1/B sum_b
    N(mu_b, Sigma_b), `<Sigma_b + mu_b mu_b^T> - <mu><mu>^T` by hand; before, only the
    diagonals of the Sigma_b entered C."""
    n_lower = Z_DIM * (Z_DIM - 1) // 2
    enc, dec_net = FixedMLP(X_DIM, 2 * Z_DIM + n_lower, 3), FixedMLP(Z_DIM, X_DIM, 4)
    model = aetk.DIPVAE(_FullCovarianceEncoder(enc.module),
                        dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                             out_features=X_DIM), type="ii")
    out = enc(X01)
    mu = out[:, :Z_DIM]
    tril = np.zeros((B, Z_DIM, Z_DIM))
    tril[:, np.arange(Z_DIM), np.arange(Z_DIM)] = np.exp(out[:, Z_DIM:2 * Z_DIM])
    rows, cols = np.tril_indices(Z_DIM, -1)
    tril[:, rows, cols] = out[:, 2 * Z_DIM:]
    sigma = tril @ tril.transpose(0, 2, 1)
    want = (sigma + mu[:, :, None] * mu[:, None, :]).mean(0) - np.outer(mu.mean(0), mu.mean(0))
    got = model.covariance(model.encode(torch.from_numpy(X01))).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12)
    own = sigma.mean(0)
    assert np.abs(own - np.diag(np.diag(own))).max() > 0.1  # the test tells them apart
    off = want - np.diag(np.diag(want))
    assert model.loss(torch.from_numpy(X01)).terms["off_diagonal"].item() == pytest.approx(
        (off**2).sum(), rel=1e-12)
