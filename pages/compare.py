"""Compare: baseline vs PAFO (and any other method) per user group, with uncertainty, the bias curve, per-user
accuracy, the unfairness table, a Pareto view of every finished run, and downloads."""

from __future__ import annotations

import streamlit as st

from pafo import report
from pages import _ui as ui

ui.require_app()

st.title("Compare methods")
picked = ui.pick_finished_run("compare_run", "Finished run", live=True)
if picked is None:
    st.stop()
record, result = picked
methods = report.method_order(result["methods"])
per_user = report.per_user_frame(result)
groups = result.get("groups") or {}
dataset = result.get("dataset") or {}

st.caption(
    f"{dataset.get('name')} · {dataset.get('n_users', 0):,} users · "
    + (f"audit of given predictions on {result.get('n_pairs', 0):,} {result.get('split')} pairs"
       if result.get("kind") == "audit" else f"encoder {result['encoder']['name']}") + " · "
    f"support estimator {result['support']['estimator']} · minority = {groups.get('n_minority')} users with "
    f"support ≤ {groups.get('threshold', float('nan')):.3f} · run took {result.get('seconds', 0):.0f} s"
    + (f" · ♻ reused from {record.reused_from}" if record.reused_from else "")
)

# ----------------------------------------------------------------------------------------------- headline
reference = result.get("reference") or ("baseline" if "baseline" in methods else methods[0])
ref_acc = result["methods"][reference]["accuracy"]
ref_gap = result["methods"][reference]["unfairness"]["group_gap"]
cols = st.columns(len(methods))
for col, name in zip(cols, methods, strict=True):
    acc, unf = result["methods"][name]["accuracy"], result["methods"][name]["unfairness"]
    with col.container(border=True):
        st.markdown(f"**{name}**")
        delta = None if name == reference else f"{100 * (acc['minority'] - ref_acc['minority']):+.1f} pts"
        st.metric("Minority accuracy", f"{100 * acc['minority']:.1f}%", delta)
        delta = None if name == reference else f"{100 * (acc['majority'] - ref_acc['majority']):+.1f} pts"
        st.metric("Majority accuracy", f"{100 * acc['majority']:.1f}%", delta)
        delta = None if name == reference else f"{100 * (unf['group_gap'] - ref_gap):+.1f} pts"
        st.metric("Group gap", f"{100 * unf['group_gap']:.1f} pts", delta, delta_color="inverse")
        metrics = result["methods"][name]
        if "pareto_improvement" in metrics:
            st.caption("✓ Pareto improvement over the baseline" if metrics["pareto_improvement"]
                       else "✗ not a Pareto improvement over the baseline")
        if metrics.get("pareto_selected") is False:
            st.caption("no epoch met the Pareto selection rule; the best overall epoch was kept")
        if name in (result.get("comparisons") or {}):
            comparison = result["comparisons"][name]
            st.markdown(f"Verdict vs {reference}: **{comparison['verdict']}**")
            st.caption(report.comparison_text(name, comparison, reference))

# ----------------------------------------------------------------------------------------------- figures
left, right = st.columns(2)
with left:
    ui.plot(report.group_accuracy_bars(result), key="cmp_groups")
with right:
    ui.plot(report.decile_curve(result), key="cmp_deciles")

left, right = st.columns(2)
with left:
    if len(methods) >= 2:
        pick = st.columns(2)
        x_method = pick[0].selectbox("x axis", methods, index=methods.index(reference), key="cmp_x")
        others = [m for m in methods if m != x_method]
        y_default = "pafo" if "pafo" in others else others[-1]
        y_method = pick[1].selectbox("y axis", others, index=others.index(y_default), key="cmp_y")
        ui.plot(report.user_scatter(per_user, x_method, y_method), key="cmp_scatter")
    else:
        st.info("The per-user scatter needs two methods; this run trained only one.")
with right:
    runs = ui.finished_runs()
    points = ui.pareto_frame(runs)
    ui.plot(report.pareto_plot(points, record.id), key="cmp_pareto")

# ----------------------------------------------------------------------------------------------- tables
st.subheader("Accuracy and unfairness")
table = report.unfairness_table(result, reference)
st.dataframe(table, width="stretch", hide_index=True, column_config={
    c: st.column_config.NumberColumn(c, format="%+.3f" if c.startswith("Δ") else "%.3f")
    for c in table.columns if c not in ("metric", "better")})
st.caption("↑: larger is better, ↓: smaller is better. Δ columns: the method minus the "
           f"{reference}. Accuracies weigh each user equally; CIs are percentile bootstraps over users.")
if result.get("comparisons"):
    st.subheader("Paired comparisons")
    st.dataframe(report.comparison_table(result), width="stretch", hide_index=True)
    st.caption("Each model minus the reference on the same users and pairs, with 95% bootstrap CIs over users. "
               "Verdict: pareto = minority CI above 0 and majority not down by more than 0.5 points; worse, "
               "tradeoff, or noise otherwise (see the README).")
teachers = report.teacher_table(result)
if len(teachers):
    with st.expander("PAFO's teachers on their own group (what distillation can transfer)"):
        st.dataframe(teachers, width="stretch", hide_index=True)

# ----------------------------------------------------------------------------------------------- downloads
cols = st.columns([1, 1, 3])
cols[0].download_button("Per-user CSV", per_user.to_csv(index=False).encode(), file_name=f"per_user_{record.id}.csv",
                        mime="text/csv", icon=":material/download:", on_click="ignore", key="dl_per_user")


def _report_html() -> bytes:
    return report.build_report_html(result, run_id=record.id, label=record.label, pareto_points=points).encode()


cols[1].download_button("HTML report", _report_html, file_name=f"pafo_report_{record.id}.html", mime="text/html",
                        icon=":material/description:", on_click="ignore", key="dl_report",
                        help="one self-contained HTML file with these figures and tables (opens offline)")
cols[2].page_link(ui.PAGES["users"], label="Drill down into single users", icon=":material/person_search:")
