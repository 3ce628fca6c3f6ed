"""aetk: probability-typed autoencoders, Hamiltonian VAEs and latent geometry in PyTorch."""

__version__ = "0.1.0"

from .aggregate import KLDecomposition, kl_decomposition
from .batches import LocalityBatches
from .build import LIKELIHOODS, MODELS, build_model
from .callbacks import CapacityAnnealing, CyclicalBeta, EarlyStopping
from .checkpoint import CheckpointMismatch
from .decoders import (
    BernoulliDecoder,
    CategoricalDecoder,
    Decoder,
    DeterministicDecoder,
    GaussianDecoder,
    LearnedGaussianDecoder,
    MultinomialDecoder,
    NegativeBinomialDecoder,
    PoissonDecoder,
    RBFVarianceDecoder,
)
from .encoders import DeterministicEncoder, GaussianEncoder
from .expost import CodeMixture
from .io import load, load_history, save
from .marginal import log_marginal
from .models import (
    AE,
    CIWAE,
    DIPVAE,
    HVAE,
    IRMAE,
    IWAE,
    PIWAE,
    RHVAE,
    VAE,
    VQVAE,
    WAE,
    BetaTCVAE,
    FactorVAE,
    InfoMaxVAE,
    InfoVAE,
    LadderVAE,
    LossOutput,
    Model,
    NoPriorSampler,
    VampPrior,
)
from .penalties import DecoderJacobian, Entropy, LatentL2, MinVariance, penalized
from .train import DataScaleWarning, Paired, TrainingDiverged, fit
from .traversal import Traversal, latent_grid, latent_traversal

__all__ = [
    "AE",
    "CIWAE",
    "DIPVAE",
    "HVAE",
    "IRMAE",
    "IWAE",
    "LIKELIHOODS",
    "MODELS",
    "PIWAE",
    "RHVAE",
    "VAE",
    "VQVAE",
    "WAE",
    "BernoulliDecoder",
    "BetaTCVAE",
    "CapacityAnnealing",
    "CategoricalDecoder",
    "CheckpointMismatch",
    "CodeMixture",
    "CyclicalBeta",
    "DataScaleWarning",
    "Decoder",
    "DecoderJacobian",
    "DeterministicDecoder",
    "DeterministicEncoder",
    "EarlyStopping",
    "Entropy",
    "FactorVAE",
    "GaussianDecoder",
    "GaussianEncoder",
    "InfoMaxVAE",
    "InfoVAE",
    "KLDecomposition",
    "LadderVAE",
    "LatentL2",
    "LearnedGaussianDecoder",
    "LocalityBatches",
    "LossOutput",
    "MinVariance",
    "Model",
    "MultinomialDecoder",
    "NegativeBinomialDecoder",
    "NoPriorSampler",
    "Paired",
    "PoissonDecoder",
    "RBFVarianceDecoder",
    "TrainingDiverged",
    "Traversal",
    "VampPrior",
    "__version__",
    "build_model",
    "fit",
    "kl_decomposition",
    "latent_grid",
    "latent_traversal",
    "load",
    "load_history",
    "log_marginal",
    "penalized",
    "save",
]
