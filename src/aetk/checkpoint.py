"""`fit`'s checkpoints: what they hold, written atomically after every epoch, and the
fingerprint of the settings they were written for, without which a checkpoint of other
settings (data, model, batches, schedule) would resume as if it were this run's."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .batches import LocalityBatches
from .data import array_digest, named_spec
from .models.base import Model
from .penalties import describe

if TYPE_CHECKING:  # fit's types: train imports this module
    from .train import BatchSampler, LRSchedule, Scheduler, _Batches


class CheckpointMismatch(ValueError):
    """A checkpoint that `fit` will not resume, refused before anything is loaded: written
    for other settings (`differences`, `{name: (there, now)}`: the data's hash included), or
    holding `held` epochs, more than the `asked` ones. `problem` says which, without
    advice; the message adds the advice for Python callers (`resume=False`, `epochs >=
    held`), and other callers (the CLI) word their own from these fields."""

    def __init__(self, path: str | Path, *,
                 differences: dict[str, tuple[Any, Any]] | None = None,
                 held: int | None = None, asked: int | None = None) -> None:
        self.path = Path(path)
        self.differences = dict(differences or {})
        self.held, self.asked = held, asked
        advice = (f"pass epochs >= {held}, or resume=False to start over" if held is not None
                  else "pass resume=False to start over")
        super().__init__(f"{self.problem}; {advice}")

    def __reduce__(self) -> tuple:
        # pickled (multiprocessing, joblib) with its fields, not rebuilt from the message
        return (functools.partial(type(self), differences=self.differences, held=self.held,
                                  asked=self.asked), (self.path,))

    @property
    def problem(self) -> str:
        """What is wrong with the checkpoint, without advice."""
        if self.held is not None:
            return (f"checkpoint {self.path} already holds {self.held} epochs, more than the "
                    f"{self.asked} asked for")
        diff = ", ".join(f"{k}: {there!r} there, {now!r} now"
                         for k, (there, now) in self.differences.items())
        return f"checkpoint {self.path} was written for different settings ({diff})"


def part_classes(model: nn.Module) -> dict[str, str]:
    """The class of each part of the model (its direct submodules: encoder, decoder, a
    metric network, a critic), as `module:QualifiedName`: what `save` records and a
    checkpoint's fingerprint holds, so that weights of the same shapes in parts of
    another class (a user's decoder for aetk's) are not taken for them."""
    return {name: f"{type(m).__module__}:{type(m).__qualname__}"
            for name, m in model.named_children()}


def same_class(saved: str | None, here: str | None) -> bool:
    """Whether two of `part_classes`'s names are one class: by the qualified name, so that
    a class defined in a script (`__main__:MyDecoder`) and later imported from its module
    (`mymod:MyDecoder`) is the same one; another name (a Bernoulli decoder for a Gaussian
    one) is not."""
    return saved == here or (saved is not None and here is not None
                             and saved.partition(":")[2] == here.partition(":")[2])


def run_fingerprint(model: Model, batches: _Batches, val_batches: _Batches | None, *,
                    batch_size: int, lr: float, seed: int, epochs: int,
                    batch_sampler: BatchSampler | None, lr_schedule: LRSchedule,
                    schedulers: dict[str, Scheduler], clip_grad_norm: float | None,
                    penalties: dict[str, Any], hash_data: bool) -> dict:
    """The settings of a `fit` that its checkpoint records and `restore_checkpoint`
    compares; the data's hash only with `hash_data` (it costs ~1 s/GB)."""
    n_train = len(batches.tensor) if batches.tensor is not None else len(batches.dataset)
    found = {"class": type(model).__name__, "parts": part_classes(model),
             "build_spec": model.build_spec,
             "n_parameters": sum(p.numel() for p in model.parameters()),
             "n_train": n_train, "batch_size": batch_size, "lr": lr, "seed": seed}
    # only when set (also lr_schedule below), so that earlier checkpoints keep theirs
    if batch_sampler is not None:
        # LocalityBatches with all its settings: 4 primaries with 4 neighbours each and 5
        # with 3 make batches of 20 alike, and the neighbourhoods' size k is in neither
        found["batch_sampler"] = (
            repr(batch_sampler) if isinstance(batch_sampler, LocalityBatches)
            else f"{getattr(batch_sampler, '__qualname__', type(batch_sampler).__name__)}, "
                 f"{batches.count()} batches of {getattr(batch_sampler, 'batch_size', '?')}")
        if not isinstance(batch_sampler, LocalityBatches):
            found["batch_sampler_code"] = _code_digest(batch_sampler)
    if batches.targets is not None:
        found["paired"] = True
    if schedulers:  # only when set, so that checkpoints without one keep their fingerprint
        found["lr_schedule"] = (
            lr_schedule if not callable(lr_schedule)
            else type(next(iter(schedulers.values()))).__name__)
        if not callable(lr_schedule) and named_spec(lr_schedule)[0] == "cosine":
            # the cosine spans the run: resumed for more epochs, its rate would jump back up
            found["cosine_epochs"] = epochs
    if clip_grad_norm is not None:  # only when set, as above
        found["clip_grad_norm"] = clip_grad_norm
    if penalties:  # only when set, as above
        found["penalties"] = {k: describe(p) for k, p in penalties.items()}
    if hash_data:  # a checkpoint of other data must not resume
        found["data"] = _digest(batches, val_batches)
    return found


def _code_digest(fn: Callable[..., Any]) -> str:
    """A hash of what the function `fn` computes: its bytecode, names and constants (nested
    functions' too), and its defaults' and closure's values (numbers, strings and tuples
    of them; other objects by their type); for a callable object, its class's `__call__`;
    for a `functools.partial`, its function and arguments. Two lambdas share a name, and a
    checkpoint of one must not resume with the other."""
    parts: list[str] = []
    while isinstance(fn, functools.partial):
        parts.append(_plain((fn.args, tuple(sorted(fn.keywords.items())))))
        fn = fn.func
    fn = getattr(fn, "__func__", fn)  # a bound method's function
    if not hasattr(fn, "__code__"):
        fn = getattr(type(fn).__call__, "__func__", type(fn).__call__)
    code = getattr(fn, "__code__", None)
    if code is None:  # a builtin: its name is all there is
        return getattr(fn, "__qualname__", type(fn).__qualname__)
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(cell.cell_contents)
        except ValueError:  # a cell not yet filled
            cells.append(None)
    parts += [_code_text(code), _plain(fn.__defaults__), _plain(fn.__kwdefaults__),
              _plain(tuple(cells))]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _code_text(code: types.CodeType) -> str:
    """The bytecode, names and constants of `code` (and of the code objects among them)."""
    consts = [_code_text(c) if isinstance(c, types.CodeType) else _plain(c)
              for c in code.co_consts]
    return f"{code.co_code.hex()} {code.co_names} {consts}"


def _plain(value: Any) -> str:
    """`repr(value)` for numbers, strings, None and containers of them; otherwise the
    type's name (an address or a tensor's values would make the hash vary)."""
    if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_plain(v) for v in value) + ")"
    if isinstance(value, frozenset):  # set literals: their order varies with the hash seed
        return "{" + ", ".join(sorted(_plain(v) for v in value)) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(f"{_plain(k)}: {_plain(v)}" for k, v in value.items())) + "}"
    return type(value).__qualname__


