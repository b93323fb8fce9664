"""The prefill path's fused kernels against their naive twins (kernels.reference), fresh random inputs:
the compaction of the unflagged chunk tokens (kernels/compact.py) and the adapter's decision logits
(kernels/adapter_logits.py), whose twin is in turn the model's own definition (DMSSpec.adapter_logits)."""

import pytest
import torch
from kvtestlib import DEVICE

from budgetllm.kernels import reference as ref
from budgetllm.kernels.adapter_logits import adapter_logits
from budgetllm.kernels.compact import compact_unflagged


def _cu(lens):
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return torch.tensor(cu, dtype=torch.int32, device=DEVICE)


@pytest.mark.parametrize("lens,H,p_flag,block", [([37], 3, 0.5, 16), ([5, 0, 70, 1], 2, 0.8, 16),
                                                  ([300, 17], 3, 0.3, 256), ([64], 1, 1.0, 32),
                                                  ([64, 9], 2, 0.0, 32)])
@pytest.mark.parametrize("dtype", [torch.int8, torch.bool])
@pytest.mark.parametrize("seed", [0, 1])
def test_compaction_matches_reference(lens, H, p_flag, block, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    N = sum(lens)
    dec = (torch.rand(N, H, generator=g) < p_flag).to(dtype).to(DEVICE)
    cu = _cu(lens)
    idx, cnt = compact_unflagged(dec, cu, block=block)
    r_idx, r_cnt = ref.compact_unflagged(dec, cu)
    assert torch.equal(cnt.cpu(), r_cnt.cpu())
    bounds = cu.tolist()
    for b in range(len(lens)):  # entries past a sequence's count are never read (left unwritten)
        for h in range(H):
            n_keep = int((r_idx[bounds[b]:bounds[b + 1], h] >= 0).sum())
            got, want = idx[bounds[b]:bounds[b] + n_keep, h].cpu(), r_idx[bounds[b]:bounds[b] + n_keep, h].cpu()
            assert torch.equal(got, want), (b, h)
            last = bounds[b + 1] - 1
            if lens[b]:  # the chunk's last token is never flagged: it is always the last kept one
                assert int(want[-1]) == last and int(cnt[last, h]) == n_keep - 1


def test_compaction_of_nothing_flagged_lists_every_token():
    lens = [10, 6]
    dec = torch.zeros(16, 2, dtype=torch.int8, device=DEVICE)
    idx, cnt = compact_unflagged(dec, _cu(lens))
    assert idx[:, 0].tolist() == list(range(16)) and cnt[:, 1].tolist() == list(range(10)) + list(range(6))


@pytest.mark.parametrize("N,C,H,bias,per_layer", [(1, 64, 2, False, False), (37, 96, 3, True, False),
                                                   (50, 576, 3, False, True), (16, 40, 8, True, True)])
@pytest.mark.parametrize("xdtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_adapter_logits_match_reference(N, C, H, bias, per_layer, xdtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, C, generator=g) * 3).to(xdtype).to(DEVICE)
    norm_w = (1 + 0.1 * torch.randn(C, generator=g)).to(DEVICE)
    proj_w = (0.05 * torch.randn(H, C, generator=g)).to(DEVICE)
    proj_b = (0.1 * torch.randn(H, generator=g)).to(DEVICE) if bias else None
    got = adapter_logits(x, norm_w, proj_w, proj_b, 1e-6, 100.0, 5.0, per_layer)
    want = ref.adapter_logits(x, norm_w, proj_w, proj_b, 1e-6, 100.0, 5.0, per_layer)
    assert got.dtype == torch.float32 and got.shape == (N, H)
    # fp32 sums in another order: a few ulps of the projection (x100 by alpha_scale)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    if per_layer:
        assert torch.equal(got, got[:, :1].expand_as(got))


def test_adapter_twin_is_the_models_definition():
    from budgetllm.models.dms_spec import DMSSpec

    g = torch.Generator().manual_seed(3)
    C, H = 48, 2
    w = {"norm_weight": 1 + 0.1 * torch.randn(C, generator=g), "proj_weight": 0.05 * torch.randn(H, C, generator=g),
         "proj_bias": 0.1 * torch.randn(H, generator=g)}
    x = torch.randn(9, C, generator=g)
    for per in ("head", "layer"):
        spec = DMSSpec(variant="adapter", alpha_per=per, alpha_scale=50.0, alpha_offset=2.0, norm_eps=1e-5)
        want = spec.adapter_logits(x, w)
        got = ref.adapter_logits(x, w["norm_weight"], w["proj_weight"], w["proj_bias"], 1e-5, 50.0, 2.0,
                                 per == "layer")
        assert torch.equal(got, want)


@pytest.mark.parametrize("block_m", [64, 128])
def test_prefill_attention_tiles_of_the_engine_match_reference(block_m):
    """The query tiles the engine picks (prefill.attention_block_m: 64 or 128) over old rows and two
    chunks long enough to use the compacted far keys (window 5, chunks of 150 and 70 tokens)."""
    from kvtestlib import make_kv, random_tokens, relerr

    from budgetllm.kernels import dms_prefill_attention

    H, G, D, window = 2, 2, 16, 5
    kv = make_kv(D=D, H=H, S=4, L=1, window=window, P=400, MAXP=64, seed=5)
    for s, n in ((1, 30), (2, 0)):  # old rows under one chunk, none under the other
        if n:
            _, k, v, dec = random_tokens(n, H, D, torch.float32, 50 + s, 0.6)
            ref.store_prefill_kv(kv, k, v, dec, 0, torch.tensor([s], dtype=torch.int32))
            kv.seq_pos[s] = n
    q, k, v, dec = random_tokens(220, H, D, torch.float32, 77, 0.7, Hq=H * G)
    cu, sl = _cu([150, 70]), torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    out = dms_prefill_attention(q, k, v, dec, kv, 0, sl, D**-0.5, cu_seqlens=cu, max_seqlen=150, block_m=block_m,
                                block_n=32)
    assert relerr(out, ref.dms_prefill_attention(q, k, v, dec, kv, 0, sl, D**-0.5, cu_seqlens=cu)) < 1e-4


@pytest.mark.parametrize("N,H", [(1, 2), (300, 3), (37, 8)])
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed", [0, 1])
def test_prefill_decisions_equal_the_engines_rule(N, H, dtype, seed):
    from budgetllm.engine.rules import ALWAYS, DENSE, FORCED, THRESHOLD, WINDOW, step_decisions
    from budgetllm.kernels.prefill_inputs import prefill_decisions

    codes = (WINDOW, ALWAYS, FORCED, THRESHOLD)
    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 5000, (N,), generator=g).to(DEVICE)
    choice = torch.tensor([WINDOW, ALWAYS, FORCED, THRESHOLD, DENSE])
    code = choice[torch.randint(0, 5, (N,), generator=g)].to(dtype).to(DEVICE)
    sinks = torch.randint(0, 6, (N,), generator=g).to(dtype).to(DEVICE)
    period = torch.randint(0, 9, (N,), generator=g).to(dtype).to(DEVICE)  # 0 counts as 1
    got = prefill_decisions(pos, code, sinks, period, H, codes)
    want = ref.prefill_decisions(pos, code, sinks, period, H, codes)
    rule = step_decisions(pos, code, sinks, period, H)
    for a, b, c in zip(got, want, rule, strict=True):
        assert a.dtype == torch.bool and torch.equal(a.cpu(), b.cpu()) and torch.equal(a.cpu(), c.cpu())
