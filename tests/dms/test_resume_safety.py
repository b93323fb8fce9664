"""Resuming a retrofit reads its checkpoint with torch.load(weights_only=True): a checkpoint that
would run code when unpickled is refused with a CheckpointFormatError, and nothing runs."""

from __future__ import annotations

import pytest
import torch

from budgetllm.dms.train import RetrofitConfig, Retrofitter
from budgetllm.errors import CheckpointFormatError

RAN: list[str] = []


class Payload:
    def __reduce__(self):
        return (RAN.append, ("code from the checkpoint ran",))


def test_a_pickled_object_in_a_checkpoint_is_refused(tiny_loaded, rows, tmp_path):
    cfg = RetrofitConfig(target_cr=4, window=8, steps=1, batch_size=2, seq_len=64, save_every=1)
    tr = Retrofitter(tiny_loaded(), cfg, rows(), checkpoint_dir=tmp_path)
    tr.train(progress=False)
    path = tr.checkpoint_path
    state = torch.load(path, weights_only=True)  # an honest checkpoint loads safely
    state["history"].append(Payload())
    torch.save(state, path)
    with pytest.raises(CheckpointFormatError, match="--no-resume"):
        Retrofitter(tiny_loaded(), cfg, rows(), checkpoint_dir=tmp_path)
    assert RAN == []
