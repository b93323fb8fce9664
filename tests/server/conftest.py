"""Fixtures of the server tests: a FakeLLM (test double) behind a live loopback server."""

from __future__ import annotations

import pytest
from srv_fake_llm import FakeLLM
from srv_live import LiveServer

from budgetllm.server.app import create_app

API_KEY = "sk-test-key"


@pytest.fixture()
def fake() -> FakeLLM:
    return FakeLLM()


@pytest.fixture()
def server(fake):
    """A live server around ``fake`` (no auth). Function-scoped: each test sees fresh counters."""
    with LiveServer(create_app(fake)) as srv:
        srv.llm = fake
        yield srv


@pytest.fixture()
def keyed_server(fake):
    with LiveServer(create_app(fake, api_key=API_KEY, max_request_bytes=4096)) as srv:
        srv.llm = fake
        yield srv
