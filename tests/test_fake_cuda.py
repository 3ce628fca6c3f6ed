"""Device bugs without a GPU: training, inference and geometry on a simulated CUDA device
(`fake_cuda`: CPU memory that says cuda:0, and torch's refusals of mixed devices), where a
tensor made on the CPU inside aetk, or a numpy conversion of a device tensor, fails as on a
GPU. tests/test_gpu.py compares the numbers on a real one."""

import numpy as np
import pytest
import torch

import aetk
from aetk.geometry import (
    EncoderMetric,
    Metric,
    NeuralGeodesic,
    christoffel,
    exp_map,
    fit_geodesics,
    log_map,
    metric_for,
    parallel_transport,
    riemann,
)

from fake_cuda import DeviceMix, OnDevice, install


@pytest.fixture
def device(monkeypatch):
    with install(monkeypatch):
        yield


def data(n: int = 40) -> torch.Tensor:
    return torch.rand(n, 8, generator=torch.Generator().manual_seed(0))


def test_the_simulation_refuses_what_cuda_refuses(device):
    x = torch.zeros(3, 2).to("cuda")
    assert x.device == torch.device("cuda", 0) and isinstance(x + 1, OnDevice)
    assert (x + torch.tensor(1.0)).is_cuda  # a 0-d CPU tensor is a scalar to CUDA
    assert x[torch.tensor([0, 2])].is_cuda  # CPU indices of a CUDA tensor
    with pytest.raises(DeviceMix, match="mixes"):
        x + torch.ones(3, 2)
    with pytest.raises(DeviceMix, match="numpy"):
        x.numpy()
    with pytest.raises(DeviceMix, match="numpy"):
        np.asarray(x)
    with pytest.raises(DeviceMix, match="generator"):
        torch.randn(3, generator=torch.Generator(), device="cuda")
    m = aetk.build_model("vae", "bernoulli", in_features=8, hidden=(16,)).to("cuda")
    assert next(m.parameters()).is_cuda and not next(m.cpu().parameters()).is_cuda
    # a metric that makes its matrices on the CPU, inside torch.func's transforms too
    cpu_made = Metric(lambda z: torch.eye(2) * (1 + z.square().sum(-1))[:, None, None])
    z = torch.zeros(3, 2).to("cuda")
    with pytest.raises(DeviceMix, match="mixes"):
        cpu_made.metric(z)
    with pytest.raises(DeviceMix, match="mixes"):
        christoffel(cpu_made, z)


@pytest.mark.parametrize("kind", list(aetk.MODELS))
def test_every_model_trains_and_infers_on_the_device(kind, device):
    torch.manual_seed(0)
    options = {"rhvae": {"centroids": 4, "n_leapfrog": 2}, "hvae": {"n_leapfrog": 2},
               "vqvae": {"n_codes": 4}, "vampprior": {"n_components": 4}}.get(kind, {})
    likelihood = "mse" if kind in aetk.build.MSE_MODELS else "bernoulli"
    m = aetk.build_model(kind, likelihood, in_features=8, hidden=(16,), **options)
    x = data()
    aetk.fit(m, x, x[:10], epochs=1, batch_size=16, device="cuda", progress=False)
    assert next(m.parameters()).is_cuda
    assert m.embed(x).shape == (40, 2)
    assert m.reconstruct(x).is_cuda
    if hasattr(type(m), "sample"):  # the RHVAE's by a short Riemannian HMC
        assert m.sample(3, **({"n_steps": 2, "n_leapfrog": 2} if kind == "rhvae" else {})).is_cuda
    if likelihood != "mse":
        assert aetk.log_marginal(m, x[:4], n_samples=3).is_cuda


def test_conditional_and_count_models_and_penalties_on_the_device(device):
    torch.manual_seed(0)
    x = data()
    c = torch.nn.functional.one_hot(torch.arange(40) % 2, 2).float()
    m = aetk.build_model("vae", "bernoulli", in_features=8, hidden=(16,), n_conditions=2)
    aetk.fit(m, (x, c), epochs=1, batch_size=16, device="cuda", progress=False,
             penalties={"jacobian": aetk.DecoderJacobian(0.1), "l2": aetk.LatentL2(0.1)},
             batch_sampler=aetk.LocalityBatches(x, n_primary=4, n_secondary=2, k_neighbors=4))
    assert m.embed(x, conditions=c).shape == (40, 2)
    counts = (x * 5).floor()
    nb = aetk.build_model("vae", "negative_binomial", in_features=8, hidden=(16,))
    aetk.fit(nb, counts, epochs=1, batch_size=16, device="cuda", progress=False)
    codes = torch.as_tensor(nb.embed(counts)).to("cuda")
    assert aetk.latent_traversal(nb, codes, n_steps=3).decoded.is_cuda
    assert aetk.CodeMixture(codes).sample(4).is_cuda
    q = nb.encode(counts)
    assert np.isfinite(aetk.kl_decomposition(q.mean, q.stddev).marginal_kl)


