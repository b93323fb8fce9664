"""budgetllm: cheap long-thinking LLM agents with DMS-compressed KV caches.

    from budgetllm import LLM
    llm = LLM.from_pretrained()                       # embedded SmolLM2-135M-Instruct, offline
    out = llm.generate("What is 7*6?", compression=8, thinking_budget=64)
    print(out.text, out.usage.kv.compression_achieved)
"""

from budgetllm.accounting import KVMeter, KVShape, UsageLog, format_bytes, render_usage_table
from budgetllm.errors import (
    BudgetLLMError,
    CheckpointFormatError,
    InvalidRequestError,
    ModelNotFoundError,
    PoolExhaustedError,
    PromptTooLongError,
    RequestCancelledError,
    UnsupportedArchitectureError,
)
from budgetllm.llm_like import LLMLike
from budgetllm.options import EFFORT_LEVELS, CallOptions, validate_options
from budgetllm.policy import (
    AgentBudget,
    BudgetPolicy,
    CallContext,
    FixedPolicy,
    ModelProfile,
    Plan,
    RequestedLimits,
)
from budgetllm.types import (
    Generation,
    InvalidToolCall,
    KVMemory,
    SamplingParams,
    StreamEvent,
    ThinkingConfig,
    ToolCall,
    Usage,
)

# Loaded on first use, so that torch-free parts (policy, accounting, the HTTP client) import
# without torch: ``import budgetllm.policy`` must not pull in the engine.
_LAZY = {
    "LLM": ("budgetllm.llm", "LLM"),
    "get_llm": ("budgetllm.concurrency", "get_llm"),
    "release_all": ("budgetllm.concurrency", "release_all"),
    "release_llm": ("budgetllm.concurrency", "release_llm"),
    "RemoteLLM": ("budgetllm.server.client", "RemoteLLM"),
    "load_policy": ("budgetllm.policy", "load_policy"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'budgetllm' has no attribute {name!r}")

__version__ = "0.1.0"

__all__ = [
    "LLM", "get_llm", "RemoteLLM", "load_policy", "release_all", "release_llm",
    "CallOptions", "validate_options", "EFFORT_LEVELS", "LLMLike",
    "Generation", "StreamEvent", "Usage", "KVMemory", "ToolCall", "InvalidToolCall", "SamplingParams",
    "ThinkingConfig", "UsageLog", "KVMeter", "KVShape", "format_bytes", "render_usage_table",
    "BudgetPolicy", "CallContext", "Plan", "AgentBudget", "ModelProfile", "RequestedLimits", "FixedPolicy",
    "BudgetLLMError", "InvalidRequestError", "PromptTooLongError", "ModelNotFoundError",
    "UnsupportedArchitectureError", "CheckpointFormatError", "PoolExhaustedError", "RequestCancelledError",
]
