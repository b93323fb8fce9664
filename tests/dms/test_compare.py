"""The long-text comparison of two adapters (budgetllm.dms.compare) and its adoption rule."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from budgetllm.dms import compare


def _cell(kl, agree, ratio):
    return {"dms": {"kl": kl, "greedy_agreement": agree, "compression": ratio, "positions": 100}}


def _result(new_kl=0.01, new_agree=0.9, new_ratio=6.0, new_copy=0.75):
    text = {"8": {L: {"shipped": _cell(0.02, 0.88, 6.0), "retrained": _cell(new_kl, new_agree, new_ratio)}
                  for L in ("4096", "8192")}}
    copy_ = {"8": {"shipped": {"dms": {"accuracy": 0.75, "n": 8}}, "retrained": {"dms": {"accuracy": new_copy, "n": 8}}}}
    return {"text": text, "copy": copy_}


def test_retrained_adopted_only_when_better_on_every_length():
    assert compare.recommend(_result())["adopt"] is True
    assert compare.recommend(_result(new_kl=0.03))["adopt"] is False  # worse KL
    assert compare.recommend(_result(new_agree=0.85))["adopt"] is False  # agreement drops beyond the slack
    assert compare.recommend(_result(new_agree=0.879))["adopt"] is True  # within the slack
    assert compare.recommend(_result(new_ratio=4.0))["adopt"] is False  # bought quality by compressing less
    assert compare.recommend(_result(new_copy=0.5))["adopt"] is False  # copy accuracy lower
    one_worse = _result()
    one_worse["text"]["8"]["8192"]["retrained"] = _cell(0.05, 0.9, 6.0)
    rec = compare.recommend(one_worse)
    assert rec["adopt"] is False and any("8192 tokens: kl lower: NO" in w for w in rec["why"])


def test_missing_cells_keep_the_shipped_adapter():
    partial = _result()
    del partial["text"]["8"]["8192"]["retrained"]
    assert compare.recommend(partial)["adopt"] is False
    no_copy = _result()
    no_copy["copy"] = {}
    rec = compare.recommend(no_copy)
    assert rec["adopt"] is False and "passage copy" in rec["why"][-1]


def test_merge_weights_by_positions():
    a = {"dms": {"kl": 0.1, "greedy_agreement": 1.0, "compression": 4.0, "positions": 1, "correct": [True]}}
    b = {"dms": {"kl": 0.4, "greedy_agreement": 0.0, "compression": 2.0, "positions": 3, "correct": [False, False]}}
    m = compare.merge([a, b])["dms"]
    assert m["kl"] == pytest.approx(0.325) and m["greedy_agreement"] == 0.25 and m["compression"] == 3.0
    assert m["accuracy"] == pytest.approx(1 / 3, abs=1e-4) and m["n"] == 3


def test_baselines_get_exactly_the_dms_budget(tiny_loaded):
    loaded = tiny_loaded("adapter")
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(0, 49152, (48,), generator=g).tolist() for _ in range(2)]
    res = compare.score_rows(loaded, rows, compare.second_half(rows), 8.0, stride=4, log=lambda m: None)
    assert set(res) == {"dms", *compare.BASELINES}
    ratios = {m: r["compression"] for m, r in res.items()}
    assert len(set(ratios.values())) == 1 and ratios["dms"] >= 1.0  # equal kept tokens for every method
    assert res["dms"]["positions"] == 2 * (47 - 24)
    for r in res.values():
        assert r["kl"] >= -1e-6 and 0.0 <= r["greedy_agreement"] <= 1.0


def test_answers_and_deadline(tiny_loaded):
    loaded = tiny_loaded("adapter")
    items = [(list(range(100, 140)), [36, 37, 38, 39]), (list(range(200, 236)), [33, 34, 35])]
    sel = compare.answer_positions(items)
    assert sel.sum().item() == 7 and sel[0, 35] and sel[1, 32] and not sel[1, 35]
    res = compare.score_rows(loaded, [f for f, _ in items], sel, 4.0, methods=("dms", "window"), answers=True,
                             log=lambda m: None)
    assert len(res["dense"]["correct"]) == 2 and len(res["window"]["correct"]) == 2
    skipped = []
    res = compare.score_rows(loaded, [f for f, _ in items], sel, 4.0, methods=("dms", "tova"),
                             deadline=time.time() - 1, log=skipped.append)
    assert "dms" not in res and "tova" not in res and len(skipped) == 2


def test_traces_stop_at_the_deadline(tiny_llm):
    from budgetllm.dms.traces import generate_traces

    llm = tiny_llm("llama", "adapter")
    assert generate_traces(llm, 3, seed=1, max_tokens=8, min_tokens=1, long_context=False,
                           deadline=time.time() - 1) == []


def test_recommend_does_not_mutate(tmp_path):
    r = _result()
    before = copy.deepcopy(r)
    compare.recommend(r)
    assert r == before
