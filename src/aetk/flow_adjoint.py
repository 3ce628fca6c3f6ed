"""The HVAE's tempered leapfrog flow through an MLP decoder, with its adjoint written out.

Exact training gradients differentiate the force `grad_z log p(x|z)` again. Autograd does
it by a double backward at each of the K+1 positions: per layer and position, two weight
gradients of B rows each (the forward's and the force's), summed one by one. The adjoint
here runs the same products through the layers, but writes the factors of all positions'
and both paths' weight gradients into one block of 2B(K+1) rows per layer (`_Rows`), summed
by one product, and keeps no autograd graph of the flow. Same gradients (to rounding:
tests/test_flow_adjoint.py). An HVAE training step in bench/vs_pythae.py's setting (decoder
d-512-784, batch 64, K=3, one thread) took 20.1 ms against 22.9 ms through autograd at
latent 2, 22.2 against 25.9 ms at latent 10 (6 alternating epochs, 2026-12-04); its adjoint
took 9.6 ms, the time of its GEMMs.

It applies where the decoder is a built-in Bernoulli, Gaussian (fixed or learned sigma)
or Poisson decoder whose network is a plain MLP (`nets.mlp`: Linear layers with ReLU,
leaky ReLU or tanh between them): `plan` says so, and HVAE then calls `flow` unless the
step size or beta_0 is learned or autocast is on. Anything else (user-made decoders and
networks, conditional networks, hooks, other likelihoods) takes the autograd flow, which
gives the same numbers more slowly. The loss is then differentiable once: the adjoint is
`once_differentiable`. For ReLU networks and latent spaces of at most 2 dimensions, HVAE
takes `aetk.flow_affine` first, which hands here only the rows whose flow leaves z_0's
activation region.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .decoders import (
    LOG_SIGMA_RANGE,
    RATE_FLOOR,
    BernoulliDecoder,
    GaussianDecoder,
    LearnedGaussianDecoder,
    PoissonDecoder,
)
from .hamiltonian import FlowMonitor, tempering
from .nets import Linear, narrow


class Activation(NamedTuple):
    """`apply_(p)` turns the pre-activation p into `h = f(p)` in place and returns what
    the derivatives need besides h (None: h alone); `times_d1(g, h, kept, out)` writes
    `g f'(p)` into `out`; `d2(h, kept)` is `f''(p)`, None where that is 0 almost
    everywhere; `slope` is `f'` below 0 where f is linear on either side of 0 (`f(p) = p`
    above), else None."""

    apply_: Callable[[Tensor], Tensor | None]
    times_d1: Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor]
    d2: Callable[[Tensor, Tensor | None], Tensor] | None
    slope: float | None


def _times(g: Tensor, h: Tensor, d1: Tensor | None, out: Tensor) -> Tensor:
    return torch.mul(g, d1, out=out)


def _relu_d1(g: Tensor, h: Tensor, _: None, out: Tensor) -> Tensor:
    """`g [h > 0]` in one pass, no mask kept."""
    return torch.ops.aten.threshold_backward.grad_input(g, h, 0.0, grad_input=out)


def _leaky_(p: Tensor, slope: float) -> Tensor:
    d1 = torch.full_like(p, slope).masked_fill_(p > 0, 1.0)
    p.mul_(d1)
    return d1


def _relu_(p: Tensor) -> None:
    p.relu_()


def _tanh_(p: Tensor) -> Tensor:
    h = p.tanh_()
    return 1 - h * h


def _activation(module: nn.Module) -> Activation | None:
    if type(module) is nn.ReLU:
        return Activation(_relu_, _relu_d1, None, 0.0)
    if type(module) is nn.LeakyReLU:
        slope = float(module.negative_slope)
        return Activation(lambda p: _leaky_(p, slope), _times, None, slope)
    if type(module) is nn.Tanh:
        return Activation(_tanh_, _times, lambda h, d1: -2 * h * d1, None)
    return None


class Likelihood(NamedTuple):
    """`value(eta, x)`, `log p(x|eta)` of the network output eta per row;
    `residual(eta, x, out)` writes its gradient in eta into `out` and returns what its
    curvature needs; `times_curvature(a, kept, out)` writes `a` times its elementwise
    second derivative into `out`."""

    value: Callable[[Tensor, Tensor], Tensor]
    residual: Callable[[Tensor, Tensor, Tensor], Tensor | None]
    times_curvature: Callable[[Tensor, Tensor | None, Tensor], Tensor]


def _bernoulli() -> Likelihood:
    def residual(eta: Tensor, x: Tensor, out: Tensor) -> Tensor:
        s = torch.sigmoid(eta)
        torch.sub(x, s, out=out)
        return s

    def times_curvature(a: Tensor, s: Tensor, out: Tensor) -> Tensor:  # -s(1-s) a
        return torch.ops.aten.sigmoid_backward.grad_input(a, s, grad_input=out).neg_()

    return Likelihood(lambda eta, x: (x * eta - F.softplus(eta)).sum(-1), residual,
                      times_curvature)


def _gaussian(sigma: float) -> Likelihood:
    inv_var, const = sigma**-2, math.log(sigma) + 0.5 * math.log(2 * math.pi)

    def residual(eta: Tensor, x: Tensor, out: Tensor) -> None:
        torch.sub(x, eta, out=out).mul_(inv_var)

    return Likelihood(
        lambda eta, x: -0.5 * inv_var * (x - eta).square().sum(-1) - const * eta.shape[-1],
        residual, lambda a, _, out: torch.mul(a, -inv_var, out=out))


def _poisson() -> Likelihood:
    """Rate `softplus(eta) + RATE_FLOOR` (`PoissonDecoder`): the residual
    `(x / rate - 1) sigmoid(eta)`, its derivative kept from the forward."""

    def residual(eta: Tensor, x: Tensor, out: Tensor) -> Tensor:
        s, rate = torch.sigmoid(eta), F.softplus(eta) + RATE_FLOOR
        excess = x / rate - 1
        torch.mul(excess, s, out=out)
        return s * (excess * (1 - s) - (excess + 1) * s / rate)

    def value(eta: Tensor, x: Tensor) -> Tensor:
        rate = F.softplus(eta) + RATE_FLOOR
        return (torch.xlogy(x, rate) - rate - torch.lgamma(x + 1)).sum(-1)

    return Likelihood(value, residual, lambda a, c, out: torch.mul(a, c, out=out))


def _learned_gaussian() -> Likelihood:
    """eta = (mu, log sigma) (`LearnedGaussianDecoder`, log sigma clamped to
    `LOG_SIGMA_RANGE`): the residual in both blocks and its 2x2 curvature per value."""
    lo, hi = LOG_SIGMA_RANGE

    def parts(eta: Tensor, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        mu, log_sigma = eta.chunk(2, dim=-1)
        inside = (log_sigma >= lo) & (log_sigma <= hi)  # where the clamp passes gradients
        s = log_sigma.clamp(lo, hi)
        return x - mu, torch.exp(-2 * s), s, inside

    def residual(eta: Tensor, x: Tensor, out: Tensor) -> Tensor:
        diff, inv_var, _, inside = parts(eta, x)
        u = diff * inv_var  # d/dmu
        d_mu, d_log_sigma = out.chunk(2, dim=-1)
        d_mu.copy_(u)
        torch.mul(diff * u - 1, inside, out=d_log_sigma)
        # d2/dmu2 = -1/sigma^2, d2/dmu dlog sigma = -2u, d2/dlog sigma2 = -2 diff u
        return torch.stack([-inv_var, -2 * u * inside, -2 * diff * u * inside])

    def times_curvature(a: Tensor, c: Tensor, out: Tensor) -> Tensor:
        a_mu, a_log_sigma = a.chunk(2, dim=-1)
        o_mu, o_log_sigma = out.chunk(2, dim=-1)
        torch.addcmul(c[0] * a_mu, c[1], a_log_sigma, out=o_mu)
        torch.addcmul(c[1] * a_mu, c[2], a_log_sigma, out=o_log_sigma)
        return out

    def value(eta: Tensor, x: Tensor) -> Tensor:
        diff, inv_var, s, _ = parts(eta, x)
        return (-0.5 * diff.square() * inv_var - s).sum(-1) - 0.5 * math.log(
            2 * math.pi) * x.shape[-1]

    return Likelihood(value, residual, times_curvature)


class Plan(NamedTuple):
    """A decoder read as an MLP: its Linear layers, the activations between them, and the
    likelihood of its output."""

    layers: list[nn.Linear]
    activations: list[Activation]
    likelihood: Likelihood


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or getattr(module, "_backward_pre_hooks", None))


def plan(decoder: nn.Module) -> Plan | None:
    """The decoder as a `Plan`, or None where `flow` does not apply to it."""
    if type(decoder) is BernoulliDecoder:
        likelihood = _bernoulli()
    elif type(decoder) is GaussianDecoder:
        likelihood = _gaussian(decoder.sigma)
    elif type(decoder) is PoissonDecoder:
        likelihood = _poisson()
    elif type(decoder) is LearnedGaussianDecoder:
        likelihood = _learned_gaussian()
    else:
        return None
    net = decoder.network
    if type(net) is not nn.Sequential or len(decoder.event_shape) != 1 or any(
            _hooked(m) for m in (decoder, *net.modules())):
        return None
    layers, activations = list(net)[0::2], [_activation(m) for m in list(net)[1::2]]
    if (len(layers) != len(activations) + 1 or None in activations
            or not all(type(lin) in (nn.Linear, Linear) and lin.bias is not None
                       for lin in layers)):
        return None
    return Plan(layers, activations, likelihood)


def flow(plan: Plan, x: Tensor, z0: Tensor, rho0: Tensor, step_size: Tensor, beta0: Tensor,
         n_leapfrog: int, monitor: FlowMonitor) -> tuple[Tensor, Tensor, Tensor]:
    """The HVAE flow from `(z0, rho0)` on `U(z) = -log p(x|z) - log p(z)`: `z_K`, `rho_K`
    (after the last tempering) and `log p(x|z_K)`, differentiable in z0 and the decoder's
    parameters (not in x, rho0, the step size or beta0). Records each point in `monitor`."""
    params = [t for lin in plan.layers for t in (lin.weight, lin.bias)]
    spec = (plan, x.reshape(len(x), -1), rho0, step_size, beta0, n_leapfrog, monitor)
    return _Flow.apply(spec, z0, *params)


class _Weights(NamedTuple):
    """The Linear layers' weights `(out, in)`, biases, and the two layouts of the products:
    `wt[j]` for `x @ W^T` and `back[j]` for `g @ W`. For a narrow layer on the CPU both come
    from one contiguous transpose (as in `nets.Linear`): MKL took 39 us for `g @ W` of a
    (512, 2) weight at batch 64, 9 us from the transposed copy (one thread, 2026-12-04)."""

    w: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    wt: list[Tensor]
    back: list[Tensor]


def _weights(params: tuple[Tensor, ...]) -> _Weights:
    w, b = params[0::2], params[1::2]
    wt = [v.t().contiguous() if narrow(v) else v.t() for v in w]
    return _Weights(w, b, wt, [t.t() if narrow(v) else v for v, t in zip(w, wt, strict=True)])


class _Rows:
    """Each layer's weight-gradient factors, `left (R, out)` and `right (R, in)` with
    `R = 2 B (K+1)`, so that `left^T right` sums all positions' and both paths' products
    at once. Rows `[kB, (k+1)B)` are the force's at position k (its output gradient, left,
    and the adjoint of its input gradient, right); rows `[(K+1+k)B, (K+2+k)B)` the
    network's (the adjoint of its output, left, and its input, right). The forward writes
    its rows in place as it computes them, the adjoint the others."""

    def __init__(self, widths: list[int], B: int, K: int, like: Tensor) -> None:
        n = 2 * B * (K + 1)
        self.B, self.K = B, K
        self.left = [like.new_empty(n, w) for w in widths[1:]]
        self.right = [like.new_empty(n, w) for w in widths[:-1]]

    def force(self, k: int) -> slice:
        return slice(k * self.B, (k + 1) * self.B)

    def network(self, k: int) -> slice:
        return slice((self.K + 1 + k) * self.B, (self.K + 2 + k) * self.B)


class _At(NamedTuple):
    """What the adjoint needs of the decoder and its force at one position: what each
    activation's derivatives need (`Activation.apply_`), the force chain's gradients at
    each activation's output before `f'` where `f''` is not 0, and the likelihood's."""

    kept: list[Tensor | None]
    outer: list[Tensor | None]
    aux: Tensor | None


def _position(plan: Plan, net: _Weights, x: Tensor, z: Tensor, rows: _Rows, k: int
              ) -> tuple[_At, Tensor, Tensor]:
    """The decoder at z and the force `grad_z log p(x|z)` back through it, writing their
    factors into `rows`: what the adjoint keeps, the network output, the force."""
    kept, outer = [], []
    net_k, force_k = rows.network(k), rows.force(k)
    h = rows.right[0][net_k].copy_(z)
    for j, act in enumerate(plan.activations):
        h = torch.addmm(net.b[j], h, net.wt[j], out=rows.right[j + 1][net_k])
        kept.append(act.apply_(h))
    eta = torch.addmm(net.b[-1], h, net.wt[-1])
    aux = plan.likelihood.residual(eta, x, rows.left[-1][force_k])
    g = rows.left[-1][force_k]
    for j in range(len(plan.layers) - 1, 0, -1):
        back = g @ net.back[j]
        act = plan.activations[j - 1]
        outer.append(None if act.d2 is None else back)
        g = act.times_d1(back, rows.right[j][net_k], kept[j - 1], rows.left[j - 1][force_k])
    return _At(kept, outer[::-1], aux), eta, g @ net.back[0]


def _adjoint_at(plan: Plan, net: _Weights, at: _At, rows: _Rows, k: int, a_force: Tensor,
                a_eta: Tensor | None, bias_grads: list[Tensor]) -> Tensor:
    """Back through position k, given the adjoints of its force and (at z_K) of its
    output: the adjoint of z. Writes its weight-gradient factors into `rows` and adds to
    `bias_grads`."""
    L, net_k, force_k = len(plan.layers), rows.network(k), rows.force(k)
    a_out: list[Tensor | None] = [None] * L  # second-order parts of the pre-activations'
    a_delta = rows.right[0][force_k].copy_(a_force)
    for j in range(L - 1):  # the force chain, from z outwards
        a_grad = a_delta @ net.wt[j]
        act, h = plan.activations[j], rows.right[j + 1][net_k]
        a_delta = act.times_d1(a_grad, h, at.kept[j], rows.right[j + 1][force_k])
        if act.d2 is not None:
            a_out[j] = a_grad * at.outer[j] * act.d2(h, at.kept[j])
    a = plan.likelihood.times_curvature(a_delta @ net.wt[-1], at.aux, rows.left[-1][net_k])
    if a_eta is not None:
        a.add_(a_eta)
    for j in range(L - 1, 0, -1):  # the network, from its output back to z
        bias_grads[j] += a.sum(0)
        act = plan.activations[j - 1]
        a = act.times_d1(a @ net.back[j], rows.right[j][net_k], at.kept[j - 1],
                         rows.left[j - 1][net_k])
        if a_out[j - 1] is not None:
            a.add_(a_out[j - 1])
    bias_grads[0] += a.sum(0)
    return a @ net.back[0]


def _weight_grad(left: Tensor, right: Tensor, w: Tensor) -> Tensor:
    """`left^T right`, the gradient of weight w; for a narrow layer as the transpose of
    `right^T left` (MKL: 0.36 against 0.05 ms for 512 rows of a (512, 2) weight)."""
    if narrow(w):
        return (right.t() @ left).t().contiguous()
    return left.t() @ right


def tempering_factors(beta0: Tensor, K: int, like: Tensor) -> tuple[Tensor, ...]:
    """The momentum's factors after each leapfrog step, from one vectorised evaluation."""
    return tempering(beta0, torch.arange(1, K + 1, dtype=like.dtype, device=like.device),
                     K).unbind()


def tempered_flow(z0: Tensor, rho0: Tensor, eps: Tensor, temper: tuple[Tensor, ...],
                  K: int, force: Callable[[int, Tensor], Tensor], monitor: FlowMonitor
                  ) -> tuple[Tensor, Tensor]:
    """The tempered leapfrog flow from `(z0, rho0)` on U with `grad_z U = z - force(k, z)` at
    position k: z_K and rho_K (after the last tempering factor `temper[K - 1]`). Records
    each point in `monitor`."""
    half = 0.5 * eps
    z, rho = z0, rho0
    grad = z - force(0, z)
    monitor.add(z, rho, grad)
    for k in range(1, K + 1):
        rho_half = torch.addcmul(rho, half, grad, value=-1)
        z = torch.addcmul(z, eps, rho_half)
        grad = z - force(k, z)
        rho = torch.addcmul(rho_half, half, grad, value=-1)
        monitor.add(z, rho, grad)
        rho = rho * temper[k - 1]
    return z, rho


def tempered_flow_adjoint(a_z: Tensor, a_rho: Tensor, eps: Tensor,
                          temper: tuple[Tensor, ...], K: int,
                          back: Callable[[int, Tensor], Tensor | float]) -> Tensor:
    """`tempered_flow`'s adjoint: from those of z_K and rho_K, the adjoint of z_0.
    `back(k, a_force)` goes back through the force at position k given its adjoint and
    returns the adjoint of z_k through it (positions K down to 0)."""
    half = 0.5 * eps
    a_grad = torch.zeros_like(a_z)  # the adjoint of grad_z U at the current position
    for k in range(K, 0, -1):
        a_half = a_rho * temper[k - 1]
        a_grad = torch.addcmul(a_grad, half, a_half, value=-1)
        a_z = a_z + a_grad + back(k, -a_grad)  # grad_z U = z - force
        a_half = torch.addcmul(a_half, eps, a_z)
        a_rho, a_grad = a_half, a_half * -half
    return a_z + a_grad + back(0, -a_grad)


class _Flow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, z0, *params):  # type: ignore[override]
        plan, x, rho0, eps, beta0, K, monitor = spec
        net = _weights(params)
        rows = _Rows([w.shape[1] for w in net.w] + [net.w[-1].shape[0]], len(z0), K, z0)
        temper, ats, etas = tempering_factors(beta0, K, z0), [], []

        def force(k: int, z: Tensor) -> Tensor:
            at, eta, f = _position(plan, net, x, z, rows, k)
            ats.append(at)
            etas.append(eta)
            return f

        z, rho = tempered_flow(z0, rho0, eps, temper, K, force, monitor)
        ctx.spec = (plan, eps, temper, K, ats)
        # the positions' tensors are kept on ctx: none is an output (no reference cycle)
        ctx.save_for_backward(*params)
        ctx.rows = rows
        return z, rho, plan.likelihood.value(etas[-1], x)

    @staticmethod
    @once_differentiable
    def backward(ctx, a_z, a_rho, a_log_lik):  # type: ignore[override]
        plan, eps, temper, K, ats = ctx.spec
        rows = ctx.rows
        net = _weights(ctx.saved_tensors)
        bias_grads = [torch.zeros_like(b) for b in net.b]

        def back(k: int, a_force: Tensor) -> Tensor:
            a_eta = (a_log_lik.unsqueeze(-1) * rows.left[-1][rows.force(K)] if k == K
                     else None)
            return _adjoint_at(plan, net, ats[k], rows, k, a_force, a_eta, bias_grads)

        a_z = tempered_flow_adjoint(a_z, a_rho, eps, temper, K, back)
        grads = []
        for j, w in enumerate(net.w):
            grads += [_weight_grad(rows.left[j], rows.right[j], w), bias_grads[j]]
        return None, a_z, *grads
