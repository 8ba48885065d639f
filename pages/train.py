"""Train: configure methods from their dataclasses, start runs in the background, follow and cancel them."""

from __future__ import annotations

import dataclasses

import streamlit as st

from pafo import appstate, config_edit
from pafo.effects import flat_values, reset_inert
from pafo.errors import PafoInputError
from pafo.method_configs import METHOD_SPECS, METHODS, RunSettings, TrainConfig, method_sections, method_spec
from pafo.support import GroupConfig
from pages import _ui as ui

ui.require_app()
# One line per method from the registry; the grouping-dependent ones say so, as the Support page's choice moves them.
METHODS_HELP = "\n".join(f"- **{spec.name}**: {spec.label}" + (" (trains on the support groups)" if spec.needs_groups
                                                                   else "") for spec in METHOD_SPECS)

#: The run settings of the unseen-user evaluation (pafo.unseen): the share of users held out and the shots.
UNSEEN_FIELDS = ("unseen_users", "shots")

st.title("Train")
reg = ui.registry()
record = ui.current_record()

# ----------------------------------------------------------------------------------------------- current run
if record is not None:
    st.subheader(f"Run {record.id}" + (f" · {record.label}" if record.label else ""))
    run = config_edit.run_settings(record.config)
    methods, encoder = (run.methods, run.encoder) if run else ("", "")
    seeds = appstate.seeds_text(record.config.get("seeds") or [record.config["data"].get("seed", 0)])
    st.caption(f"methods {methods} · encoder {encoder} · dataset {appstate.dataset_label(record.config['data'])} · "
               f"seeds {seeds}" + (f" · what-if of {record.parent_id}" if record.parent_id else ""))
    ui.live_run_panel(record.id, key="train")
else:
    st.info("No run yet. Configure one below, or press **Run the demo** on the Data page.", icon=":material/info:")

# ----------------------------------------------------------------------------------------------- new run
data, groups, encoder = st.session_state[ui.DATA], st.session_state[ui.GROUPS], ui.encoder()
forms = ui.forms()
rule = GroupConfig(**groups).rule_text()
with st.expander("Start a new run", expanded=record is None):
    st.markdown(f"Dataset **{appstate.dataset_label(data)}** (seed {data.get('seed', 0)}) · encoder **{encoder}** · "
                f"minority = **{rule}** ({groups['estimator']} estimator) — change them on the Data and Support "
                "rates pages.")
    changed = appstate.form_changes(forms, ui.default_forms())
    if changed:
        cols = st.columns([4, 1], vertical_alignment="center")
        cols[0].info("This form holds values that differ from the defaults (from an earlier run or what you set): "
                     + ", ".join(f"`{key}` {value} (default {default})" for key, value, default in changed),
                     icon=":material/tune:")
        if cols[1].button("Reset to defaults", key="train_reset", icon=":material/restart_alt:", width="stretch"):
            st.session_state[ui.FORMS] = ui.default_forms()
            ui.clear_widgets(ui.FORM_WIDGETS)
            st.rerun()
    # No st.form: the options shown depend on choices made above them (the student's kind decides whether λ
    # matters), which a form would only apply on submit. Enter in a field commits it; only the button starts a run.
    with st.container(border=True):
        run_values = forms["run"]
        run = RunSettings(**config_edit.known_fields(RunSettings, run_values))
        cols = st.columns([3, 1, 1])
        chosen = cols[0].multiselect("Methods", list(METHODS),
                                     default=[m for m in run.methods.split(",") if m in METHODS],
                                     help=METHODS_HELP, key="train_methods")
        bootstrap = cols[1].number_input("Bootstrap resamples", 10, 10000, int(run.bootstrap), 100,
                                         key="train_bootstrap")
        seeds = cols[2].text_input("Seeds", value=forms.get("seeds", ""), key="train_seeds",
                                   placeholder=f"{data.get('seed', 0)} (the dataset's)",
                                   help="several run seeds (users and pairs; the texts stay), e.g. 0-2 or 0,3,7: "
                                        "every method trains once per seed and Compare pools them, with paired CIs "
                                        "and a verdict per method. Blank: the dataset's one seed")
        # What the page has chosen so far: each section's options below are drawn for it (pafo.effects).
        chosen_config = flat_values({"data": data, "groups": groups,
                                     "run": {**run_values, "methods": ",".join(chosen), "encoder": encoder}})
        verdict_values = ui.option_inputs("run", run_values, chosen_config, prefix="train_run",
                                          include=("epsilon", *UNSEEN_FIELDS))
        st.markdown("**Training** (every model)")
        train_values = ui.option_inputs("train", forms["train"], chosen_config, prefix="train")
        method_values = {}
        for name in method_sections():
            st.markdown(f"**{method_spec(name).label}**")
            method_values[name] = ui.option_inputs(name, forms[name], chosen_config, prefix=name)
        cols = st.columns([2, 1, 1], vertical_alignment="bottom")
        label = cols[0].text_input("Label (optional)", key="train_label", placeholder="e.g. β=2, 4 clusters")
        force = cols[1].checkbox("Force a fresh run", key="train_force",
                                 help="re-train even if an identical finished run exists (otherwise it is reused)")
        start = cols[2].button("Start run", type="primary", width="stretch", key="train_start")

    if start:
        from pafo.experiment import ExperimentConfig

        try:
            sections = {
                "run": dataclasses.asdict(appstate.form_to_dataclass(RunSettings, {
                    **verdict_values, "encoder": encoder, "methods": ",".join(chosen), "bootstrap": int(bootstrap)})),
                "train": dataclasses.asdict(appstate.form_to_dataclass(TrainConfig, train_values)),
                **{name: dataclasses.asdict(appstate.form_to_dataclass(cls, method_values[name]))
                   for name, cls in method_sections().items()},
            }
            # Options without effect go back to their defaults: configs that can only give the same result are one
            # config, so an identical finished run is reused.
            config = ExperimentConfig.from_dict(reset_inert(
                appstate.experiment_config(data, groups, **sections, seeds=seeds).to_dict()))
            new = ui.submit_config(config, force=force, label=label or None)
        except PafoInputError as exc:
            ui.show_error(str(exc), "Cannot start the run: ")
        else:
            st.session_state[ui.FORMS] = ui.train_forms(sections, seeds.strip())
            ui.set_current_run(new.id)
            st.rerun()

