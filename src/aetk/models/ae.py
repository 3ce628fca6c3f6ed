"""Autoencoder: z = f(x), x_hat = g(z)."""

from __future__ import annotations

import torch

from ..distributions import log_prob
from .base import LossOutput, Model


class AE(Model):
    """Loss: mean squared error for a deterministic decoder, else `-<log p(x|z)>`."""

    def loss(self, x: torch.Tensor) -> LossOutput:
        out = self.decoder(self.encoder(x))
        if isinstance(out, torch.Tensor):
            rec = (out - x).square().mean()
        else:
            rec = -log_prob(out, x).mean()
        return LossOutput(rec, {"reconstruction": rec})
