"""FactorVAE: the loss against the formula by hand in numpy, the dimension-wise permutation,
which networks each optimiser step moves, the total-correlation estimate of a trained
discriminator against the closed form for Gaussians, training and save/load."""

import copy
import math

import numpy as np
import pytest
import torch

import aetk
from aetk import decoders as dec
from aetk.encoders import GaussianEncoder
from aetk.models import Discriminator
from aetk.models.factorvae import permute_dims

from helpers import FixedMLP, central_differences, digits, fix_normal_noise

B, X_DIM, Z_DIM = 6, 4, 3
RNG = np.random.default_rng(7)
X01 = RNG.random((B, X_DIM))
EPS = RNG.standard_normal((B, Z_DIM))


@pytest.fixture
def fixed_eps(monkeypatch):
    """z = mu + sigma * EPS."""
    fix_normal_noise(monkeypatch, EPS)


def _model(gamma=6.0):
    """A FactorVAE of fixed tanh networks and their numpy twins."""
    enc, dec_net, disc = FixedMLP(X_DIM, 2 * Z_DIM, 1), FixedMLP(Z_DIM, X_DIM, 2), \
        FixedMLP(Z_DIM, 2, 3)
    discriminator = Discriminator(Z_DIM, (5,))
    discriminator.network = disc.module
    model = aetk.FactorVAE(GaussianEncoder(enc.module, latent_dim=Z_DIM),
                           dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                                out_features=X_DIM),
                           discriminator, gamma=gamma)
    return model, enc, dec_net, disc


def test_loss_is_the_vae_loss_plus_gamma_times_the_discriminators_log_odds(fixed_eps):
    """L = -<log p(x|z)> + <KL> + gamma <logit_joint(z) - logit_product(z)>."""
    model, enc, dec_net, disc = _model(gamma=2.5)
    out = enc(X01)
    mu, sigma = out[:, :Z_DIM], np.exp(out[:, Z_DIM:])
    z = mu + sigma * EPS
    logits = dec_net(z)
    rec = -(X01 * logits - np.logaddexp(0, logits)).sum(1).mean()
    kl = (0.5 * (sigma**2 + mu**2 - 1) - np.log(sigma)).sum(1).mean()
    d = disc(z)
    tc = (d[:, 0] - d[:, 1]).mean()
    got = model.loss(torch.from_numpy(X01))
    assert got.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert got.terms["kl"].item() == pytest.approx(kl, rel=1e-12)
    assert got.terms["total_correlation"].item() == pytest.approx(tc, rel=1e-12)
    assert abs(tc) > 0.1  # the check above can tell a wrong sign or class order
    assert got.loss.item() == pytest.approx(rec + kl + 2.5 * tc, rel=1e-12)


def test_loss_gradient_reaches_the_encoder_through_the_total_correlation(fixed_eps):
    """The TC estimate is a function of the reparameterised z, and its gradient goes to the
    encoder: with the noise fixed, autograd's gradient of L in the encoder's first layer
    equals central differences (gamma = 20, so the TC's share is large)."""
    model, *_ = _model(gamma=20.0)
    x = torch.from_numpy(X01)
    weight = model.encoder.network[0].weight
    (got,) = torch.autograd.grad(model.loss(x).loss, weight)
    want = central_differences(lambda: model.loss(x).loss, weight)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-8)


def test_discriminator_loss_and_accuracy_by_hand():
    """The cross-entropy of "joint" on `joint` and of "product" on `permute_dims(other)`
    (the same seeded permutation), each class's mean weighted 1/2 whatever the halves'
    sizes, and the mean of the two classes' accuracies, from the logits by hand."""
    model, _, _, disc = _model()
    rng = np.random.default_rng(8)
    joint, other = rng.standard_normal((4, Z_DIM)), 2 * rng.standard_normal((3, Z_DIM))
    torch.manual_seed(3)
    loss, accuracy = model.discriminator_loss(torch.from_numpy(joint), torch.from_numpy(other))
    torch.manual_seed(3)
    product = permute_dims(torch.from_numpy(other)).numpy()
    assert not np.array_equal(product, other)

    def log_softmax(logits):
        return logits - np.logaddexp(logits[:, :1], logits[:, 1:])

    d_joint, d_product = disc(joint), disc(product)
    want = -(log_softmax(d_joint)[:, 0].mean() + log_softmax(d_product)[:, 1].mean()) / 2
    hits = (d_joint.argmax(1) == 0).mean(), (d_product.argmax(1) == 1).mean()
    assert hits[0] != hits[1]  # the test tells the classes' accuracies apart
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert accuracy.item() == pytest.approx(sum(hits) / 2, rel=1e-6)  # float32 hits


