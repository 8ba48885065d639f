"""What the app shows of unseen users (:mod:`pafo.unseen`): the learning curves of Compare's "unseen users" panel,
its table, and the Users page's new user personalised from a few typed or uploaded pairs. Pure functions of
results and tables (no Streamlit), so pages only lay them out."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .compare import VERDICT_WORDS
from .report import figure_html, make_figure, method_color, method_order, table_html
from .results import RunResult, UnseenResult
from .scoring import PAIR_COLUMNS, ScoringModel, check_user_pairs, personalise, score_triples

__all__ = ["NEW_USER_ID", "UNSEEN_TABLE_NOTE", "held_out_users", "new_user_fit", "new_user_pairs", "report_section",
           "unseen_caption", "unseen_curve", "unseen_table"]

#: The id the Users page gives a user typed in by hand (no run knows it).
NEW_USER_ID = "new-user"
#: A method's points sit this far apart on the shots axis (in log2 units), so error bars do not overlap.
OFFSET = 0.06


def unseen_curve(unseen: UnseenResult, group: str) -> go.Figure:
    """Accuracy of held-out users of ``group`` against the number of their own pairs they were personalised from,
    one line per method with each point's 95% CI (bootstrap over users, seeds pooled) as error bars."""
    methods = method_order(unseen.methods)
    traces = []
    for i, name in enumerate(methods):
        by_k = unseen.methods[name]
        shots = [k for k in unseen.shots if k in by_k]
        values = np.array([getattr(by_k[k], group) for k in shots], dtype=float)
        bounds = np.array([(by_k[k].ci or {}).get(group) or [None, None] for k in shots], dtype=float)
        x = np.log2(shots) + OFFSET * (i - (len(methods) - 1) / 2)
        users = [by_k[k].n_users.get(group, 0) for k in shots]
        traces.append(go.Scatter(
            x=x, y=values, name=name, mode="lines+markers", line=dict(color=method_color(name), width=2.5),
            marker=dict(size=8), customdata=np.c_[shots, users],
            error_y=dict(type="data", symmetric=False, array=np.nan_to_num(bounds[:, 1] - values),
                         arrayminus=np.nan_to_num(values - bounds[:, 0]), color=method_color(name), thickness=1,
                         width=3),
            hovertemplate=name + " · %{customdata[0]} pairs: %{y:.1%} (%{customdata[1]} users)<extra></extra>"))
    return make_figure(traces, f"New {group} users", subtitle="accuracy after k of their own pairs (95% CI)",
                       xaxis=dict(title="pairs the new user gave (k)", tickvals=np.log2(unseen.shots).tolist(),
                                  ticktext=[str(k) for k in unseen.shots]),
                       yaxis=dict(title="user test accuracy", tickformat=".0%"), height=360)


def _points(delta) -> str:
    lo, hi = delta.ci
    if delta.delta is None:
        return "–"
    bounds = "" if lo is None or hi is None else f" [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    return f"{100 * delta.delta:+.1f}{bounds}"


def unseen_table(unseen: UnseenResult, reference: str = "baseline") -> pd.DataFrame:
    """One row per k and method: group accuracies (%) and, for every method but ``reference``, the paired
    differences to it on the same held-out users, k pairs and test pairs (points, 95% CI) and the verdict."""
    rows = []
    for k in unseen.shots:
        for name in method_order(unseen.methods):
            shot = unseen.methods[name].get(k)
            comparison = unseen.comparisons.get(name, {}).get(k)
            rows.append({
                "pairs (k)": k, "method": name,
                "majority %": None if shot is None or shot.majority is None else round(100 * shot.majority, 1),
                "minority %": None if shot is None or shot.minority is None else round(100 * shot.minority, 1),
                f"Δ minority vs {reference}": "" if comparison is None else _points(comparison.delta("minority")),
                f"Δ majority vs {reference}": "" if comparison is None else _points(comparison.delta("majority")),
                "verdict": "(reference)" if comparison is None else VERDICT_WORDS.get(comparison.verdict,
                                                                                      comparison.verdict)})
    return pd.DataFrame(rows)


def unseen_caption(unseen: UnseenResult, n_seeds: int) -> str:
    """How the panel's users were made, in one sentence."""
    first = next(iter(unseen.methods.values()))[unseen.shots[0]]
    users = first.n_users
    return (f"{100 * unseen.fraction:g}% of the users were held out of all training (stratified by group): "
            f"{users.get('majority', 0)} majority and {users.get('minority', 0)} minority users over {n_seeds} "
            f"seed{'s' * (n_seeds != 1)}, grouped by their own support rate against the training users. Each is "
            "personalised from their first k pairs with everything shared frozen (the same pairs for every method) "
            "and scored on their test pairs.")


