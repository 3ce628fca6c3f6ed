"""What conditioning on the digit class buys on the bundled MNIST 5k: validation log p(x)
of the VAE against log p(x|c) of the conditional VAE (the same networks, plus the one-hot
class at the encoder's and the decoder's input), and how faithfully the conditional
decoder draws the class it is given.

Binarised MNIST 5k, the seeded 4,500/500 split of `common.split_5k` (with the labels),
Bernoulli decoders, 256-256 MLPs, batch 128, Adam 1e-3, `--epochs` epochs (default 30),
seed 0. log p(x) is `aetk.log_marginal` with 500 importance samples. Class fidelity: the
share of 1,000 prior draws decoded under class k (100 per class) that the comparison
table's classifier (`report.SampleScorer`, fitted on the training images) calls k; the
sample score is that classifier's Inception-style score of the draws (validation images:
about 7.4). At latent 10 also the conditional beta-VAE with beta 2 and 4: a dearer KL
moves the class out of z, which the decoder gets for free.

Usage: python bench/conditional.py [--epochs 30] [--threads 2] [--device cpu]
"""

import contextlib
import time

import numpy as np
import torch

import aetk
from aetk.report import SampleScorer

from common import mnist_5k, training_args


def main() -> None:
    args, device = training_args(2)
    x, y = mnist_5k()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = (x[order] / 255.0 > 0.5).float(), y[order].long()
    train, val = x[:4500], x[4500:]  # the order of common.split_5k, labels kept aligned
    c = torch.nn.functional.one_hot(y, 10).float()
    scorer = SampleScorer(train.numpy(), y[:4500].numpy(), val.numpy())
    print("| model | latent | train s | val log p(x) or log p(x given c) | class fidelity "
          "| sample score |")
    print("|---|---|---|---|---|---|")
    runs = [(latent, k, 1.0) for latent in (2, 10) for k in (0, 10)]
    runs += [(10, 10, 2.0), (10, 10, 4.0)]  # beta > 1 moves the class out of z
    for latent, k, beta in runs:
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=latent,
                                 hidden=(256, 256), n_conditions=k, beta=beta)
        data = ((train, c[:4500]), (val, c[4500:])) if k else (train, val)
        start = time.perf_counter()
        aetk.fit(model, *data, epochs=args.epochs, batch_size=128, seed=0, progress=False,
                 device=device)
        seconds = time.perf_counter() - start
        model.eval()
        torch.manual_seed(1)
        classes = torch.arange(1000) % 10
        with torch.no_grad():
            with model.given(c[4500:].to(device)) if k else contextlib.nullcontext():
                log_px = aetk.log_marginal(model, val.to(device), 500).mean().item()
            with (model.given(torch.eye(10, device=device)[classes]) if k
                  else contextlib.nullcontext()):
                draws = model.sample(1000).cpu().numpy()
        said = scorer.classifier.predict(draws)
        fidelity = f"{np.mean(said == classes.numpy()):.3f}" if k else "-"
        name = ("conditional " if k else "") + ("VAE" if beta == 1 else f"beta-VAE {beta:g}")
        print(f"| {name} | {latent} | {seconds:.0f} | {log_px:.1f} | {fidelity} | "
              f"{scorer(draws):.2f} |", flush=True)

if __name__ == "__main__":
    main()
