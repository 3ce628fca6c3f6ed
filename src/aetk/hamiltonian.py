"""The Hamiltonian flow shared by HVAE and RHVAE: leapfrog and generalised leapfrog steps,
the tempering schedule, the centroid metric of the RHVAE with its closed-form gradients,
HMC sampling, and divergence detection.

A point of the flow is a `Position`: z with the potential U(z) (the z-only part of the
Hamiltonian), its gradient, and what the ELBO and the next step reuse there. Each new
position is evaluated once; the momentum fixed-point iterations of the generalised
leapfrog only add the closed-form kinetic gradient (models.md, "Speed").
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution

from .train import TrainingDiverged
from .validate import positive_int

MAX_LATENT_NORM = 1e3
"""A flow that takes a position beyond this norm has diverged: the prior N(0, I) has no mass
there (log p(z) < -5e5). Large energy errors alone are not divergence: the ELBO stays a
bound for any volume-preserving flow, however inaccurately it conserves H."""


FIXED_POINT_TOLERANCE = 0.05
"""A generalised leapfrog step has not converged where its last fixed-point iteration still
moves `rho~` or `z'` by more than this fraction of their change over the step; `FlowMonitor`
warns when that holds for more than 1 % of the samples. Measured (latent 1, 5 centroids,
20,000 draws): at the default 3 iterations, steps whose 99th percentile of that move was
0.09-0.14 made `log_marginal` 0.005-0.06 nats too high (above log p(x)); at 0.04 and below it
stayed within its Monte Carlo error."""


class FixedPointWarning(RuntimeWarning):
    """The generalised leapfrog's fixed-point iterations did not converge: the flow is not
    volume-preserving, and the ELBO and `log_marginal` are no longer bounds of log p(x)."""


class FlowDiverged(TrainingDiverged):
    """The Hamiltonian flow diverged (a position beyond `MAX_LATENT_NORM`, non-finite values,
    or a failed Cholesky factorisation of the metric): the step size is too large."""


class MetricAt(NamedTuple):
    """The centroid metric evaluated at a batch of points."""

    weights: Tensor  # w_i(z) = exp(-|z - c_i|^2 / T^2), (B, N)
    G_inv: Tensor  # (B, d, d)
    chol: Tensor  # lower Cholesky factor of G_inv, (B, d, d)
    G: Tensor  # (B, d, d)
    log_det_G: Tensor  # (B,)
    info: Tensor  # Cholesky status, 0 where it succeeded, (B,)


class Position(NamedTuple):
    """A point z of the flow and what is reused there."""

    z: Tensor  # (B, d)
    potential: Tensor  # U(z), (B,)
    grad: Tensor  # grad_z U(z), (B, d)
    log_lik: Tensor | None = None  # log p(x|z), (B,)
    metric: MetricAt | None = None


PositionFn = Callable[[Tensor], Position]


class FlowEnd(NamedTuple):
    """Where a model's flow from z_0 ends, and the ELBO's terms there, per row."""

    z: Tensor  # z_K
    log_lik: Tensor  # log p(x|z_K)
    log_prior: Tensor  # log p(z_K)
    log_rho: Tensor  # log density of the final momentum
    log_gamma: Tensor  # log density of the initial momentum draw


def mv(A: Tensor, v: Tensor) -> Tensor:
    """Batched matrix-vector product `(B, d, d) x (B, d) -> (B, d)`."""
    return (A @ v.unsqueeze(-1)).squeeze(-1)


def inv_sqrt_beta(beta0: float | Tensor, k: int, n_steps: int) -> float | Tensor:
    """`1/sqrt(beta_k)` of the quadratic schedule:
    `(1 - 1/sqrt(beta0)) (k/K)^2 + 1/sqrt(beta0)`, so that `beta_K = 1`."""
    s0 = beta0**-0.5
    return (1 - s0) * (k / n_steps) ** 2 + s0


def tempering(beta0: float | Tensor, k: int, n_steps: int) -> float | Tensor:
    """`sqrt(beta_{k-1} / beta_k)`: the momentum's factor after leapfrog step k."""
    return inv_sqrt_beta(beta0, k, n_steps) / inv_sqrt_beta(beta0, k - 1, n_steps)


