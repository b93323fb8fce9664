"""The one per-token step (budgetllm.engine.step) through both loops that use it.

Each case scripts the token the model would sample at every step (the step index is the number of
tokens fed after the prompt, so a forced token discards that step's sample in both loops) and the
controller's state, and states the outputs by hand. The same case runs through the reference
backend's ``run`` (its real greedy ``Sampler`` over scripted logits, a fake sequence in place of the
model) and through the paged backend's per-row host side (``Handle.step`` on a ``Sequence``, with the
GPU's pick emulated from the same script and the masks of ``sampling_masks``). Both must give the
expected outputs and feed the same tokens.
"""

from __future__ import annotations

import queue
from types import SimpleNamespace

import pytest
import torch

from budgetllm.accounting.meter import KVMeter, KVShape
from budgetllm.engine.eviction import EvictionRule
from budgetllm.engine.paged.handle import Handle
from budgetllm.engine.paged.sequence import Sequence
from budgetllm.engine.reference.backend import ReferenceBackend
from budgetllm.engine.request import GenerationRequest
from budgetllm.engine.step import advance, sampling_masks
from budgetllm.engine.thinking import ThinkingController
from budgetllm.types import SamplingParams, ThinkingConfig

V, EOS, OPEN, CLOSE, HANDOFF, FALLBACK = 64, 63, 60, 61, 62, 7
CHARS = {"<": OPEN, ">": CLOSE, "!": HANDOFF}
CFG = ThinkingConfig(open_tag="<", close_tag=">", handoff="!", after_close="")
PROMPT = [1, 2, 3]


class Grammar:
    """A stand-in for budgetllm.constrain.Constraint: allows everything when sampling, rejects 9."""

    vocab_size = V

    def __init__(self):
        self.accepted: list[int] = []

    def fill(self, bitmask, row=0) -> bool:
        return False

    def accept(self, tok: int) -> bool:
        if tok == 9:
            return False
        self.accepted.append(tok)
        return True


def make_request(budget, max_tokens, reserve=0, banned=(), grammar=None, prefix=()):
    ctrl = ThinkingController(budget, reserve, max_tokens, encode=lambda s: [CHARS[c] for c in s], config=CFG)
    ctrl.answer_prefix = list(prefix)
    return GenerationRequest(prompt_ids=list(PROMPT), rule=EvictionRule(), sampling=SamplingParams(),
                             controller=ctrl, meter=KVMeter(KVShape(1, 1, 4), 1.0, "dense"), eos_ids={EOS},
                             banned_after_thinking=list(banned), constraint=grammar)


T, F = True, False
# (name, request arguments, scripted samples, cancel after this many tokens, expected outputs)
CASES = [
    ("answer ends by length", dict(budget=None, max_tokens=3), [5, 6, 7, 8], None,
     [(5, F, None), (6, F, None), (7, F, None), (-1, F, "length")]),
    ("no room at all", dict(budget=None, max_tokens=0), [5], None, [(-1, F, "length")]),
    ("EOS ends the answer", dict(budget=None, max_tokens=9), [5, EOS, 6], None, [(5, F, None), (EOS, F, "stop")]),
    ("budget spent: the hand-off and the close tag are forced", dict(budget=4, reserve=2, max_tokens=6),
     [5, 6, 7, 8, 9, 10], None,
     [(5, T, None), (6, T, None), (HANDOFF, T, None), (CLOSE, T, None), (9, F, None), (10, F, None),
      (-1, F, "length")]),
    ("a budget too small for the hand-off: the close tag alone", dict(budget=1, reserve=2, max_tokens=3),
     [5, 6, 7, 8], None, [(CLOSE, T, None), (6, F, None), (7, F, None), (-1, F, "length")]),
    ("EOS inside the block closes it", dict(budget=4, reserve=2, max_tokens=6), [5, EOS, 8, 9, 10, 11], None,
     [(5, T, None), (CLOSE, T, None), (8, F, None), (9, F, None), (10, F, None), (11, F, None), (-1, F, "length")]),
    ("the model closes the block", dict(budget=9, reserve=2, max_tokens=12), [5, CLOSE, 8, EOS], None,
     [(5, T, None), (CLOSE, T, None), (8, F, None), (EOS, F, "stop")]),
    ("open tag banned after the block", dict(budget=9, reserve=2, max_tokens=12, banned=[OPEN]),
     [OPEN, CLOSE, OPEN, EOS], None,
     [(OPEN, T, None), (CLOSE, T, None), (FALLBACK, F, None), (EOS, F, "stop")]),
    ("nothing banned with thinking off", dict(budget=0, max_tokens=9, banned=[OPEN]), [OPEN, EOS], None,
     [(OPEN, F, None), (EOS, F, "stop")]),
    ("grammar dead end", dict(budget=None, max_tokens=9, grammar=True), [5, 9, 6], None,
     [(5, F, None), (-1, F, "length")]),
    ("grammar sees the answer only", dict(budget=4, reserve=2, max_tokens=6, grammar=True), [5, CLOSE, 6, EOS], None,
     [(5, T, None), (CLOSE, T, None), (6, F, None), (EOS, F, "stop")]),
    ("forced tool-call opening", dict(budget=None, max_tokens=4, prefix=[50, 51]), [5, 6, 7, 8], None,
     [(50, F, None), (51, F, None), (7, F, None), (8, F, None), (-1, F, "length")]),
    ("cancelled", dict(budget=None, max_tokens=9), [5, 6, 7, 8], 2,
     [(5, F, None), (6, F, None), (-1, F, "cancelled")]),
]


