"""`aetk.log_marginal` against closed forms and quadrature: the linear-Gaussian model's
exact `log N(x; b, W W^T + s^2 I)`, and a Bernoulli decoder integrated over a 1-D latent."""

import math

import pytest
import torch
from torch import distributions as D
from torch import nn

import aetk
from aetk.distributions import log_prob

D_X, S = 5, 0.5
A = torch.tensor([2.0, 0.7], dtype=torch.float64)


def _linear_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    """`W (D_X, 2)` with orthogonal columns of norms A (so the posterior is diagonal), `b`."""
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(D_X, 2, dtype=torch.float64, generator=g))
    return Q * A, torch.randn(D_X, dtype=torch.float64, generator=g)


class ExactPosterior(nn.Module):
    """q(z|x) = p(z|x) of `z ~ N(0, I)`, `x|z ~ N(W z + b, S^2 I)`: for orthogonal columns
    the posterior covariance `(I + W^T W / S^2)^{-1}` is diagonal."""

    latent_dim = 2

    def __init__(self, W: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> None:
        super().__init__()
        self.W, self.b, self.scale = W, b, scale
        self.var = 1 / (1 + A**2 / S**2)

    def forward(self, x: torch.Tensor) -> D.Distribution:
        mu = (x - self.b) @ self.W / S**2 * self.var
        return D.Independent(D.Normal(mu, self.scale * self.var.sqrt()), 1)


class LinearGaussian(nn.Module):
    def __init__(self, W: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.W, self.b = W, b

    def forward(self, z: torch.Tensor) -> D.Distribution:
        return D.Independent(D.Normal(z @ self.W.T + self.b, S), 1)


def _data(W: torch.Tensor, b: torch.Tensor, n: int = 6) -> torch.Tensor:
    z = torch.randn(n, 2, dtype=torch.float64)
    return z @ W.T + b + S * torch.randn(n, D_X, dtype=torch.float64)


def _exact(W: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    cov = W @ W.T + S**2 * torch.eye(D_X, dtype=torch.float64)
    return D.MultivariateNormal(b, cov).log_prob(x)


@pytest.mark.parametrize("chunk", [1, 5, 8192])
def test_exact_posterior_gives_exact_log_marginal(chunk):
    # Every importance weight equals p(x) when q is the posterior, so any S is exact; a
    # chunk smaller than the batch checks that rows are not mixed between chunks.
    W, b = _linear_gaussian()
    x = _data(W, b)
    model = aetk.VAE(ExactPosterior(W, b), LinearGaussian(W, b))
    got = aetk.log_marginal(model, x, n_samples=3, chunk=chunk)
    torch.testing.assert_close(got, _exact(W, b, x), rtol=0, atol=1e-10)


def test_wider_proposal_converges_from_below():
    # A proposal twice as wide: single-sample estimates average the ELBO, below log p(x);
    # many samples converge to log p(x) (tolerance: 5 standard errors of the 20k estimate).
    W, b = _linear_gaussian()
    x = _data(W, b, n=3)
    exact = _exact(W, b, x)
    model = aetk.VAE(ExactPosterior(W, b, scale=2.0), LinearGaussian(W, b))
    torch.testing.assert_close(aetk.log_marginal(model, x, n_samples=20_000), exact,
                               rtol=0, atol=0.05)
    one = torch.stack([aetk.log_marginal(model, x, n_samples=1) for _ in range(2000)])
    assert bool((one.mean(0) < exact - 0.3).all())


def test_bernoulli_decoder_against_quadrature():
    # 1-D latent: log p(x) = log of the integral of p(x|z) N(z; 0, 1), by a Riemann sum on a
    # fine grid (the integrand vanishes at +-10, so it equals the trapezoid rule); tolerance:
    # 5 standard errors of the 20k estimate.
    torch.manual_seed(3)
    model = aetk.build_model("vae", "bernoulli", in_features=6, latent_dim=1,
                             hidden=(8,)).double()
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64))
    grid = torch.linspace(-10, 10, 20_001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        log_f = torch.stack([log_prob(model.decode(grid), xi.expand(len(grid), 6)) for xi in x])
    log_f = log_f + D.Normal(0.0, 1.0).log_prob(grid.squeeze(-1))
    ref = torch.logsumexp(log_f, -1) + math.log(float(grid[1] - grid[0]))
    torch.testing.assert_close(aetk.log_marginal(model, x, n_samples=20_000), ref,
                               rtol=0, atol=0.04)


def test_vampprior_against_quadrature_with_its_mixture_prior():
    """The same check with the VampPrior's p(z), the mixture of the encoder's Gaussians at the
    pseudo-inputs, summed here component by component (with N(0, 1) in its place the
    estimate is off by 0.24)."""
    torch.manual_seed(4)
    model = aetk.build_model("vampprior", "bernoulli", in_features=6, latent_dim=1,
                             hidden=(8,), n_components=3).double()
    last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():  # means spread apart, standard deviations near 2: q covers p(z|x)
        last.weight[0].mul_(4.0)
        last.weight[1].mul_(0.2)
        last.bias.copy_(torch.tensor([1.0, 0.7]))
        model.pseudo_inputs.copy_(torch.rand(3, 6, dtype=torch.float64) * 4 - 2)
        q = model.encode(model.pseudo_inputs)
    x = torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64))
    grid = torch.linspace(-25, 25, 50_001, dtype=torch.float64)  # wide components
    components = [D.Normal(q.mean[k, 0], q.stddev[k, 0]).log_prob(grid).exp() for k in range(3)]
    log_prior = (sum(components) / 3).log()
    with torch.no_grad():
        log_f = torch.stack([log_prob(model.decode(grid[:, None]), xi.expand(len(grid), 6))
                             for xi in x]) + log_prior
    ref = torch.logsumexp(log_f, -1) + math.log(float(grid[1] - grid[0]))
    torch.testing.assert_close(aetk.log_marginal(model, x, n_samples=20_000), ref,
                               rtol=0, atol=0.04)



