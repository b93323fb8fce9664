"""``create_app``: an OpenAI-compatible FastAPI app around one LLM (one engine, one model).

Routes: POST /v1/chat/completions (SSE when ``stream``), GET /v1/models, POST /v1/tokenize (a
budgetllm extra RemoteLLM uses for count_tokens), GET /health, GET /metrics (Prometheus text).

Request bodies are read and parsed here rather than by FastAPI's body injection, so that bad JSON,
oversized bodies and wrong types all get OpenAI-style 4xx errors (``{"error": {...}}``) with a
message naming the field, instead of FastAPI's 422 lists.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import os
import time
import uuid
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from budgetllm.errors import (
    BudgetLLMError,
    InvalidRequestError,
    ModelNotFoundError,
    PoolExhaustedError,
    PromptTooLongError,
)
from budgetllm.server import wire
from budgetllm.server.http_body import APIError, ClientLeft, check_options, read_json
from budgetllm.server.metrics import ServerMetrics, render_metrics
from budgetllm.server.schemas import ChatCompletionRequest, TokenizeRequest, describe_validation_error
from budgetllm.server.streaming import (
    ChunkWriter,
    ClientGone,
    ClosingStreamingResponse,
    race_disconnect,
    sse_body,
)

log = logging.getLogger("budgetllm.server")

DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024  # a 128k-token prompt is ~0.5 MB of text; 4 MB leaves room


def api_error_for(exc: BaseException) -> APIError:
    """Engine errors -> HTTP errors. The server keeps serving after every one of them."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, PromptTooLongError):
        return APIError(400, str(exc), param="messages", code="context_length_exceeded",
                        prompt_tokens=exc.prompt_tokens, max_context=exc.max_context)
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), param=exc.field, code="invalid_value")
    if isinstance(exc, ModelNotFoundError):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, PoolExhaustedError):
        # The request cannot fit the KV pool even alone; smaller ones still run (errors.py).
        return APIError(503, str(exc), type="server_error", code="kv_pool_exhausted")
    if isinstance(exc, BudgetLLMError):
        return APIError(500, f"{type(exc).__name__}: {exc}", type="server_error", code="engine_error")
    log.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(500, f"internal server error ({type(exc).__name__}); see the server log",
                    type="server_error", code="internal_error")


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        message, param = describe_validation_error(e)
        raise APIError(400, message, param=param, code="invalid_value") from None


async def _final_generation(events: Any) -> Any:
    try:
        async for ev in events:
            if ev.kind == "done":
                return ev.generation
    finally:
        await _close(events)  # also when cancelled: closing is what cancels the engine request
    raise RuntimeError("the engine's stream ended without a 'done' event")


