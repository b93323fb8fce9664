"""Calibrated Pareto: pick the thinking budget, compression and width from measured accuracy.

Objectives:
* ``max_accuracy``: the most accurate point whose worst-case peak KV bytes / KV bytes read fit
  the caps (ties: less memory, then a smaller budget);
* ``min_memory``: the least peak memory whose accuracy reaches ``accuracy_floor`` (ties: more
  accuracy). When no point reaches the floor, the most accurate one that fits, saying so.

Candidates are the table's budgets at each measured (compression, width), plus, per
compression, the largest budget that exactly fits the peak cap (accuracy interpolated), so a
cap between grid points is used fully. Costs come from the cost model with this call's prompt
length, not from the table: the table measured other prompts. Without KV bytes per token the
table's measured costs are used instead. The caller's thinking_budget / max_tokens are upper
limits and a requested compression restricts the candidates to that ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from budgetllm.errors import InvalidRequestError
from budgetllm.policy.base import CallContext, Plan
from budgetllm.policy.calibration import CalibrationTable
from budgetllm.policy.cost import format_bytes, kv_tokens_read, peak_kv_tokens, with_estimates
from budgetllm.policy.settings import DEFAULT_ANSWER_RESERVE


@dataclass(frozen=True)
class _Candidate:
    budget: int
    compression: float
    width: int
    accuracy: float
    peak: float  # bytes
    reads: float  # bytes


@dataclass
class ParetoPolicy:
    table: CalibrationTable | None = None  # None: the model profile's calibration, from the engine
    task: str | None = None
    objective: str = "max_accuracy"  # or "min_memory"
    max_peak_kv_bytes: int | None = None
    max_kv_bytes_read: int | None = None
    accuracy_floor: float | None = None
    answer_reserve: int = DEFAULT_ANSWER_RESERVE

    def __post_init__(self) -> None:
        if self.objective not in ("max_accuracy", "min_memory"):
            raise ValueError(f"objective must be 'max_accuracy' or 'min_memory', got {self.objective!r}")
        if self.objective == "min_memory" and self.accuracy_floor is None:
            raise ValueError("objective 'min_memory' needs an accuracy_floor")

    def _table(self, context: CallContext) -> CalibrationTable:
        table = self.table if self.table is not None else context.model.calibration
        if not isinstance(table, CalibrationTable) or not table.points:
            raise InvalidRequestError(
                "calibration", f"the Pareto policy has no calibration table for model {context.model.name!r}; "
                "run `budgetllm calibrate` and name the file in the policy's pareto.calibration"
            )  # fmt: skip
        return table

    def _task(self, context: CallContext, table: CalibrationTable) -> str:
        tasks = table.tasks()
        task = context.task or self.task or (tasks[0] if len(tasks) == 1 else None)
        if task is None or task not in tasks:
            raise InvalidRequestError(
                "task", f"calibration task {task!r} is not in the table (tasks: {', '.join(tasks)})"
            )
        return task

    def _candidates(self, context: CallContext, table: CalibrationTable, task: str) -> list[_Candidate]:
        req, model = context.requested, context.model
        ceiling = req.max_tokens - self.answer_reserve if req.max_tokens is not None else None
        limit = min(x for x in (req.thinking_budget, ceiling, 10**9) if x is not None)
        compressions = [req.compression] if req.compression is not None else table.compressions(task)
        out = []
        for width in table.widths(task):
            for compression in compressions:
                budgets = set(table.budgets(task, width=width)) | {
                    self._largest_fitting(context, compression, width)
                }
                budgets.add(0)  # thinking off is always a candidate, so the caller's limits never leave none
                if req.thinking_budget is not None:
                    budgets.add(req.thinking_budget)
                for budget in sorted(b for b in budgets if 0 <= b <= max(limit, 0)):
                    point = table.interpolate(task, budget, compression, width)
                    generated = budget + self.answer_reserve
                    if model.kv_bytes_per_token > 0:
                        args = (context.prompt_tokens, generated, compression, model.window, width)
                        peak = peak_kv_tokens(*args) * model.kv_bytes_per_token
                        reads = kv_tokens_read(*args) * model.kv_bytes_per_token
                    else:
                        peak, reads = point.peak_kv_bytes, point.kv_bytes_read
                    out.append(_Candidate(budget, compression, width, point.accuracy, peak, reads))
        return out

    def _largest_fitting(self, context: CallContext, compression: float, width: int) -> int:
        """The largest budget whose peak fits the cap at this compression (-1 when none / no cap)."""
        per_token = context.model.kv_bytes_per_token
        if self.max_peak_kv_bytes is None or per_token <= 0:
            return -1
        low, high = -1, 1 << 20
        while low < high:  # bisection: peak grows with the budget
            mid = (low + high + 1) // 2
            args = (
                context.prompt_tokens,
                mid + self.answer_reserve,
                compression,
                context.model.window,
                width,
            )
            if peak_kv_tokens(*args) * per_token <= self.max_peak_kv_bytes:
                low = mid
            else:
                high = mid - 1
        return low

    def _fits(self, c: _Candidate) -> bool:
        return (self.max_peak_kv_bytes is None or c.peak <= self.max_peak_kv_bytes) and (
            self.max_kv_bytes_read is None or c.reads <= self.max_kv_bytes_read
        )

    def plan(self, context: CallContext) -> Plan:
        table = self._table(context)
        task = self._task(context, table)
        candidates = self._candidates(context, table, task)
        fitting = [c for c in candidates if self._fits(c)]
        cap = f"peak cap {format_bytes(self.max_peak_kv_bytes)}" if self.max_peak_kv_bytes else "no peak cap"
        if not fitting:
            best = min(candidates, key=lambda c: (c.peak, -c.accuracy))
            why = f"nothing fits the {cap}: took the smallest-memory point"
        elif self.objective == "min_memory" and any(c.accuracy >= self.accuracy_floor for c in fitting):
            best = min(
                (c for c in fitting if c.accuracy >= self.accuracy_floor), key=lambda c: (c.peak, -c.accuracy)
            )
            why = f"least memory reaching accuracy {self.accuracy_floor:.2f}"
        else:
            best = max(fitting, key=lambda c: (c.accuracy, -c.peak, -c.budget))
            why = "most accurate point that fits"
            if self.objective == "min_memory":
                why = f"no point reaches accuracy {self.accuracy_floor:.2f}: {why}"
        text = (
            f"calibrated Pareto on task '{task}': {why} ({cap}; {len(candidates)} candidates); "
            f"expected accuracy {best.accuracy:.3f}, est. peak {format_bytes(best.peak)}"
        )
        plan = Plan(
            thinking_budget=best.budget,
            answer_reserve=self.answer_reserve,
            compression=best.compression,
            max_tokens=best.budget + self.answer_reserve,
            temperature=context.requested.temperature,
            top_p=context.requested.top_p,
            width=best.width,
            reasons={
                "thinking_budget": text,
                "compression": "calibrated Pareto: chosen with the thinking budget (see its reason)",
                "width": "calibrated Pareto: chosen with the thinking budget (see its reason)",
                "answer_reserve": "policy default",
                "max_tokens": "thinking budget + answer reserve",
            },
            policy="pareto",
            expected_accuracy=best.accuracy,
        )
        if best.width > 1 and not plan.temperature:
            plan = replace(
                plan, temperature=0.7, reasons=plan.reasons | {"temperature": "0.7: voting needs sampling"}
            )
        return with_estimates(context, plan)
