"""Small network builders shared by encoders, decoders and critics."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
}


def activation(name: str) -> nn.Module:
    """An activation module from its name."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; valid: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


def mlp(
    in_features: int,
    hidden: Sequence[int],
    out_features: int | None = None,
    act: str = "relu",
) -> nn.Sequential:
    """Linear layers of sizes `in -> hidden... (-> out)` with `act` between hidden layers.

    Without `out_features` the network ends with the last hidden activation (a trunk for heads).
    """
    widths = [in_features, *hidden, *([] if out_features is None else [out_features])]
    if any(int(w) != w or w < 1 for w in widths):
        sizes = " -> ".join(map(str, widths))
        raise ValueError(f"layer widths must be positive integers, got {sizes} "
                         "(input, hidden layers, output)")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation(act)]
        width = h
    if out_features is not None:
        layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def resolve_shape(in_features: int | None, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    """The event shape of one data point from either `in_features` or `input_shape`."""
    if (in_features is None) == (input_shape is None):
        raise ValueError("give exactly one of in_features or input_shape")
    shape = (int(in_features),) if in_features is not None else tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"invalid input shape {shape}")
    return shape


def numel(shape: Sequence[int]) -> int:
    """Number of elements in one data point of this shape."""
    return math.prod(shape)
