"""WAE-MMD: the loss against the reconstruction and the MMD written out in numpy (the
paper's IMQ kernel summed over C = c 2 d), the one-row batch, codes pulled to the prior
where a plain AE's are not, training, save/load, sampling and build_model's checks."""

import numpy as np
import pytest
import torch
from scipy import special

import aetk
from aetk import decoders as dec
from aetk.encoders import DeterministicEncoder
from aetk.kernels import mmd
from aetk.models.wae import PAPER_SCALES
from aetk.train import evaluate

from helpers import FixedMLP, digits, mmd_by_hand

B, X_DIM, Z_DIM = 6, 4, 3
RNG = np.random.default_rng(5)
X01 = RNG.random((B, X_DIM))
PAPER_C = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)  # the paper code's multiples of 2 d sigma_z^2


def _wae(decoder="bernoulli", **kwargs):
    """A WAE of fixed tanh networks and their numpy twins."""
    enc, dec_net = FixedMLP(X_DIM, Z_DIM, 1), FixedMLP(Z_DIM, X_DIM, 2)
    cls = dec.BernoulliDecoder if decoder == "bernoulli" else dec.DeterministicDecoder
    model = aetk.WAE(DeterministicEncoder(enc.module, latent_dim=Z_DIM),
                     cls(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM), **kwargs)
    return model, enc, dec_net


def _sq_dist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _paper_imq(a, b):
    """sum_c C / (C + ||a - b||^2), C = c 2 d (sigma_z = 1): the kernel of the paper's code."""
    return sum(c * 2 * Z_DIM / (c * 2 * Z_DIM + _sq_dist(a, b)) for c in PAPER_C)


def _gaussian(scales):
    return lambda a, b: sum(np.exp(-_sq_dist(a, b) / (s**2 * Z_DIM)) for s in scales)


@pytest.mark.parametrize(("kwargs", "gram", "unbiased", "n_prior"), [
    ({}, _paper_imq, True, B),
    ({"lam": 2.5, "n_prior_samples": 9}, _paper_imq, True, 9),
    ({"kernel": "gaussian", "scales": (0.5, 2.0), "unbiased": False},
     _gaussian((0.5, 2.0)), False, B),
])
@pytest.mark.parametrize("decoder", ["bernoulli", "deterministic"])
def test_loss_is_the_reconstruction_plus_lam_times_the_mmd(kwargs, gram, unbiased, n_prior,
                                                           decoder):
    """L = c(x, g(f(x))) + lam MMD(f(x), prior draws); c = -<log p(x|z)> or the mean
    squared error; by default the paper's IMQ kernel and lam = 10."""
    model, enc, dec_net = _wae(decoder, **kwargs)
    torch.manual_seed(7)
    out = model.loss(torch.from_numpy(X01))
    torch.manual_seed(7)
    prior = torch.randn(n_prior, Z_DIM, dtype=torch.float64).numpy()
    z = enc(X01)
    logits = dec_net(z)
    if decoder == "bernoulli":
        rec = -(X01 * logits - np.logaddexp(0, logits)).sum(1).mean()
    else:
        rec = ((logits - X01) ** 2).mean()
    d = mmd_by_hand(z, prior, gram, unbiased)
    assert out.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert out.terms["mmd"].item() == pytest.approx(d, rel=1e-10)
    assert abs(d) > 1e-3  # the codes are far from the prior: a wrong kernel would show
    lam = kwargs.get("lam", 10.0)
    assert out.loss.item() == pytest.approx(rec + lam * d, rel=1e-10)


def test_default_scales_are_the_papers_bandwidths():
    """kernels.imq_kernel has C = 2 d rho^2: rho = sqrt(c) gives the paper's C = c 2 d."""
    a, b = torch.from_numpy(RNG.standard_normal((5, Z_DIM))), torch.from_numpy(X01[:, :Z_DIM])
    got = sum(aetk.kernels.imq_kernel(a, b, s) for s in PAPER_SCALES)
    np.testing.assert_allclose(got.numpy(), _paper_imq(a.numpy(), b.numpy()), rtol=1e-12)


def test_a_one_row_batch_takes_the_v_statistic():
    """No pairs for the U-statistic: k(z, z) = 7 (one per scale) for both samples."""
    model, enc, _ = _wae()
    torch.manual_seed(3)
    out = model.loss(torch.from_numpy(X01[:1]))
    torch.manual_seed(3)
    prior = torch.randn(1, Z_DIM, dtype=torch.float64).numpy()
    want = 7 + 7 - 2 * _paper_imq(enc(X01[:1]), prior).item()
    assert out.terms["mmd"].item() == pytest.approx(want, rel=1e-12)


