"""Saving and loading models as a JSON description plus a state dict (no pickled code)."""

from __future__ import annotations

import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from . import __version__, storage
from .callbacks import annealed_values
from .checkpoint import part_classes, same_class, save_atomic
from .devices import resolve_device
from .models.base import Model

CONFIG, WEIGHTS, HISTORY = "config.json", "weights.pt", "history.tsv"
SPEC_DEFAULTS = {"log_inputs": False, "one_hot_inputs": False}
"""What a saved build_spec without these keys was built with: `build_model`'s defaults
then (log inputs for counts, and one-hot inputs for classes, came later), not now."""


class NotRebuildable(ValueError):
    """`load` without `into` of a model that its description cannot rebuild: one made of
    parts of the user's own (`build_spec` None), or of parts other than `build_model`
    makes. `path`, and `parts`, the saved classes of its parts."""

    def __init__(self, message: str, path: Path, parts: dict[str, str]) -> None:
        super().__init__(message)
        self.path, self.parts = path, parts


def save(model: Model, path: str | Path, history: pd.DataFrame | None = None) -> None:
    """Write `config.json` (how to rebuild the model, the settings changed by hand after
    `build_model` made it, and the beta and KL capacity that an annealing schedule last
    set) and `weights.pt` (its state dict); with `history`, `aetk.fit`'s return value, also
    `history.tsv` (tab-separated, as `aetk train --history`), which `load_history(path)`
    reads back. Without one, a `history.tsv` of an earlier save into the folder is removed:
    it would describe other weights (a history.tsv in a folder without a saved model is
    left alone). A file or a Zarr store at `path` is a `FileExistsError`
    (`check_model_target`)."""
    if history is not None and not isinstance(history, pd.DataFrame):
        raise TypeError(f"history must be a pandas DataFrame (aetk.fit's return value), got "
                        f"{type(history).__name__}")
    path = check_model_target(path)
    spec, settings, changed = _as_built(model)
    path.mkdir(parents=True, exist_ok=True)
    saved_before = (path / CONFIG).exists()  # a history.tsv of ours, not a user's own file
    config = {"aetk_version": __version__, "class": type(model).__name__,
              "parts": part_classes(model), "build_spec": spec, "settings": settings,
              "changed_parts": changed, "annealed": annealed_values(model)}
    # the weights first: a folder with config.json and truncated weights would pass for a model
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / WEIGHTS,
                "saving the model's weights")
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    if history is None:
        if saved_before:
            (path / HISTORY).unlink(missing_ok=True)
    else:
        history.to_csv(path / HISTORY, sep="\t", index=False)


def _rebuild(spec: dict[str, Any]) -> Model:
    """The model that `build_model` makes from a saved description."""
    from .build import build_model

    spec = {**SPEC_DEFAULTS, **spec}
    return build_model(spec.pop("model"), spec.pop("likelihood"), **spec)


def scalar_settings(model: Model) -> dict[str, Any]:
    """The public scalar attributes (numbers, flags, names) of `model` and its parts by
    dotted path, as `{"temperature": 0.8, "decoder.sigma": 1.0}`: the settings that a state
    dict does not hold."""
    return {f"{name}.{attr}".lstrip("."): value
            for name, module in model.named_modules() for attr, value in vars(module).items()
            if not attr.startswith("_") and attr != "training"
            and type(value) in (bool, int, float, str, type(None))}


def _as_built(model: Model) -> tuple[dict[str, Any] | None, dict[str, Any], list[str]]:
    """The build description to save, the settings changed by hand after the build
    (`model.temperature = 0.3`), which `load` sets again (rebuilt from the description
    alone, such a model came back with the defaults, silently), and the parts whose
    networks were replaced by hand (`model.decoder.network = ...`): such a model is saved
    as one of the user's own parts, with a warning (rebuilt, it got the weights of the
    same shapes in the build's networks)."""
    if model.build_spec is None:
        return None, {}, []
    with torch.random.fork_rng(devices=[]):  # a save draws no numbers of the user's
        built = _rebuild(json.loads(json.dumps(model.build_spec)))
    if part_classes(built) != part_classes(model):  # load names the parts that differ
        return model.build_spec, {}, []
    changed = [name for name, part in model.named_children()
               if repr(part) != repr(getattr(built, name, None))]
    if changed:
        warnings.warn(f"the networks of the {type(model).__name__}'s {', '.join(changed)} "
                      "differ from those that build_model made from its description, so it "
                      "is saved as a model of your own parts: load it with aetk.load(path, "
                      "into=model), model built again as now", UserWarning, stacklevel=4)
        return None, {}, changed
    default = scalar_settings(built)
    return model.build_spec, {k: v for k, v in scalar_settings(model).items()
                              if k not in default or default[k] != v}, []