def test_gamma_zero_is_the_vae_loss():
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", "bernoulli", in_features=8, latent_dim=3,
                             hidden=(16,), gamma=0.0)
    vae = aetk.VAE(model.encoder, model.decoder)
    x = torch.rand(32, 8)
    torch.manual_seed(3)
    out = model.loss(x)
    torch.manual_seed(3)
    assert out.loss.item() == vae.loss(x).loss.item()
    assert out.terms["total_correlation"].abs() > 0  # the estimate is there, weighted by 0
    model.gamma = 6.0
    torch.manual_seed(3)
    assert model.loss(x).loss.item() != vae.loss(x).loss.item()


def test_permute_dims_shuffles_every_column_by_its_own_permutation():
    z = torch.arange(64 * 5, dtype=torch.float64).reshape(64, 5)  # z[i, j] = 5 i + j
    torch.manual_seed(0)
    out = permute_dims(z)
    rows = ((out - torch.arange(5)) / 5).long()  # the source row of every entry
    for j in range(5):
        assert sorted(rows[:, j].tolist()) == list(range(64))  # a permutation of column j
        assert (rows[:, j] != torch.arange(64)).sum() > 50
    assert len({tuple(rows[:, j].tolist()) for j in range(5)}) == 5
    # correlated columns come out uncorrelated, with the same marginals
    x = torch.randn(20000)
    pair = torch.stack([x, 0.9 * x + math.sqrt(1 - 0.81) * torch.randn(20000)], 1)
    shuffled = permute_dims(pair)
    assert torch.corrcoef(pair.T)[0, 1] > 0.89
    assert abs(torch.corrcoef(shuffled.T)[0, 1]) < 0.03
    assert torch.equal(shuffled.sort(0).values, pair.sort(0).values)


@pytest.mark.parametrize(("lr_vae", "lr_disc"), [(0.1, 0.0), (0.0, 0.1), (0.1, 0.1)])
def test_each_step_moves_only_its_own_networks(lr_vae, lr_disc):
    """With SGD: the VAE step moves encoder and decoder by -lr grad L (the discriminator's
    gradient from L is dropped), the discriminator step moves the discriminator by -lr grad
    of its cross-entropy on fresh codes of the updated encoder, and no gradient of it
    reaches the encoder. A learning rate of 0 leaves its networks exactly as they were."""
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", "bernoulli", in_features=8, latent_dim=3,
                             hidden=(16,), discriminator_hidden=(16,)).double()
    x = torch.rand(10, 8, dtype=torch.float64)
    start, ref = copy.deepcopy(model.state_dict()), copy.deepcopy(model)
    opts = {"vae": torch.optim.SGD(model.vae_parameters(), lr=lr_vae),
            "discriminator": torch.optim.SGD(model.discriminator.parameters(), lr=lr_disc)}
    torch.manual_seed(5)
    out = model.training_step(x, opts)

    torch.manual_seed(5)
    vae_params, disc_params = ref.vae_parameters(), list(ref.discriminator.parameters())
    vae_grads = torch.autograd.grad(ref.loss(x).loss, vae_params)
    with torch.no_grad():
        for p, g in zip(vae_params, vae_grads, strict=True):
            p -= lr_vae * g
        z = ref.encoder(x).sample()
    disc_loss, _ = ref.discriminator_loss(*z.tensor_split(2))
    disc_grads = torch.autograd.grad(disc_loss, disc_params)
    with torch.no_grad():
        for p, g in zip(disc_params, disc_grads, strict=True):
            p -= lr_disc * g
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)
        moved = not torch.equal(a, start[name])
        assert moved == (lr_disc > 0 if name.startswith("discriminator.") else lr_vae > 0), name
    for p, g in zip(model.vae_parameters(), vae_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-12)  # nothing added by D
    assert out.terms["discriminator"].item() == pytest.approx(disc_loss.item(), rel=1e-12)
    assert 0 <= out.terms["discriminator_accuracy"].item() <= 1


