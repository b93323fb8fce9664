"""Policy files: every example loads; malformed files give the documented one-line errors."""

import pytest
from policy_helpers import EXAMPLES, assert_invariants, ctx

from budgetllm.errors import BudgetLLMError, PolicyFileError
from budgetllm.policy import BudgetPolicy, load_policy, load_policy_bytes

EXAMPLE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".yml", ".toml"))


def test_there_are_examples_in_both_formats():
    assert {p.suffix for p in EXAMPLE_FILES} >= {".yaml", ".toml"} and len(EXAMPLE_FILES) >= 4


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_loads_and_plans(path):
    policy = load_policy(path)
    assert isinstance(policy, BudgetPolicy)
    for context in (
        ctx(10),
        ctx(3000, reasoning_effort="high"),
        ctx(500, free_kv_bytes=1, total_kv_bytes=100),
    ):
        assert_invariants(policy.plan(context))


def test_the_memory_cap_example_holds_its_cap_for_every_tier_tool_and_step():
    policy = load_policy(EXAMPLES / "memory_cap.yaml")
    for tier in ("fast", "standard", "deep"):
        for tool in (None, "web_search", "calculator"):
            for step, name in ((0, "plan"), (9, None)):
                for prompt in (1, 2000, 7000):
                    p = policy.plan(
                        ctx(
                            prompt,
                            tier=tier,
                            tool_name=tool,
                            step=step,
                            step_name=name,
                            reasoning_effort="xhigh",
                        )
                    )
                    assert p.peak_kv_bytes <= 64 * 2**20 or p.reasons["memory"].startswith("cannot fit")
                    assert (p.thinking_budget or 0) <= 8192 and p.width <= 2


def load_text(tmp_path, text, suffix=".yaml"):
    path = tmp_path / f"policy{suffix}"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return load_policy(path)


def error_of(tmp_path, text, suffix=".yaml") -> str:
    with pytest.raises(PolicyFileError) as info:
        load_text(tmp_path, text, suffix)
    assert isinstance(info.value, BudgetLLMError) and "Traceback" not in str(info.value)
    return str(info.value)


NEGATIVE = "version: 1\n# one\n# two\n# three\ntiers:\n  fast:\n    thinking_budget: -5\n"


def test_the_documented_message_for_a_negative_budget(tmp_path):
    assert error_of(tmp_path, NEGATIVE) == (
        f"{tmp_path / 'policy.yaml'}, line 7: tiers.fast.thinking_budget: must be >= 0 (got -5). "
        "Fix: use 0 to disable thinking or a positive token count."
    )


def test_the_same_mistake_in_toml_names_its_line(tmp_path):
    message = error_of(tmp_path, "version = 1\n\n[tiers.fast]\nthinking_budget = -5\n", ".toml")
    assert "line 4: tiers.fast.thinking_budget: must be >= 0 (got -5)" in message


