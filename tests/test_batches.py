"""Locality batches (Skafte et al. 2019) against neighbours found by brute force, the
uniform choice among them, training with them (and resuming), and the refusals."""

import numpy as np
import pandas as pd
import pytest
import torch

import aetk

from helpers import digits


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


def brute_force_neighbours(x: np.ndarray, k: int) -> list[set[int]]:
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return [set(np.argsort(row)[:k].tolist()) for row in d]


def test_each_batch_is_primaries_and_their_neighbours() -> None:
    x = np.random.default_rng(0).standard_normal((60, 3))
    sampler = aetk.LocalityBatches(x, n_primary=5, n_secondary=3, k_neighbors=6)
    assert len(sampler) == 3 and sampler.batch_size == 20  # ceil(60 / 20) batches cover 60
    near = brute_force_neighbours(x, 6)
    batches = list(sampler(torch.Generator().manual_seed(1)))
    assert len(batches) == 3
    for idx in batches:
        assert idx.shape == (20,)
        primary, secondary = idx[:5].tolist(), idx[5:].view(5, 3).tolist()
        assert len(set(primary)) == 5
        for p, picked in zip(primary, secondary, strict=True):
            assert len(set(picked)) == 3 and set(picked) <= near[p]
    again = list(sampler(torch.Generator().manual_seed(1)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))
    other = next(iter(sampler(torch.Generator().manual_seed(2))))
    assert not torch.equal(other, batches[0])


def test_the_data_may_be_a_dataframe_and_the_sizes_whole_floats() -> None:
    """LocalityBatches(DataFrame) failed in torch.as_tensor ("KeyError: 5"), and
    k_neighbors=6.0 in scikit-learn's parameter check; both give the array's batches."""
    x = np.random.default_rng(0).standard_normal((60, 3))
    expected = aetk.LocalityBatches(x, n_primary=5, n_secondary=3, k_neighbors=6)
    sampler = aetk.LocalityBatches(pd.DataFrame(x, columns=list("abc")), n_primary=5,
                                   n_secondary=3, k_neighbors=6.0)
    assert torch.equal(sampler.neighbours, expected.neighbours)
    for a, b in zip(sampler(torch.Generator().manual_seed(1)),
                    expected(torch.Generator().manual_seed(1)), strict=True):
        assert torch.equal(a, b)


def test_primaries_are_drawn_without_replacement() -> None:
    """With n_primary = N every batch's primaries are all N points, each once (a
    permutation of 0..N-1), in an order that changes from batch to batch."""
    x = np.random.default_rng(2).standard_normal((30, 2))
    sampler = aetk.LocalityBatches(x, n_primary=30, n_secondary=1, k_neighbors=3,
                                   batches_per_epoch=20)
    orders = set()
    for idx in sampler(torch.Generator().manual_seed(0)):
        assert idx.shape == (60,)
        assert sorted(idx[:30].tolist()) == list(range(30))
        orders.add(tuple(idx[:30].tolist()))
    assert len(orders) == 20


def test_primaries_and_neighbours_are_drawn_uniformly() -> None:
    """Over 3,000 batches every point is a primary 1/N of the time, and each of a
    primary's k neighbours (by distance rank) is picked n_secondary/k of the time."""
    x = np.random.default_rng(1).standard_normal((40, 2))
    sampler = aetk.LocalityBatches(x, n_primary=4, n_secondary=2, k_neighbors=5,
                                   batches_per_epoch=3000)
    order = np.argsort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :5]
    rank_of = {(p, int(j)): r for p in range(40) for r, j in enumerate(order[p])}
    primaries, ranks = np.zeros(40), np.zeros(5)
    for idx in sampler(torch.Generator().manual_seed(0)):
        primary, secondary = idx[:4].numpy(), idx[4:].view(4, 2).numpy()
        np.add.at(primaries, primary, 1)
        for p, picked in zip(primary, secondary, strict=True):
            for j in picked:
                ranks[rank_of[int(p), int(j)]] += 1
    np.testing.assert_allclose(primaries / 3000, np.full(40, 4 / 40), rtol=0.2)
    np.testing.assert_allclose(ranks / (3000 * 4), np.full(5, 2 / 5), rtol=0.05)


