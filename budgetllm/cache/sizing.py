"""How many bytes the paged KV pool may take: ``gpu_memory_utilization`` of the card's TOTAL memory.

As in vLLM, ``gpu_memory_utilization`` (default 0.85) is the fraction of the whole GPU this engine
may use in all: its weights, activations and CUDA graphs included. The pool gets what is left of
that share once the memory this process already holds (the model just loaded, other LLMs of the
same process) and a headroom for activations are taken off, and never more than what is free on
the card now (other processes). Sizing from *free* memory instead (the old rule) let each new LLM
take 85% of what the previous ones left, until one got a pool of 0 pages.

A model that does not fit gets an ``InvalidRequestError`` whose field is ``gpu_memory_utilization``
and whose message says what to change. Torch-free: the numbers come from the caller.
"""

from __future__ import annotations

from budgetllm.errors import InvalidRequestError

DEFAULT_GPU_MEMORY_UTILIZATION = 0.85
GIB = 1 << 30


def kv_pool_budget(*, total: int, free: int, held: int, utilization: float, headroom: int) -> int:
    """Bytes the KV pool (pages and their metadata) may take; may be <= 0 when nothing fits."""
    check_utilization(utilization)
    share = int(total * utilization) - held - headroom
    return min(share, free - headroom)


def check_utilization(utilization: float) -> float:
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise InvalidRequestError("gpu_memory_utilization", f"must be a fraction in (0, 1], got {utilization!r}")
    return float(utilization)


def too_small_error(*, pages: int, needed: int, page_bytes: int, total: int, free: int, held: int,
                    utilization: float, headroom: int) -> InvalidRequestError:
    """The error for a pool that cannot hold even two sequences, naming the setting to change."""
    return InvalidRequestError(
        "gpu_memory_utilization",
        f"the KV pool would get {pages} pages but needs at least {needed} "
        f"({needed * page_bytes / GIB:.2f} GiB): gpu_memory_utilization={utilization:g} of {total / GIB:.1f} GiB "
        f"is {total * utilization / GIB:.1f} GiB, of which this process already holds {held / GIB:.1f} GiB "
        f"(models loaded so far) and {headroom / GIB:.1f} GiB stay free for activations; "
        f"{free / GIB:.1f} GiB are free on the card. Raise gpu_memory_utilization, close another LLM "
        "(llm.close() or budgetllm.release_all()), or pass num_pages",
    )
