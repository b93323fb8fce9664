"""``budgetllm retrofit`` end to end on a tiny model (built-in task texts, no teacher generation)."""

from __future__ import annotations

import argparse
import json

import pytest

from budgetllm.dms.cli import add_eval_subcommand, add_retrofit_subcommand
from budgetllm.dms.train import RetrofitConfigError


def _parser():
    p = argparse.ArgumentParser(prog="budgetllm")
    sub = p.add_subparsers(dest="command")
    add_retrofit_subcommand(sub)
    add_eval_subcommand(sub)
    return p


def test_retrofit_cli_writes_adapter_table_and_curve(tiny_dir, tmp_path):
    out = tmp_path / "ad.safetensors"
    args = _parser().parse_args([
        "retrofit", "--model", str(tiny_dir("llama")), "--out", str(out), "--window", "8", "--seq-len", "64",
        "--steps", "3", "--batch-size", "2", "--distill", "0", "--tasks", "2", "--heldout", "2", "--device", "cpu",
        "--no-progress", "--checkpoint-dir", str(tmp_path / "ck"), "--export-nvidia", str(tmp_path / "nv")])
    assert args.func(args) == 0
    meta = json.loads(out.with_suffix(".json").read_text())
    assert set(meta["threshold_table"]) == {"1.25", "1.5", "2", "3", "4", "6", "8", "12", "16", "24", "32"}
    assert len(meta["threshold_table"]["8"]) == 2 and len(meta["threshold_table"]["8"][0]) == 2  # [layer][kv head]
    assert "held-out rows" in meta["threshold_fit"]["data"]
    assert meta["training"]["steps"] == 3 and meta["window"] == 8
    assert (tmp_path / "ck" / "retrofit-last.pt").exists()
    assert (tmp_path / "nv" / "config.json").exists()


def test_retrofit_cli_rejects_bad_settings_before_loading(tmp_path):
    p = _parser()
    with pytest.raises(RetrofitConfigError, match="seq_len"):
        a = p.parse_args(["retrofit", "--out", str(tmp_path / "x"), "--window", "512", "--seq-len", "256"])
        a.func(a)
    with pytest.raises(RetrofitConfigError, match="--no-builtin"):
        a = p.parse_args(["retrofit", "--out", str(tmp_path / "x"), "--no-builtin"])
        a.func(a)
