"""Quality policies: DMS masking equals the inference oracle; baselines keep the budget they are given."""

from __future__ import annotations

import torch

from budgetllm.dms.oracle import masked_model_forward
from budgetllm.dms.quality import kl_and_agreement, policy_forward
from budgetllm.engine.eviction import EvictionRule


def test_dms_policy_equals_oracle(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    ids = torch.randint(0, 49152, (2, 30), generator=torch.Generator().manual_seed(2))
    logits, kept = policy_forward(model, ids, "dms", threshold=0.0)
    for b in range(2):
        ref, _ = masked_model_forward(model, ids[b], EvictionRule("dms", window=8, threshold=0.0))
        assert (logits.view(2, 30, -1)[b] - ref).abs().max().item() < 1e-3
    assert kept[:, -1].max() < 30  # something was evicted


def test_baselines_respect_the_budget(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    ids = torch.randint(0, 49152, (2, 40), generator=torch.Generator().manual_seed(3))
    dense, _ = policy_forward(model, ids, "dense")
    cap = torch.tensor([10, 14])
    for m in ("window", "tova", "h2o", "random"):
        logits, kept = policy_forward(model, ids, m, cap=cap)
        assert torch.all(kept <= (cap + 1).view(2, 1) + 1e-6), m
        assert torch.allclose(kept[:, -1], (cap + 1).float()), m
        kl, agree = kl_and_agreement(dense, logits)
        assert kl > 0 and 0 <= agree <= 1
    same, _ = policy_forward(model, ids, "tova", cap=torch.tensor([40, 40]))
    assert kl_and_agreement(dense, same)[0] < 1e-6


def test_strided_baselines_stay_within_budget_plus_stride(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    ids = torch.randint(0, 49152, (2, 40), generator=torch.Generator().manual_seed(4))
    cap = torch.tensor([9, 12])
    for m in ("tova", "h2o", "random"):
        _, kept = policy_forward(model, ids, m, cap=cap, stride=4)
        assert torch.all(kept <= (cap + 4).view(2, 1) + 1e-6), m
        assert torch.all(kept[:, -8:] >= cap.view(2, 1) - 1e-6), m


def test_dms_policy_with_per_head_thresholds_equals_oracle(tiny_loaded):
    model = tiny_loaded("adapter", window=8)
    ids = torch.randint(0, 49152, (2, 30), generator=torch.Generator().manual_seed(5))
    grid = ((10.0, -10.0), (-30.0, 25.0))
    logits, kept = policy_forward(model, ids, "dms", threshold=grid)
    for b in range(2):
        ref, _ = masked_model_forward(model, ids[b], EvictionRule("dms", window=8, threshold=grid))
        assert (logits.view(2, 30, -1)[b] - ref).abs().max().item() < 1e-3


def test_passage_copy_task_scores_dense_and_every_method(tiny_loaded):
    """The quality script end to end on a tiny model: the copy task is scored for dense and each method,
    and the result records where it came from."""
    from budgetllm.benchmarks import quality as bench_quality

    model = tiny_loaded("adapter", window=8)
    res = bench_quality.run_quality(model, n_text=1, n_tasks=0, text_len=64, ratios=(2.0,), n_copy=2,
                                    methods=("dms", "window", "random"), log=lambda *_: None, stride=8)
    copy = res["copy"]["metrics"]
    assert res["copy"]["n"] == 2 and set(copy) == {"dms", "window", "random", "dense"}
    for m in ("dms", "window", "random"):
        assert 0.0 <= copy[m]["2"]["token_accuracy"] <= 1.0 and copy[m]["2"]["n"] == 2
    assert 0.0 <= copy["dense"]["1"]["token_accuracy"] <= 1.0
    assert "nothing edited by hand" in res["provenance"]["written_by"]


def test_quality_records_what_the_deadline_skipped_and_whether_copy_ranks_ratios(tiny_dir, tmp_path):
    """A time-boxed run (the GPU script's stage 5) leaves a file that says what it skipped; the copy block
    says whether accuracy differs between dense and the DMS ratios (the issue's 'not flat' check)."""
    import json

    from budgetllm.benchmarks import quality as bench_quality

    argv = ["--model", str(tiny_dir("llama", "adapter", window=8)), "--out", str(tmp_path), "--device", "cpu",
            "--ratios", "2", "--methods", "dms,window", "--n-text", "1", "--n-tasks", "0", "--n-copy", "2",
            "--text-len", "64"]
    bench_quality.main(argv + ["--deadline-s", "0.000001"])
    (path,) = tmp_path.glob("quality_*.json")
    res = json.loads(path.read_text())
    assert res["provenance"]["skipped_at_deadline"] and not res["text"]["metrics"].get("window")
    bench_quality.main(argv)
    res = json.loads(path.read_text())
    assert res["provenance"]["skipped_at_deadline"] == [] and "window" in res["text"]["metrics"]
    ranks = res["copy"]["ranks_compression"]
    assert set(ranks["accuracies"]) == {"dense@1", "dms@2"}
    assert ranks["non_flat"] == (len(set(ranks["accuracies"].values())) > 1)
