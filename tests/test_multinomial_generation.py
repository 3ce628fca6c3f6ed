"""A multinomial model's generated data come out as counts at given totals (the data's,
where the CLI has them), at the proportions of the decoder; other likelihoods as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import aetk
from aetk import cli, storage
from aetk.distributions import generate, mean

torch.set_num_threads(1)


def _model(likelihood: str = "multinomial", latent_dim: int = 2, seed: int = 0,
           **options) -> aetk.Model:
    torch.manual_seed(seed)
    return aetk.build_model("vae", likelihood, in_features=6, latent_dim=latent_dim,
                            hidden=(8,), **options)


def test_mean_at_totals_is_the_proportions_times_each_total() -> None:
    model = _model(total_count=5)
    z = torch.randn(4, 2)
    p = model.decode(z)
    probs = torch.softmax(model.decoder.params(z)[0], -1)
    totals = torch.tensor([1.0, 17.0, 250.0, 0.0])
    counts = mean(p, total_count=totals)
    torch.testing.assert_close(counts, probs * totals[:, None])
    torch.testing.assert_close(counts.sum(-1), totals)
    torch.testing.assert_close(mean(p, total_count=40), probs * 40)
    torch.testing.assert_close(mean(p), probs * 5)  # the decoder's own total_count, as before
    x = torch.tensor([[3.0, 0, 1, 0, 0, 2]]).expand(4, 6)
    torch.testing.assert_close(mean(p, like=x), probs * 6)
    with pytest.raises(ValueError, match="one per row"):
        mean(p, total_count=torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        mean(p, total_count=torch.tensor([1.0, -1.0, 1.0, 1.0]))


def test_other_likelihoods_refuse_totals_and_keep_their_mean() -> None:
    for likelihood in ("poisson", "gaussian", "bernoulli"):
        model = _model(likelihood)
        p = model.decode(torch.randn(3, 2))
        with pytest.raises(ValueError, match="multinomial"):
            mean(p, total_count=10.0)
        with pytest.raises(ValueError, match=r"multinomial decoder's counts, not for this "
                                             r"decoder's [A-Z]\w+ distribution"):
            model.sample(3, total_count=10.0)
        torch.testing.assert_close(generate(p), p.mean)


def test_model_sample_at_totals_keeps_the_latent_draws() -> None:
    model = _model()
    totals = torch.tensor([10.0, 200.0, 3000.0, 7.0, 1.0])
    torch.manual_seed(3)
    proportions = model.sample(5)
    torch.manual_seed(3)
    counts = model.sample(5, total_count=totals)
    torch.testing.assert_close(proportions.sum(-1), torch.ones(5))
    torch.testing.assert_close(counts, proportions * totals[:, None])


def test_counts_drawn_at_totals_sum_to_them_and_are_seeded() -> None:
    model = _model()
    totals = torch.tensor([0.0, 1.0, 50.0, 50.0, 1234.0, 9.0])
    torch.manual_seed(5)
    draws = model.sample(6, mean_only=False, total_count=totals)
    torch.manual_seed(5)
    again = model.sample(6, mean_only=False, total_count=totals)
    torch.testing.assert_close(draws, again)
    assert torch.equal(draws, draws.round()) and bool((draws >= 0).all())
    torch.testing.assert_close(draws.sum(-1), totals, rtol=0, atol=0)
    # their mean at one z is the expected counts (8,000 draws of 100 counts: |error| < 5 sd)
    p = model.decode(torch.zeros(8000, 2))
    x = generate(p, mean_only=False, total_count=100)
    expected = mean(p, total_count=100)[0]
    sd = (expected * (1 - expected / 100)).sqrt() / np.sqrt(8000)
    assert bool(((x.mean(0) - expected).abs() < 5 * sd).all()), (x.mean(0), expected)
    with pytest.raises(ValueError, match="integers"):
        generate(p, mean_only=False, total_count=2.5)


def test_traversal_and_grid_at_one_total() -> None:
    model = _model()
    codes = torch.randn(50, 2)
    plain = aetk.latent_traversal(model, codes, n_steps=4)
    counts = aetk.latent_traversal(model, codes, n_steps=4, total_count=812.0)
    torch.testing.assert_close(plain.decoded.sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(counts.decoded, plain.decoded * 812)
    grid = aetk.latent_grid(model, codes, n_steps=3, total_count=40.0)[0]
    plain_grid = aetk.latent_grid(model, codes, n_steps=3)[0]
    torch.testing.assert_close(grid, plain_grid * 40)


# ---- the command line -----------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """60 samples of 6 counts with totals from 20 to 2,000; the training totals."""
    d = tmp_path_factory.mktemp("counts")
    rng = np.random.default_rng(0)
    profile = rng.dirichlet(np.ones(6))
    counts = np.stack([rng.multinomial(n, profile) for n in rng.integers(20, 2000, 60)])
    np.save(d / "counts.npy", counts)
    assert cli.main(["preprocess", "--source", str(d / "counts.npy"), "--validation-fraction",
                     "0.25", "--seed", "1", "--out", str(d / "data.zarr")]) == 0
    stored = storage.read_data(d / "data.zarr")
    for likelihood in ("multinomial", "poisson"):
        _model(likelihood).save(d / likelihood)
    return d, stored.train.sum(1, dtype=np.float64)


def _sample(d: Path, out: Path, *extra: str, model: str = "multinomial") -> object:
    # on the CPU, where the in-process references draw
    assert cli.main(["sample", "--model", str(d / model), "--n", "40", "--device", "cpu",
                     "--out", str(out), *extra]) == 0
    return storage.read_zarr(out)


def test_cli_sample_counts_at_drawn_training_totals(store, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    d, train_totals = store
    data = ["--data", str(d / "data.zarr")]
    counts = _sample(d, tmp_path / "c.zarr", *data, "--seed", "4")
    totals = counts["total_count"].values
    np.testing.assert_array_equal(totals, np.random.default_rng(4).choice(train_totals, 40))
    assert set(totals) <= set(train_totals) and len(set(totals)) > 10
    np.testing.assert_allclose(counts["x"].values.sum(1), totals, rtol=1e-5)
    assert "drawn with replacement (seed 4) from the 45 training" in counts.attrs["counts"]
    # the same latent draws as the proportions written without --data
    capsys.readouterr()
    props = _sample(d, tmp_path / "p.zarr", "--seed", "4")
    assert "its proportions (total 1), not counts" in capsys.readouterr().out
    assert "total_count" not in props and "no --data" in props.attrs["counts"]
    np.testing.assert_allclose(props["x"].values.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(counts["x"].values / totals[:, None], props["x"].values,
                               rtol=1e-5, atol=1e-7)
    # seeded: again the same, another seed other totals
    again = _sample(d, tmp_path / "a.zarr", *data, "--seed", "4")
    np.testing.assert_array_equal(again["x"].values, counts["x"].values)
    other = _sample(d, tmp_path / "o.zarr", *data, "--seed", "5")
    assert not np.array_equal(other["total_count"].values, totals)
    # the geometric sampler at the same totals
    geo = _sample(d, tmp_path / "g.zarr", *data, "--seed", "4", "--sampler", "geometric",
                  "--n-centroids", "20")
    np.testing.assert_array_equal(geo["total_count"].values, totals)
    np.testing.assert_allclose(geo["x"].values.sum(1), totals, rtol=1e-5)


def test_cli_sample_of_another_likelihood_is_unchanged(store, tmp_path: Path) -> None:
    d, _ = store
    ds = _sample(d, tmp_path / "s.zarr", "--data", str(d / "data.zarr"), "--seed", "2",
                 model="poisson")
    assert "total_count" not in ds and "counts" not in ds.attrs
    torch.manual_seed(2)  # as cmd_sample: the seed, then the model's construction
    expected = aetk.load(d / "poisson").sample(40)
    np.testing.assert_allclose(ds["x"].values, expected.numpy(), rtol=1e-6)


def test_cli_encode_generates_counts_and_traverses_at_the_median_total(store, tmp_path: Path
                                                                       ) -> None:
    d, train_totals = store
    common = ["--data", str(d / "data.zarr"), "--n-importance", "0", "--n-generated", "7",
              "--traversal-steps", "3", "--seed", "6"]
    assert cli.main(["encode", "--model", str(d / "multinomial"), *common,
                     "--out", str(tmp_path / "l.zarr")]) == 0
    lat = storage.read_zarr(tmp_path / "l.zarr")
    totals = lat["generated_total_count"].values
    np.testing.assert_array_equal(totals, np.random.default_rng(6).choice(train_totals, 7))
    for name in ("generated_model", "generated_geometric"):
        np.testing.assert_allclose(lat[name].values.sum(1), totals, rtol=1e-5)
    median = np.median(train_totals)
    np.testing.assert_allclose(lat["traversal"].values.sum(-1), median, rtol=1e-5)
    np.testing.assert_allclose(lat["latent_grid"].values.sum(-1), median, rtol=1e-5)
    assert f"median total {median:g}" in lat["traversal"].attrs["description"]
    assert "median total" in lat.attrs["generated_counts"]
    # a Poisson model's store has none of it
    assert cli.main(["encode", "--model", str(d / "poisson"), *common,
                     "--out", str(tmp_path / "p.zarr")]) == 0
    pois = storage.read_zarr(tmp_path / "p.zarr")
    assert "generated_total_count" not in pois and "generated_counts" not in pois.attrs
    assert "median" not in pois["traversal"].attrs["description"]
