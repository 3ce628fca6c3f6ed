"""The callbacks `fit` calls at each epoch (the protocol `CALLBACK_HOOKS`): KL annealing
(`CyclicalBeta`, `CapacityAnnealing`) and `EarlyStopping`."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any

import torch

from . import validate
from .models.base import Model

CALLBACK_HOOKS = ("on_fit_start(model)", "on_epoch_start(model, epoch)",
                  "on_epoch_end(model, epoch, row)", "on_fit_end(model)")
"""The methods `fit` calls on its callbacks, each where it defines it."""


def check_callbacks(callbacks: Any) -> tuple[Any, ...]:
    """`callbacks` as a tuple; TypeError for one that is not a list of callbacks, or for
    a callback defining none of `CALLBACK_HOOKS` (fit would never call it)."""
    names = [h.split("(")[0] for h in CALLBACK_HOOKS]
    if any(hasattr(callbacks, n) for n in names) or not isinstance(callbacks, Iterable):
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}: give "
                        f"[{type(callbacks).__name__}(...)]")
    callbacks = tuple(callbacks)
    for cb in callbacks:
        if not any(callable(getattr(cb, n, None)) for n in names):
            what = "a function" if callable(cb) else f"a {type(cb).__name__}"
            raise TypeError(f"callback {cb!r} ({what}) defines none of the methods fit calls: "
                            f"give an object with one or more of {', '.join(CALLBACK_HOOKS)}")
    return callbacks


def has_kl_weight(cls: type) -> bool:
    """Whether a model class weighs its KL term by `beta` (a VAE, VampPrior or ladder VAE,
    or a subclass): what `CyclicalBeta` anneals."""
    from .models import VAE, LadderVAE, VampPrior  # here: the models import fit's module

    return issubclass(cls, (VAE, VampPrior, LadderVAE))


def charges_capacity(cls: type) -> bool:
    """Whether a model class's loss charges a KL capacity (the VAE's own loss): what
    `CapacityAnnealing` sets."""
    from .models import VAE

    return issubclass(cls, VAE) and cls.loss is VAE.loss


def annealed_values(model: Model) -> dict[str, float]:
    """The loss weights that `CyclicalBeta` and `CapacityAnnealing` set on `model` (its
    `beta`, its `capacity` once set), as they are now: saved with the model, so that a
    reloaded one charges the loss it was last trained with."""
    out = {"beta": float(model.beta)} if has_kl_weight(type(model)) else {}
    if charges_capacity(type(model)) and model.capacity is not None:
        out["capacity"] = float(model.capacity)
    return out


class CyclicalBeta:
    """Cyclical KL annealing (Fu et al. 2019): in each of `n_cycles` cycles over `epochs`,
    beta rises linearly from `beta_min` to `beta_max` during the first `frac` of the cycle,
    then stays at `beta_max`. Sets `model.beta`, the KL term's weight, at the start of
    every epoch; models without one (a `beta` of another meaning, or a bound with no
    separate KL term) are refused. The validation loss then weighs the KL by each epoch's
    beta, so `EarlyStopping` or a plateau schedule watching it would keep the epochs of
    smallest beta: watch another column, or none. Cycles are `ceil(epochs / n_cycles)`
    epochs long (Fu et al.'s formula), so epochs not a multiple of `n_cycles` can cut the
    last cycle short, ending training at a smaller beta than before: that warns."""

    def __init__(self, epochs: int, n_cycles: int = 4, frac: float = 0.5,
                 beta_min: float = 0.0, beta_max: float = 1.0) -> None:
        if isinstance(n_cycles, bool) or int(n_cycles) != n_cycles:
            raise ValueError(f"CyclicalBeta needs an integer n_cycles, got {n_cycles!r}")
        if not 1 <= n_cycles <= epochs or not 0 < frac <= 1 or not 0 <= beta_min <= beta_max:
            raise ValueError(f"need 1 <= n_cycles <= epochs, 0 < frac <= 1 and 0 <= beta_min <= "
                             f"beta_max; got epochs={epochs}, n_cycles={n_cycles}, frac={frac}, "
                             f"beta_min={beta_min}, beta_max={beta_max}")
        self.epochs, self.n_cycles, self.frac = epochs, n_cycles, frac
        self.beta_min, self.beta_max = beta_min, beta_max
        # cycles of ceil(E/C) epochs can leave a short last one that ends while beta still
        # rises (E=10, C=4: epoch 10 starts a cycle at beta_min), and cycles of one epoch
        # never leave beta_min: the returned model would be trained with a smaller KL
        # weight than the schedule reaches, which nothing else would reveal
        betas = [self.beta(epoch) for epoch in range(1, epochs + 1)]
        if max(betas) == beta_min < beta_max:
            warnings.warn(f"CyclicalBeta(epochs={epochs}, n_cycles={n_cycles}): cycles of one "
                          f"epoch keep beta at beta_min={beta_min:g} throughout; use fewer "
                          f"cycles", UserWarning, stacklevel=2)
        elif betas[-1] < max(betas):
            warnings.warn(
                f"CyclicalBeta(epochs={epochs}, n_cycles={n_cycles}, frac={frac}): the last "
                f"epoch trains at beta={betas[-1]:.3g}, below the {max(betas):.3g} reached "
                f"before (cycles of {math.ceil(epochs / n_cycles)} epochs cut the last one "
                f"short); choose epochs a multiple of n_cycles", UserWarning, stacklevel=2)

    def beta(self, epoch: int) -> float:
        """beta for 1-based `epoch`."""
        period = self.epochs / self.n_cycles
        tau = ((epoch - 1) % math.ceil(period)) / period
        if tau <= self.frac:
            return self.beta_min + (self.beta_max - self.beta_min) * tau / self.frac
        return self.beta_max

    def on_epoch_start(self, model: Model, epoch: int) -> None:
        if not has_kl_weight(type(model)):
            raise ValueError(
                f"CyclicalBeta anneals the KL term's weight beta, which the model "
                f"{type(model).__name__} does not have (models with one: VAE, VampPrior, "
                f"LadderVAE and their subclasses)")
        model.beta = self.beta(epoch)

    def on_epoch_end(self, model: Model, epoch: int, row: dict[str, float]) -> None:
        row["beta"] = model.beta


class CapacityAnnealing:
    """Controlled KL capacity (Burgess et al. 2018, "Understanding disentangling in
    beta-VAE"): at the start of every epoch sets `model.capacity = C`, rising linearly
    from `c_max / epochs` to `c_max` nats over the first `epochs` epochs and then held, so
    the VAE charges `beta |KL - C|` (beta as the paper's gamma, large: it holds the KL at
    C). For `VAE` and `beta_vae` models, whose loss honours the capacity; the history gets
    a `capacity` column."""

    def __init__(self, c_max: float, epochs: int) -> None:
        if not c_max >= 0 or not math.isfinite(c_max):
            raise ValueError(f"c_max must be a finite number >= 0, got {c_max}")
        self.c_max, self.epochs = float(c_max), validate.positive_int(epochs, "epochs")

    def capacity(self, epoch: int) -> float:
        """C for 1-based `epoch`."""
        return self.c_max * min(1.0, epoch / self.epochs)

    def on_epoch_start(self, model: Model, epoch: int) -> None:
        if not charges_capacity(type(model)):
            raise ValueError(f"CapacityAnnealing needs a VAE whose loss charges the capacity "
                             f"(vae, beta_vae), not a {type(model).__name__}")
        model.capacity = self.capacity(epoch)

    def on_epoch_end(self, model: Model, epoch: int, row: dict[str, float]) -> None:
        row["capacity"] = model.capacity


class EarlyStopping:
    """Stop training once `monitor` (a history column, default the validation loss) has
    not fallen by more than `min_delta` for `patience` epochs, and put back the weights of
    its best epoch at the end (`restore_best`). `best_epoch` and `best` say which.

    With a checkpoint, a run it stopped is final (resuming returns it as it ended), and a
    run that reached its last epoch, resumed, returns the best epoch's weights it returned
    (asked for more epochs, it goes on from the last epoch's). The checkpoint keeps its
    `state_dict()` (best value and epoch, and the best epoch's weights: a second copy of
    the model), so an interrupted run, resumed, stops where it would have.
    """

    def __init__(self, patience: int = 10, monitor: str = "val_loss", min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        if int(patience) != patience or patience < 1 or min_delta < 0:
            raise ValueError(f"patience must be an integer >= 1 and min_delta >= 0, got "
                             f"{patience} and {min_delta}")
        self.patience, self.monitor = int(patience), monitor
        self.min_delta, self.restore_best = float(min_delta), restore_best
        self.on_fit_start(None)

    def on_fit_start(self, model: Model | None) -> None:
        """Start afresh at every `fit`: one instance given to several fits (a loop over
        models) would otherwise compare with, and put back, an earlier fit's best weights."""
        self.best, self.best_epoch = math.inf, 0
        self.stop = False
        self._state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, model: Model, epoch: int, row: dict[str, float]) -> None:
        if self.monitor not in row:
            raise ValueError(f"EarlyStopping monitors {self.monitor!r}, which the history does "
                             f"not have (columns: {', '.join(row)}); give fit validation data")
        if row[self.monitor] < self.best - self.min_delta:
            self.best, self.best_epoch = row[self.monitor], epoch
            if self.restore_best:
                self._state = _snapshot(model)
        self.stop = epoch - self.best_epoch >= self.patience

    def on_fit_end(self, model: Model) -> None:
        if self.restore_best and self._state is not None:
            model.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        """What `fit`'s checkpoint keeps, for a resumed run to go on counting."""
        return {"best": self.best, "best_epoch": self.best_epoch, "stop": self.stop,
                "weights": self._state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put back a `state_dict()`."""
        self.best, self.best_epoch, self.stop = state["best"], state["best_epoch"], state["stop"]
        self._state = state["weights"]


def _snapshot(model: Model) -> dict[str, torch.Tensor]:
    """A copy of the model's weights (`fit` keeps one after each epoch too)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}