@pytest.mark.parametrize("kind", ["mean", "fisher", "rhvae", "encoder"])
def test_geometry_on_the_device(kind, device):
    torch.manual_seed(0)
    x = data()
    model = aetk.build_model("rhvae" if kind == "rhvae" else "vae", "bernoulli",
                             in_features=8, hidden=(16,), activation="tanh",
                             **({"centroids": 4} if kind == "rhvae" else {})).double()
    aetk.fit(model, x.double(), epochs=1, batch_size=20, device="cuda", progress=False)
    metric = (EncoderMetric.from_model(model, x, n_centroids=8) if kind == "encoder"
              else metric_for(model, None if kind == "rhvae" else kind))
    z0 = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])
    z1 = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    assert metric.metric(z0).is_cuda and christoffel(metric, z0).is_cuda
    assert riemann(metric, z0).is_cuda
    fit = fit_geodesics(metric, z0, z1, n_points=6, max_iter=3)
    assert fit.points.is_cuda
    neural = fit_geodesics(metric, z0, z1, n_points=6, max_iter=2, curve="neural", hidden=(4,))
    assert neural.points.is_cuda
    assert exp_map(metric, z0, z1 - z0, n_steps=4).is_cuda
    assert log_map(metric, z0, z1, n_steps=4).velocity.is_cuda


def test_transport_along_a_curve_left_on_the_cpu(device):
    """parallel_transport made the times on the metric's device: a NeuralGeodesic left on
    the CPU under a CUDA metric failed with torch's mixed-device error."""
    torch.manual_seed(0)
    model = aetk.build_model("vae", "bernoulli", in_features=8, hidden=(16,),
                             activation="tanh").double()
    aetk.fit(model, data().double(), epochs=1, batch_size=20, device="cuda", progress=False)
    z0 = torch.tensor([[-1.0, 0.0]], dtype=torch.float64)
    curve = NeuralGeodesic(z0, -z0, hidden=(4,))
    w = parallel_transport(metric_for(model, "mean"), curve, torch.tensor([[0.0, 1.0]]),
                           n_steps=3)
    assert w.is_cuda and w.shape == (1, 4, 2) and bool(torch.isfinite(w).all())


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_a_gpu_fit_checks_its_losses_every_20_batches_and_names_the_first_bad(
        where, device, monkeypatch):
    """Checking each batch's loss for NaN waited for the GPU at every batch (a VAE epoch
    1.31x a bare loop's on an H200, 1.11x so): on a GPU fit checks every 20 batches, and
    still names the first non-finite loss, also when the NaN weights it left make a later
    step fail; the CPU checks every batch."""
    model = aetk.build_model("vae", "bernoulli", in_features=8, hidden=(16,))
    step, calls, fail_at = model.training_step, [], [None]

    def training_step(x, optimizers):
        out = step(x, optimizers)
        calls.append(len(calls) + 1)
        if len(calls) == 3:
            inf = torch.full_like(out.loss, float("inf"))
            return aetk.LossOutput(inf, {**out.terms, "kl": inf})
        if len(calls) == fail_at[0]:
            raise ValueError("a later step's own error")
        return out

    monkeypatch.setattr(model, "training_step", training_step)
    gpu = where == "cuda"
    for fail_at[0], ran in ((None, 20 if gpu else 3), (7, 7 if gpu else 3)):
        calls.clear()
        with pytest.raises(aetk.TrainingDiverged, match=r"the loss became inf at epoch 1, "
                                                        r"batch 3 of 25 \(non-finite terms: "
                                                        r"kl\)"):
            aetk.fit(model, data(100), epochs=1, batch_size=4, progress=False, device=where)
        assert len(calls) == ran
