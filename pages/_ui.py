"""Streamlit helpers shared by the pages: session state, cached loaders, the sidebar and the live run panel.

Everything that is not drawing widgets lives in :mod:`pafo.appstate` and :mod:`pafo.report` (no Streamlit there).
Session keys: ``data_config`` (dict of DataConfig, mirrored in the URL as ``?data=`` so a refresh keeps it, an
upload by its content id), ``group_config`` (dict of GroupConfig), ``run_id`` (the current run, mirrored in the URL
as ``?run=<id>`` so a refresh re-attaches), ``forms`` (last submitted experiment forms: one dict per config section,
and ``seeds`` as typed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import runpy
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import streamlit as st

from pafo import appstate, config_edit, report
from pafo.data_roots import check_app_config
from pafo.effects import SECTIONS
from pafo.encoder_specs import DEFAULT_ENCODER
from pafo.errors import PafoInputError
from pafo.method_configs import RunSettings, TrainConfig, method_sections
from pafo.paths import pafo_home
from pafo.registry import ACTIVE_STATUSES, CANCELLED, FAILED, SUCCEEDED, RunRegistry
from pafo.results import RunResult
from pafo.sources import DataConfig, dataset_fingerprint, load_dataset
from pafo.support import GROUP_CUTS, GroupConfig, estimate_support

DATA, GROUPS, RUN, FORMS = "data_config", "group_config", "run_id", "forms"
ENCODER = "encoder"  # the text encoder chosen on the Data page: the features of the next run and of Support
DATA_PARAM = "data"  # the URL's query parameter that holds the current dataset
class Page(NamedTuple):
    script: str
    title: str
    icon: str


#: The app's pages in navigation order: app.py builds the navigation from it and pages link to each other through
#: it, so a new page is its script plus one entry here.
PAGES = {
    "data": Page("pages/data.py", "Data", ":material/dataset:"),
    "support": Page("pages/support.py", "Support rates", ":material/bar_chart:"),
    "train": Page("pages/train.py", "Train", ":material/model_training:"),
    "compare": Page("pages/compare.py", "Compare", ":material/monitoring:"),
    "users": Page("pages/users.py", "Users", ":material/person_search:"),
    "whatif": Page("pages/whatif.py", "What-if", ":material/science:"),
}
APP_PATH = Path(__file__).resolve().parent.parent / "app.py"
#: How often a followed run's progress line is read and redrawn (the page's and the sidebar's alike, so they say
#: the same). Each redraw is a few small elements; every 2 s rather than every second halves what two tabs that
#: follow a run cost the browser (and the app: ~2% of a core; bench/RESULTS.md, section demo).
POLL_SECONDS = 2.0
#: How often the status watchers of pickers and the runs table's progress column look again: a table costs more to
#: redraw than a progress bar, and nobody reads a table's percent by the second.
WATCH_SECONDS = 5.0
STATUS_ICONS = {"queued": "◷", "running": "▶", "succeeded": "✓", "failed": "✗", "cancelled": "■"}
PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


# ------------------------------------------------------------------------------------------- entry

#: Progress bars jump to their new value: Streamlit animates each change, and in a browser without a GPU the
#: animation of a bar that changes every POLL_SECONDS redraws the page for most of each second (it doubled
#: Chromium's CPU while a run was followed: bench/RESULTS.md, section demo). Style only: it takes no space.
STYLE = "<style>[data-testid='stProgress'] * {transition: none !important; animation: none !important;}</style>"


def style() -> None:
    """The app's CSS (app.py applies it once per script run)."""
    st.html(STYLE)



def _prewarm() -> None:
    """Import the training stack (torch) while the user reads the first page, so the first click is quick.

    Only an import, in a daemon thread: no Streamlit call happens off the script thread.
    """
    with contextlib.suppress(Exception):
        import pafo.experiment  # noqa: F401


threading.Thread(target=_prewarm, name="pafo-prewarm", daemon=True).start()


_THREAD = threading.local()


@contextlib.contextmanager
def inside_app():
    """Marks a script run that went through app.py (see :func:`require_app`)."""
    _THREAD.in_app = True
    try:
        yield
    finally:
        _THREAD.in_app = False


