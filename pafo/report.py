"""Figures, tables and the self-contained HTML report of PAFO Studio (pure library code, no Streamlit).

The app's pages and the exported report draw the same Plotly figures from the same functions, so what a
stakeholder sees in the downloaded report is exactly what the analyst saw in the browser. Colours are fixed per
group (majority / minority) and per method everywhere.

Inputs are the run result JSON of :func:`pafo.experiment.run_experiment` (``result["methods"]``,
``result["per_user"]``, ...) and small pandas tables derived from it.
"""

from __future__ import annotations

import datetime as _dt
import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

__all__ = [
    "GROUP_COLORS",
    "METHOD_COLORS",
    "WEBGL_MIN_POINTS",
    "build_report_html",
    "comparison_table",
    "comparison_text",
    "decile_curve",
    "decile_table",
    "group_accuracy_bars",
    "headline_table",
    "make_figure",
    "method_color",
    "method_order",
    "pair_support_histogram",
    "pairs_per_user_figure",
    "pareto_plot",
    "per_user_frame",
    "report_figures",
    "support_histogram",
    "teacher_table",
    "training_curves",
    "unfairness_table",
    "user_margins_figure",
    "user_scatter",
    "whatif_bars",
]

GROUP_COLORS = {"majority": "#4C6EF5", "minority": "#F76707"}
GROUP_ORDER = ("majority", "minority")
METHOD_COLORS = {
    "baseline": "#868E96",
    "pafo": "#12B886",
    "reweight": "#FAB005",
    "groupdro": "#BE4BDB",
    "bt": "#495057",
}
METHOD_ORDER = ("bt", "baseline", "reweight", "groupdro", "pafo")
EXTRA_COLORS = ("#E64980", "#15AABF", "#82C91E", "#7950F2")
#: Scatter plots switch to WebGL (``Scattergl``) at this many points: SVG gets sluggish beyond about a thousand.
WEBGL_MIN_POINTS = 1000
FONT = "Inter, -apple-system, Segoe UI, Roboto, sans-serif"

# (key in the result, label, True when larger is better)
ACCURACY_ROWS = (
    ("overall", "Accuracy: overall (users weigh equally)", True),
    ("micro", "Accuracy: pair level (micro)", True),
    ("majority", "Accuracy: majority users", True),
    ("minority", "Accuracy: minority users", True),
)
UNFAIRNESS_ROWS = (
    ("group_gap", "Group gap (majority − minority)", False),
    ("user_std", "Std of user accuracy", False),
    ("gini", "Gini of user accuracy", False),
    ("worst10", "Worst-10% users' accuracy", True),
    ("support_spearman", "Spearman(support, accuracy) — the bias", False),
)
LOG_LOSS_ROWS = (  # audits of given margins: −log σ(margin), mean over pairs (pafo.metrics.calibration)
    ("overall", "BT log-loss: all pairs", False),
    ("majority", "BT log-loss: majority users' pairs", False),
    ("minority", "BT log-loss: minority users' pairs", False),
)
VERDICT_WORDS = {"pareto": "a Pareto improvement", "worse": "worse", "tradeoff": "a trade-off",
                 "noise": "within noise"}


def method_color(name: str) -> str:
    """The fixed colour of a method (unknown names get a stable colour of their own)."""
    if name in METHOD_COLORS:
        return METHOD_COLORS[name]
    return EXTRA_COLORS[sum(map(ord, name)) % len(EXTRA_COLORS)]


def method_order(names) -> list[str]:
    """Methods in the canonical order (baseline before PAFO), unknown ones last."""
    names = list(names)
    rank = {m: i for i, m in enumerate(METHOD_ORDER)}
    return sorted(names, key=lambda m: (rank.get(m, len(rank)), names.index(m)))


GRID = dict(gridcolor="#E9ECEF", zerolinecolor="#DEE2E6", linecolor="#CED4DA", automargin=True)


def make_figure(traces=(), title: str | None = None, *, height: int = 380, xaxis: dict | None = None,
                yaxis: dict | None = None, **layout) -> go.Figure:
    """A figure with the app's style (title, size, font, legend, light grid), built in one go.

    Everything goes to the constructor: Plotly's ``update_layout`` afterwards is ~5× slower, and its default
    template costs ~0.1 s per figure, so there is none (``template=None``; the app's Streamlit theme adds its own).
    """
    full = dict(
        template=None, height=height, font=dict(family=FONT, size=12, color="#343A40"), plot_bgcolor="white",
        paper_bgcolor="white", margin=dict(l=10, r=10, t=72 if title else 30, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.01, xanchor="left", x=0),
        xaxis={**GRID, **(xaxis or {})}, yaxis={**GRID, **(yaxis or {})},
    )
    if title:
        full["title"] = dict(text=title, x=0, xanchor="left", xref="paper", y=0.985, yref="container",
                             yanchor="top", font=dict(size=15))
    full.update(layout)
    return go.Figure(data=list(traces), layout=full)


