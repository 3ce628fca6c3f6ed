"""Decoders: p(x|z). The class is the likelihood: `forward(z)` returns a torch
distribution whose `log_prob(x)` has shape `(B,)`.

A new likelihood is a subclass of `Decoder` whose `forward` returns any torch
distribution; every model then trains with it, nothing else needed.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn

from . import validate
from .nets import (
    Conditioned,
    attribute_set,
    conv_decoder,
    evaluating,
    image_layout,
    mlp,
    numel,
    resolve_shape,
)

LOG_SIGMA_RANGE = (-6.0, 4.0)
"""Learned Gaussian log standard deviations are clamped here: below -6 the likelihood
of near-constant pixels grows without bound, above 4 it is flat."""


RATE_FLOOR = 1e-8
"""Added to Poisson rates and negative-binomial means (softplus outputs) so that an
underflow to 0 never makes their gradient NaN."""


class Decoder(nn.Module):
    """Base class of probabilistic decoders: `forward(z)` returns a torch distribution."""

    latent_dim: int | None = None
    event_shape: tuple[int, ...] | None = None

    def check_data(self, x: torch.Tensor, name: str) -> None:
        """Raise ValueError for data outside the likelihood's support (no check by default)."""


def check_support(decoder: nn.Module, y: torch.Tensor, name: str, latent_dim: int) -> None:
    """ValueError for data `y` that a user decoder's distribution (one without a
    `check_data` of its own) cannot score, read at the latent origin in evaluation mode:
    values outside its support (counts for a Bernoulli), and values at a closed end of an
    interval support where its density is infinite or zero (a Beta's at exactly 0 or 1),
    which make the loss infinite (`_check_ends`). Each names the row, the column and the
    value. Torch checks the support only where a distribution validates its arguments, and
    then inside the first training step; without that the loss is silently wrong, and an
    infinite density fails later, in a step that blames the learning rate.

    A decoder that cannot be called so (latents of another shape) or returns no
    distribution is left to its own errors, and so is a distribution that declares no
    support, a `dependent` one (torch's own "cannot determine validity"), or `real`. A
    conditional decoder (its `nets.Conditioned` networks) is read at conditions 0."""
    if not isinstance(decoder, nn.Module) or not y.numel():
        return
    param = next(decoder.parameters(), None)
    z = torch.zeros(1, latent_dim, dtype=y.dtype if param is None else param.dtype,
                    device=None if param is None else param.device)
    try:
        with evaluating(decoder), torch.no_grad(), _at_zero_conditions(decoder, z):
            dist = decoder(z)  # (evaluation mode: no batch-norm statistics moved)
    except Exception:
        # any class: a working decoder can fail this call (one row at z = 0, evaluation
        # mode, no gradients, before on_fit_start) with a ValueError, RuntimeError,
        # TypeError or AssertionError alike, and a broken one fails its first training step
        return
    if not isinstance(dist, D.Distribution):
        return
    try:
        support = dist.support
    except NotImplementedError:  # torch's Distribution declares none unless a class does
        return
    if not isinstance(support, D.constraints.Constraint):
        return
    dims = support.reinterpreted_batch_ndims if isinstance(support, D.constraints.independent) \
        else 0
    base = support.base_constraint if dims else support
    # every value is in `real`; a `dependent` one cannot be checked
    if base is D.constraints.real or D.constraints.is_dependent(base):
        return
    inner = _base_distribution(dist)
    # torch's own check (on by default) refuses what these widenings take, inside the first
    # step: they are for distributions that do not validate their arguments
    validates = getattr(inner, "_validate_args", False)
    if base is D.constraints.boolean and not validates:
        # as the built-in Bernoulli's, values in [0, 1] too
        base = D.constraints.unit_interval
    if isinstance(base, D.constraints._Multinomial) and not validates:
        # its log_prob takes counts of any total: not only up to its total_count
        base = D.constraints.nonnegative_integer
    y = y.to(z.device)
    kind = f"the decoder's {type(inner).__name__} distribution"
    if not _within_bounds(base, y) and not _check_inside(base, y, name, kind):
        return  # data of another shape: check_data's shape errors say more
    _check_ends(inner, base, y, name, kind)


def _base_distribution(dist: D.Distribution) -> D.Distribution:
    """`dist` without its `Independent` wrappers: one density per value (or vector)."""
    while isinstance(dist, D.Independent):
        dist = dist.base_dist
    return dist


