"""Encoders: q(z|x). A Gaussian encoder returns a diagonal Normal distribution; a
deterministic one returns z itself (plain AE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import distributions as D
from torch import nn

from .nets import mlp, numel, resolve_shape


class _Encoder(nn.Module):
    """Holds the network and the sizes; a size-built MLP flattens its input."""

    def __init__(
        self,
        network: nn.Module | None,
        out_per_latent: int,
        in_features: int | None,
        input_shape: Sequence[int] | None,
        latent_dim: int,
        hidden: Sequence[int],
        activation: str,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.input_shape = (
            resolve_shape(in_features, input_shape)
            if (in_features, input_shape) != (None, None)
            else None
        )
        if network is None:
            if self.input_shape is None:
                raise ValueError("give a network, or in_features / input_shape to build an MLP")
            network = nn.Sequential(
                nn.Flatten(),
                mlp(numel(self.input_shape), hidden, out_per_latent * latent_dim, activation),
            )
        self.network = network


class GaussianEncoder(_Encoder):
    """q(z|x) = N(mu(x), diag sigma(x)^2).

    `network` maps x to `(B, 2 * latent_dim)`: mu, then log sigma. Without it, an MLP
    `in -> hidden -> 2 d` is built from the sizes.
    """

    def __init__(
        self,
        network: nn.Module | None = None,
        *,
        in_features: int | None = None,
        input_shape: Sequence[int] | None = None,
        latent_dim: int,
        hidden: Sequence[int] = (400, 400),
        activation: str = "relu",
    ) -> None:
        super().__init__(network, 2, in_features, input_shape, latent_dim, hidden, activation)

    def forward(self, x: torch.Tensor) -> D.Independent:
        mu, log_sigma = self.network(x).chunk(2, dim=-1)
        return D.Independent(D.Normal(mu, log_sigma.exp(), validate_args=False), 1)


class DeterministicEncoder(_Encoder):
    """z = f(x). `network` maps x to `(B, latent_dim)`; without it an MLP is built."""

    def __init__(
        self,
        network: nn.Module | None = None,
        *,
        in_features: int | None = None,
        input_shape: Sequence[int] | None = None,
        latent_dim: int,
        hidden: Sequence[int] = (400, 400),
        activation: str = "relu",
    ) -> None:
        super().__init__(network, 1, in_features, input_shape, latent_dim, hidden, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)
