"""VQ-VAE: the quantisation and the loss against numpy, the straight-through gradient and
where each term's gradient goes, the EMA codebook step by hand, the perplexity, the
codebook's start and the restart of dead codes, training, sampling, save/load and
build_model."""

import numpy as np
import pytest
import torch
from scipy import special

import aetk
from aetk import decoders as dec
from aetk.encoders import DeterministicEncoder
from aetk.models.vqvae import perplexity
from aetk.train import evaluate

from helpers import FixedMLP, digits

B, X_DIM, Z_DIM, K = 8, 4, 3, 5
RNG = np.random.default_rng(3)
X01 = RNG.random((B, X_DIM))


def _vq(**kwargs):
    """A VQ-VAE of fixed tanh networks, their numpy twins, and a codebook of three codes
    near the encoder outputs and two (3 and 4) that no point takes."""
    enc, dec_net = FixedMLP(X_DIM, Z_DIM, 1), FixedMLP(Z_DIM, X_DIM, 2)
    model = aetk.VQVAE(DeterministicEncoder(enc.module, latent_dim=Z_DIM),
                       dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM,
                                            out_features=X_DIM),
                       n_codes=K, **kwargs).double()
    rng = np.random.default_rng(0)
    z = enc(X01)
    book = np.concatenate([z[[0, 3, 6]] + 0.3 * rng.standard_normal((3, Z_DIM)),
                           50 + rng.standard_normal((2, Z_DIM))])
    model.set_codebook(torch.from_numpy(book))
    return model, enc, dec_net, book


def _sq_dist(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)


def _perplexity(codes, n_codes):
    p = np.bincount(codes, minlength=n_codes) / len(codes)
    p = p[p > 0]
    return np.exp(-(p * np.log(p)).sum())


@pytest.mark.parametrize(("update", "beta"), [("ema", 0.25), ("loss", 0.25), ("loss", 0.7)])
def test_loss_quantises_to_the_nearest_code(update, beta):
    """e = the codebook row nearest to z_e = f(x); L = -<log p(x|e)> + beta <||z_e - e||^2>
    (+ <||z_e - e||^2> for the codebook with "loss"); encode, latent_mean, codes and
    reconstruct see the same e."""
    model, enc, dec_net, book = _vq(beta=beta, codebook_update=update)
    z = enc(X01)
    codes = _sq_dist(z, book).argmin(1)
    assert len(set(codes.tolist())) == 3  # the test tells the codes apart
    e = book[codes]
    logits = dec_net(e)
    rec = -(X01 * logits - np.logaddexp(0, logits)).sum(1).mean()
    commitment = ((z - e) ** 2).sum(1).mean()
    x = torch.from_numpy(X01)
    out = model.loss(x)
    assert out.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert out.terms["commitment"].item() == pytest.approx(commitment, rel=1e-12)
    assert out.terms["perplexity"].item() == pytest.approx(_perplexity(codes, K), rel=1e-12)
    want = rec + beta * commitment + (commitment if update == "loss" else 0.0)
    assert out.loss.item() == pytest.approx(want, rel=1e-12)
    assert ("codebook" in out.terms) == (update == "loss")
    assert model.codes(x).tolist() == codes.tolist() and model.codes(x).dtype == torch.long
    np.testing.assert_array_equal(model.latent_mean(x).detach().numpy(), e)
    np.testing.assert_array_equal(model.encode(x).detach().numpy(), e)
    np.testing.assert_allclose(model.reconstruct(x).numpy(), special.expit(logits), rtol=1e-12)


def test_straight_through_gradient_and_where_each_term_sends_it():
    """d L / d z_e = d rec / d z_q at z_q = e (the decoder's backward pass by hand) plus the
    commitment's 2 beta (z_e - e) / B; the codebook gets only the codebook term's
    2 (e_k - z_e) / B from each of its points, and that term nothing to z_e."""
    model, enc, dec_net, book = _vq(beta=0.7, codebook_update="loss")
    x = torch.from_numpy(X01)
    z_e = model.encoder(x).detach().requires_grad_()
    out = model.quantised_loss(x, z_e)
    codes = out.aux["codes"]
    assert torch.autograd.grad(out.terms["codebook"], z_e, retain_graph=True,
                               allow_unused=True) == (None,)
    assert torch.autograd.grad(out.terms["reconstruction"], model.codebook, retain_graph=True,
                               allow_unused=True) == (None,)
    out.loss.backward()

    z = enc(X01)
    e = book[_sq_dist(z, book).argmin(1)]
    h = np.tanh(e @ dec_net.w1.T + dec_net.b1)
    d_logits = (special.expit(h @ dec_net.w2.T + dec_net.b2) - X01) / B
    d_rec = ((d_logits @ dec_net.w2) * (1 - h**2)) @ dec_net.w1
    np.testing.assert_allclose(z_e.grad.numpy(), d_rec + 2 * 0.7 * (z - e) / B, rtol=1e-10)
    d_book = np.zeros_like(book)
    np.add.at(d_book, codes.numpy(), 2 * (e - z) / B)
    np.testing.assert_allclose(model.codebook.grad.numpy(), d_book, rtol=1e-10, atol=1e-15)
    assert not model.codebook.grad[3:].any()  # dead codes get no gradient


