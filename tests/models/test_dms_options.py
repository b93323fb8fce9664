"""NVIDIA config options that change a token's fate (dms_alpha_per, dms_disable_eviction), adapters
from the Hub, and the tokenizer override."""

from __future__ import annotations

import pytest
import torch

from budgetllm.errors import CheckpointFormatError
from budgetllm.models import AdapterFile, load_model, save_adapter_file


def _first_layer_logits(loaded, ids):
    from budgetllm.engine.eviction import EvictionRule
    from budgetllm.engine.reference.sequence import ReferenceSequence

    seq = ReferenceSequence(loaded, EvictionRule("dense"), collect_logits=True)
    seq.forward(ids)
    return seq.logit_log


def test_alpha_per_layer_lets_kv_head_zero_decide_for_the_layer(tiny_dir):
    per_head = load_model(str(tiny_dir("qwen3", "borrowed")), device="cpu", progress=False)
    per_layer = load_model(str(tiny_dir("qwen3", "borrowed", dms_alpha_per="layer")), device="cpu", progress=False)
    assert per_head.dms.alpha_per == "head" and per_layer.dms.alpha_per == "layer"
    ids = torch.randint(0, 49152, (30,), generator=torch.Generator().manual_seed(0))
    for a, b in zip(_first_layer_logits(per_head, ids), _first_layer_logits(per_layer, ids), strict=True):
        assert not torch.equal(a[:, 0], a[:, 1])  # per head: the heads differ
        assert torch.equal(b, a[:, :1].expand_as(a))  # per layer: KV head 0's logit for every head


def test_alpha_per_is_validated(tiny_dir):
    with pytest.raises(CheckpointFormatError, match="dms_alpha_per='token'"):
        load_model(str(tiny_dir("qwen3", "borrowed", dms_alpha_per="token")), device="cpu", progress=False)


def test_disable_eviction_runs_the_dense_model_at_every_ratio(tiny_dir):
    from budgetllm import LLM

    llm = LLM.from_pretrained(str(tiny_dir("qwen3", "borrowed", dms_disable_eviction=True)), backend="reference",
                              device="cpu", progress=False)
    assert llm.loaded.dms.disable_eviction
    prompt = " ".join(f"item{i}" for i in range(30))  # longer than the window of 8: a live rule would evict
    a = llm.generate(prompt, compression=8, max_tokens=6, thinking_budget=0)
    b = llm.generate(prompt, compression=1, max_tokens=6, thinking_budget=0)
    assert a.usage.kv.evicted_tokens == 0 and a.usage.kv.compression_achieved == 1.0
    assert a.token_ids == b.token_ids


def _adapter_dir(tmp_path, name="hub"):
    layers = [{"proj_weight": torch.randn(2, 64, generator=torch.Generator().manual_seed(i)), "proj_bias": None,
               "norm_weight": torch.ones(64)} for i in range(2)]
    d = tmp_path / name
    save_adapter_file(d / "tiny-dms.safetensors", AdapterFile(layers, {"window": 6, "target_cr": 4}))
    return d, layers


def test_adapter_from_a_hub_repository(tiny_dir, tmp_path, monkeypatch):
    import huggingface_hub

    snap, layers = _adapter_dir(tmp_path)
    calls = []

    def snapshot_download(repo_id, **kw):  # the Hub, offline: a snapshot already in the cache
        calls.append(repo_id)
        return str(snap)

    def hf_hub_download(repo_id, filename, **kw):
        calls.append(f"{repo_id}:{filename}")
        return str(snap / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    m = load_model(str(tiny_dir("llama")), device="cpu", adapter="some-org/tiny-dms", progress=False)
    assert m.dms.variant == "adapter" and m.dms.window == 6 and calls == ["some-org/tiny-dms"]
    assert torch.equal(m.dms.adapter_weights[1]["proj_weight"], layers[1]["proj_weight"])
    m = load_model(str(tiny_dir("llama")), device="cpu", adapter="some-org/tiny-dms/tiny-dms.safetensors",
                   progress=False)
    assert m.dms.native_cr == 4 and calls[1] == "some-org/tiny-dms:tiny-dms.safetensors"


def test_adapter_from_an_unreachable_hub_repository_is_a_clear_error(tiny_dir, monkeypatch):
    import huggingface_hub

    def offline(repo_id, **kw):
        raise huggingface_hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(CheckpointFormatError, match="neither a local file nor a downloadable Hub adapter"):
        load_model(str(tiny_dir("llama")), device="cpu", adapter="some-org/missing", progress=False)
    with pytest.raises(CheckpointFormatError, match="does not exist"):
        load_model(str(tiny_dir("llama")), device="cpu", adapter="./no/such/adapter.safetensors", progress=False)


def test_tokenizer_override(tiny_dir, tmp_path):
    """NVIDIA's instructions load the Qwen/Qwen3-8B tokenizer for its DMS checkpoint: tokenizer= does that."""
    from transformers import AutoTokenizer

    from budgetllm import LLM

    tok = AutoTokenizer.from_pretrained(str(tiny_dir("llama")))
    tok.add_special_tokens({"additional_special_tokens": ["<budget-marker>"]})
    tok.save_pretrained(tmp_path / "tok")
    base = load_model(str(tiny_dir("llama")), device="cpu", progress=False)
    other = load_model(str(tiny_dir("llama")), device="cpu", progress=False, tokenizer=str(tmp_path / "tok"))
    assert len(other.tokenizer) == len(base.tokenizer) + 1
    llm = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False,
                              tokenizer=str(tmp_path / "tok"))
    assert llm.tokenizer.convert_tokens_to_ids("<budget-marker>") == len(base.tokenizer)
