"""One epoch of `aetk.fit` on a VAE against a bare, hand-written PyTorch loop.

VAE 784-400-400, latent 10, Bernoulli decoder, batch 256, fused Adam (lr 1e-3, as aetk), on 60,000
binarised MNIST images (the bundled 5k, /255, > 0.5, tiled 12x). Both use the identical network (the
bare one is initialised by copying aetk's state dict), the same data and thread count. Runs
alternate (bare, aetk, bare, aetk, ...) so that machine noise hits both alike; prints the
best and median epoch time of each and their ratios. Target: aetk within 1.10x of bare.

With `--device cuda` both run on the GPU, the data already there.

Usage: python bench/vae_epoch.py [--threads 2] [--rounds 3] [--device cpu]
"""

import argparse
import itertools
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import aetk

from common import add_device, mnist_5k

BATCH, LATENT, HIDDEN = 256, 10, (400, 400)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class BareVAE(nn.Module):
    """The same layers as aetk's VAE, written out by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = mlp([784, *HIDDEN, 2 * LATENT])
        self.dec = mlp([LATENT, *HIDDEN, 784])


def bare_epoch(model: BareVAE, data: torch.Tensor, seed: int) -> float:
    """One epoch of the textbook loop; returns the mean loss."""
    # aetk's optimiser (fused Adam), so that the ratio is aetk's own overhead
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros((), device=data.device)
    for idx in torch.randperm(len(data), generator=gen).split(BATCH):
        x = data[idx.to(data.device)]
        mu, log_sigma = model.enc(x).chunk(2, dim=-1)
        sigma = log_sigma.exp()
        z = mu + sigma * torch.randn_like(mu)
        rec = F.binary_cross_entropy_with_logits(model.dec(z), x, reduction="sum") / len(x)
        kl = 0.5 * (sigma.square() + mu.square() - 1 - 2 * log_sigma).sum() / len(x)
        loss = rec + kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(x)
    return total.item() / len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = (mnist_5k()[0] > 127.5).float().repeat(12, 1).to(device)  # 60,000 images
    torch.manual_seed(0)
    init = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=LATENT,
                            hidden=HIDDEN).state_dict()
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"data {tuple(data.shape)}, batch {BATCH}, loadavg {os.getloadavg()[0]:.2f}")

    # untimed warm-up of both on a few batches: the first epoch of a process (thread pool,
    # allocator, kernels) was slower, and it fell on the bare loop, which runs first
    warm = data[:4 * BATCH]
    bare = BareVAE().to(device)
    bare_epoch(bare, warm, seed=0)
    aetk.fit(aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=LATENT,
                              hidden=HIDDEN), warm, epochs=1, batch_size=BATCH, device=device,
             progress=False)

    times: dict[str, list[float]] = {"bare": [], "aetk": []}
    for r in range(args.rounds):
        bare = BareVAE().to(device)
        with torch.no_grad():
            for p, q in zip(bare.parameters(), init.values(), strict=True):
                p.copy_(q)
        t0 = time.perf_counter()
        bare_loss = bare_epoch(bare, data, seed=r)
        times["bare"].append(time.perf_counter() - t0)

        model = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=LATENT,
                                 hidden=HIDDEN)
        model.load_state_dict(init)
        t0 = time.perf_counter()
        hist = aetk.fit(model, data, epochs=1, batch_size=BATCH, device=device, seed=r,
                        progress=False)
        times["aetk"].append(time.perf_counter() - t0)
        print(f"round {r + 1}: bare {times['bare'][-1]:.2f} s (loss {bare_loss:.1f}), "
              f"aetk {times['aetk'][-1]:.2f} s (loss {hist['train_loss'].iloc[0]:.1f})")

    best = {k: min(v) for k, v in times.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    for k in times:
        print(f"{k:5s} best {best[k]:.2f} s, median {med[k]:.2f} s per epoch")
    print(f"ratio aetk/bare: best {best['aetk'] / best['bare']:.3f}, "
          f"median {med['aetk'] / med['bare']:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()
