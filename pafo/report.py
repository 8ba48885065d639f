"""Figures, tables and the self-contained HTML report of PAFO Studio (pure library code, no Streamlit).

The app's pages and the exported report draw the same Plotly figures from the same functions, so what a
stakeholder sees in the downloaded report is exactly what the analyst saw in the browser. Colours are fixed per
group (majority / minority) and per method everywhere.

Inputs are the typed results of :mod:`pafo.results` (a :class:`~pafo.results.RunResult`: its ``methods``,
``comparisons``, ``per_user`` table, ...; a sweep's :class:`~pafo.results.SweepResult`) and small pandas tables
derived from them.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from .compare import (
    CI_TOLERANCE,
    MIN_GROUP_PAIRS,
    MIN_GROUP_USERS,
    REASON_NOISE,
    VERDICT_WORDS,
    Comparison,
    Delta,
    describe_comparison,
)
from .config_edit import known_fields
from .extras import Ceilings, ClusterReport, TeacherReport
from .method_configs import METHOD_SPECS, METHODS, PAFOConfig
from .metrics import (
    ACCURACY_METRICS,
    COMPARED_METRICS,
    GROUPS,
    LOG_LOSS_METRICS,
    MAJORITY,
    MINORITY,
    UNFAIRNESS_METRICS,
    USER_ACCURACY,
)
from .results import RunResult, SweepResult
from .sample_size import MIN_SEED_USERS, GroupCounts, shortfall

__all__ = [
    "GROUP_COLORS",
    "METHOD_COLORS",
    "PARETO_SCOPE",
    "PARETO_SCOPE_ALL",
    "SMALL_GROUP_PAIRS",
    "SMALL_GROUP_USERS",
    "VERDICT_ICONS",
    "VERDICT_RULE",
    "WEBGL_MIN_POINTS",
    "ceiling_table",
    "cluster_table",
    "comparison_table",
    "comparison_text",
    "decile_curve",
    "decile_table",
    "describe_comparison",
    "display_table",
    "figure_html",
    "forest_plot",
    "format_value",
    "group_accuracy_bars",
    "identical_note",
    "judged_counts",
    "judged_pairs_text",
    "judged_split",
    "make_figure",
    "method_color",
    "method_order",
    "pair_support_histogram",
    "pairs_per_user_figure",
    "pareto_plot",
    "per_user_frame",
    "percent",
    "points",
    "reference_of",
    "report_figures",
    "sample_warnings",
    "seed_note",
    "shown_delta",
    "support_histogram",
    "sweep_table",
    "table_html",
    "teacher_table",
    "training_curves",
    "unfairness_table",
    "unselected",
    "user_margins_figure",
    "user_scatter",
    "verdict_note",
    "whatif_bars",
    "whatif_table",
]

GROUP_COLORS = {"majority": "#4C6EF5", "minority": "#F76707"}
GROUP_ORDER = GROUPS
METHOD_COLORS = {spec.name: spec.colour for spec in METHOD_SPECS}
EXTRA_COLORS = ("#E64980", "#15AABF", "#82C91E", "#7950F2")
#: One colour per sweep grid point (Plotly's qualitative "Dark24" start: distinct on white).
SWEEP_COLORS = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86", "#EB663B",
                "#511CFB", "#00A08B", "#FB00D1")
#: Scatter plots switch to WebGL (``Scattergl``) at this many points: SVG gets sluggish beyond about a thousand.
WEBGL_MIN_POINTS = 1000
FONT = "Inter, -apple-system, Segoe UI, Roboto, sans-serif"

#: Below these a group's accuracy is too rough to read (a 6-user minority once showed 100.0% with no warning), and
#: the verdict is "within noise": the minimums of the verdict rule (:mod:`pafo.compare`).
SMALL_GROUP_USERS, SMALL_GROUP_PAIRS = MIN_GROUP_USERS, MIN_GROUP_PAIRS
VERDICT_ICONS = {"pareto": "✓", "noise": "≈", "worse": "✗", "tradeoff": "⇄"}
#: The verdict rule of :mod:`pafo.compare` in words (Compare page, HTML report; the README says the same).
VERDICT_RULE = f"""A method is compared with the reference **user by user** on the same test pairs (paired); the
uncertainty comes from a bootstrap over users pooled across seeds. With ε the Pareto tolerance (`--epsilon`, 0.5
points by default):

- **Pareto improvement**: the minority's CI lies above 0 and the majority's difference is ≥ −ε;
- **worse**: one group's CI lies below −ε and the other group's CI does not lie above 0;
- **trade-off**: one group's CI lies above 0 and the other's below 0;
- **within noise**: anything else: these data cannot tell the method from the reference.

"Above 0" means above by more than {100 * CI_TOLERANCE:.2g} points (the tolerance of every CI test; "below" likewise),
and the verdict is **within noise** whenever a group has fewer than {MIN_GROUP_USERS} users or {MIN_GROUP_PAIRS} test
pairs over the seeds, or fewer than {MIN_SEED_USERS} users on one seed: so few users give intervals too narrow to
trust. An audit compares two models only on the pairs
both have predictions for."""
SEED_NOTE = ("This run has one seed ({seed}), so differences between its methods are not evidence: another seed can "
             "move them by several points either way. Train several seeds (Seeds on Train or What-if, "
             "`--seeds 0-4` on the command line) for paired confidence intervals pooled over seeds.")
SMALL_SAMPLE = ("Small sample: the {group} group has {users} users and {pairs} {which} pairs{where} ({reason}), so "
                "its accuracy and intervals are rough, a 100% can be luck, and every verdict is within noise.")


def method_color(name: str) -> str:
    """The fixed colour of a method (unknown names get a stable colour of their own)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return EXTRA_COLORS[sum(map(ord, name)) % len(EXTRA_COLORS)]


def reference_of(result: RunResult) -> str:
    """The method a result's others are shown against: its reference, or its first method when that was not run."""
    return result.reference if result.reference in result.methods else method_order(result.methods)[0]


def unselected(method) -> bool:
    """Whether no epoch of a method met the Pareto selection rule (PAFO's group teachers), so the best overall
    epoch was kept."""
    report = method.extra(TeacherReport)
    return report is not None and not report.pareto_selected


def method_order(names) -> list[str]:
    """Methods in the canonical order (baseline before PAFO), unknown ones last."""
    names = list(names)
    rank = {m: i for i, m in enumerate(METHODS)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), names.index(m)))


GRID = dict(gridcolor="#E9ECEF", zerolinecolor="#DEE2E6", linecolor="#CED4DA", automargin=True)
#: The longest figure title: what fits a half-width column of the app at 15 px in a 1,100 px window (a longer one was
#: cut to "★ this ru"); what qualifies a title goes to its subtitle lines.
MAX_TITLE_CHARS = 32


