"""Issue 18, second half: verdicts that rest on noise, faults that escaped the exit-code contract, the app's data
roots, and a browser wait that sampled a transient.

Every test is a regression test naming the bug it guards; each failed on the code before the fix. The contract
(README, "Exit codes and faults"): exit 2 for input the user can fix, 3 for a fault of the machine, nothing on
stdout, exactly ONE stderr line, no traceback, nothing deleted.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

DATA = ["--users", "24", "--prompts", "16", "--responses-per-prompt", "4", "--train-pairs", "6", "--test-pairs", "4"]
FAST = ["--bootstrap", "20", "--epochs", "2", "--patience", "1", "--hidden", "16", "--k", "4"]
TINY = [*DATA, "--encoder", "tfidf", *FAST]


def one_line(code: int, out: str, err: str, expected: int = 2) -> str:
    """The contract: the exit code, nothing on stdout, one stderr line without a traceback."""
    assert code == expected, (code, err)
    assert out == "", out
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------------------------------- verdicts on noise


def test_a_ci_bound_of_float_noise_is_not_above_zero():
    """Bug: the minority test "CI above 0" had no tolerance, so a lower bound of 4.2e-17 (printed [0.0, +13.8])
    gave "pareto" at 40 users. One tolerance serves every CI test, and the comparison records the rule it used."""
    from pafo.compare import verdict

    majority = {"delta": 0.011, "ci": [-0.019, 0.044]}
    minority = {"delta": 0.06875, "ci": [4.163336342344337e-17, 0.1375]}
    assert verdict(majority, minority) == "noise"
    # The same tolerance on the "below" side: an upper bound of −4e-17 is not below 0 (no trade-off).
    assert verdict({"delta": -0.01, "ci": [-0.02, -4e-17]}, {"delta": 0.05, "ci": [0.02, 0.08]},
                   epsilon=0.0) == "noise"
    from pafo.compare import CI_TOLERANCE, VerdictRule

    assert verdict(majority, {"delta": 0.06, "ci": [2 * CI_TOLERANCE, 0.1]}) == "pareto"
    assert VerdictRule().to_dict() == {"epsilon": 0.005, "tolerance": CI_TOLERANCE, "min_users": 20,
                                       "min_pairs": 200, "min_seed_users": 5}


def _tables(n_minority: int, *, users: int = 200, pairs: int = 20) -> list[pd.DataFrame]:
    """One seed: a method right on every minority pair where the reference was right on half (a huge gain)."""
    rng = np.random.default_rng(0)
    group = np.where(np.arange(users) < n_minority, "minority", "majority")
    reference = np.clip(0.6 + rng.normal(0, 0.05, users), 0, 1)
    method = np.where(group == "minority", 1.0, reference)
    return [pd.DataFrame({"group": group, "support_rate": rng.uniform(0.2, 0.9, users), "acc_pafo": method,
                          "acc_baseline": reference, "n_test": pairs})]


def test_groups_below_the_minimum_are_noise_with_the_reason(tmp_path, capsys):
    """Bug: groups of 1–2 users gave "pareto"/"tradeoff" with zero-width CIs (`--users 3` → pareto [+20.0, +20.0]).
    Below the documented minimum (users and test pairs per group and seed) the verdict is `noise`, with the reason
    in the JSON and on the CLI's verdict line, which also says what the rule used."""
    from pafo.compare import paired_comparison

    small = paired_comparison(_tables(2), "pafo", n_resamples=200)
    assert small.verdict == "noise"
    assert small.verdict_reason == "too few users: minority has 2 (< 20)"
    assert paired_comparison(_tables(40), "pafo", n_resamples=200).verdict == "pareto"
    few_pairs = paired_comparison(_tables(40, pairs=4), "pafo", n_resamples=200)  # 40 users × 4 = 160 pairs
    assert few_pairs.verdict == "noise"
    assert few_pairs.verdict_reason == "too few test pairs: minority has 160 (< 200)"
    # Through the CLI: 24 users (4–5 minority users) on one seed.
    path = tmp_path / "r.json"
    code, out, err = run_cli(["experiment", *TINY, "--json", path], capsys)
    assert code == 0 and out == "", err
    comparison = json.loads(path.read_text())["comparisons"]["pafo"]
    assert comparison["verdict"] == "noise" and comparison["verdict_reason"].startswith("too few users: minority has")
    assert comparison["rule"] == {"epsilon": 0.005, "tolerance": 0.0005, "min_users": 20, "min_pairs": 200,
                                  "min_seed_users": 5}
    assert len(err.splitlines()) == 1
    assert f"within noise ({comparison['verdict_reason']})" in err
    assert "rule: ε 0.5 points, CI bounds must clear 0 (or −ε) by 0.05 points" in err