def _first(bad: torch.Tensor, y: torch.Tensor, event: int) -> tuple[str, str]:
    """The first True entry of `bad`, a mask of the values of `y` (or of its vectors of
    `event` axes), named as `validate._where` names it (row, flattened column; for rows of
    several axes the index in the row too), and the value there."""
    flat = bad.reshape(len(bad), -1)
    row, col = (int(i) for i in flat.nonzero()[0])
    value = y.reshape(len(y), flat.shape[1], *y.shape[y.dim() - event:])[row, col]
    shown = (str(value.item()) if not event else f"the vector {value.flatten()[:8].tolist()}"
             + ("..." if value.numel() > 8 else ""))
    if flat.shape[1] == 1:
        return f"row {row}", shown
    where = f"row {row}, {'vector' if event else 'column'} {col}"
    if bad.dim() > 2:
        index = tuple(int(i) for i in torch.unravel_index(torch.tensor(col), bad.shape[1:]))
        where += f" (index {index} in a row of shape {tuple(bad.shape[1:])})"
    return where, shown


def _check_inside(base: D.constraints.Constraint, y: torch.Tensor, name: str, kind: str
                  ) -> bool:
    """ValueError naming the first value of `y` outside `base` (the first vector, for a
    constraint on vectors); True for data inside it, False for data that `base` cannot
    check (of another shape)."""
    event = base.event_dim
    try:
        inside = base.check(y)
    except RuntimeError:
        return False
    if inside.shape != y.shape[:y.dim() - event]:  # broadcast against bounds of another shape
        return False
    if bool(inside.all()):
        return True
    bad = ~inside.reshape(len(y), -1) if inside.dim() < 2 else ~inside
    where, shown = _first(bad, y, event)
    raise ValueError(f"{name} data has {int(bad.sum())} {'vectors' if event else 'values'} "
                     f"outside the support of {kind} ({base}){_validated(base)}; first at "
                     f"{where}: {shown}; give data that this likelihood can score, or a "
                     "decoder whose likelihood fits them")


_SQUEEZE = " (e.g. x * (1 - 2e-3) + 1e-3 squeezes [0, 1] into [0.001, 0.999])"


def _closed_ends(base: D.constraints.Constraint) -> list[tuple[str, float]]:
    """The closed ends of the interval `base` that have number bounds: ("lower", 0.0)."""
    kind = _INTERVALS.get(type(base))
    if kind is None:
        return []
    ends = [("lower", getattr(base, "lower_bound", None), kind[0]),
            ("upper", getattr(base, "upper_bound", None), kind[1])]
    return [(side, float(bound)) for side, bound, closed in ends
            if closed and bound is not None and not isinstance(bound, torch.Tensor)]


def _unit(base: D.constraints.Constraint) -> bool:
    """Whether `base` is the interval [0, 1] (the squeeze's example fits)."""
    return [end for _, end in _closed_ends(base)] == [0.0, 1.0]


def _check_ends(inner: D.Distribution, base: D.constraints.Constraint, y: torch.Tensor,
                name: str, kind: str) -> None:
    """ValueError naming the first value of `y` at a closed end of the interval `base` where
    the density of `inner` (the decoder's at z = 0) is infinite or zero, as a Beta's at
    exactly 0 or 1 or a Gamma's at 0: inside the support, but the loss would be infinite
    (and the step that meets it blames the learning rate). One `log_prob` of a row at each
    end the data reach, whatever their size; a density finite at an end (an exponential's
    0, a Beta's for a first concentration of 1) passes."""
    ends = _closed_ends(base)
    if not ends:
        return
    low, high = (float(v) for v in y.aminmax())
    for side, end in ends:
        if end not in (low, high):
            continue
        try:
            with torch.no_grad():
                lp = inner.log_prob(torch.full_like(y[:1], end))
        except Exception:  # any class, as for the decoder's call in check_support
            return
        if lp.shape != y[:1].shape:  # a distribution of vectors: left to training
            return
        # NaN: parameters undefined at z = 0 (a decoder of z / |z|), which says nothing
        at = (y == end) & lp.isinf()
        if bool(at.any()):
            where, shown = _first(at, y, 0)
            raise ValueError(
                f"{name} data has {int(at.sum())} values at {end:g}, the {side} end of the "
                f"support {base} of {kind}, where its density is infinite or zero (as a "
                f"Beta's at exactly 0 or 1, a Gamma's at 0), so the loss would be infinite; "
                f"first at {where}: {shown}; move the data off the ends"
                f"{_SQUEEZE if _unit(base) else ''}, or choose a likelihood that scores them")


