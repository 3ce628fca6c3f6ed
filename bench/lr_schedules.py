"""What a learning-rate schedule buys on the bundled MNIST 5k: validation log p(x) after the
same number of epochs at a constant rate, with a cosine decay, with a cosine decay from a
three times higher peak after 3 warm-up epochs, and with plateau halving.

Binarised MNIST 5k, the seeded 4,500/500 split of `common.split_5k`, Bernoulli decoders,
256-256 MLPs, batch 128, Adam, `--epochs` epochs (default 30), seed 0; log p(x) is
`aetk.log_marginal` with 500 importance samples. Models: the VAE at latent 2 and 10 and
the RHVAE at latent 2 (the default pipeline's settings otherwise).

Usage: python bench/lr_schedules.py [--epochs 30] [--threads 2] [--device cpu]
"""

import time

import torch

import aetk

from common import mnist_5k, split_5k, training_args

MODELS = [("VAE", "vae", 2), ("VAE", "vae", 10), ("RHVAE", "rhvae", 2)]


def schedules(epochs: int) -> list[tuple[str, float, str | dict]]:
    """The compared schedules. The warm-up is 3 epochs, shorter when `--epochs` is 3 or
    less (cosine refuses a warm-up as long as the run)."""
    warmup = min(3, epochs - 1)
    return [
        ("constant 1e-3", 1e-3, "constant"),
        ("cosine 1e-3", 1e-3, "cosine"),
        (f"cosine 3e-3, {warmup} warm-up epochs", 3e-3, {"name": "cosine", "warmup": warmup}),
        ("plateau 1e-3 (patience 3)", 1e-3, {"name": "plateau", "patience": 3}),
    ]


def main() -> None:
    args, device = training_args(2)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    print("| model | latent | schedule | train s | final lr | val log p(x) |")
    print("|---|---|---|---|---|---|")
    for label, kind, latent in MODELS:
        for name, lr, schedule in schedules(args.epochs):
            torch.manual_seed(0)
            model = aetk.build_model(kind, "bernoulli", in_features=784, latent_dim=latent,
                                     hidden=(256, 256))
            start = time.perf_counter()
            hist = aetk.fit(model, train, val, epochs=args.epochs, batch_size=128, lr=lr,
                            seed=0, progress=False, device=device, lr_schedule=schedule)
            seconds = time.perf_counter() - start
            model.eval()
            torch.manual_seed(1)
            with torch.no_grad():
                log_px = aetk.log_marginal(model, val.to(device), n_samples=500).mean().item()
            final = hist["lr"].iloc[-1] if "lr" in hist else lr
            print(f"| {label} | {latent} | {name} | {seconds:.0f} | {final:.2g} | {log_px:.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
