"""``budgetllm policy check FILE`` and ``budgetllm policy explain FILE --prompt-tokens N``.

The command logic lives here as functions returning an exit code, so the top-level CLI only
wires them: ``add_policy_subcommands(subparsers)`` adds the ``policy`` command, whose parsed
``args.func(args)`` returns the exit code. Errors print the loader's message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from budgetllm.errors import BudgetLLMError, PolicyFileError
from budgetllm.policy.base import AgentBudget, CallContext, ModelProfile, RequestedLimits
from budgetllm.policy.cost import format_bytes, parse_size
from budgetllm.policy.fit import escalate_call, plan_call
from budgetllm.policy.loader import FilePolicy, load_policy

_FIELDS = ("thinking_budget", "answer_reserve", "compression", "max_tokens", "width", "temperature", "top_p")


def check_command(path: str) -> int:
    """Validate a policy file: 0 and a summary on stdout, or 1 and the problems on stderr."""
    try:
        policy = load_policy(path)
    except PolicyFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{path}: valid policy '{policy.chain.name}' ({_summary(policy)})")
    return 0


def _summary(policy: FilePolicy) -> str:
    doc = policy.document
    parts = ["pareto" if doc.pareto else "tiered"]
    for section in ("tiers", "tools", "steps"):
        names = list(getattr(doc, section))
        if names:
            more = f", ... ({len(names)} in all)" if len(names) > 12 else ""
            parts.append(f"{section}: {', '.join(names[:12])}{more}")
    if doc.load:
        parts.append(f"{len(doc.load)} load band(s)")
    if doc.escalation:
        parts.append(f"{len(doc.escalation)} escalation step(s)")
    return "; ".join(parts)


def explain_command(
    path: str,
    prompt_tokens: int,
    tier: str | None = None,
    effort: str | None = None,
    tool: str | None = None,
    step: str | int | None = None,
    free_kv_bytes: int | str | None = None,
    model_profile: ModelProfile | None = None,
    total_kv_bytes: int | str | None = None,
    requested: RequestedLimits | None = None,
    as_json: bool = False,
) -> int:
    """Print what the policy would decide for one call, and why. Returns the exit code."""
    try:
        policy = load_policy(path)
        if step is None or str(step).isdigit():
            step_number, step_name = int(step or 0), None
        else:
            step_number, step_name = 0, str(step)
        limits = replace(
            requested or RequestedLimits(),
            reasoning_effort=effort or (requested and requested.reasoning_effort),
        )
        context = CallContext(
            prompt_tokens=int(prompt_tokens),
            requested=limits,
            agent=AgentBudget(step=step_number, step_name=step_name),
            free_kv_bytes=None if free_kv_bytes is None else parse_size(free_kv_bytes),
            total_kv_bytes=None if total_kv_bytes is None else parse_size(total_kv_bytes),
            model=model_profile or policy.profile or ModelProfile(),
            tool_name=tool,
            tier=tier,
        )
        plan = plan_call(policy, context)  # what the engine would run: the policy's plan, fitted
        retries = []
        while len(retries) < 4 and (
            nxt := escalate_call(policy, context, retries[-1] if retries else plan, len(retries) + 1)
        ):
            retries.append(nxt)
    except (BudgetLLMError, ValueError) as exc:
        print(exc, file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"plan": plan.to_dict(), "escalation": [r.to_dict() for r in retries]}, indent=2))
        return 0
    model = context.model
    free = "unknown" if context.free_kv_bytes is None else format_bytes(context.free_kv_bytes)
    print(f"policy {policy.chain.name!r} from {path}")
    print(
        f"call: {prompt_tokens} prompt tokens; tier {tier or '-'}; effort {effort or '-'}; tool {tool or '-'}; "
        f"step {step if step is not None else '-'}; free KV {free}"
        + (f" of {format_bytes(context.total_kv_bytes)}" if context.total_kv_bytes else "")
    )
    per_token = (
        f"{format_bytes(model.kv_bytes_per_token)}/token"
        if model.kv_bytes_per_token
        else "KV bytes/token unknown"
    )
    print(f"model: {model.name}, {per_token}, window {model.window}, context {model.max_context}")
    print("decision:")
    for name in _FIELDS:
        value = getattr(plan, name)
        shown = "-" if value is None else (f"{value:g}" if isinstance(value, float) else str(value))
        print(f"  {name:<16}{shown:>8}   {plan.reasons.get(name, '')}")
    for key in sorted(set(plan.reasons) - set(_FIELDS)):
        print(f"  {key}: {plan.reasons[key]}")
    print(
        f"estimated worst case: peak KV {format_bytes(plan.peak_kv_bytes)}, KV read {format_bytes(plan.kv_bytes_read)}"
    )
    if plan.expected_accuracy is not None:
        print(f"expected accuracy: {plan.expected_accuracy:.3f}")
    for i, retry in enumerate(retries, start=1):
        print(
            f"if no answer is extracted, retry {i}: thinking_budget {retry.thinking_budget}, compression "
            f"{retry.compression:g}, width {retry.width}, peak KV {format_bytes(retry.peak_kv_bytes)}"
        )
    return 0


def add_policy_subcommands(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``policy check|explain``; the parsed namespace's ``func(args)`` returns the exit code."""
    policy = subparsers.add_parser("policy", help="check or explain a budget policy file")
    commands = policy.add_subparsers(dest="policy_command", required=True)
    check = commands.add_parser("check", help="validate a policy file (exit 0 when valid)")
    check.add_argument("file")
    check.set_defaults(func=lambda a: check_command(a.file))
    explain = commands.add_parser("explain", help="print what a policy would decide for one call, and why")
    explain.add_argument("file")
    explain.add_argument("--prompt-tokens", type=_count, required=True)
    for flag in ("--tier", "--effort", "--tool", "--step"):
        explain.add_argument(flag)
    explain.add_argument("--free-kv-bytes", help="free KV pool memory, e.g. 512MiB")
    explain.add_argument("--total-kv-bytes", help="total KV pool memory, e.g. 4GiB")
    explain.add_argument("--kv-bytes-per-token", type=_count, help="override the file's model section")
    explain.add_argument("--window", type=_count)
    explain.add_argument("--max-context", type=_positive)
    explain.add_argument("--thinking-budget", type=_call_option("thinking_budget", int), help="as if the caller requested it")
    explain.add_argument("--compression", type=_call_option("compression", float), help="as if the caller requested it")
    explain.add_argument("--max-tokens", type=_call_option("max_tokens", int), help="as if the caller requested it")
    explain.add_argument("--json", action="store_true", help="print the plan as JSON")
    explain.set_defaults(func=_run_explain)
    return policy


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**62:
        raise argparse.ArgumentTypeError(f"must be a count >= 0, got {text}")
    return value


