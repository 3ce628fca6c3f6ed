"""The Levi-Civita connection of a latent metric: Christoffel symbols, the geodesic
equation, exponential and logarithm maps, parallel transport.

Derivatives come from `torch.func`. A contraction `Gamma(z)[u, w]` needs the directional
derivatives `dG[u]`, `dG[w]` (forward mode) and the gradient of `u^T G(z) w` (one reverse
pass), a few metric evaluations whatever the dimension; a decoder's mean pull-back uses the
decoder's second directional derivatives instead (`PullbackMetric`). The full symbols,
`d^3` numbers per point, take `d` forward passes. Everything works on any `Metric` whose
`G(z)` is smooth in `z`: the RHVAE's, decoder pull-backs with smooth activations, user
metrics written in torch. A ReLU decoder's pull-back is piecewise constant when its output
is linear (a Gaussian mean: symbols zero almost everywhere) and, through a sigmoid,
softmax or softplus output, smooth within each linear region of the network but with
derivatives that jump between regions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.func import jvp, vmap
from tqdm.auto import tqdm

from ..validate import as_tensor, positive_int
from .curves import curve_length
from .fit import fit_geodesics
from .metrics import (
    Metric,
    as_points,
    latent_points,
    module_spec,
    positive_number,
    solve_or_nan,
    torch_jit_deprecation_filtered,
)

# A differentiable curve: times (T,) -> points (B, T, d), like `NeuralGeodesic`.
Curve = Callable[[Tensor], Tensor]


def christoffel(metric: Metric, z: Tensor) -> Tensor:
    """Christoffel symbols of the second kind at `z (..., d)`: `(..., d, d, d)`, with
    `out[..., k, i, j] = Gamma^k_ij = 1/2 G^{kl} (d_i G_lj + d_j G_li - d_l G_ij)`."""
    z = latent_points(metric, z)
    d = z.shape[-1]
    flat = z.reshape(-1, d)
    basis = torch.eye(d, dtype=z.dtype, device=z.device)
    G = metric.metric(flat)
    # dG[c, n, a, b] = d_c G_ab at point n: one JVP per coordinate direction
    with torch_jit_deprecation_filtered():  # torch's own warnings on a first forward pass
        dG = vmap(lambda e: jvp(metric.metric, (flat,), (e.expand_as(flat),))[1])(basis)
    first_kind = 0.5 * (dG.permute(1, 2, 0, 3) + dG.permute(1, 2, 3, 0) - dG.permute(1, 0, 2, 3))
    gamma = solve_or_nan(G, first_kind.reshape(-1, d, d * d))
    return gamma.reshape(*z.shape, d, d)


def christoffel_contract(metric: Metric, z: Tensor, u: Tensor, w: Tensor | None = None
                         ) -> Tensor:
    """`Gamma(z)[u, w]^k = Gamma^k_ij u^i w^j` for points `z (..., d)` and vectors `u`, `w`
    of the same shape, or `(d,)` for every point (`w` defaults to `u`), without forming
    the symbols: from `G`'s directional derivatives and one reverse pass, or for a
    decoder's mean pull-back from its second directional derivatives. Points and vectors
    are cast to the metric's dtype and device; vectors of another shape are a ValueError."""
    z = latent_points(metric, z)
    u = _vectors_at(u, z, "u")
    w = None if w is None else _vectors_at(w, z, "w")
    if z.dim() == 2:  # the geodesic integrators' calls: no reshapes
        return metric._contract(z, u, w)
    flat = z.reshape(-1, z.shape[-1])
    out = metric._contract(flat, u.reshape(flat.shape),
                           None if w is None else w.reshape(flat.shape))
    return out.reshape(z.shape)


def _vectors_at(v: Tensor, z: Tensor, name: str) -> Tensor:
    """Tangent vectors `v` at the points `z`: `z`'s shape (one vector for all points
    broadcast to it), in its dtype and device."""
    v = as_tensor(v, None).to(dtype=z.dtype, device=z.device)
    if v.shape == z.shape:
        return v
    try:
        return v.expand(z.shape)
    except RuntimeError:
        raise ValueError(f"{name} has shape {tuple(v.shape)}, but the points z have "
                         f"{tuple(z.shape)}: give one vector per point, {tuple(z.shape)}, "
                         f"or one for all of them, ({z.shape[-1]},)") from None


@dataclass
class GeodesicPath:
    """A geodesic integrated from its initial point and velocity, at `n_steps + 1` equal
    times in [0, 1]: `points` and `velocities` `(B, n_steps + 1, d)`, and the parallel
    transports of the given vectors along it, `(B, n_steps + 1, k, d)`, or
    `(B, n_steps + 1, d)` for one vector per curve (None if none were given)."""

    points: Tensor
    velocities: Tensor
    transported: Tensor | None


def _axpy(state: tuple[Tensor, ...], rate: tuple[Tensor, ...], h: float) -> tuple[Tensor, ...]:
    return tuple(s + h * r for s, r in zip(state, rate, strict=True))


def _rk4(f: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]], state: tuple[Tensor, ...],
         n_steps: int) -> list[tuple[Tensor, ...]]:
    """Classical Runge-Kutta on `[0, 1]` with `n_steps` equal steps: the states at the
    `n_steps + 1` grid times. Fixed steps give every curve of a batch the same time grid
    and keep the integrator differentiable by autograd and `torch.func` alike."""
    h = 1.0 / n_steps
    states = [state]
    for i in range(n_steps):
        t = torch.tensor(i * h, dtype=state[0].dtype, device=state[0].device)
        k1 = f(t, state)
        k2 = f(t + h / 2, _axpy(state, k1, h / 2))
        k3 = f(t + h / 2, _axpy(state, k2, h / 2))
        k4 = f(t + h, _axpy(state, k3, h))
        state = tuple(s + h / 6 * (a + 2 * b + 2 * c + e)
                      for s, a, b, c, e in zip(state, k1, k2, k3, k4, strict=True))
        states.append(state)
    return states


def _transport_rate(metric: Metric, z: Tensor, u: Tensor, w: Tensor) -> Tensor:
    """`-Gamma(z)[u, w_k]` for `k` vectors `w (N, k, d)` at each point, `(N, k, d)`."""
    n, k, d = w.shape
    rate = christoffel_contract(metric, z.repeat_interleave(k, 0), u.repeat_interleave(k, 0),
                                w.reshape(n * k, d))
    return -rate.reshape(n, k, d)


