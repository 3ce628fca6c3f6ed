"""``--device``: the GPU an aetk job claims (one job per GPU), or the CPU, saying so when the
job was given a GPU that torch cannot use."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

_GPU_LOCKS: list[Any] = []


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``, the same in every command that runs a model (`claim_device` reads it)."""
    p.add_argument("--device", default="auto", help="auto (a free GPU, else CPU), cpu, cuda:N")


def claim_device(device: str) -> str:
    """Resolve ``auto``: the first GPU no other aetk process holds (one job per GPU), else CPU;
    another device is checked (`resolve_device`: one this machine lacks is a ValueError).

    Locks are per physical GPU (by UUID) in the temp directory and last as long as the
    process, so concurrent jobs on a multi-GPU workstation spread over the GPUs. Without
    POSIX file locks (Windows) every job takes the first GPU.
    """
    import torch

    if device != "auto":
        from aetk.devices import resolve_device

        resolve_device(device)  # a device this machine lacks: its error before any output
        return device
    if not torch.cuda.is_available():
        warn_unused_gpu()
        return "cpu"
    try:
        import fcntl
    except ModuleNotFoundError:
        return "cuda:0"
    for i in range(torch.cuda.device_count()):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", i)
        path = Path(tempfile.gettempdir()) / f"aetk-gpu-{uuid}.lock"
        try:
            # read-only: flock needs no write access, so another user's lock file (0644 in
            # a shared /tmp) is no "Permission denied"
            handle = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT, 0o666))
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        _GPU_LOCKS.append(handle)
        return f"cuda:{i}"
    return "cuda:0"  # every GPU is busy: share the first rather than fall back to the CPU


def warn_unused_gpu() -> None:
    """One line on stderr when the job was given a GPU (``SLURM_JOB_GPUS`` or a
    ``CUDA``/``HIP``/``ROCR_VISIBLE_DEVICES`` names one) that torch cannot use, so that
    ``--device auto`` does not run on the CPU unsaid: a CPU-only torch build, or a CUDA
    or ROCm build that sees no device (driver)."""
    for name in ("SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                 "ROCR_VISIBLE_DEVICES"):
        value = os.environ.get(name, "").strip()
        if value and value not in ("-1", "NoDevFiles"):  # set to no device: nothing given
            break
    else:
        return
    import torch

    if getattr(torch.version, "hip", None):  # ROCm builds have no CUDA version either
        why = (f"this torch {torch.__version__} (ROCm {torch.version.hip}) sees no GPU: "
               "check the AMD driver (rocm-smi) against the build's ROCm version")
    elif torch.version.cuda is None:
        why = (f"this torch {torch.__version__} is a CPU-only build with no CUDA; install a "
               "CUDA build (`pip install torch` from PyPI on Linux, or an --index-url "
               "https://download.pytorch.org/whl/cu<version> wheel, not .../whl/cpu)")
    else:
        why = (f"this torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU: "
               "check the NVIDIA driver (nvidia-smi) against the build's CUDA version")
    print(f"warning: {name}={value} names a GPU, but --device auto runs on the CPU: {why}",
          file=sys.stderr)
