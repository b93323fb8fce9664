"""A client that goes away cancels its request; /metrics counts what happened."""

from __future__ import annotations

import httpx
from srv_fake_llm import FakeLLM
from srv_live import LiveServer, wait_until

from budgetllm.server.app import create_app

BODY = {"messages": [{"role": "user", "content": "tell me a long story"}]}


def metric(text: str, name: str, outcome: str | None = None) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and (outcome is None or f'outcome="{outcome}"' in line):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_disconnect_mid_stream_cancels_the_request():
    slow = FakeLLM(delay=0.2, pieces=100)  # 20 s if nobody cancels it
    with LiveServer(create_app(slow)) as srv:
        with httpx.Client(timeout=10) as c, c.stream("POST", srv.url + "/v1/chat/completions",
                                                     json={**BODY, "stream": True}) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            got = [next(lines) for _ in range(4)]  # the role chunk and a text delta, with blank separators
            assert any('"content":"echo0' in line for line in got)
        # The connection is closed: the engine's stream must be closed within a few steps.
        assert wait_until(lambda: slow.cancelled == 1, timeout=5)
        assert slow.active == 0 and slow.finished == 0 and slow.tokens_generated < 10
        text = httpx.get(srv.url + "/metrics", timeout=5).text
        assert metric(text, "budgetllm_requests_cancelled_total") == 1
        assert metric(text, "budgetllm_http_requests_in_flight") == 0
        # And the server keeps serving.
        slow.delay = 0
        assert httpx.post(srv.url + "/v1/chat/completions", json=BODY, timeout=10).status_code == 200


def test_disconnect_while_waiting_for_a_non_streamed_answer_cancels_too():
    slow = FakeLLM(delay=0.2, pieces=100)
    with LiveServer(create_app(slow)) as srv:
        try:
            httpx.post(srv.url + "/v1/chat/completions", json=BODY, timeout=0.5)
        except httpx.ReadTimeout:
            pass
        assert wait_until(lambda: slow.cancelled == 1, timeout=5)
        assert slow.active == 0 and slow.finished == 0


def test_metrics_page(server):
    for i in range(3):
        r = httpx.post(server.url + "/v1/chat/completions", timeout=10,
                       json={**BODY, "thinking_budget": 2, "stream": i == 2, "stream_options": {"include_usage": True}})
        assert r.status_code == 200
    httpx.post(server.url + "/v1/chat/completions", content=b"{", timeout=10)
    r = httpx.get(server.url + "/metrics", timeout=5)
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert metric(text, "budgetllm_kv_pages_total") == 100
    assert metric(text, "budgetllm_kv_pages_used") == 0 and metric(text, "budgetllm_kv_pages_free") == 100
    assert metric(text, "budgetllm_requests_active") == 0 and metric(text, "budgetllm_requests_queued") == 0
    assert metric(text, "budgetllm_compression_achieved") == 4.0
    assert metric(text, "budgetllm_requests_total", "ok") == 3
    assert metric(text, "budgetllm_requests_total", "client_error") == 1
    assert metric(text, "budgetllm_reasoning_tokens_total") == 6
    assert metric(text, "budgetllm_completion_tokens_total") == 15
    assert metric(text, "budgetllm_tokens_per_second") > 0
    # Every sample line is "name{labels} value" and every metric has HELP and TYPE lines.
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    for name in names:
        assert f"# TYPE {name} " in text and f"# HELP {name} " in text


def test_metrics_without_pages(fake):
    """The reference backend reports no pages: their series are absent (not a false 0), the page renders."""
    fake.pool_stats = lambda: {"active": 0, "tokens_generated": 7}
    with LiveServer(create_app(fake, served_model_name='my "model"')) as srv:
        text = httpx.get(srv.url + "/metrics", timeout=5).text
    for absent in ("budgetllm_kv_pages_total", "budgetllm_kv_pages_free", "budgetllm_kv_bytes_used"):
        assert absent + "{" not in text
    assert metric(text, "budgetllm_requests_active") == 0
    assert metric(text, "budgetllm_engine_tokens_generated_total") == 7
    assert 'model="my \\"model\\""' in text