def require_app() -> None:
    """Run app.py in place of a page that Streamlit started without it, then stop.

    Until some session's app.py has called ``st.navigation``, Streamlit treats the ``pages/`` folder as a legacy
    multipage app and runs a requested page script alone, without the app's navigation, state or sidebar: on the
    first request after a server start (a refresh of ``/compare?run=…``) and in every AppTest run. app.py then
    registers the navigation and runs the requested page inside it, in this same script run, so no widget value
    of the run is lost.
    """
    if getattr(_THREAD, "in_app", False):
        return
    runpy.run_path(str(APP_PATH), run_name="__main__")
    st.stop()


# ------------------------------------------------------------------------------------------- state


@st.cache_resource(show_spinner=False)
def _registry(home: str) -> RunRegistry:
    return RunRegistry(home)


def registry() -> RunRegistry:
    """The run registry of ``$PAFO_HOME`` (one object per home, shared by all sessions)."""
    return _registry(str(pafo_home()))


def submit_config(config, **kwargs):
    """Queue a run (or reuse an identical one) once every path it reads is inside a data root: a run cloned from
    one started on the command line may name any file."""
    check_app_config(config.to_dict())
    return registry().submit_config(config, **kwargs)


def default_forms() -> dict:
    """Defaults of the Train page's forms (``seeds`` blank: the dataset's one seed). The encoder is not among them:
    it is chosen on the Data page (:data:`ENCODER`)."""
    return train_forms({"run": dataclasses.asdict(RunSettings()), "train": dataclasses.asdict(TrainConfig()),
                        **{name: dataclasses.asdict(cls()) for name, cls in method_sections().items()}}, "")


def train_forms(sections: dict, seeds: str) -> dict:
    """The Train page's forms holding a run's config sections and seeds, all but the Data page's encoder."""
    run = {k: v for k, v in sections["run"].items() if k != "encoder"}
    return {**sections, "run": run, "seeds": seeds}


def encoder() -> str:
    """The text encoder chosen on the Data page (the default at first)."""
    return st.session_state.setdefault(ENCODER, DEFAULT_ENCODER)


def adopt_run_config(config: dict) -> None:
    """Make a run's dataset, grouping and forms the session's current choices (re-attach, what-if)."""
    ss = st.session_state
    config = config_edit.current_config(config)
    ss[DATA] = {**dataclasses.asdict(DataConfig()), **config_edit.known_fields(DataConfig, config.get("data"))}
    ss[GROUPS] = {**dataclasses.asdict(GroupConfig()), **config_edit.known_fields(GroupConfig, config.get("groups"))}
    forms = default_forms()
    for section in forms:
        if isinstance(forms[section], dict):
            forms[section].update({k: v for k, v in (config.get(section) or {}).items() if k in forms[section]})
    forms["seeds"] = appstate.seeds_text(config.get("seeds") or [])
    ss[FORMS] = forms
    run = config_edit.run_settings(config)
    if run is not None:  # an audit keeps the session's encoder
        ss[ENCODER] = run.encoder
        for widget in ("data_encoder", "data_encoder_model"):  # the Data page's picker redraws from it
            ss.pop(widget, None)
    clear_widgets(FORM_WIDGETS)


#: Widget key prefixes of the Train form: their session values win over the forms' values until cleared.
FORM_WIDGETS = ("train_", *(f"{name}_" for name in method_sections()))


def clear_widgets(prefixes: tuple[str, ...]) -> None:
    """Forget the widgets' own state so they redraw from the values the page passes (a reset, a new run)."""
    for key in [k for k in st.session_state if isinstance(k, str) and k.startswith(prefixes)]:
        del st.session_state[key]


