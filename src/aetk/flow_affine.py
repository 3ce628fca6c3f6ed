"""The HVAE's flow where the decoder is affine along it.

A decoder of Linear layers with ReLU or leaky ReLU between them is affine in z inside each
activation region: `eta(z) = eta(z_0) + J (z - z_0)`, J its Jacobian at z_0 (one per row).
With the step sizes a flow takes, most rows' K+1 positions stay in z_0's region. There the
flow needs the network at z_0 and its Jacobian (d passes of tangents through the layers),
not the network and its force at each position: the other positions' outputs are
`eta(z_0) + J dz` and their forces `J^T grad_eta log p(x|eta)`. The activation pattern is
constant in the region and the network's second derivative 0, so backpropagation through
the network at z_0 and its tangents, from the adjoint of the positions' algebra (`_Path`,
written out), gives the exact training gradients. Rows that leave z_0's region take
`flow_adjoint.flow`, and its values replace theirs.

Counting products through the widest layer: the network at z_0 and its d tangents, forward
and backward, take about 3 (1 + d), the adjoint 6 (K + 1); the rows that leave the region
take both. In bench/vs_pythae.py's setting (decoder d-512-784, K=3, step size 1e-3, one
thread) 25-32 % of the rows left (most often at the first step, mostly by one unit), and an
HVAE training step took, against the adjoint alone (alternating epochs, 2026-12-04):
- latent 2: 18.3 against 19.3 ms at batch 64 over 3 epochs (20.8 against 21.2 over 8, the
  rows that leave rising from 25 to 32 %), 49.9 against 62.3 ms at batch 256; with the
  pipeline's decoder (2-256-256-784, batch 128) 24.1 against 26.4 ms;
- latent 3: 20.7 against 19.1 ms at batch 64 (59.5 against 66.1 at batch 256); latent 4:
  26.7 against 23.5 (81.8 against 81.3).
Hence `MAX_LATENT = 2`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import flow_adjoint
from .flow_adjoint import Plan, tempered_flow, tempered_flow_adjoint, tempering_factors
from .hamiltonian import FlowMonitor

MAX_LATENT = 2


def applies(plan: Plan, latent_dim: int) -> bool:
    """Whether `flow` serves this decoder and latent dimension."""
    return latent_dim <= MAX_LATENT and all(a.slope is not None for a in plan.activations)


def _slopes(p: Tensor, slope: float) -> Tensor:
    """The piecewise linear activation's derivative at the pre-activations p."""
    above = (p > 0).to(p.dtype)
    return above if slope == 0 else above * (1 - slope) + slope


def _along(base: Tensor, tangent: Tensor, dz: Tensor) -> Tensor:
    """`base + sum_i dz_i tangent_i` for tangents `(d, B, n)`, rows `dz (B, d)`."""
    out = torch.addcmul(base, tangent[0], dz[:, :1])
    for i in range(1, len(tangent)):
        out.addcmul_(tangent[i], dz[:, i:i + 1])
    return out


def _region_test(pre: list[Tensor], tangents: list[Tensor]) -> Callable[[Tensor], Tensor]:
    """dz -> the rows (B,) whose every pre-activation at `z_0 + dz` has z_0's sign, from
    those at z_0 (B, n) and their tangents (d, B or 1, n)."""
    signs = [p > 0 for p in pre]

    def test(dz: Tensor) -> Tensor:
        inside = torch.ones(len(dz), dtype=torch.bool, device=dz.device)
        for p0, t, s in zip(pre, tangents, signs, strict=True):
            inside &= ((_along(p0, t, dz) > 0) == s).all(-1)
        return inside

    return test


def _dot(jt: Tensor, r: Tensor, scratch: Tensor) -> Tensor:
    """`J^T r` per row, (B, d), from `jt (d, B, n)` and `r (B, n)`."""
    return torch.mul(jt, r, out=scratch).sum(-1).t()


