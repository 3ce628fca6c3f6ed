"""Riemannian metrics on a latent space: `metric(z) -> G (..., d, d)`, symmetric positive
definite, with `log_volume(z) = log sqrt(det G(z))` and the quadratic form `quad(z, V)`
that curve energies are built from."""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor, nn
from torch import distributions as D
from torch.func import grad, jvp, vjp, vmap

from ..devices import resolve_device
from ..nets import Conditioned
from ..validate import as_tensor, positive_int


def solve_or_nan(G: Tensor, rhs: Tensor) -> Tensor:
    """`G^{-1} rhs` per point, NaN where `G` is singular (a pull-back through dead ReLUs):
    a degenerate metric has no connection there, and one such point must not stop a batch."""
    x, info = torch.linalg.solve_ex(G, rhs)
    return torch.where((info == 0).reshape(-1, *[1] * (x.dim() - 1)), x, torch.nan)


@contextlib.contextmanager
def torch_jit_deprecation_filtered() -> Iterator[None]:
    """Around forward-mode (`torch.func.jvp`) calls: hides exactly torch's
    "`torch.jit.script` is deprecated" DeprecationWarning, nothing else."""
    # A process's first forward-mode call (forward_ad.make_dual) imports
    # torch._decomp.decompositions_for_jvp, whose module body registers torch's own jvp
    # decompositions with torch.jit.script, which torch deprecates: 18 warnings at once
    # from torch's internals (torch 2.13), harmless (the decompositions work) and nothing
    # the caller can act on. Later calls emit none.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated",
                                category=DeprecationWarning)
        yield


