"""The app's figures, tables and the self-contained HTML report (pafo.report); the page logic's tests are in
test_appstate.py. No Streamlit and no training here: results are built by hand."""

from __future__ import annotations

import dataclasses
import datetime
import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from pafo import appstate, html_report, report
from pafo.compare import paired_comparison
from pafo.method_configs import PAFOConfig
from pafo.registry import RunRecord
from pafo.results import RunResult
from pafo.sources import DataConfig
from pafo.support import GroupConfig


def make_result(n_users: int = 60, methods=("baseline", "pafo"), seed: int = 0) -> RunResult:
    """A result shaped like run_experiment's (read from its JSON, as the app reads a stored one), with made-up
    numbers."""
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
    per_user["seed"] = [seed] * n_users
    frame = pd.DataFrame(per_user)
    comparisons = {name: paired_comparison([frame], name, "baseline", n_resamples=100, seed=seed).to_json()
                   for name in methods if name != "baseline" and "baseline" in methods}
    groups = {"rule": "quantile", "threshold": cut, "n_majority": int((group == "majority").sum()),
              "n_minority": int((group == "minority").sum())}
    dataset = {"name": "synthetic", "n_users": n_users, "n_prompts": 30, "n_responses": 180,
               "n_pairs": {"train": 720, "val": 60, "test": 600}}
    return RunResult.from_json({
        "dataset": dataset, "support": {"estimator": "exact"}, "groups": groups,
        "encoder": {"name": "tfidf-test", "dim": 64}, "config": config, "fingerprint": "f", "seeds": [seed],
        "methods": out, "comparisons": comparisons,
        "per_seed": [{"seed": seed, "dataset": dataset, "groups": groups, "methods": out, "comparisons": comparisons}],
        "per_user": per_user, "seconds": 3.0})


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
    expected = result.methods["pafo"].accuracy["minority"] - result.methods["baseline"].accuracy["minority"]
    assert row["Δ pafo"] == pytest.approx(expected)
    assert table.loc["Spearman(support, accuracy) — the bias", "better"] == "|↓|"  # judged by its size
    assert report.teacher_table(result)["advantage (pts)"].tolist() == ["+1.0", "+10.0"]


def test_html_report_is_self_contained():
    result = make_result()
    points = appstate.pareto_points([(record("r1"), result), (record("r2", label="what-if"), make_result(seed=1))])
    html = html_report.build_report_html(result, run_id="r1", label="demo", pareto_points=points,
                                    generated_at=datetime.datetime(2026, 11, 30, 12, 0))
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert len(re.findall(r"<script[^>]+src=", html)) == 0  # nothing fetched from the network
    assert html.count("window.PlotlyConfig") == 1 and len(html) > 3_000_000  # plotly.js embedded, once
    assert html.count('class="plotly-graph-div"') == 6
    verdict = result.comparisons["pafo"].verdict
    for text in ("run r1", "Accuracy: minority users (%)", f"pafo vs baseline: {report.VERDICT_WORDS[verdict]}",
                 "over 1 seed × 60 users", "PAFO teachers", "Paired differences to the baseline", "one seed (0)"):
        assert text in html, text


def test_html_report_header_units_and_scatter_axes():
    """Regression: the header ran label and date together ("demo Generated"), cards said the gap in "%" where the
    app says "pts", and the per-user scatter's axes stretched to −100%..200% in the report."""
    result = make_result()
    html = html_report.build_report_html(result, run_id="r1", label="demo",
                                    generated_at=datetime.datetime(2026, 11, 30, 12, 0))
    assert "demo · generated 2026-11-30 12:00 · dataset synthetic" in html
    gap = result.methods["pafo"].unfairness["group_gap"]
    assert f"gap {100 * gap:.1f} pts".replace("-", "−") in html
    scatter = report.user_scatter(report.per_user_frame(result))
    for axis in (scatter.layout.xaxis, scatter.layout.yaxis):
        assert axis.constrain == "domain" and axis.range[0] >= -0.05 and axis.range[1] <= 1.05


def test_group_bars_start_at_zero_and_bias_curve_has_cis():
    """Regression: the bar chart's y-axis started at 60% without saying so, and the bias curve had no CIs."""
    result = make_result()
    assert report.group_accuracy_bars(result).layout.yaxis.range[0] == 0
    for row in result.methods["pafo"].by_decile:
        row["ci"] = [row["accuracy"] - 0.05, row["accuracy"] + 0.03]
    curve = report.decile_curve(result)
    pafo = next(t for t in curve.data if t.name == "pafo")
    assert list(pafo.error_y.array) == pytest.approx([0.03] * 10)
    assert list(pafo.error_y.arrayminus) == pytest.approx([0.05] * 10)


