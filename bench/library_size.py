"""How much of a cell's sequencing depth do the latent codes of count likelihoods carry?

The bundled single-cell counts (`scrna_counts`: 559 cells, totals 945 to 39,886 UMIs), the
1,000 genes of highest variance, a seeded 500/59 split, VAEs with latent 2 and a 128-unit
MLP (encoders on log(1 + x), the default for counts), Adam 1e-3, `--epochs` epochs
(default 30), seeds 0, 1 and 2. For each likelihood: how well the log total count of
every cell is predicted from its code (the encoder mean), by a linear regression and by
15-nearest-neighbour regression (R^2, 5-fold cross-validated: 0 means the code says
nothing about the depth, 1 that it is a function of it). Poisson and negative-binomial
decoders must explain the totals, so their codes carry them; the multinomial scores each
cell with its own total, and its code is free for the composition.

Measured (30 epochs, 2 threads, 33 s in all), R^2 linear / 15-NN over the three seeds:
Poisson 0.57-0.60 / 0.95, negative binomial 0.71-0.75 / 0.94, multinomial below 0 (one
seed -1.65) / -0.10-0.15: the count models' codes are mostly the depth, the multinomial's
are not.

Usage: python bench/library_size.py [--epochs 30] [--threads 2] [--device cpu]
"""

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsRegressor

import aetk
from aetk.data import load_bundled

from common import training_args


def main() -> None:
    args, device = training_args(2)
    raw = load_bundled("scrna_counts").x.astype(np.float32)
    log_depth = np.log(raw.sum(1))
    x = torch.from_numpy(raw[:, np.argsort(-raw.var(0))[:1000]])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = x[order[:500]], x[order[500:]]
    print("| likelihood | seed | R^2 of log depth from the code, linear | 15-NN | seconds |")
    print("|---|---|---|---|---|")
    for likelihood in ("poisson", "negative_binomial", "multinomial"):
        for seed in (0, 1, 2):
            torch.manual_seed(seed)
            model = aetk.build_model("vae", likelihood, in_features=1000, latent_dim=2,
                                     hidden=(128,))
            history = aetk.fit(model, train, val, epochs=args.epochs, batch_size=64,
                               seed=seed, progress=False, device=device)
            with torch.no_grad():
                code = model.latent_mean(x.to(device)).cpu().numpy()
            r2 = [cross_val_score(reg, code, log_depth, cv=5, scoring="r2").mean()
                  for reg in (LinearRegression(), KNeighborsRegressor(15))]
            print(f"| {likelihood} | {seed} | {r2[0]:.2f} | {r2[1]:.2f} | "
                  f"{history['seconds'].sum():.0f} |", flush=True)


if __name__ == "__main__":
    main()
