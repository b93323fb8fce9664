"""Retrofit training (docs/notes/dms.md §2): distillation from the dense model + a one-sided hinge
pulling the eviction rate toward 1 - 1/CR, with CR rising linearly from ``initial_cr`` to the target.

Decisions are Gumbel-sigmoid relaxed (logistic noise, tau = 0.1); the soft delayed-eviction mask
uses the relaxed logits, the compression loss uses straight-through hard decisions. Scope
"adapter" (default) trains only dms_proj_alpha / dms_proj_alpha_norm over a frozen base; scope
"full" trains every weight with the borrowed query channel (the paper's recipe).

The teacher is always the dense original model (for scope "full" on a plain model: the HF forward
that still uses every query channel). Start-up: the adapter starts at zero (every logit -offset:
nothing is evicted); scope "full" first runs ``warmup_steps`` at ratio 1 without eviction while the
borrowed channel's q_proj rows are scaled linearly to zero (the paper's neuron zeroing), so its
logits start at -offset too, and only then does the ratio ramp.
"""

from __future__ import annotations

import copy
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import torch

from budgetllm.dms.retrofit_config import RetrofitConfig, RetrofitConfigError
from budgetllm.dms.train_attention import chunked_kl, dms_train_forward, logistic_noise
from budgetllm.models.adapter import AdapterFile
from budgetllm.models.dms_spec import DMSSpec


