"""One training routine for every model.

`fit` knows nothing about model classes: it calls the hooks of `aetk.models.Model`
(`configure_optimizers`, `training_step`, `on_fit_start`, `on_epoch_end`, `check_data`).
Its callbacks are in `aetk.callbacks`, its checkpoints in `aetk.checkpoint`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler as IndexBatches
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)
from tqdm.auto import tqdm

from . import validate
from .callbacks import _snapshot, annealed_values, check_callbacks
from .checkpoint import (
    epoch_state,
    global_rng_kept,
    load_callback_states,
    restore_checkpoint,
    run_fingerprint,
    save_checkpoint,
)
from .data import named_spec
from .decoders import (
    LOG_SIGMA_RANGE,
    GaussianDecoder,
    LearnedGaussianDecoder,
    builtin_likelihood,
)
from .devices import resolve_device
from .models.base import LossOutput, Model, check_loss_output
from .penalties import Penalties, penalized, penalty_names
from .validate import as_target, as_tensor  # fit's conversion, shared with the models' methods


class Paired(NamedTuple):
    """Paired training data (AETK's `train!(model, x_in, x_out, opt)`): the encoder sees
    `x_in`, the likelihood scores `x_out`, row for row (denoising, or translation between
    two views of the same samples, with `build_model(out_features=...)`). For a conditional
    model, also its conditions `c`. Tensors or arrays."""

    x_in: torch.Tensor | np.ndarray
    x_out: torch.Tensor | np.ndarray
    c: torch.Tensor | np.ndarray | None = None


Data = torch.Tensor | np.ndarray | Dataset | tuple[Any, Any] | Paired
Scheduler = torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau
LRSchedule = str | dict[str, Any] | Callable[[torch.optim.Optimizer], Scheduler] | None
# called once per epoch with fit's seeded generator: that epoch's training index batches
BatchSampler = Callable[[torch.Generator], Iterable[torch.Tensor]]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


ONCE_DIFFERENTIABLE = "differentiate twice a function that was marked with @once_differentiable"
"""torch's error where a backward pass differentiates such a Function's backward."""


class DataScaleWarning(UserWarning):
    """`fit` of a model with a Gaussian likelihood on data far from the unit scale that its
    default sigma (1) and the learned sigma's clamp (`decoders.LOG_SIGMA_RANGE`) assume:
    standardise the data first (`aetk.data.Standardise`)."""


UNIT_SCALE = (1e-2, 20.0)
"""`fit` warns (`DataScaleWarning`) when a Gaussian likelihood's data have no feature whose
standard deviation reaches the first bound, or one whose mean or standard deviation in
absolute value exceeds the second. Measured on 20 features of a 2-D linear-Gaussian model
(standardised, then scaled, 400 rows, 200 epochs, fixed and learned sigma): standard
deviation 1 and 10 gave a validation R^2 of 0.79 and 0.80 (fixed), 30 gave -0.02 for both
(nothing learned), 50 and more a NaN loss (the encoder's sigma = exp(log sigma), log sigma
growing with the inputs' scale, overflows: before any step, from about 80-300 with 64 or
400-400 hidden units); feature means of 30 gave R^2 -0.04 and -370, of 100 -1.3e4. At
0.01 both likelihoods gave R^2 <= -1, below the learned sigma's floor e^-6 ~ 0.0025 nothing
is resolved. A learned sigma has a tighter upper bound, `LEARNED_SIGMA_SCALE`. Quiet for
the bundled data with a fixed sigma (largest feature |mean| or std: raw swissroll 10.5,
raw digits 12.1, scurve 1.7, MNIST in [0, 1] 0.55, log1p-standardised single-cell counts
1.3), loud for raw MNIST pixels (139) and raw counts (253)."""

LEARNED_SIGMA_SCALE = 3.0
"""`UNIT_SCALE`'s upper bound for a learned sigma (`gaussian_learned`), which learns less the
further the data are from the unit scale. Measured on the digits (64 features,
standardised, then scaled or shifted; VAE, latent 2, 128-128 hidden, 30 epochs, seeds 0
and 1): validation R^2 0.15-0.24 standardised, 0.18-0.19 at standard deviation 2,
0.14 / 0.08 at 3, 0.10 / 0.06 at 4, 0.07 / 0.02 at 5, about 0 at 10 (and an infinite KL in
the 30th epoch); a mean of 5 at standard deviation 1 gave 0.02 / 0.07. Raw digits (std up
to 6.5, means up to 12) gave 0.04 against 0.18-0.24 standardised, raw swissroll 0.03 /
0.004 against 0.21 / 0.27. The fixed sigma on the same digits kept 0.42-0.44 from standard
deviation 1 to 10, and at 20 one seed's loss was NaN in the second epoch (2026-12-02)."""


class _PenaltiesBypassed(ValueError):
    """A model's training step did not take its loss from `model.loss`, where the
    penalties are added."""


def _cosine_factor(epochs: int, warmup: int = 0, min_factor: float = 0.01
                   ) -> Callable[[int], float]:
    if int(warmup) != warmup or not 0 <= warmup < epochs or not 0 <= min_factor <= 1:
        raise ValueError(f"cosine needs an integer 0 <= warmup < epochs ({epochs}) and "
                         f"0 <= min_factor <= 1, got warmup={warmup}, min_factor={min_factor}")
    span = epochs - warmup

    def factor(done: int) -> float:  # `done` epochs finished: the factor of epoch done + 1
        if done < warmup:
            return (done + 1) / (warmup + 1)
        t = min(done - warmup, span) / span
        return min_factor + (1 - min_factor) * (1 + math.cos(math.pi * t)) / 2

    return factor


def _step_factor(milestones: Sequence[int], gamma: float = 0.1) -> Callable[[int], float]:
    if not milestones or any(int(m) != m or m < 1 for m in milestones) or gamma <= 0:
        raise ValueError(f"step needs milestones, a list of epochs >= 1, and gamma > 0; got "
                         f"milestones={milestones}, gamma={gamma}")
    return lambda done: gamma ** sum(done >= m for m in milestones)


def scheduler_factory(spec: LRSchedule, epochs: int
                      ) -> Callable[[torch.optim.Optimizer], Scheduler] | None:
    """A scheduler factory for `fit` from a name or `{"name": ..., **options}`; a callable
    passes through, and "constant" or None give None. Learning rates change once per epoch:

    - `cosine` (`warmup=0`, `min_factor=0.01`): a linear rise over `warmup` epochs, then
      half a cosine from `lr` down towards `min_factor * lr` at `epochs`;
    - `step` (`milestones`, `gamma=0.1`): `lr` times gamma after each milestone epoch
      (the Julia package's `step_scheduler`, as factors);
    - `plateau` (`factor=0.5`, `patience=5`, `min_lr=0`): `lr` times `factor` once the
      validation loss (the training loss without validation) has not improved for
      `patience` epochs (`torch.optim.lr_scheduler.ReduceLROnPlateau`).
    """
    if spec is None or callable(spec):
        return spec
    name, spec = named_spec(spec)
    sched = torch.optim.lr_scheduler
    try:
        if name == "constant":
            if spec:
                raise ValueError(f"the constant schedule takes no options, got {spec}")
            return None
        if name == "cosine":
            factor = _cosine_factor(epochs, **spec)
        elif name == "step":
            factor = _step_factor(**spec)
        elif name == "plateau":
            options = {"factor": 0.5, "patience": 5, **spec}
            if not 0 < options["factor"] < 1:
                raise ValueError(f"plateau needs 0 < factor < 1, got {options['factor']}")
            sched.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1)]), **options)  # check now
            return lambda opt: sched.ReduceLROnPlateau(opt, **options)
        else:
            raise ValueError(f"unknown learning-rate schedule {name!r}; choose one of "
                             "constant, cosine, step, plateau")
    except TypeError as err:
        raise ValueError(f"bad options {spec} for the {name} schedule: {err}") from None
    return lambda opt: sched.LambdaLR(opt, factor)