def check_model_target(path: str | Path) -> Path:
    """`path` (`~` expanded) as a folder to save a model in: `FileExistsError` for a file or
    a zarr store (an output path given by mistake: saving would replace or litter it), and
    a path that cannot be created (`storage.check_creatable`)."""
    path = Path(path).expanduser()
    storage.check_creatable(path)
    if (path.exists() or path.is_symlink()) and (not path.is_dir()
                                                 or storage.is_zarr_store(path)):
        raise FileExistsError(f"{path} is {storage.what_is(path)}, not a folder for a model: "
                              "give another output path")
    return path


def _model_dir(path: str | Path) -> Path:
    """`path` (`~` expanded), a folder holding a saved model, else FileNotFoundError."""
    path = Path(path).expanduser()
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path} holds no saved aetk model ({CONFIG} is missing)")
    return path


def load_history(path: str | Path) -> pd.DataFrame:
    """The training history saved with the model in the folder `path` (`save(model, path,
    history=...)`, or `aetk train`): `aetk.fit`'s DataFrame, one row per epoch.
    FileNotFoundError naming the path when there is none."""
    path = _model_dir(path)
    if not (path / HISTORY).exists():
        raise FileNotFoundError(
            f"the model in {path} was saved without its training history ({path / HISTORY} "
            f"is missing): save it with aetk.save(model, '{path}', history=history), history "
            "being aetk.fit's return value (aetk train does)")
    return pd.read_csv(path / HISTORY, sep="\t")


