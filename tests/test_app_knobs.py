"""AppTest tests of issue 19, items 3 and 4: the app offers only the options that can change a result (Train,
What-if, sweep) and its numbers add up on a slide (counts, rounding, durations, pairs judged, figure titles).

One module-wide ``$PAFO_HOME`` holds a finished tiny baseline + PAFO run (TF-IDF, 40 users); the other runs are
crafted results (numbers a test chooses) or an audit computed in-process, so no test waits on training.
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
from conftest import pairs_frame
from streamlit.testing.v1 import AppTest

from pafo import appstate, html_report, report
from pafo.registry import RunRegistry
from pafo.results import RunResult, SweepResult
from pafo.sources import DataConfig
from pafo.support import GroupConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 90
TINY_DATA = {**dataclasses.asdict(DataConfig()), "users": 40, "prompts": 30, "train_pairs": 12, "test_pairs": 10}
TINY_RUN = {"encoder": "tfidf", "methods": "baseline,pafo", "bootstrap": 50}
TINY_TRAIN = {"epochs": 3, "patience": 2}


@dataclasses.dataclass
class Home:
    registry: RunRegistry
    run_id: str  # a finished baseline + PAFO run (the default wide student)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pafo_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(folder))
        registry = RunRegistry(folder)
        config = appstate.experiment_config(TINY_DATA, dataclasses.asdict(GroupConfig()), run=TINY_RUN,
                                            train=TINY_TRAIN)
        run = registry.wait(registry.submit_config(config, label="fixture").id, timeout=300)
        assert run.status == "succeeded", run.error
        yield Home(registry, run.id)


def crafted_run(registry: RunRegistry, result: dict, label: str, config: dict | None = None) -> str:
    """A succeeded run whose result.json is ``result`` (and whose config is ``config``), with no training."""
    config = config or {**result["config"], "run": {**result["config"]["run"], "bootstrap": 11}}
    run_id = registry.submit(config, fingerprint=result["fingerprint"], label=label, start=False).id
    assert registry.mark_running(run_id, os.getpid())
    path = registry.run_dir(run_id) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result))
    assert registry.mark_succeeded(run_id, path)
    return run_id


def app(run_id: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if run_id:
        at.query_params["run"] = run_id
    return at


def page(at: AppTest, name: str) -> AppTest:
    at.run()
    return at.switch_page(f"pages/{name}.py").run()


def assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


def figure(at: AppTest, title: str) -> dict:
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        if ((spec.get("layout") or {}).get("title") or {}).get("text", "").startswith(title):
            return spec
    raise AssertionError(f"no figure titled {title!r}")


def fixture_result(home: Home) -> dict:
    return copy.deepcopy(home.registry.load_result(home.run_id).result)


# ------------------------------------------------------------------------------------------- item 3: Train


def test_train_form_offers_only_the_options_that_matter(home):
    """Regression (issue 19): the Train form showed λ, τ, condition and the other distillation options as if they
    mattered for the default PAFO, whose closed-form wide student reads none of them. They are disabled, their help
    says what would make them matter, and choosing the distilled student (or GroupDRO) enables them at once."""
    at = page(app(home.run_id), "train")
    assert_clean(at)
    assert not at.number_input(key="pafo_beta").disabled
    lam = at.number_input(key="pafo_lam")
    assert lam.disabled and "No effect" in lam.help and "set student to distilled or teachers to groups" in lam.help
    assert at.number_input(key="pafo_heldout").disabled
    assert at.number_input(key="groupdro_dro_step").disabled
    assert "add groupdro to the methods" in at.number_input(key="groupdro_dro_step").help
    at.selectbox(key="pafo_student").set_value("distilled").run()
    assert_clean(at)
    assert not at.number_input(key="pafo_lam").disabled and not at.number_input(key="pafo_heldout").disabled
    assert at.selectbox(key="pafo_condition").disabled  # the group teachers' targets only
    at.multiselect(key="train_methods").set_value(["baseline", "pafo", "groupdro"]).run()
    assert not at.number_input(key="groupdro_dro_step").disabled


def test_train_form_labels_options_in_plain_words(home):
    """Regression (issue 19): Train showed option names such as `heldout`, `dense`, `k` and `batches`; each field
    declares a label in words (pafo.config.option(label=...))."""
    at = page(app(home.run_id), "train")
    assert at.number_input(key="train_k").label == "feature size of g (k)"
    assert at.number_input(key="pafo_heldout").label == "held-out teacher pairs per user"
    assert at.number_input(key="pafo_dense").label == "extra teacher-labelled pairs per user"
    assert at.selectbox(key="pafo_batches").label == "student batches"


def test_train_start_puts_options_without_effect_back_to_their_defaults(home):
    """An option set while it mattered and left behind when it stopped mattering (λ = 2, then the wide student
    again) is not part of the submitted run: the run is the fixture's config, so it is answered at once from the
    fixture's finished run instead of training a config that can only repeat it."""
    at = page(app(home.run_id), "train")
    at.selectbox(key="pafo_student").set_value("distilled").run()
    at.number_input(key="pafo_lam").set_value(2.0).run()
    at.selectbox(key="pafo_student").set_value("wide").run()
    at.button(key="train_start").click().run()
    assert_clean(at)
    new = home.registry.get(at.session_state["run_id"])
    try:
        assert new.config["pafo"]["lam"] == 1.0 and new.reused_from == home.run_id
    finally:
        if not new.done:
            home.registry.cancel(new.id, wait=5)


