"""Budget policies: per call, how long the model may think and how hard its KV cache is compressed.

Owns: the policy contract (``CallContext`` -> ``Plan``), the built-in policies, policy files
(YAML/TOML, validated with pydantic at the edge), calibration tables and the map from a model to
the table budgetllm ships for it (``shipped``).
Must not import: torch, the engine, models, kernels, or ``budgetllm.accounting``.

The one extension point is ``BudgetPolicy``: anything with ``plan(context) -> Plan``. Stages
(``refine(context, plan) -> Plan``) compose in a ``PolicyChain``; ``load_policy(path)`` builds one
from a file. Precedence of settings: see ``budgetllm.policy.tiered``. A policy proposes;
``plan_call(policy, context)`` fits the proposal to the call once (``budgetllm.policy.fit``) and
is what the engine runs.
"""

from budgetllm.policy.base import (
    AgentBudget,
    BudgetPolicy,
    CallContext,
    FixedPolicy,
    ModelProfile,
    Plan,
    RequestedLimits,
)
from budgetllm.policy.calibration import CalibrationGrid, CalibrationPoint, CalibrationTable, build_table
from budgetllm.policy.chain import EscalatingPolicy, PlanStage, PolicyChain
from budgetllm.policy.cost import kv_tokens_read, live_tokens, parse_size, peak_kv_tokens, with_estimates
from budgetllm.policy.effort import DEFAULT_EFFORT_MAP, EFFORT_LEVELS, EffortPolicy
from budgetllm.policy.escalation import EscalationPolicy, EscalationStep
from budgetllm.policy.fit import escalate_call, fit_plan, plan_call
from budgetllm.policy.frontier_plot import plot_frontier
from budgetllm.policy.load_aware import LoadAwarePolicy, LoadBand
from budgetllm.policy.memory_cap import MemoryCapPolicy
from budgetllm.policy.pareto import ParetoPolicy
from budgetllm.policy.settings import PlanSettings
from budgetllm.policy.tiered import TieredPolicy

# Policy files need pydantic and yaml (~0.3 s to import): loaded on first use, so that
# `import budgetllm` stays fast for callers that never read a file.
_LAZY = {"FilePolicy": "budgetllm.policy.loader", "load_policy": "budgetllm.policy.loader",
         "load_policy_bytes": "budgetllm.policy.loader"}  # fmt: skip


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'budgetllm.policy' has no attribute {name!r}")


__all__ = [
    "DEFAULT_EFFORT_MAP",
    "EFFORT_LEVELS",
    "AgentBudget",
    "BudgetPolicy",
    "CalibrationGrid",
    "CalibrationPoint",
    "CalibrationTable",
    "CallContext",
    "EffortPolicy",
    "EscalatingPolicy",
    "EscalationPolicy",
    "EscalationStep",
    "FilePolicy",
    "FixedPolicy",
    "LoadAwarePolicy",
    "LoadBand",
    "MemoryCapPolicy",
    "ModelProfile",
    "ParetoPolicy",
    "Plan",
    "PlanSettings",
    "PlanStage",
    "PolicyChain",
    "RequestedLimits",
    "TieredPolicy",
    "build_table",
    "escalate_call",
    "fit_plan",
    "kv_tokens_read",
    "live_tokens",
    "load_policy",
    "load_policy_bytes",
    "parse_size",
    "peak_kv_tokens",
    "plan_call",
    "plot_frontier",
    "with_estimates",
]