#: Under the table of paired differences, on Compare and in the HTML report.
UNSEEN_TABLE_NOTE = ("Each method minus the {reference} on the same held-out users, the same k pairs and test pairs, "
                     "in points with 95% bootstrap CIs over users pooled across seeds; the verdict follows the rule "
                     "of the paired comparisons.")


def report_section(result: RunResult, *, include_plotlyjs: bool = False) -> str:
    """The HTML report's "Unseen users" section (what Compare's panel shows: caption, both learning curves and the
    table of paired differences). Empty when the run held no users out."""
    unseen = result.unseen
    if unseen is None:
        return ""
    reference = result.reference
    figures = [figure_html(unseen_curve(unseen, group), include_plotlyjs=include_plotlyjs and i == 0)
               for i, group in enumerate(("minority", "majority"))]
    return "\n".join(["<h2>Unseen users</h2>",
                      f"<p class='note'>{html.escape(unseen_caption(unseen, len(result.seed_list)))}</p>",
                      *figures, table_html(unseen_table(unseen, reference)),
                      f"<p class='note'>{html.escape(UNSEEN_TABLE_NOTE.format(reference=reference))}</p>"])


def held_out_users(rows: pd.DataFrame, methods: list[str], seed=None) -> pd.DataFrame:
    """The Users page's list of one seed's held-out users (``rows``: the run's unseen_per_user.csv, or its
    ``unseen.per_user``): one row per user with its id, group, support rate and test pairs, and per method and k its
    test accuracy (%) after personalising from k of its own pairs; lowest support first."""
    if seed is not None and "seed" in rows:
        rows = rows[rows["seed"] == seed]
    present = [m for m in method_order(methods) if f"acc_{m}" in rows]
    wide = rows.pivot_table(index=["user_id", "group", "support_rate", "n_test"], columns="shots",
                            values=[f"acc_{m}" for m in present], aggfunc="first")
    wide.columns = [f"{column.removeprefix('acc_')} k={k} %" for column, k in wide.columns]
    ordered = [f"{m} k={k} %" for k in sorted(rows["shots"].unique()) for m in present]
    out = (100 * wide[[c for c in ordered if c in wide]]).round(1).reset_index()
    return out.rename(columns={"user_id": "user", "support_rate": "support", "n_test": "test pairs"}).sort_values(
        ["support", "user"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------- one new user


def new_user_pairs(rows: pd.DataFrame, user_id: str = NEW_USER_ID) -> pd.DataFrame:
    """The Users page's typed or uploaded pairs as one new user's pairs: blank rows dropped, every other row
    checked (:func:`pafo.scoring.check_user_pairs`; :class:`pafo.errors.PafoInputError` names row and field)."""
    frame = rows.reindex(columns=[c for c in PAIR_COLUMNS if c != "user_id"]).astype(object)
    filled = frame.apply(lambda column: column.map(lambda v: isinstance(v, str) and v.strip() != ""))
    frame = frame[filled.any(axis=1)].reset_index(drop=True)
    return check_user_pairs(frame.assign(user_id=user_id)[PAIR_COLUMNS], "the new user's pairs")


def new_user_fit(models: dict[str, ScoringModel], pairs: pd.DataFrame,
                 device: str = "cpu") -> tuple[dict[str, ScoringModel], pd.DataFrame]:
    """Each run model with the new user of ``pairs`` personalised from them, and a table of every method's margin
    r(chosen) − r(rejected) on each of those pairs for that user, before (the shared reward: a run knows no user
    of that id) and after."""
    user = str(pairs["user_id"].iloc[0])
    triples = pd.DataFrame({"user_id": user, "prompt": np.repeat(pairs["prompt"].to_numpy(), 2),
                            "response": np.stack([pairs["chosen"], pairs["rejected"]], 1).ravel()})
    fitted, table = {}, pairs[["prompt", "chosen", "rejected"]].copy()
    for name, model in models.items():
        fitted[name] = personalise(model, pairs, device=device)
        for label, scoring in (("shared", model), ("personalised", fitted[name])):
            rewards = score_triples(scoring, triples)["reward"].to_numpy().reshape(-1, 2)
            table[f"{name} {label}"] = rewards[:, 0] - rewards[:, 1]
    return fitted, table