def _split(data: Data, conditional: bool) -> tuple[Any, Any, Any]:
    """Data, for a conditional model its conditions, and for `Paired` data the targets:
    `(x, c)` pairs, a TensorDataset of x and c, or a Dataset of (x, c) items (conditions
    None: taken from its batches)."""
    if isinstance(data, Paired):
        if any(isinstance(a, Dataset) for a in data):
            raise ValueError("Paired takes tensors or arrays, not datasets")
        if conditional and data.c is None:
            raise ValueError("this model is conditional: give Paired(x_in, x_out, c)")
        if not conditional and data.c is not None:
            raise ValueError("Paired(..., c) is for conditional models (n_conditions > 0)")
        return data.x_in, data.c, data.x_out
    return (*_split_conditions(data, conditional), None)


def _split_conditions(data: Data, conditional: bool) -> tuple[Any, Any]:
    if isinstance(data, tuple):
        if not conditional:
            raise ValueError("(x, c) pairs are for conditional models (n_conditions > 0); "
                             "give this model the data alone")
        if len(data) != 2:
            raise ValueError(f"give conditional data as a pair (x, c), got {len(data)} items")
        if data[1] is None:
            raise ValueError("this model is conditional: the pair (x, c) has no conditions "
                             "c (None); give c (rows, n_conditions)")
        return data
    if isinstance(data, TensorDataset):
        if conditional and len(data.tensors) < 2:
            raise ValueError("a conditional model needs a TensorDataset of x and c")
        return data.tensors[0], data.tensors[1] if conditional else None
    if conditional and not isinstance(data, Dataset):
        raise ValueError("this model is conditional: give (x, c) pairs, e.g. "
                         "fit(model, (x, c), (x_val, c_val)), with c (rows, n_conditions)")
    return data, None


def _first_item(batch: Any) -> torch.Tensor:
    return batch[0] if isinstance(batch, list | tuple) else batch


class _LastBatch:
    """A batch sampler that keeps the indices of the batch it gave last: the batch a
    DataLoader without workers is loading."""

    def __init__(self, batches: IndexBatches) -> None:
        self.batches = batches
        self.last: list[int] = []

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            self.last = batch
            yield batch

    def __len__(self) -> int:
        return len(self.batches)


