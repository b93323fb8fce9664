"""Where a loaded model's DMS spec comes from: its checkpoint (``dms_*`` config keys, adapter tensors
in its safetensors), an adapter file (local, or an ``org/name[/file]`` on the Hub), and a
threshold-table file (``budgetllm calibrate-thresholds``). ``load_model`` combines them.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch

from budgetllm.errors import UnsupportedArchitectureError
from budgetllm.models.adapter import collect_adapter_tensors, load_adapter_file
from budgetllm.models.dms_spec import DMSSpec


def _read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    """Only the DMS adapter tensors of a checkpoint (transformers drops unknown keys)."""
    from safetensors import safe_open

    from budgetllm.models.adapter import KEY_RE

    out: dict[str, torch.Tensor] = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                if KEY_RE.search(key):
                    out[key] = f.get_tensor(key)
    return out


def dms_from_checkpoint(cfg: dict[str, Any], directory: Path | None, num_layers: int) -> DMSSpec:
    adapter_tensors = _read_safetensors(directory) if directory else {}
    layers = collect_adapter_tensors(adapter_tensors, num_layers) if adapter_tensors else None
    has_keys = any(k.startswith("dms_") for k in cfg)
    if layers is not None:
        spec = DMSSpec.from_config(cfg, "adapter")
        spec.adapter_weights = layers
    elif has_keys and not cfg.get("dms_separate_alpha", False):
        spec = DMSSpec.from_config(cfg, "borrowed")
    elif has_keys:
        raise UnsupportedArchitectureError(
            "config.json sets dms_separate_alpha but the checkpoint holds no dms_proj_alpha tensors"
        )
    else:
        return DMSSpec(variant="none", native_cr=1.0)
    spec.source = str(directory or "config")
    return spec


def dms_from_adapter(path: str | Path, num_layers: int, current: DMSSpec) -> DMSSpec:
    from budgetllm.errors import CheckpointFormatError

    file = load_adapter_file(path)
    if len(file.layers) != num_layers:
        raise CheckpointFormatError(f"adapter {path} has {len(file.layers)} layers; the model has {num_layers}")
    meta = file.metadata
    spec = DMSSpec(
        variant="adapter",
        window=int(meta.get("window", current.window)),
        alpha_scale=float(meta.get("alpha_scale", 100.0)),
        alpha_offset=float(meta.get("alpha_offset", 5.0)),
        native_cr=float(meta.get("target_cr", 8.0)),
        alpha_per=str(meta.get("alpha_per", "head")),
        disable_eviction=bool(meta.get("disable_eviction", False)),
        threshold_table=dict(meta.get("threshold_table") or {}),  # shaped by set_table
        threshold_fit=dict(meta.get("threshold_fit") or {}),
        adapter_weights=file.layers,
        source=str(path),
    )
    spec.check()
    return spec


def read_thresholds_file(spec: DMSSpec, path: str | Path) -> None:
    """Install the table of a thresholds file ({"threshold_table": {ratio: [[...]]}, "threshold_fit": {...}})."""
    from budgetllm.errors import CheckpointFormatError

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointFormatError(f"threshold file {path} cannot be read: {e}") from None
    if "threshold_table" not in data:
        raise CheckpointFormatError(f"threshold file {path} has no 'threshold_table'; write it with "
                                    "`budgetllm calibrate-thresholds`")
    spec.threshold_table = dict(data["threshold_table"])
    spec.threshold_fit = dict(data.get("threshold_fit") or {})


def resolve_adapter(adapter: str | Path) -> Path:
    """A local adapter path, or one downloaded from the Hub: ``org/name`` (the repository's one adapter
    file) or ``org/name/path/file.safetensors`` (that file, with its .json beside it)."""
    from budgetllm.errors import CheckpointFormatError

    path = Path(adapter).expanduser()
    if path.exists() or path.with_suffix(".safetensors").exists():
        return path
    parts = str(adapter).split("/")
    if len(parts) < 2 or str(adapter).startswith((".", "/", "~")):
        raise CheckpointFormatError(f"adapter file {adapter} does not exist")
    import huggingface_hub

    repo, file = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        if file:
            local = Path(huggingface_hub.hf_hub_download(repo, file))
            with contextlib.suppress(Exception):  # the metadata JSON is optional (it is also in the header)
                huggingface_hub.hf_hub_download(repo, str(Path(file).with_suffix(".json")))
            return local
        snap = Path(huggingface_hub.snapshot_download(repo, allow_patterns=["*.safetensors", "*.json"]))
    except Exception as e:  # offline, unknown repository, missing file: one clear error
        raise CheckpointFormatError(f"adapter {adapter!r} is neither a local file nor a downloadable Hub adapter: "
                                    f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    files = sorted(p for p in snap.rglob("*.safetensors") if p.with_suffix(".json").exists()) or \
        sorted(snap.rglob("*.safetensors"))
    if len(files) != 1:
        raise CheckpointFormatError(f"Hub repository {repo} holds {len(files)} adapter files; name one: "
                                    f"{repo}/<file>.safetensors")
    return files[0]
