"""The ladder VAE: its loss, KLs, importance weights, encoder and sampler by hand (float64,
fixed noise, scipy's densities); the precision-weighted combination against the product
of the two densities; training on digits, save and load, the beta schedules; the command
line and the pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import distributions as D

import aetk
from aetk import cli, report, storage
from aetk.cli.encode import encode_data
from aetk.distributions import log_prob
from aetk.models.lvae import precision_weighted
from aetk.train import evaluate

from helpers import central_differences, digits


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def tiny(likelihood: str = "bernoulli", **options) -> aetk.LadderVAE:
    """A float64 ladder VAE on 6 features: z1 of 2, z2 of 3."""
    options = {"top_dim": 3, "beta": 0.7, **options}
    return aetk.build_model("lvae", likelihood, in_features=6, latent_dim=2, hidden=(5,),
                            **options).double()


def queue_noise(monkeypatch: pytest.MonkeyPatch, method: str, *eps: np.ndarray) -> list:
    """`Normal.<method>` (rsample or sample) returns `loc + scale * eps`, the given `eps` in
    turn; returns the queue, empty once all were used."""
    queue = [torch.from_numpy(e) for e in eps]
    monkeypatch.setattr(D.Normal, method, lambda self, shape=(): self.loc + self.scale
                        * queue.pop(0))
    return queue


def ladder_by_hand(model: aetk.LadderVAE, x: torch.Tensor, eps2: np.ndarray,
                   eps1: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The bottom-up and top-down passes from the model's networks, in numpy: the estimate
    (mu1, s1), q(z2|x) (mu2, s2), z2 = mu2 + s2 eps2, p(z1|z2) (mup, sp), the precision-
    weighted q(z1|x, z2) (muq, sq) and z1 = muq + sq eps1."""
    with torch.no_grad():
        mu1, log_s1 = model.encoder.network(x).chunk(2, -1)
        mu2, log_s2 = model.top_head(model.top_encoder.network(x)).chunk(2, -1)
        out = {"mu1": mu1.numpy(), "s1": log_s1.exp().numpy(), "mu2": mu2.numpy(),
               "s2": log_s2.exp().numpy()}
        out["z2"] = out["mu2"] + out["s2"] * eps2
        mup, log_sp = model.top_down(torch.from_numpy(out["z2"])).chunk(2, -1)
    out["mup"], out["sp"] = mup.numpy(), log_sp.exp().numpy()
    precision = out["s1"] ** -2 + out["sp"] ** -2
    out["muq"] = (out["mu1"] * out["s1"] ** -2 + out["mup"] * out["sp"] ** -2) / precision
    out["sq"] = precision ** -0.5
    if eps1 is not None:
        out["z1"] = out["muq"] + out["sq"] * eps1
    return out


def bernoulli_log_lik(model: aetk.LadderVAE, z1: np.ndarray, x: np.ndarray) -> np.ndarray:
    """log p(x|z1) of the Bernoulli decoder from its logits, summed over features."""
    with torch.no_grad():
        logits = model.decoder(torch.from_numpy(z1)).base_dist.logits.numpy()
    return (x * logits - np.logaddexp(0, logits)).sum(-1)


def kl_normal(mu_a, s_a, mu_b, s_b) -> np.ndarray:
    """KL(N(mu_a, s_a^2) || N(mu_b, s_b^2)), summed over the last axis."""
    return (np.log(s_b / s_a) + (s_a**2 + (mu_a - mu_b) ** 2) / (2 * s_b**2) - 0.5).sum(-1)


