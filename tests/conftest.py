"""Shared fixtures: tiny random checkpoints of every supported family, and the embedded model."""

from __future__ import annotations

import os
import re

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if not torch.cuda.is_available():
    # Triton kernels run in its interpreter on CPU; triton reads this when kernels are defined,
    # so it must be set before anything imports budgetllm.kernels.
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("OMP_NUM_THREADS"):
    # pytest-xdist (pyproject addopts: -n auto): one torch thread per worker on 2 cores, so the workers do
    # not fight over them (budgetllm.models.threads: a second thread's idle waiting costs more than it gains).
    _workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject addopts): two workers on a CPU machine of 2 cores or more (CI: 2 cores;
    the suite is mostly single-threaded Python), none (a serial run) with CUDA, where GPU tests share
    one device and read its free memory. ``PYTEST_XDIST_AUTO_NUM_WORKERS`` or ``-n N`` override."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 0 if torch.cuda.is_available() or cores < 2 else 2


def pytest_sessionstart(session):
    """With workers (-n), the controller builds the embedded model's converted-weights cache before
    they start: the first load then costs its ~1 min once, not once per worker at the same time."""
    if os.environ.get("PYTEST_XDIST_WORKER") or not getattr(session.config.option, "numprocesses", None):
        return
    if re.search(r"\bnot slow\b", session.config.option.markexpr or ""):
        return
    from budgetllm.errors import ModelNotFoundError
    from budgetllm.models import weights_cache
    from budgetllm.models.loading import _quiet_gguf_progress, embedded_model_path

    try:
        gguf = embedded_model_path()
    except ModelNotFoundError:
        return  # the tests that need it skip or fail with this error themselves
    weights_cache.converted(gguf, progress=True, quiet_gguf=_quiet_gguf_progress)


@pytest.fixture(autouse=True)
def gpu_memory_given_back(request):
    """After each GPU test, what it left to the garbage collector and to torch's cache goes back to the
    card: the next test starts from a clean device (pool sizing and the lifecycle tests read the free
    memory; an 8K training step left ~100 GiB cached before the lifecycle tests on the H200)."""
    yield
    if request.node.get_closest_marker("gpu") is not None and torch.cuda.is_available():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


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
