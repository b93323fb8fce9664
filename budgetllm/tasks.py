"""Built-in, seeded, checkable tasks (for calibration and evaluation). Standard library only.

Each item has a prompt and a short answer; ``check`` extracts the model's answer from its text.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ANSWER_HINT = "Give the final answer after 'Answer:'."


@dataclass(frozen=True)
class TaskItem:
    task: str
    prompt: str
    answer: str


def arithmetic(rng: random.Random) -> TaskItem:
    a, b, c = rng.randint(2, 20), rng.randint(2, 20), rng.randint(2, 9)
    d = rng.randint(1, 30)
    return TaskItem("arith", f"Compute ({a} + {b}) * {c} - {d}. {ANSWER_HINT}", str((a + b) * c - d))


def variable_tracking(rng: random.Random) -> TaskItem:
    names = rng.sample(["x", "y", "z", "w", "v", "u", "t", "s"], 5)
    value = rng.randint(10, 99)
    lines = [f"{names[0]} = {value}."] + [f"{names[i]} = {names[i - 1]}." for i in range(1, len(names))]
    return TaskItem("vartrack", " ".join(lines) + f" What is the value of {names[-1]}? {ANSWER_HINT}", str(value))


def key_value(rng: random.Random) -> TaskItem:
    keys = rng.sample(range(100, 999), 12)
    pairs = {k: rng.randint(1000, 9999) for k in keys}
    ask = rng.choice(keys)
    listing = " ".join(f"key {k} -> {v}." for k, v in pairs.items())
    return TaskItem("kv", f"{listing} What value does key {ask} map to? {ANSWER_HINT}", str(pairs[ask]))


GENERATORS = {"arith": arithmetic, "vartrack": variable_tracking, "kv": key_value}


def items(task: str, n: int, seed: int = 0) -> Iterator[TaskItem]:
    """``n`` items of a built-in task, or of a JSONL file of {"prompt", "answer"} lines."""
    if task in GENERATORS:
        rng = random.Random(f"{task}-{seed}")
        for _ in range(n):
            yield GENERATORS[task](rng)
        return
    path = Path(task)
    if not path.exists():
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(GENERATORS)} or a JSONL file path")
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if i >= n:
            return
        if line.strip():
            row = json.loads(line)
            yield TaskItem(path.stem, str(row["prompt"]), str(row["answer"]))


def extract_answer(text: str) -> str | None:
    """The text after the last 'Answer:' if any, else the last number in the text."""
    m = re.findall(r"answer\s*(?:is)?\s*[:=]?\s*\**\s*([-\w.]+)", text, flags=re.IGNORECASE)
    if m:
        return m[-1].strip(".").strip()
    nums = re.findall(r"-?\d+(?:\.\d+)?", text)
    return nums[-1] if nums else None


def check(item: TaskItem, text: str) -> bool:
    got = extract_answer(text)
    return got is not None and got.replace(",", "") == item.answer


def majority(answers: list[str | None]) -> str | None:
    votes = Counter(a for a in answers if a is not None)
    return votes.most_common(1)[0][0] if votes else None
