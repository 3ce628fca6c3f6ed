"""One training step of VAE, HVAE and RHVAE on the same networks, in one run.

784-400-400 MLPs, Bernoulli decoder, batch 256, K=3 leapfrog steps, 3 fixed-point
iterations, 256 centroids, on the bundled MNIST 5k (x/255). Steps of the three models are
interleaved so that machine noise hits them alike; prints min and median per step and the
ratio of the minimum to the VAE's. Target: RHVAE at most 12x VAE at latent 2.

Usage: python bench/hamiltonian_step.py [--threads 2] [--reps 15] [--dims 2,10]
       [--centroids 256] [--device cpu]
"""

import argparse
import os
import statistics
import time

import torch

import aetk

from common import add_device, mnist_5k, sync


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--dims", default="2,10")
    ap.add_argument("--centroids", type=int, default=256)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = (mnist_5k()[0] / 255.0).to(device)
    batch = 256
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"batch {batch}, K=3, fixed-point 3, centroids {args.centroids}, "
          f"loadavg {os.getloadavg()[0]:.2f}")
    for d in (int(s) for s in args.dims.split(",")):
        torch.manual_seed(0)
        opts = {"in_features": 784, "latent_dim": d, "hidden": (400, 400)}
        models = {
            "VAE": aetk.build_model("vae", "bernoulli", **opts),
            "HVAE": aetk.build_model("hvae", "bernoulli", **opts),
            "RHVAE": aetk.build_model("rhvae", "bernoulli", centroids=args.centroids, **opts),
        }
        for m in models.values():
            m.to(device)
        models["RHVAE"].on_fit_start(data)
        optims = {k: m.configure_optimizers(1e-3) for k, m in models.items()}
        times: dict[str, list[float]] = {k: [] for k in models}
        gen = torch.Generator().manual_seed(0)
        for rep in range(args.reps + 2):
            x = data[torch.randperm(len(data), generator=gen)[:batch].to(device)]
            for k, m in models.items():
                m.train()
                sync(device)
                t0 = time.perf_counter()
                m.training_step(x, optims[k])
                sync(device)
                if rep >= 2:  # two warm-up steps
                    times[k].append(time.perf_counter() - t0)
        base = min(times["VAE"])
        print(f"\nlatent {d}:")
        for k, ts in times.items():
            print(f"  {k:6s} min {min(ts) * 1e3:8.2f} ms  median {statistics.median(ts) * 1e3:8.2f}"
                  f" ms  = {min(ts) / base:5.2f} x VAE")


if __name__ == "__main__":
    main()
