"""The models: each file reads like its loss."""

from .ae import AE
from .base import LossOutput, Model, NoPriorSampler
from .dipvae import DIPVAE
from .factorvae import Discriminator, FactorVAE
from .hvae import HVAE
from .infomaxvae import Critic, InfoMaxVAE
from .infovae import InfoVAE
from .irmae import IRMAE
from .iwae import CIWAE, IWAE, PIWAE
from .lvae import LadderPosterior, LadderVAE
from .rhvae import RHVAE
from .tcvae import BetaTCVAE
from .vae import VAE
from .vampprior import VampPrior
from .vqvae import VQVAE
from .wae import WAE

__all__ = [
           "AE",
           "CIWAE",
           "DIPVAE",
           "HVAE",
           "IRMAE",
           "IWAE",
           "PIWAE",
           "RHVAE",
           "VAE",
           "VQVAE",
           "WAE",
           "BetaTCVAE",
           "Critic",
           "Discriminator",
           "FactorVAE",
           "InfoMaxVAE",
           "InfoVAE",
           "LadderPosterior",
           "LadderVAE",
           "LossOutput",
           "Model",
           "NoPriorSampler",
           "VampPrior",
]
