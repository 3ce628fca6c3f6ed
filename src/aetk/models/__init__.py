"""The models: each file reads like its loss."""

from .ae import AE
from .base import LossOutput, Model
from .infomaxvae import Critic, InfoMaxVAE
from .infovae import InfoVAE
from .vae import VAE

__all__ = ["AE", "VAE", "Critic", "InfoMaxVAE", "InfoVAE", "LossOutput", "Model"]
