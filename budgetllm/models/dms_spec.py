"""DMS settings of a loaded model, read from config.json keys or an adapter file (docs/retrofit.md).

Every key of NVIDIA's ``Qwen3ConfigDMS`` that changes what a token's fate is gets read here:
window, alpha scale/offset, the trained ratio, ``dms_separate_alpha`` (variant), ``dms_alpha_per``
("head": one decision per KV head; "layer": KV head 0 decides for the whole layer) and
``dms_disable_eviction`` (the checkpoint runs as its dense model at every ratio).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Variant = Literal["none", "borrowed", "adapter"]

# FastDMS's metadata loader accepts these aliases; we accept them too.
_ALIASES = {
    "window": ("dms_window_size", "window_size"),
    "alpha_scale": ("dms_alpha_scale", "alpha_scale"),
    "alpha_offset": ("dms_initial_alpha_offset", "dms_alpha_offset", "alpha_offset"),
    "native_cr": ("dms_cr", "target_cr"),
    "alpha_per": ("dms_alpha_per", "alpha_per"),
    "disable_eviction": ("dms_disable_eviction", "disable_eviction"),
}

# A per-(layer, KV head) threshold grid: [layer][kv head] -> decision-logit threshold.
Grid = tuple[tuple[float, ...], ...]


def _first(cfg: dict[str, Any], names: tuple[str, ...], default: Any) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def as_grid(value: Any, num_layers: int | None = None, num_kv_heads: int | None = None) -> Grid:
    """A table entry as a grid: nested lists stay per (layer, head); a number (a table written before
    per-head tables existed) is broadcast, which needs the model's shape."""
    if isinstance(value, (int, float)):
        if num_layers is None or num_kv_heads is None:
            raise ValueError("a global threshold needs the model's layer and KV-head counts to broadcast")
        return tuple(tuple(float(value) for _ in range(num_kv_heads)) for _ in range(num_layers))
    return tuple(tuple(float(t) for t in layer) for layer in value)


