"""Tool calls while they are written: the name of each call, then its argument text piece by piece.

Standard library only. ``ToolCallDeltas.update(markup)`` takes the tool-call markup held back so
far (everything from the first ``<tool_call>`` on, or a Llama-3 bare JSON call ``{"name": ...,
"parameters": ...}``) and returns the new :class:`CallDelta` pieces: a call's first piece carries
its index, id and name (once the name string is complete), later pieces only argument text. The
argument pieces of one call concatenate to the exact text of its arguments (the JSON object after
``"arguments":`` / ``"parameters":``, up to its closing brace), which is what LangChain's
``tool_call_chunks`` and OpenAI's streamed ``delta.tool_calls`` carry. A call whose keys come in
another order, or whose arguments are not an object, streams nothing; it still arrives complete
(or invalid) when the answer is parsed at the end.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

OPEN = "<tool_call>"
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*')


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class CallDelta:
    index: int  # the call's position in the answer (0, 1, ...)
    args: str  # a piece of argument text ("" on a first piece that only names the call)
    name: str | None = None  # set on the call's first piece only
    id: str | None = None  # set on the call's first piece only


@dataclass
class _Call:
    id: str
    name: str | None = None
    start: int = -1  # where the arguments start inside the call's segment
    scan: int = 0  # characters of the arguments scanned so far
    depth: int = 0
    in_str: bool = False
    esc: bool = False
    end: int | None = None  # length of the arguments once the object closed
    sent: int = 0  # characters of the arguments sent so far
    dead: bool = False  # not streamable (other key order, or arguments not an object)


class ToolCallDeltas:
    def __init__(self) -> None:
        self.calls: list[_Call] = []

    def update(self, markup: str) -> list[CallDelta]:
        """New pieces since the last call (``markup`` only grows between calls)."""
        out: list[CallDelta] = []
        for i, seg in enumerate(_segments(markup)):
            if i == len(self.calls):
                self.calls.append(_Call(new_call_id()))
            out += self._advance(i, self.calls[i], seg)
        return out

    def _advance(self, i: int, c: _Call, seg: str) -> list[CallDelta]:
        if c.dead:
            return []
        out: list[CallDelta] = []
        if c.name is None:
            m = _HEAD.match(seg)
            if m is not None and m.end() == len(seg):
                return []  # the blanks before the arguments may go on
            if m is None:
                if _cannot_match(seg):
                    c.dead = True
                return []
            c.name, c.start = json.loads(m.group(1)), m.end()
            out.append(CallDelta(i, "", c.name, c.id))
        args = seg[c.start:]
        if c.scan == 0 and args and not args.startswith("{"):
            c.dead = True
            return out
        _scan(c, args)
        upto = c.end if c.end is not None else len(args)
        if upto > c.sent:
            out.append(CallDelta(i, args[c.sent:upto]))
            c.sent = upto
        return out


def _scan(c: _Call, args: str) -> None:
    """Follow the arguments object to its closing brace (strings and nesting aware)."""
    while c.end is None and c.scan < len(args):
        ch = args[c.scan]
        c.scan += 1
        if c.in_str:
            if c.esc:
                c.esc = False
            elif ch == "\\":
                c.esc = True
            elif ch == '"':
                c.in_str = False
        elif ch == '"':
            c.in_str = True
        elif ch in "{[":
            c.depth += 1
        elif ch in "}]":
            c.depth -= 1
            if c.depth == 0:
                c.end = c.scan


def _segments(markup: str) -> list[str]:
    """The text of each call: after each ``<tool_call>``, or the whole markup for a bare JSON call."""
    if OPEN in markup:
        return markup.split(OPEN)[1:]
    return [markup] if markup.lstrip().startswith("{") else []


def _cannot_match(seg: str) -> bool:
    """True when ``seg`` can no longer become a call head (some other key came first)."""
    s = seg.lstrip()
    if not s:
        return False
    head = '{"name"'
    compact = re.sub(r"\s+", "", s)[: len(head)]
    return not head.startswith(compact)
