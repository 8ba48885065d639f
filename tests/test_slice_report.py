"""What the Compare page and the HTML report draw for slices (pafo.slice_report), from a constructed result:
worst slices first, significance marks only where a difference holds after Holm, whiskers from the CIs, the report's
picker, on-demand slicing of a finished run and the Users filter."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from pafo import slice_report
from pafo.attributes import parse_slicing
from pafo.html_report import build_report_html
from pafo.results import RunResult
from pafo.slices import SliceSettings, compute_slices, slicing_block


def _result() -> RunResult:
    """An audit-like result: 90 users in three regions; ``new`` gains 20 points on region A only."""
    rng = np.random.default_rng(0)
    n = 90
    region = np.array(["A", "B", "C"])[np.arange(n) % 3]
    ref = rng.uniform(0.5, 0.8, n)
    new = ref + np.where(region == "A", 0.2, 0.0) + rng.normal(0, 0.01, n) * (region == "A")
    per_user = pd.DataFrame({"user_id": [f"u{i}" for i in range(n)], "group": "majority", "support_rate":
                             rng.uniform(0.2, 0.9, n), "n_test": 10, "acc_ref": ref, "acc_new": new, "region": region,
                             "age": rng.integers(18, 80, n).astype(str)})
    settings = SliceSettings(slice_by=["region", "age:quantiles=2"]).validate()
    slices = compute_slices(per_user, None, settings.slicings(), ["ref", "new"], "ref", n_resamples=200)
    method = {"accuracy": {}}
    return RunResult.from_json({
        "kind": "audit", "reference": "ref", "methods": {"ref": method, "new": method},
        "slices": [entry.to_json() for entry in slices], "slicing": slicing_block(settings, "ref", slices),
        "per_user": per_user.to_dict(orient="list"), "config": {"data": {"seed": 0}}})


def test_table_is_worst_first_by_the_method_under_test():
    result = _result()
    table = slice_report.slice_table(result.slices, "region", ["ref", "new"], "ref")
    assert list(table["new %"]) == sorted(table["new %"])  # worst first
    assert table["slice"].iloc[-1] == "region = A" and table["new verdict"].iloc[-1] == "better"
    assert set(table["new verdict"].iloc[:-1]) == {"within noise"}
    assert table["new p (Holm)"].iloc[-1] == "<0.0001"


def test_heat_map_marks_only_what_holds_after_holm_and_never_prints_minus_zero():
    result = _result()
    fig = slice_report.slice_heatmap(result.slices, "region", ["ref", "new"], "ref")
    [trace] = fig.data
    texts = [row[0] for row in trace.text]
    assert set(trace.y) == {"region = A", "region = B", "region = C"} and trace.y[-1] == "region = A"
    assert [t.endswith("*") for t in texts] == [label == "region = A" for label in trace.y]
    assert "−0.0" not in texts and "-0.0" not in texts
    assert trace.zmax >= slice_report.MIN_COLOR_POINTS and trace.zmid == 0


def test_accuracy_figure_has_a_whisker_per_slice_and_method():
    result = _result()
    fig = slice_report.slice_accuracy_figure(result.slices, "region", ["ref", "new"], "ref")
    assert [t.name for t in fig.data] == ["ref", "new"]
    assert list(fig.layout.yaxis.ticktext)[-1] == "region = A"
    for trace in fig.data:
        assert len(trace.error_x.array) == len(trace.x) == 3 and (np.asarray(trace.error_x.array) >= 0).all()


def test_report_section_has_a_picker_and_one_panel_per_slicing():
    result = _result()
    section = slice_report.report_section(result)
    assert section.count("<option") == 2 and section.count("class='slicing'") == 2
    assert "pickSlicing" in section and "region = A" in section and "Q1 (" in section
    assert slice_report.report_section(dataclasses.replace(result, slices=[])) == ""
    page = build_report_html(result, run_id="r1")
    assert page.index("<h2>Slices</h2>") > page.index("plotly")  # after plotly.js is in the page


def test_on_demand_slicing_and_user_filter_from_a_finished_result():
    result = _result()
    per_user = result.per_user
    assert slice_report.slice_attributes(per_user) == ["group", "decile", "region", "age"]
    assert slice_report.spec_for(per_user, ["region", "age"]) == "region,age:quantiles=4"
    slices = slice_report.on_demand_slices(result, "region", n_resamples=100)
    assert [s.by["region"] for s in slices] == ["A", "B", "C"]
    stored = {s.by["region"]: s.methods["new"].accuracy for s in result.slices if "region" in s.by}
    assert {s.by["region"]: s.methods["new"].accuracy for s in slices} == stored
    only_a = slice_report.filter_by_attribute(per_user, "region", ["A"])
    assert set(only_a["region"]) == {"A"} and len(only_a) == 30
    assert len(slice_report.filter_by_attribute(per_user, "region", [])) == 90
    ages = slice_report.attribute_values(per_user, "age")
    assert ages == sorted(ages, key=int) and len(ages) == per_user["age"].nunique()  # by value, not as text
    assert parse_slicing("region,age").title == "region × age"