@dataclass
class DMSSpec:
    """How a model makes eviction decisions.

    variant: "borrowed" (the last channel of the first query head of each GQA group, as in
    nvidia/Qwen3-8B-DMS-8x), "adapter" (dms_proj_alpha over dms_proj_alpha_norm of the residual
    stream) or "none" (no learned decisions; compression then uses the sliding-window mode).
    A decision logit is ``raw * alpha_scale - alpha_offset``; the trained rule evicts when it is > 0.
    threshold_table: requested ratio -> a threshold per (layer, KV head), fitted once on sample text
    (:func:`budgetllm.dms.thresholds.fit_thresholds`) and stored with the adapter or beside the checkpoint.
    """

    variant: Variant = "none"
    window: int = 512
    alpha_scale: float = 100.0
    alpha_offset: float = 5.0
    native_cr: float = 1.0
    alpha_per: str = "head"  # "head" or "layer" (KV head 0 decides for every head of the layer)
    disable_eviction: bool = False  # NVIDIA's dms_disable_eviction: the dense model at every ratio
    threshold_table: dict[float, Grid] = field(default_factory=dict)
    # how the table was fitted (data, tokens, method): shown by reports, written back on export
    threshold_fit: dict[str, Any] = field(default_factory=dict)
    # per layer: {"proj_weight": [H, hidden], "proj_bias": [H] | None, "norm_weight": [hidden]}
    adapter_weights: list[dict[str, Any]] | None = None
    norm_eps: float = 1e-6
    source: str = ""

    @property
    def has_decisions(self) -> bool:
        return self.variant != "none"

    @classmethod
    def from_config(cls, cfg: dict[str, Any], variant: Variant) -> DMSSpec:
        spec = cls(
            variant=variant,
            window=int(_first(cfg, _ALIASES["window"], 512)),
            alpha_scale=float(_first(cfg, _ALIASES["alpha_scale"], 100.0)),
            alpha_offset=float(_first(cfg, _ALIASES["alpha_offset"], 5.0)),
            native_cr=float(_first(cfg, _ALIASES["native_cr"], 8.0)),
            alpha_per=str(_first(cfg, _ALIASES["alpha_per"], "head")),
            disable_eviction=bool(_first(cfg, _ALIASES["disable_eviction"], False)),
        )
        spec.check()
        return spec

    def check(self) -> None:
        from budgetllm.errors import CheckpointFormatError

        if self.alpha_per not in ("head", "layer"):
            raise CheckpointFormatError(f"dms_alpha_per={self.alpha_per!r} is not supported; use 'head' or 'layer'")
        if self.window < 0:
            raise CheckpointFormatError(f"dms_window_size={self.window} must be >= 0")

    def set_table(self, table: dict, num_layers: int, num_kv_heads: int) -> None:
        """Install a table read from JSON ({ratio: grid or number}); grids must match the model's shape."""
        from budgetllm.errors import CheckpointFormatError

        out = {}
        for r, v in (table or {}).items():
            grid = as_grid(v, num_layers, num_kv_heads)
            if len(grid) != num_layers or any(len(row) != num_kv_heads for row in grid):
                raise CheckpointFormatError(f"threshold table at ratio {r} is not [{num_layers} layers][{num_kv_heads} "
                                            "KV heads]; refit it with `budgetllm calibrate-thresholds`")
            out[float(r)] = grid
        self.threshold_table = out

    def thresholds_for(self, compression: float) -> Grid | float | None:
        """The decision-logit threshold(s) for a requested ratio.

        Ratio <= 1 evicts nothing (+inf). With a table: per (layer, KV head), interpolated linearly
        in log2(ratio) between the fitted ratios (clamped at the table's ends) -- continuous in the
        ratio, the trained one included (its fitted thresholds sit near 0 because the fit keeps each
        head's trained share of evictions). Without a table: the trained rule (0.0) at the trained
        ratio, else None (the caller's documented last resort is a quantile of the prompt's logits).
        """
        if compression <= 1.0:
            return math.inf
        if self.threshold_table:
            pts = sorted((math.log2(r), g) for r, g in self.threshold_table.items() if r > 1)
            x = math.log2(compression)
            if x <= pts[0][0]:
                return pts[0][1]
            if x >= pts[-1][0]:
                return pts[-1][1]
            for (x0, g0), (x1, g1) in zip(pts, pts[1:], strict=False):
                if x == x1:
                    return g1  # a fitted point exactly
                if x0 <= x < x1:
                    w = (x - x0) / (x1 - x0)
                    return tuple(tuple(a + (b - a) * w for a, b in zip(r0, r1, strict=True))
                                 for r0, r1 in zip(g0, g1, strict=True))
        if abs(compression - self.native_cr) < 1e-6:
            return 0.0  # the checkpoint's own ratio: the trained decisions as they are
        return None

    def per_layer(self, logits):
        """alpha_per "layer": KV head 0's logit decides for every head of the layer ([N, H] -> [N, H])."""
        if self.alpha_per == "layer" and logits is not None:
            return logits[:, :1].expand_as(logits).contiguous()
        return logits

    def adapter_logits(self, residual, weights: dict[str, Any]):
        """The adapter variant's decision logits ``[N, H]`` float32 for the residual stream ``[N, hidden]``
        (before the layer's input norm): ``dms_proj_alpha(RMSNorm(residual)) * alpha_scale - alpha_offset``,
        all in float32 (then :meth:`per_layer`). ``weights``: one layer of ``adapter_weights``.
        The one definition the reference backend, the trainer and the paged engine share."""
        import torch

        x = residual.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.norm_eps) * weights["norm_weight"].float()
        bias = weights.get("proj_bias")
        raw = torch.nn.functional.linear(x, weights["proj_weight"].float(), None if bias is None else bias.float())
        return self.per_layer(raw * self.alpha_scale - self.alpha_offset)
