"""Tests of the app's Streamlit-free logic (pafo.appstate): forms from the dataclasses, uploads, what-if configs,
tables and the Pareto run selection. No Streamlit and no training here."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_report import record

from pafo import appstate, config_edit
from pafo.errors import PafoInputError
from pafo.method_configs import PAFOConfig
from pafo.sources import DataConfig


def test_metric_delta_judges_gap_size_and_zero_has_no_arrow():
    """Regression: a gap of −18.8 vs −16.7 was coloured as an improvement; zero changes showed an arrow."""
    worse = appstate.metric_delta(-0.188, -0.167, absolute=True, lower_is_better=True)
    assert worse == {"delta": "|gap| +2.1 pts", "delta_color": "red", "delta_arrow": "up"}
    better = appstate.metric_delta(0.05, -0.08, absolute=True, lower_is_better=True)
    assert better["delta_color"] == "green" and better["delta_arrow"] == "down"
    assert appstate.metric_delta(0.8004, 0.8) == {"delta": "0.0 pts", "delta_color": "gray", "delta_arrow": "off"}
    assert appstate.metric_delta(0.75, 0.8) == {"delta": "−5.0 pts", "delta_color": "red", "delta_arrow": "down"}


def test_pareto_records_keep_the_same_data_and_grouping():
    """Regression: the Pareto view plotted runs of every dataset; by default only the same fingerprint and
    grouping rule, each result once."""
    groups = {"minority_quantile": 0.2, "minority_threshold": None, "estimator": "auto"}
    config = {"groups": groups}
    current = record("a", dataset_fingerprint="f1", config=config, result_path="/r/a")
    records = [current, record("b2", dataset_fingerprint="f1", config=config, result_path="/r/b", reused_from="b"),
               record("b", dataset_fingerprint="f1", config=config, result_path="/r/b"),
               record("c", dataset_fingerprint="f2", config=config, result_path="/r/c"),
               record("d", dataset_fingerprint="f1", config={"groups": {**groups, "minority_quantile": 0.3}},
                      result_path="/r/d"),
               record("e", dataset_fingerprint="f1", config=config, result_path="/r/a", reused_from="a")]
    assert [r.id for r in appstate.pareto_records(records, current)] == ["a", "b"]
    assert [r.id for r in appstate.pareto_records(records, current, every_dataset=True)] == ["a", "b", "c", "d"]


# ------------------------------------------------------------------------------------------- appstate


def test_field_specs_follow_the_dataclasses():
    specs = {s.name: s for s in appstate.field_specs(PAFOConfig)}
    assert specs["lam"].label == "λ (distillation weight)" and specs["lam"].kind == "float"
    assert specs["condition"].kind == "choice" and specs["condition"].choices == ("group", "group+agree")
    assert specs["teacher_user_l2"].optional and specs["dense"].kind == "int"
    data = [s.name for s in appstate.field_specs(DataConfig, include=("users", "seed"))]
    assert data == ["users", "seed"]


def test_form_to_dataclass_blank_optional_and_bad_value():
    config = appstate.form_to_dataclass(PAFOConfig, {"lam": "2.5", "teacher_user_l2": "  "})
    assert config.lam == 2.5 and config.teacher_user_l2 is None
    with pytest.raises(PafoInputError, match="teacher-user-l2"):
        appstate.form_to_dataclass(PAFOConfig, {"teacher_user_l2": "lots"})


def test_save_upload(tmp_path):
    path = appstate.save_upload("Mine.CSV", b"a,b\n1,2\n", home=tmp_path)
    assert path.parent.parent == tmp_path / "uploads" and path.name == "Mine.csv"
    assert path.read_bytes() == b"a,b\n1,2\n"
    assert appstate.save_upload("Mine.CSV", b"a,b\n1,2\n", home=tmp_path) == path
    other = appstate.save_upload("Mine.CSV", b"a,b\n3,4\n", home=tmp_path)
    assert other != path and other.name == "Mine.csv"  # same name, other content: both kept
    with pytest.raises(PafoInputError, match="unsupported file type"):
        appstate.save_upload("notes.txt", b"x", home=tmp_path)
    with pytest.raises(PafoInputError, match="empty"):
        appstate.save_upload("empty.csv", b"", home=tmp_path)


def test_uploads_are_named_by_their_file_name(pafo_home):
    """Regression: uploads showed as `pairs: <hash>.csv` and by internal paths in messages."""
    path = appstate.save_upload("mine.csv", b"a,b\n1,2\n")
    assert appstate.dataset_label({"dataset": "pairs", "path": str(path)}) == "pairs: mine.csv"
    assert appstate.friendly_paths(f"{path}: missing column 'user_id'") == "mine.csv: missing column 'user_id'"
    assert appstate.dataset_label({"dataset": "pairs", "path": "someone/prefs"}) == "pairs: someone/prefs"
    assert appstate.dataset_label({"dataset": "synthetic", "path": None}) == "synthetic"


def test_form_labels_changes_and_seeds_text():
    """Regression: "train pairs 8" on the Data page read as 8 training pairs where 7 train and 1 validate."""
    labels = {s.name: s.label for s in appstate.field_specs(DataConfig)}
    assert labels["train_pairs"] == "train + val pairs per user"
    defaults = {"train": {"epochs": 40, "lr": 0.003}, "seeds": ""}
    assert appstate.form_changes({"train": {"epochs": 3, "lr": 0.003}, "seeds": "0-2"}, defaults) == [
        ("train.epochs", 3, 40), ("seeds", "0-2", "")]
    assert appstate.seeds_text([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and appstate.seeds_text([4]) == "4"


def test_a_config_stored_before_epsilon_moved_reads_as_today():
    """Issue 21: the verdict's ε moved from the PAFO options to the run settings. A stored config that carries
    ``pafo.epsilon`` reads with that value as ``run.epsilon`` (the experiment, What-if and its diff, the run
    settings), and ``--epsilon`` still sets it, for experiments and audits alike."""
    from pafo.cli import build_parser, experiment_config_from_args
    from pafo.experiment import ExperimentConfig

    today = appstate.demo_config(seeds="0").to_dict()
    old = {**today, "run": {k: v for k, v in today["run"].items() if k != "epsilon"},
           "pafo": {**today["pafo"], "epsilon": 0.02}}
    assert ExperimentConfig.from_dict(old).run.epsilon == 0.02 and config_edit.run_settings(old).epsilon == 0.02
    child = config_edit.whatif_config(old, {"pafo.beta": 2.0})
    assert child["run"]["epsilon"] == 0.02 and "epsilon" not in child["pafo"]
    assert config_edit.config_diff(old, child) == [("pafo.beta", today["pafo"]["beta"], 2.0)]  # moving is no change
    args = build_parser().parse_args(["experiment", "--methods", "baseline,pafo", "--epsilon", "0.01"])
    assert experiment_config_from_args(args).run.epsilon == 0.01
    audit_args = build_parser().parse_args(["audit", "--predictions", "a=x.csv", "--epsilon", "0.01"])
    assert audit_args.epsilon == 0.01


def test_whatif_config_and_diff():
    parent = appstate.demo_config(seeds="0").to_dict()
    beta = parent["pafo"]["beta"]
    child = config_edit.whatif_config(parent, {"pafo.beta": beta + 1, "groups.minority_threshold": 0.5})
    assert parent["pafo"]["beta"] == beta  # the parent is not touched
    assert config_edit.config_diff(parent, child) == [("groups.minority_threshold", None, 0.5),
                                                   ("pafo.beta", beta, beta + 1)]
    with pytest.raises(PafoInputError, match="beta"):
        config_edit.whatif_config(parent, {"pafo.beta": -1.0})
    with pytest.raises(PafoInputError, match="--lambda has no effect with --student wide"):  # issue 19
        config_edit.whatif_config(parent, {"pafo.lam": 2.0})
    assert config_edit.whatif_config(parent, {"pafo.lam": 1.0})  # an unchanged value is no change
    with pytest.raises(PafoInputError, match=r"section\.field"):
        config_edit.whatif_config(parent, {"lam": 2.0})
    seeded = config_edit.whatif_config(parent, {"seeds": "0-2"})
    assert seeded["seeds"] == [0, 1, 2] and config_edit.config_diff(parent, seeded) == [("seeds", None, [0, 1, 2])]
    assert "seeds" not in config_edit.whatif_config(seeded, {"seeds": "0"})  # one seed: data.seed alone


def test_user_pairs_table_with_and_without_texts():
    margins = pd.DataFrame({"pair": [0, 1, 2], "user": [0, 0, 1], "prompt_id": [0, 1, 0], "chosen": [0, 2, 1],
                            "rejected": [1, 3, 0], "margin_baseline": [0.5, -0.2, 0.1],
                            "margin_pafo": [0.3, 0.0, 0.2]})
    responses = pd.DataFrame({"prompt_id": [0, 0, 1, 1], "prompt": ["p0", "p0", "p1", "p1"],
                              "text": ["a", "b", "c", "d"]})
    table = appstate.user_pairs_table(margins, 0, responses, ["baseline", "pafo"])
    assert table[["prompt", "chosen", "rejected"]].values.tolist() == [["p0", "a", "b"], ["p1", "c", "d"]]
    assert table["baseline right"].tolist() == ["✓", "✗"] and table["pafo right"].tolist() == ["✓", "½"]
    bare = appstate.user_pairs_table(margins, 1, None, ["baseline"])
    assert bare["chosen"].tolist() == ["1"] and "prompt_id" in bare


def test_runs_table_flags_reuse_and_parents():
    table = appstate.runs_table([record("r2", reused_from="r1", label="demo"),
                                 record("r3", status="running", parent_id="r1", finished_at=None)])
    assert table["reused"].tolist() == ["♻ r1", ""]
    assert table["parent"].tolist() == ["", "r1"]
    assert table.loc[0, "seconds"] == 30.0


def test_source_kind():
    assert appstate.source_kind({"dataset": "synthetic", "path": None}) == "synthetic"
    assert appstate.source_kind({"dataset": "pairs", "path": "someone/prefs"}) == "hub"
    assert appstate.source_kind({"dataset": "pairs", "path": "/tmp/x.csv"}) == "pairs"


def test_field_limits_come_from_the_declared_bounds():
    """Guards What-if's own λ and quantile bounds (issue 12): a form's number limits are the field's bounds."""
    from pafo.support import GroupConfig

    specs = {s.name: s for s in appstate.field_specs(PAFOConfig)}
    assert specs["lam"].limits() == {"min_value": 0.0, "max_value": None}
    assert specs["clusters"].limits() == {"min_value": 1, "max_value": None}
    quantile = appstate.field_specs(GroupConfig, include=("minority_quantile",))[0]
    assert quantile.limits() == {"min_value": 0.0, "max_value": 1.0} and quantile.default == 0.2


