"""Data: the one-click demo, choosing and validating a dataset source, preview rows and summary figures, and
attaching other reward models' predictions (or a local reward model) for an audit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

from pafo import appstate, audit, hf_reward, report
from pafo.attributes import attribute_columns
from pafo.data_roots import check_app_config
from pafo.encoder_specs import ENCODER_HELP, ENCODERS, MODEL_ENCODER, encoder_spec
from pafo.encoders import get_encoder
from pafo.errors import PafoInputError
from pafo.paths import PACKAGE_ROOT
from pafo.sources import DataConfig
from pafo.support import GroupConfig
from pages import _ui as ui

ui.require_app()

DSP_LOCAL = PACKAGE_ROOT.parent / "shared" / "data" / "dsp_test_part_a.json"

st.title("⚖️ PAFO Studio")
st.markdown(
    "Find and fix **personalized reward bias**: users whose preferences few others share (low *support rate*) get "
    "worse reward models. PAFO finds groups of users who label alike (*preference clusters*) in the training "
    "labels, fits a small teacher reward model per cluster (on each response's embedding and its words), and adds "
    "each user's teacher to the personalized baseline: one model, no group label needed when it scores."
)

ui.show_flash()

# ----------------------------------------------------------------------------------------------- the demo
with st.container(border=True):
    left, right = st.columns([3, 1], vertical_alignment="center")
    demo_seeds = appstate.DEMO_SEEDS
    several = any(c in demo_seeds for c in ",-")
    left.markdown(
        "**New here? Run the demo.** It simulates 300 users on the built-in synthetic data, trains the baseline "
        "and PAFO in the background and shows their progress on **Compare**, then the results"
        + (f": it repeats the experiment on seeds {demo_seeds} (new users and labels, the same texts) and pools "
           "them, so Compare can tell a real difference from noise, with paired confidence intervals. The first "
           "run embeds the texts (under a minute on two cores); later runs read them from the cache."
           if several else " on **one seed**: a difference between methods on one seed is not evidence; train "
           "seeds 0-4 on Train for a verdict you can trust.")
    )
    if right.button("▶ Run the demo", type="primary", width="stretch", key="run_demo"):
        config = appstate.demo_config()
        ui.adopt_run_config(config.to_dict())
        try:
            record = ui.registry().submit_config(config, label="demo")
        except PafoInputError as exc:
            ui.show_error(str(exc), "Could not start the demo: ")
        else:
            ui.set_current_run(record.id)
            st.switch_page(ui.PAGES["compare"].script)  # it shows the live progress, then the results

# ----------------------------------------------------------------------------------------------- the source
st.subheader("Dataset")
current = st.session_state[ui.DATA]
sources = list(appstate.SOURCE_LABELS)
initial = appstate.source_kind(current)
source = st.segmented_control("Source", sources, default=initial, format_func=appstate.SOURCE_LABELS.get,
                              key="data_source") or initial

def saved_upload(upload, note: str, prefix: str = "") -> str | None:
    """The path an uploaded file was saved to (None without one, or after showing why it was rejected), with a
    caption once the server has it: ``prefix``, the file's name, then ``note`` (which may use ``{size}``)."""
    if upload is None:
        return None
    try:
        path = str(appstate.save_upload(upload.name, upload.getvalue()))
    except PafoInputError as exc:
        ui.show_error(str(exc), "Upload rejected: ")
        return None
    st.caption(f"{prefix}{upload.name} " + note.format(size=len(upload.getvalue())))
    return path



path_value = current.get("path") if current["dataset"] == source else None
dataset_name, uploaded_path = source, None
if source == "pairs":
    st.caption("A table with columns **user_id, prompt, chosen, rejected** (optional **split**: train / val / "
               "test) as CSV, JSONL, JSON or Parquet.")
    # No type= filter: a wrong file gets our own message (what is wrong and what to upload) instead of a widget error.
    upload = st.file_uploader("Upload a pairs file (.csv, .jsonl, .json or .parquet)", key="pairs_upload")
    uploaded_path = saved_upload(upload, "({size:,} bytes); it is used instead of the path", "uploaded ")
elif current["dataset"] == "pairs" and appstate.friendly_paths(str(path_value or "")) != str(path_value or ""):
    path_value = None  # an earlier upload: named in the sidebar; the path box is for files on this machine
elif source == "hub":
    schemas = appstate.HUB_SCHEMAS
    dataset_name = st.radio("Schema", list(schemas), format_func=schemas.get, horizontal=True,
                            key="hub_schema", index=list(schemas).index(current["dataset"])
                            if current["dataset"] in schemas else 0)
    st.caption("A Hugging Face hub id (owner/name) or a URL. This machine may be offline: then download the file "
               "elsewhere and use its local path.")
elif source == "dsp" and not path_value and DSP_LOCAL.is_file():
    path_value = str(DSP_LOCAL)

