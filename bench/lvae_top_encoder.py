"""Where the ladder VAE's q(z2|x) should come from: validation ELBO and log p(x) on the
digits bundled with scikit-learn for three bottom-up paths to z2, against a VAE.

- copy: x through a re-initialised copy of the encoder, then an MLP (aetk.LadderVAE's);
- outputs: the encoder's own outputs (mu_hat_1, log sigma_hat_1) through the MLP;
- mlp: x through an MLP encoder of its own (the build's hidden layers) straight to z2.

Digits scaled to [0, 1], Bernoulli decoders, a seeded 1,400/397 split, hidden (128,),
batch 64, Adam 1e-3, `--epochs` epochs (150 for the numbers in aetk.LadderVAE's
docstring; default 30), seeds 0, 1, 2, top_dim = latent_dim.
The ELBO is minus the mean of 50 validation losses; log p(x) is `aetk.log_marginal` with
1,000 importance samples; kl_z1 is the validation mean of KL(q(z1|x, z2) || p(z1|z2)), 0
where the z1 level went unused.

Usage: python bench/lvae_top_encoder.py [--epochs 30] [--threads 2] [--device cpu]
"""

import numpy as np
import torch
from sklearn.datasets import load_digits

import aetk
from aetk.models.lvae import gaussian_head

from common import training_args

HIDDEN = (128,)


class FromOutputs(aetk.LadderVAE):
    """q(z2|x) from the encoder's outputs through the MLP head (no network of its own)."""

    def bottom_up(self, x: torch.Tensor):
        estimate = self.encoder(x)
        features = torch.cat([estimate.mean, estimate.stddev.log()], dim=-1)
        return estimate, gaussian_head(self.top_head(features))


class FromMLP(aetk.LadderVAE):
    """q(z2|x) from an MLP encoder of x of its own."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mlp = aetk.GaussianEncoder(in_features=64, latent_dim=self.top_dim, hidden=HIDDEN)

    def bottom_up(self, x: torch.Tensor):
        return self.encoder(x), self.mlp(x)


def build(variant: str, latent_dim: int, seed: int) -> aetk.Model:
    torch.manual_seed(seed)
    kind = "vae" if variant == "vae" else "lvae"
    model = aetk.build_model(kind, "bernoulli", in_features=64, latent_dim=latent_dim,
                             hidden=HIDDEN)
    if variant in ("outputs", "mlp"):
        torch.manual_seed(seed)
        cls = FromOutputs if variant == "outputs" else FromMLP
        model = cls(model.encoder, model.decoder, hidden=HIDDEN)
    return model


def main() -> None:
    args, device = training_args(2)
    x = torch.tensor(load_digits().data / 16, dtype=torch.float32)
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    train, val = x[:1400], x[1400:].to(device)
    print("| latent_dim | q(z2 given x) from | val ELBO | val log p(x) | kl_z1 per seed |")
    print("|---|---|---|---|---|")
    for latent_dim in (2, 8):
        for variant in ("copy", "outputs", "mlp", "vae"):
            elbo, log_px, kl_z1 = [], [], []
            for seed in range(3):
                model = build(variant, latent_dim, seed)
                aetk.fit(model, train, epochs=args.epochs, batch_size=64, lr=1e-3,
                         progress=False, seed=seed, device=device)
                torch.manual_seed(123)
                with torch.no_grad():
                    elbo.append(-np.mean([model.loss(val).loss.item() for _ in range(50)]))
                    log_px.append(aetk.log_marginal(model, val, n_samples=1000).mean().item())
                    terms = model.loss(val).terms
                    kl_z1.append(terms["kl_z1"].item() if "kl_z1" in terms else np.nan)
            print(f"| {latent_dim} | {variant} | {np.mean(elbo):.2f} +- {np.std(elbo):.2f} | "
                  f"{np.mean(log_px):.2f} +- {np.std(log_px):.2f} | "
                  f"{', '.join(f'{k:.2f}' for k in kl_z1)} |")


if __name__ == "__main__":
    main()
