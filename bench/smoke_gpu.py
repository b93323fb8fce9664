"""A quick GPU smoke run: the environment, the baselines and the reference backend on CUDA."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from budgetllm.benchmarks.baselines import (  # noqa: E402
    GraphedDenseStep,
    hf_generate_decode_rate,
    measured_bandwidth,
    weight_bytes,
)


def main() -> None:
    print("card", torch.cuda.get_device_name(0), "bandwidth GB/s", round(measured_bandwidth() / 1e9))
    from budgetllm import LLM
    from budgetllm.models.testing import make_tiny_checkpoint, random_model

    try:
        d = make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "m", "qwen3", "borrowed")
        llm = LLM.from_pretrained(str(d), backend="reference", device="cuda", dtype=torch.float32, progress=False)
        out = llm.generate("hello there", max_tokens=8, compression=8)
        print("reference on cuda:", out.usage.output_tokens, out.usage.kv.compression_achieved)
    except Exception as e:  # noqa: BLE001 - the embedded tokenizer may be missing on this machine
        print("reference on cuda skipped:", e)
    t = time.time()
    m = random_model("qwen2.5-1.5b")
    print("random 1.5B built in", round(time.time() - t, 1), "s; weight bytes", weight_bytes(m.hf_model))
    for b, c in ((1, 1024), (16, 8192), (16, 32768)):
        step = GraphedDenseStep(m.hf_model, b, c)
        print(f"graphed dense step b={b} ctx={c}: {step.time_step_ms():.2f} ms")
        del step
        torch.cuda.empty_cache()
    print("hf generate b=1 1K:", hf_generate_decode_rate(m.hf_model, 1, 1024, new_tokens=8))


if __name__ == "__main__":
    main()
