"""Latent traversals and the 2-D latent grid against a linear decoder computed by hand."""

import numpy as np
import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


class LinearDecoder(nn.Module):
    """p(x|z) = N(W z + b, 1), a user-made decoder."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.W, self.b = nn.Parameter(W), nn.Parameter(b)

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(z @ self.W.T + self.b, 1.0), 1)


def linear_model(d: int, n_features: int = 5) -> tuple[aetk.Model, np.ndarray, np.ndarray]:
    model = aetk.build_model("vae", "gaussian", in_features=n_features, latent_dim=d,
                             hidden=(8,))
    W, b = torch.randn(n_features, d), torch.randn(n_features)
    model.decoder = LinearDecoder(W, b)
    return model, W.numpy(), b.numpy()


def test_traversal_sweeps_the_most_varied_dimensions_around_the_median() -> None:
    model, W, b = linear_model(4)
    codes = torch.randn(201, 4) * torch.tensor([0.1, 3.0, 1.0, 0.01]) + torch.tensor(
        [0.0, 1.0, -2.0, 5.0])
    out = aetk.latent_traversal(model, codes, n_steps=7, max_dims=3)
    c = codes.numpy()
    dims = np.argsort(-c.var(0, ddof=1))[:3]
    np.testing.assert_array_equal(out.dims.numpy(), dims)
    assert list(dims) == [1, 2, 0]  # the least varied dimension (3) is left out
    reference = np.median(c, 0)
    np.testing.assert_allclose(out.reference.numpy(), reference, rtol=1e-6)
    assert out.decoded.shape == (3, 7, 5)
    for k, j in enumerate(dims):
        lo, hi = np.quantile(c[:, j], [0.02, 0.98])
        values = np.linspace(lo, hi, 7)
        np.testing.assert_allclose(out.values[k].numpy(), values, rtol=1e-5, atol=1e-6)
        for s, v in enumerate(values):
            z = reference.copy()
            z[j] = v
            np.testing.assert_allclose(out.decoded[k, s].numpy(), W @ z + b, rtol=1e-5,
                                       atol=1e-5)


def test_latent_grid_reads_like_an_image_of_the_plane() -> None:
    model, W, b = linear_model(2)
    codes = torch.randn(100, 2) * torch.tensor([1.0, 2.0])
    decoded, z1, z2 = aetk.latent_grid(model, codes, n_steps=5, quantiles=(0.1, 0.9))
    c = codes.numpy()
    np.testing.assert_allclose(z1.numpy(), np.linspace(*np.quantile(c[:, 0], [0.1, 0.9]), 5),
                               rtol=1e-5)
    np.testing.assert_allclose(z2.numpy(), np.linspace(*np.quantile(c[:, 1], [0.1, 0.9]),
                                                       5)[::-1], rtol=1e-5)  # top row highest
    assert decoded.shape == (5, 5, 5)
    for i in range(5):
        for j in range(5):
            np.testing.assert_allclose(decoded[i, j].numpy(),
                                       W @ np.array([z1[j].item(), z2[i].item()]) + b,
                                       rtol=1e-5, atol=1e-5)


def test_traversal_of_a_conditional_model_depends_on_the_given_class() -> None:
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=2, hidden=(8,),
                             n_conditions=3)
    codes = torch.randn(30, 2)
    with model.given(torch.eye(3)[0]):
        first = aetk.latent_traversal(model, codes, n_steps=3).decoded
    with model.given(torch.eye(3)[2]):
        last = aetk.latent_traversal(model, codes, n_steps=3).decoded
    assert not torch.allclose(first, last)


@pytest.mark.parametrize(("codes", "kwargs", "message"), [
    (torch.randn(5), {}, "must be"),
    (torch.randn(1, 2), {}, "N >= 2"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}, "NaN"),
    (torch.randn(5, 2), {"n_steps": 1}, "n_steps"),
    (torch.randn(5, 2), {"quantiles": (0.9, 0.1)}, "quantiles"),
    (torch.randn(5, 2), {"max_dims": 0}, "max_dims"),
    (torch.randn(5, 3), {}, "codes have 3 dimensions, but the model's latent space has 2"),
])
def test_traversal_refuses_bad_input(codes, kwargs, message) -> None:
    model, _, _ = linear_model(2)
    with pytest.raises(ValueError, match=message):
        aetk.latent_traversal(model, codes, **kwargs)


def test_latent_grid_needs_two_dimensions() -> None:
    model, _, _ = linear_model(3)
    with pytest.raises(ValueError, match="2-D latent space"):
        aetk.latent_grid(model, torch.randn(10, 3))


def test_traversal_figure_of_many_dimensions_without_images(tmp_path) -> None:
    """Six traversed dimensions of 5-feature data: the first four as heat maps."""
    import xarray as xr

    from aetk import report

    decoded = np.random.default_rng(0).random((6, 5, 5))
    ds = xr.Dataset(
        {"traversal": (("traversed", "step", "feature"), decoded),
         "traversal_value": (("traversed", "step"), np.tile(np.linspace(-1, 1, 5), (6, 1)))},
        coords={"traversed": np.arange(6)}, attrs={"model": "vae", "likelihood": "gaussian"})
    fig = report.plot_traversals(ds, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert len(fig.axes) >= 4  # and it returns the figure, for a notebook


@pytest.mark.parametrize(("latent_dim", "note"), [(10, " (the 4 most varied of 10)"),
                                                  (3, "")])
def test_traversal_title_says_when_dimensions_are_left_out(latent_dim, note) -> None:
    """A 10-D VAE of the S-curve's 3 features: four heat maps, and the title says they are
    the four most varied of ten (it read as if the model had four); a 3-D one shows all."""
    import xarray as xr

    from aetk import report

    rng = np.random.default_rng(0)
    ds = xr.Dataset(
        {"z_mean": (("sample", "latent"), rng.standard_normal((20, latent_dim))),
         "traversal": (("traversed", "step", "feature"), rng.random((latent_dim, 5, 3))),
         "traversal_value": (("traversed", "step"),
                             np.tile(np.linspace(-1, 1, 5), (latent_dim, 1)))},
        coords={"traversed": np.arange(latent_dim)},
        attrs={"model": "vae", "likelihood": "gaussian"})
    fig = report.plot_traversals(ds)
    assert fig.get_suptitle().splitlines()[1] == (
        f"one dimension at a time{note} across the validation codes' 2%-98% range, the "
        "others at their median")
    assert sum(bool(ax.images) for ax in fig.axes) == min(latent_dim, 4)


def test_figures_without_a_path_are_returned_not_written(tmp_path, monkeypatch) -> None:
    """Every plot_* returns its figure; without a path it writes nothing (a notebook
    shows the figure); a single fit history is one panel."""
    import pandas as pd

    from aetk import report

    monkeypatch.chdir(tmp_path)
    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [3.0, 2.0, 1.5],
                            "val_loss": [3.1, 2.2, 1.9]})
    fig = report.plot_training_curves(history)
    assert [ax.get_title() for ax in fig.axes] == ["training"]
    assert [line.get_ydata().tolist() for line in fig.axes[0].lines] == [
        [3.0, 2.0, 1.5], [3.1, 2.2, 1.9]]
    assert list(tmp_path.iterdir()) == []


def test_a_multinomial_traversal_and_grid_give_counts_at_the_total() -> None:
    """With `total_count`, a multinomial decoder's point predictions are its expected counts
    at that total, `total * p(z)` (rows summing to it), not its proportions."""
    model = aetk.build_model("vae", "multinomial", in_features=5, latent_dim=2, hidden=(8,))
    codes = torch.randn(40, 2)
    out = aetk.latent_traversal(model, codes, n_steps=3, total_count=250.0)
    z = out.reference.repeat(len(out.dims), 3, 1)
    for k, j in enumerate(out.dims):
        z[k, :, j] = out.values[k]
    with torch.no_grad():
        probs = model.decode(z.reshape(-1, 2)).probs.reshape(len(out.dims), 3, 5)
    torch.testing.assert_close(out.decoded, 250 * probs)
    torch.testing.assert_close(out.decoded.sum(-1), torch.full((2, 3), 250.0))
    decoded, z1, z2 = aetk.latent_grid(model, codes, n_steps=3, total_count=40.0)
    with torch.no_grad():
        corner = model.decode(torch.stack([z1[0], z2[0]])[None]).probs[0]
    torch.testing.assert_close(decoded[0, 0], 40 * corner)


def test_traversal_takes_codes_as_a_dataframe() -> None:
    import pandas as pd

    model, _, _ = linear_model(2)
    codes = torch.randn(50, 2)
    frame = pd.DataFrame(codes.numpy(), columns=["z1", "z2"])
    expected = aetk.latent_traversal(model, codes, n_steps=5)
    got = aetk.latent_traversal(model, frame, n_steps=5)
    torch.testing.assert_close(got.decoded, expected.decoded)
    torch.testing.assert_close(aetk.latent_grid(model, frame, n_steps=4)[0],
                               aetk.latent_grid(model, codes, n_steps=4)[0])
