"""Epoch time of aetk's and pythae's HVAE and RHVAE on identical data, architecture, batch
size, K and step size, in one run, alternating epochs.

pythae 0.1.2 is an optional bench extra (`pip install aetk[bench]`, or a separate venv with
torch==2.13.0, pythae==0.1.2 and aetk installed), never a runtime dependency.

Setting (pythae's defaults and its 6.1 timing in peers.md): the bundled MNIST 5k, binarised,
pythae's default MLPs (encoder 784-512-(d, d), decoder d-512-784, metric 784-400-L) and the
same sizes in aetk, Bernoulli likelihood (pythae: sigmoid + BCE), batch 64, K=3,
step size 1e-3, beta0=0.3, 3 fixed-point iterations, T=0.8, lambda=0.01, Adam lr 1e-3.
pythae's RHVAE uses each batch as its 64 centroids; aetk re-encodes 64 fixed centroids.
aetk computes exact gradients (decoder and metric inside the differentiated Hamiltonian,
create_graph everywhere); pythae's HVAE differentiates U without create_graph. For the HVAE
the table adds pythae with exact forces: its `_dU_dz` with create_graph=True, everything
else (its momentum and tempering) unchanged, so that both compute the second-order terms.

What exactness costs the HVAE (K=3, decoder d-512-784): each of the K+1 positions takes
one forward and one input-gradient GEMM through the 512x784 layer (the force), and its
adjoint two more (the force's adjoint `a W^T`, the network's input gradient `a W`) and two
weight gradients: the arithmetic of 26 GEMMs of that size per step with the encoder's two.
Reverse over reverse is the least arithmetic for it at latent 10 (forward-mode Jacobians
take d GEMMs each, and the weight gradients still need the input gradient). pythae runs
18: two for each of its 2K first-order gradients, its final forward twice, one backward of
two, the encoder's two. At 0.55-0.65 ms per GEMM on one thread here (all layouts alike,
80-98 GFLOP/s), the 8 extra cost 4.5-5 ms; aetk's HVAE trains its built-in MLP decoders
through the flow's written-out adjoint (`aetk.flow_adjoint`), whose backward takes no more
than its GEMMs (9.6 ms at latent 2), and its other work is leaner than pythae's by about as
much (`hvae_floor.py` on 2026-12-04: 4.2 against 8.9 ms per step beyond the GEMMs; 19.1 ms
each). At latent 2 the ReLU decoder is affine along most rows' flow (`aetk.flow_affine`):
those rows need the network at z_0 and its two tangents, forward and backward, about 11
GEMMs' arithmetic with the encoder's, the rows that leave z_0's activation region (25-32 %
here) the adjoint's.

HVAE against pythae (2026-12-04, one thread): at batch 64 **0.91-0.94x** at latent 2 and
0.96-0.98x at latent 10 in two runs (before `flow_affine`, four runs: 0.96-1.01x and
0.97-0.99x; 0.94-0.96x on 2 threads); RHVAE 0.44-0.48x. At batch 256 0.85x at latent 2
and 1.11x at latent 10 (before: 1.02-1.11x, four cells of two runs): there the exact
gradient's 26 GEMMs alone take 56-59 ms and pythae's whole step 55-62 ms
(`hvae_floor.py --batch 256`), so at latent 10 exactness costs what pythae's leaner
arithmetic saves.

Tried, measured and kept (each an alternating A/B of the step, one thread):
- one shared transpose per layer across the flow's positions (`nets.shared_transposes`),
  so that backward sums the weight gradients in place instead of allocating: 26.3 -> 23.6
  ms per step (sixth session, 2026-12-03);
- a contiguous transposed copy for layers of at most `nets.NARROW` inputs (MKL took 70-100
  us per gradient of the transposed (512, 2) view, 10-30 us contiguous): 30.6 -> 29.7 ms at
  latent 2, 33.7 -> 32.9 ms at latent 10 (eighth session);
- the flow's written-out adjoint for MLP decoders (`aetk.flow_adjoint`): the forward and
  the adjoint write the weight-gradient factors of all positions and both paths into one
  block of 2B(K+1) rows per layer, summed by one product, with no autograd graph of the
  flow: 22.9 -> 20.1 ms at latent 2, 25.9 -> 22.2 ms at latent 10 (2026-12-04). HVAE
  against pythae: 1.08-1.21x before, 0.96-1.01x after;
- the flow from the decoder's Jacobian at z_0 for latent 2 (`aetk.flow_affine`): 19.3 ->
  18.3 ms at batch 64, 62.3 -> 49.9 ms at batch 256 (2026-12-04). Its first version, the
  positions' algebra through autograd, took 53.4 ms at batch 256: torch's batched products
  of one row each (`bmm` of (256, 2, 1) by (256, 1, 784)) took 0.5-1.1 ms apiece; written
  out with products summed in place, 50.3. The network and its tangents go through each
  layer as one block of B(1 + d) rows.
Tried and not kept (same gradients, too little gain for the machinery):
- deferring the output layer's eight weight gradients into one merged GEMM inside
  autograd, by custom autograd Functions, a TorchFunctionMode or pooling from
  `nets.Linear`: 2-4 % and 3-11 % off the step, both needing a private autograd call
  (torch._C._will_engine_execute_node); pooled inside aetk's training step without it,
  nothing (fifth to seventh sessions);
- a closed-form Bernoulli force with autograd through the network only: 1 %;
- torch.compile of the step written with torch.func.grad: 43 ms against 36 eager;
- the decoder and its force at one position as one autograd Function with a hand-written
  backward, autograd for the flow between positions: 27.6 -> 26.4 ms per step (ninth
  session): what pays is the whole flow in one adjoint, its weight gradients summed once;
- the first tangent layer's backward as d products `a_i^T slopes` and elementwise sums for
  both weights (d fewer GEMMs): 50.3 -> 47.9 ms at batch 256, but its (d, 784, 512)
  elementwise passes cost 3.7 ms at batch 64, more than the GEMMs they replace;
- the rows that leave z_0's region linearised again where they left, pass after pass (at
  most K), instead of the adjoint: 19.9 against 19.4 ms at batch 64, 55.3 against 54.5 at
  256 (alternating): each pass's own weight gradients, a product of few rows with the full
  784x512 output (0.8 ms at batch 64) and their accumulation (0.7 ms), cost more than the
  adjoint's on those rows.

With `--device cuda` both run on the GPU, the data already there.

Usage: python bench/vs_pythae.py [--threads 1] [--epochs 3] [--dims 2,10] [--batch 64]
    [--device cpu]
"""

