"""``budgetllm eval`` needs nothing outside the package: run it from an empty directory, with only
the package importable (no repository ``bench/`` folder on the path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_eval_runs_from_outside_the_repository(tiny_dir, tmp_path):
    model = tiny_dir("llama", "adapter")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "BUDGETLLM_CACHE": str(tmp_path / "cache")}
    code = ("import sys; from budgetllm.cli import main; "
            "assert not any(p.rstrip('/').endswith('bench') for p in sys.path); sys.exit(main(sys.argv[1:]))")
    out = subprocess.run(
        [sys.executable, "-c", code, "eval", "--model", str(model), "--out", "res", "--ratios", "2",
         "--methods", "dms,window", "--n-text", "1", "--n-tasks", "2", "--text-len", "64", "--device", "cpu"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    (result,) = (tmp_path / "res").glob("quality_*.json")
    res = json.loads(result.read_text())
    assert res["text"]["sequences"] == 1 and res["device"] == "cpu"
    assert {"dms", "window"} <= set(res["text"]["metrics"])
