"""DMS semantics: eviction decisions, the delayed-eviction mask, the brute-force oracle, retrofit training.

Owns: how a decision logit is computed for each variant (docs/notes/dms.md §1.1), how decisions become
a visibility mask (§1.3–1.5), and a brute-force attention under that mask (the test oracle).
May use: torch, ``budgetllm.models``. Must not import: policy, accounting, server. The semantics
(decisions, mask, oracle) never import the engine; the retrofit tools (``thresholds``, ``quality``)
measure compression through the reference backend's inference path and import it lazily.
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
