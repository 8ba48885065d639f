"""Compare: baseline vs PAFO (and any other method) per user group: each method's verdict against the baseline from
paired confidence intervals pooled over seeds, a forest plot of those differences, the bias curve, per-user
accuracy, the unfairness table, a Pareto view of the runs on the same data, and downloads."""

from __future__ import annotations

import streamlit as st

from pafo import appstate, html_report, report, unseen_report
from pafo.compare import VERDICT_WORDS, describe_rule
from pages import _slices
from pages import _ui as ui

ui.require_app()
#: The cards' Δ is the paired difference of the verdict, from unrounded per-user accuracies: it can differ by 0.1
#: from the difference of the two rounded accuracies shown (the table below computes from those).
PAIRED_HELP = ("Δ: the paired difference to the reference on the same users and pairs (the verdict's number), "
               "computed before rounding, so it can differ by 0.1 from the difference of the rounded accuracies.")

st.title("Compare methods")
picked = ui.pick_finished_run("compare_run", "Finished run", live=True)
if picked is None:
    st.stop()
record, result = picked
methods = report.method_order(result.methods)
per_user = report.per_user_frame(result)
groups, dataset, seeds, comparisons = result.groups, result.dataset, result.seed_list, result.comparisons

minority = (f"{groups.get('n_minority')} minority users per seed" if len(seeds) > 1 else
            f"minority = {groups.get('n_minority')} users with support ≤ {groups.get('threshold', float('nan')):.3f}")
audit = result.is_audit
source = (f"audit of given predictions on {report.judged_pairs_text(result)}" if audit
          else f"encoder {(result.encoder or {}).get('name')}")
# One duration everywhere: the run's own, from its worker's start to its end, as Train and the runs table show it
# (a reused run: the one that trained).
trained = ui.original_record(record)
seconds = appstate.run_seconds(trained)
st.caption(
    f"{dataset.get('name')} · {dataset.get('n_users', 0):,} users · "
    + ("" if audit else f"seed{'s' if len(seeds) > 1 else ''} {appstate.seeds_text(seeds)} · ")
    + f"{source} · support estimator {result.support.get('estimator')} · {minority} · "
    + ("" if seconds is None else f"{'audit' if audit else 'run'} took {seconds:.0f} s")
    + (f" · ♻ reused from {record.reused_from}" if record.reused_from else "")
)
note = report.seed_note(result)
if note:
    st.warning(note, icon=":material/casino:")
for warning in report.sample_warnings(result):
    st.warning(warning, icon=":material/group_off:")

# ----------------------------------------------------------------------------------------------- headline
reference = report.reference_of(result)  # an audit names its own
ref = result.methods[reference]
cols = st.columns(len(methods))
for col, name in zip(cols, methods, strict=True):
    metrics = result.methods[name]
    acc, unf = metrics.accuracy, metrics.unfairness
    same = name == reference
    with col.container(border=True):
        st.markdown(f"**{name}**" + (" (the reference)" if same and comparisons else ""))
        for label, key in (("Minority accuracy", "minority"), ("Majority accuracy", "majority")):
            paired = comparisons[name].delta(key).delta if name in comparisons else None  # the verdict's number
            delta = {} if same else appstate.metric_delta(acc[key], ref.accuracy[key], change=paired)
            st.metric(label, report.percent(acc[key]), **delta, help=None if same else PAIRED_HELP)
        delta = {} if same else appstate.metric_delta(unf["group_gap"], ref.unfairness["group_gap"],
                                                      absolute=True, lower_is_better=True)
        st.metric("Group gap", report.points(unf["group_gap"]), **delta,
                  help="majority − minority accuracy; the change compares sizes, |gap|: closer to 0 is fairer")
        if name in comparisons:
            comparison = comparisons[name]
            verdict = comparison.verdict
            st.markdown(f"Verdict vs {reference}: **{report.VERDICT_ICONS.get(verdict, '')} "
                        f"{VERDICT_WORDS.get(verdict, verdict)}**",
                        help=f"{report.VERDICT_RULE}\n\nThis run's {describe_rule(comparison.rule)}.")
            why = report.verdict_note(comparison)
            st.caption(report.describe_comparison(comparison) + (f" — {why}" if why else ""))
        same_as_reference = None if same else report.identical_note(result, name, reference)
        if same_as_reference:
            st.info(same_as_reference, icon=":material/equal:")
        if report.unselected(metrics):
            st.caption("no epoch met the Pareto selection rule; the best overall epoch was kept")

