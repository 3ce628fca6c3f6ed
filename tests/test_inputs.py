"""The models' inference methods take what `fit` and `embed` take: tensors of any dtype,
numpy arrays (any strides) and pandas DataFrames, cast to the model's dtype and device;
tensors that already match pass through untouched, their gradients kept."""

import copy
import inspect
import re
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import aetk
from aetk import geometry
from aetk.distributions import mean
from aetk.models.base import Model

N, F, D = 7, 5, 2


def _x() -> torch.Tensor:
    return torch.rand(N, F, generator=torch.Generator().manual_seed(0))


def _vae(name: str = "vae", likelihood: str = "gaussian", **kw) -> Model:
    torch.manual_seed(0)
    return aetk.build_model(name, likelihood, in_features=F, latent_dim=D, hidden=(8,),
                            **kw).eval()


# the same data as fit takes it: every form gives the float32 tensor's results
FORMS = {
    "numpy float32": lambda x: x.numpy(),
    "numpy float64": lambda x: x.double().numpy(),
    "tensor float64": lambda x: x.double(),
    "DataFrame": lambda x: pd.DataFrame(x.numpy(), columns=list("ABCDE")),
    "reversed strides": lambda x: np.ascontiguousarray(x.numpy()[:, ::-1])[:, ::-1],
    "list": lambda x: x.tolist(),
}


@pytest.mark.parametrize("form", FORMS)
def test_inference_methods_take_every_form_of_data(form):
    model, x = _vae(), _x()
    given = FORMS[form](x)
    assert torch.equal(model.encode(given).mean, model.encode(x).mean)
    assert torch.equal(model.latent_mean(given), model.latent_mean(x))
    assert torch.equal(model.reconstruct(given), model.reconstruct(x))
    assert np.array_equal(model.embed(given), model.embed(x))
    for method in (model.posterior_sample, lambda x: mean(model(x))):
        torch.manual_seed(1)
        expected = method(x)
        torch.manual_seed(1)
        assert torch.equal(method(given), expected)
    z = model.latent_mean(x)
    assert torch.equal(mean(model.decode(FORMS[form](z.detach()) if form != "DataFrame"
                                         else z.detach().numpy())), mean(model.decode(z)))
    torch.manual_seed(2)
    expected = aetk.log_marginal(model, x, n_samples=4)
    torch.manual_seed(2)
    assert torch.equal(aetk.log_marginal(model, given, n_samples=4), expected)


def test_decode_of_float64_and_numpy_points():
    model = _vae()
    z = torch.randn(3, D)
    expected = mean(model.decode(z))
    assert torch.equal(mean(model.decode(z.double())), expected)
    assert torch.equal(mean(model.decode(z.numpy())), expected)
    assert model.decode(np.zeros((2, D))).mean.dtype == torch.float32


def test_integer_data_is_cast():
    model = _vae("vae", "poisson")
    counts = np.random.default_rng(0).poisson(3, (N, F))
    assert torch.equal(model.latent_mean(counts),
                       model.latent_mean(torch.as_tensor(counts, dtype=torch.float32)))
    assert aetk.log_marginal(model, counts, n_samples=2).shape == (N,)


def test_a_float64_model_takes_float32_data():
    model = _vae().double()
    assert model.latent_mean(_x()).dtype == torch.float64
    assert model.latent_mean(_x().numpy()).dtype == torch.float64


