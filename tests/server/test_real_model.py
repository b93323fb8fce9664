"""End to end on a real (tiny, random) model: the reference backend on CPU behind the server.

Bounded: greedy decoding, max_tokens <= 8 except where a test cancels a long request on purpose.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from srv_live import LiveServer, free_port, wait_until

from budgetllm.errors import InvalidRequestError
from budgetllm.server.app import create_app
from budgetllm.server.client import RemoteLLM

POLICY_FILE = Path(__file__).resolve().parents[2] / "examples" / "policies" / "memory_cap.yaml"
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 7*6?"}]


@pytest.fixture(scope="module")
def real(tiny_llm):
    llm = tiny_llm("llama")
    with LiveServer(create_app(llm)) as srv:
        srv.llm = llm
        yield srv


def metric(srv, name: str, outcome: str | None = None) -> float:
    for line in httpx.get(srv.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + "{") and (outcome is None or f'outcome="{outcome}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_openai_round_trip_on_a_real_model(real):
    c = openai.OpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0, timeout=120)
    extra = {"thinking_budget": 3, "compression": 2}
    resp = c.chat.completions.create(model=real.llm.model_name, messages=MESSAGES, max_tokens=8, extra_body=extra)
    usage = resp.usage
    assert usage.prompt_tokens >= real.llm.count_tokens(MESSAGES)  # (+ an opened think tag, if any)
    local = real.llm.generate(MESSAGES, max_tokens=8, **extra)  # greedy: the server must say the same
    assert usage.completion_tokens == local.usage.output_tokens == 8
    assert usage.completion_tokens_details.reasoning_tokens == local.usage.reasoning_tokens
    assert resp.choices[0].message.model_extra.get("reasoning_content") == (local.reasoning or None)
    assert (resp.choices[0].message.content or "") == local.text
    kv = usage.model_extra["kv_memory"]
    assert kv["compression_requested"] == 2.0 and kv["logical_bytes"] > 0 and kv["mode"] in ("window", "dms", "dense")
    plan = usage.model_extra["plan"]  # the engine's one fitted plan: the 3 requested tokens cannot close a block
    assert plan["thinking_budget"] == 0 and plan["reasons"]["thinking_budget"].startswith("requested by the caller")
    assert "3 tokens cannot hold the 4-token close" in plan["reasons"]["thinking_budget"]

    stream = c.chat.completions.create(model=real.llm.model_name, messages=MESSAGES, max_tokens=8, extra_body=extra,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == (resp.choices[0].message.content or "")  # greedy: the same tokens both ways
    assert chunks[-1].usage.completion_tokens == 8


def test_remote_llm_equals_local_on_a_real_model(real):
    remote = RemoteLLM(real.url, timeout=120)
    assert (remote.model_name, remote.max_context) == (real.llm.model_name, real.llm.max_context)
    assert remote.profile == real.llm.profile
    assert remote.count_tokens(MESSAGES) == real.llm.count_tokens(MESSAGES)
    opts = {"max_tokens": 6, "thinking_budget": 2, "compression": 4.0}
    got, want = remote.generate(MESSAGES, **opts), real.llm.generate(MESSAGES, **opts)
    timing = {"prefill_seconds": 0.0, "decode_seconds": 0.0}
    assert dataclasses.replace(got, usage=dataclasses.replace(got.usage, **timing)) == \
        dataclasses.replace(want, usage=dataclasses.replace(want.usage, **timing))
    events = list(remote.stream(MESSAGES, **opts))
    assert events[-1].kind == "done" and events[-1].generation.token_ids == want.token_ids
    assert "".join(e.text for e in events if e.kind == "text") == want.text


def test_prompt_too_long_on_a_real_model(real):
    body = {"messages": [{"role": "user", "content": "word " * 3000}], "max_tokens": 4}
    r = httpx.post(real.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert httpx.post(real.url + "/v1/chat/completions", json={**body, "messages": MESSAGES}, timeout=60).status_code == 200


def test_load_32_concurrent_streams(real):
    """32 streams at once on loopback: none fails, and nothing stays held afterwards."""
    before_ok = metric(real, "budgetllm_requests_total", "ok")

    async def one(c: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
        stream = await c.chat.completions.create(
            model=real.llm.model_name, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=8, stream=True,
            stream_options={"include_usage": True})
        finish, tokens = None, 0
        async for ch in stream:
            if ch.usage:
                tokens = ch.usage.completion_tokens
            for choice in ch.choices:
                finish = choice.finish_reason or finish
        return finish, tokens

    async def main():
        c = openai.AsyncOpenAI(base_url=real.url + "/v1", api_key="x", max_retries=0, timeout=240)
        try:
            return await asyncio.wait_for(asyncio.gather(*[one(c, i) for i in range(32)]), timeout=300)
        finally:
            await c.close()

    results = asyncio.run(main())
    assert len(results) == 32
    assert all(finish in ("length", "stop") and 0 < tokens <= 8 for finish, tokens in results), results
    assert wait_until(lambda: real.llm.pool_stats().get("active", 0) == 0, timeout=10)
    stats = real.llm.pool_stats()
    if "pages_used" in stats:  # paged backends: every page back in the pool
        assert stats["pages_used"] == 0 and stats["pages_free"] == stats["pages_total"]
    assert metric(real, "budgetllm_requests_total", "ok") - before_ok == 32
    assert metric(real, "budgetllm_http_requests_in_flight") == 0


def test_disconnect_cancels_a_real_request(real):
    llm = real.llm
    before = llm.pool_stats().get("tokens_generated", 0)
    body = {"messages": MESSAGES, "max_tokens": 1500, "stream": True}  # minutes if nobody cancels it
    with httpx.Client(timeout=60) as c, c.stream("POST", real.url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                break  # one real token arrived: now hang up
    assert wait_until(lambda: llm.pool_stats().get("active", 0) == 0, timeout=15)
    generated = llm.pool_stats().get("tokens_generated", 0) - before
    assert generated < 300, f"{generated} tokens generated after the client left"
    assert wait_until(lambda: metric(real, "budgetllm_requests_cancelled_total") >= 1, timeout=5)


def test_serve_command_across_processes(tiny_dir):
    """`python -m budgetllm.server serve` (= `budgetllm serve`) in another process, used via RemoteLLM."""
    port = free_port()
    env = {**os.environ, "BUDGETLLM_API_KEY": "sk-cross", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "budgetllm.server", "serve", "--model", str(tiny_dir("llama")),
           "--backend", "reference", "--device", "cpu", "--port", str(port), "--log-level", "warning",
           "--policy", str(POLICY_FILE)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        remote = RemoteLLM(f"http://127.0.0.1:{port}/v1", api_key="sk-cross", max_retries=0, timeout=120)
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if remote.health()["status"] == "ok":
                    break
            except Exception:
                assert time.monotonic() < deadline, "the server did not come up in 180 s"
                time.sleep(0.5)
        gen = remote.generate(MESSAGES, max_tokens=4, thinking_budget=2)
        assert gen.usage.output_tokens == 4 and gen.usage.kv.logical_bytes > 0 and gen.model
        assert gen.usage.plan.policy == "memory-cap"  # the server's --policy file planned the call
        fast = remote.generate(MESSAGES, max_tokens=4, policy_tier="fast")
        assert fast.usage.plan.compression == 1.0 and "tier 'fast'" in fast.usage.plan.reasons["compression"]
        with pytest.raises(InvalidRequestError, match="unknown tier 'nope'"):
            remote.generate(MESSAGES, max_tokens=4, policy_tier="nope")
        events = list(remote.stream("Hello", max_tokens=3))
        assert events[-1].kind == "done" and events[-1].generation.usage.output_tokens == 3
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 401  # key required
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_misuse_on_a_real_engine_is_a_400_not_a_500(real):
    """Found by probing the server on a real model: each of these was a 500 or silently ignored."""
    url = real.url + "/v1/chat/completions"
    truncated = [{"role": "user", "content": "weather?"},
                 {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                     "name": "get_weather", "arguments": '{"city": "Par'}}]},
                 {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    r = httpx.post(url, json={"messages": truncated, "tools": [tool], "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    r = httpx.post(url, json={"messages": MESSAGES, "policy_tier": "fast", "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "policy_tier"  # no policy file: no tiers
    r = httpx.post(url, json={"messages": MESSAGES, "seed": 2**64, "temperature": 0.7, "max_tokens": 2}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "seed"
    assert httpx.post(url, json={"messages": MESSAGES, "max_tokens": 2}, timeout=60).status_code == 200