class _Path(torch.autograd.Function):
    """The leapfrog positions from `eta(z_0)`, `J^T` (d, B, out) and z_0: z_K, rho_K (after
    the last tempering), `log p(x|z_K)` and the rows that stayed in z_0's region (the
    others are held at `eta(z_0)` from where they left: their values are not the flow's,
    and the adjoint takes their adjoints to be 0)."""

    @staticmethod
    def forward(ctx, spec, eta0, jt, z0):  # type: ignore[override]
        likelihood, x, rho0, eps, beta0, K, test, monitor = spec
        temper = tempering_factors(beta0, K, z0)
        scratch = torch.empty_like(jt)
        residuals = eta0.new_empty(K + 1, *eta0.shape)
        auxs, dzs, etas = [], [], [eta0]
        inside = torch.ones(len(z0), dtype=torch.bool, device=z0.device)

        def force(k: int, z: Tensor) -> Tensor:  # J^T grad_eta log p(x|eta_k)
            nonlocal inside
            if k > 0:
                dz = z - z0
                inside = inside & test(dz)
                # a row that left is held at eta(z_0): its values, replaced by the exact
                # flow's (so its adjoints are 0), stay finite
                dz = torch.where(inside.unsqueeze(-1), dz, 0)
                dzs.append(dz)
                etas.append(_along(eta0, jt, dz))
            auxs.append(likelihood.residual(etas[-1], x, residuals[k]))
            return _dot(jt, residuals[k], scratch)

        z, rho = tempered_flow(z0, rho0, eps, temper, K, force, monitor)
        ctx.spec = (likelihood, eps, temper, K, auxs, dzs, scratch)
        ctx.save_for_backward(jt, residuals)
        ctx.mark_non_differentiable(inside)
        return z, rho, likelihood.value(etas[-1], x), inside

    @staticmethod
    @once_differentiable
    def backward(ctx, a_z, a_rho, a_log_lik, _):  # type: ignore[override]
        likelihood, eps, temper, K, auxs, dzs, scratch = ctx.spec
        jt, residuals = ctx.saved_tensors
        a_jt, a_eta0 = torch.zeros_like(jt), torch.zeros_like(residuals[0])
        a_r, a_eta = torch.empty_like(a_eta0), torch.empty_like(a_eta0)
        a_z0 = torch.zeros_like(a_z)

        def back(k: int, a_force: Tensor) -> Tensor | float:
            """Back through `J^T r(eta_k)` and `eta_k = eta_0 + J dz_k` (dz_k = z_k - z_0
            where inside): adds to the adjoints of J^T, eta_0 and z_0, returns that of
            z_k."""
            a_jt.addcmul_(a_force.t().unsqueeze(-1), residuals[k])
            torch.sum(torch.mul(jt, a_force.t().unsqueeze(-1), out=scratch), 0, out=a_r)
            a = likelihood.times_curvature(a_r, auxs[k], a_eta)
            if k == K:
                a.addcmul_(a_log_lik.unsqueeze(-1), residuals[K])
            a_eta0.add_(a)
            if k == 0:
                return 0.0
            a_jt.addcmul_(dzs[k - 1].t().unsqueeze(-1), a)
            a_dz = _dot(jt, a, scratch)
            a_z0.sub_(a_dz)
            return a_dz

        a_z = tempered_flow_adjoint(a_z, a_rho, eps, temper, K, back)
        return None, a_eta0, a_jt, a_z + a_z0


def flow(plan: Plan, x: Tensor, z0: Tensor, rho0: Tensor, step_size: Tensor, beta0: Tensor,
         n_leapfrog: int, monitor: FlowMonitor) -> tuple[Tensor, Tensor, Tensor]:
    """`flow_adjoint.flow`'s values and gradients (z_K, rho_K after the last tempering and
    `log p(x|z_K)`), the rows that stay in z_0's activation region computed from the
    decoder's Jacobian at z_0. Records each point in `monitor`."""
    x = x.reshape(len(x), -1)
    B, d = z0.shape
    w = [lin.weight for lin in plan.layers]
    b = [lin.bias for lin in plan.layers]
    # the network at z_0 and its tangents d(pre-activation)/dz through each layer as one
    # block of B (1 + d) rows: one product per layer and its gradient
    p = F.linear(z0, w[0], b[0])
    tangent = w[0].t().unsqueeze(1)  # (d, 1, n): the same for every row
    pre, tangents = [], []
    for j, act in enumerate(plan.activations):
        slopes = _slopes(p.detach(), act.slope)
        pre.append(p.detach())
        tangents.append(tangent.detach())
        block = torch.cat([p * slopes, (tangent * slopes).flatten(0, 1)]) @ w[j + 1].t()
        p, tangent = block[:B] + b[j + 1], block[B:].unflatten(0, (d, B))
    eta0, tangent = p, tangent.expand(d, B, -1)  # expand: a network without hidden layers
    test = _region_test(pre, tangents)
    spec = (plan.likelihood, x, rho0, step_size, beta0, n_leapfrog, test, monitor)
    z, rho, log_lik, inside = _Path.apply(spec, eta0, tangent, z0)
    if bool(inside.all()):
        return z, rho, log_lik
    rows = (~inside).nonzero().squeeze(1)
    theirs = FlowMonitor(step_size)
    exact = flow_adjoint.flow(plan, x[rows], z0[rows], rho0[rows], step_size, beta0,
                              n_leapfrog, theirs)
    theirs.check()
    return tuple(v.index_put((rows,), e) for v, e in zip((z, rho, log_lik), exact, strict=True))
