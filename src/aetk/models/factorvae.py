"""FactorVAE (Kim & Mnih 2018, "Disentangling by Factorising"): a VAE that also penalises
the total correlation of q(z), estimated by a discriminator between draws of q(z) and of
the product of its marginals."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import distributions as D
from torch import nn

from ..distributions import kl_to_standard_normal
from ..nets import mlp
from .base import LossOutput, adam
from .vae import VAE

JOINT, PRODUCT = 0, 1  # the discriminator's classes: z ~ q(z), z ~ prod_j q(z_j)


class Discriminator(nn.Module):
    """Two logits per code, `(joint, product)`, from an MLP on z with leaky ReLUs. The
    paper's has 6 layers of 1000 units for 10 latents of 64 x 64 images; the default here,
    two of 256, is for MNIST-sized data."""

    def __init__(self, latent_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        self.network = mlp(latent_dim, hidden, 2, "leaky_relu")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.network(z)


def permute_dims(z: torch.Tensor) -> torch.Tensor:
    """Every column of `z (B, d)` shuffled across the batch by its own permutation: from
    draws of q(z), draws of prod_j q(z_j)."""
    order = torch.rand(z.shape, device=z.device).argsort(0)
    return z.gather(0, order)


class FactorVAE(VAE):
    """`L = -<log p(x|z)> + beta <KL(q(z|x) || N(0, I))> + gamma TC_hat` (`beta = 1`, the
    VAE's attribute, for `CyclicalBeta` to anneal), with
    `TC_hat = <log D(z) / (1 - D(z))> = <logit_joint(z) - logit_product(z)>` on the batch's
    reparameterised z: the density-ratio estimate of `KL(q(z) || prod_j q(z_j))`.

    Each batch takes one step of each with two optimisers: the VAE's on `L` (encoder and
    decoder only), then the discriminator's on its cross-entropy between the two classes,
    on codes drawn without gradient from the updated encoder: the batch's first half as
    draws of q(z), its second half, independent of the first as in the paper's second
    batch, permuted by `permute_dims`. The discriminator uses the paper's Adam betas
    (0.5, 0.9). Terms: `reconstruction`, `kl`, `total_correlation`, and in training
    `discriminator` (its loss) and `discriminator_accuracy`.

    The paper has no MNIST experiment; on its 64 x 64 image sets it sweeps gamma from 10 to
    100. The default 6 weighs the penalty as the beta-TCVAE's default beta does its TC.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, discriminator: nn.Module,
                 gamma: float = 6.0) -> None:
        super().__init__(encoder, decoder)
        if not 0 <= gamma < math.inf:
            raise ValueError(f"the total-correlation weight gamma must be >= 0, got {gamma}")
        self.discriminator = discriminator
        self.gamma = float(gamma)

    def total_correlation(self, z: torch.Tensor) -> torch.Tensor:
        """`TC_hat`: the batch mean of the discriminator's log odds of "joint"."""
        logits = self.discriminator(z)
        return (logits[:, JOINT] - logits[:, PRODUCT]).mean()

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        rec, z = self.reconstruction(q, x if target is None else target)
        kl = kl_to_standard_normal(q).mean()
        tc = self.total_correlation(z)
        return LossOutput(rec + self.beta * kl + self.gamma * tc,
                          {"reconstruction": rec, "kl": kl, "total_correlation": tc})

    def discriminator_loss(self, joint: torch.Tensor, other: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The discriminator's cross-entropy, the two classes weighted equally, between
        `joint` (draws of q(z)) and `permute_dims(other)`, and its accuracy."""
        product = permute_dims(other)
        losses, hits = [], []
        for z, label in ((joint, JOINT), (product, PRODUCT)):
            guess = D.Categorical(logits=self.discriminator(z))
            losses.append(-guess.log_prob(torch.full((len(z),), label, device=z.device)).mean())
            hits.append((guess.logits.argmax(-1) == label).float().mean())
        return (losses[0] + losses[1]) / 2, (hits[0] + hits[1]).detach() / 2

    def vae_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder parameters (everything but the discriminator)."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {"vae": adam(self.vae_parameters(), lr),
                "discriminator": adam(self.discriminator.parameters(), lr, betas=(0.5, 0.9))}

    def training_step(self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
                      target: torch.Tensor | None = None) -> LossOutput:
        opt_vae, opt_disc = optimizers["vae"], optimizers["discriminator"]
        opt_vae.zero_grad(set_to_none=True)
        out = self.loss(x, target)
        out.loss.backward()
        opt_vae.step()
        if len(x) < 2:  # no second half to permute
            return out
        with torch.no_grad():
            z = self.posterior(x).sample()
        # zero_grad also drops what the VAE's backward left in the discriminator
        opt_disc.zero_grad(set_to_none=True)
        disc_loss, accuracy = self.discriminator_loss(*z.tensor_split(2))
        disc_loss.backward()
        opt_disc.step()
        out.terms.update(discriminator=disc_loss.detach(), discriminator_accuracy=accuracy)
        return out
