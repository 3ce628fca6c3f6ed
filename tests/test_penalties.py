"""Penalties (AutoEncoderToolkit.jl's regularisation hooks): each built-in against its
formula by hand, `penalized` adding them to any model's loss, and `fit(penalties=...)`:
history, effect on training, checkpoints and refusals."""

import copy
import io
import math

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk
from aetk.penalties import describe, encoded, make_penalty, penalized, penalty_names

from helpers import OnceDifferentiableTanh, digits


def _vae(name: str = "vae", latent: int = 2) -> aetk.Model:
    torch.manual_seed(0)
    return aetk.build_model(name, "bernoulli", in_features=64, latent_dim=latent,
                            hidden=(32,))


class _Fixed(nn.Module):
    """A stand-in model whose q(z|x) has the given means and standard deviations."""

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.loc, self.scale = loc, scale

    def encode(self, x: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(self.loc, self.scale), 1)

    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.loc


def test_latent_l2_min_variance_and_entropy_by_hand():
    loc = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    scale = torch.tensor([[0.05, 0.2, 1.0], [0.01, 0.1, 2.0]], dtype=torch.float64)
    model, x = _Fixed(loc, scale), torch.zeros(2, 4)
    l2 = np.mean([1 + 4 + 0.25, 0 + 9 + 1])
    assert aetk.LatentL2(weight=3.0)(model, x).item() == pytest.approx(3 * l2, rel=1e-12)
    # below sigma_min = 0.1: 0.05 (row 0) and 0.01 (row 1); 0.1 sits on the hinge
    hinge = [2 * math.log(0.1 / 0.05), 2 * math.log(0.1 / 0.01)]
    assert aetk.MinVariance(sigma_min=0.1, weight=2.0)(model, x).item() == pytest.approx(
        2 * np.mean(hinge), rel=1e-12)
    assert aetk.MinVariance(sigma_min=0.01)(model, x).item() == 0.0
    entropy = [1.5 * (1 + math.log(2 * math.pi)) + sum(math.log(s) for s in row)
               for row in scale.tolist()]
    assert aetk.Entropy(weight=-0.5)(model, x).item() == pytest.approx(
        -0.5 * np.mean(entropy), rel=1e-12)


def test_min_variance_default_floor_is_sigma_0_1():
    """MinVariance() (the default the CLI and the pipeline use) floors sigma at 0.1 with
    weight 1: sigma 0.05 costs 2 log(0.1/0.05) = 2 log 2 per latent dimension, summed over
    the 3 dimensions; sigma 0.1 and above costs nothing."""
    model = _Fixed(torch.zeros(2, 3, dtype=torch.float64),
                   torch.full((2, 3), 0.05, dtype=torch.float64))
    x = torch.zeros(2, 4)
    assert aetk.MinVariance()(model, x).item() == pytest.approx(3 * 2 * math.log(2), rel=1e-12)
    at_floor = _Fixed(torch.zeros(2, 3, dtype=torch.float64),
                      torch.tensor([[0.1, 0.2, 1.0], [0.11, 0.5, 3.0]], dtype=torch.float64))
    assert aetk.MinVariance()(at_floor, x).item() == 0.0


def test_min_variance_pushes_only_the_variances_below_the_floor():
    log_scale = torch.log(torch.tensor([[0.05, 0.5]])).requires_grad_()
    model = _Fixed(torch.zeros(1, 2), log_scale.exp())
    aetk.MinVariance(sigma_min=0.1)(model, torch.zeros(1, 4)).backward()
    assert log_scale.grad[0].tolist() == pytest.approx([-2.0, 0.0])


def test_decoder_jacobian_is_the_squared_frobenius_norm_of_the_decoders_jacobian():
    """The estimate over many projections against the Jacobian of the decoder's mean by
    torch.func, in float64; its gradient reaches the decoder only."""
    model = _vae().double()
    x = digits(n=5)[0].double()
    z = model.latent_mean(x).detach()
    jac = torch.func.vmap(torch.func.jacrev(
        lambda v: model.decode(v[None]).mean[0]))(z)  # (B, 64, 2)
    exact = jac.square().sum((1, 2)).mean().item()
    estimate = aetk.DecoderJacobian(weight=2.0, n_projections=1000)(model, x)
    assert estimate.item() == pytest.approx(2 * exact, rel=0.08)
    estimate.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for p in model.decoder.parameters() if p.dim() == 2)
    with torch.no_grad():  # validation
        value = aetk.DecoderJacobian(n_projections=1000)(model, x)
    assert not value.requires_grad and value.item() == pytest.approx(exact, rel=0.08)