def make_figure(traces=(), title: str | None = None, *, height: int = 380, xaxis: dict | None = None,
                yaxis: dict | None = None, subtitle: str | None = None, **layout) -> go.Figure:
    """A figure with the app's style (title, size, font, legend, light grid), built in one go.

    Titles are short enough for a half-width column (:data:`MAX_TITLE_CHARS`); what qualifies them goes to the
    ``subtitle`` line below, which gets its own room in the top margin. Everything goes to the constructor:
    Plotly's ``update_layout`` afterwards is ~5× slower, and its default template costs ~0.1 s per figure, so there
    is none (``template=None``; the app's Streamlit theme adds its own).
    """
    top = (72 if title else 30) + (18 * (1 + subtitle.count("<br>")) if subtitle else 0)
    full = dict(
        template=None, height=height, font=dict(family=FONT, size=12, color="#343A40"), plot_bgcolor="white",
        paper_bgcolor="white", margin=dict(l=10, r=10, t=top, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
        xaxis={**GRID, **(xaxis or {})}, yaxis={**GRID, **(yaxis or {})},
    )
    if title:
        # From the figure's left edge, not the plot area's (which starts after the y-axis labels): a half-width
        # column has no 60 px to spare.
        full["title"] = dict(text=title, x=0, xanchor="left", xref="container", pad=dict(l=10), y=0.985,
                             yref="container", yanchor="top", font=dict(size=15))
        if subtitle:
            full["title"]["subtitle"] = dict(text=subtitle, font=dict(size=12, color="#495057"))
    full.update(layout)
    return go.Figure(data=list(traces), layout=full)


def _vline(x: float, *, xref: str = "x", yref: str = "paper", **line) -> dict:
    return dict(type="line", xref=xref, yref=yref, x0=x, x1=x, y0=0, y1=1, line=line)


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def percent(value) -> str:
    """An accuracy (a fraction) as the app shows it: "81.2%"."""
    return _pct(value)


def points(value) -> str:
    """A difference of accuracies (a fraction) in percentage points: "−1.5 pts"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f} pts".replace("-", "−")


# ------------------------------------------------------------------------------------------- tables


def per_user_frame(result: RunResult) -> pd.DataFrame:
    """The result's per-user table (user_id, group, support_rate, n_*, acc_<method>...), a copy to change."""
    return result.per_user.copy()


def unfairness_table(result: RunResult, reference: str = "baseline") -> pd.DataFrame:
    """Metrics (rows) × methods (columns), plus ``Δ <method>`` columns against ``reference``.

    The ``better`` column says which direction is an improvement for each metric (↑ larger, ↓ smaller). Signed
    measures of bias (the group gap, Spearman) are judged by size, so their Δ is |method| − |reference|.
    """
    methods = result.methods
    names = method_order(methods)
    rows = []
    sections = [("accuracy", ACCURACY_METRICS), ("unfairness", UNFAIRNESS_METRICS)]
    if any(methods[name].log_loss is not None for name in names):
        sections.append(("log_loss", LOG_LOSS_METRICS))
    for section, spec in sections:
        for metric in spec:
            better = "↑" if metric.higher_is_better else "|↓|" if metric.by_size else "↓"
            row = {"metric": metric.label, "better": better}
            for name in names:
                row[name] = (getattr(methods[name], section) or {}).get(metric.key)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if reference in names:
        size = frame["better"].eq("|↓|").to_numpy()
        for name in names:
            if name != reference:
                values, base = pd.to_numeric(frame[name]), pd.to_numeric(frame[reference])
                frame[f"Δ {name}"] = np.where(size, values.abs() - base.abs(), values - base)
    return frame


def _points(block: Delta) -> str:
    """``+2.1 pts [+0.8, +3.4]`` of a paired difference (fractions shown as percentage points)."""
    if block.delta is None:
        return "–"
    bounds = ", ".join(format_value(c, "pts", delta=True) for c in block.ci)
    return f"{format_value(block.delta, 'pts', delta=True)} pts [{bounds}]"


def comparison_text(name: str, comparison: Comparison, reference: str) -> str:
    """One sentence per compared method: its verdict against the reference in words, with the paired group
    deltas and their CIs ("pafo vs baseline: within noise — minority +0.3 points [−1.2, +1.8], majority …")."""
    verdict = comparison.verdict
    words = VERDICT_WORDS.get(verdict, str(verdict))
    why = verdict_note(comparison)
    return (f"{VERDICT_ICONS.get(verdict, '')} {name} vs {reference}: {words}{f' ({why})' if why else ''} — "
            f"{describe_comparison(comparison)}")


def verdict_note(comparison: Comparison) -> str | None:
    """Why a comparison is "within noise" when the numbers alone do not say it ("too few users: minority has 8
    (< 20)"), else None."""
    reason = comparison.verdict_reason
    return reason if comparison.verdict == "noise" and reason and reason != REASON_NOISE else None


#: The verdict table's compared statistics after the verdict's two groups (minority first): the registry's metrics
#: that enter the paired comparison, each as (column, key in the comparison, unit).
COMPARED_COLUMNS = (("Δ minority", MINORITY, "%"), ("Δ majority", MAJORITY, "%"),
                    *((f"Δ |{m.short}|" if m.by_size else f"Δ {m.short}", m.compared_key, m.unit)
                      for m in COMPARED_METRICS))


def comparison_table(result: RunResult) -> pd.DataFrame:
    """Paired comparisons of every method with the reference: verdict and deltas (in points with their 95% CIs;
    a plain number for a metric without a unit)."""
    reference = result.reference
    rows = [{"method": name, "vs": reference, "verdict": c.verdict, "why": c.verdict_reason,
             **{column: _points(c.delta(key)) if unit else format_value(c.delta(key).delta, "", delta=True)
                for column, key, unit in COMPARED_COLUMNS}}
            for name, c in result.comparisons.items()]
    return pd.DataFrame(rows, columns=["method", "vs", "verdict", "why", *(column for column, *_ in COMPARED_COLUMNS)])


def display_table(result: RunResult, reference: str = "baseline") -> pd.DataFrame:
    """:func:`unfairness_table` as text in the units of the cards: accuracies in %, gaps and spreads in points
    (Δ columns in points too), Gini, Spearman and log-loss as plain numbers; one unit per row, in its label."""
    table = unfairness_table(result, reference)
    unit_of = {m.label: m.unit for spec in (ACCURACY_METRICS, UNFAIRNESS_METRICS, LOG_LOSS_METRICS) for m in spec}
    units = [unit_of.get(label, "") for label in table["metric"]]
    out = pd.DataFrame({"metric": [f"{label} ({unit})" if unit else label
                                   for label, unit in zip(table["metric"], units, strict=True)],
                        "better": table["better"]})
    by_size = table["better"].eq("|↓|").to_numpy()
    for column in table.columns[2:]:
        if str(column).startswith("Δ"):  # from the values as shown, so a row adds up on a slide
            name = str(column).removeprefix("Δ ")
            out[column] = [format_value(shown_delta(a, b, unit, by_size=size), unit, True) for a, b, unit, size in
                           zip(table[name], table[reference], units, by_size, strict=True)]
        else:
            out[column] = [format_value(value, unit) for value, unit in zip(table[column], units, strict=True)]
    return out


def _shown(value, unit: str) -> float | None:
    """A value as :func:`format_value` shows it (a fraction as % or points to one decimal, else 3 decimals), back
    as a number on the same scale as the value."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return None
    return round(100 * float(value), 1) / 100 if unit else round(float(value), 3)


def shown_delta(value, reference, unit: str, *, by_size: bool = False) -> float | None:
    """``value − reference`` computed from the two numbers as shown (rounded), so a table's Δ is the difference of
    the cells beside it (81.8 and 82.6 give +0.8, never +0.9); ``by_size`` compares sizes, |value| − |reference|."""
    a, b = _shown(value, unit), _shown(reference, unit)
    if a is None or b is None:
        return None
    return round(abs(a) - abs(b) if by_size else a - b, 6)


def format_value(value, unit: str, delta: bool = False) -> str:
    """A table cell in its row's unit: a fraction as % or points ("81.2", "+1.5"), else a plain "+0.215"."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "–"
    number, digits = (100 * value, 1) if unit else (value, 3)
    if round(number, digits) == 0:
        number = 0.0  # no "−0.0": a change too small to show has no sign
    text = f"{number:{'+' if delta and number else ''}.{digits}f}"
    return text.replace("-", "−")


def decile_table(result: RunResult) -> pd.DataFrame:
    """Long table of accuracy by support-rate decile: method, decile, support_lo/hi, n_users, accuracy."""
    rows = []
    for name in method_order(result.methods):
        for row in result.methods[name].by_decile or []:
            lo, hi = row.get("ci") or [None, None]
            rows.append({"method": name, **{k: v for k, v in row.items() if k != "ci"}, "ci_lo": lo, "ci_hi": hi})
    return pd.DataFrame(rows, columns=["method", "decile", "support_lo", "support_hi", "n_users", USER_ACCURACY,
                                       "ci_lo", "ci_hi"])


def teacher_table(result: RunResult) -> pd.DataFrame:
    """The group teachers of the method that has them (PAFO with ``teachers=groups``) on their own group vs the
    baseline: the advantage distillation can transfer (accuracies in %, the advantage in points, as on the cards;
    means over seeds where there are several)."""
    report = next((m.extra(TeacherReport) for m in result.methods.values() if m.extra(TeacherReport)), None)
    rows = [{"teacher": group, "teacher accuracy (%)": format_value(t.teacher_accuracy, "%"),
             "baseline accuracy (%)": format_value(t.baseline_accuracy, "%"),
             "advantage (pts)": format_value(shown_delta(t.teacher_accuracy, t.baseline_accuracy, "pts"), "pts",
                                             delta=True),
             "train pairs": None if t.n_train_pairs is None else f"{t.n_train_pairs:,.0f}"}
            for group, t in (report.teachers.items() if report else ())]
    return pd.DataFrame(rows)


def cluster_table(result: RunResult, method: str = "pafo") -> pd.DataFrame:
    """The preference clusters EM found for ``method`` (PAFO or the mixture), per seed: size, mean support, the
    group it maps to, and on its users' test pairs its own teacher, the baseline and the method (%)."""
    seeds = result.seed_results()
    rows = []
    for seed in seeds:
        report = seed.methods[method].extra(ClusterReport) if method in seed.methods else None
        for c in report.clusters if report else ():
            rows.append({**({"seed": seed.seed} if len(seeds) > 1 else {}), "cluster": c.cluster,
                         "users": c.n_users, "mean support": f"{c.mean_support:.3f}", "group": c.group,
                         "teacher (%)": format_value(c.teacher_accuracy, "%"),
                         "baseline (%)": format_value(c.baseline_accuracy, "%"),
                         f"{method} (%)": format_value(c.method_accuracy, "%"),
                         f"{method} − baseline (pts)": format_value(
                             shown_delta(c.method_accuracy, c.baseline_accuracy, "pts"), "pts", delta=True)})
    return pd.DataFrame(rows)


def ceiling_table(result: RunResult) -> pd.DataFrame:
    """Diagnostic ceilings beside the baseline (group accuracies in %, Δ in points); oracle rows read the true
    personas of simulated data, and every row reads test labels: none of them is a method."""
    ceilings = next((d for d in result.diagnostics if isinstance(d, Ceilings)), None)
    base = result.methods["baseline"].accuracy if "baseline" in result.methods else {}
    rows = []
    for name, row in (ceilings.rows.items() if ceilings else ()):
        entry = {"diagnostic": name, "majority (%)": format_value(row.majority, "%"),
                 "minority (%)": format_value(row.minority, "%")}
        for group in ("majority", "minority"):
            value = getattr(row, group)
            if value is not None and base.get(group) is not None:
                entry[f"Δ {group} vs baseline (pts)"] = format_value(shown_delta(value, base[group], "pts"), "pts",
                                                                     delta=True)
        rows.append(entry)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------- data figures


def pairs_per_user_figure(counts: pd.DataFrame) -> go.Figure:
    """Histogram of labelled pairs per user, one trace per split (``counts``: n_train, n_val, n_test)."""
    colors = {"n_train": "#4C6EF5", "n_val": "#ADB5BD", "n_test": "#12B886"}
    columns = [c for c in ("n_train", "n_val", "n_test") if c in counts]
    top = int(max((counts[c].max() for c in columns), default=0))
    bins = dict(start=-0.5, end=top + 0.5, size=1) if top <= 60 else None  # one bar per count when few
    traces = [go.Histogram(x=counts[c], name=c.removeprefix("n_"), opacity=0.75, marker_color=colors[c],
                           xbins=bins) for c in columns]
    return make_figure(traces, "Labelled pairs per user", height=320, barmode="overlay",
                       xaxis=dict(title="pairs per user"), yaxis=dict(title="users"))


def support_histogram(table: pd.DataFrame, threshold: float | None = None, *, nbins: int = 40,
                      subtitle: str | None = None) -> go.Figure:
    """Histogram of user support rates coloured by group, with the minority cut as a dashed line (one dataset's
    users and its cut: with several seeds, one seed's)."""
    values = table["support_rate"].dropna()
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    size = max((hi - lo) / nbins, 1e-3)
    bins = dict(start=lo - size / 2, end=hi + size, size=size)
    if "group" in table:
        traces = [go.Histogram(x=table.loc[table["group"] == g, "support_rate"], xbins=bins, opacity=0.85,
                               name=f"{g} ({int((table['group'] == g).sum())})", marker_color=GROUP_COLORS[g])
                  for g in GROUP_ORDER]
    else:
        traces = [go.Histogram(x=values, xbins=bins, name="users", marker_color="#868E96")]
    extra = {}
    if threshold is not None:
        extra["shapes"] = [_vline(threshold, dash="dash", color="#212529", width=1.5)]
        extra["annotations"] = [dict(x=threshold, y=0.98, xref="x", yref="paper", text=f" cut ≤ {threshold:.3f}",
                                     showarrow=False, xanchor="left", yanchor="top", bgcolor="white")]
    return make_figure(traces, "Preference support rate per user", barmode="stack", bargap=0.05, subtitle=subtitle,
                       xaxis=dict(title="support rate s(u): share of other users who agree with u"),
                       yaxis=dict(title="users"), **extra)


def pair_support_histogram(pair_support: pd.Series, pair_group: pd.Series | None = None, *,
                           bins: int = 40) -> go.Figure:
    """Histogram of pair-level support s(u, p), coloured by the group of the pair's user.

    Binned here (a few dozen bars whatever the number of pairs), so 100,000 pairs cost the browser nothing.
    """
    values = pair_support.to_numpy(dtype=float)
    groups = pair_group.to_numpy() if pair_group is not None else np.full(len(values), "all", dtype=object)
    edges = np.linspace(0.0, 1.0, bins + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
    traces = []
    for group in [g for g in GROUP_ORDER if g in set(groups)] or sorted(set(groups)):
        mask = (groups == group) & np.isfinite(values)
        counts, _ = np.histogram(values[mask], bins=edges)
        traces.append(go.Bar(x=centres, y=counts, width=width, name=f"{group} ({int(mask.sum()):,})",
                             marker_color=GROUP_COLORS.get(str(group), "#868E96"), opacity=0.8,
                             hovertemplate="s %{x:.3f}: %{y} pairs<extra>" + str(group) + "</extra>"))
    return make_figure(traces, "Pair-level support", barmode="overlay", bargap=0,
                       xaxis=dict(title="pair support s(u, p)", range=[0, 1]), yaxis=dict(title="training pairs"))


# ------------------------------------------------------------------------------------------- result figures


def group_accuracy_bars(result: RunResult) -> go.Figure:
    """Majority and minority accuracy per method, with 95% bootstrap confidence intervals as error bars."""
    methods = result.methods
    names = method_order(methods)
    traces = []
    for group in GROUP_ORDER:
        values, lower, upper = [], [], []
        for name in names:
            value = methods[name].accuracy.get(group)
            ci = methods[name].accuracy_ci.get(group) or [value, value]
            values.append(value)
            lower.append(None if value is None or ci[0] is None else value - ci[0])
            upper.append(None if value is None or ci[1] is None else ci[1] - value)
        traces.append(go.Bar(
            x=names, y=values, name=group, marker_color=GROUP_COLORS[group],
            error_y=dict(type="data", symmetric=False, array=upper, arrayminus=lower, color="#343A40", thickness=1.2),
            text=[_pct(v) for v in values], textposition="inside", insidetextanchor="start",
            hovertemplate="%{x} · " + group + ": %{y:.3f}<extra></extra>",
        ))
    # From 0: a bar's length is its value (an axis starting at 60% made small differences look large).
    return make_figure(traces, "Accuracy by user group", barmode="group", bargap=0.25,
                       yaxis=dict(title="user test accuracy (95% bootstrap CI)", range=[0, 1.04], tickformat=".0%"))


def decile_curve(result: RunResult) -> go.Figure:
    """Accuracy by support-rate decile per method: the personalized-reward-bias curve (flat is fair), with each
    bin's 95% bootstrap CI over its users as error bars (methods side by side so the bars do not overlap)."""
    table = decile_table(result)
    traces = []
    methods = list(dict.fromkeys(table["method"]))
    for k, (name, part) in enumerate(table.groupby("method", sort=False)):
        labels = [f"D{d}<br>{lo:.2f}–{hi:.2f}" for d, lo, hi in
                  zip(part["decile"], part["support_lo"], part["support_hi"])]
        accuracy = part[USER_ACCURACY].to_numpy(dtype=float)
        lo, hi = (pd.to_numeric(part[c], errors="coerce").to_numpy(dtype=float) for c in ("ci_lo", "ci_hi"))
        offset = 0.12 * (k - (len(methods) - 1) / 2)
        traces.append(go.Scatter(
            x=part["decile"] + offset, y=accuracy, name=name, mode="lines+markers",
            error_y=dict(type="data", symmetric=False, array=np.nan_to_num(hi - accuracy),
                         arrayminus=np.nan_to_num(accuracy - lo), color=method_color(name), thickness=1, width=3),
            line=dict(color=method_color(name), width=2.5), marker=dict(size=8), customdata=np.c_[part["n_users"]],
            text=labels, hovertemplate="%{text}<br>accuracy %{y:.3f} (%{customdata[0]} users)<extra>" + name +
            "</extra>",
        ))
    xaxis = dict(title="decile of support (← minority)")
    if len(table):
        ticks = table.drop_duplicates("decile").sort_values("decile")
        xaxis.update(tickvals=ticks["decile"].tolist(),
                     ticktext=[f"D{d}<br>≤{hi:.2f}" for d, hi in zip(ticks["decile"], ticks["support_hi"])])
    return make_figure(traces, "Bias curve", xaxis=xaxis, subtitle="accuracy by support-rate decile; flat is fair",
                       yaxis=dict(title="mean user accuracy (95% CI)", tickformat=".0%"))


def user_scatter(per_user: pd.DataFrame, x_method: str = "baseline", y_method: str = "pafo", *,
                 webgl: bool | None = None, jitter: float = 0.006, seed: int = 0) -> go.Figure:
    """Per-user accuracy of ``y_method`` against ``x_method``, coloured by group, with the y = x diagonal.

    Points above the diagonal are users the second method serves better. A little jitter separates users with
    identical accuracies (accuracies are multiples of 1/n_test); WebGL is used from :data:`WEBGL_MIN_POINTS`.
    """
    x_col, y_col = f"acc_{x_method}", f"acc_{y_method}"
    frame = per_user.dropna(subset=[x_col, y_col]) if {x_col, y_col} <= set(per_user) else per_user.iloc[:0]
    webgl = len(frame) >= WEBGL_MIN_POINTS if webgl is None else webgl
    trace_type = go.Scattergl if webgl else go.Scatter
    rng = np.random.default_rng(seed)
    n_seeds = int(frame["seed"].nunique()) if "seed" in frame and len(frame) else 1
    # With several seeds every seed simulates its own users, so a point is one user on one seed: say so, and count
    # user-seed rows, never "users" (600 rows of 300 users would read "344 users better").
    unit = "user-seed rows" if n_seeds > 1 else "users"
    traces = []
    for group in GROUP_ORDER:
        part = frame[frame["group"] == group] if "group" in frame else frame
        if not len(part):
            continue
        noise = rng.uniform(-jitter, jitter, size=(2, len(part))) if jitter else np.zeros((2, len(part)))
        who = part["user_id"].astype(str)
        if n_seeds > 1:
            who = "seed " + part["seed"].astype(str) + " · " + who
        custom = np.c_[who, part["support_rate"].round(3), part[x_col].round(3), part[y_col].round(3)]
        traces.append(trace_type(
            x=part[x_col].to_numpy() + noise[0], y=part[y_col].to_numpy() + noise[1], mode="markers",
            name=f"{group} ({len(part)} {unit})", marker=dict(color=GROUP_COLORS[group], size=7, opacity=0.65,
                                                               line=dict(width=0)),
            customdata=custom,
            hovertemplate=("user %{customdata[0]}<br>support %{customdata[1]}<br>" + x_method +
                           " %{customdata[2]}<br>" + y_method + " %{customdata[3]}<extra>" + group + "</extra>"),
        ))
    traces.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="same accuracy",
                             line=dict(color="#ADB5BD", dash="dash"), hoverinfo="skip"))
    subtitle = None
    if len(frame):
        better = int((frame[y_col] > frame[x_col]).sum())
        worse = int((frame[y_col] < frame[x_col]).sum())
        of = f"{len(frame)} {unit}" + (f" ({frame['user_id'].nunique()} users × {n_seeds} seeds)"
                                        if n_seeds > 1 else "")
        # Under the title, not on the plot, where it covered the 100% tick and the top-left points.
        subtitle = f"{better} better with {y_method}, {worse} worse, {len(frame) - better - worse} same<br>of {of}"
    # constrain="domain": keeping the square aspect shrinks the plot area instead of widening the axes (the report
    # once showed −100%..200%).
    axis = dict(range=[-0.03, 1.03], tickformat=".0%", constrain="domain")
    return make_figure(traces, "Per-user accuracy", height=520, subtitle=subtitle,
                       legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
                       xaxis=dict(title=f"{x_method} accuracy", **axis),
                       yaxis=dict(title=f"{y_method} accuracy", scaleanchor="x", **axis))


