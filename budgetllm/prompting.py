"""From messages to token ids and back, through the model's own chat template."""

from __future__ import annotations

from typing import Any

from budgetllm.errors import InvalidRequestError


class Prompter:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        for tok in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>"):
            tid = tokenizer.convert_tokens_to_ids(tok) if tok in tokenizer.get_vocab() else None
            if tid is not None:
                ids.add(tid)
        self.eos_ids: set[int] = ids

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if text else []

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def render(self, messages, tools: list[dict] | None = None) -> str:
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if not isinstance(messages, list) or not messages:
            raise InvalidRequestError("messages", "must be a string or a non-empty list of {role, content} dicts")
        try:
            from budgetllm.chat_prompt import render_messages
        except ImportError:  # pragma: no cover - the chat-format layer ships with the package
            render_messages = None
        if render_messages is not None:
            return render_messages(self.tokenizer, messages, tools=tools, add_generation_prompt=True)
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode_prompt(self, messages, tools: list[dict] | None = None) -> list[int]:
        text = self.render(messages, tools)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def think_tag_ids(self, cfg) -> list[int]:
        """Single-token think tags, banned after a block closes so it cannot reopen."""
        out = []
        for tag in (cfg.open_tag.strip(), cfg.close_tag.strip()):
            ids = self.encode_text(tag)
            if len(ids) == 1:
                out.append(ids[0])
        return out

    def tool_splitter(self) -> Any:
        from budgetllm.chat_format import ToolCallStreamSplitter

        return ToolCallStreamSplitter()

    def tool_call_prefix(self, tool_choice, tools) -> str | None:
        if not tools:
            return None
        from budgetllm.chat_prompt import tool_call_prefix

        return tool_call_prefix(tool_choice, tools)

    def tool_format(self) -> str:
        from budgetllm.chat_prompt import tool_call_format

        return tool_call_format(self.tokenizer)

    def parse_tool_calls(self, text: str):
        from budgetllm.chat_format import parse_tool_calls, parse_with_tokenizer

        return parse_with_tokenizer(self.tokenizer, text) or parse_tool_calls(text)
