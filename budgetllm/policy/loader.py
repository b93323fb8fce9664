"""Load a policy file (YAML or TOML) into a policy. Every failure is a ``PolicyFileError``.

A file becomes ``PolicyChain(base, [LoadAwarePolicy?, MemoryCapPolicy])``: the base is a
``TieredPolicy`` (defaults, effort ladder, tiers, tool and step overrides) or, with a ``pareto``
section, a ``ParetoPolicy``; an ``escalation`` list wraps the base in an ``EscalationPolicy``;
the memory cap goes last so the file's limits hold for every plan, retries included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import tomllib
import yaml
from pydantic import ValidationError

from budgetllm.errors import PolicyFileError
from budgetllm.policy.base import BudgetPolicy, CallContext, ModelProfile, Plan
from budgetllm.policy.chain import PlanStage, PolicyChain
from budgetllm.policy.effort import EffortPolicy
from budgetllm.policy.escalation import EscalationPolicy, EscalationStep
from budgetllm.policy.file_checks import check, to_settings
from budgetllm.policy.file_errors import Problem, dotted, raise_problems, translate
from budgetllm.policy.file_lines import (
    MAX_INT_DIGITS,
    NumberTooLong,
    PathLines,
    line_of,
    load_yaml,
    toml_lines,
)
from budgetllm.policy.file_schema import PolicyFileModel
from budgetllm.policy.load_aware import LoadAwarePolicy, LoadBand
from budgetllm.policy.memory_cap import MemoryCapPolicy
from budgetllm.policy.pareto import ParetoPolicy
from budgetllm.policy.tiered import TieredPolicy

MAX_POLICY_BYTES = 1 << 20  # policy files are a few KiB; a bigger one is a mistake, refused at once

FORMATS = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}


@dataclass
class FilePolicy:
    """A loaded policy file: the chain, plus the file's model section as a fallback profile."""

    chain: PolicyChain
    document: PolicyFileModel
    source: str
    profile: ModelProfile | None = None

    def _context(self, context: CallContext) -> CallContext:
        # The engine's profile wins; the file's only fills in KV bytes per token when unknown.
        if self.profile is None or context.model.kv_bytes_per_token > 0:
            return context
        model = replace(context.model, kv_bytes_per_token=self.profile.kv_bytes_per_token)
        return replace(context, model=model)

    @property
    def tiers(self) -> dict:
        """The file's named tiers (what a call's ``policy_tier`` may pick)."""
        return dict(self.document.tiers)

    def plan(self, context: CallContext) -> Plan:
        return self.chain.plan(self._context(context))

    def escalate(self, context: CallContext, previous: Plan, attempt: int) -> Plan | None:
        return self.chain.escalate(self._context(context), previous, attempt)