# ----------------------------------------------------------------------------------------------- all runs
st.subheader("Runs")


RUNS_COLUMNS = ("run", "status", "progress", "stage", "created", "seconds", "label", "methods", "encoder", "seeds",
                "dataset", "reused", "parent", "error")
RUNS_COLUMN_CONFIG = {
    "run": st.column_config.TextColumn("run", width="medium"),
    "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent"),
    "stage": st.column_config.TextColumn("stage", width="large"),
    "created": st.column_config.TextColumn("created", width="medium"),
}


def runs_table() -> None:
    records = reg.list()
    if not records:
        st.caption("No runs in this registry yet.")
        return
    table = appstate.runs_table(records)
    # Stage and creation time first and wide enough for their longest values ("seed 2 of 5: embedding texts"),
    # not clipped at the table's right edge behind eight other columns.
    st.dataframe(table, width="stretch", hide_index=True, height=min(400, 38 + 35 * len(table)),
                 column_order=RUNS_COLUMNS, column_config=RUNS_COLUMN_CONFIG)
    if any(r.reused_from for r in records):
        st.caption("♻ marks runs answered from an identical finished run (same config, data and code).")


records = reg.list()
if any(not r.done for r in records):
    st.fragment(run_every=ui.WATCH_SECONDS)(runs_table)()
else:
    runs_table()
# The picker's status icons below; the current run's live panel already reruns the page when it ends.
ui.rerun_when_runs_change([r for r in records if record is None or r.id != record.id])
if records:
    cols = st.columns([3, 1], vertical_alignment="bottom")
    current_id = st.session_state.get(ui.RUN)
    with cols[0]:
        shown = ui.pick_group("train_attach", "Follow another run", records, selected=current_id)
    ids = [r.id for r in shown]
    pick = cols[0].selectbox("Follow another run", ids, index=ids.index(current_id) if current_id in ids else 0,
                             format_func=lambda i: ui.run_label(shown[ids.index(i)]),
                             key=ui.picker_key("train_attach", records))
    if cols[1].button("Follow this run", key="train_attach_button", width="stretch") and pick != current_id:
        ui.set_current_run(pick)
        st.rerun()