def _geodesic_rate(metric: Metric) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
    """The geodesic equation as a first-order system in `(z, v[, w])`: transported
    vectors `w`, when present, follow `w' = -Gamma(z)[v, w]`."""

    def rate(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        z, v = s[:2]
        accel = -christoffel_contract(metric, z, v)
        return (v, accel) if len(s) == 2 else (v, accel, _transport_rate(metric, z, v, s[2]))

    return rate


def _pairs(metric: Metric, z: Tensor, v: Tensor, names: tuple[str, str] | None = None
           ) -> tuple[Tensor, Tensor]:
    """`z` and `v` as `(B, d)` batches of the metric's dimension in its dtype and device
    (`as_points`), broadcast together; with `names`, both must be finite (a ValueError
    naming the points that are not)."""
    finite = names is not None
    z = latent_points(metric, z, names[0] if finite else "points", finite=finite)
    if finite:
        v = as_points(metric, v, names[1], finite=True, device=z.device)
    v = as_tensor(v, None).to(dtype=z.dtype, device=z.device)
    first, second = names or ("points", "vectors")
    if z.shape[-1:] != v.shape[-1:] or z.dim() > 2 or v.dim() > 2:
        raise ValueError(f"{first} {tuple(z.shape)} and {second} {tuple(v.shape)} must be "
                         "(B, d) or (d,) with the same d")
    z, v = z.reshape(-1, z.shape[-1]), v.reshape(-1, v.shape[-1])
    if len(z) != len(v) and 1 not in (len(z), len(v)):  # torch's broadcasting error else
        raise ValueError(f"{first} {tuple(z.shape)} and {second} {tuple(v.shape)} must have "
                         "as many rows, or one of them one row (d,) for all")
    # contiguous copies: forward mode cannot take broadcast (stride-0) views as primals
    z, v = torch.broadcast_tensors(z, v)
    return z.contiguous(), v.contiguous()


def _check_integration(integration_tol: float | None, max_doublings: int) -> int:
    """`max_doublings` as an int, after checking both."""
    if integration_tol is not None and not integration_tol > 0:
        raise ValueError(f"integration_tol must be positive, got {integration_tol}")
    return positive_int(max_doublings, "max_doublings", 0)


def integrate_geodesic(metric: Metric, z: Tensor, v: Tensor, *, n_steps: int = 20,
                       transport: Tensor | None = None) -> GeodesicPath:
    """The geodesic `gamma'' = -Gamma(gamma)[gamma', gamma']` from `z (B, d)` with velocity
    `v (B, d)` over unit time (classical Runge-Kutta, `n_steps` steps, error O(h^4)),
    parallel-transporting `transport` vectors `(B, k, d)` (or one per curve, `(B, d)`)
    along it."""
    n_steps = positive_int(n_steps, "n_steps")
    z, v = _pairs(metric, z, v)
    state: tuple[Tensor, ...] = (z, v)
    single = False
    if transport is not None:
        w = as_tensor(transport, z.dtype, z.device)
        rows = len(w) if w.dim() > 1 else 1
        if w.dim() > 3 or w.shape[-1:] != z.shape[-1:] or rows not in (1, len(z)):
            raise ValueError(f"transport has shape {tuple(w.shape)}, but the geodesics start "
                             f"at z {tuple(z.shape)}: give vectors (B, k, d) or one per "
                             "curve (B, d), with B the curves' count or 1 for all of them, "
                             f"or one vector ({z.shape[-1]},) for all")
        single = w.dim() < 3
        state = (z, v, (w.reshape(-1, 1, w.shape[-1]) if single else w).expand(len(z), -1, -1))
    points, velocities, *rest = (torch.stack(x, 1) for x in zip(
        *_rk4(_geodesic_rate(metric), state, n_steps), strict=True))
    transported = rest[0] if rest else None
    return GeodesicPath(points, velocities,
                        transported[:, :, 0] if single and transported is not None else transported)


def exp_map(metric: Metric, z: Tensor, v: Tensor, *, n_steps: int = 20) -> Tensor:
    """`exp_z(v)`: where the geodesic from `z (B, d)` with initial velocity `v (B, d)` is at
    time 1, `(B, d)`; differentiable in `z` and `v`. Its metric length is
    `sqrt(v^T G(z) v)`. `z` and `v` are cast to the metric's dtype and device, the result
    is in that dtype."""
    n_steps = positive_int(n_steps, "n_steps")
    z, v = _pairs(metric, z, v)
    return _rk4(_geodesic_rate(metric), (z, v), n_steps)[-1][0]


@dataclass
class LogMapResult:
    """`exp_{z_start}(velocity) = z_end` per pair: the initial `velocity (B, d)` of the
    geodesic, its `length (B,)` `sqrt(v^T G(z_start) v)`, the Euclidean `residual (B,)`
    `|exp(v) - z_end|`, `converged (B,)` (residual at most `tol |z_end - z_start|`, or what
    the dtype resolves: `8 eps (1 + |z_end| + |d exp/dv|_F |v|)`, the last term once a
    Newton step has computed the Jacobian and at most `sqrt(eps) |z_end - z_start|`),
    the Newton `iterations (B,)` each pair took, and Richardson's estimates of the
    integrator's error from a second integration with twice the steps, `e = 16/15
    (exp_n(v) - exp_2n(v))` for fourth-order Runge-Kutta (the exact geodesic with velocity
    `v` ends near `exp_n(v) - e`): `integration_error (B,)`, the end point's, `|e|`, and
    `velocity_error (B,)`, the velocity's, `|J^{-1} e|` with `J = d exp_n/dv` at `v`: how
    far `velocity` lies from the exact log map's (the velocity whose exact geodesic ends
    where this one's integration does), infinite where `J` is numerically singular. Where
    the exponential map is ill-conditioned (`|J|` large) a small velocity error shows as a
    large end-point error: the velocity's is the log map's accuracy. `converged` speaks of
    the shooting with `n_steps` (and, when `log_map` was given `integration_tol`, of the
    velocity's error too); where `integration_error` exceeds the residual, more steps
    bring the geodesic closer to `z_end`. `n_steps`: the integrator's steps it ended with.
    `collocated (B,)`: pairs whose velocity came from collocation, not shooting (see
    `log_map`); there `converged` is the collocation's, `velocity_error` is NaN (no
    integration made that velocity), and `residual` and `integration_error` (of
    integrating from it) measure how ill-conditioned the exponential map is, not the log
    map's error."""

    velocity: Tensor
    length: Tensor
    residual: Tensor
    converged: Tensor
    iterations: Tensor
    integration_error: Tensor | None = None  # set by log_map
    n_steps: int | None = None  # set by log_map
    collocated: Tensor | None = None  # set by log_map
    velocity_error: Tensor | None = None  # set by log_map


def _exp_jacobians(metric: Metric, z: Tensor, v: Tensor, n_steps: int, *,
                   base: bool = False) -> tuple[Tensor, ...]:
    """`exp_z(v) (B, d)`, then its derivatives `(B, d, d)` in the base point `z (B, d)`
    (only with `base`) and in the velocity `v (B, d)`: Jacobi fields. Reverse mode with the
    `d` output directions in one batched pass: over the integrator's nested forward-mode
    derivatives reverse mode measured about 8x faster than forward mode, and the batched
    pass 1.5x faster than a pass per direction (RHVAE metric, 100 pairs)."""
    with torch.enable_grad():
        z, v = z.detach().clone().requires_grad_(base), v.detach().clone().requires_grad_()
        out = exp_map(metric, z, v, n_steps=n_steps)
        d = out.shape[-1]
        eye = torch.eye(d, dtype=out.dtype, device=out.device)[:, None].expand(d, *out.shape)
        grads = torch.autograd.grad(out, (z, v) if base else (v,), eye, is_grads_batched=True)
    return (out.detach(), *(g.transpose(0, 1) for g in grads))


def log_map(metric: Metric, z_start: Tensor, z_end: Tensor, *, n_steps: int = 20,
            tol: float = 1e-6, max_iter: int = 20, integration_tol: float | None = None,
            max_doublings: int = 4, collocate: bool = True, progress: bool = False,
            **fit_kwargs) -> LogMapResult:
    """`log_{z_start}(z_end)`: the initial velocity of the geodesic from `z_start` to
    `z_end` (`(B, d)` or `(d,)`) that reaches it at time 1.

    Starts from the energy-minimising curve of `fit_geodesics` (keyword arguments passed
    on), whose constant speed gives the velocity at t = 0 to second order, then shoots:
    Newton steps on `exp_map(z_start, v) = z_end` with the exact Jacobian in `v` (reverse
    mode through the integrator), halving a step that does not reduce the residual.
    Starting from the minimiser keeps it on the shortest geodesic, not another one.
    `tol` is the shooting's, relative to `|z_end - z_start|`; `n_steps` the integrator's.
    With `integration_tol`, the steps double (at most `max_doublings` times, shooting again
    from the last velocities) until every pair's estimated `velocity_error` is at most
    `integration_tol |velocity|` (or what the two integrations' rounding puts there,
    `_velocity_rounding`; a singular `d exp/dv` never passes), and `converged` requires
    that too. The velocity's error, not the end point's: where the exponential map is
    ill-conditioned (`|d exp/dv|` up to 1e7 on a single-cell RHVAE) the end point's error
    overstates the log map's by up to that factor (see `frechet_mean` for what that cost).

    With `collocate`, pairs whose shot did not converge or ended more than 5 % longer
    than the fitted curve get the geodesic boundary value problem solved by collocation
    from that curve instead (`collocated`). On a stiff metric shooting fails where the
    exponential map's Jacobian in `v` is ill-conditioned (a single-cell RHVAE, G from
    0.2 I to 100 I within a few units: condition numbers up to 1e7, 10 of 56 shots
    missed their points); collocation never integrates across the whole curve. The
    collocated geodesic is kept only where the collocation solved and is within those
    5 % of the fitted curve, so a result never gets worse; its `converged` is the
    collocation's (its residual tolerance, at least `1e5 eps` of the dtype), also under
    `integration_tol`.

    The endpoints may be numpy arrays or tensors of another dtype: they are cast to the
    metric's dtype and device (`metrics.as_points`), and the results come in that dtype.
    NaN or infinite endpoints are a ValueError naming them. `progress` shows the fit's bar,
    then one over the pairs whose shots have settled, with the integrator's steps, and one
    over the pairs collocated.
    """
    n_steps = positive_int(n_steps, "n_steps")
    max_iter = positive_int(max_iter, "max_iter", 0)
    tol = positive_number(tol, "tol", zero=True)
    max_doublings = _check_integration(integration_tol, max_doublings)
    z0, z1 = _pairs(metric, z_start, z_end, ("z_start", "z_end"))
    v, fitted, curves = _fitted_logs(metric, z0, z1, progress=progress, **fit_kwargs)
    with tqdm(total=len(z0), disable=not progress, desc="log maps", unit="pair") as bar:
        for doubling in range(max_doublings + 1):
            bar.set_postfix(steps=n_steps)
            res = _shoot(metric, z0, z1, v, n_steps, tol, max_iter, bar=bar)
            # not in _shoot: the Frechet mean's inner loop needs none
            errors = _integration_errors(metric, z0, res.velocity, n_steps)
            res = replace(res, integration_error=errors.end, velocity_error=errors.velocity,
                          n_steps=n_steps)
            if integration_tol is None:
                break
            accurate = _accurate(errors, res.velocity, integration_tol)
            # a shot that missed its point is no log map (collocation takes it): its
            # velocity's accuracy is no reason to double, as in frechet_mean
            if bool((accurate | ~res.converged).all()) or doubling == max_doublings:
                res = replace(res, converged=res.converged & accurate)
                break
            n_steps, v = 2 * n_steps, res.velocity
    if not collocate:
        return replace(res, collocated=torch.zeros_like(res.converged))
    res, _ = _mend(metric, z0, z1, res, fitted, curves, tol, n_steps,
                   torch.ones_like(res.converged), progress=progress)
    if bool(res.collocated.any()):  # metrics may refuse empty batches
        error, velocity_error = res.integration_error.clone(), res.velocity_error.clone()
        error[res.collocated] = _end_error(metric, z0[res.collocated],
                                           res.velocity[res.collocated], n_steps)
        velocity_error[res.collocated] = math.nan
        res = replace(res, integration_error=error, velocity_error=velocity_error)
    return res


def _end_error(metric: Metric, z0: Tensor, v: Tensor, n_steps: int) -> Tensor:
    """Richardson's estimate of the end point's error alone, `16/15 |exp_n(v) - exp_2n(v)|`
    (no Jacobian: for collocated velocities, whose velocity error is not the integrator's)."""
    with torch.no_grad():
        coarse, fine = (exp_map(metric, z0, v, n_steps=n) for n in (n_steps, 2 * n_steps))
    return (coarse - fine).norm(dim=-1) * (16 / 15)


@dataclass
class _Richardson:
    """Richardson's estimates for shots with `n_steps` (see `LogMapResult`): the end
    point's error `end (B,)`, the velocity's `velocity (B,)` (infinite where `d exp/dv` is
    numerically singular or the solve fails) and `rounding (B,)`, what the rounding of the
    two integrations alone can put into the velocity's (`_velocity_rounding`)."""

    end: Tensor
    velocity: Tensor
    rounding: Tensor


def _integration_errors(metric: Metric, z0: Tensor, v: Tensor, n_steps: int) -> _Richardson:
    """Richardson's estimates for the shots from `z0 (B, d)` with velocities `v (B, d)`:
    `e = 16/15 (exp_n(v) - exp_2n(v))`, and the velocity's error `J^{-1} e` with `J = d
    exp_n/dv` at `v` (the exact geodesic from `v` ends near `exp_n(v) - e`, so the exact
    log map of `exp_n(v)` is `v + J^{-1} e` to first order). `J` comes with the coarse
    integration (`_exp_jacobians`: the reverse pass is all it adds), at `v` itself: the
    shooting's last Jacobian is at the velocity before its last Newton step, and a pair
    that needed no step has none. `J` counts as singular where its smallest singular
    value is at most `d eps` times its largest (numpy's `matrix_rank` threshold)."""
    coarse, jac = _exp_jacobians(metric, z0, v, n_steps)
    with torch.no_grad():
        fine = exp_map(metric, z0, v, n_steps=2 * n_steps)
        e = (coarse - fine) * (16 / 15)
        # a non-finite Jacobian counts as singular (svdvals raises on it)
        jac = torch.where(jac.isfinite().flatten(1).all(1)[:, None, None], jac, 0.0)
        sv = torch.linalg.svdvals(jac)  # descending
        eps = torch.finfo(v.dtype).eps
        delta, info = torch.linalg.solve_ex(jac, e)
        velocity = delta.norm(dim=-1)
        solved = (info == 0) & (sv[:, -1] > v.shape[-1] * eps * sv[:, 0]) & velocity.isfinite()
        rounding = _velocity_rounding(v, coarse, sv[:, -1], n_steps)
    return _Richardson(e.norm(dim=-1), torch.where(solved, velocity, math.inf),
                       torch.where(solved, rounding, 0.0))


def _velocity_rounding(v: Tensor, end: Tensor, smallest: Tensor, n_steps: int) -> Tensor:
    """What the rounding of the two integrations (`n` and `2n` steps) can put into the
    velocity error's estimate: `2 n eps (|v| + (1 + |end|) / s)`, `s` the smallest singular
    value of `d exp/dv`. Each step rounds the state `(z, v)` at `eps`: the velocity's
    rounding early on moves the end point as changing `v` by `eps |v|` does (through `J`,
    so by up to `|J| eps |v|` there, which the end point's allowance missed where `|J|`
    reaches 1e7), and the position's, mostly at the end point, by `eps (1 + |z|)`, which
    is a velocity change of up to `1/s` times that. The `2 n` per step is the end point's
    allowance that measurements settled on: in float32 (a small RHVAE, pairs 1e-3
    apart) the estimate for 40 against 80 steps was up to 2e-5, rounding alone, and
    without an allowance the steps doubled to their cap, each doubling adding more
    rounding."""
    eps = torch.finfo(v.dtype).eps
    return 2 * n_steps * eps * (v.norm(dim=-1) + (1 + end.norm(dim=-1)) / smallest)


def _accurate(errors: _Richardson, v: Tensor, integration_tol: float) -> Tensor:
    """Whether each shot's estimated velocity error is at most `integration_tol |v|`, or
    the rounding of the two integrations behind it (`_velocity_rounding`); never where
    `d exp/dv` is singular (the error is infinite there)."""
    return errors.velocity <= integration_tol * v.norm(dim=-1) + errors.rounding


def _fitted_logs(metric: Metric, z0: Tensor, z1: Tensor, **fit_kwargs
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """The initial velocities `(B, d)` of the energy-minimising curves from `z0` to `z1`
    (second-order one-sided differences), the curves' lengths `(B,)` and the curves
    `(B, T, d)` at equal times: the log maps and distances to the accuracy of the
    discretisation, without shooting."""
    fit = fit_geodesics(metric, z0, z1, **fit_kwargs)
    p, h = fit.points.detach(), fit.t[1] - fit.t[0]
    # from differences: -3 p0 + 4 p1 - p2 rounds to 1e-6 for a float32 curve that stays at
    # one point, whose log map is 0 (a single point's Frechet mean then failed in float64)
    velocity = (4 * (p[:, 1] - p[:, 0]) - (p[:, 2] - p[:, 0])) / (2 * h)
    return velocity, fit.length.detach(), p


def _shoot(metric: Metric, z0: Tensor, z1: Tensor, v: Tensor, n_steps: int, tol: float,
           max_iter: int, skip: Tensor | None = None, bar: tqdm | None = None
           ) -> LogMapResult:
    """Newton on `exp_map(z0, v) = z1` from the velocities `v (B, d)`.

    Only the pairs not yet converged, and not in `skip (B,)`, take part. A pair whose full
    step does not reduce its residual tries the halved steps 1/2 .. 1/128 all at once, and
    takes the longest that does; a pair that none reduces stops where it is (it is beyond
    the shooting's reach from here, and trying again from the same velocity would only
    repeat the same steps). `bar` counts the pairs that no longer take part."""
    # the tolerance, but never below what the dtype can resolve at z1; once the Jacobian
    # is known, also the endpoint's move when v changes by its own rounding (a
    # near-conjugate pair of a 10-epoch RHVAE stalls there in float32, at 2e-5: several
    # times 8 eps |z1|, and took four more Newton steps of the whole batch to give up)
    # That allowance only stops Newton: a shot counts as converged within it only up to
    # sqrt(eps) of the distance. On a stiff metric (|d exp/dv| up to 1e7, a single-cell
    # RHVAE) it reached 100, and 13 of 56 shots that missed their points by up to 3.4
    # passed as log maps, up to 37 % shorter than the fitted curves that do join them.
    eps = torch.finfo(z1.dtype).eps
    distance = (z1 - z0).norm(dim=-1)
    base = tol * distance + 8 * eps * (1 + z1.norm(dim=-1))
    scale = base.clone()
    v = v.detach().clone()
    with torch.no_grad():
        residual = (exp_map(metric, z0, v, n_steps=n_steps) - z1).norm(dim=-1)
    iterations = torch.zeros(len(z0), dtype=torch.long, device=z0.device)
    stuck = (torch.zeros(len(z0), dtype=torch.bool, device=z0.device) if skip is None
             else skip.clone())
    halves = 0.5 ** torch.arange(1, 8, dtype=v.dtype, device=v.device)
    for _ in range(max_iter):
        idx = ((residual > scale) & ~stuck).nonzero()[:, 0]
        _show(bar, len(z0) - len(idx))
        if not len(idx):
            break
        end, jac = _exp_jacobians(metric, z0[idx], v[idx], n_steps)
        spread = torch.linalg.matrix_norm(jac) * v[idx].norm(dim=-1)  # Frobenius: NaN-safe
        scale[idx] = base[idx] + 8 * eps * spread
        go = residual[idx] > scale[idx]
        idx, end, jac = idx[go], end[go], jac[go]
        if not len(idx):
            break
        a, b, old = z0[idx], z1[idx], residual[idx]
        delta, info = torch.linalg.solve_ex(jac, end - b)
        # a singular Jacobian (a conjugate point): that pair stops where it is
        delta = torch.where((info == 0).unsqueeze(-1), delta, 0.0)
        trial = v[idx] - delta
        with torch.no_grad():
            new = (exp_map(metric, a, trial, n_steps=n_steps) - b).norm(dim=-1)
            retry = (~(new < old) & (info == 0)).nonzero()[:, 0]  # NaN too
            if len(retry):  # all their halved steps in one integration, not up to 7 in turn
                k = len(halves)
                tries = (v[idx[retry]].unsqueeze(1)
                         - halves[:, None] * delta[retry].unsqueeze(1)).reshape(-1, v.shape[-1])
                ends = exp_map(metric, a[retry].repeat_interleave(k, 0), tries, n_steps=n_steps)
                res = (ends - b[retry].repeat_interleave(k, 0)).norm(dim=-1).reshape(-1, k)
                first = (res < old[retry, None]).to(torch.int8).argmax(1)  # the longest step
                rows = torch.arange(len(retry), device=v.device)
                trial[retry] = tries.reshape(-1, k, v.shape[-1])[rows, first]
                new[retry] = res[rows, first]
        better = new < old
        iterations[idx] += 1
        stuck[idx[~better]] = True
        v[idx[better]] = trial[better].detach()
        residual[idx[better]] = new[better]
    with torch.no_grad():
        length = metric.quad(z0, v.unsqueeze(-2))[..., 0].clamp_min(0).sqrt()
    accepted = torch.minimum(scale, torch.maximum(base, eps**0.5 * distance))
    _show(bar, len(z0))
    return LogMapResult(v, length, residual, residual <= accepted, iterations)


def _show(bar: tqdm | None, n: int) -> None:
    """Set a bar that counts what is done to `n`."""
    if bar is not None:
        bar.n = n
        bar.refresh()


def _collocate(metric: Metric, z0: Tensor, z1: Tensor, curves: Tensor, tol: float,
               progress: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Geodesics from `z0 (B, d)` to `z1 (B, d)` as boundary value problems, by collocation
    (`scipy.integrate.solve_bvp`, one pair at a time) from the curves `(B, T, d)` at equal
    times and their finite-difference velocities: the state `(z, v)`, `z' = v`,
    `v' = -Gamma(z)[v, v]`, `z(0) = z0`, `z(1) = z1`, with the exact Jacobian (reverse
    mode, all mesh points in one pass). Unlike shooting it never integrates across the
    whole curve, so an exponential map with an ill-conditioned Jacobian in `v` (a stiff
    metric: up to 1e7 on a single-cell RHVAE) does not stop it. The relative residual
    tolerance is `tol`, but at least `1e5 eps` of the dtype: on that RHVAE in float32
    the contraction's rounding reaches 5e-4 of it, and meshes refined against that grew
    to thousands of nodes without converging, while at 1e-2 the lengths agree with
    float64 solutions at 1e-6 to 5e-5. Returns the initial velocities, the curves on the
    collocation's solution at the same times, and whether each solved; float64 inside
    scipy, the inputs' dtype and device outside. `progress` shows a bar over the pairs."""
    from scipy.integrate import solve_bvp

    dtype, device = z0.dtype, z0.device
    n, d = curves.shape[1], z0.shape[-1]
    t = np.linspace(0.0, 1.0, n)
    eye = torch.eye(d, dtype=dtype, device=device)
    ends = np.zeros((2 * d, 2 * d))
    ends[:d, :d] = np.eye(d)
    ends_jac = (ends, np.roll(ends, d, 0))  # the conditions' derivatives in y(0), y(1)
    tol = max(tol, 1e5 * torch.finfo(dtype).eps)

    def state(y: np.ndarray) -> tuple[Tensor, Tensor]:
        s = torch.as_tensor(y.T, device=device).to(dtype)
        return s[:, :d].contiguous(), s[:, d:].contiguous()

    def rate(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            accel = -christoffel_contract(metric, *state(y))
        return np.concatenate([y[d:], accel.double().cpu().numpy().T])

    def rate_jac(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        with torch.enable_grad():
            z, v = (s.requires_grad_() for s in state(y))
            accel = -christoffel_contract(metric, z, v)
            # each mesh point's acceleration depends on its own state only: d passes
            grads = torch.autograd.grad(accel, (z, v), eye[:, None].expand(d, *accel.shape),
                                        is_grads_batched=True, allow_unused=True)
        # on a metric constant in z the acceleration depends on neither: zero derivatives
        grads = [accel.new_zeros(d, *accel.shape) if g is None else g for g in grads]
        jac = np.zeros((2 * d, 2 * d, y.shape[1]))
        jac[:d, d:] = np.eye(d)[:, :, None]
        jac[d:] = torch.cat(grads, -1).permute(0, 2, 1).double().cpu().numpy()
        return jac

    velocity, paths = torch.zeros_like(z0), curves.clone()
    solved = torch.zeros(len(z0), dtype=torch.bool, device=device)
    pairs = zip(torch.cat([z0, z1], -1).double().cpu().numpy(), curves.double().cpu().numpy(),
                strict=True)
    for i, (ab, curve) in enumerate(tqdm(pairs, total=len(z0), disable=not progress,
                                         desc="collocation", unit="pair", leave=None)):
        guess = np.concatenate([curve, np.gradient(curve, t, axis=0, edge_order=2)], 1).T
        # max_nodes: that RHVAE's longest geodesics needed 1235 at 1e-6 in float64
        sol = solve_bvp(rate, lambda ya, yb, ab=ab: np.concatenate([ya[:d], yb[:d]]) - ab,
                        t, guess, fun_jac=rate_jac, bc_jac=lambda ya, yb: ends_jac, tol=tol,
                        max_nodes=5000)
        if sol.success and np.isfinite(sol.y).all():
            velocity[i] = torch.as_tensor(sol.y[d:, 0], dtype=dtype, device=device)
            paths[i] = torch.as_tensor(sol.sol(t)[:d].T, dtype=dtype, device=device)
            solved[i] = True
    return velocity, paths, solved


def _mend(metric: Metric, z0: Tensor, z1: Tensor, res: LogMapResult, reference: Tensor,
          curves: Tensor, tol: float, n_steps: int, wanted: Tensor, progress: bool = False
          ) -> tuple[LogMapResult, Tensor]:
    """Collocation (`_collocate`, from `curves (B, T, d)`) for the `wanted (B,)` pairs whose
    shot missed its point or is more than `_MINIMISING_SLACK` longer than `reference
    (B,)`, the length of a curve joining the same points. A collocated geodesic replaces
    the shot only where the collocation solved and is within that slack of the
    reference, so no pair gets worse. Returns the result, `collocated` set, and the
    curves with the collocated geodesics in place. `progress`: the collocation's bar."""
    wrong = wanted & (~res.converged | ~(res.length <= _MINIMISING_SLACK * reference))
    collocated = torch.zeros_like(wrong)
    idx = wrong.nonzero()[:, 0]
    if len(idx):
        v, paths, solved = _collocate(metric, z0[idx], z1[idx], curves[idx], tol,
                                      progress=progress)
        # a coarse curve can be too far from the geodesic for the collocation's Newton (on
        # the single-cell RHVAE one 32-point fit, 0.8 % longer than a 64-point one): again
        # from a fit with 4x the segments, started from that curve
        again = (~solved).nonzero()[:, 0]
        if len(again):
            n = 4 * curves.shape[1] - 3
            finer = torch.nn.functional.interpolate(curves[idx[again]].transpose(1, 2), size=n,
                                                    mode="linear", align_corners=True)
            finer = fit_geodesics(metric, z0[idx[again]], z1[idx[again]], n_points=n,
                                  init=finer.transpose(1, 2).contiguous()).points.detach()
            v[again], finer, solved[again] = _collocate(metric, z0[idx[again]], z1[idx[again]],
                                                        finer, tol, progress=progress)
            paths[again] = finer[:, ::4]
        with torch.no_grad():
            length = metric.quad(z0[idx], v.unsqueeze(-2))[..., 0].clamp_min(0).sqrt()
        take = solved & (length <= _MINIMISING_SLACK * reference[idx])
        idx, v, paths, length = idx[take], v[take], paths[take], length[take]
    if len(idx):
        with torch.no_grad():
            velocity, lengths, residual, converged, curves = (x.clone() for x in (
                res.velocity, res.length, res.residual, res.converged, curves))
            velocity[idx], lengths[idx], converged[idx], curves[idx] = v, length, True, paths
            residual[idx] = (exp_map(metric, z0[idx], v, n_steps=n_steps) - z1[idx]).norm(dim=-1)
        collocated[idx] = True
        res = replace(res, velocity=velocity, length=lengths, residual=residual,
                      converged=converged)
    return replace(res, collocated=collocated), curves


def parallel_transport(metric: Metric, curve: Curve, w: Tensor, *, n_steps: int = 50) -> Tensor:
    """Parallel-transport vectors `w (B, k, d)` (or one per curve, `(B, d)`) from `t = 0`
    along a differentiable curve `t (T,) -> (B, T, d)`, such as a `NeuralGeodesic`, by
    solving `w' = -Gamma(gamma)[gamma', w]` (Runge-Kutta, velocities by forward mode).
    Returns the vectors at `n_steps + 1` equal times in [0, 1]: `(B, n_steps + 1, k, d)`,
    or `(B, n_steps + 1, d)` for `(B, d)` input. Lengths and angles in `G` are preserved.
    A module curve gets its times in its own dtype and device (`module_spec`)."""
    n_steps = positive_int(n_steps, "n_steps")
    if not callable(curve):
        raise TypeError(f"curve must be a differentiable function of the times, t (T,) -> "
                        f"points (B, T, d), such as a NeuralGeodesic; got "
                        f"{type(curve).__name__}")

    w = as_points(metric, w, "w")  # the metric's dtype and device, as points are
    # times in the curve's own dtype and device (a NeuralGeodesic left on the CPU with a
    # CUDA metric), its points and velocities then in the metric's
    dtype, device = module_spec(curve) or (w.dtype, w.device)
    spec = {"dtype": dtype, "device": device}

    def rate(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        point, velocity = jvp(curve, (t.reshape(1).to(**spec),), (torch.ones(1, **spec),))
        point, velocity = (a[:, 0].to(w) for a in (point, velocity))
        return (_transport_rate(metric, point, velocity, s[0]),)

    with torch.no_grad():  # one point per curve: else an unpacking error inside the steps
        start = curve(torch.zeros(1, **spec))
    if (not isinstance(start, Tensor) or start.dim() != 3 or start.shape[1] != 1
            or w.dim() not in (2, 3) or (len(w), w.shape[-1]) != (len(start), start.shape[-1])):
        got = tuple(start.shape) if isinstance(start, Tensor) else type(start).__name__
        raise ValueError(f"parallel_transport needs a curve t (T,) -> (B, T, d) and vectors "
                         f"w (B, k, d) or (B, d) on its B curves; the curve gave {got} for "
                         f"one time and w has shape {tuple(w.shape)}")
    _check_differentiable(curve, spec)
    single = w.dim() == 2
    states = _rk4(rate, (w.unsqueeze(1) if single else w,), n_steps)
    out = torch.stack([s[0] for s in states], 1)
    return out[:, :, 0] if single else out


def _check_differentiable(curve: Curve, spec: dict) -> None:
    """Raise ValueError for a curve whose points move but whose forward-mode velocity is zero
    at three inner times: it is not differentiable in t (a `.detach()` or numpy inside), and
    transporting along it would return the vectors unchanged."""
    t = torch.tensor([0.25, 0.5, 0.75], **spec)
    with torch.no_grad():  # forward mode only: no graph for the curve's parameters
        points, velocities = jvp(curve, (t,), (torch.ones_like(t),))
    if not bool(velocities.any()) and bool((points != points[:, :1]).any()):
        raise ValueError("the curve's points move but its velocity (forward mode) is zero: it "
                         "must be differentiable in t (no .detach() or numpy inside), or "
                         "parallel_transport returns the vectors unchanged")


# shot lengths up to this factor over the fitted curve's count as the same geodesic
_MINIMISING_SLACK = 1.05


@dataclass
class FrechetMean:
    """The weighted Frechet (Karcher) mean `mean (d,)` of points in a latent metric, their
    weighted mean squared geodesic distance to it, `variance`, `converged` (the mean
    velocity to the points fell below `tol` of their spread, and the shots' velocity
    errors are within `integration_tol`), the `iterations` taken (steps of the start
    and Newton steps), and why it stopped, `stopped`: `"converged"`, `"max_iter"` (the
    budget ran out), `"stalled"` (no step, down to 1/256 of Newton's, shortened the mean
    log map: the log maps' accuracy or a singular metric), `"integration"` (the mean log
    map vanished, but after `max_doublings` some shot's estimated velocity error still
    exceeded `integration_tol` of its velocity, or shots with twice the steps failed) or
    `"log_maps"` (neither
    shooting nor collocation found a minimising geodesic from the start to some points:
    Newton's steps would follow wrong log maps, so the start is returned, its `variance`
    that of the fitted curves, an upper bound). `n_steps`: the integrator's steps it
    ended with; `integration_error (N,)` and `velocity_error (N,)`: Richardson's estimates
    of each shot log map's end point and velocity errors at the mean (see
    `LogMapResult`), NaN where collocation gave the log map (its velocity does not come
    from the integrator); None with `"log_maps"`."""

    mean: Tensor
    variance: Tensor
    converged: bool
    iterations: int
    stopped: str = "converged"
    n_steps: int = 20
    integration_error: Tensor | None = None
    velocity_error: Tensor | None = None


def _mean_step(metric: Metric, m: Tensor, w: Tensor, v: Tensor, length: Tensor
               ) -> tuple[Tensor, Tensor, Tensor]:
    """The Karcher step `sum_i w_i v_i` at `m` (minus half the variance's gradient), its
    metric length, and the variance `sum_i w_i length_i^2`."""
    step = (w[:, None] * v).sum(0)
    with torch.no_grad():  # a decoder's parameters would carry a graph along
        size = metric.quad(m[None], step[None, None])[0, 0].clamp_min(0).sqrt()
    return step, size, (w * length.square()).sum()


def _fitted_start(metric: Metric, z: Tensor, w: Tensor, tol: float, max_iter: int,
                  fit_kwargs: dict, bar: tqdm) -> tuple[Tensor, Tensor, Tensor, Tensor, int]:
    """Karcher steps `m <- m + r sum_i w_i v_i` from the Euclidean mean, with the initial
    velocities `v_i` of energy-minimising curves (no shooting: on an RHVAE a fit of 100
    curves costs about one geodesic integration, a shooting ten or more). The rate `r` is
    the secant (Barzilai-Borwein) estimate `<s, s> / <s, y>` in `G` from the last move `s`
    and the step's change over it, `-y`: where the variance curves more than in a flat
    metric, Karcher steps of rate 1 overshoot, and a rate that is only ever halved ends up
    crawling. A step that does not lower the curves' variance is halved. Stops when the
    step's metric length is at most `tol` times the root mean squared length, when the
    rate falls below 1/256 (the fits resolve no further), or after `max_iter` steps.
    Returns the point, the fitted velocities, curve lengths and curves there, and the
    steps taken."""
    m = z[0] + (w[:, None] * (z - z[0])).sum(0)  # exactly the point where all are one point
    v, length, curves = _fitted_logs(metric, m.expand_as(z).contiguous(), z, **fit_kwargs)
    step, size, var = _mean_step(metric, m, w, v, length)
    rate, iterations = 1.0, 0
    while iterations < max_iter and rate >= 1 / 256 and not size <= tol * var.sqrt():
        trial = m + rate * step
        if not bool(trial.isfinite().all()):  # fit_geodesics refuses it: a failed step
            rate /= 2
            continue
        v_new, length_new, curves_new = _fitted_logs(metric, trial.expand_as(z).contiguous(),
                                                     z, **fit_kwargs)
        step_new, size_new, var_new = _mean_step(metric, trial, w, v_new, length_new)
        if not var_new < var:
            rate /= 2
            continue
        with torch.no_grad():
            G = metric.metric(trial[None])[0]
        moved, change = rate * step, step - step_new
        curvature = moved @ G @ change
        if curvature > 0:  # else no curvature seen along the move: keep the rate
            rate = float((moved @ G @ moved / curvature).clamp(1 / 256, 4.0))
        m, v, length, curves = trial, v_new, length_new, curves_new
        step, size, var = step_new, size_new, var_new
        iterations += 1
        bar.update()
    return m, v, length, curves, iterations


def _shot_errors(metric: Metric, m: Tensor, z: Tensor, logs: LogMapResult, n_steps: int
                 ) -> _Richardson:
    """Richardson's estimates (`_integration_errors`) for each shot log map from `m` to
    `z (N, d)`, NaN where it was collocated: its velocity does not come from the
    integrator, and integrating it measures the exponential map's conditioning instead."""
    nan = torch.full_like(logs.length, math.nan)
    errors = _Richardson(nan, nan.clone(), nan.clone())
    shot = ~logs.collocated
    if bool(shot.any()):  # metrics may refuse empty batches
        some = _integration_errors(metric, m.expand_as(z[shot]).contiguous(),
                                   logs.velocity[shot], n_steps)
        errors.end[shot], errors.velocity[shot], errors.rounding[shot] = (
            some.end, some.velocity, some.rounding)
    return errors


def _finer_logs(metric: Metric, m: Tensor, z: Tensor, w: Tensor, logs: LogMapResult,
                curves: Tensor, n_steps: int, tol: float, max_iter: int, progress: bool = False
                ) -> tuple[LogMapResult, Tensor] | None:
    """The log maps at `m` shot again with `n_steps`, from their last velocities (a Newton
    step or two each), and collocated where those shots fail (`_mend`); collocated log maps
    stay as they are, no integration made them. None where some weighted log map failed."""
    at, kept = m.expand_as(z).contiguous(), logs.collocated
    new = _shoot(metric, at, z, logs.velocity, n_steps, tol, max_iter, skip=kept)
    with torch.no_grad():
        reference = curve_length(metric, curves)
    new, curves = _mend(metric, at, z, new, reference, curves, tol, n_steps, (w > 0) & ~kept,
                        progress=progress)
    if bool((~new.converged & (w > 0) & ~kept).any()):
        return None
    # the collocated as they were (their velocities unchanged), residuals at the new steps
    return replace(new, length=torch.where(kept, logs.length, new.length),
                   converged=new.converged | kept, collocated=new.collocated | kept), curves


def _newton_step(metric: Metric, m: Tensor, z: Tensor, w: Tensor, logs: LogMapResult,
                 curves: Tensor, n_steps: int, tol_shoot: float, max_shoot: int,
                 progress: bool = False) -> tuple[Tensor, LogMapResult, Tensor] | None:
    """Newton's step on the mean log map from `m`, halved up to 8 times until it shortens
    the mean log map (see `frechet_mean`): the new point, its log maps and their curves,
    or None where no step did."""
    step, size, _ = _mean_step(metric, m, w, logs.velocity, logs.length)
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    # moves a curve's start with the mean, its end fixed: the next collocation's guess
    lever = torch.linspace(1, 0, curves.shape[1], dtype=z.dtype, device=z.device)[:, None]
    _, jac_m, jac_v = _exp_jacobians(metric, m.expand_as(z), logs.velocity, n_steps, base=True)
    # d log_m(z_i) / dm = -S_i; a singular d exp/dv (a conjugate point) counts as flat,
    # and so does a collocated pair whose integration from its velocity ends more than
    # sqrt(tol) of the distance from its point: its Jacobi fields belong to another curve
    S, info = torch.linalg.solve_ex(jac_v, jac_m)
    followed = ~logs.collocated | (logs.residual <= math.sqrt(tol_shoot) * (z - m).norm(dim=-1))
    trusted = (info == 0) & S.isfinite().flatten(1).all(1) & followed
    S = torch.where(trusted[:, None, None], S, eye)
    direction, info = torch.linalg.solve_ex((w[:, None, None] * S).sum(0), step)
    with torch.no_grad():
        G = metric.metric(m[None])[0]
    if info != 0 or not bool(direction.isfinite().all()) or not step @ G @ direction > 0:
        direction = step  # not a descent direction: the Karcher step
    for halving in range(9):
        alpha = 0.5 ** halving
        trial = m + alpha * direction
        at = trial.expand_as(z).contiguous()
        # collocated pairs would fail shooting again: collocation at once
        new = _shoot(metric, at, z, logs.velocity - alpha * (S @ direction), n_steps,
                     tol_shoot, max_shoot, skip=logs.collocated)
        guides = curves + lever * (alpha * direction)
        with torch.no_grad():
            reference = curve_length(metric, guides)
        new, new_curves = _mend(metric, at, z, new, reference, guides, tol_shoot, n_steps,
                                w > 0, progress=progress)
        if bool((~new.converged & (w > 0)).any()):
            continue  # some log map failed: a shorter step
        if _mean_step(metric, trial, w, new.velocity, new.length)[1] < size:
            return trial, new, new_curves
    return None


def frechet_mean(metric: Metric, z: Tensor, weights: Tensor | None = None, *,
                 max_iter: int = 30, tol: float = 1e-4, n_steps: int = 20,
                 integration_tol: float | None = None, max_doublings: int = 4,
                 log_tol: float = 1e-6, log_max_iter: int = 20, progress: bool = False,
                 **fit_kwargs) -> FrechetMean:
    """The point `m` minimising the weighted variance `sum_i w_i d(m, z_i)^2` of `z (N, d)`
    (weights normalised to sum 1), where the mean log map `sum_i w_i log_m(z_i)` vanishes.

    1. A start (`_fitted_start`): Karcher steps with the log maps of fitted curves, until
       the step is within `sqrt(tol)` of the points' root mean squared distance.
    2. Newton's method on the mean log map with exact log maps (`log_map`'s shooting). The
       derivative of `log_m(z_i)` in `m` is `-(d exp/dv)^{-1} (d exp/dm)` (Jacobi fields,
       reverse mode through the integrator); it gives Newton's step (the Karcher step in
       a flat metric) and carries each log map to the new point to first order, so the
       shooting there starts close. A step that does not shorten the mean log map is
       halved, up to 8 times. The variance is no judge this close: the integrator's error
       puts the minimum of the shot lengths' variance a little off the zero of the mean
       log map (a 10-epoch RHVAE: 71.2409 at the start, 0.01 away, against 71.2422 at the
       zero with 20 steps; the other way round with 80).
       Where a shot misses its point or is more than 5 % longer than its fitted curve (not
       the minimising geodesic), collocation replaces it (see `log_map`), at the start
       from the fitted curve and after each step from the last geodesic, its start moved
       along; such a pair's `S_i` counts as flat unless integrating from its velocity
       reaches its point (on a stiff metric it does not: the very reason shooting failed).
    3. With `integration_tol`, where Newton has converged (or stalled) with `n_steps`, the
       shots' velocity errors are estimated as in `log_map`: while some weighted shot's
       exceeds `integration_tol |v_i|` (or what the rounding puts there), the steps
       double (at most `max_doublings` times), the log maps are shot again from their
       velocities and Newton goes on. Where the exponential map is well conditioned the
       mean is then as accurate as the tolerances say (the half-plane from 4 steps: 3e-4
       of the rms distance off with 4, 2e-5 after one doubling). Measured at 1e-4 with
       the pipeline's 32-point fits (2026-12-02): MNIST's RHVAE keeps 20 steps (velocity
       errors up to 5.7e-5 of the velocities; the mean moves 3e-6 of the codes' rms
       coordinate distance with 80); a single-cell negative-binomial RHVAE (56 codes),
       whose 20-step mean lay 4.4e-4 of that distance off the 80- and 160-step ones
       (velocity errors up to 3.2e-3), doubles to 80 steps and lands within 7e-6 of them
       (48 s against 33 s); the multinomial one, whose 20-step mean was already within
       2e-5 (but one velocity 1.5 % off), doubles to 80 too (41 s against 26 s) and stays
       there. The end point's error, the criterion before, took both to 320 steps (61 s
       and 64 s), the multinomial one stopping `"integration"`, for the same means. The
       estimates are always made once at the end (`integration_error`,
       `velocity_error`).

    Converged when the mean log map's metric length is at most `tol` times the root mean
    squared distance, and the shots' velocities within `integration_tol`; Newton's
    quadratic convergence takes the start's `sqrt(tol)` there in a step or two. Stops after
    `max_iter` steps in all, or when no halved step shortens the mean log map (a
    step where some log map failed counts as not shortening it), and never starts Newton's
    method when some log map at the start failed, collocated too (the start is returned;
    `stopped` says which). `log_tol` and `log_max_iter` are the shooting's (`log_map`'s
    `tol` and `max_iter`), `fit_kwargs` go to `fit_geodesics`. Unique where the points lie
    in a small enough convex region. `z` may be a numpy array or a tensor of another
    dtype: it is cast to the metric's dtype and device, and the mean comes in that dtype;
    NaN or infinite points are a ValueError naming them. `progress` shows a bar over the
    steps (of `max_iter`) with the stage, the mean log map's length in units of its
    tolerance (converged at 1 or less) and the integrator's steps, and the fits' and
    collocations' bars."""
    z = latent_points(metric, z, "z", finite=True)
    w = (torch.ones(len(z), dtype=z.dtype, device=z.device) if weights is None
         else as_tensor(weights, None).to(dtype=z.dtype, device=z.device))
    if (z.dim() != 2 or w.shape != (len(z),) or not bool(torch.isfinite(w).all())
            or bool((w < 0).any()) or float(w.sum()) <= 0):
        raise ValueError(f"need points (N, d) and N finite non-negative weights, not all zero; "
                         f"got {tuple(z.shape)} and {tuple(w.shape)}")
    n_steps = positive_int(n_steps, "n_steps")
    max_iter = positive_int(max_iter, "max_iter", 0)
    tol = positive_number(tol, "tol", zero=True)
    max_doublings = _check_integration(integration_tol, max_doublings)
    w = w / w.sum()
    # named here: as **log_kwargs, log_map's tol and max_iter could never be given, the
    # mean's own being named the same
    tol_shoot = positive_number(log_tol, "log_tol", zero=True)
    max_shoot = positive_int(log_max_iter, "log_max_iter", 0)
    with tqdm(total=max_iter, disable=not progress, desc="Frechet mean", unit="step") as bar:
        bar.set_postfix(stage="start")
        m, v, fitted, curves, iterations = _fitted_start(
            metric, z, w, math.sqrt(tol), max_iter, {**fit_kwargs, "progress": progress}, bar)
        start = m.expand_as(z).contiguous()
        logs = _shoot(metric, start, z, v, n_steps, tol_shoot, max_shoot)
        # a geodesic longer than a curve joining the same points does not minimise (beyond
        # the quadrature's error): on a stiff metric (a single-cell RHVAE, G's eigenvalues
        # 0.09 to 97 along a curve) a few shots end on such geodesics, 3-8x too long, and
        # Newton on them stalls 800x from converged after minutes, at a point no better than
        # the start; nor is a shot that missed its point a log map (a single-cell
        # negative-binomial RHVAE: 10 of 56 missed by 0.3 to 3.7, and Newton on them stalled
        # at a worse point). Collocation replaces those; only where it fails too is the
        # start returned
        logs, curves = _mend(metric, start, z, logs, fitted, curves, tol_shoot, n_steps, w > 0,
                             progress=progress)
        wrong = ~(logs.length <= _MINIMISING_SLACK * fitted) | ~logs.converged
        if bool((wrong & (w > 0)).any()):
            return FrechetMean(m, (w * fitted.square()).sum(), False, iterations, "log_maps",
                               n_steps)
        doublings = 0
        while True:
            size, var = _mean_step(metric, m, w, logs.velocity, logs.length)[1:]
            done = bool(size <= tol * var.sqrt())
            bar.set_postfix(stage="Newton", residual=f"{float(size / var.sqrt()) / tol:.2g}",
                            steps=n_steps)
            moved = None if done or iterations >= max_iter else _newton_step(
                metric, m, z, w, logs, curves, n_steps, tol_shoot, max_shoot, progress=progress)
            if moved is not None:
                (m, logs, curves), iterations = moved, iterations + 1
                bar.update()
                continue
            errors = _shot_errors(metric, m, z, logs, n_steps)
            accurate = integration_tol is None or bool((
                _accurate(errors, logs.velocity, integration_tol) | logs.collocated | (w == 0)
            ).all())
            # converged or stalled on shots the integrator gets wrong: more steps
            finer = (None if accurate or doublings == max_doublings or iterations >= max_iter
                     else _finer_logs(metric, m, z, w, logs, curves, 2 * n_steps, tol_shoot,
                                      max_shoot, progress=progress))
            if finer is not None:
                (logs, curves), n_steps, doublings = finer, 2 * n_steps, doublings + 1
                continue
            stopped = ("max_iter" if not done and iterations >= max_iter
                       else "stalled" if not done
                       else "converged" if accurate else "integration")
            return FrechetMean(m, var, stopped == "converged", iterations, stopped, n_steps,
                               errors.end, errors.velocity)


def geodesic_spray(metric: Metric, centre: Tensor, n_directions: int = 16, radius: float = 1.0,
                   *, n_steps: int = 40) -> GeodesicPath:
    """Geodesics leaving `centre (2,)` of a 2-D latent space in `n_directions` directions at
    equal coordinate angles, each with metric speed `radius`: where geodesics minimise, they
    end on the geodesic circle of that radius. Straight spokes of equal coordinate length
    mean a flat metric; the bending and stretching show its curvature and scale."""
    centre = latent_points(metric, centre, "centre", finite=True)
    if centre.shape != (2,):
        raise ValueError(f"a spray needs one point of a 2-D latent space, got shape "
                         f"{tuple(centre.shape)}")
    n_directions = positive_int(n_directions, "n_directions")
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    angles = torch.arange(n_directions, dtype=centre.dtype, device=centre.device) * (
        2 * math.pi / n_directions)
    u = torch.stack([angles.cos(), angles.sin()], -1)
    points = centre.expand(n_directions, 2).contiguous()
    with torch.no_grad():
        speed = metric.quad(points, u.unsqueeze(-2))[:, 0].clamp_min(0).sqrt()
    return integrate_geodesic(metric, points, radius * u / speed[:, None], n_steps=n_steps)