def load_policy(path: str | Path) -> FilePolicy:
    """Load and validate a policy file; raises ``PolicyFileError`` with a readable message."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PolicyFileError(
            f"{path}: unknown policy file type '{path.suffix}'. Fix: name it .yaml, .yml or .toml."
        )
    try:
        size = path.stat().st_size
        if size > MAX_POLICY_BYTES:
            raise PolicyFileError(
                f"{path}: the file is {size / 2**20:.1f} MiB; a policy file is at most {MAX_POLICY_BYTES // 2**20} MiB. "
                "Fix: point --policy at the policy file (calibration data goes in its own JSON, pareto.calibration)."
            )
        data = path.read_bytes()
    except OSError as exc:
        raise PolicyFileError(
            f"{path}: cannot read the file ({exc.strerror}). Fix: check the path."
        ) from None
    return load_policy_bytes(data, fmt, str(path), base_dir=path.parent)


def load_policy_bytes(
    data: bytes, fmt: str, source: str = "<policy>", base_dir: Path | None = None
) -> FilePolicy:
    """Parse, validate and build; any unexpected failure still becomes a ``PolicyFileError``."""
    try:
        return _load(data, fmt, source, base_dir or Path.cwd())
    except PolicyFileError:
        raise
    except (RecursionError, MemoryError):
        raise PolicyFileError(f"{source}: the file nests too deeply to read. Fix: flatten it.") from None
    except Exception as exc:  # a loader bug must still not show a traceback to a user
        raise PolicyFileError(
            f"{source}: internal error while loading ({type(exc).__name__}: {exc}). Fix: report this file as a bug."
        ) from None


def _parse(text: str, fmt: str, source: str) -> tuple[Any, PathLines]:
    if fmt == "toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyFileError(
                f"{source}: TOML syntax error: {exc}. Fix: check the syntax on that line."
            ) from None
        except ValueError as exc:  # Python's limit on integer digits
            raise PolicyFileError(
                f"{source}: a number is out of range ({exc}). Fix: write budgets and sizes with at most "
                f"{MAX_INT_DIGITS} digits."
            ) from None
        return data, toml_lines(text)
    try:
        data, lines, duplicates = load_yaml(text)
    except NumberTooLong as exc:
        raise PolicyFileError(
            f"{source}, line {exc.problem_mark.line + 1}: {exc.problem}. Fix: write a number of at most "
            f"{MAX_INT_DIGITS} digits (budgets and sizes are bounded)."
        ) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyFileError(
            f"{where}: YAML syntax error: {problem}. Fix: check indentation and quoting on this line or the one before."
        ) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError(f"{source}: YAML syntax error: {exc}. Fix: check the file's syntax.") from None
    if duplicates:
        raise_problems(
            source, [Problem(dotted(p), "is given twice", "keep one of them", line) for p, line in duplicates]
        )
    return data, lines


def _load(data: bytes, fmt: str, source: str, base_dir: Path) -> FilePolicy:
    if fmt not in ("yaml", "toml"):
        raise PolicyFileError(f"{source}: unknown format '{fmt}'. Fix: use yaml or toml.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyFileError(
            f"{source}: not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}). Fix: save the file as UTF-8 {fmt.upper()}."
        ) from None
    if "\x00" in text:
        raise PolicyFileError(
            f"{source}: contains NUL bytes, so it is not a text policy file. Fix: save it as UTF-8 {fmt.upper()}."
        )
    if len(data) > MAX_POLICY_BYTES:
        raise PolicyFileError(f"{source}: {len(data)} bytes; a policy file is at most {MAX_POLICY_BYTES} bytes. "
                              "Fix: keep only the policy in it.")
    raw, lines = _parse(text, fmt, source)
    if raw is None or (fmt == "toml" and raw == {}):  # an empty file is an error in both formats
        raise PolicyFileError(
            f"{source}: the file is empty. Fix: start it with `version: 1` (see examples/policies/)."
        )
    if not isinstance(raw, dict):
        raise PolicyFileError(
            f"{source}, line 1: the top level must be a mapping of sections, not {type(raw).__name__}. Fix: start with `version: 1` and sections such as `defaults:`."
        )
    try:
        doc = PolicyFileModel.model_validate(raw)
    except ValidationError as exc:
        raise_problems(
            source,
            [
                Problem(dotted(path), message, fix, line_of(lines, path))
                for path, message, fix in translate(exc)
            ],
        )
    problems, table = check(doc, base_dir)
    if problems:
        raise_problems(source, [replace(p, line=line_of(lines, _path(p.field))) for p in problems])
    return _build(doc, table, source)


def _path(field: str) -> tuple[Any, ...]:
    out: list[Any] = []
    for part in field.replace("]", "").split("."):
        name, _, index = part.partition("[")
        out.append(name)
        if index:
            out.append(int(index))
    return tuple(out)


def _build(doc: PolicyFileModel, table: Any, source: str) -> FilePolicy:
    limits = doc.limits
    name = doc.name or Path(source).stem
    base: BudgetPolicy
    if doc.pareto is not None:
        p = doc.pareto
        base = ParetoPolicy(
            table=table,
            task=p.task,
            objective=p.objective,
            max_peak_kv_bytes=limits.max_peak_kv_bytes,
            max_kv_bytes_read=limits.max_kv_bytes_read,
            accuracy_floor=p.accuracy_floor,
            answer_reserve=p.answer_reserve,
        )
    else:
        effort = EffortPolicy({k: to_settings(v) for k, v in doc.effort.items()}, doc.default_effort)
        section = {
            s: {k: to_settings(v) for k, v in getattr(doc, s).items()} for s in ("tiers", "tools", "steps")
        }
        base = TieredPolicy(
            to_settings(doc.defaults), effort=effort, default_tier=doc.default_tier, name=name, **section
        )
    cap = MemoryCapPolicy(
        max_peak_kv_bytes=limits.max_peak_kv_bytes, max_peak_kv_tokens=limits.max_peak_kv_tokens,
        max_kv_bytes_read=limits.max_kv_bytes_read, compressions=tuple(limits.compressions),
        max_compression=limits.max_compression, max_thinking_budget=limits.max_thinking_budget,
        min_thinking_budget=limits.min_thinking_budget, max_width=limits.max_width, max_tokens=limits.max_tokens,
        fit_free_memory=limits.fit_free_memory, decode_tokens_per_second=limits.decode_tokens_per_second,
    )  # fmt: skip
    if doc.escalation:
        steps = tuple(EscalationStep(**s.model_dump()) for s in doc.escalation)
        base = EscalationPolicy(base, steps, max_compression=cap.max_compression)
    stages: list[PlanStage] = []
    if doc.load:
        stages.append(LoadAwarePolicy(tuple(LoadBand(**b.model_dump()) for b in doc.load)))
    stages.append(cap)
    profile = None
    if doc.model is not None:
        profile = ModelProfile(**doc.model.model_dump())
    return FilePolicy(PolicyChain(base, stages, name=name), doc, source, profile)
