"""Which torch device to run on: one place for the names users give."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """`"auto"` is CUDA when available, else the CPU; a device this machine lacks is a
    ValueError that says so (torch's own errors are an assertion deep in its CUDA setup)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps"
                         ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: CUDA is not available on this machine (torch "
                         f"{torch.__version__}); use cpu, or auto to take a GPU when there is one")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} "
                         f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available on this machine; use cpu")
    return dev