def test_loss_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    rng = np.random.default_rng(1)
    x = rng.uniform(size=(4, 6))
    eps2, eps1 = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    queue = queue_noise(monkeypatch, "rsample", eps2, eps1)
    out = model.loss(torch.from_numpy(x))
    assert not queue  # z2 drawn first, then z1
    h = ladder_by_hand(model, torch.from_numpy(x), eps2, eps1)
    rec = -bernoulli_log_lik(model, h["z1"], x).mean()
    kl_z2 = kl_normal(h["mu2"], h["s2"], 0.0, 1.0).mean()
    kl_z1 = kl_normal(h["muq"], h["sq"], h["mup"], h["sp"]).mean()
    terms = {k: v.item() for k, v in out.terms.items()}
    assert terms == pytest.approx({"reconstruction": rec, "kl": kl_z1 + kl_z2, "kl_z1": kl_z1,
                                   "kl_z2": kl_z2}, rel=1e-10)
    assert out.loss.item() == pytest.approx(rec + 0.7 * (kl_z1 + kl_z2), rel=1e-10)
    assert kl_z1 > 0.1 and kl_z2 > 0.1  # both levels matter in the check


def test_draws_are_reparameterised_through_both_levels(monkeypatch: pytest.MonkeyPatch) -> None:
    """`posterior_sample(x)` is z1 = mu_q + s_q eps1 at the drawn z2 = mu2 + s2 eps2, as the
    loss draws it (by hand); with the noise fixed, the loss's gradient in q(z2|x)'s head and
    in the encoder's last bias equals central differences: it flows through the draw
    of z2 too."""
    model = tiny()
    rng = np.random.default_rng(6)
    x = torch.from_numpy(rng.uniform(size=(4, 6)))
    noise = {3: torch.from_numpy(rng.standard_normal((4, 3))),  # z2's, by its size
             2: torch.from_numpy(rng.standard_normal((4, 2)))}  # z1's
    monkeypatch.setattr(D.Normal, "rsample", lambda self, shape=(): self.loc + self.scale
                        * noise[self.loc.shape[-1]])
    h = ladder_by_hand(model, x, noise[3].numpy(), noise[2].numpy())
    np.testing.assert_allclose(model.posterior_sample(x).detach(), h["z1"], rtol=1e-12)
    for param in (model.top_head[0].weight, model.encoder.network[1][2].bias):
        (got,) = torch.autograd.grad(model.loss(x).loss, param)
        want = central_differences(lambda: model.loss(x).loss, param)
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-8)


def test_a_top_encoder_without_a_network_feeds_its_mean_and_log_scale() -> None:
    """An encoder with no `network` (a user's module returning a distribution): q(z2|x)
    comes from `top_head([mean, log stddev])` of the top encoder's q, checked by hand."""

    class OwnEncoder(torch.nn.Module):
        latent_dim = 2

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> D.Independent:
            loc, raw = self.linear(x).chunk(2, -1)
            return D.Independent(D.Normal(loc, torch.nn.functional.softplus(raw) + 0.1), 1)

    model = aetk.LadderVAE(OwnEncoder(), aetk.BernoulliDecoder(latent_dim=2, out_features=6,
                                                               hidden=(5,)),
                           top_dim=3, hidden=(5,)).double()
    x = torch.from_numpy(np.random.default_rng(7).uniform(size=(4, 6)))
    with torch.no_grad():
        q = model.top_encoder(x)
        features = torch.cat([q.mean, q.stddev.log()], -1)
        mu2, log_s2 = model.top_head(features).chunk(2, -1)
        q2 = model.bottom_up(x)[1]
    assert (q.stddev.log() < 0).any()  # the log matters: stddev below 1 somewhere
    np.testing.assert_allclose(q2.mean, mu2, rtol=1e-12)
    np.testing.assert_allclose(q2.stddev, log_s2.exp(), rtol=1e-12)
    assert np.isfinite(model.loss(x).loss.item())


