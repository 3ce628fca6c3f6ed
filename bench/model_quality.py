"""What the model variants buy on the bundled MNIST 5k: validation log p(x), active units,
the total correlation of q(z), and training time.

Binarised MNIST 5k (/255 > 0.5), 4,500 images for training and 500 for validation in a
seeded random order (`common.split_5k`; the bundled file is sorted by label), Bernoulli
decoders, batch 128, Adam 1e-3, `--epochs` epochs (default 30), seed 0. log p(x) is
`aetk.log_marginal` with 500 importance samples; active units count latent dimensions whose
encoder mean varies by more than 0.01 over the validation images; the total correlation is
the beta-TCVAE's validation estimate. Rows:

- latent 2: the MLP VAE (256 hidden) against the convolutional one (channels 32, 64, then
  256 hidden), and the VampPrior (50 pseudo-inputs) against the VAE (256-256);
- latent 10: the VampPrior against the VAE, and the beta-TCVAE with beta 1 and 6.

Usage: python bench/model_quality.py [--epochs 30] [--threads 2] [--device cpu]
"""

import time

import torch

import aetk

from common import mnist_5k, split_5k, training_args

RUNS = [
    ("VAE, MLP 256", "vae", 2, {"hidden": (256,)}),
    ("VAE, conv 32-64 + 256", "vae", 2, {"hidden": (256,), "channels": (32, 64),
                                         "image_shape": (28, 28)}),
    ("VAE, 256-256", "vae", 2, {}),
    ("VampPrior K=50, 256-256", "vampprior", 2, {"n_components": 50}),
    ("VAE, 256-256", "vae", 10, {}),
    ("VampPrior K=50, 256-256", "vampprior", 10, {"n_components": 50}),
    ("beta-TCVAE beta=1, 256-256", "beta_tcvae", 10, {"beta": 1.0}),
    ("beta-TCVAE beta=6, 256-256", "beta_tcvae", 10, {"beta": 6.0}),
]


def main() -> None:
    args, device = training_args(2)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    val = val.to(device)
    print("| model | latent | parameters | train s | val log p(x) | active units | val TC |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, latent, options in RUNS:
        torch.manual_seed(0)
        model = aetk.build_model(kind, "bernoulli", in_features=784, latent_dim=latent,
                                 **{"hidden": (256, 256), **options})
        start = time.perf_counter()
        aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0,
                           progress=False, device=device)
        seconds = time.perf_counter() - start
        model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            log_px = aetk.log_marginal(model, val, n_samples=500).mean().item()
            active = int((model.encode(val).mean.var(0) > 0.01).sum())
            tc = (f"{model.loss(val).terms['total_correlation'].item():.2f}"
                  if kind == "beta_tcvae" else "-")
        n = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {latent} | {n:,} | {seconds:.0f} | {log_px:.1f} | {active} | {tc} |",
              flush=True)


if __name__ == "__main__":
    main()
