"""budgetllm adapter files: DMS decision weights laid over a plain base model.

Format: ``NAME.safetensors`` (tensors ``layers.{i}.dms_proj_alpha.weight`` [kv_heads, hidden],
optional ``.bias``, ``layers.{i}.dms_proj_alpha_norm.weight`` [hidden]) and ``NAME.json`` beside it
(base model, variant, window, target CR, alpha scale/offset, threshold table, training summary).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from budgetllm.errors import CheckpointFormatError

# Checkpoint key spellings we accept: NVIDIA Model-Optimizer (dms_proj_alpha[_norm]) and the
# shorter aliases used by third-party trainers (FastDMS-style dms_alpha_proj / alpha_proj).
_PROJ = r"(?:dms_proj_alpha|dms_alpha_proj|alpha_proj)"
_NORM = r"(?:dms_proj_alpha_norm|dms_alpha_norm|dms_alpha_proj_norm|alpha_norm)"
KEY_RE = re.compile(
    r"(?:^|\.)layers\.(\d+)\.(?:self_attn\.)?(?:(?P<norm>" + _NORM + r")|(?P<proj>" + _PROJ + r"))\.(weight|bias)$"
)


@dataclass
class AdapterFile:
    layers: list[dict[str, torch.Tensor | None]]  # proj_weight, proj_bias, norm_weight
    metadata: dict[str, Any] = field(default_factory=dict)


def collect_adapter_tensors(tensors: dict[str, torch.Tensor], num_layers: int) -> list[dict] | None:
    """Pick DMS adapter tensors out of a state dict; None when there are none."""
    layers: list[dict[str, torch.Tensor | None]] = [
        {"proj_weight": None, "proj_bias": None, "norm_weight": None} for _ in range(num_layers)
    ]
    found = False
    for key, value in tensors.items():
        m = KEY_RE.search(key)
        if not m:
            continue
        found = True
        layer = int(m.group(1))
        if layer >= num_layers:
            raise CheckpointFormatError(f"DMS tensor {key!r} names layer {layer}, but the model has {num_layers}")
        kind = m.group(4)
        if m.group("norm"):
            if kind == "weight":
                layers[layer]["norm_weight"] = value
        else:
            layers[layer]["proj_weight" if kind == "weight" else "proj_bias"] = value
    if not found:
        return None
    for i, entry in enumerate(layers):
        if entry["proj_weight"] is None or entry["norm_weight"] is None:
            raise CheckpointFormatError(
                f"DMS adapter is incomplete at layer {i}: need dms_proj_alpha.weight and "
                "dms_proj_alpha_norm.weight for every layer"
            )
    return layers


def save_adapter_file(path: str | Path, adapter: AdapterFile) -> Path:
    """Write ``path`` (.safetensors) and its JSON metadata beside it. Returns the tensor file path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, entry in enumerate(adapter.layers):
        tensors[f"layers.{i}.dms_proj_alpha.weight"] = entry["proj_weight"].detach().float().contiguous().cpu()
        tensors[f"layers.{i}.dms_proj_alpha_norm.weight"] = entry["norm_weight"].detach().float().contiguous().cpu()
        if entry.get("proj_bias") is not None:
            tensors[f"layers.{i}.dms_proj_alpha.bias"] = entry["proj_bias"].detach().float().contiguous().cpu()
    meta = dict(adapter.metadata)
    meta.setdefault("format", "budgetllm-dms-adapter/1")
    meta.setdefault("variant", "adapter")
    save_file(tensors, str(path), metadata={"budgetllm": json.dumps(meta)})
    path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
    return path


def load_adapter_file(path: str | Path) -> AdapterFile:
    """Read an adapter written by :func:`save_adapter_file` (or any file with the same key names)."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.exists():
        raise CheckpointFormatError(f"adapter file {path} does not exist")
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = f.metadata() or {}
    meta: dict[str, Any] = {}
    if path.with_suffix(".json").exists():
        meta = json.loads(path.with_suffix(".json").read_text())
    elif "budgetllm" in header:
        meta = json.loads(header["budgetllm"])
    num_layers = 1 + max((int(m.group(1)) for k in tensors if (m := KEY_RE.search(k))), default=-1)
    layers = collect_adapter_tensors(tensors, num_layers)
    if layers is None:
        raise CheckpointFormatError(f"{path} holds no dms_proj_alpha tensors")
    return AdapterFile(layers=layers, metadata=meta)
