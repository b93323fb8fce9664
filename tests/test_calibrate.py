"""Built-in tasks and the calibration runner (on a tiny random model: accuracy is ~0, costs are real)."""

from __future__ import annotations

import random

from budgetllm import tasks
from budgetllm.calibrate import calibrate
from budgetllm.policy.calibration import CalibrationGrid, CalibrationTable


def test_task_generators_are_seeded_and_checkable():
    a = list(tasks.items("arith", 5, seed=3))
    assert a == list(tasks.items("arith", 5, seed=3)) and a != list(tasks.items("arith", 5, seed=4))
    for name in tasks.GENERATORS:
        for item in tasks.items(name, 3, seed=1):
            assert tasks.check(item, f"Let me think. Answer: {item.answer}")
            assert not tasks.check(item, "Answer: banana")
    item = tasks.arithmetic(random.Random(0))
    assert eval(item.prompt.split("Compute ")[1].split(".")[0]) == int(item.answer)


def test_jsonl_task_file(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text('{"prompt": "2+2?", "answer": "4"}\n{"prompt": "3+3?", "answer": "6"}\n')
    got = list(tasks.items(str(f), 10))
    assert [i.answer for i in got] == ["4", "6"] and got[0].task == "mine"


def test_calibration_table_from_a_real_run(tiny_llm, tmp_path):
    llm = tiny_llm("qwen3", "borrowed")
    grid = CalibrationGrid(tasks=("kv",), thinking_budgets=(0, 16), compressions=(1.0, 8.0), widths=(1,))
    table = calibrate(llm, grid, samples=2, progress=False)
    assert len(table.points) == 4
    by = {(p.thinking_budget, p.compression): p for p in table.points}
    assert by[(16, 1.0)].mean_reasoning_tokens > 0 and by[(0, 1.0)].mean_reasoning_tokens == 0
    assert by[(16, 8.0)].peak_kv_bytes < by[(16, 1.0)].peak_kv_bytes  # compression shows in the measured cost
    table.save(tmp_path / "t.json")
    assert CalibrationTable.load(tmp_path / "t.json").points == table.points