def test_small_groups_pool_over_seeds_but_each_seed_needs_a_few_users():
    """Bug: the minimum of 20 users held per seed, so ten seeds of 12 held-out minority users (120 users, a tight
    pooled CI) always read "within noise" (issue 22's unseen-users panel never gave a verdict). The minimums now
    count over the seeds; a seed with fewer than 5 of a group's users (a degenerate bootstrap stratum) still makes
    the verdict noise, naming that seed; the slices and the small-sample warning read the same rule."""
    from pafo.compare import paired_comparison
    from pafo.sample_size import GroupCounts, shortfall

    pooled = paired_comparison(_tables(12) * 10, "pafo", n_resamples=200)
    assert pooled.verdict == "pareto" and pooled.sample["minority"].total_users == 120
    assert paired_comparison(_tables(12), "pafo", n_resamples=200).verdict_reason == \
        "too few users: minority has 12 (< 20)"
    two = paired_comparison(_tables(9) * 2, "pafo", n_resamples=200)  # 18 users over 2 seeds
    assert two.verdict_reason == "too few users: minority has 18 (< 20) over 2 seeds"
    # 163 minority users, but 3 on the last seed
    thin = [table.assign(seed=seed) for seed, table in enumerate(_tables(40) * 4)] + [_tables(3)[0].assign(seed=7)]
    comparison = paired_comparison(thin, "pafo", n_resamples=200)
    assert comparison.verdict == "noise"
    assert comparison.verdict_reason == "too few users: minority has 3 (< 5) on seed 7"
    # One notion of too few: the slices' reason comes from the same function, with the same counts.
    assert shortfall(GroupCounts.of_seeds({0: 9, 1: 9}, {0: 180, 1: 180}), "the slice") == \
        "too few users: the slice has 18 (< 20) over 2 seeds"
    assert shortfall(GroupCounts.of_seeds({0: 30}, {0: 150}), "the slice") == \
        "too few test pairs: the slice has 150 (< 200)"

def test_audit_with_missing_rows_compares_models_on_the_pairs_both_cover(tmp_path, capsys):
    """Bug: `audit --allow-missing` compared models on different pairs: a copy of the reference that omits its
    wrong rows got "pareto" +40 points. A paired comparison uses only the pairs both models cover and reports that
    coverage."""
    from test_audit import population, shared_margin

    frame = population()
    frame.drop(columns=["agree", "rare", "prompt_no"]).to_csv(tmp_path / "pairs.csv", index=False)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    columns = ["user_id", "prompt", "chosen", "rejected"]
    margins = test[columns].assign(margin=shared_margin(test))
    margins.to_csv(tmp_path / "ref.csv", index=False)
    margins[margins["margin"] >= 0].to_csv(tmp_path / "copy.csv", index=False)  # the copy drops its wrong rows
    out = tmp_path / "audit.json"
    code, _, err = run_cli(["audit", "--dataset", "pairs", "--path", tmp_path / "pairs.csv", "--bootstrap", "200",
                            "--predictions", f"ref={tmp_path / 'ref.csv'}", "--predictions",
                            f"copy={tmp_path / 'copy.csv'}", "--allow-missing", "--json", out], capsys)
    assert code == 0, err
    covered = int((margins["margin"] >= 0).sum())
    assert len(err.splitlines()) == 1 and f"on the {covered:,} of {len(test):,} pairs both models cover" in err
    result = json.loads(out.read_text())
    comparison = result["comparisons"]["copy"]
    # On the pairs both cover the two models are the same model: no difference at all.
    assert comparison["minority"]["delta"] == 0.0 and comparison["majority"]["delta"] == 0.0
    assert comparison["verdict"] == "noise"
    assert comparison["coverage"]["pairs"] == covered < comparison["coverage"]["of_pairs"] == len(test)
    assert comparison["n_pairs"] == covered
    # Each model's own accuracy still reports its own coverage (the copy looks perfect on what it kept).
    assert result["methods"]["copy"]["coverage"]["pairs"] == covered


