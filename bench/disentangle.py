"""What the disentangling models do on the bundled MNIST 5k: validation log p(x), active
units and three measures of dependence between the latent dimensions, for the VAE,
FactorVAE, DIP-VAE I and II and the beta-TCVAE.

Binarised MNIST 5k (/255 > 0.5) split at random (seed 0) into 4,500 training and 500
validation images (the bundled file is sorted by label, so its last 500 are all nines),
latent 10, MLPs 256-256, Bernoulli decoders, batch 128, Adam 1e-3, `--epochs` epochs
(default 30), seed 0. log p(x) and active units on the validation images, the dependence
measures on the first 500 training images (where the penalties act) and on the
validation images:

- log p(x): `aetk.log_marginal` with 500 importance samples;
- active units: latent dimensions whose encoder mean varies by more than 0.01;
- TC: the total correlation of the aggregate posterior `q(z) = 1/N sum_n q(z|x_n)` over
  N = 500 images, `<log q(z) - sum_j log q(z_j)>` at one z ~ q(z|x) per image
  (`aetk.kl_decomposition`);
- Gaussian TC: `1/2 (sum_j log C_jj - log det C)`, the total correlation of a Gaussian with
  the covariance C of q(z) (`Cov[mu] + <diag sigma^2>`, DIP-VAE-II's C);
- mean |corr|: the mean absolute correlation between the encoder means of two active
  units.

Usage: python bench/disentangle.py [--epochs 30] [--threads 1] [--device cpu]
"""

import time

import torch

import aetk

from common import mnist_5k, split_5k, training_args

RUNS = [
    ("VAE", "vae", {}),
    ("FactorVAE gamma=6", "factorvae", {"gamma": 6.0}),
    ("FactorVAE gamma=20", "factorvae", {"gamma": 20.0}),
    ("DIP-VAE-I lambda_od=10 (lambda_d=100)", "dipvae", {"type": "i"}),
    ("DIP-VAE-II lambda_od=10 (lambda_d=10)", "dipvae", {"type": "ii"}),
    ("beta-TCVAE beta=6", "beta_tcvae", {"beta": 6.0}),
]


def dependence(model: aetk.Model, x: torch.Tensor) -> tuple[int, float, float, float]:
    """Active units, TC of the aggregate posterior, Gaussian TC of its covariance, and the
    mean absolute correlation between active encoder means."""
    q = model.encode(x)
    mu, var = q.mean, q.variance
    active = mu.var(0) > 0.01
    tc = aetk.kl_decomposition(mu, var.sqrt()).total_correlation
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / len(x) + torch.diag(var.mean(0))
    gauss_tc = 0.5 * (cov.diagonal().log().sum() - torch.logdet(cov)).item()
    n = int(active.sum())
    corr = torch.corrcoef(mu[:, active].T).abs() if n > 1 else torch.ones(1, 1)
    mean_corr = (corr.sum() - n).item() / (n * (n - 1)) if n > 1 else float("nan")
    return n, tc, gauss_tc, mean_corr


def main() -> None:
    args, device = training_args(1)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    val = val.to(device)
    print("| model | train s | val log p(x) | active units | TC train / val | "
          "Gaussian TC train / val | mean abs corr train / val |")
    print("|---|---|---|---|---|---|---|")
    for name, kind, options in RUNS:
        torch.manual_seed(0)
        model = aetk.build_model(kind, "bernoulli", in_features=784, latent_dim=10,
                                 hidden=(256, 256), **options)
        start = time.perf_counter()
        aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0, progress=False,
                 device=device)
        seconds = time.perf_counter() - start
        model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            log_px = aetk.log_marginal(model, val, n_samples=500).mean().item()
            active, *on_val = dependence(model, val)
            _, *on_train = dependence(model, train[:500].to(device))
        tc, gauss_tc, corr = (f"{a:{f}} / {b:{f}}" for a, b, f in
                              zip(on_train, on_val, (".2f", ".3f", ".2f"), strict=True))
        print(f"| {name} | {seconds:.0f} | {log_px:.1f} | {active} | {tc} | {gauss_tc} | "
              f"{corr} |", flush=True)


if __name__ == "__main__":
    main()
