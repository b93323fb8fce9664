"""The policy file schema (pydantic v2, the only pydantic in the package: files are the edge).

Every model forbids unknown fields (so a misspelling is an error, not a silent default) and is
strict (``"4"`` is not 4, ``true`` is not 1). Rules that span fields raise ``rule_error`` with a
dotted field and a fix, which the loader turns into "file, line N: field: message. Fix: ...".
Sizes accept integers (bytes) or strings with a unit: ``512MiB``, ``2 GiB``, ``1.5GB``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from budgetllm.options import EFFORT_LEVELS, MAX_TOKEN_COUNT, pydantic_bounds
from budgetllm.policy.cost import parse_size

EffortName = Literal[EFFORT_LEVELS]  # type: ignore[valid-type]  (the levels of budgetllm.options)


def rule_error(field: str, message: str, fix: str) -> PydanticCustomError:
    """An error for a rule across fields; ``field`` is dotted, relative to the model raising it."""
    return PydanticCustomError("policy_rule", message, {"field": field, "fix": fix})


def _parse_size(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ValueError:
            raise PydanticCustomError(
                "size",
                "is not a size",
                {"fix": "write bytes as an integer or with a unit: 512MiB, 2GiB, 1.5GB"},
            ) from None
    return value


MAX_SIZE_BYTES = 2**62  # 4 EiB: larger sizes are typos, and keep the arithmetic in 64 bits
Size = Annotated[int, BeforeValidator(_parse_size), Field(ge=1, le=MAX_SIZE_BYTES)]
Tokens = Annotated[int, Field(ge=0, le=MAX_TOKEN_COUNT)]


def _call(name: str) -> Any:
    """A per-call field with the bounds of budgetllm.options.CallOptions (one contract)."""
    return Field(**pydantic_bounds(name))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class EffortEntry(_Strict):
    thinking_budget: Annotated[int, _call("thinking_budget")] | None = None
    answer_reserve: Annotated[int, _call("answer_reserve")] | None = None
    max_tokens: Annotated[int, _call("max_tokens")] | None = None
    compression: Annotated[float, _call("compression")] | None = None
    temperature: Annotated[float, _call("temperature")] | None = None
    top_p: Annotated[float, _call("top_p")] | None = None
    width: Annotated[int, Field(ge=1, le=64)] | None = None


class SettingsModel(EffortEntry):
    effort: EffortName | None = None


class LimitsModel(_Strict):
    max_peak_kv_bytes: Size | None = None
    max_peak_kv_tokens: Annotated[int, Field(ge=1, le=MAX_TOKEN_COUNT)] | None = None
    max_kv_bytes_read: Size | None = None
    max_thinking_budget: Tokens | None = None
    min_thinking_budget: Tokens = 0
    max_width: Annotated[int, Field(ge=1, le=64)] | None = None
    max_tokens: Annotated[int, _call("max_tokens")] | None = None
    compressions: Annotated[list[Annotated[float, Field(ge=1)]], Field(min_length=1)] = [1.0, 2.0, 4.0, 8.0]
    max_compression: Annotated[float, Field(ge=1)] | None = None
    fit_free_memory: bool = False
    decode_tokens_per_second: Annotated[float, Field(gt=0)] | None = None


class LoadBandModel(_Strict):
    free_below: Annotated[float, Field(gt=0, le=1)]
    min_compression: Annotated[float, Field(ge=1)] | None = None
    max_width: Annotated[int, Field(ge=1)] | None = None
    budget_scale: Annotated[float, Field(gt=0, le=1)] | None = None


class ParetoModel(_Strict):
    # A JSON path relative to the policy file; omitted: the engine's calibration for its model.
    calibration: Annotated[str, Field(min_length=1)] | None = None
    task: str | None = None
    objective: Literal["max_accuracy", "min_memory"] = "max_accuracy"
    accuracy_floor: Annotated[float, Field(ge=0, le=1)] | None = None
    answer_reserve: Tokens = 256


class EscalationStepModel(_Strict):
    thinking_budget_factor: Annotated[float, Field(ge=1)] = 1.0
    thinking_budget: Tokens | None = None
    compression_factor: Annotated[float, Field(ge=1)] = 1.0
    width: Annotated[int, Field(ge=1, le=64)] | None = None


class ModelSection(_Strict):
    """Optional: lets ``check`` find caps no call can meet, and ``explain`` estimate bytes."""

    name: str = "model"
    kv_bytes_per_token: Annotated[int, Field(ge=0, le=MAX_SIZE_BYTES)] = 0
    window: Tokens = 512
    max_context: Annotated[int, Field(ge=1, le=MAX_TOKEN_COUNT)] = 8192
    native_compression: Annotated[float, Field(ge=1)] = 1.0


def _string_keys(value: Any) -> Any:
    # YAML reads `steps: {0: ...}` with an int key; steps are matched as strings.
    if isinstance(value, dict):
        return {str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in value.items()}
    return value


class PolicyFileModel(_Strict):
    version: Literal[1] = 1
    name: str | None = None
    description: str | None = None
    model: ModelSection | None = None
    defaults: SettingsModel = SettingsModel()
    effort: dict[EffortName, EffortEntry] = {}
    default_effort: EffortName = "medium"
    default_tier: str | None = None
    tiers: dict[str, SettingsModel] = {}
    tools: dict[str, SettingsModel] = {}
    steps: Annotated[dict[str, SettingsModel], BeforeValidator(_string_keys)] = {}
    limits: LimitsModel = LimitsModel()
    load: list[LoadBandModel] = []
    pareto: ParetoModel | None = None
    escalation: list[EscalationStepModel] = []

    @field_validator("steps")
    @classmethod
    def _step_keys(cls, steps: dict[str, SettingsModel]) -> dict[str, SettingsModel]:
        for key in steps:
            if key.lstrip().startswith((">", "<", "=")) and not re.match(r"^\s*>=\s*\d+\s*$", key):
                raise rule_error(
                    key, f"step key '{key}' is not a step range", "write a step name, a number, or '>=N'"
                )
        return steps