def init_state() -> None:
    """Fill a new session from the URL or the defaults: ``?run=<id>`` re-attaches a run (and adopts its dataset),
    ``?data=`` restores the dataset the session had (:func:`pafo.appstate.data_param`), so a reload or a shared
    link opens where it was."""
    ss = st.session_state
    if RUN not in ss:
        ss[RUN] = None
        wanted = st.query_params.get("run")
        if wanted:
            try:
                record = registry().get(wanted, refresh=False)
            except PafoInputError as exc:
                ss["attach_error"] = str(exc)
            else:
                ss[RUN] = record.id
                adopt_run_config(record.config)
        linked = st.query_params.get(DATA_PARAM)
        if linked:
            try:
                ss[DATA] = appstate.data_from_param(linked)
            except PafoInputError as exc:
                ss["data_error"] = str(exc)
    ss.setdefault(DATA, dataclasses.asdict(DataConfig()))
    ss.setdefault(GROUPS, dataclasses.asdict(GroupConfig()))
    sync_url()


def forms() -> dict:
    """The last submitted experiment forms (the defaults at first)."""
    if FORMS not in st.session_state:
        st.session_state[FORMS] = default_forms()
    return st.session_state[FORMS]


def sync_url() -> None:
    """Mirror the current run id and dataset in the URL (each script run, so a page switch keeps them)."""
    run_id = st.session_state.get(RUN)
    if run_id and st.query_params.get("run") != run_id:
        st.query_params["run"] = run_id
    data = appstate.data_param(st.session_state[DATA])
    if data is None:
        if DATA_PARAM in st.query_params:
            del st.query_params[DATA_PARAM]
    elif st.query_params.get(DATA_PARAM) != data:
        st.query_params[DATA_PARAM] = data


def set_current_run(run_id: str | None) -> None:
    st.session_state[RUN] = run_id
    if run_id:
        st.query_params["run"] = run_id
    elif "run" in st.query_params:
        del st.query_params["run"]


def current_record():
    """The current run's record, or None (an id that vanished from the registry is dropped)."""
    run_id = st.session_state.get(RUN)
    if not run_id:
        return None
    try:
        return registry().get(run_id)
    except PafoInputError:
        set_current_run(None)
        return None


# ------------------------------------------------------------------------------------------- cached loaders


def fingerprint(config: dict) -> str:
    """The dataset's fingerprint, once its path is inside a data root (every load of the app passes here)."""
    check_app_config(config)
    return dataset_fingerprint(DataConfig(**config))


@st.cache_data(show_spinner="Loading the dataset…", max_entries=6)
def _load_data(config: dict, fingerprint: str):
    return load_dataset(DataConfig(**config))


def load_data(config: dict):
    """The dataset of a DataConfig dict (cached; a changed local file gives a new fingerprint)."""
    return _load_data(config, fingerprint(config))


@st.cache_data(show_spinner=False, max_entries=16)
def _summary(config: dict, fingerprint: str) -> dict:
    dataset = _load_data(config, fingerprint)
    return {**dataset.summary(), "judges": list(dataset.judges), "meta": {
        k: v for k, v in dataset.meta.items() if isinstance(v, str | int | float | dict | list)}}


def dataset_summary(config: dict) -> dict:
    return _summary(config, fingerprint(config))


@st.cache_data(show_spinner="Estimating preference support rates…", max_entries=8)
def _support(config: dict, fingerprint: str, estimator: str, encoder: str):
    dataset = _load_data(config, fingerprint)
    return estimate_support(dataset, estimator, encoder=encoder, seed=int(config.get("seed") or 0))


def support_rates(config: dict, estimator: str, encoder: str):
    """Support rates of a dataset as a run estimates them (the model estimator on ``encoder``'s features); cached
    by dataset, estimator and encoder; the threshold is applied live."""
    return _support(config, fingerprint(config), estimator, encoder)


@st.cache_data(show_spinner=False, max_entries=64)
def _result(run_id: str, path: str, mtime: float) -> tuple[RunResult | None, str | None]:
    record = registry().load_result(run_id)
    if record.result is None:
        return None, record.result_error
    try:
        return RunResult.from_json(record.result, f"the result of run {run_id}"), None
    except PafoInputError as exc:
        return None, str(exc)


