"""What every model shares: the loss record, encode/decode, and the hooks `aetk.fit`
calls (so that fit never needs to know the model's class)."""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import distributions as D
from torch import nn

from .. import validate
from ..decoders import Decoder, DeterministicDecoder, builtin_likelihood, check_support
from ..distributions import (
    kl_to_standard_normal,
    log_importance_weights,
    mean,
    one_event,
    standard_normal_log_prob,
)
from ..encoders import DeterministicEncoder, GaussianEncoder
from ..nets import Conditioned, LogInputs, attribute_set, evaluating

if TYPE_CHECKING:
    import pandas as pd


def adam(params: Iterable[nn.Parameter], lr: float,
         betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.Optimizer:
    """Adam with the fused update (one kernel for all parameters). On one CPU thread it takes
    0.4 ms per step for the 784-512 HVAE of bench/vs_pythae.py, against 1.9 ms for the
    default update, with the same numbers to rounding."""
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)


@dataclass
class LossOutput:
    """`loss` is the scalar minimised; `terms` are named scalar parts of it for logging;
    `aux` holds what a model's own `training_step` reuses from its loss (not logged), so
    that the step can take its loss from `self.loss`, where `aetk.penalized` adds to it."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def check_loss_output(out: Any, model: nn.Module, method: str = "loss") -> LossOutput:
    """`out`, what `model.<method>` returned, if it is a `LossOutput`; else TypeError naming
    what it returned (fit reads `.loss` and `.terms`)."""
    if not isinstance(out, LossOutput):
        got = f"a {type(out).__name__}" + (f" of shape {tuple(out.shape)}"
                                           if isinstance(out, torch.Tensor) else "")
        raise TypeError(f"{type(model).__name__}.{method} returned {got}, not an "
                        "aetk.LossOutput: return LossOutput(loss, terms), the scalar loss to "
                        "minimise and a dict of named scalar terms to log (may be empty)")
    return out


class NoPriorSampler(AttributeError):
    """`model.sample` of a model without a prior to draw from (AE, IRMAE, a user-made model
    without a `sample`). An AttributeError, so that `hasattr(model, "sample")` stays False
    for them, the test the CLI makes before it falls back to the code mixture."""


TAKES_DATA = ("encode", "decode", "latent_mean", "posterior_sample", "reconstruct", "forward",
              "prior_log_prob", "codes")
"""The methods whose first argument (data x, or latent points z) may be an array, a
DataFrame, or a tensor of another dtype or device: `Model.checked_input` converts data,
`Model.as_points` latent points (of any number type, also for an encoder of tokens)."""
TAKES_POINTS = ("decode", "prior_log_prob")
CHECKS_FINITE = ("encode", "latent_mean", "posterior_sample", "reconstruct", "codes")
"""The methods that refuse NaN or infinite data, naming the first (their codes came back
NaN in silence, to spoil geodesics and means later); not `forward`, which training's
steps may call (a check is a device synchronisation)."""


def takes_data(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method(self, x, ...)` with `x` first converted by `self.checked_input` (by
    `self.as_points` for the latent points of `TAKES_POINTS`), whether given by position or
    by its name."""
    if getattr(method, "takes_data", False):
        return method
    first = list(inspect.signature(method).parameters)[1]
    convert = "as_points" if method.__name__ in TAKES_POINTS else "checked_input"

    @functools.wraps(method)
    def converted(self: Model, *args: Any, **kwargs: Any) -> Any:
        if args:
            args = (getattr(self, convert)(args[0], method.__name__), *args[1:])
        elif first in kwargs:
            kwargs[first] = getattr(self, convert)(kwargs[first], method.__name__)
        x = args[0] if args else kwargs.get(first)
        if convert == "checked_input" and self._condition_rows > 1 and x is not None:
            self.check_condition_rows(x, method.__name__)
        if (method.__name__ in CHECKS_FINITE and isinstance(x, torch.Tensor) and x.dim()
                and len(x)):  # no rows: no rows back, as before
            validate.check_finite(x, method.__name__)
        return method(self, *args, **kwargs)

    converted.takes_data = True
    return converted


RECODES_CLASSES = ("training_step", "on_fit_start")
"""The hooks whose first argument, fit's data, reaches a model's own code beside its loss
(a critic, centroids, a codebook): a categorical model's classes come recoded as its
encoder takes them (`Model._recode_classes`)."""


