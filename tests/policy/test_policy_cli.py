"""`budgetllm policy check|explain`: exit codes, messages, argparse wiring."""

import argparse
import json
import subprocess
import sys

from policy_helpers import EXAMPLES

from budgetllm.policy import ModelProfile
from budgetllm.policy.cli import add_policy_subcommands, check_command, explain_command, main


def test_check_a_valid_file(capsys):
    assert check_command(str(EXAMPLES / "memory_cap.yaml")) == 0
    out = capsys.readouterr().out
    assert "valid policy 'memory-cap'" in out and "tiers: fast, standard, deep" in out


def test_check_an_invalid_file_prints_the_problem_not_a_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ntiers:\n  fast:\n    thinking_budget: -5\n")
    assert check_command(str(bad)) == 1
    err = capsys.readouterr().err
    assert "line 4: tiers.fast.thinking_budget: must be >= 0 (got -5)" in err and "Traceback" not in err


def test_explain_prints_each_choice_and_why(capsys):
    code = explain_command(
        str(EXAMPLES / "memory_cap.yaml"), 1200, tier="deep", free_kv_bytes="1GiB", total_kv_bytes="4GiB"
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "thinking_budget" in out and "effort 'high' (requested tier 'deep')" in out
    assert "memory: fits under peak 64.0 MiB" in out and "pool only 25% free" in out


def test_explain_with_tool_step_and_profile(capsys):
    profile = ModelProfile(name="big", kv_bytes_per_token=147456, window=512, max_context=32768)
    code = explain_command(
        str(EXAMPLES / "memory_cap.yaml"), 500, tool="calculator", step="plan", model_profile=profile
    )
    out = capsys.readouterr().out
    assert code == 0 and "agent step 'plan' override" in out and "big, 144.0 KiB/token" in out


def test_explain_shows_the_escalation_ladder(capsys):
    assert explain_command(str(EXAMPLES / "effort.toml"), 300, effort="medium") == 0
    out = capsys.readouterr().out
    assert "retry 1: thinking_budget 4096, compression 8" in out and "retry 2: thinking_budget 0" in out


def test_explain_reports_request_errors(capsys):
    assert explain_command(str(EXAMPLES / "memory_cap.yaml"), 10, tier="nope") == 1
    assert "unknown tier 'nope'" in capsys.readouterr().err


def test_argparse_wiring(capsys):
    parser = argparse.ArgumentParser(prog="budgetllm")
    add_policy_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["policy", "explain", str(EXAMPLES / "pareto.yaml"), "--prompt-tokens", "200", "--json"]
    )
    assert args.func(args) == 0
    plan = json.loads(capsys.readouterr().out)["plan"]
    assert plan["policy"] == "pareto" and plan["expected_accuracy"] > 0
    assert main(["policy", "explain", str(EXAMPLES / "fixed.yaml"), "--prompt-tokens", "50", "--thinking-budget", "9999",
                 "--kv-bytes-per-token", "1000"]) == 0  # fmt: skip
    assert "capped at 4096 (limits)" in capsys.readouterr().out


def test_the_module_runs_as_a_command(tmp_path):
    bad = tmp_path / "x.toml"
    bad.write_bytes(b"\x00\xff")
    run = subprocess.run(
        [sys.executable, "-m", "budgetllm.policy.cli", "policy", "check", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1 and "not UTF-8" in run.stderr and "Traceback" not in run.stderr
