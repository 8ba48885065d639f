"""What the Compare page and the HTML report draw for slices (pure functions, no Streamlit): the slicings a run
has, a table of its slices worst first, accuracy per slice with CI whiskers, a slice × method heat map of paired
differences marked where they hold after Holm, slices computed on demand for any attribute of the run's users,
and the Users page's filter by attribute.

"Worst first" orders slices by the accuracy of the *focus* method: the first method that is not the reference (the
one being judged, e.g. PAFO), or the reference when it is alone.
"""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .attributes import BUILTIN_ATTRIBUTES, PER_USER_COLUMNS, RESERVED_PREFIXES, parse_slicing
from .report import figure_html, make_figure, method_color, method_order, per_user_frame, table_html
from .results import RunResult
from .sample_size import MIN_SEED_USERS
from .slices import (
    ALPHA,
    MIN_SLICE_PAIRS,
    MIN_SLICE_USERS,
    SLICE_VERDICT_WORDS,
    Slice,
    SliceDelta,
    SliceMethod,
    SliceSettings,
    compute_slices,
)

__all__ = [
    "HEAT_COLORSCALE",
    "SLICES_NOTE",
    "attribute_values",
    "filter_by_attribute",
    "focus_method",
    "on_demand_slices",
    "report_section",
    "slice_accuracy_figure",
    "slice_attributes",
    "slice_heatmap",
    "slice_table",
    "slicing_options",
    "spec_for",
]

HEAT_COLORSCALE = [[0.0, "#C92A2A"], [0.5, "#F8F9FA"], [1.0, "#2B8A3E"]]
SMALL_MARK = " (small)"
#: The heat map's colour scale spans at least ± this many points, so differences within noise look pale.
MIN_COLOR_POINTS = 5.0
#: Binned into quartiles when picked on demand: a numeric attribute with more distinct values than this.
BIN_NUMBERS_ABOVE = 10
SLICES_NOTE = (f"Accuracies weigh each user equally; whiskers are 95% bootstrap CIs over users. A difference holds "
               f"(marked *) when its Holm-adjusted p is below {ALPHA:g}, over every comparison of the family named "
               f"above. Slices with fewer than {MIN_SLICE_USERS} users or {MIN_SLICE_PAIRS} test pairs over the seeds "
               f"(or fewer than {MIN_SEED_USERS} users on one seed) are marked small and never get a verdict beyond "
               "within noise.")


def _reference(result: RunResult) -> str | None:
    return result.reference if result.reference in result.methods else None


def focus_method(methods, reference: str | None) -> str:
    """The method slices are ordered by: the first one judged against the reference, else the reference."""
    ordered = method_order(methods)
    return next((m for m in ordered if m != reference), reference or ordered[0])


def slicing_options(result: RunResult) -> list[str]:
    """The slicings a run computed (``--slice-by`` specs), in the order given."""
    specs = (result.slicing or {}).get("by")
    if specs:
        return list(specs)
    return list(dict.fromkeys(entry.slicing for entry in result.slices or []))


def _of(slices: list[Slice], spec: str) -> list[Slice]:
    return [e for e in slices if e.slicing == spec]


def _label(entry: Slice) -> str:
    return " · ".join(f"{k} = {v}" for k, v in entry.by.items()) + (SMALL_MARK if entry.small else "")


def _method(entry: Slice, name: str) -> SliceMethod:
    return entry.methods.get(name) or SliceMethod(None, [None, None], None)


def slice_table(slices: list[Slice], spec: str, methods, reference: str | None) -> pd.DataFrame:
    """One row per slice of ``spec``, worst first: its users and pairs, each method's accuracy (%) with CI, and each
    comparison's Δ (points) with CI, p, Holm-adjusted p and verdict."""
    methods = method_order(methods)
    focus = focus_method(methods, reference)
    rows = []
    for entry in _of(slices, spec):
        row = {"slice": _label(entry), "users": entry.n_users, "test pairs": entry.n_pairs}
        for name in methods:
            block = _method(entry, name)
            lo, hi = block.ci or [None, None]
            row[f"{name} %"] = _scaled(block.accuracy)
            row[f"{name} CI"] = _interval(lo, hi, "{:.1f}")
        for name, delta in entry.comparisons.items():
            lo, hi = delta.ci or [None, None]
            row[f"Δ {name} pts"] = _scaled(delta.delta)
            row[f"Δ {name} CI"] = _interval(lo, hi, "{:+.1f}")
            row[f"{name} p"] = _p(delta.p)
            row[f"{name} p (Holm)"] = _p(delta.p_holm)
            row[f"{name} verdict"] = SLICE_VERDICT_WORDS.get(delta.verdict, delta.verdict)
        row["_order"] = _method(entry, focus).accuracy
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = frame.sort_values("_order", kind="stable", na_position="last")
    return frame.drop(columns="_order").reset_index(drop=True)


