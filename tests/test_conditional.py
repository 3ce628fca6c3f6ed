"""Conditional models, q(z|x, c) and p(x|z, c): the conditioned network and the loss by
hand in numpy, the broadcasting of conditions, `fit` with (x, c) in each input form, that
the decoder follows the condition (a classifier reads the class of decoded prior draws),
save/load, resume, and the refusals."""

import functools

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import distributions as D
from torch.utils.data import StackDataset, TensorDataset

import aetk
from aetk import decoders as dec
from aetk.encoders import GaussianEncoder
from aetk.nets import Conditioned

from helpers import FixedMLP, fix_normal_noise

B, X_DIM, Z_DIM, K = 6, 4, 2, 3
RNG = np.random.default_rng(5)
X01 = RNG.random((B, X_DIM))
C = np.eye(K)[[0, 1, 2, 0, 1, 2]]
EPS = RNG.standard_normal((B, Z_DIM))


@functools.cache
def _digits():
    d = load_digits()
    order = np.random.default_rng(0).permutation(len(d.target))
    x = torch.tensor(d.data[order] / 16, dtype=torch.float32)
    y = torch.tensor(d.target[order])
    return x, y, torch.nn.functional.one_hot(y, 10).float()


def _build(model="vae", k=10, seed=0, **kw):
    torch.manual_seed(seed)
    return aetk.build_model(model, "bernoulli", in_features=64, latent_dim=2,
                            **{"hidden": (32,), **kw}, n_conditions=k)


def _fit(model, train, val=None, **kw):
    kw = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False, "device": "cpu", **kw}
    return aetk.fit(model, train, val, **kw)


def test_vae_loss_by_hand(monkeypatch):
    """q(z|x, c) from the encoder on [x, c], p(x|z, c) from the decoder on [z, c]:
    L = <-log Bernoulli(x; logits(z, c))> + <KL(N(mu, sigma^2) || N(0, I))>."""
    fix_normal_noise(monkeypatch, EPS)
    enc, dec_net = FixedMLP(X_DIM + K, 2 * Z_DIM, 1), FixedMLP(Z_DIM + K, X_DIM, 2)
    model = aetk.VAE(GaussianEncoder(enc.module, in_features=X_DIM, latent_dim=Z_DIM,
                                     n_conditions=K),
                     dec.BernoulliDecoder(dec_net.module, latent_dim=Z_DIM, out_features=X_DIM,
                                          n_conditions=K))
    out = enc(np.hstack([X01, C]))
    mu, sigma = out[:, :Z_DIM], np.exp(out[:, Z_DIM:])
    logits = dec_net(np.hstack([mu + sigma * EPS, C]))
    rec = -(X01 * logits - np.logaddexp(0, logits)).sum(1).mean()
    kl = (0.5 * (sigma**2 + mu**2 - 1) - np.log(sigma)).sum(1).mean()
    with model.given(torch.from_numpy(C)):
        got = model.loss(torch.from_numpy(X01))
    assert got.terms["reconstruction"].item() == pytest.approx(rec, rel=1e-12)
    assert got.terms["kl"].item() == pytest.approx(kl, rel=1e-12)
    # other conditions, another loss: the networks read them
    with model.given(torch.from_numpy(C[::-1].copy())):
        assert model.loss(torch.from_numpy(X01)).loss.item() != pytest.approx(rec + kl)


