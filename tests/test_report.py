"""The app's pure helpers: figures, tables and the self-contained HTML report (pafo.report) and the page logic
(pafo.appstate). No Streamlit and no training here: results are built by hand."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from pafo import appstate, report
from pafo.errors import PafoInputError
from pafo.method_configs import PAFOConfig
from pafo.registry import RunRecord
from pafo.sources import DataConfig
from pafo.support import GroupConfig


def make_result(n_users: int = 60, methods=("baseline", "pafo"), seed: int = 0) -> dict:
    """A result JSON shaped like run_experiment's, with made-up numbers."""
    rng = np.random.default_rng(seed)
    support = rng.uniform(0.3, 0.95, n_users)
    cut = float(np.quantile(support, 0.2))
    group = np.where(support <= cut, "minority", "majority")
    per_user = {"user_id": [f"u{i}" for i in range(n_users)], "group": group.tolist(),
                "support_rate": support.tolist(), "n_train": [12] * n_users, "n_val": [1] * n_users,
                "n_test": [10] * n_users}
    out = {}
    for k, name in enumerate(methods):
        acc = np.clip(0.4 + 0.5 * support + 0.03 * k + rng.normal(0, 0.05, n_users), 0, 1).round(1)
        per_user[f"acc_{name}"] = acc.tolist()
        maj, mino = float(acc[group == "majority"].mean()), float(acc[group == "minority"].mean())
        out[name] = {
            "accuracy": {"overall": float(acc.mean()), "micro": float(acc.mean()), "majority": maj, "minority": mino},
            "accuracy_ci": {"majority": [maj - 0.02, maj + 0.02], "minority": [mino - 0.05, mino + 0.04],
                            "gap": [0.0, 0.2]},
            "unfairness": {"group_gap": maj - mino, "user_std": float(acc.std()), "gini": 0.1, "worst10": 0.3,
                           "support_spearman": 0.4 - 0.1 * k},
            "by_decile": [{"decile": d + 1, "support_lo": 0.3 + d * 0.065, "support_hi": 0.365 + d * 0.065,
                           "n_users": n_users // 10, "accuracy": 0.55 + 0.03 * d + 0.01 * k} for d in range(10)],
            "train_seconds": 1.0, "best_epoch": 2,
            "history": [{"epoch": 1, "loss": 0.6, "val": {"overall": 0.7, "majority": 0.72, "minority": 0.6}}],
        }
    if "pafo" in out:
        out["pafo"].update({"pareto_improvement": True, "pareto_selected": True, "teachers": {
            "majority": {"teacher_accuracy": 0.8, "baseline_accuracy": 0.79, "advantage": 0.01, "n_train_pairs": 400},
            "minority": {"teacher_accuracy": 0.7, "baseline_accuracy": 0.6, "advantage": 0.1, "n_train_pairs": 90}}})
    config = {"data": dataclasses.asdict(DataConfig()), "groups": dataclasses.asdict(GroupConfig()),
              "pafo": dataclasses.asdict(PAFOConfig())}
    return {"dataset": {"name": "synthetic", "n_users": n_users, "n_prompts": 30, "n_responses": 180,
                        "n_pairs": {"train": 720, "val": 60, "test": 600}},
            "support": {"estimator": "exact"}, "groups": {"rule": "quantile", "threshold": cut,
                                                          "n_majority": int((group == "majority").sum()),
                                                          "n_minority": int((group == "minority").sum())},
            "encoder": {"name": "tfidf-test", "dim": 64}, "config": config, "fingerprint": "f", "methods": out,
            "per_user": per_user, "seconds": 3.0}


def record(run_id: str, **fields) -> RunRecord:
    base = {"status": "succeeded", "progress": 1.0, "stage": "done", "pid": None, "reused_from": None,
            "result_path": None, "error": None, "created_at": 1_700_000_000.0, "started_at": 1_700_000_001.0,
            "finished_at": 1_700_000_031.0, "config": {"data": {"dataset": "synthetic", "users": 60},
                                                       "run": {"methods": "baseline,pafo", "encoder": "tfidf"}}}
    return RunRecord(id=run_id, **{**base, **fields})


# ------------------------------------------------------------------------------------------- figures


def test_group_bars_have_bootstrap_error_bars_and_fixed_colours():
    fig = report.group_accuracy_bars(make_result())
    assert [t.name for t in fig.data] == ["majority", "minority"]
    assert [t.marker.color for t in fig.data] == [report.GROUP_COLORS["majority"], report.GROUP_COLORS["minority"]]
    minority = fig.data[1]
    assert list(minority.x) == ["baseline", "pafo"]
    assert minority.error_y.array[0] == pytest.approx(0.04) and minority.error_y.arrayminus[0] == pytest.approx(0.05)


def test_decile_curve_one_line_per_method_in_canonical_order():
    result = make_result(methods=("pafo", "baseline", "groupdro"))
    fig = report.decile_curve(result)
    assert [t.name for t in fig.data] == ["baseline", "groupdro", "pafo"]
    assert all(len(t.x) == 10 for t in fig.data)
    assert fig.data[2].line.color == report.METHOD_COLORS["pafo"]


def test_user_scatter_switches_to_webgl_for_many_users():
    small = report.user_scatter(report.per_user_frame(make_result(60)))
    large = report.user_scatter(report.per_user_frame(make_result(report.WEBGL_MIN_POINTS)))
    assert isinstance(small.data[0], go.Scatter) and not isinstance(small.data[0], go.Scattergl)
    assert isinstance(large.data[0], go.Scattergl)
    diagonal = small.data[-1]
    assert list(diagonal.x) == [0, 1] and list(diagonal.y) == [0, 1]
    assert sum(len(t.x) for t in large.data[:-1]) == report.WEBGL_MIN_POINTS


def test_pareto_front_keeps_only_non_dominated_points():
    points = pd.DataFrame({"run_id": list("abcd"), "label": ["", "", "", ""], "method": ["baseline"] * 4,
                           "majority": [0.8, 0.7, 0.75, 0.6], "minority": [0.6, 0.7, 0.6, 0.65]})
    fig = report.pareto_plot(points, "a")
    front = fig.data[-1]
    assert list(zip(front.x, front.y, strict=True)) == [(0.7, 0.7), (0.8, 0.6)]
    assert report.pareto_plot(points.iloc[:0]).data == ()


def test_support_histogram_and_training_curves():
    frame = report.per_user_frame(make_result())
    fig = report.support_histogram(frame, threshold=0.4)
    assert {t.name.split()[0] for t in fig.data} == {"majority", "minority"}
    assert any(s.line.dash == "dash" for s in fig.layout.shapes)
    history = appstate.history_frame([
        {"stage": "baseline", "epoch": 1, "loss": 0.7, "val": {"overall": 0.6, "majority": 0.62, "minority": 0.5}},
        {"stage": "baseline", "epoch": 2, "loss": 0.6, "val": {"overall": 0.65, "majority": 0.66, "minority": 0.55}},
        {"stage": "student", "epoch": 1, "loss": 0.5, "val": {"overall": 0.7, "majority": 0.7, "minority": 0.6}},
        {"stage": "loading"},  # a progress row without metrics is skipped
    ])
    assert list(history["step"]) == [1, 2, 3]
    curves = report.training_curves(history)
    assert {t.name for t in curves.data} >= {"baseline", "student", "val majority", "val minority"}


# ------------------------------------------------------------------------------------------- tables and report


def test_unfairness_table_deltas_against_baseline():
    result = make_result()
    table = report.unfairness_table(result).set_index("metric")
    row = table.loc["Accuracy: minority users"]
    expected = result["methods"]["pafo"]["accuracy"]["minority"] - result["methods"]["baseline"]["accuracy"]["minority"]
    assert row["Δ pafo"] == pytest.approx(expected)
    assert table.loc["Spearman(support, accuracy) — the bias", "better"] == "↓"
    assert report.teacher_table(result)["advantage"].tolist() == [0.01, 0.1]


def test_html_report_is_self_contained():
    result = make_result()
    points = appstate.pareto_points([(record("r1"), result), (record("r2", label="what-if"), make_result(seed=1))])
    html = report.build_report_html(result, run_id="r1", label="demo", pareto_points=points)
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert len(re.findall(r"<script[^>]+src=", html)) == 0  # nothing fetched from the network
    assert html.count("window.PlotlyConfig") == 1 and len(html) > 3_000_000  # plotly.js embedded, once
    assert html.count('class="plotly-graph-div"') == 5
    for text in ("run r1", "Accuracy: minority users", "Pareto improvement", "PAFO teachers"):
        assert text in html


# ------------------------------------------------------------------------------------------- appstate


def test_field_specs_follow_the_dataclasses():
    specs = {s.name: s for s in appstate.field_specs(PAFOConfig)}
    assert specs["lam"].label == "lambda" and specs["lam"].kind == "float"
    assert specs["condition"].kind == "choice" and specs["condition"].choices == ("group", "group+agree")
    assert specs["teacher_user_l2"].optional and specs["dense"].kind == "int"
    data = [s.name for s in appstate.field_specs(DataConfig, include=("users", "seed"))]
    assert data == ["users", "seed"]


def test_form_to_dataclass_blank_optional_and_bad_value():
    config = appstate.form_to_dataclass(PAFOConfig, {"lam": "2.5", "teacher_user_l2": "  "})
    assert config.lam == 2.5 and config.teacher_user_l2 is None
    with pytest.raises(PafoInputError, match="teacher_user_l2"):
        appstate.form_to_dataclass(PAFOConfig, {"teacher_user_l2": "lots"})


def test_save_upload(tmp_path):
    path = appstate.save_upload("Mine.CSV", b"a,b\n1,2\n", home=tmp_path)
    assert path.parent == tmp_path / "uploads" and path.suffix == ".csv" and path.read_bytes() == b"a,b\n1,2\n"
    assert appstate.save_upload("again.csv", b"a,b\n1,2\n", home=tmp_path) == path
    with pytest.raises(PafoInputError, match="unsupported file type"):
        appstate.save_upload("notes.txt", b"x", home=tmp_path)
    with pytest.raises(PafoInputError, match="empty"):
        appstate.save_upload("empty.csv", b"", home=tmp_path)


def test_whatif_config_and_diff():
    parent = appstate.demo_config().to_dict()
    child = appstate.whatif_config(parent, {"pafo.lam": 2.0, "groups.minority_threshold": 0.5})
    assert parent["pafo"]["lam"] == 1.0  # the parent is not touched
    assert appstate.config_diff(parent, child) == [("groups.minority_threshold", None, 0.5), ("pafo.lam", 1.0, 2.0)]
    with pytest.raises(PafoInputError, match="lambda"):
        appstate.whatif_config(parent, {"pafo.lam": -1.0})
    with pytest.raises(PafoInputError, match=r"section\.field"):
        appstate.whatif_config(parent, {"lam": 2.0})


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


def test_library_modules_never_import_streamlit():
    import subprocess
    import sys

    code = ("import sys, pafo.report, pafo.appstate, pafo.experiment; "
            "sys.exit(1 if 'streamlit' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