# ------------------------------------------------------------------------------------------- faults


def _sweep_argv(address: str) -> list[str]:
    return ["sweep", *TINY, "--grid", "pafo.beta=0.5,1", "--backend", "ray", "--ray-address", address]


def _no_ray_init(monkeypatch):
    """Make any ray.init fail the test: an unreachable address must be refused before Ray is asked."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -r requirements.txt)")

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called for an address that does not answer")

    monkeypatch.setattr(ray, "init", refuse)
    return ray


def test_ray_address_that_nothing_answers_is_exit_3_at_once(monkeypatch, capfd):
    """Bug: `--backend ray --ray-address HOST:PORT` that nothing answers hung (killed at 150 s) and flooded stderr
    with Ray's retry logs. The address is probed with a timeout (mocked here: no network traffic), the command
    exits 3 with one line, and no cell is queued."""
    import socket

    from pafo import sweep
    from pafo.registry import RunRegistry

    _no_ray_init(monkeypatch)
    probes = []

    def silent(address, timeout=None, **kwargs):
        probes.append((address, timeout))
        raise TimeoutError("timed out")

    monkeypatch.setattr(socket, "create_connection", silent)
    from pafo import cli

    code = cli.main([str(a) for a in _sweep_argv("10.255.255.1:6379")])
    out, err = capfd.readouterr()
    line = one_line(code, out, err, expected=3)
    assert "cannot reach Ray at 10.255.255.1:6379" in line and "--backend local" in line
    assert probes == [(("10.255.255.1", 6379), sweep.RAY_CONNECT_TIMEOUT)]
    assert RunRegistry().list() == []


def test_ray_that_answers_but_fails_to_join_keeps_one_stderr_line(monkeypatch, capfd):
    """Bug: an address that answers but is no Ray cluster made Ray's native core log a retry line per second on
    stderr. Those lines go to $PAFO_HOME/ray-init.log; stderr holds one line, exit 3, and no cell is queued."""
    import os
    import socket

    from pafo.registry import RunRegistry

    ray = _no_ray_init(monkeypatch)

    class Answered:
        def close(self):
            pass

    def retries_then_fails(*args, **kwargs):
        for _ in range(3):  # what Ray's C++ core writes straight to file descriptor 2
            os.write(2, b"[2026 W 1 1] gcs_client.cc:210: Failed to get cluster ID from GCS server\n")
        raise ConnectionError("Failed to connect to Ray cluster at 10.1.2.3:6379")

    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Answered())
    monkeypatch.setattr(ray, "init", retries_then_fails)
    from pafo import cli

    code = cli.main([str(a) for a in _sweep_argv("10.1.2.3:6379")])
    out, err = capfd.readouterr()
    line = one_line(code, out, err, expected=3)
    assert "Failed to connect to Ray cluster" in line and "ray-init.log" in line
    log = RunRegistry().home / "ray-init.log"
    assert log.read_text().count("gcs_client.cc") == 3
    assert RunRegistry().list() == []


DEEP = "[" * 100_000 + "]" * 100_000


def _deep_cases(folder) -> dict[str, list]:
    """Every reader of a user's JSON, each given JSON nested 100,000 levels deep."""
    (folder / "deep.json").write_text(DEEP)
    (folder / "deep.jsonl").write_text('{"user_id": ' + DEEP + "}\n")
    model = folder / "model"
    model.mkdir()
    (model / "config.json").write_text(DEEP)
    return {
        "pairs json": ["support", "--dataset", "pairs", "--path", folder / "deep.json"],
        "pairs jsonl": ["support", "--dataset", "pairs", "--path", folder / "deep.jsonl"],
        "dsp": ["support", "--dataset", "dsp", "--path", folder / "deep.json"],
        "personalllm": ["support", "--dataset", "personalllm", "--path", folder / "deep.json"],
        "predictions": ["audit", "--users", "12", "--predictions", f"m={folder / 'deep.json'}"],
        "reward model config": ["audit", "--users", "12", "--model", f"m={model}"],
        "encoder config": ["experiment", "--users", "12", "--encoder", model],
        "score input": ["score", "--run-dir", folder, "--input", folder / "deep.json"],
    }


