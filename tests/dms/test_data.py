"""Offline retrofit data: seeded generators, packing, local files."""

from __future__ import annotations

import json

import pytest

from budgetllm.dms.data import GENERATORS, load_text_files, make_tasks, pack


def test_generators_are_seeded_and_answerable():
    a, b = make_tasks(9, seed=3), make_tasks(9, seed=3)
    assert [t.prompt for t in a] == [t.prompt for t in b]
    assert [t.prompt for t in make_tasks(9, seed=4)] != [t.prompt for t in a]
    kinds = {t.kind for t in a}
    assert kinds == {"arithmetic", "variable_tracking", "kv_retrieval"}
    for t in a:
        assert t.answer and (t.kind == "arithmetic" or t.answer in t.prompt)
    arith = next(t for t in a if t.kind == "arithmetic")
    env: dict = {}
    for line in arith.prompt.splitlines()[1:-1]:
        name, expr = line.rstrip(".").split(" = ")
        env[name] = eval(expr, {}, dict(env))  # noqa: S307 - our own generated expression
    assert str(list(env.values())[-1]) == arith.answer
    assert set(GENERATORS) >= {"open", "arithmetic", "variable_tracking", "kv_retrieval"}


def test_pack_rows_and_errors():
    rows = pack([[1, 2, 3]] * 10, 8, min_rows=5)
    assert rows.shape[1] == 8 and rows.shape[0] >= 5
    with pytest.raises(ValueError, match="no training text"):
        pack([], 8)


def test_local_files(tmp_path):
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [len(w) for w in text.split()]

        def apply_chat_template(self, messages, tokenize=False):
            return " ".join(m["content"] for m in messages)

    (tmp_path / "a.txt").write_text("one two three")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "four five"}) + "\n\n"
                                      + json.dumps({"messages": [{"role": "user", "content": "six"}]}) + "\n")
    assert load_text_files([tmp_path / "a.txt", tmp_path / "b.jsonl"], Tok()) == [[3, 3, 5], [4, 4], [3]]
    (tmp_path / "c.jsonl").write_text('{"title": "x"}\n')
    with pytest.raises(ValueError, match="c.jsonl, line 1"):
        load_text_files([tmp_path / "c.jsonl"], Tok())
    with pytest.raises(FileNotFoundError):
        load_text_files([tmp_path / "missing.txt"], Tok())