def _positive(text: str) -> int:
    value = _count(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _call_option(name: str, kind: type):
    """An argparse type checking a per-call option against budgetllm.options.CallOptions."""

    def parse(text: str):
        from budgetllm.errors import InvalidRequestError
        from budgetllm.options import check_option

        try:
            return check_option(name, kind(text))
        except (InvalidRequestError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _run_explain(args: argparse.Namespace) -> int:
    profile = None
    if args.kv_bytes_per_token is not None or args.window is not None or args.max_context is not None:
        try:
            base = load_policy(args.file).profile or ModelProfile()
        except PolicyFileError as exc:
            print(exc, file=sys.stderr)
            return 1
        overrides = {
            "kv_bytes_per_token": args.kv_bytes_per_token,
            "window": args.window,
            "max_context": args.max_context,
        }
        profile = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    requested = RequestedLimits(
        thinking_budget=args.thinking_budget, compression=args.compression, max_tokens=args.max_tokens
    )
    return explain_command(
        args.file, args.prompt_tokens, args.tier, args.effort, args.tool, args.step,
        args.free_kv_bytes, profile, args.total_kv_bytes, requested, args.json,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m budgetllm.policy.cli policy check FILE``)."""
    parser = argparse.ArgumentParser(prog="budgetllm")
    add_policy_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
