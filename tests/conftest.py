"""Shared test set-up: one torch thread (the suite runs beside other jobs on 2 cores) and
a fixed seed before every test."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
