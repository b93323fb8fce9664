"""``RemoteLLM``: the LLM surface (generate, stream, agenerate, astream, count_tokens, ...) over HTTP.

It talks to ``budgetllm serve`` and returns the same Generation / StreamEvent records as a local
LLM, usage included (reasoning tokens, KV memory, the budget plan), so ChatDMS and agents run
unchanged against a server. Needs only httpx: no torch, no FastAPI.

Cancellation crosses the wire: closing a ``stream()``/``astream()`` iterator closes the HTTP
connection, and the server cancels the request when its client goes away.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from budgetllm.errors import InvalidRequestError
from budgetllm.policy.base import ModelProfile
from budgetllm.policy.shipped import shipped_calibration
from budgetllm.server import wire
from budgetllm.server.client_http import (
    AuthenticationError,
    RemoteError,
    ServerUnavailableError,
    aiter_sse_data,
    asend_with_retries,
    error_from_payload,
    iter_sse_data,
    raise_for_response,
    send_with_retries,
)
from budgetllm.types import Generation, StreamEvent

__all__ = ["RemoteLLM", "RemoteError", "AuthenticationError", "ServerUnavailableError"]

# The generate() options that travel to the server (the rest of LLM's options cannot).
WIRE_OPTIONS = frozenset({
    "max_tokens", "thinking_budget", "answer_reserve", "compression", "reasoning_effort", "temperature",
    "top_p", "top_k", "seed", "stop", "tools", "tool_choice", "policy_tier", "agent_budget", "tool_name",
    "response_format",
})


class RemoteLLM:
    """An LLM served by ``budgetllm serve`` at ``base_url`` (with or without the ``/v1`` suffix).

    timeout: seconds to wait for a response (a long thinking call can take minutes).
    max_retries / backoff: connection errors and gateway errors (502/503/504) are retried with
    exponential backoff starting at ``backoff`` seconds; 4xx errors are never retried.
    """

    tokenizer = None  # the tokenizer lives on the server; use count_tokens()

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 600.0,
                 connect_timeout: float = 10.0, max_retries: int = 3, backoff: float = 0.5,
                 headers: dict[str, str] | None = None):
        base = base_url.rstrip("/")
        self.base_url = base[:-3] if base.endswith("/v1") else base
        self.max_retries, self.backoff = max_retries, backoff
        self._headers = dict(headers or {})
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._client = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
        # httpx.AsyncClient is bound to the event loop it first ran on: keep one per loop.
        self._aclients: weakref.WeakKeyDictionary[Any, httpx.AsyncClient] = weakref.WeakKeyDictionary()
        self._card: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RemoteLLM(base_url={self.base_url!r})"

    # ---------------------------------------------------------------- model information

    def _model_card(self) -> dict[str, Any]:
        if self._card is None:
            resp = self._send("GET", "/v1/models")
            raise_for_response(resp.status_code, resp.text)
            self._card = (resp.json().get("data") or [{}])[0]
        return self._card

    @property
    def model_name(self) -> str:
        return str(self._model_card().get("id", ""))

    @property
    def max_context(self) -> int:
        return int(self._model_card().get("max_context") or 0)

    @property
    def profile(self) -> ModelProfile:
        known = {f.name for f in dataclasses.fields(ModelProfile)}
        d = {k: v for k, v in (self._model_card().get("profile") or {}).items() if k in known}
        profile = ModelProfile(**d)  # the calibration table is not sent: it is package data on both sides
        return dataclasses.replace(profile, calibration=shipped_calibration(profile.name))

    def count_tokens(self, messages: str | list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> int:
        body: dict[str, Any] = {"messages": _wire_messages(messages)}
        if tools:
            body["tools"] = tools
        resp = self._send("POST", "/v1/tokenize", json=body)
        raise_for_response(resp.status_code, resp.text)
        return int(resp.json()["count"])

    def health(self) -> dict[str, Any]:
        resp = self._send("GET", "/health")
        raise_for_response(resp.status_code, resp.text)
        return resp.json()

    def pool_stats(self) -> dict[str, float]:
        """The server's pool gauges, read back from /metrics (keys as in LLM.pool_stats)."""
        resp = self._send("GET", "/metrics")
        raise_for_response(resp.status_code, resp.text)
        names = {"budgetllm_kv_pages_total": "pages_total", "budgetllm_kv_pages_free": "pages_free",
                 "budgetllm_kv_pages_used": "pages_used", "budgetllm_requests_active": "active",
                 "budgetllm_requests_queued": "queued", "budgetllm_engine_tokens_generated_total": "tokens_generated",
                 "budgetllm_compression_achieved": "compression_achieved_mean"}
        out: dict[str, float] = {}
        for line in resp.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in names:
                out[names[name]] = float(line.rsplit(" ", 1)[1])
        return out

    # ---------------------------------------------------------------- calls

    def _body(self, messages: Any, opts: dict[str, Any], stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"messages": _wire_messages(messages), "stream": stream, "return_token_ids": True}
        if stream:
            body["stream_options"] = {"include_usage": True}
        for key, value in opts.items():
            if value is None:
                continue
            if key == "policy":
                raise InvalidRequestError(
                    "policy", "a policy object cannot be sent to a server; start the server with "
                    "--policy FILE and pick a tier per call with policy_tier=...")
            if key not in WIRE_OPTIONS:
                raise InvalidRequestError(key, f"unknown option; RemoteLLM sends {sorted(WIRE_OPTIONS)}")
            if key == "agent_budget" and dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            body[key] = value
        return body

    def generate(self, messages: Any, **opts: Any) -> Generation:
        resp = self._send("POST", "/v1/chat/completions", json=self._body(messages, opts, stream=False))
        raise_for_response(resp.status_code, resp.text)
        return wire.generation_from_response(resp.json())

    async def agenerate(self, messages: Any, **opts: Any) -> Generation:
        resp = await self._asend("POST", "/v1/chat/completions", json=self._body(messages, opts, stream=False))
        raise_for_response(resp.status_code, resp.text)
        return wire.generation_from_response(resp.json())

    def stream(self, messages: Any, **opts: Any) -> Iterator[StreamEvent]:
        body = self._body(messages, opts, stream=True)  # bad options raise here, not at first next()
        return self._stream(body)

    def _stream(self, body: dict[str, Any]) -> Iterator[StreamEvent]:
        resp = self._send("POST", "/v1/chat/completions", json=body, stream=True)
        try:
            if resp.status_code >= 400:
                resp.read()
                raise_for_response(resp.status_code, resp.text)
            assembler = wire.StreamAssembler()
            for data in iter_sse_data(resp.iter_lines()):
                if data == "[DONE]":
                    yield assembler.done()
                    return
                yield from assembler.feed(_chunk(data))
            raise RemoteError(resp.status_code, "the stream ended before [DONE] (server stopped?)")
        finally:
            resp.close()  # early close (GeneratorExit) drops the connection: the server cancels

    def astream(self, messages: Any, **opts: Any) -> AsyncIterator[StreamEvent]:
        return self._astream(self._body(messages, opts, stream=True))

    async def _astream(self, body: dict[str, Any]) -> AsyncIterator[StreamEvent]:
        resp = await self._asend("POST", "/v1/chat/completions", json=body, stream=True)
        try:
            if resp.status_code >= 400:
                await resp.aread()
                raise_for_response(resp.status_code, resp.text)
            assembler = wire.StreamAssembler()
            async for data in aiter_sse_data(resp.aiter_lines()):
                if data == "[DONE]":
                    yield assembler.done()
                    return
                for ev in assembler.feed(_chunk(data)):
                    yield ev
            raise RemoteError(resp.status_code, "the stream ended before [DONE] (server stopped?)")
        finally:
            await resp.aclose()

    # ---------------------------------------------------------------- transport

    def _send(self, method: str, path: str, *, json: Any = None, stream: bool = False) -> httpx.Response:
        request = self._client.build_request(method, path, json=json)
        return send_with_retries(lambda: self._client.send(request, stream=stream), max_retries=self.max_retries,
                                 backoff=self.backoff, url=self.base_url + path)

    async def _asend(self, method: str, path: str, *, json: Any = None, stream: bool = False) -> httpx.Response:
        client = self._aclient()
        request = client.build_request(method, path, json=json)
        return await asend_with_retries(lambda: client.send(request, stream=stream), max_retries=self.max_retries,
                                        backoff=self.backoff, url=self.base_url + path)

    def _aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._aclients.get(loop)
        if client is None:
            client = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)
            self._aclients[loop] = client
        return client

    def close(self) -> None:
        self._client.close()

    async def aclose(self) -> None:
        client = self._aclients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def __enter__(self) -> RemoteLLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _chunk(data: str) -> dict[str, Any]:
    d = json.loads(data)
    if isinstance(d, dict) and "error" in d:  # an error after the stream started
        err = d["error"] if isinstance(d["error"], dict) else {"message": str(d["error"])}
        raise error_from_payload(500, err)
    return d


def _wire_messages(messages: Any) -> list[dict[str, Any]] | str:
    """A str prompt is one user message; message dicts pass as they are (arguments made JSON)."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    out = []
    for m in messages:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [_wire_tool_call(tc) for tc in m["tool_calls"]]
        out.append(m)
    return out


def _wire_tool_call(tc: dict[str, Any]) -> dict[str, Any]:
    fn = dict(tc.get("function") or {})
    if not isinstance(fn.get("arguments", "{}"), str):
        fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
    return {"id": tc.get("id", ""), "type": "function", "function": fn}
