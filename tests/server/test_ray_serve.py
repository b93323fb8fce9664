"""Scale-out: 2 CPU replicas of a tiny model behind Ray Serve's router, on a local Ray cluster."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import httpx
import openai
import pytest
from srv_live import free_port

from budgetllm.server.cli import add_serve_subcommand, import_ray_integration

RAY_SRC = Path(__file__).resolve().parents[2] / "integrations" / "ray"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="budgetllm")
    add_serve_subcommand(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_serve_ray_command_passes_its_settings(monkeypatch):
    """`budgetllm serve --ray --replicas N` hands every setting to the Ray deployment (no Ray started)."""
    pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'budgetllm[ray]')")
    seen: dict = {}
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_ray_integration may extend both
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    ray_integration = import_ray_integration()
    monkeypatch.setattr(ray_integration, "serve_replicas", lambda **kw: seen.update(kw))
    args = parse(["serve", "--ray", "--replicas", "3", "--model", "m", "--policy", __file__, "--port", "8123",
                  "--gpus-per-replica", "1", "--api-key", "k", "--cors-origin", "https://a"])
    assert args.func(args) == 0
    assert seen["replicas"] == 3 and seen["num_gpus"] == 1.0 and seen["model"] == "m" and seen["port"] == 8123
    assert seen["policy_file"] == __file__ and seen["api_key"] == "k" and seen["cors_origins"] == ["https://a"]
    assert seen["host"] == "127.0.0.1" and seen["address"] is None


@pytest.mark.parametrize(("argv", "problem"), [
    (["serve", "--replicas", "0"], "--replicas"),
    (["serve", "--compression", "0.5"], "--compression"),
    (["serve", "--policy", "/no/such/file.yaml"], "no such file"),
    (["serve", "--port", "70000"], "--port"),
])
def test_serve_command_rejects_bad_arguments(argv, problem, capsys):
    args = parse(argv)
    assert args.func(args) == 2
    assert problem in capsys.readouterr().err


def test_two_cpu_replicas_behind_ray_serve(tiny_dir, monkeypatch):
    # ray.serve, not ray: with integrations/ on sys.path, integrations/ray imports as a namespace "ray".
    serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'budgetllm[ray]')")
    import ray
    model_dir = str(tiny_dir("llama"))
    # Replicas are Ray worker processes: they import budgetllm (installed) and find the model path.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(RAY_SRC), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(RAY_SRC))
    from budgetllm_ray import serve_replicas

    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        # 0.5 CPU each: two replicas fit the 2 logical CPUs next to Serve's controller and proxy.
        serve_replicas(model=model_dir, backend="reference", device="cpu", replicas=2, num_gpus=0, num_cpus=0.5, served_model_name="tiny",
                       host="127.0.0.1", port=port, blocking=False, api_key="sk-ray")
        url = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Bearer sk-ray"}
        pids = {httpx.get(url + "/health", timeout=30).json()["pid"] for _ in range(40)}
        assert len(pids) == 2, f"requests reached {len(pids)} replica(s), expected 2"

        c = openai.OpenAI(base_url=url + "/v1", api_key="sk-ray", max_retries=0, timeout=120)
        resp = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                         extra_body={"compression": 2})
        assert resp.usage.completion_tokens == 4 and resp.usage.model_extra["kv_memory"]["logical_bytes"] > 0
        chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "yo"}],
                                                max_tokens=4, stream=True, stream_options={"include_usage": True}))
        assert chunks[-1].usage.completion_tokens == 4
        bad = httpx.post(url + "/v1/chat/completions", json={"messages": [], "max_tokens": -1}, headers=auth, timeout=30)
        assert bad.status_code == 400 and bad.json()["error"]["param"]
        assert httpx.get(url + "/v1/models", timeout=30).status_code == 401

        from budgetllm.server.client import RemoteLLM

        gen = RemoteLLM(url, api_key="sk-ray", timeout=120).generate("hello", max_tokens=3)
        assert gen.usage.output_tokens == 3 and len(gen.token_ids) == 3
    finally:
        serve.shutdown()
        ray.shutdown()
        sys.modules.pop("budgetllm_ray", None)
