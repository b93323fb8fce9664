"""Calibration tables: JSON round trip, interpolation, frontier, plot, the measuring loop."""

import json

import pytest
from policy_helpers import EXAMPLES

from budgetllm.errors import PolicyFileError
from budgetllm.policy import CalibrationGrid, CalibrationPoint, CalibrationTable, build_table, plot_frontier

TABLE = CalibrationTable.load(EXAMPLES / "calibration-example.json")


def test_round_trip(tmp_path):
    TABLE.save(tmp_path / "t.json")
    again = CalibrationTable.load(tmp_path / "t.json")
    assert again.points == TABLE.points and again.model == TABLE.model


def test_grid_points_are_returned_exactly():
    for p in TABLE.points:
        got = TABLE.interpolate(p.task, p.thinking_budget, p.compression, p.width)
        assert got.accuracy == pytest.approx(p.accuracy) and got.peak_kv_bytes == p.peak_kv_bytes


def test_budgets_interpolate_in_log_space_and_clamp_outside():
    a512 = TABLE.interpolate("arith", 512, 4.0).accuracy
    a1024 = TABLE.interpolate("arith", 1024, 4.0).accuracy
    mid = TABLE.interpolate("arith", 724, 4.0).accuracy  # ~ geometric middle
    assert a512 < mid < a1024
    assert TABLE.interpolate("arith", 10**6, 4.0).accuracy == TABLE.interpolate("arith", 2048, 4.0).accuracy


def test_compressions_interpolate_between_levels():
    a2 = TABLE.interpolate("arith", 1024, 2.0).accuracy
    a4 = TABLE.interpolate("arith", 1024, 4.0).accuracy
    assert min(a2, a4) <= TABLE.interpolate("arith", 1024, 3.0).accuracy <= max(a2, a4)


def test_unknown_task_is_a_key_error():
    with pytest.raises(KeyError, match="arith"):
        TABLE.interpolate("gsm", 10, 1.0)


def test_the_frontier_is_increasing_in_accuracy_and_cost():
    front = TABLE.frontier("arith")
    assert [p.peak_kv_bytes for p in front] == sorted(p.peak_kv_bytes for p in front)
    assert [p.accuracy for p in front] == sorted(p.accuracy for p in front)
    assert len(front) >= 3


def test_plot_frontier_writes_a_png(tmp_path):
    out = plot_frontier(TABLE, tmp_path / "frontier.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_build_table_calls_measure_for_every_grid_point():
    grid = CalibrationGrid(tasks=("t",), thinking_budgets=(0, 64), compressions=(1.0, 8.0), widths=(1, 2))
    seen = []

    def measure(task, budget, compression, width):
        return CalibrationPoint(task, budget, compression, 0.5, budget / 2, 1000, 2000, 10, width)

    table = build_table(grid, measure, model="m", on_point=seen.append)
    assert len(table.points) == len(seen) == 8 and table.meta["grid"]["thinking_budgets"] == [0, 64]


def _one_point(**override) -> str:
    """A calibration file with one well-formed point, but for ``override``."""
    point = dict(task="t", thinking_budget=0, compression=1, accuracy=0.6, mean_reasoning_tokens=0,
                 peak_kv_bytes=1, kv_bytes_read=1, n_samples=1)
    return json.dumps({"points": [{**point, **override}]})


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "line 1: invalid JSON"),
        ("[]", '"points" list'),
        ('{"points": [1]}', "must be an object"),
        ('{"points": [{"task": "t"}]}', "missing fields"),
        (_one_point(accuracy=60), "fraction, not a percentage"),
        (_one_point(thinking_budget="x"), "thinking_budget: must be a number"),
    ],
)
def test_malformed_calibration_files(tmp_path, content, match):
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(PolicyFileError, match=match):
        CalibrationTable.load(path)
