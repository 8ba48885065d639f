"""Integrity (issue 18): nothing of the user's is ever overwritten, and a result is served only for its own config
and data.

Each test drives the real CLI (or the registry) the way a user would get it wrong, and asserts the README's
contract: the documented exit code with one stderr line, no file of the user's changed or deleted, nothing stale
served. Every test fails on the code before issue 18.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from pafo import cli
from pafo.errors import EXIT_ENVIRONMENT, EXIT_INPUT
from pafo.paths import PACKAGE_ROOT
from pafo.registry import SUCCEEDED, RunRegistry
from pafo.sources import DataConfig, dataset_fingerprint, load_dataset

DATA = ["--users", "12", "--prompts", "8", "--responses-per-prompt", "4", "--train-pairs", "4", "--test-pairs", "2"]
FAST = ["--epochs", "2", "--patience", "1", "--bootstrap", "10"]
TFIDF = [*DATA, "--encoder", "tfidf", *FAST]


@dataclass
class Published:
    """Finished runs made once for the module: a home with one background run, and two ``--out-dir`` runs."""

    home: Path
    run_id: str
    tfidf_dir: Path  # `pafo experiment --out-dir` with the TF-IDF encoder
    minilm_dir: Path  # the same data with MiniLM (another config; a run that can score new text)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Published:
    root = tmp_path_factory.mktemp("published")
    home = root / "home"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (("PAFO_HOME", str(home)), ("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                            ("PYTHONPATH", str(PACKAGE_ROOT))):
            patch.setenv(name, value)
        patch.delenv("PAFO_MAX_CONCURRENT", raising=False)
        assert cli.main(["experiment", *TFIDF, "--out-dir", str(root / "tfidf")]) == 0
        assert cli.main(["experiment", *DATA, "--encoder", "minilm", *FAST, "--out-dir", str(root / "minilm")]) == 0
        registry = RunRegistry(home)
        run_id = registry.submit_config(_config(TFIDF)).id
        assert registry.wait(run_id, timeout=600).status == SUCCEEDED
        registry.close()
    return Published(home, run_id, root / "tfidf", root / "minilm")


def _config(flags: list[str]):
    return cli.experiment_config_from_args(cli.build_parser().parse_args(["experiment", *flags]))


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the sha256 of its content."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def home_copy(published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the published home (its registry and run folders) as ``$PAFO_HOME``."""
    home = Path(shutil.copytree(published.home, tmp_path / "home"))
    monkeypatch.setenv("PAFO_HOME", str(home))
    return home


