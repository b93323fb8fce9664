"""budgetllm: cheap long-thinking LLM agents with DMS-compressed KV caches.

    from budgetllm import LLM
    llm = LLM.from_pretrained()                       # embedded SmolLM2-135M-Instruct, offline
    out = llm.generate("What is 7*6?", compression=8, thinking_budget=64)
    print(out.text, out.usage.kv.compression_achieved)
"""

from budgetllm.accounting import KVMeter, KVShape, UsageLog, render_usage_table
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
from budgetllm.llm import LLM, get_llm
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

try:  # policy files (pydantic at the edge)
    from budgetllm.policy import load_policy
except ImportError:  # pragma: no cover - while the policy package is incomplete
    load_policy = None

try:  # the HTTP client (torch-free)
    from budgetllm.server.client import RemoteLLM
except ImportError:  # pragma: no cover - the server extra is optional
    RemoteLLM = None

__version__ = "0.1.0"

__all__ = [
    "LLM", "get_llm", "RemoteLLM", "load_policy",
    "Generation", "StreamEvent", "Usage", "KVMemory", "ToolCall", "InvalidToolCall", "SamplingParams",
    "ThinkingConfig", "UsageLog", "KVMeter", "KVShape", "render_usage_table",
    "BudgetPolicy", "CallContext", "Plan", "AgentBudget", "ModelProfile", "RequestedLimits", "FixedPolicy",
    "BudgetLLMError", "InvalidRequestError", "PromptTooLongError", "ModelNotFoundError",
    "UnsupportedArchitectureError", "CheckpointFormatError", "PoolExhaustedError", "RequestCancelledError",
]
