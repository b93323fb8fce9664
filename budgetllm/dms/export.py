"""Retrofit outputs: NVIDIA-compatible export, adapter write with its table, the training-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from budgetllm.dms.thresholds import table_to_json
from budgetllm.models.adapter import AdapterFile, save_adapter_file
from budgetllm.models.loading import THRESHOLDS_FILE


def paged_block_size(window: int) -> int:
    """NVIDIA's paged cache block for a window: its config asserts window > block size > 0, so the
    largest power of two <= 256 (its default) that is below the window."""
    if window < 2:
        raise ValueError(f"window={window}: NVIDIA's Qwen3ConfigDMS needs dms_window_size > "
                         "dms_paged_attention_block_size > 0, so the window must be >= 2")
    block = 256
    while block >= window:
        block //= 2
    return block


def nvidia_config_keys(meta: dict, variant: str = "adapter") -> dict:
    """Every key NVIDIA's ``Qwen3ConfigDMS.__init__`` reads (Model-Optimizer experimental/dms), for an
    adapter's metadata (or a trained spec's): the values it would assert on are valid by construction."""
    cr = float(meta.get("target_cr", 8))
    return {
        "dms_alpha_scale": float(meta.get("alpha_scale", 100.0)),
        "dms_initial_alpha_offset": float(meta.get("alpha_offset", 5.0)),
        "dms_window_size": int(meta["window"]),
        "dms_paged_attention_block_size": paged_block_size(int(meta["window"])),
        "dms_cr": int(cr) if cr.is_integer() else cr,  # "for documentation purposes only" in NVIDIA's class
        "dms_disable_eviction": bool(meta.get("disable_eviction", False)),
        "dms_separate_alpha": variant == "adapter",
        "dms_alpha_per": str(meta.get("alpha_per", "head")),
        "dms_tau": float(meta.get("training", {}).get("config", {}).get("tau", 0.1)),
        "dms_compile_limit": 72,
        "dms_manual_inference_mode": False,
        "dms_chunked_prefill": None,
        "dms_preallocate_for_tokens": 4096,
    }


def export_nvidia(loaded, adapter: AdapterFile | None, out_dir: str | Path, *, include_weights: bool = True) -> Path:
    """Write an NVIDIA-style checkpoint directory.

    With the base weights: config.json (base config + dms_* keys), model.safetensors (base weights
    plus ``model.layers.{i}.self_attn.dms_proj_alpha[_norm].weight``) and the tokenizer; budgetllm's
    loader and NVIDIA's key names both read it. Without: dms_config.json + dms_adapter.safetensors.
    adapter None exports a fully trained borrowed-channel model (scope "full").
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    d = loaded.dms
    meta = adapter.metadata if adapter else {"window": d.window, "target_cr": d.native_cr, "alpha_scale": d.alpha_scale,
                                             "alpha_offset": d.alpha_offset, "alpha_per": d.alpha_per,
                                             "disable_eviction": d.disable_eviction}
    keys = nvidia_config_keys(meta, "adapter" if adapter else "borrowed")
    tensors = {}
    if adapter:
        for i, layer in enumerate(adapter.layers):
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.weight"] = layer["proj_weight"].to(torch.bfloat16)
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha_norm.weight"] = layer["norm_weight"].to(torch.bfloat16)
            if layer.get("proj_bias") is not None:
                tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.bias"] = layer["proj_bias"].to(torch.bfloat16)
    if d.threshold_table:  # the per-(layer, KV head) table travels beside the checkpoint
        write_thresholds(out / THRESHOLDS_FILE, d.threshold_table, d.threshold_fit)
    if not include_weights:
        (out / "dms_config.json").write_text(json.dumps(keys, indent=2))
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "dms_adapter.safetensors"))
        return out
    hf = loaded.hf_model
    seen: set[int] = set()
    for name, value in hf.state_dict().items():
        if value.data_ptr() in seen:  # tied weights (lm_head = embed_tokens) are stored once
            continue
        seen.add(value.data_ptr())
        tensors[name] = value.detach().to("cpu", torch.bfloat16).contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf.config.to_dict()
    cfg.update(keys)
    cfg["torch_dtype"] = "bfloat16"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    loaded.tokenizer.save_pretrained(out)
    return out


def write_thresholds(path: str | Path, table: dict, fit: dict | None = None) -> Path:
    """A threshold table file (read by ``load_model``: beside a checkpoint, or ``thresholds=``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"threshold_table": table_to_json(table), "threshold_fit": fit or {}}, indent=1))
    return path


def write_adapter(path: str | Path, adapter: AdapterFile, table: dict | None = None, extra: dict | None = None) -> Path:
    """Save the adapter (+ JSON) with its threshold table and NVIDIA keys in the metadata."""
    meta = dict(adapter.metadata)
    if table is not None:
        meta["threshold_table"] = table_to_json(table)
    meta["nvidia_config"] = nvidia_config_keys(meta)
    meta.update(extra or {})
    return save_adapter_file(path, AdapterFile(layers=adapter.layers, metadata=meta))


def plot_training_curve(history: list[dict], path: str | Path, title: str = "DMS retrofit") -> Path | None:
    """Loss, eviction rate against its target, and the CR schedule, one panel each (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        import warnings

        warnings.warn("matplotlib is not installed; skipping the training-curve PNG", stacklevel=2)
        return None
    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.8))
    ax[0].plot(steps, [r["kl"] for r in history], label="distillation KL")
    ax[0].plot(steps, [r["compression_loss"] for r in history], label="compression hinge")
    ax[0].set_yscale("symlog", linthresh=1e-3)
    ax[0].set_title("loss (symlog)")
    ax[0].legend()
    ax[1].plot(steps, [r["evict_rate"] for r in history], label="eviction rate (hard)")
    ax[1].plot(steps, [r["target_frac"] for r in history], "--", label="target 1 - 1/CR")
    ax[1].set_title("eviction rate")
    ax[1].legend()
    ax[2].plot(steps, [r["cr_target"] for r in history], label="CR target")
    ax[2].plot(steps, [1 / max(1e-6, 1 - r["evict_rate"]) for r in history], label="1 / (1 - eviction rate)")
    ax[2].set_title("compression ratio")
    ax[2].legend()
    for a in ax:
        a.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
