"""What a hostile or careless client sends: each gets a 4xx naming the field (never a 5xx, never
silently ignored), and the server keeps serving (FakeLLM behind a live server)."""

from __future__ import annotations

import logging
import socket

import httpx
import pytest
from srv_live import LiveServer, wait_until
from test_bad_requests import OK_BODY, assert_still_serving, error_of, post

from budgetllm.server.app import create_app

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"seed": 2**64}, "seed"),
        ({"seed": -1}, "seed"),
        ({"max_tokens": "8"}, "max_tokens"),
        ({"max_tokens": 8.0}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"thinking_budget": 10**400}, "thinking_budget"),
        ({"compression": 1e400}, "compression"),
        ({"temperature": float("nan")}, "temperature"),
        ({"logprobs": True}, "logprobs"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"stop": ["zq" * 125000] * 16}, "stop"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [TOOL]}, "tool_choice"),
        ({"tool_choice": "get_time", "tools": [TOOL]}, "tool_choice"),
        ({"tool_choice": 7, "tools": [TOOL]}, "tool_choice"),
    ],
)
def test_refused_with_the_field_named(server, patch, param):
    r = httpx.post(server.url + "/v1/chat/completions", content=_dumps({**OK_BODY, **patch}),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["param"].startswith(param) and param in err["message"], err
    assert server.llm.calls == []
    assert_still_serving(server)


def _dumps(body: dict) -> bytes:
    import json

    return json.dumps(body).encode()  # NaN and 1e400 as Python writes them (json.loads reads them back)


def test_unknown_model_is_404_like_openai(server):
    r = post(server, {**OK_BODY, "model": "gpt-4o"})
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found" and error_of(r)["param"] == "model"
    assert post(server, {**OK_BODY, "model": None}).status_code == 200  # no model: the served one
    assert server.llm.calls and server.llm.calls[-1] is not None
    assert_still_serving(server)


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deeply_nested_body_is_a_400(server, depth):
    inner = "[" * depth + "]" * depth
    body = ('{"messages": [{"role": "user", "content": "hi"}], "response_format": {"x": ' + inner + "}}").encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_json" and "deeper" in error_of(r)["message"]
    assert_still_serving(server)


def test_client_that_disconnects_mid_upload_is_no_error(server, caplog):
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n" + b'{"messages": [' + b" " * 1000)
    assert wait_until(lambda: 'outcome="cancelled"' in httpx.get(server.url + "/metrics", timeout=5).text)
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert_still_serving(server)


def test_an_uncaught_bug_is_a_counted_json_500(fake, monkeypatch):
    import budgetllm.server.http_body as body_module

    def broken(*a, **k):
        raise RecursionError("deep inside")

    monkeypatch.setattr(body_module, "too_deep", broken)
    with LiveServer(create_app(fake)) as srv:
        r = post(srv, OK_BODY)
        assert r.status_code == 500 and error_of(r)["code"] == "internal_error"
        assert "deep inside" not in r.text
        assert 'outcome="error"} 1' in httpx.get(srv.url + "/metrics", timeout=5).text


def test_max_request_bytes_must_be_positive(fake):
    import argparse

    from budgetllm.server.cli import _check_args, add_serve_subcommand

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    args = parser.parse_args(["serve", "--max-request-bytes", "-5"])
    assert "--max-request-bytes" in (_check_args(args) or "")
    args = parser.parse_args(["serve", "--compression", "0.5"])
    assert "compression" in (_check_args(args) or "")
    assert _check_args(parser.parse_args(["serve"])) is None
    with pytest.raises(ValueError, match="max_request_bytes"):
        create_app(fake, max_request_bytes=-5)
