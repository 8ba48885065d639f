"""What-if: clone a finished run with a changed threshold, PAFO option (only those that can change its result),
population shares or seeds, launch it and compare it with its parent; or sweep one or two of its parameters over
seeds (pages/_sweep.py)."""

from __future__ import annotations

import time

import streamlit as st

from pafo import appstate, config_edit, report
from pafo.effects import flat_values, is_active
from pafo.errors import PafoInputError
from pafo.sources import DataConfig
from pages import _sweep
from pages import _ui as ui

ui.require_app()
#: The PAFO options a one-off what-if varies; each shows only where it can change the parent's result (the
#: others disabled, saying why: pafo.effects), so the default PAFO offers β and its clusters, not λ or τ.
WHATIF_PAFO_FIELDS = ("teachers", "student", "beta", "clusters", "lam", "temperature", "condition", "dense")
#: The run settings a what-if varies: the unseen-user evaluation's held-out share and shots (pafo.unseen).
WHATIF_RUN_FIELDS = ("unseen_users", "shots")


st.title("What-if")
st.markdown("Clone a finished run with one or more changes, run it in the background, and see what moved.")
picked = ui.pick_finished_run("whatif_parent", "Parent run", kind="experiment")  # audits train nothing to vary
if picked is None:
    st.stop()
parent, parent_result = picked
reg = ui.registry()
config = config_edit.current_config(parent.config)  # a run stored by an older version: in today's spelling
groups, pafo = config.get("groups") or {}, config.get("pafo") or {}
data = config.get("data") or {}

# ----------------------------------------------------------------------------------------------- changes
# No st.form: in a form, Enter in any field submits it, and each Enter launched a training run. Plain widgets
# commit on Enter and only the button launches; the rule radio can also disable the input it makes irrelevant.
WIDGETS = ("whatif_rule", "whatif_quantile", "whatif_threshold", *(f"whatif_{name}" for name in WHATIF_PAFO_FIELDS),
           *(f"whatif_run_{name}" for name in WHATIF_RUN_FIELDS), "whatif_shares", "whatif_seeds", "whatif_label")
if st.session_state.get("whatif_for") != parent.id:  # another parent: its values, not the last parent's
    for key in (*WIDGETS, *_sweep.WIDGETS):
        st.session_state.pop(key, None)
    st.session_state["whatif_for"] = parent.id

MODES = ("one what-if", "sweep")
if st.radio("Mode", MODES, horizontal=True, key="whatif_mode",
            help="sweep: a grid of values of one or two parameters × seeds, with a Pareto plot of the grid points"
            ) == "sweep":
    _sweep.sweep_mode(parent, reg)
    st.stop()

# Every input below takes its bounds, default and help from the config dataclasses (pafo.config.option).
with st.container(border=True):
    cols = st.columns(4)
    threshold_default = groups.get("minority_threshold") or parent_result.threshold or 0.5
    new_groups = ui.minority_rule_inputs(groups, key="whatif", threshold_default=threshold_default,
                                         radio_at=cols[0], inputs_at=cols[0])
    shares_default = data.get("shares") or ""
    if not shares_default and appstate.simulated(data):
        try:
            shares_default = appstate.shares_text(ui.dataset_summary(
                {**appstate.default_data_dict(), **config_edit.known_fields(DataConfig, data)})["meta"].get("shares"))
        except PafoInputError:
            shares_default = ""
    shares = cols[1].text_input("Population shares (KEY=V,...)", value=shares_default or "", key="whatif_shares",
                                disabled=not appstate.simulated(data),
                                help="simulated sources only: how many users each judge dominates")
    parent_seeds = appstate.seeds_text(config.get("seeds") or [data.get("seed", 0)])
    seeds = cols[2].text_input("Seeds", value=parent_seeds, key="whatif_seeds",
                               help="run seeds (users and pairs; the texts stay), e.g. 0-2: several give paired CIs "
                                    "and a verdict on Compare")
    label = cols[3].text_input("Label", key="whatif_label", placeholder="e.g. β=2")
    pafo_config = flat_values(config)
    st.markdown("**Unseen users** — hold users out of training and personalise them from a few pairs")
    run_values = ui.option_inputs("run", config.get("run") or {}, pafo_config, prefix="whatif_run",
                                  include=WHATIF_RUN_FIELDS)
    st.markdown("**PAFO options** — those that can change this run's result")
    pafo_values = ui.option_inputs("pafo", pafo, pafo_config, prefix="whatif", include=WHATIF_PAFO_FIELDS)
    launch = st.button("Launch what-if run", type="primary", key="whatif_launch")