def test_ema_training_steps_move_the_codebook_by_the_formula():
    """Two steps (lr 0: the networks stay) from N_k = 1, m_k = e_k: N <- 0.9 N + 0.1 n,
    m <- 0.9 m + 0.1 sum z, e = m / ((N + eps) / (sum N + K eps) sum N), eps = 0.5; the
    second step's codes come from the moved codebook."""
    model, enc, _, book = _vq(decay=0.9, epsilon=0.5)
    assert "codebook" not in dict(model.named_parameters())
    opt = {"model": torch.optim.SGD(model.parameters(), lr=0.0)}
    z = enc(X01)
    n_sum, m, e, counts = np.ones(K), book.copy(), book.copy(), np.zeros(K)
    for _ in range(2):
        model.training_step(torch.from_numpy(X01), opt)
        codes = _sq_dist(z, e).argmin(1)
        s = np.zeros_like(m)
        np.add.at(s, codes, z)
        n_sum = 0.9 * n_sum + 0.1 * np.bincount(codes, minlength=K)
        m = 0.9 * m + 0.1 * s
        total = n_sum.sum()
        e = m / ((n_sum + 0.5) / (total + K * 0.5) * total)[:, None]
        counts += np.bincount(codes, minlength=K)
    np.testing.assert_allclose(model.cluster_size.numpy(), n_sum, rtol=1e-12)
    np.testing.assert_allclose(model.embed_sum.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(model.codebook.numpy(), e, rtol=1e-12)
    assert not np.allclose(e, m / n_sum[:, None], rtol=1e-2)  # the smoothing mattered
    np.testing.assert_array_equal(model.epoch_counts.numpy(), counts)


def test_perplexity_by_hand():
    assert perplexity(torch.tensor([2, 2, 2]), 4).item() == pytest.approx(1.0)
    assert perplexity(torch.arange(6), 6).item() == pytest.approx(6.0)
    # p = (1/2, 1/4, 1/4): exp(1/2 log 2 + 1/2 log 4) = 2^1.5
    assert perplexity(torch.tensor([0, 0, 1, 3]), 5).item() == pytest.approx(2**1.5)


def _digits_vq(n_codes=16, **kwargs):
    torch.manual_seed(0)
    return aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=3, hidden=(16,),
                            n_codes=n_codes, **kwargs)


def test_codebook_starts_at_distinct_encoder_outputs_of_training_points():
    x, _ = digits(n=200)
    model = _digits_vq(n_codes=32)
    with pytest.raises(RuntimeError, match="codebook is not set"):
        model.loss(x)
    torch.manual_seed(1)  # what fit does before on_fit_start
    model.on_fit_start(x)
    with torch.no_grad():
        z = model.encoder(x)
    dist = (model.codebook[:, None] - z).norm(dim=-1)
    assert (dist.min(1).values < 1e-5).all()  # each code is an encoder output ...
    assert len(set(dist.argmin(1).tolist())) == 32  # ... of its own training point
    first = model.codebook.clone()
    model.on_fit_start(x)  # a second fit keeps the codebook
    assert torch.equal(model.codebook, first)
    again = _digits_vq(n_codes=32)
    torch.manual_seed(1)
    again.on_fit_start(x)
    assert torch.equal(again.codebook, first)  # seeded
    with pytest.raises(ValueError, match="cannot start 32 codes from 20 training points"):
        _digits_vq(n_codes=32).on_fit_start(x[:20])


