"""Penalties added to a model's loss while it trains: AutoEncoderToolkit.jl's
`reg_function` and `reg_strength` hooks, for every model and every training step.

A penalty is any callable `(model, x) -> scalar tensor`, already weighted. `penalized`
adds penalties to `model.loss` within a block (what `aetk.fit(penalties=...)` does), so
that models with their own training steps (several optimisers) need no change. Each one
is recorded as the loss term `penalty_<name>`. The built-in ones below are the regularisers
of the package's unreleased `regularization.jl` (L2 of the codes, a floor on the posterior
variance, the posterior entropy), and a decoder-Jacobian penalty for smoother decoders
(and so better-behaved pull-back metrics).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

import torch
import torch.distributions as D
from torch import nn

from .distributions import mean, one_event
from .models.base import LossOutput, Model, check_loss_output
from .validate import positive_int

Penalty = Callable[[Model, torch.Tensor], torch.Tensor]
Penalties = Mapping[str, Penalty] | Sequence[Penalty]

PENALTIES: dict[str, type] = {}  # name -> class, for specs (the CLI and the pipeline)


def _register(cls: type) -> type:
    PENALTIES[cls.name] = cls
    return cls


def penalty_names(penalties: Penalties) -> dict[str, Penalty]:
    """Penalties by the name of their loss term: a mapping's keys, or else each one's
    `name` attribute or function name (`penalty` for a lambda), made unique by `_2`,
    `_3`, ..."""
    if isinstance(penalties, Mapping):
        named = dict(penalties)
    else:
        named = {}
        for p in penalties:
            base = getattr(p, "name", None) or getattr(p, "__name__", "penalty")
            base = "penalty" if base == "<lambda>" else base
            name, i = base, 1
            while name in named:
                i += 1
                name = f"{base}_{i}"
            named[name] = p
    for name, p in named.items():
        if not callable(p):
            raise TypeError(f"penalty {name!r} is a {type(p).__name__}, not a callable "
                            "(model, x) -> scalar tensor")
    return named


@contextmanager
def penalized(model: Model, penalties: Penalties) -> Iterator[Model]:
    """Within the block, `model.loss(x[, target])` is the model's loss plus every penalty
    at `(model, x)`, each also in its terms as `penalty_<name>` (see `penalty_names`). The
    built-in penalties of q(z|x) reuse the loss's own encoder pass (`encoded`). A copy or
    pickle of the model made within the block has the class's loss (and, on its encoder,
    the recording hook, which does nothing outside a penalised loss)."""
    named = penalty_names(penalties)
    if not named:
        yield model
        return
    saved = model.__dict__.get("loss")  # a block inside another one keeps the outer's
    loss = model.loss

    def penalized_loss(x: Any, target: Any = None) -> LossOutput:
        # converted once, so that the penalties see the very tensor the loss encoded
        x = _input(model, x)
        target = None if target is None or not hasattr(model, "as_target") else (
            model.as_target(target))
        token = _ENCODED.set([])
        try:
            out = check_loss_output(loss(x) if target is None else loss(x, target), model)
            total, terms = out.loss, dict(out.terms)
            for name, penalty in named.items():
                value = penalty(model, x)
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise ValueError(f"penalty {name!r} must return a scalar tensor, got "
                                     f"{getattr(value, 'shape', type(value).__name__)}")
                value = value.reshape(())
                terms[f"penalty_{name}"] = value
                total = total + value
        finally:
            _ENCODED.reset(token)
        return LossOutput(total, terms, out.aux)

    penalized_loss.transient = True  # Model.__getstate__ leaves it out of copies
    model.loss = penalized_loss  # an instance attribute: the class's loss is untouched
    hook = model.encoder.register_forward_hook(_record)
    try:
        yield model
    finally:
        hook.remove()
        if saved is None:
            del model.loss
        else:
            model.loss = saved


# The encoder calls of the penalised loss being evaluated (None outside one): (encoder,
# input, its version, requires_grad, grad mode, output). A module-level hook and state,
# so that a model copied or pickled meanwhile carries nothing that cannot be.
_ENCODED: ContextVar[list[tuple] | None] = ContextVar("_ENCODED", default=None)


def _key(x: torch.Tensor) -> tuple:
    return x._version, x.requires_grad, torch.is_grad_enabled()


def _record(module: nn.Module, args: tuple, output: Any) -> None:
    calls = _ENCODED.get()
    if calls is not None and len(args) == 1 and isinstance(args[0], torch.Tensor):
        calls.append((module, args[0], _key(args[0]), output))


def _input(model: Model, x: Any) -> Any:
    """`x` as the model's methods and loss convert it (image rows reshaped too, or the
    loss's encoder pass is not the penalties'); as given for a stand-in without them."""
    convert = getattr(model, "checked_input", None) or getattr(model, "as_input", None)
    return x if convert is None else convert(x)


def encoded(model: Model, x: torch.Tensor) -> Any:
    """`model.encode(x)`; within a penalised loss, the loss's own encoder output for this
    very tensor when there is one (unchanged since, in the same grad mode), graph and all,
    and the same input mask for a denoising encoder. Measured on MNIST (784-256-256, batch
    128): a second encoder pass added 35% to a VAE's training step; reused, a step with a
    posterior penalty took 0.94-1.04x as long as without (two runs, bench/penalties.py).
    `x` may be an array or DataFrame, as for the model's methods."""
    x = _input(model, x)
    calls = _ENCODED.get()
    if calls is not None and type(model).encode is Model.encode:  # encode = encoder
        key = _key(x)
        for module, inputs, k, output in calls:
            if module is model.encoder and inputs is x and k == key:
                return one_event(output)
    return model.encode(x)


