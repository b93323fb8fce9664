"""`budgetllm ...` commands: generate, cache, policy, calibrate, retrofit, eval, serve, bench."""

from __future__ import annotations

import argparse
import importlib
import sys


def _generate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from budgetllm import LLM, BudgetLLMError, render_usage_table

    console = Console()
    try:
        policy = None
        if args.policy:
            from budgetllm.policy import load_policy

            policy = load_policy(args.policy)
        llm = LLM.from_pretrained(args.model, compression=args.compression, device=args.device, backend=args.backend,
                                  adapter=args.adapter, policy=policy)
        opts = dict(max_tokens=args.max_tokens, thinking_budget=args.thinking_budget, temperature=args.temperature,
                    seed=args.seed, reasoning_effort=args.reasoning_effort, policy_tier=args.tier)
        if not args.policy:
            opts["compression"] = args.compression
        final = None
        for event in llm.stream(args.prompt, **opts):
            if event.kind == "reasoning":
                console.print(event.text, end="", style="dim italic", markup=False, highlight=False)
            elif event.kind == "text":
                console.print(event.text, end="", markup=False, highlight=False)
            elif event.kind == "done":
                final = event.generation
        console.print()
        console.print(render_usage_table(final.usage, title=f"{llm.model_name} · {llm.backend.name} backend"))
        return 0
    except BudgetLLMError as e:
        console.print(f"[red]error:[/red] {e}")
        return 2


def _add_generate(sub) -> None:
    from budgetllm.options import EFFORT_LEVELS

    p = sub.add_parser("generate", help="generate an answer with a compressed KV cache and print its accounting")
    p.add_argument("prompt")
    p.add_argument("--model", default=None, help="HF id, local dir or .gguf (default: embedded SmolLM2-135M)")
    p.add_argument("--compression", type=float, default=8.0, help="KV compression ratio (1 = dense)")
    p.add_argument("--thinking-budget", type=int, default=None, help="max reasoning tokens (thinking block)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--reasoning-effort", default=None, choices=EFFORT_LEVELS)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--policy", default=None, help="a policy file (YAML/TOML) that chooses budgets per call")
    p.add_argument("--tier", default=None, help="a named tier of the policy file")
    p.add_argument("--device", default=None)
    p.add_argument("--backend", default=None, choices=["reference", "paged"])
    p.add_argument("--adapter", default=None, help="a budgetllm DMS adapter file laid over the model")
    p.set_defaults(func=_generate)


def _cache(args: argparse.Namespace) -> int:
    from budgetllm.models import weights_cache as wc

    if args.action == "clear":
        freed = wc.clear()
        print(f"removed the converted-weights cache under {wc.weights_root()} ({freed / 2**20:.0f} MiB)")
        return 0
    entries = wc.list_entries()
    print(f"cache directory: {wc.cache_root()} (set ${wc.CACHE_ENV} to move it)")
    for e in entries:
        state = "ok" if e.problem is None else f"will be rebuilt: {e.problem}"
        print(f"  {e.path.name}  {e.bytes / 2**20:.0f} MiB  {state}" + (f"\n    from {e.source}" if e.source else ""))
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {sum(e.bytes for e in entries) / 2**20:.0f} MiB")
    return 0


def _add_cache(sub) -> None:
    p = sub.add_parser("cache", help="the converted-weights cache (GGUF files de-quantised once): info or clear")
    p.add_argument("action", choices=["info", "clear"])
    p.set_defaults(func=_cache)


# Subcommands owned by other packages: (module, function that adds the subparser).
_PLUGINS = [
    ("budgetllm.policy.cli", "add_policy_subcommands"),
    ("budgetllm.calibrate", "add_calibrate_subcommand"),
    ("budgetllm.dms.cli", "add_retrofit_subcommand"),
    ("budgetllm.dms.cli", "add_eval_subcommand"),
    ("budgetllm.dms.cli", "add_calibrate_thresholds_subcommand"),
    ("budgetllm.dms.traces", "add_traces_subcommand"),
    ("budgetllm.server", "add_serve_subcommand"),
    ("budgetllm.benchmarks.cli", "add_bench_subcommand"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="budgetllm", description="Cheap long-thinking LLMs with DMS KV compression")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_cache(sub)
    for module, func in _PLUGINS:
        try:
            add = getattr(importlib.import_module(module), func)
        except (ImportError, AttributeError):
            continue  # an optional part (e.g. the server extra) is not installed
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