def load_result(record) -> tuple[RunResult | None, str | None]:
    """A finished run's result (cached by file and mtime) or the reason it cannot be read."""
    if record.status != SUCCEEDED or not record.result_path:
        return None, f"run {record.id} has no result (status {record.status})"
    path = Path(record.result_path)
    mtime = path.stat().st_mtime if path.is_file() else -1.0
    return _result(record.id, str(path), mtime)


@st.cache_data(show_spinner=False, max_entries=16)
def _margins(path: str, mtime: float) -> pd.DataFrame:
    return pd.read_csv(path)


def _run_folder(record) -> Path | None:
    """The folder of the run's result.json, only where it lies inside the run's own (or reused run's) folder."""
    result = registry().result_file(record) if record.result_path else None
    return None if result is None else result.parent


def test_margins(record) -> pd.DataFrame | None:
    """The run's test_margins.csv (cached), or None when the run has none."""
    folder = _run_folder(record)
    path = folder / "test_margins.csv" if folder is not None else None
    return _margins(str(path), path.stat().st_mtime) if path is not None and path.is_file() else None


def unseen_rows(record) -> pd.DataFrame | None:
    """The run's held-out users (unseen_per_user.csv, cached), or None when it held none out."""
    from pafo.experiment import unseen_rows_file

    folder = _run_folder(record)
    path = unseen_rows_file(folder) if folder is not None else None
    return _margins(str(path), path.stat().st_mtime) if path is not None else None


@st.cache_resource(show_spinner="Loading the run's models…", max_entries=8)
def _scoring_models(run_dir: str, mtime: float, methods: tuple[str, ...], binding: tuple[str, str]) -> dict:
    from pafo.scoring import load_scoring_model

    return {name: load_scoring_model(run_dir, name, binding=binding) for name in methods}


def scoring_models(record, methods: list[str]) -> dict:
    """The run's models rebuilt from their saved weights, for scoring new text (raises PafoInputError), after
    checking that the folder holds this run's config and data (its manifest)."""
    from pafo.scoring import MSG_NOT_A_RUN

    run_dir = _run_folder(record)
    if run_dir is None or not (run_dir / "result.json").is_file():
        raise PafoInputError(MSG_NOT_A_RUN.format(path=f"run {record.id} ({record.status})"))
    return _scoring_models(str(run_dir), (run_dir / "result.json").stat().st_mtime, tuple(methods),
                           (record.config_hash, record.dataset_fingerprint))


def original_record(record):
    """The run that trained a reused run's result (the record itself otherwise, or when it is gone)."""
    if not record.reused_from:
        return record
    try:
        return registry().get(record.reused_from, refresh=False)
    except PafoInputError:
        return record


def finished_runs() -> list:
    return registry().list(status=SUCCEEDED)


def pareto_frame(records) -> pd.DataFrame:
    """Majority/minority accuracy of every finished run × method (results are cached per run)."""
    pairs = []
    for record in records:
        result, _ = load_result(record)
        if result is not None:
            pairs.append((record, result))
    return appstate.pareto_points(pairs)


# ------------------------------------------------------------------------------------------- widgets


def plot(fig, key: str | None = None) -> None:
    st.plotly_chart(fig, width="stretch", config=PLOTLY_CONFIG, key=key)


def flash(kind: str, message: str) -> None:
    """A message shown once at the top of the next page run (survives ``st.rerun``)."""
    st.session_state["flash"] = (kind, message)


def show_flash() -> None:
    kind, message = st.session_state.pop("flash", (None, None))
    if kind == "success":
        st.success(message, icon=":material/check_circle:")
    elif kind == "info":
        st.info(message, icon=":material/info:")


def show_error(message: str, prefix: str = "") -> None:
    """``st.error`` in the app's words: options by their form labels, not their command-line flags, and uploads by
    their file name, not their internal path."""
    st.error(appstate.app_message(f"{prefix}{message}"), icon=":material/error:")


def progress_text(record) -> str:
    """Status, stage and percent of a run in one line, the same in the sidebar and the run panel (a stage that
    repeats the status, as "cancelled · cancelled" did, is said once)."""
    stage = record.stage if record.stage and record.stage != record.status else ""
    return (f"{STATUS_ICONS.get(record.status, '')} {record.status}" + (f" · {stage}" if stage else "")
            + f" · {100 * float(record.progress):.0f}%")


