"""Malformed requests get a 4xx with a clear message, and the server keeps answering afterwards."""

from __future__ import annotations

import httpx
import pytest
from conftest import API_KEY

OK_BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def post(server, body=None, *, content=None, headers=None, path="/v1/chat/completions"):
    return httpx.post(server.url + path, json=body, content=content, headers=headers, timeout=10)


def assert_still_serving(server, headers=None):
    assert httpx.get(server.url + "/health", timeout=5).json()["status"] == "ok"
    r = post(server, OK_BODY, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("echo0:hi")


def error_of(r: httpx.Response) -> dict:
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"\xff\xfe", b'"a string"'])
def test_bad_json(server, content):
    r = post(server, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["code"] == "invalid_json"
    assert_still_serving(server)


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0"),
        ({"max_tokens": "many"}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stream": "yes please"}, "stream"),
        ({"n": 2}, "n"),
        ({"thinking_budget": -5}, "thinking_budget"),
        ({"thinking_budget": 2.5}, "thinking_budget"),
        ({"compression": 0}, "compression"),
        ({"compression": -2}, "compression"),
        ({"compression": 0.5}, "compression"),
        ({"compression": "max"}, "compression"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
        ({"stop": [""]}, "stop"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"agent_budget": {"tokens_left": -1}}, "agent_budget.tokens_left"),
    ],
)
def test_wrong_types_and_ranges(server, patch, param):
    r = post(server, {**OK_BODY, **patch})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error"
    assert err["param"].startswith(param), err
    assert param.split(".")[0] in err["message"]
    assert server.llm.calls == []  # refused at the edge: the engine never saw it
    assert_still_serving(server)


def test_errors_raised_by_the_engine(server):
    too_long = {**OK_BODY, "messages": [{"role": "user", "content": "word " * 100}]}
    for stream in (False, True):
        r = post(server, {**too_long, "stream": stream})
        assert r.status_code == 400, r.text
        err = error_of(r)
        assert err["code"] == "context_length_exceeded" and err["prompt_tokens"] == 102 and err["max_context"] == 64
        assert "shorten the prompt" in err["message"]

    r = post(server, {**OK_BODY, "policy_tier": "nope"})
    assert r.status_code == 400 and error_of(r)["param"] == "policy_tier"

    r = post(server, {**OK_BODY, "messages": [{"role": "user", "content": "please explode"}]})
    assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
    assert "boom" not in r.text  # internals stay in the server log

    r = post(server, {**OK_BODY, "messages": [{"role": "user", "content": "pool is full"}]})
    assert r.status_code == 503 and error_of(r)["code"] == "kv_pool_exhausted"
    assert_still_serving(server)


def test_api_key(keyed_server):
    good = {"Authorization": f"Bearer {API_KEY}"}
    for headers in (None, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}, {"Authorization": "Basic x"}):
        r = post(keyed_server, OK_BODY, headers=headers)
        assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/v1/models", "/metrics"):
        assert httpx.get(keyed_server.url + path, timeout=5).status_code == 401
        assert httpx.get(keyed_server.url + path, headers=good, timeout=5).status_code == 200
    assert keyed_server.llm.calls == []
    assert_still_serving(keyed_server, headers=good)


def test_request_size_limit(keyed_server):
    good = {"Authorization": f"Bearer {API_KEY}"}
    big = {**OK_BODY, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = post(keyed_server, big, headers=good)
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunked():  # no content-length: the limit is counted while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'

    r = httpx.post(keyed_server.url + "/v1/chat/completions", content=chunked(), headers=good, timeout=10)
    assert r.status_code == 413
    assert_still_serving(keyed_server, headers=good)


def test_unknown_route_and_method(server):
    r = httpx.get(server.url + "/v1/nothing", timeout=5)
    assert r.status_code == 404 and error_of(r)
    r = httpx.get(server.url + "/v1/chat/completions", timeout=5)
    assert r.status_code == 405
    r = httpx.get(server.url + "/v1/models/other-model", timeout=5)
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"


def test_cors_off_by_default_and_on_when_asked(fake):
    from srv_live import LiveServer

    from budgetllm.server.app import create_app

    pre = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with LiveServer(create_app(fake)) as srv:
        r = httpx.options(srv.url + "/v1/chat/completions", headers=pre, timeout=5)
        assert "access-control-allow-origin" not in r.headers
    with LiveServer(create_app(fake, cors_origins=["https://app.example"])) as srv:
        r = httpx.options(srv.url + "/v1/chat/completions", headers=pre, timeout=5)
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_error_after_the_stream_started(server):
    """The 200 is already sent: the error travels as an SSE error event, which clients raise."""
    import openai

    body = {**OK_BODY, "messages": [{"role": "user", "content": "crash now"}], "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=10) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert '"error"' in lines[-2] and "internal_error" in lines[-2] and lines[-1] == "data: [DONE]"
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=10)
    with pytest.raises(openai.APIError):
        list(c.chat.completions.create(model="fake-model", messages=body["messages"], stream=True))
    from budgetllm.server.client import RemoteError, RemoteLLM

    with pytest.raises(RemoteError, match="internal server error"):
        list(RemoteLLM(server.url).stream("crash now"))
    assert_still_serving(server)