class Metric:
    """A metric given by a callable mapping points `(N, d)` to matrices `(N, d, d)`.

    Subclasses override `_metric` (and, where they can do better than forming `G`,
    `_quad` and `_log_volume`); every public method accepts any leading shape `(..., d)`.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor] | None = None) -> None:
        self._fn = fn

    def _metric(self, z: Tensor) -> Tensor:
        if self._fn is None:
            raise NotImplementedError("give Metric a function or override _metric")
        G = self._fn(z)
        n, d = z.shape
        if not isinstance(G, Tensor) or G.shape != (n, d, d):  # else an einsum's or reshape's
            got = tuple(G.shape) if isinstance(G, Tensor) else type(G).__name__
            raise ValueError(f"the metric's function returned {got} for points {(n, d)}: it "
                             f"must return the matrices G (N, d, d), here {(n, d, d)} (a "
                             "diagonal metric: torch.diag_embed of its diagonal)")
        return G

    def _quad(self, z: Tensor, v: Tensor) -> Tensor:
        return torch.einsum("nki,nij,nkj->nk", v, self._metric(z), v)

    def _log_volume(self, z: Tensor) -> Tensor:
        # NaN where G is not positive definite to working precision (a pull-back through a
        # saturated decoder): "not defined" there, as in solve_or_nan, instead of an error
        chol, info = torch.linalg.cholesky_ex(self._metric(z))
        value = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return torch.where(info == 0, value, torch.nan)

    def _contract(self, z: Tensor, u: Tensor, w: Tensor | None) -> Tensor:
        # Gamma[u, w] = 1/2 G^{-1} (dG[u] w + dG[w] u - grad_z u^T G(z) w): forward mode for
        # the directional derivatives, one reverse pass for the gradient
        G, pull = vjp(self._metric, z)
        (grad,) = pull(u.unsqueeze(-1) * (u if w is None else w).unsqueeze(-2))
        _, dGu = jvp(self._metric, (z,), (u,))
        if w is None:
            rhs = 2 * (dGu @ u.unsqueeze(-1)).squeeze(-1) - grad
        else:
            _, dGw = jvp(self._metric, (z,), (w,))
            rhs = (dGu @ w.unsqueeze(-1) + dGw @ u.unsqueeze(-1)).squeeze(-1) - grad
        return 0.5 * solve_or_nan(G, rhs)

    def _log_volume_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_()
            value = self._log_volume(z)
            (grad,) = torch.autograd.grad(value.sum(), z)
        return value.detach(), grad

    def log_volume_and_grad(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """`log sqrt(det G(z))`, `(...)`, and its gradient in z, `(..., d)`, without a graph
        (what Hamiltonian Monte Carlo on the Riemannian uniform distribution needs)."""
        z = latent_points(self, z)
        flat = z.reshape(-1, z.shape[-1])
        value, grad = self._log_volume_and_grad(flat)
        return value.reshape(z.shape[:-1]), grad.reshape(z.shape)

    def metric(self, z: Tensor) -> Tensor:
        """`G(z)`, shape `(..., d, d)`. Like every public method here, it takes the points
        as `latent_points` does: in the metric's dtype and device, of its dimension."""
        z = latent_points(self, z)
        d = z.shape[-1]
        if z.numel() == 0:  # no points: the networks' reshapes cannot infer a size from none
            return z.new_zeros(*z.shape, d)
        return self._metric(z.reshape(-1, d)).reshape(*z.shape, d)

    __call__ = metric

    def quad(self, z: Tensor, v: Tensor) -> Tensor:
        """`v_k^T G(z) v_k` for `k` vectors at each point: `z (..., d)`, `v (..., k, d)`
        -> `(..., k)`."""
        z = latent_points(self, z)
        v = as_tensor(v, None).to(dtype=z.dtype, device=z.device)
        d = z.shape[-1]
        if v.shape[-1:] != (d,) or v.shape[:-2] != z.shape[:-1]:  # else torch's reshape error
            raise ValueError(f"the vectors {tuple(v.shape)} must be (..., k, {d}), as the points, "
                             f"with the points' leading shape {tuple(z.shape[:-1])}: k vectors "
                             "at each point")
        if v.numel() == 0:
            return v.new_zeros(v.shape[:-1])
        k = v.shape[-2]
        return self._quad(z.reshape(-1, d), v.reshape(-1, k, d)).reshape(v.shape[:-1])

    def log_volume(self, z: Tensor) -> Tensor:
        """`log sqrt(det G(z))`, shape `(...)`; NaN where G is singular to working precision."""
        z = latent_points(self, z)
        if z.numel() == 0:
            return z.new_zeros(z.shape[:-1])
        return self._log_volume(z.reshape(-1, z.shape[-1])).reshape(z.shape[:-1])

    def to(self, *args: object, **kwargs: object) -> Metric:
        """Move what the metric holds, as `nn.Module.to` (same arguments: a device, a
        floating dtype, or both), and return the metric: the modules it holds (an RHVAE's
        model, a pull-back's decoder, a module given as the function) in place, so the
        model is moved for its other users too; the module of a bound method given as the
        function (`PullbackMetric(model.decode)`); and its floating tensors (other tensors
        change device only). A plain function holds nothing to move. Every geometry
        function casts its points to the dtype and device of the module behind a metric,
        so `metric.to(torch.float64)` gives float64 results."""
        if isinstance(self, nn.Module):  # a metric that is a module (EncoderMetric)
            return nn.Module.to(self, *args, **kwargs)
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
            raise TypeError(f"Metric.to only accepts floating point or complex dtypes, got "
                            f"{dtype}")
        for name, value in list(vars(self).items()):
            owner = getattr(value, "__self__", None)  # a bound method's object
            if isinstance(value, nn.Module):
                value.to(*args, **kwargs)
            elif isinstance(value, Tensor):
                floating = value.is_floating_point() or value.is_complex()
                setattr(self, name, value.to(device, dtype if floating else None,
                                             non_blocking=non_blocking))
            elif isinstance(owner, nn.Module):
                owner.to(*args, **kwargs)
        return self


