"""Tool calls streamed while they are written: the pieces of each call concatenate to its
arguments text, whatever the split of the text into deltas; names and ids come first."""

from __future__ import annotations

import json
import random

from budgetllm.tool_stream import ToolCallDeltas

CALLS = ('<tool_call>\n{"name": "calc", "arguments": {"expr": "2+{3}\\"]x", "n": [1, {"a": []}]}}\n</tool_call>\n'
         '<tool_call>\n{"name": "b\\u00e9", "arguments": {}}\n</tool_call>')


def _pieces(text: str, cuts: list[int]):
    d, out = ToolCallDeltas(), []
    for k in [*cuts, len(text)]:
        out += d.update(text[:k])
    return out


def test_pieces_concatenate_to_the_arguments_for_any_split():
    rng = random.Random(0)
    for trial in range(200):
        cuts = sorted(rng.sample(range(1, len(CALLS)), rng.randint(0, 40))) if trial else list(range(1, len(CALLS)))
        by: dict[int, list] = {}
        for p in _pieces(CALLS, cuts):
            by.setdefault(p.index, []).append(p)
        assert sorted(by) == [0, 1]
        for i, name, args in ((0, "calc", '{"expr": "2+{3}\\"]x", "n": [1, {"a": []}]}'), (1, "bé", "{}")):
            first, rest = by[i][0], by[i][1:]
            assert (first.name, first.args) == (name, "") and first.id.startswith("call_")
            assert all(p.name is None and p.id is None for p in rest)
            assert "".join(p.args for p in rest) == args and json.loads(args) is not None


def test_bare_json_call_and_unstreamable_shapes():
    (first, *rest) = _pieces('{"name": "x", "parameters": {"q": [1, 2]}}', [5, 17, 30])
    assert first.name == "x" and "".join(p.args for p in rest) == '{"q": [1, 2]}'
    assert _pieces('<tool_call>\n{"arguments": {"q": 1}, "name": "x"}', [3, 20]) == []  # other key order
    assert [p.args for p in _pieces('<tool_call>\n{"name": "x", "arguments": 5}', [])] == [""]  # named, no object
    assert _pieces("plain text", []) == []