def run_label(record) -> str:
    label = f" · {appstate.short_label(record)}" if record.label else ""
    run = config_edit.run_settings(record.config)
    methods = run.methods if run else ""
    if record.kind == "audit":
        methods = "audit of " + ",".join(s.get("name", "?") for s in record.config.get("sources") or [])
    when = time.strftime("%H:%M:%S", time.localtime(record.created_at))
    return f"{STATUS_ICONS.get(record.status, '')} {record.id}{label} · {methods} · {when}"


def pick_finished_run(key: str, title: str = "Run", *, live: bool = False,
                      kind: str | None = None) -> tuple[object, dict] | None:
    """A select box of finished runs (the current run first when it finished), its record and result.

    Shows the current run's failure, or its live progress (``live``) while it trains, and the honest empty state;
    returns None when there is nothing to show. When the current run finishes it becomes the selection.
    """
    current = current_record()
    if current is not None and current.status in (FAILED, CANCELLED):
        what = "failed" if current.status == FAILED else "was cancelled"
        show_error(f"Run {current.id} {what}: {current.error or 'no reason recorded'}. It has no results; "
                   "start a new run on Train or pick a finished run below.")
    elif current is not None and current.status in ACTIVE_STATUSES:
        if live:
            what = "Audit" if current.kind == "audit" else "Training run"
            st.markdown(f"**{what} {current.id}** — its results appear here when it finishes.")
            live_run_panel(current.id, key=key)
        else:
            st.info(f"Run {current.id} is {current.status} ({100 * current.progress:.0f}%, {current.stage}). Its "
                    "results appear here when it finishes; follow it on Train.", icon=":material/hourglass_top:")
    runs = [r for r in finished_runs() if kind is None or r.kind == kind]  # kind: experiment or audit only
    if not runs:
        if current is None or current.status not in ACTIVE_STATUSES:
            st.info("No finished run yet — start one on **Train**, or press **Run the demo** on the Data page.",
                    icon=":material/info:")
            st.page_link(PAGES["train"].script, label="Go to Train", icon=PAGES["train"].icon)
        return None
    ids = [r.id for r in runs]
    seen = f"{key}__current"
    if current is not None and current.id in ids and st.session_state.get(seen) != current.id:
        st.session_state[key] = current.id  # a run that just finished (or was attached) is shown first
        st.session_state[seen] = current.id
        st.session_state.pop(f"{key}_group", None)  # ...in its own group
    runs = pick_group(key, title, runs)
    ids = [r.id for r in runs]
    if st.session_state.get(key) not in ids:
        st.session_state[key] = ids[0]
    chosen = st.selectbox(title, ids, key=key, format_func=lambda i: run_label(runs[ids.index(i)]))
    record = runs[ids.index(chosen)]
    result, error = load_result(record)
    if result is None:
        show_error(error or "the result could not be read")
        return None
    return record, result


def pick_group(key: str, title: str, runs: list, *, selected: str | None = None) -> list:
    """With sweeps among ``runs``, a select box first: the single runs or one sweep (so a sweep's cells do not
    flood the run picker); returns the chosen group's runs, at first the group of ``selected`` (default: the
    picker's selection, ``st.session_state[key]``)."""
    groups = appstate.run_groups(runs)
    if len(groups) == 1:
        return runs
    group_key = f"{key}_group"
    if st.session_state.get(group_key) not in groups:
        st.session_state[group_key] = appstate.group_of(groups, selected or st.session_state.get(key))
    name = st.selectbox(f"{title}: single runs or a sweep", list(groups), key=group_key,
                        format_func=lambda g: appstate.group_label(g, groups[g]))
    return groups[name]


# ------------------------------------------------------------------------------------------- sidebar


