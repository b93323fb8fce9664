"""Retrofit data that works offline: seeded task generators, teacher self-distillation, local files.

Generators (each seeded, so a run can be reproduced): multi-step arithmetic, variable tracking and
key-value retrieval (the last two are recall tasks whose needles sit far behind the window). The
teacher (the model itself, eviction off) writes continuations for their prompts; sequences are
then packed into fixed-length training rows.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

_WORDS = ("apple river stone cloud maple tiger copper violet harbor lantern falcon meadow ember orchid "
          "glacier pepper willow canyon quartz saddle thistle beacon walnut cobalt").split()
_FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
           "Birds fly south in winter. The river flows to the sea. ").split(". ")


@dataclass
class Task:
    kind: str
    prompt: str  # the user turn
    answer: str  # the exact answer (a number or a name)
    cue: str = "The answer is"  # the start of the assistant turn the answer follows


def arithmetic_task(rng: random.Random, steps: int = 5) -> Task:
    names = rng.sample("abcdefghjkmnpqrstuvwxyz", steps)
    value = rng.randint(2, 20)
    lines = [f"{names[0]} = {value}."]
    for i in range(1, steps):
        op, n = rng.choice("+-*"), rng.randint(2, 9)
        value = value + n if op == "+" else value - n if op == "-" else value * n
        lines.append(f"{names[i]} = {names[i - 1]} {op} {n}.")
    return Task("arithmetic", "Compute step by step.\n" + "\n".join(lines) + f"\nWhat is {names[-1]}?", str(value))


def _filler(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(_FILLER).strip() + "." for _ in range(n)]


def variable_tracking_task(rng: random.Random, hops: int = 3, filler: int = 60) -> Task:
    value = rng.randint(10000, 99999)
    names = ["".join(rng.choices("ABCDEFGHJKLMNPQRSTUVWXYZ", k=4)) for _ in range(hops)]
    chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = {names[i - 1]}." for i in range(1, hops)]
    body = _filler(rng, filler)
    spots = sorted(rng.sample(range(len(body) // 2), hops))  # the chain sits early: far behind the window
    for s, line in zip(reversed(spots), reversed(chain), strict=True):
        body.insert(s, line)
    prompt = " ".join(body) + f"\nQuestion: which number does VAR {names[-1]} hold? Follow the assignments."
    return Task("variable_tracking", prompt, str(value), cue=f"VAR {names[-1]} holds")


def kv_retrieval_task(rng: random.Random, pairs: int = 40) -> Task:
    keys = [f"{rng.choice(_WORDS)}-{rng.randint(10, 99)}" for _ in range(pairs)]
    keys = list(dict.fromkeys(keys))
    values = [str(rng.randint(1000, 9999)) for _ in keys]
    target = rng.randrange(len(keys) // 2)  # an early key: out of the window by the question
    lines = [f"{k}: {v}" for k, v in zip(keys, values, strict=True)]
    prompt = "Here is a list of keys and values.\n" + "\n".join(lines) + f"\nWhat is the value of key {keys[target]}?"
    return Task("kv_retrieval", prompt, values[target], cue=f"The value of key {keys[target]} is")


_ADJ = "quiet golden narrow ancient bright hollow silver crooked gentle distant frozen tiny".split()
_VERBS = "crossed painted followed carried watched repaired visited counted opened guarded".split()


def passage_copy_task(rng: random.Random, sentences: int = 3, filler: int = 120) -> Task:
    """A made-up passage, a long stretch of filler (far behind the window by the question), then a request
    to repeat it: the answer is the passage after its first words (copying: dense SmolLM2-135M can do it)."""
    said = []
    for _ in range(sentences):
        a, b = rng.sample(_WORDS, 2)
        said.append(f"The {rng.choice(_ADJ)} {a} {rng.choice(_VERBS)} the {rng.choice(_ADJ)} {b} "
                    f"{rng.randint(2, 99)} times.")
    passage = " ".join(said)
    head, rest = passage.split(" ", 3)[:3], passage.split(" ", 3)[3]
    prompt = (f"Remember this passage: {passage}\n" + " ".join(_filler(rng, filler))
              + "\nRepeat the passage you were asked to remember, word for word.")
    return Task("passage_copy", prompt, rest, cue="Passage: " + " ".join(head))


_TOPICS = ("the ocean", "a city at night", "how bread is made", "the history of clocks", "learning to swim",
           "a trip to the mountains", "why leaves change color", "how computers store numbers", "a lost dog",
           "the water cycle", "a friendly robot", "planting a garden", "the moon landing", "a rainy day")
_STYLES = ("Write a short story about {}.", "Explain {} to a child.", "Write an essay about {}.",
           "Describe {} in detail, step by step.", "Write a letter to a friend about {}.")


def open_task(rng: random.Random) -> Task:
    """A free-form writing prompt (self-distillation only: no answer to check)."""
    return Task("open", rng.choice(_STYLES).format(rng.choice(_TOPICS)), "", cue="")


GENERATORS = {"open": open_task, "arithmetic": arithmetic_task, "variable_tracking": variable_tracking_task,
              "kv_retrieval": kv_retrieval_task, "passage_copy": passage_copy_task}


def make_tasks(n: int, seed: int = 0, kinds: tuple[str, ...] = ("arithmetic", "variable_tracking", "kv_retrieval"),
               **sizes) -> list[Task]:
    """n tasks cycling through ``kinds``; sizes: e.g. pairs=60, filler=120, hops=4, steps=6."""
    unknown = [k for k in kinds if k not in GENERATORS]
    if unknown or not kinds:
        raise ValueError(f"unknown task kinds {unknown}; choose from {', '.join(GENERATORS)}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        fn = GENERATORS[kind]
        kw = {k: v for k, v in sizes.items() if k in fn.__code__.co_varnames}
        out.append(fn(rng, **kw))
    return out


def chat_ids(tokenizer, task: Task, with_answer: bool = False) -> list[int]:
    """The chat-formatted prompt, ending inside the assistant turn after the cue (and the answer)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": task.prompt}], tokenize=False,
                                         add_generation_prompt=True)
    text += task.cue + (" " + task.answer if with_answer and task.answer else "")
    return tokenizer.encode(text, add_special_tokens=False)


