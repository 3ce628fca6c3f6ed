"""Convolutional encoders and decoders for images: the element order of the decoder's
parameter blocks against a loop, image and flat data alike, training with every block
layout, saving, the pull-back metric through transposed convolutions, the command line."""

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

import aetk
from aetk import cli
from aetk.geometry import metric_for
from aetk.nets import _ImageBlocks, conv_decoder, conv_encoder, image_layout

from helpers import digits

torch.set_num_threads(1)
SMALL = {"in_features": 64, "image_shape": (8, 8), "channels": (4, 8), "hidden": (16,)}


def test_image_blocks_follow_the_data_layout():
    """Channel `(p * width + k) * C + c` at pixel (h, w) is element `(c, h, w)` of block `p`,
    class `k`: the order the decoders reshape into `(B, p, *event_shape, width)`."""
    blocks, width, c, h, w = 2, 3, 2, 4, 5
    x = torch.randn(7, blocks * width * c, h, w)
    out = _ImageBlocks(blocks, width)(x).reshape(7, blocks, c * h * w, width)
    for p, k, ch, i, j in itertools.product(range(blocks), range(width), range(c), range(h),
                                            range(w)):
        assert out[:, p, (ch * h + i) * w + j, k].equal(x[:, (p * width + k) * c + ch, i, j])


def test_conv_networks_halve_and_restore_the_image():
    image = image_layout((3 * 16 * 8,), (3, 16, 8), (4, 8))
    assert image == (3, 16, 8)
    enc = conv_encoder(image, (4, 8), (32,), 6)
    assert enc[1].out_channels == 4 and enc[3].out_channels == 8
    assert enc(torch.randn(5, 3 * 16 * 8)).shape == (5, 6)
    dec = conv_decoder(2, image, (4, 8), (32,), blocks=2, width=5)
    feature_maps = dec[:2](torch.randn(5, 2))
    assert feature_maps.shape == (5, 8, 4, 2)  # (H, W) / 2^2, the last channels first
    assert dec(torch.randn(5, 2)).shape == (5, 2 * 5 * 3 * 16 * 8)


def test_classes_become_channels_of_the_convolutional_encoder():
    """A categorical model's convolutional encoder read the class indices as one channel of
    numbers (class 4 as four times class 1); it now reads the one-hot rows, the k classes
    of each image channel as k channels (class-major, as the decoder's blocks): its output
    is the convolutions' on the one-hot images built by a loop, for flat data and images
    of two channels, and class indices and one-hot rows give the same codes and loss, in
    either layout of the images."""
    k = 5
    for shape, image in (((64,), (8, 8)), ((2, 8, 8), None)):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "categorical", input_shape=shape, image_shape=image,
                                 channels=(4, 8), hidden=(16,), n_classes=k).eval()
        c = 1 if len(shape) == 1 else shape[0]
        conv = model.encoder.network[1]
        assert model.input_shape == (*shape, k) and conv[1].in_channels == k * c
        idx = torch.randint(0, k, (6, *shape), generator=torch.Generator().manual_seed(1))
        one_hot = torch.nn.functional.one_hot(idx, k).float()
        by_loop = torch.zeros(6, k * c, 8, 8)
        pixels = idx.reshape(6, c, 8, 8)
        for b, ch, i, j in itertools.product(range(6), range(c), range(8), range(8)):
            by_loop[b, pixels[b, ch, i, j] * c + ch, i, j] = 1
        mu = conv(by_loop).chunk(2, -1)[0]
        torch.testing.assert_close(model.latent_mean(idx), mu, rtol=0, atol=0)
        assert torch.equal(model.latent_mean(one_hot), mu)
        torch.manual_seed(2)
        expected = model.loss(idx).loss
        torch.manual_seed(2)
        assert model.loss(one_hot).loss.item() == expected.item()
        # rows of the classes in the other layout (images for flat data, flat for images),
        # as the models take other data (the images' flat indices were refused)
        other = (6, 128) if len(shape) == 3 else (6, 1, 8, 8)
        for x in (idx.reshape(other), one_hot.reshape(*other, k)):
            assert torch.equal(model.latent_mean(x), mu)
    torch.manual_seed(0)  # the encoder of indices, as saved before: one channel of numbers
    old = aetk.build_model("vae", "categorical", n_classes=k, one_hot_inputs=False, **SMALL)
    assert old.input_shape == (64,) and old.encoder.network[1].in_channels == 1


