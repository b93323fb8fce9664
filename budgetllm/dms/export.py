"""Retrofit outputs: NVIDIA-compatible export, adapter write with its table, the training-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from budgetllm.models.adapter import AdapterFile, save_adapter_file


def nvidia_config_keys(meta: dict, variant: str = "adapter") -> dict:
    """The Model-Optimizer ``Qwen3ConfigDMS`` keys (docs/notes/dms.md §4.3) for an adapter's metadata."""
    return {
        "dms_alpha_scale": float(meta.get("alpha_scale", 100.0)),
        "dms_initial_alpha_offset": float(meta.get("alpha_offset", 5.0)),
        "dms_window_size": int(meta["window"]),
        "dms_cr": meta.get("target_cr", 8),
        "dms_separate_alpha": variant == "adapter",
        "dms_alpha_per": "head",
        "dms_tau": float(meta.get("training", {}).get("config", {}).get("tau", 0.1)),
        "dms_disable_eviction": False,
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
    meta = adapter.metadata if adapter else {"window": loaded.dms.window, "target_cr": loaded.dms.native_cr,
                                             "alpha_scale": loaded.dms.alpha_scale,
                                             "alpha_offset": loaded.dms.alpha_offset}
    keys = nvidia_config_keys(meta, "adapter" if adapter else "borrowed")
    tensors = {}
    if adapter:
        for i, layer in enumerate(adapter.layers):
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.weight"] = layer["proj_weight"].to(torch.bfloat16)
            tensors[f"model.layers.{i}.self_attn.dms_proj_alpha_norm.weight"] = layer["norm_weight"].to(torch.bfloat16)
            if layer.get("proj_bias") is not None:
                tensors[f"model.layers.{i}.self_attn.dms_proj_alpha.bias"] = layer["proj_bias"].to(torch.bfloat16)
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


def write_adapter(path: str | Path, adapter: AdapterFile, table: dict | None = None, extra: dict | None = None) -> Path:
    """Save the adapter (+ JSON) with its threshold table and NVIDIA keys in the metadata."""
    meta = dict(adapter.metadata)
    if table is not None:
        meta["threshold_table"] = {str(k): v for k, v in table.items()}
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
