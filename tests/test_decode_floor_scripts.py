"""The decode-floor bench scripts' pure parts, on CPU: the sweep's workspace sizing agrees with the
check ``gemv`` itself makes (interpreter), and the summary lines are computed from the step points."""

from __future__ import annotations

import pytest
import torch

from bench.decode_floor_summary import PREFIX, lines
from bench.gemv_sweep import fits, ws_size
from budgetllm.kernels.gemv import GemvWorkspace, gemv


@pytest.mark.parametrize(("N", "K", "plan", "glu", "part", "cnt"), [
    (40, 64, (8, 32, 2, 4, 1, 0), False, 1 << 10, 4),     # 5 column blocks > 4 counters: too small
    (40, 64, (8, 32, 2, 4, 1, 0), False, 1 << 10, 5),     # exactly enough
    (40, 64, (8, 32, 2, 4, 1, 0), False, 159, 8),         # 2 x 5 x 2 x 8 = 160 partial floats needed
    (40, 64, (8, 64, 1, 4, 1, 0), False, 1, 1),           # one split, no pairs: no scratch used
    (24, 64, (8, 32, 1, 4, 1, 0), True, 1, 1),            # gate/up pairs use it even with one split
    (24, 64, (8, 32, 1, 4, 1, 0), True, 1 << 10, 3),
])
def test_sweep_workspace_sizing_matches_gemvs_own_check(N, K, plan, glu, part, cnt):
    ws = GemvWorkspace("cpu", part, cnt)
    g = torch.Generator().manual_seed(N + K + part + cnt)
    x = torch.randn(1, K, generator=g)
    w = torch.randn(2 * N if glu else N, K, generator=g)
    try:
        y = gemv(x, w, glu=glu, ws=ws, plan=plan, glu_pairs=True if glu else None)
        ran = True
    except ValueError as e:
        assert "workspace too small" in str(e)
        ran = False
    assert fits(ws, N, K, plan, glu) == ran
    if ran:
        want = torch.nn.functional.silu(x @ w[:N].T) * (x @ w[N:].T) if glu else x @ w.T
        assert torch.allclose(y, want, rtol=1e-4, atol=1e-4)
    bigger = GemvWorkspace("cpu", *ws_size(N, K, plan))
    assert fits(bigger, N, K, plan, glu)  # the sweep's own-size workspace always fits


def _point(shape, ctx, cr, floor, replay, engine):
    return {"shape": shape, "batch": 1, "context": ctx, "compression": cr, "floor_ms": floor,
            "l8_pdl": {"replay_ms_runs": replay, "engine_step_ms_runs": engine}}


def test_summary_lines_are_computed_from_the_points():
    res = {"card": "X", "commit": "abc", "steps": [
        _point("qwen2.5-1.5b", 1024, 1, 0.8, [2.0, 1.6, 1.7], [2.5, 2.5]),
        _point("smollm2-135m", 1024, 1, 0.07, [0.8, 0.8], [0.5, 0.3]),  # 2,000 and 3,333 tok/s: median 2,500
    ]}
    earlier = {"steps": [dict(_point("qwen2.5-1.5b", 1024, 1, 0.9, [1.8], [2.0]), gemv_pdl={
        "replay_ms_runs": [1.8], "engine_step_ms_runs": [2.0]})]}
    out = {t["name"]: t for t in lines(res, "r.json", "l8_pdl", earlier, earlier_name="e.json")}
    assert len(out) == 2 and all(n.startswith(PREFIX) for n in out)  # points not measured: no line
    bw = next(t for n, t in out.items() if "1.5b" in n)
    assert bw["measured"] == round(0.8 / 1.7, 3) and bw["met"] is False
    assert "runs 0.4, 0.5, 0.471" in bw["note"] and "e.json (gemv_pdl, older code): 0.5" in bw["note"]
    tok = next(t for n, t in out.items() if "smollm2" in n)
    assert tok["measured"] == 2500.0 and tok["met"] is True and tok["run"] == "r.json (commit abc)"
