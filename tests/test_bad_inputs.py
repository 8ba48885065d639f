"""The bad-input corpus: every input a user can get wrong, through the real CLI, against a home with earlier runs.

Each case asserts the contract of issue 11: the documented exit code (2 bad input, 3 a fault of the environment),
nothing on stdout, exactly one stderr line that names the problem, no traceback, no file left behind, and the
earlier runs (a ``pafo experiment --out-dir`` folder and a finished background run) unchanged, files and registry
rows alike. Below the corpus: the faults that are not one bad value (a broken pipe, progress bars in logs, an
``--out-dir`` reused by another run, training that diverges).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

from pafo import cli
from pafo import registry as registry_module
from pafo.errors import EXIT_ENVIRONMENT, EXIT_INPUT
from pafo.paths import PACKAGE_ROOT
from pafo.registry import RunRegistry

DATA = ["--users", "12", "--prompts", "8", "--responses-per-prompt", "4", "--train-pairs", "4", "--test-pairs", "2"]
FAST = ["--epochs", "2", "--patience", "1", "--bootstrap", "10"]
TFIDF = [*DATA, "--encoder", "tfidf", *FAST]
PAIRS_HEADER = "user_id,prompt,chosen,rejected\n"
SQLITE_CONNECT = sqlite3.connect  # the snapshot's own, untouched by a case that makes the registry's fail


@dataclass
class Earlier:
    """What exists before every case: a finished ``--out-dir`` run (MiniLM, so it can score) and a finished
    background run in the registry of ``home``."""

    home: Path
    out_dir: Path
    run_id: str


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Earlier:
    root = tmp_path_factory.mktemp("earlier")
    home, out_dir = root / "home", root / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAFO_HOME", str(home))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("TRANSFORMERS_OFFLINE", "1")
        patch.setenv("PYTHONPATH", str(PACKAGE_ROOT))
        assert cli.main(["experiment", *DATA, "--encoder", "minilm", *FAST, "--out-dir", str(out_dir)]) == 0
        registry = RunRegistry(home)
        config = cli.experiment_config_from_args(cli.build_parser().parse_args(["experiment", *TFIDF]))
        run_id = registry.submit_config(config, label="earlier").id
        assert registry.wait(run_id, timeout=600).status == "succeeded"
        registry.close()
        yield Earlier(home, out_dir, run_id)


def snapshot(earlier: Earlier) -> dict:
    """Checksums of the earlier runs' files and every registry row (without opening the registry through PAFO)."""
    files = {}
    for root in (earlier.out_dir, earlier.home / "runs"):
        for path in sorted(root.rglob("*")):
            if path.is_file():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    with SQLITE_CONNECT(earlier.home / "runs.sqlite") as conn:
        rows = conn.execute("SELECT * FROM runs ORDER BY id").fetchall()
        epochs = conn.execute("SELECT run_id, seq, metrics_json FROM epochs ORDER BY run_id, seq").fetchall()
    return {"files": files, "rows": rows, "epochs": epochs}


# ------------------------------------------------------------------------------------------- the cases