PARETO_SCOPE = "runs on this dataset and grouping"
PARETO_SCOPE_ALL = "finished runs on every dataset"


def pareto_plot(points: pd.DataFrame, highlight_run: str | None = None, scope: str = PARETO_SCOPE) -> go.Figure:
    """Majority vs minority accuracy of finished runs × methods, with the Pareto front.

    ``points`` columns: run_id, label, method, majority, minority (and optionally overall); ``scope`` says in the
    title which runs they are (see :func:`pafo.appstate.pareto_records`).
    """
    traces = []
    if len(points):
        for name in method_order(points["method"].unique()):
            part = points[points["method"] == name]
            current = (part["run_id"] == highlight_run).to_numpy()
            traces.append(go.Scatter(
                x=part["majority"], y=part["minority"], mode="markers", name=name,
                marker=dict(color=method_color(name), size=np.where(current, 15, 10),
                            line=dict(width=np.where(current, 2.5, 0.5), color="#212529"),
                            symbol=np.where(current, "star", "circle")),
                customdata=np.c_[part["run_id"], part["label"].fillna("")],
                hovertemplate=("run %{customdata[0]} %{customdata[1]}<br>majority %{x:.3f}<br>"
                               "minority %{y:.3f}<extra>" + name + "</extra>"),
            ))
        front = _pareto_front(points[["majority", "minority"]].to_numpy(float))
        traces.append(go.Scatter(x=front[:, 0], y=front[:, 1], mode="lines", name="Pareto front",
                                 line=dict(color="#212529", dash="dot", shape="hv"), hoverinfo="skip"))
    return make_figure(traces, "Pareto view (★ this run)", height=460, subtitle=scope,
                       legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
                       xaxis=dict(title="majority accuracy →", tickformat=".1%",
                                  range=_padded_range(points["majority"] if len(points) else [])),
                       yaxis=dict(title="minority accuracy →", tickformat=".1%",
                                  range=_padded_range(points["minority"] if len(points) else [])))