def test_data_param_names_an_upload_by_its_content_and_round_trips(pafo_home):
    """The URL keeps the dataset (issue 19: a reload lost an uploaded file): only the fields that differ from the
    defaults, an upload by ``<content hash>/<name>`` (no folder of this machine), and back to the same config."""
    assert appstate.data_param(appstate.default_data_dict()) is None
    smaller = {**appstate.default_data_dict(), "users": 40, "seed": 3}
    assert json.loads(appstate.data_param(smaller)) == {"users": 40, "seed": 3}
    assert appstate.data_from_param(appstate.data_param(smaller)) == smaller
    path = appstate.save_upload("mine.csv", b"user_id,prompt,chosen,rejected\nu,p,a,b\n")
    uploaded = {**appstate.default_data_dict(), "dataset": "pairs", "path": str(path)}
    param = appstate.data_param(uploaded)
    assert json.loads(param) == {"dataset": "pairs", "upload": f"{path.parent.name}/mine.csv"}
    assert str(pafo_home) not in param
    assert appstate.data_from_param(param) == uploaded
    local = {**uploaded, "path": "/data/prefs.csv"}  # a file of this machine keeps its path...
    assert json.loads(appstate.data_param(local))["path"] == "/data/prefs.csv"
    with pytest.raises(PafoInputError, match="outside the folders the app reads"):  # ...read only in a data root
        appstate.data_from_param(appstate.data_param(local))