@dataclass
class Ctx:
    tmp: Path
    earlier: Earlier
    monkeypatch: pytest.MonkeyPatch

    def file(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return path

    def pairs(self, name: str = "pairs.csv") -> Path:
        rows = [f"u{u},How do I do task {p}?,Answer A{u}{p} to {p}.,Answer B{u}{p} to {p}.\n"
                for u in range(3) for p in range(8)]
        return self.file(name, PAIRS_HEADER + "".join(rows))

    def fifo(self, name: str) -> Path:
        path = self.tmp / name
        os.mkfifo(path)
        return path

    def link(self, name: str, target: str | Path) -> Path:
        path = self.tmp / name
        path.symlink_to(target)
        return path

    def run_copy(self) -> Path:
        """A copy of the earlier --out-dir run that a case may damage."""
        return Path(shutil.copytree(self.earlier.out_dir, self.tmp / "copy"))

    def home(self, name: str = "home-env") -> Path:
        """A separate PAFO_HOME for a case that breaks the registry (kept out of the leftover-files check)."""
        home = self.tmp / name
        home.mkdir()
        self.monkeypatch.setenv("PAFO_HOME", str(home))
        return home


# A case: (ctx) -> (argv, expected exit code, fragments the stderr line must contain).
Case = Callable[[Ctx], tuple[list, int, list[str]]]


def experiment(*flags) -> Case:
    return lambda ctx: (["experiment", *TFIDF, *flags], EXIT_INPUT, [flags[0]])


def option(flag: str, value: str, *fragments: str) -> tuple[str, Case]:
    """A numeric option out of its range or not finite, in ``pafo experiment``."""
    return f"{flag.lstrip('-')}={value}", lambda ctx: (["experiment", *TFIDF, flag, value], EXIT_INPUT,
                                                     [flag, *fragments])


def _score(ctx: Ctx, run_dir: Path, *extra: str) -> list:
    triples = ctx.file("triples.csv", "user_id,prompt,response\nu0000,How?,Like this.\n")
    return ["score", "--run-dir", str(run_dir), "--input", str(triples), *extra]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _shape_mismatch(ctx: Ctx) -> tuple[list, int, list[str]]:
    run = ctx.run_copy()
    config = json.loads((run / "weights" / "pafo.json").read_text())
    (run / "weights" / "pafo.json").write_text(json.dumps({**config, "hidden": config["hidden"] + 1}))
    (run / "manifest.json").unlink()  # an older run folder (no manifest): the loader itself must say it
    return _score(ctx, run), EXIT_INPUT, ["pafo.safetensors", "damaged", "size mismatch"]


def _damaged_weights(damage: Callable[[Path], None], *, keep_manifest: bool) -> Case:
    def case(ctx: Ctx):
        run = ctx.run_copy()
        damage(run / "weights" / "pafo.safetensors")
        if not keep_manifest:
            (run / "manifest.json").unlink()
        fragment = "does not match the checksum" if keep_manifest else "pafo.safetensors"
        return _score(ctx, run), EXIT_INPUT, ["damaged", fragment]
    return case


def _locked(ctx: Ctx):
    home = ctx.home()
    RunRegistry(home).close()
    ctx.monkeypatch.setattr(registry_module, "DEFAULT_LOCK_TIMEOUT", 0.3)
    blocker = sqlite3.connect(home / "runs.sqlite", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    ctx.monkeypatch.setattr(ctx, "blocker", blocker, raising=False)  # kept open until the test ends
    return ["runs", "start", *TFIDF], EXIT_ENVIRONMENT, ["stayed locked"]


def _corrupt_db(ctx: Ctx):
    home = ctx.home()
    (home / "runs.sqlite").write_bytes(b"not a database " * 500)
    return ["runs", "list"], EXIT_ENVIRONMENT, ["runs.sqlite", "damaged", "pafo runs rebuild"]


def _truncated_db(ctx: Ctx):
    home = ctx.home()
    shutil.copy(ctx.earlier.home / "runs.sqlite", home / "runs.sqlite")
    with open(home / "runs.sqlite", "r+b") as fh:
        fh.truncate(4096 * 2)
    return ["runs", "list"], EXIT_ENVIRONMENT, ["runs.sqlite", "damaged", "pafo runs rebuild"]


def _readonly_db(ctx: Ctx):
    ctx.home()

    def refuse(*args, **kwargs):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    ctx.monkeypatch.setattr(registry_module.sqlite3, "connect", refuse)
    return ["runs", "list"], EXIT_ENVIRONMENT, ["cannot be written", "writable"]


def _disk_full(ctx: Ctx):
    out = ctx.tmp / "out.json"

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    ctx.monkeypatch.setattr(cli, "atomic_write_text", full)
    return ["support", *DATA, "--json", str(out)], EXIT_ENVIRONMENT, ["disk full while writing", str(out)]


def _bad_concurrency(ctx: Ctx):
    ctx.monkeypatch.setenv("PAFO_MAX_CONCURRENT", "two")
    return ["runs", "list"], EXIT_INPUT, ["PAFO_MAX_CONCURRENT", "'two'"]


def _home_is_file(ctx: Ctx):
    home = ctx.file("home-file", "I am a file")
    ctx.monkeypatch.setenv("PAFO_HOME", str(home))
    return ["runs", "list"], EXIT_INPUT, ["PAFO_HOME", "not a folder"]


def _home_unwritable(ctx: Ctx):
    ctx.monkeypatch.setenv("PAFO_HOME", "/sys/pafo-home")  # even root cannot create folders in sysfs
    return ["runs", "list"], EXIT_ENVIRONMENT, ["PAFO_HOME", "cannot be created"]


CASES: dict[str, Case] = dict([
    # ---- numeric options: finite, within range, limits stated
    option("--lr", "nan", "finite"),
    option("--lr", "-1", "> 0"),
    option("--lr", "inf", "finite"),
    option("--weight-decay", "nan", "finite"),
    option("--user-l2", "inf", "finite"),
    option("--lambda", "inf", "finite"),
    option("--hidden", "0", "≥ 1"),
    option("--hidden", "1e8", "≤ 16384"),
    option("--k", "0", "≥ 1"),
    option("--patience", "-1", "≥ 1"),
    option("--seed", "-1", "≥ 0"),
    option("--epochs", "0", "≥ 1"),
    option("--batch-size", "0", "≥ 1"),
    option("--users", "10000000", "≤ 300000"),
    option("--train-pairs", "1e8", "≤ 1000"),
    option("--bootstrap", "1e9", "≤ 10000"),
    option("--bootstrap", "5", "≥ 10"),
    option("--alpha", "inf", "finite"),
    option("--quality-noise", "nan", "finite"),
    option("--temperature", "0", "> 0"),
    option("--dense", "-1", "≥ 0"),
    option("--finetune-patience", "0", "≥ 1"),
    option("--dro-step", "0", "> 0"),
    option("--epsilon", "nan", "finite"),
    option("--test-pairs", "0", "≥ 1"),
    option("--minority-homogeneity", "2", "≤ 1"),
    option("--judges", "9", "≤ 6"),
    option("--val-fraction", "1", "< 1"),
    option("--teacher-user-l2", "-1", "≥ 0"),
    option("--user-lr-scale", "0", "> 0"),
    option("--prompts", "1", "≥ 2"),
    option("--minority-quantile", "1.5", "< 1"),
    ("epochs-not-whole", experiment("--epochs", "2.5")),
    ("lr-not-a-number", experiment("--lr", "fast")),
    ("users-not-a-number", experiment("--users", "many")),
    ("unknown-method", lambda ctx: (["experiment", *TFIDF, "--methods", "baseline,magic"], EXIT_INPUT,
                                    ["--methods", "'magic'"])),
    ("unknown-encoder", lambda ctx: (["experiment", *DATA, *FAST, "--encoder", "no-such/encoder"], EXIT_INPUT,
                                     ["'no-such/encoder'", "offline"])),
    # ---- output paths: checked before any work
    ("json-is-a-folder", lambda ctx: (["experiment", *TFIDF, "--json", str(ctx.tmp)], EXIT_INPUT,
                                      ["--json", "is a folder"])),
    ("json-under-a-file", lambda ctx: (["experiment", *TFIDF, "--json", str(ctx.file("f", "x") / "out.json")],
                                       EXIT_INPUT, ["--json", "is a file, not a folder"])),
    ("json-unwritable", lambda ctx: (["support", *DATA, "--json", "/sys/pafo-out.json"], EXIT_INPUT,
                                     ["--json", "cannot write in /sys"])),
    ("per-user-csv-is-a-folder", lambda ctx: (["experiment", *TFIDF, "--per-user-csv", str(ctx.tmp)], EXIT_INPUT,
                                              ["--per-user-csv", "is a folder"])),
    ("out-dir-is-a-file", lambda ctx: (["experiment", *TFIDF, "--out-dir", str(ctx.file("out", "x"))], EXIT_INPUT,
                                       ["--out-dir", "is a file"])),
    ("out-dir-holds-other-files", lambda ctx: (["experiment", *TFIDF, "--out-dir",
                                                str(ctx.file("mine/notes.txt", "x").parent)], EXIT_INPUT,
                                               ["--out-dir", "not a PAFO run", "notes.txt"])),
    ("support-csv-is-a-folder", lambda ctx: (["support", *DATA, "--csv", str(ctx.tmp)], EXIT_INPUT,
                                             ["--csv", "is a folder"])),
    ("support-json-device", lambda ctx: (["support", *DATA, "--json", "/dev/null"], EXIT_INPUT,
                                         ["--json", "not a regular file"])),
    ("embed-json-is-a-folder", lambda ctx: (["embed", *DATA, "--encoder", "tfidf", "--json", str(ctx.tmp)],
                                            EXIT_INPUT, ["--json", "is a folder"])),
    ("score-csv-is-a-folder", lambda ctx: (_score(ctx, ctx.earlier.out_dir, "--csv", str(ctx.tmp)), EXIT_INPUT,
                                           ["--csv", "is a folder"])),
    # ---- data files: refused before reading unless a regular, well-formed file
    ("path-is-a-fifo", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.fifo("x.csv"))], EXIT_INPUT,
                                    ["x.csv", "named pipe"])),
    ("score-input-is-a-fifo", lambda ctx: (["score", "--run-dir", str(ctx.earlier.out_dir), "--input",
                                            str(ctx.fifo("in.csv"))], EXIT_INPUT, ["in.csv", "named pipe"])),
    ("path-links-to-dev-zero", lambda ctx: (["support", "--dataset", "pairs", "--path",
                                             str(ctx.link("zero.csv", "/dev/zero"))], EXIT_INPUT,
                                            ["zero.csv", "character device"])),
    ("path-is-dev-null", lambda ctx: (["support", "--dataset", "pairs", "--path", "/dev/null"], EXIT_INPUT,
                                      ["/dev/null", "not a regular file"])),
    ("path-is-a-symlink-loop", lambda ctx: (["support", "--dataset", "pairs", "--path",
                                             str(ctx.link("loop.csv", ctx.tmp / "loop.csv"))], EXIT_INPUT,
                                            ["loop.csv", "loops back on itself"])),
    ("dsp-path-is-a-fifo", lambda ctx: (["support", "--dataset", "dsp", "--path", str(ctx.fifo("dsp.json"))],
                                        EXIT_INPUT, ["dsp.json", "named pipe"])),
    ("jsonl-mixes-objects-and-lists", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "mixed.jsonl", '{"user_id": "a", "prompt": "p", "chosen": "x", "rejected": "y"}\n["a", "p", "x", "y"]\n'))],
        EXIT_INPUT, ["mixed.jsonl", "line 2 is a JSON list"])),
    ("json-mixes-objects-and-lists", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "mixed.json", '[{"user_id": "a", "prompt": "p", "chosen": "x", "rejected": "y"}, ["a"]]'))], EXIT_INPUT,
        ["mixed.json", "item 1 is a JSON list"])),
    ("dsp-given-a-csv", lambda ctx: (["support", "--dataset", "dsp", "--path", str(ctx.pairs())], EXIT_INPUT,
                                     ["pairs.csv", "DSP JSON file"])),
    ("dsp-given-invalid-json", lambda ctx: (["support", "--dataset", "dsp", "--path", str(ctx.file(
        "dsp.json", '[{"query": "q", "responses": {\n'))], EXIT_INPUT, ["dsp.json", "invalid JSON at line 2"])),
    ("missing-file", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.tmp / "nope.csv")],
                                  EXIT_INPUT, ["nope.csv", "no such file"])),
    ("folder-not-file", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.tmp)], EXIT_INPUT,
                                     ["is a folder"])),
    ("not-utf8", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "latin1.csv", PAIRS_HEADER.encode() + "u1,caf\xe9,a,b\n".encode("latin-1")))], EXIT_INPUT,
        ["latin1.csv", "not UTF-8"])),
    ("invalid-json", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "pairs.json", '[{"user_id": "a",}]'))], EXIT_INPUT, ["pairs.json", "invalid JSON"])),
    ("unknown-format", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "pairs.txt", PAIRS_HEADER))], EXIT_INPUT, ["'.txt'"])),
    ("missing-columns", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "cols.csv", "user_id,prompt,chosen\na,b,c\n"))], EXIT_INPUT, ["missing column", "rejected"])),
    ("header-only", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "head.csv", PAIRS_HEADER))], EXIT_INPUT, ["head.csv", "no rows"])),
    ("chosen-equals-rejected", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "same.csv", PAIRS_HEADER + "u1,p,same,same\n"))], EXIT_INPUT, ["row 1", "chosen equals rejected"])),
    ("empty-cell", lambda ctx: (["support", "--dataset", "pairs", "--path", str(ctx.file(
        "blank.csv", PAIRS_HEADER + "u1, ,a,b\n"))], EXIT_INPUT, ["row 1", "prompt is empty"])),
    ("unknown-share-key", lambda ctx: (["support", *DATA, "--shares", "nobody=1"], EXIT_INPUT, ["'nobody'"])),
    # ---- scoring: only the run's own, whole methods
    ("score-method-path-trick", lambda ctx: (_score(ctx, ctx.earlier.out_dir, "--method", "../../run/weights/pafo"),
                                             EXIT_INPUT, ["no weights for method '../../run/weights/pafo'"])),
    ("score-method-not-in-run", lambda ctx: (_score(ctx, ctx.earlier.out_dir, "--method", "groupdro"), EXIT_INPUT,
                                             ["'groupdro'", "baseline, pafo"])),
    ("score-truncated-weights", _damaged_weights(_truncate, keep_manifest=False)),
    ("score-random-weights", _damaged_weights(lambda p: p.write_bytes(os.urandom(4000)), keep_manifest=False)),
    ("score-weights-changed-since-published", _damaged_weights(_truncate, keep_manifest=True)),
    ("score-weights-json-shape-mismatch", _shape_mismatch),
    ("score-not-a-run", lambda ctx: (_score(ctx, ctx.tmp), EXIT_INPUT, ["not a finished run directory"])),
    ("score-unknown-run-id", lambda ctx: (["score", "--run", "20000101-000000-abcdef", "--input",
                                           str(ctx.file("t.csv", "user_id,prompt,response\na,b,c\n"))], EXIT_INPUT,
                                          ["unknown run id"])),
    ("score-input-missing-columns", lambda ctx: (["score", "--run-dir", str(ctx.earlier.out_dir), "--input",
                                                  str(ctx.file("t.csv", "user,prompt\na,b\n"))], EXIT_INPUT,
                                                 ["missing column", "response"])),
    # ---- background runs: validated exactly as `pafo experiment`, before anything is queued
    ("runs-wait-timeout-nan", lambda ctx: (["runs", "wait", ctx.earlier.run_id, "--timeout", "nan"], EXIT_INPUT,
                                           ["--timeout", "nan"])),
    ("runs-wait-timeout-inf", lambda ctx: (["runs", "wait", ctx.earlier.run_id, "--timeout", "inf"], EXIT_INPUT,
                                           ["--timeout", "inf"])),
    ("runs-wait-timeout-negative", lambda ctx: (["runs", "wait", ctx.earlier.run_id, "--timeout=-1"], EXIT_INPUT,
                                                ["--timeout", "-1"])),
    ("runs-start-seed-negative", lambda ctx: (["runs", "start", *TFIDF, "--seed", "-1"], EXIT_INPUT, ["--seed"])),
    ("runs-start-oversize-users", lambda ctx: (["runs", "start", *TFIDF, "--users", "10000000"], EXIT_INPUT,
                                               ["--users", "≤ 300000"])),
    ("runs-start-missing-path", lambda ctx: (["runs", "start", "--encoder", "tfidf", *FAST, "--dataset", "pairs",
                                              "--path", str(ctx.tmp / "gone.csv")], EXIT_INPUT,
                                             ["gone.csv", "no such file"])),
    ("runs-start-unknown-encoder", lambda ctx: (["runs", "start", *DATA, *FAST, "--encoder", "no-such/encoder"],
                                                EXIT_INPUT, ["'no-such/encoder'"])),
    ("runs-start-dsp-given-a-csv", lambda ctx: (["runs", "start", *FAST, "--encoder", "tfidf", "--dataset", "dsp",
                                                 "--path", str(ctx.pairs())], EXIT_INPUT, ["DSP JSON file"])),
    ("runs-start-lr-nan", lambda ctx: (["runs", "start", *TFIDF, "--lr", "nan"], EXIT_INPUT, ["--lr", "finite"])),
    ("runs-show-unknown", lambda ctx: (["runs", "show", "nope"], EXIT_INPUT, ["unknown run id 'nope'"])),
    ("runs-cancel-unknown", lambda ctx: (["runs", "cancel", "nope"], EXIT_INPUT, ["unknown run id 'nope'"])),
    ("runs-bad-concurrency", _bad_concurrency),
    # ---- the environment: exit 3, except a setting the user mistyped
    ("home-is-a-file", _home_is_file),
    ("home-unwritable", _home_unwritable),
    ("registry-locked", _locked),
    ("registry-corrupt", _corrupt_db),
    ("registry-truncated", _truncated_db),
    ("registry-read-only", _readonly_db),
    ("disk-full", _disk_full),
])




