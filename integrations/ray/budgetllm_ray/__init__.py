"""budgetllm on Ray Serve: one engine per replica (one replica per GPU) behind Ray Serve's router.

    budgetllm serve --ray --replicas 4 --model Qwen/Qwen3-8B      # or, from Python:
    from budgetllm_ray import build_app, serve_replicas

Every replica runs ``budgetllm.server.create_app`` around its own LLM, so a replica answers exactly
like a single ``budgetllm serve`` process (same routes, errors, metrics). Scaling out is Ray's job:
add nodes to the Ray cluster and raise ``--replicas``.
"""

from budgetllm_ray.deployment import build_app, replica_config, serve_replicas

__all__ = ["build_app", "replica_config", "serve_replicas"]
