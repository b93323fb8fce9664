"""bench/issue13.py's pure parts on CPU: the per-kernel bytes against a hand count, the kernel
labelling and gap arithmetic, the time box, the summary lines from fake points, the summary rewrite
and the plot. No timing is asserted (speed is measured by the script on the GPU, never here)."""

from __future__ import annotations

import json

import pytest
import torch

from bench.issue13_lines import PREFIXES, TimeBox, lines13, rewrite_summary
from bench.profile_decode import kernel_rows, label_kernels, step_kernel_bytes
from budgetllm.benchmarks.long_generation import bytes_ratio, long_pair_of_runs, median_row

TINY = {"layers": 2, "hidden": 8, "inter": 16, "heads": 4, "kv_heads": 2, "head_dim": 2, "vocab": 32,
        "qkv_bias": True}


def test_step_kernel_bytes_match_a_hand_count():
    kb = step_kernel_bytes(TINY, batch=1, kv_entries=[10, 20], num_splits=1)
    # QKV: (4 + 2 * 2) heads x 2 = 16 outputs; weights 16 x 8, norm 8, bias 16; x 8 in, 16 out; bf16
    assert kb["qkv"] == [(16 * 8 + 8 + 16) * 2 + (8 + 16) * 2] * 2
    assert kb["gate_up"] == [(2 * 16 * 8 + 8) * 2 + (8 + 16) * 2] * 2
    assert kb["down"] == [16 * 8 * 2 + (16 + 16) * 2] * 2
    assert kb["o"] == [4 * 2 * 8 * 2 + (8 + 16) * 2] * 2
    part = 4 * 1 * (2 + 2) * 4  # 4 q heads x 1 split x (D + max + sum) float32
    # attention: 10 / 20 entries of K and V (2 elements each), q read, partials written
    assert kb["attention"] == [10 * 2 * 2 * 2 + 4 * 2 * 2 + part, 20 * 2 * 2 * 2 + 4 * 2 * 2 + part]
    assert kb["reduce"] == [part + 4 * 2 * 2] * 2
    assert kb["store"] == [2 * 2 * 2 * 2 * 2] * 2 and kb["rope"] == [2 * 6 * 2 * 2] * 2
    assert kb["lm_head"] == [(32 * 8 + 8) * 2 + 8 * 2 + 32 * 4]
    b4 = step_kernel_bytes(TINY, batch=4, kv_entries=[40, 80])
    assert b4["down"][0] - kb["down"][0] == 3 * (16 + 16) * 2  # weights once, activations per row


def _step_names(layers):
    names = ["indexSelectSmallIndex", "step_inputs_kernel"]
    for _ in range(layers):
        names += ["gemv_kernel", "qkv_rope_kernel", "store_decode_kv_kernel", "decode_attention_kernel",
                  "decode_reduce_kernel", "gemv_kernel", "gemv_kernel", "gemv_kernel"]
    return names + ["gemv_kernel", "reduce_kernel<512>", "slot_stats_kernel"]


def test_kernels_are_labelled_by_launch_order_and_name():
    lab = label_kernels(_step_names(2), layers=2)
    assert lab[:2] == [("other", None), ("other", None)]
    assert [x for x in lab if x[0] in ("qkv", "o", "gate_up", "down")] == [
        ("qkv", 0), ("o", 0), ("gate_up", 0), ("down", 0), ("qkv", 1), ("o", 1), ("gate_up", 1), ("down", 1)]
    assert ("lm_head", None) in lab and ("attention", 1) in lab and ("store", 0) in lab and ("rope", 1) in lab
    assert lab[-2:] == [("other", None), ("other", None)]
    cublas = label_kernels(["nvjet_sm90_tst", "add_rms_norm_kernel", "nvjet_x", "nvjet_y", "nvjet_z", "nvjet_lm"], 1)
    assert [x[0] for x in cublas] == ["qkv", "other", "o", "gate_up", "down", "lm_head"]


