"""Curves in latent space: energy and length by the trapezoid rule on the real t grid, and
the neural curve of Chen et al. (2018)."""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import jvp

from ..validate import as_tensor, positive_int
from .metrics import Metric, latent_points


def _grid(points: Tensor, t: Tensor | None) -> Tensor:
    """The times of the curves' points: `t` checked against them, or uniform on [0, 1]."""
    if t is None:
        return torch.linspace(0, 1, points.shape[-2], dtype=points.dtype, device=points.device)
    t = as_tensor(t, points.dtype, points.device)
    n = points.shape[-2]
    curves = points.shape[0] if points.dim() == 3 else 1
    # t of another length broadcast against the segments (2 times for 3 points gave every
    # segment the one step 1) or failed inside torch, and rows of times for one curve (T, d)
    # gave it as many energies; times that go back or repeat gave a negative or infinite
    # energy
    if t.dim() not in (1, 2) or t.shape[-1] != n or (t.dim() == 2 and len(t) not in (1, curves)):
        raise ValueError(f"t must hold the times of the curves' {n} points, (T,) or (B, T) "
                         f"for points {tuple(points.shape)}, got shape {tuple(t.shape)}")
    if not bool((t.diff(dim=-1) > 0).all()):
        raise ValueError("t must be strictly increasing (finite times, one per point)")
    return t


def _curve_points(metric: Metric, points: Tensor, velocities: Tensor | None
                  ) -> tuple[Tensor, Tensor | None]:
    points = latent_points(metric, points)
    if points.dim() not in (2, 3) or points.shape[-2] < 2:
        raise ValueError(f"points must be curves (B, T, d) or one curve (T, d) of at least 2 "
                         f"points, got shape {tuple(points.shape)}")
    if velocities is not None:
        velocities = as_tensor(velocities, points.dtype, points.device)
        if velocities.shape != points.shape:
            raise ValueError(f"velocities must have the points' shape {tuple(points.shape)}, "
                             f"got {tuple(velocities.shape)}")
    return points, velocities


def segment_quads(metric: Metric, points: Tensor) -> tuple[Tensor, Tensor]:
    """`dz_k^T G dz_k` for every segment `dz_k = z_{k+1} - z_k` of curves `(B, T, d)`,
    with G taken at the segment's start and at its end: two `(B, T-1)` tensors.

    Every point is evaluated once, with the (up to) two segments that touch it.
    """
    dz = points.diff(dim=-2)
    zero = torch.zeros_like(dz[..., :1, :])
    before = torch.cat([zero, dz], -2)  # segment ending at each point
    after = torch.cat([dz, zero], -2)  # segment starting at each point
    q = metric.quad(points, torch.stack([before, after], -2))
    return q[..., :-1, 1], q[..., 1:, 0]


def curve_energy(
    metric: Metric, points: Tensor, t: Tensor | None = None, velocities: Tensor | None = None
) -> Tensor:
    """Energy `1/2 int gamma'^T G(gamma) gamma' dt` of curves sampled at `t`, `(B,)`.

    `points (B, T, d)` (or `(T, d)`); `t (T,)` or `(B, T)`, default uniform on [0, 1].
    With exact `velocities (B, T, d)` the integrand is taken at the points; without, the
    points are joined by straight segments (a discrete curve) whose constant velocity
    `dz / dt` enters the integrand at both ends of each segment. Points and velocities are
    cast to the metric's dtype and device, and so is the result.
    """
    points, velocities = _curve_points(metric, points, velocities)
    t = _grid(points, t)
    if velocities is not None:
        return 0.5 * torch.trapezoid(metric.quad(points, velocities.unsqueeze(-2))[..., 0], t)
    start, end = segment_quads(metric, points)
    return 0.25 * ((start + end) / t.diff(dim=-1)).sum(-1)


def curve_length(
    metric: Metric, points: Tensor, t: Tensor | None = None, velocities: Tensor | None = None
) -> Tensor:
    """Length `int sqrt(gamma'^T G(gamma) gamma') dt` of curves, `(B,)`; arguments as in
    `curve_energy`. Without velocities, the length of the discrete curve does not depend
    on `t`."""
    points, velocities = _curve_points(metric, points, velocities)
    t = _grid(points, t)
    if velocities is not None:
        speed = metric.quad(points, velocities.unsqueeze(-2))[..., 0].clamp_min(0).sqrt()
        return torch.trapezoid(speed, t)
    start, end = segment_quads(metric, points)
    return 0.5 * (start.clamp_min(0).sqrt() + end.clamp_min(0).sqrt()).sum(-1)


