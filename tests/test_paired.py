"""Paired training, x_in -> x_out (AETK's second `train!`): the likelihood of every model
scores the target, by hand in numpy; translation between two views of the digits learns
more than the targets' mean; a decoder of another shape saves and loads; the refusals."""

import numpy as np
import pytest
import torch
from torch import nn

import aetk

from helpers import digits

# the top three rows of each 8 x 8 digit, and the bottom five
TOP, BOTTOM = 24, 40


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


class Spy(nn.Module):
    """Wraps a decoder and keeps the distribution of its last call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.event_shape = inner.event_shape
        self.n_conditions = 0
        self.last = None

    def forward(self, z: torch.Tensor):
        self.last = self.inner(z)
        return self.last

    def check_data(self, x: torch.Tensor, name: str) -> None:
        self.inner.check_data(x, name)


def bernoulli_nll_by_hand(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean over rows of -sum log Bernoulli(y; sigmoid(logits)), in float64."""
    return float(-(y * logits - np.logaddexp(0, logits)).sum(-1).mean())


IMPORTANCE_WEIGHTED = ("iwae", "ciwae", "piwae")  # the decoder sees every draw at once


@pytest.mark.parametrize("name", [m for m in aetk.MODELS if m not in IMPORTANCE_WEIGHTED])
def test_every_model_scores_the_target(name: str) -> None:
    """The reconstruction term is -log p(x_out | z) at the z the decoder was last called
    with (for the HVAE and RHVAE the end of the flow, which the target's force moved),
    and the inputs only reach the encoder: another target changes it, as by hand."""
    x, _ = digits(n=64)
    x_in, y = x[:, :TOP], x[:, TOP:]
    options = {"n_codes": 16} if name == "vqvae" else {}
    model = aetk.build_model(name, "bernoulli", in_features=TOP, out_features=BOTTOM,
                             latent_dim=2, hidden=(16,), **options)
    model.on_fit_start(x_in, len(x_in))
    model.decoder = Spy(model.decoder)
    model.train()
    out = model.loss(x_in, y)
    logits = model.decoder.last.base_dist.logits.detach().double().numpy()
    assert logits.shape == (64, BOTTOM)
    assert out.terms["reconstruction"].item() == pytest.approx(
        bernoulli_nll_by_hand(logits, y.double().numpy()), rel=1e-5)
    with pytest.raises(ValueError, match="decodes data of shape"):
        model.check_data(x_in, "train")


@pytest.mark.parametrize("name", IMPORTANCE_WEIGHTED)
def test_iwae_scores_the_target_with_every_draw(name: str) -> None:
    x, _ = digits(n=32)
    x_in, y = x[:, :TOP], x[:, TOP:]
    groups = {"n_groups": 1} if name == "piwae" else {}  # 5 draws in all
    model = aetk.build_model(name, "bernoulli", in_features=TOP, out_features=BOTTOM,
                             latent_dim=2, hidden=(16,), n_samples=5, **groups)
    model.decoder = Spy(model.decoder)
    out = model.loss(x_in, y)
    logits = model.decoder.last.base_dist.logits.detach().double().numpy()
    assert logits.shape[-1] == BOTTOM and logits.size == 5 * 32 * BOTTOM
    logits = logits.reshape(5, 32, BOTTOM)
    by_hand = np.mean([bernoulli_nll_by_hand(s, y.double().numpy()) for s in logits])
    assert out.terms["reconstruction"].item() == pytest.approx(by_hand, rel=1e-5)


def test_the_target_defaults_to_the_input() -> None:
    x, _ = digits(n=64)
    for name in ("vae", "hvae", "rhvae", "vqvae"):
        options = {"n_codes": 16} if name == "vqvae" else {}
        model = aetk.build_model(name, "bernoulli", in_features=64, latent_dim=2, hidden=(16,),
                                 **options)
        model.on_fit_start(x, len(x))
        torch.manual_seed(1)
        plain = model.loss(x)
        torch.manual_seed(1)
        paired = model.loss(x, x)
        torch.manual_seed(1)
        other = model.loss(x, 1 - x)
        assert plain.loss.item() == paired.loss.item(), name
        assert other.loss.item() != pytest.approx(plain.loss.item(), rel=1e-3), name


