"""Assemble README.md from docs/README.head.md, the section files and docs/README.layout.md."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent
SECTIONS = [("langchain.md", 0), ("policies.md", 0), ("server.md", 1), ("retrofit.md", 0), ("engine.md", 0)]


def demote(text: str, levels: int) -> str:
    out, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        if levels and not fence and re.match(r"^#{1,5} ", line):
            line = "#" * levels + line
        out.append(line)
    return "\n".join(out) + "\n"


def main() -> None:
    parts = [(DOCS / "README.head.md").read_text()]
    parts += [demote((DOCS / name).read_text(), lv) for name, lv in SECTIONS]
    parts.append((DOCS / "README.layout.md").read_text())
    (DOCS.parent / "README.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
