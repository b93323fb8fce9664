"""The calibration tables that ship with budgetllm, by model: the one place that maps a model to its table.

``shipped_calibration(model_name)`` is what ``LLM.profile`` puts into ``ModelProfile.calibration``,
so a Pareto policy (``ParetoPolicy()`` or a policy file's pareto section without a ``calibration``
path) uses the measured table of the embedded model without the caller naming a file. Tables are
package data (``budgetllm/data/calibration/``), read with importlib.resources on first use and kept.
A model with no shipped table gets None. A shipped table that cannot be read is a packaging bug:
it raises PolicyFileError naming the file (never a silent None).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from budgetllm.errors import PolicyFileError
from budgetllm.policy.calibration import CalibrationTable

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

# model name (``LLM.model_name``; the embedded default's is budgetllm.models.loading.EMBEDDED_NAME)
# -> its table under budgetllm/data/calibration/. The table's own "model" field must agree.
SHIPPED_CALIBRATION = {"SmolLM2-135M-Instruct": "smollm2-135m.json"}


@cache
def shipped_calibration(model_name: str) -> CalibrationTable | None:
    """The shipped calibration table of ``model_name`` (read once, then kept), or None when
    budgetllm ships none for it."""
    filename = SHIPPED_CALIBRATION.get(model_name)
    if filename is None:
        return None
    return load_shipped_table(resources.files("budgetllm").joinpath("data", "calibration", filename), model_name)


def load_shipped_table(path: Traversable | Path, model_name: str) -> CalibrationTable:
    """Read a shipped table: UTF-8 JSON in the calibration format, with points, measured on ``model_name``."""
    where = f"{path} (the shipped calibration table of {model_name})"
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyFileError(f"{where}: cannot be read ({exc}). Fix: reinstall budgetllm (it is package data)") from None
    except json.JSONDecodeError as exc:
        raise PolicyFileError(
            f"{where}, line {exc.lineno}: invalid JSON ({exc.msg}). Fix: regenerate it with `budgetllm calibrate`"
        ) from None
    table = CalibrationTable.from_dict(data, where)  # checks every point (PolicyFileError)
    if not table.points:
        raise PolicyFileError(f"{where}: has no points. Fix: regenerate it with `budgetllm calibrate`")
    if table.model != model_name:
        raise PolicyFileError(
            f"{where}: its \"model\" is {table.model!r}. "
            "Fix: correct budgetllm.policy.shipped.SHIPPED_CALIBRATION or the file's \"model\""
        )
    return table