def _vline(x: float, *, xref: str = "x", yref: str = "paper", **line) -> dict:
    return dict(type="line", xref=xref, yref=yref, x0=x, x1=x, y0=0, y1=1, line=line)


def _pct(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


# ------------------------------------------------------------------------------------------- tables


def per_user_frame(result: dict) -> pd.DataFrame:
    """The result's per-user table (user_id, group, support_rate, n_*, acc_<method>...) as a DataFrame."""
    return pd.DataFrame(result.get("per_user") or {})


def headline_table(result: dict, reference: str = "baseline") -> pd.DataFrame:
    """One row per method: group accuracies, gap and Spearman, with Δ vs the reference method."""
    methods = result.get("methods") or {}
    rows = []
    for name in method_order(methods):
        m = methods[name]
        acc, unf = m.get("accuracy", {}), m.get("unfairness", {})
        rows.append({"method": name, "overall": acc.get("overall"), "majority": acc.get("majority"),
                     "minority": acc.get("minority"), "gap": unf.get("group_gap"),
                     "spearman": unf.get("support_spearman"), "train_seconds": m.get("train_seconds")})
    frame = pd.DataFrame(rows)
    if reference in methods and len(frame):
        ref = frame.set_index("method").loc[reference]
        for column in ("overall", "majority", "minority", "gap", "spearman"):
            frame[f"Δ {column}"] = frame[column] - ref[column]
    return frame


def unfairness_table(result: dict, reference: str = "baseline") -> pd.DataFrame:
    """Metrics (rows) × methods (columns), plus ``Δ <method>`` columns against ``reference``.

    The ``better`` column says which direction is an improvement for each metric (↑ larger, ↓ smaller).
    """
    methods = result.get("methods") or {}
    names = method_order(methods)
    rows = []
    sections = [("accuracy", ACCURACY_ROWS), ("unfairness", UNFAIRNESS_ROWS)]
    if any("log_loss" in methods[name] for name in names):
        sections.append(("log_loss", LOG_LOSS_ROWS))
    for section, spec in sections:
        for key, label, larger in spec:
            row = {"metric": label, "better": "↑" if larger else "↓"}
            for name in names:
                row[name] = (methods[name].get(section) or {}).get(key)
            rows.append(row)
    frame = pd.DataFrame(rows)
    if reference in names:
        for name in names:
            if name != reference:
                frame[f"Δ {name}"] = pd.to_numeric(frame[name]) - pd.to_numeric(frame[reference])
    return frame


def _points(block: dict | None) -> str:
    """``+2.1 pts [+0.8, +3.4]`` of a paired ``{"delta", "ci"}`` block (fractions shown as percentage points)."""
    block = block or {}
    delta, ci = block.get("delta"), block.get("ci") or [None, None]
    if delta is None:
        return "–"
    bounds = ", ".join("–" if c is None else f"{100 * c:+.1f}" for c in ci)
    return f"{100 * delta:+.1f} pts [{bounds}]"


def comparison_text(name: str, comparison: dict, reference: str) -> str:
    """One sentence per compared method: its verdict against the reference with the paired group deltas."""
    word = VERDICT_WORDS.get(comparison.get("verdict"), str(comparison.get("verdict")))
    return (f"{name} vs {reference}: {word} (verdict {comparison.get('verdict')}) — minority "
            f"{_points(comparison.get('minority'))}, majority {_points(comparison.get('majority'))}, paired over "
            f"{comparison.get('n_users', '?')} users")


def comparison_table(result: dict) -> pd.DataFrame:
    """Paired comparisons of every method with the reference: verdict and deltas with their 95% CIs (points)."""
    reference = result.get("reference", "baseline")
    rows = [{"method": name, "vs": reference, "verdict": c.get("verdict"),
             "Δ minority": _points(c.get("minority")), "Δ majority": _points(c.get("majority")),
             "Δ user std": _points(c.get("user_std")),
             "Δ |Spearman|": "–" if (c.get("support_spearman_abs") or {}).get("delta") is None
             else f"{c['support_spearman_abs']['delta']:+.3f}"}
            for name, c in (result.get("comparisons") or {}).items()]
    return pd.DataFrame(rows, columns=["method", "vs", "verdict", "Δ minority", "Δ majority", "Δ user std",
                                       "Δ |Spearman|"])


def decile_table(result: dict) -> pd.DataFrame:
    """Long table of accuracy by support-rate decile: method, decile, support_lo/hi, n_users, accuracy."""
    rows = []
    for name in method_order(result.get("methods") or {}):
        for row in result["methods"][name].get("by_decile") or []:
            rows.append({"method": name, **row})
    return pd.DataFrame(rows, columns=["method", "decile", "support_lo", "support_hi", "n_users", "accuracy"])


def teacher_table(result: dict) -> pd.DataFrame:
    """PAFO's teachers on their own group vs the baseline: the advantage distillation can transfer."""
    teachers = ((result.get("methods") or {}).get("pafo") or {}).get("teachers") or {}
    rows = [{"teacher": group, "teacher accuracy": t.get("teacher_accuracy"),
             "baseline accuracy": t.get("baseline_accuracy"), "advantage": t.get("advantage"),
             "train pairs": t.get("n_train_pairs")} for group, t in teachers.items()]
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


def support_histogram(table: pd.DataFrame, threshold: float | None = None, *, nbins: int = 40) -> go.Figure:
    """Histogram of user support rates coloured by group, with the minority cut as a dashed line."""
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
    return make_figure(traces, "Preference support rate per user", barmode="stack", bargap=0.05,
                       xaxis=dict(title="user support rate s(u): share of other users agreeing with u's labels"),
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


def group_accuracy_bars(result: dict) -> go.Figure:
    """Majority and minority accuracy per method, with 95% bootstrap confidence intervals as error bars."""
    methods = result.get("methods") or {}
    names = method_order(methods)
    traces, seen = [], []
    for group in GROUP_ORDER:
        values, lower, upper = [], [], []
        for name in names:
            value = (methods[name].get("accuracy") or {}).get(group)
            ci = (methods[name].get("accuracy_ci") or {}).get(group) or [value, value]
            values.append(value)
            lower.append(None if value is None or ci[0] is None else value - ci[0])
            upper.append(None if value is None or ci[1] is None else ci[1] - value)
        seen += [v for v in values if v is not None]
        traces.append(go.Bar(
            x=names, y=values, name=group, marker_color=GROUP_COLORS[group],
            error_y=dict(type="data", symmetric=False, array=upper, arrayminus=lower, color="#343A40", thickness=1.2),
            text=[_pct(v) for v in values], textposition="inside", insidetextanchor="start",
            hovertemplate="%{x} · " + group + ": %{y:.3f}<extra></extra>",
        ))
    low = max(0.0, min(seen, default=0.5) - 0.1)
    return make_figure(traces, "Accuracy by user group", barmode="group", bargap=0.25,
                       yaxis=dict(title="user test accuracy (95% bootstrap CI)", range=[low, 1.0], tickformat=".0%"))


def decile_curve(result: dict) -> go.Figure:
    """Accuracy by support-rate decile per method: the personalized-reward-bias curve (flat is fair)."""
    table = decile_table(result)
    traces = []
    for name, part in table.groupby("method", sort=False):
        labels = [f"D{d}<br>{lo:.2f}–{hi:.2f}" for d, lo, hi in
                  zip(part["decile"], part["support_lo"], part["support_hi"])]
        traces.append(go.Scatter(
            x=part["decile"], y=part["accuracy"], name=name, mode="lines+markers",
            line=dict(color=method_color(name), width=2.5), marker=dict(size=8), customdata=np.c_[part["n_users"]],
            text=labels, hovertemplate="%{text}<br>accuracy %{y:.3f} (%{customdata[0]} users)<extra>" + name +
            "</extra>",
        ))
    xaxis = dict(title="support-rate decile (low support = minority preferences →)")
    if len(table):
        ticks = table.drop_duplicates("decile").sort_values("decile")
        xaxis.update(tickvals=ticks["decile"].tolist(),
                     ticktext=[f"D{d}<br>≤{hi:.2f}" for d, hi in zip(ticks["decile"], ticks["support_hi"])])
    return make_figure(traces, "Accuracy by support-rate decile (the bias curve)", xaxis=xaxis,
                       yaxis=dict(title="mean user accuracy", tickformat=".0%"))


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
    traces = []
    for group in GROUP_ORDER:
        part = frame[frame["group"] == group] if "group" in frame else frame
        if not len(part):
            continue
        noise = rng.uniform(-jitter, jitter, size=(2, len(part))) if jitter else np.zeros((2, len(part)))
        custom = np.c_[part["user_id"].astype(str), part["support_rate"].round(3), part[x_col].round(3),
                       part[y_col].round(3)]
        traces.append(trace_type(
            x=part[x_col].to_numpy() + noise[0], y=part[y_col].to_numpy() + noise[1], mode="markers",
            name=f"{group} ({len(part)})", marker=dict(color=GROUP_COLORS[group], size=7, opacity=0.65,
                                                       line=dict(width=0)),
            customdata=custom,
            hovertemplate=("user %{customdata[0]}<br>support %{customdata[1]}<br>" + x_method +
                           " %{customdata[2]}<br>" + y_method + " %{customdata[3]}<extra>" + group + "</extra>"),
        ))
    traces.append(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="same accuracy",
                             line=dict(color="#ADB5BD", dash="dash"), hoverinfo="skip"))
    annotations = []
    if len(frame):
        better = int((frame[y_col] > frame[x_col]).sum())
        worse = int((frame[y_col] < frame[x_col]).sum())
        annotations.append(dict(x=0.02, y=0.98, xref="paper", yref="paper", showarrow=False, align="left",
                                text=f"{better} users better with {y_method}, {worse} worse", bgcolor="white"))
    return make_figure(traces, f"Per-user accuracy: {y_method} vs {x_method}", height=460, annotations=annotations,
                       xaxis=dict(title=f"{x_method} accuracy", range=[-0.03, 1.03], tickformat=".0%"),
                       yaxis=dict(title=f"{y_method} accuracy", range=[-0.03, 1.03], tickformat=".0%",
                                  scaleanchor="x"))


def pareto_plot(points: pd.DataFrame, highlight_run: str | None = None) -> go.Figure:
    """Majority vs minority accuracy of every finished run × method, with the Pareto front.

    ``points`` columns: run_id, label, method, majority, minority (and optionally overall).
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
    return make_figure(traces, "Pareto view: all finished runs (★ this run)", height=420,
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


def whatif_bars(parent: dict, child: dict, parent_name: str = "parent", child_name: str = "what-if") -> go.Figure:
    """Majority and minority accuracy of each method in the parent run and its what-if child, side by side."""
    names = method_order(set(parent.get("methods") or {}) | set(child.get("methods") or {}))
    traces = []
    for run_name, result, pattern in ((parent_name, parent, ""), (child_name, child, "/")):
        for group in GROUP_ORDER:
            values = [((result.get("methods") or {}).get(m, {}).get("accuracy") or {}).get(group) for m in names]
            traces.append(go.Bar(x=[f"{m}<br>{group}" for m in names], y=values, name=f"{run_name} · {group}",
                                 marker=dict(color=GROUP_COLORS[group], pattern_shape=pattern,
                                             opacity=0.55 if run_name == parent_name else 1.0),
                                 text=[_pct(v) for v in values], textposition="outside"))
    return make_figure(traces, f"{parent_name} vs {child_name}", barmode="group",
                       yaxis=dict(title="user test accuracy", tickformat=".0%", range=[0, 1.05]))


# ------------------------------------------------------------------------------------------- report


def report_figures(result: dict, pareto_points: pd.DataFrame | None = None, run_id: str | None = None) -> dict:
    """The report's figures by title, built exactly as the app's Compare page builds them."""
    methods = method_order(result.get("methods") or {})
    per_user = per_user_frame(result)
    figures = {"Accuracy by group": group_accuracy_bars(result), "Bias curve": decile_curve(result)}
    if len(methods) >= 2:
        x = "baseline" if "baseline" in methods else methods[0]
        y = "pafo" if "pafo" in methods and x != "pafo" else next(m for m in methods if m != x)
        figures["Per-user accuracy"] = user_scatter(per_user, x, y)
    if "support_rate" in per_user:
        threshold = (result.get("groups") or {}).get("threshold")
        figures["Support rates"] = support_histogram(per_user, threshold)
    if pareto_points is not None and len(pareto_points):
        figures["Pareto view"] = pareto_plot(pareto_points, run_id)
    return figures


def _table_html(frame: pd.DataFrame) -> str:
    def fmt(value, signed: bool) -> str:
        if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
            return "–"
        if isinstance(value, float | np.floating):
            return f"{value:+.3f}" if signed else f"{value:.3f}"
        return html.escape(str(value))

    signed = [str(c).startswith("Δ") for c in frame.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{fmt(v, s)}</td>" for v, s in zip(row, signed)) + "</tr>"
                   for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


REPORT_CSS = """
body{font-family:Inter,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#212529;
padding:0 1rem}h1{font-size:1.7rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid
#DEE2E6;padding-bottom:.3rem}.meta{color:#868E96;font-size:.9rem}table{border-collapse:collapse;font-size:.85rem;
margin:.5rem 0}th,td{border:1px solid #DEE2E6;padding:.3rem .6rem;text-align:right}th:first-child,td:first-child{
text-align:left}th{background:#F8F9FA}.kpi{display:flex;gap:1rem;flex-wrap:wrap}.kpi div{background:#F8F9FA;
border-radius:8px;padding:.6rem 1rem}.kpi b{display:block;font-size:1.3rem}.note{color:#495057;font-size:.9rem}
"""


def build_report_html(result: dict, *, run_id: str | None = None, label: str | None = None,
                      pareto_points: pd.DataFrame | None = None, generated_at: _dt.datetime | None = None) -> str:
    """A single HTML file with the run's headline numbers, tables and interactive figures.

    Self-contained: plotly.js is embedded once (no network needed to open it), so it can be mailed or archived.
    """
    generated_at = generated_at or _dt.datetime.now()
    dataset, groups = result.get("dataset") or {}, result.get("groups") or {}
    support, encoder = result.get("support") or {}, result.get("encoder") or {}
    methods = result.get("methods") or {}
    title = f"PAFO Studio report — run {run_id}" if run_id else "PAFO Studio report"
    kpis = []
    for name in method_order(methods):
        acc = methods[name].get("accuracy") or {}
        gap = (methods[name].get("unfairness") or {}).get("group_gap")
        kpis.append(f"<div>{html.escape(name)}<b>{_pct(acc.get('minority'))}</b>minority · majority "
                    f"{_pct(acc.get('majority'))} · gap {_pct(gap)}</div>")
    pafo = methods.get("pafo") or {}
    notes = []
    if "pareto_improvement" in pafo:
        notes.append("PAFO is a Pareto improvement over the baseline (minority up, majority not down beyond ε)."
                     if pafo["pareto_improvement"] else
                     "PAFO is <b>not</b> a Pareto improvement over the baseline on this run.")
    if pafo.get("pareto_selected") is False:
        notes.append("No PAFO epoch met the Pareto selection rule; the best overall epoch was kept.")
    figures = report_figures(result, pareto_points, run_id)
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{REPORT_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='meta'>{html.escape(label or '')} Generated {generated_at:%Y-%m-%d %H:%M} · dataset "
             f"{html.escape(str(dataset.get('name', '?')))}: {dataset.get('n_users', '?')} users, "
             f"{dataset.get('n_prompts', '?')} prompts · "
             + ("audit of given predictions" if result.get("kind") == "audit"
                else f"encoder {html.escape(str(encoder.get('name', '?')))}") + " · "
             f"support estimator {html.escape(str(support.get('estimator', '?')))} · minority = "
             f"{groups.get('n_minority', '?')} users with support ≤ {groups.get('threshold', float('nan')):.3f} "
             f"({html.escape(str(groups.get('rule', '?')))})</p>",
             "<div class='kpi'>" + "".join(kpis) + "</div>",
             "".join(f"<p class='note'>{n}</p>" for n in notes),
             "<h2>Accuracy and unfairness</h2>",
             _table_html(unfairness_table(result, result.get("reference", "baseline")))]
    if result.get("comparisons"):
        parts += ["<h2>Paired comparisons</h2>", _table_html(comparison_table(result))]
    teachers = teacher_table(result)
    if len(teachers):
        parts += ["<h2>PAFO teachers on their own group</h2>", _table_html(teachers)]
    plotlyjs = True
    for name, fig in figures.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.append(pio.to_html(fig, include_plotlyjs=plotlyjs, full_html=False, default_height="auto",
                                 config={"displaylogo": False, "responsive": True}))
        plotlyjs = False
    parts.append("</body></html>")
    return "\n".join(parts)
