"""Shared fixtures: tiny random checkpoints of every supported family, and the embedded model."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on CPU; triton reads this when kernels are defined,
    # so it must be set before anything imports budgetllm.kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """tiny_dir(arch, dms=None, **overrides) -> a checkpoint directory (cached per session)."""
    from budgetllm.models.testing import make_tiny_checkpoint

    cache: dict = {}

    def make(arch: str = "llama", dms: str | None = None, **overrides):
        key = (arch, dms, tuple(sorted(overrides.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"tiny-{arch}-{dms}")
            cache[key] = make_tiny_checkpoint(path, arch, dms, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llm(tiny_dir):
    """tiny_llm(arch, dms=None) -> an LLM on the reference backend, float32, CPU (cached)."""
    from budgetllm import LLM

    cache: dict = {}

    def make(arch: str = "llama", dms: str | None = None, **kw):
        key = (arch, dms, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = LLM.from_pretrained(str(tiny_dir(arch, dms)), backend="reference", device="cpu",
                                             progress=False, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def embedded_llm():
    from budgetllm import get_llm

    return get_llm(None, backend="reference", device="cpu", progress=False)
