"""Riemannian Hamiltonian VAE (Chadebec, Mantoux & Allassonnière 2020)."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .. import validate
from ..centroids import METHODS, select_centroids
from ..distributions import generate, log_prob, standard_normal_log_prob
from ..hamiltonian import (
    CentroidMetric,
    FlowEnd,
    FlowMonitor,
    Position,
    PositionFn,
    autograd_ready,
    flow_log_weights,
    gaussian_log_prob,
    generalized_leapfrog,
    hamiltonian_elbo,
    hmc,
    prefactors,
    tempering,
    value_and_grad,
)
from ..nets import MaskingNoise, clean_inputs, evaluating, shared_transposes
from .base import LossOutput, Model

LOG_DIAG_BOUND = 2.0
"""The log-diagonal of L, and the log-magnitude of its lower entries, are softly bounded by
this (`b tanh(v / b)`): entries of L stay within e^2 ~ 7.4, so `|M_i| <= tr(M_i) <= 55
d(d+1)/2`. The cap matters: a large G^{-1} amplifies the flow's steps, which the ELBO
rewards, so the metric grows to the cap with stiff likelihoods (categorical, learned-variance
Gaussian). On MNIST at the default step size, a cap of e^6 made the categorical RHVAE
diverge in its first epoch and e^3 the learned-variance Gaussian one in its third.
"""

_CENTROID_BUFFERS = ("centroid_data", "centroid_latent", "centroid_M", "centroid_conditions")


def metric_net_like(encoder: nn.Module, latent_dim: int) -> nn.Module:
    """A freshly initialised copy of the encoder's network whose last linear layer outputs
    the `d(d+1)/2` entries of L (diagonal logs, then the strictly-lower entries row-major)."""
    network = getattr(encoder, "network", None)
    n_out = latent_dim * (latent_dim + 1) // 2
    if not isinstance(network, nn.Module):  # a user's encoder: nothing known to copy
        raise ValueError(f"the RHVAE copies its metric network from the encoder's `network`, "
                         f"which this {type(encoder).__name__} does not have: give metric_net, "
                         f"a network from x to d(d+1)/2 = {n_out} outputs (log diagonal of L, "
                         "then its strictly-lower entries row-major)")
    net = copy.deepcopy(network)
    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears or linears[-1][1].out_features != 2 * latent_dim:
        raise ValueError("cannot derive a metric network from this encoder: give metric_net, "
                         f"a network from x to d(d+1)/2 = {n_out} outputs")
    for m in net.modules():
        if m is not net and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    for name, m in list(net.named_modules()):  # a denoising encoder's: M_i from clean x_i
        if isinstance(m, MaskingNoise):
            parent, _, attr = name.rpartition(".")
            setattr(net.get_submodule(parent), attr, nn.Identity())
    name, last = linears[-1]
    parent, _, attr = name.rpartition(".")
    head = nn.Linear(last.in_features, n_out,
                     dtype=last.weight.dtype, device=last.weight.device)
    if not name:  # the network is that one linear layer: the head replaces it (setattr of
        return head  # the name "" left the encoder's 2 d outputs in place)
    setattr(net.get_submodule(parent), attr, head)
    return net


class RHVAE(Model):
    """A VAE whose posterior sample is moved by `n_leapfrog` tempered generalised leapfrog
    steps of `H(z, rho) = -log p(x|z) - log p(z) + 1/2 log det G(z) + 1/2 rho^T G^{-1}(z) rho`,
    with the learned metric `G^{-1}(z) = a sum_i M_i exp(-|z - c_i|^2 / T^2) + lambda I`.

    `M_i = L(x_i) L(x_i)^T` (`metric_net` on the centroid data points `x_i`) and
    `c_i = mu(x_i)` are recomputed from the current networks in every loss (differentiable)
    and frozen into buffers by `update_metric()` (called by `fit` after every epoch), so the
    trained metric `G`, `G_inv`, `log_det_G` is a closed-form function of z.

    `ELBO = log p(x|z_K) + log p(z_K) + log N(rho_K; 0, G(z_K)) - log q(z_0|x)
    - log N(gamma_0; 0, G(z_0))`, `gamma_0 ~ N(0, G(z_0))` reparameterised,
    `rho_0 = gamma_0 / sqrt(beta_0)`. Terms as in `HVAE` (`momentum` with these densities);
    `loss = reconstruction - log_prior - momentum - entropy`.

    `centroids`: training points (a tensor, array or DataFrame of rows), or how many to
    choose from the training data (`centroid_method`, see `aetk.centroids`) when `fit`
    starts. `centroid_reduction`: `"mean"` (`a = 1/N`, AETK) or `"sum"` (`a = 1`, the
    paper). `float64_metric` runs the `d x d` algebra in float64. `logp_prefactor`,
    `logq_prefactor`: as in `HVAE`.

    A conditional RHVAE (networks with `n_conditions`) keeps each centroid's conditions
    (`centroid_conditions`, given with tensor `centroids`, else taken with the points when
    `fit` starts) and evaluates `mu` and `L` there with them, so that its metric, like the
    latent space, is shared by all conditions.
    """

    point_codes = False

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        metric_net: nn.Module | None = None,
        centroids: torch.Tensor | int = 64,
        temperature: float = 0.8,
        regularization: float = 0.01,
        n_leapfrog: int = 3,
        step_size: float = 1e-3,
        beta0: float = 0.3,
        n_fixed_point: int = 3,
        centroid_reduction: str = "mean",
        centroid_method: str = "kmeans",
        float64_metric: bool = True,
        logp_prefactor: Sequence[float] = (1.0, 1.0, 1.0),
        logq_prefactor: Sequence[float] = (1.0, 1.0),
        centroid_conditions: torch.Tensor | None = None,
    ) -> None:
        super().__init__(encoder, decoder)
        if centroid_reduction not in ("mean", "sum"):
            raise ValueError(f"centroid_reduction must be 'mean' or 'sum', got "
                             f"{centroid_reduction!r}")
        if centroid_method not in METHODS:
            raise ValueError(f"centroid_method must be one of {', '.join(METHODS)}, got "
                             f"{centroid_method!r}")
        for name, value in (("temperature", temperature), ("regularization", regularization),
                            ("step_size", step_size)):
            # NaN passed a `<= 0` test and surfaced in training as a diverged flow or
            # "non-finite encoder samples"; a list of step sizes as a TypeError
            if not (isinstance(value, numbers.Real) and 0 < value < math.inf):
                one = " (one for all latent dimensions)" if name == "step_size" else ""
                raise ValueError(f"{name} must be a positive finite number{one}, got {value!r}")
        if not 0 < beta0 <= 1 or n_leapfrog < 0 or (n_leapfrog == 0 and beta0 != 1):
            raise ValueError("beta0 must be in (0, 1], n_leapfrog >= 0, and n_leapfrog=0 "
                             "needs beta0=1")
        validate.positive_int(n_fixed_point, "n_fixed_point")
        if int(n_leapfrog) != n_leapfrog:
            raise ValueError(f"n_leapfrog must be an integer, got {n_leapfrog}")
        d = self.latent_dim
        self.metric_net = metric_net if metric_net is not None else metric_net_like(encoder, d)
        self.temperature, self.regularization = float(temperature), float(regularization)
        self.n_leapfrog, self.n_fixed_point = int(n_leapfrog), int(n_fixed_point)
        self.step_size, self.beta0 = float(step_size), float(beta0)
        self.centroid_reduction, self.centroid_method = centroid_reduction, centroid_method
        self.float64_metric = bool(float64_metric)
        self.logp_prefactor = prefactors(logp_prefactor, 3, "logp_prefactor")
        self.logq_prefactor = prefactors(logq_prefactor, 2, "logq_prefactor")

        # the networks' dtype: a float64 model keeps float64 centroids (float32 ones failed
        # in update_metric with 'mat1 and mat2 must have the same dtype')
        param = self._first_parameter()
        dtype = torch.get_default_dtype() if param is None else param.dtype
        # points: a tensor, array, DataFrame or nested list of them (an array failed with
        # numpy's "only 0-dimensional arrays can be converted", points of the wrong shape
        # with a matrix product's error in update_metric, NaN points made a NaN metric)
        given = not isinstance(centroids, numbers.Number)
        if given:
            try:
                data = validate.as_rows(validate.as_tensor(centroids, dtype),
                                        self.input_shape).detach().clone()
            except (TypeError, ValueError):
                raise ValueError(f"centroids must be training points (a tensor or array of "
                                 f"rows) or an integer, got {centroids!r}") from None
            validate.check_finite(data, "centroids", self.input_shape)
        elif isinstance(centroids, bool) or int(centroids) != centroids:
            raise ValueError(f"centroids must be a tensor of points or an integer, got "
                             f"{centroids!r}")
        n = len(data) if given else int(centroids)
        if n < 1:
            raise ValueError(f"need at least one centroid, got {n}")
        if not given:
            data = torch.zeros(n, *(self.input_shape or (0,)), dtype=dtype)
        self.register_buffer("centroid_data", data)
        self.register_buffer("centroid_latent", torch.zeros(n, d, dtype=dtype))
        self.register_buffer("centroid_M", torch.zeros(n, d, d, dtype=dtype))
        self.register_buffer("has_centroids", torch.tensor(given))
        if self.n_conditions:
            if given and centroid_conditions is None:
                raise ValueError("a conditional RHVAE with centroid points needs their "
                                 "centroid_conditions, (n, n_conditions)")
            conditions = (torch.as_tensor(centroid_conditions).detach().to(dtype).clone()
                          if given else torch.zeros(n, self.n_conditions, dtype=dtype))
            validate.check_conditions(conditions, self.n_conditions, "centroid_conditions", n)
            self.register_buffer("centroid_conditions", conditions)
        elif centroid_conditions is not None:
            raise ValueError("centroid_conditions are for a conditional RHVAE")
        if given:
            self.update_metric()

    # The metric -----------------------------------------------------------------------

    def lower_factor(self, x: torch.Tensor) -> torch.Tensor:
        """L(x), `(n, d, d)` lower triangular with a positive diagonal, from `metric_net`."""
        d = self.latent_dim
        out = self.metric_net(x)
        if out.shape[-1] != d * (d + 1) // 2:
            raise ValueError(f"metric_net must output d(d+1)/2 = {d * (d + 1) // 2} values "
                             f"per point, got {out.shape[-1]}")
        b = LOG_DIAG_BOUND
        diag = torch.exp(b * torch.tanh(out[:, :d] / b))
        rows, cols = torch.tril_indices(d, d, -1, device=out.device)
        lower = out.new_zeros(out.shape[0], d, d)
        lower[:, rows, cols] = math.exp(b) * torch.tanh(out[:, d:] * math.exp(-b))
        return torch.diag_embed(diag) + lower

    def _metric(self, c: torch.Tensor, M: torch.Tensor) -> CentroidMetric:
        scale = 1.0 / len(c) if self.centroid_reduction == "mean" else 1.0
        return CentroidMetric(c, M, self.temperature, self.regularization, scale,
                              self.float64_metric)

    def _require_centroids(self) -> None:
        if not bool(self.has_centroids):
            raise RuntimeError("the RHVAE has no centroids yet: train it with aetk.fit "
                               "or give centroids=<tensor of training points>")

    def _at_centroids(self) -> Any:
        """The centroids' own conditions for the block (a conditional RHVAE)."""
        return (self.given(self.centroid_conditions) if self.n_conditions
                else contextlib.nullcontext())

    def live_metric(self) -> CentroidMetric:
        """The metric from the current networks, differentiable in their parameters."""
        self._require_centroids()
        with self._at_centroids(), clean_inputs(self):  # the metric of the clean centroids
            L = self.lower_factor(self.centroid_data)
            c = self.latent_mean(self.centroid_data)
        return self._metric(c, L @ L.mT)

    def frozen_metric(self) -> CentroidMetric:
        """The metric from the buffers set by `update_metric()`."""
        self._require_centroids()
        return self._metric(self.centroid_latent, self.centroid_M)

    @torch.no_grad()
    def update_metric(self) -> None:
        """Freeze `c_i = mu(x_i)` and `M_i = L(x_i) L(x_i)^T` from the current networks."""
        self._require_centroids()
        with evaluating(self), self._at_centroids():
            L = self.lower_factor(self.centroid_data)
            self.centroid_latent.copy_(self.latent_mean(self.centroid_data))
        self.centroid_M.copy_(L @ L.mT)

    def G_inv(self, z: Any) -> torch.Tensor:
        """`G^{-1}(z)`, `(..., d, d)` for points `z (..., d)`, of the frozen metric."""
        return self._on_points(z, self.frozen_metric().inverse)

    def G(self, z: Any) -> torch.Tensor:
        """`G(z)`, `(..., d, d)` for points `z (..., d)`, of the frozen metric."""
        return self._on_points(z, self.frozen_metric().metric)

    def log_det_G(self, z: Any) -> torch.Tensor:
        """`log det G(z)`, `(...)` for points `z (..., d)`, of the frozen metric."""
        return self._on_points(z, lambda rows: self.frozen_metric().at(rows).log_det_G)

    def _on_points(self, z: Any, evaluate: Callable[[torch.Tensor], torch.Tensor]
                   ) -> torch.Tensor:
        """`evaluate` (of rows `(N, d)`) at the points `z (..., d)`, a tensor or an array
        cast to the metric's dtype and device as `geometry.metric_for` does, its result
        with z's leading shape (a single point: none)."""
        ref = self._buffers["centroid_latent"]  # the metric's dtype and device, directly:
        # geometry calls these methods in its loops, where as_input's module walk shows
        if not (isinstance(z, torch.Tensor) and z.dtype == ref.dtype
                and z.device == ref.device):
            z = validate.as_tensor(z, ref.dtype, ref.device)
        d = self.latent_dim
        if z.dim() == 0 or z.shape[-1] != d:
            raise ValueError(f"latent points must have the latent dimension, {d}, as their "
                             f"last axis: got shape {tuple(z.shape)}")
        if z.dim() == 2:  # rows already (geometry's calls): no reshapes
            return evaluate(z)
        out = evaluate(z.reshape(-1, d))
        return out.reshape(z.shape[:-1] + out.shape[1:])

    # The flow and the ELBO -------------------------------------------------------------

    def position_fn(self, x: torch.Tensor, metric: CentroidMetric, create_graph: bool
                    ) -> PositionFn:
        """z -> `U(z) = -log p(x|z) - log p(z) + 1/2 log det G(z)` and its gradient: the
        decoder by autograd, the metric in closed form."""
        x = autograd_ready(x)

        def position(z: torch.Tensor) -> Position:
            log_lik, grad = value_and_grad(lambda z: log_prob(self.decoder(z), x), z,
                                           create_graph)
            m = metric.at(z)
            U = -log_lik - standard_normal_log_prob(z) + 0.5 * m.log_det_G
            return Position(z, U, z - grad + metric.force(z, m.weights, m.G), log_lik, m)

        return position

    def flow(self, start: Position, rho0: torch.Tensor, metric: CentroidMetric,
             position: PositionFn) -> tuple[Position, torch.Tensor]:
        """The tempered generalised leapfrog flow: the final position and momentum.
        Raises `FlowDiverged` when it diverges."""
        pos, rho, n = start, rho0, self.n_leapfrog
        monitor = FlowMonitor(self.step_size)
        monitor.point(pos, rho)
        for k in range(1, n + 1):
            pos, rho, _, moved = generalized_leapfrog(pos, rho, self.step_size,
                                                      self.n_fixed_point, metric, position)
            monitor.point(pos, rho, moved)
            rho = rho * tempering(self.beta0, k, n)
        monitor.check()
        return pos, rho

    def _flow_from(self, z0: torch.Tensor, target: torch.Tensor, metric: CentroidMetric,
                   create_graph: bool) -> FlowEnd:
        """From z_0 (rows) and a momentum draw, the flow's end: z_K, `log p(x|z_K)`,
        `log p(z_K)`, `log N(rho_K; 0, G(z_K))` and `log N(gamma_0; 0, G(z_0))` per row."""
        position = self.position_fn(target, metric, create_graph)
        with shared_transposes():
            start = position(z0)
            # gamma_0 = L^{-T} eps ~ N(0, G(z_0)) for G^{-1} = L L^T: a solve, no inverse.
            eps = torch.randn_like(z0)
            gamma = torch.linalg.solve_triangular(start.metric.chol.mT, eps.unsqueeze(-1),
                                                  upper=True).squeeze(-1)
            pos, rho = self.flow(start, gamma / math.sqrt(self.beta0), metric, position)
        d = z0.shape[-1]
        return FlowEnd(pos.z, pos.log_lik, standard_normal_log_prob(pos.z),
                       gaussian_log_prob(2 * metric.kinetic(pos, rho), pos.metric.log_det_G, d),
                       gaussian_log_prob((eps * eps).sum(-1), start.metric.log_det_G, d))

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        metric = self.live_metric()
        q = self.posterior(x)
        z0 = q.rsample()
        # Exact outer gradients need a differentiable force whenever anyone may backpropagate.
        end = self._flow_from(z0, x if target is None else target, metric,
                              create_graph=torch.is_grad_enabled())
        return LossOutput(*hamiltonian_elbo(
            end.log_lik, end.log_prior, end.log_rho, q.log_prob(z0), end.log_gamma,
            self.logp_prefactor, self.logq_prefactor))

    def posterior_sample(self, x: torch.Tensor) -> torch.Tensor:
        """z_K: a draw of `q(z|x)` moved by the flow for x under the frozen metric (the
        model's posterior approximation, not the encoder's)."""
        self.check_data(x, "posterior_sample")  # as the HVAE's
        return self._flow_from(self.posterior(x).rsample(), x, self.frozen_metric(),
                               torch.is_grad_enabled()).z

    def importance_log_weights(self, q, target: torch.Tensor, n: int) -> torch.Tensor:
        """The flow's importance weights under the frozen metric: `z_0 ~ q(z|x)`, the
        momentum, then the generalised leapfrog flow (volume-preserving up to the residual
        of its `n_fixed_point` iterations)."""
        metric = self.frozen_metric()
        return flow_log_weights(lambda z0, rows, create_graph: self._flow_from(
            z0, rows, metric, create_graph), q, target, n)

    # Training hooks ----------------------------------------------------------------------

    def on_fit_start(self, train: torch.Tensor, n_train: int | None = None) -> None:
        """Choose the centroids from the training data (unless given), then freeze."""
        if not bool(self.has_centroids):
            seed = int(torch.randint(2**31 - 1, ()))  # fit seeds torch: reproducible choice
            idx = select_centroids(train, len(self.centroid_data), self.centroid_method, seed)
            self.centroid_data = train[idx.to(train.device)].to(self.centroid_data.dtype)
            if self.n_conditions:  # fit sets the training set's conditions for this hook
                self.centroid_conditions = self.conditions()[idx.to(train.device)].to(
                    self.centroid_conditions.dtype)
            self.has_centroids.fill_(True)
        self.update_metric()

    def on_epoch_end(self, epoch: int) -> None:
        self.update_metric()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Centroid buffers take the saved shapes (e.g. data shape unknown at construction).
        for name in _CENTROID_BUFFERS:
            saved, current = state_dict.get(prefix + name), getattr(self, name, None)
            if saved is not None and current is not None and saved.shape != current.shape:
                setattr(self, name, current.new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # Generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def sample_latent(self, n: int, *, n_steps: int = 100, n_leapfrog: int = 15,
                      step_size: float = 0.03) -> torch.Tensor:
        """`n` latent points by HMC on the density proportional to `sqrt(det G^{-1}(z))`
        (Chadebec's RHVAE sampler, the spec's "Riemannian HMC": Riemannian in its target,
        the metric's inverse volume; its momenta have identity mass, as in pythae's), each
        chain started at a random centroid. That density is not normalisable (the constant
        `lambda^{d/2}` far from the centroids): longer chains drift outwards
        (docs/geometry.md, section 5)."""
        metric = self.frozen_metric()
        start = metric.c[torch.randint(len(metric.c), (n,), device=metric.c.device)]

        def position(z: torch.Tensor) -> Position:
            m = metric.at(z)  # U = -log sqrt(det G^{-1}) = 1/2 log det G
            return Position(z, 0.5 * m.log_det_G, metric.force(z, m.weights, m.G))

        return hmc(position(start), position, n_steps, n_leapfrog, step_size)

    @torch.no_grad()
    def sample(self, n: int, *, mean_only: bool = True,
               total_count: torch.Tensor | float | None = None, **hmc_options) -> torch.Tensor:
        """`n` new data points decoded from `sample_latent(n, **hmc_options)`: the decoder's
        point prediction, or a draw from p(x|z) with `mean_only=False`; a multinomial
        decoder's at the totals `total_count`, one per sample or one for all."""
        n = validate.positive_int(n, "n")
        p = self.decoder(self.sample_latent(n, **hmc_options))
        return generate(p, mean_only, total_count)
