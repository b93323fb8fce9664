"""The engine's output side (engine/output.py) on a scripted backend: no model, no torch."""

from __future__ import annotations

from dataclasses import dataclass, field

from budgetllm.accounting.meter import KVMeter, KVShape
from budgetllm.chat_format import ToolCallStreamSplitter, parse_tool_calls
from budgetllm.engine.output import CallOutput
from budgetllm.engine.thinking import ThinkingController
from budgetllm.types import Plan, StreamEvent, ThinkingConfig

CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
VOCAB = ["let", " me", " think", "</think>", "\n\n", "The", " answer", " is", " 7", ".", " STOP", " more",
         "<tool_call>", '\n{"name": "add", ', '"arguments": {"a": 3, "b": 4}}', "\n</tool_call>"]  # fmt: skip
IDS = {piece: i for i, piece in enumerate(VOCAB)}


class WordPrompter:
    """One token per VOCAB piece; the real tool-call splitter and parser."""

    def decode(self, ids: list[int]) -> str:
        return "".join(VOCAB[i] for i in ids)

    def tool_splitter(self) -> ToolCallStreamSplitter:
        return ToolCallStreamSplitter()

    def parse_tool_calls(self, text: str):
        return parse_tool_calls(text)


@dataclass
class Step:  # what a backend yields (engine.request.StepOutput has these fields)
    token_id: int
    thinking: bool
    finished: str | None = None


@dataclass
class Request:  # the fields of GenerationRequest the output side reads
    controller: ThinkingController
    prompt_ids: list[int] = field(default_factory=lambda: [0, 1, 2])
    meter: KVMeter = field(default_factory=lambda: KVMeter(KVShape(2, 1, 4), 1.0, "dense"))
    cached_tokens: int = 0
    prefill_seconds: float = 0.25
    decode_seconds: float = 0.5
    cancelled: bool = False


@dataclass
class ScriptedBackend:
    """Feeds the scripted pieces through the controller, as a backend's loop does."""

    pieces: list[str]
    finish: str = "length"
    closed: bool = False

    def run(self, req):
        try:
            for piece in self.pieces:
                thinking = req.controller.thinking
                req.controller.observe(IDS[piece])
                yield Step(IDS[piece], thinking)
            yield Step(-1, False, finished=self.finish)
        finally:
            self.closed = True


def _encode(text: str) -> list[int]:
    """The tags as the script's token ids (the engine's controller matches its tags by id)."""
    return [IDS[text]] if text in IDS else [0, 0]


def plan(budget: int | None = 16) -> Plan:
    return Plan(
        thinking_budget=budget, answer_reserve=8, compression=1.0, max_tokens=32, reasons={"x": "test"}
    )


def run(pieces, *, budget=16, finish="length", **kw) -> tuple[list[StreamEvent], list, ScriptedBackend]:
    seen: list = []
    out = CallOutput(
        WordPrompter(), ThinkingConfig(), "scripted", [lambda name, usage: seen.append((name, usage))]
    )
    p = plan(budget)
    req = Request(ThinkingController(budget, p.answer_reserve, p.max_tokens, encode=_encode))
    backend = ScriptedBackend(pieces, finish)
    return list(out.events(backend, req, p, **kw)), seen, backend


def test_reasoning_then_answer_then_done_with_the_plan_and_usage():
    events, seen, backend = run(
        ["let", " me", " think", "</think>", "\n\n", "The", " answer", " is", " 7", "."]
    )
    text = "".join(e.text for e in events if e.kind == "text")
    reasoning = "".join(e.text for e in events if e.kind == "reasoning")
    assert (reasoning, text) == ("let me think", "The answer is 7.")
    assert events[-1].kind == "done" and [e.kind for e in events].count("done") == 1
    gen = events[-1].generation
    assert gen.finish_reason == "length" and gen.text == text and gen.reasoning == reasoning
    u = gen.usage
    assert u.plan == plan() and isinstance(u.plan, Plan)  # the plan object itself, not a dict
    assert (u.input_tokens, u.output_tokens, u.reasoning_tokens) == (3, 10, 4)
    assert (u.prefill_seconds, u.decode_seconds, u.forced_close) == (0.25, 0.5, False)
    assert seen == [("scripted", u)] and backend.closed


def test_tool_call_markup_is_held_back_and_becomes_a_tool_call_event():
    pieces = ["<tool_call>", '\n{"name": "add", ', '"arguments": {"a": 3, "b": 4}}', "\n</tool_call>"]
    events, _, _ = run(pieces, budget=None, with_tools=True)
    assert not any(e.kind == "text" and "tool_call" in e.text for e in events)
    calls = [e.tool_call for e in events if e.kind == "tool_call"]
    assert len(calls) == 1 and (calls[0].name, calls[0].arguments) == ("add", {"a": 3, "b": 4})
    gen = events[-1].generation
    assert gen.finish_reason == "tool_calls" and gen.tool_calls == calls and gen.text == ""


def test_a_stop_string_ends_the_answer_and_the_backend():
    events, _, backend = run(["The", " answer", " STOP", " more"], budget=None, stop=[" STOP"])
    gen = events[-1].generation
    assert gen.finish_reason == "stop" and gen.text == "The answer"
    assert gen.usage.output_tokens == 3 and backend.closed  # the run stopped at the stop string


def test_closing_the_stream_cancels_the_request():
    out = CallOutput(WordPrompter(), ThinkingConfig(), "scripted")
    p = plan(None)
    req = Request(ThinkingController(None, p.answer_reserve, p.max_tokens, encode=lambda s: []))
    backend = ScriptedBackend(["The", " answer", " is", " 7"])
    stream = out.events(backend, req, p)
    assert next(stream).kind == "text"
    stream.close()
    assert req.cancelled and backend.closed