class RHVAEMetric(Metric):
    """The closed-form metric of a trained RHVAE: anything with `G(z)`, `G_inv(z)` and
    `log_det_G(z)` methods on `(N, d)` batches."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def _metric(self, z: Tensor) -> Tensor:
        return self.model.G(z)

    def _quad(self, z: Tensor, v: Tensor) -> Tensor:
        # v^T G v = |L^{-1} v|^2 with G^{-1} = L L^T: no explicit inverse of G^{-1}; NaN
        # (not an error that stops the batch) where the factorisation fails, as at a
        # non-finite point, as for every other metric
        chol, info = torch.linalg.cholesky_ex(self.model.G_inv(z))
        u = torch.linalg.solve_triangular(chol, v.mT, upper=False)
        return torch.where((info == 0).unsqueeze(-1), u.square().sum(-2), torch.nan)

    def _log_volume(self, z: Tensor) -> Tensor:
        return 0.5 * self.model.log_det_G(z)

    def _contract(self, z: Tensor, u: Tensor, w: Tensor | None) -> Tensor:
        # an RHVAE's centroid metric has a closed-form derivative: 5-8x faster than the
        # JVPs through its Cholesky factor (100 points, latent 10 and 2)
        frozen = getattr(self.model, "frozen_metric", None)
        if frozen is None:
            return super()._contract(z, u, w)
        return frozen().christoffel_contract(z, u, w)


def _base(dist: D.Distribution) -> D.Distribution:
    while isinstance(dist, D.Independent):
        dist = dist.base_dist
    return dist


# modules that behave differently in training: random (dropout) or batch-coupled (batch norm)
_TRAINING_ONLY = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)

# the families whose Fisher metric PullbackMetric writes in closed form
_CLOSED_FISHER = (D.Bernoulli, D.Categorical, D.Multinomial, D.Poisson, D.NegativeBinomial,
                  D.Normal)

# families with a registered KL whose Hessian at z' = z is not their Fisher metric
_NO_KL_HESSIAN = {
    D.Laplace: "its KL has |loc - loc'|, whose second derivative at loc' = loc autograd "
               "takes as 0",
    D.Uniform: "its support moves with its parameters, so it has no Fisher information",
    D.Pareto: "its support moves with its parameters, so it has no Fisher information",
    D.Wishart: "torch's KL for it (the generic exponential-family one) calls torch.autograd, "
               "which torch.func cannot differentiate",
}


def no_fisher_metric(p: D.Distribution) -> str | None:
    """Why a decoder's distribution `p` has no Fisher-Rao pull-back (`_kl_gram`), or None."""
    for family, why in _NO_KL_HESSIAN.items():
        if isinstance(_base(p), family):
            return why
    try:
        D.kl_divergence(p, p)
    except NotImplementedError:
        return ("torch has no KL divergence registered for it "
                "(torch.distributions.kl.register_kl)")
    return None


def _kl_gram(decoder: Callable[[Tensor], D.Distribution], z: Tensor, v: Tensor) -> Tensor:
    """`(N, k, k)` Gram matrix `v_a^T G(z) v_b` of the Fisher-Rao pull-back of any decoder
    whose distribution has a KL divergence registered with torch: `G(z)` is the Hessian
    in z' of `KL(p(x|z) || p(x|z'))` at `z' = z` (the KL is `1/2 dz^T G dz` to second
    order), one forward-over-reverse product per tangent direction on the whole batch,
    so the decoder must treat samples independently."""
    p = decoder(z)
    why = no_fisher_metric(p)
    if why is not None:
        raise ValueError(f"no Fisher metric for {type(_base(p)).__name__}: {why}; use "
                         "kind='mean'")

    def kl_grad(y: Tensor) -> Tensor:
        # p stays at z: only the second argument moves. Summed over the points, row n of
        # the gradient is point n's own, and so is its directional derivative
        return grad(lambda y: D.kl_divergence(p, decoder(y)).sum())(y)

    hv = vmap(lambda u: jvp(kl_grad, (z,), (u,))[1])(v.transpose(0, 1))  # (k, N, d)
    gram = torch.einsum("nbi,ani->nab", v, hv)
    return 0.5 * (gram + gram.mT)  # symmetric up to rounding: make it exactly so


def _distribution(out: object) -> D.Distribution:
    """A decoder's output that is not a tensor: a distribution, or a TypeError (a tuple
    failed with an AttributeError deep down)."""
    if not isinstance(out, D.Distribution):
        raise TypeError(f"the decoder returned {type(out).__name__}: PullbackMetric needs a "
                        "torch distribution or a tensor of means, one row per point")
    return out


def _per_point(values: Tensor, n: int, what: str) -> Tensor:
    """`values (n, ...)`, one row per point, or a ValueError: a decoder that pools its
    batch (a sum, one event over all points) failed in a reshape."""
    if values.dim() == 0 or len(values) != n:
        raise ValueError(f"the decoder gave {what} of shape {tuple(values.shape)} for {n} "
                         f"points: PullbackMetric needs one row per point, ({n}, ...), each "
                         "from its own point alone")
    return values