if launch:
    # Only the options that can change the result: a what-if changing no effect is refused (pafo.effects).
    changes = {f"pafo.{name}": value for name, value in pafo_values.items() if is_active(pafo_config, f"pafo.{name}")}
    changes.update({f"run.{name}": value for name, value in run_values.items() if is_active(pafo_config, f"run.{name}")
                    and value != flat_values(config).get(f"run.{name}")})
    changes.update({f"groups.{name}": value for name, value in new_groups.items()})
    if appstate.simulated(data) and (shares or "") != (shares_default or ""):
        changes["data.shares"] = shares.strip() or None
    if seeds.strip() != parent_seeds:
        changes["seeds"] = seeds.strip() or str(data.get("seed", 0))
    try:
        child_config = config_edit.whatif_config(config, changes)
        diff = config_edit.config_diff(config, child_config)
        if not diff:
            raise PafoInputError("nothing changed: set at least one value different from the parent run")
        from pafo.experiment import ExperimentConfig

        auto_label = label or "what-if: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, _, v in diff)
        submitted_at = time.time()
        child = ui.submit_config(ExperimentConfig.from_dict(child_config), parent_id=parent.id,
                                  label=auto_label[:80])
    except PafoInputError as exc:
        ui.show_error(str(exc), "Cannot launch this what-if: ")
    else:
        if not child.done and child.created_at < submitted_at:  # the registry handed back a run in flight
            ui.flash("info", f"An identical run is already {child.status} ({child.id}): following it instead of "
                             "training the same config twice.")
        elif child.reused_from:
            ui.flash("info", f"♻ Identical to finished run {child.reused_from}: its result is shown, no training.")
        st.session_state["whatif_child"] = child.id  # the picker shows the run just launched, not an older one
        st.rerun()

ui.show_flash()

# ----------------------------------------------------------------------------------------------- children
records = reg.list()
children = [r for r in records if r.parent_id == parent.id]
wanted = st.session_state.get("whatif_child")
if wanted and wanted not in {c.id for c in children}:  # an identical run of another parent was reused
    children += [r for r in records if r.id == wanted]
if not children:
    st.info("No what-if runs of this parent yet: change something above and launch one.", icon=":material/info:")
    st.stop()
ids = [c.id for c in children]
child_id = st.selectbox("What-if run", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda i: ui.run_label(children[ids.index(i)]),
                        key=ui.picker_key("whatif_pick", children))
st.session_state["whatif_child"] = child_id  # the selection outlives the picker's key (a new one per status)
ui.rerun_when_runs_change(children)  # the picker's status icons
child = children[ids.index(child_id)]
diff = config_edit.config_diff(config, child.config)
st.markdown("**Changed:** " + (", ".join(f"`{k}` {a} → **{b}**" for k, a, b in diff) or "nothing"))

if not child.done:
    ui.live_run_panel(child.id, key="whatif")
    st.stop()
child_result, error = ui.load_result(child)
if child_result is None:
    ui.run_status_message(child)
    if child.status == "succeeded":
        ui.show_error(error or "the result could not be read")
    st.stop()
if child.reused_from:
    st.caption(f"♻ reused from {child.reused_from}")

ui.plot(report.whatif_bars(parent_result, child_result, f"parent {parent.id[-6:]}", f"what-if {child.id[-6:]}"),
        key="whatif_bars")
st.dataframe(report.whatif_table(parent_result, child_result), width="stretch", hide_index=True)
st.caption("Accuracies in %, the gap and Δ in percentage points, as on Compare. Groups: parent "
           f"{parent_result.groups['n_minority']} minority users (cut {parent_result.threshold:.3f}), what-if "
           f"{child_result.groups['n_minority']} (cut {child_result.threshold:.3f}). A different grouping changes "
           "who counts as minority, so compare group accuracies with that in mind.")
