"""Kernels per layer of the prefill body, counted op by op (engine/paged/kernel_count.py) on the tiny
adapter model with a threshold rule: the case the prefill graphs run (decisions differ per layer), so
every kernel listed here is a node of every layer of the graph. A kernel more per layer costs a launch
slot and a few microseconds of GPU time at agent-turn sizes: the count is the budget (docs/prefill-kernels.md)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when the kernels are decorated


def test_a_prefill_layer_is_thirteen_kernels(tiny_dir):
    from budgetllm import LLM
    from budgetllm.engine.paged.kernel_count import count_prefill_kernels

    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = LLM.from_pretrained(str(tiny_dir("qwen2", "adapter")), backend="reference", device=device,
                                 progress=False).loaded
    d = count_prefill_kernels(loaded, 20)
    assert d["bucket"] == 32 and d["per_layer"] == [13, 13], d
    ops = d["layer0_ops"]
    assert ops["compaction"] == {"triton:compact_unflagged_kernel": 1}  # no torch scan, no sort
    assert ops["attention_inputs"]["triton:adapter_logits_kernel"] == 1 and sum(ops["attention_inputs"].values()) == 3
    assert ops["store"] == {"triton:store_prefill_meta_kernel": 1, "triton:store_prefill_copy_kernel": 1}
    # once per call, outside the layers: 3 casts of the graph's int32 arguments, the decisions
    # (kernels/prefill_inputs.py), the embedding and layer 0's norm; the padding scratch chunk's
    # release, the stats with the position's advance, the last token's logits (index, GEMM, copy)
    assert (d["before_layers"], d["after_layers"]) == (6, 5), d
    assert d["before_layers_ops"]["triton:prefill_decisions_kernel"] == 1
