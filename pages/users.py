"""Users: one user's support rate, group, accuracy and test pairs, with each method's margin and verdict; and a new
user personalised from a few typed or uploaded pairs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pafo import appstate, config_edit, report, scoring, slice_report, unseen_report
from pafo.errors import PafoInputError
from pafo.sources import DataConfig
from pages import _ui as ui

ui.require_app()

NO_FILTER = "(all users)"

st.title("User drill-down")
picked = ui.pick_finished_run("users_run", "Finished run")
if picked is None:
    st.stop()
record, result = picked
methods = report.method_order(result.methods)
per_user = report.per_user_frame(result)
seeds = list(dict.fromkeys(per_user["seed"])) if "seed" in per_user else [None]
seed = seeds[0]
if len(seeds) > 1:
    seed = st.selectbox("Seed", seeds, key="users_seed", help="each seed simulated its own users and test pairs; "
                        "scoring uses the first seed's models")
if seed is not None:  # rows of one seed; "user" is the user's index within that seed, as in test_margins.csv
    per_user = per_user[per_user["seed"] == seed].reset_index(drop=True)
per_user = per_user.reset_index(names="user")
# The pairs a user is judged on: the test split, or every pair of an audited file without a split.
JUDGED = "judged" if report.judged_split(result) == "all" else "test"
judged = report.judged_counts(result, per_user)
judged = judged if judged is not None else pd.Series(0, index=per_user.index)

cols = st.columns([1, 1.3, 3])
group = cols[0].radio("Group", ["minority", "majority", "all"], horizontal=True, key="users_group")
orders = {"lowest support first": ("support_rate", True)}
if {"acc_baseline", "acc_pafo"} <= set(per_user):
    per_user["pafo_gain"] = per_user["acc_pafo"] - per_user["acc_baseline"]
    orders["largest PAFO gain first"] = ("pafo_gain", False)
    orders["largest PAFO loss first"] = ("pafo_gain", True)
orders["highest support first"] = ("support_rate", False)
order = cols[1].selectbox("Order", list(orders), key="users_order")
column, ascending = orders[order]
candidates = per_user if group == "all" else per_user[per_user["group"] == group]
attributes = [c for c in slice_report.slice_attributes(per_user) if c in per_user and c != "group"]
if attributes:  # who the users are (the run's user attributes): narrow the list to some of them
    pick = st.columns([1, 3])
    attribute = pick[0].selectbox("Filter by attribute", [NO_FILTER, *attributes], key="users_attribute")
    if attribute != NO_FILTER:
        wanted = pick[1].multiselect(f"{attribute} is one of", slice_report.attribute_values(per_user, attribute),
                                     key=f"users_values_{attribute}")
        candidates = slice_report.filter_by_attribute(candidates, attribute, wanted)
candidates = candidates.sort_values(column, ascending=ascending, kind="stable")
if not len(candidates):
    st.info("No users in this group" + (" with these attributes." if attributes else "."))
    st.stop()


def _describe(user: int) -> str:
    row = per_user.loc[user]
    return f"{row['user_id']} · {row['group']} · support {row['support_rate']:.3f}"


user = cols[2].selectbox("User", candidates["user"].tolist(), format_func=_describe, key="users_pick")
row = per_user.loc[user]

# Two rows of four: a metric needs about a quarter of the page for "minority" to show whole.
cols = st.columns(4)
cols[0].metric("User", str(row["user_id"]))
cols[1].metric("Group", row["group"])
below = (per_user["support_rate"] < row["support_rate"]).mean()
cols[2].metric("Support rate", f"{row['support_rate']:.3f}",
               help=f"{100 * below:.0f}% of users have lower support; the minority cut is "
                    f"{result.threshold if result.threshold is not None else float('nan'):.3f}")
cols[3].metric("Train + val pairs", f"{int(row.get('n_train', 0) or 0)} + {int(row.get('n_val', 0) or 0)}",
               help="labelled pairs the models trained on, and those kept for validation (early stopping)")
reference = result.reference  # an audit compares with its own reference model
for start in range(0, len(methods) + 1, 4):
    cols = st.columns(4)
    for col, name in zip(cols, ["test pairs", *methods][start:start + 4], strict=False):
        if name == "test pairs":  # the pairs the accuracies below are measured on, counted as the table counts
            col.metric(f"{JUDGED.capitalize()} pairs", int(judged.loc[user]),
                       help="all the user's pairs: the file has no train/test split" if JUDGED == "judged"
                       else "the user's held-out test pairs")
            continue
        value = row.get(f"acc_{name}")
        delta = {} if name == reference or value is None else appstate.metric_delta(value, row.get(f"acc_{reference}"))
        col.metric(f"{name} accuracy", "–" if value is None else f"{100 * value:.0f}%", **delta)

margins = ui.test_margins(record)
if margins is None:
    ui.show_error(f"run {record.id} has no test_margins.csv, so its pairs cannot be shown")
    st.stop()
if seed is not None and "seed" in margins:
    margins = margins[margins["seed"] == seed]
responses = None
data_config = config_edit.known_fields(DataConfig, result.config.get("data"))
if seed is not None:
    data_config["seed"] = int(seed)
try:
    responses = ui.load_data({**appstate.default_data_dict(), **data_config}).responses
except PafoInputError as exc:
    st.warning(f"The run's dataset cannot be loaded any more ({exc}); showing response ids instead of texts.")
pairs = appstate.user_pairs_table(margins, int(user), responses, methods)
if not len(pairs):
    st.info(f"This user has no {JUDGED} pairs.")
    st.stop()

right = {name: (pairs[f"{name} right"] == "✓").sum() for name in methods if f"{name} right" in pairs}
st.markdown(f"**{len(pairs)} {JUDGED} pairs** — right: " + ", ".join(f"{m} {k}/{len(pairs)}" for m, k in right.items()))
ui.plot(report.user_margins_figure(pairs.rename(columns={f"{m} margin": f"margin_{m}" for m in methods}), methods),
        key="user_margins")
st.dataframe(pairs, width="stretch", hide_index=True, height=min(600, 38 + 35 * len(pairs)),
             column_config={"prompt": st.column_config.TextColumn("prompt", width="medium"),
                            "chosen": st.column_config.TextColumn("chosen (the user's pick)", width="large"),
                            "rejected": st.column_config.TextColumn("rejected", width="large")})
st.caption("Margin = r(chosen) − r(rejected) for this user; positive means the model agrees with the user's label.")

if record.kind == "audit":  # an audit holds given margins, no model that could score new text
    st.stop()
with st.expander("Score your own pair of responses for this user"):
    st.caption("Each model scores both responses for this user (by user id only; no group label). Rewards compare "
               "within one user and prompt, so the verdict is the margin A − B.")
    default_prompt = str(pairs["prompt"].iloc[0]) if "prompt" in pairs else ""
    prompt = st.text_input("Prompt", value=default_prompt, key="score_prompt")
    first = st.text_area("Response A", key="score_a", height=90)
    second = st.text_area("Response B", key="score_b", height=90)
    # Never disabled: a text area commits its value when focus leaves it, which the click itself does, so a
    # button enabled only after that commit needed a second click.
    if st.button("Score A and B", key="score_button"):
        if not all(text.strip() for text in (prompt, first, second)):
            st.warning("Type a prompt and both responses first.", icon=":material/edit:")
            st.stop()
        try:
            with st.spinner("Embedding and scoring…"):
                scores = scoring.score_pair(ui.scoring_models(record, methods), str(row["user_id"]), prompt, first,
                                            second)
        except PafoInputError as exc:
            st.info(f"This run cannot score new text: {exc}")
        else:
            st.dataframe(scores, hide_index=True, width="stretch")

held_out = ui.unseen_rows(record) if result.unseen is not None else None
if held_out is not None:
    with st.expander(f"Held-out users: never trained on ({100 * result.unseen.fraction:g}% of the users)"):
        st.caption("Each was personalised from k of their own pairs with everything the run trained frozen, then "
                   "scored on their test pairs (Compare's Unseen users panel pools them)"
                   + (f"; seed {seed}." if seed is not None else "."))
        st.dataframe(unseen_report.held_out_users(held_out, methods, seed), width="stretch", hide_index=True)

with st.expander("Add a new user from a few of their pairs", expanded=False):
    st.caption("Type (or upload) a few pairs this new user labelled: the response they preferred and the one they did "
               "not. Each model is personalised from them with everything the run trained frozen, as the run's "
               "unseen-user evaluation does (the baseline's w_u under its prior; PAFO's cluster posterior), and the "
               "table shows every model's margin chosen − rejected for this user before (the shared reward) and "
               "after. Positive: the model agrees with the user.")
    upload = st.file_uploader("Pairs file (CSV with prompt, chosen, rejected)", type=["csv"], key="new_user_file")
    slots = int(st.number_input("Pairs to type", 1, 10, 3, key="new_user_slots", disabled=upload is not None))
    if upload is not None:
        try:
            typed = pd.read_csv(upload, dtype=str)
        except (ValueError, UnicodeDecodeError) as exc:
            typed = None
            ui.show_error(f"{upload.name}: cannot be read as CSV ({' '.join(str(exc).split())}); save it as a CSV "
                          "with the columns prompt, chosen, rejected")
    else:
        rows = []
        for i in range(slots):
            cols = st.columns(3)
            rows.append({field: cols[j].text_input(f"{field} {i + 1}", key=f"new_user_{field}_{i}")
                         for j, field in enumerate(("prompt", "chosen", "rejected"))})
        typed = pd.DataFrame(rows)
    if st.button("Personalise and score", key="new_user_go", disabled=typed is None) and typed is not None:
        try:
            new_pairs = unseen_report.new_user_pairs(typed)
            with st.spinner("Embedding and personalising…"):
                _, fit = unseen_report.new_user_fit(ui.scoring_models(record, methods), new_pairs)
        except PafoInputError as exc:
            ui.show_error(str(exc), "Cannot personalise this user: ")
        else:
            right = {column: int((fit[column] > 0).sum()) for column in fit.columns[3:]}
            st.markdown(f"**New user, {len(fit)} pairs** — agreeing with the user: "
                        + ", ".join(f"{column} {count}/{len(fit)}" for column, count in right.items()))
            st.dataframe(fit, width="stretch", hide_index=True)