def _padded_range(values, min_span: float = 0.02) -> list[float] | None:
    """An axis range around ``values`` at least ``min_span`` wide, so close runs do not look far apart."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = max(min_span - (hi - lo), 0.0) / 2 + 0.1 * max(hi - lo, min_span)
    return [lo - pad, hi + pad]


def _pareto_front(values: np.ndarray) -> np.ndarray:
    """Points not dominated in both coordinates, sorted by the first (majority) descending."""
    values = values[np.isfinite(values).all(axis=1)]
    order = np.lexsort((-values[:, 1], -values[:, 0]))
    front, best = [], -np.inf
    for x, y in values[order]:
        if y > best:
            front.append((x, y))
            best = y
    return np.array(front[::-1] if front else np.zeros((0, 2)))


def _sweep_rows(sweep: SweepResult) -> pd.DataFrame:
    """One row per grid point with a result: its label and the Pareto method's accuracies with their CIs."""
    method, front, rows = sweep.pareto_method, set(sweep.pareto_front), []
    for point in sweep.points:
        block = (point.methods or {}).get(method)
        if not block:
            continue
        params = point.params
        row = {"index": point.index, "label": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in params.items()),
               "front": point.index in front, **{f"param:{k}": v for k, v in params.items()}}
        for group in ("majority", "minority"):
            lo, hi = block.accuracy_ci.get(group) or [None, None]
            value = block.accuracy[group]
            row.update({group: value, f"{group}_minus": None if lo is None else value - lo,
                        f"{group}_plus": None if hi is None else hi - value})
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_table(sweep: SweepResult) -> pd.DataFrame:
    """One row per grid point: its parameters, seeds, the Pareto method's group accuracies, its paired differences
    to the baseline and verdict pooled over the seeds; where the cells held users out, the same on the unseen
    users at the largest number of shots."""
    method, front, rows = sweep.pareto_method, set(sweep.pareto_front), []
    for point in sweep.points:
        block = (point.methods or {}).get(method)
        row = {"point": ", ".join(f"{k.split('.')[-1]}={v}" for k, v in point.params.items())
                        + (" ★" if point.index in front else ""), "seeds": point.n_seeds,
               "minority %": _pct(block.accuracy.get("minority")) if block else "–",
               "majority %": _pct(block.accuracy.get("majority")) if block else "–"}
        comparison = (point.comparisons or {}).get(method)
        if comparison is not None:
            row.update({"Δ minority": _points(comparison.delta("minority")),
                        "Δ majority": _points(comparison.delta("majority")),
                        "verdict": VERDICT_WORDS.get(comparison.verdict, comparison.verdict)})
        unseen = point.unseen
        shot = max(unseen.shots) if unseen is not None and unseen.shots else None
        held = (unseen.comparisons.get(method) or {}).get(shot) if shot is not None else None
        if held is not None:
            row.update({"unseen k": shot, "unseen Δ minority": _points(held.delta("minority")),
                        "unseen Δ majority": _points(held.delta("majority")),
                        "unseen verdict": VERDICT_WORDS.get(held.verdict, held.verdict)})
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_pareto(sweep: SweepResult) -> go.Figure:
    """A sweep's grid points: majority vs minority accuracy of its Pareto method (means over seeds), whiskers for
    the CIs over seeds and users, the undominated points as stars joined by the front.

    One trace per point, named by its parameters in the legend (and on hover): labels written beside the markers
    covered the markers and each other."""
    rows, method = _sweep_rows(sweep), sweep.pareto_method
    traces = []
    for i, row in enumerate(rows.itertuples(index=False)):
        colour = SWEEP_COLORS[i % len(SWEEP_COLORS)]
        traces.append(go.Scatter(
            x=[row.majority], y=[row.minority], mode="markers", name=row.label + (" ★" if row.front else ""),
            marker=dict(color=colour, size=15 if row.front else 10, symbol="star" if row.front else "circle",
                        line=dict(width=0.8, color="#212529")),
            error_x=dict(type="data", array=[row.majority_plus], arrayminus=[row.majority_minus], thickness=1,
                         color=colour),
            error_y=dict(type="data", array=[row.minority_plus], arrayminus=[row.minority_minus], thickness=1,
                         color=colour),
            hovertemplate=row.label + "<br>majority %{x:.3f}<br>minority %{y:.3f}<extra></extra>"))
    if len(rows) and rows["front"].any():
        front = rows[rows["front"]].sort_values("majority")
        traces.append(go.Scatter(x=front["majority"], y=front["minority"], mode="lines", name="Pareto front",
                                 line=dict(color="#212529", dash="dot"), hoverinfo="skip"))
    n = len(sweep.seeds)
    return make_figure(traces, f"Sweep: {method} at each grid point", height=460,
                       subtitle=f"means over {n} seed{'s' * (n != 1)}; ★ on the Pareto front; whiskers: 95% CI",
                       legend=dict(orientation="v", yanchor="top", y=1, xanchor="left", x=1.02),
                       xaxis=dict(title="majority accuracy →", tickformat=".1%",
                                  range=_padded_range(_whisker_ends(rows, "majority"))),
                       yaxis=dict(title="minority accuracy →", tickformat=".1%",
                                  range=_padded_range(_whisker_ends(rows, "minority"))))