class Retrofitter:
    """Owns the trainable decision weights, the optimizer, the data order and checkpoints."""

    def __init__(self, loaded, cfg: RetrofitConfig, rows: torch.Tensor, *, checkpoint_dir: str | Path | None = None,
                 resume: bool = True):
        cfg.validate(loaded.max_context)
        if rows.dim() != 2 or rows.shape[1] != cfg.seq_len:
            raise RetrofitConfigError(f"training rows have shape {tuple(rows.shape)}; expected [N, seq_len={cfg.seq_len}]")
        self.loaded, self.cfg, self.rows = loaded, cfg, rows
        hf, dev = loaded.hf_model, loaded.device
        self.amp = dev.type == "cuda"
        self.ckpt_checkpointing = cfg.grad_checkpointing if cfg.grad_checkpointing is not None else cfg.seq_len >= 1024
        c = hf.config
        L, H, hid = c.num_hidden_layers, c.num_key_value_heads, c.hidden_size
        self.shape = (L, H)
        for p in hf.parameters():
            p.requires_grad_(False)
        spec_kw = dict(window=cfg.window, alpha_scale=cfg.alpha_scale, alpha_offset=cfg.alpha_offset,
                       native_cr=cfg.target_cr, norm_eps=loaded.dms.norm_eps)
        self.zeroing = None
        if cfg.scope == "adapter":
            old = loaded.dms.adapter_weights if loaded.dms.variant == "adapter" else None
            layers = []
            for i in range(L):
                w = old[i] if old else None
                proj = w["proj_weight"].float().clone() if w else torch.zeros(H, hid)
                norm = w["norm_weight"].float().clone() if w else torch.ones(hid)
                layers.append({"proj_weight": proj.to(dev).requires_grad_(), "proj_bias": None,
                               "norm_weight": norm.to(dev).requires_grad_()})
            self.spec = DMSSpec(variant="adapter", adapter_weights=layers, **spec_kw)
            self.params = [t for layer in layers for t in (layer["proj_weight"], layer["norm_weight"])]
            self.teacher_hf = hf
        else:
            self.teacher_hf = copy.deepcopy(hf).eval()  # the dense original model
            self.zeroing = _borrowed_rows(hf, loaded.dms.variant == "none")
            if self.amp:
                hf.float()  # fp32 master weights under bf16 autocast
            self.spec = DMSSpec(variant="borrowed", **spec_kw)
            self.params = list(hf.parameters())
            for p in self.params:
                p.requires_grad_(True)
        self.opt = torch.optim.Adam(self.params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.step = 0
        self.history: list[dict] = []
        self.seconds = 0.0
        self.checkpoint_path = Path(checkpoint_dir) / "retrofit-last.pt" if checkpoint_dir else None
        if resume and self.checkpoint_path and self.checkpoint_path.exists():
            self.load_checkpoint(self.checkpoint_path)

    # -- data -------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        n, b = self.rows.shape[0], self.cfg.batch_size
        idx = []
        for j in range(step * b, (step + 1) * b):
            epoch, k = divmod(j, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 7919 + epoch))
            idx.append(int(perm[k]))
        return self.rows[idx].to(self.loaded.device)

    # -- one step ---------------------------------------------------------------------------
    def train_step(self) -> dict:
        cfg, dev, hf = self.cfg, self.loaded.device, self.loaded.hf_model
        t0 = time.perf_counter()
        cr = cfg.cr_at(self.step)
        target = 1.0 - 1.0 / cr
        ids = self.batch(self.step)
        B, T = ids.shape
        warm = self.step < cfg.warmup_steps
        if self.zeroing is not None and self.step < cfg.warmup_steps:
            _scale_rows(self.zeroing, 1.0 - (self.step + 1) / cfg.warmup_steps)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + self.step)
        noise = logistic_noise((self.shape[0], B, T, self.shape[1]), gen).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.amp):
            t_hidden = self.teacher_hidden(ids)
            out = dms_train_forward(hf, self.spec, ids, window=cfg.window, tau=cfg.tau, noise=noise, teacher=warm,
                                    grad_checkpointing=self.ckpt_checkpointing)
            kl = chunked_kl(hf.lm_head, out.hidden, t_hidden)
        if out.relaxed:
            probs = torch.sigmoid(torch.stack(out.relaxed))  # [L, B, T, H]
            hard = (probs > 0.5).float() - probs.detach() + probs  # straight-through
            frac = hard.mean(dim=(0, 2, 3))  # per batch element
        else:  # warm-up: no eviction at all
            frac = torch.zeros(B, device=dev)
        comp = torch.clamp(target - frac, min=0).mean()
        loss = kl + comp
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        self.seconds += dt
        rec = {"step": self.step, "loss": loss.item(), "kl": kl.item(), "compression_loss": comp.item(),
               "evict_rate": frac.mean().item(), "cr_target": cr, "target_frac": target,
               "grad_norm": float(gnorm), "seconds": dt}
        self.history.append(rec)
        self.step += 1
        if self.checkpoint_path and cfg.save_every and self.step % cfg.save_every == 0:
            self.save_checkpoint(self.checkpoint_path)
        return rec

    @torch.no_grad()
    def teacher_hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """The dense original model's final hidden states: the plain HF forward of the untouched copy,
        or, for a checkpoint that already has a borrowed channel, its DMS forward with eviction off."""
        if self.spec.variant == "adapter" or self.loaded.dms.variant == "none":
            return self.teacher_hf.model(input_ids=ids, use_cache=False).last_hidden_state
        return dms_train_forward(self.teacher_hf, self.loaded.dms, ids, window=self.cfg.window, tau=self.cfg.tau,
                                 teacher=True).hidden

    def train(self, progress: bool = True, deadline: float | None = None) -> list[dict]:
        """Run to ``cfg.steps`` (or until time.time() passes ``deadline``); returns the history."""
        from tqdm import tqdm

        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="retrofit", unit="step", disable=not progress)
        while self.step < self.cfg.steps:
            if deadline is not None and time.time() > deadline:
                break
            r = self.train_step()
            bar.set_postfix(loss=f"{r['loss']:.4f}", kl=f"{r['kl']:.4f}", evict=f"{r['evict_rate']:.3f}",
                            cr=f"{r['cr_target']:.2f}")
            bar.update(1)
        bar.close()
        if self.checkpoint_path:
            self.save_checkpoint(self.checkpoint_path)
        return self.history

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, path: str | Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {"step": self.step, "history": self.history, "seconds": self.seconds, "config": asdict(self.cfg),
                 "params": [p.detach().cpu() for p in self.params], "optimizer": self.opt.state_dict()}
        torch.save(state, str(path) + ".tmp")
        Path(str(path) + ".tmp").replace(path)

    def load_checkpoint(self, path: str | Path) -> None:
        # weights_only: a checkpoint holds tensors, numbers and strings; unpickling anything else
        # could run code from the file, so it is refused.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            from budgetllm.errors import CheckpointFormatError

            raise CheckpointFormatError(f"{path}: not a retrofit checkpoint of tensors and numbers only "
                                        f"(refused to unpickle other objects: {str(e).splitlines()[0]}); "
                                        "pass --no-resume or delete it") from None
        old = state["config"]
        for key in ("target_cr", "window", "scope", "seq_len", "alpha_scale", "alpha_offset"):
            if old.get(key) != getattr(self.cfg, key):
                raise RetrofitConfigError(
                    f"checkpoint {path} was trained with {key}={old.get(key)!r}, this run asks {getattr(self.cfg, key)!r}; "
                    "use another checkpoint directory or pass --no-resume")
        with torch.no_grad():
            for p, saved in zip(self.params, state["params"], strict=True):
                p.copy_(saved.to(p.device, p.dtype))
        self.opt.load_state_dict(state["optimizer"])
        self.step, self.history, self.seconds = state["step"], state["history"], state.get("seconds", 0.0)

    # -- results ----------------------------------------------------------------------------
    def trained_spec(self, dtype: torch.dtype | None = None) -> DMSSpec:
        """A detached DMSSpec for inference (``loaded.dms = trainer.trained_spec()``)."""
        spec = copy.copy(self.spec)
        dtype = dtype or self.loaded.dtype
        if spec.adapter_weights:
            spec.adapter_weights = [{k: (v.detach().to(dtype) if v is not None else None) for k, v in layer.items()}
                                    for layer in spec.adapter_weights]
        return spec

    def summary(self) -> dict:
        last = self.history[-10:] or [{}]
        mean = lambda k: round(sum(r.get(k, 0.0) for r in last) / len(last), 5)  # noqa: E731
        return {"steps": self.step, "train_seconds": round(self.seconds, 1), "rows": int(self.rows.shape[0]),
                "tokens_per_step": self.cfg.batch_size * self.cfg.seq_len, "final_kl": mean("kl"),
                "final_evict_rate": mean("evict_rate"), "final_cr_target": last[-1].get("cr_target"),
                "config": asdict(self.cfg),
                "device": torch.cuda.get_device_name() if self.loaded.device.type == "cuda" else "cpu"}

    def adapter_file(self, base_model: str, extra: dict | None = None) -> AdapterFile:
        if self.spec.variant != "adapter":
            raise RetrofitConfigError("scope='full' trains the whole model: use export_nvidia() to save it")
        layers = [{k: (v.detach().float().cpu() if v is not None else None) for k, v in layer.items()}
                  for layer in self.spec.adapter_weights]
        meta = {"base_model": base_model, "variant": "adapter", "window": self.cfg.window,
                "target_cr": self.cfg.target_cr, "alpha_scale": self.cfg.alpha_scale,
                "alpha_offset": self.cfg.alpha_offset, "threshold_table": {}, "training": self.summary()}
        meta.update(extra or {})
        return AdapterFile(layers=layers, metadata=meta)


def _borrowed_rows(hf, zero: bool) -> list[tuple] | None:
    """The q_proj rows (and bias entries) of each layer's borrowed channel (channel D-1 of the first
    query head of every GQA group) with their initial values, for the neuron-zeroing warm-up; None
    when the model already has a borrowed channel (it was zeroed or trained before)."""
    if not zero:
        return None
    cfg = hf.config
    Hq, H = cfg.num_attention_heads, cfg.num_key_value_heads
    D = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    rows = torch.tensor([g * (Hq // H) * D + D - 1 for g in range(H)])
    out = []
    for layer in hf.model.layers:
        proj = layer.self_attn.q_proj
        bias = proj.bias[rows].detach().clone() if proj.bias is not None else None
        out.append((proj, rows, proj.weight[rows].detach().clone(), bias))
    return out


@torch.no_grad()
def _scale_rows(zeroing: list[tuple], factor: float) -> None:
    factor = max(0.0, factor)
    for proj, rows, w0, b0 in zeroing:
        proj.weight[rows.to(proj.weight.device)] = (w0 * factor).to(proj.weight)
        if b0 is not None:
            proj.bias[rows.to(proj.bias.device)] = (b0 * factor).to(proj.bias)