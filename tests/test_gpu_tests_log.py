"""bench/gpu_tests_log.py (the merged GPU-test log of issue 13) on two small made-up part logs: card and
commit first, one line per test from the short summary or the -v lines (also when a stack dump
separates a test's name from its result), NOT RUN for collected tests no log reports, both logs kept."""

from __future__ import annotations

from bench.gpu_tests_log import merge

CARD = "GPU 0: NVIDIA H200 (UUID: GPU-x)"
KERNELS = f"""{CARD}
commit abc1234
Tue Dec  1 01:00:00 AM UTC 2026
tests/kernels/test_a.py::test_one[bf16] PASSED [ 50%]
tests/kernels/test_a.py::test_slow Timeout (0:01:00)!
Thread 0x01 (most recent call first):
  File "x.py", line 3 in f
FAILED [100%]
=========================== short test summary info ============================
PASSED tests/kernels/test_a.py::test_one[bf16]
FAILED tests/kernels/test_a.py::test_slow - AssertionError: 3 of 1536 outputs differ
======================== 1 failed, 1 passed in 70.00s =========================
part kernels: pytest rc=1 (124/130: cut by the 330 s limit) in 75 s
"""
REST = f"""1796087122 {CARD}
1796087122 commit abc1234
1796087123 tests/engine/test_b.py::test_two PASSED [ 50%]
1796087124 tests/engine/test_b.py::test_three SKIPPED (needs x) [100%]
1796087125 ============================== 1 passed, 1 skipped in 3.00s ==============================
"""


def test_merge_writes_card_commit_and_one_line_per_test(tmp_path):
    (tmp_path / "gpu-tests-kernels.log").write_text(KERNELS)
    (tmp_path / "gpu-tests-rest.log").write_text(REST)
    out = tmp_path / "gpu-tests.log"
    merge(tmp_path, out, ["tests/engine/test_b.py::test_two", "tests/engine/test_c.py::test_never"])
    lines = out.read_text().splitlines()
    assert lines[:2] == [CARD, "commit abc1234"]
    assert lines[2].startswith("parts: kernels, rest; 2 PASSED, 1 FAILED, 1 SKIPPED, 1 NOT RUN")
    table = {ln.rsplit(" ", 1)[1]: ln.rsplit(" ", 1)[0].strip() for ln in lines[4:9]}
    assert table == {"tests/kernels/test_a.py::test_one[bf16]": "PASSED", "tests/kernels/test_a.py::test_slow": "FAILED",
                     "tests/engine/test_b.py::test_two": "PASSED", "tests/engine/test_b.py::test_three": "SKIPPED",
                     "tests/engine/test_c.py::test_never": "NOT RUN"}
    assert any(ln.startswith("kernels: part kernels: pytest rc=1") for ln in lines)
    assert "======== part rest: the full log ========" in lines and lines[-1].startswith("=====")


def test_a_commit_mismatch_between_the_parts_is_said(tmp_path):
    (tmp_path / "gpu-tests-kernels.log").write_text(KERNELS)
    (tmp_path / "gpu-tests-rest.log").write_text(REST.replace("abc1234", "def5678"))
    merge(tmp_path, tmp_path / "m.log", [])
    assert (tmp_path / "m.log").read_text().splitlines()[1] == "commit MISMATCH: abc1234 / def5678"


def test_the_two_logs_may_come_back_in_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "gpu-tests-kernels.log").write_text(KERNELS)
    (tmp_path / "b" / "gpu-tests-rest.log").write_text(REST)
    merge([tmp_path / "a", tmp_path / "b" / "gpu-tests-rest.log"], tmp_path / "m.log", [])
    assert (tmp_path / "m.log").read_text().splitlines()[2].startswith("parts: kernels, rest; 2 PASSED, 1 FAILED")
