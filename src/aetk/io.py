"""Saving and loading models as a JSON description plus a state dict (no pickled code)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from . import __version__
from .models.base import Model

CONFIG, WEIGHTS = "config.json", "weights.pt"


def save(model: Model, path: str | Path) -> None:
    """Write `config.json` (how to rebuild the model) and `weights.pt` (its state dict)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"aetk_version": __version__, "class": type(model).__name__,
              "build_spec": model.build_spec}
    (path / CONFIG).write_text(json.dumps(config, indent=2))
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path / WEIGHTS)


def load(path: str | Path, map_location: str | torch.device = "cpu") -> Model:
    """Rebuild a model saved with `model.save(path)` and load its weights (in eval mode)."""
    from .build import build_model

    path = Path(path)
    if not (path / CONFIG).exists():
        raise FileNotFoundError(f"{path} holds no saved aetk model ({CONFIG} is missing)")
    config = json.loads((path / CONFIG).read_text())
    spec = config.get("build_spec")
    if spec is None:
        raise ValueError(
            f"the {config['class']} in {path} was not made by aetk.build_model, so it cannot be "
            f"rebuilt from its description: build it again and call "
            f"model.load_state_dict(torch.load('{path / WEIGHTS}', weights_only=True))"
        )
    spec = dict(spec)
    spec.setdefault("log_inputs", False)  # saved before it defaulted to True for counts
    model = build_model(spec.pop("model"), spec.pop("likelihood"), **spec)
    try:
        state = torch.load(path / WEIGHTS, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # torch's own advice (weights_only=False) would run pickled code
        raise ValueError(f"{path / WEIGHTS} is not a state dict that aetk can read "
                         f"({type(err).__name__}); write it with model.save") from err
    model.load_state_dict(state)
    return model.eval()
