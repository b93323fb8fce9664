"""Kernel tests: on a machine without CUDA the Triton kernels run in the interpreter.

TRITON_INTERPRET is read when ``@triton.jit`` decorates (triton's own library too), so it must be
set before triton is first imported: here for ``pytest tests/kernels``; a whole-suite run needs the
same two lines at the top of tests/conftest.py (another package may import triton first).
Every tensor made by ``torch.empty``/``empty_like`` during a test is poisoned (NaN / garbage
ints), so kernels that leave outputs unwritten fail loudly.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

_empty, _empty_like = torch.empty, torch.empty_like
# ``with torch.device("cuda"):`` (budgetllm.models.testing.random_model) moves factory calls to the
# device only for the functions in torch's list of constructors, a set built once, at the first call
# under such a context. Built while the poison below replaces ``torch.empty``, it would hold the
# wrapper, not torch.empty itself: every torch.empty inside the context (nn.Linear's weights) then
# stayed on the CPU (the H200 run of f44dd4d: a 1.5B model built and initialised on the CPU, ~60 s per
# test, then "Expected a 'cpu' device type for generator"). One call here builds it with the real ones.
with torch.device("cpu"):
    torch.empty(0)


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        t.fill_(float("nan"))
    elif t.dtype != torch.bool:
        t.fill_(-123457 if t.element_size() >= 4 else -77)
    return t


@pytest.fixture(autouse=True)
def nan_poison_empty(monkeypatch):
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(_empty_like(*a, **k)))
    yield
