"""Fixtures for the retrofit tests: tiny random models (CPU, float32)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_loaded(tiny_dir):
    """tiny_loaded(dms=None, arch="llama", window=8) -> a LoadedModel (fresh per call, weights cached on disk)."""
    from budgetllm.models import load_model

    def make(dms=None, arch="llama", **kw):
        return load_model(str(tiny_dir(arch, dms, **kw)), device="cpu", progress=False)

    return make


@pytest.fixture
def rows():
    def make(n=12, T=64, seed=0):
        return torch.randint(0, 49152, (n, T), generator=torch.Generator().manual_seed(seed))

    return make
