"""The engine's output side: one request's steps become stream events and the final Generation.

Torch-free. A backend yields ``StepOutput``s (a token id, or a finish reason); ``CallOutput``
decodes them incrementally, splits reasoning from the answer (``engine.detok.TextAssembler``),
holds tool-call markup back until a call is complete, applies stop strings, and ends with a
"done" event whose ``Generation`` carries the ``Usage`` (tokens, KV memory, timing, the plan).
The plan arrives fitted (``budgetllm.policy.fit``); nothing here changes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace

from budgetllm.engine.detok import IncrementalDecoder, TextAssembler
from budgetllm.types import Generation, Plan, StreamEvent, ThinkingConfig, Usage

UsageSink = Callable[[str, Usage], None]


@dataclass
class CallOutput:
    """What the output side needs from the composition root: the prompter (decode, tool-call
    parsing), where thinking starts and ends, the model's name and the usage sinks."""

    prompter: object  # budgetllm.prompting.Prompter
    thinking: ThinkingConfig
    model_name: str
    sinks: list[UsageSink] = field(default_factory=list)

    def events(
        self, backend, req, plan: Plan, *, stop: list[str] | None = None, with_tools: bool = False
    ) -> Iterator[StreamEvent]:
        """Run ``req`` on ``backend`` and stream its events; closing the iterator cancels it."""
        ctrl = req.controller
        decoder = IncrementalDecoder(self.prompter.decode)
        text = TextAssembler(
            ctrl.thinking,
            self.thinking.close_tag.strip(),
            stop or [],
            open_tag=self.thinking.open_tag.strip() if plan.thinking_budget != 0 else "",
        )
        tools = self.prompter.tool_splitter() if with_tools else None
        generated: list[int] = []
        finish = "length"
        steps = backend.run(req)
        try:
            for step in steps:
                if step.token_id >= 0 and step.finished is None:
                    generated.append(step.token_id)
                    # (the engine's controller follows the think tags itself, by token ids)
                    pieces = text.feed(decoder.push(step.token_id))
                    yield from _emit(pieces, tools)
                    if text.stopped:
                        finish = "stop"
                        break
                if step.finished:
                    finish = step.finished
                    break
        except GeneratorExit:
            req.cancelled = True
            raise
        finally:
            steps.close()
        yield from _emit(text.flush(), tools)
        generation, tail = self._finish(req, plan, text, tools, generated, finish)
        yield from tail
        yield StreamEvent("done", generation=generation)

    def _finish(
        self, req, plan: Plan, text: TextAssembler, tools, generated: list[int], finish: str
    ) -> tuple[Generation, list[StreamEvent]]:
        ctrl = req.controller
        events: list[StreamEvent] = []
        answer, calls, invalid = text.answer, [], []
        if tools is not None:
            tail = tools.finish()
            if tail and "<tool_call>" not in tail:
                events.append(StreamEvent("text", tail))
            answer, calls, invalid = self.prompter.parse_tool_calls(text.answer)
            calls = _streamed_ids(calls, invalid, tools)
            events += [StreamEvent("tool_call", tool_call=c) for c in [*calls, *invalid]]
            if calls:  # only a valid call is a tool-call finish
                finish = "tool_calls"
        usage = Usage(
            input_tokens=len(req.prompt_ids),
            output_tokens=len(generated),
            reasoning_tokens=ctrl.reasoning_tokens,
            cached_tokens=req.cached_tokens,
            kv=req.meter.result(),
            prefill_seconds=req.prefill_seconds,
            decode_seconds=req.decode_seconds,
            plan=plan,
            forced_close=ctrl.forced_close,
        )
        gen = Generation(
            text=answer.strip() if calls else answer,
            reasoning=text.reasoning,
            finish_reason=finish,
            usage=usage,
            prompt_token_ids=req.prompt_ids,
            token_ids=generated,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            model=self.model_name,
        )
        for sink in self.sinks:
            sink(self.model_name, usage)
        return gen, events


def _emit(pieces: Iterable[tuple[str, str]], tools) -> Iterator[StreamEvent]:
    """Text pieces as events; answer text passes the tool-call splitter (markup is held back)."""
    for kind, piece in pieces:
        if kind == "text" and tools is not None:
            for _, visible in tools.feed(piece):
                if visible:
                    yield StreamEvent("text", visible)
            for delta in tools.deltas():  # a tool call's name, then its arguments as they are written
                yield StreamEvent("tool_call_delta", tool_delta=delta)
        elif piece:
            yield StreamEvent(kind, piece)


def _streamed_ids(calls: list, invalid: list, tools) -> list:
    """The parsed calls with the ids their streamed pieces carried (the same calls in the same
    order, all valid), so a consumer can tell a call it already streamed from a new one."""
    streamed = tools.streamed()
    if invalid or len(streamed) != len(calls) or any(n != c.name for (_, n), c in zip(streamed, calls, strict=True)):
        return calls
    return [replace(c, id=i) for (i, _), c in zip(streamed, calls, strict=True)]
