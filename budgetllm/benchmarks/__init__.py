"""Benchmarks of docs/targets.md: the paged engine against its baselines, on one GPU, side by side.

Owns: the measurement matrix, the baselines (HF ``generate``, a CUDA-graphed dense torch step,
the reference backend), byte counting, plots and ``summary.json``. Imported only by ``budgetllm
bench`` and ``bench/run.py``; nothing in the library depends on it.
"""
