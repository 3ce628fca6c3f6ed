"""Latent geometry: metrics (RHVAE, decoder pull-back, user-defined), curve energy and
length, batched geodesics, distance matrices, interpolation and volume maps."""

from .curves import NeuralGeodesic, curve_energy, curve_length
from .fit import GeodesicResult, distance_matrix, fit_geodesics, interpolate
from .metrics import Metric, PullbackMetric, RHVAEMetric, metric_for, volume_grid

__all__ = [
    "GeodesicResult",
    "Metric",
    "NeuralGeodesic",
    "PullbackMetric",
    "RHVAEMetric",
    "curve_energy",
    "curve_length",
    "distance_matrix",
    "fit_geodesics",
    "interpolate",
    "metric_for",
    "volume_grid",
]
