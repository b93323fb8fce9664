"""Load-aware: compress harder (and think less, sample less) when the KV pool is nearly full.

A full pool makes new requests wait; raising compression for the calls admitted now lets more
users fit at once, at a small accuracy cost (DMS holds accuracy up to its trained ratio). The
bands are checked against ``free_kv_bytes / total_kv_bytes``; the most severe band that applies
wins. The stage only ever raises compression and lowers budget / width, never the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from budgetllm.policy.base import BudgetPolicy, CallContext, FixedPolicy, Plan
from budgetllm.policy.chain import StageAsPolicy
from budgetllm.policy.cost import with_estimates
from budgetllm.policy.settings import normalized, note


@dataclass(frozen=True)
class LoadBand:
    """Applies when the free fraction of the pool is below ``free_below`` (0..1]."""

    free_below: float
    min_compression: float | None = None
    max_width: int | None = None
    budget_scale: float | None = None  # multiply the thinking budget (0..1]


DEFAULT_BANDS: tuple[LoadBand, ...] = (
    LoadBand(free_below=0.5, min_compression=4.0),
    LoadBand(free_below=0.2, min_compression=8.0, max_width=1),
)


@dataclass
class LoadAwarePolicy(StageAsPolicy):
    bands: tuple[LoadBand, ...] = DEFAULT_BANDS
    base: BudgetPolicy = field(default_factory=FixedPolicy)

    def band_for(self, free_fraction: float) -> LoadBand | None:
        applying = [b for b in self.bands if free_fraction < b.free_below]
        return min(applying, key=lambda b: b.free_below) if applying else None

    def refine(self, context: CallContext, plan: Plan) -> Plan:
        plan = normalized(plan)
        free, total = context.free_kv_bytes, context.total_kv_bytes
        if free is None or not total:
            return replace(plan, reasons=note(plan.reasons, "load", "pool load unknown: no change"))
        fraction = max(0.0, min(1.0, free / total))
        band = self.band_for(fraction)
        if band is None:
            return replace(plan, reasons=note(plan.reasons, "load", f"pool {fraction:.0%} free: no change"))
        why = f"pool only {fraction:.0%} free (< {band.free_below:.0%})"
        reasons = note(plan.reasons, "load", why)
        if band.min_compression is not None and plan.compression < band.min_compression:
            reasons = note(
                reasons, "compression", f"raised from {plan.compression:g} to {band.min_compression:g}: {why}"
            )
            plan = replace(plan, compression=band.min_compression)
        if band.max_width is not None and plan.width > band.max_width:
            reasons = note(reasons, "width", f"lowered from {plan.width} to {band.max_width}: {why}")
            plan = replace(plan, width=band.max_width)
        plan = replace(plan, reasons=reasons)
        if band.budget_scale is not None and plan.thinking_budget:
            budget = int(plan.thinking_budget * band.budget_scale)
            cut = plan.thinking_budget - budget
            if cut > 0:
                reasons = note(
                    plan.reasons, "thinking_budget", f"scaled by {band.budget_scale:g} to {budget}: {why}"
                )
                plan = replace(
                    plan, thinking_budget=budget, max_tokens=plan.max_tokens - cut, reasons=reasons
                )
        return with_estimates(context, plan)
