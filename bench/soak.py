"""Soak run: many concurrent streaming clients against an in-process server, for a long time.

    python bench/soak.py                                   # GPU: 64 clients, 10 minutes, embedded model
    python bench/soak.py --model Qwen/Qwen3-8B --clients 64 --seconds 600
    python bench/soak.py --tiny --clients 4 --seconds 20 --device cpu   # a quick trial on CPU

Each client streams requests back to back until the time is up, each with a random prompt length,
max_tokens, compression (1/2/4/8), thinking budget (none, 0 or 16..256) and, one time in five, a
cancellation (the client closes the stream after a few chunks). Reported, and written to
``bench/results/soak-<card>.json``: requests served / cancelled / failed (any non-200, SSE error event
or client exception; the first few are kept), p50/p99 time to first token, host RSS and device
memory at the start (after a warm-up) and the end, sampled along the way, and the KV pages free at
the end once every request is over (``pages_leaked`` must be 0). It is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = "the sea ships sail wind harbour light storm map star north current tide anchor rope".split()


def memory() -> dict:
    import psutil
    import torch

    out = {"host_rss_bytes": psutil.Process().memory_info().rss}
    if torch.cuda.is_available():
        out["device_allocated_bytes"] = torch.cuda.memory_allocated()
        out["device_reserved_bytes"] = torch.cuda.memory_reserved()
    return out


class InProcessServer:
    """uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> InProcessServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start in 30 s")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def random_body(rng: random.Random, max_prompt_words: int, max_tokens: int) -> dict:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, max_prompt_words)))
    body = {"messages": [{"role": "user", "content": f"Tell me about {words}."}], "stream": True,
            "max_tokens": rng.randint(1, max_tokens), "compression": rng.choice([1, 2, 4, 8]),
            "temperature": rng.choice([0, 0.7]), "seed": rng.randint(0, 2**31)}
    budget = rng.choice([None, 0, rng.randint(16, 256)])
    if budget is not None:
        body["thinking_budget"] = budget
    return body


async def client(url: str, deadline: float, rng: random.Random, stats: dict, args) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600, connect=30)) as http:
        while time.monotonic() < deadline:
            body = random_body(rng, args.max_prompt_words, args.max_tokens)
            cancel_after = rng.randint(1, 8) if rng.random() < args.cancel_rate else None
            t0, chunks, first = time.monotonic(), 0, None
            try:
                async with http.stream("POST", "/v1/chat/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                    async for line in r.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        if '"error"' in line:
                            raise RuntimeError(f"SSE error: {line[:300]}")
                        if first is None and ('"content"' in line or '"reasoning_content"' in line):
                            first = time.monotonic() - t0
                        chunks += 1
                        if cancel_after is not None and chunks >= cancel_after:
                            break
                if first is not None:
                    stats["ttft"].append(first)
                stats["cancelled" if cancel_after is not None and chunks >= cancel_after else "served"] += 1
            except Exception as e:  # noqa: BLE001 - every failure is counted and a few are kept
                stats["errors"] += 1
                if len(stats["error_samples"]) < 10:
                    stats["error_samples"].append(f"{type(e).__name__}: {e}"[:400])


async def run_clients(url: str, args) -> dict:
    stats = {"served": 0, "cancelled": 0, "errors": 0, "error_samples": [], "ttft": [], "memory_samples": []}
    deadline = time.monotonic() + args.seconds

    async def sampler() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(10, args.seconds / 4))
            stats["memory_samples"].append({"t": round(args.seconds - (deadline - time.monotonic()), 1), **memory()})

    rngs = [random.Random(args.seed * 1000 + i) for i in range(args.clients)]
    await asyncio.gather(sampler(), *(client(url, deadline, rngs[i], stats, args) for i in range(args.clients)))
    return stats


def pages_at_end(llm, timeout: float = 60) -> dict:
    """Wait until the engine is idle, drop parked conversations, and read the pool."""
    backend = llm.backend
    if hasattr(backend, "clear_prefix_cache"):
        backend.clear_prefix_cache()
    deadline = time.monotonic() + timeout
    stats = llm.pool_stats()
    while time.monotonic() < deadline and (stats.get("active") or stats.get("queued") or stats.get("parked")):
        time.sleep(0.2)
        stats = llm.pool_stats()
    out = {k: stats.get(k) for k in ("pages_total", "pages_free", "active", "queued", "parked")}
    if "pages_total" in stats:
        out["pages_leaked"] = stats["pages_total"] - stats["pages_free"]
    if hasattr(backend, "device_free_pages_now"):
        out["device_pages_free"] = backend.device_free_pages_now()
    return out


def load(args):
    from budgetllm import LLM

    model = args.model
    if args.tiny:
        from budgetllm.models.testing import make_tiny_checkpoint

        model = str(make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny", "qwen3", "borrowed"))
    opts = {"max_seqs": args.clients} if (args.backend or "paged") == "paged" and args.device != "cpu" else {}
    return LLM.from_pretrained(model, device=args.device, backend=args.backend, progress=False, **opts)


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    return statistics.quantiles(xs, n=100, method="inclusive")[int(q) - 1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="HF id, local dir or .gguf (default: the embedded model)")
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead (for a quick trial)")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, choices=["reference", "paged"])
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--max-prompt-words", type=int, default=400)
    p.add_argument("--cancel-rate", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="default: bench/results/soak-<card>.json")
    args = p.parse_args(argv)

    import torch

    from budgetllm.server.app import create_app

    card = torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    llm = load(args)
    with InProcessServer(create_app(llm)) as srv:
        warm = argparse.Namespace(**{**vars(args), "clients": 2, "seconds": min(5.0, args.seconds / 4)})
        asyncio.run(run_clients(srv.url, warm))  # compile kernels, fill caches: not part of the numbers
        start = memory()
        t0 = time.monotonic()
        stats = asyncio.run(run_clients(srv.url, args))
        wall = time.monotonic() - t0
        end_pages = pages_at_end(llm)
        end = memory()
    ttft = stats.pop("ttft")
    result = {
        "card": card, "model": llm.model_name, "backend": llm.backend.name, "clients": args.clients,
        "seconds": round(wall, 1), "requests_served": stats["served"], "requests_cancelled": stats["cancelled"],
        "errors": stats["errors"], "error_samples": stats["error_samples"],
        "ttft_p50_s": percentile(ttft, 50), "ttft_p99_s": percentile(ttft, 99), "ttft_samples": len(ttft),
        "memory_start": start, "memory_end": end, "memory_samples": stats["memory_samples"], "pages_end": end_pages,
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "pid": os.getpid(),
    }
    llm.close()
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"soak-{card.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("memory_samples", "settings")}, indent=1))
    print(f"wrote {out}")
    leaked = end_pages.get("pages_leaked") or 0
    return 0 if stats["errors"] == 0 and leaked == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