def _whisker_ends(rows: pd.DataFrame, group: str) -> list[float]:
    """The points' values and their CI ends, so the axis range shows whole whiskers (not lines cut at the edge)."""
    if not len(rows):
        return []
    value = rows[group].astype(float)
    minus, plus = (rows[f"{group}_{side}"].astype(float) for side in ("minus", "plus"))
    return [*value, *(value - minus), *(value + plus)]


def sweep_lines(sweep: SweepResult, key: str) -> go.Figure:
    """Majority and minority accuracy of the sweep's Pareto method against one swept parameter (a pair of lines
    per value of the second parameter, if there is one), with CI whiskers."""
    rows, method = _sweep_rows(sweep), sweep.pareto_method
    other = next((k for k in sweep.grid if k != key), None)  # pages sweep one or two parameters
    traces = []
    parts = [(None, rows)] if other is None or not len(rows) else list(rows.groupby(f"param:{other}", dropna=False))
    for value, part in parts:
        if not len(part):
            continue
        part = part.sort_values(f"param:{key}")
        suffix = "" if other is None else f" ({other.split('.')[-1]}={value})"
        for group, dash in (("majority", "solid"), ("minority", "dash")):
            traces.append(go.Scatter(
                x=part[f"param:{key}"], y=part[group], mode="lines+markers", name=group + suffix,
                line=dict(dash=dash), error_y=dict(type="data", array=part[f"{group}_plus"],
                                                   arrayminus=part[f"{group}_minus"], thickness=1)))
    return make_figure(traces, f"Sweep: {method} accuracy against {key}", height=380,
                       xaxis=dict(title=key), yaxis=dict(title="accuracy", tickformat=".1%"))