def _validated(base: D.constraints.Constraint) -> str:
    """What a distribution that validates its arguments takes less of than its log_prob
    scores (`check_support`'s widenings): said in its error message."""
    if base is D.constraints.boolean:
        what = "only 0 and 1: build it with validate_args=False to score values in [0, 1]"
    elif isinstance(base, D.constraints._Multinomial):
        what = (f"totals up to its total_count {base.upper_bound}: build it with "
                "validate_args=False to score counts of any total")
    else:
        return ""
    return f" (it validates its arguments, torch's default, and takes {what})"


@contextmanager
def _at_zero_conditions(decoder: nn.Module, z: torch.Tensor) -> Iterator[None]:
    """Within the block, each conditional network of `decoder` sees one row of conditions
    0 (whatever a `Model.given` block set), so that it can be called with `z` of one row."""
    with ExitStack() as stack:
        for m in decoder.modules():
            if isinstance(m, Conditioned):
                stack.enter_context(attribute_set([m], "conditions",
                                                  z.new_zeros(1, m.n_conditions)))
        yield


# (closed at the lower end, closed at the upper end, integers only) of torch's interval
# constraints with number bounds
_INTERVALS = {
    D.constraints._Interval: (True, True, False),
    D.constraints._HalfOpenInterval: (True, False, False),
    D.constraints._GreaterThan: (False, True, False),
    D.constraints._GreaterThanEq: (True, True, False),
    D.constraints._LessThan: (True, False, False),
    D.constraints._IntegerInterval: (True, True, True),
    D.constraints._IntegerGreaterThan: (True, True, True),
}


def _within_bounds(base: D.constraints.Constraint, y: torch.Tensor) -> bool:
    """Whether every value of `y` is inside an interval constraint, from the data's two
    extremes: a 256 x 784 batch in 0.06 ms against `check`'s 0.8 ms, which then runs only
    to find a row outside (or for other constraints: False)."""
    kind = _INTERVALS.get(type(base))
    low, high = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if kind is None or isinstance(low, torch.Tensor) or isinstance(high, torch.Tensor):
        return False
    closed_low, closed_high, integers = kind
    smallest, largest = (float(v) for v in y.aminmax())
    if low is not None and not (smallest >= low if closed_low else smallest > low):
        return False
    if high is not None and not (largest <= high if closed_high else largest < high):
        return False
    return not integers or bool((y == y.round()).all())


