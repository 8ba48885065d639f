"""AppTest tests of every page of the Streamlit app, with real (tiny) runs through the run registry.

One module-wide ``$PAFO_HOME`` holds a finished baseline + PAFO run on a 40-user synthetic dataset with the TF-IDF
encoder; error paths (bad upload, bad path, offline hub id, failed run, cancelled run) must show ``st.error`` (or
the cancelled warning) and never an exception.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from pafo import appstate
from pafo.registry import RunRegistry
from pafo.sources import DataConfig, load_dataset
from pafo.support import GroupConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 90
TINY_DATA = {**dataclasses.asdict(DataConfig()), "users": 40, "prompts": 30, "train_pairs": 12, "test_pairs": 10}
TINY_RUN = {"encoder": "tfidf", "methods": "baseline,pafo", "bootstrap": 50}
TINY_TRAIN = {"epochs": 3, "patience": 2}


def tiny_config(**pafo):
    return appstate.experiment_config(TINY_DATA, dataclasses.asdict(GroupConfig()), TINY_RUN, TINY_TRAIN,
                                      pafo or None)


@dataclasses.dataclass
class Studio:
    registry: RunRegistry
    run_id: str  # a finished baseline + PAFO run
    failed_id: str  # a run whose worker failed (its data file is missing)

    def __iter__(self):  # tests unpack (registry, run id)
        return iter((self.registry, self.run_id))


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A PAFO home with one finished tiny run and one failed run (trained side by side)."""
    home = tmp_path_factory.mktemp("pafo_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(home))
        patch.setenv("PAFO_MAX_CONCURRENT", "2")
        registry = RunRegistry(home)
        config = tiny_config()
        good = registry.submit(config.to_dict(), fingerprint=config.fingerprint(), label="fixture")
        broken = config.to_dict()
        broken["data"] = {**broken["data"], "dataset": "pairs", "path": str(home / "moved-away.csv")}
        bad = registry.submit(broken, fingerprint="missing-file", label="fails")
        good, bad = registry.wait(good.id, timeout=240), registry.wait(bad.id, timeout=240)
        assert good.status == "succeeded", good.error
        assert bad.status == "failed", bad.status
        yield Studio(registry, good.id, bad.id)
        for run in registry.list():
            if not run.done:
                registry.cancel(run.id, wait=5)


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
    dataset = load_dataset(DataConfig(**TINY_DATA))
    table = dataset.pair_table()
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.file_uploader(key="pairs_upload").upload("mine.csv", table.to_csv(index=False).encode(), "text/csv").run()
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    config = at.session_state["data_config"]
    assert config["dataset"] == "pairs" and Path(config["path"]).parent.name == "uploads"
    assert at.metric[0].value == "40"


def test_data_missing_path_and_offline_hub_show_errors(studio):
    at = app().run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.text_input(key="path_pairs").set_value("/no/such/pairs.csv")
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
    at.slider(key="support_quantile").set_value(0.4).run()
    assert next(m for m in at.metric if m.label == "Minority users").value == "16"
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
    at.form_submit_button[0].click().run()  # the forms hold the run's own config: identical → reused
    assert_clean(at)
    assert not errors(at), errors(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id
    assert registry.get(new_id).reused_from == run_id
    assert any("Reused finished run" in i.value for i in at.info)
    assert any(v.startswith("♻") for v in at.dataframe[0].value["reused"])


def test_train_form_rejects_bad_values(studio):
    _, run_id = studio
    at = page(app(run_id), "train")
    at.text_input(key="pafo_teacher_user_l2").set_value("lots")
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert any("teacher_user_l2" in e for e in errors(at)), errors(at)
    at.text_input(key="pafo_teacher_user_l2").set_value("")
    at.multiselect(key="train_methods").set_value([])
    at.form_submit_button[0].click().run()
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
    at.form_submit_button[0].click().run()
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
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert any("was cancelled" in e for e in errors(at)), errors(at)
    assert plotly_count(at) >= 4  # the latest finished run is still shown below the message


def test_failed_run_shows_error_on_train_and_compare(studio):
    record = studio.registry.get(studio.failed_id)
    assert "moved-away.csv" in record.error and "no such file" in record.error
    at = page(app(record.id), "train")
    assert_clean(at)
    assert any("failed" in e and record.id in e and "no such file" in e for e in errors(at)), errors(at)
    at.switch_page("pages/compare.py").run()
    assert_clean(at)
    assert any("failed" in e for e in errors(at)), errors(at)
    assert plotly_count(at) == 4  # the finished run is still there to look at


# ------------------------------------------------------------------------------------------- Compare


def test_compare_page_figures_tables_and_downloads(studio):
    _, run_id = studio
    at = page(app(run_id), "compare")
    assert_clean(at)
    assert not errors(at), errors(at)
    assert plotly_count(at) == 4  # group bars, decile curve, per-user scatter, Pareto
    labels = [m.label for m in at.metric]
    assert labels.count("Minority accuracy") == 2
    table = at.dataframe[0].value
    assert {"baseline", "pafo", "Δ pafo", "better"} <= set(table.columns)
    assert len(at.get("download_button")) == 2
    at.selectbox(key="cmp_x").set_value("pafo").run()
    assert_clean(at)
    assert at.selectbox(key="cmp_y").value == "baseline"


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


def test_users_page_scores_a_typed_pair_or_says_why_it_cannot(studio):
    """The scoring form: the fixture's tfidf run cannot embed new text, and says so instead of failing."""
    _, run_id = studio
    at = page(app(run_id), "users")
    assert at.button(key="score_button").disabled  # nothing typed yet
    at.text_area(key="score_a").input("Short and funny. 😄")
    at.text_area(key="score_b").input("A long, formal and detailed answer with four numbered tips.")
    at.run()
    at.button(key="score_button").click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    assert any("cannot score new text" in i.value and "tfidf" in i.value for i in at.info), [i.value for i in at.info]


# ------------------------------------------------------------------------------------------- What-if


def test_whatif_launches_a_child_and_compares_with_parent(studio, gated_runs):
    """Regression (failed under load with "worker pid … is gone"): the child waits at a gate until the test has
    seen it running, then trains to the end; only its outcome is waited for, never a duration."""
    registry, run_id = studio
    at = page(app(run_id), "whatif")
    assert_clean(at)
    assert any("No what-if runs" in i.value for i in at.info)
    at.number_input(key="whatif_lam").set_value(2.0)
    at.form_submit_button[0].click().run()
    assert_clean(at)
    assert not errors(at), errors(at)
    child_id = at.session_state["whatif_child"]
    assert not registry.get(child_id).done  # held at the gate
    gated_runs.touch()
    child = registry.wait(child_id, timeout=600)
    assert child.status == "succeeded", child.error
    assert child.parent_id == run_id and "lam=2.0" in child.label
    at.run()
    assert_clean(at)
    assert any("pafo.lam" in m.value for m in at.markdown)
    assert plotly_count(at) == 1
    table = at.dataframe[0].value
    assert {"parent", "what-if", "Δ"} <= set(table.columns)
    at.form_submit_button[0].click().run()  # the form still says λ = 2 against the parent: a second, reused clone
    assert_clean(at)


def test_whatif_without_changes_is_an_error(studio):
    _, run_id = studio
    at = page(app(run_id), "whatif")
    at.form_submit_button[0].click().run()
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
    monkeypatch.setattr(appstate, "demo_config", lambda encoder="tfidf": tiny_config())  # identical → reused
    at = app().run()
    at.button(key="run_demo").click().run()
    assert_clean(at)
    new_id = at.session_state["run_id"]
    assert new_id != run_id
    # The run was answered at once from the fixture's run, so Train hands over to Compare straight away.
    assert any(t.value == "Compare methods" for t in at.title), [t.value for t in at.title]
    assert plotly_count(at) == 4
    assert isinstance(at.dataframe[0].value, pd.DataFrame)
