"""LangChain's standard unit tests for ChatDMS (no model is loaded: construction stays lazy)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_budgetllm import ChatDMS  # noqa: E402
from langchain_tests.unit_tests import ChatModelUnitTests  # noqa: E402


class TestChatDMSUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatDMS]:
        return ChatDMS

    @property
    def chat_model_params(self) -> dict:
        return {"compression": 8, "device": "cpu"}

    @property
    def has_tool_choice(self) -> bool:
        # tool_choice "any"/"required"/a name makes the engine write the call's opening itself.
        return True

    @property
    def supports_model_override(self) -> bool:
        return False


def test_construction_does_not_load_the_model():
    chat = ChatDMS(model="some/unloaded-model", compression=4)
    assert chat._llm is None
    assert chat.profile.get("tool_calling") is True
    assert chat._llm is None  # only max_input_tokens loads the engine