def test_translation_between_two_views_learns_more_than_the_mean() -> None:
    """Predict the right half of each binarised digit from its left half: the validation
    negative log-likelihood falls 1.5 nats below that of the training targets' pixel
    means (what a decoder that ignores x_in can do; 2.2 nats measured), and the same model
    trained on (right, right) pairs does better still (the plumbing is not swapped)."""
    x, _ = digits(n=1500)
    img = (x > 0.5).float().reshape(-1, 8, 8)
    left, right = img[..., :4].flatten(1), img[..., 4:].flatten(1)
    train, val = slice(0, 1300), slice(1300, 1500)
    p = right[train].double().mean(0).clamp(1e-4, 1 - 1e-4).numpy()
    y = right[val].double().numpy()
    baseline = float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum(1).mean())
    best = {}
    for name, source in (("translation", left), ("identity", right)):
        torch.manual_seed(0)
        model = aetk.build_model("ae", "bernoulli", in_features=32, out_features=32,
                                 latent_dim=4, hidden=(64,))
        history = aetk.fit(model, aetk.Paired(source[train], right[train]),
                           aetk.Paired(source[val], right[val]), epochs=30, batch_size=50,
                           lr=3e-3, progress=False)
        best[name] = history["val_loss"].min()
    assert best["translation"] < baseline - 1.5, (best, baseline)
    assert best["identity"] < best["translation"] - 2


def test_a_model_of_another_output_shape_saves_and_loads(tmp_path) -> None:
    model = aetk.build_model("rhvae", "poisson", in_features=TOP, out_features=BOTTOM,
                             latent_dim=2, hidden=(8,), centroids=8)
    x, _ = digits("poisson", n=64)
    aetk.fit(model, aetk.Paired(x[:, :TOP], x[:, TOP:]), epochs=1, batch_size=32,
             progress=False)
    assert model.build_spec["output_shape"] == [BOTTOM]
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    z = torch.randn(5, 2)
    torch.testing.assert_close(again.decode(z).mean, model.decode(z).mean)
    same = aetk.build_model("vae", "poisson", in_features=TOP, hidden=(8,))
    assert "output_shape" not in same.build_spec  # specs of ordinary models are unchanged


def test_log_marginal_of_the_target_with_the_input_as_proposal() -> None:
    """log p(x_out) for a linear-Gaussian decoder in closed form (N(b, W W^T + s^2 I)),
    estimated with q(z|x_in) as the proposal: the estimate does not depend on the
    proposal beyond its noise."""
    x, _ = digits(n=16)
    x_in, y = x[:, :TOP].double(), x[:, TOP:].double()
    model = aetk.build_model("vae", "gaussian", in_features=TOP, out_features=BOTTOM,
                             latent_dim=2, hidden=(8,), sigma=0.5).double()
    W, b = 0.3 * torch.randn(BOTTOM, 2, dtype=torch.float64), torch.rand(BOTTOM,
                                                                          dtype=torch.float64)
    model.decoder.network = nn.Linear(2, BOTTOM).double()
    with torch.no_grad():
        model.decoder.network.weight.copy_(W)
        model.decoder.network.bias.copy_(b)
    cov = W @ W.T + 0.25 * torch.eye(BOTTOM, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(b, cov).log_prob(y)
    estimate = aetk.log_marginal(model, x_in, n_samples=20000, target=y)
    torch.testing.assert_close(estimate, exact, rtol=0, atol=0.1)


def test_a_checkpoint_of_unpaired_training_is_refused_for_paired_data(tmp_path) -> None:
    x, _ = digits(n=64)
    ckpt = tmp_path / "ckpt.pt"

    def run(data):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=64, hidden=(8,))
        return aetk.fit(model, data, epochs=1, batch_size=32, progress=False, checkpoint=ckpt)

    run(x)
    with pytest.raises(ValueError, match="paired: None there, True now"):
        run(aetk.Paired(x, 1 - x))