def load(path: str | Path, map_location: str | torch.device = "cpu", *,
         into: Model | None = None) -> Model:
    """Rebuild a model saved with `model.save(path)` and load its weights (in eval mode).
    A model not made by `build_model` (your own networks or likelihood) cannot be rebuilt
    from its description: build it again as it was and pass it as `into`, which gets the
    weights (the saved class must be its class) and stays on its device; a rebuilt model
    comes back on `map_location` ("cpu", "cuda", "auto": a GPU when there is one), in the
    dtype of the saved weights, with the settings changed by hand after its build."""
    path = _model_dir(path)
    config = json.loads((path / CONFIG).read_text())
    spec = config.get("build_spec")
    parts = config.get("parts", {})  # absent before 2026-12-03
    if into is not None:
        if type(into).__name__ != config["class"]:
            raise ValueError(f"{path} holds a saved {config['class']}, but into is of class "
                             f"{type(into).__name__}: pass a model of the saved class")
        _check_parts(into, parts, path, "build into with parts of the saved classes")
        model = into
    elif spec is None:
        made = f" (its parts: {_listing(parts)})" if parts else ""
        if config.get("changed_parts"):  # absent before 2026-12-04
            made = (f" as it was saved: its {', '.join(config['changed_parts'])} changed by "
                    "hand after")
        raise NotRebuildable(
            f"the {config['class']} in {path} was not made by aetk.build_model{made}, so it "
            f"cannot be rebuilt from its description: build it again as it was and pass it, "
            f"aetk.load('{path}', into=model)", path, parts)
    else:
        _check_registered({**SPEC_DEFAULTS, **spec}, parts, path)
        model = _rebuild(spec)
        for name, value in config.get("settings", {}).items():  # absent before 2026-12-04
            module, _, attr = name.rpartition(".")
            setattr(model.get_submodule(module), attr, value)
        try:
            _check_parts(model, parts, path, "build the model with these parts as it was and "
                         f"pass it, aetk.load('{path}', into=model)")
        except ValueError as err:
            raise NotRebuildable(str(err), path, parts) from None
    map_location = resolve_device(map_location)
    try:
        state = torch.load(path / WEIGHTS, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch's own advice (weights_only=False) would run pickled code
        raise ValueError(f"{path / WEIGHTS} is not a state dict that aetk can read "
                         f"({type(err).__name__}); write it with model.save") from err
    if into is not None:
        _check_fit(into, config, state, path)
    else:  # rebuilt in float32: a model saved in float64 comes back in float64
        dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
        if dtype is not None:
            model.to(dtype)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # weights of another architecture under this description
        raise ValueError(f"the weights in {path} do not fit this model: {err}") from None
    for name, value in config.get("annealed", {}).items():  # absent before 2026-12-01
        setattr(model, name, value)
    return (model if into is not None else model.to(map_location)).eval()


def _found(name: str) -> bool:
    """Whether the class `module:QualifiedName` is defined in this session (its module
    imported: nothing is imported to look)."""
    module, _, qualname = name.partition(":")
    found = sys.modules.get(module)
    for attr in qualname.split("."):
        found = getattr(found, attr, None)
    return isinstance(found, type)


def _class_note(name: str) -> str:
    """What to do where the saved class `name` is not defined in this session."""
    if _found(name):
        return ""
    module = name.partition(":")[0]
    if module == "__main__" or "<locals>" in name:
        return " (defined by the code that saved it, not here: define it again)"
    return f" (not defined here: import {module}, which defines it)"


def _listing(parts: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}{_class_note(v)}" for k, v in parts.items())


def _check_parts(model: Model, parts: dict[str, str], path: Path, advice: str) -> None:
    """ValueError unless `model`'s parts are of the saved classes (`parts`; none saved: no
    check): weights of the same shapes would load into a decoder of another likelihood."""
    here = part_classes(model)
    diff = [f"{k}: {v}{_class_note(v)} saved, {here.get(k, 'none')} here"
            for k, v in parts.items() if not same_class(v, here.get(k))]
    if diff:
        raise ValueError(f"{path} was saved with parts of other classes ({'; '.join(diff)}): "
                         f"{advice}")


def _check_registered(spec: dict, parts: dict[str, str], path: Path) -> None:
    """ValueError for a model or likelihood name of the saved description that this
    session has not registered (`build.MODELS`, `build.LIKELIHOODS`), saying what to."""
    from .build import LIKELIHOODS, MODELS

    for table, key, part, entry in (
            (MODELS, "model", "encoder", "MODELS[{!r}] = (encoder class, constructor)"),
            (LIKELIHOODS, "likelihood", "decoder", "LIKELIHOODS[{!r}] = <its decoder class>")):
        name = spec.get(key)
        if name in table:
            continue
        saved = parts.get(part)
        made = f" (its {part}: {saved}{_class_note(saved)})" if saved else ""
        raise ValueError(
            f"{path} was built with the {key} {name!r}, which is not registered here{made}: "
            f"register it as when it was saved, aetk.build.{entry.format(name)}, then load it "
            f"(known: {', '.join(table)})")


def _check_fit(model: Model, config: dict, state: dict[str, torch.Tensor], path: Path) -> None:
    """ValueError, before anything is loaded into `model`, unless the saved weights load
    into a copy of it (torch's load_state_dict copies what fits before it raises; a copy
    lets models resize buffers to the saved ones, as the RHVAE's centroids), and unless
    both were made by `build_model` with a setting that both give and that differs (one
    left to its default is not compared: its value is not saved; those of `SPEC_DEFAULTS`
    are, their defaults having changed)."""
    saved_spec = config.get("build_spec") or {}
    own = json.loads(json.dumps(model.build_spec or {}))  # as saved: lists for tuples
    if saved_spec and own:  # an old categorical model into a new build: one-hot inputs
        saved_spec, own = {**SPEC_DEFAULTS, **saved_spec}, {**SPEC_DEFAULTS, **own}
    diff = ", ".join(f"{k}: {saved_spec[k]!r} saved, {own[k]!r} here"
                     for k in sorted(saved_spec.keys() & own.keys()) if saved_spec[k] != own[k])
    if diff:
        raise ValueError(f"{path} was built with other settings ({diff}): aetk.load('{path}') "
                         "rebuilds it as it was")
    try:
        copy.deepcopy(model).load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"the weights in {path} do not fit this model: {err}") from None
