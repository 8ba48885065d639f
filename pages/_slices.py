"""The Compare page's slices panel: pick a slicing (the run's own, or any attribute of its users, computed on
demand), then accuracy per slice with CI whiskers, the slice × method heat map of paired differences marked where
they hold after Holm, and the table, worst slices first. Drawing decisions live in :mod:`pafo.slice_report`."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from pafo import slice_report
from pafo.attributes import BUILTIN_ATTRIBUTES
from pafo.errors import PafoInputError
from pafo.report import method_order, per_user_frame
from pages import _ui as ui


@st.cache_data(show_spinner="Computing slices…", max_entries=32)
def _on_demand(run_id: str, mtime: float, spec: str, _result: dict, _margins) -> list[dict]:
    return slice_report.on_demand_slices(_result, spec, _margins, n_resamples=_bootstrap(_result))


def _bootstrap(result: dict) -> int:
    config = result.get("config") or {}
    return int((config.get("run") or config.get("audit") or {}).get("bootstrap", 1000))


def panel(record, result: dict) -> dict:
    """The slices section of Compare for one finished run; returns the result the HTML report should show: the run's
    own, or with the slices computed here on demand."""
    per_user = per_user_frame(result)
    attributes = slice_report.slice_attributes(per_user)
    stored = slice_report.slicing_options(result)
    st.subheader("Slices")
    first = stored[0].split(",") if stored else []
    own = [a for a in attributes if a not in BUILTIN_ATTRIBUTES]  # the users' own attributes before the built-ins
    default = [c.partition(":")[0] for c in first if c.partition(":")[0] in attributes][:2] or (own or attributes)[:1]
    picked = st.multiselect("Slice by (one attribute, or two for their intersection)", attributes, default=default,
                            max_selections=2, key=f"slice_by_{record.id}",
                            help="the run's own attributes (its --user-attributes file or the dataset's), the "
                                 "support group and the support-rate decile")
    if not picked:
        st.info("Pick an attribute to slice the users by.")
        return result
    spec = next((s for s in stored if [c.partition(":")[0] for c in s.split(",")] == picked), None)
    methods, reference = method_order(result["methods"]), result.get("reference") or (
        "baseline" if "baseline" in result["methods"] else None)
    if spec is not None:
        slices = result["slices"]
        family = (result.get("slicing") or {}).get("adjustment", "Holm over the run's slices")
    else:
        spec = slice_report.spec_for(per_user, picked)
        try:
            mtime = Path(record.result_path).stat().st_mtime if record.result_path else 0.0
            slices = _on_demand(record.id, mtime, spec, result, ui.test_margins(record))
        except PafoInputError as exc:
            ui.show_error(str(exc), "Cannot slice by that: ")
            return result
        family = f"computed now; Holm over this slicing's {sum(len(e['comparisons']) for e in slices)} comparisons"
    st.caption(f"Slicing {spec} · {family} · reference {reference}")
    left, right = st.columns(2)
    with left:
        ui.plot(slice_report.slice_accuracy_figure(slices, spec, methods, reference), key="slice_accuracy")
    with right:
        if reference and len(methods) > 1:
            ui.plot(slice_report.slice_heatmap(slices, spec, methods, reference), key="slice_heatmap")
    st.dataframe(slice_report.slice_table(slices, spec, methods, reference), width="stretch", hide_index=True,
                 column_config={"slice": st.column_config.TextColumn("slice", width="medium")})
    st.caption(slice_report.SLICES_NOTE)
    if result.get("slices"):
        return result
    return {**result, "slices": slices, "slicing": {"by": [spec], "adjustment": family}}