def test_deeply_nested_json_in_any_reader_is_exit_2(tmp_path, capsys):
    """Bug: JSON nested deeper than Python's recursion limit raised RecursionError in the readers, reported as
    exit 1 "internal error". Every reader gives exit 2 with one line naming the file."""
    (tmp_path / "result.json").write_text(DEEP)  # makes tmp_path look like a run folder to `score`
    for name, argv in _deep_cases(tmp_path).items():
        line = one_line(*run_cli(argv, capsys))
        assert "internal error" not in line and str(tmp_path) in line, (name, line)


def test_model_config_with_text_num_labels_is_exit_2(tmp_path, capsys):
    """Bug: a reward model's config.json with `num_labels: "one"` made int() raise: exit 1 "internal error"."""
    folder = tmp_path / "rm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["BertForSequenceClassification"],
                                                    "model_type": "bert", "num_labels": "one"}))
    line = one_line(*run_cli(["audit", "--users", "12", "--model", f"rm={folder}"], capsys))
    assert "num_labels 'one'" in line and str(folder) in line


def test_a_sweep_cell_that_diverges_fails_alone_and_the_sweep_exits_2(worker_home, tmp_path, capsys):
    """Bug: a sweep whose cell diverged (`--grid train.lr=1e308`) ended with exit 1, the code of a bug. The cell
    is reported failed with its reason, the other cells finish, and the exit code is 2 with one error line."""
    from pafo.registry import FAILED, SUCCEEDED

    out = tmp_path / "sweep.json"
    code, stdout, err = run_cli(["sweep", *TINY, "--grid", "train.lr=0.01,1e308", "--json", out], capsys)
    assert code == 2 and stdout == "", err
    errors = [line for line in err.splitlines() if line.startswith("pafo: error:")]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    assert "train.lr=1e+308 seed 0" in errors[0] and "training diverged" in errors[0] and "lower --lr" in errors[0]
    cells = json.loads(out.read_text())["cells"]
    assert [(c["params"]["train.lr"], c["status"]) for c in cells] == [(0.01, SUCCEEDED), (1e308, FAILED)]
    assert "training diverged" in cells[1]["error"]


def _tiny_model(folder, *, head: bool):
    from test_audit import tiny_reward_model

    texts = [f"Answer {a} to question {p}." for a in "AB" for p in range(20)] + [f"Question {p}?" for p in range(20)]
    return tiny_reward_model(folder, texts, head=head)


