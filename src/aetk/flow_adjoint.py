"""The HVAE's tempered leapfrog flow through an MLP decoder, with its adjoint written out.

Exact training gradients differentiate the force `grad_z log p(x|z)` again. Autograd does
it by a double backward at each of the K+1 positions: per layer and position, two weight
gradients of B rows each (the forward's and the force's), summed one by one. The adjoint
here runs the same products through the layers, but gathers the weight gradients of all
positions and both paths into one product per layer of 2B(K+1) rows, and keeps no autograd
graph of the flow. Same gradients (to rounding, tests/test_flow_adjoint.py); an HVAE
training step of bench/vs_pythae.py's setting (decoder d-512-784, batch 64, K=3, one
thread) took 25.7 -> 22.3 ms at latent 2 and 27.1 -> 21.6 ms at latent 10 (2026-12-04).

It applies where the decoder is a built-in Bernoulli or fixed-sigma Gaussian decoder whose
network is a plain MLP (`nets.mlp`: Linear layers with ReLU, leaky ReLU or tanh between
them), and the step size and beta_0 are not learned: `plan` says so, and HVAE then calls
`flow`; anything else (user-made decoders and networks, hooks, other likelihoods) takes
the autograd flow, which gives the same numbers more slowly.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .decoders import BernoulliDecoder, GaussianDecoder
from .hamiltonian import FlowMonitor, tempering
from .nets import NARROW, Linear


class Activation(NamedTuple):
    """`h = f(p)`; `keep(p, h)`, what its derivatives need besides h (None: h alone);
    `times_d1(g, h, kept) = g f'(p)`; `d2(h, kept) = f''(p)`, None where that is 0 almost
    everywhere."""

    f: Callable[[Tensor], Tensor]
    keep: Callable[[Tensor, Tensor], Tensor | None]
    times_d1: Callable[[Tensor, Tensor, Tensor | None], Tensor]
    d2: Callable[[Tensor, Tensor | None], Tensor] | None


def _times(g: Tensor, h: Tensor, d1: Tensor | None) -> Tensor:
    return g * d1


def _activation(module: nn.Module) -> Activation | None:
    if type(module) is nn.ReLU:  # f'(p) = [h > 0]: one pass, no mask kept
        return Activation(torch.relu, lambda p, h: None,
                          lambda g, h, _: torch.ops.aten.threshold_backward(g, h, 0.0), None)
    if type(module) is nn.LeakyReLU:
        s = float(module.negative_slope)
        return Activation(lambda p: F.leaky_relu(p, s),
                          lambda p, h: torch.full_like(p, s).masked_fill_(p > 0, 1.0), _times,
                          None)
    if type(module) is nn.Tanh:
        return Activation(torch.tanh, lambda p, h: 1 - h * h, _times,
                          lambda h, d1: -2 * h * d1)
    return None


class Likelihood(NamedTuple):
    """`log p(x|eta)` of the network output eta per row; its gradient in eta (the residual)
    with what its curvature needs; `a` times its elementwise second derivative."""

    value: Callable[[Tensor, Tensor], Tensor]
    residual: Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]
    times_curvature: Callable[[Tensor, Tensor | None], Tensor]


def _bernoulli() -> Likelihood:
    def residual(eta: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.sigmoid(eta)
        return x - s, s

    return Likelihood(lambda eta, x: (x * eta - F.softplus(eta)).sum(-1), residual,
                      lambda a, s: torch.ops.aten.sigmoid_backward(a, s).neg_())  # -s(1-s) a


def _gaussian(sigma: float) -> Likelihood:
    inv_var, const = sigma**-2, math.log(sigma) + 0.5 * math.log(2 * math.pi)
    return Likelihood(
        lambda eta, x: -0.5 * inv_var * (x - eta).square().sum(-1) - const * eta.shape[-1],
        lambda eta, x: ((x - eta) * inv_var, None), lambda a, _: a * -inv_var)


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


class _At(NamedTuple):
    """The decoder and its force at one position z."""

    inputs: list[Tensor]  # each Linear's input, the first z, (B, in_j)
    d1: list[Tensor | None]  # what each activation's derivatives need (`Activation.keep`)
    grads: list[Tensor]  # log p(x|z)'s gradient at each Linear's output, the last the residual
    outer: list[Tensor | None]  # grads[j] / d1[j] where the activation's f'' is not 0
    aux: Tensor | None  # what the likelihood's curvature needs
    eta: Tensor | None  # the network output (not kept for the adjoint)
    force: Tensor | None  # grad_z log p(x|z), (B, d) (not kept for the adjoint)


class _Weights(NamedTuple):
    """The Linear layers' weights `(out, in)`, biases, and the two layouts of the products:
    `wt[j]` for `x @ W^T` and `back[j]` for `g @ W`. For a narrow layer on the CPU both come
    from one contiguous transpose (as in `nets.Linear`): MKL took 39 us for `g @ W` of a
    (512, 2) weight at batch 64, 9 us from the transposed copy (one thread, 2026-12-04)."""

    w: tuple[Tensor, ...]
    b: tuple[Tensor, ...]
    wt: list[Tensor]
    back: list[Tensor]


def _narrow(w: Tensor) -> bool:
    return w.shape[1] <= NARROW and w.device.type == "cpu"


def _weights(params: tuple[Tensor, ...]) -> _Weights:
    w, b = params[0::2], params[1::2]
    wt = [v.t().contiguous() if _narrow(v) else v.t() for v in w]
    return _Weights(w, b, wt, [t.t() if _narrow(v) else v for v, t in zip(w, wt, strict=True)])


def _weight_grad(left: list[Tensor], right: list[Tensor], narrow: bool) -> Tensor:
    """`sum_k left_k^T right_k` as one product; for a narrow layer as the transpose of
    `right^T left` (MKL: 0.36 against 0.05 ms for 512 rows of a (512, 2) weight)."""
    left_rows, right_rows = torch.cat(left), torch.cat(right)
    if narrow:
        return (right_rows.t() @ left_rows).t().contiguous()
    return left_rows.t() @ right_rows


def _at(plan: Plan, net: _Weights, x: Tensor, z: Tensor) -> _At:
    inputs, d1, h = [z], [], z
    for j, act in enumerate(plan.activations):
        p = torch.addmm(net.b[j], h, net.wt[j])
        h = act.f(p)
        inputs.append(h)
        d1.append(act.keep(p, h))
    eta = torch.addmm(net.b[-1], h, net.wt[-1])
    r, aux = plan.likelihood.residual(eta, x)
    grads, outer = [r], []
    for j in range(len(plan.layers) - 1, 0, -1):
        back = grads[-1] @ net.back[j]
        grads.append(plan.activations[j - 1].times_d1(back, inputs[j], d1[j - 1]))
        outer.append(None if plan.activations[j - 1].d2 is None else back)
    return _At(inputs, d1, grads[::-1], outer[::-1], aux, eta, grads[-1] @ net.back[0])


def _adjoint_at(plan: Plan, net: _Weights, at: _At, a_force: Tensor,
                a_eta: Tensor | None, weight_rows: list[tuple[list[Tensor], list[Tensor]]],
                bias_grads: list[Tensor]) -> Tensor:
    """Back through one position, given the adjoints of its force and (at z_K) of its
    output: the adjoint of z. Appends each layer's weight-gradient factors to
    `weight_rows` (summed in one product per layer afterwards), adds to `bias_grads`."""
    L = len(plan.layers)
    a_out = [None] * L  # second-order parts of the pre-activations' adjoints
    a_delta = a_force
    for j in range(L):  # the force chain grads[j] @ W_j, from z outwards
        weight_rows[j][0].append(at.grads[j])
        weight_rows[j][1].append(a_delta)
        a_grad = a_delta @ net.wt[j]
        if j == L - 1:
            break
        act = plan.activations[j]
        a_delta = act.times_d1(a_grad, at.inputs[j + 1], at.d1[j])
        d2 = act.d2
        if d2 is not None:
            a_out[j] = a_grad * at.outer[j] * d2(at.inputs[j + 1], at.d1[j])
    a = plan.likelihood.times_curvature(a_grad, at.aux)
    if a_eta is not None:
        a = a + a_eta
    for j in range(L - 1, -1, -1):  # the network, from its output back to z
        weight_rows[j][0].append(a)
        weight_rows[j][1].append(at.inputs[j])
        bias_grads[j] = bias_grads[j] + a.sum(0)
        a = a @ net.back[j]
        if j:
            a = plan.activations[j - 1].times_d1(a, at.inputs[j], at.d1[j - 1])
            if a_out[j - 1] is not None:
                a = a + a_out[j - 1]
    return a


def _saved(at: _At) -> list[Tensor | None]:
    """What the adjoint needs of a position, for `save_for_backward`."""
    return [*at.inputs, *at.d1, *at.grads, *at.outer, at.aux]


def _restored(saved: tuple, L: int) -> _At:
    inputs, d1 = list(saved[:L]), list(saved[L:2 * L - 1])
    grads, outer = list(saved[2 * L - 1:3 * L - 1]), list(saved[3 * L - 1:4 * L - 2])
    return _At(inputs, d1, grads, outer, saved[4 * L - 2], None, None)


class _Flow(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, z0, *params):  # type: ignore[override]
        plan, x, rho0, eps, beta0, K, monitor = spec
        net = _weights(params)
        z, rho = z0, rho0
        ats = [_at(plan, net, x, z)]
        grad = z - ats[0].force
        monitor.add(z, rho, grad)
        for k in range(1, K + 1):
            rho_half = rho - 0.5 * eps * grad
            z = z + eps * rho_half
            ats.append(_at(plan, net, x, z))
            grad = z - ats[-1].force
            rho = rho_half - 0.5 * eps * grad
            monitor.add(z, rho, grad)
            rho = rho * tempering(beta0, k, K)
        ctx.spec = (plan, eps, beta0, K)
        ctx.save_for_backward(*params, *(t for at in ats for t in _saved(at)))
        return z, rho, plan.likelihood.value(ats[-1].eta, x)

    @staticmethod
    @once_differentiable
    def backward(ctx, a_z, a_rho, a_log_lik):  # type: ignore[override]
        plan, eps, beta0, K = ctx.spec
        L = len(plan.layers)
        saved = ctx.saved_tensors
        net = _weights(saved[:2 * L])
        n = 4 * L - 1
        ats = [_restored(saved[2 * L + k * n:2 * L + (k + 1) * n], L) for k in range(K + 1)]
        rows: list[tuple[list[Tensor], list[Tensor]]] = [([], []) for _ in range(L)]
        bias_grads = [torch.zeros_like(b) for b in net.b]
        a_grad = torch.zeros_like(a_z)  # the adjoint of grad_z U at the current position
        for k in range(K, 0, -1):
            a_half = a_rho * tempering(beta0, k, K)
            a_grad = a_grad - 0.5 * eps * a_half
            a_eta = a_log_lik.unsqueeze(-1) * ats[k].grads[-1] if k == K else None
            # grad_z U = z - force
            a_z = a_z + a_grad + _adjoint_at(plan, net, ats[k], -a_grad, a_eta, rows,
                                             bias_grads)
            a_half = a_half + eps * a_z
            a_rho, a_grad = a_half, -0.5 * eps * a_half
        a_z = a_z + a_grad + _adjoint_at(plan, net, ats[0], -a_grad, None, rows, bias_grads)
        grads = []
        for j in range(L):
            grads += [_weight_grad(*rows[j], _narrow(net.w[j])), bias_grads[j]]
        return None, a_z, *grads
