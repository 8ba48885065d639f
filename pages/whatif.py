"""What-if: clone a finished run with a changed threshold, λ, τ, condition or population shares, launch it and
compare it with its parent."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from pafo import appstate, report
from pafo.errors import PafoInputError
from pafo.method_configs import PAFOConfig
from pafo.sources import DataConfig
from pages import _ui as ui

ui.require_app()

SIMULATED = ("synthetic", "dsp", "personalllm")

st.title("What-if")
st.markdown("Clone a finished run with one or more changes, run it in the background, and see what moved.")
picked = ui.pick_finished_run("whatif_parent", "Parent run", kind="experiment")  # audits train nothing to vary
if picked is None:
    st.stop()
parent, parent_result = picked
reg = ui.registry()
config = parent.config
groups, pafo = config.get("groups") or {}, config.get("pafo") or {}
data = config.get("data") or {}

# ----------------------------------------------------------------------------------------------- changes
condition_choices = list(appstate.field_specs(PAFOConfig, include=("condition",))[0].choices)
with st.form("whatif_form"):
    cols = st.columns(4)
    rule = cols[0].radio("Minority rule", ["quantile", "absolute"], horizontal=True, key="whatif_rule",
                         index=1 if groups.get("minority_threshold") is not None else 0)
    quantile = cols[0].number_input("quantile", 0.01, 0.99, float(groups.get("minority_quantile") or 0.2), 0.05,
                                    key="whatif_quantile")
    threshold = cols[0].number_input("absolute support threshold", 0.0, 1.0,
                                     float(groups.get("minority_threshold") or
                                           (parent_result.get("groups") or {}).get("threshold") or 0.5),
                                     0.01, key="whatif_threshold", format="%.3f")
    lam = cols[1].number_input("λ (distillation weight)", 0.0, 100.0, float(pafo.get("lam", 1.0)), 0.25,
                               key="whatif_lam")
    temperature = cols[1].number_input("τ (temperature)", 0.01, 100.0, float(pafo.get("temperature", 1.0)), 0.25,
                                       key="whatif_temperature")
    condition = cols[2].selectbox("Condition", condition_choices,
                                  index=condition_choices.index(pafo.get("condition", "group")),
                                  key="whatif_condition", help=appstate.field_specs(
                                      PAFOConfig, include=("condition",))[0].help)
    shares_default = data.get("shares") or ""
    if not shares_default and data.get("dataset") in SIMULATED:
        try:
            shares_default = appstate.shares_text(ui.dataset_summary(
                {**appstate.default_data_dict(), **appstate.known_fields(DataConfig, data)})["meta"].get("shares"))
        except PafoInputError:
            shares_default = ""
    shares = cols[3].text_input("Population shares (KEY=V,...)", value=shares_default or "", key="whatif_shares",
                                disabled=data.get("dataset") not in SIMULATED,
                                help="simulated sources only: how many users each judge dominates")
    label = cols[2].text_input("Label", key="whatif_label", placeholder="e.g. λ=2")
    launch = st.form_submit_button("Launch what-if run", type="primary")

if launch:
    changes = {"pafo.lam": float(lam), "pafo.temperature": float(temperature), "pafo.condition": condition}
    if rule == "quantile":
        changes.update({"groups.minority_quantile": float(quantile), "groups.minority_threshold": None})
    else:
        changes["groups.minority_threshold"] = float(threshold)
    if data.get("dataset") in SIMULATED and (shares or "") != (shares_default or ""):
        changes["data.shares"] = shares.strip() or None
    try:
        child_config = appstate.whatif_config(config, changes)
        diff = appstate.config_diff(config, child_config)
        if not diff:
            raise PafoInputError("nothing changed: set at least one value different from the parent run")
        from pafo.experiment import ExperimentConfig

        fingerprint = ExperimentConfig.from_dict(child_config).fingerprint()
        auto_label = label or "what-if: " + ", ".join(f"{k.split('.')[-1]}={v}" for k, _, v in diff)
        child = reg.submit(child_config, fingerprint=fingerprint, parent_id=parent.id, label=auto_label[:80])
    except PafoInputError as exc:
        ui.show_error(str(exc), "Cannot launch this what-if: ")
    else:
        st.session_state["whatif_child"] = child.id
        st.rerun()

# ----------------------------------------------------------------------------------------------- children
children = [r for r in reg.list() if r.parent_id == parent.id]
if not children:
    st.info("No what-if runs of this parent yet: change something above and launch one.", icon=":material/info:")
    st.stop()
ids = [c.id for c in children]
wanted = st.session_state.get("whatif_child")
child_id = st.selectbox("What-if run", ids, index=ids.index(wanted) if wanted in ids else 0,
                        format_func=lambda i: ui.run_label(children[ids.index(i)]), key="whatif_pick")
child = children[ids.index(child_id)]
diff = appstate.config_diff(config, child.config)
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
rows = []
for name in report.method_order(set(parent_result["methods"]) | set(child_result["methods"])):
    before = parent_result["methods"].get(name) or {}
    after = child_result["methods"].get(name) or {}
    for key, label in (("majority", "majority accuracy"), ("minority", "minority accuracy"),
                       ("overall", "overall accuracy")):
        a, b = (before.get("accuracy") or {}).get(key), (after.get("accuracy") or {}).get(key)
        rows.append({"method": name, "metric": label, "parent": a, "what-if": b,
                     "Δ": None if a is None or b is None else b - a})
    for key, label in (("group_gap", "group gap"), ("support_spearman", "Spearman(support, accuracy)")):
        a, b = (before.get("unfairness") or {}).get(key), (after.get("unfairness") or {}).get(key)
        rows.append({"method": name, "metric": label, "parent": a, "what-if": b,
                     "Δ": None if a is None or b is None else b - a})
table = pd.DataFrame(rows)
st.dataframe(table, width="stretch", hide_index=True, column_config={
    "parent": st.column_config.NumberColumn("parent", format="%.3f"),
    "what-if": st.column_config.NumberColumn("what-if", format="%.3f"),
    "Δ": st.column_config.NumberColumn("Δ", format="%+.3f")})
st.caption(f"Groups: parent {parent_result['groups']['n_minority']} minority users (cut "
           f"{parent_result['groups']['threshold']:.3f}), what-if {child_result['groups']['n_minority']} (cut "
           f"{child_result['groups']['threshold']:.3f}). A different grouping changes who counts as minority, so "
           "compare group accuracies with that in mind.")
