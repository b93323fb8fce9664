"""The main job's explanations of each call's compression (examples/agent.py), without a model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage


@pytest.fixture(scope="module")
def example():
    path = Path(__file__).resolve().parents[2] / "examples" / "agent.py"
    spec = importlib.util.spec_from_file_location("example_agent_report", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def _call(tokens, asked, got, window=256, evicted=0, reason="keep it"):
    return AIMessage("x", usage_metadata={"input_tokens": tokens - 5, "output_tokens": 5, "total_tokens": tokens},
                     response_metadata={"kv_memory": {"compression_requested": asked, "compression_achieved": got,
                                                      "window": window, "evicted_tokens": evicted, "mode": "dms"},
                                        "budget_plan": {"reasons": {"compression": reason}}})


def test_each_case_is_explained(example):
    lines = example.explain_compression([_call(120, 4, 1.0), _call(1600, 8, 3.1, evicted=9000),
                                         _call(90, 1, 1.0, reason="tool result: keep everything")])
    assert "too short to compress: all 120 tokens fit in the 256-token window" in lines[0]
    assert "achieved 3.10x" in lines[1] and "older 1344 at about 1/8" in lines[1] and "9000" in lines[1]
    assert "about 3.8x at this length" in lines[1]  # 1600 / (256 + 1344 / 8) = 3.77
    assert "dense, as the policy chose (tool result: keep everything)" in lines[2]


def test_the_report_is_longer_than_the_window_and_states_its_cause_once(example):
    report = example.incident_report()
    assert report.count("ROOT CAUSE") == 1 and len(report.split()) > 4 * 256 // 3
    messages = example.report_task()
    assert messages[1].tool_calls[0]["id"] == messages[2].tool_call_id and messages[2].name == "read_report"
