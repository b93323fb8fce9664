"""Memory cap: fit a call's worst-case KV memory under a cap, keeping as much thinking as possible.

Also clamps the plain limits of a policy file (max thinking budget, width, compression,
max_tokens), so it is the stage that makes a file's caps hold; put it last in a chain.

Order of the levers, cheapest in accuracy first: raise compression through the allowed levels
(DMS keeps accuracy up to its trained ratio), then lower max_tokens (first the answer's slack
beyond its reserve, then the thinking budget down to the minimum: the largest that fits, found by
bisection since the cost is monotone in generated tokens), then lower the width.
When even compression at its maximum, the minimum budget and one sample cannot fit (a very long
prompt), the plan is left at that minimum and its ``memory`` reason says "cannot fit".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, Plan
from budgetllm.policy.chain import StageAsPolicy
from budgetllm.policy.cost import format_bytes, plan_kv_tokens_read, plan_peak_kv_tokens, with_estimates
from budgetllm.policy.fit import fit_plan
from budgetllm.policy.settings import fit_tokens, note


@dataclass
class MemoryCapPolicy(StageAsPolicy):
    max_peak_kv_bytes: int | None = None
    max_peak_kv_tokens: int | None = None
    max_kv_bytes_read: int | None = None
    compressions: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    max_compression: float | None = None  # default: the largest allowed level
    max_thinking_budget: int | None = None
    min_thinking_budget: int = 0
    max_width: int | None = None
    max_tokens: int | None = None
    fit_free_memory: bool = False  # also fit under the engine's free KV memory right now
    # With a decode speed, an agent's kv_byte_seconds_left becomes a cap on KV reads:
    # byte-seconds = integral of live bytes over time = bytes read / tokens per second.
    decode_tokens_per_second: float | None = None
    base: BudgetPolicy = field(default_factory=FixedPolicy)

    def __post_init__(self) -> None:
        self.compressions = tuple(sorted({float(c) for c in self.compressions}))
        if self.max_compression is None:
            self.max_compression = max(self.compressions)

    # -- plain clamps -------------------------------------------------------------------------
    def _clamp(self, plan: Plan) -> Plan:
        reasons = dict(plan.reasons)
        changes: dict[str, object] = {}
        if self.max_thinking_budget is not None and (plan.thinking_budget or 0) > self.max_thinking_budget:
            changes["thinking_budget"] = self.max_thinking_budget
            changes["max_tokens"] = plan.max_tokens - (plan.thinking_budget - self.max_thinking_budget)
            reasons = note(reasons, "thinking_budget", f"capped at {self.max_thinking_budget} (limits)")
        if plan.thinking_budget is not None and plan.thinking_budget < self.min_thinking_budget:
            changes["thinking_budget"] = self.min_thinking_budget
            changes["max_tokens"] = plan.max_tokens + self.min_thinking_budget - plan.thinking_budget
            reasons = note(
                reasons, "thinking_budget", f"raised to the minimum {self.min_thinking_budget} (limits)"
            )
        if self.max_width is not None and plan.width > self.max_width:
            changes["width"] = self.max_width
            reasons = note(reasons, "width", f"capped at {self.max_width} (limits)")
        if plan.compression < self.compressions[0] <= self.max_compression:
            changes["compression"] = self.compressions[0]
            reasons = note(
                reasons,
                "compression",
                f"raised to {self.compressions[0]:g}, the smallest allowed level (limits)",
            )
        if plan.compression > self.max_compression:
            changes["compression"] = self.max_compression
            reasons = note(reasons, "compression", f"capped at {self.max_compression:g} (limits)")
        plan = replace(plan, reasons=reasons, **changes)
        if self.max_tokens is not None:
            plan = fit_tokens(plan, self.max_tokens, "limits.max_tokens")
        return plan

    # -- the memory fit -----------------------------------------------------------------------
    def _caps(self, context: CallContext) -> tuple[float | None, float | None, list[str]]:
        """(peak token cap, read token cap, descriptions); bytes become tokens via the profile."""
        per_token = context.model.kv_bytes_per_token
        peak, reads, said = None, None, []

        def lower(current: float | None, value: float) -> float:
            return value if current is None else min(current, value)

        if self.max_peak_kv_tokens is not None:
            peak = lower(peak, self.max_peak_kv_tokens)
            said.append(f"peak {self.max_peak_kv_tokens} KV tokens")
        byte_caps = [(self.max_peak_kv_bytes, "cap")]
        if self.fit_free_memory and context.free_kv_bytes is not None:
            byte_caps.append((context.free_kv_bytes, "free pool memory"))
        for cap, label in byte_caps:
            if cap is not None and per_token > 0:
                peak = lower(peak, cap / per_token)
                said.append(f"peak {format_bytes(cap)} ({label})")
        if self.max_kv_bytes_read is not None and per_token > 0:
            reads = lower(reads, self.max_kv_bytes_read / per_token)
            said.append(f"{format_bytes(self.max_kv_bytes_read)} KV read")
        left = context.agent.kv_byte_seconds_left
        if left is not None and self.decode_tokens_per_second and per_token > 0:
            reads = lower(reads, left * self.decode_tokens_per_second / per_token)
            said.append(f"agent's {format_bytes(left)}·s left")
        return peak, reads, said

    def refine(self, context: CallContext, plan: Plan) -> Plan:
        # The memory fit works on the call's fitted plan (fit_plan is idempotent, and what this
        # stage changes only lowers max_tokens, so the final fit after it changes nothing).
        plan = fit_plan(context, self._clamp(plan))
        peak_cap, read_cap, said = self._caps(context)
        has_byte_cap = self.max_peak_kv_bytes is not None or self.max_kv_bytes_read is not None
        if peak_cap is None and read_cap is None:
            if has_byte_cap and context.model.kv_bytes_per_token <= 0:
                plan = replace(
                    plan, reasons=note(plan.reasons, "memory", "cap not checked: KV bytes per token unknown")
                )
            return with_estimates(context, plan)

        def fits(p: Plan) -> bool:
            ok_peak = peak_cap is None or plan_peak_kv_tokens(context, p) <= peak_cap
            return ok_peak and (read_cap is None or plan_kv_tokens_read(context, p) <= read_cap)

        fitted, how = self._fit(plan, fits)
        cap_text = ", ".join(said)
        if fitted is None:
            fitted = self._minimum(plan)
            estimate = with_estimates(context, fitted)
            text = (
                f"cannot fit under {cap_text}: even compression {fitted.compression:g}, thinking budget "
                f"{fitted.thinking_budget or 0} and width 1 need ~{format_bytes(estimate.peak_kv_bytes)} peak "
                f"({context.prompt_tokens} prompt tokens); shorten the prompt or raise the cap"
            )
        else:
            text = f"fits under {cap_text}" + (f" after {how}" if how else "")
        return with_estimates(context, replace(fitted, reasons=note(fitted.reasons, "memory", text)))

    def _fit(self, plan: Plan, fits: Callable[[Plan], bool]) -> tuple[Plan | None, str]:
        if fits(plan):
            return plan, ""
        # 1. Raise compression through the allowed levels.
        for level in [c for c in self.compressions if plan.compression < c <= self.max_compression]:
            stronger = replace(plan, compression=level)
            if fits(stronger):
                why = f"raised from {plan.compression:g} to {level:g} to fit the memory cap"
                return replace(
                    stronger, reasons=note(plan.reasons, "compression", why)
                ), "raising compression"
        raised = plan.compression < self.max_compression
        if raised:
            why = f"raised from {plan.compression:g} to {self.max_compression:g} to fit the memory cap"
            plan = replace(
                plan, compression=self.max_compression, reasons=note(plan.reasons, "compression", why)
            )
        # 2. Lower max_tokens (answer slack, then thinking budget), at each width from the planned one down.
        for width in range(plan.width, 0, -1):
            candidate = replace(plan, width=width)
            shrunk = self._largest_fitting(candidate, fits)
            if shrunk is not None:
                if width != plan.width:
                    why = f"lowered from {plan.width} to {width} to fit the memory cap"
                    shrunk = replace(shrunk, reasons=note(shrunk.reasons, "width", why))
                return shrunk, ("raising compression and " if raised else "") + "lowering max_tokens"
        return None, ""

    def _floor_tokens(self, plan: Plan) -> int:
        return (
            min(plan.thinking_budget, self.min_thinking_budget) if plan.thinking_budget else 0
        ) + plan.answer_reserve

    def _largest_fitting(self, plan: Plan, fits: Callable[[Plan], bool]) -> Plan | None:
        """The plan with the largest max_tokens in [floor, planned] that fits (bisection), else None."""
        low, high = self._floor_tokens(plan), plan.max_tokens
        if not fits(fit_tokens(plan, low, "")):
            return None
        while low < high:
            mid = (low + high + 1) // 2
            if fits(fit_tokens(plan, mid, "")):
                low = mid
            else:
                high = mid - 1
        return fit_tokens(plan, low, "the memory cap") if low < plan.max_tokens else plan

    def _minimum(self, plan: Plan) -> Plan:
        smallest = replace(plan, width=1, compression=self.max_compression)
        return fit_tokens(smallest, self._floor_tokens(plan), "the memory cap (minimum)")
