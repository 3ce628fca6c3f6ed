"""A lower bound of the exact HVAE training step, against pythae's (inexact) step.

Setting of `vs_pythae.py` (decoder d-512-784, encoder 784-512-2d, batch 64, K=3, one thread).
Exact gradients through the K+1 positions of the flow need, for each position, the
decoder's forward and its input gradient (the force), and in the adjoint two more products
through the 512x784 layer (the force's adjoint `a W^T` and the network's input gradient
`a W`) and two weight gradients; aetk's adjoint (`aetk.flow_adjoint`) sums the 8 weight
gradients by one product of 2B(K+1) rows. With the encoder's two, the arithmetic of 26
GEMMs of 64x512x784 per step. This prints, per step:

- the time of those products alone, in the layouts aetk uses;
- aetk's HVAE step with every layer about 50 times narrower: the same operations, so what
  PyTorch's dispatch, autograd and the optimiser cost beyond the arithmetic;
- their sum, a lower bound of any step that issues these operations one by one;
- aetk's full step, what it spends beyond the bound (elementwise work on 64x784 tensors,
  the GEMMs of latent width, Adam);
- pythae's step when it is installed (`pip install 'aetk[bench]'`), the time of its 18
  GEMMs alone, and what each library's step spends beyond its GEMMs. Exactness costs the
  arithmetic of 8 more GEMMs; through the adjoint aetk is faster than pythae only where its
  other work is leaner by more than those cost, so the ratio moves with the machine's GEMM
  speed.

The bound and the rows above it are the adjoint's (`aetk.flow_affine` off). At latent 2
aetk trains through `aetk.flow_affine`, whose rows that stay in z_0's activation region need
the arithmetic of about 11 such GEMMs (the network at z_0 and its two tangents, forward and
backward, and the encoder's two) and the rest the adjoint's: a last row gives that step.

Usage: python bench/hvae_floor.py [--threads 1] [--latent 2] [--batch 64] [--epochs 3]
"""

import argparse
import statistics
import time

import torch

import aetk
from aetk import flow_affine

from common import mnist_5k
from vs_pythae import BATCH, BETA0, EPS, K, aetk_epoch, aetk_model, pythae_epoch, pythae_model

H, D = 512, 784


def gemm_floor(B: int, exact: bool = True, repeats: int = 50) -> float:
    """Seconds for the products of one exact HVAE step through the 512x784 layer (26 GEMMs'
    arithmetic), or (`exact=False`) for the 18 of pythae's step: two for each of its 2K
    first-order gradients, its final forward twice, that forward's backward (an input and
    a weight gradient), the encoder's two."""
    W, We = torch.randn(D, H), torch.randn(H, D)
    rows_d, rows_h = torch.randn(B, D), torch.randn(B, H)
    forward, input_grad = (lambda: rows_h @ W.t()), (lambda: rows_d @ W)
    weight_grad = lambda: rows_d.t() @ rows_h  # noqa: E731
    encoder = [lambda: rows_d @ We.t(), lambda: rows_h.t() @ rows_d]
    if exact:  # per position: forward, force, and the adjoint's two; the weight gradients
        all_d, all_h = torch.randn(2 * B * (K + 1), D), torch.randn(2 * B * (K + 1), H)
        products = [forward, input_grad] * 2 * (K + 1) + [lambda: all_d.t() @ all_h] + encoder
    else:
        products = [forward, input_grad] * 2 * K + [forward] * 2 + [input_grad, weight_grad] \
            + encoder
        assert len(products) == 18
    for f in products:
        f()
    t0 = time.perf_counter()
    for _ in range(repeats):
        for f in products:
            f()
    return (time.perf_counter() - t0) / repeats


def step_time(model: aetk.Model, data: torch.Tensor, epochs: int, batch: int) -> float:
    """Median seconds per training step over `epochs` epochs."""
    opt = model.configure_optimizers(1e-3)
    batches = list(data.split(batch))
    aetk_epoch(model, opt, batches[:5])
    return statistics.median(aetk_epoch(model, opt, batches) for _ in range(epochs)) / len(
        batches)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--latent", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=BATCH)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    B, data = args.batch, (mnist_5k()[0] > 127.5).float()
    torch.manual_seed(0)
    gemms = gemm_floor(B)
    narrow = aetk.build_model("hvae", "bernoulli", in_features=16, latent_dim=args.latent,
                              hidden=(8,), n_leapfrog=K, step_size=EPS, beta0=BETA0)
    affine, flow_affine.MAX_LATENT = flow_affine.MAX_LATENT, 0
    overhead = step_time(narrow, data[:, -16:].contiguous(), args.epochs, B)
    full = step_time(aetk_model("HVAE", args.latent, data, B), data, args.epochs, B)
    flow_affine.MAX_LATENT = affine
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), latent "
          f"{args.latent}, batch {B}, K={K}; milliseconds per training step")
    print("| what | ms |")
    print("|---|---|")
    print(f"| the exact step's products (26 GEMMs of {B}x512x784) | {1e3 * gemms:.1f} |")
    print(f"| aetk's HVAE step, layers 50x narrower (operation overhead) | {1e3 * overhead:.1f} |")
    print(f"| lower bound of the exact step (sum) | {1e3 * (gemms + overhead):.1f} |")
    print(f"| aetk's exact HVAE step through the adjoint | {1e3 * full:.1f} |")
    print(f"| of which beyond the bound | {1e3 * (full - gemms - overhead):.1f} |")
    try:
        theirs = pythae_model("HVAE", args.latent)
    except ImportError:
        print("| pythae's HVAE step | not installed |")
        theirs = None
    if theirs is not None:
        opt = torch.optim.Adam(theirs.parameters(), lr=1e-3)
        batches = list(data.split(B))
        pythae_epoch(theirs, opt, batches[:5])
        pythae = statistics.median(pythae_epoch(theirs, opt, batches)
                                   for _ in range(args.epochs)) / len(batches)
        theirs_gemms = gemm_floor(B, exact=False)
        print(f"| pythae's HVAE step (forces without second-order terms) | {1e3 * pythae:.1f} |")
        print(f"| its 18 GEMMs ({B}x512x784) | {1e3 * theirs_gemms:.1f} |")
        print(f"| of which beyond its GEMMs | {1e3 * (pythae - theirs_gemms):.1f} |")
        print(f"| aetk's step beyond its 26 GEMMs | {1e3 * (full - gemms):.1f} |")
    if args.latent <= flow_affine.MAX_LATENT:
        fast = step_time(aetk_model("HVAE", args.latent, data, B), data, args.epochs, B)
        print(f"| aetk's exact HVAE step as it trains (`flow_affine`) | {1e3 * fast:.1f} |")


if __name__ == "__main__":
    main()
