"""A LangChain agent on ChatDMS: tools, a per-call budget policy, a long report read with a
compressed KV cache, and a KV-memory report that explains each call's ratio.

    python examples/agent.py                       # embedded SmolLM2-135M, offline, on the CPU
    python examples/agent.py --question "What is the capital of France?"
    python examples/agent.py --model Qwen/Qwen3-1.7B --device cuda --max-tokens 512
    python examples/agent.py --policy examples/policies/memory_cap.yaml   # budgets from a policy file

Two tasks run through one agent. (1) A question the calculator answers: short calls of a few
hundred tokens (the system prompt and tool schemas), barely longer than the model's 256-token
eviction window, so they compress little (a call that fits in the window compresses not at all,
and the report says so). (2) The long-context step: the agent reads an incident report of ~1,500 tokens returned by the
``read_report`` tool and says what caused the outage; the policy compresses the call that reads it
(``tools: read_report`` in ``examples/policies/agent.yaml``), and the report shows the ratio achieved
and why it is below the one requested (the newest 256 tokens are always kept).

Each model call gets its thinking budget and compression from a policy file
(``examples/policies/agent.yaml``; or the ``StepPolicy`` class below with ``--policy step``) through
``BudgetMiddleware`` (within an agent-level token budget); ``get_dms_usage_callback`` collects
tokens and KV memory per call. A 135M model rarely decides to call a tool by itself, so the first
call of task 1 is made with ``tool_choice="calculator"`` (the engine then writes the call's opening
and the model the arguments; ``--force-tool none`` turns this off), and task 2 starts from the
agent's ``read_report`` call already made (its result in the conversation), so the long read
happens whatever the model would have called; larger models use the tools unprompted.
"""

from __future__ import annotations

import argparse
import ast
import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from langchain.agents import create_agent
from langchain.agents.middleware import wrap_model_call
from langchain_budgetllm import BudgetMiddleware, ChatDMS, get_dms_usage_callback
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import Field

from budgetllm import CallContext, KVMemory, Plan, Usage
from budgetllm.accounting.log import too_short_to_compress

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.USub: operator.neg, ast.UAdd: operator.pos}


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))
    raise ValueError("only numbers and + - * / ** % are allowed")


@tool
def calculator(expression: Annotated[str, Field(pattern=r"[0-9(][0-9.()+\-*/% ]{0,39}")]) -> str:
    """Evaluate an arithmetic expression such as "17 * 23" and return the result."""
    try:
        return str(_eval(ast.parse(expression, mode="eval").body))
    except (SyntaxError, ValueError, ZeroDivisionError) as e:
        return f"error: {e}"


FACTS = {
    "france": "France: capital Paris, population about 68 million.",
    "japan": "Japan: capital Tokyo, population about 124 million.",
    "dms": "DMS (Dynamic Memory Sparsification) learns which KV-cache entries to evict, with a delay.",
    "smollm2": "SmolLM2-135M-Instruct: a 135M-parameter chat model by Hugging Face.",
}


@tool
def lookup(term: str) -> str:
    """Look up a short fact about a country or a term."""
    return FACTS.get(term.strip().lower(), f"no entry for {term!r}; known: {', '.join(sorted(FACTS))}")


SERVICES = ("api-gateway", "auth", "billing", "search", "checkout", "inventory", "notifications", "reports")


def incident_report(entries: int = 40) -> str:
    """A long, regular incident log with the cause stated once, in the middle."""
    lines = ["INCIDENT 4711 - checkout outage, 2026-11-12. Timeline (UTC), one line per event:"]
    for i in range(entries):
        svc, minute = SERVICES[i % len(SERVICES)], 14 + i // 2
        if i == entries // 2:
            lines.append(f"09:{minute:02d} load-balancer: TLS certificate for checkout.example.com EXPIRED; "
                         "all new connections to checkout refused. ROOT CAUSE of the outage.")
        lines.append(f"09:{minute:02d} {svc}: p99 latency {300 + 37 * (i % 11)} ms, error rate {(i * 7) % 13}.{i % 10}%, "
                     f"{120 + 9 * (i % 17)} requests/s, health check {'ok' if i % 5 else 'slow'}")
    lines.append("10:02 certificate renewed, checkout recovered; downtime 47 minutes.")
    return "\n".join(lines)


