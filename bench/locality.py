"""Does locality sampling (Skafte, Jorgensen & Hauberg 2019; `aetk.LocalityBatches`) give a
VAE's variance network better calibrated variances than uniform mini-batches?

MNIST 5k scaled to [0, 1] (not binarised), the seeded 4,500/500 split of
`common.split_5k`, a VAE with a learned-variance Gaussian decoder (`gaussian_learned`,
latent 2, 256-256 MLPs), Adam 1e-3, `--epochs` epochs (default 30), seed 0. Uniform:
batches of 128. Locality: 16 primaries and 7 of each one's 20 nearest neighbours (pixel
distance), 128 per batch, as many batches per epoch. Seeds 0, 1 and 2 of each. On the
validation images, at the encoder means: log p(x) (`aetk.log_marginal`, 200 importance
samples; mean and median over the images: an overconfident sigma makes a few images'
log-likelihood hugely negative, which moves the mean), the mean squared standardised
residual `<(x - mu)^2 / sigma^2>` (1 when the variances match the errors) and the share of
pixels more than 3 sigma off (0.27% for a calibrated Gaussian).

Usage: python bench/locality.py [--epochs 30] [--threads 2] [--device cpu]
"""

import torch

import aetk

from common import mnist_5k, split_5k, training_args


def main() -> None:
    args, device = training_args(2)
    train, val = split_5k(mnist_5k()[0] / 255.0)
    val = val.to(device)
    print("| batches | seed | val log p(x), mean | median | mean squared standardised "
          "residual | pixels beyond 3 sigma |")
    print("|---|---|---|---|---|---|")
    for name in ("uniform", "locality"):
        for seed in (0, 1, 2):
            sampler = (aetk.LocalityBatches(train, n_primary=16, n_secondary=7,
                                            k_neighbors=20) if name == "locality" else None)
            torch.manual_seed(seed)
            model = aetk.build_model("vae", "gaussian_learned", in_features=784,
                                     latent_dim=2, hidden=(256, 256))
            aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=seed,
                     progress=False, device=device, batch_sampler=sampler)
            model.eval()
            torch.manual_seed(1)
            with torch.no_grad():
                p = model.decode(model.latent_mean(val))
                z2 = (val - p.mean).square() / p.variance
                log_px = aetk.log_marginal(model, val, n_samples=200)
            print(f"| {name} | {seed} | {log_px.mean().item():.1f} | "
                  f"{log_px.median().item():.1f} | {z2.mean().item():.2f} | "
                  f"{100 * (z2 > 9).float().mean().item():.2f}% |", flush=True)


if __name__ == "__main__":
    main()
