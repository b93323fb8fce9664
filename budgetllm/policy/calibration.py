"""Calibration tables: measured accuracy and KV cost per (task, thinking budget, compression, width).

``budgetllm calibrate`` fills one with ``build_table(grid, measure)``: ``measure`` runs the model
(the engine's job, not this torch-free module) on one grid point and returns its
``CalibrationPoint``. The Pareto policy reads the table through ``interpolate``: accuracy rises
roughly log-linearly with thinking tokens and saturates (docs/notes/budget.md §3.5), so budgets are
interpolated in log2(1 + budget) and clamped outside the measured range (flat, never
extrapolated); compressions in log2(CR). JSON format: ``{"version": 1, "model": ..., "points": [...]}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

from budgetllm.errors import PolicyFileError


@dataclass(frozen=True)
class CalibrationPoint:
    task: str
    thinking_budget: int
    compression: float
    accuracy: float  # fraction correct, 0..1
    mean_reasoning_tokens: float
    peak_kv_bytes: int
    kv_bytes_read: int
    n_samples: int
    width: int = 1
    prompt_tokens: float = 0.0  # mean prompt length of the task's items (for re-estimating costs)


_NUMERIC = (
    "thinking_budget",
    "compression",
    "accuracy",
    "mean_reasoning_tokens",
    "peak_kv_bytes",
    "kv_bytes_read",
)


@dataclass(frozen=True)
class CalibrationGrid:
    """The grid ``budgetllm calibrate`` measures (docs/notes/budget.md §3.5 suggests this one)."""

    tasks: tuple[str, ...] = ("gsm",)
    thinking_budgets: tuple[int, ...] = (0, 256, 512, 1024, 2048, 4096)
    compressions: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    widths: tuple[int, ...] = (1,)

    def __iter__(self) -> Iterator[tuple[str, int, float, int]]:
        for task in self.tasks:
            for budget in self.thinking_budgets:
                for compression in self.compressions:
                    for width in self.widths:
                        yield task, budget, compression, width


@dataclass
class CalibrationTable:
    points: list[CalibrationPoint] = field(default_factory=list)
    model: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    # -- lookup ---------------------------------------------------------------------------------
    def tasks(self) -> list[str]:
        return sorted({p.task for p in self.points})

    def points_for(self, task: str) -> list[CalibrationPoint]:
        return sorted(
            (p for p in self.points if p.task == task),
            key=lambda p: (p.width, p.compression, p.thinking_budget),
        )

    def compressions(self, task: str) -> list[float]:
        return sorted({p.compression for p in self.points_for(task)})

    def widths(self, task: str) -> list[int]:
        return sorted({p.width for p in self.points_for(task)})

    def budgets(self, task: str, compression: float | None = None, width: int | None = None) -> list[int]:
        return sorted(
            {
                p.thinking_budget
                for p in self.points_for(task)
                if (compression is None or p.compression == compression)
                and (width is None or p.width == width)
            }
        )

    def interpolate(
        self, task: str, thinking_budget: int, compression: float, width: int = 1
    ) -> CalibrationPoint:
        """Every metric at an arbitrary budget / compression, from the neighbouring grid points."""
        widths = self.widths(task)
        if not widths:
            raise KeyError(
                f"no calibration points for task {task!r}; tasks: {', '.join(self.tasks()) or 'none'}"
            )
        # Width is not interpolated: use the largest measured width not above the asked one.
        width = max([w for w in widths if w <= width] or [min(widths)])
        levels = sorted({p.compression for p in self.points_for(task) if p.width == width})
        low, high, t = _bracket(levels, compression, math.log2)
        a = self._along_budget(task, low, width, thinking_budget)
        if high == low:
            return replace(a, thinking_budget=thinking_budget, compression=compression)
        b = self._along_budget(task, high, width, thinking_budget)
        return _mix(a, b, t, thinking_budget=thinking_budget, compression=compression)

    def _along_budget(self, task: str, compression: float, width: int, budget: int) -> CalibrationPoint:
        curve = {
            p.thinking_budget: p
            for p in self.points_for(task)
            if p.compression == compression and p.width == width
        }
        low, high, t = _bracket(sorted(curve), budget, lambda b: math.log2(1 + b))
        return curve[low] if low == high else _mix(curve[low], curve[high], t, thinking_budget=budget)

    def frontier(self, task: str, cost: str = "peak_kv_bytes") -> list[CalibrationPoint]:
        """Pareto-optimal points: no other point is at least as accurate for less ``cost``."""
        best: list[CalibrationPoint] = []
        for point in sorted(self.points_for(task), key=lambda p: (getattr(p, cost), -p.accuracy)):
            if not best or point.accuracy > best[-1].accuracy:
                best.append(point)
        return best

    # -- JSON -----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "model": self.model,
            "meta": self.meta,
            "points": [asdict(p) for p in self.points],
        }

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any, source: str = "<calibration>") -> CalibrationTable:
        if not isinstance(data, dict) or not isinstance(data.get("points"), list):
            raise PolicyFileError(
                f'{source}: a calibration file is a JSON object with a "points" list. Fix: write {{"version": 1, "points": [...]}}'
            )
        known = {f.name for f in fields(CalibrationPoint)}
        points = []
        for i, raw in enumerate(data["points"]):
            where = f"{source}: points[{i}]"
            if not isinstance(raw, dict):
                raise PolicyFileError(
                    f'{where}: must be an object. Fix: write {{"task": ..., "thinking_budget": ...}}'
                )
            unknown = sorted(set(raw) - known)
            missing = sorted(known - set(raw) - {"width", "prompt_tokens"})
            if unknown or missing:
                raise PolicyFileError(
                    f"{where}: unknown fields {unknown}, missing fields {missing}. Fix: use exactly {sorted(known)}"
                )
            _check_point(raw, where)
            points.append(CalibrationPoint(**raw))
        return cls(points=points, model=str(data.get("model", "")), meta=dict(data.get("meta") or {}))

    @classmethod
    def load(cls, path: str | Path) -> CalibrationTable:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise PolicyFileError(
                f"{path}: cannot read the calibration file ({exc.strerror}). Fix: check the path"
            ) from None
        except UnicodeDecodeError:
            raise PolicyFileError(
                f"{path}: the calibration file is not UTF-8 text. Fix: write it as JSON"
            ) from None
        except json.JSONDecodeError as exc:
            raise PolicyFileError(
                f"{path}, line {exc.lineno}: invalid JSON ({exc.msg}). Fix: check the syntax near that line"
            ) from None
        return cls.from_dict(data, str(path))


def build_table(
    grid: CalibrationGrid,
    measure: Callable[[str, int, float, int], CalibrationPoint],
    model: str = "",
    on_point: Callable[[CalibrationPoint], None] | None = None,
) -> CalibrationTable:
    """Measure every grid point with ``measure(task, thinking_budget, compression, width)``."""
    table = CalibrationTable(model=model, meta={"grid": {k: list(v) for k, v in asdict(grid).items()}})
    for task, budget, compression, width in grid:
        point = measure(task, budget, compression, width)
        table.points.append(point)
        if on_point is not None:
            on_point(point)
    return table


def _check_point(raw: dict[str, Any], where: str) -> None:
    numeric = [k for k in (*_NUMERIC, "n_samples", "width", "prompt_tokens") if k in raw]
    for key in numeric:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise PolicyFileError(
                f"{where}.{key}: must be a number (got {value!r}). Fix: write a plain number"
            )
    if not isinstance(raw["task"], str) or not raw["task"]:
        raise PolicyFileError(
            f"{where}.task: must be a non-empty string (got {raw['task']!r}). Fix: name the task"
        )
    if not 0 <= raw["accuracy"] <= 1:
        raise PolicyFileError(
            f"{where}.accuracy: must be in 0..1 (got {raw['accuracy']!r}). Fix: write a fraction, not a percentage"
        )
    if (
        raw["compression"] < 1
        or raw["thinking_budget"] < 0
        or raw["n_samples"] < 1
        or raw.get("width", 1) < 1
    ):
        raise PolicyFileError(
            f"{where}: compression >= 1, thinking_budget >= 0, n_samples >= 1 and width >= 1 are required. Fix: correct the point"
        )


def _bracket(values: list[float], x: float, scale: Callable[[float], float]) -> tuple[float, float, float]:
    """Neighbours of ``x`` in sorted ``values`` and the interpolation weight (clamped outside)."""
    if x <= values[0]:
        return values[0], values[0], 0.0
    if x >= values[-1]:
        return values[-1], values[-1], 0.0
    for low, high in pairwise(values):
        if low <= x <= high:
            return low, high, (scale(x) - scale(low)) / (scale(high) - scale(low))
    return values[-1], values[-1], 0.0  # unreachable for sorted input


def _mix(a: CalibrationPoint, b: CalibrationPoint, t: float, **fixed: Any) -> CalibrationPoint:
    metrics = {
        k: getattr(a, k) + t * (getattr(b, k) - getattr(a, k))
        for k in ("accuracy", "mean_reasoning_tokens", "prompt_tokens")
    }
    costs = {
        k: int(round(getattr(a, k) + t * (getattr(b, k) - getattr(a, k))))
        for k in ("peak_kv_bytes", "kv_bytes_read")
    }
    return replace(a, **metrics, **costs, n_samples=min(a.n_samples, b.n_samples), **fixed)