def test_conditions_broadcast_to_one_row_the_batch_or_sample_major_stacks():
    net = torch.nn.Linear(X_DIM + K, 3).double()
    cond = Conditioned(net, K)
    x, c = torch.from_numpy(X01), torch.from_numpy(C)
    w, b = net.weight.detach().numpy(), net.bias.detach().numpy()
    cond.conditions = c
    np.testing.assert_allclose(cond(x).detach().numpy(), np.hstack([X01, C]) @ w.T + b,
                               rtol=1e-12)
    # S = 3 draws per row stacked sample-major, flat (S * B rows) or as (S, B, d)
    stacked = torch.cat([x, 2 * x, 3 * x])
    want = np.vstack([np.hstack([s * X01, C]) @ w.T + b for s in (1, 2, 3)])
    np.testing.assert_allclose(cond(stacked).detach().numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(cond(stacked.view(3, B, X_DIM)).detach().numpy(),
                               want.reshape(3, B, 3), rtol=1e-12)
    cond.conditions = c[1:2]  # one row: every input
    np.testing.assert_allclose(cond(x).detach().numpy(),
                               np.hstack([X01, np.tile(C[1], (B, 1))]) @ w.T + b, rtol=1e-12)
    cond.conditions = c
    with pytest.raises(ValueError, match="conditions for 6 rows, but the network got 4 inputs"):
        cond(x[:4])
    cond.conditions = None
    with pytest.raises(RuntimeError, match=r"call the model inside `with model\.given"):
        cond(x)


def test_given_sets_nests_restores_and_checks():
    model = _build(k=K)
    x = torch.rand(B, 64)
    nets = [m for m in model.modules() if isinstance(m, Conditioned)]
    assert len(nets) == 2
    c, c2 = torch.from_numpy(C).float(), torch.eye(K)[[2] * B]
    with model.given(c):
        with model.given(c2):
            assert all(m.conditions is not None and torch.equal(m.conditions, c2) for m in nets)
            model.loss(x)
        assert all(torch.equal(m.conditions, c) for m in nets)
        with pytest.raises(KeyError), model.given(c2):
            raise KeyError  # an error inside the block restores too
        assert all(torch.equal(m.conditions, c) for m in nets)
    assert all(m.conditions is None for m in nets)
    with pytest.raises(ValueError, match=r"shape \(6, 2\), but the model takes 3 conditions"):
        model.given(c[:, :2]).__enter__()
    with pytest.raises(ValueError, match="1 NaN or infinite values"):
        model.given(torch.where(c == 1, float("nan"), c)[:1]).__enter__()
    with pytest.raises(ValueError, match="takes no conditions"):
        _build(k=0).given(c).__enter__()


def test_fit_takes_pairs_and_tensor_datasets_identically_and_datasets_of_pairs():
    x, _, c = _digits()
    train, val = (x[:512], c[:512]), (x[512:640], c[512:640])
    hists = {
        "pairs": _fit(_build(), train, val),
        "arrays": _fit(_build(), (train[0].numpy(), train[1].numpy()), val),
        "tensor_dataset": _fit(_build(), TensorDataset(*train), TensorDataset(*val)),
    }
    ref = hists.pop("pairs").drop(columns="seconds")
    for kind, h in hists.items():
        np.testing.assert_allclose(h.drop(columns="seconds").to_numpy(), ref.to_numpy(),
                                   rtol=1e-5, err_msg=kind)
    # a Dataset streams through a DataLoader (another order): it learns as well
    streamed = _fit(_build(), StackDataset(*train), StackDataset(*val))
    np.testing.assert_allclose(streamed["val_loss"], ref["val_loss"], rtol=0.02)


@functools.cache
def _trained_cvae():
    x, _, c = _digits()
    cvae = _build(hidden=(64,))
    return cvae, _fit(cvae, (x[:1400], c[:1400]), (x[1400:], c[1400:]), epochs=15)


def test_decoder_follows_the_condition_and_conditions_help():
    """Trained on digits with their one-hot labels, the conditional VAE decodes prior draws
    under condition k into images that a classifier of real digits calls k; and its
    validation loss is below the unconditional VAE's (measured: 22.4 against 25.5 nats
    after 30 epochs; here 15)."""
    x, y, _ = _digits()
    cvae, h = _trained_cvae()
    vae = _build(k=0, hidden=(64,))
    h0 = _fit(vae, x[:1400], x[1400:], epochs=15)
    assert h["val_loss"].iloc[-1] < h0["val_loss"].iloc[-1] - 1.5
    classifier = LogisticRegression(max_iter=2000).fit(x[:1400].numpy(), y[:1400].numpy())
    torch.manual_seed(1)
    z = torch.randn(50, 2)
    for k in range(10):
        with cvae.given(torch.eye(10)[k]):
            images = cvae.decode(z).mean
        assert (classifier.predict(images.detach().numpy()) == k).mean() >= 0.8, k


def test_every_model_trains_conditionally_and_round_trips(tmp_path):
    x, _, c = _digits()
    for name in aetk.MODELS:
        options = {"vqvae": {"n_codes": 16}, "rhvae": {"centroids": 16},
                   "vampprior": {"n_components": 12}}.get(name, {})
        model = _build(name, **options)
        hist = _fit(model, (x[:256], c[:256]), (x[256:320], c[256:320]), epochs=2)
        assert np.isfinite(hist["val_loss"]).all(), name
        model.save(tmp_path / name)
        loaded = aetk.load(tmp_path / name)
        assert loaded.n_conditions == 10 and loaded.build_spec["n_conditions"] == 10
        with model.given(c[:20]), loaded.given(c[:20]):
            np.testing.assert_allclose(loaded.reconstruct(x[:20]), model.reconstruct(x[:20]),
                                       err_msg=name)


def test_rhvae_centroids_keep_their_conditions_and_the_metric_uses_them(tmp_path):
    """The centroids chosen when fit starts keep their points' classes; the frozen metric's
    centroid codes are the encoder means of those points given those classes (another
    class moves them); a saved and reloaded model has the same metric."""
    x, y, c = _digits()
    model = _build("rhvae", centroids=12)
    _fit(model, (x[:300], c[:300]), epochs=2)
    rows = [int(torch.nonzero((x[:300] == p).all(1))[0, 0]) for p in model.centroid_data]
    np.testing.assert_array_equal(model.centroid_conditions.argmax(1), y[:300][rows])
    with model.given(model.centroid_conditions):
        own = model.latent_mean(model.centroid_data)
    with model.given(model.centroid_conditions.roll(1, dims=1)):
        other = model.latent_mean(model.centroid_data)
    torch.testing.assert_close(model.centroid_latent, own)
    assert not torch.allclose(model.centroid_latent, other, atol=1e-3)
    model.save(tmp_path / "m")
    z = torch.randn(7, 2)
    torch.testing.assert_close(aetk.load(tmp_path / "m").G(z), model.G(z))
    with pytest.raises(ValueError, match="needs their centroid_conditions"):
        aetk.RHVAE(model.encoder, model.decoder, centroids=x[:5])


def test_log_marginal_is_conditional():
    """log p(x|c) of validation digits is higher under their own labels than under the
    next class's (measured: 11.9 nats on average)."""
    x, _, c = _digits()
    model, _ = _trained_cvae()
    torch.manual_seed(0)
    with model.given(c[1400:]):
        right = aetk.log_marginal(model, x[1400:], n_samples=20)
    torch.manual_seed(0)
    with model.given(c[1400:].roll(1, dims=1)):
        wrong = aetk.log_marginal(model, x[1400:], n_samples=20)
    assert (right - wrong).mean() > 5.0


def test_resume_with_conditions_equals_an_uninterrupted_run(tmp_path):
    x, _, c = _digits()
    train, val = (x[:256], c[:256]), (x[256:320], c[256:320])
    reference = _build()
    hist_ref = _fit(reference, train, val, epochs=4)
    ckpt = tmp_path / "ckpt.pt"
    _fit(_build(), train, val, epochs=2, checkpoint=ckpt)
    resumed = _build()
    hist = _fit(resumed, train, val, epochs=4, checkpoint=ckpt)
    for a, b in zip(reference.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(hist["val_loss"], hist_ref["val_loss"])


@pytest.mark.parametrize(("model_k", "data", "match"), [
    (10, "x", "this model is conditional: give \\(x, c\\) pairs"),
    (0, "pairs", "\\(x, c\\) pairs are for conditional models"),
    (10, "short_c", "train conditions have 100 rows for 200 data points"),
    (10, "wide_c", "train conditions have shape \\(200, 11\\), but the model takes 10"),
    (10, "nan_c", "train conditions data has 1 NaN"),
    (10, "none_c", "the pair \\(x, c\\) has no conditions c \\(None\\)"),
    (10, "dataset_of_x", "a conditional model needs a Dataset of \\(x, c\\) items"),
])
def test_bad_conditional_data_is_refused_before_training(model_k, data, match):
    x, _, c = _digits()
    x, c = x[:200], c[:200]
    bad_c = c.clone()
    bad_c[3, 4] = float("nan")
    train = {"x": x, "pairs": (x, c), "short_c": (x, c[:100]),
             "wide_c": (x, torch.cat([c, c[:, :1]], 1)), "nan_c": (x, bad_c), "none_c": (x, None),
             "dataset_of_x": torch.utils.data.Subset(x, range(200))}[data]
    model = _build(k=model_k)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        _fit(model, train)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_build_refusals():
    with pytest.raises(ValueError, match="n_conditions must be an integer >= 0"):
        _build(k=-1)
    with pytest.raises(ValueError, match="encoder takes 3 conditions and the decoder 0"):
        aetk.VAE(GaussianEncoder(in_features=4, latent_dim=2, n_conditions=3),
                 dec.BernoulliDecoder(latent_dim=2, out_features=4))


def test_pullback_metric_given_one_class_is_that_class_decoders():
    """Inside `given(one row)`, the pull-back is J^T J of z -> sigmoid(net([z, c])), the
    Jacobian taken here by plain autograd on the inner network; other classes, other
    metrics."""
    from aetk.geometry import metric_for

    model, _ = _trained_cvae()
    inner = model.decoder.network.network  # the MLP behind nets.Conditioned
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    metrics = []
    for k in (3, 7):
        c = torch.eye(10)[k]
        with model.given(c):
            got = metric_for(model).metric(z)
        for i in range(3):
            jac = torch.autograd.functional.jacobian(
                lambda p, c=c: torch.sigmoid(inner(torch.cat([p, c]))), z[i])
            torch.testing.assert_close(got[i], jac.T @ jac, rtol=1e-4, atol=1e-6)
        metrics.append(got)
    assert not torch.allclose(metrics[0], metrics[1], rtol=0.05)


def test_pullback_metric_refuses_conditions_of_several_rows():
    """Conditions of one row per curve paired the curves' points (curve-major) with the rows
    sample-major, so each point took another curve's class and the lengths were silently
    wrong (the helper's finding, 2026-12-03); the pull-back now refuses more than one row
    for either kind and for G alike, and one row (or a (1, k) row) still gives its class's."""
    from aetk.geometry import curve_length, metric_for

    model, _ = _trained_cvae()
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(3))
    curves = z[:, None] + torch.linspace(0, 1, 6)[None, :, None] * (-z)[:, None]
    classes = torch.eye(10)[[3, 7, 1]]
    with model.given(classes):
        for kind in ("mean", "fisher"):
            with pytest.raises(ValueError, match="conditions of 3 rows: a pull-back metric "
                                                 "takes one condition row"):
                curve_length(metric_for(model, kind), curves)
        with pytest.raises(ValueError, match="conditions of 3 rows"):
            metric_for(model).metric(z)
    for i in range(3):
        with model.given(classes[i]):
            one = curve_length(metric_for(model), curves[i:i + 1])
        with model.given(classes[i:i + 1]):
            torch.testing.assert_close(curve_length(metric_for(model), curves[i:i + 1]), one)


def test_a_user_made_decoder_becomes_conditional_with_nets_conditioned():
    """The recipe of docs/core-api.md: wrap the network in `Conditioned(net, k)` and set
    `n_conditions`; fit and `given` then treat it as the built-in decoders."""
    from torch import nn
    from torch.distributions import Bernoulli, Independent

    class MyDecoder(aetk.Decoder):
        def __init__(self) -> None:
            super().__init__()
            self.n_conditions = 10
            self.net = Conditioned(nn.Sequential(nn.Linear(2 + 10, 32), nn.Tanh(),
                                                 nn.Linear(32, 64)), 10)

        def forward(self, z):
            return Independent(Bernoulli(logits=self.net(z), validate_args=False), 1)

    x, _, c = _digits()
    torch.manual_seed(0)
    model = aetk.VAE(GaussianEncoder(in_features=64, latent_dim=2, hidden=(32,),
                                     n_conditions=10), MyDecoder())
    hist = _fit(model, (x[:512], c[:512]), (x[512:640], c[512:640]), epochs=4)
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    with model.given(torch.eye(10)[4]):
        assert model.sample(3).shape == (3, 64)


def test_conditional_vampprior_prior_is_the_mixture_under_each_rows_class():
    """log p(z|c_b) = logsumexp_k log q(z_b|u_k, c_b) - log K, each row with its own class,
    against the mixture built row by row; p(z|c) differs between classes; draws under
    given(c) come one per row of c."""
    x, _, c = _digits()
    model = _build("vampprior", n_components=6)
    _fit(model, (x[:128], c[:128]), epochs=1)
    z = torch.randn(5, 2)
    rows = c[[0, 1, 2, 0, 3]]
    with model.given(rows):
        got = model.prior_log_prob(z)
        draws = model.sample(5)
    for b in range(5):
        with model.given(rows[b]):
            q = model.encoder(model.pseudo_inputs)
        mixture = D.MixtureSameFamily(D.Categorical(logits=torch.zeros(6)), q)
        torch.testing.assert_close(got[b], mixture.log_prob(z[b]), rtol=1e-5, atol=1e-5)
    with model.given(c[3]):
        other = model.prior_log_prob(z)
    assert (got - other).abs().max() > 1e-3
    assert draws.shape == (5, 64)
    with model.given(rows), pytest.raises(ValueError, match="one per sample"):
        model.sample(3)
    with model.given(rows[0]):
        assert model.prior_log_prob(z[0]).shape == ()  # one point, as the mixture gave


def test_a_diverging_vampprior_stops_with_training_diverged():
    """Its prior's components are unchecked normals, like the encoder's: a NaN scale is
    fit's TrainingDiverged (model restored), not a distribution's argument error."""
    torch.manual_seed(0)
    x = (torch.rand(200, 16) > 0.5).float() * 1000
    model = aetk.build_model("vampprior", "gaussian", in_features=16, hidden=(16,),
                             n_components=8)
    with pytest.warns(aetk.DataScaleWarning), pytest.raises(aetk.TrainingDiverged,
                                                             match="restored"):
        aetk.fit(model, x, epochs=3, batch_size=32, lr=10, progress=False, device="cpu")


@pytest.mark.parametrize("given", [True, False])
def test_image_shaped_inputs_reach_the_network_flattened_beside_their_conditions(given):
    """x of shape (2, 3) with K conditions: the encoder's network (a given one, or the built
    MLP) sees the row [x_11 .. x_23, c], as by hand; nothing is paired row by row."""
    x = np.random.default_rng(6).random((B, 2, 3))
    if given:
        net = FixedMLP(6 + K, 2 * Z_DIM, 3)
        enc = GaussianEncoder(net.module, input_shape=(2, 3), latent_dim=Z_DIM, n_conditions=K)
        ref = net(np.hstack([x.reshape(B, 6), C]))
    else:
        enc = GaussianEncoder(input_shape=(2, 3), latent_dim=Z_DIM, hidden=(5,),
                              n_conditions=K).double()
        inner = enc.network.network  # the MLP inside the conditioning
        ref = inner(torch.from_numpy(np.hstack([x.reshape(B, 6), C]))).detach().numpy()
    enc.network.conditions = torch.from_numpy(C)
    q = enc(torch.from_numpy(x))
    np.testing.assert_allclose(q.mean.detach().numpy(), ref[:, :Z_DIM], rtol=1e-12)
    np.testing.assert_allclose(q.stddev.detach().numpy(), np.exp(ref[:, Z_DIM:]), rtol=1e-12)


def test_given_casts_conditions_to_the_models_dtype():
    """Integer one-hot or float64 conditions are held as the model's dtype (what
    model.conditions() hands the VampPrior and RHVAE), with the same values."""
    model = _build(k=K)
    expected = np.eye(K)[[0, 2, 1]]
    for c in (torch.nn.functional.one_hot(torch.tensor([0, 2, 1]), K), expected):
        with model.given(c):
            got = model.conditions()
            assert got.dtype == torch.float32
            np.testing.assert_array_equal(got.numpy(), expected)
    double = _build(k=K).double()
    with double.given(torch.eye(K)[1]):  # float32 (K,): one row for all, as float64
        assert double.conditions().dtype == torch.float64
        np.testing.assert_array_equal(double.conditions().numpy(), np.eye(K)[[1]])


def test_forgotten_conditions_say_how_to_give_them():
    """embed(x) of a conditional model failed inside its network with "call the model
    inside `with model.given(c):`", which embed does not need: it takes conditions=c.
    embed, log_marginal and EncoderMetric.from_model now say how each takes them, and
    work as before when they are given."""
    from aetk.geometry import EncoderMetric

    model = _build(k=K).eval()
    x = torch.rand(B, 64)
    c = torch.as_tensor(C, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"give each row's conditions, model\.embed\(x, "
                                         r"conditions=c\) with c \(6, 3\)"):
        model.embed(x)
    with pytest.raises(ValueError, match=r"call log_marginal inside `with model\.given\(c\):`"):
        aetk.log_marginal(model, x)
    with pytest.raises(ValueError, match=r"give conditions=c, the conditions \(6, 3\)"):
        EncoderMetric.from_model(model, x)
    with model.given(c):
        inside = model.embed(x)
        assert aetk.log_marginal(model, x, n_samples=2).shape == (B,)
        assert EncoderMetric.from_model(model, x).loc.shape == (B, 2)
    np.testing.assert_array_equal(model.embed(x, conditions=c), inside)


def test_data_of_other_rows_than_the_given_conditions_are_refused_naming_both():
    """`with model.given(c[:2]): aetk.log_marginal(model, x)` with x of 6 rows ran: the
    networks read 6 rows under 2 conditions as 3 sample-major stacks, rows 2..5 under the
    conditions of rows 0 and 1 (and 5 rows failed inside the network). Each method that
    takes data now says so up front; conditions of one row still apply to all rows, and
    embed inside given(c) reads c's rows batch by batch."""
    model = _build(k=K).eval()
    x = torch.rand(B, 64)
    c = torch.as_tensor(C, dtype=torch.float32)
    calls = {"log_marginal": lambda: aetk.log_marginal(model, x, n_samples=2),
             "embed": lambda: model.embed(x), "encode": lambda: model.encode(x),
             "latent_mean": lambda: model.latent_mean(x=x),
             "reconstruct": lambda: model.reconstruct(x), "loss": lambda: model.loss(x)}
    for name, call in calls.items():
        with model.given(c[:2]), pytest.raises(
                ValueError, match=rf"{name} got x of 6 rows, but model\.given\(c\) holds "
                                  r"conditions for 2 rows: give c one row per row of x \(6, 3\)"):
            call()
    with model.given(c[0]):  # one row for all
        assert model.encode(x).mean.shape == (B, 2)
    with model.given(c):
        np.testing.assert_allclose(model.embed(x, batch_size=4),
                                   model.embed(x, conditions=c), rtol=1e-6)
        model.loss(x)


def test_given_takes_conditions_as_a_dataframe_or_a_list_of_rows():
    """model.given(DataFrame of covariates) failed with torch's "could not determine the
    shape of object type 'DataFrame'", and a list of one-hot row tensors with "only one
    element tensors can be converted to Python scalars"."""
    import pandas as pd

    model = _build(k=K).eval()
    x = torch.rand(B, 64)
    c = torch.as_tensor(C, dtype=torch.float32)
    with model.given(c):
        expected = model.latent_mean(x)
    for given in (pd.DataFrame(C, columns=["a", "b", "c"]), list(c), C.astype(np.int64)):
        with model.given(given):
            assert torch.equal(model.latent_mean(x), expected)


def test_integer_labels_as_long_as_the_conditions_are_refused():
    """Three class labels tensor([0, 2, 1]) for a model of 3 conditions were read as one
    row of conditions (0, 2, 1) for every input, in silence, where labels of another
    length were refused; one-hot rows, integer or float, and float covariates still pass."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=5, hidden=(8,), n_conditions=3)
    x, labels = torch.rand(3, 5), torch.tensor([0, 2, 1])
    for c in (labels, labels.numpy(), [0, 2, 1], torch.tensor([1, 1, 0])):
        with pytest.raises(ValueError, match=r"integer conditions of shape \(3,\) that are not "
                                             r"one-hot.*one_hot\(labels, 3\)"):
            model.given(c).__enter__()
    onehot = torch.nn.functional.one_hot(labels, 3)
    with model.given(onehot):  # (3, 3), integer
        rows = model.encode(x).mean
    with model.given(onehot.float()):
        torch.testing.assert_close(model.encode(x).mean, rows)
    with model.given(onehot[1]):  # one integer one-hot row for all
        one = model.encode(x).mean
    with model.given(torch.tensor([0.0, 0.0, 1.0])):
        torch.testing.assert_close(model.encode(x).mean, one)
    with model.given(torch.tensor([0.5, 2.0, 1.0])):  # float covariates, one row for all
        model.encode(x)
    single = aetk.build_model("vae", "bernoulli", in_features=5, hidden=(8,), n_conditions=1)
    with single.given(torch.tensor([1])):  # the one-hot row of one condition
        single.encode(x)
