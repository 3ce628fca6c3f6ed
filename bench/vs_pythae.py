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
one forward, one input-gradient and four outer-backward GEMMs through the 512x784 layer:
26 GEMMs of that size per step with the encoder's two. pythae runs 18: two for each of its
2K first-order gradients, its final forward twice, one backward of two, the encoder's two.
At about 0.55 ms per GEMM on one thread here, that is the ~1.2x gap; the rest of aetk's
step is leaner than pythae's. Deferring the eight weight-gradient GEMMs of the decoder's
output layer into one (custom autograd Functions, no accumulation adds) measured no faster:
the merged GEMM's gain is spent on the Functions' Python overhead and the concatenations.
Tried again on 2026-12-03 (the fifth session) with the layer's calls redirected by a
TorchFunctionMode to Functions that record their factors, summed by one merged product or a
chain of in-place addmm_ when backward reaches the weight: the output layer's weight gradient
fell from 8.0 to 6.0 ms of a 15.5 ms backward (7.5 ms without that gradient at all), but the
forward rose by 1.1 ms (the mode's dispatch, 0.1-0.2 ms per decoder call, and the Python
Functions): the step took 0.96-0.98x in five alternating runs at latent 2 and 1.015x in one
at latent 10. Not kept: too little for the machinery and a private autograd call
(torch._C._will_engine_execute_node).
What did help (2026-12-03, the sixth session): each call of `F.linear` made its own
`weight.t()` node, where the backward summed that call's two weight gradients out of place,
then the calls' sums again at the weight (5 out-of-place adds of 1.6 MB per step and 2 in
place, by the profiler; about 2,000 page faults per step in a fresh process). aetk's own
`nets.Linear` shares one transpose per layer across the flow's positions
(`nets.shared_transposes`), so the sums go in place:
the step took 26.3 -> 23.6 ms alone in a fresh process (alternating), and the HVAE went from
1.01-1.09x pythae to 0.91-1.03x (three runs of 5 epochs at latent 2 and 10). The pooling
above, called from `nets.Linear` on top of the shared transposes (no TorchFunctionMode),
took a further 3-11 % off the step (30.0 -> 28.0, 26.0 -> 23.3, 27.6 -> 26.8 ms, three
alternating A/Bs alone); not kept either: it still needs the private engine call (or
pooling confined to aetk's own training step, where the whole backward is known to reach
the weight) and Python autograd Functions per call, unmeasured on a GPU.
Pooling confined to aetk's training step, which needs no private call (the step's backward
reaches every weight, and the flow's gradients in z skip the weights), was built and
checked on 2026-12-03 (the seventh session: the same gradients to 2e-15 in float64) and
gave nothing: steps alternating in one process took 31.00 ms without and 31.12 ms with one
merged product per layer at latent 2 (28.10 and 28.23 ms at latent 10), and 27.79 and
27.80 ms with a chain of in-place addmm_ instead (latent 2). Not kept. `hvae_floor.py`
prints what remains: the 8 GEMMs that exactness adds against what each library spends
beyond its GEMMs.
A closed-form Bernoulli force (the score x - sigmoid(logits) in closed form, autograd only
through the network) measured 1 % faster, and at most about 10 % even when the K
intermediate positions skip log p(x|z) altogether (2026-12-02, alternating, 6 rounds).
torch.compile does not close the gap either: the same exact step written with torch.func.grad
(which Dynamo traces, unlike autograd.grad) and compiled whole took 43 ms against aetk's eager
36 ms and 57 ms uncompiled (2026-12-02, alternating, a slower day). A profile of that day puts
the gap in the decoder's weight gradients: the eight 784x64 @ 64x512 products are memory-bound
(2.0 ms each in the step against 0.9 ms for a GEMM of the same FLOPs with a 512-wide inner
dimension) and autograd sums them with 1.3 ms adds; one merged product would save 1.5-4 ms of
a 39 ms step (measured alone), short of pythae's 34 ms, and needs the deferral above.
Memory allocation is not it either: the step takes 45 minor page faults (2026-12-02).
What helped a little (2026-12-03, the eighth session): the decoder's first layer (latent
width in) multiplies a contiguous copy of its transposed weight (`nets.NARROW`): MKL's
weight and input gradients for the transposed (512, 2) view took 70-100 and 45-50 us each,
16 of them per step; the step went 30.6 -> 29.7 ms at latent 2 and 33.7 -> 32.9 ms at
latent 10 (medians of 10 alternating epochs of 40 steps in one process). The remaining
weight-gradient accumulation of the 784x512 layer (one out-of-place add, because the first
gradient to arrive is a transposed view, and six in place) takes about 1.5 ms of the step
by the profiler; merging its eight products into one saves 0.7 ms of 5.6 when timed alone.
A larger batch does not change the picture (`--batch 256`, 2026-12-02): HVAE 1.18x and 1.08x
pythae at latent 2 and 10 (0.64x and 0.61x pythae with exact forces), RHVAE 0.39x and 0.30x.

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