def test_flat_and_image_shaped_data_give_the_same_model():
    torch.manual_seed(0)
    flat = aetk.build_model("vae", "bernoulli", **SMALL)
    torch.manual_seed(0)
    image = aetk.build_model("vae", "bernoulli", input_shape=(1, 8, 8), channels=(4, 8),
                             hidden=(16,))
    x = digits(n=10)[0]
    torch.testing.assert_close(image.encode(x.reshape(10, 1, 8, 8)).mean, flat.encode(x).mean)
    z = torch.randn(3, 2)
    torch.testing.assert_close(image.decode(z).mean.flatten(1), flat.decode(z).mean)


@pytest.mark.parametrize(("likelihood", "options"), [
    ("bernoulli", {}), ("gaussian_learned", {"split": True}), ("categorical", {}),
    ("negative_binomial", {"dispersion": "sample"})])
def test_conv_models_learn(likelihood, options):
    """One, two and split parameter blocks and a class axis; the validation loss falls."""
    x, opts = digits(likelihood)
    torch.manual_seed(0)
    model = aetk.build_model("vae", likelihood, **SMALL, **opts, **options)
    history = aetk.fit(model, x[:500], x[500:], epochs=4, batch_size=50, lr=3e-3, seed=0,
                       progress=False)
    assert history["val_loss"].iloc[-1] < 0.95 * history["val_loss"].iloc[0]


@pytest.mark.parametrize("kind", ["hvae", "rhvae", "infomaxvae"])
def test_hamiltonian_and_critic_models_take_conv_networks(kind):
    """Exact flows differentiate twice through the convolutions; the RHVAE's metric network
    copies the convolutional encoder."""
    x = digits(n=64)[0]
    torch.manual_seed(0)
    extra = {"centroids": 8} if kind == "rhvae" else {}
    model = aetk.build_model(kind, "bernoulli", **SMALL, **extra)
    if kind == "rhvae":
        model.on_fit_start(x)
        assert isinstance(model.metric_net[1], torch.nn.Conv2d)
    model.loss(x).loss.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_a_saved_conv_model_reloads(tmp_path):
    torch.manual_seed(0)
    model = aetk.build_model("vae", "categorical", n_classes=5, **SMALL).eval()
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert again.build_spec["channels"] == [4, 8] and again.build_spec["image_shape"] == [8, 8]
    z = torch.randn(4, 2)
    torch.testing.assert_close(again.decode(z).base_dist.logits,
                               model.decode(z).base_dist.logits)


