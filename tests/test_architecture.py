"""The dependency rules of docs/design.md, checked with import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_hold():
    import shutil

    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    out = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout and "kept" in out.stdout, out.stdout[-2000:]


def test_policy_and_accounting_import_without_torch():
    code = ("import sys; import budgetllm.policy, budgetllm.accounting, budgetllm.engine.thinking, "
            "budgetllm.engine.detok; bad=[m for m in ('torch','transformers','langchain_core') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_engines_torch_free_modules_import_without_torch():
    """At run time too (import-linter's torch-free contract checks direct imports): the request
    types, the per-token step, the Backend protocol and the paged scheduler's state load without torch."""
    mods = ("budgetllm.engine", "budgetllm.engine.request", "budgetllm.engine.step", "budgetllm.engine.output",
            "budgetllm.engine.prefix_tree", "budgetllm.engine.paged.sequence", "budgetllm.engine.paged.scheduler",
            "budgetllm.engine.paged.kept_states", "budgetllm.engine.paged.block_manager",
            "budgetllm.engine.paged.launch_ahead")
    code = (f"import sys; import {', '.join(mods)}; bad=[m for m in ('torch','triton') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_backend_implements_the_protocol():
    from budgetllm.engine import Backend
    from budgetllm.engine.cpu import CPUBackend
    from budgetllm.engine.paged.backend import PagedBackend
    from budgetllm.engine.reference import ReferenceBackend

    methods = sorted(n for n, v in vars(Backend).items() if callable(v) and not n.startswith("_"))
    assert methods == ["close", "pool_stats", "run"]
    for cls in (ReferenceBackend, CPUBackend, PagedBackend):
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        assert not missing and isinstance(cls.name, str), (cls.__name__, missing)


def test_integrations_use_only_the_public_api():
    """The LangChain integration imports budgetllm only through names budgetllm/__init__.py exports
    (the Ray deployment may also use the server package it deploys)."""
    import ast

    import budgetllm

    allowed_modules = {"budgetllm"}
    for path in (ROOT / "integrations" / "langchain_budgetllm").rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "budgetllm":
                assert node.module in allowed_modules, f"{path.relative_to(ROOT)} imports {node.module}"
                for alias in node.names:
                    assert alias.name in budgetllm.__all__, f"{path.relative_to(ROOT)}: {alias.name} is not exported"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert alias.name == "budgetllm" or not alias.name.startswith("budgetllm."), alias.name


def test_source_files_stay_within_300_lines():
    """The project's rule: modules of at most 300 lines (split along a seam when one grows past it)."""
    over = []
    for folder in ("budgetllm", "integrations"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = len(path.read_text(encoding="utf-8").splitlines())
            if lines > 300:
                over.append(f"{path.relative_to(ROOT)}: {lines} lines")
    assert not over, "\n".join(over)