@pytest.mark.parametrize("update", ["ema", "loss"])
def test_codes_unused_for_restart_after_times_n_codes_points_restart_in_the_batch(update):
    """16 codes, restart_after 5: a code is dead after 80 points without a pick. Two steps
    of 50 points (lr 0: the networks, and with "loss" the codebook, stay): no restart after
    the first; after the second the codes neither batch took (the unreachable codes 10-15
    among them) sit at distinct encoder outputs of the second batch, their counts reset.
    The same seed restarts them the same way; restart_after=0 never does."""
    x, _ = digits(n=100)
    runs = []
    for restart_after in (5, 5, 0):
        model = _digits_vq(codebook_update=update, restart_after=restart_after)
        with torch.no_grad():
            z = model.encoder(x)
        book = z[:16].clone()
        book[10:] = 1e3
        model.set_codebook(book)
        opt = {"model": torch.optim.SGD(model.parameters(), lr=0.0)}
        torch.manual_seed(3)
        first = model.codes(x[:50])
        model.training_step(x[:50], opt)
        assert (model.codebook[10:] > 999).all()  # the EMA's smoothing moves them a bit
        since = torch.full((16,), 50.0)
        since[first] = 0
        assert torch.equal(model.points_since_used, since)
        second = model.codes(x[50:])
        model.training_step(x[50:], opt)
        runs.append(model)
    model = runs[0]
    dead = sorted(set(range(16)) - set(first.tolist()) - set(second.tolist()))
    assert set(range(10, 16)) <= set(dead)
    # each dead code is a distinct row of the second batch's encoder outputs, exactly
    match = (model.codebook[dead, None] == z[None, 50:]).all(-1)
    assert (match.sum(1) == 1).all() and len(set(match.float().argmax(1).tolist())) == len(dead)
    live = sorted(set(range(16)) - set(dead))
    if update == "loss":
        assert torch.equal(model.codebook[live], book[live])
    else:
        assert (model.cluster_size[dead] == 1).all()
        assert torch.equal(model.embed_sum[dead], model.codebook[dead])
    assert (model.points_since_used[dead] == 0).all() and (model.epoch_counts[dead] == 0).all()
    assert (model.points_since_used[second] == 0).all()
    assert torch.equal(runs[1].codebook, model.codebook)
    assert (runs[2].codebook[10:] > 999).all()


def test_a_restarted_code_counts_only_the_points_it_took_since():
    """restart_after 2.5 (40 points): a code the first batch of 50 took and the second did
    not restarts after the second step, its count from the first batch dropped; the
    epoch's frequencies are the counts over their sum."""
    x, _ = digits(n=100)
    model = _digits_vq(codebook_update="loss", restart_after=2.5)
    with torch.no_grad():
        model.set_codebook(model.encoder(x[:16]))
    opt = {"model": torch.optim.SGD(model.parameters(), lr=0.0)}
    first = model.codes(x[:50])
    model.training_step(x[:50], opt)
    second = model.codes(x[50:])
    model.training_step(x[50:], opt)
    gone = sorted(set(first.tolist()) - set(second.tolist()))
    assert gone and (model.epoch_counts[gone] == 0).all()
    want = torch.bincount(second, minlength=16).float()
    kept = sorted(set(second.tolist()))
    want[kept] += torch.bincount(first, minlength=16).float()[kept]
    assert torch.equal(model.epoch_counts, want)
    model.on_epoch_end(1)
    assert torch.equal(model.code_frequencies, want / want.sum())
    assert not model.epoch_counts.any()


@pytest.mark.parametrize(("restart_after", "restarts"), [(1.0, True), (1.25, False)])
def test_a_code_is_dead_once_exactly_restart_after_times_n_codes_points_passed(restart_after,
                                                                               restarts):
    """One step of 5 points with 5 codes: at restart_after 1 (5 points, reached) the codes
    3 and 4, which no point can take, restart at rows of the batch's encoder outputs; at
    1.25 (6.25 points, not reached) they stay far away."""
    model, enc, _, _ = _vq(restart_after=restart_after)
    x = torch.from_numpy(X01[:5])
    model.training_step(x, {"model": torch.optim.SGD(model.parameters(), lr=0.0)})
    z = enc(X01[:5])
    moved = [bool((np.abs(z - row).max(1) < 1e-12).any()) for row in model.codebook[3:].numpy()]
    assert moved == [restarts, restarts]
    assert (model.codebook[3:] > 40).all() != restarts


def test_without_restarts_every_point_falls_to_one_code():
    """On 700 digits the encoder outputs leave the starting codebook faster than the EMA
    follows: without restarts the validation codes collapse to one after the first epoch
    (measured: perplexity 1.0 in every epoch), with them never (at least 4.4, 17 at the
    end, every code used in the last epoch)."""
    x, _ = digits(n=900)
    perplexity, used = {}, {}
    for restart_after in (4.0, 0.0):
        torch.manual_seed(0)
        model = aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=4,
                                 hidden=(32,), n_codes=32, restart_after=restart_after)
        hist = aetk.fit(model, x[:700], x[700:], epochs=4, batch_size=64, lr=3e-3,
                        progress=False, device="cpu")
        perplexity[restart_after] = hist["val_perplexity"]
        used[restart_after] = int((model.code_frequencies > 0).sum())
    assert (perplexity[0.0] < 1.01).all() and used[0.0] == 1
    assert (perplexity[4.0] > 3).all() and perplexity[4.0].iloc[-1] > 10 and used[4.0] > 24