def test_precision_weighting_is_the_normalised_product_of_the_densities() -> None:
    mu_a, s_a = np.array([0.3, -1.0, 2.0]), np.array([0.5, 3.0, 0.01])
    mu_b, s_b = np.array([-0.7, 1.5, 0.0]), np.array([2.0, 0.2, 5.0])
    a = D.Independent(D.Normal(torch.from_numpy(mu_a), torch.from_numpy(s_a)), 1)
    b = D.Independent(D.Normal(torch.from_numpy(mu_b), torch.from_numpy(s_b)), 1)
    mu, sigma = (t.numpy() for t in precision_weighted(a, b))
    t = np.linspace(-8, 8, 800_001)
    for j in range(3):
        product = stats.norm.pdf(t, mu_a[j], s_a[j]) * stats.norm.pdf(t, mu_b[j], s_b[j])
        density = product / np.trapezoid(product, t)
        mean = np.trapezoid(t * density, t)
        sd = np.sqrt(np.trapezoid((t - mean) ** 2 * density, t))
        assert (mu[j], sigma[j]) == pytest.approx((mean, sd), rel=1e-6, abs=1e-9), j
        np.testing.assert_allclose(stats.norm.pdf(t, mu[j], sigma[j]), density,
                                   atol=1e-6 * density.max())


def test_kl_of_z1_in_closed_form_matches_monte_carlo(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(3, 6))
    eps2 = rng.standard_normal((3, 3))
    queue_noise(monkeypatch, "rsample", eps2, rng.standard_normal((3, 2)))
    kl_z1 = model.loss(torch.from_numpy(x)).terms["kl_z1"].item()
    h = ladder_by_hand(model, torch.from_numpy(x), eps2)
    z = h["muq"] + h["sq"] * rng.standard_normal((200_000, 3, 2))
    log_ratio = (stats.norm.logpdf(z, h["muq"], h["sq"])
                 - stats.norm.logpdf(z, h["mup"], h["sp"])).sum(-1).mean(-1)
    assert kl_z1 == pytest.approx(log_ratio.mean(), abs=4 * log_ratio.std() / np.sqrt(2e5))
    assert kl_z1 > 0.1


def test_encode_kl_and_prior_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    """encode(x) is q(z1|x, z2 = mu_hat_2); kl(q) is the loss's KL at a draw of z2; the prior
    is the joint one, and refuses z1 alone."""
    model = tiny()
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.uniform(size=(4, 6)))
    q = model.encode(x)
    at_mean = ladder_by_hand(model, x, np.zeros((4, 3)))
    np.testing.assert_allclose(q.mean.detach(), at_mean["muq"], rtol=1e-12)
    np.testing.assert_allclose(q.stddev.detach(), at_mean["sq"], rtol=1e-12)
    np.testing.assert_allclose(model.latent_mean(x).detach(), at_mean["muq"], rtol=1e-12)
    eps2 = rng.standard_normal((4, 3))
    queue = queue_noise(monkeypatch, "sample", eps2)
    kl = model.kl(q).detach().numpy()
    assert not queue
    h = ladder_by_hand(model, x, eps2)
    np.testing.assert_allclose(kl, kl_normal(h["mu2"], h["s2"], 0.0, 1.0)
                               + kl_normal(h["muq"], h["sq"], h["mup"], h["sp"]), rtol=1e-10)
    z1 = rng.standard_normal((4, 2))
    joint = model.prior_log_prob(torch.from_numpy(z1), torch.from_numpy(h["z2"]))
    np.testing.assert_allclose(joint.detach(), stats.norm.logpdf(z1, h["mup"], h["sp"]).sum(-1)
                               + stats.norm.logpdf(h["z2"]).sum(-1), rtol=1e-10)
    with pytest.raises(ValueError, match="prior of z1 alone"):
        model.prior_log_prob(torch.from_numpy(z1))
    plain = D.Independent(D.Normal(q.mean, q.stddev), 1)
    with pytest.raises(ValueError, match=r"pass the distribution of model\.encode"):
        model.kl(plain)
    with pytest.raises(ValueError, match=r"pass the distribution of model\.encode"):
        model.importance_log_weights(plain, x, 3)


