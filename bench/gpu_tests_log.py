"""Merge the two GPU-test logs of bench/gpu_tests.sh into bench/results/gpu-tests.log.

The merged log starts with the card(s) (``nvidia-smi -L``) and ``commit <hash>`` of the parts, then one
line per GPU test with its result (PASSED, FAILED, ERROR, SKIPPED, ...; NOT RUN for a test that this
checkout collects with ``-m gpu`` but neither log reports, e.g. a part cut by its time limit), the
counts, and then both logs in full. A test's result comes from pytest's short summary (``-rfEsxXp``),
else from its ``-v`` line; a stack dump (faulthandler) between a test's name and its result is skipped.

    python3 bench/gpu_tests_log.py PATH... [--out bench/results/gpu-tests.log] [--no-collect]

PATH: a directory holding gpu-tests-<part>.log, or such a file (the two calls' logs may come back
in two directories).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

PARTS = ("kernels", "rest")
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_TS = re.compile(r"^\d{9,}\s")  # a unix-time prefix (logs piped through ts)
_SUMMARY = re.compile(rf"^({'|'.join(OUTCOMES)}) (tests/\S+?)(?: - .*)?$")
_WORD = rf"\b({'|'.join(OUTCOMES)})\b(?: \(.*\))?\s+\[\s*\d+%\]\s*$"  # "SKIPPED (reason) [ 40%]"
_VERBOSE = re.compile(rf"^(tests/\S+::\S+) .*?{_WORD}")
_START = re.compile(r"^(tests/\S+::\S+)")
_LATE = re.compile(rf"^{_WORD}")


def _lines(path: Path) -> list[str]:
    return [_TS.sub("", line.rstrip("\n")) for line in path.read_text(errors="replace").splitlines()]


def parse(lines: list[str]) -> tuple[list[str], str, dict[str, str], list[str]]:
    """(card lines, commit, {test id: outcome}, pytest's closing lines)."""
    cards = [x for x in lines[:5] if x.startswith("GPU ")]
    commit = next((x.split(" ", 1)[1] for x in lines[:6] if x.startswith("commit ")), "unknown")
    results: dict[str, str] = {}
    current = None
    for x in lines:
        m = _VERBOSE.match(x)
        if m:
            results[m.group(1)] = m.group(2)
            current = None
            continue
        m = _START.match(x)
        if m:  # a test's name whose result comes later (after a stack dump)
            current = m.group(1)
            continue
        m = _LATE.match(x)
        if m and current:  # "FAILED [ 31%]" after a stack dump
            results[current] = m.group(1)
            current = None
    for x in lines:  # the short summary is the last word
        m = _SUMMARY.match(x)
        if m:
            results[m.group(2)] = m.group(1)
    closing = [x for x in lines if re.match(r"^=+ .*(passed|failed|error|no tests ran).* =+$", x)
               or x.startswith("part ")]
    return cards, commit, results, closing


def collected() -> list[str]:
    """The GPU test ids this checkout collects (``-m gpu``); [] when collection fails here."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-n", "0", "-p", "no:cacheprovider",
           "tests"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    return [x.strip() for x in out.splitlines() if x.startswith("tests/") and "::" in x]


def _find(paths: list[Path]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        for part in PARTS:
            f = path / f"gpu-tests-{part}.log" if path.is_dir() else path
            if f.name == f"gpu-tests-{part}.log" and f.exists():
                found[part] = f
    return found


def merge(paths: Path | list[Path], out: Path, expect: list[str]) -> str:
    files = _find([paths] if isinstance(paths, Path) else list(paths))
    logs = {p: _lines(files[p]) for p in PARTS if p in files}
    if not logs:
        raise SystemExit(f"no gpu-tests-<part>.log in {paths}")
    cards, commits, results, closing = [], [], {}, []
    for part, lines in logs.items():
        c, commit, r, end = parse(lines)
        cards += [x for x in c if x not in cards]
        commits.append(commit)
        results.update(r)
        closing += [f"{part}: {x}" for x in end]
    for t in expect:
        results.setdefault(t, "NOT RUN")
    counts = {k: sum(v == k for v in results.values()) for k in (*OUTCOMES, "NOT RUN")}
    head = cards or ["(no card line)"]
    same = len(set(commits)) == 1
    text = [*head, f"commit {commits[0]}" if same else f"commit MISMATCH: {' / '.join(commits)}",
            f"parts: {', '.join(logs)}; " + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
            "", *(f"{v:8s} {k}" for k, v in sorted(results.items())), "", *closing]
    for part, lines in logs.items():
        text += ["", f"======== part {part}: the full log ========", *lines]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(text) + "\n")
    return "\n".join(text[:3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", type=Path, nargs="+")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu-tests.log"))
    ap.add_argument("--no-collect", action="store_true", help="do not list the tests that no log reports")
    a = ap.parse_args()
    print(merge(a.paths, a.out, [] if a.no_collect else collected()))


if __name__ == "__main__":
    main()