@pytest.mark.parametrize(
    "text,suffix,expected",
    [
        ("version: 1\ndefaults:\n  thinking_budget: [1\n", ".yaml", "line 4: YAML syntax error"),
        ("version: 1\ntiers:\n  fast: {a: 1\n", ".yaml", "YAML syntax error"),
        ("version = 1\n[tiers\n", ".toml", "TOML syntax error"),
        (
            "version: 1\ndefaults:\n  thinkng_budget: 5\n",
            ".yaml",
            "line 3: defaults.thinkng_budget: unknown field 'thinkng_budget'. Fix: did you mean 'thinking_budget'?",
        ),
        (
            "version: 1\nlimts: {}\n",
            ".yaml",
            "line 2: limts: unknown field 'limts'. Fix: did you mean 'limits'?",
        ),
        (
            "version: 1\neffort:\n  hihg: {thinking_budget: 1}\n",
            ".yaml",
            "line 3: effort.hihg: unknown key 'hihg'. Fix: did you mean 'high'?",
        ),
        (
            "version: 1\ndefaults:\n  compression: '4'\n",
            ".yaml",
            "must be a number (got '4'). Fix: write 4 without quotes.",
        ),
        ("version: 1\ndefaults:\n  thinking_budget: 1.5\n", ".yaml", "must be a whole number (got 1.5)"),
        ("version: 1\ndefaults:\n  thinking_budget: true\n", ".yaml", "must be a whole number (got True)"),
        ("version: 1\ndefaults: [1, 2]\n", ".yaml", "line 2: defaults: must be a mapping of fields"),
        ("version: 2\n", ".yaml", "line 1: version: must be one of 1 (got 2)"),
        (
            "version: 1\ndefaults: {compression: 0.5}\n",
            ".yaml",
            "defaults.compression: must be >= 1 (got 0.5). Fix: use 1 for a dense cache",
        ),
        ("version: 1\ndefaults: {effort: hgih}\n", ".yaml", "did you mean 'high'?"),
        (
            "version: 1\nlimits: {max_peak_kv_bytes: 2 gigs}\n",
            ".yaml",
            "is not a size (got '2 gigs'). Fix: write bytes as an integer or with a unit",
        ),
        ("version: 1\nload:\n  - {free_below: 2}\n", ".yaml", "line 3: load[0].free_below: must be <= 1"),
        (
            "version: 1\nsteps:\n  '>5': {thinking_budget: 1}\n",
            ".yaml",
            "not a step range. Fix: write a step name, a number, or '>=N'",
        ),
        (
            "version: 1\ndefault_tier: fsat\ntiers: {fast: {}}\n",
            ".yaml",
            "line 2: default_tier: unknown tier 'fsat'. Fix: did you mean 'fast'?",
        ),
        ("version: 1\neffort:\n  low: {thinking_budget: 99999}\n", ".yaml", "budgets must not decrease"),
        (
            "version: 1\nlimits: {min_thinking_budget: 10, max_thinking_budget: 5}\n",
            ".yaml",
            "limits.min_thinking_budget: is above limits.max_thinking_budget",
        ),
        (
            "version: 1\ndefaults: {answer_reserve: 256}\nlimits: {max_tokens: 100}\n",
            ".yaml",
            "limits.max_tokens: 100 is below the answer reserve 256 of defaults",
        ),
        ("version: 1\ntiers: {a: {}}\ntiers: {b: {}}\n", ".yaml", "line 3: tiers: is given twice"),
        ("", ".yaml", "the file is empty"),
        ("- 1\n- 2\n", ".yaml", "the top level must be a mapping"),
        ("just a string", ".yaml", "the top level must be a mapping"),
        (b"\xff\xfe\x00garbage", ".yaml", "not UTF-8 text"),
        (b"version = 1\n\x00", ".toml", "NUL bytes"),
        ("[" * 5000, ".yaml", "Fix:"),
    ],
)
def test_malformed_files_give_documented_errors(tmp_path, text, suffix, expected):
    message = error_of(tmp_path, text, suffix)
    assert expected in message
    assert "Fix:" in message and "internal error" not in message


@pytest.mark.parametrize(
    "limits,field,minimum",
    [
        ("max_peak_kv_tokens: 100", "limits.max_peak_kv_tokens: 100 can never be met", "257"),
        ("max_peak_kv_bytes: 1MiB", "limits.max_peak_kv_bytes: 1.0 MiB can never be met", "5.6 MiB"),
        ("max_kv_bytes_read: 1000", "limits.max_kv_bytes_read", "can never be met"),
    ],
)
def test_caps_no_call_can_meet_are_rejected_at_load_time(tmp_path, limits, field, minimum):
    text = f"version: 1\nmodel: {{kv_bytes_per_token: 23040}}\nlimits:\n  {limits}\n"
    message = error_of(tmp_path, text)
    assert field in message and minimum in message and "line 4" in message


def test_pareto_files_check_their_calibration(tmp_path):
    (tmp_path / "cal.json").write_text((EXAMPLES / "calibration-example.json").read_text())
    assert "cannot be loaded" in error_of(tmp_path, "version: 1\npareto: {calibration: missing.json}\n")
    assert "did you mean 'arith'" in error_of(
        tmp_path, "version: 1\npareto: {calibration: cal.json, task: arth}\n"
    )
    assert "can never be met" in error_of(
        tmp_path, "version: 1\npareto: {calibration: cal.json, accuracy_floor: 0.99}\n"
    )
    assert "pareto.accuracy_floor: is required by objective min_memory" in error_of(
        tmp_path, "version: 1\npareto: {calibration: cal.json, objective: min_memory}\n"
    )
    assert "is not used with a pareto section" in error_of(
        tmp_path, "version: 1\ntiers: {a: {}}\npareto: {calibration: cal.json}\n"
    )


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(PolicyFileError, match="name it .yaml, .yml or .toml"):
        load_policy(tmp_path / "p.json")
    with pytest.raises(PolicyFileError, match="cannot read the file"):
        load_policy(tmp_path / "nope.yaml")


def test_bytes_loader_takes_a_source_name():
    with pytest.raises(PolicyFileError, match="^inline, line 1: version"):
        load_policy_bytes(b"version: 3\n", "yaml", "inline")


def test_an_alias_bomb_fails_fast_and_readably(tmp_path):
    lines = ["version: 1", 'a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    lines.append("load: *h")
    message = error_of(tmp_path, "\n".join(lines) + "\n")
    assert "load[0]: must be a mapping" in message and len(message) < 10_000


def test_a_wholly_wrong_file_lists_the_first_problems_only(tmp_path):
    text = "version: 1\n" + "".join(f"field{i}: 1\n" for i in range(50))
    message = error_of(tmp_path, text)
    assert message.count("\n") == 20 and "and 30 more problems" in message