def autograd_ready(t: Tensor) -> Tensor:
    """`t`, or a normal copy of it when it was made under `torch.inference_mode()`:
    autograd refuses to save inference tensors for backward ("Inference tensors cannot be
    saved for backward"), and the flow differentiates the decoder at z whatever the mode."""
    if not t.is_inference():
        return t
    with torch.inference_mode(False):
        return t.clone()


def value_and_grad(fn: Callable[[Tensor], Tensor], z: Tensor, create_graph: bool
                   ) -> tuple[Tensor, Tensor]:
    """`fn(z)` (shape `(B,)`) and its gradient in z, also under `torch.no_grad()` and
    `torch.inference_mode()` (the tensors `fn` holds then pass `autograd_ready`).

    With `create_graph` the gradient is itself differentiable (training: the outer gradient
    flows through the flow); otherwise z is detached and both results carry no graph.
    """
    with torch.inference_mode(False), torch.enable_grad():
        if not (create_graph and z.requires_grad):
            z = autograd_ready(z.detach()).requires_grad_()
        value = fn(z)
        (grad,) = torch.autograd.grad(value.sum(), z, create_graph=create_graph,
                                      allow_unused=True, materialize_grads=True)
    return (value, grad) if create_graph else (value.detach(), grad)


def leapfrog(pos: Position, rho: Tensor, step_size: float | Tensor, position: PositionFn
             ) -> tuple[Position, Tensor]:
    """One leapfrog step for `H = U(z) + |rho|^2 / 2`; the gradient at the start is reused."""
    rho_half = rho - 0.5 * step_size * pos.grad
    new = position(pos.z + step_size * rho_half)
    return new, rho_half - 0.5 * step_size * new.grad


def gemm_cancels(centroids: Tensor, temperature: float, tolerance: float = 1e-3) -> bool:
    """Whether `|z|^2 - 2 z.c + |c|^2` may be off by more than `tolerance T^2` where a weight
    `exp(-|z - c|^2 / T^2)` is not negligible (`|z - c| < 10 T`). Its rounding error is
    `eps (|z| + |c|)^2` times a factor measured at 1 to 2.5 for d = 2 to 256 (`sqrt(d)` here,
    for margin), so centroids far from the origin relative to T cancel (`|c| = 25`,
    `T = 0.02`, d = 64 in float32: distances of 1e-4 came out as 0 or 4e-4). One sync."""
    if centroids.numel() == 0:
        return False
    reach = 2.0 * float(centroids.detach().norm(dim=-1).amax()) + 10.0 * temperature
    error = math.sqrt(centroids.shape[-1]) * torch.finfo(centroids.dtype).eps * reach**2
    return error > tolerance * temperature**2