class NeuralGeodesic(nn.Module):
    """B neural curves `gamma_b(t) = (1-t) z0_b + t z1_b + t (1-t) h_b(t)` with an MLP
    `h_b: R -> R^d` per pair (Chen et al. 2018, as in AutoEncoderToolkit.jl).

    The endpoints hold by construction, with no division. The B networks are one batched
    MLP whose weights are stacked along a leading pair axis and stored flat, one row of
    `params (B, n)` per pair (so optimisers treat pairs independently); the output layer
    starts at zero, so every curve starts as the straight line.
    """

    def __init__(
        self,
        z_start: Tensor,
        z_end: Tensor,
        hidden: Sequence[int] = (16, 16, 16),
        activation: Callable[[Tensor], Tensor] = torch.tanh,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if z_start.shape != z_end.shape or z_start.dim() not in (1, 2):
            raise ValueError(f"z_start {tuple(z_start.shape)} and z_end {tuple(z_end.shape)} "
                             "must be the same shape, (B, d) pairs or one pair (d,)")
        if isinstance(hidden, numbers.Number | str | bytes):  # (16) for (16,) failed in torch
            raise ValueError(f"hidden must be a sequence of layer widths, e.g. (16, 16), got "
                             f"{hidden!r}")
        hidden = [positive_int(width, "every width in hidden") for width in hidden]
        self.register_buffer("z_start", z_start.detach().reshape(-1, z_start.shape[-1]))
        self.register_buffer("z_end", z_end.detach().reshape(-1, z_end.shape[-1]))
        n_pairs, d = self.z_start.shape
        sizes = [1, *hidden, d]
        self.shapes = list(itertools.pairwise(sizes))
        gen = torch.Generator().manual_seed(seed)
        blocks = []
        for k, (fan_in, fan_out) in enumerate(self.shapes):
            bound = 0.0 if k == len(self.shapes) - 1 else fan_in**-0.5  # nn.Linear's range
            # one draw for every pair: drawn per pair, a pair's start depended on its place
            # in the batch, and so did its fit (up to 3e-4 of the half-plane's lengths)
            uniform = torch.rand((fan_in + 1) * fan_out, generator=gen).expand(n_pairs, -1)
            blocks.append((2 * uniform - 1) * bound)
        self.params = nn.Parameter(torch.cat(blocks, 1).to(self.z_start))
        self.activation = activation

    def evaluate(self, params: Tensor, z_start: Tensor, z_end: Tensor, t: Tensor) -> Tensor:
        """Points `(B, T, d)` of the curves with flat parameters `params (B, n)` between
        `z_start (B, d)` and `z_end (B, d)` at times `t (T,)`."""
        x = t.reshape(1, -1, 1).expand(params.shape[0], -1, 1)
        offset = 0
        for k, (fan_in, fan_out) in enumerate(self.shapes):
            wb = params[:, offset : offset + (fan_in + 1) * fan_out]
            offset += (fan_in + 1) * fan_out
            w = wb[:, : fan_in * fan_out].reshape(-1, fan_in, fan_out)
            x = torch.baddbmm(wb[:, None, fan_in * fan_out :], x, w)
            if k < len(self.shapes) - 1:
                x = self.activation(x)
        s = t.reshape(1, -1, 1)
        # lerp: exact at the ends and constant between equal ends, as the rounding of
        # (1 - s) z0 + s z1 is not
        return torch.lerp(z_start.unsqueeze(1), z_end.unsqueeze(1), s) + s * (1 - s) * x

    def evaluate_with_velocities(
        self, params: Tensor, z_start: Tensor, z_end: Tensor, t: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Points and exact velocities `d gamma / dt`, both `(B, T, d)` (forward mode)."""
        return jvp(lambda s: self.evaluate(params, z_start, z_end, s), (t,), (torch.ones_like(t),))

    def forward(self, t: Tensor) -> Tensor:
        """Points `(B, T, d)` at times `t (T,)` in [0, 1]."""
        return self.evaluate(self.params, self.z_start, self.z_end, t)

    def points_and_velocities(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """Points and exact velocities, both `(B, T, d)`."""
        return self.evaluate_with_velocities(self.params, self.z_start, self.z_end, t)
