"""Grammar compilation (xgrammar, imported lazily) with a cache keyed by the spec, per tokenizer.

``GrammarCompiler(tokenizer, vocab_size)`` builds xgrammar's tokenizer info once; ``compile(spec)``
returns the compiled grammar (cached: an agent's tool set compiles on its first call only);
``constraint(spec, eos_ids)`` makes the per-request :class:`~budgetllm.constrain.matcher.Constraint`.
xgrammar is imported on the first constrained call, so budgetllm runs without it for every other
call; a constrained call without it gets an error that says what to install.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

from budgetllm.constrain.matcher import Constraint
from budgetllm.constrain.spec import GrammarSpec
from budgetllm.errors import BudgetLLMError, InvalidRequestError

_FIELDS = {"json_schema": "response_format.json_schema.schema", "json_object": "response_format",
           "regex": "response_format.pattern", "grammar": "response_format.grammar", "structural_tag": "tools"}


def xgrammar_module():
    try:
        import xgrammar
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BudgetLLMError("constrained decoding (response_format, tool calls) needs the 'xgrammar' package: "
                             f"pip install 'xgrammar>=0.2.8' ({e})") from None
    return xgrammar


def available() -> bool:
    """Whether constrained decoding can run here (xgrammar importable)."""
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return False
    return True


class GrammarCompiler:
    """Compiles specs for one tokenizer; thread-safe; keeps the last ``capacity`` grammars."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None, capacity: int = 256):
        xgr = xgrammar_module()
        self.vocab_size = int(vocab_size or len(tokenizer))
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size)
        self._compiler = xgr.GrammarCompiler(self.info, cache_enabled=False)
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = capacity
        self.compiles = 0  # cache misses, for tests and benchmarks

    def compile(self, spec: GrammarSpec) -> Any:
        with self._lock:
            hit = self._cache.get(spec.key)
            if hit is not None:
                self._cache.move_to_end(spec.key)
                return hit
        compiled = self._compile(spec)
        with self._lock:
            self._cache[spec.key] = compiled
            self.compiles += 1
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, spec: GrammarSpec) -> Any:
        c = self._compiler
        try:
            if spec.kind == "json_schema":
                return c.compile_grammar(json_grammar(spec.source, any_whitespace=False))
            if spec.kind == "json_object":  # any object (OpenAI's json_object), compact whitespace
                return c.compile_grammar(json_grammar('{"type": "object"}', any_whitespace=False, strict_mode=False))
            if spec.kind == "regex":
                return c.compile_regex(spec.source)
            if spec.kind == "grammar":
                return c.compile_grammar(spec.source)
            if spec.kind == "structural_tag":
                return c.compile_structural_tag(_strict_strings(json.loads(spec.source)))
        except (RuntimeError, ValueError, TypeError) as e:  # the library's parse/compile errors
            msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise InvalidRequestError(_FIELDS[spec.kind], f"cannot be compiled to a grammar: {msg}") from None
        raise InvalidRequestError("response_format", f"unknown grammar kind {spec.kind!r}")

    def constraint(self, spec: GrammarSpec, eos_ids: set[int] | list[int]) -> Constraint:
        xgr = xgrammar_module()
        matcher = xgr.GrammarMatcher(self.compile(spec), override_stop_tokens=sorted(eos_ids))
        return Constraint(matcher, self.vocab_size, spec)


# xgrammar 0.2.8 writes the characters of a length-bounded JSON string (minLength/maxLength) as
# [^"\\\r\n], which admits the raw control characters U+0000-U+001F (except CR, LF) that JSON
# forbids inside strings (json.loads refuses them). Its unbounded string rule already excludes them;
# the bounded one gets the same class here.
_LOOSE_CHAR = r'[^\"\\\r\n]'
_JSON_CHAR = r'[^\0-\x1f\"\\\r\n]'


def json_grammar(schema: str, *, any_whitespace: bool, strict_mode: bool = True,
                 max_whitespace_cnt: int | None = None) -> str:
    """The EBNF of a JSON schema (xgrammar's converter) whose strings are strict JSON strings."""
    xgr = xgrammar_module()
    ebnf = str(xgr.Grammar.from_json_schema(schema, any_whitespace=any_whitespace, strict_mode=strict_mode,
                                            max_whitespace_cnt=max_whitespace_cnt))
    return ebnf.replace(_LOOSE_CHAR, _JSON_CHAR)


def _strict_strings(node: Any) -> Any:
    """A structural tag whose JSON-schema elements are EBNF grammars from :func:`json_grammar`
    (the structural tag's own schema elements use xgrammar's converter with the same defaults:
    any whitespace up to ``max_whitespace_cnt``, strict mode)."""
    if isinstance(node, list):
        return [_strict_strings(x) for x in node]
    if not isinstance(node, dict):
        return node
    if node.get("type") == "json_schema" and "json_schema" in node and node.get("style", "json") == "json":
        src = node["json_schema"]
        src = src if isinstance(src, str) else json.dumps(src, ensure_ascii=False)
        return {"type": "grammar", "grammar": json_grammar(src, any_whitespace=True,
                                                           max_whitespace_cnt=node.get("max_whitespace_cnt"))}
    return {k: _strict_strings(v) for k, v in node.items()}
