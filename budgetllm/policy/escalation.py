"""Escalation: when a call's answer could not be extracted, retry with more budget or width.

``plan(context)`` is the base's plan; ``escalate(context, previous, attempt)`` gives the plan
for retry number ``attempt`` (1 = the first retry), or None when the steps are exhausted, the
agent has no calls left, or the step would change nothing. The default ladder follows
docs/notes/budget.md §4: double the budget and the compression (peak KV stays about constant),
then NoThinking with parallel samples and a majority vote, which beats truncated thinking at
small budgets. Wrap it in a ``PolicyChain`` to keep a memory cap on the retries. The retry is a
proposal like any plan: ``budgetllm.policy.fit.escalate_call`` fits it to the call.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, Plan
from budgetllm.policy.settings import VOTING_TEMPERATURE, normalized, note


@dataclass(frozen=True)
class EscalationStep:
    thinking_budget_factor: float = 1.0
    thinking_budget: int | None = None  # an absolute budget wins over the factor
    compression_factor: float = 1.0
    width: int | None = None


DEFAULT_STEPS: tuple[EscalationStep, ...] = (
    EscalationStep(thinking_budget_factor=2.0, compression_factor=2.0),
    EscalationStep(thinking_budget=0, width=4),
)


@dataclass
class EscalationPolicy:
    base: BudgetPolicy = field(default_factory=FixedPolicy)
    steps: tuple[EscalationStep, ...] = DEFAULT_STEPS
    max_compression: float = 8.0

    def plan(self, context: CallContext) -> Plan:
        return self.base.plan(context)

    def escalate(self, context: CallContext, previous: Plan, attempt: int) -> Plan | None:
        if attempt < 1 or attempt > len(self.steps):
            return None
        if context.agent.calls_left is not None and context.agent.calls_left <= 0:
            return None
        step = self.steps[attempt - 1]
        previous = normalized(previous)
        why = f"escalation {attempt}/{len(self.steps)}: no answer extracted"
        reasons = dict(previous.reasons)
        old_budget = previous.thinking_budget
        budget = old_budget
        if step.thinking_budget is not None:
            budget = step.thinking_budget
        elif old_budget:
            budget = int(old_budget * step.thinking_budget_factor)
        max_tokens = previous.max_tokens + (budget or 0) - (old_budget or 0)
        if budget != old_budget:
            reasons = note(reasons, "thinking_budget", f"{old_budget} -> {budget} ({why})")
        compression = min(
            previous.compression * step.compression_factor, max(self.max_compression, previous.compression)
        )
        if compression != previous.compression:
            reasons = note(reasons, "compression", f"{previous.compression:g} -> {compression:g} ({why})")
        width = step.width if step.width is not None else previous.width
        temperature = previous.temperature
        if width != previous.width:
            reasons = note(reasons, "width", f"{previous.width} -> {width} ({why}; majority vote)")
            if width > 1 and not temperature and context.requested.temperature is None:
                temperature = VOTING_TEMPERATURE
                reasons = note(reasons, "temperature", f"{VOTING_TEMPERATURE}: voting needs sampling")
        plan = replace(
            previous,
            thinking_budget=budget,
            max_tokens=max(max_tokens, previous.answer_reserve),
            compression=compression,
            width=width,
            temperature=temperature,
            reasons=reasons,
        )
        same = (plan.thinking_budget, plan.compression, plan.width, plan.max_tokens) == (
            previous.thinking_budget,
            previous.compression,
            previous.width,
            previous.max_tokens,
        )
        return None if same else plan