def _digest(*batches: _Batches | None) -> str:
    """A hash of the tensors fit trains and validates on (data, conditions, targets); data
    streamed from a Dataset, not read twice to hash it, is left out."""
    tensors = [t for b in batches if b is not None
               for t in (b.tensor, b.conditions, b.targets) if t is not None]
    return array_digest(*(t.detach().cpu().numpy() for t in tensors))


def save_atomic(obj: Any, path: Path, doing: str) -> None:
    """`torch.save(obj, path)` serialised in memory, written by Python and moved into place
    once complete: an interruption leaves the previous file intact, and where torch's own
    writer turns a full disk or a read-only folder into a RuntimeError ("unexpected pos
    33792 vs 33680") and leaves a truncated file, this is an `OSError` naming the file and
    what was `doing` (the `aetk` command's one-line error), and no partial file is left."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OSError(err.errno, f"{err.strerror or err} ({doing})", str(path)) from err


def epoch_state(fingerprint: dict, optimizers: dict[str, torch.optim.Optimizer],
                schedulers: dict[str, Scheduler], shuffle_rng: torch.Generator,
                history: list[dict[str, Any]], callbacks: Sequence[Any]) -> dict[str, Any]:
    """What a checkpoint holds after an epoch besides the model's weights (`fit` adds
    them, and the loss weights annealing set): what `restore_checkpoint` puts back."""
    return {
        "fingerprint": fingerprint,
        "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        "schedulers": {k: o.state_dict() for k, o in schedulers.items()},
        "rng": _rng_state(),
        "shuffle_rng": shuffle_rng.get_state(),
        "history": history,
        "callbacks": {_callback_key(i, cb): cb.state_dict() for i, cb in enumerate(callbacks)
                      if callable(getattr(cb, "state_dict", None))},
    }


def _callback_key(i: int, callback: Any) -> str:
    # by position and class: a callback of another class in that place gets no state
    return f"{i}:{type(callback).__qualname__}"


def load_callback_states(callbacks: Sequence[Any], states: dict[str, Any]) -> None:
    """Put back the states `epoch_state` kept of the callbacks that define
    `load_state_dict` (`EarlyStopping`'s best epoch): after their `on_fit_start`, which
    starts them afresh."""
    for i, cb in enumerate(callbacks):
        state = states.get(_callback_key(i, cb))
        if state is not None and callable(getattr(cb, "load_state_dict", None)):
            cb.load_state_dict(state)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write the checkpoint `state` to `path` (`save_atomic`)."""
    kept = "the previous one is kept" if path.exists() else "none was written"
    save_atomic(state, path, f"writing the training checkpoint; {kept}")


def _rng_state(started_only: bool = False) -> dict[str, Any]:
    """The global generators' states: the CPU's, and every CUDA device's where CUDA is
    available (`started_only`: already in use; reading them starts it)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_initialized() if started_only else torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def global_rng_kept() -> Iterator[None]:
    """Puts torch's global generators (the CPU's, and every CUDA device's once CUDA is in
    use) back as they were on exit: `fit` seeds them for its draws, and models built after
    it must not repeat the weights of those built after an earlier `fit`. CUDA's are left
    alone before CUDA starts: reading them would start it, a context on the GPU, for a fit
    on the CPU."""
    state = _rng_state(started_only=True)
    try:
        yield
    finally:
        _set_rng_state(state)


def restore_checkpoint(path: Path, model: Model, optimizers: dict, schedulers: dict,
                       shuffle_rng: torch.Generator, fingerprint: dict, device: torch.device,
                       epochs: int) -> tuple[list[dict[str, float]], bool, dict[str, Any]]:
    """Load a checkpoint into the model and optimisers: its history, whether a callback
    had stopped that run, and the callbacks' states (for `load_callback_states`)."""
    state = torch.load(path, map_location=device, weights_only=True)
    # written before fit hashed its data, or recorded the cosine's span, the parts' classes or
    # the batch sampler's code: trusted
    fingerprint = {k: v for k, v in fingerprint.items()
                   if k in state["fingerprint"]
                   or k not in ("data", "cosine_epochs", "parts", "batch_sampler_code")}
    old = state["fingerprint"]
    parts = fingerprint.get("parts")
    if parts is not None and old["parts"].keys() == parts.keys() and all(
            same_class(v, parts[k]) for k, v in old["parts"].items()):
        fingerprint["parts"] = old["parts"]  # the same classes, maybe from another module
    if old != fingerprint:
        raise CheckpointMismatch(path, differences={
            k: (old.get(k), fingerprint.get(k))
            for k in {**old, **fingerprint} if old.get(k) != fingerprint.get(k)})
    if len(state["history"]) > epochs:
        raise CheckpointMismatch(path, held=len(state["history"]), asked=epochs)
    finished = len(state["history"]) == epochs and "returned" in state
    model.load_state_dict(state["returned" if finished else "model"])
    # beta and capacity are attributes, not weights: a resumed run that trains no further
    # (finished, or stopped) would otherwise keep the build's (absent in older checkpoints)
    for name, value in state.get("annealed", {}).items():
        setattr(model, name, value)
    for k, opt in optimizers.items():
        opt.load_state_dict(state["optimizers"][k])
    for k, sched in schedulers.items():
        sched.load_state_dict(state["schedulers"][k])
    _set_rng_state({k: (v.cpu() if isinstance(v, torch.Tensor) else [t.cpu() for t in v])
                    for k, v in state["rng"].items()})
    shuffle_rng.set_state(state["shuffle_rng"].cpu())
    # older checkpoints kept no callback states
    return state["history"], bool(state.get("stopped", False)), state.get("callbacks", {})
