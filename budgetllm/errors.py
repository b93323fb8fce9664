"""Error types. Every message says what was wrong, what was found and how to fix it."""

from __future__ import annotations


class BudgetLLMError(Exception):
    """Base class of every error budgetllm raises on purpose."""


class InvalidRequestError(BudgetLLMError, ValueError):
    """A call's arguments are invalid (negative budget, compression <= 0, ...)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class PromptTooLongError(InvalidRequestError):
    """The prompt (plus the tokens the call may generate) does not fit the model's context."""

    def __init__(self, prompt_tokens: int, max_context: int, reserve: int = 0):
        self.prompt_tokens = prompt_tokens
        self.max_context = max_context
        msg = (
            f"the prompt has {prompt_tokens} tokens but the model's context holds {max_context}"
            + (f" (and {reserve} tokens are reserved for the answer)" if reserve else "")
            + "; shorten the prompt or lower max_tokens"
        )
        super().__init__("prompt", msg)


class ModelNotFoundError(BudgetLLMError, FileNotFoundError):
    """The model id or path names nothing that can be loaded."""


class UnsupportedArchitectureError(BudgetLLMError, ValueError):
    """The model's architecture is not one budgetllm runs."""


class CheckpointFormatError(BudgetLLMError, ValueError):
    """A DMS checkpoint or adapter file is malformed or does not match the model."""


class PoolExhaustedError(BudgetLLMError, RuntimeError):
    """The KV pool cannot hold the request, even alone. Smaller requests still run."""


class RequestCancelledError(BudgetLLMError, RuntimeError):
    """The request was cancelled before it finished."""


class PolicyFileError(BudgetLLMError, ValueError):
    """A policy or calibration file cannot be loaded.

    The message names the file, the line where known, the field and the fix, one problem per
    line, e.g. ``policy.yaml, line 7: tiers.fast.thinking_budget: must be >= 0 (got -5). Fix: ...``.
    ``problems`` holds the same as records (file, line, field, message, fix).
    """

    def __init__(self, message: str, problems: list | None = None):
        self.problems = list(problems or [])
        super().__init__(message)
