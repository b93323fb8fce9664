"""A trained adapter saved to disk loads back (adapter file and NVIDIA export) and gives the same decisions."""

from __future__ import annotations

import json

import torch

from budgetllm.dms.decisions import DecisionHead
from budgetllm.dms.export import export_nvidia, plot_training_curve, write_adapter
from budgetllm.dms.train import RetrofitConfig, Retrofitter
from budgetllm.models import load_adapter_file, load_model


def _logits(spec, model, x):
    c = model.config
    return [DecisionHead(spec, i, c.num_attention_heads, c.num_key_value_heads).logits(None, x)
            for i in range(c.num_hidden_layers)]


def test_adapter_save_load_reproduces_decisions(tiny_loaded, rows, tiny_dir, tmp_path):
    model = tiny_loaded()
    cfg = RetrofitConfig(target_cr=4, initial_cr=4, window=8, steps=3, batch_size=2, seq_len=64, lr=2e-2)
    tr = Retrofitter(model, cfg, rows())
    tr.train(progress=False)
    table = {2.0: -1.5, 4.0: 0.25}
    path = write_adapter(tmp_path / "a.safetensors", tr.adapter_file("tiny-llama"), table)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["window"] == 8 and meta["target_cr"] == 4 and meta["variant"] == "adapter"
    assert meta["training"]["steps"] == 3 and meta["nvidia_config"]["dms_window_size"] == 8
    assert load_adapter_file(path).metadata["threshold_table"] == {"2": -1.5, "4": 0.25}

    again = load_model(str(tiny_dir("llama")), device="cpu", adapter=str(path), progress=False)
    assert again.dms.variant == "adapter" and again.dms.window == 8
    x = torch.randn(17, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for a, b in zip(_logits(tr.trained_spec(torch.float32), model, x), _logits(again.dms, again, x), strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    assert again.dms.thresholds_for(2) == ((-1.5, -1.5), (-1.5, -1.5))  # a (global, broadcast) table ratio

    out = export_nvidia(again, load_adapter_file(path), tmp_path / "nv")
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["dms_separate_alpha"] is True and cfg_json["dms_window_size"] == 8
    exported = load_model(str(out), device="cpu", progress=False)
    assert exported.dms.variant == "adapter" and exported.dms.window == 8
    assert exported.dms.threshold_table == again.dms.threshold_table  # dms_thresholds.json beside the weights
    with torch.no_grad():
        for a, b in zip(_logits(again.dms, again, x), _logits(exported.dms, exported, x), strict=True):
            assert torch.allclose(a, b, atol=0.05 * (1 + a.abs().max()))  # bf16 export
    assert plot_training_curve(tr.history, tmp_path / "curve.png").stat().st_size > 1000