class PullbackMetric(Metric):
    """The metric a decoder pulls back onto its latent space, for any decoder returning a
    torch distribution (or a tensor, taken as its mean).

    - `kind="mean"`: `G = J_mu^T J_mu` of the distribution's mean (Bernoulli probabilities,
      categorical probabilities, Poisson rate, ...), plus `J_sigma^T J_sigma` for `Normal`
      (diagonal Gaussian) decoders, which is zero when sigma is fixed (Arvanitidis et al.
      2018). A `MultivariateNormal` or `LowRankMultivariateNormal` gets its mean's term
      alone: the sigma term is the expected squared change of `mu + sigma * eps`, and a
      full covariance has no one square root to take it of (use `kind="fisher"`).
    - `kind="fisher"`: the Fisher-Rao pull-back `J_eta^T F(eta) J_eta` of the natural
      parameters (Arvanitidis et al. 2022): Bernoulli `F = p(1-p)`, categorical
      `F = diag(p) - p p^T` per element (times `total_count` for a multinomial),
      Poisson `F = rate`, Gaussian
      `diag(1/sigma^2, 2/sigma^2)` in (mu, sigma), negative binomial
      `F = r / (mu (mu + r))` in its mean mu, its dispersion r taken as constant in z
      (`dispersion="sample"` decoders are refused). Any other distribution (Gamma, Beta,
      Exponential, ...) gets the Hessian in z' of `KL(p(x|z) || p(x|z'))` at `z' = z`, the
      same metric, from torch's registered KL divergence (`_kl_gram`); one without a
      registered KL, or whose KL's Hessian is not its Fisher metric (Laplace, Uniform,
      Pareto, Wishart), is refused.

    Jacobian-vector products come from `torch.func.jvp` on the whole batch at once, one
    per tangent direction, so the decoder must treat samples independently (eval mode).
    """

    def __init__(self, decoder: Callable[[Tensor], D.Distribution | Tensor], kind: str = "mean"):
        super().__init__()
        if kind not in ("mean", "fisher"):
            raise ValueError(f"kind must be 'mean' or 'fisher', got {kind!r}")
        if kind == "fisher" and getattr(decoder, "dispersion", None) == "sample":
            # the Fisher information of r(z) is a trigamma series, with no closed form
            raise ValueError("the negative-binomial Fisher metric needs a dispersion that does "
                             "not depend on z (dispersion='feature'); use kind='mean'")
        self.decoder = decoder
        self.kind = kind

    def _params(self, z: Tensor) -> tuple[Tensor, ...]:
        """The decoder outputs whose Jacobians enter G, each `(N, ...)`."""
        out = self.decoder(z)
        if isinstance(out, Tensor):
            if self.kind == "fisher":
                raise ValueError("the Fisher metric needs a decoder that returns a distribution")
            return (_per_point(out, len(z), "its output"),)
        base = _base(_distribution(out))
        if isinstance(base, D.Normal):
            return _per_point(base.loc, len(z), "its mean"), base.scale
        if self.kind == "mean":
            try:
                mean = base.probs if isinstance(base, D.Categorical) else out.mean
            except NotImplementedError:  # torch's carries no message
                raise ValueError(f"the decoder's {type(base).__name__} has no mean in torch: "
                                 "give PullbackMetric a decoder that returns the mean "
                                 "tensor") from None
            return (_per_point(mean, len(z), "its mean"),)
        if isinstance(base, D.Bernoulli | D.Categorical | D.Multinomial):
            return (base.logits,)
        if isinstance(base, D.Poisson):
            return (base.rate,)
        return out.mean, base.total_count  # negative binomial: the others go to _kl_gram

    def _one(self, z: Tensor) -> D.Distribution | None:
        """The decoder's base distribution at the first point (None for a tensor)."""
        out = self.decoder(z[:1])
        return None if isinstance(out, Tensor) else _base(_distribution(out))

    def _family(self, z: Tensor) -> type[D.Distribution] | None:
        one = self._one(z)
        return None if one is None else type(one)

    def _check_mode(self) -> None:
        """A ValueError where the decoder holds dropout or batch norm in training mode: inside
        torch.func they failed with torch's "called random operation while in randomness
        error mode" or "attempted to call in-place operation", and outside they would make
        G random or couple the points; and where a conditional network holds conditions of
        more than one row."""
        module = _module(self)
        if not isinstance(module, nn.Module):
            return
        for name, part in module.named_modules():
            if part.training and isinstance(part, _TRAINING_ONLY):
                raise ValueError(f"the decoder's {type(part).__name__} ({name or 'itself'}) is "
                                 "in training mode: call .eval() on the model or decoder "
                                 "before taking its metric")
            # the metric's points come curve-major (B curves x T points) while a conditional
            # network pairs B condition rows with its inputs sample-major: each point got
            # another curve's class, silently (lengths 0.39 for 0.36 in the helper's case)
            rows = getattr(part, "conditions", None) if isinstance(part, Conditioned) else None
            if rows is not None and len(rows) != 1:
                raise ValueError(
                    f"the decoder is conditional and holds conditions of {len(rows)} rows: a "
                    "pull-back metric takes one condition row for the whole latent space, "
                    "inside `with model.given(c[i]):` (e.g. torch.eye(10)[3]); for curves "
                    "of several classes, take each class's metric in turn")

    def _gram(self, z: Tensor, v: Tensor) -> Tensor:
        """`(N, k, k)` Gram matrix `v_a^T G(z) v_b` of `k` tangent vectors `v (N, k, d)`."""
        self._check_mode()
        n, k, _ = v.shape
        one = self._one(z) if self.kind == "fisher" else None
        family = None if one is None else type(one)
        if family is not None and not issubclass(family, _CLOSED_FISHER):
            return _kl_gram(self.decoder, z, v)
        # vmap over the k directions shares the decoder's primal pass
        primals, tangents = vmap(lambda u: jvp(self._params, (z,), (u,)))(v.transpose(0, 1))
        gram = z.new_zeros(n, k, k)
        for i, (p, u) in enumerate(zip(primals, tangents, strict=True)):
            p = p[0]
            if family is not None and issubclass(family, D.Categorical | D.Multinomial):
                # logits (n, ..., K): per element diag(p) - p p^T over the class axis; a
                # multinomial's total_count trials are as many categorical draws
                trials = one.total_count if issubclass(family, D.Multinomial) else 1
                prob = torch.softmax(p, -1).reshape(n, -1, p.shape[-1])
                u = u.reshape(k, n, -1, p.shape[-1])
                pu = (prob * u).sum(-1)
                gram = gram + trials * torch.einsum("anmc,bnmc,nmc->nab", u, u, prob)
                gram = gram - trials * torch.einsum("anm,bnm->nab", pu, pu)
                continue
            u = u.reshape(k, n, -1)
            p = p.reshape(n, -1)
            if family is None:
                weight = None
            elif issubclass(family, D.Bernoulli):
                prob = torch.sigmoid(p)
                weight = prob * (1 - prob)
            elif issubclass(family, D.Poisson):
                weight = 1 / p  # d eta = d rate / rate, F = rate
            elif issubclass(family, D.NegativeBinomial):
                if i == 1:  # the dispersion r, constant in z: no term of its own
                    continue
                r = primals[1][0].reshape(n, -1)
                weight = r / (p * (p + r))  # F of the mean at fixed r: 1 / Var x
            else:  # Normal: (loc, scale)
                scale = primals[1][0].reshape(n, -1).expand_as(p)
                weight = (1.0 if i == 0 else 2.0) / scale.square()
            if weight is None:
                gram = gram + torch.einsum("anm,bnm->nab", u, u)
            else:
                gram = gram + torch.einsum("anm,bnm,nm->nab", u, u, weight)
        # NaN where the mean is not finite: torch writes a NaN constant for an undefined one
        # (StudentT with df <= 1), whose Jacobian came out 0, a flat metric without a word
        defined = torch.isfinite(primals[0][0].reshape(n, -1)).all(-1)
        return torch.where(defined[:, None, None], gram, torch.nan)

    def _metric(self, z: Tensor) -> Tensor:
        d = z.shape[-1]
        eye = torch.eye(d, dtype=z.dtype, device=z.device)
        return self._gram(z, eye.expand(z.shape[0], d, d))

    def _contract(self, z: Tensor, u: Tensor, w: Tensor | None) -> Tensor:
        self._check_mode()
        family = self._family(z) if self.kind == "fisher" else None
        if self.kind == "fisher" and not issubclass(family, D.Bernoulli | D.Poisson):
            return super()._contract(z, u, w)
        # G = sum_m h_m J_m^T J_m with h_m a function of the m-th parameter alone (1 for the
        # mean; the Fisher information p(1-p) of a Bernoulli logit, 1/rate of a Poisson
        # rate), so its connection comes from the decoder's first and second directional
        # derivatives instead of derivatives of G (Gauss's formula, and the Christoffel
        # symbol 1/2 h'_m of each parameter's own line):
        #   G Gamma[u, w] = sum_m J_m^T (h_m D^2 eta_m[u, w] + 1/2 h'_m (J_m u)(J_m w)).
        # 784-400-400 Bernoulli decoder, 256 points, one thread: mean 42 ms against 63 ms
        # from G's derivatives, Fisher 37 ms against 70 ms.
        n, d = z.shape
        w = u if w is None else w
        eye = torch.eye(d, dtype=z.dtype, device=z.device)
        primal, jac = vmap(lambda e: jvp(self._params, (z,), (e.expand_as(z),)),
                           out_dims=(None, 0))(eye)
        second = jvp(lambda y: jvp(self._params, (y,), (u,))[1], (z,), (w,))[1]
        G, rhs = z.new_zeros(n, d, d), z.new_zeros(n, d)
        for p, J, s in zip(primal, jac, second, strict=True):
            J, s, p = J.reshape(d, n, -1), s.reshape(n, -1), p.reshape(n, -1)
            if family is None:
                G = G + torch.einsum("anm,bnm->nab", J, J)
                rhs = rhs + torch.einsum("anm,nm->na", J, s)
                continue
            if issubclass(family, D.Bernoulli):
                prob = torch.sigmoid(p)
                h = prob * (1 - prob)
                dh = h * (1 - 2 * prob)
            else:  # Poisson rate
                h, dh = 1 / p, -1 / p.square()
            Ju, Jw = torch.einsum("anm,na->nm", J, u), torch.einsum("anm,na->nm", J, w)
            G = G + torch.einsum("anm,bnm,nm->nab", J, J, h)
            rhs = rhs + torch.einsum("anm,nm->na", J, h * s + 0.5 * dh * Ju * Jw)
        return solve_or_nan(G, rhs)

    def _quad(self, z: Tensor, v: Tensor) -> Tensor:
        # k JVPs with the curve's own directions: cheaper than forming G when k < d
        if v.shape[-2] >= z.shape[-1]:
            return super()._quad(z, v)
        return self._gram(z, v).diagonal(dim1=-2, dim2=-1)


