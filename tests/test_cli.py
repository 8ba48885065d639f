"""``pafo support`` end to end: the DSP acceptance run, and every bad input as exit 2 with one line on stderr."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from pafo import cli, simulate
from pafo import dataset as dataset_mod
from pafo import support as support_mod
from pafo.config import OUT_OF_RANGE
from pafo.sources import BAD_FRACTION, DataConfig, files, load_dataset, pairs
from pafo.sources.personalllm import HUB_ID

SMALL = ["--users", "12", "--prompts", "8", "--train-pairs", "4", "--test-pairs", "2"]




def assert_one_line_error(code: int, out: str, err: str) -> str:
    """Exit 2, nothing on stdout, exactly one ``pafo: error:`` line on stderr, no traceback."""
    assert code == 2, (code, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pafo: error: ") and "Traceback" not in err
    return lines[0]


def test_support_on_dsp_uses_exact_and_finds_the_rare_domains(dsp_path, tmp_path, capsys):
    """Acceptance: exact estimator, ~20% minority, rare-domain users (literature, entertainment) less supported."""
    out, table = tmp_path / "out.json", tmp_path / "users.csv"
    code, stdout, err = run_cli(["support", "--dataset", "dsp", "--path", dsp_path, "--json", out, "--csv", table],
                                capsys)
    assert code == 0, err
    assert stdout == ""  # with --json the summary goes to the file only
    payload = json.loads(out.read_text())
    assert payload["support"]["estimator"] == "exact"
    assert payload["dataset"]["n_prompts"] == 461 and payload["dataset"]["n_users"] == 300
    groups = payload["groups"]
    share = groups["n_minority"] / (groups["n_minority"] + groups["n_majority"])
    assert abs(share - 0.2) <= 0.02, groups
    users = pd.read_csv(table)
    # The Support page's table (pafo.support.support_table): the same columns, the bias curve's deciles.
    assert list(users.columns) == ["user_id", "group", "support_rate", "dominant", "n_train", "n_val", "n_test",
                                   "decile"]
    assert sorted(users["decile"].unique()) == list(range(1, 11))
    assert len(users) == 300 and (users["n_test"] > 0).all()
    # The personas behind the same options (same seed): which domain dominates each user.
    ds = load_dataset(DataConfig(dataset="dsp", path=str(dsp_path)))
    assert list(ds.users["user_id"]) == list(users["user_id"])
    dominant = pd.Series(ds.persona_weights.argmax(axis=1)).map(dict(enumerate(ds.judges)))
    assert (dominant == ds.users["dominant"]).all()
    mean = users["support_rate"].groupby(dominant.to_numpy()).mean()
    assert mean["literature"] < mean["academy"] and mean["entertainment"] < mean["academy"], mean.to_dict()
    rare = dominant.isin(["literature", "entertainment"]).to_numpy()
    minority = (users["group"] == "minority").to_numpy()
    assert rare[minority].mean() > 2 * rare.mean(), "the minority should be mostly rare-domain users"


def test_support_prints_json_and_uses_colabels_for_pairs(tmp_path, capsys, write_table, pairs_frame):
    """Without --json the summary is printed; a pairs file where users share pairs gets the co-label estimator."""
    path = write_table(pairs_frame(n_users=5, n_prompts=12, same_pairs=True), tmp_path / "pairs.csv")
    code, out, err = run_cli(["support", "--dataset", "pairs", "--path", path], capsys)
    assert code == 0, err
    payload = json.loads(out)
    assert payload["support"]["estimator"] == "colabel"
    assert payload["dataset"]["n_users"] == 5 and payload["dataset"]["name"] == "pairs"
    assert list(tmp_path.iterdir()) == [path]


def test_support_model_estimator_on_pairs(tmp_path, capsys, write_table, pairs_frame):
    """--estimator model embeds the texts (tfidf by default) and says which estimator it used."""
    path = write_table(pairs_frame(n_users=6, n_prompts=12), tmp_path / "pairs.jsonl")
    out = tmp_path / "out.json"
    code, _, err = run_cli(["support", "--dataset", "pairs", "--path", path, "--estimator", "model", "--json", out],
                           capsys)
    assert code == 0, err
    support = json.loads(out.read_text())["support"]
    assert support["estimator"] == "model" and "cross-fitted" in support["notes"][0]
    assert 0 <= support["users"]["p10"] <= support["users"]["p90"] <= 1


# ------------------------------------------------------------------------------------------- bad input


def _pairs_with_split(pairs_frame) -> pd.DataFrame:
    frame = pairs_frame(n_users=3, n_prompts=8)
    late = frame["prompt"].str.contains("number [67]\\?")
    frame["split"] = np.where(late & (frame["user_id"] != "user2"), "test", "train")
    return frame


def _write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def bad_case(case: str, tmp_path: Path, write_table, pairs_frame) -> tuple[list, object, list]:
    """(arguments, message template, values the message must name) of each bad input."""
    good = pairs_frame(n_users=3, n_prompts=8)
    header = "user_id,prompt,chosen,rejected\n"
    if case == "missing-file":
        path = tmp_path / "nope.csv"
        return ["--dataset", "pairs", "--path", path], files.MISSING_FILE, [path]
    if case == "folder-not-file":
        folder = tmp_path / "data"
        folder.mkdir()
        return ["--dataset", "pairs", "--path", folder], files.NOT_A_FILE, [folder]
    if case == "not-utf8":
        data = header.encode() + "u1,caf\xe9?,a,b\n".encode("latin-1")
        path = _write(tmp_path, "latin1.csv", data)
        return ["--dataset", "pairs", "--path", path], files.NOT_UTF8, [path, f"byte {data.index(0xE9)}"]
    if case == "invalid-json":
        path = _write(tmp_path, "pairs.json", '[{"user_id": "a",}]')
        return ["--dataset", "pairs", "--path", path], files.INVALID_JSON, [path, "line 1"]
    if case == "invalid-json-dsp":
        path = _write(tmp_path, "dsp.json", '[{"query": "q", "responses": {\n')
        return ["--dataset", "dsp", "--path", path], files.INVALID_JSON, [path, "line 2"]
    if case == "unknown-format":
        path = _write(tmp_path, "pairs.txt", header + "a,b,c,d\n")
        return ["--dataset", "pairs", "--path", path], files.UNKNOWN_FORMAT, ["'.txt'"]
    if case == "missing-columns":
        path = write_table(good.drop(columns="rejected"), tmp_path / "pairs.csv")
        return ["--dataset", "pairs", "--path", path], files.MISSING_COLUMNS, ["rejected"]
    if case == "header-only":
        path = _write(tmp_path, "pairs.csv", header)
        return ["--dataset", "pairs", "--path", path], files.EMPTY_FILE, [path]
    if case == "single-user":
        path = write_table(pairs_frame(n_users=1, n_prompts=8), tmp_path / "pairs.csv")
        return ["--dataset", "pairs", "--path", path], dataset_mod.SINGLE_USER, ["user0"]
    if case == "no-test-pairs":
        path = write_table(_pairs_with_split(pairs_frame), tmp_path / "pairs.parquet")
        return ["--dataset", "pairs", "--path", path], dataset_mod.NO_TEST_PAIRS, ["'user2'"]
    if case == "chosen-equals-rejected":
        frame = good.copy()
        frame.loc[2, "rejected"] = frame.loc[2, "chosen"]
        path = write_table(frame, tmp_path / "pairs.jsonl")
        return ["--dataset", "pairs", "--path", path], pairs.SAME_TEXT, ["row 3"]
    if case == "empty-text":
        frame = good.copy()
        frame.loc[1, "prompt"] = "  "
        path = write_table(frame, tmp_path / "pairs.csv")
        return ["--dataset", "pairs", "--path", path], pairs.EMPTY_CELL, ["row 2", "prompt"]
    if case == "unknown-share-key":
        return [*SMALL, "--shares", "nobody=1"], simulate.UNKNOWN_SHARE, ["'nobody'", "thorough"]
    if case == "shares-not-positive":
        return [*SMALL, "--shares", "thorough=0,practical=0,witty=0,brief=0"], simulate.SHARES_NOT_POSITIVE, []
    if case == "negative-alpha":
        return [*SMALL, "--alpha=-1"], OUT_OF_RANGE, ["--alpha", "> 0", "-1.0"]
    if case == "quantile-outside":
        return [*SMALL, "--minority-quantile", "1.5"], support_mod.BAD_QUANTILE, ["1.5"]
    if case == "exact-without-personas":
        path = write_table(good, tmp_path / "pairs.csv")
        return ["--dataset", "pairs", "--path", path, "--estimator", "exact"], support_mod.NO_PERSONAS, ["pairs"]
    if case == "test-fraction-outside":
        return [*SMALL, "--test-fraction", "0"], BAD_FRACTION, ["--test-fraction", "(got 0.0)"]
    if case == "hub-id-offline":
        return ["--dataset", "pairs", "--path", "someone/some-pairs"], files.OFFLINE, ["someone/some-pairs",
                                                                                       "HF_HUB_OFFLINE"]
    if case == "personalllm-hub-offline":
        return ["--dataset", "personalllm"], files.OFFLINE, [HUB_ID]
    if case == "url-offline":
        url = "https://example.org/dsp.json"
        return ["--dataset", "dsp", "--path", url], files.OFFLINE, [url]
    raise AssertionError(case)


BAD_CASES = ["missing-file", "folder-not-file", "not-utf8", "invalid-json", "invalid-json-dsp", "unknown-format",
             "missing-columns", "header-only", "single-user", "no-test-pairs", "chosen-equals-rejected", "empty-text",
             "unknown-share-key", "shares-not-positive", "negative-alpha", "quantile-outside", "hub-id-offline",
             "personalllm-hub-offline", "url-offline", "exact-without-personas", "test-fraction-outside"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path, capsys, monkeypatch, write_table,
                                                           pairs_frame, check_message):
    """Regression: bad input must give exit 2, its message on one stderr line, no traceback and no output file."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # hub ids and URLs fail fast; no network is touched
    args, template, values = bad_case(case, tmp_path, write_table, pairs_frame)
    out, table = tmp_path / "out.json", tmp_path / "users.csv"
    before = sorted(tmp_path.rglob("*"))
    code, stdout, err = run_cli(["support", *args, "--json", out, "--csv", table], capsys)
    line = assert_one_line_error(code, stdout, err)
    check_message(line, template, *values)
    assert not out.exists() and not table.exists()
    assert sorted(tmp_path.rglob("*")) == before  # no temp files left behind either


