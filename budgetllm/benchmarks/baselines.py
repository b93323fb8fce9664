"""Baselines measured in the same run as the engine: HF generate and a CUDA-graphed dense torch step."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from budgetllm.dms.decisions import rotate_half


def measured_bandwidth(nbytes: int = 2 << 30) -> float:
    """Device copy bandwidth in bytes/s (bytes read + bytes written), median of 10."""
    a = torch.empty(nbytes // 2, dtype=torch.uint8, device="cuda").random_(0, 255)
    b = torch.empty_like(a)
    times = []
    for _ in range(12):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        b.copy_(a)
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    del a, b
    return nbytes / sorted(times[2:])[len(times[2:]) // 2]


def weight_bytes(hf_model) -> int:
    """Bytes a decode step must read for the weights (the input embedding table is only gathered)."""
    emb = hf_model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in hf_model.parameters())
    tied = hf_model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    return total if tied else total - emb.numel() * emb.element_size()


class _TokenClock:
    """A generate() streamer that notes when each step's tokens reach the host."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


@torch.no_grad()
def hf_generate_decode_rate(hf_model, batch: int, context: int, new_tokens: int = 32, static: bool = False,
                            compile: bool = True) -> dict:
    """Decode tokens/s of HF ``generate`` (dense cache; or its static cache + compiled step;
    ``compile=False``: the static cache with generate's auto-compile off).

    Every call has the same shapes (a static cache is sized by prompt + max_new_tokens, and a
    different size recompiles), and the decode time is read between the first and the last
    generated token on the host, so neither compilation nor prefill is counted. ``compiled`` in the
    result says whether torch.compile actually produced graphs in these calls (dynamo's counter),
    so a static run is never called compiled when generate chose not to compile.
    """
    from torch._dynamo.utils import counters

    ids = torch.randint(100, 30000, (batch, context), device="cuda")
    kw = dict(do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0, eos_token_id=None,
              max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    if static:
        kw.update(cache_implementation="static")
        if not compile:
            kw.update(disable_compile=True)
    for _ in range(2):  # warm-up (and compile) with exactly the timed shapes
        hf_model.generate(ids, **kw)
    torch.cuda.synchronize()
    # a later call re-uses the graphs an earlier one compiled: count from the process start
    compiled = bool(static and compile and counters["stats"]["unique_graphs"] > 0)
    clock = _TokenClock()
    t0 = time.perf_counter()
    hf_model.generate(ids, streamer=clock, **kw)
    torch.cuda.synchronize()
    times = clock.times[1:]  # the first put() is the prompt itself
    decode = max(times[-1] - times[0], 1e-9)
    return {"tok_s": batch * (len(times) - 1) / decode, "step_ms": 1000 * decode / (len(times) - 1),
            "ttft_s": times[0] - t0, "compiled": compiled}


class GraphedDenseStep:
    """One dense decode step in plain torch, captured in a CUDA graph: the 'paging costs nothing'
    yardstick of docs/targets.md. As lean as plain torch gets: q/k/v and gate/up fused into one GEMM
    each (cuBLAS), torch's fused RMSNorm, SDPA with GQA over a static [B, H, T, D] cache."""

    def __init__(self, hf_model, batch: int, context: int):
        cfg = hf_model.config
        self.m = hf_model
        self.L = cfg.num_hidden_layers
        self.Hq, self.H = cfg.num_attention_heads, cfg.num_key_value_heads
        self.D = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.Hq
        self.eps = float(cfg.rms_norm_eps)
        dev, dt = next(hf_model.parameters()).device, next(hf_model.parameters()).dtype
        self.k = [torch.randn(batch, self.H, context + 1, self.D, device=dev, dtype=dt) for _ in range(self.L)]
        self.v = [torch.randn(batch, self.H, context + 1, self.D, device=dev, dtype=dt) for _ in range(self.L)]
        self.ids = torch.randint(100, 30000, (batch,), device=dev)
        self.pos = torch.full((batch,), context, device=dev, dtype=torch.long)
        self.context = context
        self.graph = None
        self.w = []
        for layer in hf_model.model.layers:
            a, mlp = layer.self_attn, layer.mlp
            qkv_b = torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias]) if a.q_proj.bias is not None else None
            self.w.append((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]), qkv_b,
                           torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])))

    def _norm(self, x, module):
        return F.rms_norm(x, (x.shape[-1],), module.weight, self.eps)

    def _step(self):
        inner = self.m.model
        x = inner.embed_tokens(self.ids)
        cos, sin = inner.rotary_emb(x[:, None], self.pos[:, None])
        cos, sin = cos[:, 0, None], sin[:, 0, None]
        B, Hq, H, D = x.shape[0], self.Hq, self.H, self.D
        for li, layer in enumerate(inner.layers):
            a = layer.self_attn
            qkv_w, qkv_b, gate_up_w = self.w[li]
            qkv = F.linear(self._norm(x, layer.input_layernorm), qkv_w, qkv_b)
            q = qkv[:, :Hq * D].view(B, Hq, D)
            k = qkv[:, Hq * D:(Hq + H) * D].view(B, H, D)
            v = qkv[:, (Hq + H) * D:].view(B, H, D)
            if hasattr(a, "q_norm"):
                q, k = self._norm(q, a.q_norm), self._norm(k, a.k_norm)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            self.k[li][:, :, self.context] = k
            self.v[li][:, :, self.context] = v
            o = F.scaled_dot_product_attention(q[:, :, None], self.k[li], self.v[li], enable_gqa=True)
            x = x + a.o_proj(o.reshape(B, -1))
            gate, up = F.linear(self._norm(x, layer.post_attention_layernorm), gate_up_w).chunk(2, dim=-1)
            x = x + layer.mlp.down_proj(F.silu(gate) * up)
        return self.m.lm_head(self._norm(x, inner.norm)).argmax(-1)

    @torch.no_grad()
    def time_step_ms(self, iters: int = 30) -> float:
        if self.graph is None:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(3):
                    self._step()
            torch.cuda.current_stream().wait_stream(s)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self._step()
        times = []
        for _ in range(iters):
            st, en = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            st.record()
            self.graph.replay()
            en.record()
            torch.cuda.synchronize()
            times.append(st.elapsed_time(en))
        return sorted(times)[len(times) // 2]
