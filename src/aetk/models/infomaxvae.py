"""InfoMax-VAE (Rezaabad & Vishwanath 2020): a VAE that also maximises a variational
bound on the mutual information between x and z, estimated by a critic network."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..distributions import kl_to_standard_normal
from ..nets import mlp
from .base import LossOutput, adam
from .vae import VAE


class Critic(nn.Module):
    """`T(x, z) = MLP([flatten(x); z])`, one scalar per sample."""

    def __init__(self, in_features: int, latent_dim: int, hidden: Sequence[int], act: str):
        super().__init__()
        self.network = mlp(in_features + latent_dim, hidden, 1, act)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.network(torch.cat([x.flatten(1), z], dim=-1)).squeeze(-1)


class InfoMaxVAE(VAE):
    """VAE loss `-<log p(x|z)> + beta <KL> - alpha I_hat`, and a critic trained on `-I_hat`,
    with `I_hat = <T(x, z)> - <exp(T(x, z~) - 1)>` (NWJ bound), `z~` the batch's z permuted.
    Each batch takes one step of each with two optimisers."""

    def __init__(
        self,
        encoder,
        decoder,
        critic: nn.Module,
        alpha: float = 1.0,
        beta: float = 1.0,
    ) -> None:
        super().__init__(encoder, decoder, beta=beta)
        if not 0 <= alpha < math.inf:
            raise ValueError(f"the mutual-information weight alpha must be >= 0, got {alpha}")
        self.critic = critic
        self.alpha = float(alpha)

    def mutual_info(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The NWJ lower bound on I(x; z) from joint pairs and shuffled pairs."""
        shuffled = z[torch.randperm(z.shape[0], device=z.device)]
        return self.critic(x, z).mean() - torch.exp(self.critic(x, shuffled) - 1).mean()

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        rec, z = self.reconstruction(q, x if target is None else target)
        kl = kl_to_standard_normal(q).mean()
        mi = self.mutual_info(x, z)
        loss = rec + self.beta * kl - self.alpha * mi
        return LossOutput(loss, {"reconstruction": rec, "kl": kl, "mutual_info": mi})

    def vae_parameters(self) -> list[nn.Parameter]:
        """Encoder and decoder parameters (everything but the critic)."""
        return [*self.encoder.parameters(), *self.decoder.parameters()]

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        return {
            "vae": adam(self.vae_parameters(), lr),
            "critic": adam(self.critic.parameters(), lr),
        }

    def training_step(self, x, optimizers, target=None) -> LossOutput:
        opt_vae, opt_critic = optimizers["vae"], optimizers["critic"]
        opt_vae.zero_grad(set_to_none=True)
        out = self.loss(x, target)
        out.loss.backward()
        opt_vae.step()
        # The critic sees a fresh z and moves alone: no gradient reaches the encoder.
        with torch.no_grad():
            z = self.posterior(x).sample()
        opt_critic.zero_grad(set_to_none=True)
        critic_loss = -self.mutual_info(x, z)
        critic_loss.backward()
        opt_critic.step()
        return out