def test_kernel_rows_fraction_and_gaps():
    names = _step_names(2)
    # kernel i runs [10 i, 10 i + 8] us, except kernel 3 which overlaps its successor by 4 us (PDL)
    ev = [(n, 10.0 * i, 10.0 * i + (14.0 if i == 3 else 8.0)) for i, n in enumerate(names)]
    kb = step_kernel_bytes(TINY, 1, [10, 20])
    out = kernel_rows(list(reversed(ev)), TINY, kb, bw=1e9, replay_us=400.0)  # any order in
    n = len(names)
    assert out["kernel_count"] == n and out["kernel_sum_us"] == pytest.approx(8 * n + 6)
    assert out["span_us"] == pytest.approx(10 * (n - 1) + 8)
    # idle: 2 us between each pair, except after kernel 3 (it runs into kernel 4)
    assert out["idle_between_us"] == pytest.approx(2 * (n - 1) - 2)
    assert out["gap_us"] == pytest.approx(400 - (8 * n + 6), abs=0.1)
    qkv = next(r for r in out["kernels"] if r["label"] == "qkv")
    assert qkv["bytes"] == kb["qkv"][0] and qkv["bw_fraction"] == round(kb["qkv"][0] / 8e-6 / 1e9, 3)
    assert out["per_label"]["gate_up"]["kernels"] == 2 and out["per_label"]["other"]["bytes"] == 0
    assert out["step_bytes"] == sum(sum(v) for v in kb.values())


def test_time_box_skips_a_part_that_would_start_short_and_records_errors():
    t = [0.0]
    box = TimeBox(100, now=lambda: t[0])
    ran = []

    def work(s):
        def f():
            t[0] += s
            ran.append(s)
        return f

    assert box.run("a", 30, work(50))
    assert not box.run("b", 60, work(1))  # 50 s left < 60
    errors = []

    def boom():
        raise RuntimeError("x")

    assert not box.run("c", 10, boom, errors)
    assert ran == [50] and box.skipped == [{"part": "b", "why": "50 s left, the part needs ~60 s"}]
    assert [p["part"] for p in box.parts] == ["a", "c"] and "RuntimeError" in errors[0]["error"]


def _eng(shape, ctx, batch, cr, ms, kv=0.0, w=1e9, rep=0):
    return {"shape": shape, "context": ctx, "batch": batch, "compression": cr, "step_ms": ms, "rep": rep,
            "kv_read_per_step": kv, "weight_bytes": w, "decode_tok_s": batch * 1000 / ms}


def _fake_result():
    q = "qwen2.5-1.5b"
    eng = [_eng(q, 1024, 1, 1, 2.0), _eng(q, 1024, 1, 1, 1.0, rep=1),  # median 1.5 ms
           _eng(q, 1024, 1, 8, 1.4), _eng(q, 1024, 1, 8, 1.6, rep=1),
           _eng(q, 32768, 16, 1, 6.0, kv=4e9), _eng(q, 32768, 16, 1, 6.2, kv=4e9, rep=1),
           _eng(q, 32768, 16, 8, 3.0, kv=0.5e9), _eng(q, 32768, 16, 8, 2.8, kv=0.5e9, rep=1),
           _eng("smollm2-135m", 1024, 1, 1, 0.5, w=2e8), _eng("smollm2-135m", 1024, 1, 1, 0.3, w=2e8, rep=1),
           _eng(q, 8192, 16, 8, 2.5), _eng(q, 8192, 16, 8, 2.5, rep=1)]
    long1 = [_eng(q, 256, 16, 1, 3.0, kv=2e9), _eng(q, 256, 16, 1, 3.2, kv=2e9, rep=1)]
    long8 = [_eng(q, 256, 16, 8, 2.0, kv=0.5e9), _eng(q, 256, 16, 8, 2.2, kv=0.5e9, rep=1)]
    return {"card": "X", "commit": "abc", "file": "f.json", "bandwidth_bytes_s": 1e12, "steps": [],
            "engine": eng, "long_generation": [long_pair_of_runs(long1, long8, 1e9)],
            "graphed_dense": [{"shape": q, "context": 1024, "batch": 1, "step_ms": 1.2},
                              {"shape": q, "context": 1024, "batch": 1, "step_ms": 1.4}],
            "hf_static": {"points": [{"context": 1024, "batch": 1, "step_ms": 8.0, "compiled": True},
                                     {"context": 1024, "batch": 1, "step_ms": 9.0, "compiled": True},
                                     {"context": 8192, "batch": 16, "step_ms": 20.0, "compiled": False}]}}