def task_text_ids(tokenizer, tasks: list[Task]) -> list[list[int]]:
    """Each task rendered as a whole chat (prompt, cue, answer, end of turn)."""
    end = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)
    return [chat_ids(tokenizer, t, with_answer=True) + end for t in tasks]


@torch.no_grad()
def self_distill(hf_model, tokenizer, tasks: list[Task], *, max_new_tokens: int = 256, batch_size: int = 32,
                 temperature: float = 0.8, seed: int = 0, progress: bool = False) -> list[list[int]]:
    """The teacher (eviction off) continues every task prompt; returns prompt + continuation ids."""
    device = next(hf_model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    torch.manual_seed(seed)
    out: list[list[int]] = []
    batches = range(0, len(tasks), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="self-distillation", unit="batch")
    for i in batches:
        prompts = [chat_ids(tokenizer, t) for t in tasks[i:i + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)  # left padding
        attn = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        gen = hf_model.generate(ids, attention_mask=attn, max_new_tokens=max_new_tokens, do_sample=True,
                                temperature=temperature, top_p=0.95, pad_token_id=pad)
        for p, row in zip(prompts, gen[:, width:].tolist(), strict=True):
            if pad in row:
                row = row[: row.index(pad) + 1]
            out.append(p + row)
    return out


def load_text_files(paths, tokenizer) -> list[list[int]]:
    """.txt/.md files (whole file) and .jsonl files (fields "ids" (token ids, e.g. ``budgetllm make-traces``),
    "text", "prompt"+"completion" or "messages")."""
    seqs = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training data file {path} does not exist")
        if path.suffix == ".jsonl":
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
                if "ids" in rec:
                    seqs.append([int(t) for t in rec["ids"]])
                    continue
                if "messages" in rec:
                    text = tokenizer.apply_chat_template(rec["messages"], tokenize=False)
                elif "text" in rec:
                    text = rec["text"]
                elif "prompt" in rec:
                    text = rec["prompt"] + rec.get("completion", "")
                else:
                    raise ValueError(f"{path}, line {n}: needs an 'ids', 'text', 'prompt' or 'messages' field")
                seqs.append(tokenizer.encode(text, add_special_tokens=False))
        else:
            seqs.append(tokenizer.encode(path.read_text(), add_special_tokens=False))
    return seqs


def pack(seqs: list[list[int]], seq_len: int, *, seed: int = 0, min_rows: int = 1) -> torch.Tensor:
    """Shuffle and concatenate sequences, cut into rows of ``seq_len`` tokens -> [N, seq_len] int64.

    Repeats the data (reshuffled) when it holds fewer than ``min_rows`` rows.
    """
    if not seqs or sum(len(s) for s in seqs) == 0:
        raise ValueError("no training text: pass data files or enable the built-in task generators")
    rng = random.Random(seed)
    stream: list[int] = []
    rounds = 0
    while len(stream) < seq_len * min_rows or rounds == 0:
        order = list(range(len(seqs)))
        rng.shuffle(order)
        for i in order:
            stream.extend(seqs[i])
        rounds += 1
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"the data holds {len(stream)} tokens, fewer than one row of seq_len={seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)