# ------------------------------------------------------------------------------------------- item 3: What-if


def test_whatif_offers_only_the_options_that_matter(home):
    """Regression (issue 19): What-if's first knobs were λ, τ and condition, which do nothing for the default PAFO;
    it now offers β and the cluster options, and λ only once a distilled student makes it matter."""
    at = page(app(home.run_id), "whatif")
    assert_clean(at)
    assert not at.number_input(key="whatif_beta").disabled and not at.number_input(key="whatif_clusters").disabled
    lam = at.number_input(key="whatif_lam")
    assert lam.disabled and "No effect" in lam.help
    at.selectbox(key="whatif_student").set_value("distilled").run()
    assert not at.number_input(key="whatif_lam").disabled


# ------------------------------------------------------------------------------------------- item 3: sweep


def sweep_page(run_id: str) -> AppTest:
    at = page(app(run_id), "whatif")
    at.radio(key="whatif_mode").set_value("sweep").run()
    assert_clean(at)
    return at


def option_keys(box) -> list[str]:
    """The parameter keys of a sweep picker (its options show ``label · key``)."""
    return [option.rsplit(" · ", 1)[-1] for option in box.options]


def test_sweep_offers_parameters_that_change_the_result_and_starts_from_beta(home):
    """Regression (issue 19): the sweep defaulted to `pafo.lam=0,0.5,1,2`, four identical results for the default
    PAFO ("λ doesn't matter"). It offers only parameters that change this run's result, β first, names the ones it
    leaves out, and a new parameter starts from its own default grid."""
    at = sweep_page(home.run_id)
    key1 = at.selectbox(key="sweep_key1")
    assert key1.value == "pafo.beta" and "pafo.beta" in option_keys(key1)
    assert "pafo.lam" not in option_keys(key1) and "pafo.temperature" not in option_keys(key1)
    assert at.text_input(key="sweep_values1").value == "1,2,3,4"
    assert any("Not offered" in c.value and "λ (distillation weight)" in c.value for c in at.caption)
    key1.set_value("groups.minority_quantile").run()
    assert at.text_input(key="sweep_values1").value == "0.1,0.2,0.3"
    at.selectbox(key="sweep_key2").set_value("pafo.clusters").run()
    assert at.text_input(key="sweep_values2").value == "4,8,12"


