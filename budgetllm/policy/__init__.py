"""Budget policies: per call, how long the model may think and how hard its KV cache is compressed.

Owns: the policy contract (``CallContext`` -> ``Plan``), the built-in policies, policy files
(YAML/TOML, validated with pydantic at the edge), calibration tables.
Must not import: torch, the engine, models, kernels, or ``budgetllm.accounting``.
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

__all__ = [
    "AgentBudget",
    "BudgetPolicy",
    "CallContext",
    "FixedPolicy",
    "ModelProfile",
    "Plan",
    "RequestedLimits",
]
