"""Policy files a careless or hostile author writes: each gets the right one-line error (or the
right value), quickly, and never an "internal error"."""

from __future__ import annotations

import pytest

from budgetllm.errors import PolicyFileError
from budgetllm.policy import load_policy
from budgetllm.policy.cli import main as policy_main
from budgetllm.policy.loader import MAX_POLICY_BYTES


def write(tmp_path, text: str, name: str = "p.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error(path) -> str:
    with pytest.raises(PolicyFileError) as info:
        load_policy(path)
    message = str(info.value)
    assert "internal error" not in message and "Traceback" not in message
    return message


def test_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads 1e308 as text, and the old advice was "write 1e308 without quotes"."""
    policy = load_policy(write(tmp_path, "defaults:\n  compression: 2e0\n  thinking_budget: 64\n"))
    assert policy.document.defaults.compression == 2.0
    assert "finite" in error(write(tmp_path, "defaults:\n  compression: 1e999\n"))  # inf


def test_a_5000_digit_integer_is_out_of_range_with_its_line(tmp_path):
    message = error(write(tmp_path, "version: 1\ndefaults:\n  thinking_budget: " + "9" * 5000 + "\n"))
    assert "line 3" in message and "5000 digits" in message
    message = error(write(tmp_path, "thinking = " + "9" * 5000 + "\n", "p.toml"))
    assert "out of range" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [("defaults:\n  thinking_budget: 1" + "0" * 28 + "\n", "defaults.thinking_budget"),
     ("defaults:\n  max_tokens: 1" + "0" * 25 + "\n", "defaults.max_tokens"),
     ("limits:\n  max_peak_kv_bytes: 1" + "0" * 25 + "\n", "limits.max_peak_kv_bytes"),
     ("limits:\n  max_thinking_budget: 1" + "0" * 20 + "\n", "limits.max_thinking_budget")],
)
def test_absurd_budgets_are_refused(tmp_path, text, field):
    message = error(write(tmp_path, text))
    assert field in message and "must be <=" in message
    assert "line 2" in error(write(tmp_path, "defaults:\n  thinking_budget: 1" + "0" * 400 + "\n"))  # 10^400


def test_empty_files_are_errors_in_both_formats(tmp_path):
    for name, text in (("e.yaml", ""), ("e.toml", ""), ("c.toml", "# only a comment\n"), ("c.yaml", "# c\n")):
        assert "the file is empty" in error(write(tmp_path, text, name))


def test_a_huge_file_is_refused_at_once(tmp_path):
    body = "version: 1\ntiers:\n" + "".join(f"  t{i}:\n    thinking_budget: {i}\n" for i in range(200_000))
    path = write(tmp_path, body)
    assert path.stat().st_size > MAX_POLICY_BYTES
    message = error(path)
    assert "at most 1 MiB" in message


def test_calibration_path_must_stay_next_to_the_policy_file(tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    sub = tmp_path / "policies"
    sub.mkdir()
    for ref in (str(secret), "../secret.json", "/etc/passwd"):
        message = error(write(sub, f"version: 1\npareto: {{calibration: '{ref}'}}\n"))
        assert "pareto.calibration" in message and "inside the policy file's folder" in message
    message = error(write(sub, "version: 1\npareto: {calibration: missing.json}\n"))
    assert "resolved relative to the policy file" in message and str(sub) in message


@pytest.mark.parametrize("flags", [["--prompt-tokens", "-5000"], ["--prompt-tokens", "5", "--compression", "0.5"],
                                   ["--prompt-tokens", "5", "--max-tokens", "0"], ["--prompt-tokens", "5", "--window", "-1"]])
def test_explain_refuses_impossible_numbers(tmp_path, capsys, flags):
    path = write(tmp_path, "version: 1\n")
    with pytest.raises(SystemExit) as info:
        policy_main(["policy", "explain", str(path), *flags])
    assert info.value.code == 2 and "must be" in capsys.readouterr().err
