"""Sequence data through the recurrent networks of `aetk.nets`: a VAE on noisy copies of
three token templates reaches the noise's entropy bound and denoises; the networks'
shapes; a Hamiltonian model trains through the GRU's double backward."""

import math

import pytest
import torch

import aetk
from aetk.nets import SequenceDecoderNet, SequenceEncoderNet

V, T = 6, 12  # vocabulary, length
NOISE = 0.1  # each token resampled uniformly with this probability


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def noisy_templates(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    templates = torch.randint(V, (3, T), generator=torch.Generator().manual_seed(0))
    clean = templates[torch.randint(3, (n,))]
    x = clean.clone()
    noise = torch.rand(x.shape) < NOISE
    x[noise] = torch.randint(V, (int(noise.sum()),))
    return x, clean


def sequence_model(kind: str = "vae", d: int = 2, **options) -> aetk.Model:
    encoder = aetk.GaussianEncoder(SequenceEncoderNet(V, 2 * d), latent_dim=d)
    decoder = aetk.CategoricalDecoder(SequenceDecoderNet(d, V, T), latent_dim=d,
                                      out_features=T, n_classes=V)
    return {"vae": aetk.VAE, "hvae": aetk.HVAE}[kind](encoder, decoder, **options)


def test_a_sequence_vae_reaches_the_noise_bound_and_denoises() -> None:
    """The best validation loss is within 1.5 nats of the bound `T H(token) + log 3` (the
    noise's entropy, and one of three templates to name), and the reconstructions are the
    clean templates."""
    x, clean = noisy_templates(1200)
    model = sequence_model()
    history = aetk.fit(model, x[:1000], x[1000:], epochs=15, batch_size=50, lr=3e-3,
                       progress=False)
    right = 1 - NOISE + NOISE / V
    entropy = -(right * math.log(right) + (V - 1) * (NOISE / V) * math.log(NOISE / V))
    bound = T * entropy + math.log(3)
    assert bound - 0.5 < history["val_loss"].min() < bound + 1.5, (history, bound)
    model.eval()
    assert (model.reconstruct(x[1000:]) == clean[1000:]).float().mean() > 0.97


def test_sequence_networks_take_any_leading_shape_and_one_hot_tokens() -> None:
    x, _ = noisy_templates(5)
    encoder = SequenceEncoderNet(V, 4)
    torch.testing.assert_close(encoder(torch.nn.functional.one_hot(x, V).float()),
                               encoder(x.float()))
    decoder = SequenceDecoderNet(2, V, T)
    z = torch.randn(3, 5, 2)
    out = decoder(z)
    assert out.shape == (3, 5, T * V)
    torch.testing.assert_close(out[1], decoder(z[1]))


def test_a_hamiltonian_model_trains_through_the_gru() -> None:
    x, _ = noisy_templates(200)
    model = sequence_model("hvae", step_size=0.01)
    history = aetk.fit(model, x, epochs=3, batch_size=50, lr=3e-3, progress=False)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
