"""Rules across fields of a schema-valid policy file, checked at load time.

The schema checks each field alone; these find what only the whole file shows: an unknown
default tier, an effort ladder whose budgets go down, limits that contradict each other, and
caps that no call can ever meet (even a 1-token prompt at the strongest compression, the minimum
budget and one sample would exceed them). Byte caps are only checkable when the file has a
``model`` section with ``kv_bytes_per_token``; otherwise the plan's reason reports them at run time.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from budgetllm.errors import PolicyFileError
from budgetllm.policy.calibration import CalibrationTable
from budgetllm.policy.cost import format_bytes, kv_tokens_read, live_tokens
from budgetllm.policy.effort import ladder_problem, merged_effort_map
from budgetllm.policy.file_errors import Problem
from budgetllm.policy.file_schema import EffortEntry, PolicyFileModel
from budgetllm.policy.settings import DEFAULT_ANSWER_RESERVE, PlanSettings


def to_settings(entry: EffortEntry) -> PlanSettings:
    return PlanSettings(**entry.model_dump(exclude_none=True))


def _layers(doc: PolicyFileModel) -> dict[str, EffortEntry]:
    out: dict[str, EffortEntry] = {"defaults": doc.defaults}
    for section in ("tiers", "tools", "steps", "effort"):
        out.update({f"{section}.{k}": v for k, v in getattr(doc, section).items()})
    return out


def check(doc: PolicyFileModel, base_dir: Path) -> tuple[list[Problem], CalibrationTable | None]:
    problems: list[Problem] = []
    if doc.default_tier is not None and doc.default_tier not in doc.tiers:
        close = difflib.get_close_matches(doc.default_tier, list(doc.tiers), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(
            Problem(
                "default_tier",
                f"unknown tier '{doc.default_tier}'",
                hint + f"define it under tiers (known: {', '.join(doc.tiers) or 'none'})",
            )
        )
    ladder = merged_effort_map({k: to_settings(v) for k, v in doc.effort.items()})
    bad = ladder_problem(ladder)
    if bad:
        problems.append(
            Problem(
                f"effort.{bad[0]}.thinking_budget",
                bad[1],
                "give higher effort levels equal or larger budgets",
            )
        )
    problems += _check_limits(doc)
    table = None
    if doc.pareto is not None:
        table, more = _check_pareto(doc, base_dir)
        problems += more
    return problems, table


def _check_limits(doc: PolicyFileModel) -> list[Problem]:
    limits, problems = doc.limits, []
    if limits.max_thinking_budget is not None and limits.min_thinking_budget > limits.max_thinking_budget:
        problems.append(
            Problem(
                "limits.min_thinking_budget",
                f"is above limits.max_thinking_budget ({limits.min_thinking_budget} > {limits.max_thinking_budget})",
                "lower it or raise max_thinking_budget",
            )
        )
    max_compression = (
        limits.max_compression if limits.max_compression is not None else max(limits.compressions)
    )
    if max_compression < min(limits.compressions):
        problems.append(
            Problem(
                "limits.max_compression",
                f"is below every allowed compression ({max_compression:g} < {min(limits.compressions):g})",
                "raise it or allow smaller ratios in limits.compressions",
            )
        )
    reserves = {name: e.answer_reserve for name, e in _layers(doc).items() if e.answer_reserve is not None}
    if doc.defaults.answer_reserve is None:
        reserves["the built-in default"] = DEFAULT_ANSWER_RESERVE
    where, reserve = min(reserves.items(), key=lambda kv: kv[1])
    if limits.max_tokens is not None:
        largest = max(reserves.items(), key=lambda kv: kv[1])
        if limits.max_tokens < largest[1]:
            problems.append(
                Problem(
                    "limits.max_tokens",
                    f"{limits.max_tokens} is below the answer reserve {largest[1]} of {largest[0]}",
                    "raise limits.max_tokens or lower that answer_reserve",
                )
            )
    # The smallest call any plan can make: a 1-token prompt, the minimum budget, one sample.
    model = doc.model
    window = model.window if model else 512
    generated = limits.min_thinking_budget + reserve
    need = live_tokens(1 + generated, max_compression, window)
    why = f"a 1-token prompt with thinking budget {limits.min_thinking_budget} and answer reserve {reserve} ({where}) at compression {max_compression:g} needs"
    if limits.max_peak_kv_tokens is not None and limits.max_peak_kv_tokens < need:
        problems.append(
            Problem(
                "limits.max_peak_kv_tokens",
                f"{limits.max_peak_kv_tokens} can never be met: {why} {need:.0f} tokens",
                f"raise it to at least {need:.0f} or lower answer_reserve",
            )
        )
    if model is not None and model.kv_bytes_per_token > 0:
        peak = need * model.kv_bytes_per_token
        if limits.max_peak_kv_bytes is not None and limits.max_peak_kv_bytes < peak:
            problems.append(
                Problem(
                    "limits.max_peak_kv_bytes",
                    f"{format_bytes(limits.max_peak_kv_bytes)} can never be met: {why} {format_bytes(peak)}",
                    f"raise it to at least {format_bytes(peak)} or lower answer_reserve",
                )
            )
        reads = kv_tokens_read(1, generated, max_compression, window) * model.kv_bytes_per_token
        if limits.max_kv_bytes_read is not None and limits.max_kv_bytes_read < reads:
            problems.append(
                Problem(
                    "limits.max_kv_bytes_read",
                    f"{format_bytes(limits.max_kv_bytes_read)} can never be met: {why} {format_bytes(reads)} of reads",
                    f"raise it to at least {format_bytes(reads)}",
                )
            )
    for i, band in enumerate(doc.load):
        if band.min_compression is not None and band.min_compression > max_compression:
            problems.append(
                Problem(
                    f"load[{i}].min_compression",
                    f"{band.min_compression:g} is above the maximum compression {max_compression:g}",
                    "lower it or raise limits.max_compression",
                )
            )
    return problems


def _check_pareto(doc: PolicyFileModel, base_dir: Path) -> tuple[CalibrationTable | None, list[Problem]]:
    pareto, problems = doc.pareto, []
    unused = [s for s in ("tiers", "tools", "steps", "effort") if getattr(doc, s)]
    if unused:
        problems.append(
            Problem(
                unused[0],
                "is not used with a pareto section (the calibration picks the budget)",
                f"remove {', '.join(unused)} or the pareto section",
            )
        )
    if pareto.objective == "min_memory" and pareto.accuracy_floor is None:
        problems.append(
            Problem(
                "pareto.accuracy_floor",
                "is required by objective min_memory",
                "add e.g. `accuracy_floor: 0.6`",
            )
        )
    if pareto.calibration is None:
        return None, problems  # the engine's table for its model, checked when a call runs
    raw = Path(pareto.calibration)
    path = (base_dir / raw).resolve()
    if raw.is_absolute() or not path.is_relative_to(base_dir.resolve()):
        return None, [
            *problems,
            Problem(
                "pareto.calibration",
                f"must be a path inside the policy file's folder {base_dir}, got {pareto.calibration!r}",
                "copy the calibration JSON next to the policy file and give its relative path",
            ),
        ]
    try:
        table = CalibrationTable.load(path)
    except PolicyFileError as exc:
        return None, [
            *problems,
            Problem(
                "pareto.calibration",
                f"cannot be loaded (resolved relative to the policy file: {path}): {exc}",
                "point it at a calibration JSON written by `budgetllm calibrate` (paths are relative to the policy file)",
            ),
        ]
    tasks = table.tasks()
    if not tasks:
        return table, [
            *problems,
            Problem("pareto.calibration", f"{path} has no points", "run `budgetllm calibrate` first"),
        ]
    task = pareto.task
    if task is None and len(tasks) > 1:
        problems.append(
            Problem(
                "pareto.task", f"the calibration has several tasks ({', '.join(tasks)})", "name one of them"
            )
        )
    elif task is not None and task not in tasks:
        close = difflib.get_close_matches(task, tasks, n=1)
        problems.append(
            Problem(
                "pareto.task",
                f"unknown task '{task}'",
                (f"did you mean '{close[0]}'? " if close else "")
                + f"tasks in the calibration: {', '.join(tasks)}",
            )
        )
    elif pareto.accuracy_floor is not None:
        best = max(p.accuracy for p in table.points_for(task or tasks[0]))
        if pareto.accuracy_floor > best:
            problems.append(
                Problem(
                    "pareto.accuracy_floor",
                    f"{pareto.accuracy_floor} can never be met: the best calibrated accuracy is {best:.3f}",
                    f"lower it to at most {best:.3f}",
                )
            )
    return table, problems