def test_pullback_metric_through_transposed_convolutions():
    """Forward-mode Jacobians of the convolutional decoder match central differences."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", activation="tanh", **SMALL).double().eval()
    z = torch.randn(5, 2, dtype=torch.float64)
    h = 1e-6
    mean = model.decoder
    jac = torch.stack([(mean(z + h * e).mean - mean(z - h * e).mean) / (2 * h)
                       for e in torch.eye(2, dtype=torch.float64)], -1)
    torch.testing.assert_close(metric_for(model)(z), jac.mT @ jac, rtol=1e-6, atol=1e-10)


def test_bad_image_layouts_are_refused():
    with pytest.raises(ValueError, match="has 63 values but the data points"):
        aetk.build_model("vae", "bernoulli", in_features=64, image_shape=(7, 9), channels=(4,))
    with pytest.raises(ValueError, match="divisible by 16"):
        aetk.build_model("vae", "bernoulli", in_features=64, image_shape=(8, 8),
                         channels=(4, 8, 16, 32))
    with pytest.raises(ValueError, match="need image_shape"):
        aetk.build_model("vae", "bernoulli", in_features=64, channels=(4,))
    with pytest.raises(ValueError, match="give channels too"):
        aetk.build_model("vae", "bernoulli", in_features=64, image_shape=(8, 8))
    # it said "not the shape (64,)", the one vector of counts it models
    with pytest.raises(ValueError, match="multinomial decoder has no convolutional network"):
        aetk.build_model("vae", "multinomial", in_features=64, image_shape=(8, 8), channels=(4,))


def test_train_command_builds_conv_networks_from_the_stored_image_shape(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cli.main(["preprocess", "--source", "digits", "--n-samples", "200", "--transforms",
              "scale01", "--out", str(tmp_path / "data.zarr")])
    args = ["train", "--data", str(tmp_path / "data.zarr"), "--model", "vae", "--likelihood",
            "bernoulli", "--hidden", "16", "--channels", "4", "8", "--epochs", "2",
            "--no-progress", "--history", str(tmp_path / "h.tsv")]
    assert cli.main([*args, "--out", str(tmp_path / "m")]) == 0
    model = aetk.load(tmp_path / "m")
    assert model.build_spec["channels"] == [4, 8] and model.build_spec["image_shape"] == [8, 8]
    cli.main(["preprocess", "--source", "swissroll", "--n-samples", "50",
              "--out", str(tmp_path / "roll.zarr")])
    capsys.readouterr()
    bad = [a if a != str(tmp_path / "data.zarr") else str(tmp_path / "roll.zarr") for a in args]
    assert cli.main([*bad, "--out", str(tmp_path / "m2")]) == 1
    assert "stores no image shape" in capsys.readouterr().err
    assert not (tmp_path / "m2").exists()
    assert np.isfinite(np.loadtxt(tmp_path / "h.tsv", skiprows=1, usecols=1)).all()


def test_conv_networks_against_convolutions_by_hand():
    """Both networks with tanh, from `torch.nn.functional` and their weights: the encoder
    applies tanh after every 4x4 stride-2 convolution (padding 1) and inside its MLP, the
    decoder between its transposed convolutions but not after the last (its output is the
    parameters, of any sign), then `_ImageBlocks`' element order."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    image = (2, 8, 4)
    enc = conv_encoder(image, (3, 5), (6,), 4, act="tanh").double()
    x = torch.randn(3, 2 * 8 * 4, dtype=torch.float64)
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in enc.modules() if isinstance(m, torch.nn.Linear)]
    h = x.reshape(3, *image)
    for conv in convs:
        h = torch.tanh(F.conv2d(h, conv.weight, conv.bias, stride=2, padding=1))
    h = torch.tanh(F.linear(h.flatten(1), linears[0].weight, linears[0].bias))
    torch.testing.assert_close(enc(x), F.linear(h, linears[1].weight, linears[1].bias))

    dec = conv_decoder(2, image, (3, 5), (6,), blocks=2, width=1, act="tanh").double()
    z = torch.randn(3, 2, dtype=torch.float64)
    linears = [m for m in dec.modules() if isinstance(m, torch.nn.Linear)]
    deconvs = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    h = z
    for lin in linears:
        h = torch.tanh(F.linear(h, lin.weight, lin.bias))
    h = h.reshape(3, 5, 2, 1)
    for k, deconv in enumerate(deconvs):
        h = F.conv_transpose2d(h, deconv.weight, deconv.bias, stride=2, padding=1)
        h = torch.tanh(h) if k < len(deconvs) - 1 else h
    out = dec(z)
    torch.testing.assert_close(out, h.reshape(3, -1))  # width 1: blocks, channels, pixels
    assert out.min() < -0.1  # the parameters are not squashed
