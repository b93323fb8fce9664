"""Tiny random checkpoints with real key names, for tests and benchmarks (no network needed).

The tokenizer is the embedded SmolLM2 tokenizer (with its chat template), saved once per process.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import torch

_TOKENIZER_DIR: Path | None = None
_LOCK = threading.Lock()


def tiny_tokenizer_dir() -> Path:
    """A directory holding the embedded model's tokenizer in Hugging Face format."""
    global _TOKENIZER_DIR
    with _LOCK:
        if _TOKENIZER_DIR is None or not (_TOKENIZER_DIR / "tokenizer.json").exists():
            from transformers import AutoTokenizer

            from budgetllm.models.loading import embedded_model_path

            gguf = embedded_model_path()
            tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            out = Path(tempfile.mkdtemp(prefix="budgetllm-tok-"))
            tok.save_pretrained(out)
            _TOKENIZER_DIR = out
        return _TOKENIZER_DIR


def tiny_config(arch: str = "llama", **overrides):
    """A small config of a real family: 2 layers, 4 query heads over 2 KV heads, head_dim 16."""
    from transformers import LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rms_norm_eps=1e-6,
    )
    common.update(overrides)
    if arch == "llama":
        return LlamaConfig(head_dim=common["hidden_size"] // common["num_attention_heads"], **common)
    if arch == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    if arch == "qwen3":
        common.setdefault("head_dim", 16)
        return Qwen3Config(use_sliding_window=False, **common)
    raise ValueError(f"unknown tiny architecture {arch!r}")


def make_tiny_checkpoint(
    path: str | Path,
    arch: str = "llama",
    dms: str | None = None,
    *,
    window: int = 8,
    seed: int = 0,
    **config_overrides,
) -> Path:
    """Write a random checkpoint directory (config.json, model.safetensors, tokenizer).

    dms: None (plain model), "borrowed" (dms_* keys in config.json, no extra tensors) or
    "adapter" (dms_separate_alpha with dms_proj_alpha / dms_proj_alpha_norm tensors). The offset is
    0 so that random weights evict about half of the tokens (a useful test case).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = tiny_config(arch, **config_overrides)
    if dms is not None:
        config.dms_alpha_scale = 100.0
        config.dms_initial_alpha_offset = 0.0
        config.dms_window_size = window
        config.dms_cr = 8
        config.dms_separate_alpha = dms == "adapter"
    model = AutoModelForCausalLM.from_config(config).float()
    with torch.no_grad():  # larger random weights than the default init give less uniform attention
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.08)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    if dms == "adapter":
        h, kv = config.hidden_size, config.num_key_value_heads
        for i in range(config.num_hidden_layers):
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.weight"] = torch.randn(kv, h) * 0.05
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha_norm.weight"] = torch.ones(h)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    tok_dir = tiny_tokenizer_dir()
    for f in tok_dir.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    return path


# Real shapes of the families the benchmarks cover (config.json values of the public checkpoints).
REAL_SHAPES = {
    "qwen2.5-1.5b": dict(arch="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936,
                         max_position_embeddings=32768, rope_theta=1000000.0, tie_word_embeddings=True),
    "qwen2.5-7b": dict(arch="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                       num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                       max_position_embeddings=32768, rope_theta=1000000.0),
    "qwen3-8b": dict(arch="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     max_position_embeddings=40960, rope_theta=1000000.0),
    "llama-3.2-1b": dict(arch="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         max_position_embeddings=131072, rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}),
}


def random_model(shape: str, device: str = "cuda", dtype=torch.bfloat16, dms: str | None = None):
    """A LoadedModel of a real family's shape with random weights, built in memory (no download).

    Weights are drawn N(0, 0.02) (never zeros: zeros hide wrong indexing and run unrealistically
    fast). The tokenizer is the embedded one (its vocabulary is smaller; benchmarks feed ids).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from budgetllm.models.dms_spec import DMSSpec
    from budgetllm.models.loading import LoadedModel

    spec = dict(REAL_SHAPES[shape])
    arch = spec.pop("arch")
    tie = spec.pop("tie_word_embeddings", False)
    config = tiny_config(arch, **{**spec, "tie_word_embeddings": tie})
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    with torch.no_grad():
        g = torch.Generator(device=device).manual_seed(0)
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02, generator=g)
    model.eval()
    try:  # benchmarks feed token ids; a tokenizer is only a convenience here
        tok = AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir()))
    except Exception:  # noqa: BLE001 - e.g. the embedded package is not installed on a GPU box
        tok = None
    dms_spec = DMSSpec(variant="none", native_cr=1.0) if dms is None else DMSSpec(variant=dms, window=512, native_cr=8.0)
    return LoadedModel(hf_model=model, tokenizer=tok, name=f"random-{shape}", arch=arch, dms=dms_spec,
                       device=torch.device(device), dtype=dtype)
