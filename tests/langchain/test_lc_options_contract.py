"""ChatDMS's per-call options against budgetllm's CallOptions (the one list of per-call fields), and
unknown constructor arguments raising instead of being dropped."""

from __future__ import annotations

from dataclasses import fields

import pytest

pytest.importorskip("langchain_core")

from langchain_budgetllm import (
    ChatDMS,  # noqa: E402
    options,  # noqa: E402
)

from budgetllm.options import CallOptions  # noqa: E402

INTERNAL = {"temperature_requested", "top_p_requested"}  # set by CallOptions.parse, never by a caller


def test_chatdms_options_match_calloptions():
    contract = {f.name for f in fields(CallOptions)} - INTERNAL
    chat = set(options.FIELD_OPTIONS) | set(options.CALL_ONLY_OPTIONS) | {"stop"}
    assert chat == contract, (f"ChatDMS forwards options CallOptions lacks: {sorted(chat - contract)}; "
                              f"CallOptions fields ChatDMS cannot pass: {sorted(contract - chat)}")
    for name in options.FIELD_OPTIONS:  # each instance-level option is a ChatDMS field
        assert name in ChatDMS.model_fields, name


@pytest.mark.parametrize("kwargs", [{"model_name": "Qwen/Qwen3-8B"}, {"max_token": 5}, {"num_predict": 10},
                                    {"reasoning": True}])
def test_unknown_constructor_arguments_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ChatDMS(**kwargs)