def test_importance_weights_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny()
    rng = np.random.default_rng(4)
    x = (rng.uniform(size=(4, 6)) > 0.5).astype(float)
    q = model.encode(torch.from_numpy(x))
    eps2, eps1 = rng.standard_normal((5, 4, 3)), rng.standard_normal((5, 4, 2))
    queue = queue_noise(monkeypatch, "sample", eps2, eps1)
    log_w = model.importance_log_weights(q, torch.from_numpy(x), 5).detach().numpy()
    assert not queue and log_w.shape == (5, 4)
    expected = []
    for s in range(5):
        h = ladder_by_hand(model, torch.from_numpy(x), eps2[s], eps1[s])
        expected.append(bernoulli_log_lik(model, h["z1"], x)
                        + stats.norm.logpdf(h["z1"], h["mup"], h["sp"]).sum(-1)
                        + stats.norm.logpdf(h["z2"]).sum(-1)
                        - stats.norm.logpdf(h["z1"], h["muq"], h["sq"]).sum(-1)
                        - stats.norm.logpdf(h["z2"], h["mu2"], h["s2"]).sum(-1))
    np.testing.assert_allclose(log_w, np.stack(expected), rtol=1e-10)


@pytest.fixture(scope="module")
def trained() -> tuple[aetk.LadderVAE, torch.Tensor, torch.Tensor]:
    """A ladder VAE fitted to 500 binarised digits for 10 epochs, and 200 validation
    digits."""
    torch.manual_seed(0)
    x = (digits(n=700)[0] > 0.5).float()
    model = aetk.build_model("lvae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,))
    aetk.fit(model, x[:500], epochs=10, batch_size=64, lr=3e-3, progress=False, device="cpu")
    return model, x[:500], x[500:]


def test_log_marginal_is_above_the_elbo_and_one_draw_is_the_elbo(trained) -> None:
    """With one importance sample the estimate of log p(x) is the ELBO the loss averages
    (the weights are the loss's terms); with many it is above it."""
    model, _, val = trained
    with torch.no_grad():
        elbo = np.array([-model.loss(val).loss.item() for _ in range(200)])
        one = np.array([aetk.log_marginal(model, val, n_samples=1).mean().item()
                        for _ in range(200)])
        many = aetk.log_marginal(model, val, n_samples=500).mean().item()
    se = np.sqrt(elbo.var() / len(elbo) + one.var() / len(one))
    assert abs(one.mean() - elbo.mean()) < 4 * se
    assert many > elbo.mean() + 0.05 + 4 * se


@pytest.mark.parametrize(("likelihood", "margin"), [("bernoulli", 7.0), ("gaussian", 3.0),
                                                     ("poisson", 200.0)])
def test_training_on_digits_lowers_the_validation_loss(likelihood: str, margin: float) -> None:
    """Drops of at least about half of those measured after 3 epochs over seeds 0, 1, 2
    (bernoulli 15.3 to 16.6, gaussian 7.2 to 7.9, poisson 461 to 472 nats per image)."""
    x, options = digits(likelihood, n=1400)
    model = aetk.build_model("lvae", likelihood, in_features=64, latent_dim=2, hidden=(32,),
                             **options)
    before = evaluate(model, x[1000:].split(200))["val_loss"]
    hist = aetk.fit(model, x[:1000], x[1000:], epochs=3, batch_size=64, lr=3e-3,
                    progress=False, device="cpu")
    assert np.isfinite(hist.drop(columns="seconds").to_numpy()).all()
    assert hist["val_loss"].iloc[-1] < before - margin
    np.testing.assert_allclose(hist["val_kl"], hist["val_kl_z1"] + hist["val_kl_z2"],
                               rtol=1e-5)


def test_save_load_round_trip_and_options(tmp_path: Path, trained) -> None:
    model, _, val = trained
    model.save(tmp_path / "m")
    back = aetk.load(tmp_path / "m")
    assert isinstance(back, aetk.LadderVAE) and back.top_dim == 2
    losses = []
    for m in (model, back):
        torch.manual_seed(5)
        losses.append(m.loss(val).loss.item())
    assert losses[0] == losses[1]
    other = aetk.build_model("lvae", "gaussian", in_features=64, latent_dim=2, hidden=(8,),
                             top_dim=4, beta=0.5)
    other.save(tmp_path / "o")
    other = aetk.load(tmp_path / "o")
    assert (other.top_dim, other.beta, other.build_spec["top_dim"]) == (4, 0.5, 4)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['n_components'\]"):
        aetk.build_model("lvae", "bernoulli", in_features=4, n_components=3)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        aetk.build_model("lvae", "bernoulli", in_features=4, beta=-1)
    with pytest.raises(ValueError, match="top_dim must be an integer >= 1"):
        aetk.build_model("lvae", "bernoulli", in_features=4, top_dim=0)


def test_cyclical_beta_weighs_both_kls_and_capacity_is_refused(trained) -> None:
    _, train, val = trained
    model = aetk.build_model("lvae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,))
    hist = aetk.fit(model, train, val, epochs=4, batch_size=100, progress=False, device="cpu",
                    callbacks=[aetk.CyclicalBeta(4, n_cycles=1)])
    assert hist["beta"].tolist() == [0.0, 0.5, 1.0, 1.0]
    np.testing.assert_allclose(hist["val_loss"], hist["val_reconstruction"]
                               + hist["beta"] * hist["val_kl"], rtol=1e-5)
    with pytest.raises(ValueError, match="CapacityAnnealing needs a VAE"):
        aetk.CapacityAnnealing(5.0, 4).on_epoch_start(model, 1)


def test_sample_is_ancestral(monkeypatch: pytest.MonkeyPatch) -> None:
    """z2 ~ N(0, I) of top_dim, z1 ~ p(z1|z2), decoded; counts at given totals."""
    model = tiny("gaussian")
    rng = np.random.default_rng(5)
    eps1 = rng.standard_normal((6, 2))
    queue_noise(monkeypatch, "sample", eps1)
    torch.manual_seed(3)
    got = model.sample(6)
    torch.manual_seed(3)
    z2 = torch.randn(6, 3, dtype=torch.float64)
    with torch.no_grad():
        mup, log_sp = model.top_down(z2).chunk(2, -1)
        expected = model.decoder(mup + log_sp.exp() * torch.from_numpy(eps1)).mean
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    monkeypatch.undo()
    counts = tiny("multinomial").sample(5, mean_only=False, total_count=torch.arange(5) * 10)
    np.testing.assert_array_equal(counts.sum(-1), np.arange(5) * 10)


def test_the_top_encoder_is_a_fresh_copy_of_any_encoder() -> None:
    """q(z2|x) has its own network: a convolutional encoder's copy is convolutional, a
    hand-made encoder is copied too, and no weight is shared or starts equal."""
    x = digits(n=16)[0]
    conv = aetk.build_model("lvae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,),
                            channels=(4,), image_shape=(8, 8), top_dim=3)
    assert any(isinstance(m, torch.nn.Conv2d) for m in conv.top_encoder.modules())
    net = torch.nn.Sequential(torch.nn.Linear(64, 12), torch.nn.Tanh(), torch.nn.Linear(12, 4))
    own = aetk.LadderVAE(aetk.GaussianEncoder(net, latent_dim=2),
                         aetk.BernoulliDecoder(latent_dim=2, out_features=64, hidden=(8,)),
                         hidden=(8,))
    class Attending(torch.nn.Module):  # MultiheadAttention resets by _reset_parameters
        def __init__(self) -> None:
            super().__init__()
            self.attention = torch.nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = torch.nn.Linear(64, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seq = x.reshape(len(x), 8, 8)
            return self.out(self.attention(seq, seq, seq)[0].flatten(1))

    attending = aetk.LadderVAE(aetk.GaussianEncoder(Attending(), latent_dim=2),
                               aetk.BernoulliDecoder(latent_dim=2, out_features=64,
                                                     hidden=(8,)), hidden=(8,))
    for model in (conv, own, attending):
        assert np.isfinite(model.loss(x).loss.item())
        mine = dict(model.encoder.named_parameters())
        for name, p in model.top_encoder.named_parameters():
            assert p.data_ptr() != mine[name].data_ptr()
            if "weight" in name:  # drawn at random (attention's biases start at zero)
                assert not torch.equal(p, mine[name]), name


def test_extreme_scales_stay_finite() -> None:
    """Two standard deviations of 1e-12 combine to 7.07e-13 in float32 (the product of
    the variances underflows to 0 there), and top-encoder outputs of 200 that the top head
    ignores (their exp overflows float32) leave the loss finite."""
    tiny_a = D.Independent(D.Normal(torch.zeros(3), torch.full((3,), 1e-12)), 1)
    tiny_b = D.Independent(D.Normal(torch.ones(3), torch.full((3,), 1e-12)), 1)
    loc, scale = precision_weighted(tiny_a, tiny_b)
    torch.testing.assert_close(scale, torch.full((3,), 1e-12 / math.sqrt(2)), rtol=1e-5, atol=0)
    torch.testing.assert_close(loc, torch.full((3,), 0.5))
    model = aetk.build_model("lvae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    with torch.no_grad():
        last = [m for m in model.top_encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.bias[2:].fill_(200.0)  # the outputs in the place of log sigma
        model.top_head[0].weight[:, 2:] = 0
    assert np.isfinite(model.loss(digits(n=16)[0]).loss.item())


def test_conditions_reach_both_new_networks() -> None:
    """A conditional ladder VAE: q(z2|x, c) and p(z1|z2, c) change with c, and it samples
    only given conditions."""
    model = tiny(n_conditions=3)
    x, z2 = torch.rand(4, 6, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    parts = []
    for k in range(3):
        with model.given(torch.eye(3)[k]):
            parts.append((model.bottom_up(x)[1].mean, model.prior_z1(z2).mean))
            assert model.sample(2).shape == (2, 6)
    assert not torch.allclose(parts[0][0], parts[1][0])
    assert not torch.allclose(parts[0][1], parts[1][1])
    with pytest.raises(RuntimeError, match="this network is conditional"):
        model.sample(2)


def test_command_line_trains_encodes_and_samples(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """`aetk train --model lvae` end to end: the stored ELBO is the model's (log p(x) above it
    on average), its KL split is left out, and the sampler draws."""
    data, model = str(tmp_path / "d.zarr"), str(tmp_path / "m")
    assert cli.main(["preprocess", "--source", "digits", "--n-samples", "300", "--transforms",
                     "scale01", "--validation-fraction", "0.3", "--seed", "1",
                     "--out", data]) == 0
    assert cli.main(["train", "--data", data, "--model", "lvae", "--likelihood", "bernoulli",
                     "--hidden", "32", "--options", '{"top_dim": 3}', "--epochs", "4",
                     "--batch-size", "32", "--beta-schedule", "cyclical:n_cycles=1",
                     "--no-progress", "--out", model, "--history",
                     str(tmp_path / "h.tsv")]) == 0
    assert aetk.load(model).top_dim == 3
    assert cli.main(["encode", "--data", data, "--model", model, "--n-importance", "200",
                     "--traversal-steps", "0", "--out", str(tmp_path / "l.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "l.zarr")
    val = lat["split"].values == storage.SPLIT_VALIDATION
    np.testing.assert_allclose(lat["elbo"], lat["log_likelihood"] - lat["kl"], rtol=1e-6)
    assert lat["log_marginal"].values[val].mean() > lat["elbo"].values[val].mean()
    # the loss's ELBO: on average minus the loss (5 standard errors)...
    stored, ladder = storage.read_data(data), aetk.load(model)
    x = torch.from_numpy(stored.x)
    with torch.no_grad():
        loss = np.mean([ladder.loss(x).loss.item() for _ in range(100)])
    elbo = lat["elbo"].values
    assert -elbo.mean() == pytest.approx(loss, abs=5 * elbo.std() / np.sqrt(len(elbo)))
    # ...whose z1 follow a drawn z2 (posterior_sample), not z2's mean (encode)
    monkeypatch.setattr(ladder, "posterior_sample", lambda x: torch.zeros(len(x), 2))
    enc = encode_data(ladder, stored, batch_size=64, n_examples=2, n_generated=0, seed=0)
    with torch.no_grad():
        at_zero = log_prob(ladder.decode(torch.zeros(len(x), 2)), x)
    np.testing.assert_allclose(enc["log_likelihood"], at_zero, rtol=1e-6)
    assert "z2 ~ q(z2|x), then z1 ~ q(z1|x, z2)" in lat.attrs["log_marginal"]
    split = report._kl_split(lat, val)
    assert np.isnan(split["val_mutual_info"]) and np.isnan(split["val_marginal_kl"])
    assert np.isfinite(split["val_total_correlation"])
    assert cli.main(["sample", "--model", model, "--n", "7",
                     "--out", str(tmp_path / "s.zarr")]) == 0
    assert storage.read_zarr(tmp_path / "s.zarr")["x"].shape == (7, 64)


def test_pipeline_dry_run_passes_the_ladder_options(tmp_path: Path) -> None:
    from workdirs import make_workdir, snakemake

    wd = make_workdir(tmp_path, {"grid": {"models": ["lvae"], "likelihoods": ["bernoulli"]},
                                 "model_options": {"lvae": {"top_dim": 3, "beta": 0.5}},
                                 "train": {"beta_schedule": "cyclical"}})
    out = snakemake(wd, "-n", "-p", "--cores", "1", "--configfile", "test.yaml").stdout
    trains = [line for line in out.splitlines() if "Shell command: aetk train" in line]
    assert trains and all("--model lvae" in line for line in trains)
    assert all(f"--options '{json.dumps({'beta': 0.5, 'top_dim': 3})}'" in line
               and "--beta-schedule cyclical" in line for line in trains)


def test_z2_of_the_wrong_shape_or_kind_is_named() -> None:
    """prior_z1 and prior_log_prob given a z2 of latent_dim instead of top_dim coordinates
    failed in the top-down network ("mat1 and mat2 shapes cannot be multiplied (4x2 and
    3x5)"), unpaired z and z2 in torch's broadcasting, and a numpy z2 with "linear():
    argument 'input' must be Tensor"; now arrays are converted and shapes refused by name."""
    model = tiny()
    rng = np.random.default_rng(5)
    z1, z2 = rng.standard_normal((4, 2)), rng.standard_normal((4, 3))
    expected = model.prior_log_prob(torch.from_numpy(z1), torch.from_numpy(z2))
    torch.testing.assert_close(model.prior_log_prob(z1, z2.astype(np.float32)), expected)
    torch.testing.assert_close(model.prior_z1(z2).mean, model.prior_z1(torch.from_numpy(z2)).mean)
    with pytest.raises(ValueError, match=r"z2 has shape \(4, 2\), but the ladder VAE's top "
                                         r"level has top_dim=3 coordinates"):
        model.prior_z1(z1)
    with pytest.raises(ValueError, match=r"z2 has shape \(4, 2\)"):
        model.prior_log_prob(z1, z1)
    with pytest.raises(ValueError, match=r"z has shape \(4, 3\), but the model's codes "
                                         r"have latent_dim=2"):
        model.prior_log_prob(z2, z2)
    with pytest.raises(ValueError, match=r"z \(4, 2\) and z2 \(3, 3\) are not pairs"):
        model.prior_log_prob(z1, z2[:3])
    with pytest.raises(ValueError, match=r"give z2, points \(\.\.\., 3\)"):
        model.prior_z1(None)
