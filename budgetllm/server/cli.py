"""``budgetllm serve``: argparse wiring and ``run_server`` (uvicorn, one process, one engine).

``--ray --replicas N`` hands the same settings to the Ray Serve deployment in
``integrations/ray/budgetllm_ray`` (one engine per replica behind Ray Serve's router).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from budgetllm.server.app import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger("budgetllm.server")

API_KEY_ENV = "BUDGETLLM_API_KEY"  # an env var keeps the key out of `ps` listings


def run_server(
    llm: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    policy: Any = None,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    cors_origins: list[str] | None = None,
    served_model_name: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``llm`` over HTTP until interrupted (Ctrl-C or SIGTERM: uvicorn shuts down cleanly)."""
    import uvicorn

    from budgetllm.server.app import create_app

    app = create_app(llm, policy=policy, api_key=api_key, max_request_bytes=max_request_bytes,
                     cors_origins=cors_origins, served_model_name=served_model_name)
    # One worker process: the engine holds the model and the KV pool; scale out with --ray.
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=10)


def add_serve_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API",
        description="Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/models, "
        "/health, /metrics). Bind to 127.0.0.1 unless you set --api-key.",
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", default=None, help="HF id, local dir or .gguf path (default: the embedded SmolLM2-135M)")
    m.add_argument("--policy", default=None, metavar="FILE", help="budget policy file (YAML or TOML)")
    m.add_argument("--compression", type=float, default=8.0, help="default KV compression ratio (1 = dense)")
    m.add_argument("--backend", default=None, choices=["reference", "paged"], help="engine backend (default: auto)")
    m.add_argument("--device", default=None, help="torch device, e.g. cuda:0 or cpu (default: auto)")
    m.add_argument("--dtype", default=None, help="e.g. bfloat16, float16, float32 (default: auto)")
    m.add_argument("--served-model-name", default=None, help="model name in responses (default: the model's)")
    h = p.add_argument_group("http")
    h.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    h.add_argument("--port", type=int, default=8000)
    h.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                   help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else no auth)")
    h.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES,
                   help="larger request bodies get 413")
    h.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="allow browser requests from ORIGIN (repeatable; CORS is off by default)")
    h.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    r = p.add_argument_group("scale-out (Ray Serve; needs budgetllm[ray])")
    r.add_argument("--ray", action="store_true", help="run replicas on a Ray cluster behind Ray Serve's router")
    r.add_argument("--replicas", type=int, default=1, help="engine replicas (each loads the model once)")
    r.add_argument("--ray-address", default=None, help="Ray cluster to join (default: $RAY_ADDRESS, else a local one)")
    r.add_argument("--gpus-per-replica", type=float, default=None,
                   help="GPUs each replica reserves (default: 1 when the cluster has GPUs, else 0)")
    r.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.set_defaults(func=serve_command)
    return p


def _check_args(args: argparse.Namespace) -> str | None:
    if not 0 < args.port < 65536:
        return f"--port must be between 1 and 65535, got {args.port}"
    if args.max_request_bytes < 1024:
        return f"--max-request-bytes must be at least 1024 (a minimal chat request), got {args.max_request_bytes}"
    if args.replicas < 1:
        return f"--replicas must be at least 1, got {args.replicas}"
    from budgetllm.errors import InvalidRequestError
    from budgetllm.options import check_option

    try:
        check_option("compression", args.compression)  # the bounds of budgetllm.options.CallOptions
    except InvalidRequestError as e:
        return f"--{e} (a ratio, 1 = dense)"
    if args.policy and not Path(args.policy).is_file():
        return f"--policy {args.policy}: no such file"
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("serving on %s without --api-key: anyone who reaches this address can use the model", args.host)
    return None


def import_ray_integration() -> Any:
    """``budgetllm_ray``: installed with the wheel, or found in a source checkout's integrations/ray."""
    try:
        import budgetllm_ray
    except ImportError:
        src = Path(__file__).resolve().parents[2] / "integrations" / "ray"
        if not (src / "budgetllm_ray").is_dir():
            raise
        sys.path.insert(0, str(src))
        # Ray workers are started from this process's environment: let them import it too.
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        import budgetllm_ray
    return budgetllm_ray


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _check_args(args)
    if problem:
        print(f"budgetllm serve: {problem}", file=sys.stderr)
        return 2
    if args.ray:
        try:
            import ray.serve  # noqa: F401  (a bare namespace "ray" dir on sys.path is not Ray)

            ray_integration = import_ray_integration()
        except ImportError as e:
            print(f"budgetllm serve --ray needs Ray Serve: pip install 'budgetllm[ray]' ({e})", file=sys.stderr)
            return 2
        ray_integration.serve_replicas(
            model=args.model, policy_file=args.policy, compression=args.compression, backend=args.backend,
            device=args.device, dtype=args.dtype, served_model_name=args.served_model_name,
            api_key=args.api_key, max_request_bytes=args.max_request_bytes, cors_origins=args.cors_origin,
            replicas=args.replicas, num_gpus=args.gpus_per_replica, num_cpus=args.cpus_per_replica,
            host=args.host, port=args.port, address=args.ray_address,
        )
        return 0

    from budgetllm import LLM  # imports torch: only here, not when the module is imported
    from budgetllm.policy import load_policy

    policy = load_policy(args.policy) if args.policy else None
    llm = LLM.from_pretrained(args.model, compression=args.compression, backend=args.backend,
                              device=args.device, dtype=args.dtype, policy=policy)
    log.info("serving %s on http://%s:%d (max context %d)", llm.model_name, args.host, args.port, llm.max_context)
    run_server(llm, host=args.host, port=args.port, policy=policy, api_key=args.api_key,
               max_request_bytes=args.max_request_bytes, cors_origins=args.cors_origin,
               served_model_name=args.served_model_name, log_level=args.log_level)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m budgetllm.server serve ...`` (the same command as ``budgetllm serve``)."""
    parser = argparse.ArgumentParser(prog="python -m budgetllm.server")
    sub = parser.add_subparsers(dest="command", required=True)
    add_serve_subcommand(sub)
    args = parser.parse_args(argv)
    return args.func(args)