class _Batches:
    """Shuffled mini-batches of `(x, c, y)`, c the conditions of a conditional model and y
    the targets of paired data, else None: index device tensors directly (no DataLoader
    overhead), or iterate a Dataset through a DataLoader driven by the same seeded
    generator, validating each batch with `check(x, name)` (and the conditions) as it
    streams, then recoding it with `recode(x, checked=True)` where that gives a tensor (a
    categorical model's classes in its encoder's coding, `Model._recode_classes`)."""

    def __init__(self, data: Data, batch_size: int, device: torch.device,
                 generator: torch.Generator, shuffle: bool, check: Any, name: str,
                 n_conditions: int = 0, batch_sampler: BatchSampler | None = None,
                 dtype: torch.dtype = torch.float32,
                 shapes: tuple[Any, Any] = (None, None), recode: Any = None) -> None:
        data, conditions, targets = _split(data, n_conditions > 0)
        # rows in another shape of the same size, as the model's methods take them
        self.input_shape, target_shape = shapes
        self.n_conditions, self.dtype = n_conditions, dtype
        self.conditions = (as_tensor(conditions, dtype).to(device) if conditions is not None
                           else None)
        self.targets = (validate.as_rows(as_target(targets, dtype), target_shape).to(device)
                        if targets is not None else None)
        self.tensor = (validate.as_rows(as_tensor(data, dtype), self.input_shape).to(device)
                       if not isinstance(data, Dataset) else None)
        self.dataset = data if self.tensor is None else None
        self.batch_size, self.device = batch_size, device
        self.generator, self.shuffle = generator, shuffle
        self.check, self.name, self.recode = check, name, recode
        self.recode_batches = False
        if self.tensor is not None and recode is not None and len(self.tensor):
            # a categorical model's classes in the other coding (fit has checked them):
            # one-hot rows become indices once, here; indices become one-hot rows batch by
            # batch, as whole they would take k times the memory (4 GB for 1e5 x 500 x 20)
            probe = recode(self.tensor[:1], checked=True)
            self.recode_batches = probe is not None and probe.numel() > self.tensor[:1].numel()
            if probe is not None and not self.recode_batches:
                self.tensor = recode(self.tensor, checked=True)
        self.n = len(self.tensor) if self.tensor is not None else len(self.dataset)
        self.n_batches = math.ceil(self.n / batch_size)
        self.batch_sampler = batch_sampler
        if batch_sampler is not None:
            if not callable(batch_sampler):  # a torch BatchSampler: its own, unseeded draws
                raise TypeError(
                    f"batch_sampler must be a function of fit's seeded torch.Generator that "
                    f"yields each epoch's index batches (or aetk.LocalityBatches), got "
                    f"{batch_sampler!r}: e.g. def batches(generator): return torch.randperm("
                    f"n, generator=generator).split(batch_size)")
            if self.tensor is None:
                raise ValueError("batch_sampler needs the training data as tensors or arrays, "
                                 "not a Dataset")
            if getattr(batch_sampler, "n", self.n) != self.n:
                raise ValueError(f"the batch_sampler was made for {batch_sampler.n} rows, but "
                                 f"the {name} data has {self.n}")
            # a plain function's count is known only once it has run
            self.n_batches = len(batch_sampler) if hasattr(batch_sampler, "__len__") else None

    def __len__(self) -> int:
        if self.n_batches is None:
            raise TypeError("the batch_sampler gives no number of batches")
        return self.n_batches

    def count(self) -> str:
        """The number of batches for messages: "?" for a batch_sampler without a length."""
        return "?" if self.n_batches is None else str(self.n_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None,
                                         torch.Tensor | None]]:
        if self.tensor is None:
            if isinstance(self.dataset, IterableDataset):  # no indices to shuffle or name
                loader, batches = DataLoader(self.dataset, self.batch_size), None
            else:  # DataLoader(shuffle=...)'s own sampler and draws, each batch's items kept
                items = (RandomSampler(self.dataset, generator=self.generator) if self.shuffle
                         else SequentialSampler(self.dataset))
                batches = _LastBatch(IndexBatches(items, self.batch_size, drop_last=False))
                loader = DataLoader(self.dataset, batch_sampler=batches,
                                    generator=self.generator)
            for i, batch in enumerate(loader, start=1):
                x = validate.as_rows(as_tensor(_first_item(batch), self.dtype),
                                     self.input_shape)
                c = None
                try:
                    self.check(x, f"{self.name} batch {i}")
                except ValueError as err:  # its rows are shuffled: name the Dataset's item
                    row = re.search(r"\brow (\d+)\b", str(err))
                    if row is None or batches is None:
                        raise
                    raise ValueError(f"{err} (the Dataset's item "
                                     f"{batches.last[int(row[1])]})") from None
                coded = None if self.recode is None else self.recode(x, checked=True)
                x = x if coded is None else coded
                if self.n_conditions:
                    if not isinstance(batch, list | tuple) or len(batch) < 2:
                        raise ValueError("a conditional model needs a Dataset of (x, c) items")
                    c = as_tensor(batch[1], self.dtype).to(self.device, non_blocking=True)
                    validate.check_conditions(c, self.n_conditions,
                                              f"{self.name} batch {i} conditions", len(x))
                yield x.to(self.device, non_blocking=True), c, None
            return
        if self.recode_batches:
            for x, c, y in self._tensor_batches():
                yield self.recode(x, checked=True), c, y
        else:
            yield from self._tensor_batches()

    def _tensor_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None,
                                                torch.Tensor | None]]:
        c, y = self.conditions, self.targets
        if not self.shuffle:
            xs = self.tensor.split(self.batch_size)
            none = [None] * len(xs)
            yield from zip(xs, c.split(self.batch_size) if c is not None else none,
                           y.split(self.batch_size) if y is not None else none, strict=True)
            return
        if self.batch_sampler is not None:
            batches = self._sampled()
        else:
            order = torch.randperm(len(self.tensor), generator=self.generator)
            batches = order.to(self.device).split(self.batch_size)
        for idx in batches:
            yield (self.tensor[idx], c[idx] if c is not None else None,
                   y[idx] if y is not None else None)

    def _sampled(self) -> Iterator[torch.Tensor]:
        """The batch_sampler's index batches of this epoch (lists too, as torch's BatchSampler
        yields them), each a non-empty 1-D integer tensor of rows in [0, n), and at least one:
        out-of-range rows were torch's IndexError, an empty batch a reshape error deep in
        the model, negative rows silently counted from the end, and an epoch without
        batches trained nothing without a word."""
        count = 0
        for count, idx in enumerate(self.batch_sampler(self.generator), start=1):
            idx = torch.as_tensor(idx)
            if (idx.dim() != 1 or not idx.numel() or idx.is_floating_point()
                    or idx.dtype == torch.bool):
                raise ValueError(
                    f"the batch_sampler's batch {count} must be a non-empty 1-D tensor of "
                    f"integer row indices, got {idx.dtype} of shape {tuple(idx.shape)}")
            low, high = int(idx.min()), int(idx.max())
            if low < 0 or high >= self.n:
                raise ValueError(
                    f"the batch_sampler's batch {count} holds rows {low} to {high}, but the "
                    f"{self.name} data has rows 0 to {self.n - 1}")
            yield idx.to(self.device)
        if not count:
            raise ValueError("the batch_sampler yielded no batches for this epoch: it must "
                             "yield each epoch's index batches, e.g. def batches(generator): "
                             "return torch.randperm(n, generator=generator).split(64)")

    def sample(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """All the data, or for a Dataset its first 8 batches (enough to pick centroids)."""
        if self.tensor is not None:
            return self.tensor, self.conditions
        first = list(zip(range(8), self, strict=False))
        c = [b[1] for _, b in first]
        return (torch.cat([b[0] for _, b in first]),
                torch.cat(c) if self.n_conditions else None)


def _check(model: Model, data: Data, name: str) -> None:
    """Validate whole tensors before training; a Dataset is checked batch by batch."""
    data, conditions, targets = _split(data, model.n_conditions > 0)
    if isinstance(data, Dataset):
        if len(data) == 0:
            raise ValueError(f"{name} data is empty")
        return
    dtype = data_dtype(model)
    x = as_tensor(data, dtype)
    if targets is not None:
        try:
            inspect.signature(model.loss).bind(x, x)
        except TypeError:
            raise ValueError(f"{type(model).__name__}.loss takes no target: paired data need "
                             "loss(x, target=None)") from None
    with validate.labelled(data, targets):
        model.check_data(x, name, as_target(targets, dtype) if targets is not None else None)
    if conditions is not None:
        validate.check_conditions(as_tensor(conditions, dtype), model.n_conditions,
                                  f"{name} conditions", len(x))


def data_dtype(model: Model) -> torch.dtype:
    """The dtype `fit` gives the data: the model's, as `Model.as_data` takes it (a float64
    model trains on float64 data), float32 for a model without parameters."""
    param = model._first_parameter()
    return torch.float32 if param is None else param.dtype


_NUMBER_AS_VALIDATION = (
    "validation data must be data like the training data (an array, tensor or DataFrame), "
    "not the number {val!r}: fit does not split the training data. Hold rows out first, "
    "e.g. is_val = aetk.data.split(len(x), {fraction}, seed=0), then "
    "aetk.fit(model, x[~is_val], x[is_val], ...)")


def _check_columns(train: Data, val: Data, conditional: bool) -> None:
    """Training and validation DataFrames (data, conditions or targets) must have the same
    columns in the same order: fit reads features by position, so permuted validation
    columns would be scored silently as the wrong features."""
    parts = ("DataFrame", "conditions", "target DataFrame")
    for part, a, b in zip(parts, _split(train, conditional), _split(val, conditional),
                          strict=True):
        if not (hasattr(a, "columns") and hasattr(b, "columns")) or a.columns.equals(b.columns):
            continue
        if len(a.columns) == len(b.columns) and set(a.columns) == set(b.columns):
            i = next(i for i, (p, q) in enumerate(zip(a.columns, b.columns, strict=True))
                     if p != q)
            problem = (f"has the training columns in another order (position {i}: "
                       f"{b.columns[i]!r} where training has {a.columns[i]!r})")
            advice = "reorder them, val[train.columns]"
        else:
            missing = [c for c in a.columns if c not in set(b.columns)]
            extra = [c for c in b.columns if c not in set(a.columns)]
            problem = (f"has other columns than the training {part} (missing: "
                       f"{_names(missing)}; not in training: {_names(extra)})")
            advice = "give it the training columns, in their order"
        raise ValueError(f"the validation {part} {problem}: fit reads features by position, "
                         f"so {advice}")


def _names(labels: Sequence[Any], n: int = 5) -> str:
    """The first `n` labels, and how many more."""
    shown = ", ".join(repr(c) for c in labels[:n]) or "none"
    return shown + (f" and {len(labels) - n} more" if len(labels) > n else "")


class _Meter:
    """Sample-weighted running means of the loss and its terms, accumulated on the device
    (the loss's finite check, `_FiniteCheck`, is the loop's only synchronisation)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, out: LossOutput, n: int) -> None:
        for k, v in {"loss": out.loss, **out.terms}.items():
            v = v.detach() * n
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.n += n

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": float(v) / self.n for k, v in self.sums.items()}


class _GradClipper:
    """Clips the gradients of every optimiser's own parameters (its param_groups) to the
    total L2 norm `max_norm` right before each of its steps: a step pre-hook on each
    optimiser, since the models' `training_step` call `opt.step()` themselves. `pop`
    gives the largest total norm before clipping since the last `pop`, over every
    optimiser's steps (kept on the device: no synchronisation per step)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], max_norm: float) -> None:
        self.max_norm = max_norm
        self.largest: torch.Tensor | None = None
        self.handles = [o.register_step_pre_hook(self._clip) for o in optimizers.values()]

    def _clip(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_norm).detach()
        self.largest = norm if self.largest is None else torch.maximum(self.largest, norm)

    def pop(self) -> float:
        largest, self.largest = self.largest, None
        return float(largest) if largest is not None else math.nan

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def check_clip_grad_norm(value: Any, name: str = "clip_grad_norm") -> float | None:
    """`value` as a float, None kept; a ValueError naming `name` unless positive and finite."""
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not 0 < value < math.inf):
        raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
    return float(value)