def metric_for(model: nn.Module, kind: str | None = None) -> Metric:
    """The natural metric of a model: its own for an RHVAE (anything with `G`, `G_inv` and
    `log_det_G`), which takes no `kind`, otherwise the pull-back through `model.decoder`
    (`kind` as in `PullbackMetric`, default "mean"); its `to` moves the whole model."""
    if all(callable(getattr(model, name, None)) for name in ("G", "G_inv", "log_det_G")):
        if kind is not None:  # it was ignored: the RHVAE's metric came back for "fisher"
            raise ValueError(f"kind={kind!r}: an RHVAE's natural metric is its own, G(z), of "
                             "no kind; for a pull-back through its decoder use "
                             f"PullbackMetric(model.decoder, kind={kind!r})")
        return RHVAEMetric(model)
    decoder = getattr(model, "decoder", None)
    if not callable(decoder):  # else an AttributeError from nn.Module, or one at first use
        raise TypeError(f"metric_for needs an aetk model: an RHVAE (G, G_inv, log_det_G) or "
                        f"one with a decoder; {type(model).__name__} has neither. For a "
                        "decoder of your own use PullbackMetric(decoder), for a metric "
                        "function Metric(fn)")
    metric = PullbackMetric(decoder, kind="mean" if kind is None else kind)
    # what `to` moves: the decoder alone left a float32 encoder beside a float64 decoder,
    # and the model's decode, loss and fit failed on the mixed dtypes
    metric.model = model
    return metric