def test_offline_message_says_how_to_load_a_local_file(capsys, monkeypatch):
    """An unreachable hub id names the fix: download elsewhere and pass the local file with --path."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = run_cli(["support", "--dataset", "pairs", "--path", "someone/some-pairs"], capsys)
    line = assert_one_line_error(code, out, err)
    assert "load it from its local path instead" in line and "CSV, JSONL, JSON or Parquet" in line


def test_unreadable_file_is_reported(tmp_path, capsys, monkeypatch, write_table, pairs_frame, check_message):
    """A file without read permission (simulated: tests run as root, so chmod 000 would still be readable)."""
    path = write_table(pairs_frame(), tmp_path / "pairs.csv")
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    code, out, err = run_cli(["support", "--dataset", "pairs", "--path", path], capsys)
    check_message(assert_one_line_error(code, out, err), files.UNREADABLE, path, "permission denied")


@pytest.mark.parametrize(("args", "fragment"), [
    (["--dataset", "nope"], "invalid choice: 'nope'"),
    (["--users", "many"], "expected a whole number, got 'many'"),
    (["--minority-quantile", "0.1", "--minority-threshold", "0.5"], "not allowed with argument"),
])
def test_usage_errors_are_one_line_exit_2(args, fragment, capsys):
    """argparse errors follow the same contract: exit 2 and one line (with a pointer to --help)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["support", *args])
    assert caught.value.code == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "--help" in lines[0], captured.err


def test_internal_error_is_one_line_exit_1(capsys, monkeypatch):
    """A bug (not bad input) is still one line, exit 1, pointing at PAFO_DEBUG for the traceback."""
    monkeypatch.delenv("PAFO_DEBUG", raising=False)

    def broken(config):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "load_dataset", broken)
    code = cli.main(["support", *SMALL])
    err = capsys.readouterr().err
    assert code == 1 and err.splitlines() == ["pafo: internal error: RuntimeError: boom (set PAFO_DEBUG=1 to see "
                                              "the traceback)"]


def test_installed_command_exit_code_and_single_stderr_line(tmp_path, pafo_home, check_message):
    """End to end through a real process: the ``pafo`` script exits 2 with one stderr line and writes nothing."""
    script = Path(sys.executable).with_name("pafo")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "pafo.cli"]
    missing, out = tmp_path / "missing.csv", tmp_path / "out.json"
    env = {**os.environ, "PAFO_HOME": str(pafo_home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([*command, "support", "--dataset", "pairs", "--path", str(missing), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pafo: error: "), proc.stderr
    check_message(lines[0], files.MISSING_FILE, missing)
    assert not out.exists()
