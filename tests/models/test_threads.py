"""The default CPU thread count and its overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from budgetllm.errors import InvalidRequestError
from budgetllm.models.threads import chosen_threads, default_threads

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_half_the_cores_between_one_and_four(cores, expected):
    assert default_threads(cores) == expected
    assert chosen_threads({}, cores) == expected


def test_overrides():
    assert chosen_threads({"BUDGETLLM_THREADS": "3"}, 2) == 3
    assert chosen_threads({"BUDGETLLM_THREADS": "torch"}, 8) is None
    assert chosen_threads({"OMP_NUM_THREADS": "2"}, 8) is None
    assert chosen_threads({"BUDGETLLM_THREADS": "2", "OMP_NUM_THREADS": "6"}, 8) == 2
    for bad in ("0", "-1", "two"):
        with pytest.raises(InvalidRequestError, match="BUDGETLLM_THREADS"):
            chosen_threads({"BUDGETLLM_THREADS": bad}, 8)


def test_a_cpu_load_applies_the_choice(tiny_dir):
    code = ("import torch, sys; from budgetllm.models import load_model; "
            f"load_model({str(tiny_dir('llama'))!r}, device='cpu', progress=False); print(torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**env, "PYTHONPATH": str(ROOT), "BUDGETLLM_THREADS": "3"}, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "3"
