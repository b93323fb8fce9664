"""Readable policy-file errors: file, line, field, what was wrong, and the fix. Never a traceback.

``Problem`` is one error; ``translate`` turns pydantic's errors into problems (with the closest
valid name for a misspelled field, from difflib); ``yaml_lines`` / ``toml_lines`` map a field path
to its line, so ``raise_problems`` can write ``policy.yaml, line 7: tiers.fast.thinking_budget:
must be >= 0 (got -5). Fix: use 0 to disable thinking or a positive token count.``
"""

from __future__ import annotations

import difflib
import reprlib
import types
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from budgetllm.errors import PolicyFileError
from budgetllm.options import EFFORT_LEVELS
from budgetllm.policy.file_schema import EffortName, PolicyFileModel

Path_ = tuple[Any, ...]
MAX_SHOWN = 20  # a wholly wrong file should still give a readable message

FIX_HINTS = {
    "thinking_budget": "use 0 to disable thinking or a positive token count",
    "min_thinking_budget": "use 0 or a positive token count",
    "max_thinking_budget": "use 0 to disable thinking or a positive token count",
    "answer_reserve": "use a token count for the answer, such as 256",
    "max_tokens": "use a positive token count, at least thinking_budget + answer_reserve",
    "compression": "use 1 for a dense cache or a ratio such as 2, 4 or 8",
    "compressions": "list ratios >= 1, e.g. [1, 2, 4, 8]",
    "max_compression": "use a ratio >= 1 such as 8",
    "min_compression": "use a ratio >= 1 such as 4",
    "temperature": "use a value from 0 (greedy) to 2",
    "top_p": "use a value above 0 and at most 1",
    "width": "use 1 for one sample, or up to 64 parallel samples",
    "max_width": "use 1 for one sample, or up to 64",
    "free_below": "use a fraction of the pool above 0 and at most 1, e.g. 0.2",
    "budget_scale": "use a fraction above 0 and at most 1, e.g. 0.5",
    "accuracy_floor": "use a fraction from 0 to 1, e.g. 0.6 (not 60)",
    "version": "write `version: 1`",
    "effort": f"use one of {', '.join(EFFORT_LEVELS)}",
    "default_effort": f"use one of {', '.join(EFFORT_LEVELS)}",
    "objective": "use max_accuracy or min_memory",
    "thinking_budget_factor": "use a factor >= 1, e.g. 2",
    "compression_factor": "use a factor >= 1, e.g. 2",
}


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    fix: str
    line: int | None = None

    def render(self, source: str) -> str:
        where = f"{source}, line {self.line}" if self.line else source
        field = f"{self.field}: " if self.field else ""
        return f"{where}: {field}{self.message.rstrip('.')}. Fix: {self.fix.rstrip('.')}."


def raise_problems(source: str, problems: list[Problem]) -> None:
    problems = sorted(problems, key=lambda p: p.line or 0)  # read top to bottom, like the file
    lines = [p.render(source) for p in problems[:MAX_SHOWN]]
    if len(problems) > MAX_SHOWN:
        lines.append(
            f"{source}: ... and {len(problems) - MAX_SHOWN} more problems. Fix: correct the ones above first."
        )
    text = "\n".join(lines)
    raise PolicyFileError(text, problems)


def dotted(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 2, 30, 30  # bounded even for alias bombs


def _got(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _unwrap(tp: Any) -> Any:
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def fields_at(path: Path_) -> list[str]:
    """The valid field names of the model found at ``path`` in the schema (empty if not a model)."""
    current: Any = PolicyFileModel
    for part in path:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            info = current.model_fields.get(part)
            current = info.annotation if info else None
        elif get_origin(current) in (dict, list):
            current = get_args(current)[-1]
        else:
            return []
    current = _unwrap(current)
    return list(current.model_fields) if isinstance(current, type) and issubclass(current, BaseModel) else []


def _suggest(name: Any, options: list[str]) -> str:
    close = difflib.get_close_matches(str(name), options, n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'? " if close else ""


def translate(error: ValidationError) -> list[tuple[Path_, str, str]]:
    """pydantic errors as (path, message, fix) triples."""
    out = []
    for err in error.errors():
        loc = tuple(err["loc"])
        kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
        name = next((p for p in reversed(loc) if isinstance(p, str) and p != "[key]"), "")
        fix = FIX_HINTS.get(name, "correct the value")
        if loc and loc[-1] == "[key]" and kind == "literal_error":  # an unknown effort level
            path = (*loc[:-2], str(loc[-2]))
            message = f"unknown key {_got(path[-1])}"
            fix = _suggest(path[-1], list(get_args(EffortName))) + FIX_HINTS["effort"]
        elif loc and loc[-1] == "[key]":  # e.g. `tiers: {1: ...}` in YAML gives an int key
            path = (*loc[:-2], str(loc[-2]))
            message, fix = f"keys here must be names (got {_got(loc[-2])})", "quote the key"
        elif kind == "extra_forbidden":
            path, options = loc, fields_at(loc[:-1])
            message = f"unknown field '{loc[-1]}'"
            fix = _suggest(loc[-1], options) + (
                f"valid fields here: {', '.join(options)}" if options else "remove it"
            )
        elif kind == "missing":
            path, message, fix = loc, "required field is missing", f"add `{name}`"
        elif kind == "policy_rule":
            path = loc + tuple(str(ctx["field"]).split(".")) if ctx.get("field") else loc
            message, fix = err["msg"], str(ctx.get("fix", fix))
        elif kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
            sign = {
                "greater_than_equal": ">=",
                "greater_than": ">",
                "less_than_equal": "<=",
                "less_than": "<",
            }[kind]
            limit = next(iter(ctx.values()))
            limit = f"{limit:g}" if isinstance(limit, float) else limit
            path, message = loc, f"must be {sign} {limit} (got {_got(value)})"
        elif kind == "literal_error":
            expected = [
                s.strip(" '")
                for s in str(ctx.get("expected", "")).replace(" or ", ",").split(",")
                if s.strip()
            ]
            path, message = loc, f"must be one of {', '.join(expected)} (got {_got(value)})"
            fix = _suggest(value, expected) + fix
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            path, message, fix = (
                loc,
                f"must be a mapping of fields (got {_got(value)})",
                "write it as `key: value` pairs",
            )
        else:
            path, message = loc, f"{_type_words(kind, err['msg'])} (got {_got(value)})"
            if "fix" in ctx:
                fix = str(ctx["fix"])
            elif isinstance(value, str) and _is_number(value):
                fix = f"write {value} without quotes"
        out.append((tuple(p for p in path if p != "[key]"), message, fix))
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _type_words(kind: str, fallback: str) -> str:
    words = {
        "int_type": "must be a whole number", "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number", "float_type": "must be a number",
        "float_parsing": "must be a number", "bool_type": "must be true or false",
        "string_type": "must be a string", "list_type": "must be a list", "too_short": "must not be empty",
        "finite_number": "must be a finite number", "size": "is not a size",
    }  # fmt: skip
    return words.get(kind, fallback[0].lower() + fallback[1:] if fallback else "is invalid")
