"""DMS semantics: eviction decisions, the delayed-eviction mask, the brute-force oracle, retrofit training.

Owns: how a decision logit is computed for each variant (docs/retrofit.md), how decisions become
a visibility mask, a brute-force attention under that mask (the test oracle), threshold calibration
(``thresholds``: per-(layer, KV head) tables fitted from one dense pass; the engine's per-call rule
reads them), retrofit training and its data (``train``, ``data``, ``traces``), exports and quality
(``quality``; ``compare``: two adapters on held-out long text and the rule that adopts a retrained one).
May use: torch, ``budgetllm.models``. Must not import: policy, accounting, server. The semantics
(decisions, mask, oracle) and the threshold fit never import the engine; ``measure_compression``,
``quality`` and ``traces`` run the engine's inference path and import it lazily.
"""

from budgetllm.dms.decisions import DecisionHead, apply_rope, rotate_half
from budgetllm.dms.mask import dms_visibility_mask, evict_flags_from_decisions
from budgetllm.dms.oracle import dms_attention_bruteforce, masked_model_forward

__all__ = [
    "DecisionHead",
    "apply_rope",
    "dms_attention_bruteforce",
    "dms_visibility_mask",
    "evict_flags_from_decisions",
    "masked_model_forward",
    "rotate_half",
]