def test_decoder_jacobian_with_a_once_differentiable_decoder_is_named_by_fit():
    """The penalty differentiates the decoder's Jacobian-vector products in training: a
    decoder with a once-differentiable Function gets aetk's TypeError from fit (torch's bare
    RuntimeError from inside backward before); without the penalty the VAE trains."""
    model, x = _vae(), digits(n=40)[0]
    model.decoder.network[1] = OnceDifferentiableTanh()
    fit = dict(epochs=1, batch_size=20, progress=False, device="cpu")
    with pytest.raises(TypeError, match=r"^training VAE differentiates a gradient again "
                                        r"\(.*the decoder_jacobian penalty\)") as err:
        aetk.fit(model, x, penalties=[aetk.DecoderJacobian()], **fit)
    assert "once_differentiable" in str(err.value.__cause__)
    assert np.isfinite(aetk.fit(model, x, **fit)["train_loss"]).all()


def test_penalized_adds_the_penalties_and_puts_the_loss_back():
    model, x = _vae(), digits(n=32)[0]
    pen = {"l2": aetk.LatentL2(weight=0.5), "flat": lambda m, x: torch.tensor(2.0)}
    torch.manual_seed(1)
    plain = model.loss(x)
    with penalized(model, pen):
        torch.manual_seed(1)
        out = model.loss(x)
        with penalized(model, [aetk.Entropy()]):  # a block inside another keeps both
            inner = model.loss(x)
        assert "penalty_entropy" not in model.loss(x).terms
    assert "loss" not in model.__dict__ and model.loss(x).terms.keys() == plain.terms.keys()
    l2 = 0.5 * model.latent_mean(x).square().sum(-1).mean()
    assert out.terms["penalty_l2"].item() == pytest.approx(l2.item(), rel=1e-6)
    assert out.terms["penalty_flat"].item() == 2.0
    assert out.loss.item() == pytest.approx(plain.loss.item() + l2.item() + 2.0, rel=1e-6)
    assert {"penalty_l2", "penalty_flat", "penalty_entropy"} <= inner.terms.keys()
    vq = aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    vq.set_codebook(torch.randn(vq.n_codes, 2))
    with penalized(vq, [aetk.LatentL2()]):
        assert vq.loss(x).aux.keys() == {"z_e", "codes"}  # what its training step reuses


def test_penalties_reuse_the_losss_encoder_pass():
    """One encoder pass per penalised loss (a posterior penalty reuses the loss's q(z|x),
    graph and all), the same values as a second pass gives; other inputs are encoded
    anew, and the encoder's own forward is back after the call."""
    model, x = _vae(), digits(n=16)[0]
    calls = []
    # on the encoder's network: the encoder's own hooks run even when its output is reused
    model.encoder.network.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    pen = [aetk.MinVariance(sigma_min=2.0), aetk.Entropy(),
           lambda m, x: m.encode(x[:4]).mean.sum()]
    with penalized(model, pen):
        out = model.loss(x)
        assert "forward" not in model.encoder.__dict__
    assert len(calls) == 2 and torch.equal(calls[0], x) and len(calls[1]) == 4
    assert out.terms["penalty_min_variance"].item() == pytest.approx(
        aetk.MinVariance(sigma_min=2.0)(model, x).item(), rel=1e-6)
    assert out.terms["penalty_entropy"].item() == pytest.approx(
        aetk.Entropy()(model, x).item(), rel=1e-6)
    out.loss.backward()  # the shared graph is backpropagated once
    assert all(p.grad is not None for p in model.encoder.parameters())
    calls.clear()
    with penalized(model, [aetk.DecoderJacobian()]), torch.no_grad():  # as in validation
        model.loss(x)
    assert len(calls) == 1