@pytest.mark.parametrize("paired", [False, True])
def test_fit_trains_a_float64_model_on_float64_batches(paired):
    """fit gave every model float32 batches: a float64 model's first layer refused them
    ("mat1 and mat2 must have the same dtype"). Arrays, tensors, Datasets and conditions
    now come as the model's dtype, and a model with an identical start trains alike."""
    x = torch.rand(40, F, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = torch.nn.functional.one_hot(torch.arange(40) % 2, 2)
    cond = _vae(n_conditions=2).double()
    data = aetk.Paired(x, x.numpy(), c) if paired else (x.numpy(), c)
    aetk.fit(cond, data, data, epochs=1, batch_size=16, progress=False)
    dataset = torch.utils.data.TensorDataset(x, c)
    aetk.fit(cond, dataset, dataset, epochs=1, batch_size=16, progress=False)
    assert next(cond.parameters()).dtype == torch.float64
    model, seen = _vae().double(), []
    hook = model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    aetk.fit(model, x.float(), x.float(), epochs=2, batch_size=16, progress=False)
    hook.remove()
    assert set(seen) == {torch.float64}
    same = _vae().double()
    aetk.fit(same, x, x, epochs=2, batch_size=16, progress=False)
    for a, b in zip(model.parameters(), same.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_a_saved_float64_model_reloads_in_float64(tmp_path):
    """aetk.load rebuilt every model in float32 and cast the saved float64 weights into it:
    a float64 model came back rounded, its losses and codes those of another model."""
    model = _vae().double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-12)  # below float32's resolution
    model.save(tmp_path / "m")
    same = aetk.load(tmp_path / "m")
    assert {v.dtype for v in same.state_dict().values()} == {torch.float64}
    for k, v in model.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    x = _x().double()
    assert torch.equal(same.latent_mean(x), model.latent_mean(x))
    torch.manual_seed(3)
    expected = model.loss(x).loss
    torch.manual_seed(3)
    assert torch.equal(same.loss(x).loss, expected)
    into = aetk.load(tmp_path / "m", into=_vae())  # a model built by hand keeps its dtype
    assert {p.dtype for p in into.parameters()} == {torch.float32}


def test_matching_tensors_pass_through_with_their_gradients():
    """No copy and no detach: the methods serve training and geometry under autograd."""
    model, x = _vae(), _x().requires_grad_()
    assert model.as_input(x) is x
    model.latent_mean(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    z = torch.randn(3, D, requires_grad=True)
    model.decode(z).mean.sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_categorical_targets_of_log_marginal_stay_class_indices():
    torch.manual_seed(0)
    model = aetk.build_model("vae", "categorical", in_features=F, n_classes=3, latent_dim=D,
                             hidden=(8,)).eval()
    x = np.random.default_rng(0).integers(0, 3, (N, F))
    torch.manual_seed(1)
    expected = aetk.log_marginal(model, torch.as_tensor(x), n_samples=2)
    torch.manual_seed(1)
    assert torch.equal(aetk.log_marginal(model, x, n_samples=2), expected)


@pytest.mark.parametrize("name", ["lvae", "vqvae", "irmae", "hvae", "rhvae"])
def test_models_with_their_own_methods_take_arrays(name):
    """A subclass's own encode / posterior_sample / codes convert as the base class's do."""
    model = _vae(name, "gaussian", **{"rhvae": {"centroids": 4}, "vqvae": {"n_codes": 4}}
                 .get(name, {}))
    if name in ("vqvae", "rhvae"):
        aetk.fit(model, _x(), epochs=1, batch_size=N, progress=False, lr=0.0)
    x = _x()
    frame = pd.DataFrame(x.numpy())
    assert torch.equal(model.latent_mean(frame), model.latent_mean(x))
    torch.manual_seed(0)
    expected = model.posterior_sample(x)
    torch.manual_seed(0)
    assert torch.equal(model.posterior_sample(x.double().numpy()), expected)
    if name == "vqvae":
        assert torch.equal(model.codes(frame), model.codes(x))


def test_a_user_made_model_gets_the_conversion():
    class Mine(Model):
        def encode(self, x):
            return self.encoder(x) * 2

    torch.manual_seed(0)
    model = Mine(aetk.DeterministicEncoder(in_features=F, latent_dim=D, hidden=(4,)),
                 aetk.DeterministicDecoder(latent_dim=D, out_features=F, hidden=(4,)))
    x = _x()
    assert torch.equal(model.encode(x.numpy()), model.encode(x))
    assert torch.equal(model.encode(x.double()), model.encode(x))


# embed: negative strides and read-only frames -----------------------------------------


@pytest.mark.parametrize("make", [
    lambda a: a[:, ::-1], np.flip,
    lambda a: pd.DataFrame(a, columns=list("ABCDE"))[list("EDCBA")],
])
def test_embed_takes_arrays_with_negative_strides(make):
    model = _vae()
    a = np.random.default_rng(0).random((N, F))
    given = make(a)
    expected = model.embed(np.ascontiguousarray(given))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nor torch's "The given NumPy array is not writable"
        assert np.array_equal(model.embed(given), expected)


def test_embed_of_a_dataframe_gives_no_warning():
    model = _vae()
    frame = pd.DataFrame(_x().numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        codes = model.embed(frame)
    assert np.array_equal(codes, model.embed(_x()))


def test_embed_names_a_dataframe_rows_and_columns():
    frame = pd.DataFrame(_x().numpy(), columns=list("ABCDE"),
                         index=[f"cell{i}" for i in range(N)])
    frame.iloc[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 4, column 1 \(the DataFrame's row 'cell4', "
                                         r"column 'B'\)"):
        _vae().embed(frame)


# the RHVAE's metric ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def rhvae() -> Model:
    model = _vae("rhvae", "gaussian", centroids=4)
    aetk.fit(model, _x(), epochs=1, batch_size=N, progress=False)
    return model


def test_rhvae_metric_keeps_leading_dimensions(rhvae):
    z = torch.randn(2, 3, D, generator=torch.Generator().manual_seed(0))
    flat = z.reshape(6, D)
    for method, tail in ((rhvae.G, (D, D)), (rhvae.G_inv, (D, D)), (rhvae.log_det_G, ())):
        out = method(z)
        assert out.shape == (2, 3, *tail)
        torch.testing.assert_close(out.reshape(6, *tail), method(flat))
        point = method(z[0, 0])  # one point: no batch axis, as geometry.metric_for gives
        assert point.shape == tail
        torch.testing.assert_close(point, method(flat[:1])[0])
    assert geometry.metric_for(rhvae)(z[0, 0]).shape == rhvae.G(z[0, 0]).shape


def test_rhvae_metric_takes_float64_and_arrays(rhvae):
    z = torch.randn(4, D)
    for method in (rhvae.G, rhvae.G_inv, rhvae.log_det_G):
        expected = method(z)
        torch.testing.assert_close(method(z.double()), expected)
        torch.testing.assert_close(method(z.numpy()), expected)
    torch.testing.assert_close(geometry.metric_for(rhvae)(z.double()), rhvae.G(z))


def test_rhvae_metric_keeps_gradients(rhvae):
    z = torch.randn(4, D, requires_grad=True)
    rhvae.log_det_G(z).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(4, D + 1), (D + 1,), ()])
def test_rhvae_metric_names_the_latent_dimension(rhvae, shape):
    for method in (rhvae.G, rhvae.G_inv, rhvae.log_det_G):
        with pytest.raises(ValueError, match=rf"the latent dimension, {D}, as their last axis"):
            method(torch.zeros(shape))


def test_numpy_data_reach_the_network_in_the_models_dtype():
    """numpy data are cast to the model's dtype, as fit and embed always did."""
    seen = []

    class Spy(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(F, 2 * D)

        def forward(self, x):
            seen.append(x.dtype)
            return self.linear(x)

    model = aetk.VAE(aetk.GaussianEncoder(Spy(), latent_dim=D),
                     aetk.GaussianDecoder(latent_dim=D, out_features=F, hidden=(4,)))
    model.encode(np.ones((2, F), dtype=np.int64))
    assert seen == [torch.float32]


def test_integer_tensors_and_structured_inputs_pass_through():
    """A user's encoder of integer tokens (nn.Embedding) keeps its indices, and a model of
    several inputs gets its dict unchanged: only arrays and floating tensors are cast."""

    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(5, 2 * D)

        def forward(self, x):
            if isinstance(x, dict):
                x = x["tokens"]
            return self.embedding(x).mean(-2)

    model = aetk.VAE(aetk.GaussianEncoder(Tokens(), latent_dim=D),
                     aetk.GaussianDecoder(latent_dim=D, out_features=F, hidden=(4,)))
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    expected = model.encoder.network(tokens)[:, :D]  # the mean half of its output
    torch.testing.assert_close(model.latent_mean(tokens), expected)
    torch.testing.assert_close(model.latent_mean({"tokens": tokens}), expected)
    # latent points are points of any number type: the tokens' rule is the encoder's
    z = torch.tensor([[1, 0], [0, 2]])
    torch.testing.assert_close(model.decode(z).mean, model.decode(z.float()).mean)
    torch.testing.assert_close(model.prior_log_prob(z), model.prior_log_prob(z.float()))


def test_the_first_argument_converts_by_name_too():
    model = aetk.build_model("vae", "gaussian", in_features=F, latent_dim=D, hidden=(4,))
    z = np.zeros((3, D))  # float64 numpy
    assert model.decode(z=z).mean.dtype == torch.float32
    torch.testing.assert_close(model.prior_log_prob(z=z), model.prior_log_prob(z))


# integer tensors, lists of tensors, and the loss --------------------------------------


def _binary() -> torch.Tensor:
    return (_x() > 0.5).to(torch.uint8)


@pytest.mark.parametrize("name", ["ae", "vae", "iwae", "wae", "hvae", "lvae", "factorvae",
                                  "infomaxvae", "dipvae", "vampprior", "irmae"])
def test_loss_takes_every_form_of_data_and_target(name):
    """model.loss(uint8 images) crashed in the first layer ("mat1 and mat2 must have the
    same dtype, but got Byte and Float"), and loss(numpy) / loss(DataFrame) in the
    likelihood (".flatten() takes from 0 to 1 positional arguments"): the loss now
    converts its inputs and its target as the other methods do."""
    model, x = _vae(name, "bernoulli"), _binary()
    expected_x = x.float()
    forms = (x, x.numpy(), pd.DataFrame(x.numpy()), list(expected_x), x.bool())
    torch.manual_seed(4)
    expected = model.loss(expected_x).loss
    for given in forms:  # a DataFrame's column-major values round in another order
        for args, kwargs in (((given,), {}), ((given, given), {}),
                             ((), {"x": given, "target": x.numpy()})):
            torch.manual_seed(4)
            torch.testing.assert_close(model.loss(*args, **kwargs).loss, expected,
                                       rtol=1e-6, atol=0)


def test_a_users_loss_keeps_a_second_argument_that_is_no_target():
    """A subclass's loss(x, n_samples) got n_samples as the tensor(3.) of a target: only a
    second parameter named target is the decoder's data."""
    base = _vae()
    seen = []

    class Draws(aetk.VAE):
        def loss(self, x, n_samples=1):
            seen.append(n_samples)
            return super().loss(x)

    model = Draws(base.encoder, base.decoder)
    model.loss(_x().numpy(), 3)
    model.loss(_x().numpy(), n_samples=3)
    assert seen == [3, 3] and all(type(n) is int for n in seen)


def test_integer_tensors_reach_the_networks_as_floats():
    """uint8 images and int64 counts given as tensors are data, as their numpy arrays
    are: cast to the model's dtype by every method."""
    model, x = _vae("vae", "bernoulli"), _binary()
    assert torch.equal(model.latent_mean(x), model.latent_mean(x.float()))
    assert torch.equal(model.reconstruct(x), model.reconstruct(x.float()))
    torch.manual_seed(5)
    expected = model.posterior_sample(x.float())
    torch.manual_seed(5)
    assert torch.equal(model.posterior_sample(x), expected)
    counts = _vae("vae", "poisson")
    c = torch.as_tensor(np.random.default_rng(0).poisson(3, (N, F)))
    assert torch.equal(counts.latent_mean(c), counts.latent_mean(c.float()))


def test_a_list_of_tensors_is_stacked_as_rows():
    model, x = _vae(), _x()
    assert torch.equal(model.latent_mean(list(x)), model.latent_mean(x))
    assert np.array_equal(model.embed(list(x)), model.embed(x))
    with pytest.raises(ValueError, match=r"one tensor per row, but they have different "
                                         r"shapes \(\(4,\) and \(5,\)\)"):
        model.latent_mean([x[0], x[1, :4]])


def test_categorical_targets_keep_their_class_indices_in_the_loss():
    torch.manual_seed(0)
    model = aetk.build_model("vae", "categorical", in_features=F, n_classes=3, latent_dim=D,
                             hidden=(8,)).eval()
    x = np.random.default_rng(0).integers(0, 3, (N, F))
    assert model.as_target(x).dtype == torch.int64
    torch.manual_seed(1)
    expected = model.loss(torch.as_tensor(x, dtype=torch.float32)).loss
    torch.manual_seed(1)
    assert torch.equal(model.loss(torch.as_tensor(x)).loss, expected)


def test_a_users_loss_gets_its_arguments_beyond_x_and_target_untouched():
    """A subclass's loss with arguments of its own after (x, target): only x and the target
    are converted (by position or by name); the others, a numpy array of integers, a
    tensor, a string, reach it as given (the same objects), positional, keyword-only or in
    **kwargs, and its signature is kept."""
    seen = {}

    class Weighted(aetk.VAE):
        def loss(self, x, target=None, weight=None, *rest, tag="t", **more):
            seen.clear()
            seen.update(x=x, target=target, weight=weight, rest=rest, tag=tag, more=more)
            return super().loss(x, target)

    torch.manual_seed(0)
    built = _vae("vae", "bernoulli")
    model = Weighted(built.encoder, built.decoder)
    x = _binary().numpy()
    w, e = np.arange(N), torch.arange(N)
    model.loss(x, None, w, e, tag="u", other=w)
    assert seen["x"].dtype == torch.float32 and seen["target"] is None
    assert seen["weight"] is w and seen["rest"] == (e,) and seen["rest"][0] is e
    assert seen["tag"] == "u" and seen["more"]["other"] is w
    model.loss(x=x, target=x, weight=w)
    assert seen["target"].dtype == torch.float32 and seen["weight"] is w
    assert str(inspect.signature(Weighted.loss)) == (
        "(self, x, target=None, weight=None, *rest, tag='t', **more)")


# rows in another shape -----------------------------------------------------------------


@pytest.mark.parametrize("built, given", [((12,), (1, 3, 4)), ((1, 3, 4), (12,)),
                                          ((12,), (3, 4))])
def test_rows_of_the_same_size_in_another_shape_are_taken_everywhere(built, given):
    """encode took images (n, 1, 28, 28) for a model of in_features=784 (its first layer
    flattens them), but embed, log_marginal and fit refused them ("embed data has feature
    shape (1, 28, 28) but the model expects (784,)") and loss failed in the likelihood
    ("Target size (5, 1, 28, 28) must be the same as input size (5, 784)"). Every method
    now takes exactly what encode takes, reshaped to the model's input shape."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", input_shape=built, latent_dim=D,
                             hidden=(8,)).eval()
    flat = (torch.rand(N, 12, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x, rows = flat.reshape(N, *built), flat.reshape(N, *given)
    assert torch.equal(model.latent_mean(rows), model.latent_mean(x))
    assert np.array_equal(model.embed(rows), model.embed(x))
    assert model.reconstruct(rows).shape == model.reconstruct(x).shape
    torch.manual_seed(1)
    expected = model.loss(x).loss
    torch.manual_seed(1)
    assert torch.equal(model.loss(rows, rows).loss, expected)
    torch.manual_seed(2)
    expected = aetk.log_marginal(model, x, n_samples=3)
    torch.manual_seed(2)
    assert torch.equal(aetk.log_marginal(model, rows, n_samples=3, target=rows), expected)
    trained = {}
    for name, data in (("x", x), ("rows", rows)):
        torch.manual_seed(0)
        again = aetk.build_model("vae", "bernoulli", input_shape=built, latent_dim=D,
                                 hidden=(8,))
        history = aetk.fit(again, data, data, epochs=2, batch_size=4, progress=False)
        trained[name] = history["val_loss"].to_numpy()
    assert np.array_equal(trained["rows"], trained["x"])


def test_images_in_another_layout_are_refused_not_scrambled():
    """Channels-last images (n, 4, 4, 3) for a model of (3, 4, 4) were reshaped, not
    transposed, to its shape: codes and loss of scrambled pixels, in silence."""
    model = aetk.build_model("vae", "gaussian", input_shape=(3, 4, 4), latent_dim=D,
                             hidden=(8,))
    last = torch.rand(N, 4, 4, 3)
    for call in (model.embed, model.loss):  # (an MLP encoder itself flattens any rows)
        with pytest.raises((ValueError, RuntimeError)):
            call(last)
    with pytest.raises(ValueError, match=r"feature shape \(4, 4, 3\) but the model expects "
                                         r"\(3, 4, 4\)"):
        model.embed(last)


def test_rows_in_another_shape_reach_a_conditional_encoder():
    """A conditional encoder flattens only its last axis: it took image rows for a flat
    model as 28 rows each ("conditions for 5 rows, but the network got 140 inputs")."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=12, latent_dim=D, hidden=(8,),
                             n_conditions=2).eval()
    x, c = _x().repeat(1, 3)[:, :12], torch.eye(2)[torch.arange(N) % 2]
    with model.given(c):
        assert torch.equal(model.latent_mean(x.reshape(N, 1, 3, 4)), model.latent_mean(x))
    assert np.array_equal(model.embed(x.reshape(N, 3, 4), c), model.embed(x, c))


def test_rows_of_another_size_are_refused_by_name():
    model = _vae()  # F = 5 features
    rows = torch.rand(N, 2, 3)
    for call in (model.embed, lambda x: aetk.log_marginal(model, x),
                 lambda x: aetk.fit(model, x, epochs=1, batch_size=4, progress=False)):
        with pytest.raises(ValueError, match=r"feature shape \(2, 3\) but the model expects "
                                             r"\(5,\)"):
            call(rows)


def test_inference_methods_refuse_rows_of_another_shape_by_name():
    """encode, reconstruct, loss, ... took rows of another size into the network, to fail
    in its first layer ("mat1 and mat2 shapes cannot be multiplied"), and a flattening MLP
    encoded channels-last images (n, 4, 4, 3) of a (3, 4, 4) model as scrambled pixels, in
    silence; decode took latent points of another dimension to the same matmul error."""
    model = aetk.build_model("vae", "gaussian", input_shape=(3, 4, 4), latent_dim=D,
                             hidden=(8,)).eval()
    x = torch.rand(N, 3, 4, 4)
    for name in ("encode", "latent_mean", "reconstruct", "posterior_sample", "loss"):
        call = getattr(model, name)
        call(x)  # and the flat rows of the same values, as before
        call(x.reshape(N, -1))
        for wrong in (torch.rand(N, 4, 4, 3), torch.rand(N, 40), x[0]):
            shape = re.escape(str(tuple(wrong.shape[1:])))
            with pytest.raises(ValueError, match=rf"{name} data has feature shape {shape} "
                                                 r"but the model expects \(3, 4, 4\)"):
                call(wrong)
    with pytest.raises(ValueError, match=r"a single data point: x\[None\]"):
        model.encode(x[0])
    with pytest.raises(ValueError, match=r"forward data has feature shape \(40,\)"):
        model(torch.rand(N, 40))
    assert model.decode(torch.zeros(N, D)).mean.shape == (N, 3, 4, 4)
    for name in ("decode", "prior_log_prob"):
        with pytest.raises(ValueError, match=rf"{name}: z has shape \(4, 3\), but the model's "
                                             rf"codes have latent_dim={D}"):
            getattr(model, name)(torch.zeros(4, 3))


def test_decode_refuses_a_single_latent_point_or_stacked_points_with_a_hint():
    """`decode(torch.zeros(d))` failed inside the built-in decoder's reshape ("returned 12
    values per row, but it needs 24"); a single point is now refused as `encode` refuses a
    single data point, with the hint z[None]. `prior_log_prob` of one point is a density."""
    for likelihood, extra in (("gaussian", {}), ("categorical", {"n_classes": 3})):
        model = _vae(likelihood=likelihood, **extra)
        with pytest.raises(ValueError, match=rf"decode got a single latent point of shape "
                                             rf"\({D},\): give rows \(n, {D}\), z\[None\]"):
            model.decode(torch.zeros(D))
        assert model.decode(torch.zeros(D)[None]).batch_shape == (1,)
        # stacked draws (S, n, d) blamed the decoder's network width (the helper's finding)
        with pytest.raises(ValueError, match=rf"decode takes rows of latent points \(n, {D}\), "
                                             rf"got shape \(3, 4, {D}\): give "
                                             rf"z.reshape\(-1, {D}\)"):
            model.decode(torch.zeros(3, 4, D))
    torch.testing.assert_close(model.prior_log_prob(np.zeros(D)),
                               torch.tensor(-D / 2 * np.log(2 * np.pi), dtype=torch.float32))


def _classes(n: int = N, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices (n, F) and their one-hot rows (n, F, k)."""
    idx = torch.randint(0, k, (n, F), generator=torch.Generator().manual_seed(2))
    return idx, torch.nn.functional.one_hot(idx, k).float()


@pytest.mark.parametrize("one_hot_inputs", [True, False])
def test_a_categorical_model_takes_one_hot_rows_and_class_indices(one_hot_inputs):
    """`build_model("vae", "categorical", in_features=F, n_classes=3)` refused one-hot rows
    (N, F, 3) ("feature shape (5, 3) but the model expects (5,)"), and its encoder read the
    class indices as numbers (class 2 as twice class 1). Its encoder now reads the one-hot
    rows (F * 3 inputs), and recodes class indices as them; the encoder of indices of
    models saved before (`one_hot_inputs=False`) recodes one-hot rows as indices. Either
    way the loss at the same draw is the same for both codings and the formula's (-log
    softmax at the classes + the closed-form KL, of the encoder's network in float64 on
    its coding), the codes and log p(x) the same."""
    model = _vae(likelihood="categorical", n_classes=3, one_hot_inputs=one_hot_inputs)
    assert model.input_shape == ((F, 3) if one_hot_inputs else (F,))
    assert ("one_hot_inputs" in model.build_spec) is one_hot_inputs
    idx, one_hot = _classes()
    torch.manual_seed(1)
    loss = model.loss(one_hot)
    torch.manual_seed(1)
    assert torch.equal(model.loss(idx).loss, loss.loss)
    read = (one_hot if one_hot_inputs else idx.float()).double()
    mu, log_sigma = copy.deepcopy(model.encoder.network).double()(read).chunk(2, -1)
    sigma = log_sigma.exp()
    torch.manual_seed(1)
    z = mu + sigma * torch.randn(N, D).double()  # the reparameterised draw of the loss
    net = copy.deepcopy(model.decoder.network).double()
    logits = net(z).reshape(N, F, 3)
    rec = -logits.log_softmax(-1).gather(-1, idx[..., None].long()).sum((1, 2)).mean()
    kl = 0.5 * (sigma**2 + mu**2 - 1 - 2 * sigma.log()).sum(-1).mean()
    torch.testing.assert_close(loss.loss.double(), rec + kl, rtol=1e-5, atol=1e-5)
    for method in ("latent_mean", "reconstruct"):
        assert torch.equal(getattr(model, method)(one_hot), getattr(model, method)(idx))
    assert np.array_equal(model.embed(one_hot.numpy()), model.embed(idx))
    torch.manual_seed(3)
    expected = aetk.log_marginal(model, idx, n_samples=4)
    torch.manual_seed(3)
    assert torch.equal(aetk.log_marginal(model, one_hot, n_samples=4), expected)
    with pytest.raises(ValueError, match=r"feature shape \(5, 2\) but the model expects"):
        model.encode(one_hot[..., :2])
    if one_hot_inputs:  # class indices are checked as they are recoded
        with pytest.raises(ValueError, match=r"class indices must be below n_classes=3"):
            model.encode(idx + 1)
        return
    bad = one_hot.clone()
    bad[1, 2] = torch.tensor([0.2, 0.5, 0.3])  # probabilities, not a one-hot row
    with pytest.raises(ValueError, match=r"encode data: one-hot entries must be 0 or 1; "
                                         r"first bad at row 1, column 6: 0.2"):
        model.encode(bad)
    bad[1, 2] = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"loss data: one-hot rows must sum to 1; first bad "
                                         r"at row 1, column 2"):
        model.loss(bad)


@pytest.mark.parametrize(("name", "options"), [
    ("vae", {}), ("factorvae", {}), ("rhvae", {"centroids": 4}), ("vqvae", {"n_codes": 4}),
    ("vae", {"one_hot_inputs": False})])
def test_fit_on_one_hot_rows_is_fit_on_their_class_indices(name, options):
    """fit of a categorical model on one-hot rows trains the same weights as on the class
    indices, for models that read the batch in their own training step (the FactorVAE's
    discriminator) or the training data when fit starts (RHVAE centroids, VQ-VAE codes),
    and on a Dataset of either, recoded batch by batch."""
    idx, one_hot = _classes(12)
    states = []
    datasets = ((TensorDataset(idx), TensorDataset(one_hot)) if name == "vae" else ())
    for data in (idx, one_hot, *datasets):
        model = _vae(name, "categorical", n_classes=3, **options).train()
        aetk.fit(model, data, epochs=2, batch_size=4, progress=False)
        states.append(model.state_dict())
    for state in states[1:]:
        for key, value in states[0].items():
            assert torch.equal(state[key], value), key


@pytest.mark.parametrize("one_hot_inputs", [True, False])
def test_fit_holds_classes_in_the_smaller_coding(one_hot_inputs):
    """fit held class indices recoded whole as one-hot rows for an encoder of them: k times
    the memory (4 GB for 1e5 x 500 x 20 classes). It holds the indices and recodes each
    batch; one-hot rows for an encoder of indices become indices once, as before."""
    from aetk.train import _Batches

    idx, one_hot = _classes(12)
    model = _vae("vae", "categorical", n_classes=3, one_hot_inputs=one_hot_inputs)
    shapes = model.input_shape, model.decoder.event_shape
    for data in (idx, one_hot):
        batches = _Batches(data, 4, torch.device("cpu"), torch.Generator(), False,
                           model.check_data, "train", shapes=shapes,
                           recode=model._recode_classes)
        held = one_hot if data is one_hot and one_hot_inputs else idx
        assert torch.equal(batches.tensor, held.float())
        first = next(iter(batches))[0]
        assert torch.equal(first, (one_hot if one_hot_inputs else idx.float())[:4])


def test_fit_recodes_no_more_class_indices_than_a_batch(monkeypatch):
    """fit's check of its whole data recoded every class index as a one-hot row (k times
    the data, if only for the check); indices are checked as they are, and only batches
    become one-hot rows."""
    from aetk.models.base import Model

    recoded = []
    one_hot = Model._indices_one_hot
    monkeypatch.setattr(Model, "_indices_one_hot",
                        staticmethod(lambda x, k: recoded.append(len(x)) or one_hot(x, k)))
    idx, _ = _classes(12)
    aetk.fit(_vae("vae", "categorical", n_classes=3), idx, epochs=1, batch_size=4,
             progress=False)
    assert recoded and max(recoded) <= 4


def test_the_composed_one_hot_model_takes_class_indices_too():
    """The recipe for an encoder of one-hot vectors, a GaussianEncoder of input_shape
    (F, 3) and a CategoricalDecoder of out_features F, refused class indices (N, F); they
    are now recoded as one-hot rows, for the same loss."""
    torch.manual_seed(0)
    model = aetk.VAE(aetk.GaussianEncoder(input_shape=(F, 3), latent_dim=D, hidden=(8,)),
                     aetk.CategoricalDecoder(latent_dim=D, out_features=F, n_classes=3,
                                             hidden=(8,)))
    idx, one_hot = _classes()
    torch.manual_seed(1)
    expected = model.loss(one_hot).loss
    torch.manual_seed(1)
    assert torch.equal(model.loss(idx).loss, expected)
    assert np.array_equal(model.embed(idx), model.embed(one_hot))
    aetk.fit(model, idx, epochs=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"class indices must be below n_classes=3"):
        model.encode(idx + 1)


@pytest.mark.parametrize("method", ["encode", "latent_mean", "posterior_sample",
                                    "reconstruct"])
def test_data_with_nan_is_refused_by_name_and_place(method):
    """fit refused NaN data naming the row and column, but encode and the methods after it
    returned NaN codes in silence, which spoiled geodesics and Frechet means downstream."""
    model = aetk.build_model("vae", "gaussian", in_features=4, hidden=(8,))
    x = torch.rand(3, 4)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=rf"{method} data has 1 NaN or infinite values; "
                                         r"first at row 2, column 1"):
        getattr(model, method)(x)
    x[2, 1] = 0.5
    getattr(model, method)(x)
    assert model.latent_mean(x[:0]).shape == (0, 2)  # no rows: no rows back


@pytest.mark.parametrize("name", ["ae", "vae", "iwae", "hvae", "rhvae", "vqvae"])
def test_the_loss_of_no_rows_says_so(name):
    """encode and decode of 0 rows return 0 rows, fit refuses empty data, but loss(x[:0])
    failed inside torch ("cannot reshape tensor of 0 elements")."""
    model = aetk.build_model(name, "bernoulli", in_features=4, hidden=(8,))
    with pytest.raises(ValueError, match="loss got x of 0 rows: a loss is a mean over rows"):
        model.loss(torch.rand(0, 4))


def test_loss_refuses_targets_that_would_broadcast():
    """A target of one row for five inputs, or of one feature for four, broadcast against
    the likelihood's parameters: a Gaussian model's loss(x, x[:, :1]) was a number (every
    feature scored against the first), in silence; a Bernoulli one failed inside torch."""
    torch.manual_seed(0)
    x = torch.rand(5, 4)
    for name in ("vae", "hvae", "iwae"):
        model = aetk.build_model(name, "gaussian", in_features=4, hidden=(8,))
        model.loss(x, x.flip(0))  # a paired target of the decoder's shape
        with pytest.raises(ValueError, match="loss got x of 5 rows but a target of 1"):
            model.loss(x, x[:1])
        with pytest.raises(ValueError, match="loss got x of 5 rows but a target of 1"):
            model.loss(x=x, target=x[:1])
        with pytest.raises(ValueError, match=r"target data has feature shape \(1,\) but the "
                                             r"decoder outputs \(4,\)"):
            model.loss(x, x[:, :1])
    onehot = torch.nn.functional.one_hot(torch.randint(3, (5, 4)), 3).float()
    cat = aetk.build_model("vae", "categorical", in_features=4, hidden=(8,), n_classes=3)
    classes = onehot.argmax(-1)
    torch.manual_seed(1)
    by_index = cat.loss(classes, classes).loss
    torch.manual_seed(1)
    assert cat.loss(classes, onehot).loss.item() == by_index.item()  # one-hot targets pass