import argparse
import logging
import os
import statistics
import time
import warnings

import torch
from torch import nn

import aetk

from common import add_device, mnist_5k, sync

BATCH, K, EPS, BETA0, T, LAM = 64, 3, 1e-3, 0.3, 0.8, 0.01


def aetk_model(kind: str, d: int, data: torch.Tensor, batch: int = BATCH) -> aetk.Model:
    opts = {"in_features": 784, "latent_dim": d, "hidden": (512,)}
    if kind == "HVAE":
        return aetk.build_model("hvae", "bernoulli", n_leapfrog=K, step_size=EPS, beta0=BETA0,
                                **opts).to(data.device)
    base = aetk.build_model("vae", "bernoulli", **opts)
    metric = nn.Sequential(nn.Flatten(), nn.Linear(784, 400), nn.ReLU(),
                           nn.Linear(400, d * (d + 1) // 2))
    m = aetk.RHVAE(base.encoder, base.decoder, metric, centroids=batch, temperature=T,
                   regularization=LAM, n_leapfrog=K, step_size=EPS, beta0=BETA0,
                   n_fixed_point=3, centroid_method="kmeans++").to(data.device)
    m.on_fit_start(data)
    return m


def pythae_model(kind: str, d: int, exact: bool = False):
    from pythae.models import HVAE, RHVAE, HVAEConfig, RHVAEConfig

    common = {"input_dim": (784,), "latent_dim": d, "reconstruction_loss": "bce",
              "n_lf": K, "eps_lf": EPS, "beta_zero": BETA0}
    if kind == "RHVAE":
        return RHVAE(RHVAEConfig(**common, temperature=T, regularization=LAM))
    model = HVAE(HVAEConfig(**common))
    if exact:  # the force grad_z U(z) + z, differentiable: pythae's flow with exact gradients
        def force(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            logits = model.decoder(z)["reconstruction"].reshape(x.shape[0], -1)
            U = -model._log_p_x_given_z(logits, x).sum()
            return torch.autograd.grad(U, z, create_graph=True)[0] + z

        model._dU_dz = force
    return model


def aetk_epoch(model, opts, batches) -> float:
    model.train()
    sync(batches[0].device)
    t0 = time.perf_counter()
    for x in batches:
        model.training_step(x, opts)
    model.on_epoch_end(0)
    sync(batches[0].device)
    return time.perf_counter() - t0


def pythae_epoch(model, opt, batches) -> float:
    from pythae.data.datasets import DatasetOutput

    model.train()
    sync(batches[0].device)
    t0 = time.perf_counter()
    for x in batches:
        out = model(DatasetOutput(data=x))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.update()
    sync(batches[0].device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--dims", default="2,10")
    ap.add_argument("--batch", type=int, default=BATCH,
                    help="batch size (pythae's RHVAE takes each batch as its centroids, "
                         "so aetk's gets as many)")
    add_device(ap)
    args = ap.parse_args()
    try:
        import pythae  # noqa: F401
    except ImportError:
        raise SystemExit("pythae is not installed: pip install 'aetk[bench]' (or pythae==0.1.2 "
                         "in a separate venv with aetk)") from None
    warnings.filterwarnings("ignore")
    logging.getLogger("pythae").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = (mnist_5k()[0] > 127.5).float().to(device)  # pythae's HVAE checks Bernoulli support
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, data "
          f"{tuple(data.shape)}, batch {args.batch}, K={K}, eps={EPS}, loadavg "
          f"{os.getloadavg()[0]:.2f}")
    print("| model | latent | aetk epochs (s) | pythae epochs (s) | aetk / pythae | pythae with "
          "exact forces, epochs (s) | aetk / pythae exact |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("HVAE", "RHVAE"):
        for d in (int(s) for s in args.dims.split(",")):
            torch.manual_seed(0)
            runs = {"aetk": aetk_model(kind, d, data, args.batch), "pythae": pythae_model(kind, d)}
            if kind == "HVAE":
                runs["exact"] = pythae_model(kind, d, exact=True)
            opts = {name: m.configure_optimizers(1e-3) if name == "aetk"
                    else torch.optim.Adam(m.to(device).parameters(), lr=1e-3)
                    for name, m in runs.items()}
            times: dict[str, list[float]] = {name: [] for name in runs}
            gen = torch.Generator().manual_seed(0)
            for _ in range(args.epochs):
                order = torch.randperm(len(data), generator=gen)
                batches = [data[order[i:i + args.batch].to(device)]
                           for i in range(0, len(data), args.batch)]
                for name, m in runs.items():
                    epoch = aetk_epoch if name == "aetk" else pythae_epoch
                    times[name].append(epoch(m, opts[name], batches))
            med = {name: statistics.median(t) for name, t in times.items()}
            cells = [", ".join(f"{t:.2f}" for t in times[n]) for n in ("aetk", "pythae")]
            exact = (f"{', '.join(f'{t:.2f}' for t in times['exact'])} | "
                     f"{med['aetk'] / med['exact']:.2f}") if "exact" in runs else "- | -"
            print(f"| {kind} | {d} | {cells[0]} | {cells[1]} | {med['aetk'] / med['pythae']:.2f} "
                  f"| {exact} |", flush=True)


if __name__ == "__main__":
    main()