def _grid_axes(bounds: Sequence[Sequence[float]], n: int | Sequence[int], what: str
               ) -> tuple[tuple[float, float, int], tuple[float, float, int]]:
    """`(low, high, points)` per axis of a 2-D grid, or a ValueError that says what is wrong
    with `bounds` (two finite `(low, high)` pairs with low < high) or `n` (an integer >= 1
    or two of them)."""
    usage = (f"{what} needs bounds ((z1_min, z1_max), (z2_min, z2_max)) for a 2-D latent "
             "space")
    try:
        pairs = [tuple(float(b) for b in pair) for pair in bounds]
    except (TypeError, ValueError):  # a number, or pairs of non-numbers
        raise ValueError(f"{usage}, got {bounds!r}") from None
    if len(pairs) != 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(f"{usage}, got {len(pairs)} pair(s) of lengths "
                         f"{[len(p) for p in pairs]}: {bounds!r}")
    for axis, (lo, hi) in enumerate(pairs, 1):
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{what}: the bounds of z{axis} must be finite with low < high, "
                             f"got ({lo}, {hi})")
    try:
        sizes = (n, n) if isinstance(n, numbers.Real) else tuple(n)
        if len(sizes) != 2:
            raise ValueError
        n1, n2 = (positive_int(k, "n") for k in sizes)  # 12.0 too, as read from a file
    except (TypeError, ValueError):
        raise ValueError(f"{what}: n must be an integer >= 1 or two of them (n1, n2), got "
                         f"{n!r}") from None
    return (*pairs[0], n1), (*pairs[1], n2)


