"""IRMAE: its code passes the linear maps, its loss is the AE's at that code, and it
learns codes of the data's intrinsic rank where an AE spreads them over every dimension."""

import pytest
import torch
from torch import nn

import aetk
from aetk.distributions import log_prob


def _manifold(n: int = 1000, dim: int = 32) -> torch.Tensor:
    """Points of a 2-D manifold in `dim` dimensions (a random tanh network of uniform
    coordinates), standardised, with noise of 1% of their spread."""
    torch.manual_seed(0)
    embed = nn.Sequential(nn.Linear(2, dim), nn.Tanh(), nn.Linear(dim, dim))
    with torch.no_grad():
        x = embed(torch.rand(n, 2) * 2 - 1)
    x = (x - x.mean(0)) / x.std(0)
    return x + 0.01 * torch.randn_like(x)


def _singular_values(model: aetk.Model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = model.latent_mean(x)
    s = torch.linalg.svdvals(z - z.mean(0))
    return s / s[0]


def test_the_code_passes_the_linear_maps_and_the_loss_is_the_aes():
    model = aetk.build_model("irmae", "gaussian", in_features=6, latent_dim=3, hidden=(8,),
                             n_linear=2)
    x = torch.randn(5, 6)
    w1, w2 = (layer.weight for layer in model.linear)
    z = model.encoder(x) @ w1.T @ w2.T
    torch.testing.assert_close(model.encode(x), z)
    torch.testing.assert_close(model.latent_mean(x), z)
    rec = -log_prob(model.decoder(z), x).mean()
    out = model.loss(x)
    torch.testing.assert_close(out.loss, rec)
    assert out.terms.keys() == {"reconstruction"}


def test_irmae_learns_the_intrinsic_rank_where_an_ae_does_not():
    """Latent 8 for a 2-D manifold, the same networks and 60 epochs: the AE's codes spread
    over at least 4 dimensions (singular values above 10% of the largest), the IRMAE's (4
    maps) over 2, the third below 2%, at a training loss within 1% of the AE's."""
    x = _manifold()
    runs = {}
    for name, opts in (("ae", {}), ("irmae", {"n_linear": 4})):
        torch.manual_seed(0)
        model = aetk.build_model(name, "gaussian", in_features=32, latent_dim=8,
                                 hidden=(64,), **opts)
        hist = aetk.fit(model, x, epochs=60, batch_size=64, progress=False, device="cpu")
        runs[name] = (_singular_values(model, x), hist["train_loss"].iloc[-1])
    (s_ae, loss_ae), (s_ir, loss_ir) = runs["ae"], runs["irmae"]
    assert s_ae[3] > 0.1  # measured: 1, 0.87, 0.22, 0.12, 0.035, ..., 0.012
    assert s_ir[1] > 0.5 and s_ir[2] < 0.02  # measured: 1, 0.75, 0.008, 0.004, 0.001, ...
    assert loss_ir == pytest.approx(loss_ae, rel=0.01)


def test_save_load_and_refusals(tmp_path):
    model = aetk.build_model("irmae", "bernoulli", in_features=6, latent_dim=3, hidden=(8,),
                             n_linear=3)
    model.save(tmp_path / "m")
    again = aetk.load(tmp_path / "m")
    assert isinstance(again, aetk.IRMAE) and len(again.linear) == 3
    x = torch.rand(4, 6)
    torch.testing.assert_close(again.encode(x), model.eval().encode(x))
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="n_linear must be an integer >= 1"):
            aetk.build_model("irmae", "bernoulli", in_features=6, n_linear=bad)