def test_penalties_reuse_the_encoder_pass_of_image_rows():
    """Rows (n, 1, 8, 8) for a model of 64 features: the loss encoded them reshaped to
    (n, 64), the penalty as given, a second encoder pass (another input mask for a
    denoising encoder)."""
    model, x = _vae(), digits(n=16)[0]
    calls = []
    model.encoder.network.register_forward_hook(lambda m, args, out: calls.append(args[0]))
    with penalized(model, [aetk.MinVariance(sigma_min=2.0)]):
        model.loss(x.reshape(16, 1, 8, 8))
    assert len(calls) == 1 and torch.equal(calls[0], x)


def test_a_copy_or_pickle_made_while_penalised_is_the_plain_model():
    """A callback's deep copy and a pickle of the whole model, made during fit with a
    penalty: the copy has the class's loss, trains on its own without penalty terms, and
    the pickle loads."""
    x = digits(n=128)[0]
    kept = {}

    class Keep:
        def on_epoch_end(self, model, epoch, row):
            kept["copy"] = copy.deepcopy(model)
            buffer = io.BytesIO()
            torch.save(model, buffer)
            kept["bytes"] = buffer.getvalue()

    model = _vae()
    _fit(model, x, epochs=1, penalties=[aetk.LatentL2()], callbacks=[Keep()])
    twin = kept["copy"]
    assert "loss" not in twin.__dict__
    hist = _fit(twin, x, epochs=1)
    assert not any(c.startswith("train_penalty") for c in hist.columns)
    for p, q in zip(twin.parameters(), model.parameters(), strict=True):
        assert not torch.equal(p, q)  # it trained, the original did not move
    again = torch.load(io.BytesIO(kept["bytes"]), weights_only=False)
    assert "loss" not in again.__dict__
    assert not any(k.startswith("penalty") for k in again.loss(x).terms)


def test_the_reuse_does_not_serve_an_input_that_now_takes_gradients():
    """A contractive penalty (the encoder's Jacobian in x) makes x require gradients: the
    loss's encoding of x, made without, is not reused, and the value is the one outside
    a penalised loss."""
    model, x = _vae(), digits(n=8)[0]

    def contractive(m, x):  # through encoded(), where the built-ins take q(z|x)
        x = x.requires_grad_()
        (g,) = torch.autograd.grad(encoded(m, x).mean.sum(), x, create_graph=True)
        x.requires_grad_(False)
        return g.square().sum()

    alone = contractive(model, x.clone()).item()
    with penalized(model, [contractive]):
        out = model.loss(x)
    assert out.terms["penalty_contractive"].item() == pytest.approx(alone, rel=1e-6)


def test_the_reuse_does_not_serve_a_pass_made_in_another_grad_mode():
    """A loss evaluated under no_grad (validation) whose penalty encodes x with gradients
    on gets a fresh pass with a graph, whose gradient in the encoder's weights is the one
    outside a penalised loss."""
    model, x = _vae(), digits(n=8)[0]
    weight = next(model.encoder.parameters())

    def graded(m, x):
        with torch.enable_grad():
            q = encoded(m, x)
            assert q.mean.requires_grad
            (g,) = torch.autograd.grad(q.mean.square().sum(), weight)
        return g.square().sum()

    alone = graded(model, x).item()
    with penalized(model, [graded]), torch.no_grad():
        out = model.loss(x)
    assert out.terms["penalty_graded"].item() == pytest.approx(alone, rel=1e-6)


def test_entropy_sums_the_dimensions_of_an_encoder_without_independent():
    loc, scale = torch.zeros(3, 5), torch.rand(3, 5) + 0.1

    class Plain(_Fixed):
        def encode(self, x):
            return D.Normal(self.loc, self.scale)

    x = torch.zeros(3, 4)
    torch.testing.assert_close(aetk.Entropy()(Plain(loc, scale), x),
                               aetk.Entropy()(_Fixed(loc, scale), x))


