"""Shared builders for the policy tests: contexts, plans, and a tiny TOML writer."""

from __future__ import annotations

import json
from pathlib import Path

from budgetllm.policy import AgentBudget, CallContext, ModelProfile, Plan, RequestedLimits

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "policies"
SMOLLM = ModelProfile(name="smollm2-135m", kv_bytes_per_token=23040, window=512, max_context=8192)


def ctx(
    prompt: int = 100, model: ModelProfile = SMOLLM, step: int = 0, step_name: str | None = None, **kw
) -> CallContext:
    requested = {k: kw.pop(k) for k in list(kw) if k in RequestedLimits.__dataclass_fields__}
    agent = {k: kw.pop(k) for k in list(kw) if k in ("tokens_left", "kv_byte_seconds_left", "calls_left")}
    return CallContext(
        prompt_tokens=prompt,
        requested=RequestedLimits(**requested),
        agent=AgentBudget(step=step, step_name=step_name, **agent),
        model=model,
        **kw,
    )


def plan(
    budget: int | None = 1024,
    reserve: int = 256,
    compression: float = 1.0,
    width: int = 1,
    max_tokens: int | None = None,
) -> Plan:
    return Plan(
        thinking_budget=budget,
        answer_reserve=reserve,
        compression=compression,
        max_tokens=max_tokens if max_tokens is not None else (budget or 0) + reserve,
        width=width,
        reasons={"thinking_budget": "test"},
    )


def assert_invariants(p: Plan) -> None:
    assert p.max_tokens >= 0
    assert 0 <= p.answer_reserve <= p.max_tokens or p.max_tokens == 0
    if p.thinking_budget:
        assert p.thinking_budget + p.answer_reserve <= p.max_tokens
    assert p.compression >= 1
    assert p.width >= 1


def toml_dumps(data: dict) -> str:
    """Enough TOML for the fuzz tests: scalars, lists of scalars, nested tables as headers."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(str(k))} = {value(x)}" for k, x in v.items()) + "}"
        return json.dumps(str(v))

    lines, tables = [], []
    for k, v in data.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = [f"{json.dumps(str(k))} = {value(v)}" for k, v in lines]
    for k, table in tables:
        out.append(f"[{json.dumps(str(k))}]")
        out += [f"{json.dumps(str(a))} = {value(b)}" for a, b in table.items()]
    return "\n".join(out) + "\n"