def test_paired_data_of_a_conditional_model() -> None:
    x, _ = digits(n=100)
    c = torch.eye(3)[torch.arange(100) % 3]
    model = aetk.build_model("vae", "bernoulli", in_features=TOP, out_features=BOTTOM,
                             hidden=(8,), n_conditions=3)
    history = aetk.fit(model, aetk.Paired(x[:, :TOP], x[:, TOP:], c), epochs=2,
                       batch_size=50, progress=False)
    assert np.isfinite(history["train_loss"]).all()
    with pytest.raises(ValueError, match=r"give Paired\(x_in, x_out, c\)"):
        aetk.fit(model, aetk.Paired(x[:, :TOP], x[:, TOP:]), epochs=1, batch_size=50)


@pytest.mark.parametrize(("data", "message"), [
    (lambda x: aetk.Paired(x[:, :TOP], x[:-1, TOP:]), "has 100 inputs but 99 targets"),
    (lambda x: aetk.Paired(x[:, :TOP], x[:, :TOP]), r"target data has feature shape \(24,\)"),
    (lambda x: aetk.Paired(x[:, :TOP], x[:, TOP:] * 2), "train target data"),
    (lambda x: aetk.Paired(x[:, :TOP], x[:, TOP:], torch.ones(100, 2)), "for conditional"),
    (lambda x: aetk.Paired(torch.utils.data.TensorDataset(x[:, :TOP]), x[:, TOP:]),
     "tensors or arrays"),
    (lambda x: x[:, :TOP], r"give train data as aetk.Paired\(x_in, x_out\)"),
])
def test_bad_paired_data_is_refused(data, message) -> None:
    x, _ = digits(n=100)
    model = aetk.build_model("vae", "bernoulli", in_features=TOP, out_features=BOTTOM,
                             hidden=(8,))
    with pytest.raises(ValueError, match=message):
        aetk.fit(model, data(x), epochs=1, batch_size=50, progress=False)


class OwnModel(aetk.Model):
    """A user-made model whose loss takes no target."""

    def loss(self, x: torch.Tensor) -> aetk.LossOutput:
        rec = -self.decoder(self.encoder(x).rsample()).log_prob(x).mean()
        return aetk.LossOutput(rec, {"reconstruction": rec})


def test_a_user_made_loss_without_target_still_trains_and_refuses_pairs() -> None:
    x, _ = digits(n=64)
    model = OwnModel(aetk.GaussianEncoder(in_features=64, latent_dim=2, hidden=(8,)),
                     aetk.BernoulliDecoder(latent_dim=2, out_features=64, hidden=(8,)))
    history = aetk.fit(model, x, x, epochs=2, batch_size=32, progress=False)
    assert np.isfinite(history["val_loss"]).all()
    with pytest.raises(ValueError, match=r"OwnModel\.loss takes no target"):
        aetk.fit(model, aetk.Paired(x, x), epochs=1, batch_size=32, progress=False)


def test_another_output_shape_needs_mlp_networks() -> None:
    with pytest.raises(ValueError, match="another output shape needs MLP networks"):
        aetk.build_model("vae", "bernoulli", input_shape=(8, 8), out_features=10,
                         channels=(4,))


def test_count_inputs_are_logged_by_default_only_when_they_are_the_targets() -> None:
    """A Poisson model of its own inputs sees log(1 + x) unless told; a paired one (inputs
    need not be counts) does not, unless `log_inputs=True` is given."""
    own = aetk.build_model("vae", "poisson", in_features=TOP, hidden=(8,))
    paired = aetk.build_model("vae", "poisson", in_features=TOP, out_features=BOTTOM,
                              hidden=(8,))
    told = aetk.build_model("vae", "poisson", in_features=TOP, out_features=BOTTOM,
                            hidden=(8,), log_inputs=True)
    assert own.build_spec["log_inputs"] is True and told.build_spec["log_inputs"] is True
    assert "log_inputs" not in paired.build_spec