def refused(result: tuple[int, str, str], code: int, *fragments: str) -> str:
    """The contract of a refusal: exit ``code``, nothing on stdout, one stderr line naming the problem."""
    status, out, err = result
    lines = err.splitlines()
    assert (status, out) == (code, ""), (status, err)
    assert len(lines) == 1 and lines[0].startswith("pafo") and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def pairs_file(path: Path, n_users: int = 6, n_prompts: int = 12) -> Path:
    """A pairs CSV every user labels on every prompt (the user's preferred answer varies with the user)."""
    rows = [{"user_id": f"u{u}", "prompt": f"How do I do task {p}?",
             "chosen": f"Answer {(u + p) % 2} to task {p}: step {(u + p) % 2}.",
             "rejected": f"Answer {(u + p + 1) % 2} to task {p}: step {(u + p + 1) % 2}."}
            for u in range(n_users) for p in range(n_prompts)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def swap_labels_in_place(path: Path, row: int = 0) -> None:
    """Swap chosen and rejected of one row, keeping the size and the modification time (`touch -d`)."""
    before = path.stat()
    frame = pd.read_csv(path)
    frame.loc[row, ["chosen", "rejected"]] = frame.loc[row, ["rejected", "chosen"]].to_numpy()
    frame.to_csv(path, index=False)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns


# ------------------------------------------------------------------------------------------- data loss


def _foreign(kind: str, folder: Path, published: Published) -> None:
    if kind == "result.json and a thesis":
        (folder / "result.json").write_text("{}")
        (folder / "thesis.tex").write_text("thesis")
    elif kind == "browser extension":
        (folder / "manifest.json").write_text('{"manifest_version": 3, "name": "my extension", "version": "1.0"}')
        (folder / "index.html").write_text("<html></html>")
    elif kind == "run plus a note":
        (folder / "notes.txt").write_text("my notes")
    elif kind == "run with an edited table":
        with open(folder / "per_user.csv", "a") as fh:
            fh.write("my own row\n")


@pytest.mark.parametrize("kind", ["result.json and a thesis", "browser extension", "run plus a note",
                                  "run with an edited table"])
def test_out_dir_is_replaced_only_when_it_holds_exactly_an_earlier_run(kind, published, tmp_path, capsys):
    """Regression: `--out-dir proj` wiped proj/thesis.tex because proj held a result.json (or a browser extension's
    manifest.json). A folder is replaced only when its manifest proves it is a PAFO run and it holds nothing else,
    unchanged; otherwise exit 2 and not one byte changes."""
    folder = tmp_path / "proj"
    if kind.startswith("run"):
        shutil.copytree(published.tfidf_dir, folder)
    else:
        folder.mkdir()
    _foreign(kind, folder, published)
    before = tree(tmp_path)
    refused(run_cli(["experiment", *TFIDF, "--out-dir", folder], capsys), EXIT_INPUT, "--out-dir", str(folder))
    assert tree(tmp_path) == before


def test_a_file_put_in_the_out_dir_while_the_run_trains_is_kept(published, tmp_path, monkeypatch, capsys,
                                                                 single_thread):
    """Regression: --out-dir was checked before training only, so a file the user saved into the earlier run's
    folder while the new run trained was deleted with it when the run was published. The folder is checked again
    at the swap; it is put back as it is and the run refused."""
    import pafo.experiment

    out = Path(shutil.copytree(published.tfidf_dir, tmp_path / "out"))
    real = pafo.experiment.run_experiment

    def run_and_meanwhile_save_a_note(*args, **kwargs):
        (out / "notes.txt").write_text("written while the run trained")
        return real(*args, **kwargs)

    monkeypatch.setattr(pafo.experiment, "run_experiment", run_and_meanwhile_save_a_note)
    before = tree(published.tfidf_dir)
    refused(run_cli(["experiment", *TFIDF, "--out-dir", out], capsys), EXIT_INPUT, "changed while the run trained",
            "notes.txt")
    assert tree(out) == {**before, "notes.txt": hashlib.sha256(b"written while the run trained").hexdigest()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or replaced folder left


def test_outputs_inside_the_run_registry_are_refused(published, tmp_path, monkeypatch, capsys):
    """Regression: `--out-dir $PAFO_HOME/runs/<id>` replaced a background run's folder (its config, status and log
    deleted), after which the registry served the other experiment's result for the original config."""
    home = home_copy(published, tmp_path, monkeypatch)
    run_dir = home / "runs" / published.run_id
    before = tree(home / "runs")
    refused(run_cli(["experiment", *TFIDF, "--out-dir", run_dir], capsys), EXIT_INPUT, "--out-dir",
            "inside the run registry")
    refused(run_cli(["experiment", *TFIDF, "--json", run_dir / "x.json"], capsys), EXIT_INPUT, "--json",
            "inside the run registry")
    refused(run_cli(["support", *DATA, "--csv", home / "runs" / "users.csv"], capsys), EXIT_INPUT, "--csv")
    assert tree(home / "runs") == before


def _conflict(case: str, tmp: Path, published: Published) -> tuple[list, str]:
    """(argv, the flag the message names) of a command whose output is one of its inputs."""
    data = pairs_file(tmp / "X.csv")
    if case == "csv is the data":
        return ["support", "--dataset", "pairs", "--path", data, "--csv", data], "--csv"
    if case == "csv is a symlink to the data":
        (tmp / "link.csv").symlink_to(data)
        return ["support", "--dataset", "pairs", "--path", data, "--csv", tmp / "link.csv"], "--csv"
    if case == "json is a hard link to the data":
        os.link(data, tmp / "hard.csv")
        return ["support", "--dataset", "pairs", "--path", data, "--json", tmp / "hard.csv"], "--json"
    if case == "per-user csv is the predictions":
        preds = tmp / "preds.csv"
        pd.read_csv(data).assign(margin=1.0).to_csv(preds, index=False)
        return ["audit", "--dataset", "pairs", "--path", data, "--split", "all", "--predictions", f"m={preds}",
                "--per-user-csv", preds], "--per-user-csv"
    if case == "two outputs are one file":
        return ["support", "--dataset", "pairs", "--path", data, "--json", tmp / "o.txt", "--csv", tmp / "o.txt"], \
            "--csv"
    run = Path(shutil.copytree(published.minilm_dir, tmp / "run"))
    if case == "json inside the out-dir":
        return ["experiment", *TFIDF, "--json", run / "result.json", "--out-dir", run], "--json"
    if case == "score csv inside the run read":
        triples = tmp / "triples.csv"
        triples.write_text("user_id,prompt,response\nu0000,How?,Like this.\n")
        return ["score", "--run-dir", run, "--input", triples, "--csv", run / "per_user.csv"], "--csv"
    if case == "out-dir holds the data":
        inside = pairs_file(run / "pairs.csv")
        return ["experiment", *FAST, "--encoder", "tfidf", "--dataset", "pairs", "--path", inside, "--out-dir", run], \
            "--out-dir"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["csv is the data", "csv is a symlink to the data", "json is a hard link to the data",
                                  "per-user csv is the predictions", "two outputs are one file",
                                  "json inside the out-dir", "score csv inside the run read",
                                  "out-dir holds the data"])
def test_an_output_never_overwrites_an_input(case, published, tmp_path, capsys):
    """Regression: `pafo support --dataset pairs --path X.csv --csv X.csv` replaced the dataset with its support
    table, and `audit --per-user-csv` onto the predictions file replaced the predictions. One check for every
    command refuses an output that is an input (same file after resolving links, or a hard link to it), lies in a
    folder the command reads or replaces, or is another output's path."""
    argv, flag = _conflict(case, tmp_path, published)
    before = tree(tmp_path)
    refused(run_cli(argv, capsys), EXIT_INPUT, flag)
    assert tree(tmp_path) == before


@pytest.mark.parametrize("fault", ["disk full", "interrupted"])
def test_a_failed_publish_leaves_no_staging_folder_and_names_the_file(fault, published, tmp_path, monkeypatch, capsys,
                                                                       single_thread):
    """Regression: a full disk while the run was published left the staging folder `.out.XXXX` behind (the disk
    stayed full) and the message said "a file". Staging is removed on every failure path (Ctrl-C too), the earlier
    run in --out-dir is kept as it was, and the message names the file under --out-dir."""
    out = Path(shutil.copytree(published.tfidf_dir, tmp_path / "out"))
    before = tree(tmp_path)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:  # the manifest's write hits the full disk, as write() would: no file name
        if ".manifest.json." in os.readlink(f"/proc/self/fd/{fd}"):
            if fault == "interrupted":
                raise KeyboardInterrupt
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    result = run_cli(["experiment", *TFIDF, "--out-dir", out], capsys)
    if fault == "disk full":
        refused(result, EXIT_ENVIRONMENT, "disk full while writing", str(out / "manifest.json"))
    else:
        assert result[0] == 130 and result[2] == "pafo: interrupted\n", result
    assert tree(tmp_path) == before  # no staging folder, no temp file, the earlier run untouched


# ------------------------------------------------------------------------------------------- wrong config or data


def test_reuse_and_score_check_that_the_run_folder_holds_the_config_asked_for(published, tmp_path, monkeypatch,
                                                                              capsys):
    """Regression: reuse trusted a run folder's checksums but not what it was the result of; a folder holding
    another experiment's (valid, checksummed) result was reused for the original config, and `pafo score --run`
    scored with the other experiment's model. The manifest names the config hash and dataset fingerprint, and both
    are compared before reuse and before scoring."""
    home = home_copy(published, tmp_path, monkeypatch)
    run_dir = home / "runs" / published.run_id
    for path in sorted(published.minilm_dir.rglob("*")):  # another config's whole published result, over this run's
        if path.is_file():
            target = run_dir / path.relative_to(published.minilm_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    registry = RunRegistry(home)
    again = registry.submit_config(_config(TFIDF), start=False)
    assert again.reused_from is None and again.status == "queued"
    registry.close()
    triples = tmp_path / "triples.csv"
    triples.write_text("user_id,prompt,response\nu0000,How?,Like this.\n")
    refused(run_cli(["score", "--run", published.run_id, "--input", triples, "--method", "baseline"], capsys),
            EXIT_INPUT, "another config")


def test_dataset_fingerprint_is_the_files_content_cached_by_its_stat(tmp_path, monkeypatch):
    """Regression: the fingerprint was path + size + mtime, so a pairs file with two labels swapped in place (same
    size) and its mtime set back (`touch -d`) was the same data, and its finished runs were reused. It is now a
    hash of the content, cached by the file's stat (ctime included: `touch -d` cannot set it back)."""
    data = pairs_file(tmp_path / "pairs.csv")
    config = DataConfig(dataset="pairs", path=str(data))
    first = dataset_fingerprint(config)
    swap_labels_in_place(data)
    assert dataset_fingerprint(config) != first
    from pafo import digests
    # The cache: a file last changed long before it was hashed is read once, then served by its stat key.
    monkeypatch.setattr(digests, "_now_ns", lambda: data.stat().st_ctime_ns + 10**10)
    digest = digests.file_digest(data)
    monkeypatch.setattr(digests, "_MEMO", {})

    def unread(path: Path) -> str:
        raise AssertionError(f"{path} was read again")

    monkeypatch.setattr(digests, "_sha256", unread)
    assert digests.file_digest(data) == digest == hashlib.sha256(data.read_bytes()).hexdigest()
    assert digest in json.dumps(json.loads((Path(os.environ["PAFO_HOME"]) / digests.CACHE_NAME).read_text()))


def test_audit_of_a_run_folder_after_its_data_changed_in_place_is_refused(tmp_path, capsys, single_thread):
    """Regression: auditing a run folder checked only that the data options matched, so after a training label of
    the pairs file was swapped in place (mtime kept) the run's margins were audited against data the run never
    saw (other support rates and groups). The manifest's fingerprint is compared with the data's content now."""
    data = pairs_file(tmp_path / "pairs.csv")
    flags = ["--dataset", "pairs", "--path", data]
    code, _, err = run_cli(["experiment", *flags, "--encoder", "tfidf", *FAST, "--methods", "baseline", "--out-dir",
                            tmp_path / "run"], capsys)
    assert code == 0, err
    audit = ["audit", *flags, "--split", "test", "--predictions", f"baseline={tmp_path / 'run'}", "--bootstrap", "10"]
    assert run_cli(audit, capsys)[0] == 0  # the same data: audited
    test_prompts = set(load_dataset(DataConfig(dataset="pairs", path=str(data))).pair_table("test")["prompt"])
    train_rows = (~pd.read_csv(data)["prompt"].isin(test_prompts)).to_numpy().nonzero()[0]
    swap_labels_in_place(data, row=int(train_rows[-1]))  # the last user's label of a train pair: pair ids unchanged
    refused(run_cli(audit, capsys), EXIT_INPUT, str(tmp_path / "run"), "other data")


def test_audit_of_a_run_folder_verifies_its_checksums(published, tmp_path, capsys):
    """Regression: `pafo audit --predictions NAME=RUN_DIR` read test_margins.csv without checking the manifest, so
    a margins file edited to agree with every label gave 100% accuracy. The folder must match its manifest."""
    run = Path(shutil.copytree(published.tfidf_dir, tmp_path / "run"))
    margins = pd.read_csv(run / "test_margins.csv")
    margins.assign(margin_baseline=10.0).to_csv(run / "test_margins.csv", index=False)  # "always right"
    audit = ["audit", *DATA, "--predictions", f"baseline={run}", "--bootstrap", "10"]
    refused(run_cli(audit, capsys), EXIT_INPUT, str(run), "test_margins.csv", "checksum")
    (run / "manifest.json").unlink()
    refused(run_cli(audit, capsys), EXIT_INPUT, str(run), "no manifest.json")


def _tiny_bert(folder: Path, seed: int) -> Path:
    """A 1-layer, 16-d BERT with MiniLM's tokenizer files: a local encoder folder small enough for a test."""
    import torch
    from transformers import BertConfig, BertModel

    from pafo.encoders import minilm_model_path

    torch.manual_seed(seed)
    config = BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    BertModel(config).save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(minilm_model_path() / name, folder / name)
    return folder


def test_local_encoder_cache_follows_the_folders_weights(tmp_path):
    """Regression: the embeddings cache was keyed by an encoder folder's path, so after model.safetensors was
    replaced the old weights' vectors were served. A local folder's key carries the hash of its files."""
    from pafo.encoders import embed_texts, get_encoder

    texts = ["A first sentence about cats.", "Another one about the weather.", "A third on trains."]
    folder = _tiny_bert(tmp_path / "encoder", seed=0)
    old = embed_texts(texts, get_encoder(str(folder), precision="fp32"))
    _tiny_bert(tmp_path / "encoder", seed=1)  # new weights, same folder, same file names
    new = embed_texts(texts, get_encoder(str(folder), precision="fp32"))
    fresh = embed_texts(texts, get_encoder(str(folder), precision="fp32"), cache=False)
    assert new.encoder != old.encoder and new.cache_hits == 0
    assert abs(new.vectors - fresh.vectors).max() < 1e-6 and abs(new.vectors - old.vectors).max() > 1e-3


@pytest.mark.parametrize("trick", ["absolute path", "dot-dot path", "symlinked result"])
def test_a_run_folder_cannot_point_the_registry_at_another_file(trick, published, tmp_path, monkeypatch, capsys):
    """Regression: a run folder's status.json could set result_path to any file; `runs rebuild` trusted it and
    `runs show` printed that file (a private JSON secret). Every path read from a run folder must resolve inside
    it (or, for a reused run, inside the folder of the run it reused)."""
    home = home_copy(published, tmp_path, monkeypatch)
    secret = tmp_path / "secret.json"
    secret.write_text('{"token": "TOPSECRET"}')
    secret.chmod(0o600)
    run_dir = home / "runs" / published.run_id
    if trick == "symlinked result":
        (run_dir / "result.json").unlink()
        (run_dir / "result.json").symlink_to(secret)
    else:
        status = json.loads((run_dir / "status.json").read_text())
        status["result_path"] = str(secret) if trick == "absolute path" else "runs/../../secret.json"
        (run_dir / "status.json").write_text(json.dumps(status))
    assert run_cli(["runs", "rebuild"], capsys)[0] == 0
    code, out, err = run_cli(["runs", "show", published.run_id], capsys)
    assert code == 0 and "TOPSECRET" not in out + err and "outside" in out, (out, err)
    triples = tmp_path / "triples.csv"
    triples.write_text("user_id,prompt,response\nu0000,How?,Like this.\n")
    result = run_cli(["score", "--run", published.run_id, "--input", triples], capsys)
    assert "TOPSECRET" not in refused(result, EXIT_INPUT)


def test_an_empty_registry_file_is_rebuilt_from_the_run_folders(published, tmp_path, monkeypatch, capsys):
    """Regression: a 0-byte runs.sqlite (a full disk, a stray `>`) read as "no runs yet" with exit 0. It is moved
    aside (nothing deleted) and the registry rebuilt from the run folders, as when the file is missing."""
    home = home_copy(published, tmp_path, monkeypatch)
    (home / "runs.sqlite").write_bytes(b"")
    code, out, err = run_cli(["runs", "list"], capsys)
    assert code == 0 and err == "" and published.run_id in out and SUCCEEDED in out, (out, err)
    moved = [p for p in home.glob("runs.sqlite.replaced-*") if not p.name.endswith(("-wal", "-shm", "-journal"))]
    assert [p.stat().st_size for p in moved] == [0]
