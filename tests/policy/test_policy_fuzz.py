"""Fuzzed policy files never crash the loader: a valid policy or a PolicyFileError, nothing else."""

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_helpers import assert_invariants, ctx, toml_dumps

from budgetllm.errors import InvalidRequestError, PolicyFileError
from budgetllm.policy import escalate_call, load_policy_bytes, plan_call

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Field names from the schema, a few misspellings, and values of every kind.
NAMES = ["version", "defaults", "tiers", "tools", "steps", "effort", "limits", "load", "pareto", "escalation",
         "default_tier", "default_effort", "model", "thinking_budget", "answer_reserve", "max_tokens",
         "compression", "width", "temperature", "top_p", "max_peak_kv_bytes", "max_peak_kv_tokens",
         "min_thinking_budget", "max_thinking_budget", "compressions", "free_below", "min_compression",
         "kv_bytes_per_token", "window", "low", "high", "medium", "fast", "thinkng_budget", ">=3", "calibration"]  # fmt: skip
scalars = (
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=True)
    | st.sampled_from(NAMES + ["2GiB", "max_accuracy", "", "4"]) | st.text(max_size=8)
)  # fmt: skip
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=30,
)


def _load(data: bytes, fmt: str):
    try:
        return load_policy_bytes(data, fmt, "fuzz")
    except PolicyFileError as exc:
        message = str(exc)
        assert message.startswith("fuzz") and "Fix:" in message and "internal error" not in message, message
        return None


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["yaml", "toml"]))
def test_random_bytes(data, fmt):
    _load(data, fmt)


@FUZZ
@given(st.text(max_size=300), st.sampled_from(["yaml", "toml"]))
def test_random_text(text, fmt):
    _load(text.encode("utf-8", "surrogatepass"), fmt)


@FUZZ
@given(documents)
def test_random_yaml_structures(document):
    text = yaml.safe_dump(document, allow_unicode=True)
    _check_plans(_load(text.encode(), "yaml"))


@FUZZ
@given(st.dictionaries(st.sampled_from(NAMES), documents, max_size=6))
def test_random_toml_structures(document):
    try:
        text = toml_dumps(document)
    except (TypeError, ValueError):
        return
    _check_plans(_load(text.encode(), "toml"))


def _check_plans(policy) -> None:
    if policy is None:
        return
    for context in (ctx(10), ctx(5000, reasoning_effort="high", free_kv_bytes=1, total_kv_bytes=10)):
        try:
            assert_invariants(plan_call(policy, context))
        except InvalidRequestError:
            pass  # e.g. the file's default tier is unknown at run time: a request error, not a crash


# Nearly valid files: right names, values around the valid ranges, so many of them load.
settings_docs = st.fixed_dictionaries(
    {},
    optional={
        "thinking_budget": st.integers(-2, 40_000),
        "answer_reserve": st.integers(-1, 3000),
        "compression": st.sampled_from([0.5, 1, 2, 4, 8, 16]),
        "width": st.integers(0, 8),
        "effort": st.sampled_from(["none", "low", "medium", "high", "xhigh", "hgih"]),
    },
)
limit_docs = st.fixed_dictionaries(
    {},
    optional={
        "max_peak_kv_bytes": st.integers(1, 2**32) | st.sampled_from(["8MiB", "64MiB", "1GiB"]),
        "max_thinking_budget": st.integers(0, 20_000),
        "max_width": st.integers(1, 4),
        "max_compression": st.sampled_from([1, 2, 4, 8]),
        "max_tokens": st.integers(1, 20_000),
    },
)
near_valid = st.fixed_dictionaries(
    {"version": st.just(1), "model": st.just({"kv_bytes_per_token": 23040})},
    optional={
        "defaults": settings_docs,
        "tiers": st.dictionaries(st.sampled_from(["fast", "deep"]), settings_docs, max_size=2),
        "limits": limit_docs,
        "load": st.lists(
            st.fixed_dictionaries(
                {"free_below": st.floats(0.01, 1.0), "min_compression": st.sampled_from([1, 2, 4, 8])}
            ),
            max_size=2,
        ),
        "escalation": st.lists(
            st.fixed_dictionaries({"thinking_budget_factor": st.sampled_from([1, 2, 4])}), max_size=2
        ),
    },
)


@FUZZ
@given(
    near_valid,
    st.integers(1, 9000),
    st.sampled_from([None, "low", "xhigh"]),
    st.sampled_from([None, "fast", "deep"]),
)
def test_loaded_files_never_break_their_caps(document, prompt, effort, tier):
    policy = _load(yaml.safe_dump(document).encode(), "yaml")
    if policy is None:
        return
    limits = document.get("limits", {})
    try:
        plan = plan_call(policy, ctx(prompt, reasoning_effort=effort, tier=tier, thinking_budget=None))
    except InvalidRequestError:
        return  # an unknown tier for this file
    assert_invariants(plan)
    if "max_thinking_budget" in limits:
        assert (plan.thinking_budget or 0) <= limits["max_thinking_budget"]
    if "max_width" in limits:
        assert plan.width <= limits["max_width"]
    if "max_compression" in limits:
        assert plan.compression <= limits["max_compression"]
    if "max_tokens" in limits:
        assert plan.max_tokens <= limits["max_tokens"]
    if "max_peak_kv_bytes" in limits and not plan.reasons["memory"].startswith("cannot fit"):
        from budgetllm.policy import parse_size

        assert plan.peak_kv_bytes <= parse_size(limits["max_peak_kv_bytes"])
    retry = escalate_call(policy, ctx(prompt), plan, 1)
    if retry is not None:
        assert_invariants(retry)
        if "max_thinking_budget" in limits:
            assert (retry.thinking_budget or 0) <= limits["max_thinking_budget"]
