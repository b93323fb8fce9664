"""Reading a request body: size-limited, JSON, not nested too deeply; the OpenAI-style error type.

Split from ``app.py`` so that the routes stay readable; ``app`` re-exports ``APIError``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import ClientDisconnect, Request

from budgetllm.errors import InvalidRequestError
from budgetllm.options import check_policy_tier, validate_options

MAX_JSON_DEPTH = 64  # tool schemas nest a few levels; deeper bodies are refused before validation


class APIError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, **extra: Any):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.extra = extra

    def payload(self) -> dict[str, Any]:
        body = {"message": self.message, "type": self.type, "param": self.param, "code": self.code}
        return {"error": {**body, **self.extra}}


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON, refused early when larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body is {declared} bytes; this server accepts at most {limit}",
                       code="request_too_large")
    body = bytearray()
    try:
        async for part in request.stream():  # chunked bodies have no content-length: count them too
            body += part
            if len(body) > limit:
                raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
    except ClientDisconnect:
        raise ClientLeft() from None
    if not body:
        raise APIError(400, "request body is empty; send a JSON object", code="invalid_json")
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        data = _TOO_DEEP  # deeper than the parser's stack: reported below like any too-deep body
    if data is _TOO_DEEP or too_deep(data, MAX_JSON_DEPTH):
        raise APIError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels", code="invalid_json")
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


_TOO_DEEP = object()


class ClientLeft(Exception):
    """The client went away while sending its body: nothing to answer (logged at debug level)."""


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def check_options(opts: dict[str, Any], policy: Any) -> None:
    """The per-call options checked at the edge against the one contract (budgetllm.options)."""
    try:
        validate_options(**opts)
        if policy is not None:
            check_policy_tier(policy, opts.get("policy_tier"))
    except InvalidRequestError as e:
        raise APIError(400, str(e), param=e.field, code="invalid_value") from None
