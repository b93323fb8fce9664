"""bench/soak.py runs end to end (a few seconds, tiny model, CPU) and writes its report; the real
soak (64 clients, 10 minutes) runs on the GPU machine."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "bench" / "soak.py"


def test_soak_script_reports_requests_ttft_memory_and_pages(tmp_path):
    spec = importlib.util.spec_from_file_location("soak", SOAK)
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    out = tmp_path / "soak.json"
    code = soak.main(["--tiny", "--device", "cpu", "--clients", "2", "--seconds", "3", "--max-tokens", "4",
                      "--max-prompt-words", "5", "--cancel-rate", "0.5", "--out", str(out)])
    result = json.loads(out.read_text())
    assert code == 0 and result["errors"] == 0, result["error_samples"]
    assert result["requests_served"] + result["requests_cancelled"] >= 2
    assert result["ttft_p50_s"] is not None and result["ttft_p99_s"] >= result["ttft_p50_s"]
    assert result["memory_start"]["host_rss_bytes"] > 0 and result["memory_end"]["host_rss_bytes"] > 0
    assert result["pages_end"]["active"] == 0