attributes_path, keep_attributes = None, False
with st.expander("User attributes (optional): who each user is, to slice results by",
                 expanded=bool(current.get("user_attributes"))):
    st.caption("A table with **user_id** and one column per attribute (region, tier, age…) as CSV, JSONL, JSON or "
               "Parquet, one row per user of the dataset. Compare then shows accuracy and paired differences per "
               "slice of users; PRISM, MultiPref and Community Alignment bring their own.")
    attributes_upload = st.file_uploader("Upload a user attributes file", key="attributes_upload")
    if attributes_upload is not None:
        attributes_path = saved_upload(attributes_upload, "received: **Load dataset** to use it.")
    elif current.get("user_attributes"):
        keep_attributes = st.checkbox(f"Keep {appstate.display_path(current['user_attributes'])}", value=True,
                                      key="attributes_keep")

with st.form("data_form", border=True):
    values: dict = {}
    if source != "synthetic":
        hint = appstate.path_hint(source)
        label = "or a path on this machine" if source == "pairs" else "Path, URL or hub id"
        values["path"] = st.text_input(label, value=path_value or "", placeholder=hint, key=f"path_{source}")
    fields = appstate.source_fields(dataset_name)
    with st.expander("Options", expanded=source == "synthetic"):
        values.update(ui.dataclass_inputs(DataConfig, current if current["dataset"] == dataset_name else {},
                                          prefix=f"data_{dataset_name}", include=fields, columns=4))
    submitted = st.form_submit_button("Load dataset", type="primary")

if submitted:
    if uploaded_path:
        values["path"] = uploaded_path
    values["user_attributes"] = attributes_path or (current.get("user_attributes") if keep_attributes else None)
    values = {k: v for k, v in values.items() if k != "path" or v}
    if not values.get("path") and source == "pairs" and current["dataset"] == "pairs" and current.get("path"):
        values["path"] = current["path"]  # keep the uploaded file that is the current dataset
    try:
        config = appstate.form_to_dataclass(DataConfig, {"dataset": dataset_name, **values})
        config_dict = dataclasses.asdict(config.validate())
        ui.load_data(config_dict)
    except PafoInputError as exc:
        ui.show_error(str(exc), "Cannot load this dataset: ")
    except Exception as exc:  # a bug or an unforeseen file problem: say so instead of a traceback
        ui.show_error(f"{type(exc).__name__}: {exc}", "Unexpected error while loading: ")
    else:
        if config_dict != st.session_state[ui.DATA]:
            st.session_state[ui.DATA] = config_dict
            st.session_state[ui.GROUPS] = dataclasses.asdict(GroupConfig())
        ui.flash("success", "Dataset loaded. Next: look at its **support rates**, then **train**.")
        st.rerun()

if st.button("Reset to the synthetic demo data", key="reset_data"):
    st.session_state[ui.DATA] = dataclasses.asdict(DataConfig())
    st.session_state[ui.GROUPS] = dataclasses.asdict(GroupConfig())
    st.rerun()

# ----------------------------------------------------------------------------------------------- preview
config = st.session_state[ui.DATA]
try:
    dataset = ui.load_data(config)
except PafoInputError as exc:
    ui.show_error(str(exc), "The current dataset cannot be loaded: ")
    st.stop()

summary = dataset.summary()
st.subheader(f"Current dataset: {summary['name']}")
cols = st.columns(6)
cols[0].metric("Users", f"{summary['n_users']:,}")
cols[1].metric("Prompts", f"{summary['n_prompts']:,}")
cols[2].metric("Responses", f"{summary['n_responses']:,}")
for col, split in zip(cols[3:], ("train", "val", "test"), strict=True):
    col.metric(f"{split} pairs", f"{summary['n_pairs'][split]:,}")
user_attributes = [c for c in attribute_columns(dataset) if c != "dominant"]
if user_attributes:
    st.caption("User attributes: " + ", ".join(f"**{c}** ({dataset.users[c].nunique()} values)"
                                               for c in user_attributes) + " · slice by them on Compare")

# ----------------------------------------------------------------------------------------------- the encoder
OTHER_ENCODER = "other"  # a transformers model folder or hub id, typed below
encoder = ui.encoder()
choices = [*ENCODERS, OTHER_ENCODER]
picked = st.selectbox("Text encoder (the features of every run and of the Support page's model estimator)", choices,
                      index=choices.index(encoder if encoder in ENCODERS else OTHER_ENCODER), key="data_encoder",
                      format_func=lambda name: encoder_spec(name).label if name in ENCODERS else MODEL_ENCODER.label,
                      help=ENCODER_HELP)
wanted = picked
if picked == OTHER_ENCODER:
    wanted = st.text_input("Model folder or hub id", value="" if encoder in ENCODERS else encoder,
                           key="data_encoder_model", placeholder="/path/to/model or org/name").strip()
if wanted and wanted != encoder:
    try:
        get_encoder(wanted)  # a folder or id that does not load is refused here, not by the next run
    except PafoInputError as exc:
        ui.show_error(str(exc), "This encoder cannot be used: ")
    else:
        st.session_state[ui.ENCODER] = encoder = wanted
spec = encoder_spec(encoder)
st.caption(f"**{encoder}**: {spec.help}. Embedding this dataset's {summary['n_responses']:,} responses takes about "
           f"{spec.cost * summary['n_responses']:.0f} s on two cores the first time; the disk cache keeps them.")

