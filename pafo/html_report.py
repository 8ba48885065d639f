"""The run's HTML report: one self-contained file (plotly.js embedded once) with what the Compare page shows, the
slices (:mod:`pafo.slice_report`) and the held-out users (:mod:`pafo.unseen_report`)."""

from __future__ import annotations

import datetime as _dt
import html

import pandas as pd

from .report import (
    PARETO_SCOPE,
    comparison_table,
    comparison_text,
    display_table,
    figure_html,
    judged_pairs_text,
    method_order,
    percent,
    points,
    report_figures,
    sample_warnings,
    seed_note,
    table_html,
    teacher_table,
    unselected,
)
from .results import RunResult
from .slice_report import report_section as slices_section
from .unseen_report import report_section as unseen_section

__all__ = ["REPORT_CSS", "build_report_html"]


REPORT_CSS = """
body{font-family:Inter,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#212529;
padding:0 1rem}h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid
#DEE2E6;padding-bottom:.3rem}.meta{color:#868E96;font-size:.9rem}table{border-collapse:collapse;font-size:.85rem;
margin:.5rem 0}th,td{border:1px solid #DEE2E6;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{
text-align:left}th{background:#F8F9FA}.kpi{display:flex;gap:1rem;flex-wrap:wrap}.kpi div{background:#F8F9FA;
border-radius:8px;padding:.6rem 1rem}.kpi b{display:block;font-size:1.3rem}.note{color:#495057;font-size:.9rem}
.warn{background:#FFF9DB;border-left:4px solid #FAB005;padding:.5rem .8rem;font-size:.9rem}
"""


def build_report_html(result: RunResult, *, run_id: str | None = None, label: str | None = None,
                      pareto_points: pd.DataFrame | None = None, generated_at: _dt.datetime | None = None,
                      pareto_scope: str = PARETO_SCOPE) -> str:
    """A single HTML file with the run's headline numbers, verdicts, tables and interactive figures.

    Self-contained: plotly.js is embedded once (no network needed to open it), so it can be mailed or archived.
    It says what the Compare page says, in its units: accuracies in %, gaps and differences in points.
    """
    generated_at = generated_at or _dt.datetime.now()
    dataset, groups, support, encoder = result.dataset, result.groups, result.support, result.encoder or {}
    methods = result.methods
    audit = result.is_audit
    seeds = result.seed_list
    title = f"PAFO Studio report — run {run_id}" if run_id else "PAFO Studio report"
    kpis = []
    for name in method_order(methods):
        acc = methods[name].accuracy
        gap = methods[name].unfairness.get("group_gap")
        gap_text = points(gap)
        kpis.append(f"<div>{html.escape(name)}<b>{percent(acc.get('minority'))}</b>minority · majority "
                    f"{percent(acc.get('majority'))} · gap {gap_text}</div>")
    reference = result.reference
    notes = [html.escape(comparison_text(name, c, reference)) for name, c in result.comparisons.items()]
    warnings = [n for n in (seed_note(result), *sample_warnings(result)) if n]
    if any(unselected(m) for m in methods.values()):
        notes.append("No PAFO epoch met the Pareto selection rule; the best overall epoch was kept.")
    figures = report_figures(result, pareto_points, run_id, pareto_scope)
    meta = [html.escape(label)] if label else []
    meta += [f"generated {generated_at:%Y-%m-%d %H:%M}",
             f"dataset {html.escape(str(dataset.get('name', '?')))}: {dataset.get('n_users', '?')} users, "
             f"{dataset.get('n_prompts', '?')} prompts",
             *([] if audit else [f"seed{'s' if len(seeds) > 1 else ''} {html.escape(', '.join(map(str, seeds)))}"]),
             f"audit of given predictions on {judged_pairs_text(result)}" if audit
             else f"encoder {html.escape(str(encoder.get('name', '?')))}",
             f"support estimator {html.escape(str(support.get('estimator', '?')))}",
             f"minority = {groups.get('n_minority', '?')} users with support ≤ "
             f"{groups.get('threshold', float('nan')):.3f} ({html.escape(str(groups.get('rule', '?')))})"
             + (" on the first seed" if len(seeds) > 1 else "")]
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{REPORT_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>{' · '.join(meta)}</p>",
             "".join(f"<p class='warn'>{html.escape(w).replace('`', '')}</p>" for w in warnings),
             "<div class='kpi'>" + "".join(kpis) + "</div>",
             "".join(f"<p class='note'>{n}</p>" for n in notes),
             "<h2>Accuracy and unfairness</h2>", table_html(display_table(result, reference)),
             "<p class='note'>Accuracies in %, gaps, spreads and Δ in percentage points; means over seeds where "
             f"there are several. Δ: the method minus the {html.escape(reference)}.</p>"]
    if result.comparisons:
        parts += ["<h2>Paired comparisons</h2>", table_html(comparison_table(result))]
    teachers = teacher_table(result)
    if len(teachers):
        parts += ["<h2>PAFO teachers on their own group</h2>", table_html(teachers)]
    plotlyjs = True
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(figure_html(fig, include_plotlyjs=plotlyjs))
        plotlyjs = False
    parts.append(unseen_section(result, include_plotlyjs=plotlyjs))
    parts.append(slices_section(result))
    parts.append("</body></html>")
    return "\n".join(parts)
