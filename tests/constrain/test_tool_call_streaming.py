"""A constrained tool call streams while it is written, on every surface, and the pieces add up to
the final call: engine events (reference backend, tiny model), LangChain chunks (ChatDMS's chunk
builder) and the server's SSE read back by the client."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("xgrammar")

TOOLS = [{"type": "function", "function": {"name": "calculator", "parameters": {
    "type": "object", "properties": {"expression": {"type": "string", "maxLength": 12}, "digits": {"type": "integer"}},
    "required": ["expression", "digits"]}}}]


@pytest.fixture(scope="module")
def events(tiny_llm):
    llm = tiny_llm("llama")
    return list(llm.stream("Compute 2+2", tools=TOOLS, tool_choice="any", max_tokens=80, compression=1))


def test_engine_streams_the_call_then_the_same_call_whole(events):
    deltas = [e.tool_delta for e in events if e.kind == "tool_call_delta"]
    gen = events[-1].generation
    assert gen.finish_reason == "tool_calls" and len(gen.tool_calls) == 1
    call = gen.tool_calls[0]
    first, rest = deltas[0], deltas[1:]
    assert (first.name, first.id, first.args) == ("calculator", call.id, "")
    assert len(rest) >= 2  # pieces, not one chunk at the end
    assert json.loads("".join(d.args for d in rest)) == call.arguments
    kinds = [e.kind for e in events]
    assert kinds.index("tool_call") > max(i for i, k in enumerate(kinds) if k == "tool_call_delta")


def test_langchain_chunks_add_up_to_the_call(events):
    from langchain_budgetllm.chunks import ChunkBuilder

    b = ChunkBuilder("tiny")
    chunks = [c for e in events for c in b.on_event(e)]
    merged = chunks[0].message
    for c in chunks[1:]:
        merged = merged + c.message
    call = events[-1].generation.tool_calls[0]
    assert len([c for c in chunks if c.message.tool_call_chunks]) >= 3
    assert [(t["name"], t["args"], t["id"]) for t in merged.tool_calls] == [(call.name, call.arguments, call.id)]
    assert merged.response_metadata["finish_reason"] == "tool_calls"
    assert b.message(chunks).tool_calls == merged.tool_calls


def test_server_sse_pieces_read_back_as_the_local_events(events):
    from budgetllm.server import wire
    from budgetllm.server.streaming import ChunkWriter

    w = ChunkWriter(id="x", created=0, model="tiny", include_usage=False, token_ids=False)
    sent = [json.loads(raw.decode()[len("data: "):]) for e in events for raw in w.event(e)]
    pieces = [t for d in sent for ch in d["choices"] for t in ch["delta"].get("tool_calls") or []]
    assert len(pieces) >= 3 and pieces[0]["function"]["name"] == "calculator"
    assert all(p["index"] == 0 for p in pieces) and "name" not in pieces[1]["function"]
    a = wire.StreamAssembler()
    got = [ev for d in sent for ev in a.feed(d)]
    local = [e for e in events if e.kind != "done"]
    assert [(e.kind, e.text, e.tool_call) for e in got] == [(e.kind, e.text, e.tool_call) for e in local]
    assert [e.tool_delta for e in got if e.tool_delta] == [e.tool_delta for e in local if e.tool_delta]
    assert a.done().generation.tool_calls == events[-1].generation.tool_calls