def test_fit_trains_on_locality_batches_and_resumes_exactly(tmp_path) -> None:
    x, _ = digits("gaussian_learned", n=300)
    train, val = x[:240], x[240:]

    def run(model, epochs, **kw):
        sampler = aetk.LocalityBatches(train, n_primary=8, n_secondary=3, k_neighbors=10)
        return aetk.fit(model, train, val, epochs=epochs, batch_size=32, lr=3e-3,
                        progress=False, batch_sampler=sampler, **kw)

    def build():
        torch.manual_seed(0)
        return aetk.build_model("vae", "gaussian_learned", in_features=64, hidden=(32,))

    reference = build()
    history = run(reference, 6)
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    ckpt = tmp_path / "ckpt.pt"
    run(build(), 3, checkpoint=ckpt)
    resumed = build()
    again = run(resumed, 6, checkpoint=ckpt)
    for a, b in zip(reference.state_dict().values(), resumed.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    pd.testing.assert_frame_equal(history.drop(columns="seconds"),
                                  again.drop(columns="seconds"))


def test_a_checkpoint_of_other_locality_settings_is_refused(tmp_path) -> None:
    """4 primaries with 4 neighbours each and 5 with 3 make batches of 20 alike, and the
    neighbourhoods' size is in neither: the fingerprint must hold all the settings."""
    x, _ = digits("gaussian_learned", n=200)
    model = aetk.build_model("vae", "gaussian_learned", in_features=64, hidden=(8,))

    def run(epochs, **kw):
        sampler = aetk.LocalityBatches(x, **kw)
        return aetk.fit(model, x, epochs=epochs, batch_size=32, progress=False,
                        batch_sampler=sampler, checkpoint=tmp_path / "ckpt.pt")

    run(1, n_primary=4, n_secondary=4, k_neighbors=10)
    for other in ({"n_primary": 5, "n_secondary": 3, "k_neighbors": 10},
                  {"n_primary": 4, "n_secondary": 4, "k_neighbors": 50}):
        with pytest.raises(aetk.CheckpointMismatch, match="batch_sampler"):
            run(2, **other)
    assert len(run(2, n_primary=4, n_secondary=4, k_neighbors=10)) == 2


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_primary": 0, "n_secondary": 1, "k_neighbors": 3}, "n_primary must be in"),
    ({"n_primary": 2, "n_secondary": 4, "k_neighbors": 3}, "n_secondary must be in"),
    ({"n_primary": 2, "n_secondary": 1, "k_neighbors": 11}, "k_neighbors must be in"),
    ({"n_primary": 2, "n_secondary": 1, "k_neighbors": 3, "batches_per_epoch": 0},
     "batches_per_epoch must be positive"),
    # fractions were truncated without a word (2.5 primaries made 2)
    ({"n_primary": 2.5, "n_secondary": 1, "k_neighbors": 3}, "n_primary must be an integer"),
    ({"n_primary": 2, "n_secondary": 1.5, "k_neighbors": 3}, "n_secondary must be an integer"),
    ({"n_primary": 2, "n_secondary": 1, "k_neighbors": 3.7}, "k_neighbors must be an integer"),
    ({"n_primary": 2, "n_secondary": 1, "k_neighbors": 3, "batches_per_epoch": 2.5},
     "batches_per_epoch must be an integer"),
])
def test_bad_locality_settings_are_refused(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        aetk.LocalityBatches(torch.randn(10, 2), **kwargs)


def test_fit_refuses_a_sampler_of_other_data_or_a_dataset() -> None:
    x, _ = digits(n=64)
    model = aetk.build_model("vae", "bernoulli", in_features=64, hidden=(8,))
    sampler = aetk.LocalityBatches(x[:32], n_primary=2, n_secondary=1, k_neighbors=3)
    with pytest.raises(ValueError, match="made for 32 rows, but the train data has 64"):
        aetk.fit(model, x, epochs=1, batch_size=16, batch_sampler=sampler, progress=False)
    with pytest.raises(ValueError, match="not a Dataset"):
        aetk.fit(model, torch.utils.data.StackDataset(x[:32]), epochs=1, batch_size=16,
                 batch_sampler=sampler, progress=False)
