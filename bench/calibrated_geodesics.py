"""Do calibrated decoder variances (Arvanitidis et al. 2018) make pull-back geodesics keep
to the data?

MNIST 5k (x/255) with the seeded random split of `common.split_5k`, a VAE with a Gaussian
decoder of fixed sigma 0.1 (400-400 MLPs with tanh, so that the mean's pull-back is
smooth), latent 2, `--epochs` epochs, as in the paper: the mean is trained with a constant
variance, which says nothing about where the data are. Geodesics between `--pairs` pairs of
validation codes of different digits (50 points each) under the pull-back of the decoder as
trained and of the calibrated one (`aetk.geometry.calibrate_variance`, 64 centres). For
each metric: the mean ratio of geodesic to straight-line length, and how far the curves
stray from the data, in units of the codes' median nearest-neighbour distance: each curve's
farthest point from its nearest training code (median over curves), and the fraction of
curve points more than 3 units from every code (the straight lines' for reference).

Usage: python bench/calibrated_geodesics.py [--epochs 30] [--pairs 50] [--threads 2]
       [--device cpu]
"""

import time

import torch

import aetk
from aetk.geometry import PullbackMetric, calibrate_variance, fit_geodesics

from common import mnist_5k, split_5k, training_args


def stray(points: torch.Tensor, codes: torch.Tensor, unit: float) -> tuple[float, float]:
    """How far curves `(P, T, d)` leave the codes, in units of `unit`: the median over
    curves of their farthest point's distance to the nearest code, and the fraction of
    curve points farther than 3 units."""
    dist = torch.cdist(points.reshape(-1, points.shape[-1]), codes).min(1).values / unit
    dist = dist.reshape(points.shape[:2])
    return dist.max(1).values.median().item(), (dist > 3).float().mean().item()


def main() -> None:
    args, device = training_args(2, pairs=50)
    pixels, labels = mnist_5k()
    train, val = split_5k(pixels / 255.0)
    val_y = split_5k(labels)[1]
    torch.manual_seed(0)
    model = aetk.build_model("vae", "gaussian", in_features=784, latent_dim=2,
                             activation="tanh", sigma=0.1)
    aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0, progress=False,
             device=device)
    model.eval()
    with torch.no_grad():
        codes, z_val = model.encode(train).mean, model.encode(val).mean
    nn_dist = torch.cdist(codes, codes)
    nn_dist.fill_diagonal_(float("inf"))
    unit = nn_dist.min(1).values.median().item()
    gen = torch.Generator().manual_seed(0)
    i, j = torch.randint(len(val), (2, 8 * args.pairs), generator=gen)
    keep = (val_y[i] != val_y[j]).nonzero().squeeze(1)[:args.pairs]
    z0, z1 = z_val[i[keep]], z_val[j[keep]]
    start = time.perf_counter()
    calibrated = calibrate_variance(model, train, n_centres=64)
    print(f"calibrated in {time.perf_counter() - start:.0f} s; codes' median nearest-neighbour "
          f"distance {unit:.3f}")
    print("| decoder variance | L / L_line | converged | farthest point from the data "
          "(median over curves) | points beyond 3 units |")
    print("|---|---|---|---|---|")
    t = torch.linspace(0, 1, 50, device=z0.device)  # the codes are on --device
    line = torch.lerp(z0[:, None], z1[:, None], t[None, :, None])
    far, beyond = stray(line, codes, unit)
    print(f"| (straight lines) | 1 | - | {far:.1f} | {beyond:.1%} |")
    for name, m in (("as trained", model), ("calibrated (RBF)", calibrated)):
        res = fit_geodesics(PullbackMetric(m.decoder), z0, z1, n_points=50)
        far, beyond = stray(res.points, codes, unit)
        print(f"| {name} | {(res.length / res.line_length).mean():.3f} | "
              f"{int(res.converged.sum())}/{len(z0)} | {far:.1f} | {beyond:.1%} |", flush=True)


if __name__ == "__main__":
    main()
