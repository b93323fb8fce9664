"""Fixtures for the LangChain integration: a scripted engine (no model) and the embedded model."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_core")

from lc_fakes import REAL_PARAMS, FakeLLM  # noqa: E402


def pytest_collection_modifyitems(items):
    """A test module's ``PARAM_XFAILS`` ({"test_name[param]": mark}) marks single parametrizations."""
    for item in items:
        mark = getattr(item.module, "PARAM_XFAILS", {}).get(item.name)
        if mark is not None:
            item.add_marker(mark)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Real-model tests run torch on one thread: on a shared CPU, intra-op threads fighting other
    processes made decoding ~40x slower (BUDGETLLM_TEST_THREADS overrides)."""
    import os

    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("BUDGETLLM_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fake_llm():
    return FakeLLM()


@pytest.fixture
def chat_fake(fake_llm):
    from langchain_budgetllm import ChatDMS

    def make(script=None, **kwargs):
        if script is not None:
            fake_llm.script = script
        return ChatDMS.from_llm(fake_llm, **kwargs)

    return make


@pytest.fixture(scope="module")
def real_chat(one_torch_thread):
    """ChatDMS on the embedded SmolLM2-135M (CPU, reference backend), loaded once."""
    from langchain_budgetllm import ChatDMS

    return ChatDMS(**REAL_PARAMS)
