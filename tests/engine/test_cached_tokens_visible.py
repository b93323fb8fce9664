"""Reused history is visible where agents look: the server's usage and ChatDMS's usage_metadata."""

from __future__ import annotations

import pytest

from budgetllm.types import Usage


def test_server_usage_carries_cached_tokens_both_ways():
    from budgetllm.server.wire import usage_from_wire, usage_to_wire

    wire = usage_to_wire(Usage(input_tokens=1000, output_tokens=5, cached_tokens=940))
    assert wire["prompt_tokens_details"] == {"cached_tokens": 940}
    assert usage_from_wire(wire).cached_tokens == 940
    assert usage_from_wire({"prompt_tokens": 3}).cached_tokens == 0


def test_chatdms_maps_cached_tokens_to_cache_read():
    pytest.importorskip("langchain_core")
    from langchain_budgetllm.chunks import usage_metadata

    meta = usage_metadata(Usage(input_tokens=1000, output_tokens=5, cached_tokens=940))
    assert meta["input_token_details"]["cache_read"] == 940
