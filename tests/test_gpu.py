"""CUDA against the CPU: the same losses, parameter gradients, metric values, geodesics,
exponential and logarithm maps, curvature and the KL split on the GPU as on the CPU
(float64, the same noise), and every model training there with `device="auto"`. Skipped
without a CUDA GPU."""

import copy

import numpy as np
import pytest
import torch

import aetk
from aetk.geometry import (
    EncoderMetric,
    christoffel,
    curvature_grid,
    exp_map,
    fit_geodesics,
    log_map,
    metric_for,
    riemann,
)

from helpers import digits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU = torch.device("cuda")
f64 = torch.float64
torch.set_num_threads(1)


@pytest.fixture
def same_noise(monkeypatch):
    """`install(seed)`: Gaussian noise drawn on the CPU from one seeded generator and then
    moved, so that a model sees the same draws on either device."""
    randn = torch.randn

    def install(seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)

        def standard_normal(shape, dtype=None, device=None):
            return randn(tuple(shape), generator=gen, dtype=dtype).to(device)

        monkeypatch.setattr(torch.distributions.normal, "_standard_normal", standard_normal)
        monkeypatch.setattr(torch, "randn_like",
                            lambda t: standard_normal(t.shape, t.dtype, t.device))

    return install


def small(kind: str, **kw) -> aetk.Model:
    """A float64 model on the CPU whose flow moves visibly (large step size)."""
    torch.manual_seed(0)
    if kind in ("hvae", "rhvae"):
        kw = {"n_leapfrog": 3, "step_size": 0.05, "beta0": 0.5, **kw}
    if kind == "rhvae":
        kw["centroids"] = 16
    m = aetk.build_model(kind, "bernoulli", in_features=64, latent_dim=2, hidden=(32,),
                         activation="tanh", **kw).double()
    if kind == "rhvae":
        m.on_fit_start(digits(n=400)[0].double())
    return m


@pytest.mark.parametrize("kind", ["vae", "hvae", "rhvae"])
def test_loss_and_gradients_on_cuda_equal_the_cpu(kind, same_noise):
    cpu = small(kind)
    gpu = copy.deepcopy(cpu).to(GPU)
    x = digits(n=32)[0].double()
    results = []
    for m, xx in ((cpu, x), (gpu, x.to(GPU))):
        same_noise(3)
        out = m.loss(xx)
        m.zero_grad()
        out.loss.backward()
        grads = {k: p.grad.cpu() for k, p in m.named_parameters() if p.grad is not None}
        results.append((out.loss.item(), grads))
    (loss_cpu, g_cpu), (loss_gpu, g_gpu) = results
    np.testing.assert_allclose(loss_gpu, loss_cpu, rtol=1e-10)
    assert g_gpu.keys() == g_cpu.keys() and len(g_cpu) > 4
    for k in g_cpu:
        torch.testing.assert_close(g_gpu[k], g_cpu[k], rtol=1e-8, atol=1e-10, msg=k)