def test_sweep_bad_value_is_a_form_error_in_the_apps_words_beside_its_field(home):
    """Regression (issue 19): a bad sweep value showed the CLI's line (`--grid pafo.lam=-1: --lambda: ...`) at the
    top of the page; it is an error under the values field, naming the option by its label."""
    at = sweep_page(home.run_id)
    at.text_input(key="sweep_values1").set_value("1,-1").run()
    at.button(key="sweep_launch").click().run()
    assert_clean(at)
    column = next(c for c in at.columns if any(t.key == "sweep_values1" for t in c.text_input))
    messages = [e.value for e in column.error]
    assert messages and "β (weight of the teachers) must be ≥ 0" in messages[0], messages
    assert not any("--" in e.value for e in at.error), [e.value for e in at.error]
    assert "whatif_sweep" not in at.session_state


def test_sweep_of_a_distilled_parent_offers_lambda(home):
    """λ is offered where it matters: a parent run with the distilled student."""
    result = fixture_result(home)
    config = {**result["config"], "pafo": {**result["config"]["pafo"], "student": "distilled"}}
    run_id = crafted_run(home.registry, {**result, "config": config}, "distilled", config=config)
    at = sweep_page(run_id)
    assert "pafo.lam" in option_keys(at.selectbox(key="sweep_key1"))


# ------------------------------------------------------------------------------------------- item 4: numbers


