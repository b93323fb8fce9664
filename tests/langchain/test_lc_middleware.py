"""BudgetMiddleware across agent steps, on a scripted engine."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest

pytest.importorskip("langchain.agents")

from langchain.agents import create_agent  # noqa: E402
from langchain_budgetllm import BudgetMiddleware, get_dms_usage_callback  # noqa: E402
from langchain_budgetllm.middleware import BudgetExhaustedError  # noqa: E402
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402
from lc_fakes import ADD_CALL as ADD  # noqa: E402
from lc_fakes import Scripted, add, lookup  # noqa: E402

from budgetllm import CallContext, FixedPolicy, Plan  # noqa: E402

LOOKUP = '<tool_call>\n{"name": "lookup", "arguments": {"key": "seven"}}\n</tool_call>'


def three_steps():
    return [Scripted(output=ADD, reasoning="r1 r1"), Scripted(output=LOOKUP), Scripted(output="It is SEVEN.")]


@dataclass
class StepPolicy:
    """Thinks less at every step and compresses harder after a tool result; records contexts."""

    seen: list[CallContext] = field(default_factory=list)

    def plan(self, context: CallContext) -> Plan:
        self.seen.append(context)
        budget = max(0, 64 - 16 * context.agent.step)
        comp = 4.0 if context.tool_name else 2.0
        return Plan(
            thinking_budget=budget,
            answer_reserve=16,
            compression=comp,
            max_tokens=128,
            reasons={"thinking_budget": f"step {context.agent.step}", "compression": f"after tool {context.tool_name}"},
            policy="step",
        )


def test_decisions_follow_agent_steps(chat_fake, fake_llm):
    policy = StepPolicy()
    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[BudgetMiddleware(policy)])
    out = agent.invoke({"messages": [{"role": "user", "content": "What is 3+4, spelled?"}]})
    ai = [m for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(ai) == 3 and ai[-1].content == "It is SEVEN."
    # what the engine received: the agent's state and the policy, no numbers planned elsewhere
    opts = [o for _, o in fake_llm.calls]
    assert all(o["policy"] is policy and "thinking_budget" not in o and "max_tokens" not in o for o in opts)
    assert [o["agent_budget"].step for o in opts] == [0, 1, 2]
    assert [o.get("tool_name") for o in opts] == [None, "add", "lookup"]
    assert all(o["tools"] for o in opts)
    # what the policy saw
    assert [c.agent.step for c in policy.seen] == [0, 1, 2]
    assert [c.tool_name for c in policy.seen] == [None, "add", "lookup"]
    assert all(c.prompt_tokens > 0 for c in policy.seen)
    assert policy.seen[1].prompt_tokens > policy.seen[0].prompt_tokens
    # the engine's plan (the only one) is in the message metadata, with the step that made it
    plans = [m.response_metadata["budget_plan"] for m in ai]
    assert [p["step"] for p in plans] == [0, 1, 2]
    assert [p["thinking_budget"] for p in plans] == [64, 48, 32]
    assert [p["compression"] for p in plans] == [2.0, 4.0, 4.0]
    assert plans[1]["reasons"]["compression"] == "after tool add"
    assert plans[0]["source"] == "BudgetMiddleware" and "engine_plan" not in plans[0]
    # counters are private: not in the agent's output
    assert not any(k.startswith("budget_") for k in out)


def test_token_budget_clamps_and_ends_the_run(chat_fake, fake_llm):
    # the scripted answers count 11 and 7 output tokens: 15 runs out after the second call
    mw = BudgetMiddleware(FixedPolicy(max_tokens=100, compression=2.0), token_budget=15)
    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[mw])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    opts = [o for _, o in fake_llm.calls]
    assert [o["agent_budget"].tokens_left for o in opts] == [15, 4]
    last = out["messages"][-1]
    assert isinstance(last, AIMessage) and "token budget" in last.content
    calls = [m for m in out["messages"] if isinstance(m, AIMessage)][:2]  # the last one says the budget ran out
    plans = [m.response_metadata["budget_plan"] for m in calls]
    assert [p["max_tokens"] for p in plans] == [15, 4]  # fitted to the tokens left, by the engine's one fit
    assert "tokens left" in plans[0]["reasons"]["max_tokens"]


def test_call_budget_end_and_error(chat_fake, fake_llm):
    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[BudgetMiddleware(max_calls=2)])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert len(fake_llm.calls) == 2
    assert "call budget" in out["messages"][-1].content
    fake_llm.calls.clear()
    fake_llm.script = three_steps()
    agent = create_agent(
        chat_fake(), tools=[add, lookup], middleware=[BudgetMiddleware(max_calls=1, exit_behavior="error")]
    )
    with pytest.raises(BudgetExhaustedError):
        agent.invoke({"messages": [{"role": "user", "content": "go"}]})


def test_continue_behaviour_turns_thinking_off(chat_fake, fake_llm):
    mw = BudgetMiddleware(FixedPolicy(thinking_budget=32, max_tokens=64), max_calls=1, exit_behavior="continue")
    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[mw])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    plans = [m.response_metadata["budget_plan"] for m in out["messages"] if isinstance(m, AIMessage)]
    assert len(plans) == 3 and plans[0]["thinking_budget"] == 32
    assert all(p["thinking_budget"] == 0 and p["max_tokens"] <= 16 for p in plans[1:])
    assert "call budget is spent" in plans[1]["reasons"]["max_tokens"]


def test_explicit_model_settings_are_requests_for_the_policy(chat_fake, fake_llm):
    policy = StepPolicy()
    agent = create_agent(chat_fake([Scripted(output="done")], thinking_budget=5), tools=[add],
                         middleware=[BudgetMiddleware(policy)])
    agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert policy.seen[0].requested.thinking_budget == 5
    assert policy.seen[0].requested.compression is None  # the default compression is not a request


async def test_async_agent(chat_fake, fake_llm):
    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[BudgetMiddleware(StepPolicy())])
    out = await agent.ainvoke({"messages": [{"role": "user", "content": "go"}]})
    assert out["messages"][-1].content == "It is SEVEN."
    plans = [m.response_metadata["budget_plan"] for m in out["messages"] if isinstance(m, AIMessage)]
    assert [p["thinking_budget"] for p in plans] == [64, 48, 32]


def test_counters_and_callback_agree(chat_fake, fake_llm):
    from langchain.agents.middleware import AgentMiddleware

    seen: list[dict] = []

    class Spy(AgentMiddleware):
        def before_model(self, state, runtime):
            seen.append({k: v for k, v in state.items() if k.startswith("budget_")})

    agent = create_agent(chat_fake(three_steps()), tools=[add, lookup], middleware=[BudgetMiddleware(StepPolicy()), Spy()])
    with get_dms_usage_callback() as cb:
        agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert [s.get("budget_steps", 0) for s in seen] == [0, 1, 2]
    before_third = seen[2]
    assert before_third["budget_output_tokens"] == sum(c.output_tokens for c in cb.calls[:2])
    assert before_third["budget_input_tokens"] == sum(c.input_tokens for c in cb.calls[:2])
    assert before_third["budget_reasoning_tokens"] == 2
    assert before_third["budget_peak_kv_bytes"] == max(c.peak_live_bytes for c in cb.calls[:2])
    assert before_third["budget_kv_byte_seconds"] > 0
    assert [c.step for c in cb.calls] == [0, 1, 2]


def test_invalid_tool_call_is_answered_and_retried(chat_fake, fake_llm):
    bad = '<tool_call>\n{"name": "add", "arguments": {a: 3}}\n</tool_call>'
    script = [Scripted(output=bad), Scripted(output=ADD), Scripted(output="7")]
    agent = create_agent(chat_fake(script), tools=[add], middleware=[BudgetMiddleware()])
    out = agent.invoke({"messages": [{"role": "user", "content": "3+4"}]})
    errors = [m for m in out["messages"] if isinstance(m, ToolMessage) and m.status == "error"]
    assert len(errors) == 1 and "malformed" in errors[0].content
    assert out["messages"][-1].content == "7"
    # the retry saw its malformed call and the error as a tool result
    retry_prompt = fake_llm.calls[1][0]
    assert retry_prompt[-2]["role"] == "assistant" and "{a: 3}" in retry_prompt[-2]["content"]
    assert retry_prompt[-1]["role"] == "tool" and "malformed" in retry_prompt[-1]["content"]
    assert len(fake_llm.calls) == 3


def test_other_models_are_left_alone():
    model = GenericFakeChatModel(messages=iter([AIMessage(content="hi")]))
    agent = create_agent(model, tools=[], middleware=[BudgetMiddleware(unsupported_model_behavior="warn")])
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert out["messages"][-1].content == "hi"
    assert any("ChatDMS" in str(x.message) for x in w)
    model = GenericFakeChatModel(messages=iter([AIMessage(content="hi")]))
    agent = create_agent(model, tools=[], middleware=[BudgetMiddleware(unsupported_model_behavior="raise")])
    with pytest.raises(ValueError, match="ChatDMS"):
        agent.invoke({"messages": [{"role": "user", "content": "go"}]})


@pytest.mark.parametrize("kw", [{"token_budget": -1}, {"max_calls": 1.5}, {"exit_behavior": "stop"},
                                {"unsupported_model_behavior": "x"}, {"policy": 3}])
def test_invalid_middleware_settings(kw):
    with pytest.raises((ValueError, TypeError)):
        BudgetMiddleware(**kw)


def test_policy_file_path(chat_fake, fake_llm):
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "policies" / "effort.toml"
    agent = create_agent(chat_fake([Scripted(output="done")], reasoning_effort="medium", max_tokens=4096),
                         tools=[add], middleware=[BudgetMiddleware(str(path))])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    plan = out["messages"][-1].response_metadata["budget_plan"]
    assert plan["compression"] == 4.0  # the file's "medium" level
    assert 0 < plan["thinking_budget"] <= 2048
    assert "medium" in plan["reasons"]["thinking_budget"] and plan["source"] == "BudgetMiddleware"


def test_without_a_policy_the_models_own_policy_plans_with_the_agents_state(chat_fake, fake_llm):
    policy = StepPolicy()
    agent = create_agent(chat_fake(three_steps(), policy=policy), tools=[add, lookup],
                         middleware=[BudgetMiddleware(token_budget=1000)])
    out = agent.invoke({"messages": [{"role": "user", "content": "go"}]})
    assert [c.agent.step for c in policy.seen] == [0, 1, 2]
    assert policy.seen[0].agent.tokens_left == 1000 and policy.seen[1].agent.tokens_left < 1000
    plans = [m.response_metadata["budget_plan"] for m in out["messages"] if isinstance(m, AIMessage)]
    assert [p["thinking_budget"] for p in plans] == [64, 48, 32] and [p["step"] for p in plans] == [0, 1, 2]