class CentroidMetric:
    """The RHVAE inverse metric `G^{-1}(z) = a sum_i M_i w_i(z) + lambda I`, with
    `w_i(z) = exp(-|z - c_i|^2 / T^2)`, centroids `c (N, d)` and `M (N, d, d)`.

    `scale` is `a` (`1/N` for the "mean" reduction, 1 for "sum"). With `float64` the
    `d x d` algebra (the sum, Cholesky, inverse, log-determinant) runs in float64 and the
    results come back in z's dtype.
    """

    def __init__(self, centroids: Tensor, M: Tensor, temperature: float, regularization: float,
                 scale: float, float64: bool = True) -> None:
        self.c = centroids
        self.c_sq = (centroids * centroids).sum(-1)
        self.d = centroids.shape[-1]
        self.direct = gemm_cancels(centroids, temperature)
        self.exact = torch.float64 if float64 else centroids.dtype
        self.M_flat = M.flatten(1)  # (N, d*d)
        self.M_exact = self.M_flat.to(self.exact)
        self.inv_t2 = 1.0 / temperature**2
        self.lam = regularization
        self.scale = scale

    def weights(self, z: Tensor) -> Tensor:
        """`w_i(z)`, `(B, N)`, by one GEMM: `|z|^2 - 2 z c^T + |c|^2` (no `(B, N, d)`
        temporary), or from the differences `z - c_i` where the GEMM would cancel."""
        if self.direct:
            sq = (z.unsqueeze(-2) - self.c).square().sum(-1)
        else:
            sq = ((z * z).sum(-1, keepdim=True) - 2.0 * z @ self.c.T + self.c_sq).clamp_min(0.0)
        return torch.exp(-sq * self.inv_t2)

    def _inverse(self, w: Tensor) -> Tensor:
        eye = torch.eye(self.d, dtype=self.exact, device=w.device)
        G_inv = (self.scale * w.to(self.exact)) @ self.M_exact
        return G_inv.view(-1, self.d, self.d) + self.lam * eye

    def inverse(self, z: Tensor) -> Tensor:
        """`G^{-1}(z)`, `(B, d, d)`."""
        return self._inverse(self.weights(z)).to(z.dtype)

    def metric(self, z: Tensor) -> Tensor:
        """`G(z)`, `(B, d, d)`, by a plain inverse: unlike `at(z).G` its forward-mode
        derivative is right (torch 2.13's `cholesky_inverse` JVP is wrong, pytorch#196682),
        which the Christoffel symbols need."""
        return torch.linalg.inv(self._inverse(self.weights(z))).to(z.dtype)

    def at(self, z: Tensor) -> MetricAt:
        """Everything about the metric at z that the flow and the ELBO use."""
        w = self.weights(z)
        G_inv = self._inverse(w)
        chol, info = torch.linalg.cholesky_ex(G_inv)
        G = torch.cholesky_inverse(chol)
        log_det_G = -2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        dt = z.dtype
        return MetricAt(w, G_inv.to(dt), chol.to(dt), G.to(dt), log_det_G.to(dt), info)

    def force(self, z: Tensor, w: Tensor, S: Tensor) -> Tensor:
        """`(a/T^2) sum_i <S, M_i> w_i (z - c_i)`, `(B, d)`, by two GEMMs.

        With `S = G(z)` this is the gradient of `1/2 log det G(z)`; with `S = -rho rho^T`,
        the gradient of the kinetic term `1/2 rho^T G^{-1}(z) rho`.
        """
        coef = (S.flatten(1) @ self.M_flat.T) * w  # (B, N)
        return (self.scale * self.inv_t2) * (coef.sum(-1, keepdim=True) * z - coef @ self.c)

    def christoffel_contract(self, z: Tensor, u: Tensor, w: Tensor | None = None) -> Tensor:
        """`Gamma(z)[u, w]`, `(B, d)`, in closed form from `dG^{-1}`: with `H = G^{-1}`,
        `u~ = G u`, `w~ = G w` and `d_k H = -k sum_i w_i (z_k - c_ik) M_i` (`k = 2a/T^2`),
        `Gamma[u, w] = k/2 (A_u w~ + A_w u~ - H q)`, where `A_u = sum_i w_i <z - c_i, u> M_i`
        and `q = sum_i w_i (u~^T M_i w~) (z - c_i)`. Two `(B, N) x (N, d^2)` GEMMs per
        direction instead of forward- and reverse-mode passes through the Cholesky factor."""
        ex, dt = self.exact, z.dtype
        weights = self.weights(z).to(ex)
        H = self._inverse(weights)
        chol, info = torch.linalg.cholesky_ex(H)
        z, u, c = z.to(ex), u.to(ex), self.c.to(ex)
        w = u if w is None else w.to(ex)
        uw = torch.stack([u, w]) if w is not u else u.unsqueeze(0)  # (1 or 2, B, d)
        lowered = torch.cholesky_solve(uw.unsqueeze(-1), chol).squeeze(-1)  # G u, G w
        u_t, w_t = lowered[0], lowered[-1]

        def along(v: Tensor, covector: Tensor) -> Tensor:  # A_v covector
            s = weights * ((z * v).sum(-1, keepdim=True) - v @ c.T)  # w_i <z - c_i, v>
            return mv((s @ self.M_exact).view(-1, self.d, self.d), covector)

        coef = ((u_t.unsqueeze(-1) * w_t.unsqueeze(-2)).flatten(1) @ self.M_exact.T) * weights
        q = coef.sum(-1, keepdim=True) * z - coef @ c
        sym = 2 * along(u, w_t) if w is u else along(u, w_t) + along(w, u_t)
        out = (self.scale * self.inv_t2) * (sym - mv(H, q))
        return torch.where((info == 0).unsqueeze(-1), out, torch.nan).to(dt)

    def kinetic_grad(self, pos: Position, rho: Tensor) -> Tensor:
        """`d/dz 1/2 rho^T G^{-1}(z) rho = -(a/T^2) sum_i (rho^T M_i rho) w_i (z - c_i)`."""
        return self.force(pos.z, pos.metric.weights, -rho.unsqueeze(-1) * rho.unsqueeze(-2))

    def kinetic(self, pos: Position, rho: Tensor) -> Tensor:
        """`1/2 rho^T G^{-1}(z) rho`, `(B,)`."""
        return 0.5 * (rho * mv(pos.metric.G_inv, rho)).sum(-1)