def _leftovers(tmp: Path) -> set[Path]:
    return {p for p in tmp.rglob("*") if not p.relative_to(tmp).parts[0].startswith("home")}


@pytest.mark.timeout(300)  # a FIFO read by mistake would block forever: fail instead
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, earlier, tmp_path, capsys, monkeypatch):
    """Regression corpus: exit 2 (or 3 for the environment), one stderr line naming the problem, no traceback,
    nothing left behind, and the earlier runs' files and registry rows unchanged."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.delenv("PAFO_DEBUG", raising=False)
    before_earlier = snapshot(earlier)
    argv, expected, fragments = CASES[case](Ctx(tmp_path, earlier, monkeypatch))
    before = _leftovers(tmp_path)
    code, out, err = run_cli(argv, capsys)
    lines = err.splitlines()
    assert (code, out) == (expected, ""), (code, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("pafo") and ": error: " in lines[0], lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert _leftovers(tmp_path) == before  # no output, staging folder or temp file left behind
    assert snapshot(earlier) == before_earlier


def test_the_corpus_is_large():
    """Issue 11: the 40 inputs that failed plus the ones that already worked, at least 60 in all."""
    assert len(CASES) >= 60


# ------------------------------------------------------------------------------------------- other faults


def _pafo(*argv: str, home: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PAFO_HOME": str(home), "PYTHONPATH": str(PACKAGE_ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pafo.cli", *argv], env=env, timeout=600, check=False, **kwargs)


def test_closed_stdout_is_not_a_traceback(earlier):
    """Regression: `pafo runs list --json | head -c 10` printed a BrokenPipeError traceback. The reader is gone
    before anything is written here (its end of the pipe is closed), so the failure is certain, not a race."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = _pafo("runs", "list", "--json", home=earlier.home, stdout=write_end, stderr=subprocess.PIPE)
    finally:
        os.close(write_end)
    assert proc.stderr == b"", proc.stderr.decode()
    assert proc.returncode == cli.EXIT_BROKEN_PIPE