def test_the_mmd_pulls_the_codes_to_the_prior():
    """Same networks, seed and data: the WAE's validation codes lie near N(0, I), a plain
    AE's far from it (measured: MMD 0.005 against 0.96, code means (0.17, -0.08) against
    (3.0, -5.1)); their reconstructions are alike (24.2 and 25.1 nats)."""
    x, _ = digits("bernoulli", n=900)
    codes, rec = {}, {}
    for name in ("ae", "wae"):
        torch.manual_seed(0)
        model = aetk.build_model(name, "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
        hist = aetk.fit(model, x[:700], x[700:], epochs=10, batch_size=64, lr=3e-3,
                        progress=False, device="cpu")
        codes[name], rec[name] = model.latent_mean(x[700:]).detach(), \
            hist["val_reconstruction"].iloc[-1]
    prior = torch.randn(2000, 2)
    wae, ae = (mmd(codes[k], prior, "imq").item() for k in ("wae", "ae"))
    assert wae < 0.02 < 0.5 < ae
    assert codes["wae"].mean(0).abs().max() < 0.3
    assert rec["wae"] < 1.1 * rec["ae"]


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "poisson"])
def test_fit_lowers_the_validation_loss_on_digits(likelihood):
    x, _ = digits(likelihood, n=900)
    torch.manual_seed(0)
    model = aetk.build_model("wae", likelihood, in_features=64, latent_dim=4, hidden=(32,))
    torch.manual_seed(1)
    before = evaluate(model, x[700:].split(64))["val_loss"]
    hist = aetk.fit(model, x[:700], x[700:], epochs=4, batch_size=64, lr=3e-3,
                    progress=False, device="cpu")
    assert np.isfinite(hist.drop(columns="seconds").to_numpy(dtype=float)).all()
    assert hist["val_loss"].iloc[0] < before
    assert (hist["val_loss"].diff().dropna() < 0).all()


def test_save_and_load_give_the_same_loss(tmp_path):
    x, _ = digits("bernoulli", n=200)
    torch.manual_seed(0)
    model = aetk.build_model("wae", "bernoulli", in_features=64, latent_dim=3, hidden=(16,),
                             lam=4.0, kernel="gaussian", scales=[0.5, 1.0], n_prior_samples=30)
    aetk.fit(model, x, epochs=1, batch_size=50, progress=False, device="cpu")
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert (again.lam, again.kernel, again.scales, again.n_prior_samples) == \
        (4.0, "gaussian", (0.5, 1.0), 30)
    torch.manual_seed(4)
    want = model.loss(x)
    torch.manual_seed(4)
    got = again.loss(x)
    assert got.loss.item() == want.loss.item() and got.terms["mmd"] == want.terms["mmd"]


def test_sample_decodes_prior_draws_and_a_deterministic_decoder_gives_tensors():
    model, _, dec_net = _wae()
    torch.manual_seed(9)
    got = model.sample(5)
    torch.manual_seed(9)
    z = torch.randn(5, Z_DIM, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got.numpy(), special.expit(dec_net(z)), rtol=1e-12)
    det, enc, dec_net = _wae("deterministic")
    np.testing.assert_allclose(det.reconstruct(torch.from_numpy(X01)).numpy(),
                               dec_net(enc(X01)), rtol=1e-12)
    assert det.sample(3).shape == (3, X_DIM)


@pytest.mark.parametrize("likelihood", sorted(aetk.LIKELIHOODS))
def test_build_model_takes_every_likelihood(likelihood):
    x, opts = digits(likelihood, n=64)
    torch.manual_seed(0)
    model = aetk.build_model("wae", likelihood, in_features=64, latent_dim=2, hidden=(8,),
                             **opts)
    assert isinstance(model.encoder, DeterministicEncoder)
    out = model.loss(x)
    assert torch.isfinite(out.loss) and out.terms["mmd"] > 0
    out.loss.backward()
    assert all(p.grad is not None for p in model.encoder.parameters())


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"lam": -1.0}, r"the MMD weight lam must be >= 0, got -1.0"),
    ({"scales": []}, r"scales must be positive kernel bandwidths, got \[\]"),
    ({"scales": [1.0, 0.0]}, r"scales must be positive kernel bandwidths, got \[1.0, 0.0\]"),
    ({"n_prior_samples": 1}, r"n_prior_samples must be an integer >= 2, got 1"),
    ({"kernel": "rbf"}, r"unknown kernel 'rbf'; valid: gaussian, imq"),
    ({"beta": 1.0}, r"unknown option\(s\) \['beta'\].*'kernel', 'lam', 'n_prior_samples', "
                    r"'scales', 'unbiased'"),
])
def test_build_model_rejects_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model("wae", "bernoulli", in_features=5, latent_dim=3, **kwargs)


@pytest.mark.parametrize("name", ["wae", "infovae"])
@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"scales": [1.0, -2.0]}, r"scales must be positive kernel bandwidths"),
    ({"n_prior_samples": 1}, r"n_prior_samples must be an integer >= 2, got 1"),
    ({"kernel": "rbf"}, r"unknown kernel 'rbf'; valid: gaussian, imq"),
])
def test_both_mmd_models_refuse_options_the_mmd_cannot_use(name, kwargs, pattern):
    """One prior draw has no pair for the U-statistic: refused at construction, not a NaN
    loss in training."""
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model(name, "bernoulli", in_features=5, latent_dim=3, **kwargs)
