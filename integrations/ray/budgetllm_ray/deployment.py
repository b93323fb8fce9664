"""The Ray Serve deployment: ``create_app`` per replica, and the ``budgetllm serve --ray`` driver."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from budgetllm.server.app import DEFAULT_MAX_REQUEST_BYTES

log = logging.getLogger("budgetllm.ray")

APP_NAME = "budgetllm"
# Ray Serve's own default (5) would queue a batching engine's requests in the router instead
# of letting the engine's scheduler admit them against free KV memory.
DEFAULT_MAX_ONGOING_REQUESTS = 64


def replica_config(
    model: str | None = None,
    *,
    policy_file: str | None = None,
    compression: float = 8.0,
    backend: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    served_model_name: str | None = None,
    api_key: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    cors_origins: list[str] | None = None,
) -> dict[str, Any]:
    """What every replica needs to build its app. A plain dict on purpose: it is pickled to the
    replicas, which then need only ``budgetllm`` installed, not this package."""
    return {
        "model": model, "policy_file": policy_file, "compression": compression, "backend": backend,
        "device": device, "dtype": dtype, "served_model_name": served_model_name, "api_key": api_key,
        "max_request_bytes": max_request_bytes, "cors_origins": list(cors_origins) if cors_origins else None,
    }


def _asgi_builder(cfg: dict[str, Any]) -> Callable[[], Any]:
    """A function Ray Serve calls once on each replica, after placing it (and its GPU)."""

    def build_budgetllm_app() -> Any:
        # Imported on the replica: the driver never loads torch or the model.
        from budgetllm import LLM
        from budgetllm.policy import load_policy
        from budgetllm.server.app import create_app

        policy = load_policy(cfg["policy_file"]) if cfg["policy_file"] else None
        # device None: Ray sets CUDA_VISIBLE_DEVICES to this replica's GPU, so "cuda" is the right one.
        llm = LLM.from_pretrained(cfg["model"], compression=cfg["compression"], backend=cfg["backend"],
                                  device=cfg["device"], dtype=cfg["dtype"], policy=policy, progress=False)
        return create_app(llm, policy=policy, api_key=cfg["api_key"], max_request_bytes=cfg["max_request_bytes"],
                          cors_origins=cfg["cors_origins"], served_model_name=cfg["served_model_name"])

    return build_budgetllm_app


def build_app(
    cfg: dict[str, Any],
    *,
    replicas: int = 1,
    num_gpus: float = 0,
    num_cpus: float = 1.0,
    max_ongoing_requests: int = DEFAULT_MAX_ONGOING_REQUESTS,
) -> Any:
    """A Ray Serve application of ``replicas`` engines; run it with ``serve.run(app)``."""
    from ray import serve

    ingress = serve.ingress(_asgi_builder(cfg))()
    deployment = serve.deployment(
        ingress,
        name="BudgetLLM",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        max_ongoing_requests=max_ongoing_requests,
    )
    return deployment.bind()


def serve_replicas(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    replicas: int = 1,
    num_gpus: float | None = None,
    num_cpus: float = 1.0,
    blocking: bool = True,
    **config: Any,
) -> None:
    """Start (or join) a Ray cluster, deploy ``replicas`` engines, serve on host:port.

    address: a running cluster ("auto", "ray://head:10001"); None: $RAY_ADDRESS, else a new local one.
    num_gpus: per replica; None means 1 when the cluster has GPUs, else 0 (CPU replicas).
    blocking: wait until Ctrl-C / SIGTERM, then remove the application (and stop a local cluster).
    """
    import ray
    from ray import serve

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, configure_logging=False)
    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    cfg = replica_config(**config)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(cfg, replicas=replicas, num_gpus=num_gpus, num_cpus=num_cpus), name=APP_NAME,
              route_prefix="/")
    log.info("%d replica(s) of %s ready on http://%s:%d", replicas, cfg["model"] or "the embedded model", host, port)
    if not blocking:
        return

    def stop(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        if started_here and address is None:
            serve.shutdown()
            ray.shutdown()
        else:  # a shared cluster: remove only our application
            serve.delete(APP_NAME)
