"""LangChain's standard integration tests for ChatDMS on the embedded SmolLM2-135M-Instruct (CPU).

Tool calls and structured output run under constrained decoding (budgetllm.constrain), so their
validity is not a model limit any more: those tests run un-xfailed. Every remaining xfail is
strict, names the exception it expects and a reason that is not about validity.
"""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_budgetllm import ChatDMS  # noqa: E402
from langchain_core.exceptions import OutputParserException  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402
from lc_fakes import REAL_PARAMS  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

UNFORCED_CHOICE = (
    "SmolLM2-135M does not choose to call a tool unless tool_choice forces it (the agent loop leaves the "
    "choice to the model): a model decision, not call validity; every call it makes is valid"
)
REPEATS_IN_STRING = (
    "SmolLM2-135M (greedy) repeats a phrase inside the joke's 'setup' string until max_tokens, so the "
    "JSON is cut off before 'punchline': a budget/degeneration limit of a 135M model, not validity "
    "(what it writes is a valid prefix of the schema)"
)
# Standard tests that send plain text and accept any answer: no tool call, no JSON to finish.
PLAIN_TEXT_TESTS = frozenset({
    "test_invoke", "test_ainvoke", "test_stream", "test_astream", "test_stream_events_v3",
    "test_astream_events_v3", "test_batch", "test_abatch", "test_conversation",
    "test_double_messages_conversation", "test_usage_metadata", "test_usage_metadata_streaming",
    "test_stop_sequence", "test_message_with_name",
})



class TestChatDMSIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatDMS]:
        return ChatDMS

    @property
    def chat_model_params(self) -> dict:
        # room for a whole call or a whole JSON answer (16 tokens cut them off: "length", not validity)
        return {**REAL_PARAMS, "max_tokens": 96}

    @pytest.fixture
    def model(self, request) -> ChatDMS:
        """LangChain's fixture, with REAL_PARAMS' 16 tokens for the plain-text tests (what they ran with
        before 96 was needed for whole calls and JSON answers): their assertions read any answer, and
        a 135M model asked "Hello" often talks to the limit, so 96 tokens there only cost time."""
        params = {**self.standard_chat_model_params, **self.chat_model_params,
                  **(getattr(request, "param", None) or {})}
        if request.node.originalname in PLAIN_TEXT_TESTS:
            params["max_tokens"] = REAL_PARAMS["max_tokens"]
        return ChatDMS(**params)

    @property
    def has_tool_choice(self) -> bool:
        return True  # a grammar forces the call (budgetllm.constrain)

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["reasoning_output"], "stream": ["reasoning_output"]}

    def invoke_with_reasoning_output(self, *, stream: bool = False) -> AIMessage:
        model = ChatDMS(**{**REAL_PARAMS, "thinking_budget": 8, "max_tokens": 20})
        prompt = "What is 3 + 4? Think first."
        if not stream:
            return model.invoke(prompt)
        full: AIMessageChunk | None = None
        for chunk in model.stream(prompt):
            full = chunk if full is None else full + chunk
        assert full is not None
        assert full.additional_kwargs.get("reasoning_content")
        return full

    # Tool calls and structured output run the standard tests as they are (constrained decoding);
    # what stays xfailed is below, and in PARAM_XFAILS for single parametrizations.

    @pytest.mark.xfail(reason=UNFORCED_CHOICE, strict=True, raises=AssertionError)
    def test_agent_loop(self, model) -> None:
        super().test_agent_loop(model)

    @pytest.mark.xfail(reason=REPEATS_IN_STRING, strict=True, raises=OutputParserException)
    def test_structured_output_pydantic_2_v1(self, model) -> None:
        super().test_structured_output_pydantic_2_v1(model)


# One parametrization of a standard test, xfailed without overriding the test (LangChain's
# test_no_overrides_DO_NOT_OVERRIDE refuses overrides that are not xfailed as a whole); applied by
# tests/langchain/conftest.py at collection.
PARAM_XFAILS = {
    f"{name}[pydantic]": pytest.mark.xfail(reason=REPEATS_IN_STRING, strict=True, raises=OutputParserException)
    for name in ("test_structured_output", "test_structured_output_async")
}