def test_transformers_load_reports_add_no_stderr_lines(tmp_path, capfd):
    """Bug: transformers printed its load report (25 lines for a size mismatch) on stderr before the one-line
    error. Loading is quiet; a folder whose weights do not fit its config, or lack the reward head (transformers
    would start it at random and score noise), is exit 2 with one line."""
    from pafo import cli

    mismatched = _tiny_model(tmp_path / "mismatched", head=True)
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps({**config, "hidden_size": 32}))
    headless = _tiny_model(tmp_path / "headless", head=False)
    config = json.loads((headless / "config.json").read_text())
    (headless / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"],
                                                      "num_labels": 1}))
    capfd.readouterr()  # saving the models drew progress bars
    for folder, expected in ((mismatched, "weights do not have the sizes config.json declares"),
                             (headless, "would start at random")):
        code = cli.main(["audit", "--users", "12", "--model", f"rm={folder}"])
        out, err = capfd.readouterr()
        assert expected in one_line(code, out, err)


def test_score_with_csv_or_json_prints_the_wrote_line(tmp_path, capsys):
    """Bug: `pafo score --csv/--json` printed nothing on stderr, though the README says every command that writes
    files prints one line naming them."""
    run_dir = tmp_path / "run"  # MiniLM: TF-IDF features cannot score new text
    code, _, err = run_cli(["experiment", *DATA, "--encoder", "minilm", *FAST, "--out-dir", run_dir], capsys)
    assert code == 0, err
    known = pd.read_csv(run_dir / "per_user.csv")["user_id"].iloc[0]
    pd.DataFrame({"user_id": [known, "nobody"], "prompt": ["Hi?", "Hi?"],
                  "response": ["Hello there.", "Go away."]}).to_csv(tmp_path / "in.csv", index=False)
    scored, summary = tmp_path / "scored.csv", tmp_path / "scored.json"
    code, out, err = run_cli(["score", "--run-dir", run_dir, "--method", "baseline", "--input", tmp_path / "in.csv",
                              "--csv", scored, "--json", summary], capsys)
    assert code == 0 and out == "", err
    assert err.splitlines() == [f"pafo: wrote {scored}, {summary}: 2 rows scored with baseline (1 of unknown "
                                "users, scored with the shared reward)"]
    assert len(pd.read_csv(scored)) == 2


def test_an_encoder_with_128_positions_runs_at_its_own_limit(tmp_path, capsys):
    """Bug: an encoder folder whose model has 128 positions failed "max_length: got 256; use … 8 to 128" and
    `experiment` had no way to change it. Unset, the length is the default capped at the model's limit."""
    encoder = _tiny_model(tmp_path / "enc128", head=False)
    path = tmp_path / "r.json"
    code, _, err = run_cli(["experiment", *DATA, "--encoder", encoder, *FAST, "--json", path], capsys)
    assert code == 0, err
    assert json.loads(path.read_text())["encoder"]["name"].endswith("-L128")


def test_a_deleted_working_directory_is_one_line_exit_2(tmp_path):
    """Bug: every command run from a deleted current folder died with "Intel oneMKL FATAL ERROR: Cannot load
    libtorch_cpu.so" (torch's bundled oneMKL calls getcwd() as it loads). Now: exit 2, one line saying so."""
    import os
    import subprocess
    import sys

    from pafo.paths import PACKAGE_ROOT

    gone = tmp_path / "gone"
    gone.mkdir()
    script = f"cd {gone} && rmdir {gone} && exec {sys.executable} -m pafo.cli support --users 12"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=env, timeout=300, check=False)
    line = one_line(proc.returncode, proc.stdout, proc.stderr)
    assert "oneMKL" not in line and "current folder no longer exists" in line


def test_an_infinite_personalllm_score_names_its_row(tmp_path, capsys):
    """Bug: an `inf` PersonalLLM score printed RuntimeWarnings and then blamed "majority group empty". The score
    is checked to be finite, and the error names the row and column."""
    from conftest import personalllm_frame

    frame = personalllm_frame(n_prompts=20)
    frame.loc[3, "response_2_rm_b"] = float("inf")
    frame.to_parquet(tmp_path / "pl.parquet")
    line = one_line(*run_cli(["support", "--dataset", "personalllm", "--path", tmp_path / "pl.parquet",
                              "--users", "20"], capsys))
    assert "row 4, column response_2_rm_b: the score is not a finite number" in line


