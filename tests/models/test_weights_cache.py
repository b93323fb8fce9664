"""The converted-weights cache: a GGUF file loads to the same model from the cache as directly,
the cache is keyed by content and versions, and broken entries are rebuilt."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_gguf import write_tiny_gguf

from budgetllm.cli import main as cli_main
from budgetllm.models import load_model
from budgetllm.models import weights_cache as wc

TEXTS = ["hello the world", "<|im_start|>user\nthe answer is 42<|im_end|>", "  tabs\tand ünïcode"]


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    pytest.importorskip("gguf")  # a core dependency; the GPU test machine may lack it
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-llama.Q8_0.gguf")


@pytest.fixture(scope="module")
def direct(gguf_file):
    return load_model(str(gguf_file), device="cpu", progress=False, cache=False)


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(wc.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_model(a, b):
    a_dev, b_dev = next(a.hf_model.parameters()).device, next(b.hf_model.parameters()).device
    assert a_dev == b_dev
    sa, sb = a.hf_model.state_dict(), b.hf_model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
    for text in TEXTS:
        assert a.tokenizer(text)["input_ids"] == b.tokenizer(text)["input_ids"], text
    msgs = [{"role": "user", "content": "What is 2 + 2?"}]
    assert a.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        b.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([a.tokenizer(TEXTS[1])["input_ids"]], device=a_dev)
    with torch.no_grad():
        assert torch.equal(a.hf_model(ids).logits, b.hf_model(ids).logits)
    assert (a.name, a.arch, a.max_context, a.dms.variant) == (b.name, b.arch, b.max_context, b.dms.variant)


def test_first_load_builds_the_cache_and_later_loads_read_it(gguf_file, direct, cache_dir, capsys):
    built = load_model(str(gguf_file), device="cpu", progress=True)
    assert "building the converted-weights cache" in capsys.readouterr().err
    entry = wc.entry_dir(gguf_file)
    assert entry.parent == cache_dir / "weights" and wc.check_entry(entry) is None
    again = load_model(str(gguf_file), device="cpu", progress=True)
    assert "building" not in capsys.readouterr().err
    _same_model(direct, built)
    _same_model(direct, again)


def test_cache_keeps_float32_and_casts_on_load(gguf_file, cache_dir):
    load_model(str(gguf_file), device="cpu", progress=False)
    direct_bf16 = load_model(str(gguf_file), device="cpu", dtype="bfloat16", progress=False, cache=False)
    cached_bf16 = load_model(str(gguf_file), device="cpu", dtype="bfloat16", progress=False)
    _same_model(direct_bf16, cached_bf16)


@pytest.mark.parametrize("damage", ["truncate", "garbage-manifest", "no-manifest", "old-version"])
def test_broken_entries_are_rebuilt(gguf_file, direct, cache_dir, damage):
    load_model(str(gguf_file), device="cpu", progress=False)
    entry = wc.entry_dir(gguf_file)
    weights, manifest = entry / "model.safetensors", entry / wc.MANIFEST
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage-manifest":
        manifest.write_text("{not json")
    elif damage == "no-manifest":
        manifest.unlink()
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "budgetllm": "0.0.1"}))
    assert wc.check_entry(entry) is not None
    _same_model(direct, load_model(str(gguf_file), device="cpu", progress=False))
    assert wc.check_entry(entry) is None


def test_a_header_that_lies_is_caught(gguf_file, cache_dir):
    """Same size, but the safetensors header is overwritten: the entry does not parse."""
    load_model(str(gguf_file), device="cpu", progress=False)
    weights = wc.entry_dir(gguf_file) / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[8:64] = b"x" * 56
    weights.write_bytes(bytes(raw))
    assert "does not parse" in wc.check_entry(weights.parent)


def test_key_follows_content_and_versions(tmp_path, cache_dir, monkeypatch):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"a" * 5000)
    first = wc.entry_dir(f)
    memo = json.loads((cache_dir / "hashes.json").read_text())
    assert memo[str(f.resolve())]["size"] == 5000
    monkeypatch.setattr(wc.hashlib, "sha256", None)  # a memo hit hashes nothing
    assert wc.entry_dir(f) == first
    monkeypatch.undo()
    monkeypatch.setenv(wc.CACHE_ENV, str(cache_dir))
    f.write_bytes(b"b" * 5000)  # same size, new content (and mtime)
    assert wc.entry_dir(f) != first
    import budgetllm

    monkeypatch.setattr(budgetllm, "__version__", "9.9.9")
    assert "bl9.9.9" in wc.entry_dir(f).name


def test_unwritable_cache_falls_back_to_the_gguf(gguf_file, direct, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(wc.CACHE_ENV, str(blocker))  # mkdir under a file fails
    _same_model(direct, load_model(str(gguf_file), device="cpu", progress=False))


def test_cache_cli_info_and_clear(gguf_file, cache_dir, capsys):
    load_model(str(gguf_file), device="cpu", progress=False)
    (cache_dir / "weights" / ".building-x").mkdir()  # what a killed build leaves behind
    assert cli_main(["cache", "info"]) == 0
    out = capsys.readouterr().out
    assert str(cache_dir) in out and "tiny-llama" in out and "ok" in out and "interrupted build" in out
    assert cli_main(["cache", "clear"]) == 0
    assert not (cache_dir / "weights").exists() and not (cache_dir / "hashes.json").exists()
    cli_main(["cache", "info"])
    assert "0 entries" in capsys.readouterr().out


def test_killed_builds_are_swept_later(gguf_file, direct, cache_dir):
    import os
    import time

    root = cache_dir / "weights"
    old, fresh = root / ".building-old", root / ".building-fresh"
    for d in (old, fresh):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    entry = wc.write_entry(wc.entry_dir(gguf_file), gguf_file, direct.hf_model, direct.tokenizer)
    assert wc.check_entry(entry) is None
    assert not old.exists() and fresh.exists()  # a build started a moment ago may still be running


@pytest.mark.gpu
def test_cached_load_on_the_gpu_matches_the_gguf(gguf_file, cache_dir):
    """bfloat16 on CUDA from the float32 cache entry == the GGUF loaded straight onto the GPU."""
    direct_gpu = load_model(str(gguf_file), device="cuda", progress=False, cache=False)
    load_model(str(gguf_file), device="cuda", progress=False)  # builds the entry
    cached_gpu = load_model(str(gguf_file), device="cuda", progress=False)
    assert cached_gpu.dtype == torch.bfloat16
    _same_model(direct_gpu, cached_gpu)
