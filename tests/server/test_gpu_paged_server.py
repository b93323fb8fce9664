"""The server over the paged GPU backend, where KV pages really exist: no page may leak after a
concurrent load or a client that hangs up. httpx only (the GPU machine has no openai package)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from srv_live import LiveServer, wait_until

from budgetllm.server.app import create_app
from budgetllm.server.client import RemoteLLM

pytestmark = pytest.mark.gpu
MESSAGES = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def paged():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from budgetllm import LLM

    llm = LLM.from_pretrained(None, backend="paged", device="cuda", progress=False)
    try:
        with LiveServer(create_app(llm)) as srv:
            srv.llm = llm
            yield srv
    finally:
        llm.close()  # the pool (most of the GPU) goes back for the modules after this one


def no_pages_held(llm) -> bool:
    """Nothing runs and every page is back. Conversation reuse (on by default) keeps finished states in
    the prefix tree, which own their pages (``pool_stats()["prefix_pages"]``): they are released first
    (asynchronously, on the engine thread), so a page that no request nor kept state owns fails this."""
    s = llm.pool_stats()
    if s["active"] or s["queued"]:
        return False
    if s["parked"]:
        llm.backend.clear_prefix_cache()
        return False
    return s["pages_used"] == 0 and s["pages_free"] == s["pages_total"]


def test_32_concurrent_streams_leak_no_pages(paged):
    async def one(c: httpx.AsyncClient, i: int) -> dict:
        body = {"messages": [{"role": "user", "content": f"Count to {i + 3}."}], "max_tokens": 16, "stream": True,
                "stream_options": {"include_usage": True}, "compression": [1, 2, 4, 8][i % 4]}
        usage, done = None, False
        async with c.stream("POST", "/v1/chat/completions", json=body) as r:
            assert r.status_code == 200, await r.aread()
            async for line in r.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    d = json.loads(line[6:])
                    assert "error" not in d, d
                    usage = d.get("usage") or usage
        assert done
        return usage

    async def main():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=paged.url, timeout=120, limits=limits) as c:
            return await asyncio.wait_for(asyncio.gather(*[one(c, i) for i in range(32)]), timeout=240)

    usages = asyncio.run(main())
    assert all(0 < u["completion_tokens"] <= 16 and u["kv_memory"]["reserved_bytes"] > 0 for u in usages)
    assert wait_until(lambda: no_pages_held(paged.llm), timeout=10), paged.llm.pool_stats()
    metrics = httpx.get(paged.url + "/metrics", timeout=10).text
    assert "budgetllm_kv_pages_used{" in metrics and "budgetllm_kv_pages_total{" in metrics


def test_hang_up_mid_stream_frees_the_pages(paged):
    llm = paged.llm
    body = {"messages": MESSAGES, "max_tokens": 1500, "stream": True, "compression": 2}
    with httpx.Client(base_url=paged.url, timeout=60) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                assert llm.pool_stats()["pages_used"] > 0  # the request holds pages right now
                break
    assert wait_until(lambda: no_pages_held(llm), timeout=10), llm.pool_stats()


def test_remote_equals_local_on_the_paged_backend(paged):
    opts = {"max_tokens": 12, "compression": 4.0}
    want = paged.llm.generate(MESSAGES, **opts)
    got = RemoteLLM(paged.url, timeout=120).generate(MESSAGES, **opts)
    assert (got.text, got.token_ids, got.finish_reason) == (want.text, want.token_ids, want.finish_reason)
    assert got.usage.kv == want.usage.kv and got.usage.plan == want.usage.plan
    assert wait_until(lambda: no_pages_held(paged.llm), timeout=10), paged.llm.pool_stats()
