"""The policy package imports without torch (and without pydantic until a file is loaded)."""

import subprocess
import sys

CODE = """
import sys
import budgetllm.policy
assert 'torch' not in sys.modules, 'budgetllm.policy pulled in torch'
assert 'matplotlib' not in sys.modules, 'matplotlib must load only when a plot is drawn'
assert 'pydantic' not in sys.modules or 'budgetllm.policy.loader' not in sys.modules, 'loader imported eagerly'
from budgetllm.policy import load_policy
assert 'torch' not in sys.modules
"""


def test_import_without_torch():
    run = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_policy_modules_import_nothing_forbidden():
    import ast
    from pathlib import Path

    import budgetllm.policy

    forbidden = (
        "torch",
        "triton",
        "transformers",
        "budgetllm.engine",
        "budgetllm.models",
        "budgetllm.accounting",
    )
    for path in Path(budgetllm.policy.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert not name.startswith(forbidden), f"{path.name} imports {name}"
