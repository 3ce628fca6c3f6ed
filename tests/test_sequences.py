"""Sequence data through the recurrent networks of `aetk.nets`: a VAE on noisy copies of
three token templates reaches the noise's entropy bound and denoises; the networks'
shapes; a Hamiltonian model trains through the GRU's double backward."""

import math

import numpy as np
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


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def gru_by_hand(gru: torch.nn.GRU, inputs: np.ndarray, h0: np.ndarray) -> np.ndarray:
    """A stacked GRU (batch first) from its equations in numpy float64: the last layer's
    outputs `(B, T, H)` for inputs `(B, T, I)` and initial states `(layers, B, H)`."""
    out = inputs
    for layer in range(gru.num_layers):
        w_ih, w_hh, b_ih, b_hh = (getattr(gru, f"{name}_l{layer}").detach().double().numpy()
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        h, steps = h0[layer], []
        for t in range(out.shape[1]):
            gi, gh = out[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
            (ir, iz, i_n), (hr, hz, hn) = np.split(gi, 3, -1), np.split(gh, 3, -1)
            r, u = _sigmoid(ir + hr), _sigmoid(iz + hz)
            h = (1 - u) * np.tanh(i_n + r * hn) + u * h
            steps.append(h)
        out = np.stack(steps, 1)
    return out


def test_two_layer_sequence_networks_against_the_gru_equations() -> None:
    """Two GRU layers, three rows: the encoder reads the top layer's last state, and the
    decoder starts each layer from its own slice of tanh(start(z)), row by row, and feeds z
    at every step (`nets.SequenceDecoderNet`)."""
    x, _ = noisy_templates(3)
    encoder = SequenceEncoderNet(V, 4, embedding=5, hidden=7, layers=2).double()
    embedded = encoder.embed.weight.detach().numpy()[x.numpy()]
    h = gru_by_hand(encoder.gru, embedded, np.zeros((2, 3, 7)))[:, -1]
    want = h @ encoder.out.weight.detach().numpy().T + encoder.out.bias.detach().numpy()
    np.testing.assert_allclose(encoder(x.double()).detach().numpy(), want, rtol=1e-10)

    decoder = SequenceDecoderNet(2, V, T, hidden=7, layers=2).double()
    z = torch.randn(3, 2, dtype=torch.float64)
    zs = z.numpy()
    start = np.tanh(zs @ decoder.start.weight.detach().numpy().T
                    + decoder.start.bias.detach().numpy())  # (B, layers * hidden)
    h0 = start.reshape(3, 2, 7).transpose(1, 0, 2)  # layer l: columns l * 7 .. l * 7 + 6
    steps = gru_by_hand(decoder.gru, np.repeat(zs[:, None], T, 1), h0)
    logits = steps @ decoder.out.weight.detach().numpy().T + decoder.out.bias.detach().numpy()
    np.testing.assert_allclose(decoder(z).detach().numpy(), logits.reshape(3, T * V),
                               rtol=1e-10, atol=1e-12)