left, right = st.columns(2)
with left:
    ui.plot(report.pairs_per_user_figure(dataset.user_pair_counts()), key="pairs_per_user")
with right:
    dominant = dataset.users["dominant"].dropna()
    if len(dominant):
        counts = dominant.value_counts()
        fig = report.make_figure([go.Bar(x=counts.index, y=counts.to_numpy(), marker_color="#4C6EF5")],
                                 "Users by dominant judge (simulated personas)", height=320,
                                 xaxis=dict(title="dominant judge of the user's persona"), yaxis=dict(title="users"))
        ui.plot(fig, key="judges")
        shares = dataset.meta.get("shares")
        if shares:
            st.caption(f"population shares: {appstate.shares_text(shares)} · α = {dataset.meta.get('alpha')}")
    else:
        per_prompt = dataset.pairs.groupby("prompt_id").size()
        fig = report.make_figure([go.Histogram(x=per_prompt, marker_color="#4C6EF5")], "Pairs per prompt",
                                 height=320, xaxis=dict(title="labelled pairs per prompt"),
                                 yaxis=dict(title="prompts"))
        ui.plot(fig, key="per_prompt")

split = st.radio("Preview split", ["train", "val", "test"], horizontal=True, key="preview_split")
st.dataframe(dataset.pair_table(split).head(200), width="stretch", height=300, hide_index=True)
st.page_link(ui.PAGES["support"].script, label="Next: support rates", icon=ui.PAGES["support"].icon)

# ----------------------------------------------------------------------------------------------- audit
st.subheader("Audit your own reward model")
st.markdown("Attach the predictions of reward models trained elsewhere (one file per model), or a local "
            "transformers reward model folder, to this dataset. The audit measures each model's accuracy per user "
            "group, the bias curve and a paired verdict against a reference, in the background like a training "
            "run, and opens on **Compare**.")
st.caption("A predictions file (CSV, JSONL, JSON or Parquet) has **user_id, prompt, chosen, rejected** and "
           "**margin** (the model's r(chosen) − r(rejected) for that user) or **score_chosen, score_rejected**; an "
           "optional **pair_id** (the pair's row in the dataset) joins on instead of the texts. Every test pair "
           "needs exactly one row per model (every pair when a pairs file has no split column).")
with st.container(border=True):
    uploads = st.file_uploader("Prediction files (one per model; the file name names the model)",
                               accept_multiple_files=True, key="audit_files")
    cols = st.columns([3, 1])
    model_folder = cols[0].text_input("Local reward model folder (optional)", key="audit_model",
                                      placeholder="a folder saved by an AutoModelForSequenceClassification")
    device = cols[1].selectbox("Model device", hf_reward.DEVICES, key="audit_device",
                               index=hf_reward.DEVICES.index(audit.AuditSettings().device))
    sources, shown_as = [], {}  # shown_as: stored upload path → the file name the analyst knows
    for upload in uploads or []:
        try:
            stored = str(appstate.save_upload(upload.name, upload.getvalue()))
        except PafoInputError as exc:
            ui.show_error(str(exc), "Upload rejected: ")
            continue
        sources.append(audit.Source(audit.source_name(Path(upload.name).stem, [s.name for s in sources]),
                                    "predictions", stored))
        shown_as[stored] = upload.name
    if model_folder.strip():
        folder = model_folder.strip()
        sources.append(audit.Source(audit.source_name(Path(folder).name, [s.name for s in sources]), "model",
                                    str(Path(folder).expanduser())))
    names = [s.name for s in sources]
    if sources:
        st.caption("Models: " + ", ".join(f"**{s.name}** ({shown_as.get(s.path, s.path)})" for s in sources))
    cols = st.columns([2, 2, 1], vertical_alignment="bottom")
    reference = cols[0].selectbox("Reference (every other model is compared with it)", names or ["–"],
                                  key="audit_reference", disabled=not names)
    allow_missing = cols[1].checkbox("Allow missing predictions", key="audit_allow_missing",
                                     help="audit only the pairs each model has a row for and report coverage per "
                                          "group, instead of refusing a file that misses pairs")
    if cols[2].button("Start audit", type="primary", disabled=not sources, key="audit_start", width="stretch"):
        try:
            audit_config = audit.AuditConfig(
                data=DataConfig(**config), groups=GroupConfig(**st.session_state[ui.GROUPS]),
                audit=audit.AuditSettings(reference=reference, allow_missing=allow_missing, device=device,
                                          encoder=ui.encoder()),
                sources=sources).validate()
            check_app_config(audit_config.to_dict())  # a typed model folder, before anything reads it
            with st.spinner("Checking the predictions against the dataset…"):
                audit.check_sources(audit_config, dataset)
            record = ui.submit_config(audit_config, label="audit")
        except PafoInputError as exc:
            message = str(exc)
            for stored, name in shown_as.items():
                message = message.replace(stored, name)
            ui.show_error(message, "Cannot start the audit: ")
        else:
            ui.set_current_run(record.id)
            st.switch_page(ui.PAGES["compare"].script)  # its live progress, then the audit's results
