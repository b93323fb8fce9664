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


def test_copy_task_is_long_and_only_a_copied_passage_passes():
    items = list(tasks.items("copy", 4, seed=5))
    assert items == list(tasks.items("copy", 4, seed=5)) and items != list(tasks.items("copy", 4, seed=6))
    for item in items:
        passage = item.prompt.split("Remember this passage: ")[1].split("\n")[0]
        assert passage.endswith(f"{item.answer} times.")
        # far longer than a 256-token window (the filler alone is ~150 sentences of ~5 tokens)
        assert len(item.prompt.split()) > 600
        head = item.prompt.rsplit("It begins: ", 1)[1]
        assert passage.startswith(head) and item.answer not in head
        assert tasks.check(item, passage + "\nThe sky is blue. Birds fly south in winter.")
        assert not tasks.check(item, "The sun is yellow. The sky is blue. The grass is green.")
        assert not tasks.check(item, passage.replace(f" {item.answer} ", f" {int(item.answer) + 1} "))


def test_copy_task_prompt_is_compressed_without_any_thinking(tiny_llm):
    """Budget 0: only the prompt is in the cache. A short task's prompt can sit inside the window
    (so every ratio measures the same); the copy prompt cannot, so the ratio changes what is kept."""
    from budgetllm.calibrate import measure_point

    llm = tiny_llm("qwen3", "borrowed")
    dense = measure_point(llm, "copy", 0, 1.0, 1, samples=1, answer_tokens=4)
    cr8 = measure_point(llm, "copy", 0, 8.0, 1, samples=1, answer_tokens=4)
    assert dense.prompt_tokens == cr8.prompt_tokens > 600
    assert cr8.peak_kv_bytes < dense.peak_kv_bytes / 2


def test_shipped_table_of_the_embedded_model_ranks_compression_on_the_long_task():
    """The committed measurement (budgetllm/data/calibration/smollm2-135m.json): the short tasks' prompts
    fit in the 256-token window and their accuracy is flat in CR; the copy task's does not, and is not."""
    from pathlib import Path

    import budgetllm

    table = CalibrationTable.load(Path(budgetllm.__file__).parent / "data" / "calibration" / "smollm2-135m.json")
    assert "copy" in table.tasks()
    for task in table.tasks():
        points = table.points_for(task)
        by_cr = {}
        for p in points:
            by_cr.setdefault(p.thinking_budget, {})[p.compression] = p.accuracy
        flat = all(len(set(accs.values())) == 1 for accs in by_cr.values())
        long_prompt = min(p.prompt_tokens for p in points) > 256
        assert flat != long_prompt, (task, by_cr)
    copy = {p.compression: p for p in table.points_for("copy")}
    assert copy[1.0].accuracy > copy[8.0].accuracy and copy[8.0].peak_kv_bytes < copy[1.0].peak_kv_bytes
