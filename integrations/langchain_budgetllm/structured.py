"""``ChatDMS.with_structured_output``: LangChain's three methods over constrained decoding.

- ``"json_schema"`` (default): the call carries ``response_format={"type": "json_schema", ...}``;
  the engine's grammar keeps the answer to the schema; the answer text is parsed.
- ``"function_calling"``: the schema becomes a tool and ``tool_choice`` forces it; the grammar
  keeps the call's arguments to the schema; the first tool call is parsed.
- ``"json_mode"``: ``response_format={"type": "json_object"}``; the schema goes in the prompt.

``include_raw=True`` returns ``{"raw": AIMessage, "parsed": ..., "parsing_error": ...}``; a
parsing error lands in ``parsing_error`` (and ``parsed`` is None) as LangChain documents;
without it, a parsing error raises (``OutputParserException``).
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Literal

from langchain_core.language_models import LanguageModelInput
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass

Method = Literal["json_schema", "function_calling", "json_mode"]


def _is_pydantic(schema: Any) -> bool:
    return isinstance(schema, type) and is_basemodel_subclass(schema)


def structured_output(model: Any, schema: Any, method: Method = "json_schema", include_raw: bool = False,
                      **kwargs: Any) -> Runnable[LanguageModelInput, Any]:
    kwargs.pop("strict", None)  # constrained decoding is always strict
    if kwargs:
        raise ValueError(f"with_structured_output: unsupported arguments {sorted(kwargs)}")
    if schema is None and method != "json_mode":
        raise ValueError(f"with_structured_output: method={method!r} needs a schema")
    pydantic = _is_pydantic(schema)
    ls_format = {"kwargs": {"method": method}, "schema": convert_to_openai_tool(schema) if schema is not None else None}
    if method == "function_calling":
        tool = convert_to_openai_tool(schema)
        name = tool["function"]["name"]
        bound = model.bind_tools([schema], tool_choice=name, ls_structured_output_format=ls_format)
        parser: Runnable = (PydanticToolsParser(tools=[schema], first_tool_only=True) if pydantic
                            else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True))
    elif method == "json_schema":
        js = convert_to_json_schema(schema)
        name = js.get("title") or "response"
        rf = {"type": "json_schema", "json_schema": {"name": name, "schema": js, "strict": True}}
        bound = model.bind(response_format=rf, ls_structured_output_format=ls_format)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
    elif method == "json_mode":
        bound = model.bind(response_format={"type": "json_object"}, ls_structured_output_format=ls_format)
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
    else:
        raise ValueError(f"with_structured_output: unknown method {method!r}; use json_schema, function_calling or json_mode")
    if not include_raw:
        return bound | parser
    parse = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    fallback = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parse.with_fallbacks([fallback], exception_key="parsing_error")
