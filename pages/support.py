"""Support rates: how many other users share each user's preferences, and who counts as the minority."""

from __future__ import annotations

import streamlit as st

from pafo import appstate, report
from pafo.errors import PafoInputError
from pafo.support import GroupConfig, support_table
from pages import _ui as ui

ui.require_app()

st.title("Preference support rates")
st.markdown(
    "A user's **support rate** is the share of *other* users who label their training pairs the same way. "
    "Users with low support are the ones a shared reward model under-serves: they form the **minority** group."
)

config = st.session_state[ui.DATA]
groups = dict(st.session_state[ui.GROUPS])

# The model estimator reads the features of the encoder the next run will use (chosen on the Data page), so the
# grouping set here is the grouping that run trains with (one estimation path: pafo.support.estimate_support).
encoder = ui.encoder()
estimators = list(appstate.field_specs(GroupConfig, include=("estimator",))[0].choices)
controls = st.columns([1.2, 1.2, 2, 1.2])
estimator = controls[0].selectbox("Estimator", estimators, index=estimators.index(groups["estimator"]),
                                  help="auto: exact with known personas, co-label when pairs are labelled by ≥3 "
                                       f"users, else a cross-fitted Bradley–Terry model on {encoder} features (the "
                                       "Data page's encoder, as runs use)",
                                  key="support_estimator")

try:
    dataset = ui.load_data(config)
    support = ui.support_rates(config, estimator, encoder)
except PafoInputError as exc:
    ui.show_error(str(exc), "Cannot estimate support rates: ")
    st.stop()

values = support.user_support.dropna()
# The absolute cut starts where the current rule cuts these users, so switching the rule moves nobody.
threshold_default = groups.get("minority_threshold")
if threshold_default is None:
    threshold_default = float(values.quantile(GroupConfig(**groups).cut()[1]))
new_groups = {**ui.minority_rule_inputs(groups, key="support", threshold_default=threshold_default,
                                        radio_at=controls[1], inputs_at=controls[2]), "estimator": estimator}

try:
    grouping = GroupConfig(**new_groups).validate().apply(support.user_support)
except PafoInputError as exc:
    ui.show_error(str(exc), "This grouping does not work: ")
    st.stop()
st.session_state[ui.GROUPS] = new_groups  # the Train page uses the grouping shown here

n_min, n_maj = len(grouping.minority_users), len(grouping.majority_users)
with controls[3]:
    st.metric("Minority users", f"{n_min:,}", help="users at or below the cut; the rest are the majority")
    st.caption(f"{100 * n_min / max(n_min + n_maj, 1):.0f}% of users · {n_maj:,} majority · cut s ≤ "
               f"{grouping.threshold:.3f}")

table = support_table(dataset, support, grouping)

cols = st.columns(4)
cols[0].metric("Estimator", support.estimator + (f" · {encoder}" if support.estimator == "model" else ""))
cols[1].metric("Median support", f"{values.median():.3f}")
cols[2].metric("10th percentile", f"{values.quantile(0.1):.3f}")
cols[3].metric("Minority mean support", f"{table.loc[table['group'] == 'minority', 'support_rate'].mean():.3f}")
for note in support.notes:
    st.caption(note)

left, right = st.columns(2)
with left:
    ui.plot(report.support_histogram(table, grouping.threshold), key="support_hist")
with right:
    pair_users = dataset.pairs.loc[support.pair_support.index, "user"].to_numpy()
    pair_group = grouping.groups.reindex(pair_users)
    ui.plot(report.pair_support_histogram(support.pair_support, pair_group), key="pair_hist")

st.subheader("Lowest-support users")
n_show = st.slider("How many", 5, 100, 20, 5, key="support_n_low")
lowest = table.sort_values("support_rate").head(n_show)
st.dataframe(lowest, width="stretch", hide_index=True,
             column_config={"support_rate": st.column_config.ProgressColumn("support rate", min_value=0.0,
                                                                            max_value=1.0, format="%.3f")})
st.download_button("Download per-user support rates (CSV)", table.to_csv(index=False).encode(),
                   file_name=f"support_{dataset.name}.csv", mime="text/csv", icon=":material/download:",
                   on_click="ignore")
st.page_link(ui.PAGES["train"].script, label="Next: train the baseline and PAFO with this grouping",
             icon=ui.PAGES["train"].icon)