def _hamiltonian(name: str, W: torch.Tensor, b: torch.Tensor, **kw) -> aetk.Model:
    """An HVAE or RHVAE on the linear-Gaussian model, proposing from twice the posterior's
    width; the RHVAE's metric from a random linear metric net at 10 data points."""
    torch.manual_seed(2)
    encoder, decoder = ExactPosterior(W, b, scale=2.0), LinearGaussian(W, b)
    kw = {"n_leapfrog": 3, "step_size": 0.2, "beta0": 0.3, **kw}
    if name == "hvae":
        return aetk.HVAE(encoder, decoder, **kw)
    model = aetk.RHVAE(encoder, decoder, metric_net=nn.Linear(D_X, 3),
                       centroids=_data(W, b, n=10).float(), temperature=1.0,
                       regularization=0.1, **kw).double()
    model.update_metric()
    return model.eval()


@pytest.mark.filterwarnings("ignore::aetk.hamiltonian.FixedPointWarning")  # large steps
@pytest.mark.parametrize("name", ["hvae", "rhvae"])
def test_hamiltonian_models_propose_with_their_flow(name):
    """The per-draw ELBO of the flow as importance weight: on average tighter than the
    encoder's alone (the flow moves z towards the posterior), and, since the flow keeps
    volume (its tempering's Jacobian cancelled by the initial rescaling of the momentum),
    converging to the exact log p(x) (tolerance as for the VAE; a forgotten tempering
    Jacobian would shift it by (d/2) log beta0 = -1.2)."""
    W, b = _linear_gaussian()
    x = _data(W, b, n=3)
    exact = _exact(W, b, x)
    model = _hamiltonian(name, W, b)
    encoder_only = aetk.VAE(model.encoder, model.decoder)
    torch.manual_seed(1)
    torch.testing.assert_close(aetk.log_marginal(model, x, n_samples=20_000), exact,
                               rtol=0, atol=0.05)
    rows = x.repeat(500, 1)  # 500 single-draw estimates (ELBO samples) of each row
    torch.manual_seed(1)
    flow = aetk.log_marginal(model, rows, n_samples=1).view(500, 3).mean(0)
    plain = aetk.log_marginal(encoder_only, rows, n_samples=1).view(500, 3).mean(0)
    assert bool((flow > plain + 0.1).all()) and bool((flow < exact).all())


def test_a_flow_without_steps_weighs_like_the_encoder_also_with_conditions():
    """K = 0, beta0 = 1: the HVAE's weights are the VAE's for the same draws, and its rows
    of all draws (sample-major) meet the right conditions."""
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((6, 16), 0.5))
    c = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2])]
    model = aetk.build_model("hvae", "bernoulli", in_features=16, latent_dim=2, hidden=(8,),
                             n_conditions=3, n_leapfrog=0, beta0=1.0).eval()
    vae = aetk.VAE(model.encoder, model.decoder)
    got = {}
    for m in (model, vae):
        torch.manual_seed(5)
        with m.given(c):
            got[m] = aetk.log_marginal(m, x, n_samples=7)
    torch.testing.assert_close(got[model], got[vae], rtol=0, atol=1e-5)

def test_refuses_deterministic_models_and_bad_counts():
    ae = aetk.build_model("ae", "gaussian", in_features=3, latent_dim=2, hidden=(4,))
    with pytest.raises(ValueError, match="probabilistic encoder and decoder"):
        aetk.log_marginal(ae, torch.zeros(2, 3))
    vae = aetk.build_model("vae", "gaussian", in_features=3, latent_dim=2, hidden=(4,))
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            aetk.log_marginal(vae, torch.zeros(2, 3), n_samples=bad)


def test_the_decoder_sees_at_most_chunk_points_and_every_proposal_once():
    """6 rows, 10 proposals each, chunk 25: the decoder gets 4 draws of the 6 rows at a
    time (24 points), twice, then the last 2 (12): each row's 10 proposals once."""
    W, b = _linear_gaussian()
    x = _data(W, b)
    decoder = LinearGaussian(W, b)
    sizes = []
    decoder.register_forward_hook(lambda module, args, out: sizes.append(args[0].shape[:-1]))
    model = aetk.VAE(ExactPosterior(W, b, scale=2.0), decoder)
    aetk.log_marginal(model, x, n_samples=10, chunk=25)
    # the first two: the data's support at z = 0 (a user's decoder), the decoder's kind
    assert sizes[0] == (1,)
    scored = [math.prod(s) for s in sizes[2:]]
    assert scored == [24, 24, 12]
    # a whole float is that count (chunk=25.0 failed in range(): "'float' object cannot be
    # interpreted as an integer"); chunk=0 or -5 passed silently as one draw at a time
    sizes.clear()
    torch.manual_seed(0)
    expected = aetk.log_marginal(model, x, n_samples=10, chunk=25)
    torch.manual_seed(0)
    assert torch.equal(aetk.log_marginal(model, x, n_samples=10.0, chunk=25.0), expected)
    # each call: the support check, the decoder's kind, then the three chunks
    assert [math.prod(s) for s in sizes[2:5]] == [24, 24, 12]
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match=rf"chunk must be an integer >= 1, got {bad}"):
            aetk.log_marginal(model, x, chunk=bad)
