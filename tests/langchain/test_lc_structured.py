"""Structured output and forced tool calls through ChatDMS on a tiny random model: whatever the
weights, constrained decoding makes every answer parse into the schema, locally and over HTTP,
and in a LangChain agent's ``structured_response``."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("xgrammar")

from langchain_budgetllm import ChatDMS  # noqa: E402
from pydantic import BaseModel, Field  # noqa: E402


class Pet(BaseModel):
    """A pet."""

    name: str = Field(max_length=6)
    legs: int = Field(ge=0, le=8)
    kind: str = Field(json_schema_extra={"enum": ["cat", "dog"]})


@pytest.fixture(scope="module")
def chat(tiny_llm):
    return ChatDMS.from_llm(tiny_llm("llama"), max_tokens=80, temperature=1.0, seed=7)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_every_method_returns_the_schema(chat, method):
    pet = chat.with_structured_output(Pet, method=method).invoke("Describe a pet.")
    assert isinstance(pet, Pet) and pet.kind in ("cat", "dog") and 0 <= pet.legs <= 8
    raw = chat.with_structured_output(Pet.model_json_schema(), method=method, include_raw=True).invoke("A pet?")
    assert raw["parsing_error"] is None and Pet(**raw["parsed"]) and raw["raw"].content is not None


def test_json_mode_returns_an_object(chat):
    out = chat.with_structured_output(None, method="json_mode", include_raw=True).invoke("JSON please")
    # json_mode promises an object; a random model may run out of tokens inside it, which
    # LangChain's JsonOutputParser completes (as for every provider)
    assert out["raw"].content.startswith("{") and isinstance(out["parsed"], dict)


def test_forced_tool_call_streams_valid_chunks(chat):
    calculator = {"type": "function", "function": {"name": "calculator", "description": "Evaluate arithmetic.",
                  "parameters": {"type": "object", "properties": {"expression": {"type": "string", "maxLength": 8}},
                                 "required": ["expression"]}}}
    full = None
    for chunk in chat.bind_tools([calculator], tool_choice="calculator").stream("2+2?"):
        full = chunk if full is None else full + chunk
    assert full.tool_call_chunks and full.tool_calls[0]["name"] == "calculator"
    assert isinstance(full.tool_calls[0]["args"]["expression"], str) and not full.invalid_tool_calls
    assert full.response_metadata["finish_reason"] == "tool_calls"


def test_agent_structured_response(chat):
    from langchain.agents import create_agent

    agent = create_agent(chat, tools=[], response_format=Pet)
    state = agent.invoke({"messages": [{"role": "user", "content": "Describe a pet."}]})
    assert isinstance(state["structured_response"], Pet)


def test_remote_matches_local(tiny_llm):
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from budgetllm import RemoteLLM
    from budgetllm.server.app import create_app

    llm = tiny_llm("llama")
    remote = RemoteLLM("http://testserver")
    remote._client = TestClient(create_app(llm), base_url="http://testserver")
    outs = [ChatDMS.from_llm(engine, max_tokens=80, temperature=0).with_structured_output(Pet).invoke("A pet?")
            for engine in (llm, remote)]
    assert outs[0] == outs[1] and isinstance(outs[0], Pet)
