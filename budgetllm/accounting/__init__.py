"""Token and KV-memory accounting.

Owns: the KV byte arithmetic, per-call meters, usage logs and reports.
Must not import: torch, the engine, models, kernels, or ``budgetllm.policy``.
Backends hand it plain numbers (row lengths, pages held); it hands back plain records.
"""

from budgetllm.accounting.log import UsageLog, format_bytes, render_usage_table
from budgetllm.accounting.meter import KVMeter, KVShape

__all__ = ["KVMeter", "KVShape", "UsageLog", "format_bytes", "render_usage_table"]