if comparisons:
    ui.plot(report.forest_plot(result, reference), key="cmp_forest")
    st.subheader("Paired comparisons")
    st.dataframe(report.comparison_table(result), width="stretch", hide_index=True)
    st.caption(f"Each method minus the {reference} on the same users and test pairs, in percentage points, with 95% "
               "bootstrap CIs over users pooled across seeds.")
    with st.expander("How the verdict is decided"):
        st.markdown(report.VERDICT_RULE)

# ----------------------------------------------------------------------------------------------- unseen users
if result.unseen is not None:
    st.subheader("Unseen users")
    st.caption(unseen_report.unseen_caption(result.unseen, len(seeds)))
    left, right = st.columns(2)
    for column, group in ((left, "minority"), (right, "majority")):
        with column:
            ui.plot(unseen_report.unseen_curve(result.unseen, group), key=f"cmp_unseen_{group}")
    st.dataframe(unseen_report.unseen_table(result.unseen, reference), width="stretch", hide_index=True)
    st.caption(unseen_report.UNSEEN_TABLE_NOTE.format(reference=reference))

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
    every = st.toggle("Pareto view: runs on every dataset", key="cmp_pareto_all",
                      help="off: only runs on this run's data (same fingerprint, so the same users and seeds) and "
                           "grouping rule, whose accuracies can be compared")
    finished = ui.finished_runs()
    shown = appstate.pareto_records(finished, record, every_dataset=every)
    points = ui.pareto_frame(shown)
    scope = report.PARETO_SCOPE_ALL if every else report.PARETO_SCOPE
    ui.plot(report.pareto_plot(points, record.id, scope), key="cmp_pareto")
    hidden = len(appstate.pareto_records(finished, record, every_dataset=True)) - len(shown)
    if hidden:
        st.caption(f"{hidden} finished run{'s' if hidden != 1 else ''} on other data or groupings not shown.")

report_result = _slices.panel(record, result)  # with the slices shown here, for the HTML report

# ----------------------------------------------------------------------------------------------- tables
st.subheader("Accuracy and unfairness")
st.dataframe(report.display_table(result, reference), width="stretch", hide_index=True)
st.caption("Accuracies in %, gaps and spreads in percentage points (pts), as on the cards; ↑ larger is better, ↓ "
           f"smaller, |↓| smaller in size. Δ columns: the method minus the {reference}, in points, from the rounded "
           "values shown (so each row adds up). Accuracies weigh "
           "each user equally" + ("; with several seeds every figure is the mean over the seeds." if len(seeds) > 1
                                  else "."))
teachers = report.teacher_table(result)
if len(teachers):
    with st.expander("PAFO's teachers on their own group (what distillation can transfer)"):
        st.dataframe(teachers, width="stretch", hide_index=True)
DIAGNOSTICS = (  # (expander title, table, caption): what PAFO found and how much was left to gain
    ("PAFO's preference clusters (found by EM on training pairs)", report.cluster_table(result),
     "Clusters of the lowest-objective EM restart; each user's teacher direction averages every restart. A cluster "
     "maps to the minority when its mean support is at or below the grouping threshold. Accuracies are on the "
     "cluster's users' test pairs."),
    ("Ceilings: how much could be gained (diagnostics, not methods)", report.ceiling_table(result),
     "Each row reads test labels; oracle rows also read the simulated users' true personas. Per-user fits on g(φ) "
     "vs on judge scores predicted from φ show what the baseline's learned features lost; 'PAFO with the true "
     "preference clusters' is the headroom of cluster discovery."),
)
for title, table, caption in DIAGNOSTICS:
    if len(table):
        with st.expander(title):
            st.dataframe(table, width="stretch", hide_index=True)
            st.caption(caption)

# ----------------------------------------------------------------------------------------------- downloads
cols = st.columns([1, 1, 3])
cols[0].download_button("Per-user CSV", per_user.to_csv(index=False).encode(), file_name=f"per_user_{record.id}.csv",
                        mime="text/csv", icon=":material/download:", on_click="ignore", key="dl_per_user")


def _report_html() -> bytes:
    return html_report.build_report_html(report_result, run_id=record.id, label=record.label, pareto_points=points,
                                    pareto_scope=scope).encode()


cols[1].download_button("HTML report", _report_html, file_name=f"pafo_report_{record.id}.html", mime="text/html",
                        icon=":material/description:", on_click="ignore", key="dl_report",
                        help="one self-contained HTML file with these verdicts, figures and tables (opens offline)")
cols[2].page_link(ui.PAGES["users"].script, label="Drill down into single users", icon=ui.PAGES["users"].icon)
