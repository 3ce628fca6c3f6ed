"""aetk.CodeMixture: a Gaussian mixture of a model's codes, drawn from in a seeded random
order; the pipeline's generation for autoencoders without a prior."""

import numpy as np
import pytest
import torch

import aetk


def _two_clusters(n: int = 600) -> torch.Tensor:
    rng = np.random.default_rng(0)
    a = rng.normal([-4.0, 0.0], [0.5, 0.2], size=(n // 3, 2))
    b = rng.normal([3.0, 2.0], [0.3, 1.0], size=(n - n // 3, 2))
    return torch.from_numpy(np.concatenate([a, b])).float()


def test_draws_follow_the_codes_components():
    """Two clusters of a third and two thirds of the codes: the draws fall into them in
    those shares, with the clusters' means and spreads, mixed in order."""
    codes = _two_clusters()
    mixture = aetk.CodeMixture(codes, n_components=2, seed=0)
    z = mixture.sample(3000)
    assert z.dtype == torch.float32 and z.shape == (3000, 2)
    left = z[:, 0] < 0
    assert left.float().mean().item() == pytest.approx(1 / 3, abs=0.03)
    torch.testing.assert_close(z[left].mean(0), codes[:200].mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(z[~left].std(0), codes[200:].std(0), atol=0.05, rtol=0)
    assert 0.2 < left[:100].float().mean().item() < 0.5  # not grouped by component
    assert not torch.equal(mixture.sample(3000), z)  # each call draws anew
    torch.testing.assert_close(aetk.CodeMixture(codes, 2, seed=0).sample(3000), z)  # seeded
    assert not torch.equal(aetk.CodeMixture(codes, 2, seed=1).sample(3000), z)


def test_components_are_capped_and_bad_codes_refused():
    assert aetk.CodeMixture(torch.randn(4, 2), n_components=10).mixture.n_components == 4
    with pytest.raises(ValueError, match=r"need finite codes \(N >= 2, d\), got shape \(1, 2\)"):
        aetk.CodeMixture(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="with non-finite values"):
        aetk.CodeMixture(torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="n_components must be an integer >= 1"):
        aetk.CodeMixture(torch.randn(5, 2), n_components=0)


def test_components_have_full_covariances():
    """One component of correlated codes (correlation 0.9): its covariance is the codes'
    maximum-likelihood covariance plus reg_covar (1e-6) on the diagonal, off-diagonal
    included, and the draws keep the correlation."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.9], [0.9, 1.0]])
    codes = rng.multivariate_normal([0.0, 0.0], cov, size=2000)
    mixture = aetk.CodeMixture(torch.from_numpy(codes), n_components=1)
    np.testing.assert_allclose(mixture.mixture.covariances_[0],
                               np.cov(codes, rowvar=False, bias=True) + 1e-6 * np.eye(2),
                               rtol=1e-9)
    z = mixture.sample(4000).numpy()
    assert np.corrcoef(z, rowvar=False)[0, 1] == pytest.approx(0.9, abs=0.03)


def test_the_default_is_ten_components():
    """The paper's 10 components (Ghosh et al. 2020) unless told otherwise."""
    assert aetk.CodeMixture(torch.randn(50, 2)).mixture.n_components == 10


def test_successive_draws_are_new_codes_not_a_reshuffle():
    """Each call draws new codes from the mixture's advancing generator, not the same set
    in another order: the sorted draws of two calls differ."""
    mixture = aetk.CodeMixture(_two_clusters(60), n_components=2, seed=0)
    a, b = mixture.sample(50).numpy(), mixture.sample(50).numpy()
    assert not np.allclose(np.sort(a, axis=0), np.sort(b, axis=0))


def test_float32_codes_are_fitted_in_float64():
    """float32 codes are fitted in double precision: the single component's covariance is
    numpy's float64 maximum-likelihood covariance plus 1e-6 (to rtol 1e-9); draws come back
    as float32."""
    codes = torch.from_numpy(np.random.default_rng(3).normal(size=(500, 3))).float()
    mixture = aetk.CodeMixture(codes, n_components=1)
    ref = np.cov(codes.numpy().astype(np.float64), rowvar=False, bias=True) + 1e-6 * np.eye(3)
    assert mixture.mixture.covariances_.dtype == np.float64
    np.testing.assert_allclose(mixture.mixture.covariances_[0], ref, rtol=1e-9)
    assert mixture.sample(4).dtype == torch.float32
