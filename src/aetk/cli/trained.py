"""What the commands that read a trained model share: loading it, the data store it reads
(checked against the one it was trained on), a conditional model's classes, the rows of a
split and a multinomial model's count totals."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from aetk import storage


def label_conditions(stored: storage.StoredData, path: str) -> np.ndarray:
    """One-hot rows of the store's categorical labels, `(N, classes)`: the conditions of
    `--conditions labels`."""
    if stored.labels is None or stored.label_kind != "categorical":
        kind = "none" if stored.labels is None else stored.label_kind + " labels"
        raise ValueError(f"conditions from labels (a conditional model) need categorical "
                         f"labels, but {path} has {kind} (preprocess with --labels)")
    k = len(stored.label_names) if stored.label_names else int(stored.labels.max()) + 1
    return np.eye(k, dtype=np.float32)[stored.labels]


def model_conditions(model: Any, stored: storage.StoredData, path: str) -> np.ndarray | None:
    """The conditions of every stored sample for a conditional model (None otherwise)."""
    if not model.n_conditions:
        return None
    c = label_conditions(stored, path)
    if c.shape[1] != model.n_conditions:
        raise ValueError(f"the model is conditioned on {model.n_conditions} classes, but {path} "
                         f"has {c.shape[1]}: encode the data store it was trained on")
    return c


def given_classes(model: Any, classes: Any) -> Any:
    """`model.given` the one-hot `classes`, or no conditions when None."""
    import torch

    return model.given(None if classes is None else torch.eye(model.n_conditions)[classes])


def split_or_all(rows: np.ndarray) -> np.ndarray | slice:
    """The rows of a split (a boolean mask), or all rows when it has fewer than two."""
    return rows if rows.sum() > 1 else slice(None)


def training_totals(model: Any, stored: storage.StoredData | None) -> np.ndarray | None:
    """A multinomial model's data totals to generate counts at: the per-sample totals of
    the training split (of all samples when it has fewer than two); None for other
    likelihoods or without data."""
    from aetk.decoders import MultinomialDecoder

    if stored is None or not isinstance(model.decoder, MultinomialDecoder):
        return None
    return stored.x[split_or_all(~stored.is_validation)].sum(1, dtype=np.float64)


def draw_totals(totals: np.ndarray, n: int, seed: int) -> np.ndarray:
    """`n` of `totals` drawn with replacement by their own seeded generator (torch's draws
    of the latent points stay as they were)."""
    return np.random.default_rng(seed).choice(totals, n, replace=True)


def load_model(path: str) -> Any:
    """`aetk.load(path)`, with the commands' own message for a model that its description
    cannot rebuild (parts of the user's own): load's advice, `into=model`, is for Python."""
    import aetk
    from aetk.io import NotRebuildable

    try:
        return aetk.load(path)
    except NotRebuildable as err:
        parts = ", ".join(f"{k} {v}" for k, v in err.parts.items())
        made = f" (parts: {parts})" if parts else ""
        raise ValueError(
            f"{path} holds a model made of parts that aetk cannot rebuild from its saved "
            f"description{made}: the aetk commands take models of `aetk train` or "
            "aetk.build_model; use it from Python, rebuilt as it was and loaded with "
            f"aetk.load('{path}', into=model)") from None


def warn_other_data(model_dir: str, stored: Any, data_path: str) -> None:
    """Warn when `stored` is not the data store the model in `model_dir` was trained on (by
    the config hash both record): another store's transforms and split were fitted anew, so
    its values may be on another scale (encoding new data of the same form is allowed)."""
    info_path = Path(model_dir) / "aetk_run.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    trained_on = info.get("settings", {}).get("data_config_hash")
    given = stored.attrs.get("config_hash")
    if trained_on and given and trained_on != given:
        print(f"warning: {model_dir} was trained on another data store (config hash "
              f"{trained_on}) than {data_path} ({given}): unless these data went through the "
              "same transforms, fitted on the same training samples, the model reads them on "
              "another scale; give the store the model was trained on",
              file=sys.stderr)