def _fit_device(model: Model, device: str | torch.device) -> torch.device:
    """`resolve_device(device)`, except that "auto" keeps a model that is on an accelerator
    where it is: one on cuda:1 (or MPS) was moved to the first GPU (or the CPU), its data
    copied after it."""
    param = model._first_parameter() if device == "auto" else None
    if param is not None and param.device.type != "cpu":
        return param.device
    return resolve_device(device)


@global_rng_kept()
def fit(
    model: Model,
    train: Data,
    val: Data | None = None,
    *,
    epochs: int,
    batch_size: int,
    lr: float = 1e-3,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    lr_schedule: LRSchedule = None,
    batch_sampler: BatchSampler | None = None,
    clip_grad_norm: float | None = None,
    penalties: Penalties = (),
) -> pd.DataFrame:
    """Train `model` and return its history: one row per epoch with the train and
    validation loss, every loss term, and the seconds the epoch took.

    `device="auto"` trains on the model's device when that is an accelerator (a GPU,
    MPS), else on CUDA when available, else on the CPU.
    `train` and `val` are tensors, numpy arrays or torch datasets (a dataset's items may be
    `(x, label)` tuples; labels are ignored); for a conditional model (`n_conditions > 0`),
    `(x, c)` pairs, a `TensorDataset(x, c)` or a dataset of `(x, c)` items, and every step
    runs inside `model.given(c)` of its batch; for paired training, `Paired(x_in, x_out)`
    (`Paired(x_in, x_out, c)` for a conditional model): each step's loss is
    `model.loss(x_in, x_out)`, the likelihood scoring x_out. With `checkpoint`, model,
    optimisers, random states and history are saved after every epoch, and a later call
    with the same arguments resumes where the last finished epoch left off (`resume=False`
    starts over).
    A NaN or infinite loss stops training with `TrainingDiverged`: the model is put back
    as it was after the last finished epoch (a copy of its state is kept each epoch), the
    error's `history` holds those epochs, and the checkpoint of that epoch stays on disk.
    `callbacks` may define `on_fit_start(model)`, `on_epoch_start(model, epoch)`,
    `on_epoch_end(model, epoch, row)` (`row`, the epoch's history, may be extended) and
    `on_fit_end(model)`; one whose
    `stop` attribute is true after an epoch ends training there (`EarlyStopping`), and the
    checkpoint then holds the weights as returned and is final: resuming it trains no
    further. The checkpoint keeps the `state_dict()` of each callback that has one, and a
    resumed fit gives it to the callback's `load_state_dict` after `on_fit_start`.
    `lr_schedule` changes every optimiser's learning rate once per epoch: a name or spec of
    `scheduler_factory` ("cosine", {"name": "step", "milestones": [30]}, ...)
    or a callable that makes a torch scheduler from an optimiser; the history then has the
    rate each epoch used (`lr`; `lr_<name>` for a model's further optimisers).
    `batch_sampler` replaces the shuffled training batches (tensor data): called once per
    epoch with fit's seeded generator, it yields index tensors, e.g.
    `aetk.LocalityBatches` (neighbourhoods, for variance networks); validation keeps
    `batch_size`. `clip_grad_norm` clips the gradients of each optimiser's parameters to
    that total L2 norm right before its every step (`torch.nn.utils.clip_grad_norm_`,
    through step pre-hooks removed when fit returns or raises); the history then has
    `grad_norm`, the largest norm before clipping of any optimiser's step in the epoch
    (above the bound: clipping acted). `penalties` are added to the model's loss in
    training and validation (`aetk.penalties.penalized`: callables `(model, x) -> scalar`,
    e.g. `aetk.MinVariance(0.1)`, a list or a mapping from names), each in the history as
    `train_penalty_<name>` and `val_penalty_<name>`. The model comes back in evaluation
    mode (`model.eval()`). `seed` seeds the shuffling and every random draw of training;
    torch's global generators are put back as they were when fit returns or raises. The
    initial weights are the model's, made when it was built: call `torch.manual_seed`
    before `build_model` for a run that repeats exactly.
    """
    if not all(isinstance(n, numbers.Real) and not isinstance(n, bool) and math.isfinite(n)
               and int(n) == n >= 1 for n in (epochs, batch_size)):
        # checked here: a float batch size failed at the first batch in torch's split
        raise ValueError(f"epochs and batch_size must be positive integers, got {epochs!r} and "
                         f"{batch_size!r}")
    epochs, batch_size = int(epochs), int(batch_size)
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool):
        # torch truncated 1.5 for the draws, then refused it for the shuffling generator
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not (isinstance(lr, numbers.Real) and 0 <= lr < math.inf):  # 0 freezes: tests use it
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    clip_grad_norm = check_clip_grad_norm(clip_grad_norm)
    penalties = penalty_names(penalties)
    callbacks = check_callbacks(callbacks)
    if isinstance(val, numbers.Number):
        raise ValueError(_NUMBER_AS_VALIDATION.format(val=val, fraction=(
            val if 0 < val < 1 else 0.1)))
    _check(model, train, "train")
    if val is not None:
        _check_columns(train, val, model.n_conditions > 0)
        _check(model, val, "validation")
    device = _fit_device(model, device)
    torch.manual_seed(seed)
    shuffle_rng = torch.Generator().manual_seed(seed)
    model.to(device)
    k = model.n_conditions
    dtype = data_dtype(model)
    shapes = model.input_shape, getattr(model.decoder, "event_shape", None)
    batches = _Batches(train, batch_size, device, shuffle_rng, True, model.check_data, "train",
                       k, batch_sampler, dtype, shapes, model._recode_classes)
    val_batches = (_Batches(val, batch_size, device, shuffle_rng, False, model.check_data,
                            "validation", k, dtype=dtype, shapes=shapes,
                            recode=model._recode_classes)
                   if val is not None else None)
    x_start, c_start = batches.sample()
    _warn_scale(model, *((x_start, "train") if batches.targets is None
                         else (batches.targets, "train target")))
    with model.given(c_start):
        model.on_fit_start(x_start, batches.n)
    optimizers = model.configure_optimizers(lr)
    make_scheduler = scheduler_factory(lr_schedule, epochs)
    schedulers = ({k: make_scheduler(o) for k, o in optimizers.items()}
                  if make_scheduler is not None else {})

    history: list[dict[str, float]] = []
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = run_fingerprint(
        model, batches, val_batches, batch_size=batch_size, lr=lr, seed=seed, epochs=epochs,
        batch_sampler=batch_sampler, lr_schedule=lr_schedule, schedulers=schedulers,
        clip_grad_norm=clip_grad_norm, penalties=penalties, hash_data=ckpt is not None)
    stopped = False  # a checkpoint of a run that a callback stopped is final
    callback_states: dict[str, Any] = {}
    if ckpt is not None and resume and ckpt.exists():
        history, stopped, callback_states = restore_checkpoint(
            ckpt, model, optimizers, schedulers, shuffle_rng, fingerprint, device, epochs)

    start = epochs + 1 if stopped else len(history) + 1
    good = _Kept(model)
    bar = tqdm(total=batches.n_batches, disable=not progress or stopped, unit="batch",
               dynamic_ncols=True, desc=f"epoch {start}/{epochs}")
    checkpoint_state = {}
    # undone in `finally`: the optimisers outlive fit (a model's own, or a later manual
    # step), and the penalised loss (training and validation alike) is fit's alone
    cleanup = contextlib.ExitStack()
    clipper = (_GradClipper(optimizers, clip_grad_norm) if clip_grad_norm is not None
               else None)
    if clipper is not None:
        cleanup.callback(clipper.remove)
    cleanup.enter_context(penalized(model, penalties))
    try:
        for cb in callbacks:
            getattr(cb, "on_fit_start", lambda *a: None)(model)
        load_callback_states(callbacks, callback_states)
        for epoch in range(start, epochs + 1):
            t0 = time.perf_counter()
            for cb in callbacks:
                getattr(cb, "on_epoch_start", lambda *a: None)(model, epoch)
            rates = {("lr" if i == 0 else f"lr_{k}"): optimizers[k].param_groups[0]["lr"]
                     for i, k in enumerate(schedulers)}
            row = {"epoch": epoch,
                   **_train_epoch(model, batches, optimizers, epoch, bar, epochs,
                                  [f"penalty_{k}" for k in penalties])}
            if clipper is not None:
                row["grad_norm"] = clipper.pop()
            if val_batches is not None:
                row.update(evaluate(model, val_batches, prefix="val"))
            model.on_epoch_end(epoch)
            row.update(rates)
            _step_schedulers(schedulers, row)
            row["seconds"] = time.perf_counter() - t0
            for cb in callbacks:
                getattr(cb, "on_epoch_end", lambda *a: None)(model, epoch, row)
            history.append(_plain_numbers(row, epoch))
            good = _Kept(model)
            if not bar.disable:
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k.endswith("_loss")})
            if ckpt is not None:
                checkpoint_state = epoch_state(fingerprint, optimizers, schedulers, shuffle_rng,
                                               history, callbacks)
                save_checkpoint(ckpt, {**checkpoint_state, "model": model.state_dict(),
                                       "annealed": annealed_values(model)})
            if any(getattr(cb, "stop", False) for cb in callbacks):
                stopped = True
                break
        for cb in callbacks:
            getattr(cb, "on_fit_end", lambda *a: None)(model)
        if stopped and checkpoint_state:
            # final: the weights as returned (the best epoch's, after EarlyStopping)
            save_checkpoint(ckpt, {**checkpoint_state, "model": model.state_dict(),
                                   "annealed": annealed_values(model), "stopped": True})
        elif checkpoint_state and len(history) == epochs and _changed(model, good):
            # a finished run whose weights a callback replaced at its end (EarlyStopping's
            # best epoch): resuming it trains nothing and returns these; more epochs go on
            # from the last epoch's, kept as "model"
            save_checkpoint(ckpt, {**checkpoint_state, "model": good.state,
                                   "annealed": annealed_values(model),
                                   "returned": model.state_dict()})
    except TrainingDiverged as err:
        # the failed step already wrote non-finite weights: nothing past the last epoch is kept
        good.put_back(model)
        err.history = pd.DataFrame(history)
        done = f"after epoch {len(history)}" if history else "before training"
        err.args = (f"{err.args[0]}; the model is restored to its state {done}",)
        raise
    except BaseException:
        # any other (penalties bypassed by the first step, bad data met in a Dataset's
        # batch, a callback's refusal or bug, a user loss's error, Ctrl-C): the model as it
        # was after the last finished epoch, as its checkpoint holds it, not half an epoch on
        good.put_back(model)
        raise
    finally:
        cleanup.close()
        bar.close()
        # ready to use: without validation no evaluate() switched it, and a training-mode
        # model encodes at random (input noise, dropout) and moves batch-norm statistics
        model.eval()
    return pd.DataFrame(history)


