"""Shared test set-up: one torch thread (the suite runs beside other jobs on 2 cores), a
fixed seed before every test, and the CPU as device "auto" outside test_gpu.py."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _auto_is_the_cpu(request, monkeypatch) -> None:
    """Outside test_gpu.py (which compares the devices), device "auto" is the CPU, in the
    process and in the commands a test starts: the tests' CPU references (same-seed draws,
    float32 sums at rtol 1e-5) then hold on a machine with a GPU too. Tests that fake a
    GPU patch over this."""
    if request.module.__name__.rpartition(".")[2] == "test_gpu":
        return
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