def test_data_param_refuses_a_broken_link(pafo_home):
    """A link to a missing or altered upload, a made-up id, a bad field or value, or no JSON at all is a message
    that says what to do, never a crash or another file."""
    path = appstate.save_upload("mine.csv", b"user_id,prompt,chosen,rejected\nu,p,a,b\n")
    ref = f"{path.parent.name}/mine.csv"
    cases = [("{not json", "not a JSON object"),
             ('{"dataset": "pairs", "upload": "../../etc/passwd"}', "not an upload id"),
             ('{"dataset": "pairs", "upload": "' + "0" * 20 + '/gone.csv"}', "gone.csv .*upload it again"),
             ('{"users": 0}', "users"), ('{"colour": "red"}', "colour")]
    for text, message in cases:
        with pytest.raises(PafoInputError, match=message):
            appstate.data_from_param(text)
    path.write_bytes(b"user_id,prompt,chosen,rejected\nx,y,z,w\n")
    with pytest.raises(PafoInputError, match="no longer has the content"):
        appstate.data_from_param(json.dumps({"dataset": "pairs", "upload": ref}))


def test_live_caption_says_how_long_a_run_has_waited_or_run():
    queued = record("r1", status="queued", started_at=None, finished_at=None)
    assert appstate.live_caption(queued, now=1_700_000_004.0).startswith("queued for 4 s")
    running = record("r2", status="running", finished_at=None)
    assert appstate.live_caption(running, now=1_700_000_013.4).startswith("running for 12 s")
