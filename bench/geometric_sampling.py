"""Does sampling from the encoder metric's Riemannian uniform distribution (Chadebec &
Allassonnière 2022) generate better digits than the VAE's prior?

Binarised MNIST 5k, the seeded random 4,500/500 split of `common.split_5k`, VAEs with
Bernoulli decoders (400-400 MLPs), latent 2 and 10, `--epochs` epochs (default 30). The
comparison table's classifier (`aetk.report.SampleScorer`: PCA to 50 dimensions, then
logistic regression, trained on the 4,500 training images) scores 500 decoded samples per
sampler, as the Inception score does with a network:
`exp(<KL(p(y|x) || p(y))>)` is high when each sample is confidently one digit and the
digits are varied (10 at most), and the mean top probability is the confidence alone. The
500 validation images give the reference. Samplers: the prior N(0, I), the Riemannian
uniform distribution of `aetk.geometry.EncoderMetric` (1,000 training codes, HMC with
its defaults), and, for scale, the aggregate posterior (one draw of q(z|x) per training
image: reconstructions, not new data). Memorisation: the median distance from each sample
to its nearest training image, against the validation images' own.

Usage: python bench/geometric_sampling.py [--epochs 30] [--threads 2] [--device cpu]
"""

import time

import numpy as np
import torch

import aetk
from aetk.geometry import EncoderMetric
from aetk.report import SampleScorer

from common import mnist_5k, split_5k, training_args

N = 500


def scores(scorer: SampleScorer, images: np.ndarray, train: np.ndarray
           ) -> tuple[float, float, float]:
    """Classifier score, mean top probability, median distance to the nearest training
    image."""
    top = scorer.classifier.predict_proba(images).max(1).mean()
    nearest = torch.cdist(torch.from_numpy(images), torch.from_numpy(train)).min(1).values
    return scorer(images), float(top), float(nearest.median())


def main() -> None:
    args, device = training_args(2)
    pixels, labels = mnist_5k()
    x = (pixels / 255.0 > 0.5).float()
    train, val = split_5k(x)
    train_np = train.numpy()
    scorer = SampleScorer(train_np, split_5k(labels)[0].numpy(), val.numpy())
    print(f"{N} samples per sampler")
    print("| latent | samples | classifier score | mean top probability | "
          "median distance to nearest training image | seconds |")
    print("|---|---|---|---|---|---|")
    score, conf, dist = scores(scorer, val.numpy(), train_np)
    print(f"| - | validation images | {score:.2f} | {conf:.3f} | {dist:.2f} | - |")
    for latent in (2, 10):
        torch.manual_seed(0)
        model = aetk.build_model("vae", "bernoulli", in_features=784, latent_dim=latent)
        aetk.fit(model, train, epochs=args.epochs, batch_size=128, seed=0, progress=False,
                 device=device)
        model.eval()
        torch.manual_seed(1)
        start = time.perf_counter()
        with torch.no_grad():
            prior = model.sample(N)
        samplers = {"prior N(0, I)": (prior, time.perf_counter() - start)}
        start = time.perf_counter()
        metric = EncoderMetric.from_model(model, train.to(device), n_centroids=1000)
        z = metric.sample(N)
        with torch.no_grad():
            samplers["Riemannian uniform"] = (model.decode(z).mean,
                                              time.perf_counter() - start)
            aggregate = model.decode(model.encode(train.to(device)).sample()[:N]).mean
        samplers["aggregate posterior (reconstructions)"] = (aggregate, float("nan"))
        for name, (images, seconds) in samplers.items():
            score, conf, dist = scores(scorer, images.float().cpu().numpy(), train_np)
            print(f"| {latent} | {name} | {score:.2f} | {conf:.3f} | {dist:.2f} | "
                  f"{seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