def recodes_classes(method: Callable[..., Any]) -> Callable[..., Any]:
    """`method(self, x, ...)` with `x`, given by position (as `fit` gives it), recoded by
    `self._recode_classes` where that applies."""
    if getattr(method, "recodes_classes", False):
        return method

    @functools.wraps(method)
    def recoded(self: Model, *args: Any, **kwargs: Any) -> Any:
        if args:
            coded = self._recode_classes(args[0], method.__name__)
            args = args if coded is None else (coded, *args[1:])
        return method(self, *args, **kwargs)

    recoded.recodes_classes = True
    return recoded


def takes_loss_data(loss: Callable[..., Any]) -> Callable[..., Any]:
    """`loss(self, x, target=None, ...)` with `x` converted by `self.checked_input` and a given
    `target` by `self.as_target`, whether given by position or by name: a model's loss
    takes what its other methods take (arrays, DataFrames, uint8 images, int64 counts)."""
    if getattr(loss, "takes_data", False):
        return loss
    names = list(inspect.signature(loss).parameters)[1:3]
    # the second is the decoder's data only by that name (not a user's loss(x, n_samples))
    converters = ("checked_input", "as_target")[:2 if names[1:] == ["target"] else 1]

    @functools.wraps(loss)
    def converted(self: Model, *args: Any, **kwargs: Any) -> Any:
        args = tuple(a if a is None or i >= len(converters) else _convert(self, converters[i], a)
                     for i, a in enumerate(args))
        for name, convert in zip(names[len(args):], converters[len(args):], strict=False):
            if kwargs.get(name) is not None:
                kwargs[name] = _convert(self, convert, kwargs[name])
        given = dict(zip(names, args, strict=False)) | kwargs
        x, target = given.get(names[0]), given.get("target") if len(converters) == 2 else None
        if isinstance(x, torch.Tensor) and x.dim() and not len(x):  # torch's reshape error
            raise ValueError("loss got x of 0 rows: a loss is a mean over rows, give at least "
                             "one")
        if (isinstance(x, torch.Tensor) and isinstance(target, torch.Tensor) and x.dim()
                and target.dim() and len(x) != len(target)):  # broadcast in the likelihood
            raise ValueError(f"loss got x of {len(x)} rows but a target of {len(target)}: give "
                             "one target row per row of x")
        if self._condition_rows > 1 and (args or names[0] in kwargs):
            self.check_condition_rows(args[0] if args else kwargs[names[0]], "loss")
        return loss(self, *args, **kwargs)

    converted.takes_data = True
    return converted


def _convert(model: Model, converter: str, value: Any) -> Any:
    """`value` converted by the model's method `converter`, the loss's inputs named so."""
    if converter == "checked_input":
        return model.checked_input(value, "loss")
    return getattr(model, converter)(value)


