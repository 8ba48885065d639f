"""The What-if page's sweep mode: one or two parameters of a finished run × seeds, run as a sweep (pafo.sweep), a
progress grid of its cells, then the Pareto plot of its grid points and accuracy against the swept parameter."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from pafo import appstate, effects, report
from pafo.data_roots import check_app_config
from pafo.errors import PafoInputError
from pafo.experiment import parse_seeds
from pafo.sweep import GridError, attach_records, cancel_sweep, parse_grid, start_sweep, sweep_result
from pages import _ui as ui

NO_SECOND = "(none)"
STATE = "whatif_sweep"  # the sweep this session launched: its parent, id, grid, seeds and run ids in cell order
WIDGETS = ("sweep_key1", "sweep_values1", "sweep_key2", "sweep_values2", "sweep_seeds")


def _reset_values(which: str) -> None:
    """A new parameter starts from its own default grid (``grid`` on its field), not the last one's values."""
    key = st.session_state.get(f"sweep_key{which}")
    st.session_state[f"sweep_values{which}"] = appstate.grid_text(key) if key and key != NO_SECOND else ""


def sweep_mode(parent, registry) -> None:
    """The form, then the current sweep of this parent (if any). It offers the parameters that can change this
    run's result (pafo.effects: β for the default PAFO, λ only where a student is distilled), and shows a bad value
    under its field, in the app's words."""
    config = parent.config
    parent_seeds = appstate.seeds_text(config.get("seeds") or [(config.get("data") or {}).get("seed", 0)])
    keys, inert = appstate.sweep_choices(config)
    if not keys:
        st.info("None of the parameters a sweep offers can change this run's result; change the run on Train "
                "(e.g. add pafo to its methods) and sweep that one.", icon=":material/info:")
        return
    if st.session_state.get("sweep_key1") not in keys:
        st.session_state.pop("sweep_key1", None)
    with st.container(border=True):
        cols = st.columns(3)
        key1 = cols[0].selectbox("Parameter", keys, key="sweep_key1", on_change=_reset_values, args=("1",),
                                 format_func=_describe)
        st.session_state.setdefault("sweep_values1", appstate.grid_text(key1))
        values1 = cols[0].text_input("Values", key="sweep_values1", help="comma-separated values of this parameter")
        error1 = cols[0].empty()
        seconds = [NO_SECOND, *(k for k in keys if k != key1)]
        if st.session_state.get("sweep_key2") not in seconds:
            st.session_state["sweep_key2"] = NO_SECOND
            st.session_state["sweep_values2"] = ""
        key2 = cols[1].selectbox("Second parameter", seconds, key="sweep_key2", on_change=_reset_values,
                                 args=("2",), format_func=_describe)
        values2 = cols[1].text_input("Values of the second parameter", key="sweep_values2",
                                     disabled=key2 == NO_SECOND)
        error2 = cols[1].empty()
        seeds_text = cols[2].text_input("Seeds", value=parent_seeds, key="sweep_seeds",
                                        help="every grid point runs once per seed, e.g. 0-2")
        error_seeds = cols[2].empty()
        if inert:
            st.caption("Not offered, because they cannot change this run's result: "
                       + ", ".join(appstate.app_message(f"{effects.option_label(k)}") for k in inert) + ".")
        launch = st.button("Launch sweep", type="primary", key="sweep_launch")
    if launch:
        specs = [f"{key1}={values1}"] + ([f"{key2}={values2}"] if key2 != NO_SECOND else [])
        try:
            grid = parse_grid(specs, config)
        except GridError as exc:
            where = error2 if exc.key == key2 and key2 != NO_SECOND else error1
            where.error(exc.field_message, icon=":material/error:")
            grid = None
        except PafoInputError as exc:
            error1.error(appstate.app_message(str(exc)), icon=":material/error:")
            grid = None
        try:
            seeds = parse_seeds(seeds_text)
        except PafoInputError as exc:
            error_seeds.error(appstate.app_message(str(exc)), icon=":material/error:")
            seeds = None
        if grid is not None and seeds is not None:
            try:
                check_app_config(config)  # the parent may have run on the command line, on any file
                sweep_id, cells = start_sweep(config, grid, seeds, registry=registry)
            except PafoInputError as exc:
                ui.show_error(str(exc), "Cannot launch this sweep: ")
            else:
                st.session_state[STATE] = {"parent": parent.id, "sweep_id": sweep_id, "grid": grid, "seeds": seeds,
                                           "run_ids": [cell.record.id for cell in cells]}
                st.rerun()
    state = st.session_state.get(STATE)
    if not state or state["parent"] != parent.id:
        st.info("No sweep of this run yet: pick a parameter and its values above and launch one.",
                icon=":material/info:")
        return
    show_sweep(state, config, registry)


def _describe(key: str) -> str:
    """A parameter in the picker: its label and its key (``β (weight of the teachers) · pafo.beta``)."""
    return key if key == NO_SECOND else f"{effects.option_label(key)} · {key}"


def show_sweep(state: dict, config: dict, registry) -> None:
    """The progress grid while cells run; once all ended, the Pareto plot, the line plot and sweep.json."""
    cells = attach_records(registry, config, state["grid"], state["seeds"], state["run_ids"])
    records = [cell.record for cell in cells]
    done = sum(record.done for record in records)
    st.markdown(f"**Sweep** `{state['sweep_id']}`: {done} of {len(cells)} cells done")
    st.dataframe(progress_grid(cells), width="stretch", hide_index=True)
    if done < len(cells):
        st.progress(done / len(cells))
        if st.button("Cancel sweep", key="sweep_cancel"):
            cancel_sweep(registry, state["sweep_id"])
            st.rerun()
        ui.rerun_when_runs_change(records)
        return
    ended = f"sweep_ended_{state['sweep_id']}"
    if not st.session_state.get(ended):
        # The pickers above were drawn before this page run saw the last cell end (a cell can finish between the
        # two registry reads); one more run of the page lists every cell there, and nothing reruns it after.
        st.session_state[ended] = True
        st.rerun()
    sweep = sweep_result(registry, config, state["grid"], cells, sweep_id=state["sweep_id"])
    failed = [c for c in sweep.cells if c.status != "succeeded"]
    if failed:
        st.warning(f"{len(failed)} cell(s) did not succeed; the points pool the seeds that did.")
    ui.plot(report.sweep_pareto(sweep), key="sweep_pareto")
    ui.plot(report.sweep_lines(sweep, next(iter(state["grid"]))), key="sweep_lines")
    st.dataframe(report.sweep_table(sweep), width="stretch", hide_index=True)
    st.caption(f"Per point, {sweep.pareto_method} pooled over its seeds: Δ against the baseline on the same users and "
               "test pairs, in points with 95% bootstrap CIs; ★ on the Pareto front.")
    st.download_button("sweep.json", json.dumps(sweep.to_json(), indent=2), file_name=f"{state['sweep_id']}.json",
                       mime="application/json", key="sweep_download")


def progress_grid(cells) -> pd.DataFrame:
    """One row per grid point, one column per seed: each cell's status (and progress while it runs)."""
    rows: dict[int, dict] = {}
    for cell in cells:
        row = rows.setdefault(cell.point, {key: str(value) for key, value in cell.params.items()})
        record = cell.record
        icon = ui.STATUS_ICONS.get(record.status, "")
        text = f"{icon} {record.status}" + (f" {100 * float(record.progress):.0f}%" if not record.done else "")
        row[f"seed {cell.seed}"] = text + (" ♻" if record.reused_from else "")
    return pd.DataFrame(list(rows.values()))
