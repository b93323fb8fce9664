"""How many threads torch uses when budgetllm runs a model on the CPU.

Owns: the default CPU thread count and its override. Must not import: the engine, policy,
accounting, server or LangChain.

torch starts one OpenMP thread per core. For a batch-1 decode step of a small model those threads
mostly wait for each other, and on a machine whose cores are busy with other work that waiting
becomes ruinous: SmolLM2-135M decoded at 0.42 tok/s with torch's default on a busy 2-core machine
against 13.5 tok/s with one thread; on an idle 2-core machine two threads gained about 13% over one
(14.6 vs 12.9 tok/s). Measured again while this was written, 48 tokens at CR 8 on a 2-core machine
with a load average of 11: 1.3 tok/s with one thread, 0.1 with two. So budgetllm uses half the
cores it may run on, at least 1 and at most 4.

Override: ``BUDGETLLM_THREADS=N`` (``BUDGETLLM_THREADS=torch`` keeps torch's own choice); an
``OMP_NUM_THREADS`` set in the environment is respected as well. The default is applied once per
process, at the first CPU load; ``torch.set_num_threads(n)`` after loading changes it again.
"""

from __future__ import annotations

import os

ENV = "BUDGETLLM_THREADS"
MAX_DEFAULT = 4
_applied = False


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def default_threads(cores: int | None = None) -> int:
    cores = available_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT, cores // 2))


def chosen_threads(env: dict[str, str] | None = None, cores: int | None = None) -> int | None:
    """The thread count to set, or None to leave torch alone."""
    env = os.environ if env is None else env
    value = env.get(ENV, "").strip()
    if value:
        if value.lower() == "torch":
            return None
        if not value.isdigit() or int(value) < 1:
            from budgetllm.errors import InvalidRequestError

            raise InvalidRequestError(ENV, f"must be a positive integer or 'torch', got {value!r}")
        return int(value)
    if env.get("OMP_NUM_THREADS"):
        return None  # the user (or their launcher) already chose
    return default_threads(cores)


def apply_default_threads() -> int:
    """Set torch's thread count once per process (see the module docstring); returns the count."""
    global _applied
    import torch

    if not _applied:
        _applied = True
        n = chosen_threads()
        if n is not None:
            torch.set_num_threads(n)
    return torch.get_num_threads()
