"""AppTest tests of every page of the Streamlit app, with real (tiny) runs through the run registry.

One module-wide ``$PAFO_HOME`` holds a finished baseline + PAFO run on a 40-user synthetic dataset with the TF-IDF
encoder, the same over seeds 0-1, and a run on another (30-user) dataset; error paths (bad upload, bad path,
offline hub id, failed run, cancelled run) must show ``st.error`` (or the cancelled warning) and never an exception.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.proto.Metric_pb2 import Metric as MetricProto
from streamlit.testing.v1 import AppTest

from pafo import appstate, config_edit
from pafo.registry import RunRegistry
from pafo.sources import DataConfig, load_dataset
from pafo.support import GroupConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 90
TINY_DATA = {**dataclasses.asdict(DataConfig()), "users": 40, "prompts": 30, "train_pairs": 12, "test_pairs": 10}
TINY_RUN = {"encoder": "tfidf", "methods": "baseline,pafo", "bootstrap": 50}
TINY_TRAIN = {"epochs": 3, "patience": 2}


def tiny_config(**pafo):
    return appstate.experiment_config(TINY_DATA, dataclasses.asdict(GroupConfig()), run=TINY_RUN,
                                      train=TINY_TRAIN, pafo=pafo or None)


@dataclasses.dataclass
class Studio:
    registry: RunRegistry
    run_id: str  # a finished baseline + PAFO run
    failed_id: str  # a run whose worker failed (its data file is missing)
    seeds_id: str  # the same as run_id over seeds 0-1
    other_id: str  # a finished run on another dataset (30 users)

    def __iter__(self):  # tests unpack (registry, run id)
        return iter((self.registry, self.run_id))


def submit(registry: RunRegistry, config, **kwargs):
    return registry.submit_config(config, **kwargs)


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A PAFO home with finished tiny runs (one seed, two seeds, another dataset) and one failed run."""
    home = tmp_path_factory.mktemp("pafo_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(home))
        patch.setenv("PAFO_MAX_CONCURRENT", "2")
        registry = RunRegistry(home)
        config = tiny_config()
        runs = [submit(registry, config, label="fixture")]
        broken = config.to_dict()
        broken["data"] = {**broken["data"], "dataset": "pairs", "path": str(home / "moved-away.csv")}
        runs.append(registry.submit(broken, fingerprint="missing-file", label="fails"))
        runs.append(submit(registry, dataclasses.replace(tiny_config(), seeds=[0, 1]).validate(), label="seeds"))
        other = appstate.experiment_config({**TINY_DATA, "users": 30, "prompts": 24},
                                           dataclasses.asdict(GroupConfig()), run=TINY_RUN, train=TINY_TRAIN)
        runs.append(submit(registry, other, label="other data"))
        good, bad, seeds, other = (registry.wait(r.id, timeout=240) for r in runs)
        for run in (good, seeds, other):
            assert run.status == "succeeded", run.error
        assert bad.status == "failed", bad.status
        yield Studio(registry, good.id, bad.id, seeds.id, other.id)
        for run in registry.list():
            if not run.done:
                registry.cancel(run.id, wait=5)


def crafted_run(registry: RunRegistry, result: dict, label: str) -> str:
    """A succeeded run whose result.json is ``result`` as given (numbers a test chooses), with no training."""
    config = {**result["config"], "run": {**result["config"]["run"], "bootstrap": 11}}  # a config of its own
    run_id = registry.submit(config, fingerprint=result["fingerprint"], label=label, start=False).id
    assert registry.mark_running(run_id, os.getpid())
    path = registry.run_dir(run_id) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    assert registry.mark_succeeded(run_id, path)
    return run_id


def picker(at: AppTest, label: str):
    """A select box by its label (run pickers' keys change with their runs' statuses)."""
    return next(box for box in at.selectbox if box.label == label)


def figure(at: AppTest, title: str) -> dict:
    """The Plotly figure (as JSON) whose title starts with ``title``."""
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if ((spec.get("layout") or {}).get("title") or {}).get("text", "").startswith(title):
            return spec
    raise AssertionError(f"no figure titled {title!r}")


def app(run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if run_id:
        at.query_params["run"] = run_id
    return at


def page(at: AppTest, name: str) -> AppTest:
    """Open a page (the first run registers the navigation, as a browser's first load does)."""
    at.run()
    return at.switch_page(f"pages/{name}.py").run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def plotly_count(at: AppTest) -> int:
    return len(at.get("plotly_chart"))


# ------------------------------------------------------------------------------------------- Data


def test_data_opens_on_the_synthetic_demo(studio):
    at = app().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    assert at.session_state["data_config"]["dataset"] == "synthetic"
    assert at.button(key="run_demo").label == "▶ Run the demo"
    labels = [m.label for m in at.metric]
    assert {"Users", "Prompts", "train pairs", "test pairs"} <= set(labels)
    assert plotly_count(at) == 2
    assert len(at.dataframe) == 1
    assert any("Current dataset" in m.value for m in at.sidebar.markdown)


def test_data_page_chooses_the_encoder_that_support_and_train_use(studio, tmp_path):
    """Issue 21: the encoder was a Train form field that the Support and Data pages read from the Train form's
    state; it is chosen on the Data page, from the encoder registry, and a folder that is no model is refused there
    (the encoder stays as it was)."""
    at = app().run()
    picker = at.selectbox(key="data_encoder")
    assert picker.options[:2] == ["MiniLM (all-MiniLM-L6-v2, bundled)", "TF-IDF + SVD (fast)"]
    picker.set_value("tfidf").run()
    assert_clean(at)
    assert at.session_state["encoder"] == "tfidf"
    at.selectbox(key="data_encoder").set_value("other").run()
    at.text_input(key="data_encoder_model").input(str(tmp_path)).run()  # an empty folder: no config.json
    assert any("This encoder cannot be used" in e for e in errors(at)), errors(at)
    assert at.session_state["encoder"] == "tfidf"
    at.switch_page("pages/train.py").run()
    assert any("encoder **tfidf**" in m.value for m in at.markdown)


def test_data_form_loads_a_smaller_synthetic_dataset(studio):
    at = app().run()
    at.number_input(key="data_synthetic_users").set_value(30)
    at.number_input(key="data_synthetic_prompts").set_value(24)
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    assert at.session_state["data_config"]["users"] == 30
    assert at.metric[0].value == "30"
    assert "Dataset loaded" in at.success[0].value


def test_data_bad_upload_shows_error(studio):
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.file_uploader(key="pairs_upload").upload("pairs.csv", b"user,text\nu1,hello\n", "text/csv")
    at.run()
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert any("missing column" in e for e in errors(at)), errors(at)
    assert at.session_state["data_config"]["dataset"] == "synthetic"  # the previous dataset stays current


def test_data_upload_of_wrong_type_and_empty_file_show_errors(studio):
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.file_uploader(key="pairs_upload").upload("notes.txt", b"hello", "text/plain").run()
    assert_clean(at)
    assert any("unsupported file type" in e for e in errors(at)), errors(at)
    at.file_uploader(key="pairs_upload").upload("empty.csv", b"", "text/csv").run()
    assert any("empty" in e for e in errors(at)), errors(at)


def test_data_good_upload_becomes_the_current_dataset(studio, tmp_path):
    """Regression: an upload was named `pairs: <hash>.csv` in the sidebar and by its internal path in the Train
    form; it must be named by its own file name everywhere."""
    dataset = load_dataset(DataConfig(**TINY_DATA))
    table = dataset.pair_table()
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.file_uploader(key="pairs_upload").upload("mine.csv", table.to_csv(index=False).encode(), "text/csv").run()
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    config = at.session_state["data_config"]
    assert config["dataset"] == "pairs" and Path(config["path"]).parent.parent.name == "uploads"
    assert at.metric[0].value == "40"
    assert any("**pairs: mine.csv**" in m.value for m in at.sidebar.markdown), [m.value for m in at.sidebar.markdown]
    at.switch_page("pages/train.py").run()
    shown = " ".join(m.value for m in at.markdown)
    assert "pairs: mine.csv" in shown and "uploads" not in shown


def test_data_missing_path_and_offline_hub_show_errors(studio):
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.text_input(key="path_pairs").set_value("no/such/pairs.csv")  # in the working folder, a data root
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert any("no such file" in e for e in errors(at)), errors(at)
    at.segmented_control(key="data_source").set_value("hub").run()
    at.text_input(key="path_hub").set_value("someone/some-pairs")
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert any("cannot be downloaded" in e or "offline" in e for e in errors(at)), errors(at)


# ------------------------------------------------------------------------------------------- Support


def test_support_page_threshold_controls_and_error(studio):
    _, run_id = studio
    at = page(app(run_id), "support")
    assert_clean(at)
    assert plotly_count(at) == 2
    minority = next(m for m in at.metric if m.label == "Minority users")
    assert minority.value == "8"  # 20% of 40 users
    assert len(at.get("download_button")) == 1
    quantile = at.slider(key="support_quantile")
    assert (quantile.min, quantile.max) == (0.01, 0.99)  # the field's (0, 1), not 0.05–0.5 (issue 21)
    quantile.set_value(0.4).run()
    at.slider(key="support_n_low").set_value(40).run()  # the table then lists all 40 users' support rates
    rates = at.dataframe[0].value["support_rate"].to_numpy(dtype=float)
    assert len(rates) == 40
    # At or below the 0.4 quantile: 16 users, or more when users tie at the cut (the rule keeps ties together).
    expected = int((rates <= np.quantile(rates, 0.4)).sum())
    assert expected >= 16
    assert next(m for m in at.metric if m.label == "Minority users").value == str(expected)
    assert at.session_state["group_config"]["minority_quantile"] == 0.4
    at.radio(key="support_rule").set_value("absolute").run()
    at.slider(key="support_threshold").set_value(0.0).run()
    assert_clean(at)
    assert any("grouping left the minority group empty" in e for e in errors(at)), errors(at)


# ------------------------------------------------------------------------------------------- Train


def test_train_page_shows_finished_run_curves_and_table(studio):
    _, run_id = studio
    at = page(app(run_id), "train")
    assert_clean(at)
    assert not errors(at), errors(at)
    assert any(f"Run {run_id}" in s.value for s in at.subheader)
    assert plotly_count(at) == 1  # loss and validation accuracy by group
    assert any("finished" in s.value for s in at.success)
    runs = at.dataframe[0].value
    assert run_id in set(runs["run"])
    assert at.query_params["run"] == [run_id] or at.query_params["run"] == run_id


def test_train_form_reuses_an_identical_finished_run(studio):
    registry, run_id = studio
    at = page(app(run_id), "train")
    at.button(key="train_start").click().run()  # the forms hold the run's own config: identical → reused
    assert_clean(at)
    assert not errors(at), errors(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id
    assert registry.get(new_id).reused_from == run_id
    assert any("Reused finished run" in i.value for i in at.info)
    assert any(v.startswith("♻") for v in at.dataframe[0].value["reused"])


def test_train_form_shows_values_that_differ_from_the_defaults_and_resets(studio):
    """Regression: form values of an earlier run (here the fixture's 3 epochs) carried silently into the next run,
    even on another dataset; the form says what differs from the defaults and resets on one click."""
    _, run_id = studio
    at = page(app(run_id), "train")
    shown = " ".join(i.value for i in at.info)
    assert "`train.epochs` 3 (default 40)" in shown and "run.encoder" not in shown  # the Data page's choice
    assert any("encoder **tfidf**" in m.value for m in at.markdown)  # named beside the dataset it embeds
    at.button(key="train_reset").click().run()
    assert_clean(at)
    assert at.number_input(key="train_epochs").value == 40
    assert not any("differ from the defaults" in i.value for i in at.info)


def test_train_form_runs_several_seeds(studio):
    """The Seeds field: seeds 0-1 with the fixture's settings is the fixture's two-seed run, reused."""
    registry, run_id = studio
    at = page(app(run_id), "train")
    at.text_input(key="train_seeds").input("0-1")
    at.button(key="train_start").click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    assert registry.get(at.session_state["run_id"]).reused_from == studio.seeds_id
    at.text_input(key="train_seeds").input("0-x")
    at.button(key="train_start").click().run()
    assert any("Seeds: '0-x' is not a seed" in e for e in errors(at)), errors(at)  # the app's words


def test_train_form_rejects_bad_values(studio):
    _, run_id = studio
    at = page(app(run_id), "train")
    at.selectbox(key="pafo_teachers").set_value("groups").run()  # the teachers' L2 matters with group teachers
    at.text_input(key="pafo_teacher_user_l2").set_value("lots")
    at.button(key="train_start").click().run()
    assert_clean(at)
    assert any("teachers' L2 on user vectors: must be a number" in e for e in errors(at)), errors(at)
    at.text_input(key="pafo_teacher_user_l2").set_value("")
    at.multiselect(key="train_methods").set_value([])
    at.button(key="train_start").click().run()
    assert any("at least one method" in e for e in errors(at)), errors(at)


@pytest.fixture
def gated_runs(monkeypatch, tmp_path):
    """Runs the app submits from now on wait for a gate the test opens (``tests.run_targets.gated_experiment``):
    the test decides when a run may finish, so how fast the machine is changes nothing. Returns the gate file."""
    gate = tmp_path / "gate"
    submit = RunRegistry.submit

    def gated_submit(self, config, **options):
        return submit(self, {**config, "target": "tests.run_targets:gated_experiment", "gate": str(gate)}, **options)

    monkeypatch.setattr(RunRegistry, "submit", gated_submit)
    return gate


def test_train_start_then_cancel_shows_cancelled(studio, gated_runs):
    """Regression (failed under load): the run must still be going when the test cancels it. It is gated, so it
    cannot finish before the cancel however fast it trains."""
    registry, run_id = studio
    at = page(app(run_id), "train")
    at.checkbox(key="train_force").check()
    at.button(key="train_start").click().run()
    assert_clean(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id and not registry.get(new_id).done
    at.button(key=f"cancel_train_{new_id}").click().run()
    assert_clean(at)
    record = registry.wait(new_id, timeout=120)
    assert record.status == "cancelled", (record.status, record.error)
    assert not gated_runs.exists()  # the gate never opened: only the cancel ended it
    at.run()
    assert any("was cancelled" in w.value for w in at.warning)
    progress = [bar.proto.text for bar in at.get("progress")]
    assert progress and all("cancelled · cancelled" not in text for text in progress), progress  # said once
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert any("was cancelled" in e for e in errors(at)), errors(at)
    assert plotly_count(at) >= 5  # the latest finished run is still shown below the message


def progress_lines(block) -> list[str]:
    return [bar.proto.text for bar in block.get("progress")]


def test_a_running_run_shows_its_progress_line_only_then_its_curves(studio, gated_runs):
    """Regression (issue 19): while a run went on, the live panel redrew its training curves and metrics every
    second in every tab that followed it (the demo's worker ran ~1.7× slower in the browser than alone). Now a
    running run shows its progress line, in the sidebar's words, and Cancel; no chart until it has ended (here:
    cancelled), then its curves."""
    registry, run_id = studio
    at = page(app(run_id), "train")
    at.checkbox(key="train_force").check()
    at.button(key="train_start").click().run()
    new_id = at.session_state["run_id"]
    assert new_id != run_id and not registry.get(new_id).done
    registry.update_progress(new_id, 0.3, "baseline", {"stage": "baseline", "epoch": 1, "loss": 0.7,
                                                       "val": {"overall": 0.6, "majority": 0.6, "minority": 0.5}})
    at.run()
    assert_clean(at)
    assert registry.epochs(new_id) and not registry.get(new_id).done  # curves could be drawn: there is an epoch
    assert plotly_count(at) == 0
    assert [m.label for m in at.metric] == []
    assert at.button(key=f"cancel_train_{new_id}").label == "Cancel run"
    main, side = progress_lines(at.main), progress_lines(at.sidebar)
    assert len(main) == len(side) == 1 and main == side, (main, side)
    assert any("running for" in c.value or "queued for" in c.value for c in at.caption)
    at.button(key=f"cancel_train_{new_id}").click().run()  # cancelled, not finished: the module's Pareto views
    assert registry.wait(new_id, timeout=120).status == "cancelled"  # keep to the fixture's runs
    at.run()
    assert_clean(at)
    assert plotly_count(at) == 1  # the run has ended: now its loss and validation accuracy by group
    assert "Epochs trained" in [m.label for m in at.metric]


def test_demo_trains_five_seeds(studio, gated_runs):
    """Regression (issue 19): the demo trained one seed, whose verdict is "within noise" as often as not; it trains
    seeds 0-4 (they share their texts, so it embeds them once) and Compare follows it live."""
    at = app().run()
    assert "seeds 0-4" in " ".join(m.value for m in at.markdown)
    at.button(key="run_demo").click().run()
    assert_clean(at)
    record = studio.registry.get(at.session_state["run_id"])
    try:
        assert record.config["seeds"] == [0, 1, 2, 3, 4]
        assert (record.config["run"]["methods"], record.config["run"]["encoder"]) == ("baseline,pafo", "minilm")
        assert any(t.value == "Compare methods" for t in at.title), [t.value for t in at.title]
        assert progress_lines(at.main) == progress_lines(at.sidebar) != []
    finally:
        studio.registry.cancel(record.id, wait=30)


def test_reload_keeps_an_uploaded_dataset_from_the_url(studio):
    """Regression (issue 19): a browser reload or a direct URL reset the session to the synthetic data and lost an
    uploaded dataset. The URL keeps the dataset (``?data=``, an upload by its content id, never its folder), a new
    session opens it again, and a link to an upload that is gone says so and opens the synthetic data."""
    table = load_dataset(DataConfig(**TINY_DATA)).pair_table()
    at = app().run()
    assert "data" not in at.query_params  # the default dataset keeps the URL clean
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.file_uploader(key="pairs_upload").upload("mine.csv", table.to_csv(index=False).encode(), "text/csv").run()
    at.form_submit_button[0].click().run()
    assert_clean(at)
    config = at.session_state["data_config"]
    link = at.query_params["data"]
    link = link[0] if isinstance(link, list) else link
    assert json.loads(link) == {"dataset": "pairs", "upload": appstate.upload_ref(config["path"])}
    assert "mine.csv" in link and os.sep + "uploads" not in link

    reloaded = app()
    reloaded.query_params["data"] = link
    reloaded.run()
    assert_clean(reloaded)
    assert reloaded.session_state["data_config"] == config
    assert reloaded.metric[0].value == "40"  # the Data page shows the uploaded file's 40 users
    assert any("**pairs: mine.csv**" in m.value for m in reloaded.sidebar.markdown)

    gone = app()
    gone.query_params["data"] = json.dumps({"dataset": "pairs", "upload": "0" * 20 + "/gone.csv"})
    gone.run()
    assert_clean(gone)
    assert gone.session_state["data_config"]["dataset"] == "synthetic"
    assert any("gone.csv" in e.value and "upload it again" in e.value for e in gone.sidebar.error), gone.sidebar.error


def test_failed_run_shows_error_on_train_and_compare(studio):
    record = studio.registry.get(studio.failed_id)
    assert "moved-away.csv" in record.error and "no such file" in record.error
    at = page(app(record.id), "train")
    assert_clean(at)
    assert any("failed" in e and record.id in e and "no such file" in e for e in errors(at)), errors(at)
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert any("failed" in e for e in errors(at)), errors(at)
    assert plotly_count(at) == 7  # the finished run is still there to look at (its slices included)


# ------------------------------------------------------------------------------------------- Compare


def test_compare_page_figures_tables_and_downloads(studio):
    registry, run_id = studio
    at = page(app(run_id), "compare")
    assert_clean(at)
    assert not errors(at), errors(at)
    assert plotly_count(at) == 7  # forest, group bars, decile curve, per-user scatter, Pareto, slices (2)
    labels = [m.label for m in at.metric]
    assert labels.count("Minority accuracy") == 2
    paired, slices, table, *expanders = (d.value for d in at.dataframe)
    assert slices["slice"].str.startswith("group = ").all()  # no attributes of its own: the support groups
    assert [{"mean support", "group"} <= set(f.columns) for f in expanders] == [True, False]  # PAFO's clusters
    assert "oracle: PAFO with the true preference clusters" in set(expanders[1]["diagnostic"])  # the ceilings
    assert list(paired["verdict"]) == [registry.load_result(run_id).result["comparisons"]["pafo"]["verdict"]]
    assert {"baseline", "pafo", "Δ pafo", "better"} <= set(table.columns)
    assert table["metric"].iloc[0].endswith("(%)")  # the cards' unit, not fractions
    assert len(at.get("download_button")) == 2
    at.selectbox(key="cmp_x").set_value("pafo").run()
    assert_clean(at)
    assert at.selectbox(key="cmp_y").value == "baseline"


def test_compare_single_seed_run_says_so_and_warns_about_small_groups(studio):
    """Regression: one seed was shown as "✓ Pareto improvement" with no caveat, and an 8-user minority with no
    warning; a single seed must say its differences are not evidence, and small groups must be flagged."""
    _, run_id = studio
    at = page(app(run_id), "compare")
    warnings = [w.value for w in at.warning]
    assert any("one seed (0)" in w and "not evidence" in w for w in warnings), warnings
    assert any("Small sample: the minority group has 8 users" in w for w in warnings), warnings
    assert not any("Pareto improvement over the baseline" in m.value for m in [*at.markdown, *at.caption])
    # Issue 18: below the minimum group size the verdict itself is "within noise", and the card says why.
    assert any(m.value.startswith("Verdict vs baseline: **") and m.value.endswith("within noise**")
               for m in at.markdown), [m.value for m in at.markdown]
    assert any(c.value.endswith("— too few users: minority has 8 (< 20)") for c in at.caption), [
        c.value for c in at.caption]


def test_compare_shows_the_verdict_with_paired_cis_over_seeds(studio):
    """The verdict in words next to the method, its paired CIs over seeds × users, and a forest plot with a row
    per seed and a pooled row per group."""
    registry, _ = studio
    result = registry.load_result(studio.seeds_id).result
    verdict = result["comparisons"]["pafo"]["verdict"]
    at = page(app(studio.seeds_id), "compare")
    assert_clean(at)
    assert not any("one seed" in w.value for w in at.warning)
    words = {"pareto": "Pareto improvement", "noise": "within noise", "worse": "worse", "tradeoff": "trade-off"}
    assert any(m.value.startswith("Verdict vs baseline: **") and m.value.endswith(f"{words[verdict]}**")
               for m in at.markdown), [m.value for m in at.markdown]
    captions = [c.value for c in at.caption]
    assert any(c.startswith("minority ") and " points [" in c and "over 2 seeds × 40 users" in c
               for c in captions), captions
    forest = figure(at, "Paired differences")
    rows = [y for trace in forest["data"] for y in trace["y"]]
    assert sorted(rows) == sorted(f"pafo · {g} · {s}" for g in ("minority", "majority")
                                  for s in ("seed 0", "seed 1", "pooled"))


def test_compare_pareto_view_holds_only_runs_of_the_current_dataset(studio):
    """Regression: the Pareto view plotted every finished run of every dataset; by default it keeps runs with the
    same data fingerprint and grouping rule, and a toggle shows them all."""
    _, run_id = studio
    at = page(app(run_id), "compare")

    def runs_shown() -> set[str]:
        spec = figure(at, "Pareto view")
        return {row[0] for trace in spec["data"] if trace.get("customdata") for row in trace["customdata"]}

    assert runs_shown() == {run_id}
    assert any("on other data or groupings not shown" in c.value for c in at.caption)
    at.toggle(key="cmp_pareto_all").set_value(True).run()
    assert {run_id, studio.other_id, studio.seeds_id} <= runs_shown()


def test_compare_gap_delta_judges_size_and_zero_has_no_arrow(studio):
    """Regression: a gap of −18.8 vs the baseline's −16.7 was coloured as better (its signed change is down);
    the gap is judged by |gap|, and a change that rounds to zero gets no arrow and no colour."""
    registry, run_id = studio
    result = copy.deepcopy(registry.load_result(run_id).result)
    base, pafo = result["methods"]["baseline"], result["methods"]["pafo"]
    base["accuracy"].update(majority=0.70, minority=0.867)
    pafo["accuracy"].update(majority=0.70, minority=0.888)
    base["unfairness"]["group_gap"], pafo["unfairness"]["group_gap"] = -0.167, -0.188
    result["comparisons"] = {}  # cards then show the differences of these means
    at = page(app(crafted_run(registry, result, "crafted gaps")), "compare")
    assert_clean(at)
    gap = [m for m in at.metric if m.label == "Group gap"][1]
    assert gap.value == "−18.8 pts" and gap.proto.delta == "|gap| +2.1 pts"
    assert (gap.proto.color, gap.proto.direction) == (MetricProto.MetricColor.RED, MetricProto.MetricDirection.UP)
    majority = [m for m in at.metric if m.label == "Majority accuracy"][1]
    assert majority.proto.delta == "0.0 pts"
    assert (majority.proto.color, majority.proto.direction) == (MetricProto.MetricColor.GRAY,
                                                                MetricProto.MetricDirection.NONE)
    minority = [m for m in at.metric if m.label == "Minority accuracy"][1]
    assert (minority.proto.color, minority.proto.direction) == (MetricProto.MetricColor.GREEN,
                                                                MetricProto.MetricDirection.UP)


def test_compare_empty_state_without_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PAFO_HOME", str(tmp_path))
    at = app()
    at.session_state["data_config"] = TINY_DATA
    at = page(at, "compare")
    assert_clean(at)
    assert any("No finished run yet" in i.value for i in at.info)
    for name in ("users", "whatif"):
        at.switch_page(f"pages/{name}.py").run()
        assert_clean(at)
        assert any("No finished run yet" in i.value for i in at.info)


# ------------------------------------------------------------------------------------------- Users


def test_users_page_shows_pairs_with_margins(studio):
    _, run_id = studio
    at = page(app(run_id), "users")
    assert_clean(at)
    assert not errors(at), errors(at)
    pairs = at.dataframe[0].value
    assert {"prompt", "chosen", "rejected", "baseline margin", "pafo right"} <= set(pairs.columns)
    assert len(pairs) == TINY_DATA["test_pairs"]
    assert set(pairs["pafo right"]) <= {"✓", "✗", "½"}
    assert plotly_count(at) == 1
    at.radio(key="users_group").set_value("majority").run()
    assert_clean(at)
    assert next(m for m in at.metric if m.label == "Group").value == "majority"


def test_users_page_scores_a_typed_pair_with_one_click(studio):
    """Regression: the score button stayed disabled until the text area committed, so scoring took two clicks;
    typing and one click must score (the fixture's tfidf run cannot embed new text, and says so)."""
    _, run_id = studio
    at = page(app(run_id), "users")
    at.button(key="score_button").click().run()  # nothing typed: a hint, no crash
    assert any("Type a prompt and both responses" in w.value for w in at.warning)
    at.text_area(key="score_a").input("Short and funny. 😄")
    at.text_area(key="score_b").input("A long, formal and detailed answer with four numbered tips.")
    at.button(key="score_button").click().run()  # the typed text and the click in one script run
    assert_clean(at)
    assert not errors(at), errors(at)
    assert any("cannot score new text" in i.value and "tfidf" in i.value for i in at.info), [i.value for i in at.info]


def test_users_page_of_a_multi_seed_run_picks_a_seed(studio):
    at = page(app(studio.seeds_id), "users")
    assert_clean(at)
    assert at.selectbox(key="users_seed").options == ["0", "1"]
    at.selectbox(key="users_seed").set_value(1).run()
    assert_clean(at)
    assert not errors(at), errors(at)
    assert len(at.dataframe[0].value) == TINY_DATA["test_pairs"]


# ------------------------------------------------------------------------------------------- What-if


def test_whatif_launches_a_child_and_compares_with_parent(studio, gated_runs):
    """Regression (failed under load with "worker pid … is gone"): the child waits at a gate until the test has
    seen it running, then trains to the end; only its outcome is waited for, never a duration."""
    registry, run_id = studio
    at = page(app(run_id), "whatif")
    assert_clean(at)
    assert any("No what-if runs" in i.value for i in at.info)
    at.number_input(key="whatif_beta").set_value(2.0).run()  # a committed value (Enter, or leaving the field)
    assert_clean(at)
    assert not [r for r in registry.list() if r.parent_id == run_id]  # ...launches nothing
    at.button(key="whatif_launch").click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    child_id = at.session_state["whatif_child"]
    assert picker(at, "What-if run").value == child_id
    assert not registry.get(child_id).done  # held at the gate
    gated_runs.touch()
    child = registry.wait(child_id, timeout=600)
    assert child.status == "succeeded", child.error
    assert child.parent_id == run_id and "beta=2.0" in child.label
    at.run()
    assert_clean(at)
    assert any("pafo.beta" in m.value for m in at.markdown)
    assert plotly_count(at) == 1
    table = at.dataframe[0].value
    assert {"parent", "what-if", "Δ"} <= set(table.columns)
    minority = table.loc[table["metric"] == "Accuracy: minority users (%)", "parent"].iloc[0]
    assert minority.count(".") == 1  # "72.5", not 0.725


def test_whatif_has_no_form_and_enter_cannot_launch(studio):
    """Regression: Enter in any what-if field submitted the form and launched a run (four runs from three Enters
    and a click); the page has no form, so only the launch button starts a run."""
    _, run_id = studio
    at = page(app(run_id), "whatif")
    assert not at.get("form_submit_button")
    assert at.button(key="whatif_launch").label == "Launch what-if run"


def test_whatif_rule_disables_the_other_cut(studio):
    """Regression: both the quantile and the threshold were editable whichever rule was chosen."""
    _, run_id = studio
    at = page(app(run_id), "whatif")
    assert not at.slider(key="whatif_quantile").disabled and at.slider(key="whatif_threshold").disabled
    at.radio(key="whatif_rule").set_value("absolute").run()
    assert at.slider(key="whatif_quantile").disabled and not at.slider(key="whatif_threshold").disabled


def test_whatif_identical_config_in_flight_is_not_trained_twice(studio):
    """Regression: two identical what-ifs trained at once; launching a config that is already queued or running
    follows that run, and the page shows it (not an older what-if)."""
    registry, run_id = studio
    parent = registry.get(run_id)
    child_config = config_edit.whatif_config(parent.config, {"pafo.beta": 2.0})  # the parent's β is the default, 3
    from pafo.experiment import ExperimentConfig

    queued = registry.submit(child_config, fingerprint=ExperimentConfig.from_dict(child_config).fingerprint(),
                             parent_id=run_id, label="queued first", start=False)
    try:
        at = page(app(run_id), "whatif")
        at.number_input(key="whatif_beta").set_value(2.0)
        at.button(key="whatif_launch").click().run()
        assert_clean(at)
        assert at.session_state["whatif_child"] == queued.id
        assert picker(at, "What-if run").value == queued.id
        assert any("An identical run is already" in i.value for i in at.info), [i.value for i in at.info]
        assert [r.id for r in registry.list() if r.config == child_config] == [queued.id]
    finally:
        registry.request_cancel(queued.id)


def test_whatif_without_changes_is_an_error(studio):
    _, run_id = studio
    at = page(app(run_id), "whatif")
    at.button(key="whatif_launch").click().run()
    assert_clean(at)
    assert any("nothing changed" in e for e in errors(at)), errors(at)


# ------------------------------------------------------------------------------------------- navigation and state


def test_refresh_reattaches_the_run_from_the_url(studio):
    _, run_id = studio
    at = app(run_id).run()
    assert_clean(at)
    assert at.session_state["run_id"] == run_id
    assert at.session_state["data_config"]["users"] == TINY_DATA["users"]  # the run's dataset is adopted
    assert any(run_id in m.value for m in at.sidebar.markdown)
    stranger = app("20000101-000000-abcdef").run()
    assert_clean(stranger)
    assert stranger.session_state["run_id"] is None
    assert any("could not re-attach" in c.value for c in stranger.sidebar.caption)


def test_demo_button_follows_the_run_to_compare(studio, monkeypatch):
    _, run_id = studio
    monkeypatch.setattr(appstate, "demo_config", lambda **_: tiny_config())  # identical → reused
    at = app().run()
    at.button(key="run_demo").click().run()
    assert_clean(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id
    # The run was answered at once from the fixture's run, so Train hands over to Compare straight away.
    assert any(t.value == "Compare methods" for t in at.title), [t.value for t in at.title]
    assert plotly_count(at) == 7
    assert isinstance(at.dataframe[0].value, pd.DataFrame)


def test_whatif_sweep_mode_shows_progress_then_its_pareto_plot(studio):
    """A 2-point sweep launched from the What-if page: a bad value is an error naming the grid key, a good grid
    gives a progress grid of its cells (the parent's own β reused, not retrained) and, once they ended, the
    Pareto plot of the grid points and the accuracy-against-β plot."""
    registry, run_id = studio
    at = page(app(run_id), "whatif")
    at.radio(key="whatif_mode").set_value("sweep").run()
    assert_clean(at)
    assert any("No sweep" in i.value for i in at.info)
    at.text_input(key="sweep_values1").set_value("1,-1").run()
    at.button(key="sweep_launch").click().run()
    assert any("β (weight of the teachers) must be ≥ 0" in e for e in errors(at)), errors(at)
    assert "whatif_sweep" not in at.session_state
    at.text_input(key="sweep_values1").set_value("3,0").run()  # 3: the parent's own β (the default)
    at.button(key="sweep_launch").click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    state = at.session_state["whatif_sweep"]
    assert state["grid"] == {"pafo.beta": [3.0, 0.0]} and len(state["run_ids"]) == 1 * 2
    cells = [registry.wait(cell, timeout=600) for cell in state["run_ids"]]
    assert [c.status for c in cells] == ["succeeded"] * 2, [c.error for c in cells]
    assert cells[0].reused_from and all(c.parent_id == state["sweep_id"] for c in cells)
    at.run()
    assert_clean(at)
    grid = at.dataframe[0].value
    assert list(grid["pafo.beta"]) == ["3.0", "0.0"] and all("succeeded" in v for v in grid["seed 0"])
    pareto = figure(at, "Sweep: pafo at each grid point")
    assert sum(len(trace.get("x") or []) for trace in pareto["data"] if trace.get("mode") == "markers") == 2
    figure(at, "Sweep: pafo accuracy against pafo.beta")