@pytest.mark.parametrize(("likelihood", "update"),
                         [("bernoulli", "ema"), ("bernoulli", "loss"), ("gaussian", "ema"),
                          ("poisson", "ema")])
def test_fit_lowers_the_validation_loss_on_digits(likelihood, update):
    x, _ = digits(likelihood, n=900)
    torch.manual_seed(0)
    model = aetk.build_model("vqvae", likelihood, in_features=64, latent_dim=4, hidden=(32,),
                             n_codes=32, codebook_update=update)
    model.on_fit_start(x[:700])
    before = evaluate(model, x[700:].split(64))
    hist = aetk.fit(model, x[:700], x[700:], epochs=4, batch_size=64, lr=3e-3,
                    progress=False, device="cpu")
    assert np.isfinite(hist.drop(columns="seconds").to_numpy(dtype=float)).all()
    assert (hist["val_loss"] < before["val_loss"]).all()
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    assert hist["val_perplexity"].iloc[-1] > 10  # most of the 32 codes in use


def test_sample_draws_codes_by_their_frequencies():
    model, _, dec_net, book = _vq()
    with pytest.raises(RuntimeError, match="no code frequencies yet"):
        model.sample(3)
    model.code_frequencies.copy_(torch.tensor([0.0, 0.75, 0.0, 0.25, 0.0]))
    torch.manual_seed(2)
    got = model.sample(400).numpy()
    decoded = special.expit(dec_net(book))
    which = np.abs(got[:, None, :] - decoded[None]).sum(-1).argmin(1)
    np.testing.assert_allclose(got, decoded[which], rtol=1e-12)
    assert set(which.tolist()) == {1, 3}
    assert abs((which == 1).mean() - 0.75) < 0.1  # binomial sd 0.022


def test_save_and_load_keep_the_codebook_and_its_frequencies(tmp_path):
    x, _ = digits(n=300)
    model = _digits_vq(beta=0.5, decay=0.95)
    aetk.fit(model, x, epochs=2, batch_size=50, progress=False, device="cpu")
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert (again.beta, again.decay, again.n_codes) == (0.5, 0.95, 16)
    for name in ("codebook", "cluster_size", "embed_sum", "code_frequencies", "has_codebook"):
        assert torch.equal(getattr(again, name), getattr(model, name)), name
    model.eval()
    assert again.loss(x).loss.item() == model.loss(x).loss.item()
    assert torch.equal(again.codes(x), model.codes(x))
    torch.manual_seed(4)
    want = model.sample(10)
    torch.manual_seed(4)
    assert torch.equal(again.sample(10), want)


@pytest.mark.parametrize("likelihood", sorted(aetk.LIKELIHOODS))
def test_build_model_takes_every_likelihood(likelihood):
    x, opts = digits(likelihood, n=64)
    torch.manual_seed(0)
    model = aetk.build_model("vqvae", likelihood, in_features=64, latent_dim=2, hidden=(8,),
                             n_codes=8, **opts)
    model.on_fit_start(x)
    out = model.loss(x)
    assert torch.isfinite(out.loss)
    out.loss.backward()  # through the straight-through estimator to the encoder
    assert all(p.grad is not None and p.grad.any() for p in model.encoder.parameters())


def test_convolutional_networks_keep_one_code_vector_per_point():
    x, _ = digits(n=200)
    torch.manual_seed(0)
    model = aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=4, hidden=(16,),
                             channels=(4, 8), image_shape=(8, 8), n_codes=16)
    aetk.fit(model, x, epochs=1, batch_size=50, progress=False, device="cpu")
    z = model.latent_mean(x[:5])
    assert z.shape == (5, 4)
    assert torch.equal(z, model.codebook[model.codes(x[:5])])


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"n_codes": 1}, r"n_codes must be an integer >= 2, got 1"),
    ({"n_codes": 8.5}, r"n_codes must be an integer >= 2, got 8.5"),
    ({"beta": -0.1}, r"the commitment weight beta must be >= 0, got -0.1"),
    ({"codebook_update": "kmeans"}, r"codebook_update must be 'ema' or 'loss', got 'kmeans'"),
    ({"decay": 1.0}, r"need 0 <= decay < 1 and epsilon > 0, got 1.0 and 1e-05"),
    ({"epsilon": 0.0}, r"need 0 <= decay < 1 and epsilon > 0, got 0.99 and 0.0"),
    ({"restart_after": -1}, r"restart_after must be >= 0 \(0: no restarts\), got -1"),
    ({"lam": 1.0}, r"unknown option\(s\) \['lam'\].*'beta', 'codebook_update', 'decay', "
                   r"'epsilon', 'n_codes', 'restart_after'"),
])
def test_build_model_rejects_bad_options(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        aetk.build_model("vqvae", "bernoulli", in_features=5, latent_dim=3, **kwargs)