def _plain_numbers(row: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The epoch's history `row` with a callback's tensors and numpy scalars as Python
    numbers (a tensor was written to the history file as the text "tensor(1.61,
    grad_fn=...)"); TypeError for one of more than one value."""
    for key, value in row.items():
        if isinstance(value, torch.Tensor | np.ndarray | np.generic):
            if (value.numel() if isinstance(value, torch.Tensor) else np.size(value)) != 1:
                raise TypeError(f"the history's {key!r} at epoch {epoch} holds "
                                f"{tuple(value.shape)} values: a callback's entry in a history "
                                "row is one number per epoch (a scalar, or value.item())")
            row[key] = value.item()
    return row


def _step_schedulers(schedulers: dict[str, Scheduler], row: dict[str, float]) -> None:
    for s in schedulers.values():
        if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
            s.step(row.get("val_loss", row["train_loss"]))
        else:
            s.step()


def _changed(model: Model, kept: _Kept) -> bool:
    """Whether the model's weights differ from those kept after its last epoch."""
    state = model.state_dict()
    return state.keys() != kept.state.keys() or any(
        not torch.equal(v, kept.state[k]) for k, v in state.items())


class _Kept:
    """A model's weights and the loss weights annealing sets (`beta`, `capacity`, which
    `save` keeps too), to put back after a failed epoch."""

    def __init__(self, model: Model) -> None:
        self.state = _snapshot(model)
        self.annealed = {k: getattr(model, k) for k in ("beta", "capacity") if hasattr(model, k)}

    def put_back(self, model: Model) -> None:
        model.load_state_dict(self.state)
        for k, v in self.annealed.items():
            setattr(model, k, v)


def _train_epoch(model: Model, batches: _Batches, optimizers: dict, epoch: int,
                 bar: tqdm, epochs: int, penalty_terms: Sequence[str] = ()
                 ) -> dict[str, float]:
    model.train()
    meter = _Meter()
    # one redraw per epoch: outside a terminal (logs) every redraw is a line of its own
    bar.set_description(f"epoch {epoch}/{epochs}", refresh=False)
    if bar.n:
        bar.reset()
    finite = _FiniteCheck(model, optimizers, epoch, batches.count())
    for i, (x, c, y) in enumerate(batches, start=1):
        try:
            out = _step(model, x, c, y, optimizers, first=epoch == 1 and i == 1)
        except Exception:
            finite.check()  # a loss that became non-finite before is the cause (NaN weights)
            raise
        if any(t not in out.terms for t in penalty_terms):
            raise _PenaltiesBypassed(
                f"{type(model).__name__}.training_step does not compute its loss with "
                "model.loss, so the penalties cannot reach its training: take the loss "
                "from self.loss (its aux field carries what the step reuses)")
        finite.add(i, out)
        meter.add(out, x.shape[0])
        bar.update()
        if i % 20 == 0 and not bar.disable:
            bar.set_postfix(loss=f"{out.loss.item():.4g}", refresh=False)
    finite.check()
    return meter.means("train")


def _step(model: Model, x: Any, c: Any, y: Any, optimizers: dict, first: bool) -> LossOutput:
    """One training step of `model` on a batch, its errors said for fit."""
    try:
        with model.given(c):
            # unpaired data keeps the two-argument call of user-made training steps
            return check_loss_output(model.training_step(x, optimizers) if y is None
                                     else model.training_step(x, optimizers, y),
                                     model, "training_step")
    except TrainingDiverged as err:
        # a model's own (the HVAE's encoder samples before its flow, which suggest a
        # smaller learning rate) where that cannot be the cause says so; its subclasses
        # (a flow's step size) keep their advice
        if type(err) is TrainingDiverged and _untouched(first, optimizers):
            err.args = (f"{err.args[0]} (here {_divergence_advice(first, optimizers)})",)
        raise
    except RuntimeError as err:
        if ONCE_DIFFERENTIABLE not in str(err):
            raise
        raise TypeError(
            f"training {type(model).__name__} differentiates a gradient again (the leapfrog "
            "force grad_z log p(x|z) of HVAE and RHVAE, the decoder_jacobian penalty), but "
            "the networks contain an operation that is only once differentiable (an "
            "autograd Function whose backward is marked @once_differentiable): write that "
            "backward with differentiable torch operations, or train without second "
            "derivatives (a VAE, no decoder_jacobian penalty)") from err


SYNC_EVERY = 20
"""How many batches' losses a GPU fit checks for non-finite values at once: each check
waits for the device (checked per batch, a VAE epoch on an H200 took 1.31x a bare loop's,
every 20 batches 1.11x: bench/vae_epoch.py). The CPU, which does not wait, checks every
batch."""


class _FiniteCheck:
    """The first non-finite loss of an epoch as a `TrainingDiverged` naming its batch,
    checked at every batch on the CPU and every `SYNC_EVERY` batches on a GPU (the steps
    in between train on, into NaN weights: `fit` puts the model back as before)."""

    def __init__(self, model: Model, optimizers: dict, epoch: int, count: int | str) -> None:
        self.model, self.optimizers, self.epoch, self.count = model, optimizers, epoch, count
        self.pending: list[tuple[int, torch.Tensor, dict[str, torch.Tensor]]] = []

    def add(self, i: int, out: LossOutput) -> None:
        self.pending.append((i, out.loss.detach(), {k: v.detach() for k, v in out.terms.items()}))
        if out.loss.device.type == "cpu" or len(self.pending) >= SYNC_EVERY:
            self.check()

    def check(self) -> None:
        pending, self.pending = self.pending, []
        if not pending:
            return
        finite = torch.stack([loss for _, loss, _ in pending]).isfinite()
        if bool(finite.all()):
            return
        i, loss, terms = pending[int((~finite).nonzero()[0])]
        bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
        first = self.epoch == 1 and i == 1
        raise TrainingDiverged(
            f"the loss became {loss.item()} at epoch {self.epoch}, batch {i} of {self.count} "
            f"(non-finite terms: {', '.join(bad) or 'none'}); "
            + _divergence_advice(first, self.optimizers) + _half_note(self.model))


def _untouched(first_step: bool, optimizers: dict[str, torch.optim.Optimizer]) -> str | None:
    """When the loss comes from weights no step has changed, so that the data or the
    likelihood, not the learning rate, cause a non-finite one: a fresh fit's first batch
    (a resumed fit starts past epoch 1), or any batch at learning rate 0; else None."""
    if first_step:
        return "before any parameter update"
    frozen = all(g["lr"] == 0 for o in optimizers.values() for g in o.param_groups)
    return "at learning rate 0" if frozen else None


def _divergence_advice(first_step: bool, optimizers: dict[str, torch.optim.Optimizer]
                       ) -> str:
    """What to try after a non-finite loss (`_untouched`)."""
    when = _untouched(first_step, optimizers)
    if when is None:
        return "try a smaller learning rate"
    return (f"{when}, so the learning rate is not the cause: check the data's scale "
            "(standardise continuous data for a Gaussian likelihood, e.g. with "
            "aetk.data.Standardise) and that every value is in the likelihood's support (an "
            "exact 0 or 1 has no finite Beta log-density, a negative value no Poisson one)")


def _half_note(model: Model) -> str:
    """float16 weights as a cause of a non-finite loss: its range ends at 65504 and fit
    scales no losses (bfloat16 has float32's range)."""
    if any(p.dtype == torch.float16 for p in model.parameters()):
        return ("; or the model's float16 weights, whose range (largest 65504) a loss or its "
                "gradient outgrows: train in float32 or bfloat16")
    return ""


def _warn_scale(model: Model, x: torch.Tensor, name: str) -> None:
    """`DataScaleWarning` when a Gaussian likelihood is given data far from unit scale
    (`UNIT_SCALE`, `LEARNED_SIGMA_SCALE`); two reductions over the data, for those
    likelihoods only (not a subclass's own distribution)."""
    if not (isinstance(model.decoder, GaussianDecoder | LearnedGaussianDecoder)
            and builtin_likelihood(model.decoder)):
        return
    std, mean = torch.std_mean(x.reshape(len(x), -1), dim=0, correction=0)
    low, high = UNIT_SCALE
    if isinstance(model.decoder, LearnedGaussianDecoder):
        high = LEARNED_SIGMA_SCALE
    size = torch.maximum(mean.abs(), std)
    j = int(size.argmax())
    if float(size[j]) > high:
        problem = (f"feature {j} has mean {float(mean[j]):.3g} and standard deviation "
                   f"{float(std[j]):.3g}, above {high:g}: " + (
                       "a learned sigma learns a fraction of what it does on standardised data"
                       if high == LEARNED_SIGMA_SCALE else "the encoder's first sigmas may "
                       "overflow (a NaN loss), or the model learn almost nothing"))
    elif 0 < float(std.max()) < low:
        problem = (f"no feature's standard deviation reaches {low:g} (the largest is "
                   f"{float(std.max()):.3g}), below what the likelihood resolves: the "
                   "model will learn almost nothing")
    else:
        return
    lo, hi = LOG_SIGMA_RANGE
    sigma = (f"sigma {model.decoder.sigma:g}" if isinstance(model.decoder, GaussianDecoder)
             else f"a learned log sigma in [{lo:g}, {hi:g}]")
    warnings.warn(
        f"the {name} data are far from the unit scale of the Gaussian likelihood ({sigma}, "
        f"and the encoder's first layers): {problem}. Standardise "
        "continuous data first, with the training rows' mean and standard deviation for "
        "training and validation data alike, e.g. aetk.data.Standardise, or "
        "(x - mu) / sd with mu, sd = x_train.mean(0), x_train.std(0)",
        DataScaleWarning, stacklevel=4)  # fit's caller: past fit and global_rng_kept's wrapper


def evaluate(model: Model, data: Iterable[Any], prefix: str = "val") -> dict[str, float]:
    """Mean loss and terms of `model` over batches of `data`, without gradients: tensors,
    `(x, c)` pairs for a conditional model, or `(x, c, target)` triples (c may be None)."""
    model.eval()
    meter = _Meter()
    with torch.no_grad():
        for batch in data:
            x, c, y = (*batch, None)[:3] if isinstance(batch, tuple) else (batch, None, None)
            with model.given(c):
                out = model.loss(x) if y is None else model.loss(x, y)
                meter.add(check_loss_output(out, model), x.shape[0])
    return meter.means(prefix)