def generalized_leapfrog(pos: Position, rho: Tensor, step_size: float, n_fixed_point: int,
                         metric: CentroidMetric, position: PositionFn
                         ) -> tuple[Position, Tensor, Tensor, Tensor]:
    """One implicit generalised leapfrog step for `H = U(z) + 1/2 rho^T G^{-1}(z) rho`.

    Both implicit half-steps are solved by `n_fixed_point` true fixed-point iterations
    started from `rho` (resp. `z`), so the first iterate is the explicit step:
    `rho~ = rho - eps/2 grad_z H(z, rho~)`, `z' = z + eps/2 [G^{-1}(z) + G^{-1}(z')] rho~`,
    then `rho' = rho~ - eps/2 grad_z H(z', rho~)`. Returns the new position, `rho'`, `rho~`
    and, per row, how far the last iteration still moved `rho~` and `z'`, relative to
    their whole change over the step (the larger of the two; for one iteration, how far
    a second would move them): what `FlowMonitor` checks for convergence.
    """
    half = 0.5 * step_size
    rho_half = before = rho
    for _ in range(n_fixed_point):
        before, rho_half = rho_half, rho - half * (pos.grad + metric.kinetic_grad(pos, rho_half))
    moved = _moved(rho, before, rho_half) if n_fixed_point > 1 else None
    v = mv(pos.metric.G_inv, rho_half)
    z = pos.z + step_size * v
    for _ in range(n_fixed_point - 1):
        before, z = z, pos.z + half * (v + mv(metric.inverse(z), rho_half))
    if moved is not None:
        moved = torch.maximum(moved, _moved(pos.z, before, z))
    else:  # the explicit step: measured by the second iteration, which it leaves out
        with torch.no_grad():
            rho_next = rho - half * (pos.grad + metric.kinetic_grad(pos, rho_half))
            z_next = pos.z + half * (v + mv(metric.inverse(z), rho_half))
        moved = torch.maximum(_moved(rho, rho_half, rho_next), _moved(pos.z, z, z_next))
    new = position(z)
    return (new, rho_half - half * (new.grad + metric.kinetic_grad(new, rho_half)), rho_half,
            moved)


def _moved(start: Tensor, before: Tensor, last: Tensor) -> Tensor:
    """`|last - before| / |last - start|` per row: a fixed-point iteration's last move
    relative to the whole change from `start`."""
    with torch.no_grad():
        return (last - before).norm(dim=-1) / (last - start).norm(dim=-1).clamp_min(1e-30)