def test_lines_are_computed_from_the_runs():
    res = _fake_result()
    out = {t["name"]: t for t in lines13(res)}
    assert all(n.startswith(PREFIXES) for n in out) and all(t["card"] == "X" for t in out.values())
    b1 = out["decode floor: qwen2.5-1.5b batch 1, 1K CR 1, bytes / measured bandwidth (engine step)"]
    assert b1["measured"] == round(1e9 / 1.5e-3 / 1e12, 3) and not b1["met"]
    assert "2.0000 ms, 1.0000 ms" in b1["note"] and "median" in b1["note"] and b1["run"] == "f.json (commit abc)"
    assert out["decode floor: qwen2.5-1.5b batch 1, 32K CR 1, bytes / measured bandwidth (engine step)"][
        "measured"] is None  # not in the runs: a line that says so, never a dropped one
    tok = out["decode floor: smollm2-135m batch 1, 1K CR 1, engine tok/s (PagedBackend)"]
    assert tok["measured"] == 2500.0 and tok["met"]
    eq = out["equal batch: decode tok/s CR 8 / CR 1 at 32K, batch 16"]
    assert eq["measured"] == round(6.1 / 2.9, 3) and f"{bytes_ratio(1e9, 4e9, 0.5e9):.2f}x" in eq["note"]
    hf1 = out["against users' default: paged CR 8 / HF generate (static cache, compiled), batch 1 / 1K"]
    assert hf1["measured"] == round(8.5 / 1.5, 2) and hf1["met"]
    assert any("NOT compiled" in n and "batch 16 / 8K" in n for n in out)
    lg = out["long generations: CR 8 / CR 1 over the ratio the bytes allow, batch 16"]
    assert lg["measured"] == round((3.1 / 2.1) / bytes_ratio(1e9, 2e9, 0.5e9), 3)
    ns = out["never slower: min over points of CR 8 / CR 1 decode tok/s"]
    assert ns["measured"] == round(1.5 / 1.5, 3) and "3 points" in ns["note"]  # 1K b1, 32K b16, long b16
    assert out["paging costs nothing: paged CR 1 / CUDA-graphed dense torch step (min)"]["measured"] == round(1.3 / 1.5, 3)
    assert out["large batch: bytes / measured bandwidth, batch 64, 8K CR 8"]["measured"] is None
    # no graph-replay points in this run: each of those targets still has its line, saying so
    assert out["decode floor: qwen2.5-1.5b batch 1, 32K CR 8, bytes / measured bandwidth (graph replay)"][
        "note"].startswith("not measured")


def test_graph_replay_lines_come_from_the_step_points():
    res = _fake_result()
    res["steps"] = [{"shape": "qwen2.5-1.5b", "batch": 1, "context": 1024, "compression": 1, "floor_ms": 0.74,
                     "engine": {"replay_ms_runs": [1.70, 1.72], "engine_step_ms_runs": [1.9, 1.95]}}]
    out = {t["name"]: t for t in lines13(res)}
    t = out["decode floor: qwen2.5-1.5b batch 1, 1K CR 1, bytes / measured bandwidth (graph replay)"]
    assert t["measured"] == round(0.74 / 1.71, 3) and "variant engine" in t["note"] and t["card"] == "X"
    assert out["decode floor: smollm2-135m batch 1, 1K CR 1, runner step tok/s (replay + readback)"]["measured"] is None


def test_median_row_counts_the_median_step():
    rows = [_eng("q", 256, 4, 1, ms, kv=kv) for ms, kv in ((3.0, 1.0), (5.0, 3.0), (4.0, 2.0))]
    m = median_row(rows)
    assert m["step_ms"] == 4.0 and m["decode_tok_s"] == 1000.0 and m["kv_read_per_step"] == 2.0
    assert m["runs_step_ms"] == [3.0, 5.0, 4.0]


