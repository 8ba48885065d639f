"""User attributes (pafo.attributes): the attributes file is validated like every input (unknown users, missing
users, duplicate ids, empty values each named, exit 2 with one line), its columns reach the per-user tables, and
``--dataset hf:ORG/NAME`` picks the schema's loader with a clear offline error."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import run_cli

from pafo import attributes
from pafo.errors import PafoInputError
from pafo.sources import DataConfig, dataset_fingerprint, load_dataset


@pytest.fixture
def pairs_file(tmp_path, pairs_frame, write_table):
    """Six co-labelling users (user0..user5) on eight prompts: support comes from co-labels, nothing is embedded."""
    return write_table(pairs_frame(n_users=6, same_pairs=True), tmp_path / "pairs.csv")


def _support(argv, capsys, tmp_path, pairs_file):
    out = tmp_path / "support.json"
    code, stdout, err = run_cli(["support", "--dataset", "pairs", "--path", pairs_file, "--json", out, *argv], capsys)
    return code, stdout, err, out


USERS = [f"user{i}" for i in range(6)]
GOOD = {"user_id": USERS, "region": ["EU", "US", "EU", "US", "EU", "US"], "age": [21, 35, 44, 52, 61, 70]}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_attributes_file_reaches_the_users_in_any_format(suffix, tmp_path, pairs_file, write_table):
    """Every format reads to the same text values, in the dataset's user order, listed as the data's attributes."""
    shuffled = pd.DataFrame(GOOD).iloc[[3, 1, 5, 0, 2, 4]]
    path = write_table(shuffled, tmp_path / f"attributes{suffix}")
    dataset = load_dataset(DataConfig(dataset="pairs", path=str(pairs_file), user_attributes=str(path)))
    assert dataset.meta["user_attributes"] == ["region", "age"]
    assert attributes.attribute_columns(dataset) == ["region", "age"]
    order = dataset.users["user_id"].tolist()
    expected = pd.DataFrame(GOOD).set_index("user_id").loc[order]
    assert dataset.users["region"].tolist() == expected["region"].tolist()
    assert dataset.users["age"].tolist() == [str(a) for a in expected["age"]]


BAD_FILES = {  # name: (rows to write, fragments the one stderr line must hold)
    "unknown user": ({**GOOD, "user_id": [*USERS[:5], "stranger"]}, ["1 row(s) name users", "row 6", "'stranger'"]),
    "missing user": ({k: v[:5] for k, v in GOOD.items()}, ["1 of the dataset's 6 users have no row", "'user5'"]),
    "duplicate id": ({**GOOD, "user_id": [*USERS[:5], "user1"]}, ["user_id 'user1' is on rows 2 and 6"]),
    "empty value": ({**GOOD, "region": ["EU", "US", "", "US", "EU", "US"]},
                    ["row 3: region is empty (user 'user2')", "fill it in"]),
    "reserved column": ({**GOOD, "group": ["a"] * 6}, ["column 'group' is a name the per-user table already uses"]),
    "only user_id": ({"user_id": USERS}, ["has only a user_id column"]),
    "no user_id": ({"id": USERS, "region": GOOD["region"]}, ["missing column(s) user_id"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_attributes_files_are_one_line_naming_file_row_and_fix(case, tmp_path, pairs_file, capsys):
    """Each fault of an attributes file: exit 2, nothing on stdout, one stderr line with the file and the fault."""
    rows, fragments = BAD_FILES[case]
    path = tmp_path / "attrs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    code, stdout, err, out = _support(["--user-attributes", path], capsys, tmp_path, pairs_file)
    assert code == 2 and stdout == "" and not out.exists()
    assert len(err.strip().splitlines()) == 1 and str(path) in err and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_nested_json_value_is_refused_by_row(tmp_path, pairs_file, capsys):
    """A JSONL cell holding a list is not one value: the row and column are named."""
    path = tmp_path / "attrs.jsonl"
    path.write_text("\n".join(json.dumps({"user_id": u, "langs": ["en", "fr"] if u == "user2" else "en"})
                              for u in USERS) + "\n")
    code, _, err, _ = _support(["--user-attributes", path], capsys, tmp_path, pairs_file)
    assert code == 2 and "row 3: langs holds a list, not one value" in err


def test_support_slices_and_csv_carry_the_attributes(tmp_path, pairs_file, capsys, write_table):
    """``pafo support --user-attributes F --slice-by region`` adds each slice's users, mean support and minority share
    to the JSON, and the attribute columns to the per-user CSV."""
    path = write_table(pd.DataFrame(GOOD), tmp_path / "attrs.csv")
    csv = tmp_path / "users.csv"
    code, _, err, out = _support(["--user-attributes", path, "--slice-by", "region", "--slice-by", "age:quantiles=2",
                                  "--csv", csv], capsys, tmp_path, pairs_file)
    assert code == 0, err
    payload, table = json.loads(out.read_text()), pd.read_csv(csv)
    assert {"region", "age"} <= set(table.columns)
    by_region = {s["by"]["region"]: s for s in payload["slices"] if "region" in s["by"]}
    for region, block in by_region.items():
        rows = table[table["region"] == region]
        assert block["n_users"] == len(rows) == 3
        assert block["support_rate"] == pytest.approx(rows["support_rate"].mean())
    assert [s["by"]["age"] for s in payload["slices"] if "age" in s["by"]] == ["Q1 (21–44)", "Q2 (52–70)"]


def test_fingerprint_follows_the_attributes_file(tmp_path, pairs_file, write_table):
    """A run's data fingerprint covers its attributes file (a changed file is new data for the slices), and a
    config without one hashes as it did before attributes existed."""
    path = write_table(pd.DataFrame(GOOD), tmp_path / "attrs.csv")
    plain = DataConfig(dataset="pairs", path=str(pairs_file))
    with_file = DataConfig(dataset="pairs", path=str(pairs_file), user_attributes=str(path))
    before = dataset_fingerprint(with_file)
    assert before != dataset_fingerprint(plain)
    write_table(pd.DataFrame({**GOOD, "region": ["EU"] * 5 + ["ASIA"]}), path)
    import os

    os.utime(path, ns=(1, 1))
    assert dataset_fingerprint(with_file) != before


def test_hub_dataset_names_pick_the_schema_and_fail_clearly_offline(tmp_path, capsys, monkeypatch):
    """``--dataset hf:ORG/NAME[:config]``: a known hub dataset gets its schema's loader (an unknown one is read as
    a pairs table); offline it is exit 2 with one line saying it cannot be downloaded and what to do instead."""
    config = DataConfig(dataset="hf:allenai/multipref").validate()
    assert (config.dataset, config.path) == ("multipref", "allenai/multipref")
    config = DataConfig(dataset="hf:HannahRoseKirk/prism-alignment:conversations").validate()
    assert (config.dataset, config.path) == ("prism", "HannahRoseKirk/prism-alignment:conversations")
    assert DataConfig(dataset="hf:someone/prefs").validate().dataset == "pairs"
    with pytest.raises(PafoInputError, match="write hf:ORG/NAME"):
        DataConfig(dataset="hf:multipref").validate()
    with pytest.raises(PafoInputError, match="leave --path out"):
        DataConfig(dataset="hf:allenai/multipref", path="local.jsonl").validate()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for hub in ("hf:allenai/multipref", "hf:HannahRoseKirk/prism-alignment", "hf:facebook/community-alignment-dataset"):
        code, stdout, err = run_cli(["support", "--dataset", hub, "--json", tmp_path / "s.json"], capsys)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1
        assert "cannot be downloaded from this machine" in err and "local path" in err