def test_no_progress_bars_when_stderr_is_not_a_terminal(earlier, tmp_path):
    """Regression: tqdm bars filled logs and broke the one-line-per-error stderr when it was not a terminal."""
    proc = _pafo("embed", *DATA, "--encoder", "tfidf", "--no-cache", "--json", str(tmp_path / "t.json"),
                 home=earlier.home, capture_output=True, text=True)
    # Only the one line naming the file written (so --json is not silent); no bar.
    assert proc.returncode == 0 and proc.stderr == f"pafo: wrote {tmp_path / 't.json'}\n", proc.stderr


def test_reused_out_dir_is_replaced_whole_never_merged(earlier, tmp_path, capsys, monkeypatch):
    """Regression: `cp -r runA mix; pafo experiment --methods baseline --out-dir mix` left mix/weights/pafo.* of
    runA, and `pafo score --run-dir mix --method pafo` scored with it. The new run replaces the folder whole."""
    monkeypatch.setenv("PAFO_HOME", str(earlier.home))
    mix = Path(shutil.copytree(earlier.out_dir, tmp_path / "mix"))
    code = cli.main(["experiment", *DATA, "--encoder", "minilm", *FAST, "--methods", "baseline", "--out-dir",
                     str(mix)])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (mix / "weights").iterdir()) == ["baseline.json", "baseline.newusers.json",
                                                                   "baseline.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mix"]  # no staging or replaced folder left
    assert json.loads((mix / "manifest.json").read_text())["sha256"]["weights/baseline.safetensors"]
    capsys.readouterr()
    triples = tmp_path.parent / f"{tmp_path.name}-triples.csv"
    triples.write_text("user_id,prompt,response\nu0000,How?,Like this.\n")
    code, _out, err = run_cli(["score", "--run-dir", mix, "--method", "pafo", "--input", triples], capsys)
    assert code == 2 and "no weights for method 'pafo' (it has: baseline)" in err
    assert run_cli(["score", "--run-dir", mix, "--method", "baseline", "--input", triples], capsys)[0] == 0