def grid_points(metric: Metric, bounds: Sequence[Sequence[float]], n: int | Sequence[int],
                what: str) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """The axes `z1`, `z2` of a regular 2-D grid and its points `(n1 * n2, 2)` (z1 major) in
    the metric's dtype and device; `what` names the caller in the errors for other
    dimensions and for malformed `bounds` or `n`."""
    d = latent_dim(metric)
    if d is not None and d != 2:
        raise ValueError(f"{what} needs a 2-D latent space; this metric's has {d}")
    (lo1, hi1, n1), (lo2, hi2, n2) = _grid_axes(bounds, n, what)
    z1, z2 = np.linspace(lo1, hi1, n1), np.linspace(lo2, hi2, n2)
    grid = np.stack(np.meshgrid(z1, z2, indexing="ij"), -1).reshape(-1, 2)
    dtype, device = _tensor_spec(metric)
    return z1, z2, torch.as_tensor(grid, dtype=dtype, device=device)


def volume_grid(
    metric: Metric,
    bounds: Sequence[Sequence[float]],
    n: int | Sequence[int] = 100,
    *,
    chunk_size: int = 4096,
) -> xr.Dataset:
    """Log volume `log sqrt(det G)` of a 2-D metric on a regular grid.

    `bounds = ((z1_min, z1_max), (z2_min, z2_max))`, `n` points per axis (or `(n1, n2)`).
    Returns an `xarray.Dataset` with coordinates `z1`, `z2` and the variable
    `log_volume (z1, z2)` (float64); plot it with `ds.log_volume.plot(x="z1")`.
    """
    z1, z2, points = grid_points(metric, bounds, n, "volume_grid")
    with torch.no_grad():
        logv = torch.cat([metric.log_volume(c) for c in points.split(chunk_size)])
    values = logv.double().cpu().numpy().reshape(len(z1), len(z2))
    return xr.Dataset(
        {"log_volume": (("z1", "z2"), values)},
        coords={"z1": z1, "z2": z2},
        attrs={"description": "log sqrt(det G(z)) of the latent metric"},
    )


def _module(metric: Metric) -> object:
    """The model or decoder behind a metric, or the metric itself when it is a module:
    the module of a bound method given as the decoder or function too
    (`PullbackMetric(model.decode)`, `Metric(net.forward)`), and a module given as the
    function (`Metric(net)`), the ones `Metric.to` moves (None for a plain function)."""
    if isinstance(metric, nn.Module):
        return metric
    for name in ("model", "decoder", "_fn"):
        held = getattr(metric, name, None)
        owner = getattr(held, "__self__", None)  # a bound method's object
        if isinstance(owner, nn.Module):
            return owner
        if held is not None and (name != "_fn" or isinstance(held, nn.Module)):
            return held
    return None


def latent_dim(metric: Metric) -> int | None:
    """The latent dimension of the model or decoder behind a metric, when it says."""
    d = getattr(_module(metric), "latent_dim", None)
    return d if isinstance(d, int) else None


def module_spec(module: object) -> tuple[torch.dtype, torch.device] | None:
    """dtype and device of a module (its first floating parameter or buffer); None for
    anything else, or a module without one."""
    if isinstance(module, nn.Module):
        for t in itertools.chain(module.parameters(), module.buffers()):
            if t.is_floating_point():
                return t.dtype, t.device
    return None


def _own_spec(metric: Metric) -> tuple[torch.dtype, torch.device] | None:
    """dtype and device of the module behind a metric; None where there is none (a plain
    `Metric(fn)`, a decoder function)."""
    return module_spec(_module(metric))


def _tensor_spec(metric: Metric) -> tuple[torch.dtype, torch.device]:
    """dtype and device of the module behind a metric (default float32, CPU for plain ones)."""
    return _own_spec(metric) or (torch.get_default_dtype(), torch.device("cpu"))


def positive_number(value: object, name: str, *, zero: bool = False) -> float:
    """`value` as a float; a ValueError naming `name` unless it is a finite number > 0
    (>= 0 with `zero`). Tolerances and step sizes: a negative or NaN one made fits run
    to their budget or stand still and report themselves converged."""
    try:  # numpy and 0-d torch numbers too; not text, nor True for 1
        number = None if isinstance(value, bool | str | bytes) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def latent_points(metric: Metric, z: Tensor | np.ndarray, name: str = "points", **options: bool
                  | str | torch.device | None) -> Tensor:
    """`as_points` (with its `options`), and a ValueError when the points' last axis is not
    the latent dimension of the model behind the metric."""
    z = as_points(metric, z, name, **options)
    d = latent_dim(metric)
    if d is not None and z.shape[-1:] != (d,):
        k = z.shape[-1] if z.dim() else "no"
        raise ValueError(f"{name} have {k} coordinates but the metric's latent space has {d} "
                         "(points of the latent space: encode data first)")
    return z