def test_rhvae_metric_on_cuda_equals_the_cpu():
    cpu = small("rhvae").float()
    gpu = copy.deepcopy(cpu).to(GPU)
    z = 2 * torch.randn(50, 2, generator=torch.Generator().manual_seed(1))
    for fn in ("G", "G_inv", "log_det_G"):
        got = getattr(gpu, fn)(z.to(GPU))
        assert got.device.type == "cuda"
        torch.testing.assert_close(got.cpu(), getattr(cpu, fn)(z), rtol=1e-4, atol=1e-5, msg=fn)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_geodesics_on_cuda_match_the_cpu(kind):
    """The RHVAE metric and the VAE decoder's pull-back: same lengths and curves."""
    cpu = small(kind).eval()
    gpu = copy.deepcopy(cpu).to(GPU)
    gen = torch.Generator().manual_seed(2)
    a, b = torch.randn(8, 2, generator=gen, dtype=f64), torch.randn(8, 2, generator=gen, dtype=f64)
    want = fit_geodesics(metric_for(cpu), a, b, n_points=20)
    got = fit_geodesics(metric_for(gpu), a.to(GPU), b.to(GPU), n_points=20)
    assert got.points.device.type == "cuda"
    assert bool(want.converged.all())
    # L-BFGS may stop an iteration apart on round-off: agreement to the stopping tolerance
    torch.testing.assert_close(got.length.cpu(), want.length, rtol=1e-5, atol=0.0)
    torch.testing.assert_close(got.points.cpu(), want.points, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_connection_on_cuda_matches_the_cpu(kind):
    """Christoffel symbols, exponential and logarithm maps of both metric kinds."""
    cpu = small(kind).eval()
    gpu = copy.deepcopy(cpu).to(GPU)
    gen = torch.Generator().manual_seed(3)
    z, v = torch.randn(6, 2, generator=gen, dtype=f64), torch.randn(6, 2, generator=gen, dtype=f64)
    on_cpu, on_gpu = metric_for(cpu), metric_for(gpu)
    symbols = christoffel(on_gpu, z.to(GPU))
    assert symbols.device.type == "cuda"
    torch.testing.assert_close(symbols.cpu(), christoffel(on_cpu, z))
    end = exp_map(on_gpu, z.to(GPU), v.to(GPU))
    torch.testing.assert_close(end.cpu(), exp_map(on_cpu, z, v))
    back = log_map(on_gpu, z.to(GPU), end, n_points=20)
    assert bool(back.converged.all())
    torch.testing.assert_close(back.velocity.cpu(), v, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_curvature_on_cuda_matches_the_cpu(kind):
    cpu = small(kind).eval()
    gpu = copy.deepcopy(cpu).to(GPU)
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(4), dtype=f64)
    on_cpu, on_gpu = metric_for(cpu), metric_for(gpu)
    R = riemann(on_gpu, z.to(GPU))
    assert R.device.type == "cuda"
    torch.testing.assert_close(R.cpu(), riemann(on_cpu, z))
    bounds = ((-1.0, 1.0), (-1.0, 1.0))
    np.testing.assert_allclose(curvature_grid(on_gpu, bounds, 6)["gaussian_curvature"],
                               curvature_grid(on_cpu, bounds, 6)["gaussian_curvature"],
                               rtol=1e-6)


def test_encoder_metric_of_a_cuda_model_from_cpu_data():
    """Data on the CPU, model on the GPU: the metric lives on the GPU, samples there, and
    equals the CPU's."""
    cpu = small("vae").eval()
    gpu = copy.deepcopy(cpu).to(GPU)
    x = digits(n=200)[0].double()
    on_gpu = EncoderMetric.from_model(gpu, x, n_centroids=50)
    on_cpu = EncoderMetric.from_model(cpu, x, n_centroids=50)
    assert on_gpu.loc.device.type == "cuda"
    z = torch.randn(5, 2, generator=torch.Generator().manual_seed(6), dtype=f64)
    torch.testing.assert_close(on_gpu.metric(z.to(GPU)).cpu(), on_cpu.metric(z))
    assert on_gpu.sample(10).device.type == "cuda"


def test_kl_decomposition_on_cuda_equals_the_cpu():
    gen = torch.Generator().manual_seed(5)
    loc, z = torch.randn(300, 3, generator=gen), torch.randn(300, 3, generator=gen)
    scale = 0.5 + torch.rand(300, 3, generator=gen)
    on_gpu = aetk.kl_decomposition(loc.to(GPU), scale.to(GPU), z.to(GPU), chunk_size=100)
    assert on_gpu.as_dict() == pytest.approx(aetk.kl_decomposition(loc, scale, z).as_dict())


CONV = {"image_shape": (8, 8), "channels": (8, 16)}
CASES = [(k, "bernoulli", {}) for k in aetk.MODELS] + [
    (k, lik, {}) for k in ("vae", "rhvae") for lik in sorted(aetk.LIKELIHOODS)
    if lik not in ("bernoulli", "mse")] + [(k, "bernoulli", CONV) for k in ("vae", "rhvae")]


@pytest.mark.parametrize(("kind", "likelihood", "network"), CASES)
def test_every_model_trains_on_cuda_with_device_auto(kind, likelihood, network):
    x, opts = digits(likelihood, n=400)
    if kind == "rhvae":
        opts["centroids"] = 32
    torch.manual_seed(0)
    model = aetk.build_model(kind, likelihood, in_features=64, latent_dim=2, hidden=(64,),
                             **network, **opts)
    hist = aetk.fit(model, x[:320], x[320:], epochs=4, batch_size=32, progress=False,
                    device="auto", seed=0)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert np.isfinite(hist[["train_loss", "val_loss"]].to_numpy()).all()
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    assert model.reconstruct(x[:3].to(GPU)).device.type == "cuda"


def test_a_model_trained_on_cuda_reloads_on_the_cpu(tmp_path):
    x = digits(n=400)[0]
    torch.manual_seed(0)
    model = aetk.build_model("rhvae", "bernoulli", in_features=64, latent_dim=2, hidden=(64,),
                             centroids=16)
    aetk.fit(model, x, epochs=1, batch_size=64, progress=False, device="auto")
    model.save(tmp_path / "m")
    back = aetk.load(tmp_path / "m")
    assert all(p.device.type == "cpu" for p in back.parameters())
    model.eval()
    torch.testing.assert_close(back.latent_mean(x), model.latent_mean(x.to(GPU)).cpu(),
                               rtol=1e-4, atol=1e-5)
    z = torch.randn(10, 2)
    torch.testing.assert_close(back.log_det_G(z), model.log_det_G(z.to(GPU)).cpu(),
                               rtol=1e-4, atol=1e-4)


def test_log_marginal_on_cuda_equals_the_cpu():
    # independent draws on each device: 5,000 importance samples agree to Monte Carlo error
    cpu = small("vae")
    x = digits(n=16)[0].double()
    on_cpu = aetk.log_marginal(cpu, x, n_samples=5000)
    on_gpu = aetk.log_marginal(copy.deepcopy(cpu).to(GPU), x.to(GPU), n_samples=5000)
    assert on_gpu.device.type == GPU.type
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=0.05)