def training_curves(history: pd.DataFrame) -> go.Figure:
    """Loss and validation accuracy by group over the epochs of every stage (long table from the registry).

    ``history`` columns: step (running epoch count), stage, epoch, loss, val_overall, val_majority, val_minority.
    """
    traces, shapes = [], []
    if len(history):
        for stage, part in history.groupby("stage", sort=False):
            traces.append(go.Scatter(x=part["step"], y=part["loss"], mode="lines+markers", name=stage,
                                     marker=dict(size=4), xaxis="x", yaxis="y"))
        for group in GROUP_ORDER:
            column = f"val_{group}"
            if column in history and history[column].notna().any():
                traces.append(go.Scatter(x=history["step"], y=history[column], mode="lines+markers",
                                         name=f"val {group}", line=dict(color=GROUP_COLORS[group]),
                                         marker=dict(size=4), text=history["stage"], xaxis="x2", yaxis="y2",
                                         hovertemplate="%{text} · %{y:.3f}<extra>" + group + "</extra>"))
        for step in history.groupby("stage", sort=False)["step"].min().iloc[1:]:  # stage boundaries
            for axis in ("x", "x2"):
                y_axis = "y" if axis == "x" else "y2"
                shapes.append(_vline(step - 0.5, xref=axis, yref=f"{y_axis} domain", color="#DEE2E6"))
    return make_figure(
        traces, None, height=320, shapes=shapes,
        xaxis=dict(domain=[0, 0.46], title="epoch (all stages in order)"), yaxis=dict(title="training loss"),
        xaxis2={**GRID, "domain": [0.54, 1], "anchor": "y2", "title": "epoch (all stages in order)"},
        yaxis2={**GRID, "anchor": "x2", "title": "validation accuracy by group", "tickformat": ".0%"},
    )


def user_margins_figure(pairs: pd.DataFrame, methods: list[str]) -> go.Figure:
    """One user's test-pair margins per method (positive = prefers the user's chosen response)."""
    labels = [f"#{i + 1}" for i in range(len(pairs))]
    traces = [go.Bar(x=labels, y=pairs[f"margin_{m}"], name=m, marker_color=method_color(m))
              for m in methods if f"margin_{m}" in pairs]
    zero = dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=0, y1=0, line=dict(color="#212529"))
    return make_figure(traces, "Margins on this user's test pairs (above 0 = right)", height=300, barmode="group",
                       shapes=[zero], xaxis=dict(title="test pair"),
                       yaxis=dict(title="margin r(chosen) − r(rejected)"))


#: The rows of the What-if table: (result section, metric), read from pafo.metrics' declarations.
WHATIF_ROWS = tuple(("accuracy", m) for m in ACCURACY_METRICS if m.key in ("majority", "minority", "overall")) + \
    tuple(("unfairness", m) for m in UNFAIRNESS_METRICS if m.key in ("group_gap", "support_spearman"))


