"""``LLM.generate`` fuzzed with hypothesis: whatever the arguments, only BudgetLLMError subclasses
escape (InvalidRequestError naming the field for bad input), and good calls return a Generation.
A tiny random model with a 128-token context keeps every call short."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from budgetllm import BudgetLLMError, InvalidRequestError
from budgetllm.options import EFFORT_LEVELS, CallOptions
from budgetllm.policy.base import AgentBudget
from budgetllm.types import Generation

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**62), st.floats(), st.text(max_size=10),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
GOOD = {
    "max_tokens": st.integers(1, 6), "thinking_budget": st.integers(0, 6), "answer_reserve": st.integers(0, 6),
    "compression": st.floats(1, 16), "reasoning_effort": st.sampled_from(EFFORT_LEVELS),
    "temperature": st.floats(0, 2), "top_p": st.floats(0.01, 1), "top_k": st.integers(0, 50),
    "seed": st.integers(0, 2**63 - 1), "stop": st.lists(st.text("ab ", min_size=1, max_size=3), max_size=3),
    "tools": st.just([TOOL]), "tool_choice": st.sampled_from(["auto", "none"]), "tool_name": st.just("f"),
    "agent_budget": st.builds(AgentBudget), "response_format": st.just({"type": "json_object"}), "policy_tier": st.none(), "policy": st.none(),
}
MESSAGES = st.one_of(
    st.text(max_size=30),
    st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                    "content": st.text(max_size=20)}), min_size=1, max_size=3),
    JUNK,
    st.lists(st.one_of(JUNK, st.fixed_dictionaries({"role": JUNK, "content": JUNK})), min_size=1, max_size=2),
)


@st.composite
def options(draw):
    opts = {}
    for name in draw(st.lists(st.sampled_from(CallOptions.field_names()), max_size=5, unique=True)):
        opts[name] = draw(st.one_of(GOOD[name], JUNK) if draw(st.booleans()) else GOOD[name])
    if draw(st.booleans()):
        opts[draw(st.sampled_from(["max_token", "num_predict", "reasoning", "model_name"]))] = draw(JUNK)
    opts.setdefault("max_tokens", 4)
    return opts


@pytest.fixture(scope="module")
def llm(tiny_dir):
    from budgetllm import LLM

    model = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed", max_position_embeddings=128)), backend="reference",
                                device="cpu", progress=False)
    yield model
    model.close()


def test_only_budgetllm_errors_escape(llm):
    seen = {"ok": 0, "refused": 0}

    @settings(max_examples=80, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(messages=MESSAGES, opts=options())
    def run(messages, opts):
        try:
            out = llm.generate(messages, **opts)
        except InvalidRequestError as e:
            assert e.field and str(e).startswith(e.field), e
            seen["refused"] += 1
            return
        except BudgetLLMError:
            seen["refused"] += 1
            return
        assert isinstance(out, Generation) and out.usage.output_tokens <= opts["max_tokens"]
        seen["ok"] += 1

    run()
    assert seen["ok"] >= 5 and seen["refused"] >= 5, seen
    assert llm.generate("hi", max_tokens=2).usage.output_tokens == 2  # still serving
