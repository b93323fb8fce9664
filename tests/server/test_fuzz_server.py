"""The server fuzzed from its own request schema (hypothesis + hypothesis-jsonschema) on a tiny
random model: no 5xx, every 4xx names the field (``error.param``), and it stays healthy.

Two streams of requests: bodies drawn from ``ChatCompletionRequest``'s JSON schema (valid as far as
the schema can say: the engine may still refuse some, with a 4xx), and valid bodies with one field
replaced by arbitrary JSON. Generations are short (max_tokens <= 8 in drawn bodies, 4 in the others).
"""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from srv_live import LiveServer

from budgetllm.server.app import create_app
from budgetllm.server.schemas import ChatCompletionRequest

hypothesis_jsonschema = pytest.importorskip("hypothesis_jsonschema")

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=8)
BASE = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def live(tiny_dir):
    from budgetllm import LLM

    llm = LLM.from_pretrained(str(tiny_dir("llama", max_position_embeddings=512)), backend="reference", device="cpu",
                              progress=False)
    with LiveServer(create_app(llm)) as srv, httpx.Client(base_url=srv.url, timeout=60) as client:
        srv.client = client
        srv.model_name = llm.model_name
        yield srv
    llm.close()


def _schema() -> dict:
    schema = ChatCompletionRequest.model_json_schema()
    # Keep the drawn bodies small: short message lists and strings (the limits are tested elsewhere).
    schema["properties"]["messages"]["maxItems"] = 3
    # ... and short generations: the largest counts are fuzzed by the one-field test below.
    for name in ("max_tokens", "max_completion_tokens"):
        schema["properties"][name] = {"type": "integer", "minimum": 1, "maximum": 8}
    schema["required"] = [*schema.get("required", []), "max_tokens"]
    return schema


STATUSES: dict[int, int] = {}
ERRORS: list[str] = []


def check(srv, body: dict) -> None:
    content = json.dumps(body).encode()
    if body.get("stream"):
        with srv.client.stream("POST", "/v1/chat/completions", content=content) as r:
            text = "".join(r.iter_text())
    else:
        r = srv.client.post("/v1/chat/completions", content=content)
        text = r.text
    STATUSES[r.status_code] = STATUSES.get(r.status_code, 0) + 1
    assert r.status_code < 500, (r.status_code, text[:500], body)
    if r.status_code >= 400:
        err = json.loads(text)["error"]
        ERRORS.append(err["message"][:80])
        assert err["param"] or err["code"] == "invalid_json", (err, body)
    elif body.get("stream"):
        assert text.rstrip().endswith("data: [DONE]") and '"error"' not in text, text[-500:]


def healthy(srv) -> None:
    assert srv.client.get("/health").json()["status"] == "ok"
    assert srv.client.post("/v1/chat/completions", json=BASE).status_code == 200


def test_bodies_drawn_from_the_schema(live):
    @FUZZ
    @given(body=hypothesis_jsonschema.from_schema(_schema()), served=st.booleans())
    def run(body, served):
        if served:
            body["model"] = live.model_name  # past the 404 of an unknown model
        check(live, body)

    run()
    healthy(live)
    assert STATUSES.get(200, 0) >= 5, (STATUSES, ERRORS[-10:])  # the fuzz reaches the engine, not only the validator


FIELDS = sorted(ChatCompletionRequest.model_fields)


def test_one_field_replaced_by_arbitrary_json(live):
    @FUZZ
    @given(field=st.sampled_from(FIELDS + ["messages.0", "messages.0.content", "tools.0"]), value=JSON)
    def run(field, value):
        body = json.loads(json.dumps(BASE))
        body["tools"] = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
        head, *rest = field.split(".")
        if rest:
            target = body[head][int(rest[0])]
            if len(rest) == 1:
                body[head][int(rest[0])] = value
            else:
                target[rest[1]] = value
        else:
            body[head] = value
        check(live, body)

    run()
    healthy(live)
