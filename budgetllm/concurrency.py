"""One LLM used from many places: async streams on a worker thread, and engines shared per process.

:func:`thread_stream` runs a sync event stream (``LLM.stream``) on a worker thread as an async
iterator (``LLM.astream``); closing it cancels the requests that stream started at once, even in
the middle of a prefill (the stream reports each request with :func:`note_started`).
:func:`get_llm` / :func:`release_llm` / :func:`release_all` keep one shared LLM per (model, backend,
device, dtype) in the process (the engines ChatDMS uses).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from budgetllm.types import StreamEvent

if TYPE_CHECKING:
    from budgetllm.llm import LLM

# The requests an ``astream`` worker thread started (so that closing the stream cancels them at once).
_STARTED: contextvars.ContextVar[list | None] = contextvars.ContextVar("budgetllm_started", default=None)


def note_started(req) -> None:
    """Called by ``LLM.stream`` for each engine request: on a ``thread_stream`` worker, closing the
    async stream sets ``req.cancelled``."""
    started = _STARTED.get()
    if started is not None:
        started.append(req)


async def thread_stream(stream: Callable[..., Iterator[StreamEvent]], messages, opts: dict) -> AsyncIterator[StreamEvent]:
    """``stream(messages, **opts)`` run on a worker thread, as an async iterator; ``aclose()``
    (or cancelling the consuming task) cancels the requests it started."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    done = object()
    started: list = []  # the engine requests (GenerationRequest) the stream started
    finished = False

    def post(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the consumer's event loop is closed: nobody is listening
            stop.set()

    def worker() -> None:
        _STARTED.set(started)
        it = stream(messages, **opts)
        try:
            for event in it:
                post(event)
                if stop.is_set():
                    break
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            post(e)
        finally:
            it.close()
            post(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is done:
                finished = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        if not finished:
            for req in started:  # reaches the engine now, even in the middle of a prefill
                req.cancelled = True


_SHARED: dict[tuple, LLM] = {}
_SHARED_LOCK = threading.Lock()


def get_llm(model: str | None = None, *, backend: str | None = None, device: str | None = None,
            dtype: Any = None, **kwargs: Any) -> LLM:
    """One shared LLM per (model, backend, device, dtype) in this process; thread-safe, loads once."""
    key = (model, backend, device, str(dtype))
    from budgetllm.llm import LLM

    with _SHARED_LOCK:
        if key not in _SHARED or _SHARED[key]._closed:
            _SHARED[key] = LLM.from_pretrained(model, backend=backend, device=device, dtype=dtype, **kwargs)
        return _SHARED[key]


def release_llm(model: str | None = None, *, backend: str | None = None, device: str | None = None,
                dtype: Any = None) -> bool:
    """Close and forget the shared LLM that ``get_llm`` made for these arguments; True if there was one."""
    with _SHARED_LOCK:
        llm = _SHARED.pop((model, backend, device, str(dtype)), None)
    if llm is not None:
        llm.close()
    return llm is not None


def release_all() -> int:
    """Close every shared LLM of ``get_llm`` (ChatDMS's engines); returns how many were closed."""
    with _SHARED_LOCK:
        llms = list(_SHARED.values())
        _SHARED.clear()
    for llm in llms:
        llm.close()
    return len(llms)


__all__ = ["get_llm", "note_started", "release_all", "release_llm", "thread_stream"]