def _metric(result: RunResult, name: str, section: str, key: str):
    """One figure of a method's block (``accuracy`` / ``unfairness`` section), None where the method did not run."""
    method = result.methods.get(name)
    return None if method is None else (getattr(method, section) or {}).get(key)


def whatif_table(parent: RunResult, child: RunResult) -> pd.DataFrame:
    """One row per method and headline metric: the parent's value, the what-if's and Δ, in the metric's unit."""
    rows = []
    for name in method_order(set(parent.methods) | set(child.methods)):
        for section, metric in WHATIF_ROWS:
            a, b = _metric(parent, name, section, metric.key), _metric(child, name, section, metric.key)
            label = f"{metric.label} ({metric.unit})" if metric.unit else metric.label
            rows.append({"method": name, "metric": label, "parent": format_value(a, metric.unit),
                         "what-if": format_value(b, metric.unit),
                         "Δ": format_value(shown_delta(b, a, metric.unit), metric.unit, delta=True)})
    return pd.DataFrame(rows, columns=["method", "metric", "parent", "what-if", "Δ"])


def whatif_bars(parent: RunResult, child: RunResult, parent_name: str = "parent",
                child_name: str = "what-if") -> go.Figure:
    """Majority and minority accuracy of each method in the parent run and its what-if child, side by side."""
    names = method_order(set(parent.methods) | set(child.methods))
    traces = []
    for run_name, result, pattern in ((parent_name, parent, ""), (child_name, child, "/")):
        for group in GROUP_ORDER:
            values = [_metric(result, m, "accuracy", group) for m in names]
            traces.append(go.Bar(x=[f"{m}<br>{group}" for m in names], y=values, name=f"{run_name} · {group}",
                                 marker=dict(color=GROUP_COLORS[group], pattern_shape=pattern,
                                             opacity=0.55 if run_name == parent_name else 1.0),
                                 text=[_pct(v) for v in values], textposition="outside"))
    return make_figure(traces, f"{parent_name} vs {child_name}", barmode="group",
                       yaxis=dict(title="user test accuracy", tickformat=".0%", range=[0, 1.05]))


# ------------------------------------------------------------------------------------------- paired comparisons


def seed_note(result: RunResult) -> str | None:
    """The warning a single-seed run carries; None with several seeds."""
    if result.is_audit:  # given predictions: no training seed to vary
        return None
    seeds = result.seed_list
    return SEED_NOTE.format(seed=seeds[0]) if len(seeds) == 1 else None


def judged_split(result: RunResult) -> str:
    """The pairs a result's accuracies are measured on: "test", or "all" for an audit of a file without a split."""
    return (result.split or "test") if result.is_audit else "test"


def judged_pairs_text(result: RunResult) -> str:
    """Which pairs are judged, with their count, in words: "all 600 pairs (the file has no train/test split)"."""
    n = result.n_pairs
    if n is None:
        counts = judged_counts(result)
        n = int(counts.sum()) if counts is not None else 0
    if judged_split(result) == "all":
        return f"all {n:,} pairs (the file has no train/test split)"
    return f"{n:,} test pairs"


def judged_counts(result: RunResult, per_user: pd.DataFrame | None = None) -> pd.Series | None:
    """Each per-user row's number of judged pairs (``None`` when the table has no counts): an audit's
    ``n_judged``, else the pairs of the judged split (every split's for an audit of all pairs)."""
    per_user = per_user_frame(result) if per_user is None else per_user
    if "n_judged" in per_user:
        column = per_user["n_judged"]
    elif judged_split(result) == "all" and {"n_train", "n_val", "n_test"} <= set(per_user):
        column = per_user[["n_train", "n_val", "n_test"]].apply(pd.to_numeric, errors="coerce").sum(axis=1)
    elif "n_test" in per_user:
        column = per_user["n_test"]
    else:
        return None
    return pd.to_numeric(column, errors="coerce").fillna(0).astype(int)


def sample_warnings(result: RunResult) -> list[str]:
    """One warning per group too small to judge by the verdicts' rule (:mod:`pafo.sample_size`: users with a judged
    pair and their judged pairs, over the seeds and on each)."""
    per_user = per_user_frame(result)
    counts = judged_counts(result, per_user)
    if "group" not in per_user or counts is None:
        return []
    per_user = per_user.assign(n_test=counts)
    which = "judged" if judged_split(result) == "all" else "test"
    if "seed" not in per_user:
        per_user = per_user.assign(seed=0)
    tested = per_user[per_user["n_test"] > 0]
    warnings = []
    seeds = sorted(per_user["seed"].unique())
    for group in GROUP_ORDER:
        rows = tested[tested["group"] == group]
        users = {seed: int((rows["seed"] == seed).sum()) for seed in seeds}
        pairs = {seed: int(rows.loc[rows["seed"] == seed, "n_test"].sum()) for seed in seeds}
        counts = GroupCounts.of_seeds(users, pairs)
        reason = shortfall(counts, group, pairs_word=f"{which} pairs")
        if reason:
            where = f" over {len(seeds)} seeds" if len(seeds) > 1 else ""
            warnings.append(SMALL_SAMPLE.format(group=group, users=counts.users, pairs=counts.pairs, which=which,
                                                where=where, reason=reason))
    return warnings


IDENTICAL = "The same accuracy as the {reference} for every user on the {which} pairs: {why}."
IDENTICAL_WHY = {
    "beta": "β is 0, so the teachers' channel is switched off",
    "one_cluster": "EM found a single preference cluster, so the teachers have no user-specific taste to add",
    "kept": "no training epoch beat its starting point (the {reference}) on validation, so that was kept",
    "weak": ("with {users} users and about {pairs} training pairs each, its cluster teachers are too weak to "
             "overturn the {reference}'s rankings (more labelled pairs per user, or a larger β, give them more say)"),
    "small": "with {users} users and about {pairs} training pairs each, what it changed moved no user's accuracy",
}