class FlowMonitor:
    """Collects the flow's points without synchronising or computing anything per point;
    `check` tests them all at once (24 tensor operations for the 4 points of K=3, against
    89 when each point was checked as it came: a median 8 % off an HVAE step of a 16-8-16
    network at batch 64 in six alternating A/Bs, from 13 % faster to 1 % slower; 1 % at
    784-512) and raises once at the end, naming the cause."""

    def __init__(self, step_size: float | Tensor) -> None:
        self.step_size = step_size
        self.points: list[tuple[Tensor, Tensor, Tensor, Tensor | None]] = []
        self.moved: list[Tensor] = []

    def point(self, pos: Position, rho: Tensor, moved: Tensor | None = None) -> None:
        """Record a point of the flow (its z, momentum, force and Cholesky status) and the
        fixed-point iterations' last move that reached it (`generalized_leapfrog`)."""
        self.add(pos.z, rho, pos.grad, None if pos.metric is None else pos.metric.info)
        if moved is not None:
            self.moved.append(moved)

    def add(self, z: Tensor, rho: Tensor, grad: Tensor, info: Tensor | None = None) -> None:
        """Record a point from its parts: z, the momentum, `grad_z U` and the Cholesky
        status (None without a metric)."""
        self.points.append((z, rho, grad, info))

    def _bad(self) -> tuple[Tensor, Tensor]:
        """`(points, B)` masks: blown up (z beyond `MAX_LATENT_NORM` or non-finite, a
        non-finite momentum or a failed Cholesky factorisation), and a non-finite force at
        an otherwise sound point (the likelihood's parameters under- or overflowed)."""
        with torch.no_grad():
            zs, rhos, grads, infos = zip(*self.points, strict=True)
            z, rho, grad = torch.stack(zs), torch.stack(rhos), torch.stack(grads)
            blown = ~(z.norm(dim=-1) <= MAX_LATENT_NORM) | ~torch.isfinite(rho).all(-1)
            if any(info is not None for info in infos):
                sound = torch.zeros_like(blown[0])
                blown = blown | torch.stack([sound if i is None else i != 0 for i in infos])
            return blown, ~blown & ~torch.isfinite(grad).all(-1)

    def check(self) -> None:
        """Raise `FlowDiverged` (or `TrainingDiverged` when the step size is not the cause)
        if any sample went wrong anywhere; warn (`FixedPointWarning`) when the fixed-point
        iterations left more than 1 % of the samples unconverged."""
        blown, no_force = self._bad()  # (points, B)
        bad = blown | no_force
        if not bool(bad.any()):
            self._check_converged()
            return
        k = int(bad.any(-1).nonzero()[0, 0])
        n = int(bad[k].sum())
        if bool(no_force[k].any()):
            raise TrainingDiverged(
                f"the log-likelihood gradient is not finite at finite latent positions "
                f"(leapfrog step {k}, {n} sample(s)): the decoder's distribution parameters "
                "under- or overflowed (e.g. a Poisson rate of exactly 0); a smaller step size "
                "will not help"
            )
        if k == 0:  # before the first step: the networks, not the step size
            raise TrainingDiverged(
                f"the encoder's samples z_0 are non-finite or beyond |z| = "
                f"{MAX_LATENT_NORM:g} (or the metric is not finite there) for {n} sample(s) "
                "before the Hamiltonian flow started; try a smaller learning rate, or scale "
                "the data"
            )
        eps = self.step_size
        eps = eps.detach().flatten().tolist() if isinstance(eps, Tensor) else [eps]
        raise FlowDiverged(
            f"the Hamiltonian flow diverged at leapfrog step {k} for {n} sample(s) "
            f"(a position beyond |z| = {MAX_LATENT_NORM:g} or non-finite, or a failed "
            f"Cholesky factorisation of the metric); use a smaller step_size (now "
            f"{', '.join(f'{e:.3g}' for e in eps)})"
        )

    def _check_converged(self) -> None:
        """Warn when more than 1 % of the samples moved by over `FIXED_POINT_TOLERANCE`
        of the step in a last fixed-point iteration (`generalized_leapfrog`)."""
        if not self.moved:
            return
        unconverged = (torch.stack(self.moved).amax(0) > FIXED_POINT_TOLERANCE).float().mean()
        if float(unconverged) > 0.01:
            warnings.warn(
                # one text, so that a training loop shows it once
                "the generalised leapfrog's fixed-point iterations did not converge for more "
                "than 1% of the samples (the last iteration still moved them by more than "
                f"{FIXED_POINT_TOLERANCE:.0%} of the step): the flow does not "
                "preserve volume, so the ELBO and log p(x) estimates are biased and can exceed "
                "log p(x); raise n_fixed_point or lower step_size", FixedPointWarning,
                stacklevel=2)


