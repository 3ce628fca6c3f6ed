"""Stability of RHVAE (and HVAE) training on the bundled MNIST 5k with every likelihood.

Latent 2, 64 centroids, defaults otherwise (K=3, eps=1e-3, beta0=0.3, T=0.8, lambda=0.01),
784-400-400 MLPs, 4500 training and 500 validation images (a seeded random split), batch
128, Adam lr 1e-3.
Data per likelihood: x/255 for bernoulli and the Gaussians, counts floor(x/16) in 0..15 for
poisson, negative_binomial and multinomial (raw 0..255 counts make even a plain VAE's encoder
overflow),
4 intensity classes for categorical. Prints the final train
and validation losses (and the first validation loss) of each run, whether every epoch's
loss was finite, and (RHVAE) the largest eigenvalue of the frozen M_i, which the soft bound
on L caps.

Usage: python bench/rhvae_stability.py [--epochs 20] [--model rhvae] [--threads 2] [--device auto]
       [--likelihoods bernoulli,categorical,...] (default: every likelihood but mse)
"""

import argparse
import time

import numpy as np
import torch

import aetk
from aetk.devices import resolve_device

from common import add_device, mnist_5k, split_5k


def data_for(likelihood: str, pixels: np.ndarray) -> tuple[torch.Tensor, dict]:
    if likelihood in ("poisson", "negative_binomial", "multinomial"):
        return torch.from_numpy(np.floor(pixels / 16.0)), {}
    if likelihood == "categorical":
        return torch.from_numpy(np.floor(pixels / 64.0)), {"n_classes": 4}
    return torch.from_numpy(pixels / 255.0), {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--model", default="rhvae")
    ap.add_argument("--threads", type=int, default=2)
    # every likelihood but mse, which is for the autoencoders only
    ap.add_argument("--likelihoods", default=",".join(sorted(set(aetk.LIKELIHOODS) - {"mse"})))
    add_device(ap, default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    pixels = mnist_5k()[0].numpy()
    print(f"torch {torch.__version__}, device {device}, threads "
          f"{torch.get_num_threads()}; {args.model}, {args.epochs} epochs, latent 2, 64 centroids")
    print("| likelihood | first val loss | final train loss | final val loss | all finite "
          "| s/epoch | max eig M_i |")
    print("|---|---|---|---|---|---|---|")
    for likelihood in args.likelihoods.split(","):
        x, opts = data_for(likelihood, pixels)
        extra = {"centroids": 64} if args.model == "rhvae" else {}
        torch.manual_seed(0)
        model = aetk.build_model(args.model, likelihood, in_features=784, latent_dim=2,
                                 **opts, **extra)
        t0 = time.perf_counter()
        hist = aetk.fit(model, *split_5k(x), epochs=args.epochs, batch_size=128,
                        progress=False, device=device)
        seconds = (time.perf_counter() - t0) / args.epochs
        finite = bool(np.isfinite(hist[["train_loss", "val_loss"]].to_numpy()).all())
        m_eig = (torch.linalg.eigvalsh(model.centroid_M).max().item()
                 if hasattr(model, "centroid_M") else float("nan"))
        print(f"| {likelihood} | {hist['val_loss'].iloc[0]:.2f} | "
              f"{hist['train_loss'].iloc[-1]:.2f} | {hist['val_loss'].iloc[-1]:.2f} | "
              f"{finite} | {seconds:.1f} | {m_eig:.3g} |", flush=True)


if __name__ == "__main__":
    main()
