"""The settings of a retrofit run (:class:`RetrofitConfig`) and the one place they are validated.

The compression ratio ramps linearly from ``initial_cr`` to ``target_cr`` over ``ramp_fraction`` of
the steps after ``warmup_steps`` (:meth:`RetrofitConfig.cr_at`); the training itself is
``budgetllm.dms.train.Retrofitter``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from budgetllm.errors import BudgetLLMError


class RetrofitConfigError(BudgetLLMError, ValueError):
    """A retrofit setting is invalid; the message names the setting and the fix."""


@dataclass
class RetrofitConfig:
    target_cr: float = 8.0
    window: int = 256
    steps: int = 300
    ramp_fraction: float = 2 / 3  # CR reaches the target after this fraction of the steps
    initial_cr: float = 1.0
    # None: 3e-5 for scope "full" (NVIDIA's value); 5e-4 for "adapter": the shipped adapter's run
    # (300 steps of 8 x 2K tokens) -- a zero-initialised projection moves too little in so few
    # steps at 3e-5 (NVIDIA's 3e-5 runs ~250 steps of 8 x 32K tokens, 16x more tokens per step)
    lr: float | None = None
    batch_size: int = 8
    seq_len: int = 2048
    tau: float = 0.1
    alpha_scale: float = 100.0
    alpha_offset: float = 5.0
    scope: str = "adapter"  # "adapter" (base frozen) or "full" (borrowed channel, every weight)
    grad_clip: float = 1.0
    grad_checkpointing: bool | None = None  # None: on for seq_len >= 1024
    seed: int = 0
    save_every: int = 50
    warmup_steps: int | None = None  # None: 10% of the steps for scope "full", 0 for "adapter"

    def __post_init__(self):
        if self.lr is None:
            self.lr = 3e-5 if self.scope == "full" else 5e-4
        if self.warmup_steps is None:
            self.warmup_steps = max(1, self.steps // 10) if self.scope == "full" else 0

    def validate(self, max_context: int | None = None) -> None:
        def bad(name, msg):
            raise RetrofitConfigError(f"{name}={getattr(self, name)!r}: {msg}")

        if not (isinstance(self.target_cr, (int, float)) and math.isfinite(self.target_cr) and self.target_cr > 1):
            bad("target_cr", "must be a number > 1 (e.g. 8 keeps about 1/8 of the tokens outside the window)")
        if not (1 <= self.initial_cr <= self.target_cr):
            bad("initial_cr", f"must be in [1, target_cr={self.target_cr}]")
        for name in ("steps", "batch_size", "seq_len", "window"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "window" else 1):
                bad(name, "must be a positive integer" if name != "window" else "must be an integer >= 0")
        if self.seq_len <= self.window + 1:
            bad("seq_len", f"must exceed window + 1 = {self.window + 1}, or no token ever leaves the window")
        if max_context is not None and self.seq_len > max_context:
            bad("seq_len", f"exceeds the model's context of {max_context} tokens")
        if not (0 < self.ramp_fraction <= 1):
            bad("ramp_fraction", "must be in (0, 1]")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            bad("lr", "must be in (0, 1); try 5e-4 for the adapter, 3e-5 for scope='full'")
        if not (self.tau > 0):
            bad("tau", "must be > 0 (the paper uses 0.1)")
        if self.scope not in ("adapter", "full"):
            bad("scope", "must be 'adapter' (train dms_proj_alpha only) or 'full' (borrowed channel, all weights)")
        if self.alpha_scale <= 0:
            bad("alpha_scale", "must be > 0 (NVIDIA uses 100)")

    @property
    def ramp_steps(self) -> int:
        return max(1, round((self.steps - self.warmup_steps) * self.ramp_fraction))

    def cr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return 1.0
        return self.initial_cr + (self.target_cr - self.initial_cr) * min((step - self.warmup_steps) / self.ramp_steps, 1.0)
