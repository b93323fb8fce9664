"""The dependency rules of DESIGN.md, checked with import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    out = subprocess.run([sys.executable, "-m", "importlinter.cli", "--config", str(ROOT / "pyproject.toml")],
                         capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0 and "No module named importlinter.cli" in out.stderr:
        out = subprocess.run(["lint-imports", "--config", str(ROOT / "pyproject.toml")], capture_output=True,
                             text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def test_policy_and_accounting_import_without_torch():
    code = ("import sys; import budgetllm.policy, budgetllm.accounting, budgetllm.engine.thinking, "
            "budgetllm.engine.detok; bad=[m for m in ('torch','transformers','langchain_core') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
