"""Streaming and cancellation: SSE chunks from StreamEvents, and requests cancelled on disconnect.

Why this file exists: Starlette's StreamingResponse stops *sending* when the client goes away,
but it leaves the body generator suspended, so the engine would keep decoding for nobody until
the generator is garbage-collected. Here the body generator is always closed (``aclose``), and
closing it closes the LLM's ``astream`` iterator, which is how the engine cancels a request.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import StreamingResponse

from budgetllm.server import wire
from budgetllm.types import InvalidToolCall, StreamEvent, ToolCall

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started."""


async def race_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (then raise ClientGone).

    Used for non-streamed calls and for a stream's first event, before any byte is sent.
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    # Let the engine see the cancellation (its finally blocks run) before we report it.
    await asyncio.gather(task, return_exceptions=True)
    raise ClientGone()


class ClosingStreamingResponse(StreamingResponse):
    """A StreamingResponse that always closes its body iterator, even when the client left."""

    async def stream_response(self, send: Callable[..., Any]) -> None:
        try:
            await super().stream_response(send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                # Shielded: we may be running inside the cancelled scope of the disconnect.
                with anyio.CancelScope(shield=True):
                    await aclose()


class ChunkWriter:
    """StreamEvents -> OpenAI ``chat.completion.chunk`` SSE events for one response."""

    def __init__(self, *, id: str, created: int, model: str, include_usage: bool, token_ids: bool) -> None:
        self.id, self.created, self.model = id, created, model
        self.include_usage = include_usage
        self.token_ids = token_ids
        self.tool_index = 0
        self.streamed: dict[int, int] = {}  # engine call index -> wire index of a call sent in pieces
        self.streamed_ids: set[str] = set()

    def _chunk(self, delta: dict[str, Any] | None = None, finish_reason: str | None = None) -> dict[str, Any]:
        return wire.chunk(id=self.id, created=self.created, model=self.model, delta=delta, finish_reason=finish_reason)

    def start(self) -> bytes:
        # OpenAI's first chunk carries only the role.
        return wire.sse(self._chunk({"role": "assistant", "content": ""}))

    def _piece(self, d: Any) -> dict[str, Any]:
        """OpenAI's streamed ``delta.tool_calls`` item: index, id, type and name first, then
        ``function.arguments`` pieces that the client concatenates per index."""
        if d.index not in self.streamed:
            self.streamed[d.index] = self.tool_index
            self.tool_index += 1
            self.streamed_ids.add(d.id)
            return {"index": self.streamed[d.index], "id": d.id, "type": "function",
                    "function": {"name": d.name, "arguments": d.args}}
        return {"index": self.streamed[d.index], "function": {"arguments": d.args}}

    def event(self, ev: StreamEvent) -> list[bytes]:
        if ev.kind == "reasoning" and ev.text:
            return [wire.sse(self._chunk({"reasoning_content": ev.text}))]
        if ev.kind == "text" and ev.text:
            return [wire.sse(self._chunk({"content": ev.text}))]
        if ev.kind == "tool_call_delta" and ev.tool_delta is not None:
            return [wire.sse(self._chunk({"tool_calls": [self._piece(ev.tool_delta)]}))]
        if ev.kind == "tool_call" and isinstance(ev.tool_call, ToolCall) and ev.tool_call.id in self.streamed_ids:
            return []  # its pieces went out while it was written
        if ev.kind == "tool_call" and isinstance(ev.tool_call, ToolCall):
            # A complete call in one delta (OpenAI clients accumulate per index either way).
            delta = {"tool_calls": [wire.tool_call_to_wire(ev.tool_call, index=self.tool_index)]}
            self.tool_index += 1
            return [wire.sse(self._chunk(delta))]
        if ev.kind == "tool_call" and isinstance(ev.tool_call, InvalidToolCall):
            return [wire.sse(self._chunk({"invalid_tool_calls": [wire.invalid_tool_call_to_wire(ev.tool_call)]}))]
        if ev.kind == "done" and ev.generation is not None:
            gen = ev.generation
            last = self._chunk({}, finish_reason=gen.finish_reason)
            if self.token_ids:
                last["choices"][0]["prompt_token_ids"] = list(gen.prompt_token_ids)
                last["choices"][0]["token_ids"] = list(gen.token_ids)
            out = [wire.sse(last)]
            if self.include_usage:
                # OpenAI's usage chunk: no choices, only usage.
                usage_chunk = self._chunk()
                usage_chunk["choices"] = []
                usage_chunk["usage"] = wire.usage_to_wire(gen.usage)
                out.append(wire.sse(usage_chunk))
            return out
        return []


async def sse_body(
    first: StreamEvent | None,
    events: AsyncIterator[StreamEvent],
    writer: ChunkWriter,
    on_finish: Callable[[str, Any], None],
    error_payload: Callable[[BaseException], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """The SSE stream of one request. ``first`` was already taken from ``events`` (see app.py)."""
    outcome, usage = "cancelled", None
    try:
        yield writer.start()
        ev = first
        while ev is not None:
            for piece in writer.event(ev):
                yield piece
            if ev.kind == "done":
                usage = ev.generation.usage if ev.generation else None
                break
            ev = await anext(events, None)
        yield wire.sse("[DONE]")
        outcome = "ok"
    except (asyncio.CancelledError, GeneratorExit):
        raise
    except Exception as exc:  # after the 200 went out, errors travel as an SSE error event
        outcome = "error"
        yield wire.sse(error_payload(exc))
        yield wire.sse("[DONE]")
    finally:
        with anyio.CancelScope(shield=True):
            aclose = getattr(events, "aclose", None)
            if aclose is not None:
                await aclose()  # cancels the engine request when the stream did not finish
        on_finish(outcome, usage)
