"""Latent geometry: metrics (RHVAE, decoder pull-back, user-defined), curve energy and
length, batched geodesics (started from the straight line or from shortest paths in a
neighbourhood graph), distance matrices, interpolation and volume maps; the connection:
Christoffel symbols, exponential and logarithm maps, parallel transport, Frechet means;
curvature: the Riemann, Ricci, scalar and sectional curvatures and a Gaussian-curvature
map; the encoder's metric of any VAE and its Riemannian uniform sampler; calibrated
decoder variance (RBF precision)."""

from .calibrate import calibrate_variance, rbf_centres
from .connection import (
    FrechetMean,
    GeodesicPath,
    LogMapResult,
    christoffel,
    christoffel_contract,
    exp_map,
    frechet_mean,
    geodesic_spray,
    integrate_geodesic,
    log_map,
    parallel_transport,
)
from .curvature import (
    curvature_grid,
    ricci,
    riemann,
    scalar_curvature,
    sectional_curvature,
)
from .curves import NeuralGeodesic, curve_energy, curve_length
from .encoder_metric import EncoderMetric, riemannian_uniform
from .fit import GeodesicResult, distance_matrix, fit_geodesics, interpolate
from .graph import GraphCurves, graph_curves
from .metrics import Metric, PullbackMetric, RHVAEMetric, metric_for, volume_grid

__all__ = [
    "EncoderMetric",
    "FrechetMean",
    "GeodesicPath",
    "GeodesicResult",
    "GraphCurves",
    "LogMapResult",
    "Metric",
    "NeuralGeodesic",
    "PullbackMetric",
    "RHVAEMetric",
    "calibrate_variance",
    "christoffel",
    "christoffel_contract",
    "curvature_grid",
    "curve_energy",
    "curve_length",
    "distance_matrix",
    "exp_map",
    "fit_geodesics",
    "frechet_mean",
    "geodesic_spray",
    "graph_curves",
    "integrate_geodesic",
    "interpolate",
    "log_map",
    "metric_for",
    "parallel_transport",
    "rbf_centres",
    "ricci",
    "riemann",
    "riemannian_uniform",
    "scalar_curvature",
    "sectional_curvature",
    "volume_grid",
]
