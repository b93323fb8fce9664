"""Load time of the embedded model: de-quantising the GGUF (first load, builds the weights cache)
against reading the cache (every later load), in one process, after the imports.

    python bench/load_time.py [--device cpu] [--out bench/results/load-time-cpu.json]

Uses a fresh cache directory (``$BUDGETLLM_CACHE`` is set to a temporary one), so the first load
really builds the cache. Records the machine's load average: on a shared machine the times move
with it.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=2, help="cached loads to time")
    a = ap.parse_args(argv)
    os.environ["BUDGETLLM_CACHE"] = tempfile.mkdtemp(prefix="budgetllm-load-time-")
    t0 = time.perf_counter()
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401  (imports are timed apart)

    from budgetllm.models import load_model

    res = {"device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
           "torch_threads_at_start": torch.get_num_threads(), "imports_s": round(time.perf_counter() - t0, 2),
           "load_average_before": os.getloadavg()}
    t = time.perf_counter()
    load_model(None, device=a.device, progress=False, cache=False)
    res["direct_gguf_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    load_model(None, device=a.device, progress=False)
    res["first_load_building_cache_s"] = round(time.perf_counter() - t, 2)
    res["cached_load_s"] = []
    for _ in range(a.repeats):
        t = time.perf_counter()
        load_model(None, device=a.device, progress=False)
        res["cached_load_s"].append(round(time.perf_counter() - t, 2))
    res["load_average_after"] = os.getloadavg()
    import shutil

    shutil.rmtree(os.environ["BUDGETLLM_CACHE"], ignore_errors=True)
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