def test_forest_plot_has_a_row_per_seed_and_a_pooled_row():
    result = make_result()
    seeds = [make_result(seed=s) for s in (0, 1)]
    result.seeds = [0, 1]
    result.per_seed = [dataclasses.replace(r.per_seed[0], seed=s) for s, r in zip((0, 1), seeds, strict=True)]
    fig = report.forest_plot(result)
    expected = [f"pafo · {g} · {s}" for g in ("minority", "majority") for s in ("seed 0", "seed 1", "pooled")]
    assert list(fig.layout.yaxis.categoryarray) == expected  # top to bottom
    assert sorted(y for trace in fig.data for y in trace.y) == sorted(expected)
    pooled = next(t for t in fig.data if t.name == "minority, pooled")
    assert pooled.x[0] == pytest.approx(100 * result.comparisons["pafo"].delta("minority").delta)
    assert fig.layout.shapes[0].x1 == pytest.approx(0.5)  # ±ε band in points


def test_sample_warnings_and_seed_note():
    """Regression: a 6-user minority showed 100.0% with no warning; small groups and single seeds are flagged."""
    result = make_result(n_users=30)
    warnings = report.sample_warnings(result)
    assert any(w.startswith("Small sample: the minority group has 6 users and 60 test pairs") for w in warnings)
    assert report.seed_note(result).startswith("This run has one seed (0)")
    big = make_result(n_users=200)
    assert report.sample_warnings(big) == []
    big.seeds = [0, 1]
    assert report.seed_note(big) is None


def test_display_table_uses_one_unit_per_row():
    table = report.display_table(make_result()).set_index("metric")
    assert re.fullmatch(r"\d+\.\d", table.loc["Accuracy: minority users (%)", "pafo"])
    assert table.loc["Spearman(support, accuracy) — the bias", "pafo"].count(".") == 1
    assert table.loc["Group gap (majority − minority) (pts)", "Δ pafo"][0] in "+−"


def test_deploy_button_is_hidden():
    config = tomllib.loads((Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "minimal"


def test_library_modules_never_import_streamlit():
    import subprocess
    import sys

    code = ("import sys, pafo.report, pafo.appstate, pafo.experiment; "
            "sys.exit(1 if 'streamlit' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_library_never_imports_the_app_helpers():
    """Issue 21: sweep.py and audit.py imported pafo.appstate (the pages' helpers) for what-if configs and stored
    configs' fields; those live in the library (pafo.config_edit), and no library module imports the app's."""
    import ast

    package = Path(__file__).resolve().parent.parent / "pafo"
    importers = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [a.name for a in node.names] if isinstance(node, ast.ImportFrom) and not node.module else []
            if any(name.split(".")[-1] == "appstate" for name in names):
                importers.append(path.relative_to(package).as_posix())
    assert importers == [], importers


def test_cluster_and_ceiling_tables_from_a_real_run(tiny_config):
    """Compare's cluster and ceiling tables read the experiment JSON: one row per cluster of each seed, users
    adding up to the population, and the diagnostic rows with their deltas to the baseline."""
    from pafo.experiment import ExperimentConfig, RunSettings, run_experiment
    from pafo.method_configs import PAFOConfig
    from pafo.training import TrainConfig

    config = ExperimentConfig(data=tiny_config, run=RunSettings(encoder="tfidf", bootstrap=20),
                              train=TrainConfig(epochs=3, hidden=16, k=4, patience=3),
                              pafo=PAFOConfig(restarts=4, clusters=3), seeds=[0, 1])
    result = run_experiment(config)
    clusters = report.cluster_table(result)
    assert set(clusters["seed"]) == {0, 1}
    assert clusters.groupby("seed")["users"].sum().tolist() == [tiny_config.users] * 2
    assert set(clusters["group"]) <= {"majority", "minority"}
    ceilings = report.ceiling_table(result).set_index("diagnostic")
    assert "oracle: PAFO with the true preference clusters" in ceilings.index
    assert ceilings.loc["per-user fit on the baseline's g(φ)", "majority (%)"] != "–"
    bare = RunResult.from_json({"methods": {"baseline": {"accuracy": {}}}})
    assert report.cluster_table(bare).empty and report.ceiling_table(bare).empty


def test_whatif_table_reads_the_declared_metrics_with_their_units():
    """Guards the What-if table written by hand on the page (issue 12): rows come from pafo.metrics' declarations,
    each value in its metric's unit, Δ = what-if − parent."""
    parent, child = make_result(seed=0), make_result(seed=1)
    table = report.whatif_table(parent, child)
    assert list(table["method"].unique()) == ["baseline", "pafo"] and len(table) == 2 * len(report.WHATIF_ROWS)
    row = table[(table["method"] == "pafo") & (table["metric"] == "Accuracy: minority users (%)")].iloc[0]
    a, b = parent.methods["pafo"].accuracy["minority"], child.methods["pafo"].accuracy["minority"]
    assert row["parent"] == report.format_value(a, "%") and row["what-if"] == report.format_value(b, "%")
    # Δ is the difference of the two values as shown (issue 19: a table's row must add up on a slide)
    shown = float(row["what-if"]) - float(row["parent"])
    assert row["Δ"] == report.format_value(shown / 100, "%", delta=True)
    spearman = table[table["metric"] == "Spearman(support, accuracy) — the bias"]
    assert len(spearman) == 2 and not spearman["parent"].str.endswith("%").any()