def two_seed_frame(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frames = []
    for seed in (0, 1):
        frames.append(pd.DataFrame({"seed": seed, "user_id": [f"u{i}" for i in range(n)],
                                    "group": np.where(np.arange(n) < n // 5, "minority", "majority"),
                                    "support_rate": rng.uniform(0.2, 0.9, n), "n_test": 4,
                                    "acc_baseline": rng.choice([0.25, 0.5, 0.75], n),
                                    "acc_pafo": rng.choice([0.25, 0.5, 0.75, 1.0], n)}))
    return pd.concat(frames, ignore_index=True)


def test_scatter_counts_user_seed_rows_not_users():
    """Regression (issue 19): with several seeds the scatter said "344 users better … of 300": its points are
    user-seed rows; the count, the legend and the title line say so, and nothing is drawn over the plot."""
    fig = report.user_scatter(two_seed_frame(30), "baseline", "pafo")
    subtitle = fig.layout.title.subtitle.text
    assert "of 60 user-seed rows (30 users × 2 seeds)" in subtitle and "users better" not in subtitle
    assert all("user-seed rows" in trace.name for trace in fig.data if trace.name != "same accuracy")
    assert not fig.layout.annotations  # the count once covered the 100% tick


def test_report_support_histogram_draws_one_seed_and_its_cut(home):
    """Regression (issue 19): the report's support histogram pooled every seed's users but drew the first seed's
    cut; it draws the first seed's users with that seed's cut, and says so."""
    result = fixture_result(home)
    one = pd.DataFrame(result["per_user"])
    both = pd.concat([one.assign(seed=0), one.assign(seed=1, support_rate=one["support_rate"] + 0.05)])
    result = {**result, "seeds": [0, 1], "per_user": both.to_dict(orient="list")}
    fig = report.report_figures(RunResult.from_json(result))["Support rates"]
    assert sum(len(trace.x) for trace in fig.data) == len(one)
    assert "seed 0" in fig.layout.title.subtitle.text


def test_table_differences_are_the_differences_of_the_shown_values(home):
    """Regression (issue 19): the table showed 81.8 and 82.6 with Δ +0.9 (the difference before rounding); each
    Δ is the difference of the two rounded values beside it."""
    result = fixture_result(home)
    result["methods"]["baseline"]["accuracy"]["minority"] = 0.81849
    result["methods"]["pafo"]["accuracy"]["minority"] = 0.82551
    table = report.display_table(RunResult.from_json(result))
    row = table[table["metric"].str.startswith("Accuracy: minority")].iloc[0]
    assert (row["baseline"], row["pafo"], row["Δ pafo"]) == ("81.8", "82.6", "+0.8")
    whatif = report.whatif_table(RunResult.from_json({"methods": {"pafo": result["methods"]["baseline"]}}),
                                 RunResult.from_json(result))
    assert "+0.8" in set(whatif["Δ"])


def test_compare_and_train_show_one_run_duration(home):
    """Regression (issue 19): Compare said the run took 33 s (the experiment's own clock) while Train said 37 s
    (the worker's); both show the run's duration from the registry."""
    result = fixture_result(home)
    result["seconds"] = 999.0
    run_id = crafted_run(home.registry, result, "duration")
    record = home.registry.get(run_id)
    expected = f"{record.finished_at - record.started_at:.0f} s"  # the registry's: worker start to end
    at = page(app(run_id), "compare")
    caption = next(c.value for c in at.caption if "took" in c.value)
    assert f"run took {expected}" in caption and "999" not in caption
    at.switch_page("pages/train.py").run()
    assert any(f"finished in {expected}" in s.value for s in at.success), [s.value for s in at.success]


def test_compare_figures_fit_their_columns(home):
    """Regression (issue 19): the Pareto title was cut to "★ this ru" in its half-width column; every half-width
    figure's title is at most MAX_TITLE_CHARS long, qualifiers go to the subtitle line."""
    at = page(app(home.run_id), "compare")
    for title in ("Accuracy by user group", "Bias curve", "Per-user accuracy", "Pareto view"):
        text = figure(at, title)["layout"]["title"]["text"]
        assert len(text) <= report.MAX_TITLE_CHARS, text
    assert figure(at, "Pareto view")["layout"]["title"]["subtitle"]["text"] == report.PARETO_SCOPE
    axis = figure(at, "Bias curve")["layout"]["xaxis"]["title"]["text"]
    assert axis.index("←") < axis.index("minority")  # the arrow points to the low-support end (regression)


def test_runs_table_gives_stage_and_created_room(home):
    """Regression (issue 19): the runs table clipped "stage" and "created" (the latter behind eight columns at the
    right edge); both come early and have widths for their longest values."""
    at = page(app(home.run_id), "train")
    table = next(d for d in at.dataframe if "stage" in d.value.columns)
    config = json.loads(table.proto.columns)
    widths = {name: (config.get(name) or {}).get("width") for name in ("stage", "created")}
    assert widths == {"stage": "large", "created": "medium"}, config
    assert list(table.proto.column_order).index("created") < 5


def test_sweep_pareto_names_points_in_the_legend_not_on_the_plot():
    """Regression (issue 19): grid-point labels written beside the markers covered them; each point is a trace
    named in the legend (and on hover)."""
    def point(index, majority, minority):
        return {"index": index, "params": {"pafo.beta": float(index)}, "methods": {"pafo": {
            "accuracy": {"majority": majority, "minority": minority}, "accuracy_ci": {}}}}

    sweep = {"pareto_method": "pafo", "seeds": [0], "grid": {"pafo.beta": [0.0, 1.0]}, "pareto_front": [1],
             "points": [point(0, 0.75, 0.56), point(1, 0.78, 0.64)]}
    fig = report.sweep_pareto(SweepResult.from_json(sweep))
    markers = [t for t in fig.data if t.mode == "markers"]
    assert [t.name for t in markers] == ["beta=0.0", "beta=1.0 ★"]
    assert not any("text" in (t.mode or "") for t in fig.data)


def test_identical_method_says_why_on_its_card(home):
    """Issue 19: when PAFO equals the baseline exactly (clusters collapsing on a small file), its card says so and
    why, instead of a bare +0.0."""
    result = fixture_result(home)
    result["per_user"]["acc_pafo"] = list(result["per_user"]["acc_baseline"])
    for block in (result, *result["per_seed"]):  # EM found one cluster
        clusters = block["methods"]["pafo"]["clusters"]
        clusters["clusters"] = clusters["clusters"][:1]
    run_id = crafted_run(home.registry, result, "identical")
    at = page(app(run_id), "compare")
    assert_clean(at)
    notes = [i.value for i in at.info if "same accuracy as the baseline" in i.value]
    assert notes and "single preference cluster" in notes[0], [i.value for i in at.info]
    assert report.identical_note(RunResult.from_json(fixture_result(home)), "pafo") is None  # the real run differs
    same = fixture_result(home)
    same["per_user"]["acc_pafo"] = list(same["per_user"]["acc_baseline"])
    assert "too weak" in report.identical_note(RunResult.from_json(same), "pafo")  # several clusters, few pairs
    same["config"]["pafo"]["beta"] = 0.0
    assert "β is 0" in report.identical_note(RunResult.from_json(same), "pafo")


# ------------------------------------------------------------------------------------------- item 4: words


def test_landing_page_describes_pafo_as_built(home):
    """Regression (issue 19): the landing page said PAFO "trains a teacher per user group and distils both"; PAFO
    uses preference-cluster teachers added to the baseline in closed form by default."""
    at = app().run()
    text = " ".join(m.value for m in at.markdown)
    assert "teacher per user group" not in text and "distils both" not in text
    assert "preference clusters" in text


def test_app_errors_name_options_by_their_labels_not_flags():
    """Regression (issue 19): app users were told to "pass its local path with --path"; library messages shown in
    the app name options by their form labels."""
    assert appstate.app_message("--lambda: must be ≥ 0 (got -1.0)") == "λ (distillation weight): must be ≥ 0 (got -1.0)"
    from pafo.sources.files import OFFLINE

    assert "--path" not in OFFLINE


# ------------------------------------------------------------------------------------------- item 4: audits


@pytest.fixture(scope="module")
def audit_run(home, tmp_path_factory):
    """A finished audit of a pairs file without a split column (so every pair is judged), computed in-process."""
    from pafo import audit

    folder = tmp_path_factory.mktemp("audit")
    pairs = pairs_frame(n_users=12, n_prompts=10, seed=1)
    pairs.to_csv(folder / "pairs.csv", index=False)
    data = DataConfig(dataset="pairs", path=str(folder / "pairs.csv"))
    from pafo.sources import load_dataset

    template = audit.pairs_template(load_dataset(data))
    template.assign(margin=np.random.default_rng(0).normal(size=len(template))).to_csv(folder / "p.csv", index=False)
    config = audit.AuditConfig(data=data, sources=[audit.parse_source("predictions", f"a={folder / 'p.csv'}"),
                                                   audit.parse_source("predictions", f"b={folder / 'p.csv'}")]
                               ).validate()
    registry = home.registry
    run_id = registry.submit_config(config, label="audit", start=False).id
    assert registry.mark_running(run_id, os.getpid())
    out = registry.run_dir(run_id)
    result = audit.run_audit(config, out_dir=out)
    assert registry.mark_succeeded(run_id, out / "result.json")
    return run_id, result


def test_audit_counts_the_pairs_it_judges_everywhere(home, audit_run):
    """Regression (issue 19): Compare said "audit … on 600 all pairs" while its warnings counted 169 test pairs,
    and Users showed "Test pairs 5" beside "15 test pairs". A file without a split is judged on all its pairs, and
    every count says so and agrees."""
    run_id, result = audit_run
    assert result.split == "all"
    at = page(app(run_id), "compare")
    assert_clean(at)
    caption = next(c.value for c in at.caption if "audit of given predictions" in c.value)
    assert f"all {result.n_pairs:,} pairs (the file has no train/test split)" in caption
    assert "seed" not in caption.split("·")[1]  # an audit trains nothing: no seed
    for warning in (w.value for w in at.warning if "Small sample" in w.value):
        assert "judged pairs" in warning and "test pairs" not in warning
    counts = report.judged_counts(result)
    assert int(counts.sum()) == result.n_pairs
    at.switch_page("pages/users.py").run()
    assert_clean(at)
    shown = next(m for m in at.metric if m.label == "Judged pairs")
    assert any(m.value.startswith(f"**{shown.value} judged pairs**") for m in at.markdown), (
        shown.value, [m.value for m in at.markdown])


def test_audit_report_and_forest_plot_name_no_seed(audit_run):
    """Regression (issue 19): an audit's report and forest plot said "seed ?"."""
    _, result = audit_run
    assert "seed ?" not in html_report.build_report_html(result)
    rows = [y for trace in report.forest_plot(result, result.reference).data for y in trace.y]
    assert rows and not any("seed" in row for row in rows)
