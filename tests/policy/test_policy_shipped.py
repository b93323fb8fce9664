"""The embedded model's shipped calibration table reaches ModelProfile.calibration, so a Pareto
policy picks from it without the caller naming a file (budgetllm.policy.shipped).

The profile comes from a real LLM on a tiny random model renamed to the embedded model's name (the
table is looked up by model name; loading the real SmolLM2 would take ~40 s). Every expectation is
derived from the shipped file's own points, read here straight from the package data.
"""

from __future__ import annotations

import json
from dataclasses import replace
from importlib import resources

import pytest

from budgetllm import LLM
from budgetllm.engine.reference.backend import ReferenceBackend
from budgetllm.errors import PolicyFileError
from budgetllm.models.loading import EMBEDDED_NAME
from budgetllm.policy import CalibrationTable, CallContext, ParetoPolicy, RequestedLimits
from budgetllm.policy.shipped import SHIPPED_CALIBRATION, load_shipped_table, shipped_calibration


def shipped_points() -> list[dict]:
    ref = resources.files("budgetllm").joinpath("data", "calibration", SHIPPED_CALIBRATION[EMBEDDED_NAME])
    return json.loads(ref.read_text(encoding="utf-8"))["points"]


@pytest.fixture(scope="module")
def embedded_named(tiny_dir):
    """An LLM whose model carries the embedded model's name, and one with its own (unknown) name."""
    plain = LLM.from_pretrained(str(tiny_dir("llama")), backend="reference", device="cpu", progress=False)
    loaded = replace(plain.loaded, name=EMBEDDED_NAME)
    named = LLM(loaded, ReferenceBackend(loaded, prefix_cache=False))
    yield named, plain
    named.close()
    plain.close()


def test_the_embedded_models_profile_carries_the_shipped_table(embedded_named):
    named, _ = embedded_named
    table = named.profile.calibration
    assert isinstance(table, CalibrationTable) and table.model == EMBEDDED_NAME
    raw = shipped_points()
    assert len(table.points) == len(raw)
    got = {(p.task, p.thinking_budget, p.compression): p.accuracy for p in table.points}
    assert got == {(p["task"], p["thinking_budget"], p["compression"]): p["accuracy"] for p in raw}
    assert shipped_calibration(EMBEDDED_NAME) is table  # read once, then kept


def test_an_unknown_model_gets_no_table(embedded_named):
    _, plain = embedded_named
    assert plain.profile.calibration is None
    assert shipped_calibration("HuggingFaceTB/SmolLM2-135M-Instruct") is None  # a name not in the map


def test_pareto_on_copy_picks_the_compression_the_shipped_table_says(embedded_named):
    """'The most compression that keeps dense quality' on the long copy task, from the shipped
    table: the largest CR whose measured accuracy is at least the dense (CR 1) accuracy."""
    named, _ = embedded_named
    copy = [p for p in shipped_points() if p["task"] == "copy"]
    assert len({p["compression"] for p in copy}) >= 3 and {p["thinking_budget"] for p in copy} == {0}
    dense = next(p["accuracy"] for p in copy if p["compression"] == 1.0)
    expected = max(p["compression"] for p in copy if p["accuracy"] >= dense)
    assert expected > 1.0  # the table says some compression keeps dense quality ...
    assert any(p["accuracy"] < dense for p in copy)  # ... and some does not
    prompt = int(copy[0]["prompt_tokens"])  # the task's own prompt length (longer than the window)
    policy = ParetoPolicy(task="copy", objective="min_memory", accuracy_floor=dense, answer_reserve=8)
    plan = policy.plan(CallContext(prompt_tokens=prompt, model=named.profile))
    assert plan.compression == expected
    assert plan.expected_accuracy == next(p["accuracy"] for p in copy if p["compression"] == expected)
    # the same decision through a real call: LLM builds the context (and its profile) itself
    out = named.generate("copy " * (prompt - 20), max_tokens=4, policy=policy)
    assert out.usage.plan.policy == "pareto" and out.usage.plan.compression == expected
    # a floor above every point: the most accurate point, saying so
    best = max(copy, key=lambda p: p["accuracy"])
    high = ParetoPolicy(task="copy", objective="min_memory", accuracy_floor=1.0, answer_reserve=8)
    capped = high.plan(CallContext(prompt_tokens=prompt, model=named.profile, requested=RequestedLimits()))
    assert capped.compression == best["compression"] and "no point reaches" in capped.reasons["thinking_budget"]


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps({"version": 1, "points": "none"}), "points"),
        (json.dumps({"version": 1, "model": EMBEDDED_NAME, "points": []}), "no points"),
        (json.dumps({"version": 1, "model": "other-model", "points": shipped_points()}), "other-model"),
        (json.dumps({"version": 1, "model": EMBEDDED_NAME, "points": [dict(shipped_points()[0], accuracy=62)]}),
         "accuracy"),
    ],
)
def test_a_malformed_shipped_table_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "table.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(PolicyFileError, match=match) as err:
        load_shipped_table(path, EMBEDDED_NAME)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_a_missing_shipped_table_is_a_clear_error(tmp_path):
    with pytest.raises(PolicyFileError, match="cannot be read"):
        load_shipped_table(tmp_path / "missing.json", EMBEDDED_NAME)


def test_the_shipped_tables_are_package_data():
    """Every mapped table is inside the package (the wheel takes budgetllm/ whole) and loads."""
    for model, filename in SHIPPED_CALIBRATION.items():
        assert resources.files("budgetllm").joinpath("data", "calibration", filename).is_file()
        assert shipped_calibration(model).model == model
