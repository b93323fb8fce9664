"""What a call asks to be constrained to, checked and written as one canonical grammar spec.

Standard library only. ``response_format`` (the OpenAI shapes plus ``regex`` and ``grammar``) and
a call's tools (with ``tool_choice``) become a :class:`GrammarSpec`: a kind and a canonical text,
which is also the compile cache's key. A schema that cannot be honoured gets an
``InvalidRequestError`` naming the path inside the schema (``response_format.json_schema.schema
.properties.age.type``), before anything reaches the grammar library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from budgetllm.errors import InvalidRequestError

KINDS = ("json_schema", "json_object", "regex", "grammar", "structural_tag")
_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SUBSCHEMAS = ("items", "additionalProperties", "propertyNames")
_NUMBERS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
_COUNTS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
MAX_SCHEMA_DEPTH = 64
# Keywords a grammar cannot enforce (the library would ignore them and an answer could break them).
_UNSUPPORTED = ("not", "if", "then", "else", "dependentRequired", "dependentSchemas", "dependencies", "contains",
                "minContains", "maxContains", "unevaluatedProperties", "unevaluatedItems", "multipleOf")


@dataclass(frozen=True)
class GrammarSpec:
    """A grammar request. ``source``: canonical JSON (schemas, structural tags) or the text itself."""

    kind: str
    source: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.source)


def check_schema(schema: Any, path: str, depth: int = 0) -> None:
    """Raise InvalidRequestError naming ``path`` where ``schema`` is not a JSON schema we can honour."""
    if depth > MAX_SCHEMA_DEPTH:
        raise InvalidRequestError(path, f"the schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidRequestError(path, f"a JSON schema must be an object or a boolean, got {type(schema).__name__}")
    for key in _UNSUPPORTED:
        if key in schema:
            raise InvalidRequestError(f"{path}.{key}", f"'{key}' cannot be enforced by constrained decoding; remove it")
    if schema.get("uniqueItems") is True:
        raise InvalidRequestError(f"{path}.uniqueItems", "unique items cannot be enforced by constrained decoding; "
                                  "use a list (and deduplicate after parsing)")
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        bad = [t for t in types if t not in _TYPES]
        if bad or not types:
            raise InvalidRequestError(f"{path}.type", f"unknown type {bad[0] if bad else typ!r}; "
                                      f"use one of {', '.join(sorted(_TYPES))}")
    for key in _SUBSCHEMA_MAPS:
        if key in schema:
            sub = schema[key]
            if not isinstance(sub, dict):
                raise InvalidRequestError(f"{path}.{key}", f"must be an object of schemas, got {type(sub).__name__}")
            for name, s in sub.items():
                check_schema(s, f"{path}.{key}.{name}", depth + 1)
    for key in _SUBSCHEMA_LISTS:
        if key in schema:
            sub = schema[key]
            if not isinstance(sub, list) or not sub:
                raise InvalidRequestError(f"{path}.{key}", "must be a non-empty list of schemas")
            for i, s in enumerate(sub):
                check_schema(s, f"{path}.{key}[{i}]", depth + 1)
    for key in _SUBSCHEMAS:
        if key in schema:
            check_schema(schema[key], f"{path}.{key}", depth + 1)
    if "required" in schema:
        req = schema["required"]
        if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
            raise InvalidRequestError(f"{path}.required", "must be a list of property names")
    if "enum" in schema and (not isinstance(schema["enum"], list) or not schema["enum"]):
        raise InvalidRequestError(f"{path}.enum", "must be a non-empty list")
    for key in _NUMBERS:
        v = schema.get(key)
        if key in schema and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise InvalidRequestError(f"{path}.{key}", f"must be a number, got {v!r}")
    for key in _COUNTS:
        v = schema.get(key)
        if key in schema and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise InvalidRequestError(f"{path}.{key}", f"must be a non-negative integer, got {v!r}")
    for lo, hi in (("minLength", "maxLength"), ("minItems", "maxItems"), ("minimum", "maximum")):
        if lo in schema and hi in schema and schema[lo] > schema[hi]:
            raise InvalidRequestError(f"{path}.{lo}", f"{schema[lo]} is above {hi} {schema[hi]}: nothing can match")
    if "pattern" in schema:
        _check_regex(schema["pattern"], f"{path}.pattern")
        both = [k for k in ("minLength", "maxLength") if k in schema]
        if both:  # the grammar engine would drop the length silently: the answer could break it
            raise InvalidRequestError(f"{path}.{both[0]}", "a string with a 'pattern' cannot also have minLength/"
                                      "maxLength here; bound the length in the pattern instead, e.g. '[a-z]{1,40}'")
    ref = schema.get("$ref")
    if ref is not None and (not isinstance(ref, str) or not ref.startswith("#")):
        raise InvalidRequestError(f"{path}.$ref", f"only local references ('#/$defs/...') are supported, got {ref!r}")


def _check_regex(pattern: Any, path: str) -> None:
    if not isinstance(pattern, str):
        raise InvalidRequestError(path, f"must be a regular expression string, got {type(pattern).__name__}")
    try:
        re.compile(pattern)
    except re.error as e:
        raise InvalidRequestError(path, f"not a valid regular expression: {e}") from None


def _canonical(value: Any) -> str:
    """Compact JSON; key order kept (a schema's property order is the order the answer writes)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def parse_response_format(rf: Any, field: str = "response_format") -> GrammarSpec | None:
    """``response_format`` -> a spec (None for ``{"type": "text"}`` or None).

    Shapes: ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}``,
    ``{"type": "json_object"}``, ``{"type": "regex", "pattern": ...}``,
    ``{"type": "grammar", "grammar": <EBNF (GBNF)>}``, ``{"type": "text"}``.
    """
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise InvalidRequestError(field, f"must be an object with a 'type', got {type(rf).__name__}")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec("json_object", "")
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise InvalidRequestError(f"{field}.json_schema", "must be an object {name, schema}")
        schema = js.get("schema", js.get("schema_"))
        if schema is None:
            raise InvalidRequestError(f"{field}.json_schema.schema", "is required")
        check_schema(schema, f"{field}.json_schema.schema")
        return GrammarSpec("json_schema", _canonical(schema))
    if kind == "regex":
        _check_regex(rf.get("pattern"), f"{field}.pattern")
        return GrammarSpec("regex", rf["pattern"])
    if kind == "grammar":
        g = rf.get("grammar")
        if not isinstance(g, str) or not g.strip():
            raise InvalidRequestError(f"{field}.grammar", "must be a non-empty EBNF (GBNF) grammar with a 'root' rule")
        return GrammarSpec("grammar", g)
    raise InvalidRequestError(f"{field}.type", f"unknown type {kind!r}; use json_schema, json_object, regex, grammar or text")


def json_schema_spec(schema: dict[str, Any], field: str = "schema") -> GrammarSpec:
    check_schema(schema, field)
    return GrammarSpec("json_schema", _canonical(schema))
