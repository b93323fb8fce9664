"""Plot a calibration table: accuracy against peak KV memory, one curve per compression ratio.

matplotlib is an optional extra (``budgetllm[plots]``), imported only when a plot is drawn, with
the Agg backend so it works on headless machines.
"""

from __future__ import annotations

from pathlib import Path

from budgetllm.policy.calibration import CalibrationTable

_COSTS = {"peak_kv_bytes": "peak KV memory (MiB)", "kv_bytes_read": "KV bytes read (MiB)"}


def plot_frontier(
    table: CalibrationTable, path: str | Path, task: str | None = None, cost: str = "peak_kv_bytes"
) -> Path:
    """Write the plot to ``path`` (format from the suffix) and return the path.

    Each curve joins one compression's points in budget order (labelled with the budget); the
    dashed black line is the Pareto frontier over all points.
    """
    if cost not in _COSTS:
        raise ValueError(f"cost must be one of {sorted(_COSTS)}, got {cost!r}")
    tasks = [task] if task else table.tasks()
    if not tasks or not any(table.points_for(t) for t in tasks):
        raise ValueError(f"no calibration points to plot (task {task!r}; tasks in table: {table.tasks()})")
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("plot_frontier needs matplotlib: pip install 'budgetllm[plots]'") from exc

    mib = 1024 * 1024
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, name in zip(axes[0], tasks, strict=True):
        for width in table.widths(name):
            for compression in table.compressions(name):
                points = [
                    p for p in table.points_for(name) if p.compression == compression and p.width == width
                ]
                if not points:
                    continue
                xs = [getattr(p, cost) / mib for p in points]
                label = f"CR {compression:g}" + (f", width {width}" if width > 1 else "")
                ax.plot(xs, [p.accuracy for p in points], marker="o", label=label)
                for p, x in zip(points, xs, strict=True):
                    ax.annotate(
                        str(p.thinking_budget),
                        (x, p.accuracy),
                        fontsize=7,
                        xytext=(3, 3),
                        textcoords="offset points",
                    )
        front = table.frontier(name, cost)
        ax.plot(
            [getattr(p, cost) / mib for p in front],
            [p.accuracy for p in front],
            "k--",
            linewidth=1,
            label="Pareto frontier",
        )
        ax.set_xscale("log")
        ax.set_xlabel(_COSTS[cost])
        ax.set_ylabel("accuracy")
        ax.set_title(f"{table.model or 'model'} — {name}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
