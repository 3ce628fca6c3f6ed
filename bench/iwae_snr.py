"""The signal-to-noise ratio of the gradients of the importance-weighted bounds on the
bundled MNIST 5k (Rainforth et al. 2018, "Tighter variational bounds are not necessarily
better"): on the same draws, the tighter the bound, the noisier the encoder's gradient;
MIWAE and PIWAE keep more of its signal.

A VAE (binarised MNIST 5k, latent 10, 256-256 MLPs, Bernoulli decoder) is trained for
`--epochs` epochs (default 5, seed 0); then, at those weights and on one batch of 64
validation images, each objective's gradient is estimated `--repeats` times (default 200)
with fresh draws. Per parameter, SNR = |mean| / standard deviation of the estimates; the
table gives the median over the encoder's and over the decoder's parameters (those whose
estimates vary). Every row
uses 64 draws per image except the ELBO of one draw and the IWAE of 8.

Usage: python bench/iwae_snr.py [--epochs 5] [--repeats 200] [--threads 2] [--device cpu]
"""

import argparse

import torch

import aetk

from common import add_device, mnist_5k, split_5k

OBJECTIVES = {  # name: (class, options)
    "ELBO, 1 draw (VAE)": (aetk.IWAE, {"n_samples": 1}),
    "ELBO, mean of 64 draws": (aetk.IWAE, {"n_samples": 1, "n_groups": 64}),
    "IWAE, K = 8 (of 8 draws)": (aetk.IWAE, {"n_samples": 8}),
    "IWAE, K = 64": (aetk.IWAE, {"n_samples": 64}),
    "MIWAE, M = 8, K = 8": (aetk.IWAE, {"n_samples": 8, "n_groups": 8}),
    "CIWAE, K = 64, beta = 0.5": (aetk.CIWAE, {"n_samples": 64, "beta": 0.5}),
}


def snr(estimates: list[torch.Tensor]) -> float:
    """Median over parameters of |mean| / standard deviation of the gradient estimates
    (those whose estimates vary: weights of pixels that are 0 in every image of the batch
    have gradient 0)."""
    g = torch.stack(estimates)
    std = g.std(0)
    varies = std > 0
    return (g.mean(0).abs()[varies] / std[varies]).median().item()


def gradient_snr(model: aetk.Model, x: torch.Tensor, repeats: int,
                 encoder_loss=None) -> tuple[float, float]:
    """SNR of the encoder's and the decoder's gradients of `model.loss` (of `encoder_loss`
    for the encoder, when given: PIWAE's MIWAE bound)."""
    enc, dec = list(model.encoder.parameters()), list(model.decoder.parameters())
    by_enc, by_dec = [], []
    for _ in range(repeats):
        out = model.loss(x)
        loss_enc = out.loss if encoder_loss is None else out.aux[encoder_loss]
        g_enc = torch.autograd.grad(loss_enc, enc, retain_graph=True)
        g_dec = torch.autograd.grad(out.loss, dec)
        by_enc.append(torch.cat([g.flatten() for g in g_enc]))
        by_dec.append(torch.cat([g.flatten() for g in g_dec]))
    return snr(by_enc), snr(by_dec)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    add_device(ap)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    train, val = split_5k((mnist_5k()[0] / 255.0 > 0.5).float())
    torch.manual_seed(0)
    vae = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=10,
                           hidden=(256, 256))
    aetk.fit(vae, train, epochs=args.epochs, batch_size=128, progress=False, device=device)
    x = val[:64].to(device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"VAE trained {args.epochs} epochs, "
          f"{args.repeats} gradient estimates on 64 validation images")
    print("| objective | encoder SNR | decoder SNR |")
    print("|---|---|---|")
    rows = {name: (cls(vae.encoder, vae.decoder, **opts), None)
            for name, (cls, opts) in OBJECTIVES.items()}
    rows["PIWAE, M = 8, K = 8 (encoder: MIWAE)"] = (
        aetk.PIWAE(vae.encoder, vae.decoder, n_samples=8, n_groups=8), "miwae")
    for name, (model, encoder_loss) in rows.items():
        torch.manual_seed(1)
        enc, dec = gradient_snr(model.train(), x, args.repeats, encoder_loss)
        print(f"| {name} | {enc:.3f} | {dec:.3f} |", flush=True)


if __name__ == "__main__":
    main()
