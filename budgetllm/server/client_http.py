"""HTTP plumbing of RemoteLLM: retries with backoff, and server errors turned back into exceptions.

Torch-free and FastAPI-free (httpx only). The server's errors come back as the same budgetllm
exceptions a local LLM raises (PromptTooLongError, InvalidRequestError, PoolExhaustedError, ...),
so code written against a local LLM handles a remote one unchanged.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from budgetllm.errors import (
    BudgetLLMError,
    InvalidRequestError,
    ModelNotFoundError,
    PoolExhaustedError,
    PromptTooLongError,
)

# Errors raised before the server could have started the work: safe to send again.
RETRYABLE_EXCEPTIONS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.RemoteProtocolError)
# Gateway answers of a proxy or router (Ray Serve, nginx) while a replica starts or is replaced.
RETRYABLE_STATUS = (502, 503, 504)
MAX_BACKOFF_S = 8.0


class RemoteError(BudgetLLMError, RuntimeError):
    """The server answered with an error that has no more specific budgetllm type."""

    def __init__(self, status: int, message: str, code: str | None = None):
        self.status, self.code, self.message = status, code, message
        super().__init__(f"server answered {status}" + (f" ({code})" if code else "") + f": {message}")


class AuthenticationError(RemoteError, PermissionError):
    """401/403: the server wants an API key (``RemoteLLM(..., api_key=...)``) or a different one."""


class ServerUnavailableError(RemoteError, ConnectionError):
    """The server could not be reached, even after the retries."""


def _error_body(text: str) -> dict[str, Any]:
    try:
        err = json.loads(text).get("error")
    except (json.JSONDecodeError, AttributeError):
        err = None
    if isinstance(err, dict):
        return err
    return {"message": (str(err) if err else text[:500]) or "(empty body)"}


def error_from_payload(status: int, err: dict[str, Any]) -> BudgetLLMError:
    """The exception a local LLM would have raised for this server error."""
    message, code, param = str(err.get("message", "")), err.get("code"), err.get("param")
    if code == "context_length_exceeded" and "prompt_tokens" in err and "max_context" in err:
        return PromptTooLongError(int(err["prompt_tokens"]), int(err["max_context"]))
    if code == "kv_pool_exhausted":
        return PoolExhaustedError(message)
    if code == "model_not_found":
        return ModelNotFoundError(message)
    if status in (401, 403):
        return AuthenticationError(status, message, code)
    if 400 <= status < 500 and status not in (404, 405, 408, 429):
        field = param or "request"
        # The server's message already starts with "field: " (InvalidRequestError's format).
        return InvalidRequestError(field, message.removeprefix(f"{field}: "))
    return RemoteError(status, message, code)


def raise_for_response(status: int, text: str) -> None:
    if status >= 400:
        raise error_from_payload(status, _error_body(text))


def _retryable_status(status: int, text: str) -> bool:
    return status in RETRYABLE_STATUS and _error_body(text).get("code") != "kv_pool_exhausted"


def _delay(backoff: float, attempt: int) -> float:
    # Exponential with jitter, so that many clients retrying after a restart do not stampede.
    return min(MAX_BACKOFF_S, backoff * (2**attempt)) * (0.5 + random.random() / 2)


def send_with_retries(
    send: Callable[[], httpx.Response], *, max_retries: int, backoff: float, url: str
) -> httpx.Response:
    """Call ``send`` (which may return a streaming response) until it connects or retries run out."""
    last: BaseException | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            time.sleep(_delay(backoff, attempt - 1))
        try:
            resp = send()
        except RETRYABLE_EXCEPTIONS as e:
            last = e
            continue
        if attempt < max_retries and _retryable_status(resp.status_code, _peek(resp)):
            resp.close()
            last = RemoteError(resp.status_code, "gateway error")
            continue
        return resp
    raise ServerUnavailableError(0, f"cannot reach {url} after {max_retries + 1} attempts: {last!r}") from last


async def asend_with_retries(
    send: Callable[[], Awaitable[httpx.Response]], *, max_retries: int, backoff: float, url: str
) -> httpx.Response:
    last: BaseException | None = None
    for attempt in range(max_retries + 1):
        if attempt:
            await asyncio.sleep(_delay(backoff, attempt - 1))
        try:
            resp = await send()
        except RETRYABLE_EXCEPTIONS as e:
            last = e
            continue
        if attempt < max_retries and resp.status_code in RETRYABLE_STATUS:
            await resp.aread()
            if _retryable_status(resp.status_code, resp.text):
                await resp.aclose()
                last = RemoteError(resp.status_code, "gateway error")
                continue
        return resp
    raise ServerUnavailableError(0, f"cannot reach {url} after {max_retries + 1} attempts: {last!r}") from last


def _peek(resp: httpx.Response) -> str:
    """The body of an error response (read in full: error bodies are small)."""
    if resp.status_code not in RETRYABLE_STATUS:
        return ""
    resp.read()
    return resp.text


def iter_sse_data(lines: Any) -> Any:
    """``data:`` payloads of an SSE stream (other fields and comments are skipped)."""
    for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


async def aiter_sse_data(lines: Any) -> Any:
    async for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()
