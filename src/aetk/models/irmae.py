"""Implicit rank-minimising autoencoder, IRMAE (Jing, Zbontar & LeCun 2020, "Implicit
Rank-Minimizing Autoencoder")."""

from __future__ import annotations

import torch
from torch import nn

from ..validate import positive_int
from .ae import AE


class IRMAE(AE):
    """An autoencoder whose code `z = W_l ... W_1 f(x)` passes `n_linear` square linear
    maps after the encoder `f` (no bias, no activation), with `AE`'s loss. The product
    represents no more maps than one matrix does, but gradient descent through a deep
    linear chain favours low-rank products, so the codes' covariance comes out of low rank:
    the number of latent dimensions used is learnt, not set (AutoEncoderToolkit.jl's
    unreleased `irmae.jl`). The paper used `n_linear` of 2 to 8 (4 for MNIST). On 1,000
    points of a 2-D manifold in 32 dimensions with `latent_dim = 8` (60 epochs), an AE's
    codes had singular values 1, 0.87, 0.22, 0.12, ..., 0.012 (relative to the largest),
    the IRMAE's with 4 maps 1, 0.75, 0.008, 0.004, ..., at the same loss
    (`tests/test_irmae.py`). The maps are part of `encode`, so every code the package
    computes (latent means, geometry, the pipeline's stores) is `z`.

    The maps start as torch's `nn.Linear` (weights uniform within `1/sqrt(d)`), so the
    chain first shrinks the codes, which strengthens the low-rank bias, and costs
    reconstruction where the data need more dimensions: on the bundled digits at latent 6
    (120 epochs, Bernoulli) the IRMAE's codes had rank 3 (singular values 1, 0.58, 0.19)
    and a validation loss of 20.9 nats, an AE's rank 6 and 18.2. With
    `torch.nn.init.orthogonal_` on each of `model.linear`'s weights the chain starts at the
    codes' scale: rank 6 with a decaying spectrum (1, 0.76, 0.54, 0.49, 0.42, 0.20) and
    17.95 nats.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, n_linear: int = 4) -> None:
        super().__init__(encoder, decoder)
        d, n_linear = self.latent_dim, positive_int(n_linear, "n_linear")
        self.linear = nn.Sequential(*(nn.Linear(d, d, bias=False) for _ in range(n_linear)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The code `z = W_l ... W_1 f(x)`."""
        return self.linear(self.encoder(x))