def _sidebar_run(record) -> None:
    st.markdown(f"**Run** `{record.id}`" + (f" · {record.label}" if record.label else ""))
    st.progress(min(1.0, max(0.0, float(record.progress))), text=progress_text(record))
    if record.reused_from:
        st.caption(f"♻ reused from {record.reused_from}")
    if record.status == SUCCEEDED:
        st.page_link(PAGES["compare"].script, label="Open Compare", icon=PAGES["compare"].icon)
    elif record.status in (FAILED, CANCELLED) and record.error:
        st.caption(record.error[:200])


@st.fragment(run_every=POLL_SECONDS)  # the run panel's pace, so both show the same stage
def _sidebar_run_live() -> None:
    record = current_record()
    if record is None:
        return
    if record.done:
        st.rerun()  # the whole page once, so it shows the ended run (and the sidebar its final line)
    _sidebar_run(record)


def sidebar() -> None:
    """The current dataset and run, on every page."""
    with st.sidebar:
        st.markdown("#### Current dataset")
        if st.session_state.get("data_error"):
            st.error(f"Could not open the link's dataset: {appstate.friendly_paths(st.session_state['data_error'])}",
                     icon=":material/error:")
        config = st.session_state[DATA]
        try:
            summary = dataset_summary(config)
        except PafoInputError as exc:
            st.caption(f"cannot load: {appstate.friendly_paths(str(exc))}")
        else:
            pairs = summary["n_pairs"]
            source = appstate.dataset_label(config)
            st.markdown(f"**{source}** · {summary['n_users']:,} users · {summary['n_prompts']:,} prompts  \n"
                        f"{pairs['train']:,} train · {pairs['val']:,} val · {pairs['test']:,} test pairs")
        groups = GroupConfig(**st.session_state[GROUPS])
        st.caption(f"minority = {groups.rule_text()} · estimator {groups.estimator}")
        st.markdown("#### Current run")
        if st.session_state.get("attach_error"):
            st.caption(f"could not re-attach: {st.session_state['attach_error']}")
        record = current_record()
        if record is None:
            st.caption("none yet — press **Run the demo** on Data or start one on Train")
        elif record.status in ACTIVE_STATUSES:
            _sidebar_run_live()
        else:
            _sidebar_run(record)


# ------------------------------------------------------------------------------------------- run panel


def run_status_message(record) -> None:
    """The final state of a run, said plainly."""
    if record.status == SUCCEEDED:
        seconds = appstate.run_seconds(record) or 0.0
        if record.reused_from:
            st.info(f"♻ Reused finished run {record.reused_from}: identical config, data and code, so no "
                    "training was needed. Tick *Force a fresh run* in the form below for a new one.",
                    icon=":material/recycling:")
        else:
            st.success(f"Run {record.id} finished in {seconds:.0f} s.", icon=":material/check_circle:")
        st.page_link(PAGES["compare"].script, label="Open Compare" if record.kind == "audit" else
                     "Compare baseline and PAFO", icon=PAGES["compare"].icon)
    elif record.status == FAILED:
        show_error(f"Run {record.id} failed: {record.error or 'no reason recorded'}")
    elif record.status == CANCELLED:
        st.warning(f"Run {record.id} was cancelled: {record.error or 'by the user'}. It has no results.",
                   icon=":material/cancel:")


def run_panel(record, *, key: str) -> None:
    """A run that has ended: its last progress line, status, duration, training curves and outcome."""
    cols = st.columns([3, 1.4, 0.8, 0.8])
    cols[0].progress(min(1.0, max(0.0, float(record.progress))), text=progress_text(record))
    cols[1].metric("Status", record.status)
    elapsed = appstate.run_seconds(record)
    cols[2].metric("Elapsed", "–" if elapsed is None else f"{elapsed:.0f} s",
                   help="from the worker's start (a queued run has not started)")
    history = appstate.history_frame(registry().epochs(record.id))
    if len(history):
        last = history.iloc[-1]
        cols[3].metric("Epochs trained", f"{len(history)}",
                       help=f"epochs of every model and stage together; last: {last['stage']} epoch {last['epoch']}")
        plot(report.training_curves(history), key=f"curves_{key}_{record.id}")
    run_status_message(record)