# ------------------------------------------------------------------------------------------- security

DATA_ROOTS_ENV = "PAFO_DATA_ROOTS"  # the README's name for it (pafo.data_roots.DATA_ROOTS_ENV)


def _data_page(monkeypatch, home):
    from streamlit.testing.v1 import AppTest

    from pafo.paths import PACKAGE_ROOT

    monkeypatch.setenv("PAFO_HOME", str(home))
    at = AppTest.from_file(str(PACKAGE_ROOT / "app.py"), default_timeout=120).run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    return at


def _load_path(at, path):
    at.text_input(key="path_pairs").set_value(str(path))
    at.form_submit_button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


@pytest.mark.timeout(300)
def test_the_app_reads_data_only_inside_its_data_roots(tmp_path, monkeypatch):
    """Bug: the app's path box read any file the app's user could read (a 0600 pairs CSV was previewed, a 0600
    hr.csv leaked its header in the error). A path outside the data roots is an st.error naming it and the fix
    ($PAFO_DATA_ROOTS); a file that fails to parse is named without echoing its contents, in the app and the CLI."""
    from conftest import pairs_frame

    private = tmp_path / "private"
    private.mkdir()
    secret = private / "pairs.csv"
    pairs_frame(n_users=4).to_csv(secret, index=False)
    secret.chmod(0o600)
    hr = private / "hr.csv"
    hr.write_text("ssn,salary\n123-45-6789,99000\n")
    hr.chmod(0o600)
    monkeypatch.setenv(DATA_ROOTS_ENV, str(tmp_path / "elsewhere"))
    at = _data_page(monkeypatch, tmp_path / "home")
    for path in (secret, hr):
        errors = _load_path(at, path)
        assert any(str(path) in e and DATA_ROOTS_ENV in e for e in errors), errors
        assert not any("ssn" in e or "salary" in e or "123-45" in e for e in errors), errors
        assert at.session_state["data_config"]["dataset"] == "synthetic"  # nothing of the file was loaded
    # The audit's model folder is confined too, before anything reads its config.json.
    at.text_input(key="audit_model").set_value(str(private)).run()
    at.button(key="audit_start").click().run()
    assert any(str(private) in e.value and DATA_ROOTS_ENV in e.value for e in at.error), [e.value for e in at.error]
    # Adding the folder as a root lets the pairs file load; the malformed one is named, its header never shown.
    monkeypatch.setenv(DATA_ROOTS_ENV, str(private))
    assert _load_path(at, secret) == []
    assert at.session_state["data_config"]["path"] == str(secret)
    errors = _load_path(at, hr)
    assert any(str(hr) in e and "missing column(s)" in e for e in errors), errors
    assert not any("ssn" in e or "salary" in e for e in errors), errors


def test_parse_errors_never_echo_the_files_contents(tmp_path, capsys):
    """Bug: a file that failed to parse had its header (or a cell) quoted in the error ("found: ssn, salary"). The
    CLI keeps reading any path its user gives, but a parse error names only the file, row and expected columns."""
    hr = tmp_path / "hr.csv"
    hr.write_text("ssn,salary\n123-45-6789,99000\n")
    scores = tmp_path / "pl.csv"
    scores.write_text("prompt,response_1,response_2,response_1_rm,response_2_rm\nq,a,b,secret-42,1.0\n")
    preds = tmp_path / "preds.csv"
    preds.write_text("user_id,prompt,chosen,rejected,secret_column\nu,p,c,r,1\n")
    cases = [["support", "--dataset", "pairs", "--path", hr],
             ["support", "--dataset", "personalllm", "--path", scores],
             ["audit", "--users", "12", "--predictions", f"m={preds}"]]
    for argv in cases:
        line = one_line(*run_cli(argv, capsys))
        assert str(argv[4]).split("=")[-1] in line, line
        for content in ("ssn", "salary", "123-45", "secret"):
            assert content not in line, line
