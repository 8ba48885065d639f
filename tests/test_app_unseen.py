"""AppTest of the unseen-user views: Compare's "unseen users" panel (learning curves with CIs and the paired
table), the Users page's new user personalised from typed pairs, and the Train form's declared fields.

One module-wide ``$PAFO_HOME`` holds a finished tiny MiniLM run (baseline + PAFO) with a third of its users held
out and personalised from 1 and 3 pairs (MiniLM: a TF-IDF run cannot embed a new user's text)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pafo import appstate
from pafo.registry import RunRegistry
from pafo.sources import DataConfig
from pafo.support import GroupConfig

APP = str(Path(__file__).resolve().parent.parent / "app.py")
TIMEOUT = 120
DATA = {**dataclasses.asdict(DataConfig()), "users": 40, "prompts": 16, "responses_per_prompt": 4,
        "train_pairs": 6, "test_pairs": 4}
RUN = {"encoder": "minilm", "methods": "baseline,pafo", "bootstrap": 50, "unseen_users": 0.3, "shots": "1,3"}


@pytest.fixture(scope="module")
def unseen_run(tmp_path_factory):
    """The home and id of a finished run with unseen users."""
    home = tmp_path_factory.mktemp("unseen_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(home))
        registry = RunRegistry(home)
        config = appstate.experiment_config(DATA, dataclasses.asdict(GroupConfig()), run=RUN,
                                            train={"epochs": 3, "patience": 2},
                                            pafo={"restarts": 2, "subspaces": "8"})
        record = registry.wait(registry.submit_config(config, label="unseen").id, timeout=300)
        assert record.status == "succeeded", record.error
        yield home, record.id


def page(home: Path, run_id: str, name: str, monkeypatch) -> AppTest:
    monkeypatch.setenv("PAFO_HOME", str(home))
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.query_params["run"] = run_id
    at.run()
    return at.switch_page(f"pages/{name}.py").run()


def figures(at: AppTest) -> dict[str, dict]:
    found = {}
    for chart in at.get("plotly_chart"):
        spec = json.loads(chart.proto.spec)
        found[((spec.get("layout") or {}).get("title") or {}).get("text", "")] = spec
    return found


def test_compare_shows_the_unseen_users_panel(unseen_run, monkeypatch):
    """Guards the panel: a curve per group with one line per method over the run's shots, each point with its CI
    as an error bar, and the table of paired differences per k (PAFO against the baseline, the verdict)."""
    at = page(*unseen_run, "compare", monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    assert any(h.value == "Unseen users" for h in at.subheader)
    curves = figures(at)
    for group in ("minority", "majority"):
        spec = curves[f"New {group} users"]
        assert [t["name"] for t in spec["data"]] == ["baseline", "pafo"]
        assert spec["layout"]["xaxis"]["ticktext"] == ["1", "3"]
        for trace in spec["data"]:
            assert len(trace["y"]) == 2 and "array" in trace["error_y"]
    table = next(frame.value for frame in at.dataframe if "pairs (k)" in frame.value.columns)
    assert table["pairs (k)"].tolist() == [1, 1, 3, 3] and table["method"].tolist() == ["baseline", "pafo"] * 2
    pafo_rows = table[table["method"] == "pafo"]
    assert pafo_rows["Δ minority vs baseline"].str.contains(r"\[").all()
    assert any("held out of all training" in c.value for c in at.caption)


def test_users_page_personalises_a_new_user_from_typed_pairs(unseen_run, monkeypatch):
    """Guards the new-user form: two typed pairs (a third slot left blank) personalise every model and the table
    shows each one's margin on those pairs before and after; a pair of one response twice is an error naming the
    row, not an exception."""
    at = page(*unseen_run, "users", monkeypatch)
    pairs = [("Give me a tip for sleeping well.", "Keep a fixed bedtime, even at weekends.",
              "LOL just sleep more. 😴"),
             ("How do I start running?", "Begin with three short runs a week and add a minute each time.",
              "Run a marathon tomorrow!")]
    for i, row in enumerate(pairs):
        for field, text in zip(("prompt", "chosen", "rejected"), row, strict=True):
            at.text_input(key=f"new_user_{field}_{i}").input(text)
    at.button(key="new_user_go").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    fit = next(frame.value for frame in at.dataframe if "pafo personalised" in frame.value.columns)
    assert len(fit) == 2 and {"baseline shared", "baseline personalised", "pafo shared"} <= set(fit.columns)
    assert (fit["baseline personalised"] != fit["baseline shared"]).all()
    assert any(m.value.startswith("**New user, 2 pairs**") for m in at.markdown)
    at.text_input(key="new_user_rejected_1").input(pairs[1][1])
    at.button(key="new_user_go").click().run()
    assert not at.exception
    assert any("row 2" in e.value and "same text" in e.value for e in at.error), [e.value for e in at.error]


def test_users_page_lists_the_runs_held_out_users(unseen_run, monkeypatch):
    """Bug: the Users page listed only the users a run trained on; its held-out users were only in
    unseen_per_user.csv. It now lists one seed's held-out users with each method's accuracy per k, the same
    numbers as the file."""
    import pandas as pd

    from pafo.experiment import UNSEEN_CSV

    home, run_id = unseen_run
    at = page(home, run_id, "users", monkeypatch)
    assert not at.exception, [e.value for e in at.exception]
    table = next(frame.value for frame in at.dataframe if "pafo k=3 %" in frame.value.columns)
    rows = pd.read_csv(home / "runs" / run_id / UNSEEN_CSV)
    rows = rows[rows["seed"] == rows["seed"].iloc[0]]
    assert sorted(table["user"].astype(str)) == sorted(rows["user_id"].astype(str).unique())
    assert list(table.columns[-4:]) == ["baseline k=1 %", "pafo k=1 %", "baseline k=3 %", "pafo k=3 %"]
    first = rows[(rows["shots"] == 3)].set_index(rows[rows["shots"] == 3]["user_id"].astype(str))
    for user, value in zip(table["user"].astype(str), table["pafo k=3 %"], strict=True):
        expected = first.loc[user, "acc_pafo"]
        assert (pd.isna(value) and pd.isna(expected)) or value == round(100 * expected, 1)


def test_train_form_declares_the_unseen_share_and_shots(unseen_run, monkeypatch):
    """Guards the Train form: the held-out share is an input with its declared label and bounds (the current run's
    0.3 in it); the shots only matter while users are held out (disabled at 0, saying why)."""
    at = page(*unseen_run, "train", monkeypatch)
    assert not at.exception
    share = at.number_input(key="train_run_unseen_users")
    assert share.label == "unseen users (share held out)" and share.max == 0.9 and share.value == 0.3
    assert not at.text_input(key="train_run_shots").disabled
    share.set_value(0.0).run()
    shots = at.text_input(key="train_run_shots")
    assert shots.disabled and "unseen users (share held out)" in shots.help
