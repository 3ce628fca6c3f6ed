"""Geodesics by energy minimisation, batched over pairs of endpoints; distance matrices
and geodesic interpolation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..validate import as_tensor, positive_int
from .curves import NeuralGeodesic, curve_energy, curve_length, segment_quads
from .graph import graph_curves
from .metrics import (
    Metric,
    _base,
    check_user_metric,
    latent_points,
    metric_for,
    pair_rows,
    positive_number,
)

# energy(x, idx) -> (energy (b,), preconditioner weights (b, T-1) or None) for the
# parameter rows x (b, n) of the pairs idx (b,)
EnergyFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor | None]]


@dataclass
class GeodesicResult:
    """Fitted geodesics, one row per pair of endpoints.

    `length` and `energy` are those of the returned curve (in the metric),
    `line_length` that of the straight line between the same endpoints,
    `euclidean_length` the returned curve's length in the flat metric. `converged` is
    True only where the relative energy change over the last `window` iterations fell
    below `tol`. The shortest of the fit, the straight line and the initial curve is
    returned: `fell_back` marks pairs where that is the straight line, `kept_init` those
    where it is the initial curve (never with the straight-line start); `init_length` is
    the initial curve's length (`line_length` for the straight-line start).
    """

    points: Tensor  # (B, T, d)
    t: Tensor  # (T,)
    length: Tensor  # (B,)
    energy: Tensor  # (B,)
    euclidean_length: Tensor  # (B,)
    line_length: Tensor  # (B,)
    converged: Tensor  # (B,) bool
    iterations: Tensor  # (B,) int
    fell_back: Tensor  # (B,) bool
    init_length: Tensor | None = None  # (B,); None only in results made elsewhere
    kept_init: Tensor | None = None  # (B,) bool
    from_init: Tensor | None = None  # (B,) bool, with also_line: the given start's result


def fit_geodesics(
    metric: Metric,
    z_start: Tensor,
    z_end: Tensor,
    *,
    n_points: int = 50,
    curve: str = "discrete",
    init: Tensor | str | None = None,
    nodes: Tensor | None = None,
    graph_k: int = 10,
    also_line: bool = False,
    optimizer: str = "lbfgs",
    max_iter: int = 500,
    tol: float = 1e-5,
    window: int = 5,
    lr: float | None = None,
    hidden: Sequence[int] = (16, 16, 16),
    chunk_size: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = False,
    seed: int = 0,
) -> GeodesicResult:
    """Minimise the energy of curves between `z_start (B, d)` and `z_end (B, d)` (or `(d,)`),
    all pairs at once.

    - `curve="discrete"`: the `n_points - 2` interior points are the parameters (energy
      of the piecewise-linear curve, see `curve_energy`); `"neural"`: a `NeuralGeodesic`
      with `hidden` layers per pair, exact velocities.
    - `init`: where discrete curves start. None or `"line"`: the straight line; a tensor
      `(B, n_points, d)` of curves from `z_start` to `z_end` (their end points must be
      those, to rounding): their interior points; `"graph"`: the shortest paths through
      the `graph_k`-nearest-neighbour graph of `nodes (M, d)` and the endpoints
      (`graph_curves`), which go around high-metric ridges that the line's fit cannot
      cross (a saddle or a local minimum on the line).
    - `also_line=True` (with `init` curves or `"graph"`): fit from the straight line too,
      all 2B curves in one batch, and keep each pair's shorter result (`from_init` says
      which). On a ReLU decoder's rough pull-back the two starts reach different local
      minima, either one the shorter for some pairs.
    - `optimizer="lbfgs"`: L-BFGS per pair (memory 10, Armijo backtracking), for discrete
      curves preconditioned by the metric-weighted second-difference matrix, which makes
      the iteration count nearly independent of `n_points`; `lr` scales its steps
      (default 1). `"adam"`: Adam with learning rate `lr` (default 1e-2 for discrete
      curves, 1e-3 for neural ones).
    - Stops a pair when `max - min` of its last `window + 1` energies is at most `tol`
      times its energy, or after `max_iter` iterations (then `converged` is False).
    - A fit longer than the straight line is replaced by the line (`fell_back`), and
      one longer than a given initial curve by that curve (`kept_init`): the result is
      never longer than either. `converged` still reports the optimiser's verdict.
    - Pairs go through in chunks of `chunk_size`; converged pairs leave the batch.
    - `device`: where to fit (default: the metric's device, for a plain `Metric(fn)` the
      endpoints'; a device this machine lacks is a ValueError); the metric must work there.
      `seed` draws the neural curves' initial weights.
    - The endpoints may be tensors of any float or integer dtype or numpy arrays: they are
      cast to the metric's dtype (`metrics.as_points`), and the results come in it. NaN or
      infinite endpoints are a ValueError naming them.
    - A metric of the user's function (`Metric(fn)`) whose G is not symmetric positive
      semi-definite at the endpoints or at a point of the fitted or returned curves is a
      ValueError naming the point (`metrics.check_user_metric`).

    The defaults were chosen by measurement (hyperbolic, RHVAE and decoder pull-back
    metrics): discrete curves with L-BFGS converge in 10-15 iterations to lengths within
    1e-6 of a float64 reference; Adam needs hundreds of iterations, and neural curves
    several times more evaluations (their lengths are checked on a 10x finer grid, as
    an MLP can learn to speed through high-metric regions between grid points). The
    pull-back metric of a ReLU decoder changes abruptly between the network's linear
    regions (piecewise constant for a Gaussian mean), so its energy is rough and fits can
    stop in a local minimum near the straight line: prefer smooth activations (tanh,
    softplus) for geometry.
    """
    if curve not in ("discrete", "neural"):
        raise ValueError(f"curve must be 'discrete' or 'neural', got {curve!r}")
    if optimizer not in ("lbfgs", "adam"):
        raise ValueError(f"optimizer must be 'lbfgs' or 'adam', got {optimizer!r}")
    n_points = positive_int(n_points, "n_points", 3)
    max_iter, window = positive_int(max_iter, "max_iter"), positive_int(window, "window")
    chunk_size = positive_int(chunk_size, "chunk_size")
    tol = positive_number(tol, "tol", zero=True)
    lr = None if lr is None else positive_number(lr, "lr")
    z_start = latent_points(metric, z_start, "z_start", finite=True, device=device)
    z_end = latent_points(metric, z_end, "z_end", finite=True, device=z_start.device)
    device = z_start.device
    z_start, z_end = pair_rows(z_start, z_end)
    check_user_metric(metric, torch.cat([z_start, z_end]))
    start_curves = _initial_curves(metric, z_start, z_end, init, nodes, graph_k, n_points, curve)
    if also_line:
        if start_curves is None:
            raise ValueError("also_line fits from the line besides a given start: give init "
                             "curves or init='graph'")
        line = _line(z_start, z_end, torch.linspace(0, 1, n_points, dtype=z_start.dtype,
                                                    device=device))
        twice = fit_geodesics(
            metric, z_start.repeat(2, 1), z_end.repeat(2, 1), n_points=n_points,
            init=torch.cat([line, start_curves]), optimizer=optimizer, max_iter=max_iter,
            tol=tol, window=window, lr=lr, chunk_size=chunk_size, progress=progress)
        return _shorter_start(twice)
    if lr is None:
        lr = 1.0 if optimizer == "lbfgs" else (1e-2 if curve == "discrete" else 1e-3)
    t = torch.linspace(0, 1, n_points, dtype=z_start.dtype, device=device)
    starts = _line(z_start, z_end, t) if start_curves is None else start_curves

    parts = []
    # leave=None: a fit inside a log map or a Frechet mean leaves no bar behind
    with tqdm(total=z_start.shape[0], disable=not progress, desc="geodesics",
              leave=None) as bar:
        for z0, z1, c0 in zip(z_start.split(chunk_size), z_end.split(chunk_size),
                              starts.split(chunk_size), strict=True):
            if curve == "discrete":
                x0, energy, finish = _discrete_problem(metric, z0, z1, t, c0)
            else:
                x0, energy, finish = _neural_problem(metric, z0, z1, t, hidden, seed)
            minimise = _lbfgs if optimizer == "lbfgs" else _adam
            x, converged, iterations = minimise(
                energy, x0, max_iter=max_iter, tol=tol, window=window, lr=lr,
                precondition=curve == "discrete", bar=bar,
            )
            parts.append((*finish(x), converged, iterations))
    points, length, energy_, line_points, line_length, line_energy, converged, iterations = (
        torch.cat(p) for p in zip(*parts, strict=True)
    )
    # G where the fit went, as at the endpoints: an indefinite one makes the energy it
    # minimised meaningless, and the length takes negative squared speeds as 0
    check_user_metric(metric, points, " of a fitted curve")
    init_length, kept_init = line_length, torch.zeros_like(converged)
    if start_curves is not None:
        with torch.no_grad():
            init_length, init_energy = (torch.cat(p) for p in zip(*(
                (curve_length(metric, c, t), curve_energy(metric, c, t))
                for c in start_curves.split(chunk_size)), strict=True))
        kept_init = ~(length <= init_length)  # a NaN fit too
        points = torch.where(kept_init[:, None, None], start_curves, points)
        length = torch.where(kept_init, init_length, length)
        energy_ = torch.where(kept_init, init_energy, energy_)
    # the line replaces a longer (or NaN) fit, and a kept initial curve no shorter than it
    # (a start that was the line itself, where the graph did not join the pair)
    fell_back = torch.where(kept_init, ~(length < line_length), ~(length <= line_length))
    points = torch.where(fell_back[:, None, None], line_points, points)
    # the line or initial curve that replaced a longer fit, whose length took them as 0 too
    check_user_metric(metric, points[fell_back],
                      " of the line or initial curve returned for a longer fit")
    return GeodesicResult(
        points=points,
        t=t,
        length=torch.where(fell_back, line_length, length),
        energy=torch.where(fell_back, line_energy, energy_),
        euclidean_length=curve_length(_EUCLIDEAN, points),
        line_length=line_length,
        converged=converged,
        iterations=iterations,
        fell_back=fell_back,
        init_length=init_length,
        kept_init=kept_init & ~fell_back,
    )


def _shorter_start(twice: GeodesicResult) -> GeodesicResult:
    """Per pair, the shorter of the fits of `twice`: its first half started from the line,
    its second half from the given curves."""
    b = len(twice.length) // 2
    given = twice.length[b:] < twice.length[:b]
    init_length = torch.where(given, twice.init_length[b:], twice.line_length[:b])

    def pick(values: Tensor) -> Tensor:
        return torch.where(given.reshape(-1, *[1] * (values.dim() - 1)), values[b:], values[:b])

    return GeodesicResult(
        points=pick(twice.points), t=twice.t, length=pick(twice.length),
        energy=pick(twice.energy), euclidean_length=pick(twice.euclidean_length),
        line_length=twice.line_length[:b], converged=pick(twice.converged),
        iterations=pick(twice.iterations),
        fell_back=pick(twice.fell_back),
        init_length=init_length, kept_init=given & twice.kept_init[b:], from_init=given)


def _initial_curves(
    metric: Metric, z_start: Tensor, z_end: Tensor, init: Tensor | str | None,
    nodes: Tensor | None, graph_k: int, n_points: int, curve: str,
) -> Tensor | None:
    """The checked starting curves `(B, n_points, d)` of `fit_geodesics`, None for the line."""
    if nodes is not None and not (isinstance(init, str) and init == "graph"):
        raise ValueError("nodes make the graph start's vertices: pass init='graph' with them")
    if init is None or (isinstance(init, str) and init == "line"):
        return None
    if curve != "discrete":
        raise ValueError(f"init applies to discrete curves; {curve!r} curves start as the line")
    if isinstance(init, str):
        if init != "graph":
            raise ValueError(f"init must be None, 'line', 'graph' or a tensor of curves, "
                             f"got {init!r}")
        if nodes is None:
            raise ValueError("init='graph' needs nodes (M, d), e.g. the training codes")
        return graph_curves(metric, z_start, z_end, nodes, k=graph_k, n_points=n_points).points
    curves = as_tensor(init, z_start.dtype, z_start.device).detach()
    expected = (len(z_start), n_points, z_start.shape[1])
    if tuple(curves.shape) not in (expected, expected[1:] if len(z_start) == 1 else None):
        raise ValueError(f"init must be curves of shape {expected} (pairs, n_points, d), got "
                         f"{tuple(curves.shape)}")
    curves = curves.reshape(expected)
    if not torch.isfinite(curves).all():
        raise ValueError("init must be finite")
    # the fit's endpoints are z_start and z_end: init's must be them, to rounding
    for which, ends, name in ((0, z_start, "z_start"), (-1, z_end, "z_end")):
        if not torch.allclose(curves[:, which], ends, rtol=1e-5, atol=1e-6):
            raise ValueError(f"init's {'first' if which == 0 else 'last'} points must be "
                             f"{name}")
    return torch.cat([z_start.unsqueeze(1), curves[:, 1:-1], z_end.unsqueeze(1)], 1)


_NEURAL_NODES = 50  # the fewest quadrature nodes of a neural curve's energy: n_points' default

_EUCLIDEAN = Metric(
    lambda z: torch.eye(z.shape[-1], dtype=z.dtype, device=z.device).expand(len(z), -1, -1)
)


def _line(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    # lerp is exact at both ends and constant between equal ends: (1 - s) z0 + s z1 strayed
    # by rounding (2e-6 at z = -30 in float32), which gave equal endpoints a line of
    # metric length 7e-8 and endpoints 1e-7 apart one 4x as long as their segment
    return torch.lerp(z0.unsqueeze(1), z1.unsqueeze(1), t.reshape(1, -1, 1))


def _discrete_problem(
    metric: Metric, z0: Tensor, z1: Tensor, t: Tensor, start: Tensor
) -> tuple[Tensor, EnergyFn, Callable[[Tensor], tuple[Tensor, ...]]]:
    b, d = z0.shape
    dt = t.diff()

    def points(x: Tensor, idx: Tensor) -> Tensor:
        return torch.cat([z0[idx, None], x.reshape(len(idx), -1, d), z1[idx, None]], 1)

    def energy(x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        pts = points(x, idx)
        start, end = segment_quads(metric, pts)
        with torch.no_grad():
            # the metric's scale along each segment, for the preconditioner
            sq = pts.diff(dim=1).square().sum(-1)
            tiny = torch.finfo(sq.dtype).tiny
            weight = torch.where(sq > 0, (start + end) / (2 * sq).clamp_min(tiny), 1.0)
        return 0.25 * ((start + end) / dt).sum(-1), weight / dt

    def finish(x: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            pts, line = points(x, torch.arange(b, device=x.device)), _line(z0, z1, t)
            return (pts, curve_length(metric, pts, t), curve_energy(metric, pts, t), line,
                    curve_length(metric, line, t), curve_energy(metric, line, t))

    x0 = start[:, 1:-1].reshape(b, -1)
    return x0, energy, finish


def _neural_problem(
    metric: Metric, z0: Tensor, z1: Tensor, t: Tensor, hidden: Sequence[int], seed: int
) -> tuple[Tensor, EnergyFn, Callable[[Tensor], tuple[Tensor, ...]]]:
    net = NeuralGeodesic(z0, z1, hidden=hidden, seed=seed)
    # the energy's nodes: t refined k-fold to at least _NEURAL_NODES. On a few nodes the
    # MLP learns to slow down at each and speed up between them (n_points 3: the velocity
    # of its quadrature tends to 0 wherever the curve goes), and the fits did not stop:
    # on a flat metric, 500 iterations for 8 pairs with n_points 3 to 10
    k = -(-(_NEURAL_NODES - 1) // (len(t) - 1))
    nodes = torch.linspace(0, 1, k * (len(t) - 1) + 1, dtype=t.dtype, device=t.device)

    def energy(x: Tensor, idx: Tensor) -> tuple[Tensor, None]:
        pts, vel = net.evaluate_with_velocities(x, z0[idx], z1[idx], nodes)
        return curve_energy(metric, pts, nodes, vel), None

    # lengths are measured on a 10x finer grid: a curve that learnt to speed through
    # high-metric regions between the nodes is caught there
    fine = torch.linspace(0, 1, 10 * (len(nodes) - 1) + 1, dtype=t.dtype, device=t.device)

    def finish(x: Tensor) -> tuple[Tensor, ...]:
        with torch.no_grad():
            pts, vel = net.evaluate_with_velocities(x, z0, z1, fine)
            line, line_vel = _line(z0, z1, fine), (z1 - z0).unsqueeze(1).expand(-1, len(fine), -1)
            return (pts[:, ::10 * k], curve_length(metric, pts, fine, vel),
                    curve_energy(metric, pts, fine, vel), line[:, ::10 * k],
                    curve_length(metric, line, fine, line_vel),
                    curve_energy(metric, line, fine, line_vel))

    return net.params.detach(), energy, finish


def _evaluate(fn: EnergyFn, x: Tensor, idx: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
    """Energy, its gradient with respect to `x`, and the preconditioner weights."""
    with torch.enable_grad():
        x = x.detach().requires_grad_()
        energy, weight = fn(x, idx)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad, weight


class _Tracker:
    """Per-pair energy history, convergence and the shrinking set of active pairs."""

    def __init__(self, x: Tensor, window: int, tol: float, bar: tqdm) -> None:
        self.x = x.clone()
        b = x.shape[0]
        self.converged = torch.zeros(b, dtype=torch.bool, device=x.device)
        self.iterations = torch.zeros(b, dtype=torch.long, device=x.device)
        self.active = torch.arange(b, device=x.device)
        self.history: Tensor | None = None
        self.window, self.tol, self.bar = window, tol, bar

    def step(self, x: Tensor, energy: Tensor) -> Tensor:
        """Record one iteration of the active pairs; return the mask of those that go on."""
        self.x[self.active] = x
        self.iterations[self.active] += 1
        if self.history is None:
            self.history = energy.unsqueeze(1)
        else:
            self.history = torch.cat([self.history, energy.unsqueeze(1)], 1)[:, -self.window - 1:]
        done = torch.zeros_like(energy, dtype=torch.bool)
        if self.history.shape[1] > self.window:
            spread = self.history.max(1).values - self.history.min(1).values
            done = spread <= self.tol * energy.abs()
        self.converged[self.active[done]] = True
        keep = ~done
        self.active, self.history = self.active[keep], self.history[keep]
        self.bar.update(int(done.sum()))
        return keep

    def result(self) -> tuple[Tensor, Tensor, Tensor]:
        self.bar.update(len(self.active))
        return self.x, self.converged, self.iterations


def _adam(
    fn: EnergyFn, x: Tensor, *, max_iter: int, tol: float, window: int, lr: float,
    precondition: bool, bar: tqdm,
) -> tuple[Tensor, Tensor, Tensor]:
    """Adam on every active pair, its state kept per pair."""
    track = _Tracker(x, window, tol, bar)
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for it in range(1, max_iter + 1):
        energy, grad, _ = _evaluate(fn, x, track.active)
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad.square()
        step = lr * (m / (1 - beta1**it)) / ((v / (1 - beta2**it)).sqrt() + eps)
        keep = track.step(x, energy)
        if not keep.any():
            break
        x, m, v = (x - step)[keep], m[keep], v[keep]
    return track.result()


def _tridiagonal_solve(weight: Tensor, rhs: Tensor) -> Tensor:
    """Solve `P y = rhs` for the second-difference matrix of the interior points with
    segment weights `weight (b, T-1)`: diagonal `w_{j-1} + w_j`, off-diagonal `-w_j`.
    `rhs (b, T-2, d)`; Thomas algorithm (P is symmetric positive definite)."""
    diag = weight[:, :-1] + weight[:, 1:]
    off = -weight[:, 1:-1]
    denom = diag[:, 0]
    c, y = [], [rhs[:, 0] / denom[:, None]]
    for j in range(1, diag.shape[1]):
        c.append(off[:, j - 1] / denom)
        denom = diag[:, j] - off[:, j - 1] * c[-1]
        y.append((rhs[:, j] - off[:, j - 1, None] * y[-1]) / denom[:, None])
    for j in range(len(y) - 2, -1, -1):
        y[j] = y[j] - c[j][:, None] * y[j + 1]
    return torch.stack(y, 1)


def _lbfgs(
    fn: EnergyFn, x: Tensor, *, max_iter: int, tol: float, window: int, lr: float,
    precondition: bool, bar: tqdm, memory: int = 10, max_backtracks: int = 30,
) -> tuple[Tensor, Tensor, Tensor]:
    """L-BFGS for every active pair with its own history and Armijo backtracking."""
    track = _Tracker(x, window, tol, bar)
    b, n = x.shape
    s_hist = x.new_zeros(b, memory, n)
    y_hist = x.new_zeros(b, memory, n)
    rho = x.new_zeros(b, memory)  # 0 marks an empty slot
    energy, grad, weight = _evaluate(fn, x, track.active)
    last_step = torch.full_like(energy, lr)

    def initial(q: Tensor, weight: Tensor | None, s_hist: Tensor, y_hist: Tensor) -> Tensor:
        """`H0 q`: the preconditioner (or identity) scaled by the newest curvature pair."""
        if precondition:
            shape = (q.shape[0], weight.shape[1] - 1, -1)
            r = _tridiagonal_solve(weight, q.reshape(shape)).reshape_as(q)
        else:
            r = q
        s, y = s_hist[:, -1], y_hist[:, -1]
        if precondition:
            hy = _tridiagonal_solve(weight, y.reshape(shape)).reshape_as(y)
            first = torch.ones_like(q[:, 0])
        else:
            hy = y
            # before any pair, a first step of length lr
            first = 1 / q.norm(dim=-1).clamp_min(torch.finfo(q.dtype).tiny)
        yhy = (y * hy).sum(-1)
        gamma = torch.where(yhy > 0, (s * y).sum(-1) / yhy.clamp_min(torch.finfo(q.dtype).tiny),
                            first)
        return gamma[:, None] * r

    for _ in range(max_iter):
        # two-loop recursion, newest pair last
        q = grad.clone()
        alphas = []
        for i in range(memory - 1, -1, -1):
            a = rho[:, i] * (s_hist[:, i] * q).sum(-1)
            q -= a[:, None] * y_hist[:, i]
            alphas.append(a)
        r = initial(q, weight, s_hist, y_hist)
        for i in range(memory):
            beta = rho[:, i] * (y_hist[:, i] * r).sum(-1)
            r += s_hist[:, i] * (alphas[memory - 1 - i] - beta)[:, None]
        direction = -r
        slope = (grad * direction).sum(-1)
        uphill = slope >= 0  # stale curvature pairs: restart from the preconditioned gradient
        if uphill.any():
            rho[uphill] = 0
            direction[uphill] = -initial(grad[uphill], None if weight is None else weight[uphill],
                                         s_hist[uphill], y_hist[uphill])
            slope = (grad * direction).sum(-1)

        # start from twice the last accepted step: 1 where the quadratic model holds, fewer
        # backtracks where the energy is rough (e.g. the pull-back of a ReLU decoder)
        step = (2 * last_step).clamp_max(lr)
        x_new, e_new, g_new = x.clone(), energy.clone(), grad.clone()
        w_new = None if weight is None else weight.clone()
        todo = torch.arange(len(x), device=x.device)
        for _ in range(max_backtracks):
            xt = x[todo] + step[todo, None] * direction[todo]
            et, gt, wt = _evaluate(fn, xt, track.active[todo])
            ok = torch.isfinite(et) & (et <= energy[todo] + 1e-4 * step[todo] * slope[todo])
            acc = todo[ok]
            x_new[acc], e_new[acc], g_new[acc] = xt[ok], et[ok], gt[ok]
            if w_new is not None:
                w_new[acc] = wt[ok]
            # backtrack to the minimum of the quadratic through E, slope and et, kept
            # within [0.1, 0.5] of the step (Nocedal & Wright, section 3.5)
            bad, alpha = todo[~ok], step[todo[~ok]]
            curv = et[~ok] - energy[bad] - slope[bad] * alpha
            quad_min = -slope[bad] * alpha.square() / (2 * curv)
            step[bad] = torch.where(torch.isfinite(quad_min), quad_min, 0.1 * alpha).clamp(
                0.1 * alpha, 0.5 * alpha)
            todo = todo[~ok]
            if len(todo) == 0:
                break
        # pairs whose line search failed stay put with a cleared memory
        rho[todo] = 0
        last_step = step.index_fill(0, todo, lr)

        s, y = x_new - x, g_new - grad
        sy = (s * y).sum(-1)
        good = sy > 1e-10 * (y * y).sum(-1).sqrt() * (s * s).sum(-1).sqrt()
        s_hist = torch.where(good[:, None, None], torch.cat([s_hist[:, 1:], s[:, None]], 1), s_hist)
        y_hist = torch.where(good[:, None, None], torch.cat([y_hist[:, 1:], y[:, None]], 1), y_hist)
        rho = torch.where(good[:, None],
                          torch.cat([rho[:, 1:], (1 / sy.where(good, 1.0))[:, None]], 1), rho)
        x, energy, grad, weight = x_new, e_new, g_new, w_new

        keep = track.step(x, energy)
        if not keep.any():
            break
        x, energy, grad = x[keep], energy[keep], grad[keep]
        weight = None if weight is None else weight[keep]
        s_hist, y_hist, rho, last_step = s_hist[keep], y_hist[keep], rho[keep], last_step[keep]
    return track.result()


def length_ratio(length: ArrayLike, line_length: ArrayLike) -> tuple[float, int]:
    """The mean ratio of geodesic to straight-line length over the pairs whose straight
    line has positive length, and how many pairs were left out: those whose ends coincide
    (a VQ-VAE snaps two samples to one code), where the ratio is 0 / 0. NaN when no pair
    is left."""
    length, line_length = np.asarray(length, dtype=float), np.asarray(line_length, dtype=float)
    kept = line_length > 0
    ratio = float(np.mean(length[kept] / line_length[kept])) if kept.any() else np.nan
    return ratio, int((~kept).sum())


def distance_matrix(metric: Metric, z: Tensor, other: Tensor | None = None, **fit_kwargs
                    ) -> Tensor:
    """Geodesic distances between all pairs of the points `z (N, d)`: `(N, N)`, symmetric,
    zero diagonal; with `other (M, d)`, from each point of `z` to each of `other`:
    `(N, M)`. Fits the `N (N-1) / 2` (or `N M`) pairs in one `fit_geodesics` call
    (keyword arguments passed on, e.g. `init="graph", nodes=z_train`: one graph for all
    pairs). The points may be numpy arrays or tensors of another dtype: the distances
    come in the metric's dtype; NaN or infinite points are a ValueError naming them."""
    device = fit_kwargs.get("device")
    z = _point_set(metric, z, "z", device)
    if other is not None:
        other = _point_set(metric, other, "other", device)
        if other.shape[-1] != z.shape[-1]:
            raise ValueError(f"z and other must have the same dimension, got {z.shape[-1]} "
                             f"and {other.shape[-1]}")
        n, m = len(z), len(other)
        if not n * m:
            return z.new_zeros(n, m)
        i, j = (k.flatten() for k in torch.meshgrid(torch.arange(n, device=z.device),
                                                    torch.arange(m, device=z.device),
                                                    indexing="ij"))
        return fit_geodesics(metric, z[i], other[j], **fit_kwargs).length.reshape(n, m)
    n = z.shape[0]
    if n < 2:
        return z.new_zeros(n, n)
    i, j = torch.triu_indices(n, n, offset=1, device=z.device)
    length = fit_geodesics(metric, z[i], z[j], **fit_kwargs).length
    dist = length.new_zeros(n, n)
    dist[i, j] = length
    dist[j, i] = length
    return dist


def _point_set(metric: Metric, z: Tensor, name: str, device: object) -> Tensor:
    """Points `(N, d)` in the metric's dtype, finite, or a ValueError."""
    z = latent_points(metric, z, name, finite=True, device=device)
    if z.dim() != 2:
        raise ValueError(f"distance_matrix needs points (N, d), got {name} of shape "
                         f"{tuple(z.shape)}")
    return z


def interpolate(
    model: nn.Module,
    z_start: Tensor,
    z_end: Tensor,
    n_points: int = 10,
    *,
    metric: Metric | None = None,
    **fit_kwargs,
) -> tuple[Tensor, Tensor]:
    """Decode `n_points` points along the geodesics from `z_start` to `z_end` (`(B, d)` or
    `(d,)`).

    The metric defaults to `metric_for(model)`; keyword arguments go to `fit_geodesics`.
    The geodesic is fitted with `n_points` points, which are spaced evenly in the metric.
    Returns the latent points `(B, n_points, d)` and the decoded means
    `(B, n_points, *event_shape)` (probabilities for Bernoulli and categorical decoders).
    """
    if not callable(getattr(model, "decode", None)):  # else an AttributeError after the fit
        raise TypeError(f"interpolate decodes with model.decode; {type(model).__name__} has "
                        "none: give the model, or fit_geodesics and decode fit.points yourself")
    metric = metric_for(model) if metric is None else metric
    fit = fit_geodesics(metric, z_start, z_end, n_points=n_points, **fit_kwargs)
    b, n, d = fit.points.shape
    with torch.no_grad():
        out = model.decode(fit.points.reshape(-1, d))
        if isinstance(out, Tensor):
            mean = out
        else:
            base = _base(out)
            mean = base.probs if isinstance(base, torch.distributions.Categorical) else out.mean
    return fit.points, mean.reshape(b, n, *mean.shape[1:])
