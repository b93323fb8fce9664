"""Composition: a base policy proposes a plan, stages refine it, each adding its reason.

kvpress composes presses by wrapping; here a ``PolicyChain`` threads one plan through stages,
e.g. ``PolicyChain(EffortPolicy(), [LoadAwarePolicy(...), MemoryCapPolicy(...)])``. A stage is
anything with ``refine(context, plan) -> Plan``. The built-in stages are also policies on their
own (``plan(context)`` refines their ``base``), so one class serves both uses.

Order matters: caps go last so nothing after them can break them. Escalation re-runs the
stages on the escalated plan, so a retry never exceeds a cap either. The chain proposes; the
token fit (caller, context, agent) happens once, after it, in ``budgetllm.policy.fit``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, Plan


@runtime_checkable
class PlanStage(Protocol):
    """Refines a plan another policy made (raise compression, lower a budget, ...)."""

    def refine(self, context: CallContext, plan: Plan) -> Plan: ...


@runtime_checkable
class EscalatingPolicy(Protocol):
    """A policy that can retry a call with more budget or width when no answer was extracted."""

    def plan(self, context: CallContext) -> Plan: ...

    def escalate(self, context: CallContext, previous: Plan, attempt: int) -> Plan | None: ...


class StageAsPolicy:
    """Mixin: a stage with a ``base`` field is also a policy (it refines its base's plan)."""

    base: BudgetPolicy

    def refine(self, context: CallContext, plan: Plan) -> Plan:  # pragma: no cover - overridden
        raise NotImplementedError

    def plan(self, context: CallContext) -> Plan:
        return self.refine(context, self.base.plan(context))


def _same_effort(a: Plan, b: Plan) -> bool:
    return (a.thinking_budget, a.max_tokens, a.width, a.compression) == (
        b.thinking_budget,
        b.max_tokens,
        b.width,
        b.compression,
    )


@dataclass
class PolicyChain:
    """``base`` makes the plan; ``stages`` refine it in order."""

    base: BudgetPolicy = field(default_factory=FixedPolicy)
    stages: list[PlanStage] = field(default_factory=list)
    name: str | None = None

    def _finish(self, context: CallContext, plan: Plan) -> Plan:
        for stage in self.stages:
            plan = stage.refine(context, plan)
        return plan if self.name is None else replace(plan, policy=self.name)

    def plan(self, context: CallContext) -> Plan:
        return self._finish(context, self.base.plan(context))

    def escalate(self, context: CallContext, previous: Plan, attempt: int) -> Plan | None:
        """The base's escalation, capped again by the stages; None when exhausted or blocked."""
        escalate = getattr(self.base, "escalate", None)
        if escalate is None:
            return None
        raw = escalate(context, previous, attempt)
        if raw is None:
            return None
        plan = self._finish(context, raw)
        if _same_effort(plan, previous):
            return None  # the caps undo the escalation: retrying would repeat the same call
        return plan
