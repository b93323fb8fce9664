"""Constrained decoding: answers and tool calls that always parse and match their schema.

Owns: the checks of ``response_format`` and tool schemas (errors name the schema path), the
canonical grammar spec of a call (``spec``, ``tools``: standard library only), compilation with a
cache keyed by the spec (``compiler``: xgrammar, imported lazily, so budgetllm runs without it for
unconstrained calls), the per-request matcher (``matcher``: torch-free), and packed token
bitmasks on torch tensors (``mask``).
Must not import: ``budgetllm.engine``, ``budgetllm.llm``, ``budgetllm.models``, ``budgetllm.server``,
``budgetllm.policy``, ``budgetllm.accounting``, LangChain; ``spec``, ``tools`` and ``matcher`` also
not torch (see the import-linter contracts in pyproject.toml).
"""

from budgetllm.constrain.compiler import GrammarCompiler, available
from budgetllm.constrain.matcher import Constraint, bitmask_width
from budgetllm.constrain.spec import GrammarSpec, check_schema, json_schema_spec, parse_response_format
from budgetllm.constrain.tools import call_spec, forced_names, tool_call_spec

__all__ = ["call_spec", "Constraint", "GrammarCompiler", "GrammarSpec", "available", "bitmask_width", "check_schema",
           "forced_names", "json_schema_spec", "parse_response_format", "tool_call_spec"]