def test_summary_rewrite_keeps_other_lines_and_names_every_card():
    old = {"card": "H100", "bandwidth_bytes_per_s": 2.9e12, "targets": [
        {"name": "memory: pages held dense / CR 8 at 32K", "measured": 7.5},
        {"name": "equal batch: decode tok/s CR 8 / CR 1 at 32K, batch 16", "measured": 2.4},
        {"name": "decode floor: old", "measured": 0.4, "card": "H200"},
        {"name": "constrained decoding: x", "measured": 0.97, "card": "H200", "run": "c.json"}]}
    new = rewrite_summary(old, [{"name": "equal batch: new", "card": "H200", "measured": 3.1}], "bench.json (old)")
    assert "card" not in new and "bandwidth_bytes_per_s" not in new
    assert new["earlier_matrix"] == {"card": "H100", "bandwidth_bytes_per_s": 2.9e12, "run": "bench.json (old)"}
    names = [t["name"] for t in new["targets"]]
    assert names == ["memory: pages held dense / CR 8 at 32K", "constrained decoding: x", "equal batch: new"]
    assert new["targets"][0]["card"] == "H100" and new["targets"][0]["run"] == "bench.json (old)"
    assert new["targets"][1] == old["targets"][3]
    json.dumps(new)
    # a later run that did not measure a line keeps the earlier measurement of that name (with its card)
    again = rewrite_summary(new, [{"name": "equal batch: new", "measured": None, "card": "H200b"},
                                  {"name": "decode floor: x", "measured": None}], "unused")
    assert again["targets"][-2] == {"name": "equal batch: new", "card": "H200", "measured": 3.1}
    assert again["targets"][-1] == {"name": "decode floor: x", "measured": None}
    assert again["earlier_matrix"] == new["earlier_matrix"]


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    from bench.issue13_plot import plot

    res = _fake_result()
    res["profile"] = {"qwen2.5-1.5b": {"graph": {"per_label": {"qkv": {"bw_fraction": 0.3}, "o": {"bw_fraction": 0.2}}}}}
    path = plot(res, tmp_path / "p.png")
    assert path.stat().st_size > 10_000


def test_the_matrix_report_merges_its_lines_with_their_card():
    from budgetllm.benchmarks.report import merge_lines

    old = {"earlier_matrix": {"card": "H100"}, "targets": [{"name": "a", "card": "H100", "measured": 1},
                                                           {"name": "b", "card": "H200", "measured": 2}]}
    new = merge_lines(old, "H200", [{"name": "a", "measured": 3}])
    assert new == {"earlier_matrix": {"card": "H100"}, "targets": [
        {"name": "b", "card": "H200", "measured": 2}, {"name": "a", "card": "H200", "measured": 3}]}


def test_hf_child_is_killed_at_its_limit_and_says_so(tmp_path):
    """The HF static-cache child (a torch.compile may outlast its share of the GPU call) is killed with
    its process group at the limit; what it wrote so far (nothing here) is returned, and the reason."""
    from bench.hf_static import run_child

    rc, got, tail = run_child(tmp_path, "compiled_child", "1024x1", True, limit=0.5)
    assert rc == "killed at its 0 s limit" and got == {"points": []}
    assert (tmp_path / "hf-static-compiled_child.log").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_step_bytes_read_every_weight_of_a_real_family_once(arch):
    """With no rows and no KV the per-kernel bytes are the weights alone: they add up to the model's
    parameter bytes (tied embedding = the LM head, counted once; Qwen2's QKV bias, both norms)."""
    from transformers import AutoModelForCausalLM

    from bench.profile_decode import shape_of
    from budgetllm.benchmarks.baselines import weight_bytes
    from budgetllm.models.testing import tiny_config

    cfg = tiny_config(arch, vocab_size=512, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    shape = shape_of(cfg)
    assert shape["qkv_bias"] == (arch == "qwen2")
    kb = step_kernel_bytes(shape, batch=0, kv_entries=[0] * shape["layers"])
    assert sum(sum(v) for v in kb.values()) == weight_bytes(model)
