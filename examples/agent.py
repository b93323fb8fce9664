"""A LangChain agent on ChatDMS: two tools, a per-call budget policy, and a KV-memory report.

    python examples/agent.py                       # embedded SmolLM2-135M, offline, on the CPU
    python examples/agent.py --question "What is the capital of France?"
    python examples/agent.py --model Qwen/Qwen3-1.7B --device cuda --max-tokens 512
    python examples/agent.py --policy examples/policies/memory_cap.yaml   # budgets from a policy file

Each model call gets its thinking budget and compression from a policy file
(``examples/policies/agent.yaml``; or the ``StepPolicy`` class below with ``--policy step``) through
``BudgetMiddleware`` (within an agent-level token budget); ``get_dms_usage_callback`` collects
tokens and KV memory per call. A 135M model rarely decides to call a tool by itself, so the first
call is made with ``tool_choice="calculator"`` (the engine then writes the call's opening and the model the
arguments; ``--force-tool none`` turns this off); larger models use the tools unprompted.
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
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import Field

from budgetllm import CallContext, Plan

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


@dataclass
class StepPolicy:
    """Think on the first call; answer tool results directly, with every token visible.

    Any object with ``plan(CallContext) -> Plan`` is a budgetllm policy; BudgetMiddleware then
    clamps the plan to what the agent has left.
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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--question", default="What is 17 * 23? Use the calculator.")
    parser.add_argument("--model", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2-135M)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--backend", default=None, help='"reference" (any device) or "paged" (CUDA)')
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--token-budget", type=int, default=400, help="generated tokens the whole run may spend")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 helps on a busy machine)")
    parser.add_argument("--policy", default=str(Path(__file__).with_name("policies") / "agent.yaml"),
                        help='a budget policy file (YAML/TOML); "step" uses the StepPolicy class above')
    parser.add_argument("--force-tool", default="calculator",
                        help='the first call must call this tool ("any": some tool; "none": let the model decide)')
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    model = ChatDMS(model=args.model, device=args.device, backend=args.backend, max_tokens=args.max_tokens, temperature=0)
    agent = create_agent(
        model,
        tools=[calculator, lookup],
        system_prompt="You are a helpful assistant. Use the calculator for arithmetic and lookup for facts.",
        middleware=[BudgetMiddleware(StepPolicy() if args.policy == "step" else args.policy,
                                     token_budget=args.token_budget, max_calls=4)]
        + ([] if args.force_tool == "none" else [force_first_tool_call(args.force_tool)]),
    )
    with get_dms_usage_callback() as usage:
        state = agent.invoke({"messages": [{"role": "user", "content": args.question}]})

    print(f"Q: {args.question}")
    for msg in state["messages"][1:]:
        if isinstance(msg, AIMessage):
            plan = msg.response_metadata.get("budget_plan", {})
            thinking = msg.additional_kwargs.get("reasoning_content", "")
            print(f"\n[model] budget={plan.get('thinking_budget')} CR={plan.get('compression')} "
                  f"max_tokens={plan.get('max_tokens')}")
            if thinking:
                print(f"  thinking: {thinking.strip()[:200]!r}")
            for call in msg.tool_calls:
                print(f"  tool call: {call['name']}({call['args']})")
            for bad in msg.invalid_tool_calls:
                print(f"  malformed tool call: {bad.get('error')}")
            if msg.content:
                print(f"  answer: {msg.text.strip()[:300]}")
        elif isinstance(msg, ToolMessage):
            print(f"[tool {msg.name}] {msg.content}")

    print("\nKV memory report")
    print(usage.report())
    answer = state["messages"][-1].text if state["messages"] else ""
    return {"answer": answer, "calls": len(usage.calls), "usage": usage.to_dict()}


if __name__ == "__main__":
    main()
