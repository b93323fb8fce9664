"""Model loading and DMS decision heads.

Owns: resolving a model name (embedded default, HF id, local directory, GGUF file), checking the
architecture (Llama, Qwen2, Qwen3), reading DMS settings and adapter weights (both checkpoint
variants and budgetllm adapter files), the converted-weights cache of GGUF files
(``weights_cache``), the default CPU thread count (``threads``), and tiny random checkpoints for tests.
May use: torch, transformers, safetensors, ``budgetllm.kernels``. Must not import: engine, policy,
accounting, server.
"""

from budgetllm.models.adapter import AdapterFile, load_adapter_file, save_adapter_file
from budgetllm.models.dms_spec import DMSSpec
from budgetllm.models.loading import SUPPORTED_ARCHITECTURES, LoadedModel, embedded_model_path, load_model

__all__ = [
    "SUPPORTED_ARCHITECTURES",
    "AdapterFile",
    "DMSSpec",
    "LoadedModel",
    "embedded_model_path",
    "load_adapter_file",
    "load_model",
    "save_adapter_file",
]
