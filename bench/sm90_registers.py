"""Compile the decode-step kernels for sm_90 WITHOUT a GPU and print each variant's registers per
thread (``cuobjdump -res-usage`` on the cubin triton writes): a compile check of the compiled path
(the interpreter tests never compile) and the occupancy behind a plan. CPU only, ~1 minute:

    python bench/sm90_registers.py

The local triton may differ from the GPU machine's (bench/NOTES.md says which was used).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from budgetllm.kernels.decode_attention import decode_attention_kernel, decode_reduce_kernel  # noqa: E402
from budgetllm.kernels.fused_decoder import qkv_rope_kernel  # noqa: E402
from budgetllm.kernels.gemv import gemv_kernel  # noqa: E402
from budgetllm.kernels.qkv_store import qkv_store_kernel  # noqa: E402
from budgetllm.kernels.step_inputs import step_inputs_kernel  # noqa: E402
from budgetllm.kernels.step_stats import slot_stats_kernel  # noqa: E402
from budgetllm.kernels.store_kv import store_decode_kv_kernel  # noqa: E402

INTS = {"s_i", "B", "S", "S_ALL", "LH", "NUM_PAGES", "WINDOW", "ALWAYS", "FORCED", "THRESHOLD", "M", "N", "K", "K_SPLIT", "s_xm", "s_rm", "s_ym", "Hq", "H", "G", "P", "MAXP", "W1", "D", "NS", "NSP",
        "s_qb", "s_qh", "s_ob", "s_oh", "s_row", "s_kb", "s_kh", "s_vb", "s_vh", "s_eb"}
FLOATS = {"eps", "qk_eps", "scale", "offset", "sm_scale"}
PTR = {"pos": "*i64", "slot_ids": "*i32", "seq_pos": "*i32", "cnt": "*i32", "hcnt": "*i32", "part": "*fp32",
       "block_tables": "*i32", "row_lens": "*i32", "ring": "*i32", "free_stack": "*i32", "alloc_state": "*i32",
       "slot_oom": "*i8", "slot_pos": "*i32", "slot_flag": "*i8", "dec": "*i8", "ev": "*i8", "base": "*i8",
       "uses_thr": "*i8", "thr": "*fp64", "logits": "*fp32", "logits_in": "*fp32", "part_o": "*fp32",
       "part_ml": "*fp32", "evict_prev": "*i8", "ibuf": "*i32", "thr_slot": "*fp64", "uses": "*i8", "out": "*i64",
       "inc": "*i32"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def registers(fn, consts: dict, warps: int = 4, stages: int = 1) -> str:
    sig, cx = {}, {}
    for i, a in enumerate(fn.arg_names):
        if a in consts:
            sig[a], cx[(i,)] = "constexpr", consts[a]
        else:
            sig[a] = "i32" if a in INTS else "fp32" if a in FLOATS else PTR.get(a, "*bf16")
    try:
        k = triton.compile(ASTSource(fn, sig, cx), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": warps, "num_stages": stages})
    except Exception as e:  # noqa: BLE001 - report and go on
        return f"COMPILE ERROR {e!r}"[:2000]
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(k.asm["cubin"])
    out = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", f.name], capture_output=True, text=True).stdout
    return next((ln.strip().split()[0] for ln in out.splitlines() if "REG:" in ln), out[-300:])


def main() -> None:
    print("triton", triton.__version__)
    for glu in (True, False):  # the 1.5B gate/up (pairs) and LM head plans, 3-D accumulator vs red
        for bn, bk, w, st in ((16, 512, 4, 3), (8, 1024, 8, 1), (32, 256, 4, 3), (16, 1024, 8, 3)):
            for dot in (0, 2):
                c = dict(M_PAD=1, BLOCK_N=bn, BLOCK_K=bk, SPLIT_K=1, NORM=True, HAS_BIAS=False, HAS_RES=False,
                         GLU=glu, OUT_F32=not glu, IEEE=False, ACCURATE_EXP=True, DOT=dot, PAIR=glu, PDL=True)
                print("gemv", "gate_up" if glu else "lm_head", (bn, bk, w, st), "red" if dot else "3-D",
                      registers(gemv_kernel, c, w, st))
    print("gemv tl.dot 16 rows", registers(gemv_kernel, dict(
        M_PAD=16, BLOCK_N=32, BLOCK_K=128, SPLIT_K=2, NORM=True, HAS_BIAS=False, HAS_RES=True, GLU=False,
        OUT_F32=False, IEEE=False, ACCURATE_EXP=True, DOT=1, PAIR=False, PDL=True), 4, 3))
    for split, bor, dec, lin in ((1, False, False, False), (2, True, True, False), (1, False, True, True)):
        print("qkv_store", dict(split=split, borrowed=bor, decide=dec, logits_in=lin), registers(qkv_store_kernel, dict(
            M_PAD=1, BLOCK_N=8, BLOCK_K=1024, SPLIT_K=split, HAS_BIAS=True, IEEE=False, DOT=0, D=128, BLOCK_D=128,
            QK_NORM=bor, BORROWED=bor, DECIDE=dec, LOGITS_IN=lin, PAGE=16, PDL=True), 8))
    for fuse, bal in ((True, False), (True, True), (False, False)):
        print("attention", dict(fuse_reduce=fuse, balanced=bal), registers(decode_attention_kernel, dict(
            PAGE=16, G_PAD=16, BLOCK_N=64, BLOCK_D=128, SPLIT=True, IEEE=False, BALANCE=bal, H_PAD=2, FUSE=fuse,
            BLOCK_S=64, PDL=True)))
    print("reduce", registers(decode_reduce_kernel, dict(BLOCK_S=64, BLOCK_D=128, BALANCE=False, H_PAD=2, BLOCK_N=64,
                                                          PDL=True)))
    print("qkv_rope", registers(qkv_rope_kernel, dict(D=128, BLOCK_D=128, QK_NORM=True, BORROWED=True, DECIDE=True,
                                                      LOGITS_IN=False, PDL=True)))
    print("store", registers(store_decode_kv_kernel, dict(PAGE=16, BLOCK_D=128, PDL=True)))
    print("step_inputs", registers(step_inputs_kernel, dict(BLOCK_H=2, BLOCK=64), 1))
    print("slot_stats", registers(slot_stats_kernel, dict(PAGE=16, BLOCK=64), 1))


if __name__ == "__main__":
    main()