def _codes(model: Model, x: torch.Tensor) -> torch.Tensor:
    """`model.latent_mean(x)`, from `encoded` where the model does not override it."""
    if type(model).latent_mean is not Model.latent_mean:
        return model.latent_mean(x)
    q = encoded(model, x)
    return q if isinstance(q, torch.Tensor) else q.mean


def _posterior(model: Model, x: torch.Tensor, penalty: str) -> D.Distribution:
    q = encoded(model, x)
    if not isinstance(q, D.Distribution):
        raise ValueError(f"the {penalty} penalty needs an encoder that returns a distribution "
                         f"q(z|x); the {type(model).__name__}'s returns codes")
    return q


def _check_weight(penalty: Any) -> None:
    """A finite weight, stored as a float (so that `weight=1` and `1.0` print alike in
    fingerprints and run hashes)."""
    if not math.isfinite(penalty.weight):
        raise ValueError(f"a penalty's weight must be finite, got {penalty.weight}")
    object.__setattr__(penalty, "weight", float(penalty.weight))  # frozen dataclass


@_register
@dataclasses.dataclass(frozen=True)
class LatentL2:
    """`weight` times the batch mean of `||E[z|x]||^2`, the squared norm of the codes
    (the latent means of a VAE): keeps a deterministic autoencoder's codes near the origin
    (the RAE of Ghosh et al. 2020). Gradients reach the encoder only; a VQ-VAE's codes are
    its codebook vectors, which it then moves with `codebook_update="loss"` and leaves to
    the moving averages otherwise: to draw in its encoder outputs, penalise
    `model.encoder(x)` with your own callable."""

    weight: float = 1.0
    name: ClassVar[str] = "latent_l2"

    def __post_init__(self) -> None:
        _check_weight(self)

    def __call__(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        z = _codes(model, x)
        return self.weight * z.square().flatten(1).sum(-1).mean()


@_register
@dataclasses.dataclass(frozen=True)
class MinVariance:
    """`weight` times the batch mean of `sum_j max(0, log sigma_min^2 - log sigma_j^2)`:
    a hinge that acts only where a posterior variance of q(z|x) falls below `sigma_min^2`
    (it keeps the encoder from collapsing its variances to points)."""

    sigma_min: float = 0.1
    weight: float = 1.0
    name: ClassVar[str] = "min_variance"

    def __post_init__(self) -> None:
        _check_weight(self)
        if not self.sigma_min > 0:
            raise ValueError(f"sigma_min must be positive, got {self.sigma_min}")
        object.__setattr__(self, "sigma_min", float(self.sigma_min))

    def __call__(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        log_var = _posterior(model, x, self.name).variance.log()
        hinge = torch.relu(2 * math.log(self.sigma_min) - log_var)
        return self.weight * hinge.flatten(1).sum(-1).mean()


@_register
@dataclasses.dataclass(frozen=True)
class Entropy:
    """`weight` times the batch mean of the entropy of q(z|x) (its distribution's own
    `entropy()`; `d/2 (1 + log 2 pi) + 1/2 sum log sigma^2` for a diagonal Gaussian). A
    positive weight sharpens the posteriors, a negative one rewards spread."""

    weight: float = 1.0
    name: ClassVar[str] = "entropy"

    def __post_init__(self) -> None:
        _check_weight(self)

    def __call__(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        h = _posterior(model, x, self.name).entropy()  # summed over dimensions, as the others
        return self.weight * h.reshape(len(h), -1).sum(-1).mean()


@_register
@dataclasses.dataclass(frozen=True)
class DecoderJacobian:
    """`weight` times the batch mean of `||J(z)||_F^2`, the squared Frobenius norm of the
    Jacobian of the decoder's point prediction at the codes `z = E[z|x]`: the trace of the
    pull-back metric `J^T J`, so it flattens the decoder where the data lie. Estimated
    without bias from `n_projections` random directions v (`E ||J^T v||^2`, v standard
    normal in data space), one vector-Jacobian product each. The codes are held fixed, so
    the gradient shapes the decoder only (the encoder cannot escape to flat regions)."""

    weight: float = 1.0
    n_projections: int = 1
    name: ClassVar[str] = "decoder_jacobian"

    def __post_init__(self) -> None:
        _check_weight(self)
        object.__setattr__(self, "n_projections",
                           positive_int(self.n_projections, "n_projections"))

    def __call__(self, model: Model, x: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled()  # validation runs under no_grad: no graph to keep
        z = _codes(model, x).detach()  # in the loss's grad mode, so its pass is reused
        with torch.enable_grad():
            z.requires_grad_()
            m = mean(model.decode(z), checked=False)  # a NaN loss says it
            if not m.is_floating_point():
                raise ValueError("the decoder_jacobian penalty needs a decoder whose point "
                                 "prediction is continuous (not a categorical's mode)")
            total = m.new_zeros(())
            for _ in range(self.n_projections):
                (jtv,) = torch.autograd.grad(m, z, torch.randn_like(m), create_graph=training,
                                             retain_graph=True)
                total = total + jtv.square().flatten(1).sum(-1).mean()
        return self.weight * total / self.n_projections


def describe(penalty: Penalty) -> str:
    """A stable description of a penalty for checkpoint fingerprints: a built-in's repr
    (its options), a `functools.partial`'s function and arguments, else the function's or
    class's qualified name (a lambda's is `<lambda>`: give it a name, or a partial, to keep
    a checkpoint from resuming under other settings)."""
    if dataclasses.is_dataclass(penalty):
        return repr(penalty)
    if isinstance(penalty, functools.partial):
        return f"partial({describe(penalty.func)}, {penalty.args!r}, {penalty.keywords!r})"
    return getattr(penalty, "__qualname__", type(penalty).__qualname__)


def make_penalty(spec: str | Mapping[str, Any]) -> Penalty:
    """A built-in penalty from `"name"` or `{"name": ..., **options}` (the CLI's
    `--penalty name:key=value,...` and the pipeline's `train.penalties`)."""
    from .data import build_named

    return build_named(spec, PENALTIES, "penalty",
                       lambda name: [f.name for f in dataclasses.fields(PENALTIES[name])])