def test_penalty_names():
    def smooth(m, x):
        return x.sum()

    names = penalty_names([aetk.MinVariance(), aetk.MinVariance(0.5), smooth, lambda m, x: 0])
    assert list(names) == ["min_variance", "min_variance_2", "smooth", "penalty"]
    with pytest.raises(TypeError, match="penalty 'a' is a float, not a callable"):
        penalty_names({"a": 1.0})


def _fit(model, train, val=None, **kw):
    kw = {"epochs": 3, "batch_size": 64, "lr": 3e-3, "progress": False, "device": "cpu", **kw}
    return aetk.fit(model, train, val, **kw)


@pytest.mark.parametrize("name", ["vae", "factorvae"])  # factorvae: its own training step
def test_fit_records_and_minimises_the_penalty(name):
    """A strong floor at sigma = 1 holds every posterior standard deviation at about it
    (without it, some shrink below 0.9); the history has the penalty's train and validation
    columns, and the class's loss is back after fit."""
    x = digits(n=640)[0]
    train, val = x[:512], x[512:]

    def smallest_sigma(model):
        with torch.no_grad():
            return model.encode(val).stddev.min().item()

    plain = _vae(name)
    hist_plain = _fit(plain, train, val, epochs=8, lr=1e-2)
    floored = _vae(name)
    hist = _fit(floored, train, val, epochs=8, lr=1e-2,
                penalties=[aetk.MinVariance(sigma_min=1.0, weight=100.0)])
    assert "train_penalty_min_variance" not in hist_plain
    first, last = hist["train_penalty_min_variance"].iloc[[0, -1]]
    assert first > 5 * last and hist["val_penalty_min_variance"].iloc[-1] < 0.01
    assert smallest_sigma(floored) > 0.97 > 0.9 > smallest_sigma(plain)
    assert "loss" not in floored.__dict__


def test_a_vqvae_trains_with_a_penalty_of_its_encoder_outputs():
    """The VQ-VAE's own training step (codebook updates from the loss's aux) takes its loss
    from model.loss, so a penalty reaches it: a strong L2 of the encoder outputs z_e (its
    codes, the codebook's vectors, get no gradient) draws them in."""
    x = digits(n=512)[0]

    def z_e_l2(model, x):
        return 10.0 * model.encoder(x).square().sum(-1).mean()

    radii = []
    for penalties in ([], [z_e_l2]):
        torch.manual_seed(0)
        model = aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=2,
                                 hidden=(32,), n_codes=16)
        hist = _fit(model, x, epochs=4, penalties=penalties)
        with torch.no_grad():
            radii.append(model.encoder(x).norm(dim=-1).mean().item())
    assert hist["train_penalty_z_e_l2"].iloc[-1] < hist["train_penalty_z_e_l2"].iloc[0]
    assert radii[1] < 0.5 * radii[0]


class _OwnStep(aetk.VAE):
    """A user-made training step that computes its loss without model.loss."""

    def training_step(self, x, optimizers, target=None):
        (opt,) = optimizers.values()
        opt.zero_grad()
        out = aetk.VAE.loss(self, x)
        out.loss.backward()
        opt.step()
        return out


def test_a_training_step_that_bypasses_the_loss_is_refused_and_undone():
    x = digits(n=128)[0]
    base = _vae()
    model = _OwnStep(base.encoder, base.decoder)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"_OwnStep\.training_step does not compute its "
                                         r"loss with model\.loss, so the penalties cannot"):
        _fit(model, x, epochs=1, penalties=[aetk.Entropy()])
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert _fit(model, x, epochs=1)["train_loss"].notna().all()  # without penalties: fine


def test_decoder_jacobian_penalty_flattens_the_decoder():
    """Measured: ||J||_F^2 0.40 without the penalty, 0.035 with weight 50."""
    x = digits(n=512)[0]
    norms = []
    for penalties in ([], [aetk.DecoderJacobian(weight=50.0, n_projections=2)]):
        model = _vae()
        _fit(model, x, epochs=6, penalties=penalties)
        torch.manual_seed(0)
        norms.append(aetk.DecoderJacobian(n_projections=200)(model, x[:128]).item())
    assert norms[1] < 0.25 * norms[0]