async def _close(events: Any) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def _profile_dict(profile: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(profile) and not isinstance(profile, type):
        d = {f.name: getattr(profile, f.name) for f in dataclasses.fields(profile) if f.name != "calibration"}
        return wire.json_safe(d)
    return {}


def create_app(
    llm: Any,
    policy: Any = None,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    cors_origins: list[str] | None = None,
    served_model_name: str | None = None,
) -> FastAPI:
    """The app serving ``llm`` (anything with LLM's surface: agenerate, astream, count_tokens, ...).

    policy: a BudgetPolicy applied to every request (a request's ``policy_tier`` picks a tier of it).
    api_key: when set, every route except /health needs ``Authorization: Bearer <api_key>``.
    cors_origins: origins allowed by CORS; None (the default) adds no CORS headers at all.
    """
    if isinstance(max_request_bytes, bool) or not isinstance(max_request_bytes, int) or max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be a positive integer, got {max_request_bytes!r}")
    model_name = served_model_name or getattr(llm, "model_name", "budgetllm")
    served_names = {model_name, getattr(llm, "model_name", model_name)}
    metrics = ServerMetrics()
    app = FastAPI(title="budgetllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.llm, app.state.metrics = llm, metrics

    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.payload(), status_code=exc.status, headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        err = APIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None)
        return JSONResponse(err.payload(), status_code=exc.status_code)

    @app.exception_handler(ClientLeft)
    async def _client_left(request: Request, exc: ClientLeft) -> Response:
        metrics.count("cancelled")
        log.debug("client disconnected while sending its request body")
        return Response(status_code=499)  # nobody reads it

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        metrics.count("error")  # an uncaught bug is still counted and answered in JSON
        err = api_error_for(exc)
        return JSONResponse(err.payload(), status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, str(exc.errors())[:500]).payload(), status_code=400)

    async def check_key(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            metrics.count("unauthorized")
            raise APIError(401, "missing or wrong API key; send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    auth = [Depends(check_key)]

    @app.get("/health")
    async def health() -> dict[str, Any]:
        # pid: tells replicas apart behind a router (Ray Serve), for operators and tests.
        return {"status": "ok", "model": model_name, "pid": os.getpid()}

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": 0, "owned_by": "budgetllm",
                "max_context": int(getattr(llm, "max_context", 0) or 0),
                "profile": _profile_dict(getattr(llm, "profile", None))}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise APIError(404, f"this server serves {model_name!r}, not {model_id!r}", param="model",
                           code="model_not_found")
        return model_card()

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> PlainTextResponse:
        pool = llm.pool_stats() if hasattr(llm, "pool_stats") else {}
        return PlainTextResponse(render_metrics(metrics, pool or {}, model_name),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/tokenize", dependencies=auth)
    async def tokenize(request: Request) -> dict[str, Any]:
        req = _parse(TokenizeRequest, await read_json(request, max_request_bytes))
        messages = req.messages if isinstance(req.messages, str) else [m.to_engine() for m in req.messages]
        tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None
        try:
            # Off the event loop: templating and tokenizing a long prompt takes a while.
            count = await run_in_threadpool(llm.count_tokens, messages, tools=tools)
        except Exception as e:
            raise api_error_for(e) from None
        return {"count": int(count), "max_context": int(getattr(llm, "max_context", 0) or 0)}

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Any:
        try:
            req: ChatCompletionRequest = _parse(ChatCompletionRequest, await read_json(request, max_request_bytes))
        except APIError:
            metrics.count("client_error")
            raise
        try:
            if req.model and req.model not in served_names:
                raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                               param="model", code="model_not_found")
            messages, opts = req.engine_messages(), req.engine_options()
            check_options(opts, policy if policy is not None else getattr(llm, "policy", None))
        except APIError:
            metrics.count("client_error")
            raise
        if policy is not None:
            opts["policy"] = policy
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        metrics.start()
        if not req.stream:
            # Not llm.agenerate: it may run in a worker thread that a task cancel cannot stop,
            # while closing astream cancels the engine request when the client goes away.
            events = llm.astream(messages, **opts)
            try:
                gen = await race_disconnect(request, _final_generation(events))
            except ClientGone:
                await _close(events)
                metrics.finish("cancelled")
                return JSONResponse({}, status_code=499)  # nobody reads it; nginx's "client closed"
            except Exception as e:
                await _close(events)
                err = api_error_for(e)
                metrics.finish("client_error" if err.status < 500 else "error")
                raise err from None
            metrics.finish("ok", gen.usage)
            return wire.response_from_generation(gen, id=rid, created=created, model=model_name,
                                                 token_ids=req.return_token_ids)

        # Streamed: take the first event before answering, so that errors the engine raises on
        # admission (prompt too long, bad budget) are still a 4xx and not an error inside a 200.
        events = llm.astream(messages, **opts)
        try:
            first = await race_disconnect(request, anext(events, None))
        except ClientGone:
            await _close(events)
            metrics.finish("cancelled")
            return JSONResponse({}, status_code=499)
        except Exception as e:
            await _close(events)
            err = api_error_for(e)
            metrics.finish("client_error" if err.status < 500 else "error")
            raise err from None
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        writer = ChunkWriter(id=rid, created=created, model=model_name, include_usage=include_usage,
                             token_ids=req.return_token_ids)
        body = sse_body(first, events, writer, metrics.finish, lambda e: api_error_for(e).payload())
        return ClosingStreamingResponse(body, media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app