@tool
def read_report() -> str:
    """Return the latest incident report (a long log)."""
    return incident_report()


@dataclass
class StepPolicy:
    """Think on the first call; answer tool results directly, with every token visible.

    Any object with ``plan(CallContext) -> Plan`` is a budgetllm policy; BudgetMiddleware hands it
    to the engine with the agent's state, and the engine fits its plan to what the agent has left.
    """

    first_thinking_budget: int = 32
    first_compression: float = 2.0
    default_max_tokens: int = 64

    def plan(self, context: CallContext) -> Plan:
        max_tokens = context.requested.max_tokens or self.default_max_tokens
        if context.tool_name is None:
            budget = min(self.first_thinking_budget, max_tokens // 2)
            return Plan(
                thinking_budget=budget,
                answer_reserve=max_tokens - budget,
                compression=self.first_compression,
                max_tokens=max_tokens,
                reasons={
                    "thinking_budget": f"step {context.agent.step}: plan the answer ({budget} tokens)",
                    "compression": "thinking tokens are mostly read once: compress them",
                },
                policy="step",
            )
        return Plan(
            thinking_budget=0,
            answer_reserve=max_tokens,
            compression=1.0,
            max_tokens=max_tokens,
            reasons={
                "thinking_budget": f"step {context.agent.step}: answering from the {context.tool_name} result",
                "compression": "short grounded answer: keep the tool result fully visible",
            },
            policy="step",
        )


def force_first_tool_call(tool_name: str):
    """Until a tool has answered, ask for a call of ``tool_name`` (or "any")."""

    @wrap_model_call
    def force(request, handler):
        if request.tools and not any(isinstance(m, ToolMessage) for m in request.messages):
            request = request.override(tool_choice=tool_name)
        return handler(request)

    return force


REPORT_QUESTION = "What caused the outage in the incident report? Answer in one sentence."


def report_task() -> list:
    """Task 2's conversation: the question, the agent's read_report call, and the tool's long result."""
    call = {"name": "read_report", "args": {}, "id": "call_report", "type": "tool_call"}
    return [HumanMessage(REPORT_QUESTION), AIMessage("", tool_calls=[call]),
            ToolMessage(incident_report(), tool_call_id="call_report", name="read_report")]


def print_message(msg, streamed: bool = False) -> None:
    """One message of the transcript; ``streamed``: its thinking and answer text were already printed
    token by token, so only the plan, the tool calls and errors are left to show."""
    if isinstance(msg, AIMessage):
        plan = msg.response_metadata.get("budget_plan", {})
        if plan:
            print(f"  [plan] budget={plan.get('thinking_budget')} CR={plan.get('compression')} "
                  f"max_tokens={plan.get('max_tokens')}")
        thinking = msg.additional_kwargs.get("reasoning_content", "")
        if thinking and not streamed:
            print(f"  thinking: {thinking.strip()[:200]!r}")
        for call in msg.tool_calls:
            print(f"  tool call: {call['name']}({call['args']})")
        for bad in msg.invalid_tool_calls:
            print(f"  malformed tool call: {bad.get('error')}")
        if msg.content and not streamed:
            print(f"  answer: {msg.text.strip()[:300]}")
    elif isinstance(msg, ToolMessage):
        text = msg.text
        print(f"[tool {msg.name}] {text if len(text) < 200 else text[:160] + f' ... ({len(text)} characters)'}")
    else:
        print(f"Q: {msg.text}")


def run_task(agent, messages: list) -> list:
    """Run one task, printing the model's thinking and answer token by token as it writes them (the
    first tokens show within seconds of launch) and every other message as the agent has it; returns
    the whole conversation."""
    shown, state, section = 0, {"messages": messages}, None
    for mode, data in agent.stream({"messages": messages}, stream_mode=["messages", "values"]):
        if mode == "messages":
            chunk = data[0]
            if not isinstance(chunk, AIMessageChunk):
                continue
            for kind, text in (("thinking", chunk.additional_kwargs.get("reasoning_content", "")),
                               ("answer", chunk.content if isinstance(chunk.content, str) else "")):
                if text:
                    if section != kind:
                        print(f"\n[model {kind}] ", end="")
                        section = kind
                    print(text, end="", flush=True)
            continue
        state = data
        for msg in state["messages"][shown:]:
            if section is not None and isinstance(msg, AIMessage):
                print()
            print_message(msg, streamed=section is not None and isinstance(msg, AIMessage))
            if isinstance(msg, AIMessage):
                section = None
        shown = len(state["messages"])
    return state["messages"]


def explain_compression(messages: list) -> list[str]:
    """One line per model call: the ratio achieved, and why it is what it is."""
    lines = []
    calls = [m for m in messages if isinstance(m, AIMessage) and m.response_metadata.get("kv_memory")]
    for n, msg in enumerate(calls, 1):
        kv, usage = msg.response_metadata["kv_memory"], msg.usage_metadata or {}
        tokens, window = usage.get("total_tokens", 0), kv.get("window", 0)
        asked, got = kv.get("compression_requested", 1.0), kv.get("compression_achieved", 1.0)
        head = f"call {n}: {tokens} tokens, CR asked {asked:g}, achieved {got:.2f}x: "
        if asked <= 1:
            why = "dense, as the policy chose (" + (msg.response_metadata.get("budget_plan", {}).get("reasons", {})
                                                   .get("compression", "no reason given")) + ")"
        elif too_short_to_compress(Usage(input_tokens=usage.get("input_tokens", 0),
                                         output_tokens=usage.get("output_tokens", 0),
                                         kv=KVMemory(compression_requested=asked, window=window))):
            why = (f"too short to compress: all {tokens} tokens fit in the {window}-token window, and only "
                   "tokens that have left the window can be dropped")
        elif window:
            bound = tokens / (window + (tokens - window) / asked)
            why = (f"the newest {window} tokens are always kept and the older {tokens - window} at about 1/{asked:g}, "
                   f"so {asked:g}x is reached only on much longer contexts (about {bound:.1f}x at this length if "
                   f"the learned decisions evict exactly 1 - 1/{asked:g}); {kv.get('evicted_tokens', 0)} "
                   "(layer, head, token) entries were dropped")
        else:
            why = f"mode {kv.get('mode')}"
        lines.append(head + why)
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default="What is 17 * 23? Use the calculator.")
    parser.add_argument("--model", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default=None, help='"reference" (any device) or "paged" (CUDA)')
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--token-budget", type=int, default=400, help="generated tokens each task may spend")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: budgetllm's choice)")
    parser.add_argument("--policy", default=str(Path(__file__).with_name("policies") / "agent.yaml"),
                        help='a budget policy file (YAML/TOML); "step" uses the StepPolicy class above')
    parser.add_argument("--force-tool", default="calculator",
                        help='the first call must call this tool ("any": some tool; "none": let the model decide)')
    parser.add_argument("--no-long-step", action="store_true", help="skip task 2 (the long incident report)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    model = ChatDMS(model=args.model, device=args.device, backend=args.backend, max_tokens=args.max_tokens, temperature=0)

    def make_agent(force_tool: str):
        return create_agent(
            model,
            tools=[calculator, lookup, read_report],
            system_prompt="You are a helpful assistant. Use the calculator for arithmetic, lookup for facts and "
                          "read_report for incident reports.",
            middleware=[BudgetMiddleware(StepPolicy() if args.policy == "step" else args.policy,
                                         token_budget=args.token_budget, max_calls=4)]
            + ([] if force_tool == "none" else [force_first_tool_call(force_tool)]),
        )

    runs = [[HumanMessage(args.question)]] + ([] if args.no_long_step else [report_task()])
    results = []
    with get_dms_usage_callback() as usage:
        for i, messages in enumerate(runs, 1):
            print(f"\n=== task {i} ===", flush=True)
            results.append(run_task(make_agent(args.force_tool if i == 1 else "none"), messages))
    print("\nKV memory report")
    print(usage.report())
    print("\nWhy each ratio is what it is")
    for i, messages in enumerate(results, 1):
        for line in explain_compression(messages):
            print(f"  task {i}, {line}")
    answers = [m[-1].text if m else "" for m in results]
    return {"answer": answers[0], "answers": answers, "calls": len(usage.calls), "usage": usage.to_dict()}


if __name__ == "__main__":
    main()
