"""Tiers and per-tool / per-agent-step overrides: the base policy of a policy file.

Precedence, lowest first (a later layer overrides the fields it sets):

1. built-in defaults (answer reserve 256, the model's native compression, one sample);
2. the file's ``defaults``;
3. the tier: ``context.tier``, else the file's ``default_tier``;
4. the tool override: ``tools[context.tool_name]``;
5. the step override: ``steps[name]`` for the agent's ``step_name``, ``steps["3"]`` for step 3,
   or ``steps[">=3"]`` for step 3 and later (the most specific match wins: name, number, range);
6. the caller's ``reasoning_effort``, then the caller's explicit thinking_budget, compression,
   max_tokens, temperature and top_p: the caller beats every file default;
7. the file's ``limits`` and memory cap, applied after this policy by a ``MemoryCapPolicy``
   stage: caps beat the caller.

A layer that names an ``effort`` first expands into that effort level's settings, then applies
its own fields, so ``{effort: high, compression: 4}`` is "high, but at CR4".
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from budgetllm.errors import InvalidRequestError
from budgetllm.policy.base import CallContext, Plan
from budgetllm.policy.effort import EffortPolicy, caller_layer, check_effort_name
from budgetllm.policy.settings import REQUESTED, Layers, PlanSettings, build_plan

_RANGE = re.compile(r"^\s*>=\s*(\d+)\s*$")


@dataclass
class TieredPolicy:
    defaults: PlanSettings = field(default_factory=PlanSettings)
    tiers: dict[str, PlanSettings] = field(default_factory=dict)
    tools: dict[str, PlanSettings] = field(default_factory=dict)
    steps: dict[str, PlanSettings] = field(default_factory=dict)
    effort: EffortPolicy = field(default_factory=EffortPolicy)
    default_tier: str | None = None
    name: str = "tiered"

    def tier_name(self, context: CallContext) -> str | None:
        tier = context.tier or self.default_tier
        if tier is not None and tier not in self.tiers:
            close = difflib.get_close_matches(tier, list(self.tiers), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise InvalidRequestError(
                "tier", f"unknown tier '{tier}'; {hint}known tiers: {', '.join(self.tiers) or 'none'}"
            )
        return tier

    def step_key(self, context: CallContext) -> str | None:
        agent = context.agent
        if agent.step_name is not None and agent.step_name in self.steps:
            return agent.step_name
        if str(agent.step) in self.steps:
            return str(agent.step)
        ranges = [(int(m.group(1)), key) for key in self.steps if (m := _RANGE.match(key))]
        started = [(start, key) for start, key in ranges if agent.step >= start]
        return max(started)[1] if started else None  # the latest range that has started

    def layered(self, context: CallContext) -> Layers:
        layers = Layers()
        stack: list[tuple[PlanSettings, str]] = [(self.defaults, "file defaults")]
        tier = self.tier_name(context)
        if tier is not None:
            source = "requested tier" if context.tier else "default tier"
            stack.append((self.tiers[tier], f"{source} '{tier}'"))
        if context.tool_name is not None and context.tool_name in self.tools:
            stack.append((self.tools[context.tool_name], f"tool '{context.tool_name}' override"))
        step = self.step_key(context)
        if step is not None:
            stack.append((self.steps[step], f"agent step '{step}' override"))
        requested = context.requested.reasoning_effort
        decided = any(s.effort is not None or s.thinking_budget is not None for s, _ in stack)
        if requested is None and not decided:
            # Nothing in the file chose a budget for this call: the default effort is the base.
            self.effort.expand(layers, self.effort.default_effort, "the file's default effort")
        for settings, why in stack:
            if settings.effort is not None:
                self.effort.expand(layers, settings.effort, why)
            layers.apply(settings, why)
        if requested is not None:
            self.effort.expand(layers, check_effort_name(requested), REQUESTED)
        layers.apply(caller_layer(context), REQUESTED)
        return layers

    def plan(self, context: CallContext) -> Plan:
        return build_plan(context, self.layered(context), self.name)
