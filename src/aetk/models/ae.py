"""Autoencoder: z = f(x), x_hat = g(z)."""

from __future__ import annotations

import torch

from ..distributions import log_prob
from .base import LossOutput, Model


class AE(Model):
    """Loss: mean squared error for a deterministic decoder, else `-<log p(x|z)>`."""

    point_codes = True

    def reconstruction(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The reconstruction cost of `x` decoded from `z`: the mean squared error of a
        deterministic decoder's output, else `-<log p(x|z)>`."""
        out = self.decoder(z)
        if isinstance(out, torch.Tensor):
            return (out - x).square().mean()
        return -log_prob(out, x).mean()

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        rec = self.reconstruction(self.encode(x), x if target is None else target)
        return LossOutput(rec, {"reconstruction": rec})
