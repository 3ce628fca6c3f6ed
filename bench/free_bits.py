"""What free bits (Kingma et al. 2016) buy against posterior collapse on the bundled MNIST
5k: active units and validation log p(x) of a VAE with a 32-dimensional latent space,
without free bits and with lambda = 0.1, 0.25 and 0.5 nats per dimension.

Binarised MNIST 5k, the seeded 4,500/500 split of `common.split_5k`, Bernoulli decoders,
256-256 MLPs, batch 128, Adam 1e-3, `--epochs` epochs (default 30), seed 0. log p(x) is
`aetk.log_marginal` with 500 importance samples; active units count latent dimensions
whose encoder mean varies by more than 0.01 over the validation images (Burda et al.
2016); KL is the validation mean of the true KL.

Usage: python bench/free_bits.py [--epochs 30] [--threads 2] [--device cpu]
"""

import torch

import aetk

from common import mnist_5k, split_5k, training_args


def main() -> None:
    args, device = training_args(2)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    val = val.to(device)
    print("| free bits (nats per dimension) | active units of 32 | val KL | val log p(x) |")
    print("|---|---|---|---|")
    for free_bits in (0.0, 0.1, 0.25, 0.5):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=32,
                                 hidden=(256, 256), free_bits=free_bits)
        aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0, progress=False,
                 device=device)
        model.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            q = model.encode(val)
            active = int((q.mean.var(0) > 0.01).sum())
            kl = model.loss(val).terms["kl"].item()
            log_px = aetk.log_marginal(model, val, n_samples=500).mean().item()
        print(f"| {free_bits:g} | {active} | {kl:.1f} | {log_px:.1f} |", flush=True)


if __name__ == "__main__":
    main()
