"""Denoising autoencoders: the masking noise's statistics, that it acts only while
training, and that a denoising AE reconstructs corrupted digits better than a plain one."""

import pytest
import torch

import aetk
from aetk.nets import MaskingNoise

from helpers import digits


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def test_masking_noise_masks_a_fraction_while_training_only() -> None:
    noise = MaskingNoise(0.3)
    x = torch.rand(200, 100) + 1.0  # no zeros of its own
    masked = noise.train()(x)
    zero = masked == 0
    assert abs(zero.float().mean().item() - 0.3) < 0.01
    torch.testing.assert_close(masked[~zero], x[~zero])  # kept values are not rescaled
    assert torch.equal(noise.eval()(x), x)
    with pytest.raises(ValueError, match="masking probability"):
        MaskingNoise(1.0)


def test_a_denoising_autoencoder_reconstructs_masked_digits_better() -> None:
    """Two autoencoders trained alike on 1,000 digits; on 400 others with 40% of the pixels
    masked, the denoising one's reconstructions are closer to the clean images (a plain AE
    with room to spare copies the holes)."""
    x, _ = digits("bernoulli", 1400)
    train, test = x[:1000], x[1000:]
    masked = test * (torch.rand_like(test) >= 0.4)
    errors = {}
    for noise in (0.0, 0.4):
        torch.manual_seed(0)
        model = aetk.build_model("ae", "bernoulli", in_features=64, latent_dim=16,
                                 hidden=(128,), input_noise=noise)
        aetk.fit(model, train, epochs=60, batch_size=50, progress=False)
        with torch.no_grad():
            errors[noise] = (model.eval().reconstruct(masked) - test).square().mean().item()
    assert errors[0.4] < 0.8 * errors[0.0]


def test_input_noise_is_saved_and_checked(tmp_path) -> None:
    model = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,),
                             input_noise=0.25)
    assert model.build_spec["input_noise"] == 0.25
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert isinstance(again.encoder.network[0], MaskingNoise) and again.encoder.network[0].p == 0.25
    plain = aetk.build_model("vae", "bernoulli", in_features=64, latent_dim=2, hidden=(8,))
    assert "input_noise" not in plain.build_spec
    with pytest.raises(ValueError, match="pseudo-inputs"):
        aetk.build_model("vampprior", "bernoulli", in_features=64, input_noise=0.2)
    noisy = aetk.GaussianEncoder(in_features=64, latent_dim=2, hidden=(8,), input_noise=0.2)
    with pytest.raises(ValueError, match="pseudo-inputs"):  # composed by hand, too
        aetk.VampPrior(noisy, aetk.BernoulliDecoder(latent_dim=2, out_features=64))
    with pytest.raises(ValueError, match="input_noise must be"):
        aetk.build_model("vae", "bernoulli", in_features=64, input_noise=1.5)


def test_a_denoising_rhvae_takes_its_metric_from_the_clean_centroids() -> None:
    """The masking is for the batch's inputs: the centroids' c_i and M_i come from clean
    points while training too, so the loss's metric is the one `update_metric` freezes."""
    x, _ = digits("bernoulli", 200)
    model = aetk.build_model("rhvae", "bernoulli", in_features=64, latent_dim=2, hidden=(16,),
                             input_noise=0.5, centroids=20)
    model.on_fit_start(x)
    assert not any(isinstance(m, MaskingNoise) for m in model.metric_net.modules())
    assert any(isinstance(m, MaskingNoise) for m in model.encoder.modules())
    model.train()
    a, b = model.live_metric(), model.live_metric()
    assert model.encoder.training  # the batch's inputs are still masked
    assert torch.equal(a.c, b.c) and torch.equal(a.M_flat, b.M_flat)
    model.update_metric()
    frozen = model.frozen_metric()
    torch.testing.assert_close(frozen.c, a.c)
    torch.testing.assert_close(frozen.M_flat, a.M_flat)


def test_input_noise_must_be_below_one() -> None:
    """`input_noise` is a masking probability in [0, 1): 1 (every value masked) is refused,
    0 is no noise at all (nothing in the spec)."""
    with pytest.raises(ValueError, match=r"input_noise must be in \[0, 1\), got 1"):
        aetk.build_model("vae", "bernoulli", in_features=64, hidden=(8,), input_noise=1)
    clean = aetk.build_model("vae", "bernoulli", in_features=64, hidden=(8,), input_noise=0.0)
    assert "input_noise" not in clean.build_spec


def _noisy_model(name: str = "vae") -> aetk.models.base.Model:
    """A denoising model in training mode, its decoder set to evaluation by hand (a
    submodule's own mode, which must survive the methods)."""
    model = aetk.build_model(name, "gaussian", in_features=6, latent_dim=2, hidden=(8,),
                             input_noise=0.5).train()
    model.decoder.eval()
    return model


def _modes(model: torch.nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def test_evaluation_time_methods_run_without_input_noise() -> None:
    """reconstruct, log_marginal, EncoderMetric.from_model and the traversals ran a model
    left in training mode with its input noise: each call masked other inputs (two calls
    of reconstruct(x) differed), and from_model built the metric from corrupted codes.
    They now run in evaluation mode and give the model's own modes back."""
    from aetk.geometry import EncoderMetric
    from aetk.traversal import latent_traversal

    model, x = _noisy_model(), torch.rand(8, 6)
    before = _modes(model)
    reference = _noisy_model().eval()
    reference.load_state_dict(model.state_dict())
    checks = {
        "reconstruct": lambda m: m.reconstruct(x),
        "log_marginal": lambda m: aetk.log_marginal(m, x, n_samples=3),
        "from_model": lambda m: EncoderMetric.from_model(m, x).loc,
        "traversal": lambda m: latent_traversal(m, torch.randn(5, 2)).decoded,
    }
    for name, call in checks.items():
        torch.manual_seed(1)
        got = call(model)
        assert _modes(model) == before, name
        torch.manual_seed(1)
        assert torch.equal(got, call(reference)), name


def test_rhvae_update_metric_keeps_each_modules_mode() -> None:
    model = aetk.build_model("rhvae", "gaussian", in_features=6, latent_dim=2, hidden=(8,),
                             centroids=4)
    aetk.fit(model, torch.rand(8, 6), epochs=1, batch_size=8, progress=False)
    model.train()
    model.decoder.eval()
    before = _modes(model)
    model.update_metric()
    assert _modes(model) == before