def test_non_finite_loss_stops_training_with_a_clear_error(tmp_path, capsys, monkeypatch):
    """Regression: `--lr nan` (and a learning rate so large the weights overflow) reported every accuracy 0.0 and
    a "perfectly fair" model. Training that goes non-finite stops; nothing is reported or written."""
    import numpy as np
    import torch

    from pafo.errors import TrainingDivergedError
    from pafo.method_configs import TrainConfig
    from pafo.models import RewardModel
    from pafo.training import PairSet, train_model

    features = torch.full((4, 3), float("nan"))
    pairs = PairSet(np.array([0, 1]), np.array([2, 3]), np.array([0, 1]), group=np.array([0, 1]))
    with pytest.raises(TrainingDivergedError, match=r"training diverged at epoch 1 \(loss nan\)"):
        train_model(RewardModel(3, 2, hidden=4, k=2), features, pairs, pairs, TrainConfig(epochs=2))
    monkeypatch.setenv("PAFO_HOME", str(tmp_path / "home"))
    out_dir, result = tmp_path / "out", tmp_path / "result.json"
    code, out, err = run_cli(["experiment", *TFIDF, "--lr", "1e30", "--json", result, "--out-dir", out_dir], capsys)
    assert (code, out) == (2, "") and len(err.splitlines()) == 1
    assert "baseline: training diverged at epoch 1" in err and "lower --lr" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no result, no out-dir, no staging folder


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_app_path_input_refuses_files_that_never_end(kind, earlier, tmp_path, monkeypatch):
    """The Data page's path box goes through the same check as the CLI: a FIFO or a link to /dev/zero is an
    st.error naming it, not a page that hangs or runs out of memory."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PAFO_HOME", str(tmp_path / "home"))
    # /dev a data root too, so the link to /dev/zero meets the regular-file check and not the data-roots one
    monkeypatch.setenv("PAFO_DATA_ROOTS", os.pathsep.join([str(tmp_path), "/dev"]))
    path = tmp_path / "x.csv"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    at = AppTest.from_file(str(PACKAGE_ROOT / "app.py"), default_timeout=120).run()
    at.segmented_control(key="data_source").set_value("pairs").run()
    at.text_input(key="path_pairs").set_value(str(path))
    at.form_submit_button[0].click().run()
    assert not at.exception, [e.value for e in at.exception]
    messages = [e.value for e in at.error]
    assert any(str(path) in m and "not a regular file" in m for m in messages), messages
    assert at.session_state["data_config"]["dataset"] == "synthetic"  # the previous dataset stays current
