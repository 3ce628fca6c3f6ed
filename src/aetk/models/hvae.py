"""Hamiltonian VAE (Caterini, Doucet & Sejdinovic 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .. import flow_adjoint, flow_affine
from ..distributions import log_prob, standard_normal_log_prob
from ..hamiltonian import (
    FlowEnd,
    FlowMonitor,
    Position,
    PositionFn,
    autograd_ready,
    flow_log_weights,
    gaussian_log_prob,
    hamiltonian_elbo,
    leapfrog,
    prefactors,
    tempering,
    value_and_grad,
)
from ..nets import shared_transposes
from .base import LossOutput, Model
from .vae import VAE


def _tensor(module: nn.Module, name: str, value: torch.Tensor, learn: bool) -> None:
    """A parameter when learned, else a buffer: saved under the same name either way."""
    if learn:
        module.register_parameter(name, nn.Parameter(value))
    else:
        module.register_buffer(name, value)


class HVAE(Model):
    """`z_0 ~ q(z|x)`, `rho_0 = gamma_0 / sqrt(beta_0)` with `gamma_0 ~ N(0, I)`, then
    `n_leapfrog` leapfrog steps on `U(z) = -log p(x|z) - log p(z)` (decoder inside U, exact
    autograd), each followed by quadratic tempering (`beta_K = 1`).

    `ELBO = log p(x|z_K) + log p(z_K) + log N(rho_K; 0, I) - log q(z_0|x) - log N(gamma_0; 0, I)`.
    Terms (batch means): `reconstruction = -log p(x|z_K)`, `log_prior = log p(z_K)`,
    `momentum = log N(rho_K; 0, I) - log N(gamma_0; 0, I)`, `entropy = -log q(z_0|x)`;
    `loss = reconstruction - log_prior - momentum - entropy = -ELBO`.

    The training gradient differentiates the force `grad_z log p(x|z)` again: the decoder
    must be twice differentiable (no `@once_differentiable` autograd Function in it: `fit`
    raises a TypeError for one). For a built-in Bernoulli, Gaussian (fixed or learned sigma)
    or Poisson decoder of Linear layers with ReLU, leaky ReLU or tanh, training takes the
    flow's written-out adjoint (`aetk.flow_adjoint`: the same gradients, faster); its loss
    is then differentiable once, not twice. With ReLU or leaky ReLU and a latent space of
    at most 2 dimensions, the rows whose flow stays in z_0's activation region (most) take
    the flow from the decoder's Jacobian at z_0 instead (`aetk.flow_affine`), cheaper still.

    `step_size` is a scalar or one value per latent dimension; `learn_step_size` and
    `learn_beta0` make them trainable (kept positive, and beta_0 in (0, 1)).
    `logp_prefactor` `(a1, a2, a3)` and `logq_prefactor` `(b1, b2)` weigh the ELBO's terms as
    AETK does (`aetk.hamiltonian.hamiltonian_elbo`); the defaults, all ones, give the ELBO.
    """

    point_codes = False

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        n_leapfrog: int = 3,
        step_size: float | Sequence[float] = 1e-3,
        beta0: float = 0.3,
        learn_step_size: bool = False,
        learn_beta0: bool = False,
        logp_prefactor: Sequence[float] = (1.0, 1.0, 1.0),
        logq_prefactor: Sequence[float] = (1.0, 1.0),
    ) -> None:
        super().__init__(encoder, decoder)
        eps = torch.as_tensor(step_size, dtype=torch.float32)
        if eps.dim() > 1 or (eps.dim() == 1 and eps.numel() != self.latent_dim):
            raise ValueError(f"step_size must be a scalar or {self.latent_dim} values")
        if not bool((eps > 0).all()):
            raise ValueError(f"step_size must be positive, got {step_size}")
        if not 0 < beta0 <= 1 or (learn_beta0 and beta0 == 1):
            raise ValueError(f"beta0 must be in (0, 1] (below 1 when learned), got {beta0}")
        if int(n_leapfrog) != n_leapfrog or n_leapfrog < 0 or (n_leapfrog == 0 and beta0 != 1):
            raise ValueError("n_leapfrog must be an integer >= 0, and n_leapfrog=0 needs beta0=1 "
                             "(no tempering Jacobian cancels the initial rescaling)")
        self.n_leapfrog = int(n_leapfrog)
        self.logp_prefactor = prefactors(logp_prefactor, 3, "logp_prefactor")
        self.logq_prefactor = prefactors(logq_prefactor, 2, "logq_prefactor")
        _tensor(self, "log_step_size", eps.log(), learn_step_size)
        _tensor(self, "beta0_logit", torch.logit(torch.tensor(float(beta0))), learn_beta0)

    @property
    def step_size(self) -> torch.Tensor:
        return self.log_step_size.exp()

    @property
    def beta0(self) -> torch.Tensor:
        return torch.sigmoid(self.beta0_logit)

    def position_fn(self, x: torch.Tensor, create_graph: bool) -> PositionFn:
        """z -> U(z), grad U(z) and log p(x|z), with the decoder evaluated at z."""
        x = autograd_ready(x)

        def position(z: torch.Tensor) -> Position:
            log_lik, grad = value_and_grad(lambda z: log_prob(self.decoder(z), x), z,
                                           create_graph)
            return Position(z, -log_lik - standard_normal_log_prob(z), z - grad, log_lik)

        return position

    def flow(self, start: Position, rho0: torch.Tensor, position: PositionFn
             ) -> tuple[Position, torch.Tensor]:
        """The tempered leapfrog flow from `(start, rho0)`: the final position and momentum.
        Raises `FlowDiverged` when it diverges."""
        pos, rho, n = start, rho0, self.n_leapfrog
        eps, beta0 = self.step_size, self.beta0
        monitor = FlowMonitor(eps)
        monitor.point(pos, rho)
        for k in range(1, n + 1):
            pos, rho = leapfrog(pos, rho, eps, position)
            monitor.point(pos, rho)
            rho = rho * tempering(beta0, k, n)
        monitor.check()
        return pos, rho

    def _flow_from(self, z0: torch.Tensor, target: torch.Tensor, create_graph: bool
                   ) -> FlowEnd:
        """From z_0 (rows) and a momentum draw, the flow's end: z_K, `log p(x|z_K)`,
        `log p(z_K)`, `log N(rho_K; 0, I)` and `log N(gamma_0; 0, I)` per row."""
        gamma = torch.randn_like(z0)
        rho0 = gamma * self.beta0**-0.5
        plan = self._adjoint_plan(target) if create_graph else None
        if plan is not None:
            monitor = FlowMonitor(self.step_size)
            flow = (flow_affine.flow if flow_affine.applies(plan, z0.shape[-1])
                    else flow_adjoint.flow)
            z, rho, log_lik = flow(plan, target, z0, rho0, self.step_size, self.beta0,
                                   self.n_leapfrog, monitor)
            monitor.check()
        else:
            position = self.position_fn(target, create_graph)
            with shared_transposes():
                pos, rho = self.flow(position(z0), rho0, position)
            z, log_lik = pos.z, pos.log_lik
        d = z0.shape[-1]
        return FlowEnd(z, log_lik, standard_normal_log_prob(z),
                       gaussian_log_prob((rho * rho).sum(-1), 0.0, d),
                       gaussian_log_prob((gamma * gamma).sum(-1), 0.0, d))

    def _adjoint_plan(self, target: torch.Tensor) -> flow_adjoint.Plan | None:
        """The decoder as an MLP whose flow's adjoint is written out (`aetk.flow_adjoint`),
        where that applies: nothing learned but the networks, no gradient wanted in x, and
        no autocast (whose casts the adjoint's products written in place would not follow)."""
        if (self.log_step_size.requires_grad or self.beta0_logit.requires_grad
                or target.requires_grad or torch.is_autocast_enabled(target.device.type)):
            return None
        return flow_adjoint.plan(self.decoder)

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        q = self.posterior(x)
        z0 = q.rsample()
        # Exact outer gradients need a differentiable force whenever anyone may backpropagate.
        end = self._flow_from(z0, x if target is None else target,
                              create_graph=torch.is_grad_enabled())
        return LossOutput(*hamiltonian_elbo(
            end.log_lik, end.log_prior, end.log_rho, q.log_prob(z0), end.log_gamma,
            self.logp_prefactor, self.logq_prefactor))

    def posterior_sample(self, x: torch.Tensor) -> torch.Tensor:
        """z_K: a draw of `q(z|x)` moved by the tempered flow for x (the model's posterior
        approximation, not the encoder's)."""
        # the flow scores x: data outside the likelihood's support diverged it, blaming
        # the learning rate
        self.check_data(x, "posterior_sample")
        return self._flow_from(self.posterior(x).rsample(), x, torch.is_grad_enabled()).z

    def importance_log_weights(self, q, target: torch.Tensor, n: int) -> torch.Tensor:
        """The flow's importance weights: `z_0 ~ q(z|x)` and the momentum, then the flow
        (volume-preserving, its tempering Jacobian cancelled by the initial rescaling)."""
        return flow_log_weights(self._flow_from, q, target, n)

    sample = VAE.sample  # the generative model is the VAE's: z ~ N(0, I), x ~ p(x|z)