class _BuiltinDecoder(Decoder):
    """A network whose output is reshaped to `(B, n_params, *event_shape)` parameter blocks.

    `network` maps z to all the blocks; without it an MLP `latent_dim -> hidden -> blocks`
    is built, or with `channels` transposed convolutions to the images of `image_shape`
    (`nets.conv_decoder`). The data shape is `out_features` or `output_shape`. With
    `n_conditions = k > 0` it is p(x|z, c): the network sees z and the k conditions side by
    side (`nets.Conditioned`), set by `Model.given`.
    """

    n_params = 1
    width = 1  # extra trailing size of each parameter block (categorical classes)

    def __init__(
        self,
        network: nn.Module | None = None,
        *,
        latent_dim: int,
        out_features: int | None = None,
        output_shape: Sequence[int] | None = None,
        hidden: Sequence[int] = (400, 400),
        activation: str = "relu",
        channels: Sequence[int] = (),
        image_shape: Sequence[int] | None = None,
        n_conditions: int = 0,
    ) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.n_conditions = int(n_conditions)
        self.event_shape = resolve_shape(out_features, output_shape)
        self.image = image_layout(self.event_shape, image_shape, channels) if channels else None
        self.channels = tuple(channels)
        if network is not None and self.n_conditions:
            network = Conditioned(network, self.n_conditions)
        self.network = network or self.build_network(hidden, activation)

    def block_network(self, blocks: int, hidden: Sequence[int], activation: str) -> nn.Module:
        """A default network from z to `blocks` parameter blocks: an MLP, or transposed
        convolutions when the decoder has `channels`."""
        width = self.latent_dim + self.n_conditions
        if self.image is not None:
            net = conv_decoder(width, self.image, self.channels, hidden, blocks, self.width,
                               activation)
        else:
            net = mlp(width, hidden, blocks * numel(self.event_shape) * self.width, activation)
        return Conditioned(net, self.n_conditions) if self.n_conditions else net

    def build_network(self, hidden: Sequence[int], activation: str) -> nn.Module:
        """The default network from z to every parameter block."""
        return self.block_network(self.n_params, hidden, activation)

    def params(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The network output split into `n_params` tensors of shape `(B, *event_shape)`."""
        trailing = (self.width,) if self.width > 1 else ()
        out = self.network(z)
        per_row = self.n_params * numel(self.event_shape) * self.width
        if out.numel() != z.shape[0] * per_row:  # else reshape's "shape '[4, 2, 5]' is invalid"
            blocks = f"{self.n_params} parameter blocks of " if self.n_params > 1 else ""
            classes = f", times {self.width} classes" if self.width > 1 else ""
            raise ValueError(f"the {type(self).__name__}'s network returned "
                             f"{out.numel() // max(z.shape[0], 1)} values per row, but it needs "
                             f"{per_row}: {blocks}the data shape {tuple(self.event_shape)}"
                             f"{classes}")
        out = out.reshape(z.shape[0], self.n_params, *self.event_shape, *trailing)
        return list(out.unbind(1))

    def _independent(self, base: D.Distribution) -> D.Independent:
        return D.Independent(base, len(self.event_shape))


def builtin_likelihood(decoder: object) -> bool:
    """Whether `decoder` scores data by a built-in decoder's own `forward` (also in a
    subclass that keeps it): not a user's class, nor a subclass of a built-in that takes its
    network and returns a distribution of its own (a log-normal from a Gaussian's blocks),
    whose support and scale the built-in's checks do not describe."""
    forward = getattr(type(decoder), "forward", None)
    return isinstance(decoder, _BuiltinDecoder) and getattr(forward, "__module__", None) == __name__


class BernoulliDecoder(_BuiltinDecoder):
    """p(x|z) = prod Bernoulli(sigmoid(logits)). Targets in [0, 1] (fractional values give
    the binary cross-entropy)."""

    def forward(self, z: torch.Tensor) -> D.Independent:
        (logits,) = self.params(z)
        return self._independent(_ContinuousBernoulliTargets(logits=logits))

    def check_data(self, x: torch.Tensor, name: str) -> None:
        validate.check_range(x, name, 0.0, 1.0, "a Bernoulli decoder needs values in [0, 1]")


class _ContinuousBernoulliTargets(D.Bernoulli):
    """Bernoulli whose log_prob is the stable BCE with logits, also for targets in (0, 1)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(logits=logits, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return -F.binary_cross_entropy_with_logits(self.logits, value, reduction="none")


class GaussianDecoder(_BuiltinDecoder):
    """p(x|z) = N(mu(z), sigma^2 I) with a fixed `sigma` (default 1)."""

    def __init__(self, network: nn.Module | None = None, *, sigma: float = 1.0,
                 **sizes: Any) -> None:
        super().__init__(network, **sizes)
        if not 0 < sigma < math.inf:
            raise ValueError(f"sigma must be positive and finite, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, z: torch.Tensor) -> D.Independent:
        (mu,) = self.params(z)
        return self._independent(D.Normal(mu, self.sigma, validate_args=False))


class LearnedGaussianDecoder(_BuiltinDecoder):
    """p(x|z) = N(mu(z), diag sigma(z)^2). Mean and log sigma come from two heads on one
    trunk, or from two separate networks with `split=True`. log sigma is clamped to
    `LOG_SIGMA_RANGE`."""

    n_params = 2

    def __init__(self, network: nn.Module | None = None, *, split: bool = False,
                 **sizes: Any) -> None:
        self.split = split
        super().__init__(network, **sizes)

    def build_network(self, hidden: Sequence[int], activation: str) -> nn.Module:
        if not self.split:
            return super().build_network(hidden, activation)
        return _Split(self.block_network(1, hidden, activation),
                      self.block_network(1, hidden, activation))

    def forward(self, z: torch.Tensor) -> D.Independent:
        mu, log_sigma = self.params(z)
        sigma = log_sigma.clamp(*LOG_SIGMA_RANGE).exp()
        return self._independent(D.Normal(mu, sigma, validate_args=False))


class _Split(nn.Module):
    """Two networks from z, outputs concatenated (mean block, then log sigma block)."""

    def __init__(self, mean: nn.Module, log_sigma: nn.Module) -> None:
        super().__init__()
        self.mean, self.log_sigma = mean, log_sigma

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.mean(z), self.log_sigma(z)], dim=-1)


class OneHotLookalikeWarning(UserWarning):
    """Class indices of a categorical likelihood that look like one-hot rows: their last
    axis has `n_classes` entries, each 0 or 1, one 1 per row. The model then scores every
    0/1 entry as a class of its own (a wrong model) if they are one-hot codes, which a
    model of the data shape without that axis takes as they are."""


def checked_n_classes(n_classes: Any) -> int:
    """`n_classes` as an int, else ValueError: a categorical variable has two classes or
    more."""
    if int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be at least 2, and an integer, got {n_classes}")
    return int(n_classes)


class CategoricalDecoder(_BuiltinDecoder):
    """p(x|z) = prod Categorical(softmax(logits)) over `n_classes` per element.

    Data are integer classes of shape `(B, *event_shape)`, or one-hot of shape
    `(B, *event_shape, n_classes)`. Class indices whose last axis looks one-hot (size
    `n_classes`, 0/1 entries, one 1 per row) give a `OneHotLookalikeWarning`.
    """

    def __init__(self, network: nn.Module | None = None, *, n_classes: int,
                 **sizes: Any) -> None:
        self.n_classes = self.width = checked_n_classes(n_classes)
        super().__init__(network, **sizes)

    def forward(self, z: torch.Tensor) -> D.Independent:
        (logits,) = self.params(z)
        return self._independent(_IndexOrOneHotCategorical(logits=logits))

    def check_data(self, x: torch.Tensor, name: str) -> None:
        if x.dim() == len(self.event_shape) + 2:  # one-hot along a trailing class axis
            if x.shape[-1] != self.n_classes:
                raise ValueError(
                    f"{name} data: one-hot class axis has size {x.shape[-1]}, "
                    f"expected {self.n_classes}"
                )
            # per batch on a Dataset stream of one-hot rows: for floats,
            # x (x - 1) = 0 (0 and 1 only; not NaN) and a product for the sums, 2x faster
            if not x.is_floating_point() or bool((x * (x - 1)).any()):
                bad = (x != 0) & (x != 1)
                if bad.any():
                    raise ValueError(f"{name} data: one-hot entries must be 0 or 1; first bad "
                                     f"at {validate._where(bad)}: {x[bad][0].item()}")
            sums = (x @ x.new_ones(self.n_classes)) if x.is_floating_point() else x.sum(-1)
            bad = sums != 1
            if bad.any():
                raise ValueError(f"{name} data: one-hot rows must sum to 1; first bad at "
                                 f"{validate._where(bad)}")
            return
        validate.check_counts(x, name, "categorical classes are integer indices")
        what = f"class indices must be below n_classes={self.n_classes}"
        validate.check_range(x, name, 0, self.n_classes - 1, what)
        self._warn_one_hot_lookalike(x, name)

    def _warn_one_hot_lookalike(self, x: torch.Tensor, name: str) -> None:
        """`OneHotLookalikeWarning` for class indices (checked) whose last axis looks one-hot:
        built with `input_shape=(64, 3), n_classes=3`, one-hot data of 64 variables trained
        in silence as 192 variables of 3 classes, each of them 0 or 1."""
        k, shape = self.n_classes, tuple(self.event_shape)
        if (not shape or shape[-1] != k or x.dim() != len(shape) + 1 or not x.numel()
                or x.amax() > 1 or not bool((x.sum(-1) == 1).all())):
            return
        variables = shape[:-1] or (1,)  # one variable: rows (n, 1, k)
        dims = ", ".join(map(str, variables))
        warnings.warn(
            f"{name} data look one-hot: their last axis has n_classes={k} entries, 0 or 1, one "
            f"1 in each of their {math.prod(x.shape[:-1])} vectors, but this {type(self).__name__} "
            f"of output_shape {shape} scores each entry as a class of {k}. For one-hot codes "
            f"build the model of the data shape without the class axis, aetk.build_model(..., "
            f"input_shape={variables}, n_classes={k}), which takes one-hot rows (n, {dims}, {k}) "
            f"and class indices (n, {dims}) alike; if these are class indices, ignore this "
            "warning (warnings.simplefilter('ignore', aetk.decoders.OneHotLookalikeWarning))",
            OneHotLookalikeWarning, stacklevel=2)


class _IndexOrOneHotCategorical(D.Categorical):
    """Categorical whose log_prob accepts float class indices or one-hot vectors (the
    log-probability of their class; of a row of class weights, their weighted sum)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__(logits=logits, validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.dim() == self.logits.dim():
            # a product with the normalised logits: what an encoder of one-hot rows trains
            # on in every step, 0.5 ms faster than argmax over the short class axis (256 x
            # 64 x 3), and exact for one-hot rows (x + 0 = x)
            return (value * self.logits).sum(-1)
        return super().log_prob(value.long())


class PoissonDecoder(_BuiltinDecoder):
    """p(x|z) = prod Poisson(rate(z)), rate = softplus(network output) + `RATE_FLOOR`.
    Counts only."""

    def forward(self, z: torch.Tensor) -> D.Independent:
        (out,) = self.params(z)
        # softplus underflows to 0 for always-zero features, and d/drate of x log(rate) is
        # then 0/0: the floor keeps the gradient finite.
        rate = F.softplus(out) + RATE_FLOOR
        return self._independent(D.Poisson(rate, validate_args=False))

    def check_data(self, x: torch.Tensor, name: str) -> None:
        validate.check_counts(x, name, "a Poisson decoder needs counts")


class MultinomialDecoder(_BuiltinDecoder):
    """p(x|z) = Multinomial(x; n = sum_i x_i, softmax(logits(z))): counts whose total (a
    cell's library size, a document's length) is taken as observed, so that the latent space
    describes the composition and not the depth. It is the Poisson model conditioned on
    each row's total.

    The distribution's `mean` is `total_count` times the proportions (`total_count=1`: the
    proportions themselves, the "normalised expression"); `sample()` draws `total_count`
    counts; `aetk.distributions.mean(p, like=x)`, what reconstructions use, scales the
    proportions to the totals of x, and `mean(p, total_count=t)` (`p.mean_at(t)`;
    `p.sample_at(t)` draws) to given totals, one per row or one for all: what generating
    at realistic depths uses (`model.sample(n, total_count=t)`). Data: a vector of counts
    per sample.
    """

    def __init__(self, network: nn.Module | None = None, *, total_count: int = 1,
                 **sizes: Any) -> None:
        super().__init__(network, **sizes)
        if self.image is not None:
            raise ValueError("a multinomial decoder has no convolutional network: give no "
                             "channels (it models one vector of counts per sample)")
        if len(self.event_shape) != 1:
            raise ValueError(f"a multinomial decoder models one vector of counts per sample "
                             f"(out_features), not the shape {self.event_shape}")
        self.total_count = validate.positive_int(total_count, "total_count")

    def forward(self, z: torch.Tensor) -> D.Distribution:
        (logits,) = self.params(z)
        return _ObservedTotalMultinomial(self.total_count, logits)

    def check_data(self, x: torch.Tensor, name: str) -> None:
        validate.check_counts(x, name, "a multinomial decoder needs counts")


class _ObservedTotalMultinomial(D.Multinomial):
    """A multinomial that scores each row with its own number of trials, `value.sum(-1)`
    (torch's density does not use `total_count`, only its argument check does)."""

    def __init__(self, total_count: int, logits: torch.Tensor) -> None:
        super().__init__(total_count, logits=logits, validate_args=False)

    def mean_for(self, x: torch.Tensor) -> torch.Tensor:
        """The expected counts at the totals of `x`."""
        return self.probs * x.sum(-1, keepdim=True)

    def mean_at(self, total: torch.Tensor | float) -> torch.Tensor:
        """The expected counts at the totals `total`: one per row `(B,)`, or one for all."""
        return self.probs * self._totals(total)[..., None]

    def sample_at(self, total: torch.Tensor | float) -> torch.Tensor:
        """Counts drawn at the integer totals `total` (one per row, or one for all)."""
        n = self._totals(total)
        if not torch.equal(n, n.round()):
            raise ValueError("total_count of drawn counts must be integers")
        out = torch.zeros_like(self.probs)
        for k in n.unique().tolist():  # torch's multinomial takes one number of trials
            rows = n == k
            if k > 0:
                out[rows] = D.Multinomial(int(k), probs=self.probs[rows],
                                          validate_args=False).sample()
        return out

    def _totals(self, total: torch.Tensor | float) -> torch.Tensor:
        """`total` as a tensor of the batch's shape, checked."""
        t = torch.as_tensor(total, dtype=self.probs.dtype, device=self.probs.device)
        if not bool(torch.isfinite(t).all() and (t >= 0).all()):
            raise ValueError("total_count must be finite and non-negative")
        if t.dim() and t.shape != self.batch_shape:
            raise ValueError(f"total_count must be one number or one per row "
                             f"{tuple(self.batch_shape)}, got shape {tuple(t.shape)}")
        return t.expand(self.batch_shape)


class NegativeBinomialDecoder(_BuiltinDecoder):
    """p(x|z) = prod NB(mean mu(z), inverse dispersion r): variance mu + mu^2 / r.

    mu = softplus(network output). `dispersion="feature"` learns one r per feature;
    `"sample"` predicts r(z) from a second output block.
    """

    def __init__(self, network: nn.Module | None = None, *, dispersion: str = "feature",
                 **sizes: Any) -> None:
        if dispersion not in ("feature", "sample"):
            raise ValueError(f"dispersion must be 'feature' or 'sample', got {dispersion!r}")
        self.n_params = 2 if dispersion == "sample" else 1
        super().__init__(network, **sizes)
        self.dispersion = dispersion
        if dispersion == "feature":
            self.log_r = nn.Parameter(torch.zeros(self.event_shape))

    def forward(self, z: torch.Tensor) -> D.Independent:
        blocks = self.params(z)
        mu = F.softplus(blocks[0]) + RATE_FLOOR
        log_r = blocks[1] if self.dispersion == "sample" else self.log_r.expand_as(mu)
        return self._independent(_NegativeBinomial(mu, log_r))

    def check_data(self, x: torch.Tensor, name: str) -> None:
        validate.check_counts(x, name, "a negative-binomial decoder needs counts")


def _stirling_tail(y: torch.Tensor) -> torch.Tensor:
    """`lgamma(y) - ((y - 1/2) log y - y + log(2 pi) / 2)`: Stirling's series to `y^-5`,
    below 1e-17 off for `y >= 100`."""
    inv = y.reciprocal()
    inv2 = inv * inv
    return inv * (1 / 12 - inv2 * (1 / 360 - inv2 / 1260))


def poisson_like_log_r(log_r: torch.Tensor) -> torch.Tensor:
    """`log_r` capped at half the log of its dtype's largest number (44.4 in float32, 354.9
    in float64), so that
    `r = exp(log_r)` and `r + x` stay finite: float32's exp overflows past 88.7, which made
    the mean `r exp(logits)` infinite and the log-probabilities NaN. Past the cap the NB is
    the Poisson of its mean to `x^2 / 2r < 1e-9` nats for counts below 1e5, and its gradient
    in `log_r` (of that size) is 0 in floating point anyway."""
    return log_r.clamp(max=0.5 * math.log(torch.finfo(log_r.dtype).max))


def nb_log_prob(x: torch.Tensor, mu: torch.Tensor, log_r: torch.Tensor) -> torch.Tensor:
    """`log NB(x; mean mu, inverse dispersion r = exp(log_r))` for any r:
    `A - lgamma(x + 1) + x log mu - (r + x) log1p(mu / r)`, `A = lgamma(x + r) - lgamma(r)
    - x log r`. For `r >= 100`, `A` comes from Stirling's series, `(x + r - 1/2) log1p(x / r)
    - x` plus the series' tails: as a difference of two lgammas of size `r log r` it
    cancels (float32 log-probabilities 0.3 nats off at r = e^14, positive at e^16; float64
    NaN past r = 3e38), and a learned `log_r` grows that large on Poisson-like features."""
    log_r = poisson_like_log_r(log_r)
    r = log_r.exp()
    big = r >= 100
    if not bool(big.any()):  # most fits: the series would double the cost
        a = torch.lgamma(x + r) - torch.lgamma(r) - x * log_r
    else:  # each branch on its own range, so that the unused one's gradient is finite
        rs, rb = torch.where(big, 1.0, r), torch.where(big, r, 100.0)
        a = torch.where(big, (x + rb - 0.5) * torch.log1p(x / rb) - x + _stirling_tail(x + rb)
                        - _stirling_tail(rb), torch.lgamma(x + rs) - torch.lgamma(rs)
                        - x * rs.log())
    return a - torch.lgamma(x + 1) + torch.xlogy(x, mu) - (r + x) * torch.log1p(mu / r)


class _NegativeBinomial(D.NegativeBinomial):
    """torch's negative binomial (failures with success odds exp(logits), so mean =
    r exp(logits)) of mean `mu` and `log_r`, scored by `nb_log_prob`; the mean is `mu`
    itself and the variance `mu + mu^2 / r`, not rounded through r and the logits."""

    def __init__(self, mu: torch.Tensor, log_r: torch.Tensor) -> None:
        capped = poisson_like_log_r(log_r)
        super().__init__(capped.exp(), logits=mu.log() - capped, validate_args=False)
        self._mu, self._log_r = mu, log_r

    @property
    def mean(self) -> torch.Tensor:
        return self._mu

    @property
    def variance(self) -> torch.Tensor:
        return self._mu + self._mu.square() * torch.exp(-self._log_r)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> D.NegativeBinomial:
        shape = torch.Size(batch_shape)
        return _NegativeBinomial(self._mu.expand(shape), self._log_r.expand(shape))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return nb_log_prob(value, self._mu, self._log_r)


class DeterministicDecoder(_BuiltinDecoder):
    """x_hat = f(z), a plain tensor rather than a distribution: an AE with this decoder
    minimises the mean squared error."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.params(z)[0]


class RBFVarianceDecoder(Decoder):
    """`p(x|z) = N(mu(z), diag 1/beta(z))`: the mean of a trained Gaussian decoder and the
    precision of a radial-basis network (Arvanitidis, Hansen & Hauberg 2018),

        beta(z) = W^T v(z) + zeta,   v_k(z) = exp(-lambda_k |z - c_k|^2),   W >= 0,

    so the variance is what the data taught near the codes and grows to `1/zeta` away from
    them: the decoder's pull-back metric (which adds `J_sigma^T J_sigma`) then rises where
    the model knows nothing and geodesics keep to the data. `centres (K, d)` and
    `bandwidths (K,)` (the `lambda_k`) are fixed; `W = exp(log_weight)`, `(K, D)`, is
    learned (`aetk.geometry.calibrate_variance`), the mean decoder frozen. Precisions span
    decades, so W is learned on the log scale.
    """

    def __init__(self, mean_decoder: nn.Module, centres: torch.Tensor, bandwidths: torch.Tensor,
                 n_features: int, zeta: float = 1e-2) -> None:
        super().__init__()
        if zeta <= 0:
            raise ValueError(f"zeta must be positive, got {zeta}")
        if centres.dim() != 2 or bandwidths.shape != centres.shape[:1]:
            raise ValueError(f"centres must be (K, d) and bandwidths (K,), got "
                             f"{tuple(centres.shape)} and {tuple(bandwidths.shape)}")
        self.mean_decoder = mean_decoder.requires_grad_(False)
        self.latent_dim = centres.shape[1]
        self.event_shape = getattr(mean_decoder, "event_shape", None)
        self.zeta = float(zeta)
        self.register_buffer("centres", centres.detach().clone())
        self.register_buffer("bandwidths", bandwidths.detach().clone())
        self.log_weight = nn.Parameter(torch.zeros(len(centres), n_features,
                                                   dtype=centres.dtype, device=centres.device))

    def precision(self, z: torch.Tensor) -> torch.Tensor:
        """`beta(z)`, `(B, D)`."""
        return self.basis(z) @ self.log_weight.exp() + self.zeta

    def basis(self, z: torch.Tensor) -> torch.Tensor:
        """`v(z)`, `(B, K)`."""
        # from the differences: cdist has no forward-mode derivative, which metrics need
        diff = z.unsqueeze(-2) - self.centres
        return torch.exp(-self.bandwidths * (diff * diff).sum(-1))

    def forward(self, z: torch.Tensor) -> D.Independent:
        loc = self.mean_decoder(z).mean
        scale = self.precision(z).rsqrt().reshape(loc.shape)
        return D.Independent(D.Normal(loc, scale, validate_args=False), loc.dim() - 1)