def run_progress(record, *, key: str) -> None:
    """A run while it goes on: its progress line (the sidebar's words), how long it has run, and Cancel.

    Nothing more, because it is redrawn every :data:`POLL_SECONDS` while the run's worker needs the cores: no chart
    or table is drawn until the run has ended (its training curves and results come then).
    """
    cols = st.columns([4, 1], vertical_alignment="center")
    cols[0].progress(min(1.0, max(0.0, float(record.progress))), text=progress_text(record))
    cols[0].caption(appstate.live_caption(record))
    if cols[1].button("Cancel run", key=f"cancel_{key}_{record.id}", type="secondary", icon=":material/stop_circle:",
                      width="stretch"):
        record = registry().request_cancel(record.id)
        st.toast(f"Cancel requested for {record.id}")


def picker_key(base: str, records) -> str:
    """A widget key that changes with the listed runs' statuses. A select box keeps showing its selected option's
    old label (a ▶ long after the run finished) until the widget is drawn anew, so a new status makes a new
    widget; the page passes the selection on through ``index``."""
    digest = hashlib.sha256("".join(f"{r.id}:{r.status};" for r in records).encode()).hexdigest()[:10]
    return f"{base}_{digest}"


def rerun_when_runs_change(records) -> None:
    """Re-run the page when one of these runs (those still active) changes status, so status icons in pickers
    and tables drawn once per page run stay true. It draws nothing: between status changes it costs one registry
    read every :data:`WATCH_SECONDS`."""
    active = {r.id: r.status for r in records if not r.done}
    if not active:
        return

    @st.fragment(run_every=WATCH_SECONDS)
    def _watch() -> None:
        registry().refresh()
        for run_id, status in active.items():
            if registry().get(run_id, refresh=False).status != status:
                st.rerun()

    _watch()


def live_run_panel(run_id: str, *, key: str) -> None:
    """:func:`run_progress` redrawn every :data:`POLL_SECONDS` while the run is active (an ``st.fragment``: only
    the progress line reruns, never the page); once the run ends the whole page reruns once and draws
    :func:`run_panel` and whatever the page shows of its results."""
    record = registry().get(run_id)
    if record.done:
        run_panel(record, key=key)
        return

    @st.fragment(run_every=POLL_SECONDS)
    def _live() -> None:
        live = registry().get(run_id)
        if live.done:
            st.rerun()
        run_progress(live, key=key)

    _live()


# ------------------------------------------------------------------------------------------- forms


def spec_widget(spec: appstate.FieldSpec, value, key: str, *, label: str | None = None, disabled: bool = False,
                note: str | None = None):
    """One input widget for a dataclass field, its bounds and help from the field (inside a form: the value counts
    when the form is submitted); ``note`` ends the help (why a disabled option has no effect)."""
    help_text = f"{spec.help} (default: {spec.default})" + (f"\n\n**{note}**" if note else "")
    common = {"label": label or spec.label, "help": help_text, "key": key, "disabled": disabled}
    if spec.kind == "choice":
        options = list(spec.choices)
        return st.selectbox(options=options, index=options.index(value) if value in options else 0, **common)
    if spec.kind == "bool":
        return st.checkbox(value=bool(value), **common)
    if spec.optional or spec.kind == "str":  # text, so an optional field can be blanked back to "not set"
        return st.text_input(value="" if value is None else str(value),
                             placeholder="default" if spec.optional else None, **common)
    if spec.kind == "int":
        return st.number_input(value=int(value), step=1, **spec.limits(), **common)
    return st.number_input(value=float(value), format="%g", step=_float_step(float(value)), **spec.limits(),
                           **common)


#: The grouping rule's two cuts as the radio names them (GroupConfig.minority_quantile, .minority_threshold).
RULES = ("quantile", "absolute")
QUANTILE_STEP, THRESHOLD_STEP = 0.01, 0.005