class Model(nn.Module):
    """An encoder and a decoder; subclasses define `loss`.

    `encode`, `decode`, `latent_mean`, `posterior_sample`, `reconstruct` (and a subclass's
    own versions of them, `TAKES_DATA`) and `loss` (its target too) take tensors, numpy
    arrays, pandas DataFrames or lists of tensors of any number type, cast to the model's
    dtype and device, rows in another shape of the same size reshaped to `input_shape`
    (`checked_input`, `as_target`).

    A conditional model (encoder and decoder built with `n_conditions = k > 0`: q(z|x, c),
    p(x|z, c)) is called inside `with model.given(c):`, which gives every conditional
    network the conditions `c (B, k)` of the batch (or `(k,)` for all rows); `aetk.fit`
    does this for each batch of `(x, c)` pairs.
    """

    build_spec: dict[str, Any] | None = None  # set by build_model, lets save/load rebuild it
    point_codes: bool | None = None
    """True for the autoencoders (codes z = f(x)), False for the models of a posterior
    q(z|x); `__init__` refuses the built-in encoder and decoder of the other kind (None, a
    user's model: no check)."""
    _condition_rows = 0  # the rows of the conditions of the innermost `given` block

    def __getstate__(self) -> dict[str, Any]:
        """The module's state without a transient instance `loss` (`aetk.penalized`'s): a
        copy or pickle made while training with penalties is the plain model."""
        state = super().__getstate__()
        if getattr(state.get("loss"), "transient", False):
            del state["loss"]
        return state

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self._check_parts(encoder, decoder)
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim: int = encoder.latent_dim
        self.input_shape = getattr(encoder, "input_shape", None)
        self.n_conditions: int = getattr(encoder, "n_conditions", 0)
        if getattr(decoder, "n_conditions", 0) != self.n_conditions:
            raise ValueError(f"the encoder takes {self.n_conditions} conditions and the decoder "
                             f"{getattr(decoder, 'n_conditions', 0)}: build both with the same "
                             "n_conditions")

    def _check_parts(self, encoder: nn.Module, decoder: nn.Module) -> None:
        """ValueError for parts that cannot work together (they failed at the first batch,
        inside torch: "mat1 and mat2 shapes cannot be multiplied", "'Tensor' object has no
        attribute 'rsample'"): a decoder of another latent dimension than the encoder's, and
        built-in parts of the other kind of model (`point_codes`); TypeError for a user
        decoder's `event_shape` that is no shape (an int 6 failed in fit with "object of type
        'int' has no len()")."""
        cls, d = type(self).__name__, getattr(encoder, "latent_dim", None)
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1:
            # a user's encoder without one failed with nn.Module's bare AttributeError
            raise TypeError(f"the encoder needs an attribute latent_dim, the number of "
                            f"coordinates of its codes (a positive int), got {d!r}")
        d_dec = getattr(decoder, "latent_dim", None)
        if isinstance(d, int) and isinstance(d_dec, int) and d_dec != d:
            raise ValueError(f"the encoder's latent_dim is {d} but the decoder's {d_dec}: build "
                             "both with the same latent_dim")
        out = getattr(decoder, "event_shape", None)
        if out is not None and not (isinstance(out, (tuple, list))
                                    and all(isinstance(n, int) for n in out)):
            raise TypeError(f"the decoder's event_shape must be the shape of one data point, a "
                            f"tuple of ints (e.g. (6,) for rows of 6 values) or None, got "
                            f"{out!r}")
        if self.point_codes is None:
            return
        wrong, right, what = ((GaussianEncoder, "DeterministicEncoder", "codes z = f(x)")
                              if self.point_codes else
                              (DeterministicEncoder, "GaussianEncoder", "a distribution q(z|x)"))
        if isinstance(encoder, wrong):
            raise ValueError(f"{cls} takes an encoder of {what}: give it a {right}, not a "
                             f"{type(encoder).__name__}")
        if not self.point_codes and isinstance(decoder, DeterministicDecoder):
            raise ValueError(f"{cls} scores data by a likelihood: give it a probabilistic "
                             "decoder (BernoulliDecoder, GaussianDecoder, ...); a "
                             "DeterministicDecoder (the mean squared error) is for the "
                             "autoencoders AE, IRMAE, WAE and VQVAE")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # a subclass's own encode etc. (the ladder VAE's, a user's) convert their inputs as
        # the base class's do, so that every model takes the same data
        super().__init_subclass__(**kwargs)
        for name in TAKES_DATA:
            method = cls.__dict__.get(name)
            if inspect.isfunction(method):
                setattr(cls, name, takes_data(method))
        loss = cls.__dict__.get("loss")
        if inspect.isfunction(loss):
            cls.loss = takes_loss_data(loss)
        for name in RECODES_CLASSES:
            method = cls.__dict__.get(name)
            if inspect.isfunction(method):
                setattr(cls, name, recodes_classes(method))

    def as_data(self, x: Any) -> torch.Tensor:
        """`x` as `fit` converts data: a tensor, numpy array, DataFrame or list of any number
        type as a tensor of the model's dtype on its device (a tensor that already is one
        is returned itself: no copy, gradients kept)."""
        param = self._first_parameter()
        if param is None:  # nothing to match (a user-made model without parameters)
            return validate.as_tensor(x, None if isinstance(x, torch.Tensor) else torch.float32)
        if isinstance(x, torch.Tensor) and x.dtype == param.dtype and x.device == param.device:
            return x
        return validate.as_tensor(x, param.dtype, param.device)

    def as_points(self, z: Any, name: str = "points") -> torch.Tensor:
        """Latent points `z (..., latent_dim)` as `as_data` converts data; another last size
        is a ValueError naming the method `name` (it failed inside the decoder's first
        layer)."""
        z = self.as_data(z)
        d = self.latent_dim
        if z.dim() == 0 or z.shape[-1] != d:
            raise ValueError(f"{name}: z has shape {tuple(z.shape)}, but the model's codes have "
                             f"latent_dim={d} coordinates: give (..., {d}) (data: encode them "
                             "first)")
        return z

    def as_input(self, x: Any) -> Any:
        """`x` as the model's networks take it: data as `as_data` converts them (integer
        and boolean tensors too: uint8 images, int64 counts; a list of tensors stacked as
        rows), except that the integer indices of an encoder of tokens (one with an
        `nn.Embedding`) are only moved to the model's device, and a dict, or a list of
        tensors for a user's network without an `input_shape` (several inputs), is passed
        on unchanged. A subclass may override it."""
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() or not self._takes_indices():
                return self.as_data(x)
            return self._on_device(x)
        structured = isinstance(x, dict) or (
            self.input_shape is None and isinstance(x, (list, tuple))
            and any(isinstance(e, torch.Tensor) for e in x))
        return x if structured else self.as_data(x)

    def checked_input(self, x: Any, name: str = "input") -> Any:
        """Data `x` as `as_input` converts them, with rows of the right number of values in
        another shape (images `(n, 1, 28, 28)` for a model of 784 features, or the reverse)
        reshaped to `input_shape`, and a categorical model's classes in the other coding
        (one-hot rows, class indices) recoded as its encoder takes them (`_recode_classes`):
        what every method that takes data takes. Rows of another size are a ValueError
        naming the method `name` (they failed inside the network's first layer: "mat1 and
        mat2 shapes cannot be multiplied")."""
        x = self.as_input(x)
        if not isinstance(x, torch.Tensor):
            return x
        x = validate.as_rows(x, self.input_shape)
        shape = self.input_shape
        if shape is not None and tuple(x.shape[1:]) != tuple(shape):
            coded = self._recode_classes(x, name)
            if coded is not None:
                return self.as_input(coded)
            one = (f" (a single data point: x[None], of shape (1, {', '.join(map(str, shape))}))"
                   if tuple(x.shape) == tuple(shape) else "")
            raise ValueError(f"{name} data has feature shape {tuple(x.shape[1:])} but the "
                             f"model expects {tuple(shape)}: give rows (n, "
                             f"{', '.join(map(str, shape))}){one}")
        return x

    def _recode_classes(self, x: Any, name: str = "input", checked: bool = False
                        ) -> torch.Tensor | None:
        """For a model of classes (a decoder with `n_classes = k`, scoring the inputs' own
        shape), data `x` in the other coding than its encoder takes, checked by the decoder
        and recoded: one-hot rows `(n, *shape, k)` as class indices `(n, *shape)` for an
        encoder of indices (`build_model`'s, `input_shape=shape`), indices as one-hot rows
        for an encoder of them (`input_shape=(*shape, k)`); the loss is the same for both
        codings; rows of the classes in another shape of as many (flat data for a model of
        images, as `validate.as_rows`) reshaped first (and one-hot rows of an encoder of
        them only reshaped). None for any other `x` (data in the
        encoder's coding first, at the cost of a shape comparison). `checked`: data that
        `check_data` has passed, not checked again."""
        found = self._class_coding(x)
        if found is None:
            return None
        x, recode = found
        check = None if checked else getattr(self.decoder, "check_data", None)
        if check is not None:  # a wrong coding (probabilities, classes past k) recoded is wrong
            check(x, name)
        return x if recode is None else recode(x, self.decoder.n_classes)

    def _class_coding(self, x: Any) -> tuple[torch.Tensor, Callable | None] | None:
        """For `_recode_classes`: `x` as rows of its classes and the function that recodes
        them (None: reshaped only), or None for data that need no recoding."""
        shape = self.input_shape
        if (shape is None or not isinstance(x, torch.Tensor) or x.dim() < 2
                or tuple(x.shape[1:]) == tuple(shape)):
            return None
        k = getattr(self.decoder, "n_classes", None)
        out = getattr(self.decoder, "event_shape", None)
        if not isinstance(k, int) or out is None:
            return None
        shape, out = tuple(shape), tuple(out)
        x = self._class_rows(x, out, k)
        given = tuple(x.shape[1:])
        if shape == out and given == (*out, k):
            return x, self._one_hot_indices
        if shape == (*out, k) and given == out:
            return x, self._indices_one_hot
        if given == shape:  # the encoder's coding in another layout: reshaped only
            return x, None
        return None

    @staticmethod
    def _class_rows(x: torch.Tensor, out: tuple[int, ...], k: int) -> torch.Tensor:
        """Class indices `x` as rows `(n, *out)`, one-hot rows as `(n, *out, k)`, where
        they hold as many classes in another shape that `validate.as_rows` reshapes."""
        given = tuple(x.shape[1:])
        if given[-1:] == (k,) and math.prod(given[:-1]) == math.prod(out):  # one-hot rows
            if tuple(validate.as_rows(x[..., 0], out).shape[1:]) == out:
                return x.reshape(len(x), *out, k)
            return x
        return validate.as_rows(x, out)

    @staticmethod
    def _one_hot_indices(x: torch.Tensor, k: int) -> torch.Tensor:
        """The class indices of one-hot rows `x (..., k)`, in x's dtype."""
        if x.is_floating_point():  # a product: 5x faster than argmax over a short axis
            return x @ torch.arange(k, dtype=x.dtype, device=x.device)
        return x.argmax(-1).to(x.dtype)

    @staticmethod
    def _indices_one_hot(x: torch.Tensor, k: int) -> torch.Tensor:
        """Class indices `x` as one-hot rows `(..., k)`, in x's dtype."""
        # scattered in x's dtype: one_hot's int64 rows, then cast, took 5x as long
        return x.new_zeros(*x.shape, k).scatter_(-1, x.long().unsqueeze(-1), 1)

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        """`t` moved to the model's device, its integers kept (token or class indices)."""
        param = self._first_parameter()
        return t if param is None else t.to(param.device)

    def _takes_indices(self) -> bool:
        """Whether the encoder looks its inputs up in an `nn.Embedding` (token indices)."""
        return any(isinstance(m, nn.Embedding) for m in self.encoder.modules())

    def _first_parameter(self) -> nn.Parameter | None:
        """`next(self.parameters())`, in 3 us instead of 12 (no generators or memo sets):
        `as_input` runs on every call of the inference methods, geometry's among them."""
        stack: list[nn.Module] = [self]
        while stack:
            module = stack.pop()
            for p in module._parameters.values():
                if p is not None:
                    return p
            stack.extend(reversed(module._modules.values()))
        return None

    def as_target(self, y: Any) -> torch.Tensor:
        """The decoder's data `y` as `as_data` converts data, except that integer class
        indices stay integers for a decoder of classes (one with `n_classes`, a categorical
        likelihood), as `fit` keeps them."""
        y = self._target_rows(validate.as_target(y), "target")
        if y.is_floating_point() or not hasattr(self.decoder, "n_classes"):
            return self.as_data(y)
        return self._on_device(y)

    def _target_rows(self, y: torch.Tensor, name: str) -> torch.Tensor:
        """The decoder's data `y` as rows of its `event_shape` (`validate.as_rows`); another
        feature shape is a ValueError naming `name` (the likelihood would broadcast it)."""
        out = getattr(self.decoder, "event_shape", None)
        y = validate.as_rows(y, out)
        # (a categorical's one-hot targets have a class axis after these)
        if out is not None and y.dim() and tuple(y.shape[1:len(out) + 1]) != tuple(out):
            raise ValueError(f"{name} data has feature shape {tuple(y.shape[1:])} but the "
                             f"decoder outputs {tuple(out)}")
        return y

    def __getattr__(self, name: str) -> Any:
        # nn.Module's lookup of parameters, buffers and submodules (called directly: this
        # is every `self.encoder`), with a message of its own for `sample` where a model
        # has none (a class that defines one, even failing inside it, keeps torch's error)
        if name != "sample" or hasattr(type(self), "sample"):
            return nn.Module.__getattr__(self, name)
        try:
            return nn.Module.__getattr__(self, name)
        except AttributeError:
            pass
        cls = type(self).__name__
        raise NoPriorSampler(
            f"{cls} has no prior to sample from (model.sample is for models with one, such as "
            "vae, wae or vqvae): fit a Gaussian mixture to its codes of the training data and "
            "decode draws of it, mixture = aetk.CodeMixture(model.embed(x_train)); x_new = "
            "aetk.distributions.mean(model.decode(mixture.sample(n))) (what `aetk encode` "
            "and `aetk sample --sampler mixture` do)", name=name, obj=self)

    def conditions(self) -> torch.Tensor | None:
        """The conditions set by the innermost `given` block (None outside one)."""
        nets = (m for m in self.modules() if isinstance(m, Conditioned))
        return next((m.conditions for m in nets), None)

    @contextmanager
    def given(self, c: torch.Tensor | None) -> Iterator[Model]:
        """Within the block, the conditional networks see the conditions `c` (a tensor,
        array, DataFrame or list of rows): `(B, k)` for a batch of B rows, or `(k,)` (one
        row) for every input; `None` changes nothing
        (so callers need no branch for models without conditions)."""
        if c is None:
            yield self
            return
        if not self.n_conditions:
            raise ValueError(f"this {type(self).__name__} takes no conditions (build it with "
                             "n_conditions > 0 for a conditional model)")
        param = next(self.parameters())
        raw = validate.as_tensor(c, None)  # a DataFrame of covariates too
        k = self.n_conditions
        if (raw.dim() == 1 and len(raw) == k and not raw.is_floating_point()
                and raw.dtype != torch.bool
                and not (bool(((raw == 0) | (raw == 1)).all()) and raw.sum() == 1)):
            # k integer class labels of k rows were read as one row of k conditions
            raise ValueError(f"integer conditions of shape ({k},) that are not one-hot, "
                             f"{raw.tolist()}: class labels of {k} rows are one-hot rows, "
                             f"torch.nn.functional.one_hot(labels, {k}).float(), (rows, {k}); "
                             f"one row of {k} numeric covariates for every input: give floats")
        c = validate.as_tensor(raw, param.dtype, param.device)
        if c.dim() == 1 and len(c) != self.n_conditions:
            raise ValueError(f"conditions of shape {tuple(c.shape)}: give (rows, "
                             f"{self.n_conditions}), or ({self.n_conditions},) for every row; "
                             "class labels one-hot, torch.nn.functional.one_hot(labels, "
                             f"{self.n_conditions}).float()")
        c = c[None] if c.dim() == 1 else c
        validate.check_conditions(c, self.n_conditions, "conditions")
        with attribute_set([m for m in self.modules() if isinstance(m, Conditioned)],
                           "conditions", c), attribute_set([self], "_condition_rows", len(c)):
            yield self

    def check_condition_rows(self, x: Any, name: str) -> None:
        """ValueError unless the data `x` given to the method `name` has a row for each row
        of the conditions set by `given` (or these are one row, for all): the networks
        would read more rows as draws stacked sample-major, each row of x under the wrong
        conditions."""
        m = self._condition_rows
        if m > 1 and isinstance(x, torch.Tensor) and x.dim() and len(x) != m:
            k = self.n_conditions
            raise ValueError(f"{name} got x of {len(x)} rows, but model.given(c) holds "
                             f"conditions for {m} rows: give c one row per row of x "
                             f"({len(x)}, {k}), or one row ({k},) for all of them")

    def loss(self, x: torch.Tensor, target: torch.Tensor | None = None) -> LossOutput:
        """The objective for the inputs `x`, whose likelihood term scores `target`: `x`
        itself when None (reconstruction), or another array for paired training (`x_in ->
        x_out`: denoising, translation; the decoder's output shape)."""
        raise NotImplementedError

    @takes_data
    def encode(self, x: torch.Tensor) -> Any:
        """q(z|x): a distribution (a tensor for deterministic encoders)."""
        return self.posterior(x)

    def posterior(self, x: torch.Tensor) -> Any:
        """q(z|x) as the losses read it, for inputs already converted: the encoder's output,
        a user's plain `Normal` of batch shape (B, d) as one event per sample (`one_event`;
        the user's module itself still returns its own)."""
        q = one_event(self.encoder(x))
        if (isinstance(q, D.Distribution) and isinstance(x, torch.Tensor) and x.dim()
                and tuple(q.batch_shape[:1]) != (len(x),)):
            # Independent(Normal(mu, s), 2): one event of the whole batch, whose log q(z|x)
            # summed the rows (an HVAE's loss -16.0 for 3.76)
            raise ValueError(f"the encoder's {type(q).__name__} has batch shape "
                             f"{tuple(q.batch_shape)} and event shape {tuple(q.event_shape)} "
                             f"for {len(x)} rows: give one distribution per row, e.g. "
                             "Independent(Normal(mu, sigma), 1) of batch shape (rows,)")
        width = (q.event_shape if isinstance(q, D.Distribution)
                 else q.shape[1:] if isinstance(q, torch.Tensor) else None)
        if width is not None and len(width) == 1 and width[0] != self.latent_dim:
            # it trained, then decode and sample blamed the user's z or failed in a matmul
            raise ValueError(f"the encoder's codes have {width[0]} coordinates, but its "
                             f"latent_dim is {self.latent_dim}: make them agree")
        return q

    @takes_data
    def decode(self, z: torch.Tensor) -> Any:
        """p(x|z) for rows of latent points `z (n, d)`: a distribution (a tensor for
        deterministic decoders). A single point `(d,)` is a ValueError, as a single data
        point is for `encode`: give `z[None]`; so are stacked points `(S, n, d)`: give
        `z.reshape(-1, d)`."""
        d = self.latent_dim
        if z.dim() == 1:  # the built-in decoders failed in their reshape
            raise ValueError(f"decode got a single latent point of shape {tuple(z.shape)}: "
                             f"give rows (n, {d}), z[None] of shape (1, {d}) for one point")
        if z.dim() > 2:  # the built-in decoders blamed their network's output width
            raise ValueError(f"decode takes rows of latent points (n, {d}), got shape "
                             f"{tuple(z.shape)}: give z.reshape(-1, {d}) and reshape the "
                             "means you take from it")
        return self.decoder(z)

    @takes_data
    def prior_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """`log p(z)` over the last axis of `z (..., d)`: `N(0, I)` unless a model says
        otherwise."""
        return standard_normal_log_prob(z)

    def kl(self, q: Any) -> torch.Tensor:
        """`KL(q(z|x) || p(z))` per row, `(B,)`: the closed form for `N(0, I)`."""
        return kl_to_standard_normal(q)

    @takes_data
    def posterior_sample(self, x: torch.Tensor) -> torch.Tensor:
        """A draw of z from the model's approximate posterior for x: `q(z|x)`, reparameterised
        (the code itself for a deterministic encoder); the HVAE and RHVAE move it by their
        flow (z_K)."""
        q = self.encode(x)
        return q if isinstance(q, torch.Tensor) else q.rsample()

    @takes_data
    def forward(self, x: torch.Tensor) -> Any:
        """`p(x|z)` at `z = posterior_sample(x)`: AutoEncoderToolkit.jl's `(model)(x)`."""
        return self.decode(self.posterior_sample(x))

    @takes_data
    def latent_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The point estimate of z for x."""
        q = self.encode(x)
        return q if isinstance(q, torch.Tensor) else q.mean

    @torch.no_grad()
    def embed(self, x: Any, conditions: Any = None, *, batch_size: int = 1024) -> np.ndarray:
        """The point codes `latent_mean(x)` of `x` (an array, DataFrame or tensor of any
        number type, on any device) as a numpy array `(N, latent_dim)`: cast to the model's
        dtype and device, in batches, without gradients, in evaluation mode (no input noise
        or dropout; the model's mode is put back). A conditional model takes each row's
        `conditions (N, k)`, or those of the `given(c)` block it is called in."""
        batch_size = validate.positive_int(batch_size, "batch_size")
        param = self._first_parameter()
        frame = x
        # its own number type, cast batch by batch: no float copy of all of it at once
        x = validate.as_rows(validate.as_tensor(x, dtype=None), self.input_shape)
        if x.dim() == 0 or len(x):  # no rows give no codes; a single value is no data
            with validate.labelled(frame):  # the shape, and no NaN codes
                coded = self._recode_classes(x, "embed")
                x = x if coded is None else coded
                validate.check_finite(x, "embed", self.input_shape)
            self._check_log_inputs(x, "embed")  # standardised counts gave codes of |x|
        c = None if conditions is None else validate.as_tensor(conditions, param.dtype)
        if c is None and self._condition_rows > 1:  # the block's rows, batch by batch
            self.check_condition_rows(x, "embed")
            c = self.conditions()
        if c is None and self.n_conditions and self.conditions() is None:
            raise ValueError(f"this {type(self).__name__} is conditional: give each row's "
                             f"conditions, model.embed(x, conditions=c) with c ({len(x)}, "
                             f"{self.n_conditions}) (class labels one-hot, "
                             f"torch.nn.functional.one_hot(labels, {self.n_conditions})"
                             ".float())")
        if c is not None and (c.dim() != 2 or len(c) != len(x)):
            raise ValueError(f"give one row of conditions per sample, ({len(x)}, "
                             f"{self.n_conditions}), got {tuple(c.shape)} (class labels "
                             "one-hot, torch.nn.functional.one_hot(labels, "
                             f"{self.n_conditions}).float())")
        if len(x) == 0:
            return torch.zeros(0, self.latent_dim, dtype=param.dtype).numpy()
        with evaluating(self):
            codes = [self._embed_batch(x[i:i + batch_size].to(param.device, param.dtype),
                                       None if c is None else c[i:i + batch_size].to(param.device))
                     for i in range(0, len(x), batch_size)]
        return torch.cat(codes).cpu().numpy()

    def _embed_batch(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        with self.given(c):
            return self.latent_mean(x)

    def importance_log_weights(self, q: Any, target: torch.Tensor, n: int) -> torch.Tensor:
        """`n` importance weights of `log p(target)` per row, `(n, B)`, from the encoder's
        `q(z|x)`: `log p(target|z) + log p(z) - log q(z|x)`, `z ~ q(z|x)`. Models with a
        better proposal (a flow) override it; `aetk.log_marginal` averages them."""
        return log_importance_weights(q, self.decode, target, q.sample((n,)),
                                      self.prior_log_prob)[1]

    @takes_data
    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder's point prediction at the encoder's mean, in evaluation mode (no
        input noise or dropout; the model's mode is put back)."""
        # a multinomial's expected counts at x's totals, when it models x itself
        with evaluating(self):
            return mean(self.decode(self.latent_mean(x)),
                        like=None if self.decodes_another_shape() else x)

    # Hooks for aetk.fit -------------------------------------------------------------

    def configure_optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """One Adam optimiser over all parameters."""
        return {"model": adam(self.parameters(), lr)}

    def training_step(
        self, x: torch.Tensor, optimizers: dict[str, torch.optim.Optimizer],
        target: torch.Tensor | None = None,
    ) -> LossOutput:
        """One gradient step on a batch (and its targets, for paired training)."""
        (opt,) = optimizers.values()
        opt.zero_grad(set_to_none=True)
        out = self.loss(x) if target is None else self.loss(x, target)  # user-made losses
        check_loss_output(out, self).loss.backward()
        opt.step()
        return out

    def on_fit_start(self, train: torch.Tensor, n_train: int | None = None) -> None:
        """Called once before the first epoch with the training tensor (for a Dataset, a
        sample of its first batches) and the training set's size `n_train`."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called after every training epoch."""

    def decodes_another_shape(self) -> bool:
        """Whether the decoder's data shape differs from the encoder's input (a model for
        paired data, `build_model(out_features=...)`)."""
        out = getattr(self.decoder, "event_shape", None)
        return (out is not None and self.input_shape is not None
                and tuple(self.input_shape[:len(out)]) != tuple(out))

    def check_data(self, x: torch.Tensor, name: str, target: torch.Tensor | None = None
                   ) -> None:
        """Raise ValueError for data this model cannot take: inputs `x`, and the decoder's
        data, `target` for paired training or else `x`; rows of either in another shape
        of the same number of values as the model's methods take them (`checked_input`)."""
        x = validate.as_rows(x, self.input_shape)
        coded, shape = self._class_coding(x), self.input_shape
        if coded is not None:  # classes in the other coding: checked by the decoder as given
            x, recode = coded
            check = getattr(self.decoder, "check_data", None)
            if check is not None:
                check(x, name)
            if recode is self._indices_one_hot:
                # kept as indices: fit checks its whole data here, and one-hot rows of them
                # would take k times the memory
                shape = None
            elif recode is not None:
                x = recode(x, self.decoder.n_classes)
        validate.check_finite(x, name, shape)
        if target is not None:
            target = self._target_rows(target, f"{name} target")
            validate.check_finite(target, f"{name} target")
            if len(target) != len(x):
                raise ValueError(f"{name} data has {len(x)} inputs but {len(target)} targets")
        elif self.decodes_another_shape():
            raise ValueError(f"this model decodes data of shape {self.decoder.event_shape}, "
                             f"not its inputs' {self.input_shape}: give {name} data as "
                             "aetk.Paired(x_in, x_out)")
        check = getattr(self.decoder, "check_data", None)
        if check is not None and (coded is None or target is not None):  # recoded: checked
            check(x if target is None else target, name if target is None else f"{name} target")
        own = getattr(type(self.decoder), "check_data", Decoder.check_data)
        if own is Decoder.check_data and not builtin_likelihood(self.decoder):
            # a user's likelihood: its support, at z = 0
            check_support(self.decoder, x if target is None else target,
                          name if target is None else f"{name} target", self.latent_dim)
        self._check_log_inputs(x, name)  # after the likelihood's, which says more for counts

    def _check_log_inputs(self, x: torch.Tensor, name: str) -> None:
        """ValueError for negative data when the encoder takes `log(1 + |x|)` (`LogInputs`):
        it would encode -x as x."""
        if any(isinstance(m, LogInputs) for m in self.encoder.modules()) and bool((x < 0).any()):
            raise ValueError(f"{name} data has negative values, but the encoder takes log(1 + x) "
                             "(log_inputs, the default for count likelihoods): build the model "
                             "with log_inputs=False (aetk train --no-log-inputs)")

    def save(self, path: str | Path, history: pd.DataFrame | None = None) -> None:
        """Write `config.json` and `weights.pt` into the directory `path`, and `history.tsv`
        with `history`, `aetk.fit`'s return value (`aetk.io.save`)."""
        from ..io import save

        save(self, path, history)