def _scaled(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else round(100 * value, 1)


def _interval(lo, hi, fmt: str) -> str:
    if lo is None or hi is None:
        return "–"
    return f"[{fmt.format(100 * lo)}, {fmt.format(100 * hi)}]".replace("-", "−")


def _ordered(slices: list[Slice], spec: str, methods, reference) -> list[Slice]:
    """The slices of one slicing, worst first by the focus method's accuracy."""
    focus = focus_method(methods, reference)
    entries = _of(slices, spec)
    value = [_method(e, focus).accuracy for e in entries]
    order = sorted(range(len(entries)), key=lambda i: (value[i] is None, value[i] if value[i] is not None else 0))
    return [entries[i] for i in order]


def slice_accuracy_figure(slices: list[Slice], spec: str, methods, reference: str | None) -> go.Figure:
    """Accuracy per slice (one marker per method, side by side within the slice's row) with 95% CI whiskers, worst
    slice on top."""
    entries = _ordered(slices, spec, methods, reference)
    labels = [_label(e) for e in entries]
    ordered = method_order(methods)
    dodge = np.linspace(-0.2, 0.2, len(ordered)) if len(ordered) > 1 else np.zeros(1)
    traces = []
    for offset, name in zip(dodge, ordered, strict=True):
        blocks = [_method(e, name) for e in entries]
        acc = np.array([_nan(b.accuracy) for b in blocks]) * 100
        lo = np.array([_nan((b.ci or [None, None])[0]) for b in blocks]) * 100
        hi = np.array([_nan((b.ci or [None, None])[1]) for b in blocks]) * 100
        traces.append(go.Scatter(
            x=acc, y=np.arange(len(entries)) + offset, mode="markers", name=name,
            marker=dict(color=method_color(name), size=10),
            error_x=dict(type="data", symmetric=False, array=np.nan_to_num(hi - acc),
                         arrayminus=np.nan_to_num(acc - lo), color=method_color(name), thickness=1.6),
            customdata=np.c_[lo, hi, [e.n_users for e in entries]], text=labels,
            hovertemplate=f"{name} · %{{text}}: %{{x:.1f}}% [%{{customdata[0]:.1f}}, %{{customdata[1]:.1f}}], "
                          "%{customdata[2]} users<extra></extra>"))
    title = "Accuracy per slice, worst first (95% CI)"
    return make_figure(traces, title, height=max(240, 110 + 34 * len(labels)),
                       xaxis=dict(title="user accuracy, %"),
                       yaxis=dict(tickmode="array", tickvals=list(range(len(labels))), ticktext=labels,
                                  range=[len(labels) - 0.5, -0.5], zeroline=False))


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def slice_heatmap(slices: list[Slice], spec: str, methods, reference: str | None) -> go.Figure:
    """Slice × method heat map of the paired differences to the reference (points); ``*`` where the difference
    holds after Holm (better or worse), the cell's verdict and p values on hover; worst slice on top."""
    entries = _ordered(slices, spec, methods, reference)
    compared = [m for m in method_order(methods) if m != reference and any(m in e.comparisons for e in entries)]
    labels = [_label(e) for e in entries]
    z, text, hover = [], [], []
    for entry in entries:
        row_z, row_text, row_hover = [], [], []
        for name in compared:
            block = entry.comparisons.get(name) or SliceDelta(None, [None, None], None, verdict="")
            delta = block.delta
            row_z.append(_nan(delta) * 100)
            mark = "*" if block.verdict in ("better", "worse") else ""
            row_text.append("–" if delta is None else f"{_signed(100 * delta)}{mark}")
            row_hover.append(f"{SLICE_VERDICT_WORDS.get(block.verdict, '')}; p = {_p(block.p)}, "
                             f"Holm p = {_p(block.p_holm)}" + (f"; {block.reason}" if block.reason else ""))
        z.append(row_z)
        text.append(row_text)
        hover.append(row_hover)
    finite = [abs(v) for row in z for v in row if not math.isnan(v)]
    bound = max([*finite, MIN_COLOR_POINTS])  # a half-point wobble stays pale, not the scale's deepest red
    trace = go.Heatmap(z=z, x=compared, y=labels, text=text, texttemplate="%{text}", customdata=hover,
                       colorscale=HEAT_COLORSCALE, zmin=-bound, zmax=bound, zmid=0,
                       colorbar=dict(title=dict(text="Δ pts")),
                       hovertemplate="%{y} · %{x}: %{text} points (%{customdata})<extra></extra>")
    title = f"Δ vs {reference or 'the reference'}, points (* holds after Holm)"
    return make_figure([trace], title, height=max(240, 110 + 34 * len(labels)),
                       xaxis=dict(title=f"method − {reference}", side="bottom"),
                       yaxis=dict(autorange="reversed", categoryorder="array", categoryarray=labels))


def _signed(points: float) -> str:
    """Signed points with one decimal and a true minus; a rounded zero is "0.0", never "−0.0"."""
    text = f"{points:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def _p(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2g}" if value >= 1e-4 else "<0.0001"


# ------------------------------------------------------------------------------------------- on demand


def slice_attributes(per_user: pd.DataFrame) -> list[str]:
    """The attributes the users of a run can be sliced by: built-ins first, then their own attribute columns."""
    builtin = [name for name in BUILTIN_ATTRIBUTES if name in ("group", "decile") or name in per_user]
    own = [c for c in per_user.columns if c not in PER_USER_COLUMNS and not str(c).startswith(RESERVED_PREFIXES)]
    return [*builtin, *own]


def spec_for(per_user: pd.DataFrame, columns: list[str]) -> str:
    """A slicing spec for picked attributes: numbers with many distinct values binned into quartiles."""
    parts = []
    for column in columns:
        values = per_user[column].dropna() if column in per_user else pd.Series(dtype=object)
        numbers = pd.to_numeric(values, errors="coerce")
        many = numbers.notna().all() and numbers.nunique() > BIN_NUMBERS_ABOVE
        parts.append(f"{column}:quantiles=4" if len(values) and many else column)
    return ",".join(parts)


def on_demand_slices(result: RunResult, spec: str, margins: pd.DataFrame | None = None, *,
                     n_resamples: int = 1000) -> list[Slice]:
    """The slices of one slicing computed from a finished run's per-user table (and its test margins, for the
    log-loss), with the run's reference; Holm over this slicing's comparisons only."""
    SliceSettings(slice_by=[spec]).validate()
    methods = method_order(result.methods)
    reference = _reference(result)
    seed = int(result.seed_list[0])
    return compute_slices(per_user_frame(result), margins, [parse_slicing(spec)], methods, reference,
                          n_resamples=n_resamples, seed=seed, epsilon=result.epsilon)


def attribute_values(per_user: pd.DataFrame, column: str) -> list:
    """The values of one attribute, in natural order (numbers by value)."""
    values = per_user[column].dropna().unique().tolist() if column in per_user else []
    return sorted(values, key=lambda v: (0, float(v), "") if _is_number(v) else (1, 0.0, str(v)))


def _is_number(value) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def filter_by_attribute(per_user: pd.DataFrame, column: str | None, values) -> pd.DataFrame:
    """The users whose ``column`` is one of ``values`` (all users without a column or values)."""
    if not column or column not in per_user or not values:
        return per_user
    return per_user[per_user[column].isin(list(values))]


# ------------------------------------------------------------------------------------------- HTML report


def _one_decimal(frame: pd.DataFrame) -> pd.DataFrame:
    """Accuracies and differences as the app shows them (one decimal; differences signed), as text."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype.kind == "f":
            fmt = "{:+.1f}" if str(column).startswith("Δ") else "{:.1f}"
            out[column] = out[column].map(lambda v, fmt=fmt: "–" if pd.isna(v) else fmt.format(v).replace("-", "−"))
    return out


def report_section(result: RunResult) -> str:
    """The report's "Slices" section: a picker (a plain <select>, the file stays self-contained) showing one
    slicing's table, accuracy figure and heat map at a time. Empty when the run has no slices."""
    slices = result.slices or []
    if not slices:
        return ""
    methods, reference = method_order(result.methods), _reference(result)
    specs = slicing_options(result)
    block = result.slicing or {}
    options = "".join(f"<option value='{i}'>{html.escape(parse_slicing(s).title)}</option>"
                      for i, s in enumerate(specs))
    parts = ["<h2>Slices</h2>",
             f"<p class='note'>{html.escape(block.get('adjustment', 'Holm over the run'))}; reference "
             f"{html.escape(str(reference))}. {html.escape(SLICES_NOTE)}</p>",
             f"<label>Slice by <select id='slice-pick' onchange='pickSlicing(this.value)'>{options}</select></label>"]
    for i, spec in enumerate(specs):
        figures = [slice_accuracy_figure(slices, spec, methods, reference)]
        if reference and len(methods) > 1:
            figures.append(slice_heatmap(slices, spec, methods, reference))
        body = "".join(figure_html(fig) for fig in figures)
        style = "" if i == 0 else " style='display:none'"
        table = _one_decimal(slice_table(slices, spec, methods, reference))
        parts.append(f"<div class='slicing' id='slicing-{i}'{style}>{table_html(table)}{body}</div>")
    parts.append("<script>function pickSlicing(i){document.querySelectorAll('.slicing').forEach(function(d){"
                 "d.style.display = d.id === 'slicing-' + i ? '' : 'none';});"
                 "window.dispatchEvent(new Event('resize'));}</script>")
    return "\n".join(parts)
