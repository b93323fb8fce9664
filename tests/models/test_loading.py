"""Model resolution, both DMS checkpoint variants, adapter files, and loading errors."""

from __future__ import annotations

import json

import pytest
import torch

from budgetllm.errors import CheckpointFormatError, ModelNotFoundError, UnsupportedArchitectureError
from budgetllm.models import AdapterFile, load_adapter_file, load_model, save_adapter_file
from budgetllm.models.dms_spec import DMSSpec


def test_borrowed_variant_from_config_keys(tiny_dir):
    m = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    assert m.dms.variant == "borrowed" and m.dms.window == 8 and m.dms.native_cr == 8
    assert m.dms.alpha_scale == 100.0 and m.dms.alpha_offset == 0.0


def test_adapter_variant_from_checkpoint_tensors(tiny_dir):
    m = load_model(str(tiny_dir("qwen2", "adapter")), device="cpu", progress=False)
    assert m.dms.variant == "adapter"
    assert m.dms.adapter_weights[1]["proj_weight"].shape == (2, 64)


def test_plain_model_has_no_decisions(tiny_dir):
    m = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    assert m.dms.variant == "none" and not m.dms.has_decisions


def test_fastdms_key_aliases(tiny_dir, tmp_path):
    """A checkpoint whose adapter tensors use the short alias names loads the same weights."""
    from safetensors.torch import load_file, save_file

    src = tiny_dir("llama", "adapter")
    dst = tmp_path / "alias"
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    tensors = load_file(str(src / "model.safetensors"))
    renamed = {k.replace("dms_proj_alpha_norm", "dms_alpha_norm").replace("dms_proj_alpha.", "dms_alpha_proj."): v
               for k, v in tensors.items()}
    save_file(renamed, str(dst / "model.safetensors"))
    a = load_model(str(src), device="cpu", progress=False).dms
    b = load_model(str(dst), device="cpu", progress=False).dms
    assert torch.equal(a.adapter_weights[0]["proj_weight"], b.adapter_weights[0]["proj_weight"])


def test_adapter_file_round_trip_over_plain_model(tiny_dir, tmp_path):
    base = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    g = torch.Generator().manual_seed(3)
    layers = [{"proj_weight": torch.randn(2, 64, generator=g), "proj_bias": None, "norm_weight": torch.rand(64, generator=g) + 0.5}
              for _ in range(2)]
    meta = {"base_model": "tiny", "window": 6, "target_cr": 4, "alpha_scale": 100.0, "alpha_offset": 0.0,
            "threshold_table": {"2": -1.0, "4": 0.0, "8": 1.5}}
    path = save_adapter_file(tmp_path / "a.safetensors", AdapterFile(layers, meta))
    assert json.loads(path.with_suffix(".json").read_text())["target_cr"] == 4
    loaded = load_adapter_file(path)
    assert torch.equal(loaded.layers[1]["proj_weight"], layers[1]["proj_weight"])
    m = load_model(str(tiny_dir("llama")), device="cpu", adapter=path, progress=False)
    assert m.dms.variant == "adapter" and m.dms.window == 6 and m.dms.native_cr == 4
    # a global table (written before per-head tables) is broadcast to every (layer, KV head)
    assert m.dms.thresholds_for(8) == ((1.5, 1.5), (1.5, 1.5)) and m.dms.thresholds_for(1) == float("inf")
    assert all(abs(t - (-0.5)) < 1e-9 for row in m.dms.thresholds_for(2 ** 1.5) for t in row)  # log2 interpolation
    # Decisions computed from the file equal those computed from the tensors directly.
    from budgetllm.dms.decisions import DecisionHead

    x = torch.randn(5, 64)
    head = DecisionHead(m.dms, 1, 4, 2)
    ref = torch.nn.functional.linear(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + m.dms.norm_eps)
                                     * layers[1]["norm_weight"], layers[1]["proj_weight"]) * 100.0
    assert torch.allclose(head.logits(None, x), ref, atol=1e-4)
    assert base.dms.variant == "none"


def test_adapter_with_wrong_layer_count_is_refused(tiny_dir, tmp_path):
    layers = [{"proj_weight": torch.zeros(2, 64), "proj_bias": None, "norm_weight": torch.ones(64)}]
    path = save_adapter_file(tmp_path / "one.safetensors", AdapterFile(layers, {}))
    with pytest.raises(CheckpointFormatError, match="1 layers; the model has 2"):
        load_model(str(tiny_dir("llama")), device="cpu", adapter=path, progress=False)


def test_unknown_model_path(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network retries in tests
    with pytest.raises(ModelNotFoundError, match="cannot load model"):
        load_model("no-such-org/no-such-model-xyz", device="cpu", progress=False)
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load_model("/nonexistent/model.gguf", device="cpu", progress=False)


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        load_model(str(tmp_path), device="cpu", progress=False)


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(UnsupportedArchitectureError, match="'gpt2' is not supported; budgetllm runs llama, qwen2, qwen3"):
        load_model(str(tmp_path), device="cpu", progress=False)


def test_threshold_table_clamps_and_native_rule():
    spec = DMSSpec(variant="adapter", native_cr=8)
    assert spec.thresholds_for(8) == 0.0 and spec.thresholds_for(4) is None
    spec.set_table({2.0: [[-2.0, -1.0]], 8.0: [[1.0, 3.0]]}, num_layers=1, num_kv_heads=2)
    assert spec.thresholds_for(16) == ((1.0, 3.0),) and spec.thresholds_for(1.5) == ((-2.0, -1.0),)
    assert spec.thresholds_for(4) == ((-0.5, 1.0),)  # halfway in log2(ratio), per head


def test_threshold_table_is_continuous_across_the_trained_ratio():
    """With a table the trained ratio is one more point of it: 7.99 and 8 give (almost) the same thresholds."""
    spec = DMSSpec(variant="adapter", native_cr=8)
    spec.set_table({4.0: [[1.0, 2.0]], 8.0: [[0.2, -0.1]], 16.0: [[-1.0, -2.0]]}, 1, 2)
    a, b, c = spec.thresholds_for(7.99), spec.thresholds_for(8.0), spec.thresholds_for(8.01)
    assert all(abs(x - y) < 0.01 for x, y in zip(a[0] + c[0], b[0] + b[0], strict=True))
    assert b == ((0.2, -0.1),)


def test_threshold_table_of_the_wrong_shape_is_refused():
    spec = DMSSpec(variant="adapter")
    with pytest.raises(CheckpointFormatError, match="calibrate-thresholds"):
        spec.set_table({2.0: [[0.0, 0.0, 0.0]]}, num_layers=1, num_kv_heads=2)
