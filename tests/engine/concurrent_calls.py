"""Run calls on threads at once (concurrent requests against one engine), for the engine tests."""

from __future__ import annotations

import threading
from collections.abc import Callable


def run_concurrently(fn: Callable[[int], object], n: int, timeout: float = 120.0) -> tuple[dict, list]:
    """``fn(i)`` for i in range(n), each on its own thread, all started before any is joined.

    Returns ({i: result} of the calls that returned, [exceptions raised by the others])."""
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = fn(i)
        except Exception as e:  # noqa: BLE001 - the test decides what a failure means
            errors.append(e)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return results, errors