@pytest.mark.parametrize("kind", ["vae", "rhvae"])
def test_conditional_model_trains_on_cuda_from_cpu_conditions(kind, same_noise):
    """Conditions given on the CPU reach the GPU networks (fit and `given`), and the loss
    there equals the CPU's."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:400] / 16, dtype=torch.float32)
    c = torch.nn.functional.one_hot(torch.tensor(d.target[:400]), 10).float()
    torch.manual_seed(0)
    opts = {"centroids": 16} if kind == "rhvae" else {}
    model = aetk.build_model(kind, "bernoulli", in_features=64, latent_dim=2, hidden=(64,),
                             n_conditions=10, **opts)
    hist = aetk.fit(model, (x[:320], c[:320]), (x[320:], c[320:]), epochs=3, batch_size=32,
                    progress=False, device="auto", seed=0)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    cpu = copy.deepcopy(model).cpu().double()
    gpu = copy.deepcopy(cpu).to(GPU)
    losses = []
    for m, xx in ((cpu, x[:32].double()), (gpu, x[:32].double().to(GPU))):
        same_noise(1)
        with m.given(c[:32]):
            losses.append(m.loss(xx).loss.item())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-10)


@pytest.mark.parametrize("kind", ["vae", "hvae"])
def test_paired_model_trains_on_cuda_from_cpu_pairs(kind, same_noise):
    """`Paired` data on the CPU reach a GPU model through fit, and the paired loss there
    equals the CPU's."""
    x = digits(n=400)[0]
    x_in, x_out = x[:, :24], x[:, 24:]
    torch.manual_seed(0)
    model = aetk.build_model(kind, "bernoulli", in_features=24, out_features=40,
                             latent_dim=2, hidden=(32,))
    hist = aetk.fit(model, aetk.Paired(x_in[:320], x_out[:320]),
                    aetk.Paired(x_in[320:], x_out[320:]), epochs=3, batch_size=32,
                    progress=False, device="auto", seed=0)
    assert all(p.device.type == GPU.type for p in model.parameters())
    assert hist["val_loss"].iloc[-1] < hist["val_loss"].iloc[0]
    cpu = copy.deepcopy(model).cpu().double()
    gpu = copy.deepcopy(cpu).to(GPU)
    losses = []
    for m, dev in ((cpu, "cpu"), (gpu, GPU)):
        same_noise(2)
        losses.append(m.loss(x_in[:32].double().to(dev), x_out[:32].double().to(dev))
                      .loss.item())
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-10)


def test_traversals_of_a_cuda_model_from_cpu_codes():
    cpu = small("vae").eval()
    gpu = copy.deepcopy(cpu).to(GPU)
    codes = torch.randn(50, 2, dtype=f64, generator=torch.Generator().manual_seed(4))
    want = aetk.latent_traversal(cpu, codes, n_steps=5)
    got = aetk.latent_traversal(gpu, codes, n_steps=5)
    assert got.decoded.device.type == "cpu"  # on the codes' device
    torch.testing.assert_close(got.decoded, want.decoded, rtol=1e-10, atol=1e-12)
    grid, _, _ = aetk.latent_grid(gpu, codes, n_steps=4)
    torch.testing.assert_close(grid, aetk.latent_grid(cpu, codes, n_steps=4)[0], rtol=1e-10,
                               atol=1e-12)


def test_locality_batches_on_cuda_give_the_cpu_run():
    """The sampler's CPU indices pick rows of the data on the GPU: the same history (fit
    trains in float32; other batches would move the epoch means by far more than 1e-4). An
    AE: a VAE's draws come from each device's own generator, which moved its means by 0.2%
    (H200, 2026-12-04)."""
    x = digits("gaussian", n=200)[0]
    runs = []
    for device in ("cpu", GPU):
        torch.manual_seed(0)
        model = aetk.build_model("ae", "gaussian", in_features=64, hidden=(16,))
        sampler = aetk.LocalityBatches(x, n_primary=4, n_secondary=3, k_neighbors=8)
        runs.append(aetk.fit(model, x, epochs=2, batch_size=32, progress=False, device=device,
                             batch_sampler=sampler))
    np.testing.assert_allclose(runs[1]["train_loss"], runs[0]["train_loss"], rtol=1e-4)
