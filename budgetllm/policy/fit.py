"""The one budget fit: a policy's proposal becomes the plan the engine runs.

A policy (``plan(context)``) proposes a thinking budget, answer reserve, max_tokens, compression
and width. ``fit_plan`` is the only code that then fits the three token numbers to the call, in
this order; everything after it (the LLM, the thinking controller, the agent middleware) only
checks the result (``check_fitted``):

1. ``max_tokens`` grows to hold ``thinking_budget + answer_reserve`` (a policy's max_tokens is a
   default; the budget is the intent), but not above the call's lowest ceiling (step 3);
2. the caller's ``answer_reserve`` replaces the policy's (up to max_tokens: it does not grow it);
3. ceilings no policy may lift lower ``max_tokens``: the caller's ``max_tokens`` (a hard ceiling,
   as in Anthropic's API), the model's context left after the prompt (and after the open tag when
   the call will open a thinking block), the agent's tokens left, and, once the agent's budget is
   spent, ``AgentBudget.max_tokens_when_spent`` with thinking off. When a ceiling is tight the
   thinking budget gives way before the answer reserve, except that a reserve the caller did not
   ask for never starves a budget the caller did ask for: it shrinks to what the budget leaves
   (at least a quarter of max_tokens stays for the answer);
4. a budget too small to even write the close tag becomes 0 (thinking off); a prompt that already
   opens a thinking block (R1-style templates) without a budget gets what max_tokens leaves after
   the reserve;
5. the cost model's estimates are filled in for the final numbers.

A prompt that leaves the context no room for a single generated token raises
``PromptTooLongError``; one that leaves less than the plan wanted shrinks the plan (the reasons
say so), as any other ceiling does.
The fit is idempotent: ``fit_plan(c, fit_plan(c, p)) == fit_plan(c, p)``, so a stage that needs to
see the fitted plan (the memory cap) may fit early without changing the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from budgetllm.errors import InvalidRequestError, PromptTooLongError
from budgetllm.policy.base import BudgetPolicy, CallContext, Plan
from budgetllm.policy.cost import with_estimates
from budgetllm.policy.settings import REQUESTED, fit_tokens, normalized, note


def plan_call(policy: BudgetPolicy, context: CallContext) -> Plan:
    """The plan of one call: the policy proposes, ``fit_plan`` fits. The engine runs the result."""
    return fit_plan(context, policy.plan(context))


def escalate_call(policy: BudgetPolicy, context: CallContext, previous: Plan, attempt: int) -> Plan | None:
    """The fitted plan of retry ``attempt`` (1 = the first retry), or None when the policy cannot
    escalate, its ladder is exhausted, or the fitted retry would repeat the previous call."""
    escalate = getattr(policy, "escalate", None)
    proposal = escalate(context, previous, attempt) if escalate is not None else None
    if proposal is None:
        return None
    plan = fit_plan(context, proposal)
    same = ("thinking_budget", "max_tokens", "compression", "width")
    if all(getattr(plan, name) == getattr(previous, name) for name in same):
        return None
    return plan


@dataclass(frozen=True)
class PlannedPolicy:
    """A policy that returns a plan made before (a fitted retry): fitting it again changes nothing."""

    fitted: Plan

    def plan(self, context: CallContext) -> Plan:
        return self.fitted


def fit_plan(context: CallContext, plan: Plan) -> Plan:
    """Fit a proposed plan to the call (see the module docstring for the order of the rules)."""
    if (
        not isinstance(plan.compression, (int, float))
        or not plan.compression > 0
        or not math.isfinite(plan.compression)
    ):
        raise InvalidRequestError("compression", f"the policy chose {plan.compression}; it must be > 0")
    req, agent = context.requested, context.agent
    spent = agent.spent() if agent.max_tokens_when_spent is not None else []
    if spent and (plan.thinking_budget or (plan.thinking_budget is None and context.thinking_open)):
        why = f"the agent's {' and '.join(spent)} is spent: thinking off"
        plan = replace(plan, thinking_budget=0, reasons=note(plan.reasons, "thinking_budget", why))
    room = context.model.max_context - context.prompt_tokens
    if plan.thinking_budget and not context.thinking_open:
        room -= context.model.thinking_open_tokens  # the open tag the engine appends to the prompt
    ceilings = []
    if req.max_tokens is not None:
        ceilings.append((req.max_tokens, "the caller's max_tokens"))
    ceilings.append((room, f"the model's context holds {context.model.max_context} tokens"))
    if agent.tokens_left is not None:
        ceilings.append((agent.tokens_left, "the agent's tokens left"))
    if spent:
        ceilings.append((agent.max_tokens_when_spent, f"the agent's {' and '.join(spent)} is spent"))
    lowest = min(c for c, _ in ceilings)
    plan = normalized(plan, up_to=lowest)
    if room < min(1, plan.max_tokens, req.max_tokens if req.max_tokens is not None else 1):
        raise PromptTooLongError(context.prompt_tokens, context.model.max_context)
    if req.answer_reserve is not None and plan.answer_reserve != min(req.answer_reserve, plan.max_tokens):
        reserve = min(req.answer_reserve, plan.max_tokens)
        plan = replace(plan, answer_reserve=reserve, reasons={**plan.reasons, "answer_reserve": REQUESTED})
    plan = _keep_callers_budget(context, plan, lowest)
    for ceiling, why in ceilings:
        plan = fit_tokens(plan, ceiling, why)
    plan = _thinking_edges(context, plan)
    return with_estimates(context, plan)


def _keep_callers_budget(context: CallContext, plan: Plan, ceiling: int) -> Plan:
    """A reserve the caller did not ask for shrinks so that a budget the caller asked for fits."""
    req = context.requested
    budget, reserve = plan.thinking_budget, plan.answer_reserve
    max_tokens = max(min(plan.max_tokens, ceiling), 0)
    if (
        not budget
        or budget != req.thinking_budget
        or req.answer_reserve is not None
        or budget + reserve <= max_tokens
    ):
        return plan
    shrunk = min(reserve, max(max_tokens - budget, max_tokens // 4))
    why = f"shrunk from {reserve} to {shrunk} so the requested thinking budget fits max_tokens {max_tokens}"
    return replace(plan, answer_reserve=shrunk, reasons=note(plan.reasons, "answer_reserve", why))


def _thinking_edges(context: CallContext, plan: Plan) -> Plan:
    """An opened block without a budget gets what max_tokens leaves after the reserve; a budget
    too small to write the close tag turns thinking off."""
    budget, reasons = plan.thinking_budget, plan.reasons
    if budget is None and context.thinking_open:
        budget = plan.max_tokens - plan.answer_reserve
        why = f"the prompt opens a thinking block: max_tokens minus the answer reserve ({budget})"
        reasons = note(reasons, "thinking_budget", why)
    close = context.model.thinking_close_tokens
    if budget and budget < close:
        why = f"{budget} tokens cannot hold the {close}-token close of a thinking block: thinking off"
        budget, reasons = 0, note(reasons, "thinking_budget", why)
    if budget == plan.thinking_budget:
        return plan
    return replace(plan, thinking_budget=budget, reasons=reasons)


def check_fitted(plan: Plan, prompt_tokens: int, max_context: int) -> None:
    """What the engine may assume of a fitted plan; a failure here is a bug in the fit."""
    budget = plan.thinking_budget or 0
    assert 0 <= plan.answer_reserve <= plan.max_tokens or plan.max_tokens == 0, plan
    assert budget + plan.answer_reserve <= plan.max_tokens or budget == 0, plan
    assert prompt_tokens + plan.max_tokens <= max_context, (prompt_tokens, plan.max_tokens, max_context)
