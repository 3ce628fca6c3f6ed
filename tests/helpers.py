"""Data shared by several test modules."""

import torch
from sklearn.datasets import load_digits


def digits(likelihood: str = "bernoulli", n: int = 600) -> tuple[torch.Tensor, dict]:
    """The first `n` scikit-learn digits (8 x 8, values 0..16) in the range a likelihood
    takes, with the options it needs: [0, 1] for Bernoulli and Gaussians, five classes
    for the categorical, raw counts otherwise."""
    x = torch.as_tensor(load_digits().data, dtype=torch.float32)[:n]
    if likelihood in ("bernoulli", "gaussian", "gaussian_learned"):
        return x / 16.0, {}
    if likelihood == "categorical":
        return (x / 4).floor(), {"n_classes": 5}
    return x, {}