def pick(script: list[int], step: int, banned) -> int:
    """What a greedy sampler takes at ``step``: the scripted token, or FALLBACK when it is banned."""
    return FALLBACK if banned and script[step] in banned else script[step]


class ScriptedSequence:
    """The reference backend's sequence without a model: logits favour the script's next token."""

    def __init__(self, script):
        self.script, self.ids = script, []

    @property
    def seen(self) -> int:
        return len(self.ids)

    def live_entries(self) -> int:
        return len(self.ids)

    def forward(self, ids):
        self.ids += list(ids)
        logits = torch.zeros(len(ids), V)
        logits[-1, FALLBACK] = 5.0
        logits[-1, self.script[min(self.seen - len(PROMPT), len(self.script) - 1)]] = 10.0
        return logits


def run_reference(req, script, cancel_after):
    backend = ReferenceBackend(SimpleNamespace(device=torch.device("cpu")), prefix_cache=False)
    seq = ScriptedSequence(script)
    backend.new_sequence = lambda rule, collect_logits=False: seq
    outs = []
    for out in backend.run(req):
        outs.append((out.token_id, out.thinking, out.finished))
        if cancel_after is not None and len(outs) == cancel_after:
            req.cancelled = True  # the consumer cancels while it holds this token
    return outs, seq.ids[len(PROMPT):]


def run_paged(req, script, cancel_after):
    h, seq = Handle(req, queue.Queue()), Sequence(list(PROMPT), max_new_tokens=max(1, req.controller.max_tokens))
    outs, finished = [], None
    while finished is None:
        banned, _ = sampling_masks(req)  # what sampling_for hands the GPU sampler
        finished = h.step(seq, pick(script, len(seq.token_ids) - len(PROMPT), banned))
        h.flush()
        while not h.out.empty():
            out = h.out.get()
            outs.append((out.token_id, out.thinking, out.finished))
            if cancel_after is not None and len(outs) == cancel_after:
                req.cancelled = True
    return outs, seq.token_ids[len(PROMPT):]


@pytest.mark.parametrize("loop", [run_reference, run_paged], ids=["reference", "paged"])
@pytest.mark.parametrize(("name", "kwargs", "script", "cancel_after", "expected"), CASES, ids=[c[0] for c in CASES])
def test_both_loops_apply_the_same_step(loop, name, kwargs, script, cancel_after, expected):
    kwargs = dict(kwargs)  # the table is shared by both loops
    grammar = Grammar() if kwargs.pop("grammar", False) else None
    req = make_request(**kwargs, grammar=grammar)
    outs, fed = loop(req, script, cancel_after)
    assert outs == expected
    emitted = [t for t, _, fin in outs if fin is None]
    # the paged sequence holds every emitted token; the reference feeds them all but one that its
    # step ended right after (length, cancel): no forward for a token nothing will follow
    assert fed == emitted if loop is run_paged else (fed == emitted[:len(fed)] and len(fed) >= len(emitted) - 1)
    if grammar is not None:  # the grammar saw exactly the answer tokens it accepted (EOS included)
        assert grammar.accepted == [t for t, thinking, fin in outs if not thinking and t >= 0]


def test_sampling_masks_ban_after_the_block_and_constrain_the_answer_only():
    grammar = Grammar()
    req = make_request(budget=4, reserve=2, max_tokens=6, banned=[OPEN], grammar=grammar)
    assert sampling_masks(req) == (None, None)  # inside the block: nothing banned, no grammar yet
    while req.controller.thinking:
        advance(req, 5)
    assert sampling_masks(req) == ([OPEN], grammar)
    plain = make_request(budget=None, max_tokens=6, banned=[OPEN], grammar=grammar)
    assert sampling_masks(plain) == (None, grammar)  # no thinking budget: nothing to ban


def test_a_sample_is_drawn_only_when_no_token_is_forced():
    req = make_request(budget=None, max_tokens=4, prefix=[50])
    calls = []

    def sample():
        calls.append(1)
        return 5

    assert [o.token_id for o in advance(req, sample)] == [50] and calls == []
    assert [o.token_id for o in advance(req, sample)] == [5] and calls == [1]
