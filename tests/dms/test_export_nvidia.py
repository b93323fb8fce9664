"""What we export loads in NVIDIA's code: every key its config class reads, checked by a copy of its
checks, and the trained settings (not the untrained ones) after a full-model retrofit."""

from __future__ import annotations

import argparse
import json

import pytest


class NvidiaQwen3ConfigDMSChecks:
    """A copy of the DMS part of ``Qwen3ConfigDMS.__init__`` (NVIDIA Model-Optimizer,
    experimental/dms/models/qwen3/configuration_qwen3_dms.py): its keyword arguments with their
    defaults, and its three asserts. The Qwen3Config part is left out (our keys are the dms_* ones)."""

    def __init__(self, dms_alpha_scale: float = 100.0, dms_initial_alpha_offset: float = 5.0,
                 dms_window_size: int = 512, dms_paged_attention_block_size: int = 256, dms_cr: int = 8,
                 dms_disable_eviction: bool = False, dms_separate_alpha: bool = False, dms_alpha_per: str = "head",
                 dms_tau: float = 0.1, dms_compile_limit: int | None = 72, dms_manual_inference_mode: bool = False,
                 dms_chunked_prefill: int | None = None, dms_preallocate_for_tokens: int = 4096, **kwargs):
        self.dms_window_size = dms_window_size
        self.dms_paged_attention_block_size = dms_paged_attention_block_size
        self.dms_alpha_per = dms_alpha_per
        assert self.dms_paged_attention_block_size > 0, "block size is not greater than 0"
        assert self.dms_window_size > self.dms_paged_attention_block_size, (
            f"dms_window_size: {self.dms_window_size} is not greater than dms_paged_attention_block_size: "
            f"{self.dms_paged_attention_block_size}")
        assert self.dms_alpha_per in ["head", "layer"], f"dms_alpha_per: {self.dms_alpha_per} is not supported"


NVIDIA_KEYS = {"dms_alpha_scale", "dms_initial_alpha_offset", "dms_window_size", "dms_paged_attention_block_size",
               "dms_cr", "dms_disable_eviction", "dms_separate_alpha", "dms_alpha_per", "dms_tau",
               "dms_compile_limit", "dms_manual_inference_mode", "dms_chunked_prefill", "dms_preallocate_for_tokens"}


@pytest.mark.parametrize("window", [2, 8, 256, 257, 512, 1024])
def test_exported_keys_pass_nvidias_config_checks(window):
    from budgetllm.dms.export import nvidia_config_keys

    keys = nvidia_config_keys({"window": window, "target_cr": 8.0, "alpha_per": "layer"})
    assert set(keys) == NVIDIA_KEYS  # every key the class reads, no other
    NvidiaQwen3ConfigDMSChecks(**keys)  # its asserts hold (window 256 failed: the block size default is 256)
    assert keys["dms_window_size"] == window and keys["dms_alpha_per"] == "layer" and keys["dms_cr"] == 8


def test_window_too_small_for_nvidia_is_refused():
    from budgetllm.dms.export import nvidia_config_keys

    with pytest.raises(ValueError, match="window must be >= 2"):
        nvidia_config_keys({"window": 1})


def _parser():
    from budgetllm.dms.cli import add_retrofit_subcommand

    p = argparse.ArgumentParser(prog="budgetllm")
    add_retrofit_subcommand(p.add_subparsers(dest="command"))
    return p


def test_full_retrofit_exports_the_trained_settings(tiny_dir, tmp_path):
    """Full-model retrofit: the export carries window 8 and ratio 8 as trained (not 512 and 1.0), loads
    back as a borrowed-channel model with its per-head threshold table, and passes NVIDIA's checks."""
    from budgetllm.models import load_model

    out = tmp_path / "full"
    args = _parser().parse_args([
        "retrofit", "--model", str(tiny_dir("qwen3")), "--out", str(tmp_path / "x.safetensors"), "--scope", "full",
        "--window", "8", "--target-cr", "8", "--seq-len", "64", "--steps", "3", "--batch-size", "2", "--distill", "0",
        "--tasks", "2", "--heldout", "2", "--device", "cpu", "--no-progress", "--export-nvidia", str(out)])
    assert args.func(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["dms_window_size"] == 8 and cfg["dms_cr"] == 8 and cfg["dms_separate_alpha"] is False
    NvidiaQwen3ConfigDMSChecks(**{k: v for k, v in cfg.items() if k.startswith("dms_")})
    back = load_model(str(out), device="cpu", progress=False)
    assert back.dms.variant == "borrowed" and back.dms.window == 8 and back.dms.native_cr == 8
    assert back.dms.threshold_table and len(back.dms.thresholds_for(8)) == back.config.num_hidden_layers