def test_penalties_enter_the_checkpoint_fingerprint(tmp_path):
    x = digits(n=256)[0]
    ckpt = tmp_path / "run.pt"
    _fit(_vae(), x, epochs=1, checkpoint=ckpt, penalties=[aetk.MinVariance(0.2)])
    fp = torch.load(ckpt, weights_only=True)["fingerprint"]
    assert fp["penalties"] == {"min_variance": "MinVariance(sigma_min=0.2, weight=1.0)"}
    hist = _fit(_vae(), x, epochs=2, checkpoint=ckpt, penalties=[aetk.MinVariance(0.2)])
    assert list(hist["epoch"]) == [1, 2]
    with pytest.raises(ValueError, match=r"penalties: .*MinVariance\(sigma_min=0.2.* there, "
                                         r".*MinVariance\(sigma_min=0.3"):
        _fit(_vae(), x, epochs=3, checkpoint=ckpt, penalties=[aetk.MinVariance(0.3)])
    plain = tmp_path / "plain.pt"
    _fit(_vae(), x, epochs=1, checkpoint=plain)
    assert "penalties" not in torch.load(plain, weights_only=True)["fingerprint"]


def test_refusals():
    x = digits(n=64)[0]
    ae = aetk.build_model("ae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,))
    with pytest.raises(ValueError, match="min_variance penalty needs an encoder that returns "
                                         "a distribution"):
        _fit(ae, x, epochs=1, penalties=[aetk.MinVariance()])
    assert "loss" not in ae.__dict__  # put back after the error too
    with pytest.raises(ValueError, match="penalty 'bad' must return a scalar tensor"):
        _fit(_vae(), x, epochs=1, penalties={"bad": lambda m, x: m.latent_mean(x)})
    with pytest.raises(ValueError, match="sigma_min must be positive"):
        aetk.MinVariance(sigma_min=0)
    with pytest.raises(ValueError, match="weight must be finite"):
        aetk.Entropy(weight=math.inf)
    with pytest.raises(ValueError, match="n_projections must be an integer >= 1"):
        aetk.DecoderJacobian(n_projections=0.5)
    categorical = aetk.build_model("vae", "categorical", in_features=64, latent_dim=2,
                                   hidden=(16,), n_classes=5)
    with pytest.raises(ValueError, match="point prediction is continuous"):
        aetk.DecoderJacobian()(categorical, digits("categorical", n=8)[0])


def test_make_penalty_from_specs():
    assert make_penalty("entropy") == aetk.Entropy()
    assert make_penalty({"name": "min_variance", "sigma_min": 0.5, "weight": 2}) == \
        aetk.MinVariance(0.5, 2)
    with pytest.raises(ValueError, match="unknown penalty 'l1'; choose one of latent_l2, "
                                         "min_variance, entropy, decoder_jacobian"):
        make_penalty("l1")
    with pytest.raises(ValueError, match=r"penalty 'entropy' takes the options \['weight'\], "
                                         r"got \['sigma'\]"):
        make_penalty({"name": "entropy", "sigma": 1})
    # a known option of the wrong type is that, not an unknown option
    with pytest.raises(ValueError, match=r"penalty 'latent_l2': bad option values "
                                         r"\{'weight': '1'\}"):
        make_penalty({"name": "latent_l2", "weight": "1"})


def test_decoder_jacobian_averages_its_projections_draw_by_draw():
    """With two projections, the estimate is the mean over the two standard-normal draws v
    (replayed from the same seed) of the batch mean of `||J^T v||^2`, J the decoder mean's
    Jacobian by torch.func."""
    model = _vae().double()
    x = digits(n=5)[0].double()
    z = model.latent_mean(x).detach()
    jac = torch.func.vmap(torch.func.jacrev(
        lambda v: model.decode(v[None]).mean[0]))(z)  # (B, 64, 2)
    torch.manual_seed(3)
    estimate = aetk.DecoderJacobian(weight=1.5, n_projections=2)(model, x).item()
    torch.manual_seed(3)
    draws = [torch.randn(5, 64, dtype=torch.float64) for _ in range(2)]
    by_hand = np.mean([torch.einsum("bo,bol->bl", v, jac).square().sum(-1).mean().item()
                       for v in draws])
    assert estimate == pytest.approx(1.5 * by_hand, rel=1e-10)


def test_integer_options_are_stored_as_floats():
    """`weight=2` and `sigma_min=1` are stored as 2.0 and 1.0, so that a penalty describes
    itself (in checkpoint fingerprints) alike whether its options came as ints or floats."""
    assert describe(aetk.MinVariance(sigma_min=1, weight=2)) == \
        "MinVariance(sigma_min=1.0, weight=2.0)"
    assert describe(make_penalty({"name": "latent_l2", "weight": 3})) == "LatentL2(weight=3.0)"
    assert describe(aetk.DecoderJacobian(weight=-1)) == \
        "DecoderJacobian(weight=-1.0, n_projections=1)"


def test_a_penalty_that_returns_an_empty_tensor_is_refused():
    """A penalty must return one number: an empty tensor is the same ValueError as a
    batch of them, naming the penalty and the shape."""
    model, x = _vae(), digits(n=8)[0]
    with penalized(model, {"empty": lambda m, x: torch.zeros(0)}), \
            pytest.raises(ValueError, match=r"penalty 'empty' must return a scalar tensor, "
                                            r"got torch.Size\(\[0\]\)"):
        model.loss(x)


def test_latent_l2_penalises_the_codes_of_models_with_their_own_encode_or_latent_mean():
    """Within a penalised loss, LatentL2 is the batch mean of `||latent_mean(x)||^2` by
    hand: a VQ-VAE's codebook vectors (its `encode`), not the encoder outputs its loss
    computes; a subclass's own `latent_mean` (here twice the posterior mean)."""
    x = digits(n=32)[0]
    vq = aetk.build_model("vqvae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    vq.set_codebook(torch.randn(vq.n_codes, 2) * 3)
    with torch.no_grad():
        z_q = vq.codebook[vq.nearest(vq.encoder(x))]
    assert not torch.allclose(z_q, vq.encoder(x))
    with penalized(vq, [aetk.LatentL2()]):
        got = vq.loss(x).terms["penalty_latent_l2"]
    assert got.item() == pytest.approx(z_q.square().sum(-1).mean().item(), rel=1e-6)

    class Doubled(aetk.VAE):
        def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * self.encode(x).mean

    base = _vae()
    model = Doubled(base.encoder, base.decoder)
    mu = base.encode(x).mean.detach()
    with penalized(model, [aetk.LatentL2()]):
        got = model.loss(x).terms["penalty_latent_l2"]
    assert got.item() == pytest.approx(4 * mu.square().sum(-1).mean().item(), rel=1e-6)


@pytest.mark.parametrize("form", ["numpy float64", "DataFrame", "uint8 tensor"])
def test_a_penalised_loss_and_its_penalties_take_arrays(form):
    """Within a penalised loss, model.loss(numpy x) crashed in the penalties' reuse of the
    encoder pass ("'numpy.ndarray' object has no attribute '_version'"): the penalised loss
    now converts x once, as the model's loss does, and the penalties convert what they are
    given. A denoising encoder's penalty sees the mask the loss drew, as for a tensor."""
    import pandas as pd

    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(32,),
                             input_noise=0.5).train()
    x = (digits(n=16)[0] > 0.5).float()
    given = {"numpy float64": x.double().numpy(), "DataFrame": pd.DataFrame(x.numpy()),
             "uint8 tensor": x.to(torch.uint8)}[form]
    pen = [aetk.MinVariance(sigma_min=2.0), aetk.LatentL2(), aetk.DecoderJacobian()]
    calls = []
    model.encoder.network.register_forward_hook(lambda m, args, out: calls.append(1))
    with penalized(model, pen):
        torch.manual_seed(1)
        expected = model.loss(x)
        torch.manual_seed(1)
        got = model.loss(given)
        for p in pen:  # and each penalty by itself
            torch.manual_seed(2)
            by_itself = p(model, given)
            torch.manual_seed(2)
            assert torch.equal(by_itself, p(model, x))
    assert len(calls) == 2 + 2 * len(pen)  # one pass per loss, the penalties' reused
    for name, value in expected.terms.items():
        torch.testing.assert_close(got.terms[name], value, rtol=1e-6, atol=0)