def minority_rule_inputs(groups: dict, *, key: str, threshold_default: float, radio_at, inputs_at) -> dict:
    """The grouping rule's inputs, built once for every page that sets it: the quantile/absolute radio (in
    ``radio_at``) and a slider per cut (in ``inputs_at``), bounds and help from GroupConfig's fields, the cut not
    chosen disabled. Returns the rule's two fields as GroupConfig takes them (the threshold ``None`` for the
    quantile rule; the quantile as it was for the absolute one)."""
    specs = {spec.name: spec for spec in appstate.field_specs(GroupConfig, include=GROUP_CUTS)}
    quantile_spec, threshold_spec = specs["minority_quantile"], specs["minority_threshold"]
    current = GroupConfig(**config_edit.known_fields(GroupConfig, groups))
    rule = radio_at.radio("Minority rule", RULES, horizontal=True, key=f"{key}_rule",
                          index=1 if current.minority_threshold is not None else 0)
    quantile = inputs_at.slider("Minority = users at or below this support quantile",
                                value=float(current.minority_quantile), step=QUANTILE_STEP, key=f"{key}_quantile",
                                disabled=rule != RULES[0], help=quantile_spec.help,
                                **quantile_spec.limits(QUANTILE_STEP))
    threshold = inputs_at.slider("Minority = users at or below this support rate",
                                 value=round(float(threshold_default), 3), step=THRESHOLD_STEP, format="%.3f",
                                 key=f"{key}_threshold", disabled=rule != RULES[1], help=threshold_spec.help,
                                 **threshold_spec.limits(THRESHOLD_STEP))
    if rule == RULES[0]:
        return {"minority_quantile": quantile, "minority_threshold": None}
    return {"minority_quantile": current.minority_quantile, "minority_threshold": threshold}


def _float_step(value: float) -> float:
    magnitude = abs(value) if value else 0.1
    return float(10 ** (int(f"{magnitude:e}".split("e")[1]) - 1)) if magnitude < 1 else 0.1


def dataclass_inputs(cls: type, values: dict, *, prefix: str, include: tuple[str, ...] | None = None,
                     exclude: tuple[str, ...] = (), columns: int = 3) -> dict:
    """Widgets for a config dataclass's fields, laid out in columns; returns the raw form values."""
    specs = appstate.field_specs(cls, include=include, exclude=exclude)
    cols = st.columns(columns)
    out = {}
    for i, spec in enumerate(specs):
        with cols[i % columns]:
            out[spec.name] = spec_widget(spec, values.get(spec.name, spec.default), f"{prefix}_{spec.name}")
    return out


def option_inputs(section: str, values: dict, config: dict, *, prefix: str, include: tuple[str, ...] | None = None,
                  columns: int = 4) -> dict:
    """Widgets for one config section's options (``pafo``, ``train``, ...): those that have an effect in
    ``config`` (a flat ``{"section.field": value}`` of the experiment as the page has it so far) as inputs, the
    others disabled in an expander, each saying in its help why it has no effect and what would make it matter
    (:mod:`pafo.effects`). Options are read in field order, so an option that depends on an earlier one (τ on λ)
    follows what the user just chose. Returns every field's raw value; ``config`` is updated with them."""
    from pafo.effects import APP_WORDS, is_active, no_effect_reason

    specs = appstate.field_specs(SECTIONS[section], include=include)
    cols, shown, inert, out = st.columns(columns), 0, [], {}
    for spec in specs:
        key = f"{section}.{spec.name}"
        value = values.get(spec.name, spec.default)
        if is_active(config, key):
            with cols[shown % columns]:
                out[spec.name] = spec_widget(spec, value, f"{prefix}_{spec.name}")
            shown += 1
        else:
            inert.append((spec, value, no_effect_reason(config, key, APP_WORDS)))
            out[spec.name] = value
        config[key] = out[spec.name]
    if inert:
        with st.expander(f"{len(inert)} option{'s' * (len(inert) != 1)} with no effect in this configuration"):
            st.caption("Shown for reference: with the choices above they cannot change the result. "
                       "Each one's help says what would make it matter.")
            cols = st.columns(columns)
            for i, (spec, value, reason) in enumerate(inert):
                with cols[i % columns]:
                    spec_widget(spec, value, f"{prefix}_{spec.name}", disabled=True, note=f"No effect: {reason}.")
    return out