def gaussian_log_prob(quad: Tensor, log_det_cov: Tensor | float, d: int) -> Tensor:
    """`log N(v; 0, S) = -1/2 (d log 2 pi + log det S + v^T S^{-1} v)` from its parts."""
    return -0.5 * (d * math.log(2 * math.pi) + log_det_cov + quad)


def prefactors(values: Sequence[float], n: int, name: str) -> tuple[float, ...]:
    """`n` finite ELBO prefactors as floats, or a ValueError naming `name`."""
    out = tuple(float(v) for v in values)
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be {n} finite numbers, got {values!r}")
    return out


def hamiltonian_elbo(log_lik: Tensor, log_prior: Tensor, log_rho: Tensor, log_q: Tensor,
                     log_gamma: Tensor, a: Sequence[float], b: Sequence[float]
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss `-<log p~ - log q~>` and the unweighted terms (batch means), for
    `log p~ = a1 log p(x|z_K) + a2 log N(rho_K) + a3 log p(z_K)` and
    `log q~ = b1 log q(z_0|x) + b2 log N(gamma_0)`: AETK's prefactors on the exact ELBO, in
    AETK's order (its third q-prefactor weighs a `-(d/2) log beta_0` correction that the exact
    ELBO does not have). All ones is the ELBO; the terms are those of `HVAE`."""
    rec, prior, lr, lq, lg = (t.mean() for t in (-log_lik, log_prior, log_rho, log_q, log_gamma))
    loss = a[0] * rec - a[1] * lr - a[2] * prior + b[0] * lq + b[1] * lg
    return loss, {"reconstruction": rec, "log_prior": prior, "momentum": lr - lg,
                  "entropy": -lq}


def hmc(pos: Position, position: PositionFn, n_steps: int, n_leapfrog: int,
        step_size: float, jitter: float = 0.5) -> Tensor:
    """Hamiltonian Monte Carlo from the batch `pos` (one chain per row), unit mass, with a
    Metropolis correction per chain; returns the final z.

    Each chain draws its step size per transition uniformly from `step_size * [1 - jitter,
    1 + jitter]` (Neal 2011): a fixed trajectory length near half the period of the
    target's oscillation sends chains back and forth across the mode (with jitter 0, ten
    transitions of that length left a Gaussian's chains, on average, at 0.55 of their
    start's offset from the mode; with 0.5, at 0.01).
    """
    # RHVAE.sample took 0 steps, 0 leapfrog steps or a NaN step size and returned its
    # start points, the centroids, as samples
    n_steps, n_leapfrog = positive_int(n_steps, "n_steps"), positive_int(n_leapfrog, "n_leapfrog")
    if not 0 < step_size < math.inf:
        raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1), got {jitter}")
    for _ in range(n_steps):
        rho = torch.randn_like(pos.z)
        eps = step_size * (1 + jitter * (2 * torch.rand_like(pos.z[:, :1]) - 1))
        new, rho_new = pos, rho
        for _ in range(n_leapfrog):
            new, rho_new = leapfrog(new, rho_new, eps, position)
        log_accept = (pos.potential + 0.5 * (rho * rho).sum(-1)
                      - new.potential - 0.5 * (rho_new * rho_new).sum(-1))
        accept = torch.rand_like(log_accept).log() < log_accept  # NaN is rejected
        pos = Position(*(
            torch.where(accept.view(-1, *[1] * (a.dim() - 1)), a, b)
            for a, b in zip(new[:3], pos[:3], strict=True)
        ))
    return pos.z


def flow_log_weights(flow: Callable[[Tensor, Tensor, bool], FlowEnd], q: Distribution,
                     target: Tensor, n: int) -> Tensor:
    """`log p(x, z_K) + log N(rho_K) - log q(z_0|x) - log N(gamma_0)`, `(n, B)`, for `n`
    draws per row: the rows of all draws pass the flow together (sample-major, as
    conditional networks expect); `flow(z0, target, create_graph)` is a model's flow."""
    z0 = q.sample((n,))
    rows = target.expand(n, *target.shape).reshape(-1, *target.shape[1:])
    end = flow(z0.flatten(0, 1), rows, False)
    return (end.log_lik + end.log_prior + end.log_rho - end.log_gamma).view(n, -1) - \
        q.log_prob(z0)