def identical_note(result: RunResult, name: str, reference: str = "baseline") -> str | None:
    """Why a method's accuracy equals the reference's for every user, when it does (``None`` otherwise): a
    method that repeats the baseline exactly (clusters collapsing on a small file) says why on its card, instead
    of a bare +0.0."""
    per_user = per_user_frame(result)
    a, b = f"acc_{name}", f"acc_{reference}"
    if name == reference or not {a, b} <= set(per_user) or not len(per_user):
        return None
    x, y = per_user[a].astype(float).to_numpy(), per_user[b].astype(float).to_numpy()
    if not np.array_equal(np.isnan(x), np.isnan(y)) or not np.array_equal(x[~np.isnan(x)], y[~np.isnan(y)]):
        return None
    options = PAFOConfig(**known_fields(PAFOConfig, result.config.get("pafo")))
    cluster_teachers = name == "mixture" or (name == "pafo" and options.teachers == "clusters")
    wide = name == "pafo" and cluster_teachers and options.student == "wide"
    blocks = [seed.methods.get(name) for seed in result.seed_results()]
    clusters = [b.extra(ClusterReport) if b else None for b in blocks]
    best_epochs = [b.best_epoch if b else None for b in blocks]
    n_train = pd.to_numeric(per_user.get("n_train", pd.Series(dtype=float)), errors="coerce")
    size = {"reference": reference, "users": int(per_user["user_id"].nunique()) if "user_id" in per_user
            else len(per_user), "pairs": f"{n_train.mean():.0f}" if n_train.notna().any() else "a few"}
    if wide and options.beta == 0:
        why = IDENTICAL_WHY["beta"]
    elif cluster_teachers and all(c is not None and len(c.clusters) <= 1 for c in clusters):
        why = IDENTICAL_WHY["one_cluster"]
    elif name == "pafo" and not wide and all(e == 0 for e in best_epochs):  # a student that starts from it
        why = IDENTICAL_WHY["kept"].format(**size)
    else:
        why = IDENTICAL_WHY["weak" if wide else "small"].format(**size)
    which = "judged" if judged_split(result) == "all" else "test"
    return IDENTICAL.format(reference=reference, which=which, why=why)


def forest_plot(result: RunResult, reference: str = "baseline") -> go.Figure:
    """Paired differences to the reference per method and group: each seed's delta with its CI, and the pooled one
    (a diamond), in percentage points; the grey band is ±ε of the verdict rule."""
    comparisons = result.comparisons
    per_seed = result.per_seed or []
    rows, traces = [], []
    for name in method_order(comparisons):
        for group in ("minority", "majority"):
            entries = [(f"seed {b.seed}", b.comparisons[name].deltas.get(group) if name in b.comparisons else None)
                       for b in per_seed] if len(per_seed) > 1 else []
            single = ("all users" if result.is_audit or not result.seeds
                      else f"seed {result.seeds[0]}")  # an audit has no training seed
            entries.append(("pooled" if len(per_seed) > 1 else single, comparisons[name].deltas.get(group)))
            for label, block in entries:
                if block is not None:
                    lo, hi = block.ci
                    rows.append({"y": f"{name} · {group} · {label}", "group": group, "pooled": label == "pooled",
                                 "delta": block.delta, "lo": lo, "hi": hi})
    frame = pd.DataFrame(rows, columns=["y", "group", "pooled", "delta", "lo", "hi"])
    for col in ("delta", "lo", "hi"):
        frame[col] = 100 * pd.to_numeric(frame[col], errors="coerce")
    for group in ("minority", "majority"):
        for pooled in (False, True):
            part = frame[(frame["group"] == group) & (frame["pooled"] == pooled)]
            if not len(part):
                continue
            traces.append(go.Scatter(
                x=part["delta"], y=part["y"], mode="markers", name=f"{group}, {'pooled' if pooled else 'per seed'}",
                error_x=dict(type="data", symmetric=False, array=(part["hi"] - part["delta"]).fillna(0),
                             arrayminus=(part["delta"] - part["lo"]).fillna(0), color=GROUP_COLORS[group],
                             thickness=2.5 if pooled else 1.2),
                marker=dict(color=GROUP_COLORS[group], size=13 if pooled else 8,
                            symbol="diamond" if pooled else "circle", line=dict(width=1, color="#212529")),
                customdata=np.c_[part["lo"], part["hi"]],
                hovertemplate="%{y}: %{x:+.1f} points [%{customdata[0]:+.1f}, %{customdata[1]:+.1f}]<extra></extra>"))
    epsilon = 100 * result.epsilon
    shapes = [dict(type="rect", xref="x", yref="paper", x0=-epsilon, x1=epsilon, y0=0, y1=1, line=dict(width=0),
                   fillcolor="#E9ECEF", layer="below"), _vline(0, color="#212529", width=1)]
    pooled = " ◆ pooled over seeds;" if len(per_seed) > 1 else ""
    return make_figure(traces, f"Paired differences to the {reference} (points;{pooled} 95% CI)",
                       height=max(220, 90 + 26 * len(frame)), shapes=shapes,
                       xaxis=dict(title=f"method − {reference}, percentage points of user accuracy", zeroline=False),
                       yaxis=dict(autorange="reversed", categoryorder="array", categoryarray=frame["y"].tolist()))


# ------------------------------------------------------------------------------------------- report


def report_figures(result: RunResult, pareto_points: pd.DataFrame | None = None, run_id: str | None = None,
                   pareto_scope: str = PARETO_SCOPE) -> dict:
    """The report's figures by title, built exactly as the app's Compare page builds them."""
    methods = method_order(result.methods)
    per_user = per_user_frame(result)
    figures = {}
    if result.comparisons:
        reference = result.reference
        figures[f"Paired differences to the {reference}"] = forest_plot(result, reference)
    figures.update({"Accuracy by group": group_accuracy_bars(result), "Bias curve": decile_curve(result)})
    if len(methods) >= 2:
        x = "baseline" if "baseline" in methods else methods[0]
        y = "pafo" if "pafo" in methods and x != "pafo" else next(m for m in methods if m != x)
        figures["Per-user accuracy"] = user_scatter(per_user, x, y)
    if "support_rate" in per_user:
        # Each seed has its own users and its own cut: draw the first seed's, which result.groups describes.
        seeds = result.seeds or []
        users, subtitle = per_user, None
        if "seed" in per_user and per_user["seed"].nunique() > 1:
            users = per_user[per_user["seed"] == seeds[0]] if seeds else per_user.iloc[:0]
            subtitle = f"seed {seeds[0]} of the run's {len(seeds)}: each seed has its own users and cut"
        threshold = result.threshold
        figures["Support rates"] = support_histogram(users, threshold, subtitle=subtitle)
    if pareto_points is not None and len(pareto_points):
        figures["Pareto view"] = pareto_plot(pareto_points, run_id, pareto_scope)
    return figures


def figure_html(fig: go.Figure, *, include_plotlyjs: bool = False) -> str:
    """A figure as an HTML fragment of the one-file report (plotly.js embedded only where asked: once per file)."""
    return pio.to_html(fig, include_plotlyjs=include_plotlyjs, full_html=False, default_height="auto",
                       config={"displaylogo": False, "responsive": True})


def table_html(frame: pd.DataFrame) -> str:
    """A table as plain HTML (the report's cells: Δ columns signed, three decimals, "–" for a missing value)."""
    def fmt(value, signed: bool) -> str:
        if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
            return "–"
        if isinstance(value, str):
            return html.escape(value)
        if isinstance(value, float | np.floating):
            return f"{value:+.3f}" if signed else f"{value:.3f}"
        return html.escape(str(value))

    signed = [str(c).startswith("Δ") for c in frame.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, s)}</td>" for v, s in zip(row, signed)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
