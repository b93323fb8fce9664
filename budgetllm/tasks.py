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


_NOUNS = "apple river stone cloud maple tiger copper violet harbor lantern falcon meadow ember orchid".split()
_ADJ = "quiet golden narrow ancient bright hollow silver crooked gentle distant frozen tiny".split()
_VERBS = "crossed painted followed carried watched repaired visited counted opened guarded".split()
_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
           "Birds fly south in winter.", "The river flows to the sea.")


def passage_copy(rng: random.Random, sentences: int = 1, filler: int = 150) -> TaskItem:
    """Long context (~900 tokens at the defaults, 3.5x a 256-token window): a made-up passage, filler that
    pushes it far behind the window, then a request to repeat it with its first words given. The answer
    is the passage's last number, which the checker reads as the last number of the reply: only a reply
    that copies the passage to its end gets it. Dense SmolLM2-135M copies such passages (about half the
    time: otherwise it repeats the filler); eviction that drops the passage makes it fail, so this task's
    accuracy depends on the compression ratio, while the short tasks above fit inside the window and do
    not. ``filler`` sentences (~5 tokens each) set the length."""
    said = []
    for _ in range(sentences):
        a, b = rng.sample(_NOUNS, 2)
        said.append(f"The {rng.choice(_ADJ)} {a} {rng.choice(_VERBS)} the {rng.choice(_ADJ)} {b} "
                    f"{rng.randint(11, 99)} times.")
    body = " ".join(rng.choice(_FILLER) for _ in range(filler))
    head = " ".join(said[0].split()[:4])
    prompt = (f"Remember this passage: {' '.join(said)}\n{body}\n"
              f"Repeat the passage you were asked to remember, word for word. It begins: {head}")
    return TaskItem("copy", prompt, said[-1].split()[-2])


GENERATORS = {"arith": arithmetic, "vartrack": variable_tracking, "kv": key_value, "copy": passage_copy}


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
