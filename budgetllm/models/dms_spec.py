"""DMS settings of a loaded model, read from config.json keys or an adapter file (docs/notes/dms.md §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Variant = Literal["none", "borrowed", "adapter"]

# FastDMS's metadata loader accepts these aliases (docs/notes/dms.md §5); we accept them too.
_ALIASES = {
    "window": ("dms_window_size", "window_size"),
    "alpha_scale": ("dms_alpha_scale", "alpha_scale"),
    "alpha_offset": ("dms_initial_alpha_offset", "dms_alpha_offset", "alpha_offset"),
    "native_cr": ("dms_cr", "target_cr"),
}


def _first(cfg: dict[str, Any], names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


@dataclass
class DMSSpec:
    """How a model makes eviction decisions.

    variant: "borrowed" (the last channel of the first query head of each GQA group, as in
    nvidia/Qwen3-8B-DMS-8x), "adapter" (dms_proj_alpha over dms_proj_alpha_norm of the residual
    stream) or "none" (no learned decisions; compression then uses the sliding-window mode).
    A decision logit is ``raw * alpha_scale - alpha_offset``; at the native ratio a token is
    evicted when the logit is > 0.
    """

    variant: Variant = "none"
    window: int = 512
    alpha_scale: float = 100.0
    alpha_offset: float = 5.0
    native_cr: float = 1.0
    # requested ratio -> logit threshold, measured on held-out text when the adapter was trained
    threshold_table: dict[float, float] = field(default_factory=dict)
    # per layer: {"proj_weight": [H, hidden], "proj_bias": [H] | None, "norm_weight": [hidden]}
    adapter_weights: list[dict[str, Any]] | None = None
    norm_eps: float = 1e-6
    source: str = ""

    @property
    def has_decisions(self) -> bool:
        return self.variant != "none"

    @classmethod
    def from_config(cls, cfg: dict[str, Any], variant: Variant) -> DMSSpec:
        return cls(
            variant=variant,
            window=int(_first(cfg, _ALIASES["window"], 512)),
            alpha_scale=float(_first(cfg, _ALIASES["alpha_scale"], 100.0)),
            alpha_offset=float(_first(cfg, _ALIASES["alpha_offset"], 5.0)),
            native_cr=float(_first(cfg, _ALIASES["native_cr"], 8.0)),
        )

    def threshold_for(self, compression: float) -> float | None:
        """The logit threshold for a requested ratio; None when no table or native rule applies.

        Ratio 1 evicts nothing (+inf). The native ratio uses the trained rule (logit > 0), even
        when a table exists. Otherwise the threshold table is interpolated linearly in log2(ratio)
        (clamped at its ends); without a table the caller falls back to calibrating on the prompt.
        """
        if compression <= 1.0:
            return math.inf
        if abs(compression - self.native_cr) < 1e-6:
            return 0.0  # the checkpoint's own ratio: the trained decisions as they are
        if self.threshold_table:
            pts = sorted((math.log2(r), t) for r, t in self.threshold_table.items() if r > 1)
            x = math.log2(compression)
            if x <= pts[0][0]:
                return pts[0][1]
            if x >= pts[-1][0]:
                return pts[-1][1]
            for (x0, t0), (x1, t1) in zip(pts, pts[1:], strict=False):
                if x0 <= x <= x1:
                    return t0 + (t1 - t0) * (x - x0) / (x1 - x0)
        return None

    def adapter_logits(self, residual, weights: dict[str, Any]):
        """The adapter variant's decision logits ``[N, H]`` float32 for the residual stream ``[N, hidden]``
        (before the layer's input norm): ``dms_proj_alpha(RMSNorm(residual)) * alpha_scale - alpha_offset``,
        all in float32. ``weights``: one layer of ``adapter_weights`` (float32 copies convert for free).
        The one definition the reference backend, the trainer and the paged engine share."""
        import torch

        x = residual.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps) * weights["norm_weight"].float()
        bias = weights.get("proj_bias")
        raw = torch.nn.functional.linear(x, weights["proj_weight"].float(), None if bias is None else bias.float())
        return raw * self.alpha_scale - self.alpha_offset