def check_user_metric(metric: Metric, z: Tensor, where: str = "") -> None:
    """For a metric of the user's function (`Metric(fn)`; aetk's own are symmetric and
    positive semi-definite by construction): a ValueError when `G` at the points `z (..., d)`
    is not symmetric, or has a negative eigenvalue, beyond rounding; `where` says what the
    points are, after the offending one. Fits took such a metric's negative squared speeds as
    0 (`curve_length`) and called the curves converged."""
    if type(metric) is not Metric or z.numel() == 0:
        return
    z = z.reshape(-1, z.shape[-1])
    with torch.no_grad():
        G = metric.metric(z)
    tol = math.sqrt(torch.finfo(G.dtype).eps) * G.abs().amax(dim=(-2, -1))
    bad = (G - G.mT).abs().amax(dim=(-2, -1)) > tol
    what = "symmetric"
    if not bool(bad.any()):
        low = torch.linalg.eigvalsh(G).amin(-1)
        bad, what = low < -tol, "positive semi-definite"
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"the metric's function gives a G(z) that is not {what} at the point "
                         f"{z[i].tolist()}{where} (G there: {G[i].tolist()}): a Riemannian "
                         "metric is symmetric positive definite")


def pair_rows(z_start: Tensor, z_end: Tensor) -> tuple[Tensor, Tensor]:
    """Endpoints of one pair `(d,)` or of pairs `(B, d)` as rows `(B, d)`: a ValueError for
    other shapes (pairs `(2, 4, d)` were flattened to 8 and the results lost their shape),
    for endpoints of different shapes and for no pairs."""
    for name, z in (("z_start", z_start), ("z_end", z_end)):
        if z.dim() not in (1, 2):
            raise ValueError(f"{name} must be one point (d,) or rows of points (B, d), got "
                             f"{tuple(z.shape)}: give the pairs as rows, "
                             f"{name}.reshape(-1, d), and reshape the results")
    z_start, z_end = z_start.reshape(-1, z_start.shape[-1]), z_end.reshape(-1, z_end.shape[-1])
    if z_start.shape != z_end.shape:
        raise ValueError(f"z_start {tuple(z_start.shape)} and z_end {tuple(z_end.shape)} differ")
    if len(z_start) == 0:
        raise ValueError("give at least one pair of endpoints")
    return z_start, z_end


def as_points(metric: Metric, z: Tensor | np.ndarray, name: str = "points", *,
              finite: bool = False, device: str | torch.device | None = None) -> Tensor:
    """Latent points `z` (a tensor of any float or integer dtype, a numpy array, a pandas
    DataFrame of codes as the pipeline writes them, nested lists) as a tensor in the
    metric's dtype and on its device: what every public geometry function does with the
    points it is given, so their results come in the metric's dtype. A metric without a
    module of its own (a plain `Metric(fn)`, a pull-back through a decoder function) has
    no dtype to tell: floating input keeps its dtype (numpy's float64 too) and device,
    other input becomes torch's default dtype. `device` (checked by
    `aetk.devices.resolve_device`) overrides the device. The cast keeps autograd's graph.
    With `finite`, NaN or infinite coordinates are a ValueError naming the points (rows
    of `z` as `(N, d)`) by `name`."""
    z = as_tensor(z, None)
    spec = _own_spec(metric)
    if spec is None:
        spec = (z.dtype if z.is_floating_point() else torch.get_default_dtype(), z.device)
    dtype, dev = spec
    if device is not None:
        dev = resolve_device(device)
    z = z.to(dtype=dtype, device=dev)
    if finite and not bool(torch.isfinite(z).all()):
        rows = z.reshape(-1, z.shape[-1] if z.dim() else 1)
        bad = (~torch.isfinite(rows)).any(-1).nonzero().flatten().tolist()
        listed = ", ".join(str(i) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
        where = f"at row(s) {listed} (counting from 0)" if z.dim() > 1 else "(its only point)"
        raise ValueError(f"{name} has NaN or infinite coordinates: {len(bad)} of {len(rows)} "
                         f"point(s), {where}")
    return z
