"""Encoders: q(z|x). A Gaussian encoder returns a diagonal Normal distribution; a
deterministic one returns z itself (plain AE)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import distributions as D
from torch import nn

from .distributions import Normal
from .nets import (
    ClassesAsChannels,
    Conditioned,
    LogInputs,
    MaskingNoise,
    conv_encoder,
    image_layout,
    mlp,
    numel,
    resolve_shape,
)


class _Encoder(nn.Module):
    """Holds the network and the sizes. `network` maps x to `out_per_latent * latent_dim`
    outputs; without it an MLP `in -> hidden -> out` that flattens its input is built from
    `in_features` or `input_shape`, or with `channels` a convolutional network on the
    images of `image_shape` (`nets.conv_encoder`). With `input_noise = p > 0` the network
    first masks each input value with probability p while training (`nets.MaskingNoise`):
    a denoising autoencoder, which reconstructs the clean data from corrupted inputs.
    `log_inputs` makes the network see `log(1 + x)` (`nets.LogInputs`): for counts.
    `n_classes = k > 0` says that the last axis of `input_shape` holds one-hot codes of k
    classes (categorical data of shape `input_shape[:-1]`): the MLP reads them flattened,
    a convolutional network as k channels per image channel (`nets.ClassesAsChannels`;
    `image_shape` is then the data's, without the class axis).

    With `n_conditions = k > 0` the encoder is q(z|x, c): the network also sees the
    conditions (`nets.Conditioned`; a given `network` then takes the flattened x and the k
    conditions side by side, a convolutional one gets them after its convolutions), set
    by `Model.given`."""

    out_per_latent = 1

    def __init__(
        self,
        network: nn.Module | None = None,
        *,
        in_features: int | None = None,
        input_shape: Sequence[int] | None = None,
        latent_dim: int,
        hidden: Sequence[int] = (400, 400),
        activation: str = "relu",
        channels: Sequence[int] = (),
        image_shape: Sequence[int] | None = None,
        input_noise: float = 0.0,
        log_inputs: bool = False,
        n_conditions: int = 0,
        n_classes: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.n_conditions = int(n_conditions)
        self.input_shape = (
            resolve_shape(in_features, input_shape)
            if (in_features, input_shape) != (None, None)
            else None
        )
        if network is None:
            if self.input_shape is None:
                raise ValueError("give a network, or in_features / input_shape to build an MLP")
            n_out = self.out_per_latent * self.latent_dim
            k = self.n_conditions
            classes = _class_axis(self.input_shape, n_classes)
            if channels and classes:
                c, h, w = image_layout(self.input_shape[:-1], image_shape, channels)
                network = nn.Sequential(
                    ClassesAsChannels((c, h, w), classes),
                    conv_encoder((classes * c, h, w), channels, hidden, n_out, activation, k))
            elif channels:
                image = image_layout(self.input_shape, image_shape, channels)
                network = conv_encoder(image, channels, hidden, n_out, activation, k)
            elif k:
                network = Conditioned(mlp(numel(self.input_shape) + k, hidden, n_out,
                                          activation), k, len(self.input_shape))
            else:
                network = nn.Sequential(
                    nn.Flatten(), mlp(numel(self.input_shape), hidden, n_out, activation)
                )
        elif self.n_conditions:
            network = Conditioned(network, self.n_conditions, len(self.input_shape or (1,)))
        if log_inputs:
            network = nn.Sequential(LogInputs(), network)
        if input_noise:  # the masking first: it stands for missing data
            network = nn.Sequential(MaskingNoise(input_noise), network)
        self.network = network

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for x, `(B, out_per_latent * latent_dim)`; another width is a
        ValueError (a GaussianEncoder's 3 outputs for latent_dim 2 gave mu of 2 and one
        log sigma broadcast over both, in silence)."""
        out = self.network(x)
        n = self.out_per_latent * self.latent_dim
        if out.shape[-1] != n:
            raise ValueError(f"the {type(self).__name__}'s network returned {out.shape[-1]} "
                             f"values per row, but latent_dim={self.latent_dim} needs {n}"
                             + (" (mu, then log sigma)" if self.out_per_latent == 2 else ""))
        return out


def _class_axis(shape: tuple[int, ...], n_classes: int) -> int:
    """`n_classes` (0: none) checked against the last axis of the input shape, which holds
    the one-hot codes."""
    if int(n_classes) != n_classes or n_classes < 0 or n_classes == 1:
        raise ValueError(f"n_classes must be 0 (no class axis) or an integer >= 2, got "
                         f"{n_classes}")
    if n_classes and (len(shape) < 2 or shape[-1] != n_classes):
        raise ValueError(f"n_classes={n_classes} needs input_shape (*variables, {n_classes}), "
                         f"one-hot rows of each variable's class, got {shape}")
    return int(n_classes)


class GaussianEncoder(_Encoder):
    """q(z|x) = N(mu(x), diag sigma(x)^2).

    `network` maps x to `(B, 2 * latent_dim)`: mu, then log sigma. Without it, an MLP
    `in -> hidden -> 2 d` is built from the sizes.
    """

    out_per_latent = 2

    def forward(self, x: torch.Tensor) -> D.Independent:
        mu, log_sigma = self.outputs(x).chunk(2, dim=-1)
        return D.Independent(Normal(mu, log_sigma.exp(), validate_args=False), 1)


class DeterministicEncoder(_Encoder):
    """z = f(x). `network` maps x to `(B, latent_dim)`; without it an MLP is built."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.outputs(x)