def test_a_one_row_batch_trains_only_the_vae():
    """Half of one row is nothing to permute: the discriminator waits for the next batch."""
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", "bernoulli", in_features=8, latent_dim=3,
                             hidden=(16,), discriminator_hidden=(16,))
    start = copy.deepcopy(model.state_dict())
    out = model.training_step(torch.rand(1, 8), model.configure_optimizers(1e-2))
    assert torch.isfinite(out.loss) and "discriminator" not in out.terms
    for name, value in model.state_dict().items():
        assert torch.equal(value, start[name]) == name.startswith("discriminator."), name


def _trained_estimate(rho):
    """TC_hat of z ~ N(0, [[1, rho], [rho, 1]]) from a discriminator trained 300 steps on
    z against permuted z (independent batches), on 16384 fresh draws."""
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", "gaussian", in_features=2, latent_dim=2, hidden=(4,))
    opt = model.configure_optimizers(1e-3)["discriminator"]
    chol = torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]]))
    for _ in range(300):
        opt.zero_grad()
        model.discriminator_loss(torch.randn(256, 2) @ chol.T,
                                 torch.randn(256, 2) @ chol.T)[0].backward()
        opt.step()
    with torch.no_grad():
        return model.total_correlation(torch.randn(16384, 2) @ chol.T).item()


def test_a_trained_discriminator_estimates_the_total_correlation():
    """TC of a bivariate Gaussian with correlation rho: -1/2 log(1 - rho^2), 0.830 nats at
    rho = 0.9, 0 at rho = 0. Over six seeds the estimates were 0.72 to 0.99 and -0.011 to
    0.012 (0.99 and -0.005 with this seed)."""
    correlated, independent = _trained_estimate(0.9), _trained_estimate(0.0)
    truth = -0.5 * math.log(1 - 0.9**2)
    assert truth - 0.3 < correlated < truth + 0.3
    assert abs(independent) < 0.05


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "poisson"])
def test_fit_lowers_the_validation_loss_on_digits(likelihood):
    x, _ = digits(likelihood, n=900)
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", likelihood, in_features=64, latent_dim=4,
                             hidden=(32,))
    hist = aetk.fit(model, x[:700], x[700:], epochs=4, batch_size=64, lr=3e-3,
                    progress=False, device="cpu")
    assert np.isfinite(hist.drop(columns="seconds").to_numpy(dtype=float)).all()
    assert (hist["val_loss"].diff().dropna() < 0).all()
    assert {"train_discriminator", "train_discriminator_accuracy"} <= set(hist.columns)


def test_build_model_defaults_gamma_to_6():
    """build_model's FactorVAE weighs the total correlation by gamma = 6 unless told, as
    the class does."""
    model = aetk.build_model("factorvae", "bernoulli", in_features=64, hidden=(8,))
    assert model.gamma == 6.0 and "gamma" not in model.build_spec


def test_save_and_load_give_the_same_loss(tmp_path):
    x, _ = digits("bernoulli", n=200)
    torch.manual_seed(0)
    model = aetk.build_model("factorvae", "bernoulli", in_features=64, latent_dim=3,
                             hidden=(16,), gamma=2.0, discriminator_hidden=[12, 12])
    aetk.fit(model, x, epochs=1, batch_size=50, progress=False, device="cpu")
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert again.gamma == 2.0 and again.discriminator.network[2].weight.shape == (12, 12)
    model.eval()
    torch.manual_seed(4)
    want = model.loss(x)
    torch.manual_seed(4)
    got = again.loss(x)
    assert got.loss.item() == want.loss.item()
    assert got.terms["total_correlation"].item() == want.terms["total_correlation"].item()


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"gamma": -1.0}, r"total-correlation weight gamma must be >= 0, got -1.0"),
    ({"discriminator_hidden": [8, 0]}, r"layer widths must be positive integers, got 3 -> 8 -> 0"),
    ({"lambda_od": 1.0}, r"unknown option\(s\) \['lambda_od'\].*'discriminator_hidden', 'gamma'"),
])
def test_build_model_rejects_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model("factorvae", "bernoulli", in_features=5, latent_dim=3, **kwargs)
